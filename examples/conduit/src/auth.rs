//! Tenant-bound identity: passwords hashed with Argon2id, tokens that are JWTs
//! (HS256) whose key is derived per tenant and whose claims name the tenant.
//!
//! A user registered in tenant A does not exist in tenant B (each community has its
//! own `users`), and a token A issued is refused by B twice over: B's key does not
//! verify A's signature, and the `tenant` claim is not B. [`TokenPolicy`] refuses such
//! a request (401) in the tenant layer, before the handler runs; the [`AuthUser`]
//! extractor checks the same again, so a handler is safe under any router.

use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tenantry::{CurrentTenant, Tenant, TenantId, TenantPolicy};

use crate::AppState;
use crate::error::ApiError;

/// How long a token is valid.
pub const TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Issues and verifies tokens. The secret never signs a token itself: each tenant's
/// key is HMAC-SHA256(secret, tenant id).
#[derive(Clone)]
pub struct Tokens {
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user's id, in its tenant.
    sub: String,
    /// The tenant that issued the token.
    tenant: String,
    /// Which life of that tenant id (the registry's incarnation): a tenant deleted and
    /// created again under the same id refuses the old one's tokens, though its new
    /// members get the old ids again.
    inc: i64,
    /// Expiry (seconds since the epoch).
    exp: u64,
}

impl Tokens {
    /// Tokens signed with keys derived from `secret` (at least 32 bytes).
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err("the token secret must be at least 32 bytes".to_owned());
        }
        Ok(Self {
            secret: secret.into(),
        })
    }

    /// HMAC-SHA256(secret, tenant id and incarnation): one key per life of a tenant.
    fn key(&self, tenant: &TenantId, incarnation: i64) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC takes a key of any length");
        mac.update(b"conduit token key\0");
        mac.update(tenant.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(&incarnation.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A token for `user` of `tenant`.
    pub fn issue(&self, tenant: &Tenant, user: i64) -> Result<String, ApiError> {
        self.issue_for(&tenant.id, tenant.incarnation, user)
    }

    /// A token for `user` of life `incarnation` of tenant `id`.
    pub fn issue_for(
        &self,
        id: &TenantId,
        incarnation: i64,
        user: i64,
    ) -> Result<String, ApiError> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + TOKEN_LIFETIME;
        let claims = Claims {
            sub: user.to_string(),
            tenant: id.as_str().to_owned(),
            inc: incarnation,
            exp: exp.as_secs(),
        };
        let signing = |e: jsonwebtoken::errors::Error| {
            ApiError::Tenantry(tenantry::Error::Internal(format!("signing: {e}")))
        };
        let key = EncodingKey::from_secret(&self.key(id, incarnation)).map_err(signing)?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(signing)
    }

    /// The user a token of `tenant` names: 401 unless this life of `tenant` signed it,
    /// it names `tenant` and it has not expired.
    pub fn verify(&self, tenant: &Tenant, token: &str) -> Result<i64, ApiError> {
        self.verify_for(&tenant.id, tenant.incarnation, token)
    }

    /// [`Self::verify`] for life `incarnation` of tenant `id`.
    pub fn verify_for(
        &self,
        id: &TenantId,
        incarnation: i64,
        token: &str,
    ) -> Result<i64, ApiError> {
        let refused = || ApiError::Unauthorized("the token is not valid here".to_owned());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let key = DecodingKey::from_secret(&self.key(id, incarnation)).map_err(|_| refused())?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|_| refused())?;
        if data.claims.tenant != id.as_str() || data.claims.inc != incarnation {
            return Err(refused());
        }
        data.claims.sub.parse().map_err(|_| refused())
    }
}

/// The token of a request: `Authorization: Token <jwt>` (the RealWorld scheme) or
/// `Bearer <jwt>`. `None` without the header; 401 for another scheme.
fn token_of(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed `Authorization` header".to_owned()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::Unauthorized(
            "`Authorization` must be `Token <jwt>`".to_owned(),
        )),
    }
}

/// The tenant layer's policy: a request that carries a token may act only for the
/// tenant that issued it (401 otherwise). Requests without one go on; the handlers
/// that need a user ask for [`AuthUser`].
#[derive(Debug, Clone)]
pub struct TokenPolicy(pub Tokens);

impl TenantPolicy for TokenPolicy {
    fn check(&self, parts: &Parts, tenant: &Tenant) -> Result<(), tenantry::Error> {
        match token_of(parts) {
            Ok(None) => Ok(()),
            Ok(Some(token)) => {
                self.0.verify(tenant, token).map(|_| ()).map_err(|_| {
                    tenantry::Error::Unauthorized("the token is not valid here".into())
                })
            }
            Err(_) => Err(tenantry::Error::Unauthorized(
                "`Authorization` must be `Token <jwt>`".into(),
            )),
        }
    }
}

/// The signed-in user of a request (401 without a valid token of this tenant).
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user's id in this tenant.
    pub id: i64,
    /// The token the request carried (answered back in `user.token`).
    pub token: String,
}

async fn auth_user(parts: &mut Parts, state: &AppState) -> Result<Option<AuthUser>, ApiError> {
    let Some(token) = token_of(parts)?.map(str::to_owned) else {
        return Ok(None);
    };
    let CurrentTenant(tenant) =
        <CurrentTenant as FromRequestParts<AppState>>::from_request_parts(parts, state).await?;
    let id = state.tokens.verify(&tenant, &token)?;
    Ok(Some(AuthUser { id, token }))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        auth_user(parts, state)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("sign in first: no token".to_owned()))
    }
}

impl OptionalFromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        auth_user(parts, state).await
    }
}

/// An Argon2id hash of `password` (PHC string), computed off the async threads.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    use argon2::password_hash::PasswordHasher;
    tokio::task::spawn_blocking(move || {
        argon2::Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
    })
    .await
    .map_err(|e| tenantry::Error::Internal(format!("hashing task: {e}")))?
    .map_err(|e| ApiError::Tenantry(tenantry::Error::Internal(format!("hashing: {e}"))))
}

/// Spends the time of a password check without a stored hash (an unknown email), so
/// that a login's duration does not tell whether the email is registered.
pub async fn verify_nothing(password: String) -> Result<(), ApiError> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = match DUMMY.get() {
        Some(hash) => hash.clone(),
        None => {
            let hash = hash_password("not a password of anyone".to_owned()).await?;
            DUMMY.get_or_init(|| hash).clone()
        }
    };
    verify_password(password, dummy).await.map(|_| ())
}

/// Whether `password` matches `hash`, computed off the async threads.
pub async fn verify_password(password: String, hash: String) -> Result<bool, ApiError> {
    use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .map_err(|e| ApiError::Tenantry(tenantry::Error::Internal(format!("hashing task: {e}"))))
}
