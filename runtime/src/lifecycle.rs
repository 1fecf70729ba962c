//! The lifecycle rules: validation, provisioning, transitions, deletion, migrations.
//! What differs per strategy is dispatched to [`crate::strategy`].

use crate::error::Error;
use crate::migrate::TenantMigrations;
use crate::naming::Names;
use crate::repository::TenantRepository;
use crate::servers::{DEFAULT_SERVER, Servers};
use crate::strategy::data::Snapshot;
use crate::strategy::{Finding, MoveReport, Strategies};
use crate::tenant::{NewTenant, Strategy, Tenant, TenantId, TenantLimits, TenantStatus};

/// The tenant lifecycle over the registry: create, suspend, resume, delete and
/// migrate, with the rules each step must respect. Applications use it through
/// [`TenantManager`](crate::TenantManager), which adds caching, announcements to the
/// pools, and detached execution; operators reach it through
/// [`Admin`](crate::admin::Admin).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    strategies: Strategies,
}

impl Lifecycle {
    /// A lifecycle over `repo` that provisions tenants with `migrations`.
    pub fn new(repo: TenantRepository, migrations: TenantMigrations) -> Self {
        Self {
            strategies: Strategies::new(repo, migrations),
        }
    }

    /// The servers `database` tenants can be placed on.
    pub fn with_servers(mut self, servers: Servers) -> Self {
        self.strategies.servers = servers;
        self
    }

    /// The prefix of tenant database names (default `tenant_`: tenant `acme-corp` gets
    /// the database `tenant_acme_corp`); the template database is `<prefix>_template`,
    /// a name no tenant id can produce. Lowercase letters, digits and `_`, at most 16.
    pub fn with_database_prefix(mut self, prefix: &str) -> Result<Self, Error> {
        self.strategies.names = Names::new(self.strategies.repo.control_schema(), prefix)?;
        Ok(self)
    }

    /// The database of a `database` tenant.
    pub fn database_name(&self, id: &TenantId) -> String {
        self.strategies.names.database(id)
    }

    /// The registry is a Citus coordinator: schema tenants become distributed schemas,
    /// database tenants are refused on it (see docs/ARCHITECTURE.md, "Citus").
    pub fn on_citus(mut self, yes: bool) -> Self {
        self.strategies.citus = yes;
        self
    }

