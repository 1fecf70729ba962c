//! Tenant-bound database handles: the only way tenantry hands out a connection for
//! tenant data.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres, Transaction};

use crate::error::Error;
use crate::pool::TenantPools;
use crate::tenant::Tenant;

/// A pooled connection bound to one tenant: every query on it sees that tenant's
/// schema (and the shared schema, if configured) and nothing else.
///
/// Use it as an executor with `&mut *db`:
///
/// ```no_run
/// # async fn f(mut db: tenantry::TenantDb) -> Result<(), tenantry::Error> {
/// let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
///     .fetch_all(&mut *db)
///     .await?;
/// # Ok(()) }
/// ```
pub struct TenantDb {
    conn: PoolConnection<Postgres>,
    tenant: Arc<Tenant>,
}

impl TenantDb {
    pub(crate) async fn acquire(pools: &TenantPools, tenant: Arc<Tenant>) -> Result<Self, Error> {
        let mut attempts = 0;
        loop {
            match pools.pool_for(&tenant)?.acquire().await {
                Ok(conn) => return Ok(Self { conn, tenant }),
                // The pool was evicted (and closed) after we took it from the map:
                // the next `pool_for` opens a fresh one.
                Err(sqlx::Error::PoolClosed) if attempts < 16 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The tenant this connection is bound to.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }
}

impl Deref for TenantDb {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for TenantDb {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl std::fmt::Debug for TenantDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantDb")
            .field("tenant", &self.tenant.id)
            .finish_non_exhaustive()
    }
}

/// A transaction bound to one tenant. Commit it with [`TenantTx::commit`]; dropped
/// without a commit (an error, a panic, a cancelled request) it rolls back.
///
/// ```no_run
/// # async fn f(mut tx: tenantry::TenantTx) -> Result<(), tenantry::Error> {
/// sqlx::query("INSERT INTO projects (name) VALUES ($1)")
///     .bind("apollo")
///     .execute(&mut *tx)
///     .await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: Arc<Tenant>,
}

impl TenantTx {
    pub(crate) async fn begin(pools: &TenantPools, tenant: Arc<Tenant>) -> Result<Self, Error> {
        let pool = pools.pool_for(&tenant)?;
        // `BEGIN` runs in its own task so that a request cancelled while it is in flight
        // cannot return a connection whose transaction sqlx does not know about: the
        // task finishes, and dropping its unclaimed `Transaction` rolls it back.
        let tx = tokio::spawn(async move { pool.begin().await })
            .await
            .map_err(|e| {
                Error::Registry(format!("the task beginning a transaction failed: {e}"))
            })??;
        Ok(Self { tx, tenant })
    }

    /// The tenant this transaction is bound to.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), Error> {
        self.tx.rollback().await?;
        Ok(())
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl std::fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.tenant.id)
            .finish_non_exhaustive()
    }
}
