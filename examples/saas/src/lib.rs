//! The tenantry quick start: the seed design's FastAPI example, in axum.
//!
//! - Admin routes (`Authorization: Bearer <token>`): `POST /api/v1/tenants`,
//!   `GET /api/v1/tenants`, `GET /api/v1/tenants/{id}`,
//!   `POST /api/v1/tenants/{id}/suspend`, `POST /api/v1/tenants/{id}/resume`,
//!   `DELETE /api/v1/tenants/{id}` (only a suspended tenant), and `GET /metrics`:
//!   the Prometheus text format, per-tenant request counts and latencies (the 50
//!   busiest tenants labelled, the rest `other`) and the tenant pool's gauges and
//!   counters per server (see [`tenantry::metrics`]).
//! - `GET /api/v1/current-tenant`: the tenant the request names, or `null`.
//! - Tenant routes: projects (create, list, get, delete) and the seed's
//!   `GET /api/v1/data` (plus `POST /api/v1/data` to add rows).
//!
//! Tenants are created with `"strategy": "schema"` (the default: a schema each, made
//! by the tenant migrations) or `"strategy": "row"` (rows in the shared tables of
//! [`prepare_database`], under row-level security). The handlers are the same for
//! both.
//!
//! A request names its tenant with the `X-Tenant-ID` header, or by its host: a
//! tenant's registered `domain`, or `{id}.localhost` (`{id}.{base domain}`).
//!
//! With user tokens configured (`SAAS_USER_TOKENS=token=tenant,...`), tenant routes
//! also need `Authorization: Bearer <token>`, and the token's tenant must be the one
//! the request names: a client cannot reach another tenant by changing a header or a
//! host. A real service would verify a signed token (a JWT) instead of a fixed list;
//! the policy check is the same.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use tenantry::extract::{Json, Path};
use tenantry::{
    CurrentTenant, Error, HostResolver, NewTenant, PoolConfig, Problem, Tenant, TenantDb,
    TenantEntity, TenantId, TenantLayer, TenantLimitLayer, TenantLimits, TenantManager,
    TenantMetrics, TenantMigrations, TenantTx, tenant_scoped,
};
use tower_http::trace::TraceLayer;

/// The role row-strategy tenants' connections switch to: no `BYPASSRLS`, owns nothing.
pub const ROW_ROLE: &str = "saas_row_tenant";

/// The pool settings of the app: row tenants use the `shared` schema and switch to
/// [`ROW_ROLE`], so that row-level security applies to them.
pub fn pool_config() -> PoolConfig {
    PoolConfig {
        row_schema: Some("shared".to_owned()),
        row_role: Some(ROW_ROLE.to_owned()),
        ..PoolConfig::default()
    }
}

