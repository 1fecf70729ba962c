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
        (result, _) => result
            .err()
            .map(syn::Error::into_compile_error)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(input: syn::DeriveInput) -> expand::Statements {
        let cx = Ctxt::new();
        let entity = attr::parse(&cx, &input).unwrap();
        cx.check().unwrap();
        expand::statements(&entity)
    }

    #[test]
    fn schema_entity_statements() {
        let s = sql(syn::parse_quote! {
            struct Project { #[tenant(generated)] id: i64, #[tenant(rename = "title")] name: String, #[tenant(skip)] cache: u8 }
        });
        assert_eq!(
            s.find,
            r#"SELECT "id", "title" FROM "projects" WHERE "id" = $1"#
        );
        assert_eq!(
            s.list,
            r#"SELECT "id", "title" FROM "projects" ORDER BY "id" LIMIT $1 OFFSET $2"#
        );
        assert_eq!(
            s.insert,
            r#"INSERT INTO "projects" ("title") VALUES ($1) RETURNING "id", "title""#
        );
        assert_eq!(
            s.update,
            r#"UPDATE "projects" SET "title" = $1 WHERE "id" = $2 RETURNING "id", "title""#
        );
        assert_eq!(s.delete, r#"DELETE FROM "projects" WHERE "id" = $1"#);
        assert_eq!(s.count, r#"SELECT count(*) FROM "projects""#);
    }

    #[test]
    fn row_entity_statements_carry_the_tenant_filter() {
        let s = sql(syn::parse_quote! {
            #[tenant(table = "app.items")]
            struct Item { id: i64, #[tenant(tenant_column)] tenant_id: String, label: String }
        });
        assert_eq!(
            s.find,
            r#"SELECT "id", "tenant_id", "label" FROM "app"."items" WHERE "id" = $1 AND "tenant_id" = $2"#
        );
        assert_eq!(
            s.list,
            r#"SELECT "id", "tenant_id", "label" FROM "app"."items" WHERE "tenant_id" = $1 ORDER BY "id" LIMIT $2 OFFSET $3"#
        );
        assert_eq!(
            s.count,
            r#"SELECT count(*) FROM "app"."items" WHERE "tenant_id" = $1"#
        );
        assert_eq!(
            s.insert,
            r#"INSERT INTO "app"."items" ("id", "tenant_id", "label") VALUES ($1, $2, $3) RETURNING "id", "tenant_id", "label""#
        );
        assert_eq!(
            s.update,
            r#"UPDATE "app"."items" SET "label" = $1 WHERE "id" = $2 AND "tenant_id" = $3 RETURNING "id", "tenant_id", "label""#
        );
        assert_eq!(
            s.delete,
            r#"DELETE FROM "app"."items" WHERE "id" = $1 AND "tenant_id" = $2"#
        );
    }
}
