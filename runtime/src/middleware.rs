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
use crate::tenant::{Tenant, TenantId};

/// The header the tenant is read from unless configured otherwise.
pub const DEFAULT_TENANT_HEADER: &str = "x-tenant-id";

/// Resolves the tenant of every request and runs the rest of the stack inside
/// [`TenantContext::scope`].
///
/// | request | response |
/// |---|---|
/// | no tenant header (layer requires one) | 400 |
/// | malformed tenant id | 400 |
/// | unknown or deleted tenant | 404 |
/// | suspended (or provisioning) tenant | 403 |
/// | registry unreachable | 503 |
///
/// Errors are `application/problem+json` bodies. Routes that must not be scoped
/// (admin routes) simply live in a router the layer is not applied to.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use tenantry::{CurrentTenant, TenantLayer, TenantManager};
///
/// async fn whoami(CurrentTenant(tenant): CurrentTenant) -> String {
///     tenant.name.clone()
/// }
///
/// # fn f(manager: TenantManager) {
/// let app: Router = Router::new()
///     .route("/whoami", get(whoami))
///     .layer(TenantLayer::new(manager));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TenantLayer {
    config: Arc<LayerConfig>,
}

#[derive(Clone, Debug)]
struct LayerConfig {
    manager: TenantManager,
    header: HeaderName,
    required: bool,
}

impl TenantLayer {
    /// A layer reading `X-Tenant-ID` and requiring it.
    pub fn new(manager: TenantManager) -> Self {
        Self {
            config: Arc::new(LayerConfig {
                manager,
                header: HeaderName::from_static(DEFAULT_TENANT_HEADER),
                required: true,
            }),
        }
    }

    /// Reads the tenant from `header` instead.
    pub fn header(mut self, header: HeaderName) -> Self {
        Arc::make_mut(&mut self.config).header = header;
        self
    }

    /// Lets requests without the header through with no tenant in scope (a present
    /// but invalid, unknown or suspended tenant is still refused).
    pub fn optional(mut self) -> Self {
        Arc::make_mut(&mut self.config).required = false;
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
#[derive(Clone, Debug)]
pub struct TenantMiddleware<S> {
    inner: S,
    config: Arc<LayerConfig>,
}

/// What the layer leaves in the request extensions for the extractors.
#[derive(Clone, Debug)]
struct Scope {
    manager: TenantManager,
    header: HeaderName,
    tenant: Option<Arc<Tenant>>,
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let raw = req.headers().get(&config.header).map(|v| v.to_str());
            let tenant = match raw {
                None if config.required => {
                    return Ok(Error::MissingTenant {
                        header: config.header.to_string(),
                    }
                    .into_response());
                }
                None => None,
                Some(value) => {
                    let resolved = match value {
                        Err(_) => Err(Error::InvalidTenantId {
                            value: "<not visible ASCII>".to_owned(),
                            reason: "only lowercase letters `a-z`, digits and `-` are allowed",
                        }),
                        Ok(text) => match TenantId::parse(text) {
                            Ok(id) => config.manager.resolve(&id).await,
                            Err(e) => Err(e),
                        },
                    };
                    match resolved {
                        Ok(tenant) => Some(tenant),
                        Err(e) => return Ok(e.into_response()),
                    }
                }
            };
            req.extensions_mut().insert(Scope {
                manager: config.manager.clone(),
                header: config.header.clone(),
                tenant: tenant.clone(),
            });
            match tenant {
                Some(tenant) => TenantContext::scope(tenant, inner.call(req)).await,
                None => inner.call(req).await,
            }
        })
    }
}

fn scope(parts: &Parts) -> Result<&Scope, Error> {
    parts.extensions.get::<Scope>().ok_or_else(|| {
        tracing::error!("a tenantry extractor ran on a route without `TenantLayer`");
        Error::NoTenantInScope
    })
}

fn required_tenant(parts: &Parts) -> Result<(Arc<Tenant>, TenantManager), Error> {
    let scope = scope(parts)?;
    match &scope.tenant {
        Some(tenant) => Ok((tenant.clone(), scope.manager.clone())),
        None => Err(Error::MissingTenant {
            header: scope.header.to_string(),
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
        Ok(scope(parts)?.tenant.clone().map(CurrentTenant))
    }
}

/// The [`TenantManager`] behind the layer, for handlers that need it.
#[derive(Debug, Clone)]
pub struct Tenants(pub TenantManager);

impl<S: Send + Sync> FromRequestParts<S> for Tenants {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(Tenants(scope(parts)?.manager.clone()))
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
        let scope = scope(parts)?;
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
        let scope = scope(parts)?;
        match &scope.tenant {
            Some(tenant) => scope.manager.tenant_tx(tenant.clone()).await.map(Some),
            None => Ok(None),
        }
    }
}
