//! Moving a tenant's data: snapshots of any place (exports), and moves from one
//! strategy or server to another behind a write fence.
//!
//! A move: fence the old place (writes there fail with SQLSTATE 25006, a 503 with
//! `Retry-After`; reads go on), read it, build the new place with that data and
//! verify every table's rows and checksum there, switch the registry row and
//! announce it in one transaction, wait a grace period for every instance to hear
//! it, then drop the old place (whose fence still refuses the writes of an instance
//! that has not heard yet). A failure before the switch removes what the attempt
//! built and lifts the fence: the tenant is where it was, serving.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::data::{self, ExportedTenant, Place, Snapshot};
use super::{Strategies, database, row, schema};
use crate::error::Error;
use crate::tenant::{Strategy, Tenant, TenantStatus};

/// What a move did, and how long writes were paused.
#[derive(Debug, Clone, Serialize)]
pub struct MoveReport {
    /// The tenant in its new place.
    pub tenant: Tenant,
    /// Its strategy before.
    pub from_strategy: Strategy,
    /// Its server before.
    pub from_server: String,
    /// Tables copied.
    pub tables: usize,
    /// Rows copied (and verified).
    pub rows: i64,
    /// From the fence to the switch: how long the tenant's writes were refused (503).
    pub write_pause_ms: u64,
    /// The whole move, the grace period and dropping the old place included.
    pub total_ms: u64,
    /// Whether the old place was dropped (else `tenantry doctor` lists it).
    pub old_place_dropped: bool,
}

impl Strategies {
    /// The tenant's data, from one snapshot of its place.
    pub async fn snapshot(&self, tenant: &Tenant) -> Result<Snapshot, Error> {
        let exported = ExportedTenant {
            id: tenant.id.clone(),
            name: tenant.name.clone(),
            strategy: tenant.strategy,
            limits: tenant.limits,
        };
        let migrations = if tenant.strategy == Strategy::Row {
            Vec::new()
        } else {
            let mut conn = self.repo.pool().acquire().await?;
            self.repo.applied_migrations(&mut conn, &tenant.id).await?
        };
        const READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
        match tenant.strategy {
            Strategy::Database => {
                let mut conn = self.connect_database(tenant).await?;
                let mut tx = conn.begin_with(READ).await?;
                let snapshot = data::read(&mut tx, Place::Database, exported, migrations).await?;
                tx.rollback().await?;
                let _ = conn.close().await;
                Ok(snapshot)
            }
            strategy => {
                let mut tx = self.repo.pool().begin_with(READ).await?;
                let place = self.place_of(strategy, &tenant.storage);
                let snapshot = data::read(&mut tx, place, exported, migrations).await?;
                tx.rollback().await?;
                Ok(snapshot)
            }
        }
    }

    /// Where a schema or row tenant's data is on the registry's database.
    fn place_of<'a>(&'a self, strategy: Strategy, storage: &'a str) -> Place<'a> {
        match strategy {
            Strategy::Schema => Place::Schema(storage),
            Strategy::Database => Place::Database,
            Strategy::Row => Place::Rows {
                control: self.repo.control_schema(),
            },
        }
    }

    /// A connection to a database tenant's database.
    async fn connect_database(&self, tenant: &Tenant) -> Result<PgConnection, Error> {
        let server = self.servers.get(&tenant.server)?;
        Ok(PgConnection::connect_with(&server.database(&tenant.storage)).await?)
    }

    /// Checks that migrations `applied` match this migration source exactly (a
    /// schema or database tenant's data fits the tables of the version it was read at).
    pub fn check_version(&self, what: &str, applied: &[(i64, Vec<u8>)]) -> Result<(), Error> {
        let (pending, drift) = self.migrations.compare(applied);
        if pending.is_empty() && drift.is_empty() {
            return Ok(());
        }
        let mut why = drift;
        if !pending.is_empty() {
            why.push(format!("versions {pending:?} are not applied"));
        }
        Err(Error::Unprocessable(format!(
            "{what} is not at the version of this migration source ({}): use the migration \
             source it was made with, then migrate",
            why.join("; ")
        )))
    }

