use tenantry::{Error, TenantDb, tenant_scoped};

#[tenant_scoped(transaction)]
async fn handler(db: TenantDb) -> Result<(), Error> {
    let _ = db;
    Ok(())
}

fn main() {}
