//! Tenant-bound database handles: the only way tenantry hands out a connection for
//! tenant data.
//!
//! A handle takes its connection when it is first used, not when it is made: a
//! handler whose request body is still arriving holds no connection.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, TryFutureExt, TryStreamExt};
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
    async fn acquire(&self, tenant: &Tenant) -> Result<PooledConn, Error> {
        let conn = self.pools.acquire(tenant).await?;
        if self
            .read_at
            .is_none_or(|generation| self.pools.changed_since(&tenant.id, generation))
        {
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
        }
        Ok(conn)
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
/// A handler's own SQL may change the session (`SET`, `BEGIN`, ...): that stays
/// within the request. Before the connection serves another request it is checked
/// and reset, so nothing of this request reaches the next.
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

    async fn pooled(&mut self) -> Result<&mut PooledConn, Error> {
        if self.conn.is_none() {
            self.conn = Some(self.source.acquire(&self.tenant).await?);
        }
        Ok(self.conn.as_mut().expect("acquired above"))
    }

    /// The connection, taken from the pool (and bound) if this is the first use.
    ///
    /// Whatever the caller does with it stays within this request: the connection is
    /// reset before it serves another one.
    pub async fn conn(&mut self) -> Result<&mut PgConnection, Error> {
        Ok(self.pooled().await?.raw())
    }

    /// The connection for tenantry's own statements, which change no session state.
    pub(crate) async fn own_conn(&mut self) -> Result<&mut PgConnection, Error> {
        Ok(self.pooled().await?.own())
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
}

impl TenantTx {
    pub(crate) fn new(source: Source, tenant: Arc<Tenant>) -> Self {
        Self {
            db: TenantDb::new(source, tenant),
            open: false,
        }
    }

    /// The tenant this transaction is bound to.
    pub fn tenant(&self) -> &Arc<Tenant> {
        self.db.tenant()
    }

    async fn begun(&mut self) -> Result<&mut PooledConn, Error> {
        let open = self.open;
        let conn = self.db.pooled().await?;
        if !open {
            // Marked busy while in flight: a request cancelled now leaves a
            // connection that is rolled back and reset before reuse.
            conn.set_busy(true);
            sqlx::raw_sql("BEGIN").execute(conn.own()).await?;
            conn.set_busy(false);
            conn.set_in_transaction(true);
            self.open = true;
        }
        Ok(conn)
    }

    /// The connection inside the transaction (`BEGIN` is sent on first use).
    pub async fn conn(&mut self) -> Result<&mut PgConnection, Error> {
        Ok(self.begun().await?.raw())
    }

    pub(crate) async fn own_conn(&mut self) -> Result<&mut PgConnection, Error> {
        Ok(self.begun().await?.own())
    }

    async fn finish(mut self, statement: &'static str) -> Result<(), Error> {
        if !self.open {
            return Ok(());
        }
        let conn = self.db.conn.as_mut().expect("an open transaction has a connection");
        conn.set_busy(true);
        sqlx::raw_sql(statement).execute(conn.own()).await?;
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

/// Errors of taking a connection, carried through sqlx's error type by the executor
/// impls; `From<sqlx::Error> for Error` unwraps them again, so a handler's `?` gives
/// the same status (403, 404, 503) as the entity API would.
fn to_sqlx(e: Error) -> sqlx::Error {
    match e {
        Error::Database(e) => e,
        other => sqlx::Error::AnyDriverError(Box::new(other)),
    }
}

/// Implements `sqlx::Executor` for a handle, taking the connection on first use.
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
                        let conn = self.conn().await.map_err(to_sqlx)?;
                        Ok::<_, sqlx::Error>(conn.fetch_many(query))
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
                    let conn = self.conn().await.map_err(to_sqlx)?;
                    conn.fetch_optional(query).await
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
                    let conn = self.conn().await.map_err(to_sqlx)?;
                    conn.prepare_with(sql, parameters).await
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
                    let conn = self.conn().await.map_err(to_sqlx)?;
                    conn.describe(sql).await
                }
                .boxed()
            }
        }
    };
}

lazy_executor!(TenantDb);
lazy_executor!(TenantTx);

#[allow(unused_imports)]
use TryStreamExt as _;
