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
//! What a connection carries is decided by the server, never guessed from the text of
//! the statements that ran on it (see [`binding`] and [`release`]): a connection on
//! which only tenantry's own statements ran goes back as it is, and its next tenant
//! switch is one `session_bind` call that discards every kind of session state and
//! sets the binding; a connection on which a request ran its own SQL (`&mut db` as an
//! executor, [`crate::TenantDb::conn`]), whatever the SQL was, gets that full call
//! before it serves anyone again, the same tenant included (an open transaction is
//! rolled back first); a connection cut off mid-statement is rolled back and cleaned
//! off the request's path, or closed. Nothing a request leaves on a connection reaches
//! another request.
//!
//! A backend keeps catalog entries for every table it touched; a connection is closed
//! after serving [`PoolConfig::max_tenants_per_connection`] distinct tenants, or after
//! [`PoolConfig::max_lifetime`], which bounds that memory.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use tokio::sync::Notify;

use crate::citus::Citus;
use crate::error::Error;
use crate::naming::quote_ident;
pub use crate::servers::{DEFAULT_SERVER, Servers};
use crate::tenant::{Strategy, Tenant, TenantId};

mod binding;
mod budget;
mod config;
mod release;

use binding::TenantSettings;
pub use config::{APPLICATION_NAME, Binding, PoolConfig};
pub(crate) use release::PooledConn;
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
    /// A request's own SQL ran on it since it was last bound or cleaned: it is
    /// cleaned before it serves anyone (see [`release`]).
    dirty: bool,
    /// One of tenantry's own writes ran on it since it was bound: the next use, of
    /// any tenant, sets the binding again.
    touched: bool,
    /// Tells this connection apart from the others, for the background cleaning.
    serial: u64,
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
    /// Acquisitions that took a clean connection bound to another tenant (or to none)
    /// as it was, for binding-free reads (see [`PoolConfig::binding_free_reads`]).
    pub binding_free: u64,
    /// Requests that gave up waiting for a connection (answered 503).
    pub timed_out: u64,
    /// Requests waiting for a connection now.
    pub waiting: usize,
    /// Connections closed after serving
    /// [`PoolConfig::max_tenants_per_connection`] tenants or living past
    /// [`PoolConfig::max_lifetime`] (counted in `closed` too).
    pub recycled: u64,
}

/// The tenant connections of one server: its budget and its [`PoolStats`] (`peak_open`
/// is the pool's, all servers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// The server's name in the registry (`default` for the registry's own server).
    pub server: String,
    /// The most tenant connections the pool opens to it.
    pub budget: u32,
    /// Its connections and counters.
    pub stats: PoolStats,
}

#[derive(Default)]
struct State {
    idle: Vec<Conn>,
    /// Open connections per server (in use, idle, and being opened).
    open: HashMap<String, u32>,
    in_use: HashMap<BindingKey, u32>,
    /// Connections being cleaned off the request path, per login: they come back to
    /// the idle set in a round trip, so a request of their login waits for one rather
    /// than closing another login's connection to make room.
    cleaning: HashMap<Login, u32>,
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
    /// The counters per server (open and idle are counted when asked).
    per_server: HashMap<String, PoolStats>,
    /// Requests waiting for a connection, per server.
    waiting: HashMap<String, usize>,
}

