//! Building a [`TenantManager`]: registry, budget, servers, change listener.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::{Inner, TenantManager, changes};
use crate::error::Error;
use crate::lifecycle::Lifecycle;
use crate::migrate::TenantMigrations;
use crate::pool::{PoolConfig, TenantPools};
use crate::repository::TenantRepository;
use crate::servers::{DEFAULT_SERVER, Servers};

/// Builds a [`TenantManager`].
pub struct TenantManagerBuilder {
    pool: PgPool,
    control_schema: String,
    migrations: TenantMigrations,
    from_registry: bool,
    register: bool,
    pool_config: PoolConfig,
    cache_ttl: Duration,
    listen: bool,
    from_template: bool,
    servers: Vec<(String, sqlx::postgres::PgConnectOptions)>,
    database_prefix: Option<String>,
    tenant_connections: Option<sqlx::postgres::PgConnectOptions>,
}

impl std::fmt::Debug for TenantManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::servers::Redacted;
        // Connect options are shown without their passwords.
        f.debug_struct("TenantManagerBuilder")
            .field("control_schema", &self.control_schema)
            .field("pool_config", &self.pool_config)
            .field("cache_ttl", &self.cache_ttl)
            .field("listen", &self.listen)
            .field("from_template", &self.from_template)
            .field(
                "servers",
                &self
                    .servers
                    .iter()
                    .map(|(n, o)| (n, Redacted(o)))
                    .collect::<Vec<_>>(),
            )
            .field("database_prefix", &self.database_prefix)
            .field(
                "tenant_connections",
                &self.tenant_connections.as_ref().map(Redacted),
            )
            .finish_non_exhaustive()
    }
}

impl TenantManagerBuilder {
    /// The schema holding the registry tables (default `tenantry`).
    pub fn control_schema(mut self, name: impl Into<String>) -> Self {
        self.control_schema = name.into();
        self
    }

    /// The tenant migrations applied to every new tenant. They are also registered in
    /// the registry (each version's SQL and checksum), so that operator tools
    /// ([`Self::migrations_from_registry`], the `tenantry` CLI) provision and check
    /// tenants with the application's own source.
    pub fn migrations(mut self, migrations: TenantMigrations) -> Self {
        self.migrations = migrations;
        self
    }

    /// Whether [`Self::migrations`] and `PoolConfig::row_schema` are recorded in the
    /// registry (default `true`: an application's are). Operator tools that were handed
    /// a directory turn it off, so that a one-off source never replaces the
    /// application's.
    pub fn register_migrations(mut self, yes: bool) -> Self {
        self.register = yes;
        self
    }

    /// Without [`Self::migrations`], uses the tenant migrations an application
    /// registered in the registry (none registered: no migrations). For operator
    /// tools that provision, import or move tenants without a copy of the source.
    pub fn migrations_from_registry(mut self) -> Self {
        self.from_registry = true;
        self
    }

    /// Settings of the per-tenant pools.
    pub fn pool_config(mut self, config: PoolConfig) -> Self {
        self.pool_config = config;
        self
    }

    /// How long a looked-up tenant is trusted before the registry is asked again
    /// (default 5 s). Changes made through this manager take effect at once.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Whether to listen for changes made by other app instances (`LISTEN`/`NOTIFY`
    /// on the registry's channel) and drop their cache entries at once (default on).
    /// The cache TTL stays the bound when a notification is missed.
    pub fn listen_for_changes(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Whether new tenants are cloned from a template schema (default) instead of
    /// replaying every tenant migration; see [`crate::strategy`].
    pub fn provision_from_template(mut self, yes: bool) -> Self {
        self.from_template = yes;
        self
    }

    /// A server `database` tenants can be placed on, by name (`default` is the
    /// registry's server). `options` name a maintenance database (for example
    /// `postgres`) used to create and drop tenant databases.
    pub fn server(
        mut self,
        name: impl Into<String>,
        options: sqlx::postgres::PgConnectOptions,
    ) -> Self {
        self.servers.push((name.into(), options));
        self
    }

    /// The prefix of tenant database names (default `tenant_`: tenant `acme-corp` gets
    /// the database `tenant_acme_corp`); the template database is `<prefix>_template`,
    /// a name no tenant id can produce. Lowercase letters, digits and `_`, at most 16.
    pub fn database_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.database_prefix = Some(prefix.into());
        self
    }

    /// Where tenant connections of the default server connect (default: where the
    /// registry's pool connects), for example a PgBouncer in front of the server. The
    /// registry's pool must reach the server directly: change notifications
    /// (`LISTEN`), advisory locks and provisioning need a session of their own.
    ///
    /// Behind a transaction pooler set [`PoolConfig::binding`] to
    /// [`Binding::Transaction`](crate::pool::Binding::Transaction); `build` refuses the
    /// session binding there, because it would mix tenants.
    pub fn tenant_connections(mut self, options: sqlx::postgres::PgConnectOptions) -> Self {
        self.tenant_connections = Some(options);
        self
    }

