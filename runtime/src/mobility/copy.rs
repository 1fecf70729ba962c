//! Copying a tenant's data whatever its strategy: its tables, their rows as `COPY` text, a
//! checksum per table and the positions of their sequences. Read from one place (a
//! tenant schema, a tenant database, a row tenant's rows in the shared tables) into a
//! [`Snapshot`], written as a portable export, and loaded into another place (an
//! import, or a move), where the checksums are verified before anything commits.
//!
//! The format names no schema and carries no `tenant_id` column: a snapshot of a row
//! tenant loads into a schema tenant and back, under the same or another id. Tables
//! are matched by name, columns by name; the target's tables come from its own
//! catalog, so nothing read from a file ever becomes SQL text.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgConnection, Row};

use super::format::{
    ExportedMigration, ExportedTenant, FORMAT, Manifest, SequencePosition, Snapshot, TableData,
    VERSION, hex,
};
use crate::error::Error;
use crate::naming::{TENANT_SETTING, quote_ident};
use crate::strategy::shared::{RLS_POLICIES, TENANT_COLUMN, shared_tables_sql};
use crate::tenant::TenantId;

/// The capture table of a move out of a tenant database (left out of its tables).
pub(super) const CAPTURE_TABLE_IN_DATABASE: &str = "public._tenantry_move_changes";

/// Where a tenant's tables are.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place<'a> {
    /// A schema of the registry's database.
    Schema(&'a str),
    /// The `public` schema of a tenant database (the connection is to that database).
    Database,
    /// A row tenant's rows in the shared tables under tenantry's policies.
    Rows {
        /// The control schema (excluded from the shared tables).
        control: &'a str,
    },
}

/// A table of a place, from the catalog.
#[derive(Debug, Clone)]
pub(super) struct Table {
    pub(super) name: String,
    pub(super) qualified: String,
    /// Columns a row can be written to, in order, `tenant_id` left out.
    pub(super) columns: Vec<String>,
    pub(super) tenant_column: bool,
    pub(super) refers_to: Vec<String>,
    /// `(column, quoted sequence)`.
    pub(super) sequences: Vec<(String, String)>,
    /// The primary key's columns, `tenant_id` left out (empty: no primary key).
    pub(super) key: Vec<String>,
}

/// Settings that make `COPY` text the same on every server, and (for row tenants)
/// the tenant setting, for the caller's transaction.
pub(super) async fn prepare(
    conn: &mut PgConnection,
    place: Place<'_>,
    tenant: &TenantId,
) -> Result<(), Error> {
    // On Citus these reach the workers too, where the rows' text and checksums are
    // computed (and the row tenant's shards filter on the tenant setting).
    crate::strategy::shared::propagate_locally(conn).await?;
    sqlx::raw_sql(
        "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, MDY'; \
         SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; \
         SET LOCAL bytea_output = 'hex'; SET LOCAL client_min_messages = warning",
    )
    .execute(&mut *conn)
    .await?;
    if let Place::Rows { .. } = place {
        crate::strategy::shared::set_rows_tenant(conn, tenant).await?;
    }
    Ok(())
}

