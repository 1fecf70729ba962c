use tenantry::{TenantDb, tenant_scoped};

#[tenant_scoped]
fn handler(db: TenantDb) -> String {
    let _ = db;
    String::new()
}

fn main() {}
