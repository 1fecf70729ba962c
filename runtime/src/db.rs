//! Tenant-bound database handles: the only way tenantry hands out a connection for
//! tenant data.
//!
//! A handle takes its connection when it is first used, not when it is made: a
//! handler whose request body is still arriving holds no connection.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
use sqlx::postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, PgConnection, Postgres, SqlStr};

use crate::error::Error;
use crate::pool::{PooledConn, TenantPools};
use crate::repository::TenantRepository;
use crate::tenant::{Tenant, TenantStatus};

/// Where a handle gets its connection, and the invalidation generation at which the
/// handle's tenant record was read from the registry (`None`: unknown). If the tenant
/// was invalidated since (a change here or in another instance), the record may be
/// stale: the registry is asked before the connection is used, and a tenant that is
/// gone, suspended or another incarnation now is refused.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) pools: TenantPools,
    pub(crate) registry: TenantRepository,
    pub(crate) read_at: Option<u64>,
}

impl Source {
    async fn acquire(&self, tenant: &Tenant, lazy: bool) -> Result<PooledConn, Error> {
        let conn = self.pools.acquire(tenant, lazy).await?;
        if self
            .read_at
            .is_none_or(|generation| self.pools.changed_since(&tenant.id, generation))
        {
            self.verify(tenant).await?;
        }
        Ok(conn)
    }

    /// Asks the registry whether `tenant` is still this incarnation, active, with the
    /// same strategy and server.
    async fn verify(&self, tenant: &Tenant) -> Result<(), Error> {
        match self.registry.find(&tenant.id).await? {
            Some(now) if now.incarnation != tenant.incarnation => {
                return Err(Error::TenantChanged(tenant.id.clone()));
            }
            Some(now) if now.status == TenantStatus::Deleted => {
                return Err(Error::TenantNotFound(tenant.id.clone()));
            }
            Some(now) if now.status != TenantStatus::Active => {
                return Err(Error::TenantNotActive {
                    id: now.id,
                    status: now.status,
                });
            }
            Some(now) if now.strategy != tenant.strategy || now.server != tenant.server => {
                return Err(Error::TenantChanged(tenant.id.clone()));
            }
            Some(_) => {}
            None => return Err(Error::TenantNotFound(tenant.id.clone())),
        }
        Ok(())
    }
}

/// A connection bound to one tenant: every query on it sees that tenant's schema
/// (and the shared schema, if configured), or that tenant's rows, and nothing else.
///
/// It is taken from the server's pool when first used. Use `&mut db` as an sqlx
/// executor, or [`TenantDb::conn`] where a `&mut PgConnection` is needed:
///
/// ```no_run
/// # async fn f(mut db: tenantry::TenantDb) -> Result<(), tenantry::Error> {
/// let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
///     .fetch_all(&mut db)
///     .await?;
/// # Ok(()) }
/// ```
///
/// A handler's own SQL may change the session (`SET`, `BEGIN`, a function that creates
/// a temporary table, ...): that stays within the request. Before the connection serves
/// another request the server discards everything the request left on it (one call,
/// whatever the SQL was), so nothing of this request reaches the next.
pub struct TenantDb {
    tenant: Arc<Tenant>,
    source: Source,
    conn: Option<PooledConn>,
}

impl TenantDb {
    pub(crate) fn new(source: Source, tenant: Arc<Tenant>) -> Self {
        Self {
            tenant,
            source,
            conn: None,
        }
    }

    /// The tenant this handle is bound to.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    /// The connection, taken on first use. A handle that keeps its connection while
    /// its tenant is invalidated (suspended, deleted, re-created) asks the registry
    /// again before its next statement.
    async fn pooled(&mut self) -> Result<&mut PooledConn, Error> {
        self.pooled_as(false).await
    }

    /// The connection, bound to the tenant unless `lazy` (then it may be taken as it is,
    /// for binding-free reads only: see [`PooledConn::read_schema`]).
    async fn pooled_as(&mut self, lazy: bool) -> Result<&mut PooledConn, Error> {
        match &self.conn {
            None => self.conn = Some(self.source.acquire(&self.tenant, lazy).await?),
            Some(conn) if conn.stale() => {
                self.source.verify(&self.tenant).await?;
                if let Some(conn) = self.conn.as_mut() {
                    conn.refresh();
                }
            }
            Some(_) => {}
        }
        let conn = self.conn.as_mut().expect("acquired above");
        if !lazy {
            conn.ensure_bound(&self.tenant).await?;
        }
        Ok(conn)
    }

