#[derive(tenantry::TenantEntity)]
struct Project {
    #[tenant(id)]
    id: i64,
    #[tenant(id)]
    code: String,
}

fn main() {}