/// The tables of `place`, referenced tables first (then by name).
pub(super) async fn tables(conn: &mut PgConnection, place: Place<'_>) -> Result<Vec<Table>, Error> {
    let oids: Vec<sqlx::postgres::types::Oid> = match place {
        Place::Schema(schema) => {
            sqlx::query_scalar(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            )
            .bind(schema)
            .fetch_all(&mut *conn)
            .await?
        }
        Place::Database => {
            sqlx::query_scalar(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
                   AND c.relname <> '_tenantry_migrations'
                   AND c.relname <> '_tenantry_move_changes'",
            )
            .fetch_all(&mut *conn)
            .await?
        }
        Place::Rows { control } => {
            let row_schema =
                crate::strategy::shared::recorded_row_schema(&mut *conn, control).await?;
            let shared = shared_tables_sql(row_schema.as_deref());
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT c.oid {shared} AND NOT c.relispartition
                   AND (SELECT count(DISTINCT p.polname) FROM pg_policy p
                        WHERE p.polrelid = c.oid AND p.polname = ANY ($3)) = 4"
            )))
            .bind(control)
            .bind(TENANT_COLUMN)
            .bind(RLS_POLICIES.to_vec())
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, format('%I.%I', n.nspname, c.relname) AS qualified,
            array(SELECT a.attname::text FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                    AND a.attgenerated = '' ORDER BY a.attnum) AS columns,
            array(SELECT DISTINCT r.relname::text FROM pg_constraint f
                  JOIN pg_class r ON r.oid = f.confrelid
                  WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid
                    AND f.confrelid = ANY ($1)) AS refers_to,
            array(SELECT a.attname::text || ' ' || format('%I.%I', sn.nspname, s.relname)
                  FROM pg_depend d
                  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                  JOIN pg_namespace sn ON sn.oid = s.relnamespace
                  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                    AND d.refobjid = c.oid AND d.deptype IN ('a', 'i')
                  ORDER BY 1) AS sequences,
            array(SELECT a.attname::text FROM pg_index i
                  JOIN pg_attribute a ON a.attrelid = i.indrelid
                   AND a.attnum = ANY (i.indkey::int2[])
                  WHERE i.indrelid = c.oid AND i.indisprimary
                  ORDER BY array_position(i.indkey::int2[], a.attnum)) AS key
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = ANY ($1) ORDER BY c.relname",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?;
    let mut found = Vec::new();
    for row in rows {
        let all: Vec<String> = row.try_get("columns")?;
        let sequences: Vec<String> = row.try_get("sequences")?;
        found.push(Table {
            name: row.try_get("name")?,
            qualified: row.try_get("qualified")?,
            tenant_column: all.iter().any(|c| c == TENANT_COLUMN),
            columns: all.into_iter().filter(|c| c != TENANT_COLUMN).collect(),
            refers_to: row.try_get("refers_to")?,
            key: {
                let key: Vec<String> = row.try_get("key")?;
                key.into_iter().filter(|c| c != TENANT_COLUMN).collect()
            },
            sequences: sequences
                .iter()
                .filter_map(|s| s.split_once(' '))
                .map(|(c, s)| (c.to_owned(), s.to_owned()))
                .collect(),
        });
    }
    if let Some(name) = found
        .windows(2)
        .find(|w| w[0].name == w[1].name)
        .map(|w| w[0].name.clone())
    {
        return Err(Error::Unprocessable(format!(
            "two shared tables are named `{name}` (in different schemas); a tenant's data \
             cannot be matched by table name"
        )));
    }
    Ok(in_load_order(found))
}

/// Referenced tables before the tables that refer to them, else by name; tables in a
/// reference cycle last, by name.
pub(super) fn in_load_order(mut tables: Vec<Table>) -> Vec<Table> {
    let mut ordered = Vec::with_capacity(tables.len());
    let mut placed: BTreeSet<String> = BTreeSet::new();
    loop {
        let ready = tables
            .iter()
            .position(|t| t.refers_to.iter().all(|r| placed.contains(r)));
        match ready {
            Some(i) => {
                let t = tables.remove(i);
                placed.insert(t.name.clone());
                ordered.push(t);
            }
            None => break,
        }
    }
    ordered.extend(tables);
    ordered
}

/// `SELECT <columns> FROM <table>` (of the tenant's rows, for row tenants).
pub(super) fn select(table: &Table, columns: &[String], place: Place<'_>) -> String {
    let list = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = match place {
        Place::Rows { .. } => format!(
            " WHERE {} = current_setting('{TENANT_SETTING}')",
            quote_ident(TENANT_COLUMN)
        ),
        _ => String::new(),
    };
    format!("SELECT {list} FROM {}{filter}", table.qualified)
}

/// Row count and order-independent checksum of `columns` of `table`.
pub(super) async fn checksum(
    conn: &mut PgConnection,
    table: &Table,
    columns: &[String],
    place: Place<'_>,
) -> Result<(i64, String), Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) AS n,
                coalesce(sum(hashtextextended(r::text, 0)), 0)::text AS sum
         FROM ({}) r",
        select(table, columns, place)
    )))
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.try_get("n")?, row.try_get("sum")?))
}

