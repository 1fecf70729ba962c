//! `#[derive(TenantEntity)]`: parse -> validate -> expand.

mod attr;
mod expand;

use proc_macro2::TokenStream;

use crate::ctxt::Ctxt;

pub fn derive(input: syn::DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let entity = attr::parse(&cx, &input);
    match (cx.check(), entity) {
        (Ok(()), Some(entity)) => expand::expand(&entity),
        (result, _) => {
            let errors = result
                .err()
                .map(syn::Error::into_compile_error)
                .unwrap_or_default();
            let stub = stub(&input);
            quote::quote!(#errors #stub)
        }
    }
}

/// After an error, an impl whose items are never reached, so that the type's later
/// uses (`Project::find(..)`) add no errors of their own: one mistake, one error.
/// The key's type is guessed from a field marked `#[tenant(id)]` or named `id`.
fn stub(input: &syn::DeriveInput) -> TokenStream {
    let syn::Data::Struct(data) = &input.data else {
        return TokenStream::new();
    };
    let is_id = |f: &&syn::Field| {
        f.attrs.iter().any(|a| {
            a.path().is_ident("tenant")
                && a.parse_args_with(
                    syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
                )
                .is_ok_and(|metas| metas.iter().any(|m| m.path().is_ident("id")))
        })
    };
    let id_ty = data
        .fields
        .iter()
        .find(is_id)
        .or_else(|| {
            data.fields
                .iter()
                .find(|f| f.ident.as_ref().is_some_and(|i| i == "id"))
        })
        .map_or_else(
            || quote::quote!(i64),
            |f| {
                let ty = &f.ty;
                quote::quote!(#ty)
            },
        );
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let p = quote::quote!(::tenantry::__private);
    quote::quote! {
        #[allow(unreachable_code, unused_variables, clippy::all)]
        const _: () = {
            impl #impl_generics ::tenantry::TenantEntity for #ident #ty_generics #where_clause {
                type Id = #id_ty;
                const TABLE: &'static str = "";
                const COLUMNS: &'static [&'static str] = &[];
                const PRIMARY_KEY: &'static str = "";
                const TENANT_COLUMN: ::core::option::Option<&'static str> = ::core::option::Option::None;
                const GENERATED: &'static [&'static str] = &[];
                fn sql() -> &'static #p::EntitySql { ::core::unreachable!() }
                fn from_row(_: &#p::PgRow) -> ::core::result::Result<Self, #p::sqlx::Error> { ::core::unreachable!() }
                fn id(&self) -> &Self::Id { ::core::unreachable!() }
                fn bind_column(&self, _: usize, _: &mut #p::PgArguments) -> ::core::result::Result<(), ::tenantry::Error> { ::core::unreachable!() }
            }
        };
    }
}
