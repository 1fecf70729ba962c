//! Shared helpers of the integration tests.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tenantry::testing::TestDatabase;
use tenantry::{NewTenant, PoolConfig, TenantManager, TenantMigrations};
use tower::ServiceExt;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A fresh database and a registry pool on it.
pub async fn database() -> (TestDatabase, PgPool) {
    let db = TestDatabase::create()
        .await
        .expect("a test database (set DATABASE_URL or install PostgreSQL)");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(db.url())
        .await
        .expect("connect to the test database");
    (db, pool)
}

/// A manager over a fresh database prepared like the saas example (its tenant
/// migrations, its shared tables for row tenants, its row role).
pub async fn manager(config: PoolConfig) -> (TestDatabase, TenantManager) {
    let (db, pool) = database().await;
    saas::prepare_database(&pool)
        .await
        .expect("prepare the database");
    let config = PoolConfig {
        row_schema: config.row_schema.or(saas::pool_config().row_schema),
        row_role: config.row_role.or(saas::pool_config().row_role),
        ..config
    };
    let manager = saas_builder(&db, pool)
        .pool_config(config)
        .build()
        .await
        .expect("build the manager");
    (db, manager)
}

/// A manager builder over `pool` set up as the saas example's (its tenant migrations
/// and pool configuration) with this test's database prefix; a test adds the settings
/// it is about.
pub fn saas_builder(db: &TestDatabase, pool: PgPool) -> tenantry::TenantManagerBuilder {
    TenantManager::builder(pool)
        .migrations(saas::tenant_migrations())
        .database_prefix(db.database_prefix())
        .pool_config(saas::pool_config())
}

/// The saas example's router over `manager`.
pub fn saas_app(manager: &TenantManager) -> Router {
    saas::router(saas::AppState::new(manager.clone(), ADMIN_TOKEN))
}

pub async fn create_with(manager: &TenantManager, id: &str, strategy: tenantry::Strategy) {
    let mut new = NewTenant::new(id.parse().unwrap(), format!("Tenant {id}"));
    new.strategy = strategy;
    manager
        .create_tenant(new)
        .await
        .unwrap_or_else(|e| panic!("create tenant {id}: {e}"));
}

pub async fn create(manager: &TenantManager, id: &str) {
    manager
        .create_tenant(NewTenant::new(id.parse().unwrap(), format!("Tenant {id}")))
        .await
        .unwrap_or_else(|e| panic!("create tenant {id}: {e}"));
}

pub fn empty_migrations() -> TenantMigrations {
    TenantMigrations::empty()
}

/// One response, with its body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem details body with `status`.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type(), "application/problem+json", "{self:?}");
        assert_eq!(self.json["status"], status, "{self:?}");
        assert!(self.json["title"].is_string() && self.json["detail"].is_string());
    }
}

/// Sends one request through `app`.
pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = match body {
        Some(json) => builder
            .header("content-type", "application/json")
            .body(Body::from(json.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "non-JSON body ({status}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        json,
    }
}

/// The admin header as a `send` header pair (its value leaked: tests are short).
#[allow(dead_code)]
pub fn admin_header() -> (&'static str, &'static str) {
    let (name, value) = admin();
    (name, Box::leak(value.into_boxed_str()))
}

/// A second app instance on `db` that would answer from its cache for an hour: what
/// it learns of a change, it learns through the change notifications.
#[allow(dead_code)]
pub async fn second_instance(db: &TestDatabase) -> TenantManager {
    let pool = PgPool::connect(db.url()).await.expect("connect");
    TenantManager::builder(pool)
        .database_prefix(db.database_prefix())
        .cache_ttl(std::time::Duration::from_secs(3600))
        .build()
        .await
        .expect("build the second instance")
}

pub fn admin() -> (&'static str, String) {
    ("authorization", format!("Bearer {ADMIN_TOKEN}"))
}

/// Whether a test that needs PgBouncer can run. Where no `pgbouncer` binary is found
/// it says so loudly and returns false (the test then returns), unless
/// `TENANTRY_REQUIRE_PGBOUNCER` is set (`.ci/run` sets it), in which case it fails the
/// test. These tests are also `#[ignore]`d, so a plain `cargo test` lists them as
/// ignored; this covers `cargo test -- --ignored` on a machine without PgBouncer.
pub fn pgbouncer_or_skip(test: &str) -> bool {
    if tenantry::testing::PgBouncer::binary().is_some() {
        return true;
    }
    let message = format!(
        "{test} (package tenantry-tests) needs PgBouncer and no `pgbouncer` binary was \
         found on PATH or in /usr/sbin, /usr/bin, /usr/local/bin: install the `pgbouncer` \
         package"
    );
    assert!(
        std::env::var_os("TENANTRY_REQUIRE_PGBOUNCER").is_none(),
        "{message} (TENANTRY_REQUIRE_PGBOUNCER is set)"
    );
    eprintln!("\n*** SKIPPED: {message} ***\n");
    false
}

/// One caller of an app: the admin, a tenant named by header, or anyone; each
/// request is sent as [`send`] sends it.
#[allow(dead_code)]
#[derive(Clone)]
pub struct Client {
    app: Router,
    headers: Vec<(&'static str, String)>,
}

#[allow(dead_code)]
impl Client {
    /// A caller without headers.
    pub fn anyone(app: &Router) -> Self {
        Self {
            app: app.clone(),
            headers: Vec::new(),
        }
    }

    /// The admin (its bearer token).
    pub fn admin(app: &Router) -> Self {
        let (name, value) = admin();
        Self::anyone(app).with(name, &value)
    }

    /// A caller of tenant `id` (the `x-tenant-id` header).
    pub fn tenant(app: &Router, id: &str) -> Self {
        Self::anyone(app).with("x-tenant-id", id)
    }

    /// The same caller with one more header.
    pub fn with(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    async fn request(&self, method: Method, uri: &str, body: Option<serde_json::Value>) -> Reply {
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send(&self.app, method, uri, &headers, body).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.request(Method::GET, uri, None).await
    }

    pub async fn delete(&self, uri: &str) -> Reply {
        self.request(Method::DELETE, uri, None).await
    }

    pub async fn post(&self, uri: &str, body: serde_json::Value) -> Reply {
        self.request(Method::POST, uri, Some(body)).await
    }

    pub async fn put(&self, uri: &str, body: serde_json::Value) -> Reply {
        self.request(Method::PUT, uri, Some(body)).await
    }

    pub async fn patch(&self, uri: &str, body: serde_json::Value) -> Reply {
        self.request(Method::PATCH, uri, Some(body)).await
    }
}
