//! The entry point: lookups with a cache, lifecycle, tenant-bound connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::context::TenantContext;
use crate::db::{TenantDb, TenantTx};
use crate::error::Error;
use crate::migrate::TenantMigrations;
use crate::pool::{PoolConfig, TenantPools};
use crate::repository::TenantRepository;
use crate::service::TenantService;
use crate::tenant::{NewTenant, Tenant, TenantId, TenantStatus};

/// Coordinates tenant operations: the one object an application holds.
///
/// Cheap to clone (an `Arc` inside). Lookups go to an in-memory cache first, then
/// to the registry; every change made through a manager invalidates its cache, and
/// entries expire after [`TenantManagerBuilder::cache_ttl`] so that changes made
/// elsewhere are seen within that time.
///
/// ```no_run
/// use tenantry::{NewTenant, TenantManager, TenantMigrations};
///
/// # async fn f(pool: sqlx::PgPool) -> Result<(), tenantry::Error> {
/// let manager = TenantManager::builder(pool)
///     .migrations(TenantMigrations::from_dir("migrations/tenant").await?)
///     .build()
///     .await?;
/// let acme = manager
///     .create_tenant(NewTenant::new("acme".parse()?, "Acme").with_domain("acme.example.com"))
///     .await?;
/// assert_eq!(manager.get_tenant_by_id(&acme.id).await?.unwrap().name, "Acme");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantManager {
    inner: Arc<Inner>,
}

struct Inner {
    service: TenantService,
    pools: TenantPools,
    cache: RwLock<HashMap<TenantId, Cached>>,
    cache_ttl: Duration,
    registry_lookups: AtomicU64,
}

struct Cached {
    tenant: Arc<Tenant>,
    fetched: Instant,
}

