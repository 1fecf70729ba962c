//! Binding: every statement that ties a connection to a tenant (session or
//! transaction, every strategy, Citus) and that discards what a request left on it.
//!
//! What a connection carries is decided by the server, never guessed from the text of
//! the statements that ran on it: a binding is one call of the control schema's
//! `session_bind` function (registry upgrade 7), which discards every kind of session
//! state a request can leave (settings and role, also when a function or trigger set
//! them; temporary objects; sequence state; session advisory locks; `LISTEN`s;
//! cursors; SQL-level prepared statements) and then sets the binding, in one round
//! trip and one statement. The state after it is the same whatever ran before.

use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection};

use super::{Binding, PoolConfig, Shared};
use crate::error::Error;
use crate::naming::{TENANT_SETTING, quote_ident, quote_literal};
use crate::tenant::{Strategy, Tenant};

/// How a connection is scoped to one tenant: what its session (or transaction) sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TenantSettings {
    /// The `search_path`, `pg_temp` last: a temporary table never shadows the
    /// tenant's tables.
    pub search_path: String,
    /// The value of [`TENANT_SETTING`] (empty but for row tenants).
    pub setting: String,
    /// The role to act as (`None`: the login role).
    pub role: Option<String>,
    /// The tenant's own database is its scope: nothing to set on a session.
    pub own_database: bool,
    /// The `application_name` naming the tenant (`tenantry:acme`), so that
    /// `pg_stat_activity` and the server's logs show whose statement runs.
    pub application_name: String,
    /// The tenant's statement timeout in milliseconds (`None`: the server's default).
    pub statement_timeout_ms: Option<u64>,
    /// On a Citus coordinator: the `SET LOCAL`s are forwarded to the workers.
    pub citus: bool,
}

impl TenantSettings {
    /// How `tenant`'s connections are scoped, under `config`.
    pub(super) fn of(
        tenant: &Tenant,
        config: &PoolConfig,
        application_name: String,
        citus: bool,
    ) -> Self {
        let (search_path, setting, role, own_database) = match tenant.strategy {
            Strategy::Schema => {
                let own = quote_ident(&tenant.id.schema_name());
                let path = match config.shared_schema.as_deref() {
                    Some(shared) => format!("{own},{}, pg_temp", quote_ident(shared)),
                    None => format!("{own}, pg_temp"),
                };
                (path, String::new(), None, false)
            }
            Strategy::Row => (
                format!(
                    "{}, pg_temp",
                    quote_ident(config.row_schema.as_deref().unwrap_or("public"))
                ),
                tenant.id.as_str().to_owned(),
                config.row_role.clone(),
                false,
            ),
            Strategy::Database => ("public, pg_temp".to_owned(), String::new(), None, true),
        };
        Self {
            search_path,
            setting,
            role,
            own_database,
            application_name,
            statement_timeout_ms: tenant.limits.statement_timeout_ms,
            citus,
        }
    }

    /// The value of the `role` setting.
    fn role_setting(&self) -> &str {
        self.role.as_deref().unwrap_or("none")
    }