/// Creates (idempotently, also when several instances start at once) the shared
/// tables of row-strategy tenants, under forced row-level security, and the role
/// their connections use. Schema tenants have the same tables in their own schema
/// (the tenant migrations).
pub async fn prepare_database(pool: &sqlx::PgPool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('saas.prepare_database'))")
        .execute(&mut *tx)
        .await?;
    let citus: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
            .fetch_one(&mut *tx)
            .await?;
    if citus {
        // On a Citus coordinator the role must exist on the workers too (a plain
        // CREATE ROLE is propagated), and log in there: the coordinator connects to
        // the workers as the role a row tenant's transaction runs as.
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'saas_row_tenant')",
        )
        .fetch_one(&mut *tx)
        .await?;
        let role = if exists {
            "ALTER ROLE saas_row_tenant LOGIN NOBYPASSRLS"
        } else {
            "CREATE ROLE saas_row_tenant LOGIN NOBYPASSRLS"
        };
        sqlx::raw_sql(role).execute(&mut *tx).await?;
    }
    sqlx::raw_sql(
        "DO $$ BEGIN
             -- Only when missing: an app user without CREATEROLE may use an existing one.
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'saas_row_tenant') THEN
                 CREATE ROLE saas_row_tenant NOLOGIN NOBYPASSRLS;
             END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;
         CREATE SCHEMA IF NOT EXISTS shared;
         -- Keyed by (tenant_id, id): unique and foreign-key checks bypass row-level
         -- security, so every key of a shared table includes the tenant.
         CREATE TABLE IF NOT EXISTS shared.projects (
             id         bigserial,
             tenant_id  text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
             name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
             created_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (tenant_id, id)
         );
         CREATE TABLE IF NOT EXISTS shared.data (
             id         bigserial,
             tenant_id  text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
             value      text NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (tenant_id, id)
         );",
    )
    .execute(&mut *tx)
    .await?;
    if citus {
        // Distributed by tenant_id, co-located: a tenant's rows live on one worker.
        for table in ["shared.projects", "shared.data"] {
            tenantry::strategy::distribute_rows(&mut tx, table).await?;
        }
    }
    // One statement at a time: Citus forwards a GRANT to the workers as its text.
    for grant in [
        "GRANT USAGE ON SCHEMA shared TO saas_row_tenant",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON shared.projects, shared.data TO saas_row_tenant",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA shared TO saas_row_tenant",
    ] {
        sqlx::raw_sql(grant).execute(&mut *tx).await?;
    }
    // Lets a non-superuser app user switch to the role (a superuser may anyway). A
    // refusal is caught inside the statement: ignoring the error from outside would
    // leave this transaction aborted.
    sqlx::raw_sql(
        "DO $$ BEGIN
             GRANT saas_row_tenant TO CURRENT_USER;
         EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN NULL;
         END $$",
    )
    .execute(&mut *tx)
    .await?;
    for table in ["shared.projects", "shared.data"] {
        tenantry::strategy::install_rls(&mut tx, table, "tenant_id").await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The tenant migrations as tenantry takes them.
pub fn tenant_migrations() -> TenantMigrations {
    TenantMigrations::new(sqlx::migrate!("./migrations/tenant"))
        .expect("the embedded migrations run in transactions")
}

/// What the routes share. Its `Debug` leaves the tokens out.
#[derive(Clone)]
pub struct AppState {
    /// The tenant manager.
    pub manager: TenantManager,
    /// The bearer token of the admin routes.
    pub admin_token: String,
    /// Hosts `{id}.{base_domain}` name tenant `id` (default `localhost`).
    pub base_domain: String,
    /// User tokens and the tenant each may act for; `None` lets any client pick any
    /// tenant (a demo without authentication).
    pub user_tokens: Option<Arc<HashMap<String, TenantId>>>,
    /// Per-tenant request metrics.
    pub metrics: TenantMetrics,
    /// Per-tenant request limits (the tenants' own, from the registry, over these
    /// defaults: none unless [`AppState::with_tenant_limits`] sets them).
    pub limits: TenantLimitLayer,
    /// What `GET /metrics` renders (see [`prometheus`]).
    pub prometheus: PrometheusHandle,
}

impl AppState {
    /// State with the default base domain and no user tokens.
    pub fn new(manager: TenantManager, admin_token: impl Into<String>) -> Self {
        Self {
            manager,
            admin_token: admin_token.into(),
            base_domain: "localhost".to_owned(),
            user_tokens: None,
            metrics: TenantMetrics::new(50),
            limits: TenantLimitLayer::new(TenantLimits::default()),
            prometheus: prometheus(),
        }
    }

    /// Limits for tenants that set none of their own.
    pub fn with_tenant_limits(mut self, defaults: TenantLimits) -> Self {
        self.limits = TenantLimitLayer::new(defaults);
        self
    }

    /// Requires user tokens on tenant routes: `token -> tenant`.
    pub fn with_user_tokens(mut self, tokens: HashMap<String, TenantId>) -> Self {
        self.user_tokens = Some(Arc::new(tokens));
        self
    }

    /// Parses `token=tenant,token=tenant` (the `SAAS_USER_TOKENS` format).
    pub fn parse_user_tokens(spec: &str) -> Result<HashMap<String, TenantId>, String> {
        spec.split(',')
            .filter(|pair| !pair.trim().is_empty())
            .map(|pair| {
                let (token, tenant) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("`{pair}` is not `token=tenant`"))?;
                let tenant = TenantId::parse(tenant.trim()).map_err(|e| e.to_string())?;
                Ok((token.trim().to_owned(), tenant))
            })
            .collect()
    }

    /// The tenant layer of this app: `X-Tenant-ID`, then the host; the user-token
    /// policy if configured; metrics.
    pub fn tenant_layer(&self) -> TenantLayer {
        let mut layer = TenantLayer::new(self.manager.clone())
            .resolver(HostResolver::domains().subdomains_of(self.base_domain.clone()))
            .metrics(self.metrics.clone());
        if let Some(tokens) = self.user_tokens.clone() {
            layer = layer.policy(UserTokens(tokens));
        }
        layer
    }
}

