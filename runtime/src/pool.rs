//! Connections for tenants: one budgeted, tenant-aware pool per server.
//!
//! Connections scale with the servers, not with the tenants. Every server (the
//! registry's `default` one and each named one) has a connection budget per process,
//! [`PoolConfig::max_connections`]; every connection tenantry opens for tenant data
//! counts against the budget of its server until it is closed, whatever tenant,
//! strategy or database it serves. The budget is never exceeded: a request that finds
//! no connection within it waits up to [`PoolConfig::acquire_timeout`] and then gets
//! [`Error::PoolExhausted`] (503 with `Retry-After`).
//!
//! A connection carries its **binding**: the tenant *incarnation* (its id and the
//! registry's incarnation number, so a deleted and re-created id is another binding)
//! and the session state that scopes it (`search_path`, the `tenantry.tenant_id`
//! setting, the role). Schema tenants and row tenants that log in as the registry's
//! role share the connections of their server; rebinding one sets the whole binding
//! in one round trip. Database tenants need a connection to their own database, so
//! their connections are only reused by the same tenant; idle connections of cold
//! tenant databases are closed to make room within the budget.
//!
//! Acquiring for a tenant prefers an idle connection already bound to that
//! incarnation (no round trip), else rebinds the least recently used idle connection
//! of the same login, else opens a connection within the budget (closing an idle one
//! of another login or database if the budget is full), else waits.
//!
//! A connection goes back to the idle set as it is only when nothing but tenantry's own
//! statements ran on it (the entity API cannot change session state) and it is not in
//! a transaction. A connection whose raw form a handler used (`&mut db` as an executor,
//! [`crate::TenantDb::conn`]) or whose request was cancelled is checked and reset off
//! the request's path: an open transaction is rolled back, and every session setting,
//! role, temporary table, cursor, advisory lock and `LISTEN` is discarded; a
//! connection that cannot be reset is closed. Nothing a request leaves on a connection
//! reaches another request.
//!
//! A backend keeps catalog entries for every table it touched; a connection is closed
//! after serving [`PoolConfig::max_tenants_per_connection`] distinct tenants, or after
//! [`PoolConfig::max_lifetime`], which bounds that memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use tokio::sync::Notify;

use crate::error::Error;
pub use crate::servers::{DEFAULT_SERVER, Servers};
use crate::strategy::{Scope, ScopeConfig, TENANT_SETTING};
use crate::tenant::{Strategy, Tenant, TenantId};

/// Settings of the tenant connections.
#[derive(Clone)]
pub struct PoolConfig {
    /// The connection budget of each server, per process: the most connections
    /// tenantry opens to one server for tenant data, all tenants and strategies
    /// together. `None` (the default) takes a quarter of the registry server's
    /// `max_connections` (25 with PostgreSQL's default of 100), at least 2.
    ///
    /// With `N` app instances, size it so that `N x budget + N x (registry pool) +
    /// N` (one change listener each) stays below the server's `max_connections`
    /// minus its `superuser_reserved_connections`. Behind a pooler, it bounds the
    /// client connections to the pooler instead.
    pub max_connections: Option<u32>,
    /// Most connections one tenant may hold at once, so one tenant cannot take the
    /// whole budget (default: no limit beyond the budget).
    pub max_connections_per_tenant: Option<u32>,
    /// How long a request waits for a connection before giving up with 503 (default 5 s).
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long (default 60 s).
    pub idle_timeout: Duration,
    /// Connections are closed after this long, which bounds the catalog cache a
    /// backend accumulates (default 30 min).
    pub max_lifetime: Duration,
    /// A connection is closed after it has served this many distinct tenants
    /// (default 1,000): each schema tenant's tables stay in the backend's catalog cache
    /// (about 10 KB per table) until the backend exits. Lower bounds memory, at a price:
    /// a new backend re-reads the catalog of every tenant it serves (`scale_bench`
    /// measured half the throughput at 100 over 1,000 random tenants).
    pub max_tenants_per_connection: u32,
    /// A schema every schema-strategy tenant may also read (appended to its
    /// `search_path`).
    pub shared_schema: Option<String>,
    /// The schema holding the shared tables of row-strategy tenants: their whole
    /// `search_path` (default `public`).
    pub row_schema: Option<String>,
    /// A role row-strategy connections switch to when bound (part of the binding,
    /// like `SET ROLE`), for when they cannot log in as [`PoolConfig::row_user`].
    /// Row-level security then applies to that role. Weaker than `row_user`, because
    /// a handler's own SQL could `RESET ROLE` within its request (the change is
    /// undone before the connection serves another request).
    pub row_role: Option<String>,
    /// The role row-strategy tenants log in as: one that owns no tenant table and has
    /// no `BYPASSRLS`, so that row-level security applies to it. Its connections are
    /// kept apart from the others (within the same budget). When unset they log in
    /// as the registry's user, and row-level security is only as strong as that role.
    pub row_user: Option<String>,
    /// The password of [`PoolConfig::row_user`], if it needs one. Never printed by
    /// `Debug`.
    pub row_password: Option<String>,
    /// How a connection is bound to its tenant: session settings kept between
    /// requests (the default), or settings local to each transaction, for a
    /// transaction pooler (PgBouncer, Supavisor, RDS Proxy) in front of the server.
    pub binding: Binding,
}

