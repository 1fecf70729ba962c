//! Isolation strategies: how a tenant is provisioned, scoped and dropped.
//!
//! - **Schema** (the default): each tenant owns the schema [`TenantId::schema_name`],
//!   and a tenant-bound connection's `search_path` lists that schema (plus an optional
//!   shared schema) and nothing else.
//! - **Row**: tenants share tables that carry a `tenant_id` column. Each table gets
//!   row-level security, enabled and forced, with policies that compare the column
//!   with the `tenantry.tenant_id` setting ([`rls_sql`], [`install_rls`]). A row
//!   tenant's connections are opened with that setting as a startup parameter (no
//!   round trip, and never another tenant's value), and should log in as a role that
//!   owns no tenant table and has no `BYPASSRLS` ([`crate::PoolConfig::row_user`]).

use sqlx::PgConnection;

use crate::error::Error;
use crate::tenant::TenantId;

/// Quotes an identifier for PostgreSQL (`"name"`, doubling embedded quotes).
///
/// tenantry only ever quotes names it derived itself from validated input; quoting is
/// a second line of defence, not the first.
///
/// ```
/// assert_eq!(tenantry::quote_ident("tenant_acme"), "\"tenant_acme\"");
/// assert_eq!(tenantry::quote_ident("a\"b"), "\"a\"\"b\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for PostgreSQL (`'text'`, doubling embedded quotes), for
/// statements that take no parameters (`SET`). Only for values tenantry derived from
/// validated input.
///
/// ```
/// assert_eq!(tenantry::strategy::quote_literal("acme"), "'acme'");
/// assert_eq!(tenantry::strategy::quote_literal("a'b"), "'a''b'");
/// ```
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The setting that row-level security policies read: the tenant of the connection.
pub const TENANT_SETTING: &str = "tenantry.tenant_id";

/// The tenant column of shared tables under the row strategy.
pub const TENANT_COLUMN: &str = "tenant_id";

/// The names of the policies [`rls_sql`] creates, one per command.
pub const RLS_POLICIES: [&str; 4] = [
    "tenantry_select",
    "tenantry_insert",
    "tenantry_update",
    "tenantry_delete",
];

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// The DDL that puts a shared table under row-level security: `ENABLE` and `FORCE ROW
/// LEVEL SECURITY`, and one policy per command comparing `tenant_column` with the
/// tenant setting (`USING` for the rows a tenant sees, `WITH CHECK` for the rows it
/// writes). With no tenant set, no row is visible and every write is rejected.
/// Idempotent. Index shared tables with the tenant column first, and key them by
/// `(tenant_id, id)` with `tenant_id` in every unique and foreign key: those checks
/// bypass row-level security ([`shared_keys_without_tenant`] finds keys that do not).
///
/// ```
/// let ddl = tenantry::strategy::rls_sql("app.items", "tenant_id").unwrap();
/// assert!(ddl.contains("FORCE ROW LEVEL SECURITY"));
/// assert!(ddl.contains("(SELECT current_setting('tenantry.tenant_id', true))"));
/// assert!(tenantry::strategy::rls_sql("items; DROP TABLE x", "tenant_id").is_err());
/// ```
pub fn rls_sql(table: &str, tenant_column: &str) -> Result<String, Error> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| plain_name(p)) || !plain_name(tenant_column) {
        return Err(Error::Validation(format!(
            "`{}`/`{}` must be plain names (`table` or `schema.table`)",
            table.escape_debug(),
            tenant_column.escape_debug()
        )));
    }
    let t = parts
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join(".");
    let c = quote_ident(tenant_column);
    let cond = format!("{c} = (SELECT current_setting('{TENANT_SETTING}', true))");
    let [select, insert, update, delete] = RLS_POLICIES;
    // `DROP POLICY IF EXISTS` would report every missing policy as a notice.
    Ok(format!(
        "SET LOCAL client_min_messages = warning;
         ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
         ALTER TABLE {t} FORCE ROW LEVEL SECURITY;
         DROP POLICY IF EXISTS {select} ON {t};
         DROP POLICY IF EXISTS {insert} ON {t};
         DROP POLICY IF EXISTS {update} ON {t};
         DROP POLICY IF EXISTS {delete} ON {t};
         CREATE POLICY {select} ON {t} FOR SELECT USING ({cond});
         CREATE POLICY {insert} ON {t} FOR INSERT WITH CHECK ({cond});
         CREATE POLICY {update} ON {t} FOR UPDATE USING ({cond}) WITH CHECK ({cond});
         CREATE POLICY {delete} ON {t} FOR DELETE USING ({cond});"
    ))
}

