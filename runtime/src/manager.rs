//! The entry point: lookups with a cache, lifecycle, tenant-bound connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::context::TenantContext;
use crate::db::{Source, TenantDb, TenantTx};
use crate::error::Error;
use futures::StreamExt;

use crate::migrate::{
    Canary, MigrateOptions, MigrationEvent, MigrationOutcome, MigrationReport,
    TenantMigrationResult, TenantMigrationStatus, TenantMigrations,
};
use crate::pool::{DEFAULT_SERVER, PoolConfig, Servers, TenantPools};
use crate::repository::TenantRepository;
use crate::resolve::Candidate;
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
    /// Host name -> the tenant that registered it, or `None` if none did.
    domains: RwLock<HashMap<String, DomainEntry>>,
    cache_ttl: Duration,
    registry_lookups: AtomicU64,
    /// The ids of every tenant (not deleted) and when the set was read: an id not in
    /// a fresh set is answered as unknown without a registry query, so a flood of
    /// made-up ids does not drive the registry. Ids named by a change (local or
    /// NOTIFY) are added; the set is re-read after the cache TTL; `None` until read.
    known: RwLock<Option<(std::collections::HashSet<TenantId>, Instant)>>,
    /// One re-read of the known ids at a time; the others wait for it.
    refreshing: tokio::sync::Mutex<()>,
    /// Dropped with the manager, which stops the change listener.
    _shutdown: watch::Sender<()>,
}

/// A domain lookup: the tenant (or none) and when it was fetched.
type DomainEntry = (Option<Arc<Tenant>>, Instant);

struct Cached {
    tenant: Arc<Tenant>,
    fetched: Instant,
    /// The invalidation generation before the record was read.
    generation: u64,
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
    listen: bool,
    from_template: bool,
    servers: Vec<(String, sqlx::postgres::PgConnectOptions)>,
    database_prefix: Option<String>,
    tenant_connections: Option<sqlx::postgres::PgConnectOptions>,
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

    /// Whether to listen for changes made by other app instances (`LISTEN`/`NOTIFY`
    /// on the registry's channel) and drop their cache entries at once (default on).
    /// The cache TTL stays the bound when a notification is missed.
    pub fn listen_for_changes(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Whether new tenants are cloned from a template schema (default) instead of
    /// replaying every tenant migration; see [`crate::template`].
    pub fn provision_from_template(mut self, yes: bool) -> Self {
        self.from_template = yes;
        self
    }

    /// A server `database` tenants can be placed on, by name (`default` is the
    /// registry's server). `options` name a maintenance database (for example
    /// `postgres`) used to create and drop tenant databases.
    pub fn server(
        mut self,
        name: impl Into<String>,
        options: sqlx::postgres::PgConnectOptions,
    ) -> Self {
        self.servers.push((name.into(), options));
        self
    }

    /// The prefix of tenant database names (default `tenant_`); see
    /// [`TenantService::with_database_prefix`].
    pub fn database_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.database_prefix = Some(prefix.into());
        self
    }

    /// Where tenant connections of the default server connect (default: where the
    /// registry's pool connects), for example a PgBouncer in front of the server. The
    /// registry's pool must reach the server directly: change notifications
    /// (`LISTEN`), advisory locks and provisioning need a session of their own.
    ///
    /// Behind a transaction pooler set [`PoolConfig::binding`] to
    /// [`Binding::Transaction`](crate::pool::Binding::Transaction); `build` refuses the
    /// session binding there, because it would mix tenants.
    pub fn tenant_connections(mut self, options: sqlx::postgres::PgConnectOptions) -> Self {
        self.tenant_connections = Some(options);
        self
    }

