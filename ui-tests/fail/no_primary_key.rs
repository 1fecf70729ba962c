use tenantry::TenantEntity;

#[derive(tenantry::TenantEntity)]
struct Project {
    name: String,
}

fn main() {}

// The derive failed, but its type still is an entity: no second error here.
#[allow(dead_code)]
async fn later_use(db: &mut tenantry::TenantDb) -> Result<i64, tenantry::Error> {
    Project::count(db).await
}
