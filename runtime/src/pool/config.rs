//! How the tenant connections are configured.

use std::time::Duration;

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
    /// Entity reads of schema tenants (`find`, `list`, `count`, [`crate::Select`]) name
    /// their tenant's schema and run on any clean connection as it is, with no binding
    /// statement, when the server's catalog says the table runs no code of its own on a
    /// read: a plain or partitioned table, without row-level security, every column of
    /// a built-in type (checked once per tenant and table, again after the tenant is
    /// invalidated and at least every minute). The connection then keeps the binding it
    /// had, so `pg_stat_activity` names the tenant it was last bound to. That is a
    /// handle's first read on a connection bound elsewhere; a handle that reads again
    /// binds once, and a connection bound to the tenant reads with the statements all
    /// tenants share (a tenant's own statements would crowd the statement cache, and a
    /// miss costs a round trip). Anything else (a write, the request's own SQL, a
    /// `TenantTx`) binds first, as before. Default on.
    pub binding_free_reads: bool,
    /// Prepared statements each tenant connection keeps (sqlx's statement cache;
    /// default 500, sqlx's own is 100). Binding-free reads are prepared once per
    /// tenant schema, and a tenant's requests go to the connections it ranks highest
    /// (rendezvous hashing), so each connection keeps the statements of its share of
    /// the tenants: a statement evicted is prepared and planned again (PostgreSQL
    /// plans a statement's first five executions one by one before it settles on a
    /// generic plan). Each kept statement costs its backend a few KB (see
    /// docs/BENCHMARKS.md for the measured memory).
    pub statement_cache_capacity: usize,
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
            binding_free_reads: true,
            statement_cache_capacity: 500,
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
            .field("binding_free_reads", &self.binding_free_reads)
            .field("statement_cache_capacity", &self.statement_cache_capacity)
            .finish()
    }
}

/// The `application_name` of tenant connections, unless the connect options set one.
pub const APPLICATION_NAME: &str = "tenantry";
