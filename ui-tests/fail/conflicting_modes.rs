use tenantry::{Error, TenantTx, tenant_scoped};

#[tenant_scoped(transaction, connection)]
async fn handler(tx: TenantTx) -> Result<(), Error> {
    let _ = &tx;
    Ok(())
}

fn main() {}