    /// `BEGIN`, the discarding of whatever the pooler's server connection carries,
    /// and the scope as transaction-local settings, as one simple query (one round
    /// trip). Every value is derived from validated input and quoted (a simple query
    /// takes no parameters). On Citus the settings are `SET LOCAL` statements, which
    /// Citus forwards to its workers (`set_config` calls it does not).
    pub(super) fn local_sql(&self, control: &str) -> String {
        let timeout = self
            .statement_timeout_ms
            .map_or("NULL".to_owned(), |ms| quote_literal(&ms.to_string()));
        if self.own_database {
            // A tenant database has no control schema: the discarding as statements.
            let mut sql = format!(
                "BEGIN; {DISCARD}; SET LOCAL search_path TO {}; SET LOCAL application_name TO {}",
                self.search_path,
                quote_literal(&self.application_name)
            );
            if let Some(ms) = self.statement_timeout_ms {
                sql.push_str(&format!("; SET LOCAL statement_timeout TO {ms}"));
            }
            return sql;
        }
        if self.citus {
            let role = self.role.as_deref().map_or("NONE".to_owned(), quote_ident);
            let mut sql = format!(
                "BEGIN; SELECT {control}.session_bind(NULL, NULL, NULL, NULL, NULL, NULL, true, true); \
                 SET LOCAL citus.propagate_set_commands TO 'local'; SET LOCAL search_path TO {}; \
                 SET LOCAL {TENANT_SETTING} TO {}; SET LOCAL role TO {role}; \
                 SET LOCAL application_name TO {}",
                self.search_path,
                quote_literal(&self.setting),
                quote_literal(&self.application_name)
            );
            if let Some(ms) = self.statement_timeout_ms {
                sql.push_str(&format!("; SET LOCAL statement_timeout TO {ms}"));
            }
            return sql;
        }
        format!(
            "BEGIN; SELECT {control}.session_bind({}, {}, {}, {}, {}, {timeout}, true, true)",
            quote_literal(&self.search_path),
            quote_literal(TENANT_SETTING),
            quote_literal(&self.setting),
            quote_literal(self.role_setting()),
            quote_literal(&self.application_name),
        )
    }
}

impl TenantSettings {
    /// The transaction binding's discarding after a transaction in which the
    /// request's own SQL ran (or one cut off): the function, or in a tenant database
    /// (no control schema) the statements.
    pub(super) fn local_discard(&self, control: &str) -> String {
        if self.own_database {
            DISCARD.to_owned()
        } else {
            format!(
                "SELECT {control}.session_bind(NULL, NULL, NULL, NULL, NULL, NULL, false, true)"
            )
        }
    }
}

/// What `session_bind` discards, as statements: in a tenant database (which has no
/// control schema), and where the function cannot be called. `role` is not reset by
/// `RESET ALL`, hence `RESET ROLE`.
const DISCARD: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; RESET ROLE; CLOSE ALL; \
     UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// Puts a connection into `scope`'s binding, or into the login's default session when
/// `scope` is `None`, discarding whatever a request left on it. `full`: a request's own
/// SQL ran on the connection: a transaction block it left open (or failed) is rolled
/// back, as the server reports it; SQL-level prepared statements are dropped; the
/// statement cache is checked against the server's statements. One round trip (more
/// only when there was a transaction to roll back or a cache to clear).
pub(super) async fn bind_session(
    shared: &Shared,
    conn: &mut PgConnection,
    scope: Option<&TenantSettings>,
    full: bool,
) -> Result<(), Error> {
    if scope.is_some_and(|s| s.own_database) {
        if full {
            end_transaction(conn).await?;
        }
        return bind_own_database(conn, scope.expect("checked"), full).await;
    }
    let control = shared.control();
    let mut call = session_bind(control, conn, scope, full).await;
    if full
        && let Err(sqlx::Error::Database(e)) = &call
        && matches!(e.code().as_deref(), Some("25001" | "25P02"))
    {
        // Inside a transaction block the request left open, or failed.
        tracing::warn!(
            "a request left a transaction block open on its connection: rolled back \
             (its writes were never committed)"
        );
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        call = session_bind(control, conn, scope, full).await;
    }
    match call {
        Ok(protocol_level) => {
            if let Some(n) = protocol_level
                && usize::try_from(n).ok() != Some(conn.cached_statements_size())
            {
                drop_statements(conn).await?;
            }
            Ok(())
        }
        // The function is missing (a registry not upgraded yet) or out of reach of the
        // role a handler switched to: the same discarding as statements.
        Err(sqlx::Error::Database(e)) => {
            tracing::debug!(error = %e, "session_bind not callable: discarding with statements");
            if full {
                end_transaction(conn).await?;
            }
            discard_with_statements(conn, scope).await
        }
        Err(e) => Err(e.into()),
    }
}

