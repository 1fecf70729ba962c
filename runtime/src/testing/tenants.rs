//! Tenants of every strategy for a test: what `#[tenantry::test]` sets up.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::{Connection, PgConnection};

use super::{TestDatabase, server_url};
use crate::db::TenantDb;
use crate::error::Error;
use crate::manager::TenantManager;
use crate::migrate::TenantMigrations;
use crate::naming::quote_ident;
use crate::pool::PoolConfig;
use crate::tenant::{NewTenant, Strategy, Tenant};

/// What [`TestTenants::setup`] makes.
///
/// ```
/// use tenantry::{Strategy, testing::TestTenantsOptions};
///
/// let two_row_tenants = TestTenantsOptions {
///     strategies: vec![Strategy::Row],
///     per_strategy: 2,
///     ..TestTenantsOptions::default()
/// };
/// assert_eq!(TestTenantsOptions::default().strategies.len(), 3);
/// # let _ = two_row_tenants;
/// ```
#[derive(Debug, Clone)]
pub struct TestTenantsOptions {
    /// The strategies of the tenants (default: all three).
    pub strategies: Vec<Strategy>,
    /// Tenants per strategy (default 1), named `schema-1`, `row-1`, `database-1`, ...
    pub per_strategy: usize,
    /// The tenant migrations directory (sqlx format) of schema and database tenants.
    pub migrations: Option<PathBuf>,
    /// SQL run once on the test database before the tenants exist: the shared tables
    /// of row tenants (each table with a `tenant_id` column is put under tenantry's
    /// row-level security afterwards, if the SQL did not do it).
    pub shared: Option<PathBuf>,
    /// The schema of the shared tables (default `public`).
    pub row_schema: Option<String>,
}

impl Default for TestTenantsOptions {
    fn default() -> Self {
        Self {
            strategies: vec![Strategy::Schema, Strategy::Row, Strategy::Database],
            per_strategy: 1,
            migrations: None,
            shared: None,
            row_schema: None,
        }
    }
}

/// A throwaway database with a manager and tenants of the requested strategies,
/// removed (tenant databases and the test role included) when the last clone is
/// dropped. Row tenants act as a role of their own without `BYPASSRLS`, so their
/// row-level security is real even when the test server's login is a superuser.
///
/// ```no_run
/// use tenantry::testing::{TestTenants, TestTenantsOptions};
///
/// # async fn f() -> Result<(), tenantry::Error> {
/// let t = TestTenants::setup(TestTenantsOptions::default()).await?;
/// for tenant in t.tenants() {
///     let mut db = t.db(tenant).await?;
///     sqlx::query("SELECT 1").execute(&mut db).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TestTenants {
    inner: Arc<Inner>,
}

struct Inner {
    manager: TenantManager,
    tenants: Vec<Arc<Tenant>>,
    /// Dropped before the role, whose privileges live in it.
    db: Option<TestDatabase>,
    role: String,
    /// Tenant databases (and their template) made on the server.
    databases: Vec<String>,
}

impl std::fmt::Debug for TestTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestTenants")
            .field(
                "tenants",
                &self
                    .inner
                    .tenants
                    .iter()
                    .map(|t| t.id.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn setup_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("test tenants: {what}: {e}"))
}

