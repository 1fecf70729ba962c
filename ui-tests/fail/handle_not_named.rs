use tenantry::{Error, TenantTx, tenant_scoped};

#[tenant_scoped]
async fn handler(_: TenantTx) -> Result<(), Error> {
    Ok(())
}

fn main() {}
