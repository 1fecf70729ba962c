struct Opaque;

#[derive(tenantry::TenantEntity)]
struct Project {
    id: i64,
    blob: Opaque,
}

fn main() {}
