//! The entry point: lookups with a cache, lifecycle, tenant-bound connections.

mod builder;
mod changes;
mod fanout;
mod runner;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use builder::TenantManagerBuilder;
pub use fanout::{FanOut, Selection, TenantOutcome};

use crate::context::TenantContext;
use crate::db::{Source, TenantDb, TenantTx};
use crate::error::Error;
use crate::lifecycle::Lifecycle;
use crate::pool::{PoolStats, TenantPools};
use crate::tenant::{Candidate, NewTenant, Tenant, TenantId, TenantLimits, TenantStatus};

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
/// assert_eq!(manager.find_tenant(&acme.id).await?.unwrap().name, "Acme");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantManager {
    inner: Arc<Inner>,
}

struct Inner {
    lifecycle: Lifecycle,
    pools: TenantPools,
    cache: RwLock<HashMap<TenantId, Cached>>,
    /// Host name -> the tenant that registered it, or `None` if none did.
    domains: RwLock<HashMap<String, DomainEntry>>,
    cache_ttl: Duration,
    registry_lookups: AtomicU64,
    /// The ids of every tenant (not deleted) and when the set was read: an id not in
    /// a fresh set is answered as unknown without a registry query, so a flood of
    /// made-up ids does not drive the registry. Ids named by a change (local or
    /// NOTIFY) are added; the set is re-read after the cache TTL; `None` until read.
    known: RwLock<Option<(HashMap<TenantId, String>, Instant)>>,
    /// One re-read of the known ids at a time; the others wait for it.
    refreshing: tokio::sync::Mutex<()>,
    /// Every registered domain and when the set was read: a host not in a fresh set
    /// names no tenant, without a registry query. Dropped by every change (a changed
    /// tenant may have a new domain), re-read after the cache TTL; `None` until read.
    known_domains: RwLock<Option<(std::collections::HashSet<String>, Instant)>>,
    /// One re-read of the known domains at a time.
    refreshing_domains: tokio::sync::Mutex<()>,
    /// Citus on the registry's server (its coordinator), if any.
    citus: Option<Arc<crate::citus::Citus>>,
    /// Dropped with the manager, which stops the change listener.
    _shutdown: watch::Sender<()>,
}

/// The longest DNS name; a longer host names no tenant.
const MAX_DOMAIN_BYTES: usize = 253;

/// The most bytes of host names the domain cache keeps before it drops its misses.
const DOMAIN_CACHE_BYTES: usize = 1 << 20;

/// A domain lookup: the tenant (or none) and when it was fetched.
type DomainEntry = (Option<Arc<Tenant>>, Instant);

struct Cached {
    tenant: Arc<Tenant>,
    /// When the record was last known current (read, or confirmed by a sweep).
    fetched: Instant,
    /// The invalidation generation before the record was read.
    generation: u64,
    /// The digest of the record as read (see [`TenantRepository::fingerprints`]).
    fingerprint: Option<String>,
}

impl std::fmt::Debug for TenantManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantManager")
            .field(
                "control_schema",
                &self.inner.lifecycle.repository().control_schema(),
            )
            .field("pools", &self.inner.pools)
            .finish_non_exhaustive()
    }
}

