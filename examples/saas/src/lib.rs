//! The tenantry quick start: the seed design's FastAPI example, in axum.
//!
//! - Admin routes (`Authorization: Bearer <token>`): `POST /api/v1/tenants`,
//!   `GET /api/v1/tenants`, `GET /api/v1/tenants/{id}`.
//! - `GET /api/v1/current-tenant`: the tenant named by `X-Tenant-ID`, or `null`.
//! - Tenant routes (`X-Tenant-ID` required): projects (create, list, get, delete) and
//!   the seed's `GET /api/v1/data` (plus `POST /api/v1/data` to add rows).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tenantry::{
    CurrentTenant, Error, NewTenant, Problem, TenantDb, TenantEntity, TenantId, TenantLayer,
    TenantManager, TenantMigrations, TenantTx, tenant_scoped,
};

/// The tenant migrations as tenantry takes them.
pub fn tenant_migrations() -> TenantMigrations {
    TenantMigrations::new(sqlx::migrate!("./migrations/tenant"))
        .expect("the embedded migrations run in transactions")
}

/// What the routes share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The tenant manager.
    pub manager: TenantManager,
    /// The bearer token of the admin routes.
    pub admin_token: String,
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(admin_routes(state.clone()))
        .merge(
            Router::new()
                .route("/api/v1/current-tenant", get(current_tenant))
                .layer(TenantLayer::new(state.manager.clone()).optional()),
        )
        .merge(tenant_routes().layer(TenantLayer::new(state.manager.clone())))
}

/// Routes that manage tenants; they need the admin token and no tenant.
pub fn admin_routes(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/api/v1/tenants/{id}", get(get_tenant))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state)
}

/// Routes that work on one tenant's data; apply a [`TenantLayer`] to them.
pub fn tenant_routes() -> Router {
    Router::new()
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route(
            "/api/v1/projects/{id}",
            get(get_project).delete(delete_project),
        )
        .route("/api/v1/data", get(get_data).post(add_data))
}

async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit, so timing does not reveal a prefix of the token.
    let ok = presented.is_some_and(|p| {
        p.len() == state.admin_token.len()
            && p.bytes()
                .zip(state.admin_token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !ok {
        let mut response = Problem {
            type_: "https://tenantry.dev/problems/unauthorized".to_owned(),
            title: "Unauthorized".to_owned(),
            status: 401,
            detail: "admin routes need `Authorization: Bearer <SAAS_ADMIN_TOKEN>`".to_owned(),
        }
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        return response;
    }
    next.run(req).await
}

/// `Json<T>` whose rejections are problem details.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(client_problem(rejection.status(), rejection.body_text())),
        }
    }
}

/// `Path<T>` whose rejections are problem details.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(client_problem(rejection.status(), rejection.body_text())),
        }
    }
}

fn client_problem(status: StatusCode, detail: String) -> Response {
    Problem {
        type_: "https://tenantry.dev/problems/invalid-request".to_owned(),
        title: "Invalid request".to_owned(),
        status: status.as_u16(),
        detail,
    }
    .into_response()
}

async fn create_tenant(
    State(state): State<AppState>,
    ApiJson(new): ApiJson<NewTenant>,
) -> Result<impl IntoResponse, Error> {
    let tenant = state.manager.create_tenant(new).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

async fn list_tenants(State(state): State<AppState>) -> Result<impl IntoResponse, Error> {
    Ok(Json(state.manager.list_tenants().await?))
}

async fn get_tenant(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, Error> {
    let id = TenantId::parse(&id)?;
    match state.manager.get_tenant_by_id(&id).await? {
        Some(tenant) => Ok(Json(tenant)),
        None => Err(Error::TenantNotFound(id)),
    }
}

/// The seed's `get_current_tenant`: the tenant, or `null` without a tenant header.
async fn current_tenant(tenant: Option<CurrentTenant>) -> impl IntoResponse {
    Json(json!({ "tenant": tenant.map(|CurrentTenant(t)| t) }))
}

/// A project of the current tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TenantEntity)]
#[tenant(table = "projects")]
pub struct Project {
    /// Its id, unique within the tenant.
    #[tenant(id, generated)]
    pub id: i64,
    /// Its name.
    pub name: String,
}

/// The body of `POST /api/v1/projects`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// 1 to 200 characters.
    pub name: String,
}

fn check_name(name: &str) -> Result<(), Error> {
    let len = name.chars().count();
    if !(1..=200).contains(&len) {
        return Err(Error::Validation(
            "`name` must be 1 to 200 characters".to_owned(),
        ));
    }
    Ok(())
}

/// Creates a project; the macro commits the transaction because the body returns `Ok`.
#[tenant_scoped(transaction)]
async fn create_project(
    mut tx: TenantTx,
    ApiJson(new): ApiJson<NewProject>,
) -> Result<(StatusCode, Json<Project>), Error> {
    check_name(&new.name)?;
    let project = Project {
        id: 0,
        name: new.name,
    }
    .insert(&mut tx)
    .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[tenant_scoped]
async fn list_projects(mut db: TenantDb) -> Result<Json<Vec<Project>>, Error> {
    Ok(Json(Project::select().fetch_all(&mut db).await?))
}

#[tenant_scoped]
async fn get_project(mut db: TenantDb, ApiPath(id): ApiPath<i64>) -> Result<Json<Project>, Error> {
    Project::find(&mut db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found("project", id))
}

#[tenant_scoped]
async fn delete_project(mut db: TenantDb, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, Error> {
    if Project::delete(&mut db, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("project", id))
    }
}

fn not_found(what: &str, id: i64) -> Error {
    Error::NotFound(format!("{what} {id} does not exist"))
}

/// A row of the seed's `data` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TenantEntity)]
#[tenant(table = "data")]
pub struct DataRow {
    /// Its id.
    #[tenant(id, generated)]
    pub id: i64,
    /// Its value.
    pub value: String,
}

/// The seed's `get_data`: this tenant's rows of `data`.
#[tenant_scoped]
async fn get_data(mut db: TenantDb) -> Result<Json<serde_json::Value>, Error> {
    let rows = DataRow::select().fetch_all(&mut db).await?;
    Ok(Json(json!({ "data": rows })))
}

/// The body of `POST /api/v1/data`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewData {
    /// The value to store.
    pub value: String,
}

#[tenant_scoped]
async fn add_data(
    mut db: TenantDb,
    ApiJson(new): ApiJson<NewData>,
) -> Result<(StatusCode, Json<DataRow>), Error> {
    let row = DataRow {
        id: 0,
        value: new.value,
    }
    .insert(&mut db)
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}
