//! `#[derive(TenantEntity)]`: from the input to a checked model. No tokens are
//! generated here.

use proc_macro2::Span;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, Meta, Token, Type};

use crate::ctxt::Ctxt;

pub struct Entity {
    pub ident: Ident,
    pub vis: syn::Visibility,
    pub generics: syn::Generics,
    /// `#[tenant(new)]`: generate `New<Model>`.
    pub new: Option<Span>,
    /// The struct's `#[serde(...)]` options that suit `New<Model>` too (`rename_all`,
    /// `deny_unknown_fields`), copied to it.
    pub serde: Vec<Meta>,
    pub table: String,
    /// `#[tenant(row_tenant_column)]`: row tenants' shared table has the tenant column
    /// `tenant_id`, which schema tenants' tables do not have.
    pub row_tenant_column: Option<String>,
    pub krate: Option<syn::Path>,
    pub fields: Vec<Field>,
}

pub struct Field {
    pub member: Ident,
    pub vis: syn::Visibility,
    /// The field's `#[serde(...)]` attributes, copied to `New<Model>`.
    pub serde: Vec<syn::Attribute>,
    pub ty: Type,
    pub column: String,
    pub id: bool,
    pub tenant: bool,
    pub generated: bool,
    pub skip: bool,
}

impl Entity {
    pub fn stored(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| !f.skip)
    }
    pub fn id(&self) -> &Field {
        self.fields
            .iter()
            .find(|f| f.id)
            .expect("checked: one primary key")
    }
    pub fn tenant(&self) -> Option<&Field> {
        self.fields.iter().find(|f| f.tenant)
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes: a name that needs no escaping.
pub fn is_plain_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

fn default_table(ident: &Ident) -> String {
    let name = ident.to_string();
    let mut snake = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    if snake.ends_with('s')
        || snake.ends_with('x')
        || snake.ends_with("ch")
        || snake.ends_with("sh")
    {
        snake.push_str("es");
    } else if snake.ends_with('y')
        && !matches!(
            snake.chars().rev().nth(1),
            Some('a' | 'e' | 'i' | 'o' | 'u')
        )
    {
        snake.pop();
        snake.push_str("ies");
    } else {
        snake.push('s');
    }
    snake
}

fn string_value(cx: &Ctxt, meta: &Meta, name: &str) -> Option<syn::LitStr> {
    match meta {
        Meta::NameValue(nv) => {
            match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.clone()),
                other => {
                    cx.error_spanned_by(
                    other,
                    format!("`#[tenant({name} = ...)]` takes a string, for example `{name} = \"...\"`"),
                );
                    None
                }
            }
        }
        _ => {
            cx.error_spanned_by(
                meta,
                format!("`#[tenant({name})]` needs a value: `{name} = \"...\"`"),
            );
            None
        }
    }
}

fn tenant_metas(cx: &Ctxt, attrs: &[syn::Attribute]) -> Vec<Meta> {
    let mut out = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("tenant")) {
        match attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            Ok(metas) => out.extend(metas),
            Err(e) => cx.syn_error(e),
        }
    }
    out
}

fn is_tenant_column_type(ty: &Type) -> bool {
    match ty {
        Type::Path(tp) if tp.qself.is_none() => tp.path.segments.last().is_some_and(|s| {
            (s.ident == "String" || s.ident == "TenantId") && s.arguments.is_empty()
        }),
        _ => false,
    }
}