    /// Raises (`up`) or lifts the write fence on the tenant's place.
    async fn fence(&self, tenant: &Tenant, up: bool) -> Result<(), Error> {
        match tenant.strategy {
            Strategy::Database => {
                let mut conn = self.connect_database(tenant).await?;
                let mut tx = conn.begin().await?;
                let function = "public.tenantry_write_fence";
                if up {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(data::fence_function_sql(function)))
                        .execute(&mut *tx)
                        .await?;
                }
                let tables = data::table_names(&mut tx, Place::Database).await?;
                let mut sql = data::fence_sql(&tables, function, &tenant.id, false, up);
                if !up {
                    sql.push_str(&format!("DROP FUNCTION IF EXISTS {function}();"));
                }
                run_fence(&mut tx, sql, tenant).await?;
                tx.commit().await?;
                let _ = conn.close().await;
            }
            strategy => {
                let mut tx = self.repo.pool().begin().await?;
                let place = self.place_of(strategy, &tenant.storage);
                let tables = data::table_names(&mut tx, place).await?;
                let sql = data::fence_sql(
                    &tables,
                    &self.repo.fence_function(),
                    &tenant.id,
                    strategy == Strategy::Row,
                    up,
                );
                run_fence(&mut tx, sql, tenant).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Moves `tenant` to `strategy` on server `server` (see the module docs).
    pub async fn relocate(
        &self,
        tenant: &Tenant,
        strategy: Strategy,
        server: &str,
        grace: Duration,
    ) -> Result<MoveReport, Error> {
        let started = Instant::now();
        if strategy != Strategy::Row {
            // The new place gets this source's migrations: the old one must have them.
            if tenant.strategy != Strategy::Row {
                let mut conn = self.repo.pool().acquire().await?;
                let applied = self.repo.applied_migrations(&mut conn, &tenant.id).await?;
                self.check_version(&format!("tenant `{}`", tenant.id), &applied)?;
            }
        }
        // Prepared before the fence: the pause covers the copy and the switch only.
        let template = match strategy {
            Strategy::Schema => Some(schema::template_for(self).await?),
            _ => None,
        };
        let db_template = match strategy {
            Strategy::Database => {
                let options = self.servers.get(server)?;
                Some(database::template(self, server, &options).await?)
            }
            _ => None,
        };
        self.fence(tenant, true).await?;
        let fenced = Instant::now();
        let moved = async {
            let snapshot = self.snapshot(tenant).await?;
            let rows = snapshot.manifest.tables.iter().map(|t| t.rows).sum();
            let tables = snapshot.manifest.tables.len();
            let moved = match strategy {
                Strategy::Database => {
                    self.to_database(tenant, server, db_template.as_deref(), &snapshot)
                        .await?
                }
                _ => {
                    let template = template.flatten();
                    self.on_registry(tenant, strategy, template.as_deref(), &snapshot)
                        .await?
                }
            };
            Ok::<_, Error>((moved, tables, rows))
        }
        .await;
        let (moved, tables, rows) = match moved {
            Ok(done) => done,
            Err(e) => {
                if let Err(lift) = self.fence(tenant, false).await {
                    tracing::error!(tenant = %tenant.id, error = %lift, "a failed move could not lift its write fence; writes stay refused until `tenantry tenants move` is run again or the triggers are dropped");
                }
                return Err(e);
            }
        };
        let write_pause = fenced.elapsed();
        tracing::info!(tenant = %tenant.id, from = %tenant.strategy, to = %strategy, server, ?write_pause, "tenant moved; dropping its old place after the grace period");
        tokio::time::sleep(grace).await;
        let dropped = match self.drop_old(tenant).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(tenant = %tenant.id, error = %e, "the moved tenant's old place could not be dropped; `tenantry doctor` lists it");
                false
            }
        };
        Ok(MoveReport {
            tenant: moved,
            from_strategy: tenant.strategy,
            from_server: tenant.server.clone(),
            tables,
            rows,
            write_pause_ms: write_pause.as_millis() as u64,
            total_ms: started.elapsed().as_millis() as u64,
            old_place_dropped: dropped,
        })
    }

