//! A connection taken for one request, and what happens when it comes back.
//!
//! A connection goes back to the idle set as it is when only tenantry's own statements
//! ran on it, outside a transaction: its binding is what the pool believes (the entity
//! API never changes session state; what a user's trigger changes stays with that
//! tenant's binding until the next rebind, which discards it). A connection on which a
//! request ran its own SQL goes back marked *dirty*: before it serves any request,
//! the same tenant's included, one `session_bind` call discards everything and sets
//! the binding, so what the server holds then is known whatever the SQL did. A dirty
//! connection that stays idle is cleaned off the request path after
//! [`DIRTY_IDLE_GRACE`], so that no advisory lock or `LISTEN` outlives its request for
//! long. A connection dropped inside a transaction or mid-statement (a cancelled
//! request) is rolled back and cleaned off the request's path first; one that cannot be
//! is closed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::binding::{self, TenantSettings};
use super::{Binding, BindingKey, Conn, Layout, Shared, retire};
use crate::error::Error;
use crate::naming::quote_ident;
use crate::tenant::Tenant;

/// How long a dirty connection may sit idle before it is cleaned in the background.
pub(super) const DIRTY_IDLE_GRACE: Duration = Duration::from_millis(20);

/// A connection taken from [`super::TenantPools`] for one tenant; it goes back (or is
/// cleaned, or closed) when dropped.
pub(crate) struct PooledConn {
    pub(super) conn: Option<Conn>,
    pub(super) pool: Arc<Shared>,
    pub(super) key: BindingKey,
    pub(super) server: String,
    /// A budget slot is counted for a connection being opened (not yet in `conn`).
    pub(super) reserved: bool,
    /// The request's own SQL ran on the connection, or a statement failed without an
    /// answer from the server: its session state is unknown.
    pub(super) dirty: bool,
    /// A statement of tenantry's own is in flight (a drop now means a cancellation).
    pub(super) busy: bool,
    /// A transaction tenantry began is open.
    pub(super) in_transaction: bool,
    /// The transaction binding's `BEGIN; ..` (transaction mode only).
    pub(super) local_binding: Option<String>,
    /// The transaction binding's discarding of what the request's own SQL left on the
    /// pooler's server connection, sent after `COMMIT`/`ROLLBACK` in the same message.
    pub(super) local_discard: Option<String>,
    /// One of tenantry's own writes ran: the binding is set again (discarding the
    /// sequence state it left, and anything a user's trigger did) before reuse.
    pub(super) touched: bool,
    /// Taken clean for binding-free reads and not bound to this request's tenant (the
    /// tenant's invalidation epoch when taken): the connection keeps the binding it
    /// had until something needs this one ([`PooledConn::ensure_bound`]).
    pub(super) unbound: Option<u64>,
    /// A binding-free read ran through this handle: its next read binds.
    pub(super) read_unbound: bool,
}

impl PooledConn {
    /// Binds the connection to `tenant` unless it is bound to its incarnation (and
    /// its schema layout) already and clean.
    pub(super) async fn bind(&mut self, tenant: &Tenant) -> Result<(), Error> {
        let pool = self.pool.clone();
        let epoch = pool.lock().epoch(&tenant.id);
        let layout = Layout {
            strategy: tenant.strategy,
            version: tenant.schema_version,
        };
        let session = binding::session_binding(&pool.config, pool.local_only(tenant));
        let scope = pool.scope(tenant);
        if !session {
            self.local_binding = Some(scope.local_sql(pool.control()));
            self.local_discard = Some(scope.local_discard(pool.control()));
        }
        let conn = self.conn.as_mut().expect("a connection");
        // A record read before a limits change may bind with its old timeout: the
        // next binding with a newer record sees the difference and sets it again.
        let timeout = tenant.limits.statement_timeout_ms;
        if !conn.dirty
            && !conn.touched
            && conn.binding.as_ref() == Some(&self.key)
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
        let was_dirty = conn.dirty;
        if session {
            // A tenant database's clean connection that only needs no new timeout:
            // its database is its binding.
            let database_as_is = scope.own_database && !was_dirty && conn.timeout == timeout;
            if !database_as_is {
                binding::bind_session(&pool, &mut conn.raw, Some(&scope), was_dirty).await?;
            }
            conn.timeout = timeout;
            let mut state = pool.lock();
            let server = &conn.login.server;
            if !scope.own_database {
                state.count(server, |s| s.rebound += 1);
            }
            if was_dirty {
                state.count(server, |s| s.reset += 1);
            }
        } else if was_dirty && pool.config.binding == Binding::Session {
            // A connection of the server's own, bound per transaction (a row tenant on
            // Citus), that a request's own SQL used: every transaction starts with the
            // discarding, but a transaction block left open would swallow the next
            // one's `BEGIN`, and a rolled-back transaction undoes its discarding. So
            // the session is cleaned first, for good.
            binding::bind_session(&pool, &mut conn.raw, None, true).await?;
            pool.lock().count(&conn.login.server, |s| s.reset += 1);
        }
        // Behind a transaction pooler every transaction starts with the discarding.
        conn.dirty = false;
        conn.touched = false;
        self.busy = false;
        conn.layout = Some(layout);
        conn.binding = Some(self.key.clone());
        conn.epoch = epoch;
        conn.tenants.insert(tenant.id.clone());
        Ok(())
    }

