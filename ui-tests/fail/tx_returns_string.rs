use tenantry::{TenantTx, tenant_scoped};

#[tenant_scoped(transaction)]
async fn handler(tx: TenantTx) -> String {
    let _ = &tx;
    String::from("committed?")
}

fn main() {}
