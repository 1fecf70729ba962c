//! Routing a tenant to its connections.
//!
//! Every tenant gets its own small sqlx pool whose connections are born bound to that
//! tenant: the `search_path` is a startup parameter of the connection, so binding costs
//! no round trip, and a connection never changes tenant in its life. A connection that
//! goes back to a pool can only ever be handed to the same tenant again, so no state it
//! carries (a `search_path`, a temp table, a session setting, even a transaction left
//! open by a cancelled request) can be seen by another tenant.
//!
//! Pools are opened lazily and kept in a bounded, least-recently-used map; an evicted
//! pool is dropped from the map (requests in flight finish with it, its connections
//! close when they let go), and the tenant's next request simply opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::Error;
use crate::strategy::{TENANT_SETTING, quote_ident, search_path};
use crate::tenant::{Strategy, Tenant, TenantId};

/// Settings of the per-tenant pools.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most connections one tenant may hold open at once (default 4).
    pub max_connections_per_tenant: u32,
    /// Most tenant pools kept open; the least recently used is closed beyond it
    /// (default 64). Total tenant connections stay below
    /// `max_pools * max_connections_per_tenant`.
    pub max_pools: usize,
    /// How long a request waits for a connection before giving up with 503 (default 5 s).
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long (default 60 s).
    pub idle_timeout: Duration,
    /// Connections are recycled after this long, which bounds the catalog cache a
    /// backend accumulates (default 30 min).
    pub max_lifetime: Duration,
    /// A schema every schema-strategy tenant may also read (appended to its
    /// `search_path`).
    pub shared_schema: Option<String>,
    /// The schema holding the shared tables of row-strategy tenants: their whole
    /// `search_path` (default `public`).
    pub row_schema: Option<String>,
    /// A role row-strategy connections switch to at start (`SET ROLE` as a startup
    /// parameter), for when they cannot log in as [`PoolConfig::row_user`]. Row-level
    /// security then applies to that role; weaker than `row_user`, because the
    /// session user could `RESET ROLE`.
    pub row_role: Option<String>,
    /// The role row-strategy tenants log in as: one that owns no tenant table and has
    /// no `BYPASSRLS`, so that row-level security applies to it. When unset they log in
    /// as the registry's user, and row-level security is only as strong as that role.
    pub row_user: Option<String>,
    /// The password of [`PoolConfig::row_user`], if it needs one.
    pub row_password: Option<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections_per_tenant: 4,
            max_pools: 64,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(30 * 60),
            shared_schema: None,
            row_schema: None,
            row_role: None,
            row_user: None,
            row_password: None,
        }
    }
}

/// The name of the registry's own server.
pub const DEFAULT_SERVER: &str = "default";

/// The PostgreSQL servers tenants can be placed on, by name. `default` is the
/// registry's server (the manager's pool).
#[derive(Debug, Clone, Default)]
pub struct Servers {
    named: HashMap<String, PgConnectOptions>,
}

impl Servers {
    /// Adds (or replaces) a server. Its options name a maintenance database (for
    /// example `postgres`) used to create and drop tenant databases.
    pub fn add(&mut self, name: impl Into<String>, options: PgConnectOptions) {
        self.named.insert(name.into(), options);
    }

    /// The connect options of server `name`.
    pub fn get(&self, name: &str) -> Result<&PgConnectOptions, Error> {
        self.named.get(name).ok_or_else(|| {
            Error::Validation(format!(
                "unknown server `{}` (configured: {})",
                name.escape_debug(),
                {
                    let mut names: Vec<&str> = self.named.keys().map(String::as_str).collect();
                    names.sort();
                    names.join(", ")
                }
            ))
        })
    }
}

struct Entry {
    pool: PgPool,
    last_used: AtomicU64,
}

/// The per-tenant pools. Cheap to clone.
#[derive(Clone)]
pub struct TenantPools {
    inner: Arc<Inner>,
}

struct Inner {
    base: PgConnectOptions,
    servers: Servers,
    config: PoolConfig,
    pools: RwLock<HashMap<TenantId, Arc<Entry>>>,
    clock: AtomicU64,
    opened: AtomicU64,
    evicted: AtomicU64,
}

impl std::fmt::Debug for TenantPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPools")
            .field("config", &self.inner.config)
            .field("open", &self.open_pools())
            .finish()
    }
}

/// Counters of pool activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Pools open now.
    pub open: usize,
    /// Pools opened so far.
    pub opened: u64,
    /// Pools closed to stay within `max_pools`.
    pub evicted: u64,
}

