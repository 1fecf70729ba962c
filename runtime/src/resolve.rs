//! How a request names its tenant: resolvers, tried in order by [`TenantLayer`].
//!
//! [`TenantLayer`]: crate::TenantLayer

use futures::future::BoxFuture;
use http::request::Parts;
use http::{HeaderName, header};

use crate::error::Error;
use crate::tenant::TenantId;

/// The header the tenant is read from unless configured otherwise.
pub const DEFAULT_TENANT_HEADER: &str = "x-tenant-id";

pub use crate::tenant::Candidate;

/// Finds the tenant a request names. Return `Ok(None)` when the request does not use
/// this way of naming a tenant (the next resolver is tried), and an error (400) when
/// it does but the value is malformed.
///
/// Implement it for anything the built-in resolvers do not cover, for example a
/// claim of a verified JWT; or use [`resolver_fn`] with a closure.
pub trait TenantResolver: Send + Sync + 'static {
    /// The candidate tenant of this request, if this resolver applies.
    fn resolve<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Option<Candidate>, Error>>;

    /// How a client uses this resolver, for the message of a 400 when no resolver
    /// found a tenant (for example "send the `x-tenant-id` header").
    fn describe(&self) -> String;
}

/// The tenant id in a header (`X-Tenant-ID` by default).
#[derive(Debug, Clone)]
pub struct HeaderResolver {
    header: HeaderName,
}

impl HeaderResolver {
    /// Reads `header`.
    pub fn new(header: HeaderName) -> Self {
        Self { header }
    }
}

impl Default for HeaderResolver {
    fn default() -> Self {
        Self::new(HeaderName::from_static(DEFAULT_TENANT_HEADER))
    }
}

impl TenantResolver for HeaderResolver {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Option<Candidate>, Error>> {
        let result = match parts.headers.get(&self.header) {
            None => Ok(None),
            Some(value) => match value.to_str() {
                Ok(text) => id_candidate(text),
                Err(_) => Err(Error::InvalidTenantId {
                    value: "<not visible ASCII>".to_owned(),
                    reason: "only lowercase letters `a-z`, digits and `-` are allowed",
                }),
            },
        };
        Box::pin(std::future::ready(result))
    }

    fn describe(&self) -> String {
        format!("send the `{}` header", self.header)
    }
}

/// The request's host: a subdomain of a base domain (`acme.example.com` with base
/// `example.com` names `acme`), or else a tenant's registered `domain`.
///
/// A host that is the base domain itself, or that no tenant registered, names no
/// tenant (the next resolver is tried). A malformed subdomain is a 400, an unknown
/// one a 404.
#[derive(Debug, Clone, Default)]
pub struct HostResolver {
    base: Option<String>,
    domains: bool,
}

impl HostResolver {
    /// Resolves registered domains only.
    pub fn domains() -> Self {
        Self {
            base: None,
            domains: true,
        }
    }

    /// Also resolves `{id}.{base}` (for example `acme.localhost`).
    pub fn subdomains_of(mut self, base: impl Into<String>) -> Self {
        self.base = Some(base.into().trim_matches('.').to_ascii_lowercase());
        self
    }

    /// Resolves `{id}.{base}` only, not registered domains.
    pub fn subdomains_only(base: impl Into<String>) -> Self {
        Self {
            base: None,
            domains: false,
        }
        .subdomains_of(base)
    }
}