    /// Builds the new place on the registry's database (a schema, or rows in the
    /// shared tables) and switches the registry, in one transaction.
    async fn on_registry(
        &self,
        tenant: &Tenant,
        strategy: Strategy,
        template: Option<&schema::SchemaTemplate>,
        snapshot: &Snapshot,
    ) -> Result<Tenant, Error> {
        let mut tx = self.repo.pool().begin().await?;
        self.unchanged(&mut tx, tenant).await?;
        let storage = self.names.schema(&tenant.id);
        match strategy {
            Strategy::Schema => {
                schema::build(
                    self,
                    &mut tx,
                    &storage,
                    template,
                    &tenant.id,
                    Some(snapshot),
                )
                .await?
            }
            _ => row::build(self, &mut tx, &tenant.id, Some(snapshot)).await?,
        }
        let moved = self
            .repo
            .relocate(
                &mut tx,
                &tenant.id,
                strategy,
                &storage,
                crate::servers::DEFAULT_SERVER,
            )
            .await?;
        self.repo.notify(&mut tx, &tenant.id).await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// Creates the tenant's database on `server` with the data, then switches the
    /// registry; a failure drops the database this attempt created.
    async fn to_database(
        &self,
        tenant: &Tenant,
        server: &str,
        template: Option<&str>,
        snapshot: &Snapshot,
    ) -> Result<Tenant, Error> {
        let options = self.servers.get(server)?;
        let db = self.names.database(&tenant.id);
        let template = template.ok_or_else(|| Error::Internal("no template database".into()))?;
        database::create(&options, &db, template).await?;
        let switched = async {
            database::load(&options, &db, &tenant.id, snapshot).await?;
            let mut tx = self.repo.pool().begin().await?;
            self.unchanged(&mut tx, tenant).await?;
            let record = crate::migrate::Record::Registry(&self.repo, &tenant.id);
            self.migrations.record_all(&mut tx, &record).await?;
            let moved = self
                .repo
                .relocate(&mut tx, &tenant.id, Strategy::Database, &db, server)
                .await?;
            self.repo.notify(&mut tx, &tenant.id).await?;
            tx.commit().await?;
            Ok(moved)
        }
        .await;
        if switched.is_err()
            && let Err(e) = database::drop(&options, &db).await
        {
            tracing::error!(tenant = %tenant.id, error = %e, "could not drop the database of a failed move; `tenantry doctor` lists it");
        }
        switched
    }

    /// Locks the tenant's registry row and checks that it is still the one being
    /// moved (not deleted, re-created or moved by someone else meanwhile).
    async fn unchanged(&self, tx: &mut PgConnection, tenant: &Tenant) -> Result<(), Error> {
        let now = self.repo.find_for_update(tx, &tenant.id).await?;
        match now {
            Some(t)
                if t.incarnation == tenant.incarnation
                    && t.strategy == tenant.strategy
                    && t.server == tenant.server
                    && t.storage == tenant.storage
                    && t.status != TenantStatus::Deleted =>
            {
                Ok(())
            }
            _ => Err(Error::TenantChanged(tenant.id.clone())),
        }
    }

    /// Drops the place the tenant moved out of (its fence goes with it).
    async fn drop_old(&self, old: &Tenant) -> Result<(), Error> {
        match old.strategy {
            Strategy::Schema => {
                let mut tx = self.repo.pool().begin().await?;
                schema::remove(&mut tx, old).await?;
                tx.commit().await?;
            }
            Strategy::Database => database::remove(self, old).await?,
            Strategy::Row => {
                // The fence goes first (it refuses these deletes too), in the same
                // transaction: no write of the tenant slips in between.
                let mut tx = self.repo.pool().begin().await?;
                let tables =
                    data::table_names(&mut tx, self.place_of(Strategy::Row, &old.storage)).await?;
                let sql =
                    data::fence_sql(&tables, &self.repo.fence_function(), &old.id, true, false);
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await?;
                row::delete_rows(&mut tx, self.repo.control_schema(), &old.id).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// Runs fence DDL; a fence that exists already means another move of the tenant is
/// under way.
async fn run_fence(tx: &mut PgConnection, sql: String, tenant: &Tenant) -> Result<(), Error> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => {
            Err(Error::Conflict(format!(
                "tenant `{}` is being moved already (its write fence is up)",
                tenant.id
            )))
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            Err(Error::Conflict(format!(
                "tenant `{}`: the write fence waited 10 s for transactions in flight on its \
                 tables; nothing was changed, retry when they are done",
                tenant.id
            )))
        }
        Err(e) => Err(e.into()),
    }
}
