//! Every name tenantry gives a PostgreSQL object, and the one check for the names it
//! accepts from configuration or reads back from the registry.
//!
//! A tenant's schema is `tenant_<id>` ([`TenantId::schema_name`]), its database
//! `<database prefix><id>` (prefix `tenant_` by default), the schema template
//! `<control schema>_template` and the database template `<database prefix>_template`:
//! names no tenant id can produce, because ids never contain `_`.

use crate::error::Error;
pub use crate::tenant::TENANT_PREFIX;
use crate::tenant::TenantId;

/// The setting that row-level security policies read: the tenant of the connection.
pub const TENANT_SETTING: &str = "tenantry.tenant_id";

/// Quotes an identifier for PostgreSQL (`"name"`, doubling embedded quotes).
///
/// tenantry only ever quotes names it derived itself from validated input; quoting is
/// a second line of defence, not the first.
///
/// ```
/// assert_eq!(tenantry::strategy::quote_ident("tenant_acme"), "\"tenant_acme\"");
/// assert_eq!(tenantry::strategy::quote_ident("a\"b"), "\"a\"\"b\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for PostgreSQL (`'text'`, doubling embedded quotes), for
/// statements that take no parameters (`SET`). Only for values tenantry derived from
/// validated input.
///
/// ```
/// assert_eq!(tenantry::strategy::quote_literal("acme"), "'acme'");
/// assert_eq!(tenantry::strategy::quote_literal("a'b"), "'a''b'");
/// ```
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Whether `name` is a plain lowercase identifier of at most `max` bytes: lowercase
/// ASCII letters, digits and `_`, not starting with a digit. The one rule for every
/// PostgreSQL name tenantry accepts (control schema, database prefix, tables given to
/// [`crate::strategy::rls_sql`], names read back from the registry): such a name means
/// the same quoted and unquoted, and is safe in a URL or a `pg_dump` argument.
pub(crate) fn is_identifier(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// [`is_identifier`] as a validation error naming `what` was wrong.
pub(crate) fn check_identifier(what: &str, name: &str, max: usize) -> Result<(), Error> {
    if is_identifier(name, max) {
        Ok(())
    } else {
        Err(Error::Validation(format!(
            "{what} `{}` must be 1 to {max} lowercase letters, digits or `_`, not starting \
             with a digit",
            name.chars().take(64).collect::<String>().escape_debug()
        )))
    }
}

/// The longest database prefix: with a 40-byte id the name stays within 63 bytes.
const MAX_DATABASE_PREFIX: usize = 16;

/// The names of one registry's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    control_schema: String,
    database_prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            control_schema: "tenantry".to_owned(),
            database_prefix: TENANT_PREFIX.to_owned(),
        }
    }
}

impl Names {
    /// Names under `control_schema`, with tenant databases named `<database_prefix><id>`.
    pub fn new(control_schema: &str, database_prefix: &str) -> Result<Self, Error> {
        check_identifier("control schema", control_schema, 63)?;
        check_identifier("database prefix", database_prefix, MAX_DATABASE_PREFIX)?;
        if !database_prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(Error::Validation(format!(
                "database prefix `{database_prefix}` must start with a lowercase letter"
            )));
        }
        Ok(Self {
            control_schema: control_schema.to_owned(),
            database_prefix: database_prefix.to_owned(),
        })
    }

    /// The prefix of tenant database names.
    pub fn database_prefix(&self) -> &str {
        &self.database_prefix
    }

    /// The schema of a schema tenant.
    pub fn schema(&self, id: &TenantId) -> String {
        id.schema_name()
    }

    /// The database of a database tenant.
    pub fn database(&self, id: &TenantId) -> String {
        format!("{}{}", self.database_prefix, id.name_part())
    }

    /// The schema that schema tenants are cloned from.
    pub fn template_schema(&self) -> String {
        format!("{}_template", self.control_schema)
    }

    /// The database that database tenants are copied from (on every server).
    pub fn template_database(&self) -> String {
        format!("{}_template", self.database_prefix)
    }
}

/// A `LIKE` pattern matching the schemas of schema tenants (`tenant\_%`).
pub(crate) fn tenant_schema_pattern() -> String {
    format!("{}%", TENANT_PREFIX.replace('_', "\\_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_cannot_collide_with_tenants() {
        let names = Names::default();
        let id = TenantId::parse("template").unwrap();
        assert_eq!(names.schema(&id), "tenant_template");
        assert_eq!(names.database(&id), "tenant_template");
        assert_eq!(names.template_schema(), "tenantry_template");
        assert_eq!(names.template_database(), "tenant__template");
        assert_eq!(tenant_schema_pattern(), "tenant\\_%");
    }

    #[test]
    fn one_rule_for_accepted_names() {
        for ok in ["tenantry", "_x", "a1_b"] {
            assert!(is_identifier(ok, 63), "{ok}");
        }
        for bad in ["", "1a", "A", "a-b", "a.b", "a\"b", "é"] {
            assert!(check_identifier("name", bad, 63).is_err(), "{bad:?}");
        }
        assert!(Names::new("tenantry", &"p".repeat(17)).is_err());
        assert!(Names::new("Tenantry", "tenant_").is_err());
        assert!(Names::new("tenantry", "_t").is_err());
    }
}
