//! RealWorld ("Conduit") on tenantry: the whole RealWorld API, where every tenant is
//! an independent Conduit community with its own users, articles, tags, favorites,
//! follows and comments.
//!
//! A request names its community by a path prefix, `/t/{tenant}/api/...` (so the
//! official API suite runs unchanged against `APIURL=http://host/t/{tenant}/api`), or
//! by its host, `/api/...` on `{tenant}.localhost` or a tenant's registered domain.
//!
//! - [`model`]: the tables, as `#[derive(TenantEntity)]` models.
//! - [`api`]: the handlers, each `#[tenant_scoped]`.
//! - [`auth`]: passwords (Argon2id) and tenant-bound tokens (JWT), with the
//!   [`TenantPolicy`](tenantry::TenantPolicy) that refuses another tenant's token.
//! - [`error`]: problem details with the spec's `errors` member.
//!
//! Schema and database tenants get the tables from the tenant migration
//! (`migrations/tenant`); row tenants share them in schema `conduit`
//! ([`prepare_database`]), under row-level security.

pub mod api;
pub mod auth;
pub mod error;
pub mod model;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};
use tenantry::{
    Error, HostResolver, NewTenant, PathPrefixResolver, PoolConfig, Strategy, TenantId,
    TenantLayer, TenantManager, TenantMigrations, TenantResolver,
};
use tower_http::trace::TraceLayer;

pub use auth::{TokenPolicy, Tokens};

/// The schema of row tenants' shared tables.
pub const ROW_SCHEMA: &str = "conduit";
/// The role row tenants' connections switch to: no `BYPASSRLS`, owns nothing.
pub const ROW_ROLE: &str = "conduit_row_tenant";

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The tenant manager.
    pub manager: TenantManager,
    /// Issues and checks the tenant-bound tokens.
    pub tokens: Tokens,
}

/// The pool settings: row tenants use schema [`ROW_SCHEMA`] as role [`ROW_ROLE`].
pub fn pool_config() -> PoolConfig {
    PoolConfig {
        row_schema: Some(ROW_SCHEMA.to_owned()),
        row_role: Some(ROW_ROLE.to_owned()),
        ..PoolConfig::default()
    }
}

/// The tenant migrations, embedded.
pub fn tenant_migrations() -> TenantMigrations {
    TenantMigrations::new(sqlx::migrate!("./migrations/tenant"))
        .expect("the embedded migrations run in transactions")
}

/// The manager over `pool` with Conduit's migrations and pool settings.
pub async fn manager(pool: sqlx::PgPool) -> Result<TenantManager, Error> {
    manager_with(pool, pool_config()).await
}

/// [`manager`] with other pool settings (keep [`pool_config`]'s `row_schema` and
/// `row_role`).
pub async fn manager_with(pool: sqlx::PgPool, config: PoolConfig) -> Result<TenantManager, Error> {
    manager_for(pool, config, "tenant_").await
}

/// [`manager_with`], database tenants' databases named `{database_prefix}{id}`
/// (two registries on one server need two prefixes).
pub async fn manager_for(
    pool: sqlx::PgPool,
    config: PoolConfig,
    database_prefix: &str,
) -> Result<TenantManager, Error> {
    prepare_database(&pool).await?;
    TenantManager::builder(pool)
        .migrations(tenant_migrations())
        .pool_config(config)
        .database_prefix(database_prefix)
        .build()
        .await
}

/// The API's routes, as the RealWorld spec names them.
fn api() -> Router<AppState> {
    use api::*;
    Router::new()
        .route("/users", post(register))
        .route("/users/login", post(login))
        .route("/user", get(current_user).put(update_user))
        .route("/profiles/{username}", get(get_profile))
        .route("/profiles/{username}/follow", post(follow).delete(unfollow))
        .route("/articles", get(list_articles).post(create_article))
        .route("/articles/feed", get(feed))
        .route(
            "/articles/{slug}",
            get(get_article).put(update_article).delete(delete_article),
        )
        .route(
            "/articles/{slug}/favorite",
            post(favorite).delete(unfavorite),
        )
        .route(
            "/articles/{slug}/comments",
            get(list_comments).post(add_comment),
        )
        .route("/articles/{slug}/comments/{id}", delete(delete_comment))
        .route("/tags", get(list_tags))
}

/// The application: the API under `/t/{tenant}/api` and, by host, under `/api`;
/// `GET /health` outside any tenant.
pub fn router(state: AppState, base_domain: &str) -> Router {
    let resolvers: Vec<Arc<dyn TenantResolver>> = vec![
        Arc::new(PathPrefixResolver::new("/t/")),
        Arc::new(HostResolver::domains().subdomains_of(base_domain)),
    ];
    let tenants = TenantLayer::new(state.manager.clone())
        .resolvers(resolvers)
        .policy(TokenPolicy(state.tokens.clone()));
    Router::new()
        .nest("/t/{tenant}/api", api())
        .nest("/api", api())
        .layer(tenants)
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(TraceLayer::new_for_http())
}

/// Unknown paths: a 404 in problem details, like every other error.
async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("no such route".to_owned())
}

/// A known path with another method: 405 in problem details.
async fn method_not_allowed() -> axum::response::Response {
    use axum::response::IntoResponse;
    let problem = tenantry::Problem {
        type_: "about:blank".to_owned(),
        title: "Method Not Allowed".to_owned(),
        status: 405,
        detail: "this route does not take that method".to_owned(),
    };
    problem.into_response()
}

/// Creates `id` with `strategy` unless it exists; `true` if it was created.
pub async fn ensure_tenant(
    manager: &TenantManager,
    id: &str,
    strategy: Strategy,
) -> Result<bool, Error> {
    let id: TenantId = id.parse()?;
    if manager.find_tenant(&id).await?.is_some() {
        return Ok(false);
    }
    let mut new = NewTenant::new(id.clone(), format!("Conduit community {id}"));
    new.strategy = strategy;
    match manager.create_tenant(new).await {
        Ok(_) => Ok(true),
        // Another instance made it meanwhile.
        Err(Error::TenantExists(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Parses `id:strategy,...` (`strategy` one of `schema`, `row`, `database`; `schema`
/// when left out).
pub fn parse_tenant_list(spec: &str) -> Result<Vec<(String, Strategy)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (id, strategy) = item.split_once(':').unwrap_or((item, "schema"));
            let strategy = match strategy {
                "schema" => Strategy::Schema,
                "row" => Strategy::Row,
                "database" => Strategy::Database,
                other => return Err(format!("`{other}` is not schema, row or database")),
            };
            let id = id.parse::<TenantId>().map_err(|e| format!("`{id}`: {e}"))?;
            Ok((id.as_str().to_owned(), strategy))
        })
        .collect()
}

/// Creates (idempotently, also when several instances start at once) the shared
/// tables of row tenants in schema [`ROW_SCHEMA`], under forced row-level security,
/// and the role their connections use.
pub async fn prepare_database(pool: &sqlx::PgPool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('conduit.prepare_database'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(include_str!("../migrations/shared.sql"))
        .execute(&mut *tx)
        .await?;
    for table in [
        "users",
        "follows",
        "articles",
        "article_tags",
        "favorites",
        "comments",
    ] {
        tenantry::strategy::install_rls(&mut tx, &format!("{ROW_SCHEMA}.{table}"), "tenant_id")
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
