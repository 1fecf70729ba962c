//! The user's own extractors keep working, in any position allowed by axum, and the
//! handler goes into `Router::route` as it is; `?` and early `return` work in the body.
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use tenantry::{CurrentTenant, Error, TenantEntity, TenantTx, tenant_scoped};

#[derive(Clone)]
struct AppState {
    greeting: String,
}

#[derive(Deserialize)]
struct Paging {
    limit: Option<i64>,
}

#[derive(Deserialize)]
struct NewProject {
    name: String,
}

#[derive(TenantEntity, serde::Serialize)]
#[tenant(table = "projects")]
struct Project {
    #[tenant(id, generated)]
    id: i64,
    name: String,
}

#[tenant_scoped(transaction)]
async fn create(
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    Path(org): Path<String>,
    Query(paging): Query<Paging>,
    mut tx: TenantTx,
    Json(new): Json<NewProject>,
) -> Result<Json<Project>, Error> {
    if new.name.is_empty() {
        return Err(Error::Validation(format!("{} {org} {}", state.greeting, tenant.id)));
    }
    let _ = paging.limit.unwrap_or(10);
    let saved = Project { id: 0, name: new.name }.insert(&mut tx).await?;
    Ok(Json(saved))
}

fn main() {
    let _: axum::Router = axum::Router::new()
        .route("/{org}/projects", axum::routing::post(create))
        .with_state(AppState { greeting: "hi".into() });
}
