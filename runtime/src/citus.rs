//! Tenants on a Citus cluster, the registry on its coordinator.
//!
//! - **Detection** at start ([`detect`]): the `citus` extension on the registry's
//!   server, and its workers. The manager says so in its log.
//! - **Schema tenants** become distributed schemas (schema-based sharding): the schema
//!   is built on the coordinator as usual (cloned from the template, which stays a
//!   plain local schema, as does the control schema), then `citus_schema_distribute`
//!   places it on a worker, in the same transaction as its registry row.
//! - **Row tenants**' shared tables are distributed by `tenant_id` (by the
//!   application's migrations: [`distribute_rows`]); their policies use no subquery
//!   (Citus refuses subqueries in policies of distributed tables), and their
//!   connections are bound per transaction with `SET LOCAL`, which the coordinator
//!   forwards to the workers (`citus.propagate_set_commands = 'local'`); a session
//!   `SET` is not forwarded, and a row tenant bound that way would read nothing.
//! - **Database tenants** cannot live on the coordinator (a database created there is
//!   not part of the cluster): they are refused there (422) and live on named servers.
//! - **Shared tables without `tenant_id`** (read by every tenant) become reference
//!   tables ([`reference_table`]): a copy on every worker, joined where the tenant is.
//! - **Placement** is Citus's: [`node_of`] reads it from Citus's metadata, and
//!   [`move_to_node`] moves a schema tenant (`citus_schema_move`) or a row tenant's
//!   rows (its own shard, isolated with `isolate_tenant_to_new_shard`, then
//!   `citus_move_shard_placement`), online: by logical replication where the tables
//!   allow it (writes go on), else with writes waiting ([`NodeTransfer`]).

use sqlx::{PgConnection, PgPool, Row};

use crate::error::Error;
use crate::naming::quote_ident;
use crate::tenant::{Strategy, Tenant};

/// Citus on the registry's server, as found at start ([`Admin::citus`](crate::admin::Admin::citus)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citus {
    /// The extension's version.
    pub version: String,
    /// The active worker nodes, `host:port`.
    pub workers: Vec<String>,
    /// How many connections the coordinator opens to each worker at most, for all its
    /// backends together (`citus.max_shared_pool_size`, 0 resolved to the
    /// coordinator's `max_connections`); `None`: no limit (-1).
    pub max_shared_pool_size: Option<i64>,
    /// The smallest `max_connections` less `superuser_reserved_connections` among the
    /// workers: the most connections a worker takes.
    pub worker_connections: Option<i64>,
}

impl Citus {
    /// Whether `budget` tenant connections of this process on the coordinator, each
    /// holding a connection to a worker per login it uses (`logins`: the app's login,
    /// and the row tenants' if they log in or act as another role), fit the workers'
    /// connection limits; the problem, if they do not. Citus caches one connection per
    /// worker, backend and login, and a router statement needs one; beyond the shared
    /// pool size statements wait for a connection, beyond a worker's `max_connections`
    /// they fail.
    pub fn connection_budget_problem(&self, budget: u32, logins: u32) -> Option<String> {
        let need = i64::from(budget) * i64::from(logins.max(1));
        let mut problems = Vec::new();
        if let Some(pool) = self.max_shared_pool_size
            && need > pool
        {
            problems.push(format!(
                "citus.max_shared_pool_size is {pool}: statements wait for a connection"
            ));
        }
        if let Some(worker) = self.worker_connections
            && need > worker
        {
            problems.push(format!(
                "a worker takes {worker} connections: statements fail"
            ));
        }
        if problems.is_empty() {
            return None;
        }
        Some(format!(
            "{budget} tenant connections on the coordinator x {logins} login(s) may hold {need} \
             connections to a worker, and {}; lower PoolConfig::max_connections or raise the \
             workers' limits (with N app instances, N times as many)",
            problems.join(", and ")
        ))
    }
}

