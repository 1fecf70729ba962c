use axum::{Router, routing::get};
use tenantry::extract::Json;
use tenantry::{
    Error, Page, PageRequest, TenantDb, TenantEntity, TenantLayer, TenantManager, TenantMigrations,
    TenantTx, tenant_scoped,
};

/// A row of `projects`; `#[tenant(new)]` also generates `NewProject { name }`.
#[derive(serde::Serialize, serde::Deserialize, TenantEntity)]
#[tenant(table = "projects", new)]
pub struct Project {
    #[tenant(id, generated)]
    pub id: i64,
    pub name: String,
}

/// A page of this tenant's projects (`?limit=`, `?after=`; `Link` to the next page).
/// It runs with the tenant's schema on the search path: no other tenant is visible.
#[tenant_scoped]
pub async fn projects(mut db: TenantDb, page: PageRequest) -> Result<Page<Project>, Error> {
    Project::select().page(&mut db, &page).await
}

/// `{"name":"x"}` in, the stored project (with its id) out. Committed when it returns
/// `Ok`; rolled back on `Err`, a panic or cancellation.
#[tenant_scoped(transaction)]
pub async fn add(mut tx: TenantTx, Json(new): Json<NewProject>) -> Result<Json<Project>, Error> {
    Ok(Json(new.insert(&mut tx).await?))
}

/// The manager over `pool`, and the routes behind the tenant layer.
pub async fn app(pool: sqlx::PgPool) -> Result<(TenantManager, Router), Error> {
    let manager = TenantManager::builder(pool)
        .migrations(TenantMigrations::from_dir("migrations/tenant").await?)
        .build()
        .await?;
    let app = Router::new()
        .route("/projects", get(projects).post(add))
        .layer(TenantLayer::new(manager.clone())); // X-Tenant-ID: 400 / 404 / 403 / 503
    Ok((manager, app))
}