/// How tenant connections are bound to their tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Binding {
    /// Session settings (`search_path`, the tenant setting, the role), set in one round
    /// trip when a connection changes tenant and kept while it serves the same one.
    /// Needs connections that are the server's own (direct, or a pooler in session
    /// mode); tenantry refuses to start behind a transaction pooler with it.
    #[default]
    Session,
    /// Pooler-safe: no session state at all. Every unit of work is a transaction
    /// that starts with `BEGIN; SET LOCAL search_path ..; SET LOCAL tenantry.tenant_id
    /// ..; SET LOCAL role ..` in one round trip, and statements are not prepared by name
    /// (PgBouncer before 1.21 keeps no prepared statements in transaction mode). A
    /// `TenantTx` is one such transaction; a `TenantDb` runs each statement in one of
    /// its own (a statement's writes are committed when it returns, as in session
    /// mode). Costs two round trips more per `TenantDb` statement.
    Transaction,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_connections_per_tenant: None,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(30 * 60),
            max_tenants_per_connection: 1000,
            shared_schema: None,
            row_schema: None,
            row_role: None,
            row_user: None,
            row_password: None,
            binding: Binding::Session,
        }
    }
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_tenant",
                &self.max_connections_per_tenant,
            )
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field(
                "max_tenants_per_connection",
                &self.max_tenants_per_connection,
            )
            .field("shared_schema", &self.shared_schema)
            .field("row_schema", &self.row_schema)
            .field("row_role", &self.row_role)
            .field("row_user", &self.row_user)
            .field(
                "row_password",
                &self.row_password.as_ref().map(|_| "<redacted>"),
            )
            .field("binding", &self.binding)
            .finish()
    }
}

/// The `application_name` of tenant connections, unless the connect options set one.
pub const APPLICATION_NAME: &str = "tenantry";

/// Who a connection logs in as and where: connections are only ever reused within
/// one login.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Login {
    server: String,
    /// A tenant database (database strategy), or the server's own database.
    database: Option<String>,
    /// A dedicated login role (row strategy with `row_user`).
    user: Option<String>,
}

/// What a connection is bound to: one incarnation of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BindingKey {
    id: TenantId,
    incarnation: i64,
}

impl BindingKey {
    fn of(tenant: &Tenant) -> Self {
        Self {
            id: tenant.id.clone(),
            incarnation: tenant.incarnation,
        }
    }
}

/// The statements a connection prepared were analysed against this layout: a
/// strategy and a tenant schema version. A connection is rebound to a layout of
/// another version only after its statement cache is cleared, so a cached statement
/// never meets a table of another shape (`cached plan must not change result type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    strategy: Strategy,
    version: Option<i64>,
}

struct Conn {
    raw: PgConnection,
    login: Login,
    binding: Option<BindingKey>,
    /// The statement timeout the session was given (`None`: the server's default).
    timeout: Option<u64>,
    /// The invalidation epoch of the binding's id when it was bound.
    epoch: u64,
    layout: Option<Layout>,
    tenants: HashSet<TenantId>,
    created: Instant,
    idle_since: Instant,
}

/// Counters of the tenant connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Connections open now (in use and idle), all servers.
    pub open: usize,
    /// Idle connections now.
    pub idle: usize,
    /// The most connections that were open at once.
    pub peak_open: usize,
    /// Connections opened so far.
    pub opened: u64,
    /// Connections closed so far (idle timeout, lifetime, recycling, making room,
    /// failed resets).
    pub closed: u64,
    /// Acquisitions that found an idle connection already bound to the tenant.
    pub reused: u64,
    /// Acquisitions that rebound a connection to another tenant.
    pub rebound: u64,
    /// Connections reset after a handler used them directly or a request was cancelled.
    pub reset: u64,
    /// Requests that gave up waiting for a connection.
    pub timed_out: u64,
}

#[derive(Default)]
struct State {
    idle: Vec<Conn>,
    /// Open connections per server (in use, idle, and being opened).
    open: HashMap<String, u32>,
    in_use: HashMap<BindingKey, u32>,
    /// Invalidation epochs per tenant id: a binding made before the current epoch is void.
    epochs: HashMap<TenantId, u64>,
    /// Bumped when every binding is dropped at once.
    global_epoch: u64,
    /// Counts invalidations; with the two maps below it tells whether a tenant record
    /// read at some generation may be stale now.
    generation: u64,
    changed_at: HashMap<TenantId, u64>,
    all_changed_at: u64,
    stats: PoolStats,
}