/// Runs [`rls_sql`] for `table` on `conn` (a migration helper).
pub async fn install_rls(
    conn: &mut PgConnection,
    table: &str,
    tenant_column: &str,
) -> Result<(), Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(rls_sql(table, tenant_column)?))
        .execute(conn)
        .await?;
    Ok(())
}

/// Tables with a `tenant_id` column that lack row-level security (not enabled, not
/// forced, or missing one of the [`RLS_POLICIES`]), outside tenant schemas and the
/// control schema: what `tenantry doctor` and the tests check.
pub async fn tables_missing_rls(
    conn: &mut PgConnection,
    control_schema: &str,
) -> Result<Vec<String>, Error> {
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('%I.%I', n.nspname, c.relname) {SHARED_TABLES}
           AND NOT (c.relrowsecurity AND c.relforcerowsecurity
                    AND (SELECT count(DISTINCT p.polname) FROM pg_policy p
                         WHERE p.polrelid = c.oid AND p.polname = ANY ($3)) = 4)
         ORDER BY 1"
    )))
    .bind(control_schema)
    .bind(TENANT_COLUMN)
    .bind(RLS_POLICIES.to_vec())
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Keys of shared tables that leave the tenant column out: primary keys, unique
/// constraints and foreign keys whose columns do not include `tenant_id`, as
/// `(schema.table, constraint)`. Unique and foreign-key checks bypass row-level
/// security, so such a key lets a row tenant reference another tenant's row, or learn
/// from a conflict that another tenant's row exists: key shared tables by
/// `(tenant_id, id)` and include `tenant_id` in every foreign key. What `tenantry
/// doctor` reports as `tenant-key`.
pub async fn shared_keys_without_tenant(
    conn: &mut PgConnection,
    control_schema: &str,
) -> Result<Vec<(String, String)>, Error> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH t AS (SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, a.attnum
                    {SHARED_TABLES})
         -- unique indexes (primary keys and unique constraints included)
         SELECT t.name, ic.relname::text FROM t
         JOIN pg_index i ON i.indrelid = t.oid AND i.indisunique
         JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE NOT (t.attnum = ANY (i.indkey::int2[]))
         UNION
         -- exclusion constraints, and foreign keys to other shared tables
         SELECT t.name, con.conname::text FROM t
         JOIN pg_constraint con ON con.conrelid = t.oid
         WHERE NOT (t.attnum = ANY (con.conkey))
           AND (con.contype = 'x' OR (con.contype = 'f' AND con.confrelid IN (SELECT oid FROM t)))
         ORDER BY 1, 2"
    )))
    .bind(control_schema)
    .bind(TENANT_COLUMN)
    .fetch_all(conn)
    .await?)
}

/// `FROM .. WHERE ..` of the tables with a `tenant_id` (`$2`) column outside tenant
/// schemas, the control schema (`$1`) and its template, and the system schemas.
const SHARED_TABLES: &str = "
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped
         WHERE c.relkind IN ('r', 'p')
           AND n.nspname NOT LIKE 'tenant\\_%' AND n.nspname <> $1
           AND n.nspname NOT LIKE $1 || '\\_%'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// The shared tables: tables with a `tenant_id` column outside tenant schemas, the
/// control schema and its template, as quoted `schema.table` names.
pub async fn shared_tables(
    conn: &mut PgConnection,
    control_schema: &str,
) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('%I.%I', n.nspname, c.relname) {SHARED_TABLES} ORDER BY 1"
    )))
    .bind(control_schema)
    .bind(TENANT_COLUMN)
    .fetch_all(conn)
    .await?)
}