impl std::fmt::Debug for TenantManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantManager")
            .field(
                "control_schema",
                &self.inner.service.repository().control_schema(),
            )
            .field("pools", &self.inner.pools)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TenantManager`].
#[derive(Debug)]
pub struct TenantManagerBuilder {
    pool: PgPool,
    control_schema: String,
    migrations: TenantMigrations,
    pool_config: PoolConfig,
    cache_ttl: Duration,
}

impl TenantManagerBuilder {
    /// The schema holding the registry tables (default `tenantry`).
    pub fn control_schema(mut self, name: impl Into<String>) -> Self {
        self.control_schema = name.into();
        self
    }

    /// The tenant migrations applied to every new tenant.
    pub fn migrations(mut self, migrations: TenantMigrations) -> Self {
        self.migrations = migrations;
        self
    }

    /// Settings of the per-tenant pools.
    pub fn pool_config(mut self, config: PoolConfig) -> Self {
        self.pool_config = config;
        self
    }

    /// How long a looked-up tenant is trusted before the registry is asked again
    /// (default 5 s). Changes made through this manager take effect at once.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Creates or upgrades the registry and returns the manager.
    pub async fn build(self) -> Result<TenantManager, Error> {
        let repo = TenantRepository::new(self.pool.clone(), &self.control_schema)?;
        repo.ensure_schema().await?;
        let base = (*self.pool.connect_options()).clone();
        Ok(TenantManager {
            inner: Arc::new(Inner {
                service: TenantService::new(repo, self.migrations),
                pools: TenantPools::new(base, self.pool_config),
                cache: RwLock::new(HashMap::new()),
                cache_ttl: self.cache_ttl,
                registry_lookups: AtomicU64::new(0),
            }),
        })
    }
}

impl TenantManager {
    /// Starts building a manager whose registry lives on `pool`. Tenant connections
    /// use the same server, database and credentials as `pool`.
    pub fn builder(pool: PgPool) -> TenantManagerBuilder {
        TenantManagerBuilder {
            pool,
            control_schema: "tenantry".to_owned(),
            migrations: TenantMigrations::empty(),
            pool_config: PoolConfig::default(),
            cache_ttl: Duration::from_secs(5),
        }
    }

    /// The rules layer.
    pub fn service(&self) -> &TenantService {
        &self.inner.service
    }

    /// The per-tenant pools.
    pub fn pools(&self) -> &TenantPools {
        &self.inner.pools
    }

    /// How many times a lookup went to the registry (cache misses).
    pub fn registry_lookups(&self) -> u64 {
        self.inner.registry_lookups.load(Ordering::Relaxed)
    }

    /// The tenant with this id, or `None` if there is none (deleted tenants count as none).
    pub async fn get_tenant_by_id(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, Error> {
        if let Some(hit) = self.cached(id) {
            return Ok(Some(hit));
        }
        self.inner.registry_lookups.fetch_add(1, Ordering::Relaxed);
        let found = self.inner.service.repository().find(id).await?;
        let Some(tenant) = found.filter(|t| t.status != TenantStatus::Deleted) else {
            return Ok(None);
        };
        let tenant = Arc::new(tenant);
        self.inner
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                Cached {
                    tenant: tenant.clone(),
                    fetched: Instant::now(),
                },
            );
        Ok(Some(tenant))
    }

    /// The tenant with this id if it may be served now: [`Error::TenantNotFound`]
    /// (404) if there is none, [`Error::TenantNotActive`] (403) if it is suspended or
    /// still provisioning.
    pub async fn resolve(&self, id: &TenantId) -> Result<Arc<Tenant>, Error> {
        let tenant = self
            .get_tenant_by_id(id)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        if tenant.status != TenantStatus::Active {
            return Err(Error::TenantNotActive {
                id: id.clone(),
                status: tenant.status,
            });
        }
        Ok(tenant)
    }

    fn cached(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(id)?;
        (entry.fetched.elapsed() < self.inner.cache_ttl).then(|| entry.tenant.clone())
    }

    /// Drops the cached entry of `id`, so the next lookup asks the registry.
    pub fn invalidate(&self, id: &TenantId) {
        self.inner
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Creates a tenant (all or nothing; see [`TenantService::create`]).
    pub async fn create_tenant(&self, new: NewTenant) -> Result<Tenant, Error> {
        let tenant = self.inner.service.create(&new).await?;
        self.invalidate(&tenant.id);
        Ok(tenant)
    }

    /// Every tenant that is not deleted, ordered by id.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, Error> {
        self.inner.service.repository().list().await
    }

    /// Suspends a tenant: its requests get 403 until it is resumed.
    pub async fn suspend_tenant(&self, id: &TenantId) -> Result<Tenant, Error> {
        let result = self.inner.service.suspend(id).await;
        self.invalidate(id);
        result
    }

    /// Resumes a suspended tenant.
    pub async fn resume_tenant(&self, id: &TenantId) -> Result<Tenant, Error> {
        let result = self.inner.service.resume(id).await;
        self.invalidate(id);
        result
    }

    /// Deletes a suspended tenant and its data.
    pub async fn delete_tenant(&self, id: &TenantId) -> Result<Tenant, Error> {
        self.invalidate(id);
        // No new connections for it; wait for the ones in use, so DROP SCHEMA is not blocked.
        self.inner.pools.close_tenant(id).await;
        let result = self.inner.service.delete(id).await;
        self.invalidate(id);
        result
    }

    /// Applies pending tenant migrations to every tenant, one after the other, and
    /// returns how many versions ran for each.
    pub async fn migrate_all(&self) -> Result<Vec<(TenantId, Result<usize, Error>)>, Error> {
        let mut results = Vec::new();
        for tenant in self.list_tenants().await? {
            let outcome = self.inner.service.migrate(&tenant.id).await;
            results.push((tenant.id, outcome));
        }
        Ok(results)
    }

    /// A pooled connection bound to `tenant`.
    pub async fn tenant_db(&self, tenant: Arc<Tenant>) -> Result<TenantDb, Error> {
        TenantDb::acquire(&self.inner.pools, tenant).await
    }

    /// A transaction bound to `tenant`.
    pub async fn tenant_tx(&self, tenant: Arc<Tenant>) -> Result<TenantTx, Error> {
        TenantTx::begin(&self.inner.pools, tenant).await
    }

    /// A pooled connection bound to the current tenant ([`TenantContext`]), or
    /// [`Error::NoTenantInScope`].
    pub async fn db(&self) -> Result<TenantDb, Error> {
        self.tenant_db(TenantContext::require()?).await
    }

    /// A transaction bound to the current tenant, or [`Error::NoTenantInScope`].
    pub async fn tx(&self) -> Result<TenantTx, Error> {
        self.tenant_tx(TenantContext::require()?).await
    }
}