/// The host of a request without port and trailing dot, lowercased.
pub(crate) fn request_host(parts: &Parts) -> Result<Option<String>, Error> {
    // An absolute-form request target's authority wins over `Host` (RFC 9112, 3.2.2).
    let raw = match parts.uri.authority() {
        Some(authority) => authority.as_str().rsplit('@').next().unwrap_or_default(),
        None => {
            let mut hosts = parts.headers.get_all(header::HOST).iter();
            let first = hosts.next();
            if hosts.next().is_some() {
                return Err(Error::Validation(
                    "the request has more than one `Host` header".to_owned(),
                ));
            }
            match first.and_then(|v| v.to_str().ok()) {
                Some(host) => host,
                None => return Ok(None),
            }
        }
    };
    let host = if raw.starts_with('[') {
        // An IPv6 literal keeps its brackets.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    Ok((!host.is_empty()).then_some(host))
}

/// `text` as a tenant id candidate, or the reason it is not one.
fn id_candidate(text: &str) -> Result<Option<Candidate>, Error> {
    Ok(Some(Candidate::Id(TenantId::parse(text)?)))
}

impl TenantResolver for HostResolver {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Option<Candidate>, Error>> {
        let result = (|| {
            let Some(host) = request_host(parts)? else {
                return Ok(None);
            };
            if let Some(base) = &self.base {
                if host == *base {
                    return Ok(None);
                }
                if let Some(sub) = host
                    .strip_suffix(base.as_str())
                    .and_then(|s| s.strip_suffix('.'))
                {
                    return id_candidate(sub);
                }
            }
            if self.domains {
                return Ok(Some(Candidate::Domain(host)));
            }
            Ok(None)
        })();
        Box::pin(std::future::ready(result))
    }

    fn describe(&self) -> String {
        match (&self.base, self.domains) {
            (Some(base), true) => format!("use the host `{{tenant}}.{base}` or a tenant's domain"),
            (Some(base), false) => format!("use the host `{{tenant}}.{base}`"),
            (None, _) => "use a tenant's domain as the host".to_owned(),
        }
    }
}

/// A path prefix: with prefix `/t/`, `/t/acme/projects` names `acme`.
///
/// Route the rest with `Router::nest("/t/{tenant}", ...)` (axum strips the prefix).
#[derive(Debug, Clone)]
pub struct PathPrefixResolver {
    prefix: String,
}

impl PathPrefixResolver {
    /// Reads the path segment after `prefix` (for example `/t/`).
    pub fn new(prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.starts_with('/') {
            prefix.insert(0, '/');
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }
}

impl TenantResolver for PathPrefixResolver {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Option<Candidate>, Error>> {
        let result = match parts.uri.path().strip_prefix(self.prefix.as_str()) {
            None => Ok(None),
            Some(rest) => {
                let segment = rest.split('/').next().unwrap_or_default();
                id_candidate(segment)
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn describe(&self) -> String {
        format!("use a path starting with `{}{{tenant}}/`", self.prefix)
    }
}

/// A resolver from a closure, for anything else (a JWT claim, a cookie, ...).
///
/// ```
/// use tenantry::{Candidate, resolver_fn};
///
/// // The tenant claim an authentication layer put in the request extensions.
/// #[derive(Clone)]
/// struct Claims { tenant: String }
///
/// let by_claim = resolver_fn("sign in with a tenant account", |parts| {
///     match parts.extensions.get::<Claims>() {
///         Some(claims) => Ok(Some(Candidate::Id(claims.tenant.parse()?))),
///         None => Ok(None),
///     }
/// });
/// # let _ = by_claim;
/// ```
pub fn resolver_fn<F>(description: impl Into<String>, f: F) -> FnResolver<F>
where
    F: Fn(&Parts) -> Result<Option<Candidate>, Error> + Send + Sync + 'static,
{
    FnResolver {
        f,
        description: description.into(),
    }
}

/// See [`resolver_fn`].
pub struct FnResolver<F> {
    f: F,
    description: String,
}

impl<F> std::fmt::Debug for FnResolver<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnResolver")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl<F> TenantResolver for FnResolver<F>
where
    F: Fn(&Parts) -> Result<Option<Candidate>, Error> + Send + Sync + 'static,
{
    fn resolve<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Option<Candidate>, Error>> {
        Box::pin(std::future::ready((self.f)(parts)))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(host: &str, path: &str) -> Parts {
        http::Request::get(path)
            .header("host", host)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn host_without_port_and_case() {
        assert_eq!(
            request_host(&parts("Acme.Example.com:8080", "/"))
                .unwrap()
                .as_deref(),
            Some("acme.example.com")
        );
        assert_eq!(
            request_host(&parts("acme.localhost.", "/"))
                .unwrap()
                .as_deref(),
            Some("acme.localhost")
        );
        assert_eq!(
            request_host(&parts("[::1]:3000", "/")).unwrap().as_deref(),
            Some("[::1]")
        );
    }

    #[test]
    fn absolute_form_wins_and_two_hosts_are_refused() {
        let p = http::Request::get("http://s2.localhost/api")
            .header("host", "s1.localhost")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(request_host(&p).unwrap().as_deref(), Some("s2.localhost"));
        let p = http::Request::get("/")
            .header("host", "a.localhost")
            .header("host", "b.localhost")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(matches!(request_host(&p), Err(Error::Validation(_))));
    }

    #[tokio::test]
    async fn host_resolver() {
        let r = HostResolver::domains().subdomains_of("localhost");
        assert_eq!(
            r.resolve(&parts("acme.localhost:3000", "/")).await.unwrap(),
            Some(Candidate::Id("acme".parse().unwrap()))
        );
        assert_eq!(
            r.resolve(&parts("localhost:3000", "/")).await.unwrap(),
            None
        );
        assert_eq!(
            r.resolve(&parts("shop.example.com", "/")).await.unwrap(),
            Some(Candidate::Domain("shop.example.com".into()))
        );
        assert!(r.resolve(&parts("bad_id.localhost", "/")).await.is_err());
        assert!(
            r.resolve(&parts("a.b.localhost", "/")).await.is_err(),
            "nested subdomains are not ids"
        );
        let only = HostResolver::subdomains_only("localhost");
        assert_eq!(
            only.resolve(&parts("shop.example.com", "/")).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn path_resolver() {
        let r = PathPrefixResolver::new("t");
        assert_eq!(
            r.resolve(&parts("x", "/t/acme/projects")).await.unwrap(),
            Some(Candidate::Id("acme".parse().unwrap()))
        );
        assert_eq!(
            r.resolve(&parts("x", "/api/v1/projects")).await.unwrap(),
            None
        );
        assert!(r.resolve(&parts("x", "/t/ACME/projects")).await.is_err());
        assert!(r.resolve(&parts("x", "/t//projects")).await.is_err());
    }
}
