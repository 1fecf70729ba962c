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

use super::shared::{RLS_POLICIES, TENANT_COLUMN, shared_tables_sql};
use crate::error::Error;
use crate::naming::{TENANT_SETTING, quote_ident, quote_literal};
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
    /// An order-independent checksum of the rows (the sum of a 64-bit hash of each
    /// row's text, `hashtextextended`), compared after loading.
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
    /// Read from this registry's own places (not from a file someone handed in).
    pub trusted: bool,
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
    /// The primary key's columns, `tenant_id` left out (empty: no primary key).
    key: Vec<String>,
}

/// Settings that make `COPY` text the same on every server, and (for row tenants)
/// the tenant setting, for the caller's transaction.
async fn prepare(
    conn: &mut PgConnection,
    place: Place<'_>,
    tenant: &TenantId,
) -> Result<(), Error> {
    // On Citus these reach the workers too, where the rows' text and checksums are
    // computed (and the row tenant's shards filter on the tenant setting).
    super::shared::propagate_locally(conn).await?;
    sqlx::raw_sql(
        "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, MDY'; \
         SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; \
         SET LOCAL bytea_output = 'hex'; SET LOCAL client_min_messages = warning",
    )
    .execute(&mut *conn)
    .await?;
    if let Place::Rows { .. } = place {
        super::shared::set_rows_tenant(conn, tenant).await?;
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
                   AND c.relname <> '_tenantry_migrations'
                   AND c.relname <> '_tenantry_move_changes'",
            )
            .fetch_all(&mut *conn)
            .await?
        }
        Place::Rows { control } => {
            let row_schema = super::shared::recorded_row_schema(&mut *conn, control).await?;
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
async fn copy_out(conn: &mut PgConnection, query: &str) -> Result<Vec<u8>, Error> {
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
async fn positions(conn: &mut PgConnection, table: &Table) -> Result<Vec<SequencePosition>, Error> {
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
async fn advance_all(
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

/// The capture table of a move out of a tenant database (left out of its tables).
const CAPTURE_TABLE_IN_DATABASE: &str = "public._tenantry_move_changes";

/// Where a move records the keys written while it copies: a table and a trigger
/// function of the move's own, in `schema` of the old place's database.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    /// The quoted changes table (a `FROM` item with columns `tbl` and `key`).
    pub table: String,
    /// The quoted trigger function.
    pub function: String,
    /// The trigger name (unquoted).
    trigger: String,
    /// The tenant, for row tenants (their triggers see every tenant's writes).
    rows_of: Option<TenantId>,
}

/// The names a move of `tenant` gives its objects: `tenantry_<kind>_<id>`, `-` as `_`.
fn move_name(kind: &str, tenant: &TenantId) -> String {
    format!("tenantry_{kind}_{}", tenant.as_str().replace('-', "_"))
}

/// Every trigger a move of `tenant` may leave on a table: its fence's (row, old row,
/// truncate) and its capture's (row, truncate).
pub(crate) fn move_triggers(tenant: &TenantId) -> [String; 5] {
    let (fence, capture) = (move_name("fence", tenant), move_name("capture", tenant));
    [
        format!("{fence}_old"),
        format!("{fence}_truncate"),
        format!("{capture}_truncate"),
        fence,
        capture,
    ]
}

impl Capture {
    /// The capture of `tenant`'s move, in `schema` (quoted).
    pub fn new(schema: &str, tenant: &TenantId, rows: bool) -> Self {
        let trigger = move_name("capture", tenant);
        if schema == "public" {
            // A tenant database's: names of tenantry's own there, like its migrations'.
            return Self {
                table: CAPTURE_TABLE_IN_DATABASE.to_owned(),
                function: "public._tenantry_move_capture".to_owned(),
                trigger,
                rows_of: None,
            };
        }
        Self {
            table: format!("{schema}.{}", quote_ident(&move_name("moving", tenant))),
            function: format!("{schema}.{}", quote_ident(&trigger)),
            trigger,
            rows_of: rows.then(|| tenant.clone()),
        }
    }

    /// The capture of row tenant `tenant`'s move through the shared tables' guard
    /// triggers (see `row_guard`): its records in the registry in `quoted_control`.
    pub fn guarded(quoted_control: &str, tenant: &TenantId) -> Self {
        Self {
            table: super::row_guard::changes_of(quoted_control, tenant),
            function: String::new(),
            trigger: String::new(),
            rows_of: Some(tenant.clone()),
        }
    }

    /// The DDL that starts capturing on `tables` (`up`), or stops and removes it.
    /// Creating the triggers waits for the writes in flight, like the fence: every
    /// write that commits afterwards is recorded.
    pub fn sql(&self, tables: &[String], names: &[(String, Vec<String>)], up: bool) -> String {
        let trigger = quote_ident(&self.trigger);
        let truncate = quote_ident(&format!("{}_truncate", self.trigger));
        let (table, function) = (&self.table, &self.function);
        let mut sql = String::from("SET LOCAL lock_timeout = '10s';");
        if !up {
            for t in tables {
                sql.push_str(&format!(
                    "DROP TRIGGER IF EXISTS {trigger} ON {t}; DROP TRIGGER IF EXISTS {truncate} ON {t};"
                ));
            }
            sql.push_str(&format!(
                "DROP FUNCTION IF EXISTS {function}(); DROP TABLE IF EXISTS {table};"
            ));
            return sql;
        }
        // Each row written records its key (as JSON: the primary key's columns but
        // `tenant_id`), old and new; a TRUNCATE, or a table without a key, records
        // NULL: copy the whole table again.
        sql.push_str(&format!(
            "CREATE UNLOGGED TABLE {table} (tbl text NOT NULL, key jsonb);
             CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
               SET search_path = pg_catalog, pg_temp AS $capture$
             DECLARE r jsonb;
             BEGIN
               IF TG_LEVEL = 'STATEMENT' THEN
                 INSERT INTO {table} (tbl, key) VALUES (TG_ARGV[1], NULL);
                 RETURN NULL;
               END IF;
               FOREACH r IN ARRAY ARRAY[
                   CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
                   CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END] LOOP
                 IF r IS NOT NULL AND (TG_ARGV[0] = '' OR r ->> {col} = TG_ARGV[0]) THEN
                   INSERT INTO {table} (tbl, key)
                     SELECT TG_ARGV[1], jsonb_object_agg(k, r -> k) FROM unnest(TG_ARGV[2:]) k;
                 END IF;
               END LOOP;
               RETURN NULL;
             END
             $capture$;",
            col = quote_literal(TENANT_COLUMN)
        ));
        let tenant = quote_literal(self.rows_of.as_ref().map_or("", |t| t.as_str()));
        for (t, (name, key)) in tables.iter().zip(names) {
            let mut args = vec![tenant.clone(), quote_literal(name)];
            args.extend(key.iter().map(|k| quote_literal(k)));
            let args = args.join(", ");
            sql.push_str(&format!(
                "CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW
                   EXECUTE FUNCTION {function}({args});"
            ));
            if self.rows_of.is_none() {
                sql.push_str(&format!(
                    "CREATE TRIGGER {truncate} AFTER TRUNCATE ON {t} FOR EACH STATEMENT
                       EXECUTE FUNCTION {function}('', {});",
                    quote_literal(name)
                ));
            }
        }
        sql
    }
}

/// The quoted tables of `place` with their names and keys (for a capture).
pub(crate) async fn capture_targets(
    conn: &mut PgConnection,
    place: Place<'_>,
) -> Result<(Vec<String>, Vec<(String, Vec<String>)>), Error> {
    let found = tables(conn, place).await?;
    Ok((
        found.iter().map(|t| t.qualified.clone()).collect(),
        found.into_iter().map(|t| (t.name, t.key)).collect(),
    ))
}

/// The final catch-up of a move, with the writes fenced: brings `target` (the new
/// place, on `to`, inside its transaction, holding the copy made while the capture
/// ran) up to `source` (the old place, on `from`, one fresh snapshot). Rows whose key
/// was captured are deleted at the target and copied again; a table truncated, or
/// whose keys differ between the places, is copied whole. Then sequences, and every
/// table's row count and checksum compared between the two places. Returns the rows
/// copied again.
pub(crate) async fn catch_up(
    from: &mut PgConnection,
    source: Place<'_>,
    capture: &Capture,
    to: &mut PgConnection,
    target: Place<'_>,
    tenant: &TenantId,
) -> Result<u64, Error> {
    prepare(from, source, tenant).await?;
    prepare(to, target, tenant).await?;
    let sources = tables(from, source).await?;
    let targets = tables(to, target).await?;
    let changed: Vec<(String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tbl, bool_or(key IS NULL) FROM {} c GROUP BY tbl",
        capture.table
    )))
    .fetch_all(&mut *from)
    .await?;
    let mut recopied = 0;
    let mut positions_now = Vec::new();
    for s in &sources {
        positions_now.extend(positions(from, s).await?);
        let Some((_, whole)) = changed.iter().find(|(t, _)| *t == s.name) else {
            continue;
        };
        let t = targets
            .iter()
            .find(|t| t.name == s.name)
            .ok_or_else(|| Error::Internal(format!("table `{}` vanished", s.name)))?;
        let mut same_key = s.key.clone();
        same_key.sort();
        let mut their_key = t.key.clone();
        their_key.sort();
        let whole = *whole || s.key.is_empty() || same_key != their_key;
        let tenant_filter = if t.tenant_column {
            format!(" AND t.{} = $1", quote_ident(TENANT_COLUMN))
        } else {
            String::new()
        };
        let data = if whole {
            let delete = format!("DELETE FROM {} t WHERE true{tenant_filter}", t.qualified);
            let mut delete = sqlx::query(sqlx::AssertSqlSafe(delete));
            if t.tenant_column {
                delete = delete.bind(tenant.as_str());
            }
            delete.execute(&mut *to).await?;
            copy_out(from, &select(s, &s.columns, source)).await?
        } else {
            let on = |a: &str, b: &str| {
                s.key
                    .iter()
                    .map(|k| format!("{a}.{k} = {b}.{k}", k = quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            let keys: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT coalesce(jsonb_agg(DISTINCT key), '[]')::text FROM {} c WHERE tbl = $1",
                capture.table
            )))
            .bind(&s.name)
            .fetch_one(&mut *from)
            .await?;
            let delete = format!(
                "DELETE FROM {tq} t USING jsonb_populate_recordset(NULL::{tq}, $1::jsonb) k
                 WHERE {on}{filter}",
                tq = t.qualified,
                on = on("t", "k"),
                filter = tenant_filter.replace("$1", "$2"),
            );
            let mut delete = sqlx::query(sqlx::AssertSqlSafe(delete)).bind(&keys);
            if t.tenant_column {
                delete = delete.bind(tenant.as_str());
            }
            delete.execute(&mut *to).await?;
            // The changed rows as they are now (deleted ones are simply not there).
            let list = s
                .key
                .iter()
                .map(|k| format!("k.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ");
            let select_changed = format!(
                "SELECT {cols} FROM ({base}) s WHERE ({key}) IN (
                   SELECT {list} FROM {changes} c,
                     jsonb_populate_record(NULL::{sq}, c.key) k WHERE c.tbl = {name})",
                cols = s
                    .columns
                    .iter()
                    .map(|c| format!("s.{}", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", "),
                base = select(s, &s.columns, source),
                key = s
                    .key
                    .iter()
                    .map(|k| format!("s.{}", quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(", "),
                changes = capture.table,
                sq = s.qualified,
                name = quote_literal(&s.name),
            );
            copy_out(from, &select_changed).await?
        };
        recopied += data.iter().filter(|&&b| b == b'\n').count() as u64;
        load(to, t, &s.columns, &data, tenant)
            .await
            .map_err(|e| in_table(e, &s.name))?;
    }
    advance_all(to, &targets, &positions_now, target, true).await?;
    for s in &sources {
        let t = targets
            .iter()
            .find(|t| t.name == s.name)
            .ok_or_else(|| Error::Internal(format!("table `{}` vanished", s.name)))?;
        // Both places at once: the pause is the longer of the two.
        let (here, there) = tokio::try_join!(
            checksum(from, s, &s.columns, source),
            checksum(to, t, &s.columns, target)
        )?;
        if here != there {
            return Err(Error::Internal(format!(
                "verification failed for table `{}`: {} rows with checksum {} at the old \
                 place, {} rows with checksum {} at the new one; nothing was switched",
                s.name, here.0, here.1, there.0, there.1
            )));
        }
    }
    Ok(recopied)
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
async fn copied_by_citus_under_rls(conn: &mut PgConnection) -> Result<bool, Error> {
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
async fn insert_in_batches(
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
        Ok(Self {
            manifest,
            data,
            trusted: false,
        })
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
    let mut sql = String::from("SET LOCAL lock_timeout = '10s';");
    for statement in fence_statements(tables, function, tenant, rows, up) {
        sql.push_str(&statement);
        sql.push(';');
    }
    sql
}

/// The statements of [`fence_sql`] but its `lock_timeout`, one by one (Citus forwards
/// a trigger's DDL to the workers as its text, which must be one statement).
pub(crate) fn fence_statements(
    tables: &[String],
    function: &str,
    tenant: &TenantId,
    rows: bool,
    up: bool,
) -> Vec<String> {
    let base = move_name("fence", tenant);
    let [row, old, trunc] = [
        quote_ident(&base),
        quote_ident(&format!("{base}_old")),
        quote_ident(&format!("{base}_truncate")),
    ];
    let id = quote_literal(tenant.as_str());
    let col = quote_ident(TENANT_COLUMN);
    let mut statements = Vec::new();
    for t in tables {
        if !up {
            for name in [&row, &old, &trunc] {
                statements.push(format!("DROP TRIGGER IF EXISTS {name} ON {t}"));
            }
        } else if rows {
            statements.push(format!(
                "CREATE TRIGGER {row} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW
                   WHEN (NEW.{col} = {id}) EXECUTE FUNCTION {function}({id})"
            ));
            statements.push(format!(
                "CREATE TRIGGER {old} BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW
                   WHEN (OLD.{col} = {id}) EXECUTE FUNCTION {function}({id})"
            ));
        } else {
            statements.push(format!(
                "CREATE TRIGGER {row} BEFORE INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW
                   EXECUTE FUNCTION {function}({id})"
            ));
            statements.push(format!(
                "CREATE TRIGGER {trunc} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT
                   EXECUTE FUNCTION {function}({id})"
            ));
        }
    }
    statements
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
            trusted: false,
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
