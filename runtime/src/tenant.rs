//! The tenant record and its validated identifier.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest tenant id accepted. Schema names derived from ids stay far below
/// PostgreSQL's 63-byte identifier limit, so two ids can never collide by truncation.
pub const MAX_TENANT_ID_LEN: usize = 40;

/// Ids that match the pattern but name PostgreSQL's or tenantry's own namespaces.
const RESERVED_TENANT_IDS: &[&str] = &["public", "pg", "information-schema", "tenantry", "shared"];

/// The prefix of every schema tenantry makes for a tenant (and of tenant databases
/// unless another prefix is configured).
pub const TENANT_PREFIX: &str = "tenant_";

/// Why a text is not a [`TenantId`] (converts into [`crate::Error::InvalidTenantId`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTenantId {
    /// A short, escaped prefix of the offending value.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

impl fmt::Display for InvalidTenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid tenant id `{}`: {}", self.value, self.reason)
    }
}

impl std::error::Error for InvalidTenantId {}

/// A validated tenant identifier.
///
/// The pattern is strict: 1 to 40 bytes of lowercase ASCII letters, digits and `-`,
/// starting with a letter and not ending with `-`; a few names that PostgreSQL or
/// tenantry use themselves (`public`, `pg-*`, ...) are reserved. Everything tenantry derives from
/// an id (schema names, setting values) is built from this type only, so text from a
/// request can never reach SQL unchecked.
///
/// ```
/// use tenantry::TenantId;
///
/// let id: TenantId = "acme-corp".parse().unwrap();
/// assert_eq!(id.as_str(), "acme-corp");
/// assert_eq!(id.schema_name(), "tenant_acme_corp");
///
/// assert!("Acme".parse::<TenantId>().is_err());
/// assert!("public\"; DROP SCHEMA public;--".parse::<TenantId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `raw` against the tenant id pattern.
    pub fn parse(raw: &str) -> Result<Self, InvalidTenantId> {
        let invalid = |reason: &'static str| InvalidTenantId {
            // Never echo unbounded or binary input back; keep a short, escaped prefix.
            value: raw
                .chars()
                .take(48)
                .collect::<String>()
                .escape_debug()
                .to_string(),
            reason,
        };
        if raw.is_empty() {
            return Err(invalid("it is empty"));
        }
        if raw.len() > MAX_TENANT_ID_LEN {
            return Err(invalid("it is longer than 40 bytes"));
        }
        let bytes = raw.as_bytes();
        if !bytes[0].is_ascii_lowercase() {
            return Err(invalid("it must start with a lowercase letter"));
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        {
            return Err(invalid(
                "only lowercase letters `a-z`, digits and `-` are allowed",
            ));
        }
        if bytes[bytes.len() - 1] == b'-' {
            return Err(invalid("it must not end with `-`"));
        }
        if RESERVED_TENANT_IDS.contains(&raw) || raw.starts_with("pg-") {
            return Err(invalid(
                "it is reserved (`public`, `pg`, `pg-*`, `information-schema`, `tenantry`, `shared`)",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of this tenant's schema under the schema strategy: `tenant_` followed by
    /// the id with `-` replaced by `_`. The mapping is one to one because ids cannot
    /// contain `_`, and the result never needs quoting (it is still quoted in DDL).
    pub fn schema_name(&self) -> String {
        format!("{TENANT_PREFIX}{}", self.name_part())
    }

    /// The id as it appears in the names of PostgreSQL objects: `-` becomes `_`.
    pub(crate) fn name_part(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantId {
    type Err = InvalidTenantId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        TenantId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Where a tenant is in its life.
///
/// `provisioning -> active <-> suspended -> deleted`. Only `active` tenants are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Being created; not yet served.
    Provisioning,
    /// Served.
    Active,
    /// Kept, but requests are refused with 403.
    Suspended,
    /// Its data is gone; the registry keeps the row as a tombstone.
    Deleted,
}

impl TenantStatus {
    /// The text stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
        }
    }

    /// The status stored in the registry as `s`, if it is one.
    pub(crate) fn from_db(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => Self::Provisioning,
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a tenant's data is isolated from other tenants'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One PostgreSQL schema per tenant in a shared database (the default).
    #[default]
    Schema,
    /// A database per tenant, named `<database prefix><id with - as _>` (prefix
    /// `tenant_` by default, see `TenantManagerBuilder::database_prefix`; the name is
    /// kept in [`Tenant::storage`]), on the server the tenant is placed on, created
    /// from a template database.
    Database,
    /// Shared tables with a `tenant_id` column, protected by row-level security: the
    /// tenant's connections carry the `tenantry.tenant_id` setting that the policies
    /// read (see [`crate::strategy::rls_sql`]).
    Row,
}

impl Strategy {
    /// The text stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schema => "schema",
            Self::Database => "database",
            Self::Row => "row",
        }
    }

    /// The strategy stored in the registry as `s`, if it is one.
    pub(crate) fn from_db(s: &str) -> Option<Self> {
        match s {
            "schema" => Some(Self::Schema),
            "row" => Some(Self::Row),
            "database" => Some(Self::Database),
            _ => None,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's limits, kept in the registry and changed at run time
/// ([`TenantManager::set_tenant_limits`](crate::TenantManager::set_tenant_limits), `tenantry tenants
/// set-limits`); a field left unset takes the default the application configured.
///
/// ```
/// let limits: tenantry::TenantLimits =
///     serde_json::from_str(r#"{"rate": 50.0, "burst": 100, "concurrency": 8}"#).unwrap();
/// assert_eq!(limits.concurrency, Some(8));
/// assert!(limits.check().is_ok());
/// assert!(tenantry::TenantLimits { rate: Some(-1.0), ..Default::default() }.check().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Requests per second, on average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate (the bucket's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests in flight at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// The longest a statement of the tenant may run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout_ms: Option<u64>,
}

// Limits are checked before they are stored or used, and `check` refuses a rate
// that is not finite: no NaN ever compares.
impl Eq for TenantLimits {}

impl TenantLimits {
    /// These limits, with each unset field taken from `defaults`.
    pub fn or(self, defaults: TenantLimits) -> TenantLimits {
        TenantLimits {
            rate: self.rate.or(defaults.rate),
            burst: self.burst.or(defaults.burst),
            concurrency: self.concurrency.or(defaults.concurrency),
            statement_timeout_ms: self.statement_timeout_ms.or(defaults.statement_timeout_ms),
        }
    }

    /// Whether every set field is in range: a rate of 0.01 to 1,000,000 per second, a
    /// burst of 1 to 1,000,000, a concurrency of 1 to 100,000, a statement timeout of
    /// 100 ms to 24 hours. The message says which field is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0 && rate <= 1e6)
        {
            return Err(format!(
                "`rate` must be above 0 and at most 1000000 per second, not {rate}"
            ));
        }
        if let Some(burst) = self.burst
            && !(1..=1_000_000).contains(&burst)
        {
            return Err(format!("`burst` must be 1 to 1000000, not {burst}"));
        }
        if let Some(n) = self.concurrency
            && !(1..=100_000).contains(&n)
        {
            return Err(format!("`concurrency` must be 1 to 100000, not {n}"));
        }
        if let Some(ms) = self.statement_timeout_ms
            && !(100..=86_400_000).contains(&ms)
        {
            // Below 100 ms the timeout would also cut tenantry's own binding and
            // reset statements on the tenant's connections.
            return Err(format!(
                "`statement_timeout_ms` must be 100 to 86400000 (24 hours), not {ms}"
            ));
        }
        Ok(())
    }
}

/// What a resolver found in a request: a way of naming a tenant, not yet looked up
/// (see [`TenantManager::resolve_candidate`](crate::TenantManager::resolve_candidate)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// A tenant id (validated).
    Id(TenantId),
    /// A host name to look up among the tenants' registered domains.
    Domain(String),
}

/// A tenant as recorded in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// A display name.
    pub name: String,
    /// The primary domain, if any (for example `acme.example.com`): one of
    /// [`Tenant::domains`].
    pub domain: Option<String>,
    /// Every domain that names the tenant (the primary included), sorted.
    pub domains: Vec<String>,
    /// The isolation strategy.
    pub strategy: Strategy,
    /// The lifecycle status.
    pub status: TenantStatus,
    /// Where the tenant's data lives: its schema (schema strategy) or its database on
    /// [`Tenant::server`] (database strategy); row tenants keep their id's schema name
    /// here, unused. Prefer [`Tenant::schema`] and [`Tenant::database`], which say
    /// which it is. Serialized as `schema_name`, its name in the registry and in earlier
    /// versions.
    #[serde(rename = "schema_name")]
    pub storage: String,
    /// The named server the tenant lives on (`default` unless placed elsewhere).
    pub server: String,
    /// Which life of this id the record is: a number the registry gives every tenant
    /// it creates, never reused. A tenant deleted and created again under the same id
    /// is another incarnation, and no connection bound to the old one serves the new.
    pub incarnation: i64,
    /// The newest tenant migration applied to its schema or database (`None` for row
    /// tenants, or before any).
    pub schema_version: Option<i64>,
    /// Its own limits (request rate, concurrency, statement timeout); unset ones
    /// take the defaults of the application's
    /// [`TenantLimitLayer`](crate::TenantLimitLayer).
    pub limits: TenantLimits,
    /// When the tenant was created.
    pub created_at: DateTime<Utc>,
    /// When the tenant last changed.
    pub updated_at: DateTime<Utc>,
}

impl Tenant {
    /// The tenant's own schema, for a schema tenant.
    ///
    /// ```
    /// # let tenant = tenantry::__private::example_tenant("acme");
    /// assert_eq!(tenant.schema(), Some("tenant_acme"));
    /// assert_eq!(tenant.database(), None);
    /// ```
    pub fn schema(&self) -> Option<&str> {
        (self.strategy == Strategy::Schema).then_some(self.storage.as_str())
    }

    /// The tenant's own database (on [`Tenant::server`]), for a database tenant.
    pub fn database(&self) -> Option<&str> {
        (self.strategy == Strategy::Database).then_some(self.storage.as_str())
    }
}

/// What it takes to create a tenant.
///
/// ```
/// let new: tenantry::NewTenant =
///     serde_json::from_str(r#"{"id":"acme","name":"Acme","domain":"acme.example.com"}"#).unwrap();
/// assert_eq!(new.id.as_str(), "acme");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// The id; must match the [`TenantId`] pattern.
    pub id: TenantId,
    /// A display name (1 to 200 characters).
    pub name: String,
    /// An optional domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// The isolation strategy; schema per tenant when absent.
    #[serde(default)]
    pub strategy: Strategy,
    /// The named server a `database` tenant is placed on (`default`, the registry's
    /// server, when absent).
    #[serde(default)]
    pub server: Option<String>,
}

