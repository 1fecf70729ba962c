//! Doc comments, visibility and other attributes survive the macro.
#![deny(missing_docs)]
//! A crate with documented handlers.

use tenantry::{Error, TenantDb, tenant_scoped};

/// Lists things; this doc comment must stay, or `missing_docs` fails the build.
#[tenant_scoped]
#[allow(clippy::needless_pass_by_value)]
#[must_use = "handlers return responses"]
pub async fn documented(db: TenantDb) -> Result<&'static str, Error> {
    let _ = db;
    Ok("ok")
}

/// A model; its doc comment and derives are kept.
#[derive(Debug, Clone, PartialEq, tenantry::TenantEntity)]
pub struct Project {
    /// The key.
    pub id: i64,
    /// The name.
    pub name: String,
}

fn main() {
    let _: axum::Router = axum::Router::new().route("/", axum::routing::get(documented));
    let p = Project { id: 1, name: "x".into() };
    assert_eq!(p.clone(), p);
}
