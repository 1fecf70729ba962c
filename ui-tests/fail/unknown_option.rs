use tenantry::{Error, TenantDb, tenant_scoped};

#[tenant_scoped(transactional)]
async fn handler(db: TenantDb) -> Result<(), Error> {
    let _ = db;
    Ok(())
}

fn main() {}
