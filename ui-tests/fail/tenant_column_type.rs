#[derive(tenantry::TenantEntity)]
struct Project {
    id: i64,
    #[tenant(tenant_column)]
    tenant_id: i32,
}

fn main() {}
