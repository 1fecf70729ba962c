use tenantry::{CurrentTenant, tenant_scoped};

#[tenant_scoped]
async fn handler(CurrentTenant(tenant): CurrentTenant) -> String {
    tenant.name.clone()
}

fn main() {}