impl State {
    fn total_open(&self) -> usize {
        self.open.values().map(|n| *n as usize).sum()
    }
    /// Counts an event of `server` in the pool's and the server's counters.
    fn count(&mut self, server: &str, event: impl Fn(&mut PoolStats)) {
        event(&mut self.stats);
        match self.per_server.get_mut(server) {
            Some(stats) => event(stats),
            None => event(self.per_server.entry(server.to_owned()).or_default()),
        }
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
    /// Counts a connection of `login` taken off the idle set to be cleaned.
    fn cleaning_one(&mut self, login: &Login) {
        *self.cleaning.entry(login.clone()).or_default() += 1;
    }
    /// Counts a connection of `login` whose cleaning ended (back idle, or closed).
    fn cleaned_one(&mut self, login: &Login) {
        if let Some(n) = self.cleaning.get_mut(login) {
            *n -= 1;
            if *n == 0 {
                self.cleaning.remove(login);
            }
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
    /// The default server's Citus, if it is a coordinator (the manager's one value):
    /// row tenants are then bound per transaction whatever [`PoolConfig::binding`]
    /// says, with `SET LOCAL`s the coordinator forwards to the workers.
    citus: Option<Arc<Citus>>,
    /// The quoted control schema, home of the `session_bind` function.
    control: std::sync::OnceLock<String>,
    /// The last connection serial given out.
    serials: std::sync::atomic::AtomicU64,
    /// Where each tenant's tables read without a binding are (see
    /// [`PoolConfig::binding_free_reads`]).
    tables: Mutex<HashMap<(BindingKey, &'static str), TableCheck>>,
}

/// What the catalog said of one tenant's table: the quoted schema a binding-free read
/// names, or `None` (the table must be read bound).
#[derive(Clone)]
struct TableCheck {
    epoch: u64,
    at: Instant,
    schema: Option<Arc<str>>,
}

/// How long a table's catalog check is trusted (a tenant's invalidation, which every
/// tenant migration makes, voids it sooner).
const TABLE_CHECK_TTL: Duration = Duration::from_secs(60);

/// The most table checks kept; past it they are all dropped (and asked again).
const TABLE_CHECKS_MAX: usize = 200_000;

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
    /// Connections for tenants on several servers; `base` is the default server.
    /// `budget` applies when [`PoolConfig::max_connections`] is unset.
    pub fn with_servers(
        base: PgConnectOptions,
        servers: Servers,
        config: PoolConfig,
        budget: u32,
        citus: Option<Arc<Citus>>,
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
                citus,
                control: std::sync::OnceLock::new(),
                serials: std::sync::atomic::AtomicU64::new(0),
                tables: Mutex::new(HashMap::new()),
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

    /// Names the registry's control schema, where the `session_bind` function that
    /// binds and cleans connections lives (default `tenantry`). Set once, at start.
    pub(crate) fn set_control_schema(&self, schema: &str) {
        let _ = self.shared.control.set(quote_ident(schema));
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
            waiting: state.waiting.values().sum(),
            ..state.stats
        }
    }

    /// The connections and counters of each server the pool knows, the default server
    /// first, then by name: what [`crate::metrics::record_pool`] exports.
    pub fn server_stats(&self) -> Vec<ServerStats> {
        let mut names = self.shared.servers.names();
        names.sort_by_key(|n| (n != DEFAULT_SERVER, n.clone()));
        let state = self.shared.lock();
        names
            .into_iter()
            .map(|server| {
                let counters = state.per_server.get(&server).copied().unwrap_or_default();
                ServerStats {
                    budget: self.shared.budget,
                    stats: PoolStats {
                        open: state.open.get(&server).copied().unwrap_or(0) as usize,
                        idle: state
                            .idle
                            .iter()
                            .filter(|c| c.login.server == server)
                            .count(),
                        waiting: state.waiting.get(&server).copied().unwrap_or(0),
                        peak_open: state.stats.peak_open,
                        ..counters
                    },
                    server,
                }
            })
            .collect()
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
            state.count(&server, |s| s.closed += 1);
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
    ///
    /// `lazy`: the request may only read with statements that name the tenant's
    /// schema: a clean connection is taken as it is, and bound only if something else
    /// runs on it ([`PooledConn::ensure_bound`]).
    pub(crate) async fn acquire(&self, tenant: &Tenant, lazy: bool) -> Result<PooledConn, Error> {
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
            let waited = {
                let _waiting = Waiting::new(shared, &login.server);
                tokio::time::timeout_at(deadline.into(), released).await
            };
            if waited.is_err() {
                shared.lock().count(&login.server, |s| s.timed_out += 1);
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
            local_discard: None,
            touched: false,
            unbound: None,
            read_unbound: false,
        };
        let conn = match plan {
            Plan::Idle(conn) => *conn,
            Plan::Open => {
                guard.reserved = true;
                let raw = shared.connect(&login, tenant).await?;
                shared.lock().count(&login.server, |s| s.opened += 1);
                let serial = shared
                    .serials
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                release::fresh(raw, login.clone(), serial)
            }
        };
        guard.conn = Some(conn);
        guard.reserved = false;
        if lazy && guard.may_stay_unbound(tenant) {
            let mut state = shared.lock();
            guard.unbound = Some(state.epoch(&tenant.id));
            state.count(&login.server, |s| s.binding_free += 1);
            drop(state);
            if let Some(conn) = guard.conn.as_mut() {
                conn.tenants.insert(tenant.id.clone());
            }
        } else {
            guard.bind(tenant).await?;
        }
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

    /// Chooses a connection for `key` under the lock (see [`budget::choose`]), or
    /// `None` to wait. With the budget full, an idle connection of another login on
    /// the server is moved to `retiring`: its slot frees (and wakes a waiter) once it
    /// is closed.
    fn plan(
        &self,
        state: &mut State,
        login: &Login,
        key: &BindingKey,
        retiring: &mut Vec<Conn>,
    ) -> Option<Plan> {
        let want = budget::Want {
            login,
            key,
            epoch: state.epoch(&key.id),
            in_use: state.in_use.get(key).copied().unwrap_or(0),
            cap: self.config.max_connections_per_tenant,
            open: state.open.get(&login.server).copied().unwrap_or(0),
            budget: self.budget,
            cleaning: state.cleaning.get(login).copied().unwrap_or(0),
        };
        let tenant_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.id.hash(&mut h);
            h.finish()
        };
        let idle = state.idle.iter().map(|c| budget::Idle {
            login: &c.login,
            bound_to: c
                .binding
                .as_ref()
                .filter(|_| !c.dirty && !c.touched)
                .map(|b| (b, c.epoch)),
            affinity: budget::affinity(tenant_hash, c.serial),
            same_key: c.binding.as_ref() == Some(key) && c.epoch == state.epoch(&key.id),
            idle_since: c.idle_since,
        });
        match budget::choose(idle, want) {
            budget::Choice::Bound(i) => {
                state.count(&login.server, |s| s.reused += 1);
                Some(Plan::Idle(Box::new(state.idle.swap_remove(i))))
            }
            budget::Choice::Rebind(i) => Some(Plan::Idle(Box::new(state.idle.swap_remove(i)))),
            budget::Choice::Open => {
                state.opened_one(&login.server);
                Some(Plan::Open)
            }
            budget::Choice::MakeRoom(i) => {
                retiring.push(state.idle.swap_remove(i));
                None
            }
            budget::Choice::Wait => None,
        }
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
            options = options.application_name(&self.application_name_of(&tenant.id));
        } else if options.get_application_name().is_none() {
            // Lets operators tell tenant connections apart in `pg_stat_activity`.
            options = options.application_name(APPLICATION_NAME);
        }
        if self.config.binding == Binding::Transaction {
            // Unnamed statements only: a transaction pooler may hand the next
            // transaction to another server connection.
            options = options.statement_cache_capacity(0);
        } else {
            options = options.statement_cache_capacity(self.config.statement_cache_capacity);
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

    /// How `tenant`'s connections are scoped.
    fn scope(&self, tenant: &Tenant) -> TenantSettings {
        TenantSettings::of(
            tenant,
            &self.config,
            self.application_name_of(&tenant.id),
            self.citus.is_some(),
        )
    }

    /// The quoted control schema.
    fn control(&self) -> &str {
        self.control.get().map_or("tenantry", String::as_str)
    }

    /// Whether `tenant` must be bound per transaction whatever the configuration:
    /// a row tenant on a Citus coordinator (session settings do not reach the workers).
    fn local_only(&self, tenant: &Tenant) -> bool {
        tenant.strategy == Strategy::Row && self.citus.is_some()
    }

    /// `<application name>:<tenant>`: what `pg_stat_activity` shows while a
    /// connection serves `tenant` (the name alone once it is released and reset).
    fn application_name_of(&self, id: &TenantId) -> String {
        let base = self.base.get_application_name().unwrap_or(APPLICATION_NAME);
        format!("{base}:{id}")
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

/// Counts a request waiting for a connection of `server` while it lives (a cancelled
/// request stops counting when its future is dropped).
struct Waiting<'a> {
    shared: &'a Shared,
    server: &'a str,
}

impl<'a> Waiting<'a> {
    fn new(shared: &'a Shared, server: &'a str) -> Self {
        *shared.lock().waiting.entry(server.to_owned()).or_default() += 1;
        Self { shared, server }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(n) = state.waiting.get_mut(self.server) {
            *n -= 1;
            if *n == 0 {
                state.waiting.remove(self.server);
            }
        }
    }
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
        state.count(server, |s| s.closed += 1);
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
