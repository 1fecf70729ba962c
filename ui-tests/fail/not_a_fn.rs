#[tenantry::tenant_scoped]
struct Handler;

fn main() {}