    /// Creates or upgrades the registry and returns the manager.
    ///
    /// Checks first that the registry's pool is not behind a transaction pooler, and
    /// that tenant connections are not either unless the transaction binding is set.
    pub async fn build(self) -> Result<TenantManager, Error> {
        let registry_options = (*self.pool.connect_options()).clone();
        if crate::pool::behind_transaction_pooler(&registry_options).await? {
            return Err(Error::Validation(
                "the registry's pool goes through a transaction pooler (two client connections \
                 were served by one server backend): build the manager on a pool with a direct \
                 URL, and give the pooler's address to `TenantManagerBuilder::tenant_connections`"
                    .to_owned(),
            ));
        }
        let tenant_base = self
            .tenant_connections
            .clone()
            .unwrap_or_else(|| registry_options.clone());
        if self.pool_config.binding == crate::pool::Binding::Session
            && crate::pool::behind_transaction_pooler(&tenant_base).await?
        {
            return Err(Error::Validation(
                "tenant connections go through a transaction pooler (two client connections were \
                 served by one server backend), where session settings would mix tenants: set \
                 `PoolConfig::binding` to `Binding::Transaction`"
                    .to_owned(),
            ));
        }
        let repo = TenantRepository::new(self.pool.clone(), &self.control_schema)?;
        let mut service = TenantService::new(repo.clone(), self.migrations.clone());
        if let Some(prefix) = &self.database_prefix {
            service = service.with_database_prefix(prefix)?;
        }
        repo.ensure_schema().await?;
        let base = registry_options;
        // A quarter of the server's connections, unless the budget is set.
        let server_max: i64 = sqlx::query_scalar(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'max_connections'",
        )
        .fetch_one(&self.pool)
        .await?;
        let budget = u32::try_from(server_max / 4).unwrap_or(u32::MAX).max(2);
        let mut servers = Servers::default();
        servers.add(DEFAULT_SERVER, base.clone());
        for (name, options) in self.servers {
            servers.add(name, options);
        }
        let channel = repo.channel();
        let (shutdown, stopped) = watch::channel(());
        let manager = TenantManager {
            inner: Arc::new(Inner {
                service: service
                    .provision_from_template(self.from_template)
                    .with_servers(servers.clone()),
                pools: TenantPools::with_servers(tenant_base, servers, self.pool_config, budget),
                cache: RwLock::new(HashMap::new()),
                domains: RwLock::new(HashMap::new()),
                cache_ttl: self.cache_ttl,
                registry_lookups: AtomicU64::new(0),
                known: RwLock::new(None),
                refreshing: tokio::sync::Mutex::new(()),
                _shutdown: shutdown,
            }),
        };
        if self.listen {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&channel).await?;
            tokio::spawn(listen_for_changes(
                listener,
                Arc::downgrade(&manager.inner),
                stopped,
            ));
        }
        Ok(manager)
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
            listen: true,
            from_template: true,
            servers: Vec::new(),
            database_prefix: None,
            tenant_connections: None,
        }
    }

    /// The rules layer.
    pub fn service(&self) -> &TenantService {
        &self.inner.service
    }

    /// The tenant connections (one budgeted pool per server).
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
        if !self.may_exist(id).await? {
            return Ok(None);
        }
        self.inner.registry_lookups.fetch_add(1, Ordering::Relaxed);
        let generation = self.inner.pools.generation();
        let found = self.inner.service.repository().find(id).await?;
        let Some(tenant) = found.filter(|t| t.status != TenantStatus::Deleted) else {
            return Ok(None);
        };
        let tenant = Arc::new(tenant);
        self.remember(&tenant, generation);
        Ok(Some(tenant))
    }

    /// `false` if `id` is surely not a tenant: it is not in the set of known ids, read
    /// within the cache TTL (and kept current by change notifications).
    async fn may_exist(&self, id: &TenantId) -> Result<bool, Error> {
        let fresh = |known: &Option<(std::collections::HashSet<TenantId>, Instant)>| {
            known
                .as_ref()
                .filter(|(_, read)| read.elapsed() < self.inner.cache_ttl)
                .map(|(ids, _)| ids.contains(id))
        };
        if self.inner.cache_ttl.is_zero() {
            return Ok(true);
        }
        if let Some(known) = fresh(&self.inner.known.read().unwrap_or_else(|e| e.into_inner())) {
            return Ok(known);
        }
        let _one_at_a_time = self.inner.refreshing.lock().await;
        if let Some(known) = fresh(&self.inner.known.read().unwrap_or_else(|e| e.into_inner())) {
            return Ok(known);
        }
        // Re-read the set (one query per TTL, however many ids come in). Changes that
        // arrive while it is read are added after, so none is lost.
        let generation = self.inner.pools.generation();
        self.inner.registry_lookups.fetch_add(1, Ordering::Relaxed);
        let ids: std::collections::HashSet<TenantId> = self
            .inner
            .service
            .repository()
            .ids()
            .await?
            .into_iter()
            .collect();
        let mut known = self.inner.known.write().unwrap_or_else(|e| e.into_inner());
        if self.inner.pools.generation() == generation {
            *known = Some((ids, Instant::now()));
            return Ok(known.as_ref().is_some_and(|(ids, _)| ids.contains(id)));
        }
        // Something changed meanwhile: do not trust this read; ask for the id itself.
        Ok(true)
    }

    fn remember(&self, tenant: &Arc<Tenant>, generation: u64) {
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
                },
            );
    }

    /// The tenant with this id if it may be served now: [`Error::TenantNotFound`]
    /// (404) if there is none, [`Error::TenantNotActive`] (403) if it is suspended or
    /// still provisioning.
    pub async fn resolve(&self, id: &TenantId) -> Result<Arc<Tenant>, Error> {
        let tenant = self
            .get_tenant_by_id(id)
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
            Candidate::Id(id) => self.resolve(&id).await.map(Some),
            Candidate::Domain(domain) => match self.tenant_by_domain(&domain).await? {
                Some(tenant) => servable(tenant).map(Some),
                None => Ok(None),
            },
        }
    }

    /// The tenant that registered `domain` (cached like lookups by id).
    pub async fn tenant_by_domain(&self, domain: &str) -> Result<Option<Arc<Tenant>>, Error> {
        {
            let domains = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
            if let Some((hit, fetched)) = domains.get(domain)
                && fetched.elapsed() < self.inner.cache_ttl
            {
                return Ok(hit.clone());
            }
        }
        self.inner.registry_lookups.fetch_add(1, Ordering::Relaxed);
        let generation = self.inner.pools.generation();
        let found = self
            .inner
            .service
            .repository()
            .find_by_domain(domain)
            .await?
            .map(Arc::new);
        if let Some(tenant) = &found {
            self.remember(tenant, generation);
        }
        let mut domains = self
            .inner
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Bound the misses a client can make us remember.
        if domains.len() >= 10_000 {
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
        let tenant = self.resolve(id).await?;
        Ok(TenantContext::scope(tenant, future).await)
    }

    /// Creates a tenant (all or nothing; see [`TenantService::create`]).
    ///
    /// Runs to its end even if the caller is cancelled (a request timeout, a client
    /// that went away): provisioning is not cancel-safe (a database made outside a
    /// transaction, a session advisory lock), so it runs in a task of its own.
    pub async fn create_tenant(&self, new: NewTenant) -> Result<Tenant, Error> {
        let manager = self.clone();
        let tenant = detached(async move { manager.inner.service.create(&new).await }).await?;
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
            let result = manager.inner.service.delete(&id).await;
            manager.invalidate(&id);
            result
        })
        .await
    }

    /// Applies pending tenant migrations to every schema tenant that is not deleted.
    ///
    /// Tenants with nothing to apply are found with one query and not touched.
    /// The others are migrated `concurrency` at a time, each version in its own
    /// transaction; one tenant's failure does not stop the others. With a canary,
    /// that many tenants go first and any failure among them halts the run; after it,
    /// the run stops starting tenants once `max_failures` is exceeded. Rerunning
    /// resumes: every tenant continues at the first version it lacks.
    ///
    /// ```no_run
    /// use tenantry::migrate::{Canary, MigrateOptions, MigrationEvent};
    /// # async fn f(manager: tenantry::TenantManager) -> Result<(), tenantry::Error> {
    /// let options = MigrateOptions { concurrency: 4, canary: Some(Canary::Percent(5.0)), max_failures: Some(10) };
    /// let report = manager
    ///     .migrate_all(&options, |event| {
    ///         if let MigrationEvent::TenantFinished { done, pending, .. } = event {
    ///             eprintln!("{done}/{pending}");
    ///         }
    ///     })
    ///     .await?;
    /// assert!(report.is_success(), "{} tenants failed", report.failed());
    /// # Ok(()) }
    /// ```
    pub async fn migrate_all(
        &self,
        options: &MigrateOptions,
        on_event: impl Fn(&MigrationEvent) + Send + Sync,
    ) -> Result<MigrationReport, Error> {
        let service = &self.inner.service;
        let tenants = self.migrated_tenants().await?;
        let applied = service.repository().all_applied_migrations().await?;
        let mut results: std::collections::BTreeMap<TenantId, MigrationOutcome> =
            std::collections::BTreeMap::new();
        let mut todo = Vec::new();
        for tenant in &tenants {
            let done = applied.get(&tenant.id).map(Vec::as_slice).unwrap_or(&[]);
            let (pending, drift) = service.migrations().compare(done);
            if let Some(d) = drift.first() {
                results.insert(
                    tenant.id.clone(),
                    MigrationOutcome::Failed {
                        error: format!("drifted: {d}"),
                    },
                );
            } else if pending.is_empty() {
                results.insert(tenant.id.clone(), MigrationOutcome::Current);
            } else {
                todo.push(tenant.id.clone());
            }
        }
        let pending_total = todo.len();
        on_event(&MigrationEvent::Planned {
            total: tenants.len(),
            pending: pending_total,
        });
        let canary = match options.canary {
            None => 0,
            Some(Canary::Count(n)) => n,
            Some(Canary::Percent(p)) => {
                ((pending_total as f64) * p.clamp(0.0, 100.0) / 100.0).ceil() as usize
            }
        }
        .min(pending_total);
        let rest = todo.split_off(canary);
        let waves = [(todo, true), (rest, false)];
        let concurrency = options.concurrency.max(1);
        let done = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicUsize::new(0);
        let mut halted: Option<String> = None;
        for (wave, is_canary) in waves {
            if wave.is_empty() {
                continue;
            }
            if halted.is_some() {
                for id in wave {
                    results.insert(id, MigrationOutcome::Skipped);
                }
                continue;
            }
            let stop = std::sync::atomic::AtomicBool::new(false);
            let outcomes: Vec<(TenantId, MigrationOutcome)> = futures::stream::iter(wave)
                .map(|id| {
                    let (done, failed, stop, on_event) = (&done, &failed, &stop, &on_event);
                    async move {
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            return (id, MigrationOutcome::Skipped);
                        }
                        let migrated = service.migrate(&id).await;
                        // Its schema version changed: bindings and cached records follow.
                        self.invalidate(&id);
                        let outcome = match migrated {
                            Ok(versions) if versions.is_empty() => MigrationOutcome::Current,
                            Ok(versions) => MigrationOutcome::Applied { versions },
                            Err(e) => {
                                let n =
                                    failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                                if !is_canary && options.max_failures.is_some_and(|max| n > max) {
                                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                                }
                                MigrationOutcome::Failed {
                                    error: e.to_string(),
                                }
                            }
                        };
                        let finished = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        on_event(&MigrationEvent::TenantFinished {
                            tenant: id.clone(),
                            outcome: outcome.clone(),
                            done: finished,
                            pending: pending_total,
                        });
                        (id, outcome)
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            let wave_failures = outcomes
                .iter()
                .filter(|(_, o)| matches!(o, MigrationOutcome::Failed { .. }))
                .count();
            results.extend(outcomes);
            if is_canary && wave_failures > 0 {
                halted = Some(format!(
                    "{wave_failures} of {canary} canary tenants failed; the other tenants were not touched"
                ));
            } else if stop.load(std::sync::atomic::Ordering::SeqCst) {
                halted = Some(format!(
                    "more than {} tenants failed; the run stopped starting new tenants",
                    options.max_failures.unwrap_or_default()
                ));
            }
            if let Some(reason) = &halted {
                on_event(&MigrationEvent::Halted {
                    reason: reason.clone(),
                });
            }
        }
        Ok(MigrationReport {
            results: results
                .into_iter()
                .map(|(tenant, outcome)| TenantMigrationResult { tenant, outcome })
                .collect(),
            halted,
        })
    }

    /// Tenants with a schema or a database of their own (schema and database
    /// strategies): the ones tenant migrations apply to.
    async fn migrated_tenants(&self) -> Result<Vec<Tenant>, Error> {
        let mut tenants = self.list_tenants().await?;
        tenants.retain(|t| t.strategy != crate::tenant::Strategy::Row);
        Ok(tenants)
    }

    /// Where every schema tenant that is not deleted stands against the migration
    /// source (row tenants share tables, which the application migrates itself).
    pub async fn migration_status(&self) -> Result<Vec<TenantMigrationStatus>, Error> {
        let service = &self.inner.service;
        let tenants = self.migrated_tenants().await?;
        let applied = service.repository().all_applied_migrations().await?;
        Ok(tenants
            .into_iter()
            .map(|tenant| {
                let done = applied.get(&tenant.id).map(Vec::as_slice).unwrap_or(&[]);
                let (pending, drift) = service.migrations().compare(done);
                TenantMigrationStatus {
                    version: done.iter().map(|(v, _)| *v).max(),
                    tenant: tenant.id,
                    status: tenant.status,
                    pending,
                    drift,
                }
            })
            .collect())
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
            registry: self.inner.service.repository().clone(),
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

impl Inner {
    fn invalidate(&self, id: &TenantId) {
        // Bindings first: a record cached after this point is fresh.
        self.pools.invalidate(id);
        // A changed id may be a new one: known until the registry says otherwise.
        if let Some((ids, _)) = self
            .known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            ids.insert(id.clone());
        }
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (hit, _)| hit.as_ref().is_some_and(|t| t.id != *id));
    }

    fn invalidate_all(&self) {
        self.pools.invalidate_all();
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Drops cache entries of tenants changed by any app instance, until the manager is
/// dropped. A lost connection may have missed notifications, so it clears the cache.
async fn listen_for_changes(
    mut listener: PgListener,
    inner: std::sync::Weak<Inner>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let next = tokio::select! {
            next = listener.try_recv() => next,
            _ = stopped.changed() => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        match next {
            Ok(Some(notification)) => match TenantId::parse(notification.payload()) {
                Ok(id) => inner.invalidate(&id),
                Err(_) => inner.invalidate_all(),
            },
            Ok(None) => {
                tracing::warn!("tenant change listener reconnecting; cache cleared");
                inner.invalidate_all();
            }
            Err(error) => {
                tracing::warn!(%error, "tenant change listener failed; retrying");
                inner.invalidate_all();
                drop(inner);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
