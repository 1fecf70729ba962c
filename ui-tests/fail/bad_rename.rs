#[derive(tenantry::TenantEntity)]
struct Project {
    id: i64,
    #[tenant(rename = "na\"me")]
    name: String,
}

fn main() {}
