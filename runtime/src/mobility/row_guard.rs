//! Row tenants' moves without DDL on the shared tables.
//!
//! A move's change capture and write fence used to be triggers created and dropped on
//! the shared tables for each move. `CREATE TRIGGER` and `DROP TRIGGER` take table
//! locks that queue behind any open transaction of any tenant, and every other
//! tenant's statements on the table then queue behind them: one tenant's long
//! transaction stalled every row tenant for as long as it stayed open.
//!
//! Now each shared table carries guard triggers, installed once (the first move puts
//! them on a table that lacks them, waiting at most [`LOCK_WAIT`] each try, so that
//! nobody queues behind it for longer). They fire once per statement, with the
//! statement's rows (transition tables), and read the tenants in the registry's
//! `row_moves`: usually it is empty, and that one look is all they cost; else the
//! rows the statement wrote of a tenant there are recorded in `row_move_changes` for
//! its move's catch-up, or, if that tenant is `fenced`, the statement fails with
//! SQLSTATE 25006 (a 503 with `Retry-After`) and writes nothing. A move switches its
//! tenant by writing its row there, which locks no shared table.
//!
//! The DDL also did something the rows cannot: it waited for the writes in flight.
//! A transaction that wrote before the capture (or the fence) was on, and commits
//! after, would be missed; so after each switch the move waits for every transaction
//! that was open at that moment to end ([`wait_for_open_transactions`], what
//! `CREATE INDEX CONCURRENTLY` does). Waiting holds no lock: only the moving tenant's
//! writes (refused while fenced) notice.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::error::Error;
use crate::naming::quote_ident;
use crate::tenant::TenantId;

/// The longest a guard's installation makes others' statements on a table queue
/// behind it, per try.
pub(crate) const LOCK_WAIT: &str = "50ms";

/// How long a move waits for the transactions open when it switched capture or fence
/// on, or for a try at installing a guard to find the table free.
pub(crate) const MOVE_WAIT: Duration = Duration::from_secs(10);

/// The guard triggers on a shared table (or partition) of the registry in `control`:
/// their names and the clause each is made with. One per command: a trigger with
/// transition tables fires on one kind of statement only.
pub(crate) fn triggers(control: &str) -> [(String, &'static str); 4] {
    let mut base = format!("tenantry_guard_{control}");
    // Identifiers are cut at 63 bytes by the server; control schemas are ASCII. Two
    // control schemas alike in their first 39 bytes would share the names: `install`
    // refuses a trigger of that name that is not this registry's.
    base.truncate(54);
    [
        (
            format!("{base}_insert"),
            "AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
        ),
        (
            format!("{base}_update"),
            "AFTER UPDATE ON {t} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows \
             FOR EACH STATEMENT",
        ),
        (
            format!("{base}_delete"),
            "AFTER DELETE ON {t} REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT",
        ),
        (
            format!("{base}_truncate"),
            "BEFORE TRUNCATE ON {t} FOR EACH STATEMENT",
        ),
    ]
}

/// The change records of `tenant`'s move, as a `FROM` item with the columns of a
/// capture table (`tbl`, `key`: here the whole row, of which the catch-up reads the
/// key).
pub(crate) fn changes_of(quoted_control: &str, tenant: &TenantId) -> String {
    format!(
        "(SELECT tbl, key FROM {quoted_control}.row_move_changes WHERE tenant_id = {})",
        crate::naming::quote_literal(tenant.as_str())
    )
}

/// Puts the guard triggers on each of `tables` (quoted names) and on each of their
/// partitions (a statement names the table it writes, and a statement trigger fires
/// on that table only) where they are missing, one trigger per transaction, each try
/// waiting at most [`LOCK_WAIT`] for the table and retried for up to [`MOVE_WAIT`]:
/// statements of other tenants queue behind a waiting `CREATE TRIGGER`, so it must
/// never wait long. A trigger of a guard's name that is disabled or calls another
/// function is refused: the move would run unguarded.
pub(crate) async fn install(
    conn: &mut PgConnection,
    control: &str,
    tables: &[String],
) -> Result<(), Error> {
    let triggers = triggers(control);
    let names: Vec<&str> = triggers.iter().map(|(n, _)| n.as_str()).collect();
    let function = format!("{}.row_move_guard", quote_ident(control));
    // Each table and partition, with the name of the shared table it belongs to (what
    // the catch-up calls it).
    let targets: Vec<(String, String)> = sqlx::query_as(
        "SELECT format('%I.%I', n.nspname, c.relname), r.relname::text
         FROM unnest($1::text[]) AS t(name)
         JOIN pg_catalog.pg_class r ON r.oid = t.name::regclass
         -- (no rows for a table that is not partitioned)
         CROSS JOIN LATERAL (SELECT r.oid AS relid
                             UNION SELECT relid FROM pg_catalog.pg_partition_tree(r.oid)) p
         JOIN pg_catalog.pg_class c ON c.oid = p.relid
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p')
         ORDER BY 1",
    )
    .bind(tables)
    .fetch_all(&mut *conn)
    .await?;
    let there: Vec<(String, String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT format('%I.%I', n.nspname, c.relname), t.tgname::text,
                t.tgfoid = '{function}()'::pg_catalog.regprocedure AND t.tgenabled <> 'D'
         FROM pg_catalog.pg_trigger t
         JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE t.tgname::text = ANY ($1)"
    )))
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    for (table, shared) in &targets {
        for (name, when) in &triggers {
            match there.iter().find(|(t, n, _)| t == table && n == name) {
                Some((_, _, true)) => continue,
                Some((_, _, false)) => {
                    return Err(Error::Conflict(format!(
                        "trigger `{name}` on `{table}` is disabled or is not this registry's \
                         move guard: a move of a row tenant would run unguarded; drop it \
                         (or enable it) and retry"
                    )));
                }
                None => {}
            }
            let sql = format!(
                "SET LOCAL lock_timeout = '{LOCK_WAIT}';
                 CREATE TRIGGER {} {} EXECUTE FUNCTION {function}({})",
                quote_ident(name),
                when.replace("{t}", table),
                crate::naming::quote_literal(shared)
            );
            create_briefly(conn, &sql, table).await?;
        }
    }
    Ok(())
}