    /// Takes the connection for an entity read of `table`, and answers the quoted
    /// schema the read names (a binding-free read), or `None` (the connection is bound
    /// and the read names the table alone).
    pub(crate) async fn begin_read(
        &mut self,
        table: &'static str,
    ) -> Result<Option<Arc<str>>, Error> {
        let tenant = self.tenant.clone();
        self.pooled_as(true)
            .await?
            .read_schema(&tenant, table)
            .await
    }

    pub(crate) fn suspect_conn(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.suspect();
        }
    }

    pub(crate) fn touch_conn(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.touch();
        }
    }

    /// The connection, taken from the pool (and bound) if this is the first use.
    ///
    /// Whatever the caller does with it stays within this request: the server
    /// discards it before the connection serves another one.
    ///
    /// Not available in the transaction binding ([`crate::pool::Binding::Transaction`]),
    /// where a connection is only bound inside a transaction: use the handle itself as
    /// an executor (each statement its own transaction) or a [`TenantTx`].
    pub async fn conn(&mut self) -> Result<&mut PgConnection, Error> {
        let pooled = self.pooled().await?;
        if pooled.local_binding().is_some() {
            return Err(Error::Validation(
                "`TenantDb::conn` is not available behind a transaction pooler (`Binding::Transaction`): \
                 use `&mut db` as the executor, or a `TenantTx`"
                    .to_owned(),
            ));
        }
        Ok(pooled.raw())
    }

    /// Starts one statement: takes the connection, and in the transaction binding
    /// begins the statement's own transaction. Returns whether it did. `raw`: the
    /// statement is the request's own SQL, whatever its text: the connection is
    /// cleaned by the server before it serves anyone again.
    pub(crate) async fn begin_statement(&mut self, raw: bool) -> Result<bool, Error> {
        let pooled = self.pooled().await?;
        if raw {
            pooled.suspect();
        }
        let Some(begin) = pooled.local_binding().map(str::to_owned) else {
            return Ok(false);
        };
        pooled.set_busy(true);
        sqlx::raw_sql(sqlx::AssertSqlSafe(begin))
            .execute(pooled.own())
            .await?;
        pooled.set_in_transaction(true);
        pooled.set_busy(false);
        Ok(true)
    }

    /// Whether statements may be prepared by name (not in the transaction binding).
    pub(crate) fn persistent(&self) -> bool {
        self.conn
            .as_ref()
            .is_none_or(|c| c.local_binding().is_none())
    }

    /// The connection of a statement begun with [`TenantDb::begin_statement`].
    pub(crate) fn statement_conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("begin_statement took a connection")
            .own()
    }

    /// Ends a statement begun with [`TenantDb::begin_statement`]: commits its own
    /// transaction if it had one and succeeded, else rolls it back.
    pub(crate) async fn end_statement(&mut self, local: bool, ok: bool) -> Result<(), Error> {
        if !local {
            return Ok(());
        }
        let pooled = self
            .conn
            .as_mut()
            .expect("begin_statement took a connection");
        pooled.set_busy(true);
        let end = pooled.local_end(ok);
        sqlx::raw_sql(sqlx::AssertSqlSafe(end))
            .execute(pooled.own())
            .await?;
        pooled.set_busy(false);
        pooled.set_in_transaction(false);
        Ok(())
    }

    /// Whether a connection has been taken yet.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }
}

impl std::fmt::Debug for TenantDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantDb")
            .field("tenant", &self.tenant.id)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// A transaction bound to one tenant. Commit it with [`TenantTx::commit`]; dropped