impl State {
    fn total_open(&self) -> usize {
        self.open.values().map(|n| *n as usize).sum()
    }
    fn epoch(&self, id: &TenantId) -> u64 {
        self.epochs.get(id).copied().unwrap_or(0) + self.global_epoch
    }
    /// Counts a slot taken for a connection about to be opened.
    fn opened_one(&mut self, server: &str) {
        *self.open.entry(server.to_owned()).or_default() += 1;
        let total = self.total_open();
        self.stats.peak_open = self.stats.peak_open.max(total);
    }
    /// Gives back the slot of a connection that is closed now (or was never opened).
    fn closed_one(&mut self, server: &str) {
        if let Some(n) = self.open.get_mut(server) {
            *n = n.saturating_sub(1);
        }
    }
    fn release_key(&mut self, key: &BindingKey) {
        if let Some(n) = self.in_use.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.in_use.remove(key);
            }
        }
    }
}

struct Shared {
    base: PgConnectOptions,
    servers: Servers,
    config: PoolConfig,
    budget: u32,
    state: Mutex<State>,
    /// Signalled when a connection of the server (by name) is released or closed.
    released: Mutex<HashMap<String, Arc<Notify>>>,
    /// The default server is a Citus coordinator: row tenants are bound per
    /// transaction, with `SET LOCAL`s the coordinator forwards to the workers.
    citus: AtomicBool,
}

/// The tenant connections of every server, within each server's budget. Cheap to
/// clone.
#[derive(Clone)]
pub struct TenantPools {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TenantPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPools")
            .field("budget", &self.shared.budget)
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// What acquiring decided under the lock.
enum Plan {
    /// An idle connection, bound to the tenant already or to be rebound.
    Idle(Box<Conn>),
    /// A new connection, its slot counted already.
    Open,
}

impl TenantPools {
    /// Connections to `base` (host, credentials, database) for every tenant, with a
    /// budget of `budget` connections per server.
    pub fn new(base: PgConnectOptions, config: PoolConfig, budget: u32) -> Self {
        let mut servers = Servers::default();
        servers.add(DEFAULT_SERVER, base.clone());
        Self::with_servers(base, servers, config, budget)
    }

    /// Connections for tenants on several servers; `base` is the default server.
    /// `budget` applies when [`PoolConfig::max_connections`] is unset.
    pub fn with_servers(
        base: PgConnectOptions,
        servers: Servers,
        config: PoolConfig,
        budget: u32,
    ) -> Self {
        let budget = config.max_connections.unwrap_or(budget).max(1);
        let mut servers = servers;
        if !servers.contains(DEFAULT_SERVER) {
            servers.add(DEFAULT_SERVER, base.clone());
        }
        let pools = Self {
            shared: Arc::new(Shared {
                base,
                config,
                budget,
                state: Mutex::new(State::default()),
                released: Mutex::new(HashMap::new()),
                citus: AtomicBool::new(false),
                servers,
            }),
        };
        pools.spawn_reaper();
        pools
    }

