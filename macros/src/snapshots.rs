//! Expansion snapshots: what the macros generate for representative inputs, pretty
//! printed, so a change to the generated code shows up in review.

use quote::quote;

fn pretty(tokens: proc_macro2::TokenStream) -> String {
    let file: syn::File = syn::parse2(tokens).expect("the expansion parses as a file");
    prettyplease::unparse(&file)
}

#[test]
fn scoped_connection() {
    let out = crate::scoped::tenant_scoped(
        quote!(),
        quote! {
            /// Lists projects.
            async fn list(mut db: TenantDb) -> Result<Json<Vec<Project>>, Error> {
                Ok(Json(Project::select().fetch_all(&mut db).await?))
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn scoped_transaction_with_impl_trait_and_renamed_crate() {
    let out = crate::scoped::tenant_scoped(
        quote!(transaction, crate = "multi"),
        quote! {
            pub async fn create(State(s): State<App>, mut tx: TenantTx, Json(p): Json<New>)
                -> Result<impl IntoResponse, AppError>
            {
                let saved = p.insert(&mut tx).await?;
                Ok((StatusCode::CREATED, Json(saved)))
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn scoped_optional() {
    let out = crate::scoped::tenant_scoped(
        quote!(optional),
        quote! {
            async fn who(db: Option<TenantDb>) -> String {
                format!("{}", db.is_some())
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn entity_schema_strategy() {
    let out = crate::entity::derive(syn::parse_quote! {
        #[tenant(table = "projects")]
        struct Project {
            #[tenant(id, generated)]
            id: i64,
            #[tenant(rename = "title")]
            name: String,
            #[tenant(skip)]
            cached: Option<String>,
        }
    });
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn entity_with_tenant_column() {
    let out = crate::entity::derive(syn::parse_quote! {
        struct LineItem {
            id: i64,
            #[tenant(tenant_column)]
            tenant_id: TenantId,
            qty: i32,
        }
    });
    insta::assert_snapshot!(pretty(out));
}
