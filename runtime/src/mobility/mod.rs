//! Mobility: a tenant's data taken out of one place and put into another. The export
//! format ([`format`]), copying a tenant's tables whatever its strategy ([`copy`]),
//! and the online move ([`relocate`]) with what it needs while it runs: change
//! capture ([`capture`]), the write fence ([`fence`], and [`row_guard`] for row
//! tenants on a shared table), and recovery from a move whose process died.
//!
//! Floors: [`format`] and [`copy`] sit below the strategies (a strategy fills a new
//! tenant from a snapshot when it provisions an import or a move target), and
//! [`row_guard`] too (a row tenant's removal forgets its guard records); [`capture`],
//! [`fence`] and [`relocate`] sit above them, and this file (the lifecycle's
//! export, import and move operations) above the lifecycle.

pub(crate) mod capture;
pub(crate) mod copy;
pub(crate) mod fence;
pub(crate) mod format;
pub(crate) mod relocate;
pub(crate) mod row_guard;

pub use relocate::MoveReport;

use crate::error::Error;
use crate::lifecycle::Lifecycle;
use crate::servers::DEFAULT_SERVER;
use crate::tenant::{NewTenant, Strategy, Tenant, TenantId, TenantStatus};
use format::{Snapshot, unhex};

/// The names a move of `tenant` gives its objects: `tenantry_<kind>_<id>`, `-` as `_`.
fn move_name(kind: &str, tenant: &TenantId) -> String {
    format!("tenantry_{kind}_{}", tenant.as_str().replace('-', "_"))
}

impl Lifecycle {
    /// [`Admin::export`](crate::admin::Admin::export), whose documentation says what it does.
    pub async fn export(&self, id: &TenantId) -> Result<Vec<u8>, Error> {
        let tenant = self.live(id).await?;
        let snapshot = self.strategies.snapshot(&tenant).await?;
        let manifest = &snapshot.manifest;
        let header = format!(
            "tenantry export of tenant `{}` ({} strategy): {} tables, {} rows, taken {}\n\
             import: tenantry tenants import FILE [--as NEW_ID] [--strategy S] [--server NAME]",
            tenant.id,
            tenant.strategy,
            manifest.tables.len(),
            manifest.tables.iter().map(|t| t.rows).sum::<i64>(),
            chrono::Utc::now().to_rfc3339(),
        );
        snapshot.to_bytes(&header)
    }

    /// [`Admin::export_sql`](crate::admin::Admin::export_sql), whose documentation says what it does.
    pub async fn export_sql(&self, id: &TenantId, url: &str) -> Result<Vec<u8>, Error> {
        let tenant = self.live(id).await?;
        let header = format!(
            "-- tenantry export of tenant `{}` (strategy {}, {} {})\n-- registry record: {}\n\n",
            tenant.id,
            tenant.strategy,
            if tenant.strategy == Strategy::Database {
                "database"
            } else {
                "schema"
            },
            tenant.storage,
            serde_json::to_string(&tenant).map_err(|e| Error::Internal(e.to_string()))?
        );
        let mut body = header.into_bytes();
        body.extend(self.strategies.export(&tenant, url).await?);
        Ok(body)
    }

    /// [`Admin::import`](crate::admin::Admin::import), whose documentation says what it does.
    pub async fn import(&self, export: &[u8], options: ImportOptions) -> Result<Tenant, Error> {
        let snapshot = Snapshot::parse(export)?;
        let exported = &snapshot.manifest.tenant;
        let strategy = options.strategy.unwrap_or(exported.strategy);
        if exported.strategy != Strategy::Row && strategy != Strategy::Row {
            let mut applied = Vec::new();
            for m in &snapshot.manifest.migrations {
                applied.push((m.version, unhex(&m.checksum)?));
            }
            self.strategies.check_version("the export", &applied)?;
        }
        let new = NewTenant {
            id: options.id.unwrap_or_else(|| exported.id.clone()),
            name: exported.name.clone(),
            domain: None,
            strategy,
            server: options.server,
        }
        .normalized();
        Self::validate(&new)?;
        let server = new.server.as_deref().unwrap_or(DEFAULT_SERVER);
        if new.strategy != Strategy::Database && server != DEFAULT_SERVER {
            return Err(Error::Validation(format!(
                "only `database` tenants can be placed on another server than `{DEFAULT_SERVER}`"
            )));
        }
        self.check_citus(new.strategy, server)?;
        let tenant = self
            .strategies
            .provision(&new, server, Some(&snapshot))
            .await?;
        tracing::info!(tenant = %tenant.id, from = %exported.id, strategy = %tenant.strategy, "tenant imported");
        Ok(tenant)
    }