    /// Closes idle connections past their idle timeout or lifetime, in the
    /// background, until the pools are dropped.
    fn spawn_reaper(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.shared);
        let period = (self.shared.config.idle_timeout / 2).max(Duration::from_secs(1));
        handle.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(shared) = weak.upgrade() else { return };
                let expired = take_expired(&mut shared.lock(), &shared.config);
                retire(&shared, expired);
            }
        });
    }

    /// Marks the default server as a Citus coordinator (see [`crate::citus`]): row
    /// tenants are then bound per transaction whatever [`PoolConfig::binding`] says.
    pub(crate) fn set_citus(&self, on: bool) {
        self.shared
            .citus
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// The connection budget of each server.
    pub fn budget(&self) -> u32 {
        self.shared.budget
    }

    /// The configured servers.
    pub fn servers(&self) -> &Servers {
        &self.shared.servers
    }

    /// Counters of connection activity.
    pub fn stats(&self) -> PoolStats {
        let state = self.shared.lock();
        PoolStats {
            open: state.total_open(),
            idle: state.idle.len(),
            ..state.stats
        }
    }

    /// Drops every binding of tenant `id`: idle connections bound to it are unbound
    /// (or closed, for a tenant database), and connections in use are unbound when
    /// they come back. Called when the tenant changes (locally or in another
    /// instance).
    pub fn invalidate(&self, id: &TenantId) {
        let closing = {
            let mut state = self.shared.lock();
            *state.epochs.entry(id.clone()).or_default() += 1;
            state.generation += 1;
            let generation = state.generation;
            state.changed_at.insert(id.clone(), generation);
            let mut closing = Vec::new();
            let mut i = 0;
            while i < state.idle.len() {
                let conn = &mut state.idle[i];
                if conn.binding.as_ref().is_some_and(|b| &b.id == id) {
                    if conn.login.database.is_some() {
                        closing.push(state.idle.swap_remove(i));
                        continue;
                    }
                    conn.binding = None;
                }
                i += 1;
            }
            closing
        };
        retire(&self.shared, closing);
    }

    /// Drops every binding (for example when change notifications may have been missed).
    pub fn invalidate_all(&self) {
        let closing = {
            let mut state = self.shared.lock();
            state.global_epoch += 1;
            state.generation += 1;
            state.all_changed_at = state.generation;
            let mut closing = Vec::new();
            let mut i = 0;
            while i < state.idle.len() {
                if state.idle[i].login.database.is_some() {
                    closing.push(state.idle.swap_remove(i));
                    continue;
                }
                state.idle[i].binding = None;
                i += 1;
            }
            closing
        };
        self.shared.notify_all();
        retire(&self.shared, closing);
    }

    /// The invalidation generation now: read it before reading a tenant record, and
    /// [`TenantPools::changed_since`] tells later whether the record may be stale.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.lock().generation
    }

    /// Whether tenant `id` (or every tenant) was invalidated after `generation`.
    pub(crate) fn changed_since(&self, id: &TenantId, generation: u64) -> bool {
        let state = self.shared.lock();
        state
            .changed_at
            .get(id)
            .copied()
            .unwrap_or(0)
            .max(state.all_changed_at)
            > generation
    }

    /// Closes the idle connections (connections in use close when they come back
    /// after [`TenantPools::invalidate`], or stay within the budget otherwise).
    pub async fn close_idle(&self) {
        let idle: Vec<Conn> = self.shared.lock().idle.drain(..).collect();
        for conn in idle {
            let server = conn.login.server.clone();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.raw.close()).await;
            tokio::time::sleep(BACKEND_EXIT_GRACE).await;
            let mut state = self.shared.lock();
            state.closed_one(&server);
            state.stats.closed += 1;
        }
        self.shared.notify_all();
    }

    /// Drops every binding of tenant `id` and waits (up to the acquire timeout)
    /// until none of its connections is in use, for example before its data is
    /// dropped. `false` if some still were at the deadline.
    pub async fn drain_tenant(&self, id: &TenantId) -> bool {
        self.invalidate(id);
        let deadline = Instant::now() + self.shared.config.acquire_timeout;
        loop {
            let busy = self.shared.lock().in_use.keys().any(|k| &k.id == id);
            if !busy {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A connection bound to `tenant`, within the budget of its server.
    pub(crate) async fn acquire(&self, tenant: &Tenant) -> Result<PooledConn, Error> {
        let shared = &self.shared;
        let login = shared.login_of(tenant);
        let key = BindingKey::of(tenant);
        let deadline = Instant::now() + shared.config.acquire_timeout;
        // A server added to the registry after start is known the moment it is.
        shared.servers.get(&login.server)?;
        let released_signal = shared.released(&login.server);
        let plan = loop {
            let released = released_signal.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let (plan, retiring) = {
                let mut state = shared.lock();
                let mut retiring = take_expired(&mut state, &shared.config);
                let plan = shared.plan(&mut state, &login, &key, &mut retiring);
                if plan.is_some() {
                    *state.in_use.entry(key.clone()).or_default() += 1;
                }
                (plan, retiring)
            };
            // A connection made room for this request: its slot frees when it is
            // closed, which wakes the waiters of its server.
            retire(shared, retiring);
            if let Some(plan) = plan {
                break plan;
            }
            if tokio::time::timeout_at(deadline.into(), released)
                .await
                .is_err()
            {
                shared.lock().stats.timed_out += 1;
                return Err(Error::PoolExhausted {
                    budget: shared.budget,
                    waited: shared.config.acquire_timeout,
                });
            }
        };
        // From here on the guard gives back the key, the slot and the connection on
        // any exit, cancellation included.
        let mut guard = PooledConn {
            conn: None,
            pool: self.shared.clone(),
            key: key.clone(),
            server: login.server.clone(),
            reserved: false,
            dirty: false,
            busy: false,
            in_transaction: false,
            local_binding: None,
            tainted: Taint::default(),
        };
        let conn = match plan {
            Plan::Idle(conn) => *conn,
            Plan::Open => {
                guard.reserved = true;
                let raw = shared.connect(&login, tenant).await?;
                shared.lock().stats.opened += 1;
                Conn {
                    raw,
                    login: login.clone(),
                    binding: None,
                    timeout: None,
                    epoch: 0,
                    layout: None,
                    tenants: HashSet::new(),
                    created: Instant::now(),
                    idle_since: Instant::now(),
                }
            }
        };
        guard.conn = Some(conn);
        guard.reserved = false;
        guard.bind(tenant).await?;
        Ok(guard)
    }
}

impl Shared {
    /// Wakes one request waiting for a connection of `server`.
    fn notify(&self, server: &str) {
        self.released(server).notify_one();
    }

    /// The signal of `server`'s released connections.
    fn released(&self, server: &str) -> Arc<Notify> {
        self.released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(server.to_owned())
            .or_default()
            .clone()
    }

    /// Wakes waiters after a connection came back: one, or all of the server's when
    /// per-tenant caps may keep the one woken from using it.
    fn notify_released(&self, server: &str) {
        if self.config.max_connections_per_tenant.is_some() {
            self.released(server).notify_waiters();
        } else {
            self.notify(server);
        }
    }

    /// Wakes every waiting request.
    fn notify_all(&self) {
        let all: Vec<Arc<Notify>> = self
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for n in all {
            n.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn login_of(&self, tenant: &Tenant) -> Login {
        match tenant.strategy {
            Strategy::Database => Login {
                server: tenant.server.clone(),
                database: Some(tenant.storage.clone()),
                user: None,
            },
            Strategy::Row => Login {
                server: DEFAULT_SERVER.to_owned(),
                database: None,
                user: self.config.row_user.clone(),
            },
            Strategy::Schema => Login {
                server: DEFAULT_SERVER.to_owned(),
                database: None,
                user: None,
            },
        }
    }

    /// Chooses a connection for `key` under the lock, or `None` to wait. With the
    /// budget full, an idle connection of another login on the server is moved to
    /// `retiring`: its slot frees (and wakes a waiter) once it is closed.
    fn plan(
        &self,
        state: &mut State,
        login: &Login,
        key: &BindingKey,
        retiring: &mut Vec<Conn>,
    ) -> Option<Plan> {
        if let Some(cap) = self.config.max_connections_per_tenant
            && state.in_use.get(key).copied().unwrap_or(0) >= cap
        {
            return None;
        }
        let epoch = state.epoch(&key.id);
        // 1. An idle connection bound to this incarnation: the most recently used.
        let mut bound: Option<usize> = None;
        // 2. Else an idle connection of the same login that served this tenant before
        //    (its backend has the tenant's catalog entries cached), else the least
        //    recently used one.
        let mut warm: Option<usize> = None;
        let mut same_login: Option<usize> = None;
        // 3. Else (budget full) the least recently used idle connection of this server.
        let mut same_server: Option<usize> = None;
        for (i, conn) in state.idle.iter().enumerate() {
            if conn.login == *login {
                if conn.binding.as_ref() == Some(key) && conn.epoch == epoch {
                    if bound.is_none_or(|b| state.idle[b].idle_since < conn.idle_since) {
                        bound = Some(i);
                    }
                } else if login.database.is_none() {
                    if warm.is_none() && conn.tenants.contains(&key.id) {
                        warm = Some(i);
                    }
                    if same_login.is_none_or(|b| state.idle[b].idle_since > conn.idle_since) {
                        same_login = Some(i);
                    }
                }
            } else if conn.login.server == login.server
                && same_server.is_none_or(|b| state.idle[b].idle_since > conn.idle_since)
            {
                same_server = Some(i);
            }
        }
        if let Some(i) = bound {
            state.stats.reused += 1;
            return Some(Plan::Idle(Box::new(state.idle.swap_remove(i))));
        }
        if let Some(i) = warm.or(same_login) {
            return Some(Plan::Idle(Box::new(state.idle.swap_remove(i))));
        }
        let open = state.open.get(&login.server).copied().unwrap_or(0);
        if open < self.budget {
            state.opened_one(&login.server);
            return Some(Plan::Open);
        }
        // The budget is full: make room by closing an idle connection of another
        // login (a cold tenant database, or the row login) on this server.
        let victim = same_server.or_else(|| {
            // A database tenant's idle connection bound to another tenant of the
            // same login cannot be rebound; it can make room.
            state
                .idle
                .iter()
                .enumerate()
                .filter(|(_, c)| c.login == *login)
                .min_by_key(|(_, c)| c.idle_since)
                .map(|(i, _)| i)
        })?;
        retiring.push(state.idle.swap_remove(victim));
        None
    }

    async fn connect(&self, login: &Login, tenant: &Tenant) -> Result<PgConnection, Error> {
        // The default server is reached at `base`: the registry's address, or a pooler
        // in front of it.
        let mut options = if login.server == DEFAULT_SERVER {
            self.base.clone()
        } else {
            self.servers.get(&login.server)?
        };
        if let Some(database) = &login.database {
            options = options.database(database);
        }
        if login.database.is_some() {
            // A tenant database's connections serve that tenant only: named for it.
            options = options.application_name(&self.application_name(tenant));
        } else if options.get_application_name().is_none() {
            // Lets operators tell tenant connections apart in `pg_stat_activity`.
            options = options.application_name(APPLICATION_NAME);
        }
        if self.config.binding == Binding::Transaction {
            // Unnamed statements only: a transaction pooler may hand the next
            // transaction to another server connection.
            options = options.statement_cache_capacity(0);
        }
        if let Some(user) = &login.user {
            options = options.username(user);
            if let Some(password) = &self.config.row_password {
                options = options.password(password);
            }
        }
        let connect = options.connect();
        match tokio::time::timeout(self.config.acquire_timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => {
                tracing::warn!(tenant = %tenant.id, error = %e, "could not open a tenant connection");
                Err(e.into())
            }
            Err(_) => Err(Error::PoolExhausted {
                budget: self.budget,
                waited: self.config.acquire_timeout,
            }),
        }
    }

    /// How `tenant`'s connections are scoped (see [`crate::strategy`]).
    fn scope(&self, tenant: &Tenant) -> Scope {
        let c = &self.config;
        let mut scope = crate::strategy::scope(
            tenant,
            &ScopeConfig {
                shared_schema: c.shared_schema.as_deref(),
                row_schema: c.row_schema.as_deref(),
                row_role: c.row_role.as_deref(),
            },
        );
        scope.application_name = self.application_name(tenant);
        scope.statement_timeout_ms = tenant.limits.statement_timeout_ms;
        scope.citus = self.citus.load(std::sync::atomic::Ordering::Relaxed);
        scope
    }

    /// Whether `tenant` must be bound per transaction whatever the configuration:
    /// a row tenant on a Citus coordinator (session settings do not reach the workers).
    fn local_only(&self, tenant: &Tenant) -> bool {
        tenant.strategy == Strategy::Row && self.citus.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `<application name>:<tenant>`: what `pg_stat_activity` shows while a
    /// connection serves `tenant` (the name alone once it is released and reset).
    fn application_name(&self, tenant: &Tenant) -> String {
        let base = self.base.get_application_name().unwrap_or(APPLICATION_NAME);
        format!("{base}:{}", tenant.id)
    }
}

/// Whether connections made with `options` go through a transaction pooler: two
/// client connections open at the same time that are served by the same backend
/// cannot be the server's own, nor a session pooler's. Simple queries only (no
/// prepared statements, which such a pooler may not keep).
pub(crate) async fn behind_transaction_pooler(options: &PgConnectOptions) -> Result<bool, Error> {
    let mut a = options.connect().await?;
    let mut b = options.connect().await?;
    let mut shared = false;
    for _ in 0..3 {
        let pid_a = backend_pid(&mut a).await?;
        let pid_b = backend_pid(&mut b).await?;
        if pid_a == pid_b {
            shared = true;
            break;
        }
    }
    let _ = a.close().await;
    let _ = b.close().await;
    Ok(shared)
}

async fn backend_pid(conn: &mut PgConnection) -> Result<i32, Error> {
    let row = sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await?;
    Ok(row.try_get(0)?)
}

/// Idle connections past their idle timeout or lifetime, taken out of the state (and
/// uncounted) to be closed.
fn take_expired(state: &mut State, config: &PoolConfig) -> Vec<Conn> {
    let now = Instant::now();
    let mut expired = Vec::new();
    let mut i = 0;
    while i < state.idle.len() {
        let c = &state.idle[i];
        if now.duration_since(c.idle_since) >= config.idle_timeout
            || now.duration_since(c.created) >= config.max_lifetime
        {
            expired.push(state.idle.swap_remove(i));
        } else {
            i += 1;
        }
    }
    expired
}

/// How long a closed connection's slot stays counted after `Terminate` was sent,
/// while its backend exits.
const BACKEND_EXIT_GRACE: Duration = Duration::from_millis(25);

/// Closes `conns` in the background; each one's budget slot is given back, and a
/// waiter of its server woken, only once it is closed.
fn retire(shared: &Arc<Shared>, conns: Vec<Conn>) {
    if conns.is_empty() {
        return;
    }
    let done = |shared: &Shared, server: &str| {
        let mut state = shared.lock();
        state.closed_one(server);
        state.stats.closed += 1;
        drop(state);
        shared.notify(server);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let shared = shared.clone();
            handle.spawn(async move {
                for conn in conns {
                    let server = conn.login.server.clone();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.raw.close()).await;
                    // `close` returns once `Terminate` is sent; the backend exits a moment
                    // later. Keep its slot until then, so that the server never lists
                    // more of our backends than the budget.
                    tokio::time::sleep(BACKEND_EXIT_GRACE).await;
                    done(&shared, &server);
                }
            });
        }
        // No runtime (dropped at shutdown): the sockets close as they are dropped.
        Err(_) => {
            for conn in conns {
                let server = conn.login.server.clone();
                drop(conn);
                done(shared, &server);
            }
        }
    }
}

/// A connection taken from [`TenantPools`] for one tenant; it goes back (or is reset,
/// or closed) when dropped.
pub(crate) struct PooledConn {
    conn: Option<Conn>,
    pool: Arc<Shared>,
    key: BindingKey,
    server: String,
    /// A budget slot is counted for a connection being opened (not yet in `conn`).
    reserved: bool,
    /// A handler used the raw connection, or a statement failed without an answer
    /// from the server: its session state is unknown.
    dirty: bool,
    /// A statement of tenantry's own is in flight (a drop now means a cancellation).
    busy: bool,
    /// A transaction tenantry began is open.
    in_transaction: bool,
    /// The transaction binding's `BEGIN; SET LOCAL ..` (transaction mode only).
    local_binding: Option<String>,
    /// Set by a handler's statement whose text may change the session.
    tainted: Taint,
}

impl PooledConn {
    /// Binds the connection to `tenant` unless it is bound to its incarnation (and
    /// its schema layout) already.
    async fn bind(&mut self, tenant: &Tenant) -> Result<(), Error> {
        let pool = self.pool.clone();
        let epoch = pool.lock().epoch(&tenant.id);
        let layout = Layout {
            strategy: tenant.strategy,
            version: tenant.schema_version,
        };
        let session = pool.config.binding == Binding::Session && !pool.local_only(tenant);
        if !session {
            self.local_binding = Some(pool.scope(tenant).local_sql());
        }
        let conn = self.conn.as_mut().expect("a connection");
        // A record read before a limits change may bind with its old timeout: the
        // next binding with a newer record sees the difference and sets it again.
        let timeout = tenant.limits.statement_timeout_ms;
        if conn.binding.as_ref() == Some(&self.key)
            && conn.epoch == epoch
            && conn.layout == Some(layout)
            && (!session || conn.timeout == timeout)
        {
            return Ok(());
        }
        self.busy = true;
        // A statement prepared against another shape of the tables must not meet
        // these (`cached plan must not change result type`).
        if conn.layout.is_some_and(|l| l != layout) && conn.raw.cached_statements_size() > 0 {
            conn.raw.clear_cached_statements().await?;
        }
        let scope = pool.scope(tenant);
        // The statement timeout is touched only when it changes: set for a tenant that
        // has one, put back to the session's default after one that had (reading the
        // default scans every setting, so only then).
        let timeout = match (scope.statement_timeout_ms, conn.timeout) {
            (Some(ms), _) => Timeout::Set(ms.to_string()),
            (None, Some(_)) => Timeout::Restore,
            (None, None) => Timeout::Keep,
        };
        if session && !scope.own_database {
            // The whole binding in one round trip; values are bound, never spliced.
            const BINDING: &str = "SELECT pg_catalog.set_config('search_path', $1, false), \
                 pg_catalog.set_config($2, $3, false), pg_catalog.set_config('role', $4, false), \
                 pg_catalog.set_config('application_name', $5, false)";
            let sql = match &timeout {
                Timeout::Keep => BINDING.to_owned(),
                Timeout::Set(_) => {
                    format!("{BINDING}, pg_catalog.set_config('statement_timeout', $6, false)")
                }
                Timeout::Restore => format!("{BINDING}, {RESTORE_TIMEOUT}"),
            };
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&scope.search_path)
                .bind(TENANT_SETTING)
                .bind(&scope.setting)
                .bind(scope.role_setting())
                .bind(&scope.application_name);
            if let Timeout::Set(ms) = &timeout {
                query = query.bind(ms);
            }
            query.execute(&mut conn.raw).await?;
            conn.timeout = scope.statement_timeout_ms;
            pool.lock().stats.rebound += 1;
        } else if session && !matches!(timeout, Timeout::Keep) {
            // A tenant database's connection is its binding; only the tenant's
            // statement timeout can change (its limits did).
            match &timeout {
                Timeout::Set(ms) => {
                    sqlx::query("SELECT pg_catalog.set_config('statement_timeout', $1, false)")
                        .bind(ms)
                        .execute(&mut conn.raw)
                        .await?;
                }
                _ => {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT {RESTORE_TIMEOUT}")))
                        .execute(&mut conn.raw)
                        .await?;
                }
            }
            conn.timeout = scope.statement_timeout_ms;
        }
        self.busy = false;
        conn.layout = Some(layout);
        conn.binding = Some(self.key.clone());
        conn.epoch = epoch;
        conn.tenants.insert(tenant.id.clone());
        Ok(())
    }

    /// Whether the tenant was invalidated since this connection was bound to it: a
    /// handle then asks the registry before its next statement.
    pub(crate) fn stale(&self) -> bool {
        let epoch = self.pool.lock().epoch(&self.key.id);
        self.conn.as_ref().is_some_and(|c| c.epoch != epoch)
    }

    /// Marks the binding as checked against the registry again.
    pub(crate) fn refresh(&mut self) {
        let epoch = self.pool.lock().epoch(&self.key.id);
        if let Some(conn) = self.conn.as_mut() {
            conn.epoch = epoch;
        }
    }

    /// In the transaction binding: the statement that begins a transaction bound to
    /// the tenant (`BEGIN; SET LOCAL ..`), one round trip.
    pub(crate) fn local_binding(&self) -> Option<&str> {
        self.local_binding.as_deref()
    }

    /// The connection for tenantry's own statements (which change no session state).
    pub(crate) fn own(&mut self) -> &mut PgConnection {
        &mut self.conn.as_mut().expect("a connection").raw
    }

    /// The connection for a handler's SQL: checked and reset before it is reused.
    pub(crate) fn raw(&mut self) -> &mut PgConnection {
        self.dirty = true;
        self.own()
    }

    /// The flag a handler's statements set when they may change the session.
    pub(crate) fn taint(&self) -> Taint {
        self.tainted.clone()
    }

    /// Marks the connection's state unknown (a statement failed without an answer
    /// from the server): it is checked before reuse, and closed if that fails.
    pub(crate) fn suspect(&mut self) {
        self.dirty = true;
    }

    /// Marks a statement of tenantry's own as in flight (`true`) or finished.
    pub(crate) fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Marks a transaction tenantry began as open (`true`) or ended.
    pub(crate) fn set_in_transaction(&mut self, open: bool) {
        self.in_transaction = open;
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let pool = self.pool.clone();
        let mut state = pool.lock();
        state.release_key(&self.key);
        let Some(mut conn) = self.conn.take() else {
            if self.reserved {
                // Dropped (or failed) while connecting: the slot was never used.
                state.closed_one(&self.server);
            }
            drop(state);
            pool.notify_released(&self.server);
            return;
        };
        let config = &pool.config;
        let worn = conn.tenants.len() >= config.max_tenants_per_connection as usize
            || conn.created.elapsed() >= config.max_lifetime;
        let unsure = self.dirty
            || self.tainted.is_marked()
            || self.busy
            || self.in_transaction
            || conn.raw.is_in_transaction();
        if worn && !unsure {
            drop(state);
            retire(&pool, vec![conn]);
            return;
        }
        if !unsure {
            if conn
                .binding
                .as_ref()
                .is_some_and(|b| state.epoch(&b.id) != conn.epoch)
            {
                conn.binding = None;
            }
            conn.idle_since = Instant::now();
            state.idle.push(conn);
            drop(state);
            pool.notify_released(&self.server);
            return;
        }
        state.stats.reset += 1;
        drop(state);
        // Off the request's path: reset, then back to the idle set, or closed. The
        // slot stays counted meanwhile, so the budget holds.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            retire(&pool, vec![conn]);
            return;
        };
        let session = config.binding == Binding::Session;
        handle.spawn(async move {
            let reset =
                tokio::time::timeout(Duration::from_secs(10), reset(&mut conn.raw, session)).await;
            match reset {
                Ok(Ok(())) if !worn => {
                    let mut state = pool.lock();
                    // The session is the login's default now: unbound, except a
                    // tenant database's connection, whose database is its binding.
                    if conn.login.database.is_none() && session {
                        conn.binding = None;
                    }
                    // `RESET ALL` put the server's statement timeout back: the next
                    // binding sets the tenant's again.
                    conn.timeout = None;
                    conn.idle_since = Instant::now();
                    let server = conn.login.server.clone();
                    state.idle.push(conn);
                    drop(state);
                    pool.notify_released(&server);
                }
                _ => retire(&pool, vec![conn]),
            }
        });
    }
}

/// Returns a connection to the session state it had when it logged in: ends any
/// transaction, and discards settings, role, temporary tables, cursors, advisory
/// locks and `LISTEN`s. Prepared statements are kept (sqlx's statement cache owns
/// them) unless their count no longer matches the cache, which is then cleared.
///
/// Behind a transaction pooler (`session` false) the session belongs to the pooler's
/// server connection, which the next transaction may not get: only an open
/// transaction is ended (every transaction sets its own binding anyway).
async fn reset(conn: &mut PgConnection, session: bool) -> Result<(), sqlx::Error> {
    // `transaction_timestamp() = statement_timestamp()` holds only for the first
    // statement of a transaction: false inside a transaction block a handler opened.
    // (Sent as a simple query: in the extended protocol the two timestamps differ.)
    // In a failed transaction the query itself fails. Names are schema-qualified, so
    // a handler's `search_path` cannot change what the probe calls.
    const PROBE: &str = "SELECT pg_catalog.transaction_timestamp() OPERATOR(pg_catalog.=) \
         pg_catalog.statement_timestamp(), \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements)";
    let probe = |row: sqlx::postgres::PgRow| -> Result<(bool, i64), sqlx::Error> {
        Ok((row.try_get::<bool, _>(0)?, row.try_get::<i64, _>(1)?))
    };
    let mut state = sqlx::raw_sql(PROBE)
        .fetch_one(&mut *conn)
        .await
        .and_then(probe);
    if !matches!(state, Ok((true, _))) {
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        state = sqlx::raw_sql(PROBE)
            .fetch_one(&mut *conn)
            .await
            .and_then(probe);
    }
    let (outside, prepared) = state?;
    if !outside {
        return Err(sqlx::Error::Protocol(
            "the connection is still in a transaction after ROLLBACK".to_owned(),
        ));
    }
    if !session {
        return Ok(());
    }
    sqlx::raw_sql(
        "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; \
         SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES",
    )
    .execute(&mut *conn)
    .await?;
    if usize::try_from(prepared).ok() != Some(conn.cached_statements_size()) {
        conn.clear_cached_statements().await?;
        sqlx::raw_sql("DEALLOCATE ALL").execute(&mut *conn).await?;
    }
    Ok(())
}

/// What a binding does to the session's statement timeout.
enum Timeout {
    /// Leave it (the tenant has none, and none was set before).
    Keep,
    /// Set it to this many milliseconds.
    Set(String),
    /// Put the session's default back (a previous tenant had one).
    Restore,
}

/// Puts the session's default statement timeout back.
const RESTORE_TIMEOUT: &str = "pg_catalog.set_config('statement_timeout', \
     (SELECT reset_val FROM pg_catalog.pg_settings WHERE name = 'statement_timeout'), false)";

/// A flag a handler's statement sets when it may have changed the session.
#[derive(Clone, Default)]
pub(crate) struct Taint(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Taint {
    pub(crate) fn mark(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn is_marked(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
