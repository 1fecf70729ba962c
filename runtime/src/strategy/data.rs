//! A tenant's data whatever its strategy: its tables, their rows as `COPY` text, a
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

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};

use super::row::{RLS_POLICIES, TENANT_COLUMN, TENANT_SETTING, shared_tables_sql};
use crate::error::Error;
use crate::naming::{quote_ident, quote_literal};
use crate::tenant::{Strategy, TenantId, TenantLimits};

/// The `format` of a tenantry export.
pub(crate) const FORMAT: &str = "tenantry-export";
/// Its version.
pub(crate) const VERSION: u32 = 1;
/// The line that carries the manifest.
const MANIFEST_PREFIX: &str = "-- tenantry-manifest: ";

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

/// What an export says about the tenant it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedTenant {
    /// Its id.
    pub id: TenantId,
    /// Its display name.
    pub name: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// Its limits.
    #[serde(default)]
    pub limits: TenantLimits,
}

/// A tenant migration the exported tenant had applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedMigration {
    /// The version.
    pub version: i64,
    /// Its checksum, hex.
    pub checksum: String,
}

/// One table of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    /// The table's name (no schema).
    pub name: String,
    /// Its columns in the data, `tenant_id` and generated columns left out.
    pub columns: Vec<String>,
    /// How many rows.
    pub rows: i64,
    /// An order-independent checksum of the rows (the sum of a hash of each row's
    /// text), compared after loading.
    pub checksum: String,
}

/// The position of a sequence that feeds a column (`serial`, identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencePosition {
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
    /// `last_value` of the sequence.
    pub last_value: i64,
    /// `is_called` of the sequence.
    pub is_called: bool,
}

/// What an export holds, apart from the rows themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `tenantry-export`.
    pub format: String,
    /// The format's version.
    pub version: u32,
    /// The tenant it came from.
    pub tenant: ExportedTenant,
    /// The tenant migrations it had (none for a row tenant).
    pub migrations: Vec<ExportedMigration>,
    /// Its tables, in an order that loads referenced tables first.
    pub tables: Vec<TableData>,
    /// Its sequences' positions.
    pub sequences: Vec<SequencePosition>,
}

/// A tenant's data: the manifest and each table's rows as `COPY` text.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub manifest: Manifest,
    /// `COPY` text per table, in the manifest's order.
    pub data: Vec<Vec<u8>>,
}

/// A table of a place, from the catalog.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    qualified: String,
    /// Columns a row can be written to, in order, `tenant_id` left out.
    columns: Vec<String>,
    tenant_column: bool,
    refers_to: Vec<String>,
    /// `(column, quoted sequence)`.
    sequences: Vec<(String, String)>,
}

/// Settings that make `COPY` text the same on every server, and (for row tenants)
/// the tenant setting, for the caller's transaction.
async fn prepare(
    conn: &mut PgConnection,
    place: Place<'_>,
    tenant: &TenantId,
) -> Result<(), Error> {
    sqlx::raw_sql(
        "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, MDY'; \
         SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; \
         SET LOCAL bytea_output = 'hex'; SET LOCAL client_min_messages = warning",
    )
    .execute(&mut *conn)
    .await?;
    if let Place::Rows { .. } = place {
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(TENANT_SETTING)
            .bind(tenant.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The tables of `place`, referenced tables first (then by name).
async fn tables(conn: &mut PgConnection, place: Place<'_>) -> Result<Vec<Table>, Error> {
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
                   AND c.relname <> '_tenantry_migrations'",
            )
            .fetch_all(&mut *conn)
            .await?
        }
        Place::Rows { control } => {
            let shared = shared_tables_sql();
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
                  ORDER BY 1) AS sequences
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
fn in_load_order(mut tables: Vec<Table>) -> Vec<Table> {
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
fn select(table: &Table, columns: &[String], place: Place<'_>) -> String {
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
async fn checksum(
    conn: &mut PgConnection,
    table: &Table,
    columns: &[String],
    place: Place<'_>,
) -> Result<(i64, String), Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) AS n,
                coalesce(sum(('x' || left(md5(r::text), 16))::bit(64)::bigint), 0)::text AS sum
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
        let mut text = Vec::new();
        let mut out = conn
            .copy_out_raw(&format!(
                "COPY ({}) TO STDOUT",
                select(&table, &table.columns, place)
            ))
            .await?;
        while let Some(chunk) = futures::StreamExt::next(&mut out).await {
            text.extend_from_slice(&chunk?);
        }
        drop(out);
        let (rows, sum) = checksum(conn, &table, &table.columns, place).await?;
        for (column, sequence) in &table.sequences {
            if !table.columns.contains(column) {
                continue;
            }
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT last_value, is_called FROM {sequence}"
            )))
            .fetch_one(&mut *conn)
            .await?;
            manifest.sequences.push(SequencePosition {
                table: table.name.clone(),
                column: column.clone(),
                last_value: row.try_get("last_value")?,
                is_called: row.try_get("is_called")?,
            });
        }
        manifest.tables.push(TableData {
            name: table.name,
            columns: table.columns,
            rows,
            checksum: sum,
        });
        data.push(text);
    }
    Ok(Snapshot { manifest, data })
}

