#[derive(tenantry::TenantEntity)]
struct Project {
    name: String,
}

fn main() {}
