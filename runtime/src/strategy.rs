//! Isolation strategies: how a tenant is provisioned, scoped and dropped.
//!
//! Schema per tenant is the default (and, for now, the only) strategy: each tenant
//! owns the schema [`TenantId::schema_name`], and a tenant-bound connection's
//! `search_path` lists that schema (plus an optional shared schema) and nothing else.

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
pub(crate) async fn create_schema(conn: &mut PgConnection, id: &TenantId) -> Result<(), Error> {
    let schema = quote_ident(&id.schema_name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; SET LOCAL search_path TO {schema}"
    )))
    .execute(conn)
    .await?;
    Ok(())
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
