//! The tower layer that resolves each request's tenant, and the axum extractors.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::request::Parts;
use http::{HeaderName, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::TenantContext;
use crate::db::{TenantDb, TenantTx};
use crate::error::Error;
use crate::manager::TenantManager;
use crate::metrics::TenantMetrics;
use crate::resolve::{Candidate, HeaderResolver, TenantResolver};
use crate::tenant::Tenant;
use tracing::Instrument;

/// Decides whether a request may act for the tenant it named. Return
/// [`Error::Forbidden`] (403) or [`Error::Unauthorized`] (401) to refuse.
///
/// This is where a tenant chosen by a header or host is tied to the authenticated
/// principal: compare the tenant with what the verified credentials allow, so that a
/// client cannot pick another tenant by changing a header.
///
/// [`TenantPolicy::authenticate`] runs first, before the tenant is looked up: refuse
/// unauthenticated requests there, so that they get the same 401 whatever tenant they
/// name (no answer tells an anonymous client which tenants exist).
pub trait TenantPolicy: Send + Sync + 'static {
    /// `Ok(())` if the request may act for `tenant`.
    fn check(&self, parts: &Parts, tenant: &Tenant) -> Result<(), Error>;

    /// Runs before any tenant lookup: `Err` ([`Error::Unauthorized`]) for a request
    /// that proves no identity. The default lets every request through to `check`.
    fn authenticate(&self, parts: &Parts) -> Result<(), Error> {
        let _ = parts;
        Ok(())
    }

    /// Runs after `authenticate` and before the tenant a resolver named is looked up:
    /// refuse here what the principal may never reach, so that the answer does not
    /// depend on whether that tenant exists or is suspended. The default lets every
    /// candidate through to the lookup and `check`.
    fn check_candidate(&self, parts: &Parts, candidate: &Candidate) -> Result<(), Error> {
        let _ = (parts, candidate);
        Ok(())
    }
}

impl<F> TenantPolicy for F
where
    F: Fn(&Parts, &Tenant) -> Result<(), Error> + Send + Sync + 'static,
{
    fn check(&self, parts: &Parts, tenant: &Tenant) -> Result<(), Error> {
        self(parts, tenant)
    }
}

/// Resolves the tenant of every request and runs the rest of the stack inside
/// [`TenantContext::scope`] and a `tenant` tracing span (field `tenant_id`).
///
/// Resolvers are tried in order ([`HeaderResolver`] for `X-Tenant-ID` by default;
/// [`HostResolver`](crate::resolve::HostResolver),
/// [`PathPrefixResolver`](crate::resolve::PathPrefixResolver) and [`resolver_fn`](crate::resolve::resolver_fn)
/// for more); the first that names a tenant wins.
///
/// | request | response |
/// |---|---|
/// | names no tenant (layer requires one) | 400 |
/// | malformed tenant id | 400 |
/// | unknown or deleted tenant | 404 |
/// | suspended (or provisioning) tenant | 403 |
/// | refused by the [`TenantPolicy`] | 403 (or 401) |
/// | registry unreachable | 503 |
///
/// Errors are `application/problem+json` bodies. Routes that must not be scoped
/// (admin routes) simply live in a router the layer is not applied to.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use tenantry::{CurrentTenant, TenantLayer, TenantManager};
/// use tenantry::{HeaderResolver, HostResolver};
///
/// async fn whoami(CurrentTenant(tenant): CurrentTenant) -> String {
///     tenant.name.clone()
/// }
///
/// # fn f(manager: TenantManager) {
/// let app: Router = Router::new()
///     .route("/whoami", get(whoami))
///     .layer(
///         TenantLayer::new(manager)
///             .resolver(HostResolver::domains().subdomains_of("example.com")),
///     );
/// # }
/// ```
#[derive(Clone)]
pub struct TenantLayer {
    config: Arc<LayerConfig>,
}

