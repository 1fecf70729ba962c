//! The lifecycle rules: validation, provisioning, transitions, deletion, migrations.
//! What differs per strategy is dispatched to [`crate::strategy`].

use crate::domain::Domain;
use crate::error::Error;
use crate::migrate::TenantMigrations;
use crate::naming::Names;
use crate::repository::TenantRepository;
use crate::servers::{DEFAULT_SERVER, Servers};
use crate::strategy::{Finding, Strategies};
use crate::tenant::{NewTenant, Strategy, Tenant, TenantId, TenantLimits, TenantStatus};

/// The tenant lifecycle over the registry: create, suspend, resume, delete and
/// migrate, with the rules each step must respect. Applications use it through
/// [`TenantManager`](crate::TenantManager), which adds caching, announcements to the
/// pools, and detached execution; operators reach it through
/// [`Admin`](crate::admin::Admin).
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    pub(crate) strategies: Strategies,
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

    /// The registry's Citus, if it is a coordinator: schema tenants become
    /// distributed schemas, database tenants are refused on it (see
    /// docs/ARCHITECTURE.md, "Citus").
    pub fn on_citus(mut self, citus: Option<std::sync::Arc<crate::citus::Citus>>) -> Self {
        self.strategies.citus = citus;
        self
    }

    /// Refuses what a Citus coordinator cannot hold: a database tenant on it.
    pub(crate) fn check_citus(&self, strategy: Strategy, server: &str) -> Result<(), Error> {
        if self.strategies.citus.is_some()
            && strategy == Strategy::Database
            && server == DEFAULT_SERVER
        {
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
            Domain::check(domain)?;
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
        let domain = Domain::parse(domain)?;
        let domain = domain.as_str();
        let mut tx = self.repository().pool().begin().await?;
        let current = self.locked(&mut tx, id).await?;
        self.repository().add_domain(&mut tx, id, domain).await?;
        if primary || current.domain.is_none() {
            self.repository()
                .set_primary_domain(&mut tx, id, Some(domain))
                .await?;
        }
        self.announce(tx, id).await
    }

    /// Removes `domain` from the tenant's domains. The primary domain goes only as the
    /// last one (409 otherwise: make another one primary first); a domain the tenant
    /// does not have is a 404.
    pub async fn remove_domain(&self, id: &TenantId, domain: &str) -> Result<Tenant, Error> {
        let domain = crate::tenant::normalized_domain(domain);
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
        let domain = crate::tenant::normalized_domain(domain);
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
    pub(crate) async fn live(&self, id: &TenantId) -> Result<Tenant, Error> {
        self.repository()
            .find(id)
            .await?
            .filter(|t| t.status != TenantStatus::Deleted)
            .ok_or_else(|| Error::TenantNotFound(id.clone()))
    }

    /// What each strategy finds wrong among `tenants` and on the registry's server.
    pub async fn doctor(&self, tenants: &[Tenant]) -> Result<Vec<Finding>, Error> {
        self.strategies.doctor(tenants).await
    }
}
