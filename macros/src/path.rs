//! The path generated code uses to reach the runtime crate.

use proc_macro2::TokenStream;
use quote::quote;

/// `::tenantry`, or the path given with `crate = "..."`.
pub fn krate(custom: Option<&syn::Path>) -> TokenStream {
    match custom {
        Some(path) => quote!(#path),
        None => quote!(::tenantry),
    }
}
