use tenantry::{Error, TenantDb, tenant_scoped};

#[tenant_scoped(optional, optional)]
async fn handler(db: Option<TenantDb>) -> Result<(), Error> {
    let _ = db;
    Ok(())
}

fn main() {}
