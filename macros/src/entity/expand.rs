//! `#[derive(TenantEntity)]`: code generation from the checked model. The macro
//! writes no SQL: it lists the columns and encodes one column at a time; tenantry's
//! runtime writes every statement from that list (`EntitySql`), once per type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::attr::{Entity, ty_span};
use crate::path::krate;

pub fn expand(e: &Entity) -> TokenStream {
    let krate = krate(e.krate.as_ref());
    let p = quote!(#krate::__private);
    let ident = &e.ident;
    let table = &e.table;
    let columns: Vec<&str> = e.stored().map(|f| f.column.as_str()).collect();
    let id_field = e.id();
    let id_member = &id_field.member;
    let id_ty = &id_field.ty;
    let id_column = &id_field.column;
    let tenant_column = match e.tenant() {
        Some(f) => {
            let c = &f.column;
            quote!(::core::option::Option::Some(#c))
        }
        None => quote!(::core::option::Option::None),
    };
    let row_tenant_column = match &e.row_tenant_column {
        Some(c) => quote!(::core::option::Option::Some(#c)),
        None => quote!(::core::option::Option::None),
    };
    let generated: Vec<&str> = e
        .stored()
        .filter(|f| f.generated)
        .map(|f| f.column.as_str())
        .collect();
    let decode = e.fields.iter().map(|f| {
        let m = &f.member;
        if f.skip {
            quote_spanned!(ty_span(f)=> #m: ::core::default::Default::default())
        } else {
            let c = &f.column;
            let ty = &f.ty;
            quote_spanned!(ty_span(f)=> #m: (&&#p::ColumnProbe::<#ty>::new()).decode(__tenantry_row, #c)?)
        }
    });
    let binds = e.stored().enumerate().map(|(i, f)| {
        let m = &f.member;
        let ty = &f.ty;
        quote_spanned!(ty_span(f)=> #i => (&&#p::ColumnProbe::<#ty>::new()).bind(__tenantry_args, &self.#m))
    });
    let asserts = e.stored().map(|f| {
        let ty = &f.ty;
        quote_spanned!(ty_span(f)=> #p::assert_column::<#ty>();)
    });
    let (impl_generics, ty_generics, where_clause) = e.generics.split_for_impl();
    let mut where_clause = where_clause
        .cloned()
        .unwrap_or_else(|| syn::parse_quote!(where));
    // Bounds on field types that use a type parameter; concrete types are checked where
    // they are decoded and bound, with errors pointing at the field's type.
    let params: Vec<String> = e
        .generics
        .type_params()
        .map(|p| p.ident.to_string())
        .collect();
    for f in e
        .stored()
        .filter(|f| mentions_any(ty_tokens(&f.ty), &params))
    {
        let ty = &f.ty;
        where_clause
            .predicates
            .push(syn::parse_quote_spanned! {ty_span(f)=> #ty: #p::Column });
    }
    // The trait needs `Send + Unpin + 'static`: ask the same of every type parameter.
    for param in e.generics.type_params() {
        let ident = &param.ident;
        where_clause.predicates.push(syn::parse_quote! {
            #ident: ::core::marker::Send + ::core::marker::Unpin + 'static
        });
    }
    for f in e.fields.iter().filter(|f| f.skip) {
        let ty = &f.ty;
        where_clause
            .predicates
            .push(syn::parse_quote_spanned!(ty_span(f)=> #ty: ::core::default::Default));
    }
    let columns_consts = column_consts(e, &krate);
    let new_struct = new_struct(e, &krate);
    quote! {
        #columns_consts
        #new_struct
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
        const _: () = {
            use #p::{ViaColumn as _, ViaFallback as _};
            #[automatically_derived]
            impl #impl_generics #krate::TenantEntity for #ident #ty_generics #where_clause {
                type Id = #id_ty;
                const TABLE: &'static str = #table;
                const COLUMNS: &'static [&'static str] = &[#(#columns),*];
                const PRIMARY_KEY: &'static str = #id_column;
                const TENANT_COLUMN: ::core::option::Option<&'static str> = #tenant_column;
                const ROW_TENANT_COLUMN: ::core::option::Option<&'static str> = #row_tenant_column;
                const GENERATED: &'static [&'static str] = &[#(#generated),*];

                fn sql() -> &'static #p::EntitySql {
                    // The same for every instantiation: the columns do not depend on
                    // type parameters.
                    static SQL: ::std::sync::OnceLock<#p::EntitySql> = ::std::sync::OnceLock::new();
                    SQL.get_or_init(#p::EntitySql::of::<Self>)
                }

                fn from_row(__tenantry_row: &#p::PgRow) -> ::core::result::Result<Self, #p::sqlx::Error> {
                    #(#asserts)*
                    ::core::result::Result::Ok(Self { #(#decode,)* })
                }

                fn id(&self) -> &Self::Id {
                    &self.#id_member
                }

                fn bind_column(&self, __tenantry_index: usize, __tenantry_args: &mut #p::PgArguments)
                    -> ::core::result::Result<(), #krate::Error>
                {
                    match __tenantry_index {
                        #(#binds,)*
                        _ => ::core::result::Result::Err(#p::no_column(#table, __tenantry_index)),
                    }
                }
            }
        };
    }
}

fn ty_tokens(ty: &syn::Type) -> TokenStream {
    quote!(#ty)
}

/// Whether `tokens` use any of the identifiers in `names`.
fn mentions_any(tokens: TokenStream, names: &[String]) -> bool {
    tokens.into_iter().any(|tt| match tt {
        proc_macro2::TokenTree::Ident(i) => names.iter().any(|n| i == n),
        proc_macro2::TokenTree::Group(g) => mentions_any(g.stream(), names),
        _ => false,
    })
}

/// One typed column per stored field: `name` -> `Project::NAME: Col<Project, String>`.
fn column_consts(e: &Entity, krate: &TokenStream) -> TokenStream {
    let ident = &e.ident;
    let (impl_generics, ty_generics, where_clause) = e.generics.split_for_impl();
    let consts = e.stored().map(|f| {
        let name = syn::Ident::new(
            &f.member.to_string().trim_start_matches("r#").to_uppercase(),
            f.member.span(),
        );
        let (vis, ty, column) = (&f.vis, &f.ty, &f.column);
        // The key, the tenant column and generated columns filter and order only.
        let read_only = f.id || f.tenant || f.generated;
        let (doc, col_ty) = if read_only {
            (
                format!("The column `{column}`, typed, for filters and ordering (read-only)."),
                quote!(#krate::Col<Self, #ty, #krate::ReadOnly>),
            )
        } else {
            (
                format!("The column `{column}`, typed, for filters, ordering and updates."),
                quote!(#krate::Col<Self, #ty>),
            )
        };
        quote! {
            #[doc = #doc]
            #vis const #name: #col_ty = #krate::Col::new(#column);
        }
    });
    quote! {
        #[allow(dead_code, clippy::all)]
        impl #impl_generics #ident #ty_generics #where_clause {
            #(#consts)*
        }
    }
}

/// `#[tenant(new)]`: `New<Model>` with the fields a client sends on insert.
fn new_struct(e: &Entity, krate: &TokenStream) -> TokenStream {
    if e.new.is_none() {
        return TokenStream::new();
    }
    let p = quote!(#krate::__private);
    let ident = &e.ident;
    let vis = &e.vis;
    let new_ident = quote::format_ident!("New{}", ident);
    let serde_crate = format!("{}::__private::serde", krate.to_string().replace(' ', ""));
    let doc = format!(
        "The fields of a new [`{ident}`] the database does not fill (generated by \
         `#[derive(TenantEntity)]` with `#[tenant(new)]`): insert it with \
         `NewEntity::insert`."
    );
    let inserted: Vec<(usize, &super::attr::Field)> = e
        .stored()
        .enumerate()
        .filter(|(_, f)| !f.generated && !f.tenant)
        .collect();
    let fields = inserted.iter().map(|(_, f)| {
        let (vis, m, ty, serde) = (&f.vis, &f.member, &f.ty, &f.serde);
        quote!(#(#serde)* #vis #m: #ty)
    });
    let binds = inserted.iter().map(|(i, f)| {
        let (m, ty) = (&f.member, &f.ty);
        quote_spanned!(ty_span(f)=> #i => (&&#p::ColumnProbe::<#ty>::new()).bind(__tenantry_args, &self.#m))
    });
    let table = &e.table;
    let serde = if e.serde.is_empty() {
        TokenStream::new()
    } else {
        let options = &e.serde;
        quote!(#[serde(#(#options),*)])
    };
    quote! {
        #[doc = #doc]
        #[derive(Debug, Clone, #p::serde::Serialize, #p::serde::Deserialize)]
        #[serde(crate = #serde_crate)]
        #serde
        #vis struct #new_ident {
            #(#fields,)*
        }

        impl #new_ident {
            /// Inserts a row with these values (the tenant column filled from the
            /// handle, generated columns left to the database) and returns it as stored.
            #[allow(dead_code)]
            #vis fn insert<'a, H: #krate::TenantHandle>(
                &'a self,
                handle: &'a mut H,
            ) -> #p::BoxFuture<'a, ::core::result::Result<#ident, #krate::Error>> {
                <Self as #krate::NewEntity>::insert(self, handle)
            }

            /// Inserts a row with these values unless a unique key has it already
            /// (`ON CONFLICT DO NOTHING`): the stored row, or `None`.
            #[allow(dead_code)]
            #vis fn insert_or_ignore<'a, H: #krate::TenantHandle>(
                &'a self,
                handle: &'a mut H,
            ) -> #p::BoxFuture<'a, ::core::result::Result<::core::option::Option<#ident>, #krate::Error>> {
                <Self as #krate::NewEntity>::insert_or_ignore(self, handle)
            }
        }

        #[doc(hidden)]
        #[allow(unused_qualifications, clippy::all)]
        const _: () = {
            use #p::{ViaColumn as _, ViaFallback as _};
            #[automatically_derived]
            impl #krate::NewEntity for #new_ident {
                type Entity = #ident;
                fn bind_column(&self, __tenantry_index: usize, __tenantry_args: &mut #p::PgArguments)
                    -> ::core::result::Result<(), #krate::Error>
                {
                    match __tenantry_index {
                        #(#binds,)*
                        _ => ::core::result::Result::Err(#p::no_column(#table, __tenantry_index)),
                    }
                }
            }
        };
    }
}
