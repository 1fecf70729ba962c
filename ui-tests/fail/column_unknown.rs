use tenantry::TenantEntity;

#[derive(TenantEntity)]
struct Project {
    id: i64,
    name: String,
}

fn main() {
    // There is no `title` column: its constant does not exist.
    let _ = Project::select().filter_by(Project::TITLE.eq("x"));
}
