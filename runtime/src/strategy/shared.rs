//! The shared tables of row tenants as the other strategy rooms need them: their
//! tenant column and policy names, the catalog query that finds them, the schema the
//! registry recorded for them, and the transaction-local tenant setting that
//! tenantry's own statements on them run under. Below `row` (the strategy) and
//! `data` (reading and writing any place), which both use it: neither imports the
//! other's helpers through the other.

use sqlx::PgConnection;

use crate::error::Error;
use crate::naming::{TENANT_SETTING, quote_literal, tenant_schema_pattern};
use crate::tenant::TenantId;

/// The tenant column of shared tables under the row strategy.
pub const TENANT_COLUMN: &str = "tenant_id";

/// The names of the policies [`rls_sql`](crate::strategy::rls_sql) creates, one per command.
pub const RLS_POLICIES: [&str; 4] = [
    "tenantry_select",
    "tenantry_insert",
    "tenantry_update",
    "tenantry_delete",
];

/// `FROM .. WHERE ..` of the tables with a `tenant_id` (`$2`) column outside tenant
/// schemas, the control schema (`$1`) and its template, and the system schemas; only
/// in the registry's row schema when it recorded one ([`recorded_row_schema`]).
pub(crate) fn shared_tables_sql(row_schema: Option<&str>) -> String {
    let scope = row_schema
        .map(|schema| format!(" AND n.nspname = {}", quote_literal(schema)))
        .unwrap_or_default();
    format!(
        "
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped
         WHERE c.relkind IN ('r', 'p')
           AND n.nspname NOT LIKE {} AND n.nspname <> $1
           AND n.nspname NOT LIKE $1 || '\\_%'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema'){scope}",
        quote_literal(&tenant_schema_pattern())
    )
}

/// The schema of the shared tables the registry in `control_schema` manages, as its
/// application recorded it (`PoolConfig::row_schema`, see
/// [`TenantRepository::record_row_schema`](crate::repository::TenantRepository::record_row_schema));
/// `None` when none was recorded (or there is no such registry): every schema then.
pub(crate) async fn recorded_row_schema(
    conn: &mut PgConnection,
    control_schema: &str,
) -> Result<Option<String>, Error> {
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass(format('%I.settings', $1::text))::text")
            .bind(control_schema)
            .fetch_one(&mut *conn)
            .await?;
    let Some(table) = table else {
        return Ok(None);
    };
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT value FROM {table} WHERE name = 'row_schema'"
    )))
    .fetch_optional(&mut *conn)
    .await?)
}

/// Binds the caller's transaction to row tenant `id` for tenantry's own statements on
/// the shared tables: `SET LOCAL` of the tenant setting, which their policies read. On
/// a Citus coordinator `citus.propagate_set_commands` goes first, so that the setting
/// (and every `SET LOCAL` after it in the transaction) reaches the workers, where the
/// shards' policies read it: a `set_config` is not forwarded, and a login subject to
/// row-level security would then see, and delete, nothing there. The id is validated
/// and quoted.
pub(crate) async fn bind_rows_locally(conn: &mut PgConnection, id: &TenantId) -> Result<(), Error> {
    propagate_locally(conn).await?;
    set_rows_tenant(conn, id).await
}

/// The `SET LOCAL` of the tenant setting alone, for a transaction that forwards its
/// settings already ([`propagate_locally`]).
pub(crate) async fn set_rows_tenant(conn: &mut PgConnection, id: &TenantId) -> Result<(), Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL {TENANT_SETTING} TO {}",
        crate::naming::quote_literal(id.as_str())
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// On a Citus coordinator: the transaction's `SET LOCAL`s from here on are forwarded
/// to the workers. Nothing elsewhere.
pub(crate) async fn propagate_locally(conn: &mut PgConnection) -> Result<(), Error> {
    if crate::citus::installed(conn).await? {
        sqlx::raw_sql("SET LOCAL citus.propagate_set_commands TO 'local'")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
