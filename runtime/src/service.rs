//! The rules: validation, provisioning, lifecycle transitions, migrations.

use crate::database;
use crate::error::Error;
use crate::migrate::TenantMigrations;
use crate::pool::{DEFAULT_SERVER, Servers};
use crate::repository::TenantRepository;
use crate::strategy;
use crate::template;
use crate::tenant::{NewTenant, Strategy, Tenant, TenantId, TenantStatus};

/// Tenant business logic over a [`TenantRepository`]. Most applications use it
/// through [`TenantManager`](crate::TenantManager), which adds caching and pools.
#[derive(Debug, Clone)]
pub struct TenantService {
    repo: TenantRepository,
    migrations: TenantMigrations,
    from_template: bool,
    servers: Servers,
    database_prefix: String,
    /// The template verified (or built) by this service, with its clone script.
    template: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<template::Template>>>>,
}

impl TenantService {
    /// A service over `repo` that provisions tenants with `migrations`.
    pub fn new(repo: TenantRepository, migrations: TenantMigrations) -> Self {
        Self {
            repo,
            migrations,
            from_template: true,
            servers: Servers::default(),
            database_prefix: "tenant_".to_owned(),
            template: Default::default(),
        }
    }

    /// The servers `database` tenants can be placed on.
    pub fn with_servers(mut self, servers: Servers) -> Self {
        self.servers = servers;
        self
    }

