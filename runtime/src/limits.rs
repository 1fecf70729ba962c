//! Per-tenant request limits: a tower layer that bounds each tenant's request rate
//! (a token bucket) and requests in flight, so that one noisy tenant cannot starve
//! the others.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Bounds each tenant's request rate and concurrency (requests whose handler is
/// running; a streamed body still being sent no longer counts): past either, a request gets
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
    tenants: Mutex<HashMap<TenantId, Allowance>>,
}

/// The most tenants whose counters are kept; past it, idle ones are forgotten.
const MAX_TRACKED: usize = 100_000;

/// What the layer enforces of a tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Enforced {
    rate: Option<f64>,
    burst: Option<u32>,
    concurrency: Option<u32>,
}

impl Enforced {
    fn of(limits: TenantLimits) -> Self {
        Self {
            rate: limits.rate,
            burst: limits.burst,
            concurrency: limits.concurrency,
        }
    }
}

/// One tenant's counters, for one incarnation.
#[derive(Debug)]
struct Allowance {
    incarnation: i64,
    limits: Enforced,
    tokens: f64,
    refilled: Instant,
    /// Requests in flight: one permit each.
    in_flight: Arc<Semaphore>,
    /// Permits to forget as requests finish, after the concurrency was lowered
    /// while more than the new limit were in flight.
    debt: Arc<AtomicUsize>,
    last_seen: Instant,
}

/// A bound that no tenant can reach: "no concurrency limit".
const UNBOUNDED: usize = Semaphore::MAX_PERMITS;

impl Allowance {
    fn new(incarnation: i64, limits: Enforced) -> Self {
        Self {
            incarnation,
            limits,
            tokens: burst(&limits),
            refilled: Instant::now(),
            in_flight: Arc::new(Semaphore::new(
                limits.concurrency.map_or(UNBOUNDED, |n| n as usize),
            )),
            debt: Arc::new(AtomicUsize::new(0)),
            last_seen: Instant::now(),
        }
    }

    /// Moves to new limits without forgetting what is in flight or what was spent.
    fn change(&mut self, limits: Enforced) {
        let old = self.limits.concurrency.map_or(UNBOUNDED, |n| n as usize);
        let new = limits.concurrency.map_or(UNBOUNDED, |n| n as usize);
        if new > old {
            self.in_flight.add_permits(new - old);
        } else if new < old {
            let forgotten = self.in_flight.forget_permits(old - new);
            self.debt.fetch_add(old - new - forgotten, Ordering::SeqCst);
        }
        self.tokens = self.tokens.min(burst(&limits));
        self.limits = limits;
    }

    /// Nothing in flight, the bucket full again, and not seen for a while.
    fn idle(&self, now: Instant) -> bool {
        let full = match self.limits.rate {
            Some(rate) => {
                self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate
                    >= burst(&self.limits)
            }
            None => true,
        };
        let limit = self.limits.concurrency.map_or(UNBOUNDED, |n| n as usize);
        full && self.in_flight.available_permits() >= limit
            && now.duration_since(self.last_seen).as_secs() >= 1
    }
}

/// A request's place among its tenant's requests in flight.
#[derive(Debug)]
struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let paid = self
            .debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
            .is_ok();
        if paid && let Some(permit) = self.permit.take() {
            // The concurrency was lowered: this place is not given back.
            permit.forget();
        }
    }
}

/// The bucket's size: the burst, or one second's worth of the rate.
fn burst(limits: &Enforced) -> f64 {
    match (limits.burst, limits.rate) {
        (Some(b), _) => f64::from(b),
        (None, Some(rate)) => rate.max(1.0),
        (None, None) => 0.0,
    }
}

impl TenantLimitLayer {
    /// A layer applying `defaults` where a tenant sets no limit of its own (all
    /// `None`: only the tenants' own limits apply). The defaults are rate, burst and
    /// concurrency: a default statement timeout belongs to the database role
    /// (`ALTER ROLE .. SET statement_timeout`), where it also covers connections this
    /// layer never sees.
    ///
    /// # Panics
    ///
    /// If the defaults are out of range or set a statement timeout; see
    /// [`TenantLimitLayer::try_new`].
    ///
    /// ```
    /// let layer = tenantry::TenantLimitLayer::new(tenantry::TenantLimits::default());
    /// # let _ = layer;
    /// ```
    pub fn new(defaults: TenantLimits) -> Self {
        match Self::try_new(defaults) {
            Ok(layer) => layer,
            Err(e) => panic!("TenantLimitLayer: {e}"),
        }
    }