    /// Whether a clean connection may serve `tenant`'s binding-free reads without
    /// its binding: a schema tenant's, bound per session, on the server's own
    /// database, with the tenant's statement timeout, never bound or bound to a schema
    /// tenant (so acting as the login role), and nothing but tenantry's reads run on
    /// it since it was last bound or cleaned.
    pub(super) fn may_stay_unbound(&self, tenant: &Tenant) -> bool {
        let pool = &self.pool;
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        pool.config.binding_free_reads
            && tenant.strategy == crate::tenant::Strategy::Schema
            && binding::session_binding(&pool.config, pool.local_only(tenant))
            && conn.login.database.is_none()
            && !conn.dirty
            && !conn.touched
            && conn.timeout == tenant.limits.statement_timeout_ms
            // A row tenant's binding acts as the row role, which may not read schemas.
            && conn
                .layout
                .is_none_or(|l| l.strategy == crate::tenant::Strategy::Schema)
            // Bound to this tenant already: nothing to skip.
            && !(conn.binding.as_ref() == Some(&self.key)
                && conn.epoch == pool.lock().epoch(&tenant.id))
    }

    /// Binds the connection to `tenant` if it was taken unbound for binding-free reads:
    /// before anything but such a read runs on it. The connection counts as bound only
    /// once the binding succeeded: a bind that failed or was cancelled (a handler's
    /// timeout around a statement) leaves it unbound, so a retry binds again instead
    /// of running a statement that names no schema on another tenant's session.
    pub(crate) async fn ensure_bound(&mut self, tenant: &Tenant) -> Result<(), Error> {
        if self.unbound.is_some() {
            self.bind(tenant).await?;
            self.unbound = None;
        }
        Ok(())
    }