impl TestTenants {
    /// A fresh database, the manager over it, and the tenants `options` asks for.
    pub async fn setup(options: TestTenantsOptions) -> Result<Self, Error> {
        let db = TestDatabase::create()
            .await
            .map_err(|e| setup_error("no test database", e))?;
        let pool = sqlx::PgPool::connect(db.url()).await?;
        // Names of this test's own: tests share a server.
        let digits = db.tag();
        let prefix = db.database_prefix();
        let role = format!("tenantry_test_{digits}");
        let row_schema = options
            .row_schema
            .clone()
            .unwrap_or_else(|| "public".to_owned());
        if let Some(path) = &options.shared {
            let sql = std::fs::read_to_string(path)
                .map_err(|e| setup_error(&format!("cannot read {}", path.display()), e))?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await?;
        }
        let (r, s) = (quote_ident(&role), quote_ident(&row_schema));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {r} NOLOGIN NOBYPASSRLS;
             GRANT USAGE ON SCHEMA {s} TO {r};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {r};"
        )))
        .execute(&pool)
        .await?;
        {
            let mut conn = pool.acquire().await?;
            for table in crate::strategy::tables_missing_rls(&mut conn, "tenantry").await? {
                // The catalog quoted the name; `rls_sql` takes it plain.
                crate::strategy::install_rls(&mut conn, &table.replace('"', ""), "tenant_id")
                    .await?;
            }
        }
        let migrations = match &options.migrations {
            Some(dir) => TenantMigrations::from_dir(dir).await?,
            None => TenantMigrations::empty(),
        };
        let manager = TenantManager::builder(pool)
            .migrations(migrations)
            .database_prefix(prefix.clone())
            .pool_config(PoolConfig {
                row_schema: Some(row_schema),
                row_role: Some(role.clone()),
                ..PoolConfig::default()
            })
            .build()
            .await?;
        let mut inner = Inner {
            manager,
            tenants: Vec::new(),
            db: Some(db),
            role,
            databases: vec![format!("{prefix}_template")],
        };
        for strategy in &options.strategies {
            for n in 1..=options.per_strategy {
                let id = format!("{strategy}-{n}").parse()?;
                let new =
                    NewTenant::new(id, format!("{strategy} tenant {n}")).with_strategy(*strategy);
                let tenant = inner.manager.create_tenant(new).await?;
                if tenant.strategy == Strategy::Database {
                    inner.databases.push(tenant.storage.clone());
                }
                inner.tenants.push(Arc::new(tenant));
            }
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The manager over the test database.
    pub fn manager(&self) -> &TenantManager {
        &self.inner.manager
    }

    /// Every tenant, in the order of the strategies asked for.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.inner.tenants
    }

    /// The tenants of one strategy.
    pub fn of(&self, strategy: Strategy) -> Vec<Arc<Tenant>> {
        self.inner
            .tenants
            .iter()
            .filter(|t| t.strategy == strategy)
            .cloned()
            .collect()
    }

    /// A handle bound to `tenant`.
    pub async fn db(&self, tenant: &Arc<Tenant>) -> Result<TenantDb, Error> {
        self.inner.manager.tenant_db(tenant.clone()).await
    }

    /// A handle for every tenant, in [`Self::tenants`]' order.
    pub async fn handles(&self) -> Result<Vec<TenantDb>, Error> {
        let mut handles = Vec::new();
        for tenant in self.tenants() {
            handles.push(self.db(tenant).await?);
        }
        Ok(handles)
    }

    /// The URL of the test database.
    pub fn url(&self) -> &str {
        self.inner.db.as_ref().map_or("", TestDatabase::url)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let databases = std::mem::take(&mut self.databases);
        let role = self.role.clone();
        let Ok(admin_url) = server_url() else { return };
        // The test database first (it holds the role's privileges), then the rest.
        drop(self.db.take());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut conn) = PgConnection::connect(&admin_url).await else {
                    return;
                };
                for db in databases {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_ident(&db)
                    )))
                    .execute(&mut conn)
                    .await;
                }
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP ROLE IF EXISTS {}",
                    quote_ident(&role)
                )))
                .execute(&mut conn)
                .await;
                let _ = conn.close().await;
            });
        })
        .join();
    }
}

/// Asserts that every handle sees only its own tenant's rows: `sql` selects one
/// text column naming the tenant each visible row belongs to (for example `SELECT
/// owner FROM notes`). Panics with what leaked otherwise; returns how many rows each
/// handle saw. The check the isolation soak makes, for an application's own tables.
///
/// ```no_run
/// # async fn f(t: tenantry::testing::TestTenants) -> Result<(), tenantry::Error> {
/// let mut handles = t.handles().await?;
/// let seen = tenantry::testing::assert_isolated(&mut handles, "SELECT owner FROM notes").await?;
/// assert!(seen.iter().all(|n| *n > 0));
/// # Ok(()) }
/// ```
pub async fn assert_isolated(
    handles: &mut [TenantDb],
    sql: &'static str,
) -> Result<Vec<usize>, Error> {
    let mut seen = Vec::new();
    let mut leaks = Vec::new();
    for handle in handles.iter_mut() {
        let own = handle.tenant().id.as_str().to_owned();
        let owners: Vec<String> = sqlx::query_scalar(sql).fetch_all(&mut *handle).await?;
        for owner in owners.iter().filter(|o| **o != own) {
            leaks.push(format!("{own} sees a row of {owner}"));
        }
        seen.push(owners.len());
    }
    assert!(
        leaks.is_empty(),
        "rows leaked across tenants ({} of them): {}",
        leaks.len(),
        leaks
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(seen)
}

/// Runs an async test body with [`TestTenants`] on a runtime of its own: what
/// `#[tenantry::test]` expands to. Setup failures panic with their cause.
#[doc(hidden)]
pub fn run<F, Fut>(options: TestTenantsOptions, body: F) -> Fut::Output
where
    F: FnOnce(TestTenants) -> Fut,
    Fut: Future,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the test");
    rt.block_on(async move {
        let tenants = match TestTenants::setup(options).await {
            Ok(t) => t,
            Err(e) => panic!("#[tenantry::test] could not set up its tenants: {e}"),
        };
        body(tenants).await
    })
}
