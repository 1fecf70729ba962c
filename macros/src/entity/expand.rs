//! `#[derive(TenantEntity)]`: code generation from the checked model. The SQL is
//! written out as string literals here, once per type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::attr::{Entity, Field, ty_span};
use crate::path::krate;

fn q(name: &str) -> String {
    format!("\"{name}\"")
}

fn table(entity: &Entity) -> String {
    entity.table.split('.').map(q).collect::<Vec<_>>().join(".")
}

pub struct Statements {
    pub find: String,
    pub list: String,
    pub count: String,
    pub insert: String,
    pub update: String,
    pub delete: String,
    pub select_prefix: String,
    pub count_prefix: String,
}

pub fn statements(e: &Entity) -> Statements {
    let t = table(e);
    let cols = e
        .stored()
        .map(|f| q(&f.column))
        .collect::<Vec<_>>()
        .join(", ");
    let id = q(&e.id().column);
    let tenant = e.tenant().map(|f| q(&f.column));
    let select_prefix = format!("SELECT {cols} FROM {t}");
    let count_prefix = format!("SELECT count(*) FROM {t}");
    let keyed = |n: usize| match &tenant {
        Some(tc) => format!("{id} = ${n} AND {tc} = ${}", n + 1),
        None => format!("{id} = ${n}"),
    };
    let (list, count) = match &tenant {
        Some(tc) => (
            format!("{select_prefix} WHERE {tc} = $1 ORDER BY {id} LIMIT $2 OFFSET $3"),
            format!("{count_prefix} WHERE {tc} = $1"),
        ),
        None => (
            format!("{select_prefix} ORDER BY {id} LIMIT $1 OFFSET $2"),
            count_prefix.clone(),
        ),
    };
    let insert_cols: Vec<&Field> = e.stored().filter(|f| !f.generated).collect();
    let insert = if insert_cols.is_empty() {
        format!("INSERT INTO {t} DEFAULT VALUES RETURNING {cols}")
    } else {
        format!(
            "INSERT INTO {t} ({}) VALUES ({}) RETURNING {cols}",
            insert_cols
                .iter()
                .map(|f| q(&f.column))
                .collect::<Vec<_>>()
                .join(", "),
            (1..=insert_cols.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let set: Vec<&Field> = update_fields(e).collect();
    let set_sql = if set.is_empty() {
        format!("{id} = {id}")
    } else {
        set.iter()
            .enumerate()
            .map(|(i, f)| format!("{} = ${}", q(&f.column), i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Statements {
        find: format!("{select_prefix} WHERE {}", keyed(1)),
        list,
        count,
        insert,
        update: format!(
            "UPDATE {t} SET {set_sql} WHERE {} RETURNING {cols}",
            keyed(set.len() + 1)
        ),
        delete: format!("DELETE FROM {t} WHERE {}", keyed(1)),
        select_prefix,
        count_prefix,
    }
}

fn update_fields(e: &Entity) -> impl Iterator<Item = &Field> {
    e.stored().filter(|f| !f.id && !f.tenant && !f.generated)
}

pub fn expand(e: &Entity) -> TokenStream {
    let krate = krate(e.krate.as_ref());
    let p = quote!(#krate::__private);
    let ident = &e.ident;
    let s = statements(e);
    let (find, list, count, insert, update, delete, select_prefix, count_prefix) = (
        &s.find,
        &s.list,
        &s.count,
        &s.insert,
        &s.update,
        &s.delete,
        &s.select_prefix,
        &s.count_prefix,
    );
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
    let decode = e.fields.iter().map(|f| {
        let m = &f.member;
        if f.skip {
            quote_spanned!(ty_span(f)=> #m: ::core::default::Default::default())
        } else {
            let c = &f.column;
            let ty = &f.ty;
            quote_spanned!(ty_span(f)=> #m: #p::sqlx::Row::try_get::<#ty, _>(__tenantry_row, #c)?)
        }
    });
    let bind = |f: &Field| {
        let m = &f.member;
        if f.tenant {
            quote!(#p::add_argument(&mut __tenantry_args, __tenantry_tenant)?;)
        } else {
            quote_spanned!(ty_span(f)=> #p::add_argument(&mut __tenantry_args, &self.#m)?;)
        }
    };
    let insert_binds = e.stored().filter(|f| !f.generated).map(bind);
    let update_binds = update_fields(e).map(bind);
    let tenant_bind = e
        .tenant()
        .map(|_| quote!(#p::add_argument(&mut __tenantry_args, __tenantry_tenant)?;));
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
            .push(syn::parse_quote_spanned! {ty_span(f)=>
                #ty: for<'__r> #p::sqlx::Decode<'__r, #p::sqlx::Postgres>
                    + for<'__q> #p::sqlx::Encode<'__q, #p::sqlx::Postgres>
                    + #p::sqlx::Type<#p::sqlx::Postgres>
                    + ::core::marker::Send
                    + ::core::marker::Sync
            });
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
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::TenantEntity for #ident #ty_generics #where_clause {
                type Id = #id_ty;
                const TABLE: &'static str = #table;
                const COLUMNS: &'static [&'static str] = &[#(#columns),*];
                const PRIMARY_KEY: &'static str = #id_column;
                const TENANT_COLUMN: ::core::option::Option<&'static str> = #tenant_column;
                const SQL: #p::EntitySql = #p::EntitySql {
                    find: #find,
                    list: #list,
                    count: #count,
                    insert: #insert,
                    update: #update,
                    delete: #delete,
                    select_prefix: #select_prefix,
                    count_prefix: #count_prefix,
                };

                fn from_row(__tenantry_row: &#p::PgRow) -> ::core::result::Result<Self, #p::sqlx::Error> {
                    ::core::result::Result::Ok(Self { #(#decode,)* })
                }

                fn id(&self) -> &Self::Id {
                    &self.#id_member
                }

                fn insert_arguments(&self, __tenantry_tenant: &str)
                    -> ::core::result::Result<#p::PgArguments, #krate::Error>
                {
                    let _ = __tenantry_tenant;
                    let mut __tenantry_args = #p::PgArguments::default();
                    #(#insert_binds)*
                    ::core::result::Result::Ok(__tenantry_args)
                }

                fn update_arguments(&self, __tenantry_tenant: &str)
                    -> ::core::result::Result<#p::PgArguments, #krate::Error>
                {
                    let _ = __tenantry_tenant;
                    let mut __tenantry_args = #p::PgArguments::default();
                    #(#update_binds)*
                    #p::add_argument(&mut __tenantry_args, &self.#id_member)?;
                    #tenant_bind
                    ::core::result::Result::Ok(__tenantry_args)
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
