#[derive(tenantry::TenantEntity)]
struct Project {
    id: i64,
    #[tenant(tenant_column)]
    tenant_id: String,
    #[tenant(tenant_column)]
    owner: String,
}

fn main() {}