impl std::fmt::Debug for TenantLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLayer")
            .field("resolvers", &self.config.hint)
            .field("required", &self.config.required)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct LayerConfig {
    manager: TenantManager,
    resolvers: Vec<Arc<dyn TenantResolver>>,
    hint: Arc<str>,
    required: bool,
    policy: Option<Arc<dyn TenantPolicy>>,
    metrics: Option<TenantMetrics>,
}

impl LayerConfig {
    fn refresh_hint(&mut self) {
        self.hint = self
            .resolvers
            .iter()
            .map(|r| r.describe())
            .collect::<Vec<_>>()
            .join(", or ")
            .into();
    }
}

impl TenantLayer {
    /// A layer reading `X-Tenant-ID` and requiring a tenant.
    pub fn new(manager: TenantManager) -> Self {
        let mut config = LayerConfig {
            manager,
            resolvers: vec![Arc::new(HeaderResolver::default())],
            hint: Arc::from(""),
            required: true,
            policy: None,
            metrics: None,
        };
        config.refresh_hint();
        Self {
            config: Arc::new(config),
        }
    }

    /// Reads the tenant from `header` instead of `X-Tenant-ID` (this replaces the
    /// resolvers configured so far with that one header).
    pub fn header(self, header: HeaderName) -> Self {
        self.resolvers(vec![Arc::new(HeaderResolver::new(header))])
    }

    /// Adds a resolver, tried after the ones configured so far.
    pub fn resolver(mut self, resolver: impl TenantResolver) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.resolvers.push(Arc::new(resolver));
        config.refresh_hint();
        self
    }

    /// Replaces the resolvers.
    pub fn resolvers(mut self, resolvers: Vec<Arc<dyn TenantResolver>>) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.resolvers = resolvers;
        config.refresh_hint();
        self
    }

    /// Lets requests that name no tenant through with no tenant in scope (a named but
    /// invalid, unknown or suspended tenant is still refused).
    pub fn optional(mut self) -> Self {
        Arc::make_mut(&mut self.config).required = false;
        self
    }

    /// Refuses requests that may not act for the tenant they named.
    pub fn policy(mut self, policy: impl TenantPolicy) -> Self {
        Arc::make_mut(&mut self.config).policy = Some(Arc::new(policy));
        self
    }

    /// Records per-tenant request counts and latencies through the `metrics` facade.
    pub fn metrics(mut self, metrics: TenantMetrics) -> Self {
        Arc::make_mut(&mut self.config).metrics = Some(metrics);
        self
    }
}

impl<S> Layer<S> for TenantLayer {
    type Service = TenantMiddleware<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TenantMiddleware {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`TenantLayer`].
#[derive(Clone)]
pub struct TenantMiddleware<S> {
    inner: S,
    config: Arc<LayerConfig>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for TenantMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantMiddleware")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the layer leaves in the request extensions for the extractors.
#[derive(Clone, Debug)]
struct RequestTenant {
    manager: TenantManager,
    hint: Arc<str>,
    tenant: Option<Arc<Tenant>>,
}

async fn resolve_request(
    config: &LayerConfig,
    parts: &Parts,
) -> Result<Option<Arc<Tenant>>, Error> {
    let mut authenticated = false;
    for resolver in &config.resolvers {
        let Some(candidate) = resolver.resolve(parts).await? else {
            continue;
        };
        // Before any lookup of the tenant: an unauthenticated request learns nothing
        // about which tenants exist.
        if let Some(policy) = &config.policy {
            if !authenticated {
                policy.authenticate(parts)?;
                authenticated = true;
            }
            policy.check_candidate(parts, &candidate)?;
        }
        if let Some(tenant) = config.manager.resolve_candidate(candidate).await? {
            if let Some(policy) = &config.policy {
                policy.check(parts, &tenant)?;
            }
            return Ok(Some(tenant));
        }
    }
    if config.required {
        return Err(Error::MissingTenant {
            hint: config.hint.to_string(),
        });
    }
    Ok(None)
}

impl<S, B> Service<Request<B>> for TenantMiddleware<S>
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
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let (mut parts, body) = req.into_parts();
            let tenant = match resolve_request(&config, &parts).await {
                Ok(tenant) => tenant,
                Err(e) => return Ok(e.into_response()),
            };
            parts.extensions.insert(RequestTenant {
                manager: config.manager.clone(),
                hint: config.hint.clone(),
                tenant: tenant.clone(),
            });
            let req = Request::from_parts(parts, body);
            let Some(tenant) = tenant else {
                return inner.call(req).await;
            };
            let span = tracing::info_span!("tenant", tenant_id = %tenant.id);
            let response = TenantContext::scope(tenant.clone(), inner.call(req))
                .instrument(span)
                .await;
            if let (Some(metrics), Ok(response)) = (&config.metrics, &response) {
                metrics.record(&tenant.id, response.status().as_u16(), started.elapsed());
            }
            response
        })
    }
}