/// One call of `session_bind`: prepared for a clean connection; for a `full` one a
/// simple query (its values quoted literals, derived from validated input), in which
/// the function tells a transaction block left open from its own statement.
async fn session_bind(
    control: &str,
    conn: &mut PgConnection,
    scope: Option<&TenantSettings>,
    full: bool,
) -> Result<Option<i64>, sqlx::Error> {
    let timeout = scope.and_then(|s| s.statement_timeout_ms.map(|ms| ms.to_string()));
    if full {
        let lit = |v: Option<&str>| v.map_or("NULL".to_owned(), quote_literal);
        let sql = format!(
            "SELECT {control}.session_bind({}, {}, {}, {}, {}, {}, false, true)",
            lit(scope.map(|s| s.search_path.as_str())),
            lit(Some(TENANT_SETTING)),
            lit(scope.map(|s| s.setting.as_str())),
            lit(scope.map(TenantSettings::role_setting)),
            lit(scope.map(|s| s.application_name.as_str())),
            lit(timeout.as_deref()),
        );
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        return sqlx::Row::try_get::<Option<i64>, _>(&row, 0);
    }
    let sql = format!("SELECT {control}.session_bind($1, $2, $3, $4, $5, $6, false, false)");
    sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(sql))
        .bind(scope.map(|s| s.search_path.as_str()))
        .bind(TENANT_SETTING)
        .bind(scope.map(|s| s.setting.as_str()))
        .bind(scope.map(TenantSettings::role_setting))
        .bind(scope.map(|s| s.application_name.as_str()))
        .bind(timeout)
        .fetch_one(&mut *conn)
        .await
}

/// A tenant database's connection: its database is its binding; what a request left
/// is discarded with statements (no control schema there), and the tenant's statement
/// timeout set, or the default put back (`RESET`, which never reads `pg_settings`).
async fn bind_own_database(
    conn: &mut PgConnection,
    scope: &TenantSettings,
    full: bool,
) -> Result<(), Error> {
    if full {
        return discard_with_statements(conn, Some(scope)).await;
    }
    // Clean: only the statement timeout may differ.
    match scope.statement_timeout_ms {
        Some(ms) => {
            sqlx::query("SELECT pg_catalog.set_config('statement_timeout', $1, false)")
                .bind(ms.to_string())
                .execute(&mut *conn)
                .await?;
        }
        None => {
            sqlx::raw_sql("RESET statement_timeout")
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// [`DISCARD`], then the binding, then the statement cache checked against the server.
async fn discard_with_statements(
    conn: &mut PgConnection,
    scope: Option<&TenantSettings>,
) -> Result<(), Error> {
    sqlx::raw_sql(DISCARD).execute(&mut *conn).await?;
    if let Some(scope) = scope {
        let (path, setting) = if scope.own_database {
            ("public, pg_temp", "")
        } else {
            (scope.search_path.as_str(), scope.setting.as_str())
        };
        // `RESET ALL` put the server's statement timeout back: set only a tenant's own.
        let timeout = scope.statement_timeout_ms.map(|ms| ms.to_string());
        sqlx::query(
            "SELECT pg_catalog.set_config('search_path', $1, false), \
             pg_catalog.set_config($2, $3, false), pg_catalog.set_config('role', $4, false), \
             pg_catalog.set_config('application_name', $5, false), \
             CASE WHEN $6::text IS NOT NULL \
             THEN pg_catalog.set_config('statement_timeout', $6, false) END",
        )
        .bind(path)
        .bind(TENANT_SETTING)
        .bind(setting)
        .bind(scope.role_setting())
        .bind(&scope.application_name)
        .bind(timeout)
        .execute(&mut *conn)
        .await?;
    }
    // SQL-level statements are dropped by name; the protocol-level ones must be the
    // statement cache's.
    let (protocol_level, from_sql): (i64, Vec<String>) = sqlx::query_as(
        "SELECT pg_catalog.count(*) FILTER (WHERE NOT from_sql), \
         COALESCE(pg_catalog.array_agg(name) FILTER (WHERE from_sql), '{}') \
         FROM pg_catalog.pg_prepared_statements",
    )
    .fetch_one(&mut *conn)
    .await?;
    for name in from_sql {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DEALLOCATE {}",
            quote_ident(&name)
        )))
        .execute(&mut *conn)
        .await?;
    }
    if usize::try_from(protocol_level).ok() != Some(conn.cached_statements_size()) {
        drop_statements(conn).await?;
    }
    Ok(())
}

