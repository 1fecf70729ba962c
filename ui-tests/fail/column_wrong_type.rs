use tenantry::TenantEntity;

#[derive(TenantEntity)]
struct Project {
    id: i64,
    name: String,
}

fn main() {
    // `name` is text: a number is not one of its values.
    let _ = Project::select().filter_by(Project::NAME.eq(5));
}
