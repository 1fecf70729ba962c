#[derive(tenantry::TenantEntity)]
struct Project(i64, String);

fn main() {}