/// Runs `sql` (DDL on `table` under a short `lock_timeout`) in its own transaction,
/// again after a pause while the lock is not granted, up to [`MOVE_WAIT`].
async fn create_briefly(conn: &mut PgConnection, sql: &str, table: &str) -> Result<(), Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let mut tx = conn.begin().await?;
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
        {
            Ok(_) => {
                tx.commit().await?;
                return Ok(());
            }
            // Installed meanwhile by another instance's move.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => return Ok(()),
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55P03") && started.elapsed() < MOVE_WAIT =>
            {
                drop(tx);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                return Err(Error::Conflict(format!(
                    "the move's guard could not be put on `{table}`: transactions held the \
                     table for {} s; nothing was changed, retry when they are done",
                    MOVE_WAIT.as_secs()
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A step of a row tenant's move, written to its row in `row_moves`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Record the tenant's writes (the move starts; another move's row is a conflict).
    Capture,
    /// Refuse the tenant's writes (after [`Step::Capture`]).
    Fence,
    /// Stop recording and forget the records; a fence stays up.
    CaptureOff,
    /// Neither record nor refuse: the tenant's row goes.
    Lift,
}

/// Writes `step` for `tenant` to the registry in `control` (its own transaction).
pub(crate) async fn set(
    conn: &mut PgConnection,
    control: &str,
    tenant: &TenantId,
    step: Step,
) -> Result<(), Error> {
    let c = quote_ident(control);
    match step {
        Step::Capture => {
            let made = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {c}.row_moves (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING"
            )))
            .bind(tenant.as_str())
            .execute(&mut *conn)
            .await?;
            if made.rows_affected() == 0 {
                return Err(Error::Conflict(format!(
                    "tenant `{tenant}` is being moved already (its write fence is up)"
                )));
            }
        }
        Step::Fence => {
            // After the capture only: a row gone meanwhile (the tenant deleted) is not
            // made again, fenced, for the next tenant of its id.
            let made = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {c}.row_moves SET fenced = true WHERE tenant_id = $1 AND NOT fenced"
            )))
            .bind(tenant.as_str())
            .execute(&mut *conn)
            .await?;
            if made.rows_affected() == 0 {
                return Err(Error::TenantChanged(tenant.clone()));
            }
        }
        Step::CaptureOff | Step::Lift => {
            let mut tx = conn.begin().await?;
            clear(&mut tx, control, tenant, step == Step::CaptureOff).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Removes `tenant`'s row in `row_moves` and its records inside the caller's
/// transaction (the old place's deletion after a move out of the row strategy).
pub(crate) async fn forget(
    conn: &mut PgConnection,
    control: &str,
    tenant: &TenantId,
) -> Result<(), Error> {
    clear(conn, control, tenant, false).await
}

/// Deletes `tenant`'s change records and its row in `row_moves` (unless that row is
/// fenced and `keep_fence`), inside the caller's transaction.
async fn clear(
    conn: &mut PgConnection,
    control: &str,
    tenant: &TenantId,
    keep_fence: bool,
) -> Result<(), Error> {
    let c = quote_ident(control);
    let unless_fenced = if keep_fence { " AND NOT fenced" } else { "" };
    for sql in [
        format!("DELETE FROM {c}.row_moves WHERE tenant_id = $1{unless_fenced}"),
        format!("DELETE FROM {c}.row_move_changes WHERE tenant_id = $1"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Whether `tenant` has a row in `row_moves` (a move under way, or one whose process
/// died).
pub(crate) async fn pending(
    conn: &mut PgConnection,
    control: &str,
    tenant: &TenantId,
) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {}.row_moves WHERE tenant_id = $1)",
        quote_ident(control)
    )))
    .bind(tenant.as_str())
    .fetch_one(&mut *conn)
    .await?)
}

/// The tenants with a row in `row_moves`, fenced or not (for `tenantry doctor`).
pub(crate) async fn all_pending(
    conn: &mut PgConnection,
    control: &str,
) -> Result<Vec<(String, bool)>, Error> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tenant_id, fenced FROM {}.row_moves ORDER BY tenant_id",
        quote_ident(control)
    )))
    .fetch_all(&mut *conn)
    .await?)
}