/// Deletes a row tenant's rows from every shared table with a `tenant_id` column,
/// inside the caller's transaction. The tenant setting is set for the transaction,
/// so this works under forced row-level security too.
pub(crate) async fn delete_rows(
    conn: &mut PgConnection,
    control_schema: &str,
    id: &TenantId,
) -> Result<u64, Error> {
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(TENANT_SETTING)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    // Only tables under tenantry's policies: another application's table that happens
    // to have a `tenant_id` column is not ours to delete from.
    let tables = policed_tables(conn, control_schema).await?;
    let mut deleted = 0;
    for table in tables {
        deleted += sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE {} = $1",
            quote_ident(TENANT_COLUMN)
        )))
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(deleted)
}

/// The shared tables under tenantry's row-level security (all four [`RLS_POLICIES`]):
/// the tables tenantry writes row tenants' data to and deletes it from.
async fn policed_tables(
    conn: &mut PgConnection,
    control_schema: &str,
) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('%I.%I', n.nspname, c.relname) {SHARED_TABLES}
           AND (SELECT count(DISTINCT p.polname) FROM pg_policy p
                WHERE p.polrelid = c.oid AND p.polname = ANY ($3)) = 4
         ORDER BY 1"
    )))
    .bind(control_schema)
    .bind(TENANT_COLUMN)
    .bind(RLS_POLICIES.to_vec())
    .fetch_all(conn)
    .await?)
}

/// The first table under tenantry's policies that already holds rows of `id`, inside
/// the caller's transaction: rows a new row tenant must not inherit.
pub(crate) async fn table_with_rows_of(
    conn: &mut PgConnection,
    control_schema: &str,
    id: &TenantId,
) -> Result<Option<String>, Error> {
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(TENANT_SETTING)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    for table in policed_tables(conn, control_schema).await? {
        let found: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {} = $1)",
            quote_ident(TENANT_COLUMN)
        )))
        .bind(id.as_str())
        .fetch_one(&mut *conn)
        .await?;
        if found {
            return Ok(Some(table));
        }
    }
    Ok(None)
}

/// The `search_path` of a tenant-bound connection: the tenant's schema, then the
/// shared schema if one is configured. `public` and `$user` are never included unless
/// configured as the shared schema (CVE-2018-1058).
pub(crate) fn search_path(id: &TenantId, shared_schema: Option<&str>) -> String {
    match shared_schema {
        Some(shared) => format!("{},{}", quote_ident(&id.schema_name()), quote_ident(shared)),
        None => quote_ident(&id.schema_name()),
    }
}

/// Creates the tenant's schema inside the caller's transaction and points the
/// transaction's `search_path` at it, so the tenant migrations that follow land there.
///
/// A schema of that name that exists already (made by hand, or by another app) is a
/// conflict: the transaction fails and the schema is left as it is.
pub(crate) async fn create_schema(conn: &mut PgConnection, id: &TenantId) -> Result<(), Error> {
    let name = id.schema_name();
    let schema = quote_ident(&name);
    match sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; SET LOCAL search_path TO {schema}"
    )))
    .execute(conn)
    .await
    {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P06") => {
            Err(Error::Conflict(format!(
                "a schema named `{name}` already exists and was not made by tenantry for this \
                 tenant; it was left untouched (remove it, or use another tenant id)"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Points the caller's transaction at the tenant's existing schema.
pub(crate) async fn set_local_search_path(
    conn: &mut PgConnection,
    id: &TenantId,
) -> Result<(), Error> {
    let schema = quote_ident(&id.schema_name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL search_path TO {schema}"
    )))
    .execute(conn)
    .await?;
    Ok(())
}

/// Drops the tenant's schema and everything in it, inside the caller's transaction.
pub(crate) async fn drop_schema(conn: &mut PgConnection, id: &TenantId) -> Result<(), Error> {
    let schema = quote_ident(&id.schema_name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(conn)
    .await?;
    Ok(())
}