    /// The quoted schema a binding-free read of `table` names for `tenant`, or `None`
    /// when the read runs bound: the table must be read bound, the connection is bound
    /// to the tenant already, or this handle read unbound before (in each case the
    /// connection is bound when this returns `None`). Asks the
    /// catalog once per tenant and table (see [`super::PoolConfig::binding_free_reads`]).
    pub(crate) async fn read_schema(
        &mut self,
        tenant: &Tenant,
        table: &'static str,
    ) -> Result<Option<Arc<str>>, Error> {
        let pool = self.pool.clone();
        let eligible = pool.config.binding_free_reads
            && tenant.strategy == crate::tenant::Strategy::Schema
            && binding::session_binding(&pool.config, pool.local_only(tenant))
            && !table.contains('.');
        if !eligible {
            self.ensure_bound(tenant).await?;
            return Ok(None);
        }
        // Bound to the tenant already (taken bound, or bound by an earlier statement of
        // this handle): the read that names no schema is the statement every tenant
        // shares, kept in this connection's cache; the tenant's own would be one more
        // entry, and a miss costs a `Parse` round trip and a plan.
        if self.unbound.is_none() {
            return Ok(None);
        }
        // A handle that reads again binds once (one round trip): its further reads
        // share those statements too. A request's first read, often its only one,
        // stays binding-free. (The Conduit workload over 1,000 communities: 0.37x of a
        // plain server with every read binding-free, 0.50x with this; see BENCHMARKS.)
        if self.read_unbound {
            self.ensure_bound(tenant).await?;
            return Ok(None);
        }
        let epoch = pool.lock().epoch(&tenant.id);
        let key = (self.key.clone(), table);
        let known = pool
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|c| c.epoch == epoch && c.at.elapsed() < super::TABLE_CHECK_TTL)
            .map(|c| c.schema.clone());
        let schema = match known {
            Some(schema) => schema,
            None => {
                let mut schemas = vec![tenant.id.schema_name()];
                if let Some(shared) = &pool.config.shared_schema {
                    schemas.push(shared.clone());
                }
                self.busy = true;
                let schema = binding::table_for_reads(self.own(), table, &schemas).await?;
                self.busy = false;
                let schema: Option<Arc<str>> = schema.map(|s| quote_ident(&s).into());
                let mut tables = pool.tables.lock().unwrap_or_else(|e| e.into_inner());
                if tables.len() >= super::TABLE_CHECKS_MAX {
                    tables.clear();
                }
                tables.insert(
                    key,
                    super::TableCheck {
                        epoch,
                        at: Instant::now(),
                        schema: schema.clone(),
                    },
                );
                schema
            }
        };
        if schema.is_none() {
            self.ensure_bound(tenant).await?;
        } else {
            self.read_unbound = true;
        }
        Ok(schema)
    }

    /// Whether the tenant was invalidated since this connection was bound to it (or
    /// taken for it): a handle then asks the registry before its next statement.
    pub(crate) fn stale(&self) -> bool {
        let epoch = self.pool.lock().epoch(&self.key.id);
        match self.unbound {
            Some(taken) => taken != epoch,
            None => self.conn.as_ref().is_some_and(|c| c.epoch != epoch),
        }
    }

    /// Marks the binding as checked against the registry again.
    pub(crate) fn refresh(&mut self) {
        let epoch = self.pool.lock().epoch(&self.key.id);
        if let Some(taken) = self.unbound.as_mut() {
            *taken = epoch;
        } else if let Some(conn) = self.conn.as_mut() {
            conn.epoch = epoch;
        }
    }

    /// In the transaction binding: the statement that begins a transaction bound to
    /// the tenant, one round trip.
    pub(crate) fn local_binding(&self) -> Option<&str> {
        self.local_binding.as_deref()
    }

    /// In the transaction binding: what ends a transaction (`COMMIT` if `ok`, else
    /// `ROLLBACK`), followed, when the request's own SQL ran on the connection, by the
    /// discarding of what it left on the pooler's server connection (in the same
    /// message, so on the same server connection).
    pub(crate) fn local_end(&self, ok: bool) -> String {
        let end = if ok { "COMMIT" } else { "ROLLBACK" };
        match &self.local_discard {
            Some(discard) if self.dirty => format!("{end}; {discard}"),
            _ => end.to_owned(),
        }
    }

    /// The connection for tenantry's own statements.
    pub(crate) fn own(&mut self) -> &mut PgConnection {
        &mut self.conn.as_mut().expect("a connection").raw
    }

    /// The connection for a request's own SQL: cleaned before it serves anyone again.
    pub(crate) fn raw(&mut self) -> &mut PgConnection {
        self.dirty = true;
        self.own()
    }

    /// Marks the connection's state unknown (the request's own SQL runs on it, or a
    /// statement failed without an answer from the server).
    pub(crate) fn suspect(&mut self) {
        self.dirty = true;
    }

    /// Marks that one of tenantry's own writes ran on the connection.
    pub(crate) fn touch(&mut self) {
        self.touched = true;
    }

    /// Marks a statement of tenantry's own as in flight (`true`) or finished.
    pub(crate) fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Marks a transaction tenantry began as open (`true`) or ended.
    pub(crate) fn set_in_transaction(&mut self, open: bool) {
        self.in_transaction = open;
    }

    /// Whether the connection is inside a transaction block, as the server says: one
    /// simple query (`transaction_timestamp() = statement_timestamp()` holds only for
    /// the first statement of a transaction). sqlx reports the server's transaction
    /// status to its own transaction API only, not publicly.
    pub(crate) async fn in_transaction_block(&mut self) -> Result<bool, Error> {
        let row = sqlx::raw_sql(
            "SELECT pg_catalog.transaction_timestamp() OPERATOR(pg_catalog.<>) \
             pg_catalog.statement_timestamp()",
        )
        .fetch_one(self.own())
        .await?;
        Ok(sqlx::Row::try_get::<bool, _>(&row, 0)?)
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
        let cut_off = self.busy || self.in_transaction || conn.raw.is_in_transaction();
        if worn && !cut_off {
            // Closing discards everything the session holds.
            state.count(&self.server, |s| s.recycled += 1);
            drop(state);
            retire(&pool, vec![conn]);
            return;
        }
        // Behind a transaction pooler each transaction starts with the discarding, so a
        // connection there is never dirty between requests.
        if config.binding == Binding::Session {
            conn.dirty |= self.dirty;
            conn.touched |= self.touched;
        }
        if !cut_off {
            if conn
                .binding
                .as_ref()
                .is_some_and(|b| state.epoch(&b.id) != conn.epoch)
            {
                conn.binding = None;
            }
            conn.idle_since = Instant::now();
            let dirty = conn.dirty;
            let serial = conn.serial;
            state.idle.push(conn);
            drop(state);
            pool.notify_released(&self.server);
            if dirty && config.binding == Binding::Session {
                clean_when_idle(&pool, serial);
            }
            return;
        }
        // Off the request's path: roll back and clean, then back to the idle set, or
        // closed. The slot stays counted meanwhile, so the budget holds.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            drop(state);
            retire(&pool, vec![conn]);
            return;
        };
        state.cleaning_one(&conn.login);
        drop(state);
        let session = config.binding == Binding::Session;
        // Behind a pooler: the rollback and the discarding in one message, so that they
        // reach the same server connection (a session advisory lock survives ROLLBACK).
        let pooler_end = (!session)
            .then(|| self.local_discard.clone())
            .flatten()
            .map(|discard| format!("ROLLBACK; {discard}"));
        handle.spawn(async move {
            let cleaned = tokio::time::timeout(Duration::from_secs(10), async {
                match pooler_end {
                    Some(end) => {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(end))
                            .execute(&mut conn.raw)
                            .await?;
                    }
                    None => binding::end_transaction(&mut conn.raw).await?,
                }
                if session {
                    clean(&pool, &mut conn).await?;
                }
                Ok::<_, Error>(())
            })
            .await;
            back_from_cleaning(&pool, conn, matches!(cleaned, Ok(Ok(()))) && !worn);
        });
    }
}

