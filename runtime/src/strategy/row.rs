//! The row strategy: tenants share tables that carry a `tenant_id` column. Each such
//! table gets row-level security, enabled and forced, with policies that compare the
//! column with the `tenantry.tenant_id` setting ([`rls_sql`], [`install_rls`]). A row
//! tenant's connection carries that setting (and optionally a role that owns no
//! tenant table and has no `BYPASSRLS`, [`crate::PoolConfig::row_user`]); a row
//! tenant is a registry row, its data the rows of its id.

use sqlx::PgConnection;

use super::{Finding, Strategies};
use crate::error::Error;
use crate::mobility::copy::{self, Place};
use crate::mobility::format::Snapshot;
use crate::naming::{is_identifier, quote_ident};
use crate::tenant::{NewTenant, Tenant, TenantId, TenantStatus};

use super::shared::shared_tables_sql;
pub use super::shared::{RLS_POLICIES, TENANT_COLUMN};
pub(crate) use super::shared::{bind_rows_locally, recorded_row_schema};
pub use crate::naming::TENANT_SETTING;

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
    Ok(policies_sql(table, tenant_column, true)?.join(";\n") + ";")
}

/// [`rls_sql`], with the setting read in the policies themselves (`subquery` false:
/// what Citus accepts for distributed tables) or once per statement (`true`).
fn policies_sql(table: &str, tenant_column: &str, subquery: bool) -> Result<Vec<String>, Error> {
    let parts: Vec<&str> = table.split('.').collect();
    let plain = |name: &str| is_identifier(name, 63);
    if parts.len() > 2 || !parts.iter().all(|p| plain(p)) || !plain(tenant_column) {
        return Err(Error::Validation(format!(
            "`{}`/`{}` must be plain lowercase names (`table` or `schema.table`)",
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
    let cond = if subquery {
        format!("{c} = (SELECT current_setting('{TENANT_SETTING}', true))")
    } else {
        format!("{c} = current_setting('{TENANT_SETTING}', true)")
    };
    let [select, insert, update, delete] = RLS_POLICIES;
    // `DROP POLICY IF EXISTS` would report every missing policy as a notice.
    Ok(vec![
        "SET LOCAL client_min_messages = warning".to_owned(),
        format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"),
        format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"),
        format!("DROP POLICY IF EXISTS {select} ON {t}"),
        format!("DROP POLICY IF EXISTS {insert} ON {t}"),
        format!("DROP POLICY IF EXISTS {update} ON {t}"),
        format!("DROP POLICY IF EXISTS {delete} ON {t}"),
        format!("CREATE POLICY {select} ON {t} FOR SELECT USING ({cond})"),
        format!("CREATE POLICY {insert} ON {t} FOR INSERT WITH CHECK ({cond})"),
        format!("CREATE POLICY {update} ON {t} FOR UPDATE USING ({cond}) WITH CHECK ({cond})"),
        format!("CREATE POLICY {delete} ON {t} FOR DELETE USING ({cond})"),
    ])
}

/// Runs [`rls_sql`] for `table` on `conn` (a migration helper). On a Citus
/// coordinator the policies read the setting without a subquery (Citus refuses
/// subqueries in policies of distributed tables); distribute the table first
/// ([`crate::strategy::distribute_rows`]).
pub async fn install_rls(
    conn: &mut PgConnection,
    table: &str,
    tenant_column: &str,
) -> Result<(), Error> {
    let citus = crate::citus::installed(conn).await?;
    // One statement at a time: Citus forwards DDL on a distributed table to the
    // workers as the statement's text.
    for statement in policies_sql(table, tenant_column, !citus)? {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Tables with a `tenant_id` column that lack row-level security (not enabled, not
/// forced, or missing one of the [`RLS_POLICIES`]), outside tenant schemas and the
/// control schema: what `tenantry doctor` and the tests check.
pub async fn tables_missing_rls(
    conn: &mut PgConnection,
    control_schema: &str,
) -> Result<Vec<String>, Error> {
    // Every schema: a table anywhere with a tenant column and no RLS is a hazard.
    let shared = shared_tables_sql(None);
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('%I.%I', n.nspname, c.relname) {shared}
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
    // Every schema: a table anywhere with a tenant column and no RLS is a hazard.
    let shared = shared_tables_sql(None);
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH t AS (SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, a.attnum
                    {shared})
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

/// The shared tables: tables with a `tenant_id` column outside tenant schemas, the
/// control schema and its template, as quoted `schema.table` names.
pub async fn shared_tables(
    conn: &mut PgConnection,
    control_schema: &str,
) -> Result<Vec<String>, Error> {
    let shared = shared_tables_sql(recorded_row_schema(conn, control_schema).await?.as_deref());
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('%I.%I', n.nspname, c.relname) {shared} ORDER BY 1"
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
    bind_rows_locally(conn, id).await?;
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
    let shared = shared_tables_sql(recorded_row_schema(conn, control_schema).await?.as_deref());
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('%I.%I', n.nspname, c.relname) {shared}
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
    bind_rows_locally(conn, id).await?;
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

/// A row tenant is a registry row: its data lives in shared tables. Rows of its id
/// that nobody deleted (written by hand, or by another app under the same id) would
/// become the new tenant's, so their presence is a conflict.
pub(crate) async fn provision(
    s: &Strategies,
    new: &NewTenant,
    fill: Option<&Snapshot>,
) -> Result<Tenant, Error> {
    let repo = &s.repo;
    let mut tx = repo.pool().begin().await?;
    repo.purge_deleted(&mut tx, &new.id).await?;
    let tenant = repo
        .insert(&mut tx, new, TenantStatus::Active, &new.id.schema_name())
        .await?;
    build(s, &mut tx, &new.id, fill).await?;
    repo.notify(&mut tx, &new.id).await?;
    tx.commit().await?;
    Ok(tenant)
}

/// Makes room for row tenant `id` in the shared tables inside the caller's
/// transaction: rows of its id that are there already are a conflict (left
/// untouched); `fill`'s data is loaded and verified.
pub(crate) async fn build(
    s: &Strategies,
    tx: &mut PgConnection,
    id: &TenantId,
    fill: Option<&Snapshot>,
) -> Result<(), Error> {
    let control = s.repo.control_schema();
    if let Some(table) = table_with_rows_of(tx, control, id).await? {
        return Err(Error::Conflict(format!(
            "`{table}` already holds rows with tenant_id `{id}` that were not made for this \
             tenant; they were left untouched"
        )));
    }
    if let Some(fill) = fill {
        copy::write(tx, Place::Rows { control }, id, fill).await?;
    }
    Ok(())
}

/// Deletes the tenant's rows, inside the caller's transaction, with what a move of
/// it whose process died left in the registry (its rows' copies among a move's
/// change records): nothing of it stays for the next tenant of its id.
pub(crate) async fn remove(
    s: &Strategies,
    tx: &mut PgConnection,
    tenant: &Tenant,
) -> Result<(), Error> {
    crate::mobility::row_guard::forget(tx, s.repo.control_schema(), &tenant.id).await?;
    delete_rows(tx, s.repo.control_schema(), &tenant.id).await?;
    Ok(())
}

/// The shared tables' definitions and the tenant's rows in them, as `COPY` blocks.
pub(crate) async fn export(s: &Strategies, tenant: &Tenant, url: &str) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    let mut tx = s.repo.pool().begin().await?;
    bind_rows_locally(&mut tx, &tenant.id).await?;
    let tables = shared_tables(&mut tx, s.repo.control_schema()).await?;
    for table in &tables {
        body.extend(crate::pgbin::pg_dump(url, &["--schema-only", "--table", table]).await?);
        body.extend(format!("\nCOPY {table} FROM stdin;\n").into_bytes());
        // `table` is a quoted name from the catalog; the tenant comes from the
        // transaction's setting, not from the statement text.
        let statement = format!(
            "COPY (SELECT * FROM {table} WHERE {} = current_setting('{TENANT_SETTING}')) TO STDOUT",
            quote_ident(TENANT_COLUMN),
        );
        let mut rows = tx.copy_out_raw(&statement).await?;
        while let Some(chunk) = futures::StreamExt::next(&mut rows).await {
            body.extend_from_slice(&chunk?);
        }
        body.extend_from_slice(b"\\.\n\n");
    }
    tx.rollback().await?;
    Ok(body)
}

/// Shared tables without forced row-level security and all four policies
/// (`missing-rls`), and keys of shared tables that leave `tenant_id` out (`tenant-key`).
pub(crate) async fn doctor(s: &Strategies, findings: &mut Vec<Finding>) -> Result<(), Error> {
    let mut conn = s.repo.pool().acquire().await?;
    let control = s.repo.control_schema();
    for table in tables_missing_rls(&mut conn, control).await? {
        findings.push(Finding {
            kind: "missing-rls",
            subject: table,
            detail: "has a tenant_id column but row level security is not enabled, forced \
                     and with all four tenantry policies"
                .to_owned(),
        });
    }
    for (table, key) in shared_keys_without_tenant(&mut conn, control).await? {
        findings.push(Finding {
            kind: "tenant-key",
            subject: format!("{table} {key}"),
            detail: "a key of a shared table leaves tenant_id out: unique and foreign-key \
                     checks bypass row level security, so tenants can reference or detect \
                     each other's rows; key it by (tenant_id, ..)"
                .to_owned(),
        });
    }
    Ok(())
}
