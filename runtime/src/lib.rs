#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod context;
pub mod db;
pub mod error;
pub mod manager;
pub mod middleware;
pub mod migrate;
pub mod pool;
pub mod repository;
pub mod service;
pub mod strategy;
pub mod tenant;
#[cfg(feature = "testing")]
pub mod testing;

pub use context::TenantContext;
pub use db::{TenantDb, TenantTx};
pub use error::{Error, PROBLEM_JSON, Problem, Result};
pub use manager::{TenantManager, TenantManagerBuilder};
pub use middleware::{
    CurrentTenant, DEFAULT_TENANT_HEADER, TenantLayer, TenantMiddleware, Tenants,
};
pub use migrate::TenantMigrations;
pub use pool::{PoolConfig, PoolStats, TenantPools};
pub use repository::TenantRepository;
pub use service::TenantService;
pub use strategy::quote_ident;
pub use tenant::{NewTenant, Strategy, Tenant, TenantId, TenantStatus};

/// Items generated code and doc examples use. Not public API.
#[doc(hidden)]
pub mod __private {
    use crate::tenant::{Strategy, Tenant, TenantId, TenantStatus};

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
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }
}