    /// [`Admin::recover_move`](crate::admin::Admin::recover_move), whose documentation says what it does.
    pub async fn recover_move(&self, id: &TenantId) -> Result<bool, Error> {
        let tenant = self.live(id).await?;
        let found = self.strategies.recover_move(&tenant).await?;
        tracing::info!(tenant = %id, found, "recovered from an interrupted move");
        Ok(found)
    }

    /// [`Admin::move_tenant`](crate::admin::Admin::move_tenant), whose documentation says what it does.
    pub async fn move_tenant(
        &self,
        id: &TenantId,
        to: MoveTo,
        grace: std::time::Duration,
    ) -> Result<MoveReport, Error> {
        let tenant = self.live(id).await?;
        if tenant.status == TenantStatus::Provisioning {
            return Err(Error::InvalidTransition {
                id: id.clone(),
                status: tenant.status,
                message: "a tenant is moved once it is provisioned",
            });
        }
        let node_move = match &to {
            MoveTo::Node(node) => Some((node, None)),
            MoveTo::NodeWith(node, transfer) => Some((node, Some(*transfer))),
            _ => None,
        };
        if let Some((node, transfer)) = node_move {
            if self.strategies.citus.is_none() {
                return Err(Error::Unprocessable(format!(
                    "--to-node moves tenants between Citus workers, and the registry's server \
                     is not a Citus coordinator; tenant `{id}` was left where it is"
                )));
            }
            let started = std::time::Instant::now();
            let (node, transfer) = self
                .strategies
                .while_moving(
                    id,
                    crate::citus::move_to_node(self.repository().pool(), &tenant, node, transfer),
                )
                .await?;
            tracing::info!(tenant = %id, node, %transfer, "tenant moved to another Citus worker");
            let mut tx = self.repository().pool().begin().await?;
            self.repository().notify(&mut tx, id).await?;
            tx.commit().await?;
            return Ok(MoveReport {
                tenant: tenant.clone(),
                from_strategy: tenant.strategy,
                from_server: tenant.server.clone(),
                tables: 0,
                rows: 0,
                rows_caught_up: 0,
                write_pause_ms: 0,
                total_ms: started.elapsed().as_millis() as u64,
                old_place_dropped: true,
                node: Some(node),
                transfer: Some(transfer),
            });
        }
        let (strategy, server) = match to {
            MoveTo::Strategy(Strategy::Database) if tenant.strategy == Strategy::Database => {
                (Strategy::Database, tenant.server.clone())
            }
            MoveTo::Strategy(strategy) => (strategy, DEFAULT_SERVER.to_owned()),
            MoveTo::Node(_) | MoveTo::NodeWith(..) => unreachable!("handled above"),
            MoveTo::Server(server) => {
                if tenant.strategy != Strategy::Database {
                    return Err(Error::Unprocessable(format!(
                        "tenant `{id}` is a {} tenant; only database tenants live on named \
                         servers: move it with `--to-strategy database` first",
                        tenant.strategy
                    )));
                }
                self.strategies.servers.get(&server)?;
                (Strategy::Database, server)
            }
        };
        self.check_citus(strategy, &server)?;
        if strategy == tenant.strategy && server == tenant.server {
            return Err(Error::Unprocessable(format!(
                "tenant `{id}` is a {strategy} tenant on server `{server}` already"
            )));
        }
        let report = self
            .strategies
            .relocate(&tenant, strategy, &server, grace)
            .await?;
        tracing::info!(tenant = %id, from = %tenant.strategy, to = %strategy, server, write_pause_ms = report.write_pause_ms, rows = report.rows, "tenant moved");
        Ok(report)
    }
}

/// Where [`Admin::move_tenant`](crate::admin::Admin::move_tenant) takes a tenant: exactly one target per move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveTo {
    /// Another strategy (a database tenant moved this way stays on its server;
    /// others land on the registry's server).
    Strategy(Strategy),
    /// Another named server (database tenants).
    Server(String),
    /// Another Citus worker, `host:port` (a Citus coordinator's schema and row
    /// tenants), copied the way that suits the tenant: logical replication for a
    /// schema tenant whose tables allow it, else `block_writes` (see
    /// [`NodeTransfer`](crate::admin::NodeTransfer)).
    Node(String),
    /// Another Citus worker, copied the way given (422 if the tenant's tables do not
    /// allow it).
    NodeWith(String, crate::citus::NodeTransfer),
}

/// How [`Admin::import`](crate::admin::Admin::import) creates the tenant; every field defaults to the export's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The new tenant's id (default: the exported one).
    pub id: Option<TenantId>,
    /// Its strategy (default: the exported one).
    pub strategy: Option<Strategy>,
    /// Its server (database tenants; default `default`).
    pub server: Option<String>,
}