impl TenantManager {
    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
    }

    pub(crate) fn citus(&self) -> Option<&crate::citus::Citus> {
        self.inner.citus.as_deref()
    }

    pub(crate) fn pools(&self) -> &TenantPools {
        &self.inner.pools
    }

    /// The tenant connections' numbers: open, idle, peak, reused, rebound, ...
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pools.stats()
    }

    /// The tenant migrations this manager provisions and checks tenants with (given to
    /// the builder, or registered by the application: see
    /// [`TenantManagerBuilder::migrations_from_registry`](crate::TenantManagerBuilder::migrations_from_registry)).
    pub fn migrations(&self) -> &crate::TenantMigrations {
        self.lifecycle().migrations()
    }

    /// The tenant connections' numbers per server (see [`PoolStats`]).
    pub fn pool_stats_by_server(&self) -> Vec<crate::pool::ServerStats> {
        self.inner.pools.server_stats()
    }

    /// Exports the pool's gauges and counters per server through the installed
    /// `metrics` recorder (see [`crate::metrics`]); call it where the metrics are read.
    pub fn record_pool_metrics(&self) {
        crate::metrics::record_pool(&self.inner.pools.server_stats());
    }

    /// How many times a lookup went to the registry (cache misses).
    pub fn registry_lookups(&self) -> u64 {
        self.inner.registry_lookups.load(Ordering::Relaxed)
    }

    /// The tenant with this id, or `None` if there is none (deleted tenants count as
    /// none), whatever its status. Lookups come in two kinds: `find_*` answer
    /// `Option` for any status; `resolve_*` answer only a tenant that may be served
    /// now, and an error (404, 403) otherwise.
    pub async fn find_tenant(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, Error> {
        if let Some(hit) = self.cached(id) {
            return Ok(Some(hit));
        }
        if !self.may_exist(id).await? {
            return Ok(None);
        }
        if let Some(hit) = self.confirmed(id) {
            return Ok(Some(hit));
        }
        self.inner.registry_lookups.fetch_add(1, Ordering::Relaxed);
        let generation = self.inner.pools.generation();
        let found = self
            .inner
            .lifecycle
            .repository()
            .find_fingerprinted(id)
            .await?;
        let Some((tenant, fingerprint)) = found.filter(|(t, _)| t.status != TenantStatus::Deleted)
        else {
            return Ok(None);
        };
        let tenant = Arc::new(tenant);
        self.remember(&tenant, generation, Some(fingerprint));
        Ok(Some(tenant))
    }

    /// An expired cache entry that the latest sweep of the registry (read after the
    /// entry, within the TTL) shows unchanged: current again, with no query. A change
    /// that reached this instance (a notification, a local change) removed the entry
    /// already; this bounds one that did not by the TTL, as a lookup would.
    fn confirmed(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        let (swept, read) = {
            let known = self.inner.known.read().unwrap_or_else(|e| e.into_inner());
            let (fingerprints, read) = known.as_ref()?;
            if read.elapsed() >= self.inner.cache_ttl {
                return None;
            }
            (fingerprints.get(id)?.clone(), *read)
        };
        let mut cache = self.inner.cache.write().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get_mut(id)?;
        let current = entry.fetched < read
            && entry.fingerprint.as_deref() == Some(swept.as_str())
            && !self.inner.pools.changed_since(id, entry.generation);
        if !current {
            return None;
        }
        entry.fetched = read;
        Some(entry.tenant.clone())
    }

    /// `false` if `id` is surely not a tenant: it is not in the set of known ids, read
    /// within the cache TTL (and kept current by change notifications).
    async fn may_exist(&self, id: &TenantId) -> Result<bool, Error> {
        let repo = self.inner.lifecycle.repository();
        self.in_known_set(
            &self.inner.known,
            &self.inner.refreshing,
            |ids: &HashMap<TenantId, String>| ids.contains_key(id),
            // Every record's digest with its id.
            || async { Ok(repo.fingerprints().await?.into_iter().collect()) },
        )
        .await
    }

    /// `false` if `domain` is surely registered to no tenant: it is not in the set of
    /// registered domains, read within the cache TTL (and dropped by every change).
    async fn domain_may_exist(&self, domain: &str) -> Result<bool, Error> {
        let repo = self.inner.lifecycle.repository();
        self.in_known_set(
            &self.inner.known_domains,
            &self.inner.refreshing_domains,
            |domains: &std::collections::HashSet<String>| domains.contains(domain),
            || repo.all_domains(),
        )
        .await
    }

    /// Whether `contains` holds in the set kept in `known`, re-read with `read` (one
    /// query per cache TTL however many lookups come in, one re-read at a time under
    /// `refreshing`); `true` when caching is off. A read overtaken by a change is not
    /// kept (the change may be newer than what it read), and the caller asks the
    /// registry about the one entry.
    async fn in_known_set<S, Fut>(
        &self,
        known: &RwLock<Option<(S, Instant)>>,
        refreshing: &tokio::sync::Mutex<()>,
        contains: impl Fn(&S) -> bool,
        read: impl FnOnce() -> Fut,
    ) -> Result<bool, Error>
    where
        Fut: std::future::Future<Output = Result<S, Error>>,
    {
        if self.inner.cache_ttl.is_zero() {
            return Ok(true);
        }
        let fresh = || {
            known
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .filter(|(_, at)| at.elapsed() < self.inner.cache_ttl)
                .map(|(set, _)| contains(set))
        };
        if let Some(found) = fresh() {
            return Ok(found);
        }
        let _one_at_a_time = refreshing.lock().await;
        if let Some(found) = fresh() {
            return Ok(found);
        }
        let generation = self.inner.pools.generation();
        self.inner.registry_lookups.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now();
        let set = read().await?;
        let found = contains(&set);
        let mut known = known.write().unwrap_or_else(|e| e.into_inner());
        if self.inner.pools.generation() != generation {
            // Something changed meanwhile: do not trust this read; ask for the entry.
            return Ok(true);
        }
        *known = Some((set, at));
        Ok(found)
    }

    fn remember(&self, tenant: &Arc<Tenant>, generation: u64, fingerprint: Option<String>) {
        // Invalidated while it was read: the record may predate the change.
        if self.inner.pools.changed_since(&tenant.id, generation) {
            return;
        }
        self.inner
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                tenant.id.clone(),
                Cached {
                    tenant: tenant.clone(),
                    fetched: Instant::now(),
                    generation,
                    fingerprint,
                },
            );
    }

    /// The tenant with this id if it may be served now: [`Error::TenantNotFound`]
    /// (404) if there is none, [`Error::TenantNotActive`] (403) if it is suspended or
    /// still provisioning.
    pub async fn resolve_tenant(&self, id: &TenantId) -> Result<Arc<Tenant>, Error> {
        let tenant = self
            .find_tenant(id)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        servable(tenant)
    }

    fn cached(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(id)?;
        (entry.fetched.elapsed() < self.inner.cache_ttl).then(|| entry.tenant.clone())
    }

    /// Drops the cached entries of `id` (and every cached domain miss), so the next
    /// lookup asks the registry.
    pub fn invalidate(&self, id: &TenantId) {
        self.inner.invalidate(id);
    }

    /// Drops every cached entry.
    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    /// The tenant a resolver's candidate names, if it may be served now.
    ///
    /// An id must name an active tenant (404 / 403 otherwise). A domain that no
    /// tenant registered names no tenant (`Ok(None)`); one that a suspended tenant
    /// registered is a 403.
    pub async fn resolve_candidate(
        &self,
        candidate: Candidate,
    ) -> Result<Option<Arc<Tenant>>, Error> {
        match candidate {
            Candidate::Id(id) => self.resolve_tenant(&id).await.map(Some),
            Candidate::Domain(domain) => match self.find_tenant_by_domain(&domain).await? {
                Some(tenant) => servable(tenant).map(Some),
                None => Ok(None),
            },
        }
    }

    /// The tenant that registered `domain` (cached like lookups by id). A host longer
    /// than a DNS name (253 bytes), or not among the registered domains (a set read
    /// once per cache TTL), names no tenant without a registry query.
    pub async fn find_tenant_by_domain(&self, domain: &str) -> Result<Option<Arc<Tenant>>, Error> {
        if domain.len() > MAX_DOMAIN_BYTES {
            return Ok(None);
        }
        {
            let domains = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
            if let Some((hit, fetched)) = domains.get(domain)
                && fetched.elapsed() < self.inner.cache_ttl
            {
                return Ok(hit.clone());
            }
        }
        if !self.domain_may_exist(domain).await? {
            return Ok(None);
        }
        self.inner.registry_lookups.fetch_add(1, Ordering::Relaxed);
        let generation = self.inner.pools.generation();
        let found = self
            .inner
            .lifecycle
            .repository()
            .find_by_domain(domain)
            .await?
            .map(Arc::new);
        if let Some(tenant) = &found {
            self.remember(tenant, generation, None);
        }
        let mut domains = self
            .inner
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Bound what a client can make us remember, in entries and in bytes.
        if domains.len() >= 10_000
            || domains.keys().map(String::len).sum::<usize>() >= DOMAIN_CACHE_BYTES
        {
            domains.retain(|_, (hit, _)| hit.is_some());
        }
        domains.insert(domain.to_owned(), (found.clone(), Instant::now()));
        Ok(found)
    }

    /// Runs `future` as tenant `id` (which must be active): the pattern for background
    /// jobs, which carry the tenant id and re-enter its scope when they run.
    ///
    /// ```no_run
    /// # async fn f(manager: tenantry::TenantManager) -> Result<(), tenantry::Error> {
    /// // The job was queued with its tenant id, serialised as text.
    /// let tenant_id: tenantry::TenantId = "acme".parse()?;
    /// let rows = manager
    ///     .run_as(&tenant_id, async {
    ///         let mut db = manager.db().await?; // bound to `acme`
    ///         sqlx::query("DELETE FROM sessions WHERE expired").execute(&mut db).await?;
    ///         Ok::<_, tenantry::Error>(())
    ///     })
    ///     .await??;
    /// # Ok(()) }
    /// ```
    pub async fn run_as<F: std::future::Future>(
        &self,
        id: &TenantId,
        future: F,
    ) -> Result<F::Output, Error> {
        let tenant = self.resolve_tenant(id).await?;
        Ok(TenantContext::scope(tenant, future).await)
    }

    /// Creates a tenant, all or nothing: if any step fails nothing is left behind
    /// (no registry row, schema, database or rows), and the id can be used again once
    /// the cause is fixed. How the tenant is provisioned depends on its strategy (see
    /// [`crate::strategy`]).
    ///
    /// Runs to its end even if the caller is cancelled (a request timeout, a client
    /// that went away): provisioning is not cancel-safe (a database made outside a
    /// transaction, a session advisory lock), so it runs in a task of its own.
    pub async fn create_tenant(&self, new: NewTenant) -> Result<Tenant, Error> {
        let manager = self.clone();
        let tenant = detached(async move { manager.inner.lifecycle.create(&new).await }).await?;
        self.invalidate(&tenant.id);
        Ok(tenant)
    }

    /// Every tenant that is not deleted, ordered by id.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, Error> {
        self.inner.lifecycle.repository().list().await
    }

    /// Changes a tenant's limits ([`TenantLimits`]; unset fields take the layer's
    /// defaults). Every instance applies them within the change notification's delay:
    /// its [`TenantLimitLayer`](crate::TenantLimitLayer) at the next request, its
    /// connections' statement timeout at their next binding.
    pub async fn set_tenant_limits(
        &self,
        id: &TenantId,
        limits: TenantLimits,
    ) -> Result<Tenant, Error> {
        let result = self.inner.lifecycle.set_limits(id, limits).await;
        self.invalidate(id);
        result
    }

    /// Adds `domain` to the tenant's domains (idempotent); with `primary`, or if the
    /// tenant has no primary domain yet, it becomes the primary one. Another tenant's
    /// domain is a 409; a name that is not a public host name a 400/422. The host
    /// resolver of every instance follows (its cache entries of the tenant and its
    /// cached misses are dropped by the change notification).
    ///
    /// ```no_run
    /// # async fn f(manager: tenantry::TenantManager) -> Result<(), tenantry::Error> {
    /// let acme = "acme".parse()?;
    /// manager.add_tenant_domain(&acme, "acme.example.com", true).await?;
    /// manager.add_tenant_domain(&acme, "www.acme.example.com", false).await?;
    /// let t = manager.remove_tenant_domain(&acme, "www.acme.example.com").await?;
    /// assert_eq!(t.domains, ["acme.example.com"]);
    /// # Ok(()) }
    /// ```
    pub async fn add_tenant_domain(
        &self,
        id: &TenantId,
        domain: &str,
        primary: bool,
    ) -> Result<Tenant, Error> {
        let result = self.inner.lifecycle.add_domain(id, domain, primary).await;
        self.invalidate(id);
        result
    }

    /// Removes a domain of the tenant (the primary one only as the last).
    pub async fn remove_tenant_domain(&self, id: &TenantId, domain: &str) -> Result<Tenant, Error> {
        let result = self.inner.lifecycle.remove_domain(id, domain).await;
        self.invalidate(id);
        result
    }

    /// Makes one of the tenant's domains its primary one.
    pub async fn set_primary_domain(&self, id: &TenantId, domain: &str) -> Result<Tenant, Error> {
        let result = self.inner.lifecycle.set_primary_domain(id, domain).await;
        self.invalidate(id);
        result
    }

    /// Suspends a tenant: its requests get 403 until it is resumed.
    pub async fn suspend_tenant(&self, id: &TenantId) -> Result<Tenant, Error> {
        let result = self.inner.lifecycle.suspend(id).await;
        self.invalidate(id);
        result
    }

    /// Resumes a suspended tenant.
    pub async fn resume_tenant(&self, id: &TenantId) -> Result<Tenant, Error> {
        let result = self.inner.lifecycle.resume(id).await;
        self.invalidate(id);
        result
    }

    /// Deletes a suspended tenant and its data. Like creation, it runs to its end even
    /// if the caller is cancelled.
    pub async fn delete_tenant(&self, id: &TenantId) -> Result<Tenant, Error> {
        let manager = self.clone();
        let id = id.clone();
        detached(async move {
            manager.invalidate(&id);
            // No connection stays bound to it; wait for the ones in use, so that no
            // write of theirs lands after the data is gone (and DROP SCHEMA is not
            // blocked).
            if !manager.inner.pools.drain_tenant(&id).await {
                return Err(Error::TenantBusy(id.clone()));
            }
            let result = manager.inner.lifecycle.delete(&id).await;
            manager.invalidate(&id);
            result
        })
        .await
    }

    /// A handle bound to `tenant`; it takes a connection from the tenant's server
    /// when first used.
    pub async fn tenant_db(&self, tenant: Arc<Tenant>) -> Result<TenantDb, Error> {
        Ok(TenantDb::new(self.source(&tenant), tenant))
    }

    /// A transaction bound to `tenant`; it takes a connection and begins when first
    /// used.
    pub async fn tenant_tx(&self, tenant: Arc<Tenant>) -> Result<TenantTx, Error> {
        Ok(TenantTx::new(self.source(&tenant), tenant))
    }

    /// Where `tenant`'s handles get connections. The record is known fresh as of the
    /// cache entry it came from; any other record is checked against the registry
    /// before its first connection.
    fn source(&self, tenant: &Arc<Tenant>) -> Source {
        let read_at = self
            .inner
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tenant.id)
            .filter(|c| Arc::ptr_eq(&c.tenant, tenant))
            .map(|c| c.generation);
        Source {
            pools: self.inner.pools.clone(),
            registry: self.inner.lifecycle.repository().clone(),
            read_at,
        }
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

/// Runs `work` in a task of its own, so that it finishes even if the caller's future
/// is dropped; the caller gets its result if it is still waiting.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work)
        .await
        .map_err(|e| Error::Registry(format!("a tenant operation's task failed: {e}")))?
}

/// `tenant` if it may be served now; [`Error::TenantNotActive`] (403) if it is
/// suspended or still provisioning.
fn servable(tenant: Arc<Tenant>) -> Result<Arc<Tenant>, Error> {
    if tenant.status != TenantStatus::Active {
        return Err(Error::TenantNotActive {
            id: tenant.id.clone(),
            status: tenant.status,
        });
    }
    Ok(tenant)
}