/// without a commit (an error, a panic, a cancelled request) it rolls back.
///
/// The connection is taken, and `BEGIN` sent, when it is first used.
///
/// ```no_run
/// # async fn f(mut tx: tenantry::TenantTx) -> Result<(), tenantry::Error> {
/// sqlx::query("INSERT INTO projects (name) VALUES ($1)")
///     .bind("apollo")
///     .execute(&mut tx)
///     .await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct TenantTx {
    db: TenantDb,
    open: bool,
    /// Behind a transaction pooler: the request's own SQL ran since the transaction
    /// was last known open (it may have ended it).
    unsure: bool,
}

impl TenantTx {
    pub(crate) fn new(source: Source, tenant: Arc<Tenant>) -> Self {
        Self {
            db: TenantDb::new(source, tenant),
            open: false,
            unsure: false,
        }
    }

    /// The tenant this transaction is bound to.
    pub fn tenant(&self) -> &Arc<Tenant> {
        self.db.tenant()
    }

    async fn begun(&mut self) -> Result<&mut PooledConn, Error> {
        let mut open = self.open;
        let unsure = self.unsure;
        let conn = self.db.pooled().await?;
        // Behind a transaction pooler, a handler's own `COMMIT` or `ROLLBACK` may have
        // ended the transaction that carried the binding: later statements would run
        // unbound on whichever server connection the pooler picks. After the request's
        // own SQL, the server is asked; if the block is gone, the binding begins again.
        if open && unsure && conn.local_binding().is_some() && !conn.in_transaction_block().await? {
            open = false;
        }
        // Cleared only once the server answered: a probe that failed or was cancelled
        // is asked again before the next statement.
        self.unsure = false;
        let conn = self.db.conn.as_mut().expect("pooled above");
        if !open {
            // Marked busy while in flight: a request cancelled now leaves a
            // connection that is rolled back and reset before reuse. In the
            // transaction binding, `BEGIN` carries the binding (`SET LOCAL ..`).
            conn.set_busy(true);
            let begin = conn.local_binding().unwrap_or("BEGIN").to_owned();
            sqlx::raw_sql(sqlx::AssertSqlSafe(begin))
                .execute(conn.own())
                .await?;
            conn.set_busy(false);
            conn.set_in_transaction(true);
            self.open = true;
        }
        Ok(conn)
    }

    /// The connection inside the transaction (`BEGIN` is sent on first use).
    pub async fn conn(&mut self) -> Result<&mut PgConnection, Error> {
        let local = self.begun().await?.local_binding().is_some();
        self.unsure = local;
        Ok(self
            .db
            .conn
            .as_mut()
            .expect("begun took a connection")
            .raw())
    }

    pub(crate) async fn begin_statement(&mut self, raw: bool) -> Result<bool, Error> {
        let conn = self.begun().await?;
        if raw {
            conn.suspect();
            self.unsure = conn.local_binding().is_some();
        }
        Ok(false)
    }

    pub(crate) fn statement_conn(&mut self) -> &mut PgConnection {
        self.db.statement_conn()
    }

    pub(crate) fn persistent(&self) -> bool {
        self.db.persistent()
    }

    pub(crate) fn suspect_conn(&mut self) {
        self.db.suspect_conn();
    }

    pub(crate) fn touch_conn(&mut self) {
        self.db.touch_conn();
    }

    async fn finish(mut self, statement: &'static str) -> Result<(), Error> {
        if !self.open {
            return Ok(());
        }
        let conn = self
            .db
            .conn
            .as_mut()
            .expect("an open transaction has a connection");
        conn.set_busy(true);
        let end = match conn.local_binding() {
            Some(_) => conn.local_end(statement == "COMMIT"),
            None => statement.to_owned(),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(end))
            .execute(conn.own())
            .await?;
        conn.set_busy(false);
        conn.set_in_transaction(false);
        self.open = false;
        Ok(())
    }

    /// Commits the transaction (nothing to do if it was never used).
    pub async fn commit(self) -> Result<(), Error> {
        self.finish("COMMIT").await
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), Error> {
        self.finish("ROLLBACK").await
    }
}

impl std::fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.db.tenant.id)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

/// A query run with named prepared statements only where they are kept: in the
/// transaction binding (behind a pooler that may hand the next transaction to another
/// server connection) every statement is unnamed.
pub(crate) struct Unnamed<E> {
    query: E,
    persistent: bool,
}

