//! Operator operations: what the `tenantry` CLI and admin tools use, each going
//! through the lifecycle's rules, caches and announcements (no registry, tenant pool
//! or lifecycle object is handed out; [`Admin::registry_pool`] is the operator's own
//! SQL access to the registry's server, what its URL gives anyway).
//!
//! Applications need none of this; they hold a [`TenantManager`].
//! An operator tool gets an [`Admin`] from [`TenantManager::admin`](crate::TenantManager::admin):
//!
//! ```no_run
//! # async fn f(manager: tenantry::TenantManager) -> Result<(), tenantry::Error> {
//! let admin = manager.admin();
//! for finding in admin.doctor(false).await? {
//!     eprintln!("{} {}: {}", finding.kind, finding.subject, finding.detail);
//! }
//! let export = admin.export(&"acme".parse()?).await?;
//! admin.import(&export, tenantry::admin::ImportOptions {
//!     id: Some("acme-copy".parse()?),
//!     ..Default::default()
//! }).await?;
//! # Ok(()) }
//! ```

use sqlx::PgPool;

pub use crate::citus::{Citus, NodeTransfer};
use crate::lifecycle::Lifecycle;
pub use crate::mobility::{ImportOptions, MoveReport, MoveTo};
use crate::repository::TenantRepository;
pub use crate::strategy::finding::Finding;

use crate::pool::TenantPools;
use crate::servers::Servers;

use crate::error::Error;
use crate::manager::TenantManager;
use crate::migrate::TenantMigrationStatus;
use crate::tenant::{Tenant, TenantId, TenantStatus};

impl TenantManager {
    /// Operator operations: exports, imports and moves, named servers, `doctor`,
    /// migration status (what the `tenantry` CLI uses).
    pub fn admin(&self) -> Admin<'_> {
        Admin { manager: self }
    }
}

/// A manager's operator operations, each through the lifecycle's rules, caches and
/// announcements.
#[derive(Debug, Clone, Copy)]
pub struct Admin<'a> {
    manager: &'a TenantManager,
}