/// Reads the tenant's data from `place`, inside the caller's transaction (make it
/// `REPEATABLE READ` so that every table comes from one snapshot).
pub(crate) async fn read(
    conn: &mut PgConnection,
    place: Place<'_>,
    tenant: ExportedTenant,
    migrations: Vec<(i64, Vec<u8>)>,
) -> Result<Snapshot, Error> {
    prepare(conn, place, &tenant.id).await?;
    let mut manifest = Manifest {
        format: FORMAT.to_owned(),
        version: VERSION,
        tenant,
        migrations: migrations
            .into_iter()
            .map(|(version, checksum)| ExportedMigration {
                version,
                checksum: hex(&checksum),
            })
            .collect(),
        tables: Vec::new(),
        sequences: Vec::new(),
    };
    let mut data = Vec::new();
    for table in tables(conn, place).await? {
        let text = copy_out(conn, &select(&table, &table.columns, place)).await?;
        let (rows, sum) = checksum(conn, &table, &table.columns, place).await?;
        manifest.sequences.extend(positions(conn, &table).await?);
        manifest.tables.push(TableData {
            name: table.name,
            columns: table.columns,
            rows,
            checksum: sum,
        });
        data.push(text);
    }
    Ok(Snapshot {
        manifest,
        data,
        trusted: true,
    })
}

/// The rows of `query` as `COPY` text.
pub(super) async fn copy_out(conn: &mut PgConnection, query: &str) -> Result<Vec<u8>, Error> {
    let mut text = Vec::new();
    let mut out = conn
        .copy_out_raw(&format!("COPY ({query}) TO STDOUT"))
        .await?;
    while let Some(chunk) = futures::StreamExt::next(&mut out).await {
        text.extend_from_slice(&chunk?);
    }
    Ok(text)
}

/// The positions of the sequences that feed `table`'s columns.
pub(super) async fn positions(
    conn: &mut PgConnection,
    table: &Table,
) -> Result<Vec<SequencePosition>, Error> {
    let mut found = Vec::new();
    for (column, sequence) in &table.sequences {
        if !table.columns.contains(column) {
            continue;
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT last_value, is_called FROM {sequence}"
        )))
        .fetch_one(&mut *conn)
        .await?;
        found.push(SequencePosition {
            table: table.name.clone(),
            column: column.clone(),
            last_value: row.try_get("last_value")?,
            is_called: row.try_get("is_called")?,
        });
    }
    Ok(found)
}

