#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// The floor: the tenant model, errors and names. Then the registry, the migration
// source, the strategies, the lifecycle; the connection side (pool, handles,
// entities); the manager; the web layer. No module imports one above it.
mod context;
mod db;
mod entity;
mod error;
mod lifecycle;
mod manager;
mod metrics;
mod middleware;
mod naming;
mod pgbin;
mod pool;
mod repository;
mod resolve;
mod servers;
mod tenant;

pub mod admin;
pub mod migrate;
pub mod strategy;
#[cfg(feature = "testing")]
pub mod testing;

pub use context::TenantContext;
pub use db::{TenantDb, TenantTx};
pub use entity::{Op, Select, TenantEntity, TenantHandle};
pub use error::{Error, PROBLEM_JSON, Problem, Result};
pub use manager::{TenantManager, TenantManagerBuilder};
pub use metrics::TenantMetrics;
pub use middleware::{CurrentTenant, TenantLayer, TenantMiddleware, TenantPolicy};
pub use migrate::TenantMigrations;
pub use pool::{Binding, PoolConfig, PoolStats};
pub use resolve::{
    Candidate, DEFAULT_TENANT_HEADER, HeaderResolver, HostResolver, PathPrefixResolver,
    TenantResolver, resolver_fn,
};
pub use tenant::{
    InvalidTenantId, MAX_TENANT_ID_LEN, NewTenant, Strategy, Tenant, TenantId, TenantStatus,
};

#[cfg(feature = "macros")]
#[doc = include_str!("../docs/tenant_scoped.md")]
pub use tenantry_macros::tenant_scoped;

#[cfg(feature = "macros")]
#[doc = include_str!("../docs/derive_tenant_entity.md")]
pub use tenantry_macros::TenantEntity;

/// Items generated code and doc examples use. Not public API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;
    use std::sync::Arc;

    pub use crate::entity::EntitySql;
    pub use sqlx;
    pub use sqlx::postgres::{PgArguments, PgRow};

    use crate::context::TenantContext;
    use crate::db::{TenantDb, TenantTx};
    use crate::error::Error;
    use crate::tenant::{Strategy, Tenant, TenantId, TenantStatus};

    /// Fixes a future's output type, so `?` inside an async block can infer its
    /// error type from the handler's return type.
    pub fn typed<O, F: Future<Output = O>>(future: F) -> F {
        future
    }

    /// Runs `future` in the tenant's scope, or as it is without a tenant.
    pub async fn scope_opt<F: Future>(tenant: Option<Arc<Tenant>>, future: F) -> F::Output {
        match tenant {
            Some(tenant) => TenantContext::scope(tenant, future).await,
            None => future.await,
        }
    }

    /// The tenant of a handle argument (or of an optional one).
    pub trait HandleTenant {
        fn scope_tenant(&self) -> Option<Arc<Tenant>>;
    }
    impl HandleTenant for TenantDb {
        fn scope_tenant(&self) -> Option<Arc<Tenant>> {
            Some(self.tenant().clone())
        }
    }
    impl HandleTenant for TenantTx {
        fn scope_tenant(&self) -> Option<Arc<Tenant>> {
            Some(self.tenant().clone())
        }
    }
    impl<H: HandleTenant> HandleTenant for Option<H> {
        fn scope_tenant(&self) -> Option<Arc<Tenant>> {
            self.as_ref().and_then(HandleTenant::scope_tenant)
        }
    }

    /// A transaction argument: `TenantTx` or `Option<TenantTx>`.
    pub trait TxSlot: Send {
        fn into_tx(self) -> Option<TenantTx>;
    }
    impl TxSlot for TenantTx {
        fn into_tx(self) -> Option<TenantTx> {
            Some(self)
        }
    }
    impl TxSlot for Option<TenantTx> {
        fn into_tx(self) -> Option<TenantTx> {
            self
        }
    }

    /// What a transaction handler returns: commit on `Ok`, roll back on `Err`.
    #[diagnostic::on_unimplemented(
        message = "a `#[tenant_scoped]` handler with a `TenantTx` must return `Result<_, E>` where `E: From<tenantry::Error>`",
        label = "this return type cannot tell commit from rollback",
        note = "return `Result<T, tenantry::Error>` (or your own error type implementing `From<tenantry::Error>`)"
    )]
    pub trait TxOutcome: Sized {
        fn finish<S: TxSlot>(self, slot: S) -> impl Future<Output = Self> + Send;
    }

    impl<T: Send, E: From<Error> + Send> TxOutcome for Result<T, E> {
        async fn finish<S: TxSlot>(self, slot: S) -> Self {
            let Some(tx) = slot.into_tx() else {
                return self;
            };
            match self {
                Ok(value) => match tx.commit().await {
                    Ok(()) => Ok(value),
                    Err(e) => Err(E::from(e)),
                },
                Err(e) => {
                    if let Err(rollback) = tx.rollback().await {
                        tracing::warn!(error = %rollback, "rollback after a handler error failed");
                    }
                    Err(e)
                }
            }
        }
    }

    /// Adds one bind argument.
    pub fn add_argument<'q, T>(args: &mut PgArguments, value: T) -> Result<(), Error>
    where
        T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        sqlx::Arguments::add(args, value)
            .map_err(|e| Error::Validation(format!("cannot encode a value: {e}")))
    }

    /// A tenant record for examples.
    pub fn example_tenant(id: &str) -> Tenant {
        let id = TenantId::parse(id).expect("a valid example id");
        Tenant {
            schema_name: id.schema_name(),
            id,
            name: "Example".to_owned(),
            domain: None,
            strategy: Strategy::Schema,
            status: TenantStatus::Active,
            server: "default".to_owned(),
            incarnation: 1,
            schema_version: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }
}
