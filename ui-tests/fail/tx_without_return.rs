use tenantry::{TenantTx, tenant_scoped};

#[tenant_scoped]
async fn handler(tx: TenantTx) {
    let _ = &tx;
}

fn main() {}