/// Loads `snapshot` into `place` for tenant `tenant`, inside the caller's
/// transaction, then verifies every table's row count and checksum there. Every
/// table of the snapshot must exist in `place` with every one of its columns; tables
/// of `place` the snapshot does not have stay empty. Sequences are moved to at least
/// the exported position (a sequence shared by row tenants only ever forward).
///
/// A snapshot read from this registry's own places is trusted (a move); an import's
/// file is not: it never moves a sequence shared by row tenants, and a checksum that does
/// not match is the file's fault (422).
pub(crate) async fn write(
    conn: &mut PgConnection,
    place: Place<'_>,
    tenant: &TenantId,
    snapshot: &Snapshot,
) -> Result<(), Error> {
    let trusted = snapshot.trusted;
    prepare(conn, place, tenant).await?;
    let targets = tables(conn, place).await?;
    let by_name: BTreeMap<&str, &Table> = targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut problems = Vec::new();
    for table in &snapshot.manifest.tables {
        match by_name.get(table.name.as_str()) {
            None => problems.push(format!("table `{}` does not exist here", table.name)),
            Some(target) => {
                let distinct: BTreeSet<&String> = table.columns.iter().collect();
                if distinct.len() != table.columns.len() {
                    problems.push(format!("table `{}` lists a column twice", table.name));
                }
                for column in &table.columns {
                    if column == TENANT_COLUMN {
                        problems.push(format!(
                            "table `{}` carries a `{TENANT_COLUMN}` column, which an export \
                             never does",
                            table.name
                        ));
                    } else if !target.columns.contains(column) {
                        problems.push(format!(
                            "table `{}` has no (writable) column `{column}` here",
                            table.name
                        ));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Unprocessable(format!(
            "the data does not fit the tables of its new place: {}",
            problems.join("; ")
        )));
    }
    let index: BTreeMap<&str, usize> = snapshot
        .manifest
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    // In the target's load order: referenced tables first.
    for target in &targets {
        let Some(&i) = index.get(target.name.as_str()) else {
            continue;
        };
        let table = &snapshot.manifest.tables[i];
        load(conn, target, &table.columns, &snapshot.data[i], tenant)
            .await
            .map_err(|e| in_table(e, &table.name))?;
    }
    advance_all(conn, &targets, &snapshot.manifest.sequences, place, trusted).await?;
    for target in &targets {
        let Some(&i) = index.get(target.name.as_str()) else {
            continue;
        };
        let table = &snapshot.manifest.tables[i];
        let (rows, sum) = checksum(conn, target, &table.columns, place).await?;
        if rows != table.rows || sum != table.checksum {
            let why = format!(
                "verification failed for table `{}`: {} rows with checksum {} expected, {} \
                 rows with checksum {} found after loading; nothing was kept",
                table.name, table.rows, table.checksum, rows, sum
            );
            return Err(if trusted {
                Error::Internal(why)
            } else {
                Error::Unprocessable(format!("the export does not match its manifest: {why}"))
            });
        }
    }
    Ok(())
}

/// Moves every sequence of `targets` to at least its position in `positions`.
pub(super) async fn advance_all(
    conn: &mut PgConnection,
    targets: &[Table],
    positions: &[SequencePosition],
    place: Place<'_>,
    trusted: bool,
) -> Result<(), Error> {
    for target in targets {
        for (column, sequence) in &target.sequences {
            let exported = positions
                .iter()
                .find(|p| p.table == target.name && &p.column == column);
            advance(conn, target, column, sequence, exported, place, trusted)
                .await
                .map_err(|e| in_table(e, &target.name))?;
        }
    }
    Ok(())
}

/// A data or constraint error while loading `table`: a 422 naming the table.
pub(super) fn in_table(e: Error, table: &str) -> Error {
    match e {
        Error::Database(sqlx::Error::Database(db))
            if db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
        {
            Error::Unprocessable(format!(
                "table `{table}`: the database refused the data: {}",
                db.message()
            ))
        }
        other => other,
    }
}

/// `COPY`s `data` into `target`; with a `tenant_id` column, through a staging table
/// so that every row gets `tenant` there.
pub(super) async fn load(
    conn: &mut PgConnection,
    target: &Table,
    columns: &[String],
    data: &[u8],
    tenant: &TenantId,
) -> Result<(), Error> {
    let list = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    if !target.tenant_column {
        copy_in(
            conn,
            &format!("COPY {} ({list}) FROM STDIN", target.qualified),
            data,
        )
        .await?;
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE tenantry_stage ON COMMIT DROP AS SELECT {list} FROM {} WITH NO DATA",
        target.qualified
    )))
    .execute(&mut *conn)
    .await?;
    copy_in(
        conn,
        &format!("COPY pg_temp.tenantry_stage ({list}) FROM STDIN"),
        data,
    )
    .await?;
    if copied_by_citus_under_rls(conn).await? {
        insert_in_batches(conn, target, columns, tenant).await?;
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} ({}, {list}) OVERRIDING SYSTEM VALUE
             SELECT $1, {list} FROM pg_temp.tenantry_stage",
            target.qualified,
            quote_ident(TENANT_COLUMN)
        )))
        .bind(tenant.as_str())
        .execute(&mut *conn)
        .await?;
    }
    sqlx::raw_sql("DROP TABLE pg_temp.tenantry_stage")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether an `INSERT .. SELECT` into a shared table would fail here: on a Citus
