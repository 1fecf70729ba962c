#[tenantry::test(strategies(schema, rows))]
fn not_async(t: tenantry::testing::TestTenants) {
    let _ = t;
}

fn main() {}
