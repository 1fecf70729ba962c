use tenantry::TenantEntity;

#[derive(TenantEntity)]
struct Project {
    id: i64,
    name: String,
}

#[derive(TenantEntity)]
struct Invoice {
    id: i64,
    name: String,
}

fn main() {
    // A filter on invoices cannot be applied to a query over projects.
    let _ = Project::select().filter_by(Invoice::NAME.eq("x"));
}
