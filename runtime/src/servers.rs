//! The PostgreSQL servers tenants live on, by name.

use std::collections::HashMap;

use sqlx::postgres::PgConnectOptions;

use crate::error::Error;

/// The name of the registry's own server.
pub const DEFAULT_SERVER: &str = "default";

/// The PostgreSQL servers tenants can be placed on, by name. `default` is the
/// registry's server (the manager's pool).
#[derive(Clone, Default)]
pub struct Servers {
    named: HashMap<String, PgConnectOptions>,
}

impl Servers {
    /// Adds (or replaces) a server. Its options name a maintenance database (for
    /// example `postgres`) used to create and drop tenant databases.
    pub fn add(&mut self, name: impl Into<String>, options: PgConnectOptions) {
        self.named.insert(name.into(), options);
    }

    /// The configured names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.named.keys().map(String::as_str)
    }

    /// Whether a server of that name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.named.contains_key(name)
    }

    /// The connect options of server `name`.
    pub fn get(&self, name: &str) -> Result<&PgConnectOptions, Error> {
        self.named.get(name).ok_or_else(|| {
            Error::Validation(format!(
                "unknown server `{}` (configured: {})",
                name.escape_debug(),
                {
                    let mut names: Vec<&str> = self.named.keys().map(String::as_str).collect();
                    names.sort();
                    names.join(", ")
                }
            ))
        })
    }
}

/// Where a server is, without its password (sqlx's own `Debug` of connect options
/// prints it).
pub(crate) struct Redacted<'a>(pub &'a PgConnectOptions);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.0.get_username(),
            self.0.get_host(),
            self.0.get_port(),
            self.0.get_database().unwrap_or_default()
        )
    }
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.named.keys().collect();
        names.sort();
        f.debug_map()
            .entries(names.into_iter().map(|n| (n, Redacted(&self.named[n]))))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_carries_no_password() {
        let mut servers = Servers::default();
        servers.add(
            "eu",
            PgConnectOptions::new()
                .host("db.example")
                .username("app")
                .password("hunter2-secret")
                .database("postgres"),
        );
        let shown = format!("{servers:?}");
        assert!(shown.contains("app@db.example:5432/postgres"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
