//! Moving a tenant's data: snapshots of any place (exports), and moves from one
//! strategy or server to another behind a write fence.
//!
//! A move: capture the keys of the rows written to the old place (triggers), copy it
//! while it serves into the new place, then fence the old place (writes there fail
//! with SQLSTATE 25006, a 503 with `Retry-After`; reads go on), copy again only the
//! rows whose keys were captured, verify every table's row count and checksum
//! against the old place, switch the registry row and announce it in one
//! transaction, wait a grace period for every instance to hear it, then drop the old
//! place (whose fence still refuses the writes of an instance that has not heard
//! yet). A failure before the switch removes what the attempt made and lifts its
//! fence: the tenant is where it was, serving.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::capture::{self, Capture};
use super::copy::{self, Place};
use super::fence;
use super::format::{ExportedTenant, Snapshot};
use super::row_guard::{self, Step};
use crate::error::Error;
use crate::strategy::{Strategies, database, row, schema};
use crate::tenant::{Strategy, Tenant, TenantStatus};

/// One move per tenant at a time, across processes: a session advisory lock on a
/// connection of its own (if the process dies, the session ends and the lock goes).
struct MoveLock {
    conn: PgConnection,
    key: String,
}

impl MoveLock {
    async fn acquire(s: &Strategies, id: &crate::tenant::TenantId) -> Result<Self, Error> {
        let mut conn = PgConnection::connect_with(&s.repo.pool().connect_options()).await?;
        let key = format!("tenantry.move:{}:{id}", s.repo.control_schema());
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(&key)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            let _ = conn.close().await;
            return Err(Error::Conflict(format!(
                "tenant `{id}` is being moved already; wait for that move to end"
            )));
        }
        Ok(Self { conn, key })
    }

    /// Unlocks, then ends the session. The unlock is answered before the next move
    /// may try: a closed session's locks go only when its backend has exited, after
    /// the close returned, so the same process's next move of the tenant could be
    /// told (409) that this one is still running.
    async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&self.key)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

/// A move attempt's change capture, and what it has made on the old place so far
/// (what its cleanup removes).
#[derive(Debug)]
struct Attempt {
    capture: Capture,
    captured: bool,
    fenced: bool,
    /// A target schema made ahead of the copy (Citus, login not a superuser).
    precreated: Option<schema::Precreated>,
}

/// What moves of a tenant left behind (see [`Strategies::recover_move`]).
struct Leftovers {
    /// Fence and capture triggers at the tenant's place.
    own_place: i64,
    /// Fence and capture triggers on the registry database's tables.
    shared: i64,
    /// Its row in `row_moves`.
    guarded: bool,
}