    /// The prefix of tenant database names (default `tenant_`: tenant `acme-corp` gets
    /// the database `tenant_acme_corp`); the template database is `<prefix>_template`,
    /// a name no tenant id can produce. Lowercase letters, digits and `_`, at most 16.
    pub fn with_database_prefix(mut self, prefix: &str) -> Result<Self, Error> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 16
            && prefix.as_bytes()[0].is_ascii_lowercase()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::Validation(format!(
                "database prefix `{}` must be 1-16 lowercase letters, digits or `_`, starting with a letter",
                prefix.escape_debug()
            )));
        }
        self.database_prefix = prefix.to_owned();
        Ok(self)
    }

    /// The database of a `database` tenant.
    pub fn database_name(&self, id: &TenantId) -> String {
        format!("{}{}", self.database_prefix, id.as_str().replace('-', "_"))
    }

    /// Whether new tenants are cloned from the template schema (the default) or get
    /// every migration replayed.
    pub fn provision_from_template(mut self, yes: bool) -> Self {
        self.from_template = yes;
        self
    }

    /// The registry.
    pub fn repository(&self) -> &TenantRepository {
        &self.repo
    }

    /// The tenant migrations.
    pub fn migrations(&self) -> &TenantMigrations {
        &self.migrations
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
        }
        Ok(())
    }

    /// Creates a tenant: registry row, schema and tenant migrations in one
    /// transaction. If any step fails nothing is left behind, and the id can be
    /// used again once the cause is fixed. The schema is cloned from the template
    /// (see [`crate::template`]) unless that is turned off or not possible, in which
    /// case the migrations are replayed.
    pub async fn create(&self, new: &NewTenant) -> Result<Tenant, Error> {
        let new = &new.normalized();
        Self::validate(new)?;
        let server = new.server.as_deref().unwrap_or(DEFAULT_SERVER);
        match new.strategy {
            Strategy::Row | Strategy::Schema if server != DEFAULT_SERVER => {
                return Err(Error::Validation(format!(
                    "only `database` tenants can be placed on another server than `{DEFAULT_SERVER}`"
                )));
            }
            Strategy::Row => return self.create_row_tenant(new).await,
            Strategy::Database => return self.create_database_tenant(new, server).await,
            Strategy::Schema => {}
        }
        let template = if self.from_template && !self.migrations.versions().is_empty() {
            Some(self.template().await?)
        } else {
            None
        };
        let mut tx = self.repo.pool().begin().await?;
        self.repo.purge_deleted(&mut tx, &new.id).await?;
        self.repo
            .insert(
                &mut tx,
                new,
                TenantStatus::Provisioning,
                &new.id.schema_name(),
            )
            .await?;
        strategy::create_schema(&mut tx, &new.id).await?;
        let cloned = match &template {
            Some(t) => template::clone_into(&mut tx, t, &new.id.schema_name()).await?,
            None => false,
        };
        if cloned {
            self.record_all_versions(&mut tx, &new.id).await?;
        } else {
            strategy::set_local_search_path(&mut tx, &new.id).await?;
            self.migrations
                .apply_in(&mut tx, &self.repo, &new.id)
                .await?;
        }
        let tenant = self.activate(tx, &new.id).await?;
        tracing::info!(tenant = %tenant.id, "tenant created");
        Ok(tenant)
    }

    /// Records every version of the source as applied to `id` (a tenant made from a
    /// template that holds them all).
    async fn record_all_versions(
        &self,
        conn: &mut sqlx::PgConnection,
        id: &TenantId,
    ) -> Result<(), Error> {
        for version in self.migrations.versions() {
            self.migrations
                .record(conn, &self.repo, id, version)
                .await?;
        }
        Ok(())
    }

    /// Marks a provisioned tenant `active`, announces it, and commits `tx`.
    async fn activate(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        id: &TenantId,
    ) -> Result<Tenant, Error> {
        let tenant = self
            .repo
            .set_status(Some(&mut tx), id, TenantStatus::Active)
            .await?
            .ok_or_else(|| Error::Registry("the new tenant row vanished".to_owned()))?;
        self.repo.notify(&mut tx, id).await?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// A database tenant: registry row, `CREATE DATABASE` from the server's template
    /// database, then versions and `active`; on failure the database is dropped and
    /// the row removed (`CREATE DATABASE` cannot join a transaction).
    async fn create_database_tenant(
        &self,
        new: &NewTenant,
        server_name: &str,
    ) -> Result<Tenant, Error> {
        let server = self.servers.get(server_name)?.clone();
        let template = database::ensure_template(
            &self.repo,
            &self.migrations,
            server_name,
            &server,
            &format!("{}_template", self.database_prefix),
        )
        .await?;
        let mut tx = self.repo.pool().begin().await?;
        self.repo.purge_deleted(&mut tx, &new.id).await?;
        let db = self.database_name(&new.id);
        self.repo
            .insert(&mut tx, new, TenantStatus::Provisioning, &db)
            .await?;
        tx.commit().await?;
        // Only what this attempt made is ever dropped: `created` turns true once
        // `CREATE DATABASE` succeeded, never for a database that existed before.
        let mut created = false;
        let finished = async {
            database::create(&server, &db, &template).await?;
            created = true;
            let mut tx = self.repo.pool().begin().await?;
            self.record_all_versions(&mut tx, &new.id).await?;
            self.activate(tx, &new.id).await
        }
        .await;
        match finished {
            Ok(tenant) => {
                tracing::info!(tenant = %tenant.id, server = server_name, "database tenant created");
                Ok(tenant)
            }
            Err(e) => {
                if created && let Err(cleanup) = database::drop(&server, &db).await {
                    tracing::error!(tenant = %new.id, error = %cleanup, "could not drop a half-made tenant database; `tenantry doctor` lists it");
                }
                let _ = self.repo.delete_provisioning(&new.id).await;
                Err(e)
            }
        }
    }

    /// A row-strategy tenant is a registry row: its data lives in shared tables.
    async fn create_row_tenant(&self, new: &NewTenant) -> Result<Tenant, Error> {
        let mut tx = self.repo.pool().begin().await?;
        self.repo.purge_deleted(&mut tx, &new.id).await?;
        // Rows of this id that nobody deleted (written by hand, or by another app
        // under the same id) would become the new tenant's: refuse.
        if let Some(table) =
            strategy::table_with_rows_of(&mut tx, self.repo.control_schema(), &new.id).await?
        {
            return Err(Error::Conflict(format!(
                "`{table}` already holds rows with tenant_id `{}` that were not made for this \
                 tenant; they were left untouched",
                new.id
            )));
        }
        let tenant = self
            .repo
            .insert(&mut tx, new, TenantStatus::Active, &new.id.schema_name())
            .await?;
        self.repo.notify(&mut tx, &new.id).await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant.id, strategy = "row", "tenant created");
        Ok(tenant)
    }

    /// The template for the current migrations: checked (or built) once per service,
    /// then reused with its clone script.
    async fn template(&self) -> Result<std::sync::Arc<template::Template>, Error> {
        let fingerprint = self.migrations.fingerprint();
        let cached = self
            .template
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|t| t.fingerprint == fingerprint);
        if let Some(t) = cached {
            return Ok(t);
        }
        let t = std::sync::Arc::new(template::ensure_template(&self.repo, &self.migrations).await?);
        *self.template.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
        Ok(t)
    }

    /// The tenant `id` (not deleted), its registry row locked until `conn`'s
    /// transaction ends; [`Error::TenantNotFound`] otherwise.
    async fn locked(&self, conn: &mut sqlx::PgConnection, id: &TenantId) -> Result<Tenant, Error> {
        self.repo
            .find_for_update(conn, id)
            .await?
            .filter(|t| t.status != TenantStatus::Deleted)
            .ok_or_else(|| Error::TenantNotFound(id.clone()))
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
        let mut tx = self.repo.pool().begin().await?;
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
            .repo
            .set_status(Some(&mut tx), id, to)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        self.repo.notify(&mut tx, id).await?;
        tx.commit().await?;
        tracing::info!(tenant = %id, status = %to, "tenant status changed");
        Ok(tenant)
    }

    /// Deletes a suspended tenant: drops its schema and leaves a `deleted` tombstone in
    /// the registry, in one transaction. Deletion is two-phase on purpose: suspend
    /// first, so no request is served while the data goes away.
    pub async fn delete(&self, id: &TenantId) -> Result<Tenant, Error> {
        let mut tx = self.repo.pool().begin().await?;
        let current = self.locked(&mut tx, id).await?;
        if current.status != TenantStatus::Suspended {
            return Err(Error::InvalidTransition {
                id: id.clone(),
                status: current.status,
                message: "suspend the tenant before deleting it",
            });
        }
        match current.strategy {
            Strategy::Schema => strategy::drop_schema(&mut tx, id).await?,
            Strategy::Database => {
                let server = self.servers.get(&current.server)?;
                database::drop(server, &current.schema_name).await?;
            }
            Strategy::Row => {
                strategy::delete_rows(&mut tx, self.repo.control_schema(), id).await?;
            }
        }
        let tenant = self
            .repo
            .set_status(Some(&mut tx), id, TenantStatus::Deleted)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        self.repo.notify(&mut tx, id).await?;
        tx.commit().await?;
        tracing::info!(tenant = %id, "tenant deleted");
        Ok(tenant)
    }

    /// Applies pending tenant migrations to one tenant, one transaction per version
    /// (its DDL and its record together), and returns the versions applied. A failure
    /// keeps the versions before it; a rerun resumes at the failed one. Concurrent
    /// runs on the same tenant wait for each other (the registry row is locked).
    pub async fn migrate(&self, id: &TenantId) -> Result<Vec<i64>, Error> {
        match self.repo.find(id).await? {
            // Row tenants share tables; the application migrates those itself.
            Some(t) if t.strategy == Strategy::Row => return Ok(Vec::new()),
            Some(t) if t.strategy == Strategy::Database => {
                let server = self.servers.get(&t.server)?;
                let applied = database::migrate(server, &t.schema_name, &self.migrations).await?;
                let mut tx = self.repo.pool().begin().await?;
                for &version in &applied {
                    self.migrations
                        .record(&mut tx, &self.repo, id, version)
                        .await?;
                }
                tx.commit().await?;
                return Ok(applied);
            }
            _ => {}
        }
        let done = {
            let mut conn = self.repo.pool().acquire().await?;
            self.repo.applied_migrations(&mut conn, id).await?
        };
        let (pending, drift) = self.migrations.compare(&done);
        if let Some(d) = drift.first() {
            return Err(Error::Migration(format!("tenant `{id}` has drifted: {d}")));
        }
        let mut applied = Vec::new();
        for version in pending {
            let mut tx = self.repo.pool().begin().await?;
            let tenant = self.locked(&mut tx, id).await?;
            // Another run may have applied it while this one waited for the lock.
            let now = self.repo.applied_migrations(&mut tx, id).await?;
            if now.iter().any(|(v, _)| *v == version) {
                continue;
            }
            strategy::set_local_search_path(&mut tx, &tenant.id).await?;
            self.migrations
                .apply_version(&mut tx, &self.repo, id, version)
                .await?;
            // Every instance drops its bindings: statements prepared against the old
            // tables are not reused.
            self.repo.notify(&mut tx, id).await?;
            tx.commit().await?;
            applied.push(version);
        }
        Ok(applied)
    }
}