/// The server's prepared statements no longer match the statement cache (a handler
/// prepared or deallocated some): both are emptied.
async fn drop_statements(conn: &mut PgConnection) -> Result<(), Error> {
    conn.clear_cached_statements().await?;
    sqlx::raw_sql("DEALLOCATE ALL").execute(&mut *conn).await?;
    Ok(())
}

/// Ends whatever transaction a request left open (a handler's `BEGIN`, or a statement
/// of tenantry's own cut off by a cancellation), as the server reports it. Sent as a
/// simple query: `transaction_timestamp() = statement_timestamp()` holds only for the
/// first statement of a transaction, so it is false inside a transaction block a
/// handler opened (in the extended protocol the two timestamps differ); in a failed
/// transaction the query itself fails. Names are schema-qualified, so a handler's
/// `search_path` cannot change what it calls.
pub(super) async fn end_transaction(conn: &mut PgConnection) -> Result<(), Error> {
    const PROBE: &str = "SELECT pg_catalog.transaction_timestamp() OPERATOR(pg_catalog.=) \
         pg_catalog.statement_timestamp()";
    let outside = |row: Result<PgRow, sqlx::Error>| -> bool {
        row.and_then(|r| sqlx::Row::try_get::<bool, _>(&r, 0))
            .unwrap_or(false)
    };
    if outside(sqlx::raw_sql(PROBE).fetch_one(&mut *conn).await) {
        return Ok(());
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
    if outside(sqlx::raw_sql(PROBE).fetch_one(&mut *conn).await) {
        return Ok(());
    }
    Err(Error::Database(sqlx::Error::Protocol(
        "the connection is still in a transaction after ROLLBACK".to_owned(),
    )))
}

/// Where `table` resolves among `schemas` (the first that has it, as the binding's
/// `search_path` would find it), if a read of it runs no code of the tenant's: a plain
/// or partitioned table, without row-level security, every column of a built-in type
/// (whose output functions and operators are the server's). `None`: it must be read
/// bound. Names are schema-qualified: the session's `search_path` cannot change them.
pub(super) async fn table_for_reads(
    conn: &mut PgConnection,
    table: &str,
    schemas: &[String],
) -> Result<Option<String>, Error> {
    let row: Option<(String, bool)> = sqlx::query_as(
        // Each candidate resolved by `to_regclass` (a catalog cache lookup, whatever the
        // number of schemas: a join over `pg_class` by name scanned every tenant's
        // tables, ~30 ms at 10,000 schema tenants).
        "SELECT s.name, c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::\"char\"[]) \
         AND NOT c.relrowsecurity AND NOT EXISTS ( \
         SELECT FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
         WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0 \
         AND NOT a.attisdropped \
         AND t.typnamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace) \
         FROM pg_catalog.unnest($2::text[]) WITH ORDINALITY AS s(name, pos) \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass( \
         pg_catalog.quote_ident(s.name) OPERATOR(pg_catalog.||) '.' \
         OPERATOR(pg_catalog.||) pg_catalog.quote_ident($1)) \
         ORDER BY s.pos LIMIT 1",
    )
    .bind(table)
    .bind(schemas)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.and_then(|(schema, pure)| pure.then_some(schema)))
}

/// How a binding decides between the session and the transaction.
pub(super) fn session_binding(config: &PoolConfig, local_only: bool) -> bool {
    config.binding == Binding::Session && !local_only
}
