//! `#[tenantry::test]`: an async test with a throwaway database, a manager and
//! tenants of the requested strategies.

use proc_macro2::TokenStream;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{FnArg, Meta, Token};

use crate::ctxt::Ctxt;

pub fn test(attr: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let mut strategies: Vec<TokenStream> = Vec::new();
    let mut per_strategy = quote!(1);
    let mut migrations = quote!(::core::option::Option::None);
    let mut shared = quote!(::core::option::Option::None);
    let mut row_schema = quote!(::core::option::Option::None);
    match syn::parse::Parser::parse2(Punctuated::<Meta, Token![,]>::parse_terminated, attr) {
        Ok(metas) => {
            for meta in metas {
                let name = meta
                    .path()
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                match (name.as_str(), &meta) {
                    ("strategies", Meta::List(list)) => {
                        match list.parse_args_with(Punctuated::<syn::Ident, Token![,]>::parse_terminated) {
                            Ok(names) => {
                                for s in names {
                                    let variant = match s.to_string().as_str() {
                                        "schema" => quote!(Schema),
                                        "row" => quote!(Row),
                                        "database" => quote!(Database),
                                        _ => {
                                            cx.error_spanned_by(&s, "unknown strategy: expected `schema`, `row` or `database`");
                                            continue;
                                        }
                                    };
                                    strategies.push(quote!(::tenantry::Strategy::#variant));
                                }
                            }
                            Err(e) => cx.syn_error(e),
                        }
                    }
                    ("tenants", Meta::NameValue(nv)) => match &nv.value {
                        syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(n), .. })
                            if n.base10_parse::<usize>().is_ok_and(|n| (1..=100).contains(&n)) =>
                        {
                            per_strategy = quote!(#n);
                        }
                        other => cx.error_spanned_by(other, "`tenants` takes a number from 1 to 100: tenants per strategy"),
                    },
                    ("migrations" | "shared" | "row_schema", Meta::NameValue(nv)) => match &nv.value {
                        syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => {
                            let value = if name == "row_schema" {
                                quote!(::core::option::Option::Some(::std::string::String::from(#s)))
                            } else {
                                // Relative to the crate being tested, like `sqlx::migrate!`.
                                quote!(::core::option::Option::Some(::std::path::PathBuf::from(
                                    ::core::concat!(::core::env!("CARGO_MANIFEST_DIR"), "/", #s)
                                )))
                            };
                            match name.as_str() {
                                "migrations" => migrations = value,
                                "shared" => shared = value,
                                _ => row_schema = value,
                            }
                        }
                        other => cx.error_spanned_by(other, format!("`{name}` takes a string, for example `{name} = \"...\"`")),
                    },
                    _ => cx.error_spanned_by(
                        meta.path(),
                        "unknown `#[tenantry::test]` option: expected `strategies(schema, row, database)`, `tenants = N`, `migrations = \"dir\"`, `shared = \"file.sql\"` or `row_schema = \"name\"`",
                    ),
                }
            }
        }
        Err(e) => cx.syn_error(e),
    }
    let func = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(f) => Some(f),
        Err(e) => {
            cx.syn_error(e);
            None
        }
    };
    if let Some(f) = &func {
        if f.sig.asyncness.is_none() {
            cx.error_spanned_by(
                f.sig.fn_token,
                "`#[tenantry::test]` requires an `async fn`: write `async fn`",
            );
        }
        if f.sig.inputs.len() > 1 {
            cx.error_spanned_by(&f.sig.inputs, "`#[tenantry::test]` takes one argument at most: `t: tenantry::testing::TestTenants`");
        }
        if let Some(FnArg::Receiver(r)) = f.sig.inputs.first() {
            cx.error_spanned_by(
                r,
                "`#[tenantry::test]` applies to a free function: remove `self`",
            );
        }
    }
    let func = match (cx.check(), func) {
        (Ok(()), Some(func)) => func,
        (result, _) => {
            let errors = result.err().map(|e| e.into_compile_error());
            return quote!(#errors);
        }
    };
    let strategies = if strategies.is_empty() {
        quote!(::tenantry::testing::TestTenantsOptions::default().strategies)
    } else {
        quote!(::std::vec![#(#strategies),*])
    };
    let syn::ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let name = &sig.ident;
    let output = &sig.output;
    let arg = match sig.inputs.first() {
        Some(FnArg::Typed(pt)) => {
            let (pat, ty) = (&pt.pat, &pt.ty);
            quote!(#pat: #ty)
        }
        _ => quote!(_: ::tenantry::testing::TestTenants),
    };
    let body_span = block.span();
    let body = quote::quote_spanned!(body_span=> async move #block);
    quote! {
        #(#attrs)*
        #[::core::prelude::v1::test]
        #vis fn #name() #output {
            let __tenantry_options = ::tenantry::testing::TestTenantsOptions {
                strategies: #strategies,
                per_strategy: #per_strategy,
                migrations: #migrations,
                shared: #shared,
                row_schema: #row_schema,
            };
            ::tenantry::testing::run(__tenantry_options, |#arg| #body)
        }
    }
}
