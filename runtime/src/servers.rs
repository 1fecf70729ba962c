//! The PostgreSQL servers tenants live on, by name.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::postgres::PgConnectOptions;

use crate::error::Error;

/// The name of the registry's own server.
pub const DEFAULT_SERVER: &str = "default";

/// The PostgreSQL servers tenants can be placed on, by name. `default` is the
/// registry's server (the manager's pool). Servers come from the application
/// ([`TenantManagerBuilder::server`](crate::TenantManagerBuilder::server), which may
/// carry passwords) and from the registry (`tenantry servers add`, kept without
/// passwords); the application's win. Clones share one set, so that every part of a
/// manager sees a server the moment it is known.
#[derive(Clone, Default)]
pub struct Servers {
    inner: Arc<RwLock<Named>>,
}

#[derive(Default)]
struct Named {
    /// Configured by the application.
    app: HashMap<String, PgConnectOptions>,
    /// Kept in the registry.
    registered: HashMap<String, PgConnectOptions>,
}

impl Servers {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Named> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) a server. Its options name a maintenance database (for
    /// example `postgres`) used to create and drop tenant databases.
    pub fn add(&mut self, name: impl Into<String>, options: PgConnectOptions) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .app
            .insert(name.into(), options);
    }

    /// Replaces the servers kept in the registry (`(name, url)`); a URL that does not
    /// parse is skipped with a warning.
    pub(crate) fn set_registered(&self, servers: &[(String, String)]) {
        let mut registered = HashMap::new();
        for (name, url) in servers {
            match url.parse::<PgConnectOptions>() {
                Ok(options) => {
                    registered.insert(name.clone(), options);
                }
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "the registry holds a server URL that does not parse; skipped")
                }
            }
        }
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .registered = registered;
    }

    /// The known names, sorted.
    pub fn names(&self) -> Vec<String> {
        let named = self.read();
        let mut names: Vec<String> = named
            .app
            .keys()
            .chain(named.registered.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether a server of that name is known.
    pub fn contains(&self, name: &str) -> bool {
        let named = self.read();
        named.app.contains_key(name) || named.registered.contains_key(name)
    }

    /// The connect options of server `name`.
    pub fn get(&self, name: &str) -> Result<PgConnectOptions, Error> {
        let named = self.read();
        named
            .app
            .get(name)
            .or_else(|| named.registered.get(name))
            .cloned()
            .ok_or_else(|| {
                drop(named);
                Error::Validation(format!(
                    "unknown server `{}` (known: {}; add one with `tenantry servers add NAME URL`)",
                    name.escape_debug(),
                    self.names().join(", ")
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
        let names = self.names();
        let shown: Vec<(String, String)> = names
            .into_iter()
            .filter_map(|n| {
                let options = self.get(&n).ok()?;
                Some((n, format!("{:?}", Redacted(&options))))
            })
            .collect();
        f.debug_map().entries(shown).finish()
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