    /// [`TenantLimitLayer::new`], or why the defaults cannot be used.
    ///
    /// ```
    /// use tenantry::{TenantLimitLayer, TenantLimits};
    /// assert!(TenantLimitLayer::try_new(TenantLimits { concurrency: Some(0), ..Default::default() }).is_err());
    /// assert!(TenantLimitLayer::try_new(TenantLimits { rate: Some(f64::NAN), ..Default::default() }).is_err());
    /// ```
    pub fn try_new(defaults: TenantLimits) -> Result<Self, Error> {
        defaults
            .check()
            .map_err(|e| Error::Validation(format!("default limits: {e}")))?;
        if defaults.statement_timeout_ms.is_some() {
            return Err(Error::Validation(
                "default limits: a default statement timeout belongs to the database role \
                 (`ALTER ROLE .. SET statement_timeout`); tenants' own timeouts come from the \
                 registry"
                    .to_owned(),
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                defaults,
                tenants: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Shared {
    /// Admits one request of `tenant` or says which limit it is over; the permit
    /// (if any) is held until the response is done.
    fn admit(&self, tenant: &Tenant) -> Result<Option<Permit>, Error> {
        let limits = Enforced::of(tenant.limits.or(self.defaults));
        let now = Instant::now();
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if limits.rate.is_none()
            && limits.concurrency.is_none()
            && !tenants.contains_key(&tenant.id)
        {
            return Ok(None);
        }
        if tenants.len() >= MAX_TRACKED && !tenants.contains_key(&tenant.id) {
            tenants.retain(|_, b| !b.idle(now));
            if tenants.len() >= MAX_TRACKED {
                // Every tracked tenant is busy: this one is served unlimited rather
                // than refused for others' sake.
                return Ok(None);
            }
        }
        let allowance = tenants
            .entry(tenant.id.clone())
            .or_insert_with(|| Allowance::new(tenant.incarnation, limits));
        if allowance.incarnation != tenant.incarnation {
            // Another tenant under the id: it starts afresh.
            *allowance = Allowance::new(tenant.incarnation, limits);
        } else if allowance.limits != limits {
            allowance.change(limits);
        }
        allowance.last_seen = now;
        let permit = match allowance.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Permit {
                permit: Some(permit),
                debt: allowance.debt.clone(),
            },
            Err(_) => {
                return Err(Error::TooManyRequests {
                    tenant: tenant.id.clone(),
                    limit: "concurrency",
                    retry_after: 1,
                });
            }
        };
        if let Some(rate) = limits.rate {
            let elapsed = now.duration_since(allowance.refilled).as_secs_f64();
            allowance.tokens = (allowance.tokens + elapsed * rate).min(burst(&limits));
            allowance.refilled = now;
            if allowance.tokens < 1.0 {
                // At most an hour: a client is told something it can act on.
                let wait = ((1.0 - allowance.tokens) / rate).ceil().clamp(1.0, 3600.0);
                return Err(Error::TooManyRequests {
                    tenant: tenant.id.clone(),
                    limit: "request rate",
                    retry_after: wait as u64,
                });
            }
            allowance.tokens -= 1.0;
        }
        Ok(Some(permit))
    }
}

impl<S> Layer<S> for TenantLimitLayer {
    type Service = TenantLimitMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantLimitMiddleware {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The old name of [`TenantLimitMiddleware`] (the layer's service is named as
/// [`TenantLayer`](crate::TenantLayer)'s is: `TenantMiddleware`).
#[deprecated(since = "0.2.0", note = "renamed `TenantLimitMiddleware`")]
pub type LimitedService<S> = TenantLimitMiddleware<S>;

/// The service [`TenantLimitLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct TenantLimitMiddleware<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for TenantLimitMiddleware<S>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(limits: TenantLimits) -> Tenant {
        let mut t = crate::__private::example_tenant("acme");
        t.limits = limits;
        t
    }

    fn concurrency(n: u32) -> TenantLimits {
        TenantLimits {
            concurrency: Some(n),
            ..TenantLimits::default()
        }
    }

    #[test]
    fn lowering_the_concurrency_while_busy_settles_at_the_new_limit() {
        let layer = TenantLimitLayer::new(TenantLimits::default());
        let shared = &layer.shared;
        let at_three = tenant(concurrency(3));
        let held: Vec<_> = (0..3).map(|_| shared.admit(&at_three).unwrap()).collect();
        assert!(shared.admit(&at_three).is_err(), "three in flight: full");
        // Lowered to one while three are in flight: none more until all three have
        // finished (fewer in flight than the new limit).
        let at_one = tenant(concurrency(1));
        let mut held = held;
        for left in [2, 1] {
            assert!(shared.admit(&at_one).is_err(), "{} in flight", left + 1);
            held.pop();
        }
        assert!(shared.admit(&at_one).is_err(), "one in flight, limit one");
        held.pop();
        let one = shared.admit(&at_one).unwrap();
        assert!(
            shared.admit(&at_one).is_err(),
            "the new limit holds: one at a time"
        );
        drop(one);
        // Raised again: three places, not more.
        let held: Vec<_> = (0..3).map(|_| shared.admit(&at_three).unwrap()).collect();
        assert!(shared.admit(&at_three).is_err());
        drop(held);
    }

    #[test]
    fn the_rate_refills_and_retry_after_is_bounded() {
        let layer = TenantLimitLayer::new(TenantLimits::default());
        let slow = tenant(TenantLimits {
            rate: Some(0.01),
            burst: Some(1),
            ..TenantLimits::default()
        });
        assert!(layer.shared.admit(&slow).is_ok());
        match layer.shared.admit(&slow) {
            Err(Error::TooManyRequests { retry_after, .. }) => {
                assert!((1..=3600).contains(&retry_after), "{retry_after}")
            }
            other => panic!("{other:?}"),
        }
        // 20 a second, a burst of one: the second at once is refused, and one 150 ms
        // later (3 tokens' worth, capped at the burst) is admitted.
        let mut quick = crate::__private::example_tenant("globex");
        quick.limits = TenantLimits {
            rate: Some(20.0),
            burst: Some(1),
            ..TenantLimits::default()
        };
        assert!(layer.shared.admit(&quick).is_ok());
        assert!(layer.shared.admit(&quick).is_err(), "the burst is one");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(layer.shared.admit(&quick).is_ok(), "refilled");
        assert!(
            layer.shared.admit(&quick).is_err(),
            "refilled up to the burst only"
        );
    }

    #[test]
    fn defaults_are_checked() {
        assert!(TenantLimitLayer::try_new(concurrency(0)).is_err());
        assert!(
            TenantLimitLayer::try_new(TenantLimits {
                statement_timeout_ms: Some(1000),
                ..TenantLimits::default()
            })
            .is_err()
        );
        assert!(TenantLimitLayer::try_new(concurrency(4)).is_ok());
    }
}
