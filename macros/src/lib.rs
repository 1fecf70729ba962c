//! Procedural macros of tenantry. Use them through the `tenantry` crate.
//!
//! The macros themselves (`#[tenant_scoped]`, `#[derive(TenantEntity)]`) are not
//! written yet; this crate holds their place in the workspace.