impl<E> Unnamed<E> {
    pub(crate) fn new(query: E, persistent: bool) -> Self {
        Self { query, persistent }
    }
}

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.query.sql()
    }
    fn statement(&self) -> Option<&PgStatement> {
        self.query.statement()
    }
    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.query.take_arguments()
    }
    fn persistent(&self) -> bool {
        self.persistent && self.query.persistent()
    }
}

/// sqlx prepares explicitly prepared statements by name, which a transaction pooler
/// does not keep.
fn no_named_statements() -> Error {
    Error::Validation(
        "preparing a statement by name is not available behind a transaction pooler \
         (`Binding::Transaction`); run the query directly"
            .to_owned(),
    )
}

/// Errors of taking a connection, carried through sqlx's error type by the executor
/// impls; `From<sqlx::Error> for Error` unwraps them again, so a handler's `?` gives
/// the same status (403, 404, 503) as the entity API would.
fn to_sqlx(e: Error) -> sqlx::Error {
    match e {
        Error::Database(e) => e,
        other => sqlx::Error::AnyDriverError(Box::new(other)),
    }
}

/// Implements `sqlx::Executor` for a handle, taking the connection on first use; in
/// the transaction binding each statement of a `TenantDb` runs in a transaction of
/// its own (its rows are collected before the commit).
macro_rules! lazy_executor {
    ($handle:ty) => {
        impl<'c> Executor<'c> for &'c mut $handle {
            type Database = Postgres;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
            where
                'c: 'e,
                E: 'q + Execute<'q, Postgres>,
            {
                Box::pin(
                    async move {
                        let local = self.begin_statement(true).await.map_err(to_sqlx)?;
                        let query = Unnamed::new(query, !local && self.persistent());
                        if !local {
                            return Ok::<_, sqlx::Error>(self.statement_conn().fetch_many(query));
                        }
                        let all: Result<Vec<_>, sqlx::Error> =
                            self.statement_conn().fetch_many(query).try_collect().await;
                        self.end_statement(true, all.is_ok())
                            .await
                            .map_err(to_sqlx)?;
                        Ok(futures::stream::iter(all?.into_iter().map(Ok)).boxed())
                    }
                    .try_flatten_stream(),
                )
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
            where
                'c: 'e,
                E: 'q + Execute<'q, Postgres>,
            {
                async move {
                    let local = self.begin_statement(true).await.map_err(to_sqlx)?;
                    let persistent = !local && self.persistent();
                    let row = self
                        .statement_conn()
                        .fetch_optional(Unnamed::new(query, persistent))
                        .await;
                    self.end_statement(local, row.is_ok())
                        .await
                        .map_err(to_sqlx)?;
                    row
                }
                .boxed()
            }

            fn prepare_with<'e>(
                self,
                sql: SqlStr,
                parameters: &'e [PgTypeInfo],
            ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
            where
                'c: 'e,
            {
                async move {
                    let local = self.begin_statement(true).await.map_err(to_sqlx)?;
                    if local || !self.persistent() {
                        self.end_statement(local, false).await.map_err(to_sqlx)?;
                        return Err(to_sqlx(no_named_statements()));
                    }
                    // Never in a transaction of its own here (refused above).
                    self.statement_conn().prepare_with(sql, parameters).await
                }
                .boxed()
            }

            #[doc(hidden)]
            fn describe<'e>(
                self,
                sql: SqlStr,
            ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
            where
                'c: 'e,
            {
                async move {
                    let local = self.begin_statement(true).await.map_err(to_sqlx)?;
                    if local || !self.persistent() {
                        self.end_statement(local, false).await.map_err(to_sqlx)?;
                        return Err(to_sqlx(no_named_statements()));
                    }
                    self.statement_conn().describe(sql).await
                }
                .boxed()
            }
        }
    };
}

impl TenantTx {
    /// Statements of a `TenantTx` run inside its one transaction: nothing to end.
    pub(crate) async fn end_statement(&mut self, _local: bool, _ok: bool) -> Result<(), Error> {
        Ok(())
    }
}

lazy_executor!(TenantDb);
lazy_executor!(TenantTx);
