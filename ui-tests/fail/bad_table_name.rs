#[derive(tenantry::TenantEntity)]
#[tenant(table = "projects; DROP TABLE users")]
struct Project {
    id: i64,
    name: String,
}

fn main() {}