/// Loads `snapshot` into `place` for tenant `tenant`, inside the caller's
/// transaction, then verifies every table's row count and checksum there. Every
/// table of the snapshot must exist in `place` with every one of its columns; tables
/// of `place` the snapshot does not have stay empty. Sequences are moved to at least
/// the exported position (a sequence shared by row tenants only ever forward).
pub(crate) async fn write(
    conn: &mut PgConnection,
    place: Place<'_>,
    tenant: &TenantId,
    snapshot: &Snapshot,
) -> Result<(), Error> {
    prepare(conn, place, tenant).await?;
    let targets = tables(conn, place).await?;
    let by_name: BTreeMap<&str, &Table> = targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut problems = Vec::new();
    for table in &snapshot.manifest.tables {
        match by_name.get(table.name.as_str()) {
            None => problems.push(format!("table `{}` does not exist here", table.name)),
            Some(target) => {
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
    for target in &targets {
        for (column, sequence) in &target.sequences {
            let exported = snapshot
                .manifest
                .sequences
                .iter()
                .find(|p| p.table == target.name && &p.column == column);
            advance(conn, target, column, sequence, exported, place).await?;
        }
    }
    for target in &targets {
        let Some(&i) = index.get(target.name.as_str()) else {
            continue;
        };
        let table = &snapshot.manifest.tables[i];
        let (rows, sum) = checksum(conn, target, &table.columns, place).await?;
        if rows != table.rows || sum != table.checksum {
            return Err(Error::Internal(format!(
                "verification failed for table `{}`: {} rows with checksum {} expected, {} \
                 rows with checksum {} found after loading; nothing was kept",
                table.name, table.rows, table.checksum, rows, sum
            )));
        }
    }
    Ok(())
}

/// A data or constraint error while loading `table`: a 422 naming the table.
fn in_table(e: Error, table: &str) -> Error {
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
async fn load(
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
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} ({}, {list}) OVERRIDING SYSTEM VALUE
         SELECT $1, {list} FROM pg_temp.tenantry_stage",
        target.qualified,
        quote_ident(TENANT_COLUMN)
    )))
    .bind(tenant.as_str())
    .execute(&mut *conn)
    .await?;
    sqlx::raw_sql("DROP TABLE pg_temp.tenantry_stage")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn copy_in(conn: &mut PgConnection, statement: &str, data: &[u8]) -> Result<(), Error> {
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
async fn advance(
    conn: &mut PgConnection,
    target: &Table,
    column: &str,
    sequence: &str,
    exported: Option<&SequencePosition>,
    place: Place<'_>,
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
    let handed = if called { last } else { last - 1 };
    let mut wanted = max.unwrap_or(i64::MIN);
    if let Some(p) = exported {
        wanted = wanted.max(if p.is_called {
            p.last_value
        } else {
            p.last_value - 1
        });
    }
    if wanted > handed {
        match exported {
            Some(p) if !p.is_called && p.last_value - 1 == wanted => {
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

impl Snapshot {
    /// The export file: comment lines for people, the manifest, then one `COPY` block
    /// per table.
    pub fn to_bytes(&self, header: &str) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        for line in header.lines() {
            out.extend_from_slice(format!("-- {line}\n").as_bytes());
        }
        let manifest = serde_json::to_string(&self.manifest)
            .map_err(|e| Error::Internal(format!("cannot write the manifest: {e}")))?;
        out.extend_from_slice(format!("{MANIFEST_PREFIX}{manifest}\n\n").as_bytes());
        for (table, data) in self.manifest.tables.iter().zip(&self.data) {
            let columns = table
                .columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            out.extend_from_slice(
                format!(
                    "COPY {} ({columns}) FROM stdin;\n",
                    quote_ident(&table.name)
                )
                .as_bytes(),
            );
            out.extend_from_slice(data);
            out.extend_from_slice(b"\\.\n\n");
        }
        Ok(out)
    }

    /// Reads an export file; anything that is not one is a 422 saying what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let bad = |why: &str| Error::Unprocessable(format!("not a tenantry export: {why}"));
        let mut rest = bytes;
        let manifest: Manifest = loop {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| bad("no manifest line (`-- tenantry-manifest: {..}`)"))?;
            let line = std::str::from_utf8(&rest[..end]).map_err(|_| bad("not UTF-8 text"))?;
            rest = &rest[end + 1..];
            if let Some(json) = line.strip_prefix(MANIFEST_PREFIX) {
                break serde_json::from_str(json)
                    .map_err(|e| bad(&format!("unreadable manifest: {e}")))?;
            }
            if !line.starts_with("--") {
                return Err(bad("no manifest line (`-- tenantry-manifest: {..}`)"));
            }
        };
        if manifest.format != FORMAT {
            return Err(bad(&format!("format `{}`", manifest.format.escape_debug())));
        }
        if manifest.version != VERSION {
            return Err(Error::Unprocessable(format!(
                "this export has format version {}; this tenantry reads version {VERSION}",
                manifest.version
            )));
        }
        let mut data = Vec::with_capacity(manifest.tables.len());
        for table in &manifest.tables {
            while rest.first() == Some(&b'\n') {
                rest = &rest[1..];
            }
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| bad(&format!("no data for table `{}`", table.name)))?;
            if !rest.starts_with(b"COPY ") || !rest[..end].ends_with(b" FROM stdin;") {
                return Err(bad(&format!(
                    "expected the COPY line of table `{}`",
                    table.name.escape_debug()
                )));
            }
            rest = &rest[end + 1..];
            // COPY text escapes every backslash of a value: `\.` alone on a line ends
            // the block.
            let stop = if rest.starts_with(b"\\.\n") {
                0
            } else {
                find(rest, b"\n\\.\n")
                    .map(|i| i + 1)
                    .ok_or_else(|| bad(&format!("the data of `{}` has no end", table.name)))?
            };
            data.push(rest[..stop].to_vec());
            rest = &rest[stop + 3..];
        }
        Ok(Self { manifest, data })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The write fence of a move: triggers that refuse every write to the tenant's tables
/// at `place` with SQLSTATE 25006 (a 503 with `Retry-After` for the client) while
/// reads go on. Creating a trigger waits for the writes in flight, so once this
/// commits, every acknowledged write is visible and no other can happen. `function`
/// is the quoted fence function. Row tenants' triggers fire for their rows only.
pub(crate) fn fence_sql(
    tables: &[String],
    function: &str,
    tenant: &TenantId,
    rows: bool,
    up: bool,
) -> String {
    let base = format!("tenantry_fence_{}", tenant.as_str().replace('-', "_"));
    let [row, old, trunc] = [
        quote_ident(&base),
        quote_ident(&format!("{base}_old")),
        quote_ident(&format!("{base}_truncate")),
    ];
    let id = quote_literal(tenant.as_str());
    let col = quote_ident(TENANT_COLUMN);
    let mut sql = String::from("SET LOCAL lock_timeout = '10s';");
    for t in tables {
        sql.push_str(&if !up {
            format!(
                "DROP TRIGGER IF EXISTS {row} ON {t}; DROP TRIGGER IF EXISTS {old} ON {t};
                 DROP TRIGGER IF EXISTS {trunc} ON {t};"
            )
        } else if rows {
            format!(
                "CREATE TRIGGER {row} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW
                   WHEN (NEW.{col} = {id}) EXECUTE FUNCTION {function}({id});
                 CREATE TRIGGER {old} BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW
                   WHEN (OLD.{col} = {id}) EXECUTE FUNCTION {function}({id});"
            )
        } else {
            format!(
                "CREATE TRIGGER {row} BEFORE INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW
                   EXECUTE FUNCTION {function}({id});
                 CREATE TRIGGER {trunc} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT
                   EXECUTE FUNCTION {function}({id});"
            )
        });
    }
    sql
}

/// The body of a fence function.
pub(crate) fn fence_function_sql(function: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $fence$
         BEGIN
             RAISE EXCEPTION 'tenant % is being moved: writes are paused, retry shortly',
                 TG_ARGV[0] USING ERRCODE = 'read_only_sql_transaction';
         END
         $fence$"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            manifest: Manifest {
                format: FORMAT.to_owned(),
                version: VERSION,
                tenant: ExportedTenant {
                    id: "acme".parse().unwrap(),
                    name: "Acme".to_owned(),
                    strategy: Strategy::Schema,
                    limits: TenantLimits::default(),
                },
                migrations: vec![],
                tables: vec![
                    TableData {
                        name: "empty".to_owned(),
                        columns: vec!["id".to_owned()],
                        rows: 0,
                        checksum: "0".to_owned(),
                    },
                    TableData {
                        name: "notes".to_owned(),
                        columns: vec!["id".to_owned(), "body".to_owned()],
                        rows: 2,
                        checksum: "1".to_owned(),
                    },
                ],
                sequences: vec![],
            },
            data: vec![Vec::new(), b"1\ta \\\\.\n2\t\\\\.\n".to_vec()],
        }
    }

    #[test]
    fn an_export_reads_back_as_written() {
        let s = snapshot();
        let bytes = s.to_bytes("tenantry export of `acme`").unwrap();
        let back = Snapshot::parse(&bytes).unwrap();
        assert_eq!(back.manifest, s.manifest);
        assert_eq!(back.data, s.data);
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for (input, needle) in [
            (&b"CREATE TABLE x ();\n"[..], "no manifest"),
            (
                b"-- tenantry-manifest: {\"format\": 1}\n",
                "unreadable manifest",
            ),
            (b"", "no manifest"),
        ] {
            let e = Snapshot::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut bytes = snapshot().to_bytes("x").unwrap();
        bytes.truncate(bytes.len() - 6);
        let e = Snapshot::parse(&bytes).unwrap_err().to_string();
        assert!(e.contains("has no end"), "{e}");
    }
}