/// Waits until every transaction that is open in this database now has ended (but
/// `conn`'s, and those of moves under way, registered in `move_backends` by
/// [`register_backend`]), prepared ones included: after it, every write made before a
/// capture or fence went on is committed or gone. Up to [`MOVE_WAIT`]; then a
/// conflict naming the server processes that kept theirs open. Holds no lock.
///
/// Every session of the database counts, whoever it belongs to: a registry login
/// without `pg_read_all_stats` sees other users' sessions' database but not their
/// kind, so autovacuum workers are waited for too when it cannot tell them apart.
pub(crate) async fn wait_for_open_transactions(
    conn: &mut PgConnection,
    control: &str,
) -> Result<(), Error> {
    let c = quote_ident(control);
    let open: Vec<(String, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT l.virtualxid, l.pid FROM pg_catalog.pg_locks l
         JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'virtualxid' AND l.mode = 'ExclusiveLock' AND l.granted
           AND l.pid <> pg_catalog.pg_backend_pid()
           AND a.datid = (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname = pg_catalog.current_database())
           AND (a.backend_type IS NULL OR a.backend_type = 'client backend')
           AND NOT EXISTS (SELECT 1 FROM {c}.move_backends b
                           WHERE b.pid = a.pid AND b.backend_start = a.backend_start)"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let prepared: Vec<String> = sqlx::query_scalar(
        "SELECT gid FROM pg_catalog.pg_prepared_xacts
         WHERE database = pg_catalog.current_database()",
    )
    .fetch_all(&mut *conn)
    .await?;
    if open.is_empty() && prepared.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = open.iter().map(|(v, _)| v.clone()).collect();
    let started = Instant::now();
    loop {
        let left: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_catalog.pg_locks
             WHERE locktype = 'virtualxid' AND mode = 'ExclusiveLock' AND granted
               AND virtualxid = ANY ($1) ORDER BY pid",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let still_prepared: Vec<String> = sqlx::query_scalar(
            "SELECT gid FROM pg_catalog.pg_prepared_xacts
             WHERE database = pg_catalog.current_database() AND gid = ANY ($1)",
        )
        .bind(&prepared)
        .fetch_all(&mut *conn)
        .await?;
        if left.is_empty() && still_prepared.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= MOVE_WAIT {
            return Err(Error::Conflict(format!(
                "transactions open since the move began (server processes {left:?}, prepared \
                 transactions {still_prepared:?}) did not end within {} s; the move was \
                 undone, retry when they are done",
                MOVE_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Records `conn`'s server process as a move's (its new place's transaction, which
/// row tenants' moves do not wait for: it writes only its own tenant's rows), and
/// forgets records of processes that are gone. [`unregister_backend`] ends it.
pub(crate) async fn register_backend(conn: &mut PgConnection, control: &str) -> Result<(), Error> {
    let c = quote_ident(control);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {c}.move_backends b WHERE NOT EXISTS (
             SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = b.pid);
         INSERT INTO {c}.move_backends (pid, backend_start)
             SELECT pid, backend_start FROM pg_catalog.pg_stat_activity
             WHERE pid = pg_catalog.pg_backend_pid()
             ON CONFLICT DO NOTHING"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Forgets `conn`'s server process as a move's.
pub(crate) async fn unregister_backend(
    conn: &mut PgConnection,
    control: &str,
) -> Result<(), Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {}.move_backends WHERE pid = pg_catalog.pg_backend_pid()",
        quote_ident(control)
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
