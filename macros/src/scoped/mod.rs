//! `#[tenant_scoped]`: parse -> validate -> expand.

mod expand;
mod parse;

use proc_macro2::TokenStream;
use quote::quote;

use crate::ctxt::Ctxt;

pub fn tenant_scoped(attr: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let options = parse::parse_options(&cx, attr);
    let func = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Fn(func)) => Some(func),
        Ok(other) => {
            cx.error_spanned_by(
                &other,
                "`#[tenant_scoped]` applies to an `async fn` handler, not to this item",
            );
            None
        }
        Err(e) => {
            cx.syn_error(e);
            None
        }
    };
    let scoped = func.and_then(|f| parse::parse_handler(&cx, options, f));
    match (cx.check(), scoped) {
        (Ok(()), Some(scoped)) => expand::expand(scoped),
        (result, _) => {
            // Emit the item unchanged beside the errors, so the rest of the crate
            // (and the IDE) still sees the function.
            let errors = result.err().map(|e| e.into_compile_error());
            quote!(#item #errors)
        }
    }
}
