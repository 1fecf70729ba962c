#[derive(tenantry::TenantEntity)]
union Project {
    id: i64,
    other: u64,
}

fn main() {}
