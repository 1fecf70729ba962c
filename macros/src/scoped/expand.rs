//! `#[tenant_scoped]`: code generation from the checked model.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;

use super::parse::{Kind, Scoped};
use crate::path::krate;

/// Replaces every `impl Trait` with `_`, so the return type can annotate the body's
/// future (for `?` inference) even when it cannot be named.
struct Elide;

impl VisitMut for Elide {
    fn visit_type_mut(&mut self, ty: &mut syn::Type) {
        if let syn::Type::ImplTrait(it) = ty {
            *ty = syn::Type::Infer(syn::TypeInfer {
                underscore_token: syn::Token![_](it.span()),
            });
            return;
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }
}

pub fn expand(scoped: Scoped) -> TokenStream {
    let Scoped {
        func,
        options,
        handle,
    } = scoped;
    let krate = krate(options.krate.as_ref());
    let syn::ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let output = match &sig.output {
        syn::ReturnType::Default => quote!(()),
        syn::ReturnType::Type(_, ty) => {
            let mut ty = (**ty).clone();
            Elide.visit_type_mut(&mut ty);
            quote!(#ty)
        }
    };
    let output_span = match &sig.output {
        syn::ReturnType::Default => sig.ident.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    let ident = &handle.ident;
    let stmts = &block.stmts;
    let body = match handle.kind {
        Kind::Db => quote! {
            #krate::__private::typed::<#output, _>(async move { #(#stmts)* })
        },
        Kind::Tx => {
            let finish = quote_spanned! {output_span=>
                #krate::__private::finish_tx(__tenantry_out, #ident).await
            };
            quote! {
                async move {
                    let __tenantry_out =
                        #krate::__private::typed::<#output, _>(async { #(#stmts)* }).await;
                    #finish
                }
            }
        }
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            let __tenantry_tenant = #krate::__private::HandleTenant::scope_tenant(&#ident);
            #krate::__private::scope_opt(__tenantry_tenant, #body).await
        }
    }
}