impl<'a> Admin<'a> {
    /// The registry.
    pub(crate) fn registry(&self) -> &'a TenantRepository {
        self.manager.lifecycle().repository()
    }

    /// The pool the registry lives on (a direct connection to its server), for an
    /// operator's own SQL: what the registry's URL gives anyway. Changing tenants
    /// through it bypasses the lifecycle; use the operations instead.
    pub fn registry_pool(&self) -> &'a PgPool {
        self.registry().pool()
    }

    /// The lifecycle rules (without the manager's cache and announcements).
    pub(crate) fn lifecycle(&self) -> &'a Lifecycle {
        self.manager.lifecycle()
    }

    /// The tenant connections: one budgeted pool per server.
    pub(crate) fn pools(&self) -> &'a TenantPools {
        self.manager.pools()
    }

    /// The registry's record of `id` whatever its status (deleted tenants included),
    /// read now, past the cache.
    pub async fn find(&self, id: &TenantId) -> Result<Option<Tenant>, Error> {
        self.registry().find(id).await
    }

    /// The tenant's schema and data as SQL (from `pg_dump`, which must be installed),
    /// with its registry record as a comment: its schema (schema strategy), its
    /// database (database strategy, on the registry's server), or the shared tables'
    /// definitions and its rows in them (row strategy). `url` is a URL of the
    /// registry's server that `pg_dump` can use.
    pub async fn export_sql(&self, id: &TenantId, url: &str) -> Result<Vec<u8>, Error> {
        self.lifecycle().export_sql(id, url).await
    }

    /// The tenant's data as a tenantry export: a manifest (its record, migration
    /// versions, tables with row counts and checksums, sequence positions) and one
    /// `COPY` block per table, read from one snapshot, whatever its strategy or
    /// server. [`Admin::import`] reads it back, under any strategy and id.
    pub async fn export(&self, id: &TenantId) -> Result<Vec<u8>, Error> {
        self.lifecycle().export(id).await
    }

    /// Creates a tenant from an [export](Admin::export), all or nothing: under
    /// the exported id or `options.id`, with the exported strategy or
    /// `options.strategy` (a row tenant's export becomes a schema tenant and back),
    /// on `options.server` (database tenants). The tenant is provisioned as
    /// [`TenantManager::create_tenant`](crate::TenantManager::create_tenant) does, the data loaded and every table's row count and
    /// checksum verified before it turns active; any failure leaves no tenant,
    /// schema, database or rows. Its name comes along; its limits (the file may come
    /// from anyone) and domains (the exported tenant may still hold them) do not: set
    /// them after. Into a row tenant, the sequences every row tenant shares move past
    /// the ids loaded, never to a position the file only states, and by at most 1%
    /// of what is left of them (422 beyond: no file can use them up).
    ///
    /// A schema or database tenant's export must be at the version of this
    /// migration source (422 otherwise: import with the source it was made with,
    /// then migrate).
    ///
    /// Drops every cached record of the id.
    pub async fn import(&self, export: &[u8], options: ImportOptions) -> Result<Tenant, Error> {
        let tenant = self.lifecycle().import(export, options).await?;
        self.manager.invalidate(&tenant.id);
        Ok(tenant)
    }

    /// Moves a tenant to another strategy (`MoveTo::Strategy`) or, a database
    /// tenant, to another server (`MoveTo::Server`), online: its data is copied
    /// behind a write fence (writes get a 503 with `Retry-After`, reads go on),
    /// verified table by table, the registry switched and announced in one
    /// transaction, and after `grace` (for every instance to hear of it) the old
    /// place is dropped. Ids, rows and sequences stay. A failure before the switch
    /// leaves the tenant where it was, serving. Returns what was moved and how long
    /// writes paused.
    pub async fn move_tenant(
        &self,
        id: &TenantId,
        to: MoveTo,
        grace: std::time::Duration,
    ) -> Result<MoveReport, Error> {
        let report = self.lifecycle().move_tenant(id, to, grace).await?;
        self.manager.invalidate(id);
        Ok(report)
    }

    /// Lifts the write fence and change capture a move left behind when its process
    /// died (the tenant's writes get 503 until then; `tenantry doctor` reports them as
    /// `move-leftover`). Refused (409) while a move of the tenant runs. Returns
    /// whether anything was left.
    pub async fn recover_move(&self, id: &TenantId) -> Result<bool, Error> {
        let found = self.lifecycle().recover_move(id).await?;
        self.manager.invalidate(id);
        Ok(found)
    }

    /// Citus on the registry's server (its coordinator), if any: its version and
    /// active workers, as found at start.
    pub fn citus(&self) -> Option<&'a crate::citus::Citus> {
        self.manager.citus()
    }

    /// The Citus worker (`host:port`) holding the tenant's data, read from Citus's
    /// metadata now (Citus's rebalancer may move tenants too); `None` off Citus and
    /// for database tenants.
    pub async fn node_of(&self, tenant: &Tenant) -> Result<Option<String>, Error> {
        if self.citus().is_none() {
            return Ok(None);
        }
        crate::citus::node_of(self.registry_pool(), tenant).await
    }

    /// The named servers: the application's and the registry's, by name.
    pub(crate) fn servers(&self) -> &'a Servers {
        self.pools().servers()
    }

    /// The servers kept in the registry (`tenantry servers add`), by name, with their
    /// URLs; the registry's own server (`default`) is not among them.
    pub async fn registered_servers(&self) -> Result<Vec<(String, String)>, Error> {
        self.registry().servers().await
    }

    /// Closes every idle tenant connection now (on every server): what an operator
    /// does to let the server's memory go after a burst, or before measuring.
    pub async fn close_idle_connections(&self) {
        self.pools().close_idle().await;
    }

    /// Keeps server `name` in the registry, reachable at `url`, for every instance
    /// and the CLI. The URL carries no password (refused: use the server's auth, a
    /// passfile, `PGPASSWORD`, or the application's own server settings); it must
    /// parse and name a maintenance database (for example `postgres`).
    pub async fn add_server(&self, name: &str, url: &str) -> Result<(), Error> {
        check_server_name(name)?;
        check_server_url(url)?;
        self.registry().put_server(name, url).await?;
        self.servers()
            .set_registered(&self.registry().servers().await?);
        Ok(())
    }

    /// Forgets server `name` (409 while tenants live on it, 404 if unknown).
    pub async fn remove_server(&self, name: &str) -> Result<(), Error> {
        if !self.registry().remove_server(name).await? {
            return Err(Error::NotFound(format!(
                "no server `{}` is kept in the registry",
                name.escape_debug()
            )));
        }
        self.servers()
            .set_registered(&self.registry().servers().await?);
        Ok(())
    }

    /// Where every tenant with a schema or database of its own stands against the
    /// migration source. With `compare_with_source` false (the manager was built
    /// without the application's migrations), only the applied versions are reported:
    /// no pending versions, no checksum drift.
    pub async fn migration_status(
        &self,
        compare_with_source: bool,
    ) -> Result<Vec<TenantMigrationStatus>, Error> {
        let mut status = self.manager.migration_status().await?;
        if !compare_with_source {
            for s in &mut status {
                s.pending.clear();
                s.drift.clear();
            }
        }
        Ok(status)
    }

    /// Everything `tenantry doctor` checks: orphan and missing schemas and databases
    /// (`orphan-schema`, `missing-schema`, `orphan-database`, `missing-database`),
    /// shared tables without row-level security or with keys that leave `tenant_id`
    /// out (`missing-rls`, `tenant-key`), drifted tenants (`drift`) and tenants behind
    /// the source (or, without it, behind the others: `behind`).
    pub async fn doctor(&self, compare_with_source: bool) -> Result<Vec<Finding>, Error> {
        let tenants = self.manager.list_tenants().await?;
        let mut findings = self.lifecycle().doctor(&tenants).await?;
        crate::mobility::relocate::doctor(&self.lifecycle().strategies, &mut findings).await?;
        let status = self.migration_status(compare_with_source).await?;
        let newest = status.iter().filter_map(|s| s.version).max();
        for s in &status {
            for d in &s.drift {
                findings.push(Finding {
                    kind: "drift",
                    subject: s.tenant.to_string(),
                    detail: d.clone(),
                });
            }
            if !compare_with_source && s.version != newest {
                findings.push(Finding {
                    kind: "behind",
                    subject: s.tenant.to_string(),
                    detail: format!(
                        "at version {} while other tenants are at {}",
                        s.version.map_or("none".to_owned(), |v| v.to_string()),
                        newest.unwrap_or_default()
                    ),
                });
            } else if compare_with_source && !s.pending.is_empty() {
                findings.push(Finding {
                    kind: "behind",
                    subject: s.tenant.to_string(),
                    detail: format!("pending versions {:?}", s.pending),
                });
            }
        }
        Ok(findings)
    }

    /// The tenant `id` if it exists and is not deleted, read past the cache.
    pub async fn existing(&self, id: &TenantId) -> Result<Tenant, Error> {
        self.find(id)
            .await?
            .filter(|t| t.status != TenantStatus::Deleted)
            .ok_or_else(|| Error::TenantNotFound(id.clone()))
    }
}

