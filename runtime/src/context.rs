//! The current tenant, carried through async code by a tokio task-local.
//!
//! This is the Rust form of the seed design's `contextvars`: a value bound for the
//! duration of a future. A task started with plain `tokio::spawn` does **not**
//! inherit it; use [`TenantContext::spawn`] (or [`TenantContext::scope`] inside the
//! task) to carry the tenant along.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::error::Error;
use crate::tenant::{Tenant, TenantId};

tokio::task_local! {
    static CURRENT: Arc<Tenant>;
}

/// Access to the tenant of the running task.
///
/// ```
/// use std::sync::Arc;
/// use tenantry::{Tenant, TenantContext};
/// # fn tenant() -> Tenant { tenantry::__private::example_tenant("acme") }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(TenantContext::current().is_none());
/// let seen = TenantContext::scope(Arc::new(tenant()), async {
///     TenantContext::tenant_id().map(|id| id.to_string())
/// })
/// .await;
/// assert_eq!(seen.as_deref(), Some("acme"));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TenantContext;

impl TenantContext {
    /// Runs `future` with `tenant` as the current tenant.
    pub fn scope<F: Future>(
        tenant: Arc<Tenant>,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<Arc<Tenant>, F> {
        CURRENT.scope(tenant, future)
    }

    /// The current tenant, or `None` outside of a tenant scope.
    pub fn current() -> Option<Arc<Tenant>> {
        CURRENT.try_with(Arc::clone).ok()
    }

    /// The current tenant's id, or `None` outside of a tenant scope.
    pub fn tenant_id() -> Option<TenantId> {
        CURRENT.try_with(|t| t.id.clone()).ok()
    }

    /// The current tenant, or [`Error::NoTenantInScope`].
    pub fn require() -> Result<Arc<Tenant>, Error> {
        Self::current().ok_or(Error::NoTenantInScope)
    }

    /// Spawns `future` on the tokio runtime with the current tenant (if any) in scope.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenantry::TenantContext;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let tenant = Arc::new(tenantry::__private::example_tenant("acme"));
    /// TenantContext::scope(tenant, async {
    ///     let carried = TenantContext::spawn(async { TenantContext::tenant_id() });
    ///     let plain = tokio::spawn(async { TenantContext::tenant_id() });
    ///     assert_eq!(carried.await.unwrap().unwrap().as_str(), "acme");
    ///     assert!(plain.await.unwrap().is_none());
    /// })
    /// .await;
    /// # }
    /// ```
    pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match Self::current() {
            Some(tenant) => tokio::spawn(CURRENT.scope(tenant, future)),
            None => tokio::spawn(future),
        }
    }
}