/// Request latency buckets, in seconds, of `tenantry_request_duration_seconds`.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The process's Prometheus recorder (`metrics-exporter-prometheus`), installed as the
/// `metrics` facade's global recorder on first use; every [`AppState`] of the process
/// shares it. Where another recorder was installed first, the handle renders nothing
/// of tenantry's, and a warning says so.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("tenantry_request_duration_seconds".to_owned()),
                    &LATENCY_BUCKETS,
                )
                .expect("the latency buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another `metrics` recorder is installed: /metrics stays empty");
            }
            handle
        })
        .clone()
}

/// `GET /metrics` (admin token): the pool's figures are read now, then everything is
/// rendered in the Prometheus text format.
async fn metrics_text(State(state): State<AppState>) -> Response {
    state.manager.record_pool_metrics();
    state.prometheus.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.prometheus.render(),
    )
        .into_response()
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("manager", &self.manager)
            .field("admin_token", &"<redacted>")
            .field("base_domain", &self.base_domain)
            .field(
                "user_tokens",
                &self
                    .user_tokens
                    .as_ref()
                    .map(|t| format!("<{} redacted>", t.len())),
            )
            .finish_non_exhaustive()
    }
}

/// The user-token policy: a request must carry a known token (else 401, before any
/// tenant lookup, whatever tenant it names), and the token's tenant must be the one
/// the request names (else 403).
struct UserTokens(Arc<HashMap<String, TenantId>>);

impl UserTokens {
    fn token<'a>(&self, parts: &'a Parts) -> Result<(&'a str, &TenantId), Error> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Error::Unauthorized(
                    "tenant routes need `Authorization: Bearer <user token>`".to_owned(),
                )
            })?;
        let tenant = self
            .0
            .get(token)
            .ok_or_else(|| Error::Unauthorized("unknown user token".to_owned()))?;
        Ok((token, tenant))
    }
}

impl tenantry::TenantPolicy for UserTokens {
    fn authenticate(&self, parts: &Parts) -> Result<(), Error> {
        self.token(parts).map(|_| ())
    }

    /// Another tenant's id is refused before it is looked up: the same 403 whether
    /// that tenant exists, is suspended, or not.
    fn check_candidate(&self, parts: &Parts, candidate: &tenantry::Candidate) -> Result<(), Error> {
        let (_, allowed) = self.token(parts)?;
        match candidate {
            tenantry::Candidate::Id(id) if id != allowed => Err(Error::Forbidden(format!(
                "this token may not act for tenant `{id}`"
            ))),
            _ => Ok(()),
        }
    }

    fn check(&self, parts: &Parts, tenant: &Tenant) -> Result<(), Error> {
        let (_, allowed) = self.token(parts)?;
        if *allowed == tenant.id {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this token may not act for tenant `{}`",
                tenant.id
            )))
        }
    }
}

/// The whole application.
///
/// The tenant layer is applied per route (`route_layer` on each method router), so a
/// request is matched to a route before a tenant is demanded: an unknown path is a
/// 404 and a wrong method a 405, with or without a tenant, both as problem details.
pub fn router(state: AppState) -> Router {
    let layer = state.tenant_layer();
    Router::new()
        .merge(admin_routes(state.clone()))
        .route(
            "/api/v1/current-tenant",
            get(current_tenant)
                .route_layer(TraceLayer::new_for_http())
                .route_layer(layer.clone().optional()),
        )
        // Inside the tenant layer: each request line is logged within the
        // `tenant{tenant_id=...}` span.
        .merge(tenant_routes_with(|routes| {
            routes
                .route_layer(TraceLayer::new_for_http())
                .route_layer(state.limits.clone())
                .route_layer(layer.clone())
        }))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(one_host))
}

/// A request names at most one host (RFC 9112: two `Host` headers, or one that is not
/// visible ASCII, are a 400), whatever route or resolver handles it.
async fn one_host(req: Request, next: Next) -> Response {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() || first.is_some_and(|h| h.to_str().is_err()) {
        return Error::Validation(
            "the request must name one host (one valid `Host` header)".to_owned(),
        )
        .into_response();
    }
    next.run(req).await
}

/// 404 for a path no route matches, as problem details.
async fn route_not_found(uri: axum::http::Uri) -> Error {
    Error::NotFound(format!("no route for `{}`", uri.path().escape_debug()))
}