/// coordinator it reaches the shards as `COPY`, which PostgreSQL refuses under
/// row-level security, and row-level security applies to a login that is neither a
/// superuser nor `BYPASSRLS` (the tables' owner too: they force it).
pub(super) async fn copied_by_citus_under_rls(conn: &mut PgConnection) -> Result<bool, Error> {
    if !crate::citus::installed(conn).await? {
        return Ok(false);
    }
    let exempt: bool = sqlx::query_scalar(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(!exempt)
}

/// Moves the staged rows into `target` with multi-row `INSERT .. VALUES` statements
/// (each value bound as text and cast to its column's type), which Citus sends to the
/// tenant's shard as `INSERT`s.
pub(super) async fn insert_in_batches(
    conn: &mut PgConnection,
    target: &Table,
    columns: &[String],
    tenant: &TenantId,
) -> Result<(), Error> {
    let types: BTreeMap<String, String> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
    )
    .bind(&target.qualified)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let mut casts = Vec::with_capacity(columns.len());
    for column in columns {
        let ty = types.get(column).ok_or_else(|| {
            Error::Internal(format!("`{}` has no column `{column}`", target.name))
        })?;
        casts.push(ty.clone());
    }
    let as_text = columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<Vec<Option<String>>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT ARRAY[{as_text}] FROM pg_temp.tenantry_stage"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let list = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    // Well under PostgreSQL's 65,535 parameters per statement.
    let per_batch = (30_000 / columns.len().max(1)).clamp(1, 1000);
    for batch in rows.chunks(per_batch) {
        let mut n = 1;
        let mut tuples = Vec::with_capacity(batch.len());
        for _ in batch {
            let values: Vec<String> = casts
                .iter()
                .map(|ty| {
                    n += 1;
                    format!("${n}::text::{ty}")
                })
                .collect();
            tuples.push(format!("($1, {})", values.join(", ")));
        }
        let statement = format!(
            "INSERT INTO {} ({}, {list}) OVERRIDING SYSTEM VALUE VALUES {}",
            target.qualified,
            quote_ident(TENANT_COLUMN),
            tuples.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement)).bind(tenant.as_str());
        for row in batch {
            for value in row {
                query = query.bind(value.as_deref());
            }
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    data: &[u8],
) -> Result<(), Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(data).await {
        let _ = copy.abort("tenantry: sending the data failed").await;
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}

/// Moves `sequence` to the exported position, and past the highest value loaded; a
/// sequence shared with other tenants only ever forward.
pub(super) async fn advance(
    conn: &mut PgConnection,
    target: &Table,
    column: &str,
    sequence: &str,
    exported: Option<&SequencePosition>,
    place: Place<'_>,
    trusted: bool,
) -> Result<(), Error> {
    let max: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT max(v)::bigint FROM ({}) r(v)",
        select(target, &[column.to_owned()], place)
    )))
    .fetch_one(&mut *conn)
    .await?;
    let current = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT last_value, is_called FROM {sequence}"
    )))
    .fetch_one(&mut *conn)
    .await?;
    let (last, called): (i64, bool) = (current.try_get(0)?, current.try_get(1)?);
    // The highest value handed out so far at the target, and the one wanted.
    let handed = if called { last } else { last.saturating_sub(1) };
    let mut wanted = max.unwrap_or(i64::MIN);
    let shared = matches!(place, Place::Rows { .. });
    if shared {
        // Every row tenant draws ids from it: it moves past the ids loaded (else this
        // tenant's next rows would collide with them), never to a position the data
        // merely states, and by at most 1% of what is left of it per import or move,
        // so that no file, and no tenant moved in, can use it up.
        if wanted <= handed {
            return Ok(());
        }
        let most: i64 =
            sqlx::query_scalar("SELECT seqmax FROM pg_sequence WHERE seqrelid = $1::regclass")
                .bind(sequence)
                .fetch_one(&mut *conn)
                .await?;
        let allowed = handed.saturating_add(most.saturating_sub(handed) / 100);
        if wanted > allowed {
            return Err(Error::Unprocessable(format!(
                "the data's `{column}` values go up to {wanted}, far past the sequence \
                 {sequence} that every row tenant shares (at {handed}); {what} moves it \
                 by at most 1% of what is left of it: advance it first if that is intended \
                 (SELECT setval('{sequence}', {wanted}))",
                what = if trusted { "a move" } else { "an import" },
            )));
        }
        sqlx::query("SELECT setval($1::regclass, $2, true)")
            .bind(sequence)
            .bind(wanted)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    if let Some(p) = exported {
        wanted = wanted.max(if p.is_called {
            p.last_value
        } else {
            p.last_value.saturating_sub(1)
        });
    }
    if wanted > handed {
        match exported {
            Some(p) if !p.is_called && p.last_value.saturating_sub(1) == wanted => {
                sqlx::query("SELECT setval($1::regclass, $2, false)")
                    .bind(sequence)
                    .bind(p.last_value)
                    .execute(&mut *conn)
                    .await?;
            }
            _ => {
                sqlx::query("SELECT setval($1::regclass, $2, true)")
                    .bind(sequence)
                    .bind(wanted)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The quoted tables of `place` (for the fence).
pub(crate) async fn table_names(
    conn: &mut PgConnection,
    place: Place<'_>,
) -> Result<Vec<String>, Error> {
    Ok(tables(conn, place)
        .await?
        .into_iter()
        .map(|t| t.qualified)
        .collect())
}