/// The tenant [`TenantLayer`] resolved for a request, if any (for layers inside it).
pub(crate) fn request_tenant(extensions: &http::Extensions) -> Option<Arc<Tenant>> {
    extensions
        .get::<RequestTenant>()
        .and_then(|s| s.tenant.clone())
}

fn layer_record(parts: &Parts) -> Result<&RequestTenant, Error> {
    parts.extensions.get::<RequestTenant>().ok_or_else(|| {
        tracing::error!("a tenantry extractor ran on a route without `TenantLayer`");
        Error::NoTenantInScope
    })
}

fn required_tenant(parts: &Parts) -> Result<(Arc<Tenant>, TenantManager), Error> {
    let scope = layer_record(parts)?;
    match &scope.tenant {
        Some(tenant) => Ok((tenant.clone(), scope.manager.clone())),
        None => Err(Error::MissingTenant {
            hint: scope.hint.to_string(),
        }),
    }
}

/// The request's tenant. Rejects with 400 when the request names none; use
/// `Option<CurrentTenant>` on routes where the tenant is optional.
#[derive(Debug, Clone)]
pub struct CurrentTenant(pub Arc<Tenant>);

impl<S: Send + Sync> FromRequestParts<S> for CurrentTenant {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        required_tenant(parts).map(|(tenant, _)| CurrentTenant(tenant))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for CurrentTenant {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Error> {
        Ok(layer_record(parts)?.tenant.clone().map(CurrentTenant))
    }
}

/// The [`TenantManager`] behind the layer, as an extractor for handlers that need it
/// (`async fn handler(manager: TenantManager)`).
impl<S: Send + Sync> FromRequestParts<S> for TenantManager {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(layer_record(parts)?.manager.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TenantDb {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        let (tenant, manager) = required_tenant(parts)?;
        manager.tenant_db(tenant).await
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TenantTx {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        let (tenant, manager) = required_tenant(parts)?;
        manager.tenant_tx(tenant).await
    }
}

/// `Option<TenantDb>`: a connection when the request names a tenant, `None` when it
/// does not (behind an `.optional()` layer).
impl<S: Send + Sync> OptionalFromRequestParts<S> for TenantDb {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Error> {
        let scope = layer_record(parts)?;
        match &scope.tenant {
            Some(tenant) => scope.manager.tenant_db(tenant.clone()).await.map(Some),
            None => Ok(None),
        }
    }
}

/// `Option<TenantTx>`: a transaction when the request names a tenant, `None` when it
/// does not (behind an `.optional()` layer).
impl<S: Send + Sync> OptionalFromRequestParts<S> for TenantTx {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Error> {
        let scope = layer_record(parts)?;
        match &scope.tenant {
            Some(tenant) => scope.manager.tenant_tx(tenant.clone()).await.map(Some),
            None => Ok(None),
        }
    }
}
