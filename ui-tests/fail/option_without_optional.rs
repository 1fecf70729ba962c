use tenantry::{Error, TenantDb, tenant_scoped};

#[tenant_scoped]
async fn handler(db: Option<TenantDb>) -> Result<(), Error> {
    let _ = db;
    Ok(())
}

fn main() {}
