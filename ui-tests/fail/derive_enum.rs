#[derive(tenantry::TenantEntity)]
enum Project {
    Draft,
    Live,
}

fn main() {}