/// Citus on the registry's server, if it is installed there (`CREATE EXTENSION
/// citus`) and the server is the cluster's coordinator.
pub async fn detect(pool: &PgPool) -> Result<Option<Citus>, Error> {
    let version: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
            .fetch_optional(pool)
            .await?;
    let Some(version) = version else {
        return Ok(None);
    };
    let workers: Vec<String> = sqlx::query_scalar(
        "SELECT node_name || ':' || node_port FROM citus_get_active_worker_nodes() ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let max_shared_pool_size: i64 = sqlx::query_scalar(
        "SELECT CASE s.setting::bigint WHEN 0 THEN m.setting::bigint ELSE s.setting::bigint END
         FROM pg_settings s, pg_settings m
         WHERE s.name = 'citus.max_shared_pool_size' AND m.name = 'max_connections'",
    )
    .fetch_optional(pool)
    .await?
    .unwrap_or(-1);
    // A worker that does not answer is left out (it shows up as 503s, not here).
    let worker_connections: Option<i64> = sqlx::query_scalar(
        "SELECT min(result::bigint) FROM run_command_on_workers(
             $$SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'max_connections')
                    - (SELECT setting::bigint FROM pg_settings
                       WHERE name = 'superuser_reserved_connections')$$)
         WHERE success",
    )
    .fetch_one(pool)
    .await?;
    Ok(Some(Citus {
        version,
        workers,
        max_shared_pool_size: (max_shared_pool_size >= 0).then_some(max_shared_pool_size),
        worker_connections,
    }))
}

/// Whether `conn`'s server has the `citus` extension.
pub(crate) async fn installed(conn: &mut PgConnection) -> Result<bool, Error> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
            .fetch_one(conn)
            .await?,
    )
}