impl NewTenant {
    /// A new tenant with the default strategy and no domain.
    pub fn new(id: TenantId, name: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
            domain: None,
            strategy: Strategy::default(),
            server: None,
        }
    }

    /// Sets the strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Places a `database` tenant on the named server.
    pub fn on_server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(server.into());
        self
    }

    /// Sets the domain.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The domain as requests name it: lowercase, without a trailing dot.
    pub fn normalized(&self) -> Self {
        let mut new = self.clone();
        new.domain = new.domain.map(|d| normalized_domain(&d));
        new
    }
}

/// A domain as stored and as requests name it: trimmed, lowercase, without a trailing
/// dot (the one normalization; `domain::Domain` checks what it gives).
pub(crate) fn normalized_domain(raw: &str) -> String {
    raw.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl sqlx::Type<sqlx::Postgres> for TenantId {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for TenantId {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

/// Decoding validates: a stored value that is not a valid id is an error, not a `TenantId`.
impl<'r> sqlx::Decode<'r, sqlx::Postgres> for TenantId {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(TenantId::parse(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_pattern() {
        for ok in ["a", "acme", "acme-corp", "t1", "a-b-c-9", &"a".repeat(40)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_hostile_and_malformed_ids() {
        for bad in [
            "",
            "Acme",
            "1acme",
            "-acme",
            "acme-",
            "acme_corp",
            "acme corp",
            "\"; DROP SCHEMA public;--",
            "$user",
            "pg_catalog",
            "public",
            "pg-toast",
            "a\0b",
            "ünïcode",
            "acme'",
            &"a".repeat(41),
            &"a".repeat(64),
        ] {
            let err = TenantId::parse(bad).unwrap_err();
            assert!(!err.reason.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn schema_names_are_one_to_one_and_short() {
        let a = TenantId::parse("a-b").unwrap();
        let b = TenantId::parse("ab").unwrap();
        assert_ne!(a.schema_name(), b.schema_name());
        assert!(
            TenantId::parse(&"z".repeat(40))
                .unwrap()
                .schema_name()
                .len()
                <= 63
        );
    }
}
