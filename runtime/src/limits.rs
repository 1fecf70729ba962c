//! Per-tenant request limits: a tower layer that bounds each tenant's request rate
//! (a token bucket) and requests in flight, so that one noisy tenant cannot starve
//! the others.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;
use crate::tenant::{Tenant, TenantId, TenantLimits};

/// Bounds each tenant's request rate and concurrency: past either, a request gets
/// 429 problem+json with `Retry-After` (and never reaches the handler or the
/// database). Limits are the tenant's own ([`Tenant::limits`], stored in the registry
/// and changed at run time with
/// [`TenantManager::set_tenant_limits`](crate::TenantManager::set_tenant_limits)),
/// each unset one taking the layer's default. A change reaches every instance with
/// the tenant's record (change notifications), and applies from the next request.
///
/// Put it inside [`TenantLayer`](crate::TenantLayer), which resolves the tenant
/// (with axum, the layer added first runs last):
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use tenantry::{TenantLayer, TenantLimitLayer, TenantLimits, TenantManager};
///
/// # fn app(manager: TenantManager) -> Router {
/// let defaults = TenantLimits { rate: Some(50.0), burst: Some(100), concurrency: Some(16), ..Default::default() };
/// Router::new()
///     .route("/projects", get(|| async { "ok" }))
///     .route_layer(TenantLimitLayer::new(defaults))
///     .route_layer(TenantLayer::new(manager))
/// # }
/// ```
///
/// Requests without a tenant pass untouched. The counters live in the process: with
/// `N` instances behind a balancer a tenant gets up to `N` times its limits.
#[derive(Debug, Clone)]
pub struct TenantLimitLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    defaults: TenantLimits,
    tenants: Mutex<HashMap<TenantId, Budget>>,
}

/// The most tenants whose counters are kept; past it, idle ones are forgotten.
const MAX_TRACKED: usize = 100_000;

/// One tenant's counters, for one incarnation and one set of limits.
#[derive(Debug)]
struct Budget {
    incarnation: i64,
    limits: TenantLimits,
    tokens: f64,
    refilled: Instant,
    in_flight: Option<Arc<Semaphore>>,
}

impl Budget {
    fn new(incarnation: i64, limits: TenantLimits) -> Self {
        Self {
            incarnation,
            limits,
            tokens: burst(&limits),
            refilled: Instant::now(),
            in_flight: limits
                .concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
        }
    }

    fn idle(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_none_or(|s| s.available_permits() == self.limits.concurrency.unwrap_or(0) as usize)
            && self.tokens >= burst(&self.limits)
    }
}

/// The bucket's size: the burst, or one second's worth of the rate.
fn burst(limits: &TenantLimits) -> f64 {
    match (limits.burst, limits.rate) {
        (Some(b), _) => f64::from(b),
        (None, Some(rate)) => rate.max(1.0),
        (None, None) => 0.0,
    }
}

impl TenantLimitLayer {
    /// A layer applying `defaults` where a tenant sets no limit of its own (all
    /// `None`: only the tenants' own limits apply).
    ///
    /// ```
    /// let layer = tenantry::TenantLimitLayer::new(tenantry::TenantLimits::default());
    /// # let _ = layer;
    /// ```
    pub fn new(defaults: TenantLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                defaults,
                tenants: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Shared {
    /// Admits one request of `tenant` or says which limit it is over; the permit
    /// (if any) is held until the response is done.
    fn admit(&self, tenant: &Tenant) -> Result<Option<OwnedSemaphorePermit>, Error> {
        let limits = tenant.limits.or(self.defaults);
        if limits.rate.is_none() && limits.concurrency.is_none() {
            return Ok(None);
        }
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if tenants.len() >= MAX_TRACKED && !tenants.contains_key(&tenant.id) {
            tenants.retain(|_, b| !b.idle());
        }
        let budget = tenants
            .entry(tenant.id.clone())
            .or_insert_with(|| Budget::new(tenant.incarnation, limits));
        if budget.incarnation != tenant.incarnation || budget.limits != limits {
            // New limits (or a new tenant under the id): start afresh.
            *budget = Budget::new(tenant.incarnation, limits);
        }
        let permit = match &budget.in_flight {
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return Err(Error::TooManyRequests {
                        tenant: tenant.id.clone(),
                        limit: "concurrency",
                        retry_after: 1,
                    });
                }
            },
            None => None,
        };
        if let Some(rate) = limits.rate {
            let now = Instant::now();
            let elapsed = now.duration_since(budget.refilled).as_secs_f64();
            budget.tokens = (budget.tokens + elapsed * rate).min(burst(&limits));
            budget.refilled = now;
            if budget.tokens < 1.0 {
                let wait = ((1.0 - budget.tokens) / rate).ceil().max(1.0);
                return Err(Error::TooManyRequests {
                    tenant: tenant.id.clone(),
                    limit: "request rate",
                    retry_after: wait as u64,
                });
            }
            budget.tokens -= 1.0;
        }
        Ok(permit)
    }
}

impl<S> Layer<S> for TenantLimitLayer {
    type Service = LimitedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitedService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`TenantLimitLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct LimitedService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for LimitedService<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admitted = match crate::middleware::request_tenant(req.extensions()) {
            Some(tenant) => self.shared.admit(&tenant),
            None => Ok(None),
        };
        Box::pin(async move {
            match admitted {
                Ok(permit) => {
                    let response = inner.call(req).await;
                    drop(permit);
                    response
                }
                Err(e) => Ok(e.into_response()),
            }
        })
    }
}
