#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The floor: the tenant model, errors and names. Then the registry, the migration
// source, the strategies, the lifecycle; the connection side (pool, handles,
// entities); the manager; the web layer. No module imports one above it.
mod citus;
mod column;
mod context;
mod db;
mod domain;
mod entity;
mod error;
mod lifecycle;
mod limits;
mod manager;
pub mod metrics;
mod middleware;
mod mobility;
mod naming;
mod page;
mod pgbin;
mod pool;
mod repository;
mod resolve;
mod servers;
mod tenant;

pub mod admin;
pub mod extract;
pub mod migrate;
pub mod strategy;
#[cfg(feature = "testing")]
pub mod testing;

pub use column::{Assign, Col, ColumnType, ColumnValue, Cond, Op, Order, ReadOnly, Writable};
pub use context::TenantContext;
pub use db::{TenantDb, TenantTx};
pub use entity::{NewEntity, Select, TenantEntity, TenantHandle};
pub use error::{Error, PROBLEM_JSON, Problem, Result};
#[allow(deprecated)]
pub use limits::{LimitedService, TenantLimitLayer, TenantLimitMiddleware};
pub use manager::{FanOut, Selection, TenantManager, TenantManagerBuilder, TenantOutcome};
pub use metrics::TenantMetrics;
pub use middleware::{CurrentTenant, TenantLayer, TenantMiddleware, TenantPolicy};
pub use migrate::TenantMigrations;
pub use page::{DEFAULT_PAGE_LIMIT, MAX_PAGE_BYTES, MAX_PAGE_LIMIT, Page, PageRequest};
pub use pool::{Binding, PoolConfig, PoolStats, ServerStats};
pub use resolve::{
    Candidate, DEFAULT_TENANT_HEADER, HeaderResolver, HostResolver, PathPrefixResolver,
    TenantResolver, resolver_fn,
};
pub use tenant::{
    InvalidTenantId, MAX_TENANT_ID_LEN, NewTenant, Strategy, Tenant, TenantId, TenantLimits,
    TenantStatus,
};

#[cfg(feature = "macros")]
#[doc = include_str!("../docs/tenant_scoped.md")]
pub use tenantry_macros::tenant_scoped;

#[cfg(feature = "macros")]
#[doc = include_str!("../docs/derive_tenant_entity.md")]
pub use tenantry_macros::TenantEntity;

#[cfg(all(feature = "macros", feature = "testing"))]
#[doc = include_str!("../docs/test.md")]
pub use tenantry_macros::test;

/// Items generated code and doc examples use. Not public API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;
    use std::sync::Arc;

    pub use crate::entity::EntitySql;
    pub use futures::future::BoxFuture;
    pub use serde;
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

    #[diagnostic::do_not_recommend]
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

    /// Commits or rolls back a transaction handler's transaction as its output says.
    /// The future's type does not name the bound, so a wrong return type is one error.
    pub fn finish_tx<'a, O, S>(out: O, slot: S) -> futures::future::BoxFuture<'a, O>
    where
        O: TxOutcome + Send + 'a,
        S: TxSlot + 'a,
    {
        Box::pin(out.finish(slot))
    }

    pub use crate::column::ColumnType as Column;

    /// The one check of a field's type, spanned at the field: the derive's decoding
    /// and encoding go through [`ColumnProbe`], which compiles for any type, so a type
    /// that is not a [`Column`] is one error here instead of one per use.
    pub fn assert_column<T: Column>() {}

    /// Decodes or encodes a field of type `T` (see [`assert_column`]).
    pub struct ColumnProbe<T>(std::marker::PhantomData<fn() -> T>);

    impl<T> ColumnProbe<T> {
        /// A probe for `T`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Self(std::marker::PhantomData)
        }
    }

    /// The real decoding and encoding, for `T: Column` (chosen by auto-ref).
    pub trait ViaColumn<T> {
        fn decode(&self, row: &PgRow, name: &str) -> Result<T, sqlx::Error>;
        fn bind(&self, args: &mut PgArguments, value: &T) -> Result<(), Error>;
    }

    impl<T: Column> ViaColumn<T> for &ColumnProbe<T> {
        fn decode(&self, row: &PgRow, name: &str) -> Result<T, sqlx::Error> {
            sqlx::Row::try_get(row, name)
        }
        fn bind(&self, args: &mut PgArguments, value: &T) -> Result<(), Error> {
            sqlx::Arguments::add(args, value)
                .map_err(|e| Error::Internal(format!("cannot encode a value: {e}")))
        }
    }

    /// The fallback for a type that is not a `Column`: never runs, because
    /// [`assert_column`] fails the build first; it only keeps that one error alone.
    pub trait ViaFallback<T> {
        fn decode(&self, row: &PgRow, name: &str) -> Result<T, sqlx::Error>;
        fn bind(&self, args: &mut PgArguments, value: &T) -> Result<(), Error>;
    }

    impl<T> ViaFallback<T> for ColumnProbe<T> {
        fn decode(&self, _: &PgRow, name: &str) -> Result<T, sqlx::Error> {
            Err(sqlx::Error::ColumnNotFound(name.to_owned()))
        }
        fn bind(&self, _: &mut PgArguments, _: &T) -> Result<(), Error> {
            Err(Error::Internal("not a column type".to_owned()))
        }
    }

    /// An index [`TenantEntity::bind_column`](crate::TenantEntity::bind_column) does
    /// not know: tenantry's own mistake.
    pub fn no_column(entity: &str, index: usize) -> Error {
        Error::Internal(format!("`{entity}` has no column number {index}"))
    }

    /// A tenant record for examples.
    pub fn example_tenant(id: &str) -> Tenant {
        let id = TenantId::parse(id).expect("a valid example id");
        Tenant {
            storage: id.schema_name(),
            id,
            name: "Example".to_owned(),
            domain: None,
            domains: Vec::new(),
            strategy: Strategy::Schema,
            status: TenantStatus::Active,
            server: "default".to_owned(),
            incarnation: 1,
            schema_version: None,
            limits: Default::default(),
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }
}
