//! A renamed dependency: `crate = "..."` points the generated code at it.
extern crate tenantry as multi;

use multi::{Error, TenantDb, TenantEntity};

#[multi::tenant_scoped(crate = "multi")]
async fn handler(mut db: TenantDb) -> Result<String, Error> {
    let n = Project::count(&mut db).await?;
    Ok(n.to_string())
}

#[derive(TenantEntity)]
#[tenant(crate = "multi")]
struct Project {
    id: i64,
    name: String,
}

fn main() {
    let _: axum::Router = axum::Router::new().route("/", axum::routing::get(handler));
}