    /// Creates or upgrades the registry and returns the manager.
    ///
    /// Checks first that the registry's pool is not behind a transaction pooler, and
    /// that tenant connections are not either unless the transaction binding is set.
    pub async fn build(mut self) -> Result<TenantManager, Error> {
        let registry_options = (*self.pool.connect_options()).clone();
        if crate::pool::behind_transaction_pooler(&registry_options).await? {
            return Err(Error::Validation(
                "the registry's pool goes through a transaction pooler (two client connections \
                 were served by one server backend): build the manager on a pool with a direct \
                 URL, and give the pooler's address to `TenantManagerBuilder::tenant_connections`"
                    .to_owned(),
            ));
        }
        let tenant_base = self
            .tenant_connections
            .clone()
            .unwrap_or_else(|| registry_options.clone());
        if self.pool_config.binding == crate::pool::Binding::Session
            && crate::pool::behind_transaction_pooler(&tenant_base).await?
        {
            return Err(Error::Validation(
                "tenant connections go through a transaction pooler (two client connections were \
                 served by one server backend), where session settings would mix tenants: set \
                 `PoolConfig::binding` to `Binding::Transaction`"
                    .to_owned(),
            ));
        }
        let repo = TenantRepository::new(self.pool.clone(), &self.control_schema)?;
        repo.ensure_schema().await?;
        if self.migrations.versions().is_empty() {
            if self.from_registry {
                self.migrations =
                    crate::TenantMigrations::from_sources(repo.registered_migrations().await?)?;
            }
        } else if self.register {
            repo.register_migrations(self.migrations.ups().map(|m| {
                (
                    m.version,
                    m.description.to_string(),
                    m.sql.as_str().to_owned(),
                    m.checksum.to_vec(),
                )
            }))
            .await?;
        }
        // The application's row schema scopes what row tenants' moves, exports and
        // deletions touch, for the CLI too (which does not record its own).
        if self.register
            && let Some(schema) = &self.pool_config.row_schema
        {
            repo.record_row_schema(schema).await?;
        }
        let mut lifecycle = Lifecycle::new(repo.clone(), self.migrations.clone());
        if let Some(prefix) = &self.database_prefix {
            lifecycle = lifecycle.with_database_prefix(prefix)?;
        }
        let base = registry_options;
        // A quarter of the server's connections, unless the budget is set.
        let server_max: i64 = sqlx::query_scalar(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'max_connections'",
        )
        .fetch_one(&self.pool)
        .await?;
        let budget = u32::try_from(server_max / 4).unwrap_or(u32::MAX).max(2);
        let mut servers = Servers::default();
        servers.add(DEFAULT_SERVER, base.clone());
        for (name, options) in self.servers {
            servers.add(name, options);
        }
        servers.set_registered(&repo.servers().await?);
        let citus = crate::citus::detect(&self.pool).await?.map(Arc::new);
        if let Some(c) = &citus {
            tracing::info!(
                version = %c.version,
                workers = ?c.workers,
                "the registry's server is a Citus coordinator: schema tenants become distributed \
                 schemas, row tenants are bound per transaction (SET LOCAL, forwarded to the \
                 workers), database tenants live on named servers"
            );
            let effective = self.pool_config.max_connections.unwrap_or(budget).max(1);
            let logins = 1 + u32::from(
                self.pool_config.row_user.is_some() || self.pool_config.row_role.is_some(),
            );
            if let Some(problem) = c.connection_budget_problem(effective, logins) {
                tracing::warn!("{problem}");
            }
        }
        let channel = repo.channel();
        let (shutdown, stopped) = watch::channel(());
        let manager = TenantManager {
            inner: Arc::new(Inner {
                lifecycle: lifecycle
                    .provision_from_template(self.from_template)
                    .on_citus(citus.clone())
                    .with_servers(servers.clone()),
                pools: TenantPools::with_servers(
                    tenant_base,
                    servers,
                    self.pool_config,
                    budget,
                    citus.clone(),
                ),
                cache: RwLock::new(HashMap::new()),
                domains: RwLock::new(HashMap::new()),
                cache_ttl: self.cache_ttl,
                registry_lookups: AtomicU64::new(0),
                known: RwLock::new(None),
                refreshing: tokio::sync::Mutex::new(()),
                known_domains: RwLock::new(None),
                refreshing_domains: tokio::sync::Mutex::new(()),
                citus: citus.clone(),
                _shutdown: shutdown,
            }),
        };
        manager.inner.pools.set_control_schema(&self.control_schema);
        if self.listen {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&channel).await?;
            tokio::spawn(changes::listen_for_changes(
                listener,
                Arc::downgrade(&manager.inner),
                stopped,
            ));
        }
        Ok(manager)
    }
}

impl TenantManager {
    /// Starts building a manager whose registry lives on `pool`. Tenant connections
    /// use the same server, database and credentials as `pool`.
    pub fn builder(pool: PgPool) -> TenantManagerBuilder {
        TenantManagerBuilder {
            pool,
            control_schema: "tenantry".to_owned(),
            migrations: TenantMigrations::empty(),
            from_registry: false,
            register: true,
            pool_config: PoolConfig::default(),
            cache_ttl: Duration::from_secs(5),
            listen: true,
            from_template: true,
            servers: Vec::new(),
            database_prefix: None,
            tenant_connections: None,
        }
    }
}