    /// Refuses what a Citus coordinator cannot hold: a database tenant on it.
    fn check_citus(&self, strategy: Strategy, server: &str) -> Result<(), Error> {
        if self.strategies.citus && strategy == Strategy::Database && server == DEFAULT_SERVER {
            return Err(Error::Unprocessable(
                "the registry's server is a Citus coordinator, where a tenant database would \
                 not be part of the cluster: place database tenants on a named server \
                 (`--server NAME`), or use the schema or row strategy, which Citus distributes"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Whether new tenants are cloned from the template schema (the default) or get
    /// every migration replayed.
    pub fn provision_from_template(mut self, yes: bool) -> Self {
        self.strategies.from_template = yes;
        self
    }

    /// The registry.
    pub fn repository(&self) -> &TenantRepository {
        &self.strategies.repo
    }

    /// The tenant migrations.
    pub fn migrations(&self) -> &TenantMigrations {
        &self.strategies.migrations
    }

    /// Checks a new tenant's fields.
    pub fn validate(new: &NewTenant) -> Result<(), Error> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Error::Validation(
                "`name` must be 1 to 200 characters".to_owned(),
            ));
        }
        if new.name.chars().any(char::is_control) {
            return Err(Error::Validation(
                "`name` must not contain control characters".to_owned(),
            ));
        }
        if let Some(domain) = &new.domain {
            check_domain(domain)?;
        }
        Ok(())
    }

    /// Creates a tenant, all or nothing: if any step fails nothing is left behind
    /// (no registry row, schema, database or rows), and the id can be used again once
    /// the cause is fixed. How the tenant is provisioned depends on its strategy (see
    /// [`crate::strategy`]).
    pub async fn create(&self, new: &NewTenant) -> Result<Tenant, Error> {
        let new = &new.normalized();
        Self::validate(new)?;
        let server = new.server.as_deref().unwrap_or(DEFAULT_SERVER);
        if new.strategy != Strategy::Database && server != DEFAULT_SERVER {
            return Err(Error::Validation(format!(
                "only `database` tenants can be placed on another server than `{DEFAULT_SERVER}`"
            )));
        }
        self.check_citus(new.strategy, server)?;
        let tenant = self.strategies.provision(new, server, None).await?;
        tracing::info!(tenant = %tenant.id, strategy = %tenant.strategy, "tenant created");
        Ok(tenant)
    }

    /// The tenant `id` (not deleted), its registry row locked until `conn`'s
    /// transaction ends; [`Error::TenantNotFound`] otherwise.
    async fn locked(&self, conn: &mut sqlx::PgConnection, id: &TenantId) -> Result<Tenant, Error> {
        self.repository()
            .find_for_update(conn, id)
            .await?
            .filter(|t| t.status != TenantStatus::Deleted)
            .ok_or_else(|| Error::TenantNotFound(id.clone()))
    }

    /// Stores the tenant's limits and announces the change (every instance's cache
    /// and bindings follow within the change notification's delay). Out-of-range
    /// values are a 422, nothing stored.
    pub async fn set_limits(&self, id: &TenantId, limits: TenantLimits) -> Result<Tenant, Error> {
        limits.check().map_err(Error::Unprocessable)?;
        let mut tx = self.repository().pool().begin().await?;
        let tenant = self
            .repository()
            .set_limits(&mut tx, id, &limits)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        self.repository().notify(&mut tx, id).await?;
        tx.commit().await?;
        tracing::info!(tenant = %id, ?limits, "tenant limits changed");
        Ok(tenant)
    }

    /// Adds `domain` to the tenant's domains (idempotent); with `primary`, or if the
    /// tenant has no primary domain yet, it becomes the primary one. Another tenant's
    /// domain is a 409; a name that is not a public host name a 400/422.
    pub async fn add_domain(
        &self,
        id: &TenantId,
        domain: &str,
        primary: bool,
    ) -> Result<Tenant, Error> {
        let domain = normalize_domain(domain);
        check_domain(&domain)?;
        let mut tx = self.repository().pool().begin().await?;
        let current = self.locked(&mut tx, id).await?;
        self.repository().add_domain(&mut tx, id, &domain).await?;
        if primary || current.domain.is_none() {
            self.repository()
                .set_primary_domain(&mut tx, id, Some(&domain))
                .await?;
        }
        self.announce(tx, id).await
    }

    /// Removes `domain` from the tenant's domains. The primary domain goes only as the
    /// last one (409 otherwise: make another one primary first); a domain the tenant
    /// does not have is a 404.
    pub async fn remove_domain(&self, id: &TenantId, domain: &str) -> Result<Tenant, Error> {
        let domain = normalize_domain(domain);
        let mut tx = self.repository().pool().begin().await?;
        let current = self.locked(&mut tx, id).await?;
        if current.domain.as_deref() == Some(domain.as_str()) {
            if current.domains.len() > 1 {
                return Err(Error::Conflict(format!(
                    "`{domain}` is the primary domain of tenant `{id}`: make another of its \
                     domains primary first"
                )));
            }
            self.repository()
                .set_primary_domain(&mut tx, id, None)
                .await?;
        }
        if !self
            .repository()
            .remove_domain(&mut tx, id, &domain)
            .await?
        {
            return Err(Error::NotFound(format!(
                "tenant `{id}` has no domain `{}`",
                domain.escape_debug()
            )));
        }
        self.announce(tx, id).await
    }

    /// Makes `domain`, one of the tenant's domains, its primary one (404 otherwise).
    pub async fn set_primary_domain(&self, id: &TenantId, domain: &str) -> Result<Tenant, Error> {
        let domain = normalize_domain(domain);
        let mut tx = self.repository().pool().begin().await?;
        let current = self.locked(&mut tx, id).await?;
        if !current.domains.contains(&domain) {
            return Err(Error::NotFound(format!(
                "tenant `{id}` has no domain `{}`: add it first",
                domain.escape_debug()
            )));
        }
        self.repository()
            .set_primary_domain(&mut tx, id, Some(&domain))
            .await?;
        self.announce(tx, id).await
    }

    /// Announces a change of tenant `id`, commits `tx`, and returns the tenant as
    /// committed.
    async fn announce(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        id: &TenantId,
    ) -> Result<Tenant, Error> {
        self.repository().notify(&mut tx, id).await?;
        let tenant = self
            .repository()
            .find_for_update(&mut tx, id)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        tx.commit().await?;
        tracing::info!(tenant = %id, domains = ?tenant.domains, primary = ?tenant.domain, "tenant domains changed");
        Ok(tenant)
    }

    /// `active -> suspended`. Suspending a suspended tenant changes nothing.
    pub async fn suspend(&self, id: &TenantId) -> Result<Tenant, Error> {
        self.transition(
            id,
            TenantStatus::Active,
            TenantStatus::Suspended,
            "only an active tenant can be suspended",
        )
        .await
    }

    /// `suspended -> active`. Resuming an active tenant changes nothing.
    pub async fn resume(&self, id: &TenantId) -> Result<Tenant, Error> {
        self.transition(
            id,
            TenantStatus::Suspended,
            TenantStatus::Active,
            "only a suspended tenant can be resumed",
        )
        .await
    }

    async fn transition(
        &self,
        id: &TenantId,
        from: TenantStatus,
        to: TenantStatus,
        message: &'static str,
    ) -> Result<Tenant, Error> {
        let mut tx = self.repository().pool().begin().await?;
        let current = self.locked(&mut tx, id).await?;
        if current.status == to {
            return Ok(current);
        }
        if current.status != from {
            return Err(Error::InvalidTransition {
                id: id.clone(),
                status: current.status,
                message,
            });
        }
        let tenant = self
            .repository()
            .set_status(Some(&mut tx), id, to)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        self.repository().notify(&mut tx, id).await?;
        tx.commit().await?;
        tracing::info!(tenant = %id, status = %to, "tenant status changed");
        Ok(tenant)
    }

    /// Deletes a suspended tenant: removes its data (drops its schema, or deletes its
    /// rows, in the same transaction as the `deleted` tombstone; drops its database on
    /// its server just before that transaction commits) and leaves the tombstone in
    /// the registry. Deletion is two-phase on purpose: suspend first, so no request
    /// is served while the data goes away.
    pub async fn delete(&self, id: &TenantId) -> Result<Tenant, Error> {
        let mut tx = self.repository().pool().begin().await?;
        let current = self.locked(&mut tx, id).await?;
        if current.status != TenantStatus::Suspended {
            return Err(Error::InvalidTransition {
                id: id.clone(),
                status: current.status,
                message: "suspend the tenant before deleting it",
            });
        }
        self.strategies.remove(&mut tx, &current).await?;
        // Its domains are free again and never lead to the tombstone.
        self.repository().remove_all_domains(&mut tx, id).await?;
        let tenant = self
            .repository()
            .set_status(Some(&mut tx), id, TenantStatus::Deleted)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        self.repository().notify(&mut tx, id).await?;
        tx.commit().await?;
        tracing::info!(tenant = %id, "tenant deleted");
        Ok(tenant)
    }

    /// Applies pending tenant migrations to one tenant, one transaction per version
    /// (its DDL and its record together), and returns the versions applied. A failure
    /// keeps the versions before it; a rerun resumes at the failed one. Concurrent
    /// runs on the same tenant wait for each other (the registry row is locked).
    pub async fn migrate(&self, id: &TenantId) -> Result<Vec<i64>, Error> {
        match self.repository().find(id).await? {
            Some(t) if t.status != TenantStatus::Deleted => self.strategies.migrate(&t).await,
            _ => Err(Error::TenantNotFound(id.clone())),
        }
    }

    /// The tenant `id`, not deleted.
    async fn live(&self, id: &TenantId) -> Result<Tenant, Error> {
        self.repository()
            .find(id)
            .await?
            .filter(|t| t.status != TenantStatus::Deleted)
            .ok_or_else(|| Error::TenantNotFound(id.clone()))
    }

    /// The tenant's data as a tenantry export: a manifest (its record, migration
    /// versions, tables with row counts and checksums, sequence positions) and one
    /// `COPY` block per table, read from one snapshot, whatever its strategy or
    /// server. [`Lifecycle::import`] reads it back, under any strategy and id.
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

    /// The tenant's schema and data as SQL (from `pg_dump`), read through `url`, a
    /// libpq URL of the registry's server: for people and `psql`, not for
    /// [`Lifecycle::import`].
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

    /// Creates a tenant from an [export](Lifecycle::export), all or nothing: under
    /// the exported id or `options.id`, with the exported strategy or
    /// `options.strategy` (a row tenant's export becomes a schema tenant and back),
    /// on `options.server` (database tenants). The tenant is provisioned as
    /// [`Lifecycle::create`] does, the data loaded and every table's row count and
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

    /// Lifts the write fence and change capture a move left behind when its process
    /// died (the tenant's writes get 503 until then; `tenantry doctor` reports them as
    /// `move-leftover`). Refused (409) while a move of the tenant runs. Returns
    /// whether anything was left.
    pub async fn recover_move(&self, id: &TenantId) -> Result<bool, Error> {
        let tenant = self.live(id).await?;
        let found = self.strategies.recover_move(&tenant).await?;
        tracing::info!(tenant = %id, found, "recovered from an interrupted move");
        Ok(found)
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
            if !self.strategies.citus {
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

    /// What each strategy finds wrong among `tenants` and on the registry's server.
    pub async fn doctor(&self, tenants: &[Tenant]) -> Result<Vec<Finding>, Error> {
        self.strategies.doctor(tenants).await
    }
}

/// Where [`Lifecycle::move_tenant`] takes a tenant: exactly one target per move.
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

/// How [`Lifecycle::import`] creates the tenant; every field defaults to the export's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The new tenant's id (default: the exported one).
    pub id: Option<TenantId>,
    /// Its strategy (default: the exported one).
    pub strategy: Option<Strategy>,
    /// Its server (database tenants; default `default`).
    pub server: Option<String>,
}

fn unhex(text: &str) -> Result<Vec<u8>, Error> {
    let bad = || {
        Error::Unprocessable(format!(
            "the export holds a checksum that is not hex: `{}`",
            text.escape_debug()
        ))
    };
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

/// Whether `domain` may name a tenant: a lowercase host name (no port, not an IP
/// address, not `localhost`), normalized already (trimmed, no trailing dot).
pub(crate) fn check_domain(domain: &str) -> Result<(), Error> {
    if domain.contains(':') {
        return Err(Error::Unprocessable(format!(
            "`domain` `{}` has a port or is an IPv6 address; give the bare host name",
            domain.escape_debug()
        )));
    }
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !ok {
        return Err(Error::Validation(format!(
            "`domain` `{}` is not a lowercase host name",
            domain.escape_debug()
        )));
    }
    // A host name that is an address or this machine would let a tenant claim
    // every request made by IP or to localhost.
    let last = domain.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Unprocessable(format!(
            "`domain` `{domain}` is an IP address; give the tenant a host name"
        )));
    }
    if domain == "localhost" || domain.ends_with(".localhost") {
        return Err(Error::Unprocessable(format!(
            "`domain` `{domain}` is a local name; give the tenant a public host name"
        )));
    }
    Ok(())
}

/// `domain` as stored: trimmed, lowercase, without a trailing dot.
pub(crate) fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}