/// Makes the schema `schema` (built in the caller's transaction) a distributed schema:
/// Citus places it, with its tables and rows, on a worker. Within the caller's
/// transaction: rolled back with it.
pub(crate) async fn distribute_schema(conn: &mut PgConnection, schema: &str) -> Result<(), Error> {
    sqlx::query("SELECT citus_schema_distribute($1::regnamespace)")
        .bind(quote_ident(schema))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Distributes a shared table of row tenants by `tenant_id`, co-located with the
/// other shared tables; a table distributed already is left as it is. For the
/// application's migrations on a Citus coordinator (before [`crate::strategy::install_rls`]).
///
/// ```no_run
/// # async fn f(conn: &mut sqlx::PgConnection) -> Result<(), tenantry::Error> {
/// tenantry::strategy::distribute_rows(conn, "shared.projects").await?;
/// tenantry::strategy::install_rls(conn, "shared.projects", "tenant_id").await?;
/// # Ok(()) }
/// ```
pub async fn distribute_rows(conn: &mut PgConnection, table: &str) -> Result<(), Error> {
    let done: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await?;
    if !done {
        sqlx::query(
            "SELECT create_distributed_table($1::regclass, 'tenant_id', colocate_with => 'default')",
        )
        .bind(table)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Makes a table every tenant shares read-mostly data from (one without a
/// `tenant_id` column: plans, currencies, feature flags) a Citus reference table: a
/// copy on every worker, so that a tenant's statements join it on the node holding
/// the tenant (still one router task). A reference table already is left as it is;
/// a table Citus distributes otherwise, or one with a `tenant_id` column is refused
/// (422: the latter holds tenants'
/// rows, distribute it with [`distribute_rows`]). For the application's migrations on
/// a Citus coordinator.
///
/// ```no_run
/// # async fn f(conn: &mut sqlx::PgConnection) -> Result<(), tenantry::Error> {
/// tenantry::strategy::reference_table(conn, "shared.plans").await?;
/// # Ok(()) }
/// ```
pub async fn reference_table(conn: &mut PgConnection, table: &str) -> Result<(), Error> {
    let row = sqlx::query(
        "SELECT (SELECT partmethod::text || repmodel::text FROM pg_dist_partition
                 WHERE logicalrelid = $1::regclass) AS kind,
                EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass
                        AND attname = 'tenant_id' AND NOT attisdropped) AS per_tenant",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await?;
    if row.try_get::<bool, _>("per_tenant")? {
        return Err(Error::Unprocessable(format!(
            "`{}` has a tenant_id column: its rows belong to tenants, so it is distributed \
             by tenant_id (strategy::distribute_rows), not copied to every node",
            table.escape_debug()
        )));
    }
    match row.try_get::<Option<String>, _>("kind")?.as_deref() {
        None => {
            sqlx::query("SELECT create_reference_table($1::regclass)")
                .bind(table)
                .execute(&mut *conn)
                .await?;
        }
        // A reference table already: no partition column, replicated by 2PC.
        Some("nt") => {}
        Some(_) => {
            return Err(Error::Unprocessable(format!(
                "`{}` is a distributed or Citus local table already; undistribute it \
                 (undistribute_table) before making it a reference table",
                table.escape_debug()
            )));
        }
    }
    Ok(())
}

/// The node (`host:port`) holding the tenant's data, from Citus's metadata: its
/// schema's shards, or the shard of its id in the first distributed shared table.
pub async fn node_of(pool: &PgPool, tenant: &Tenant) -> Result<Option<String>, Error> {
    let node = match tenant.strategy {
        Strategy::Schema => {
            sqlx::query_scalar(
                "SELECT s.nodename || ':' || s.nodeport FROM citus_shards s
                 JOIN pg_class c ON c.oid = s.table_name
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 ORDER BY s.shardid LIMIT 1",
            )
            .bind(&tenant.storage)
            .fetch_optional(pool)
            .await?
        }
        Strategy::Row => {
            let Some(table) = first_distributed(pool).await? else {
                return Ok(None);
            };
            sqlx::query_scalar(
                "SELECT nodename || ':' || nodeport FROM citus_shards
                 WHERE shardid = get_shard_id_for_distribution_column($1::regclass, $2)",
            )
            .bind(&table)
            .bind(tenant.id.as_str())
            .fetch_optional(pool)
            .await?
        }
        Strategy::Database => None,
    };
    Ok(node)
}

/// The first table distributed by `tenant_id` (the shared tables are co-located: one
/// shard of it holds the tenant's rows, its co-located shards the rest).
async fn first_distributed(pool: &PgPool) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT p.logicalrelid::regclass::text FROM pg_dist_partition p
         JOIN pg_attribute a ON a.attrelid = p.logicalrelid
          AND a.attnum = (SELECT k.attnum FROM pg_attribute k
                          WHERE k.attrelid = p.logicalrelid AND k.attname = 'tenant_id')
         WHERE p.partmethod = 'h' AND column_to_column_name(p.logicalrelid, p.partkey) = 'tenant_id'
         ORDER BY p.logicalrelid::regclass::text LIMIT 1",
    )
    .fetch_optional(pool)
    .await?)
}

/// How Citus copies a tenant's shards to another worker (`tenants move --to-node`,
/// [`MoveTo::Node`](crate::admin::MoveTo::Node)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeTransfer {
    /// Logical replication (`force_logical`): writes go on while the shards are
    /// copied and caught up; they wait only for the switch at the end. Needs
    /// `wal_level = logical` on the workers, and every table logged, with a replica
    /// identity (a primary key) and without row-level security (the replication
    /// applies changes as a role of Citus's own, which row-level security would
    /// refuse: Citus then waits forever for it to catch up).
    Logical,
    /// `block_writes`: writes wait (they are not refused) until the copy is done;
    /// reads go on. Works for every table.
    BlockWrites,
}

impl NodeTransfer {
    fn citus_mode(self) -> &'static str {
        match self {
            NodeTransfer::Logical => "force_logical",
            NodeTransfer::BlockWrites => "block_writes",
        }
    }
}

impl std::fmt::Display for NodeTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeTransfer::Logical => "logical",
            NodeTransfer::BlockWrites => "block-writes",
        })
    }
}