/// What [`Strategies::copy_and_switch`] did.
struct Switched {
    tenant: Tenant,
    tables: usize,
    rows: i64,
    recopied: u64,
    pause: Duration,
}

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
    /// Rows copied while the tenant kept serving (and verified).
    pub rows: i64,
    /// Rows written during that copy, copied again with writes paused.
    pub rows_caught_up: u64,
    /// From the fence to the switch: how long the tenant's writes were refused (503);
    /// 0 for a move between Citus workers, where writes wait instead (see
    /// [`NodeTransfer`](crate::admin::NodeTransfer)) and Citus does not report for how long.
    pub write_pause_ms: u64,
    /// The whole move, the grace period and dropping the old place included.
    pub total_ms: u64,
    /// Whether the old place was dropped (else `tenantry doctor` lists it).
    pub old_place_dropped: bool,
    /// The Citus worker now holding the tenant (moves with `--to-node`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How Citus copied it there (`logical` or `block-writes`; moves with `--to-node`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<crate::citus::NodeTransfer>,
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
                let snapshot = copy::read(&mut tx, Place::Database, exported, migrations).await?;
                tx.rollback().await?;
                let _ = conn.close().await;
                Ok(snapshot)
            }
            strategy => {
                let mut tx = self.repo.pool().begin_with(READ).await?;
                let place = self.place_of(strategy, &tenant.storage);
                let snapshot = copy::read(&mut tx, place, exported, migrations).await?;
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

    /// The capture of `tenant`'s move, next to its old place.
    fn capture_of(&self, tenant: &Tenant) -> Capture {
        if self.row_guarded(tenant) {
            let control = crate::naming::quote_ident(self.repo.control_schema());
            return Capture::guarded(&control, &tenant.id);
        }
        let schema = match tenant.strategy {
            Strategy::Database => "public".to_owned(),
            _ => crate::naming::quote_ident(self.repo.control_schema()),
        };
        Capture::new(&schema, &tenant.id, tenant.strategy == Strategy::Row)
    }

    /// A connection to the database of `tenant`'s place.
    async fn connect_source(&self, tenant: &Tenant) -> Result<PgConnection, Error> {
        match tenant.strategy {
            Strategy::Database => self.connect_database(tenant).await,
            _ => Ok(PgConnection::connect_with(&self.repo.pool().connect_options()).await?),
        }
    }

    /// Runs the DDL `make` writes for the tables of `tenant`'s place (quoted names,
    /// then names and keys), in one transaction there.
    async fn on_source(
        &self,
        tenant: &Tenant,
        make: impl FnOnce(&[String], &[(String, Vec<String>)]) -> String,
    ) -> Result<(), Error> {
        let mut conn = self.connect_source(tenant).await?;
        let mut tx = conn.begin().await?;
        let place = self.place_of(tenant.strategy, &tenant.storage);
        let (tables, names) = capture::capture_targets(&mut tx, place).await?;
        run_fence(&mut tx, make(&tables, &names), tenant).await?;
        tx.commit().await?;
        let _ = conn.close().await;
        Ok(())
    }

    /// Whether the tenant's place is on a Citus cluster (its tables distributed): its
    /// fence is made of triggers Citus runs on the workers, created one statement at a
    /// time, and its move copies under the fence (no change capture: a capture
    /// trigger on a worker could not reach the coordinator's control schema).
    fn on_citus(&self, tenant: &Tenant) -> bool {
        self.citus.is_some() && tenant.strategy != Strategy::Database
    }

    /// Whether the tenant's capture and fence are its row in the registry's
    /// `row_moves`, read by the shared tables' guard triggers (a row tenant off Citus:
    /// see `row_guard`), rather than triggers of the move's own.
    fn row_guarded(&self, tenant: &Tenant) -> bool {
        tenant.strategy == Strategy::Row && self.citus.is_none()
    }

    /// Takes a row tenant's move to `step`; a capture or fence going up then waits for
    /// the transactions open meanwhile (but those of moves under way), and is undone
    /// if they do not end in time.
    async fn guard_step(&self, tenant: &Tenant, step: Step) -> Result<(), Error> {
        let control = self.repo.control_schema();
        let mut conn = self.repo.pool().acquire().await?;
        if step == Step::Capture {
            let tables =
                copy::table_names(&mut conn, self.place_of(Strategy::Row, &tenant.storage)).await?;
            row_guard::install(&mut conn, control, &tables).await?;
        }
        row_guard::set(&mut conn, control, &tenant.id, step).await?;
        if matches!(step, Step::Capture | Step::Fence)
            && let Err(e) = row_guard::wait_for_open_transactions(&mut conn, control).await
        {
            if let Err(lift) = row_guard::set(&mut conn, control, &tenant.id, Step::Lift).await {
                tracing::error!(tenant = %tenant.id, error = %lift, "a failed move could not lift its write fence; `tenantry tenants move --recover` lifts it");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Runs fence `statements` on the coordinator in `tx`, one at a time, with the
    /// triggers Citus calls unsafe allowed (they only raise, or record nothing).
    async fn run_on_citus(
        tx: &mut PgConnection,
        statements: Vec<String>,
        tenant: &Tenant,
    ) -> Result<(), Error> {
        // The timeouts go to the workers too (propagated), where the shards' triggers
        // are made: no wait there without a bound while the coordinator's tables are
        // locked.
        sqlx::raw_sql(
            "SET LOCAL citus.propagate_set_commands TO 'local'; \
             SET LOCAL citus.enable_unsafe_triggers TO on; SET LOCAL lock_timeout = '10s'; \
             SET LOCAL statement_timeout = '60s'",
        )
        .execute(&mut *tx)
        .await?;
        for statement in statements {
            run_fence(tx, statement, tenant).await?;
        }
        Ok(())
    }

    /// Raises (`up`) or lifts, in `tx` on a Citus coordinator, the tenant's write fence
    /// on the tables of its `place` kind (its schema, or the shared tables).
    async fn fence_on_citus(
        &self,
        tx: &mut PgConnection,
        tenant: &Tenant,
        place: Strategy,
        up: bool,
    ) -> Result<(), Error> {
        let tables = copy::table_names(tx, self.place_of(place, &tenant.storage)).await?;
        let statements = fence::fence_statements(
            &tables,
            &self.repo.fence_function(),
            &tenant.id,
            place == Strategy::Row,
            up,
        );
        Self::run_on_citus(tx, statements, tenant).await
    }

    /// Raises (`up`) or lifts the write fence on the tenant's place.
    async fn fence(&self, tenant: &Tenant, up: bool) -> Result<(), Error> {
        if self.row_guarded(tenant) {
            return self
                .guard_step(tenant, if up { Step::Fence } else { Step::Lift })
                .await;
        }
        if self.on_citus(tenant) {
            let mut tx = self.repo.pool().begin().await?;
            self.fence_on_citus(&mut tx, tenant, tenant.strategy, up)
                .await?;
            tx.commit().await?;
            return Ok(());
        }
        let rows = tenant.strategy == Strategy::Row;
        let function = match tenant.strategy {
            Strategy::Database => "public.tenantry_write_fence".to_owned(),
            _ => self.repo.fence_function(),
        };
        let own_function = tenant.strategy == Strategy::Database;
        self.on_source(tenant, |tables, _| {
            let mut sql = String::new();
            if up && own_function {
                sql.push_str(&fence::fence_function_sql(&function));
                sql.push(';');
            }
            sql.push_str(&fence::fence_sql(tables, &function, &tenant.id, rows, up));
            if !up && own_function {
                sql.push_str(&format!("DROP FUNCTION IF EXISTS {function}();"));
            }
            sql
        })
        .await
    }

    /// Starts (`up`) or stops and removes the capture of the tenant's writes.
    async fn capture(&self, tenant: &Tenant, capture: &Capture, up: bool) -> Result<(), Error> {
        if self.row_guarded(tenant) {
            return self
                .guard_step(tenant, if up { Step::Capture } else { Step::CaptureOff })
                .await;
        }
        self.on_source(tenant, |tables, names| capture.sql(tables, names, up))
            .await
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
        let lock = MoveLock::acquire(self, &tenant.id).await?;
        let moved = self
            .relocate_locked(tenant, strategy, server, grace, started)
            .await;
        lock.release().await;
        moved
    }

    /// Runs `work` (a move between Citus workers) holding the tenant's move lock: no
    /// move between strategies of the tenant runs meanwhile.
    pub async fn while_moving<T>(
        &self,
        id: &crate::tenant::TenantId,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let lock = MoveLock::acquire(self, id).await?;
        let done = work.await;
        lock.release().await;
        done
    }

    /// Lifts the fence and change capture a move left at the tenant's place when its
    /// process died (refused while a move of the tenant runs), and, for a tenant
    /// that is no longer a row tenant, its fence and capture on the shared tables.
    /// Rows a move out of the row strategy left there stay (nothing proves they are
    /// only that move's: `tenantry doctor`'s findings and the operator decide).
    /// Returns whether anything was found.
    pub async fn recover_move(&self, tenant: &Tenant) -> Result<bool, Error> {
        let lock = MoveLock::acquire(self, &tenant.id).await?;
        let recovered = async {
            let left = self.leftovers(tenant).await?;
            // Triggers of a move's own (a schema or database tenant's, a row tenant's
            // on Citus, any tenant's on the shared tables from before the guards): DDL,
            // run only where they are (it queues behind every open transaction there).
            if left.own_place > 0 {
                if !self.on_citus(tenant) && !self.row_guarded(tenant) {
                    // Moves on Citus capture nothing.
                    self.capture(tenant, &self.capture_of(tenant), false)
                        .await?;
                }
                if !self.row_guarded(tenant) {
                    self.fence(tenant, false).await?;
                }
            }
            if left.shared > 0 && self.citus.is_some() {
                if tenant.strategy != Strategy::Row {
                    let mut tx = self.repo.pool().begin().await?;
                    self.fence_on_citus(&mut tx, tenant, Strategy::Row, false)
                        .await?;
                    tx.commit().await?;
                }
            } else if left.shared > 0 {
                let mut tx = self.repo.pool().begin().await?;
                let place = self.place_of(Strategy::Row, &tenant.storage);
                let (tables, names) = capture::capture_targets(&mut tx, place).await?;
                let capture = Capture::new(
                    &crate::naming::quote_ident(self.repo.control_schema()),
                    &tenant.id,
                    true,
                );
                let mut sql = capture.sql(&tables, &names, false);
                sql.push_str(&fence::fence_sql(
                    &tables,
                    &self.repo.fence_function(),
                    &tenant.id,
                    true,
                    false,
                ));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            if left.guarded {
                let mut conn = self.repo.pool().acquire().await?;
                row_guard::set(
                    &mut conn,
                    self.repo.control_schema(),
                    &tenant.id,
                    Step::Lift,
                )
                .await?;
            }
            Ok::<_, Error>(left.own_place > 0 || left.shared > 0 || left.guarded)
        }
        .await;
        lock.release().await;
        recovered
    }

    /// What moves of `tenant` left: fence and capture triggers at its place (its own
    /// database's, or the registry's) and on the registry database's tables, and its
    /// row in `row_moves`.
    async fn leftovers(&self, tenant: &Tenant) -> Result<Leftovers, Error> {
        const COUNT: &str = "SELECT count(*) FROM pg_trigger WHERE tgname::text = ANY ($1)";
        let names = capture::move_triggers(&tenant.id).to_vec();
        let mut registry = self.repo.pool().acquire().await?;
        let shared: i64 = sqlx::query_scalar(COUNT)
            .bind(&names)
            .fetch_one(&mut *registry)
            .await?;
        let own_place = if tenant.strategy == Strategy::Database {
            let mut conn = self.connect_source(tenant).await?;
            let here: i64 = sqlx::query_scalar(COUNT)
                .bind(&names)
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            here
        } else {
            shared
        };
        let guarded =
            row_guard::pending(&mut registry, self.repo.control_schema(), &tenant.id).await?;
        Ok(Leftovers {
            own_place,
            shared,
            guarded,
        })
    }

    async fn relocate_locked(
        &self,
        tenant: &Tenant,
        strategy: Strategy,
        server: &str,
        grace: Duration,
        started: Instant,
    ) -> Result<MoveReport, Error> {
        if strategy != Strategy::Row && tenant.strategy != Strategy::Row {
            // The new place gets this source's migrations: the old one must have them.
            let mut conn = self.repo.pool().acquire().await?;
            let applied = self.repo.applied_migrations(&mut conn, &tenant.id).await?;
            self.check_version(&format!("tenant `{}`", tenant.id), &applied)?;
        }
        let template = match strategy {
            Strategy::Schema => schema::template_for(self).await?,
            _ => None,
        };
        // A database target is created first; a failed move drops it.
        let new_db = match strategy {
            Strategy::Database => {
                let options = self.servers.get(server)?;
                let template = database::template(self, server, &options).await?;
                let db = self.names.database(&tenant.id);
                database::create(&options, &db, &template).await?;
                Some((options, db))
            }
            _ => None,
        };
        let mut made = Attempt {
            capture: self.capture_of(tenant),
            captured: false,
            fenced: false,
            precreated: None,
        };
        let moved = self
            .copy_and_switch(
                tenant,
                strategy,
                server,
                template.as_deref(),
                new_db.as_ref(),
                &mut made,
            )
            .await;
        // The capture has done its work either way. Only what this attempt made is
        // removed: a capture or fence that was there already is another move's.
        if made.captured
            && let Err(e) = self.capture(tenant, &made.capture, false).await
        {
            tracing::warn!(tenant = %tenant.id, error = %e, "could not remove a move's change capture");
        }
        let moved = match moved {
            Ok(done) => done,
            Err(e) => {
                if made.fenced
                    && let Err(lift) = self.fence(tenant, false).await
                {
                    tracing::error!(tenant = %tenant.id, error = %lift, "a failed move could not lift its write fence; writes stay refused until the triggers are dropped");
                }
                if let Some(p) = made.precreated.take() {
                    p.discard(self).await;
                }
                if let Some((options, db)) = &new_db
                    && let Err(e) = database::drop(options, db).await
                {
                    tracing::error!(tenant = %tenant.id, error = %e, "could not drop the database of a failed move; `tenantry doctor` lists it");
                }
                return Err(e);
            }
        };
        tracing::info!(tenant = %tenant.id, from = %tenant.strategy, to = %strategy, server, write_pause_ms = moved.pause.as_millis() as u64, recopied = moved.recopied, "tenant switched; dropping its old place after the grace period");
        tokio::time::sleep(grace).await;
        let dropped = match self.drop_old(tenant).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(tenant = %tenant.id, error = %e, "the moved tenant's old place could not be dropped; `tenantry doctor` lists it");
                false
            }
        };
        Ok(MoveReport {
            tenant: moved.tenant,
            from_strategy: tenant.strategy,
            from_server: tenant.server.clone(),
            tables: moved.tables,
            rows: moved.rows,
            rows_caught_up: moved.recopied,
            write_pause_ms: moved.pause.as_millis() as u64,
            total_ms: started.elapsed().as_millis() as u64,
            old_place_dropped: dropped,
            node: None,
            transfer: None,
        })
    }

    /// Capture on, copy online, fence, catch up and verify, switch.
    async fn copy_and_switch(
        &self,
        tenant: &Tenant,
        strategy: Strategy,
        server: &str,
        template: Option<&schema::SchemaTemplate>,
        new_db: Option<&(sqlx::postgres::PgConnectOptions, String)>,
        made: &mut Attempt,
    ) -> Result<Switched, Error> {
        let on_citus = self.on_citus(tenant);
        let mut fenced = None;
        if on_citus {
            // No capture there: the fence goes up first and the copy is the final one.
            self.fence(tenant, true).await?;
            made.fenced = true;
            fenced = Some(Instant::now());
        } else {
            self.capture(tenant, &made.capture, true).await?;
            made.captured = true;
        }
        let snapshot = self.snapshot(tenant).await?;
        let rows = snapshot.manifest.tables.iter().map(|t| t.rows).sum();
        let tables = snapshot.manifest.tables.len();
        let id = &tenant.id;
        // The new place with the online copy, not committed (registry targets) or
        // not yet in the registry (a database).
        let mut target_conn = match new_db {
            Some((options, db)) => {
                database::load(options, db, id, &snapshot).await?;
                PgConnection::connect_with(&options.clone().database(db)).await?
            }
            None => {
                let mut conn =
                    PgConnection::connect_with(&self.repo.pool().connect_options()).await?;
                // Its transaction holds only this tenant's rows: row tenants' moves,
                // this one's fence included, do not wait for it.
                row_guard::register_backend(&mut conn, self.repo.control_schema()).await?;
                conn
            }
        };
        let storage = self.names.schema(id);
        if strategy == Strategy::Schema {
            made.precreated = schema::precreate(self, &storage).await?;
        }
        let mut target = target_conn.begin().await?;
        match strategy {
            Strategy::Schema => {
                let pre = made.precreated.is_some();
                schema::build(
                    self,
                    &mut target,
                    &storage,
                    template,
                    id,
                    Some(&snapshot),
                    pre,
                )
                .await?
            }
            Strategy::Row => row::build(self, &mut target, id, Some(&snapshot)).await?,
            Strategy::Database => {}
        }
        let target_place = match strategy {
            Strategy::Schema => Place::Schema(&storage),
            Strategy::Database => Place::Database,
            Strategy::Row => Place::Rows {
                control: self.repo.control_schema(),
            },
        };
        let (fenced, recopied) = match fenced {
            Some(fenced) => (fenced, 0),
            None => {
                self.fence(tenant, true).await?;
                made.fenced = true;
                let fenced = Instant::now();
                let mut source_conn = self.connect_source(tenant).await?;
                let mut source = source_conn
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?;
                let source_place = self.place_of(tenant.strategy, &tenant.storage);
                let recopied = capture::catch_up(
                    &mut source,
                    source_place,
                    &made.capture,
                    &mut target,
                    target_place,
                    id,
                )
                .await?;
                source.rollback().await?;
                let _ = source_conn.close().await;
                (fenced, recopied)
            }
        };
        let moved = match new_db {
            None => {
                self.unchanged(&mut target, tenant).await?;
                let moved = self
                    .repo
                    .relocate(
                        &mut target,
                        id,
                        strategy,
                        &storage,
                        crate::servers::DEFAULT_SERVER,
                    )
                    .await?;
                self.repo.notify(&mut target, id).await?;
                target.commit().await?;
                moved
            }
            Some((_, db)) => {
                target.commit().await?;
                let mut tx = self.repo.pool().begin().await?;
                self.unchanged(&mut tx, tenant).await?;
                let record = crate::migrate::Record::Registry(&self.repo, id);
                self.migrations.record_all(&mut tx, &record).await?;
                let moved = self
                    .repo
                    .relocate(&mut tx, id, Strategy::Database, db, server)
                    .await?;
                self.repo.notify(&mut tx, id).await?;
                tx.commit().await?;
                moved
            }
        };
        if new_db.is_none() {
            let _ =
                row_guard::unregister_backend(&mut target_conn, self.repo.control_schema()).await;
        }
        let _ = target_conn.close().await;
        Ok(Switched {
            tenant: moved,
            tables,
            rows,
            recopied,
            pause: fenced.elapsed(),
        })
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
                if self.citus.is_some() {
                    self.fence_on_citus(&mut tx, old, Strategy::Row, false)
                        .await?;
                } else {
                    // The guard's row, not DDL: no other tenant waits for this.
                    row_guard::forget(&mut tx, self.repo.control_schema(), &old.id).await?;
                }
                row::delete_rows(&mut tx, self.repo.control_schema(), &old.id).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// Fences and captures of moves on the registry's database (`move-leftover`): there
/// while a move runs; after one whose process died, the tenant's writes get 503
/// until they are dropped.
pub(crate) async fn doctor(
    s: &Strategies,
    findings: &mut Vec<crate::strategy::Finding>,
) -> Result<(), Error> {
    let left: Vec<(String, String)> = sqlx::query_as(
        "SELECT t.tgname::text, format('%I.%I', n.nspname, c.relname)
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE starts_with(t.tgname::text, 'tenantry_fence_')
            OR starts_with(t.tgname::text, 'tenantry_capture_')
         ORDER BY 2, 1",
    )
    .fetch_all(s.repo.pool())
    .await?;
    let mut conn = s.repo.pool().acquire().await?;
    for (tenant, fenced) in row_guard::all_pending(&mut conn, s.repo.control_schema()).await? {
        findings.push(crate::strategy::Finding {
            kind: "move-leftover",
            subject: format!("row tenant {}", tenant.escape_debug()),
            detail: format!(
                "a row tenant's move {}; unless a move is running, its process died: \
                 `tenantry tenants move {} --recover` ends it",
                if fenced {
                    "with its write fence up (its writes get 503)"
                } else {
                    "recording its writes"
                },
                tenant.escape_debug()
            ),
        });
    }
    for (trigger, table) in left {
        findings.push(crate::strategy::Finding {
            kind: "move-leftover",
            subject: format!("{table} {trigger}"),
            detail: format!(
                "a tenant move's fence or change capture; unless a move is running, its \
                 process died and the tenant's writes get 503 until it is dropped: \
                 DROP TRIGGER {} ON {table}",
                crate::naming::quote_ident(&trigger)
            ),
        });
    }
    Ok(())
}

/// Runs fence DDL; a fence that exists already means another move of the tenant is
/// under way.
async fn run_fence(tx: &mut PgConnection, sql: String, tenant: &Tenant) -> Result<(), Error> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => Ok(()),
        // A trigger, table or function of that name: another move's.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42710" | "42P07" | "42723")) =>
        {
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
