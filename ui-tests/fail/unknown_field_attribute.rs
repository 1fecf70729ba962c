#[derive(tenantry::TenantEntity)]
struct Project {
    #[tenant(primary)]
    id: i64,
    name: String,
}

fn main() {}