/// 405 for a route that exists with other methods, as problem details (axum adds the
/// `Allow` header).
async fn method_not_allowed(method: axum::http::Method) -> Response {
    Problem {
        type_: "https://tenantry.dev/problems/method-not-allowed".to_owned(),
        title: "Method not allowed".to_owned(),
        status: StatusCode::METHOD_NOT_ALLOWED.as_u16(),
        detail: format!("`{method}` is not allowed on this route"),
    }
    .into_response()
}

/// Routes that manage tenants; they need the admin token and no tenant.
pub fn admin_routes(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/api/v1/tenants/{id}",
            get(get_tenant).delete(delete_tenant),
        )
        .route("/api/v1/tenants/{id}/suspend", post(suspend_tenant))
        .route("/api/v1/tenants/{id}/resume", post(resume_tenant))
        .route(
            "/api/v1/tenants/{id}/limits",
            axum::routing::put(set_tenant_limits),
        )
        .route("/api/v1/tenants/{id}/domains", post(add_tenant_domain))
        .route(
            "/api/v1/tenants/{id}/domains/{domain}",
            axum::routing::delete(remove_tenant_domain),
        )
        .route(
            "/api/v1/tenants/{id}/domains/{domain}/primary",
            axum::routing::put(set_primary_domain),
        )
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state)
}

/// Routes that work on one tenant's data; apply a [`TenantLayer`] to them (with
/// `route_layer`, so that unknown paths and methods are answered before a tenant is
/// demanded).
pub fn tenant_routes() -> Router {
    tenant_routes_with(|routes| routes)
}

/// [`tenant_routes`], each method router passed through `wrap` (to add route layers).
pub fn tenant_routes_with(
    wrap: impl Fn(axum::routing::MethodRouter) -> axum::routing::MethodRouter,
) -> Router {
    Router::new()
        .route(
            "/api/v1/projects",
            wrap(get(list_projects).post(create_project)),
        )
        .route(
            "/api/v1/projects/{id}",
            wrap(get(get_project).delete(delete_project)),
        )
        .route("/api/v1/data", wrap(get(get_data).post(add_data)))
}

/// Whether `presented` is `token`, in a time that depends on neither: their SHA-256
/// digests are compared without an early exit, so timing reveals no prefix and no
/// length of the token.
pub fn tokens_match(presented: &str, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(presented), Sha256::digest(token));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = presented.is_some_and(|p| tokens_match(p, &state.admin_token));
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

async fn create_tenant(
    State(state): State<AppState>,
    Json(new): Json<NewTenant>,
) -> Result<impl IntoResponse, Error> {
    let tenant = state.manager.create_tenant(new).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

async fn list_tenants(State(state): State<AppState>) -> Result<impl IntoResponse, Error> {
    Ok(Json(state.manager.list_tenants().await?))
}

async fn get_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Error> {
    let id = TenantId::parse(&id)?;
    let Some(tenant) = state.manager.find_tenant(&id).await? else {
        return Err(Error::TenantNotFound(id));
    };
    // On Citus, the worker holding the tenant, from Citus's own metadata.
    let node = state.manager.admin().node_of(&tenant).await?;
    let mut body = serde_json::to_value(&*tenant).map_err(|e| Error::Internal(e.to_string()))?;
    if let (Some(node), Some(fields)) = (node, body.as_object_mut()) {
        fields.insert("node".to_owned(), node.into());
    }
    Ok(Json(body))
}

async fn suspend_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, Error> {
    Ok(Json(
        state.manager.suspend_tenant(&TenantId::parse(&id)?).await?,
    ))
}

/// `PUT /api/v1/tenants/{id}/limits` with `{"rate":..,"burst":..,"concurrency":..,
/// "statement_timeout_ms":..}` (each optional; omitted = the app's default).
async fn set_tenant_limits(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(limits): Json<TenantLimits>,
) -> Result<Json<Tenant>, Error> {
    Ok(Json(
        state
            .manager
            .set_tenant_limits(&TenantId::parse(&id)?, limits)
            .await?,
    ))
}

/// The body of `POST /api/v1/tenants/{id}/domains`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    /// A lowercase host name.
    pub domain: String,
    /// Make it the primary domain.
    #[serde(default)]
    pub primary: bool,
}