pub fn parse(cx: &Ctxt, input: &DeriveInput) -> Option<Entity> {
    let mut table: Option<String> = None;
    let mut krate: Option<syn::Path> = None;
    let mut new: Option<Span> = None;
    let mut row_tenant_column: Option<(String, Span)> = None;
    for meta in tenant_metas(cx, &input.attrs) {
        let name = meta
            .path()
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default();
        match name.as_str() {
            "table" => {
                if table.is_some() {
                    cx.error_spanned_by(&meta, "duplicate `#[tenant(table)]` option");
                }
                if let Some(lit) = string_value(cx, &meta, "table") {
                    let value = lit.value();
                    if value.split('.').count() <= 2 && value.split('.').all(is_plain_ident) {
                        table = Some(value);
                    } else {
                        cx.error_spanned_by(
                            &lit,
                            "`#[tenant(table = ...)]` must be `name` or `schema.name`, each of letters, digits and `_` (at most 63 bytes)",
                        );
                    }
                }
            }
            "new" => {
                if new.is_some() {
                    cx.error_spanned_by(&meta, "duplicate `#[tenant(new)]` option");
                }
                match &meta {
                    Meta::Path(p) => new = Some(p.span()),
                    other => cx.error_spanned_by(
                        other,
                        "`#[tenant(new)]` takes no value: write `new`",
                    ),
                }
                if !input.generics.params.is_empty() {
                    cx.error_spanned_by(
                        &meta,
                        "`#[tenant(new)]` is not supported on a generic entity: take the full model as the input and insert it with `TenantEntity::insert`",
                    );
                }
            }
            "row_tenant_column" => {
                if row_tenant_column.is_some() {
                    cx.error_spanned_by(&meta, "duplicate `#[tenant(row_tenant_column)]` option");
                }
                match &meta {
                    // tenantry's row strategy names the column `tenant_id`.
                    Meta::Path(p) => row_tenant_column = Some(("tenant_id".to_owned(), p.span())),
                    _ => {
                        if let Some(lit) = string_value(cx, &meta, "row_tenant_column") {
                            if lit.value() == "tenant_id" {
                                row_tenant_column = Some((lit.value(), lit.span()));
                            } else {
                                // Deleting a row tenant, exporting and moving it, and the
                                // checks of the shared tables all go by `tenant_id`:
                                // rows keyed by another column would outlive their tenant.
                                cx.error_spanned_by(&lit, "row tenants' shared tables keep the tenant in `tenant_id` (tenantry deletes, exports and moves a row tenant's rows by that column): write `row_tenant_column`");
                            }
                        }
                    }
                }
            }
            "crate" => {
                if krate.is_some() {
                    cx.error_spanned_by(&meta, "duplicate `#[tenant(crate)]` option");
                }
                if let Some(lit) = string_value(cx, &meta, "crate") {
                    match lit.parse::<syn::Path>() {
                        Ok(p) => krate = Some(p),
                        Err(_) => cx.error_spanned_by(&lit, "`crate` must name a path, for example `crate = \"my_tenantry\"`"),
                    }
                }
            }
            _ => cx.error_spanned_by(
                meta.path(),
                format!(
                    "unknown `#[tenant(...)]` option `{}` on a struct: expected `table = \"...\"`, `new`, `row_tenant_column` or `crate = \"...\"`",
                    quote::ToTokens::to_token_stream(meta.path()).to_string().replace(' ', "")
                ),
            ),
        }
    }

    let named = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => named,
            Fields::Unnamed(f) => {
                cx.error_spanned_by(f, "`#[derive(TenantEntity)]` needs named fields (each field is a column); tuple structs are not supported");
                return None;
            }
            Fields::Unit => {
                cx.error_spanned_by(&input.ident, "`#[derive(TenantEntity)]` needs named fields (each field is a column); unit structs are not supported");
                return None;
            }
        },
        Data::Enum(e) => {
            cx.error_spanned_by(
                e.enum_token,
                "`#[derive(TenantEntity)]` applies to a struct with named fields, not to an enum",
            );
            return None;
        }
        Data::Union(u) => {
            cx.error_spanned_by(
                u.union_token,
                "`#[derive(TenantEntity)]` applies to a struct with named fields, not to a union",
            );
            return None;
        }
    };

    let mut fields = Vec::new();
    for f in &named.named {
        let member = f.ident.clone().expect("named field");
        let mut field = Field {
            column: member.to_string().trim_start_matches("r#").to_owned(),
            member,
            vis: f.vis.clone(),
            serde: f
                .attrs
                .iter()
                .filter(|a| a.path().is_ident("serde"))
                .cloned()
                .collect(),
            ty: f.ty.clone(),
            id: false,
            tenant: false,
            generated: false,
            skip: false,
        };
        let mut seen: Vec<String> = Vec::new();
        for meta in tenant_metas(cx, &f.attrs) {
            let name = meta
                .path()
                .get_ident()
                .map(Ident::to_string)
                .unwrap_or_default();
            if seen.contains(&name) {
                cx.error_spanned_by(
                    &meta,
                    format!("duplicate `#[tenant({name})]` on this field"),
                );
                continue;
            }
            seen.push(name.clone());
            let flag = |cx: &Ctxt, meta: &Meta| {
                if !matches!(meta, Meta::Path(_)) {
                    cx.error_spanned_by(meta, format!("`#[tenant({name})]` takes no value"));
                }
            };
            match name.as_str() {
                "id" => {
                    flag(cx, &meta);
                    field.id = true;
                }
                "tenant_column" => {
                    flag(cx, &meta);
                    field.tenant = true;
                }
                "generated" => {
                    flag(cx, &meta);
                    field.generated = true;
                }
                "skip" => {
                    flag(cx, &meta);
                    field.skip = true;
                }
                "rename" => {
                    if let Some(lit) = string_value(cx, &meta, "rename") {
                        if is_plain_ident(&lit.value()) {
                            field.column = lit.value();
                        } else {
                            cx.error_spanned_by(&lit, "`#[tenant(rename = ...)]` must be a column name of letters, digits and `_` (at most 63 bytes)");
                        }
                    }
                }
                _ => cx.error_spanned_by(
                    meta.path(),
                    format!(
                        "unknown `#[tenant(...)]` field attribute `{}`: expected `id`, `tenant_column`, `generated`, `rename = \"...\"` or `skip`",
                        quote::ToTokens::to_token_stream(meta.path()).to_string().replace(' ', "")
                    ),
                ),
            }
        }
        if field.skip && (field.id || field.tenant || field.generated) {
            cx.error_spanned_by(&f.ident, "a `#[tenant(skip)]` field is not stored, so it cannot also be the key, the tenant column or generated");
        }
        if field.tenant && !is_tenant_column_type(&field.ty) {
            cx.error_spanned_by(
                &field.ty,
                "the `#[tenant(tenant_column)]` must be a `String` or a `tenantry::TenantId`",
            );
        }
        if field.tenant && field.generated {
            cx.error_spanned_by(
                &f.ident,
                "the tenant column is filled by tenantry; it cannot be `generated`",
            );
        }
        fields.push(field);
    }

    // The primary key: the field marked `#[tenant(id)]`, else a field named `id`.
    let marked: Vec<usize> = (0..fields.len()).filter(|&i| fields[i].id).collect();
    if marked.len() > 1 {
        for &i in &marked[1..] {
            cx.error_spanned_by(
                &fields[i].member,
                "only one field can be `#[tenant(id)]`: composite keys are not supported",
            );
        }
    }
    if marked.is_empty() {
        match fields.iter_mut().find(|f| f.member == "id" && !f.skip) {
            Some(f) => f.id = true,
            None => cx.error_spanned_by(
                &input.ident,
                "`#[derive(TenantEntity)]` needs a primary key: mark a field `#[tenant(id)]` (or name it `id`)",
            ),
        }
    }
    let tenants: Vec<usize> = (0..fields.len()).filter(|&i| fields[i].tenant).collect();
    for &i in tenants.iter().skip(1) {
        cx.error_spanned_by(
            &fields[i].member,
            "only one field can be the `#[tenant(tenant_column)]`",
        );
    }
    if let Some(&i) = tenants.first()
        && fields[i].id
    {
        cx.error_spanned_by(
            &fields[i].member,
            "the tenant column cannot be the primary key",
        );
    }
    let mut columns: Vec<&str> = Vec::new();
    for f in fields.iter().filter(|f| !f.skip) {
        if columns.contains(&f.column.as_str()) {
            cx.error_spanned_by(
                &f.member,
                format!("two fields map to the column `{}`", f.column),
            );
        }
        columns.push(&f.column);
    }
    if let Some((column, span)) = &row_tenant_column {
        if !tenants.is_empty() {
            cx.error_spanned_by(
                quote::quote_spanned!(*span=> row_tenant_column),
                "this entity has a `#[tenant(tenant_column)]` field, which filters every tenant's statements already: `row_tenant_column` is for an entity without one, whose shared table for row tenants has a tenant column its other tables lack",
            );
        } else if columns.contains(&column.as_str()) {
            cx.error_spanned_by(
                quote::quote_spanned!(*span=> row_tenant_column),
                format!("the field stored in `{column}` would be the tenant column: mark it `#[tenant(tenant_column)]` instead of naming it in `row_tenant_column`"),
            );
        }
    }
    Some(Entity {
        table: table.unwrap_or_else(|| default_table(&input.ident)),
        row_tenant_column: row_tenant_column.map(|(c, _)| c),
        ident: input.ident.clone(),
        vis: input.vis.clone(),
        new,
        serde: input
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("serde"))
            .filter_map(|a| {
                a.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                    .ok()
            })
            .flatten()
            // Options about the shape of the fields carry over; `from`, `default`,
            // `remote`, ... are about the model's own type and would not compile.
            .filter(|m| m.path().is_ident("rename_all") || m.path().is_ident("deny_unknown_fields"))
            .collect(),
        generics: input.generics.clone(),
        krate,
        fields,
    })
}

/// The span of a field's type, for bounds that should point at it.
pub fn ty_span(f: &Field) -> Span {
    f.ty.span()
}
