//! The write fence of a move: triggers that refuse the tenant's writes (SQLSTATE 25006,
//! a 503 with `Retry-After`) while its data is verified and the registry switched.

use super::move_name;
use crate::naming::{quote_ident, quote_literal};
use crate::strategy::shared::TENANT_COLUMN;
use crate::tenant::TenantId;

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
