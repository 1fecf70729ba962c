use tenantry::{Error, TenantDb, TenantTx, tenant_scoped};

#[tenant_scoped]
async fn handler(db: TenantDb, tx: TenantTx) -> Result<(), Error> {
    let _ = (db, &tx);
    Ok(())
}

fn main() {}