async fn add_tenant_domain(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(new): Json<NewDomain>,
) -> Result<Json<Tenant>, Error> {
    let id = TenantId::parse(&id)?;
    Ok(Json(
        state
            .manager
            .add_tenant_domain(&id, &new.domain, new.primary)
            .await?,
    ))
}

async fn remove_tenant_domain(
    State(state): State<AppState>,
    Path((id, domain)): Path<(String, String)>,
) -> Result<Json<Tenant>, Error> {
    let id = TenantId::parse(&id)?;
    Ok(Json(
        state.manager.remove_tenant_domain(&id, &domain).await?,
    ))
}

async fn set_primary_domain(
    State(state): State<AppState>,
    Path((id, domain)): Path<(String, String)>,
) -> Result<Json<Tenant>, Error> {
    let id = TenantId::parse(&id)?;
    Ok(Json(state.manager.set_primary_domain(&id, &domain).await?))
}

async fn resume_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, Error> {
    Ok(Json(
        state.manager.resume_tenant(&TenantId::parse(&id)?).await?,
    ))
}

/// Deletes a suspended tenant (409 if it is not suspended).
async fn delete_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    state.manager.delete_tenant(&TenantId::parse(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The seed's `get_current_tenant`: the tenant, or `null` without a tenant header.
async fn current_tenant(tenant: Option<CurrentTenant>) -> impl IntoResponse {
    Json(json!({ "tenant": tenant.map(|CurrentTenant(t)| t) }))
}

/// A project of the current tenant. `#[tenant(new)]` generates [`NewProject`], the
/// body of `POST /api/v1/projects` (`{"name":"..."}`, unknown fields refused).
/// Schema tenants keep projects in their schema; row tenants in `shared.projects`,
/// whose `tenant_id` column `row_tenant_column` names: their statements filter on it
/// (on top of row-level security), which routes them to one node on Citus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TenantEntity)]
#[tenant(table = "projects", new, row_tenant_column)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Its id, unique within the tenant.
    #[tenant(id, generated)]
    pub id: i64,
    /// Its name.
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
    Json(new): Json<NewProject>,
) -> Result<(StatusCode, Json<Project>), Error> {
    check_name(&new.name)?;
    let project = new.insert(&mut tx).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// One page of a list: `?limit=N` (default [`Page::DEFAULT`], at most [`Page::MAX`])
/// after an opaque `after` cursor; the next page is in a `Link: <...>; rel="next"`
/// header (RFC 8288), and the body keeps its shape.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    limit: i64,
    after: Option<i64>,
}

impl Page {
    /// Rows per page unless `limit` says otherwise.
    pub const DEFAULT: i64 = 50;
    /// The most rows a page holds.
    pub const MAX: i64 = 500;
    /// The most bytes of JSON a page's rows take (a page holds at least one row).
    pub const MAX_BYTES: usize = 1 << 20;

    /// The page a request asks for; 400 for a bad `limit` or cursor.
    pub fn of(uri: &axum::http::Uri) -> Result<Self, Error> {
        let mut page = Page {
            limit: Self::DEFAULT,
            after: None,
        };
        for pair in uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "limit" => {
                    // Above the maximum is served as the maximum (with a `Link` to the rest).
                    page.limit = value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .map(|n| n.min(Self::MAX))
                        .ok_or_else(|| {
                            Error::Validation(format!(
                                "`limit` must be a positive number (at most {} are served)",
                                Self::MAX
                            ))
                        })?;
                }
                "after" => page.after = Some(decode_cursor(value)?),
                _ => {}
            }
        }
        Ok(page)
    }

    /// The page's rows as a JSON array: `limit` of the `limit + 1` rows fetched, and
    /// fewer when they would take more than [`Page::MAX_BYTES`] (one row at least),
    /// each serialised once; and the link to the next page if a row was left out.
    fn next<T: Serialize>(
        &self,
        uri: &axum::http::Uri,
        rows: &[T],
        id: impl Fn(&T) -> i64,
    ) -> Result<(Vec<u8>, Option<String>), Error> {
        let wanted = rows.len().min(self.limit as usize);
        let mut array = vec![b'['];
        let mut held = 0;
        for row in &rows[..wanted] {
            let json = serde_json::to_vec(row)
                .map_err(|e| Error::Internal(format!("cannot serialise a row: {e}")))?;
            if held > 0 && array.len() + json.len() + 2 > Self::MAX_BYTES {
                break;
            }
            if held > 0 {
                array.push(b',');
            }
            array.extend_from_slice(&json);
            held += 1;
        }
        array.push(b']');
        if held == rows.len() {
            return Ok((array, None));
        }
        let last = id(&rows[held - 1]);
        let link = format!(
            "<{}?limit={}&after={}>; rel=\"next\"",
            uri.path(),
            self.limit,
            encode_cursor(last)
        );
        Ok((array, Some(link)))
    }
}