/// Returns a connection taken off the idle set for cleaning: to the idle set if `clean`,
/// else closed. Every waiter of its server is woken: the one waiting for this login
/// may not be the first in line.
fn back_from_cleaning(pool: &Arc<Shared>, mut conn: Conn, clean: bool) {
    let server = conn.login.server.clone();
    let mut state = pool.lock();
    state.cleaned_one(&conn.login);
    if clean {
        conn.idle_since = Instant::now();
        state.idle.push(conn);
        drop(state);
        pool.released(&server).notify_waiters();
    } else {
        drop(state);
        retire(pool, vec![conn]);
    }
}

/// Discards what a request left on `conn` (session binding). The connection is then
/// unbound, but for a tenant database's, whose database is its binding.
async fn clean(pool: &Shared, conn: &mut Conn) -> Result<(), Error> {
    if conn.login.database.is_some() {
        // The next binding of its tenant sets the statement timeout again.
        let scope = TenantSettings {
            search_path: "public, pg_temp".to_owned(),
            setting: String::new(),
            role: None,
            own_database: true,
            application_name: conn
                .binding
                .as_ref()
                .map(|b| pool.application_name_of(&b.id))
                .unwrap_or_default(),
            statement_timeout_ms: None,
            citus: false,
        };
        binding::bind_session(pool, &mut conn.raw, Some(&scope), true).await?;
    } else {
        binding::bind_session(pool, &mut conn.raw, None, true).await?;
        conn.binding = None;
    }
    conn.timeout = None;
    conn.dirty = false;
    conn.touched = false;
    pool.lock().count(&conn.login.server, |s| s.reset += 1);
    Ok(())
}

/// Cleans the dirty idle connection `serial` in the background if it is still idle
/// after [`DIRTY_IDLE_GRACE`] (a busy pool rebinds it sooner, which cleans it too).
fn clean_when_idle(pool: &Arc<Shared>, serial: u64) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(pool);
    handle.spawn(async move {
        tokio::time::sleep(DIRTY_IDLE_GRACE).await;
        let Some(pool) = weak.upgrade() else { return };
        let taken = {
            let mut state = pool.lock();
            let found = state
                .idle
                .iter()
                .position(|c| c.serial == serial && c.dirty);
            let conn = found.map(|i| state.idle.swap_remove(i));
            if let Some(conn) = &conn {
                state.cleaning_one(&conn.login);
            }
            conn
        };
        let Some(mut conn) = taken else { return };
        let cleaned = tokio::time::timeout(Duration::from_secs(10), clean(&pool, &mut conn)).await;
        back_from_cleaning(&pool, conn, matches!(cleaned, Ok(Ok(()))));
    });
}

/// A connection opened for `login`, not bound yet.
pub(super) fn fresh(raw: PgConnection, login: super::Login, serial: u64) -> Conn {
    Conn {
        raw,
        login,
        binding: None,
        timeout: None,
        epoch: 0,
        layout: None,
        tenants: HashSet::new(),
        created: Instant::now(),
        idle_since: Instant::now(),
        dirty: false,
        touched: false,
        serial,
    }
}
