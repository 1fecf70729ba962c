//! Procedural macros of tenantry: `#[tenant_scoped]` and `#[derive(TenantEntity)]`.
//!
//! Use them through the `tenantry` crate, where they are documented with examples;
//! generated code reaches the runtime only through `::tenantry::__private`.

mod ctxt;
mod entity;
mod path;
mod scoped;
#[cfg(test)]
mod snapshots;
mod test;

use proc_macro::TokenStream;

/// Makes an axum handler tenant-scoped. See `tenantry::tenant_scoped`.
#[proc_macro_attribute]
pub fn tenant_scoped(attr: TokenStream, item: TokenStream) -> TokenStream {
    scoped::tenant_scoped(attr.into(), item.into()).into()
}

/// Derives `tenantry::TenantEntity`. See `tenantry::TenantEntity`.
#[proc_macro_derive(TenantEntity, attributes(tenant))]
pub fn derive_tenant_entity(input: TokenStream) -> TokenStream {
    match syn::parse::<syn::DeriveInput>(input) {
        Ok(input) => entity::derive(input).into(),
        Err(e) => e.into_compile_error().into(),
    }
}

/// An async test with a throwaway database, a manager and tenants. See
/// `tenantry::test`.
#[proc_macro_attribute]
pub fn test(attr: TokenStream, item: TokenStream) -> TokenStream {
    test::test(attr.into(), item.into()).into()
}