/// Why a schema tenant's tables cannot move by logical replication, if they cannot:
/// a worker without `wal_level = logical`, a table without a replica identity, an
/// unlogged table, or one under row-level security.
async fn logical_obstacle(pool: &PgPool, schema: &str) -> Result<Option<String>, Error> {
    let not_logical: Option<String> = sqlx::query_scalar(
        "SELECT nodename || ':' || nodeport FROM run_command_on_workers('SHOW wal_level')
         WHERE NOT success OR result <> 'logical' ORDER BY 1 LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(node) = not_logical {
        return Ok(Some(format!(
            "worker {node} does not run with wal_level = logical"
        )));
    }
    Ok(sqlx::query_scalar(
        "SELECT format('%I.%I %s', n.nspname, c.relname,
                CASE WHEN c.relrowsecurity THEN 'has row-level security'
                     WHEN c.relpersistence = 'u' THEN 'is unlogged'
                     ELSE 'has no replica identity (primary key)' END)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
           AND (c.relrowsecurity
                OR c.relpersistence = 'u'
                OR NOT (c.relreplident = 'f'
                        OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i
                              WHERE i.indrelid = c.oid AND i.indisprimary AND i.indisvalid))
                        OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i
                              WHERE i.indrelid = c.oid AND i.indisreplident AND i.indisvalid))))
         ORDER BY c.relname LIMIT 1",
    )
    .bind(schema)
    .fetch_optional(pool)
    .await?)
}

/// Moves the tenant's data to the worker `host:port`, online: the tenant serves
/// throughout. `transfer` says how ([`NodeTransfer`]); `None` chooses: logical
/// replication for a schema tenant whose tables allow it, else `block_writes`; a row
/// tenant's shared tables are under row-level security, so its rows always move with
/// `block_writes`. A schema tenant: `citus_schema_move`. A row tenant: its rows get
/// shards of their own (`isolate_tenant_to_new_shard`, cascading to the co-located
/// tables), which then move. A database tenant, a node that is not an active worker,
/// or logical replication asked for where it cannot work: 422. Returns the node the
/// tenant is on now and how it moved.
pub async fn move_to_node(
    pool: &PgPool,
    tenant: &Tenant,
    node: &str,
    transfer: Option<NodeTransfer>,
) -> Result<(String, NodeTransfer), Error> {
    let (host, port) = node
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<i32>().ok()?)))
        .ok_or_else(|| {
            Error::Validation(format!(
                "`{}` is not HOST:PORT of a Citus worker",
                node.escape_debug()
            ))
        })?;
    if tenant.strategy == Strategy::Database {
        return Err(Error::Unprocessable(format!(
            "tenant `{}` is a database tenant: it lives on a named server, not on a \
             Citus worker (move it with --to-server)",
            tenant.id
        )));
    }
    let active: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM citus_get_active_worker_nodes()
                        WHERE node_name = $1 AND node_port = $2)",
    )
    .bind(&host)
    .bind(port)
    .fetch_one(pool)
    .await?;
    if !active {
        return Err(Error::Unprocessable(format!(
            "`{node}` is not an active worker of this Citus cluster"
        )));
    }
    let now = node_of(pool, tenant).await?;
    if now.as_deref() == Some(node) {
        return Err(Error::Unprocessable(format!(
            "tenant `{}` is on `{node}` already",
            tenant.id
        )));
    }
    let obstacle = match tenant.strategy {
        Strategy::Schema => logical_obstacle(pool, &tenant.storage).await?,
        _ => Some("the row tenants' shared tables have row-level security".to_owned()),
    };
    let transfer = match (transfer, obstacle) {
        (Some(NodeTransfer::Logical), Some(why)) => {
            return Err(Error::Unprocessable(format!(
                "tenant `{}` cannot move by logical replication: {why}; move it with \
                 `--transfer block-writes` (writes wait for the copy)",
                tenant.id
            )));
        }
        (Some(t), _) => t,
        (None, None) => NodeTransfer::Logical,
        (None, Some(_)) => NodeTransfer::BlockWrites,
    };
    let mode = transfer.citus_mode();
    match tenant.strategy {
        Strategy::Schema => {
            sqlx::query(
                "SELECT citus_schema_move($1::regnamespace, $2, $3, \
                 shard_transfer_mode => $4::citus.shard_transfer_mode)",
            )
            .bind(quote_ident(&tenant.storage))
            .bind(&host)
            .bind(port)
            .bind(mode)
            .execute(pool)
            .await?;
        }
        _ => {
            let table = first_distributed(pool).await?.ok_or_else(|| {
                Error::Unprocessable("no shared table is distributed by tenant_id".to_owned())
            })?;
            let mut conn = pool.acquire().await?;
            let shard: i64 =
                sqlx::query_scalar("SELECT get_shard_id_for_distribution_column($1::regclass, $2)")
                    .bind(&table)
                    .bind(tenant.id.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
            // A shard of its own, unless it has one already (its hash range is one value).
            let alone: bool = sqlx::query_scalar(
                "SELECT shardminvalue = shardmaxvalue FROM pg_dist_shard WHERE shardid = $1",
            )
            .bind(shard)
            .fetch_one(&mut *conn)
            .await?;
            let shard = if alone {
                shard
            } else {
                sqlx::query_scalar(
                    "SELECT isolate_tenant_to_new_shard($1::regclass, $2, 'CASCADE', \
                     shard_transfer_mode => $3::citus.shard_transfer_mode)",
                )
                .bind(&table)
                .bind(tenant.id.as_str())
                .bind(mode)
                .fetch_one(&mut *conn)
                .await?
            };
            let from = sqlx::query(
                "SELECT nodename, nodeport FROM citus_shards WHERE shardid = $1 LIMIT 1",
            )
            .bind(shard)
            .fetch_one(&mut *conn)
            .await?;
            let (from_host, from_port): (String, i32) =
                (from.try_get("nodename")?, from.try_get("nodeport")?);
            sqlx::query(
                "SELECT citus_move_shard_placement($1, $2, $3, $4, $5, \
                 shard_transfer_mode => $6::citus.shard_transfer_mode)",
            )
            .bind(shard)
            .bind(&from_host)
            .bind(from_port)
            .bind(&host)
            .bind(port)
            .bind(mode)
            .execute(&mut *conn)
            .await?;
        }
    }
    let now = node_of(pool, tenant)
        .await?
        .unwrap_or_else(|| node.to_owned());
    Ok((now, transfer))
}

