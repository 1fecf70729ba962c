use tenantry::{Error, TenantDb, tenant_scoped};

#[tenant_scoped(crate = 42)]
async fn handler(db: TenantDb) -> Result<(), Error> {
    let _ = db;
    Ok(())
}

fn main() {}
