//! Isolation strategies, one file each: how a tenant of that kind is provisioned
//! (with its template), bound to a connection, migrated, dropped, exported and checked
//! by `tenantry doctor`.
//!
//! - **Schema** (the default): each tenant owns the schema [`TenantId::schema_name`],
//!   and a tenant-bound connection's `search_path` lists that schema (plus an optional
//!   shared schema) and `pg_temp`, nothing else. New tenants are cloned from a template
//!   schema that holds the tenant migrations.
//! - **Database**: each tenant owns a database on the server it is placed on, copied
//!   from a template database; its connections log in to that database.
//! - **Row**: tenants share tables that carry a `tenant_id` column, under row-level
//!   security that compares the column with the connection's `tenantry.tenant_id`
//!   setting ([`rls_sql`], [`install_rls`]).
//!
//! The lifecycle rules (validation, states, announcements) live in
//! the tenant lifecycle ([`TenantManager`](crate::TenantManager)'s operations and
//! [`admin`](crate::admin)'s), which dispatches here; the pool asks
//! this module how to scope a connection. Nothing here knows about HTTP or the pool.
//!
//! [`TenantId::schema_name`]: crate::TenantId::schema_name

mod clone;
pub(crate) mod database;
pub(crate) mod row;
pub(crate) mod schema;
pub(crate) mod shared;
mod template;

use sqlx::PgConnection;

pub use crate::citus::{distribute_rows, reference_table};
pub use crate::naming::{quote_ident, quote_literal};
pub use row::{
    RLS_POLICIES, TENANT_COLUMN, TENANT_SETTING, install_rls, rls_sql, shared_keys_without_tenant,
    shared_tables, tables_missing_rls,
};

use crate::error::Error;
use crate::migrate::TenantMigrations;
use crate::naming::Names;
use crate::repository::TenantRepository;
use crate::servers::Servers;
use crate::tenant::{NewTenant, Strategy, Tenant, TenantStatus};

/// Everything the strategies work with: the registry, the migration source, the
/// servers, the names, and the templates built so far.
#[derive(Debug, Clone)]
pub(crate) struct Strategies {
    pub repo: TenantRepository,
    pub migrations: TenantMigrations,
    pub servers: Servers,
    pub names: Names,
    /// Clone new schema tenants from the template schema (else replay migrations).
    pub from_template: bool,
    /// The registry is a Citus coordinator: schema tenants become distributed schemas.
    pub citus: Option<std::sync::Arc<crate::citus::Citus>>,
    templates: template::Templates,
}

impl Strategies {
    pub fn new(repo: TenantRepository, migrations: TenantMigrations) -> Self {
        let names = Names::new(repo.control_schema(), crate::naming::TENANT_PREFIX)
            .expect("the repository checked its control schema");
        Self {
            repo,
            migrations,
            servers: Servers::default(),
            names,
            from_template: true,
            citus: None,
            templates: Default::default(),
        }
    }

    /// Provisions `new` (checked by the lifecycle already) and returns it `active`.
    /// All or nothing: a failure leaves no registry row, schema, database or rows.
    /// With `fill`, the tenant starts with that data (loaded and verified before it
    /// is active).
    pub async fn provision(
        &self,
        new: &NewTenant,
        server: &str,
        fill: Option<&crate::mobility::format::Snapshot>,
    ) -> Result<Tenant, Error> {
        match new.strategy {
            Strategy::Schema => schema::provision(self, new, fill).await,
            Strategy::Database => database::provision(self, new, server, fill).await,
            Strategy::Row => row::provision(self, new, fill).await,
        }
    }

    /// Removes the tenant's data, inside `tx` where the strategy allows it (a database
    /// is dropped on its server before `tx` commits).
    pub async fn remove(&self, tx: &mut PgConnection, tenant: &Tenant) -> Result<(), Error> {
        match tenant.strategy {
            Strategy::Schema => schema::remove(tx, tenant).await,
            Strategy::Database => database::remove(self, tenant).await,
            Strategy::Row => row::remove(self, tx, tenant).await,
        }
    }

    /// Applies the pending tenant migrations to `tenant`; returns the versions applied.
    pub async fn migrate(&self, tenant: &Tenant) -> Result<Vec<i64>, Error> {
        match tenant.strategy {
            Strategy::Schema => schema::migrate(self, tenant).await,
            Strategy::Database => database::migrate(self, tenant).await,
            // Row tenants share tables; the application migrates those itself.
            Strategy::Row => Ok(Vec::new()),
        }
    }

    /// The tenant's schema and data as SQL (`pg_dump` output), read through `url`,
    /// a libpq URL of the registry's server.
    pub async fn export(&self, tenant: &Tenant, url: &str) -> Result<Vec<u8>, Error> {
        match tenant.strategy {
            Strategy::Schema => schema::export(tenant, url).await,
            Strategy::Database => database::export(tenant, url).await,
            Strategy::Row => row::export(self, tenant, url).await,
        }
    }

    /// What each strategy finds wrong on the registry's server.
    pub async fn doctor(&self, tenants: &[Tenant]) -> Result<Vec<Finding>, Error> {
        let mut findings = Vec::new();
        schema::doctor(self, tenants, &mut findings).await?;
        database::doctor(self, tenants, &mut findings).await?;
        row::doctor(self, &mut findings).await?;
        Ok(findings)
    }

    /// Marks a provisioned tenant `active`, announces it, and commits `tx`.
    async fn activate(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        tenant: &NewTenant,
    ) -> Result<Tenant, Error> {
        let active = self
            .repo
            .set_status(Some(&mut tx), &tenant.id, TenantStatus::Active)
            .await?
            .ok_or_else(|| Error::Registry("the new tenant row vanished".to_owned()))?;
        self.repo.notify(&mut tx, &tenant.id).await?;
        tx.commit().await?;
        Ok(active)
    }
}

pub(crate) use finding::Finding;

/// `Finding`'s one public path is `tenantry::admin::Finding`.
pub(crate) mod finding {
    use serde::Serialize;

    /// Something `tenantry doctor` found wrong.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Finding {
        /// What kind of problem (`orphan-schema`, `missing-database`, `missing-rls`, ...).
        pub kind: &'static str,
        /// The schema, database, table or tenant concerned.
        pub subject: String,
        /// What is wrong, and what to do about it.
        pub detail: String,
    }
}