/// Cursors are opaque to clients: the last id, scrambled and in hex.
const CURSOR_KEY: u64 = 0x5eed_c0de_7e4a_0001;

fn encode_cursor(id: i64) -> String {
    format!("c{:x}", (id as u64) ^ CURSOR_KEY)
}

fn decode_cursor(raw: &str) -> Result<i64, Error> {
    raw.strip_prefix('c')
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map(|n| (n ^ CURSOR_KEY) as i64)
        .ok_or_else(|| Error::Validation("`after` is not a cursor this server gave".to_owned()))
}

/// JSON bytes serialised already, as an `application/json` response.
fn json_body(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// `body` with the `Link` header of the next page, if any.
fn with_next(body: impl IntoResponse, next: Option<String>) -> Response {
    let mut response = body.into_response();
    if let Some(link) = next.and_then(|l| l.parse().ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

#[tenant_scoped]
async fn list_projects(mut db: TenantDb, uri: axum::http::Uri) -> Result<Response, Error> {
    let page = Page::of(&uri)?;
    let mut select = Project::select()
        .sort_named("id", false)
        .limit(page.limit + 1);
    if let Some(after) = page.after {
        select = select.filter_named("id", tenantry::Op::Gt, after);
    }
    let rows = select.fetch_all(&mut db).await?;
    let (array, next) = page.next(&uri, &rows, |p| p.id)?;
    Ok(with_next(json_body(array), next))
}

#[tenant_scoped]
async fn get_project(mut db: TenantDb, Path(id): Path<i64>) -> Result<Json<Project>, Error> {
    Project::find(&mut db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found("project", id))
}

#[tenant_scoped]
async fn delete_project(mut db: TenantDb, Path(id): Path<i64>) -> Result<StatusCode, Error> {
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
#[tenant(table = "data", row_tenant_column)]
pub struct DataRow {
    /// Its id.
    #[tenant(id, generated)]
    pub id: i64,
    /// Its value.
    pub value: String,
}

/// The seed's `get_data`: this tenant's rows of `data`.
#[tenant_scoped]
async fn get_data(mut db: TenantDb, uri: axum::http::Uri) -> Result<Response, Error> {
    let page = Page::of(&uri)?;
    let mut select = DataRow::select()
        .sort_named("id", false)
        .limit(page.limit + 1);
    if let Some(after) = page.after {
        select = select.filter_named("id", tenantry::Op::Gt, after);
    }
    let rows = select.fetch_all(&mut db).await?;
    let (array, next) = page.next(&uri, &rows, |d| d.id)?;
    // The body of `GET /api/v1/data`: `{"data": [...]}`.
    let mut body = b"{\"data\":".to_vec();
    body.extend_from_slice(&array);
    body.push(b'}');
    Ok(with_next(json_body(body), next))
}

/// The largest value `POST /api/v1/data` stores, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

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
    Json(new): Json<NewData>,
) -> Result<(StatusCode, Json<DataRow>), Error> {
    if new.value.len() > MAX_VALUE_BYTES {
        return Err(Error::Unprocessable(format!(
            "`value` is {} bytes; at most {MAX_VALUE_BYTES} are stored",
            new.value.len()
        )));
    }
    let row = DataRow {
        id: 0,
        value: new.value,
    }
    .insert(&mut db)
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Timeouts of the quick start's HTTP server, for slow or stalled clients.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a client may take to send a request's headers; the connection is
    /// closed after that (hyper's `header_read_timeout`). Default 10 s.
    pub header_read: std::time::Duration,
    /// How long a whole request may take, its body included; 408 with a problem body
    /// after that (the handler is cancelled, its transaction rolled back). Default 30 s.
    pub request: std::time::Duration,
    /// How long a response may take to reach the client, from the moment the handler
    /// made it to its last byte; a client that reads slower (or not at all) is
    /// disconnected. Default 60 s.
    pub response_write: std::time::Duration,
    /// The most connections served at once; more wait in the listen queue until one
    /// closes. Default 1024.
    pub max_connections: usize,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: std::time::Duration::from_secs(10),
            request: std::time::Duration::from_secs(30),
            response_write: std::time::Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Answers 408 (problem details) when a request, body included, takes longer than
/// `limit`.
pub fn with_request_timeout(app: Router, limit: std::time::Duration) -> Router {
    app.layer(middleware::from_fn(
        move |req: Request, next: Next| async move {
            match tokio::time::timeout(limit, next.run(req)).await {
                Ok(response) => response,
                Err(_) => Problem {
                    type_: "https://tenantry.dev/problems/request-timeout".to_owned(),
                    title: "Request timeout".to_owned(),
                    status: StatusCode::REQUEST_TIMEOUT.as_u16(),
                    detail: format!("the request took longer than {limit:?}, its body included"),
                }
                .into_response(),
            }
        },
    ))
}

/// The kernel send buffer of each connection `serve` accepts (Linux doubles it).
const SEND_BUFFER_BYTES: usize = 128 * 1024;

/// When the response being written on a connection was made (set by the connection's
/// service, read by its [`WriteDeadline`]).
type ResponseClock = Arc<std::sync::Mutex<Option<tokio::time::Instant>>>;

/// A connection that must write each response within `limit` of the moment the
/// handler made it: a client that reads too slowly (or not at all) gets an error on
/// the next write, or when the deadline passes while a write waits for the socket,
/// and hyper closes the connection. The clock is set by the service when a response
/// is made, so nothing the client sends can restart it.
struct WriteDeadline<S> {
    inner: S,
    limit: std::time::Duration,
    clock: ResponseClock,
    /// Armed while a write waits for the socket, for the deadline it was armed for.
    timer: Option<(tokio::time::Instant, std::pin::Pin<Box<tokio::time::Sleep>>)>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: std::time::Duration, clock: ResponseClock) -> Self {
        Self {
            inner,
            limit,
            clock,
            timer: None,
        }
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        let made = *self.clock.lock().unwrap_or_else(|e| e.into_inner());
        made.map(|t| t + self.limit)
    }

    fn expired(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client took longer than {:?} to read a response",
                self.limit
            ),
        )
    }

    /// Fails a write past the deadline, and wakes a waiting one when it passes.
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        write: impl FnOnce(&mut S, &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        let deadline = self.deadline();
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return std::task::Poll::Ready(Err(self.expired()));
        }
        let outcome = write(&mut self.inner, cx);
        if outcome.is_ready() {
            self.timer = None;
            return outcome;
        }
        if let Some(deadline) = deadline {
            if self
                .timer
                .as_ref()
                .is_none_or(|(armed, _)| *armed != deadline)
            {
                self.timer = Some((deadline, Box::pin(tokio::time::sleep_until(deadline))));
            }
            if let Some((_, timer)) = self.timer.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                return std::task::Poll::Ready(Err(self.expired()));
            }
        }
        std::task::Poll::Pending
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.guard(cx, |s, cx| std::pin::Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.guard(cx, |s, cx| {
            std::pin::Pin::new(s).poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.guard(cx, |s, cx| std::pin::Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` with `timeouts` until `shutdown` completes, then waits
/// for the connections in flight. This is `axum::serve` plus what it does not set: a
/// header-read timeout, a deadline for each response to reach the client, and a bound
/// on the connections served at once. Copy it for your own server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: Timeouts,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = with_request_timeout(app, timeouts.request);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(timeouts.max_connections.max(1)));
    loop {
        // A slot first: past the bound, connections wait in the listen queue.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: wait, then keep serving.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // The service notes when each response is made; the connection's writes must
        // end within `response_write` of it.
        let clock = ResponseClock::default();
        let inner = hyper_util::service::TowerToHyperService::new(app.clone());
        let made = clock.clone();
        // A bounded send buffer: what a slow client has not read waits in the
        // server's writes, where the deadline reaches it, not in the kernel.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES);
        let service = hyper::service::service_fn(move |req| {
            let response = hyper::service::Service::call(&inner, req);
            let made = made.clone();
            async move {
                let response = response.await;
                *made.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
                response
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.header_read)
            .serve_connection(
                TokioIo::new(WriteDeadline::new(stream, timeouts.response_write, clock)),
                service,
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    graceful.shutdown().await;
    Ok(())
}