impl TenantPools {
    /// Pools connecting with `base` (host, credentials, database) and `config`.
    pub fn new(base: PgConnectOptions, config: PoolConfig) -> Self {
        let mut servers = Servers::default();
        servers.add(DEFAULT_SERVER, base.clone());
        Self::with_servers(base, servers, config)
    }

    /// Pools for tenants on several servers; `base` is the default server.
    pub fn with_servers(base: PgConnectOptions, servers: Servers, mut config: PoolConfig) -> Self {
        config.max_pools = config.max_pools.max(1);
        config.max_connections_per_tenant = config.max_connections_per_tenant.max(1);
        Self {
            inner: Arc::new(Inner {
                base,
                servers,
                config,
                pools: RwLock::new(HashMap::new()),
                clock: AtomicU64::new(0),
                opened: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The configured servers.
    pub fn servers(&self) -> &Servers {
        &self.inner.servers
    }

    /// The pool of `tenant`, opened (lazily, without I/O) if needed.
    pub(crate) fn pool_for(&self, tenant: &Tenant) -> Result<PgPool, Error> {
        let tick = self.inner.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = self.read().get(&tenant.id) {
            entry.last_used.store(tick, Ordering::Relaxed);
            return Ok(entry.pool.clone());
        }
        let mut pools = self.inner.pools.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = pools.get(&tenant.id) {
            entry.last_used.store(tick, Ordering::Relaxed);
            return Ok(entry.pool.clone());
        }
        // No I/O (the pool connects lazily), so it is made under the lock, and only
        // when no other request made it first.
        let pool = self.open(tenant)?;
        while pools.len() >= self.inner.config.max_pools {
            let Some(victim) = pools
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if pools.remove(&victim).is_some() {
                // Not closed: requests that already took this pool finish with it, and
                // its connections close when the last of them lets go.
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        pools.insert(
            tenant.id.clone(),
            Arc::new(Entry {
                pool: pool.clone(),
                last_used: AtomicU64::new(tick),
            }),
        );
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        Ok(pool)
    }

    fn open(&self, tenant: &Tenant) -> Result<PgPool, Error> {
        let c = &self.inner.config;
        // The tenant is bound by startup parameters: no round trip, and the
        // connection never serves another tenant.
        let options = match tenant.strategy {
            Strategy::Schema => self.inner.base.clone().options([(
                "search_path",
                search_path(&tenant.id, c.shared_schema.as_deref()),
            )]),
            Strategy::Database => self
                .inner
                .servers
                .get(&tenant.server)?
                .clone()
                .database(&tenant.schema_name),
            Strategy::Row => {
                let shared = quote_ident(c.row_schema.as_deref().unwrap_or("public"));
                let mut options = self.inner.base.clone().options([
                    ("search_path", shared.as_str()),
                    (TENANT_SETTING, tenant.id.as_str()),
                ]);
                if let Some(role) = &c.row_role {
                    options = options.options([("role", role.as_str())]);
                }
                if let Some(user) = &c.row_user {
                    options = options.username(user);
                    if let Some(password) = &c.row_password {
                        options = options.password(password);
                    }
                }
                options
            }
        };
        Ok(PgPoolOptions::new()
            .max_connections(c.max_connections_per_tenant)
            .min_connections(0)
            .acquire_timeout(c.acquire_timeout)
            .idle_timeout(Some(c.idle_timeout))
            .max_lifetime(Some(c.max_lifetime))
            .connect_lazy_with(options))
    }

    /// Closes the pool of `id` (after its checked-out connections come back), for
    /// example before its schema is dropped.
    pub async fn close_tenant(&self, id: &TenantId) {
        let entry = self
            .inner
            .pools
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(entry) = entry {
            entry.pool.close().await;
        }
    }

    /// Closes every pool.
    pub async fn close_all(&self) {
        let entries: Vec<_> = self
            .inner
            .pools
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, entry) in entries {
            entry.pool.close().await;
        }
    }

    /// Pools open now.
    pub fn open_pools(&self) -> usize {
        self.read().len()
    }

    /// Counters of pool activity.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            open: self.open_pools(),
            opened: self.inner.opened.load(Ordering::Relaxed),
            evicted: self.inner.evicted.load(Ordering::Relaxed),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TenantId, Arc<Entry>>> {
        self.inner.pools.read().unwrap_or_else(|e| e.into_inner())
    }
}