#[cfg(test)]
mod tests {
    use super::Citus;

    #[test]
    fn the_connection_budget_is_checked_against_the_workers_limits() {
        let citus = Citus {
            version: "13.2-1".into(),
            workers: vec!["w1:5432".into()],
            max_shared_pool_size: Some(100),
            worker_connections: Some(150),
        };
        assert_eq!(citus.connection_budget_problem(25, 2), None);
        assert_eq!(citus.connection_budget_problem(50, 2), None);
        let waits = citus.connection_budget_problem(51, 2).unwrap();
        assert!(waits.contains("102 connections"), "{waits}");
        assert!(waits.contains("max_shared_pool_size is 100"), "{waits}");
        assert!(!waits.contains("fail"), "{waits}");
        let fails = citus.connection_budget_problem(80, 2).unwrap();
        assert!(fails.contains("statements fail"), "{fails}");
        let unlimited = Citus {
            max_shared_pool_size: None,
            worker_connections: None,
            ..citus
        };
        assert_eq!(unlimited.connection_budget_problem(1000, 2), None);
    }

    #[test]
    fn a_node_is_host_and_port() {
        let parse = |n: &str| {
            n.rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<i32>().ok()?)))
        };
        assert_eq!(parse("10.0.0.5:5432"), Some(("10.0.0.5".into(), 5432)));
        assert_eq!(parse("nohost"), None);
        assert_eq!(parse("h:notaport"), None);
    }
}