/// What [`run_script`] did in one tenant.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScriptOutput {
    /// The rows the script returned (a query, or a change with `RETURNING`), each
    /// as a JSON object; `None` for a script that returns no rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<serde_json::Value>>,
    /// Rows changed (for a script without result rows).
    pub affected: u64,
}

/// The schemas a script run by [`run_script`] must not touch: the registry's and every
/// schema tenant's (the tenant the script runs for excepted).
#[derive(Debug, Clone, Default)]
pub struct ScriptFence {
    schemas: std::collections::BTreeSet<String>,
}

impl ScriptFence {
    /// The fence for a registry in `control_schema` holding `tenants` (for example
    /// [`TenantManager::list_tenants`]).
    pub fn new<'a>(control_schema: &str, tenants: impl IntoIterator<Item = &'a Tenant>) -> Self {
        let mut schemas: std::collections::BTreeSet<String> = tenants
            .into_iter()
            .filter_map(|t| t.schema().map(str::to_owned))
            .collect();
        schemas.insert(control_schema.to_owned());
        Self { schemas }
    }
}

/// Runs an operator's SQL script in a tenant's transaction (what `tenantry exec`
/// runs per tenant): a single query, or a change with `RETURNING`, answers its rows as
/// JSON objects; anything else (DDL, several statements) runs as a script and answers
/// how many rows it changed. The SQL is the operator's own, trusted like `psql` input.
///
/// What is checked, from the server's state after the script ran and before anything
/// is kept (a failed check is an error, and the caller's transaction rolls back):
/// - every relation the transaction read, wrote or altered, whichever way (statements,
///   functions, triggers, rules), as PostgreSQL's lock table records it until the
///   transaction ends, lies outside `fence`: no other schema tenant's schema and not
///   the registry. A script that `SET search_path TO` another tenant's schema and
///   writes there is refused however it sets it back.
/// - the transaction is the one the script started in (no `COMMIT`/`ROLLBACK`), and
///   the role and the tenant setting are what they were.
///
/// Not checked: which tenant's rows a row tenant's script wrote in the shared tables.
/// Row-level security applies the tenant setting at each statement, so a script that
/// changes the setting to another tenant, writes, and sets it back is not caught: do
/// not give `tenantry exec` scripts you have not read for row tenants.
///
/// ```no_run
/// # async fn f(m: tenantry::TenantManager, mut tx: tenantry::TenantTx) -> Result<(), tenantry::Error> {
/// let fence = tenantry::admin::ScriptFence::new("tenantry", &m.list_tenants().await?);
/// let out = tenantry::admin::run_script(&mut tx, "SELECT id, name FROM projects", &fence).await?;
/// for row in out.rows.unwrap_or_default() {
///     println!("{row}");
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn run_script(
    tx: &mut crate::TenantTx,
    sql: &str,
    fence: &ScriptFence,
) -> Result<ScriptOutput, Error> {
    let out = run_unchecked(tx, sql).await?;
    let own = tx.tenant().schema().map(str::to_owned);
    let touched: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT n.nspname::text FROM pg_catalog.pg_locks l \
         JOIN pg_catalog.pg_class c ON c.oid = l.relation \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation' \
           AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                             WHERE datname = pg_catalog.current_database()) \
         ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    let foreign: Vec<&String> = touched
        .iter()
        .filter(|s| fence.schemas.contains(*s) && Some(*s) != own.as_ref())
        .collect();
    if !foreign.is_empty() {
        return Err(Error::Validation(format!(
            "the script run for tenant `{}` touched {}, which belong(s) to other tenants or \
             the registry: rolled back",
            tx.tenant().id,
            foreign
                .iter()
                .map(|s| format!("`{}`", s.escape_debug()))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(out)
}

async fn run_unchecked(tx: &mut crate::TenantTx, sql: &str) -> Result<ScriptOutput, Error> {
    let body = sql.trim().trim_end_matches(';').trim_end();
    // As rows first, behind a savepoint: a script that cannot be a CTE (DDL, several
    // statements, a change without RETURNING) fails at parse time, runs nowhere, and
    // is run as a script instead.
    sqlx::raw_sql("SAVEPOINT tenantry_exec")
        .execute(&mut *tx)
        .await?;
    let wrapped = format!("WITH t AS ({body}\n) SELECT to_jsonb(t)::text FROM t");
    match sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(wrapped))
        .fetch_all(&mut *tx)
        .await
    {
        Ok(rows) => {
            let rows = rows
                .iter()
                .map(|r| serde_json::from_str(r).unwrap_or(serde_json::Value::String(r.clone())))
                .collect::<Vec<_>>();
            sqlx::raw_sql("RELEASE SAVEPOINT tenantry_exec")
                .execute(&mut *tx)
                .await?;
            Ok(ScriptOutput {
                affected: rows.len() as u64,
                rows: Some(rows),
            })
        }
        // Only errors of parse analysis (nothing ran): a syntax error, or a change
        // without RETURNING, which a CTE cannot hold.
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("42601")
                || (e.code().as_deref() == Some("0A000") && e.message().contains("RETURNING")) =>
        {
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT tenantry_exec")
                .execute(&mut *tx)
                .await?;
            let before = binding_state(tx).await?;
            let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut *tx)
                .await?;
            // A script that ended the transaction (`COMMIT`, `ROLLBACK`) or changed
            // the role or tenant setting left the tenant's binding: refuse to go on.
            if binding_state(tx).await? != before {
                return Err(Error::Validation(
                    "the script ended its transaction or changed the role or the tenant \
                     setting: what it did after that was rolled back, what it did before a \
                     COMMIT may have been kept (run scripts without COMMIT, ROLLBACK, SET \
                     ROLE or set_config: each tenant's script is one transaction already)"
                        .to_owned(),
                ));
            }
            Ok(ScriptOutput {
                rows: None,
                affected: done.rows_affected(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// What a script must leave as it found it: the transaction, the role, the tenant.
async fn binding_state(
    tx: &mut crate::TenantTx,
) -> Result<(chrono::DateTime<chrono::Utc>, String, Option<String>), Error> {
    Ok(sqlx::query_as(
        "SELECT pg_catalog.transaction_timestamp(), current_user::text, \
         pg_catalog.current_setting('tenantry.tenant_id', true)",
    )
    .fetch_one(&mut *tx)
    .await?)
}

/// A server name: lowercase letters, digits, `_` and `-`, at most 40, not `default`.
fn check_server_name(name: &str) -> Result<(), Error> {
    let ok = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok || name == crate::servers::DEFAULT_SERVER {
        return Err(Error::Validation(format!(
            "server name `{}` must be 1 to 40 lowercase letters, digits, `_` or `-`, starting \
             with a letter, and not `default` (the registry's own server)",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// A server URL: a `postgres://` URL that parses, without a password.
fn check_server_url(url: &str) -> Result<(), Error> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::Validation(format!("server URL does not parse: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(Error::Validation(
            "server URL must start with postgres:// or postgresql://".to_owned(),
        ));
    }
    if parsed.password().is_some() || parsed.query_pairs().any(|(k, _)| k == "password") {
        return Err(Error::Validation(
            "server URL carries a password; the registry keeps none: leave it out and let \
             the server's auth, a passfile (~/.pgpass) or PGPASSWORD provide it, or configure \
             the server in the application (TenantManagerBuilder::server)"
                .to_owned(),
        ));
    }
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|e| Error::Validation(format!("server URL: {e}")))?;
    Ok(())
}
