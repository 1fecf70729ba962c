//! `#[tenant_scoped]`: from tokens to a checked model. No tokens are generated here.

use proc_macro2::{Span, TokenStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Meta, Pat, PathArguments, Token, Type};

use crate::ctxt::Ctxt;

/// Which handle the handler takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `TenantDb`: a plain connection.
    Db,
    /// `TenantTx`: a transaction committed on `Ok`.
    Tx,
}

impl Kind {
    fn type_name(self) -> &'static str {
        match self {
            Kind::Db => "TenantDb",
            Kind::Tx => "TenantTx",
        }
    }
}

/// The options of the attribute.
#[derive(Default)]
pub struct Options {
    pub optional: Option<Span>,
    pub mode: Option<(Kind, Span)>,
    pub krate: Option<syn::Path>,
}

/// The tenant-bound handle argument.
pub struct Handle {
    pub ident: Ident,
    pub kind: Kind,
}

/// A checked `#[tenant_scoped]` handler.
pub struct Scoped {
    pub func: ItemFn,
    pub options: Options,
    pub handle: Handle,
}

pub fn parse_options(cx: &Ctxt, attr: TokenStream) -> Options {
    let mut options = Options::default();
    let metas =
        match syn::parse::Parser::parse2(Punctuated::<Meta, Token![,]>::parse_terminated, attr) {
            Ok(metas) => metas,
            Err(e) => {
                cx.syn_error(e);
                return options;
            }
        };
    for meta in metas {
        let name = meta
            .path()
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default();
        match (name.as_str(), &meta) {
            ("optional", Meta::Path(p)) => {
                if options.optional.is_some() {
                    cx.error_spanned_by(p, "duplicate `#[tenant_scoped]` option `optional`");
                }
                options.optional = Some(p.span());
            }
            ("transaction" | "connection", Meta::Path(p)) => {
                let kind = if name == "transaction" { Kind::Tx } else { Kind::Db };
                match options.mode {
                    Some((k, _)) if k == kind => cx.error_spanned_by(
                        p,
                        format!("duplicate `#[tenant_scoped]` option `{name}`"),
                    ),
                    Some(_) => cx.error_spanned_by(
                        p,
                        "`#[tenant_scoped]` options `transaction` and `connection` exclude each other: keep one",
                    ),
                    None => options.mode = Some((kind, p.span())),
                }
            }
            ("crate", Meta::NameValue(nv)) => {
                if options.krate.is_some() {
                    cx.error_spanned_by(&meta, "duplicate `#[tenant_scoped]` option `crate`");
                }
                match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => match s.parse::<syn::Path>() {
                        Ok(path) => options.krate = Some(path),
                        Err(_) => cx.error_spanned_by(
                            s,
                            "`crate` must name a path, for example `crate = \"my_tenantry\"`",
                        ),
                    },
                    other => cx.error_spanned_by(
                        other,
                        "`crate` takes a string, for example `crate = \"my_tenantry\"`",
                    ),
                }
            }
            ("optional" | "transaction" | "connection", _) => {
                cx.error_spanned_by(
                    &meta,
                    format!("`#[tenant_scoped]` option `{name}` takes no value: write `{name}`"),
                );
                // Record it anyway, so that no follow-on error repeats the mistake.
                match name.as_str() {
                    "optional" => options.optional = Some(meta.span()),
                    "transaction" => options.mode = options.mode.or(Some((Kind::Tx, meta.span()))),
                    _ => options.mode = options.mode.or(Some((Kind::Db, meta.span()))),
                }
            }
            ("crate", _) => cx.error_spanned_by(
                &meta,
                "`#[tenant_scoped]` option `crate` needs a value: `crate = \"path\"`",
            ),
            _ => cx.error_spanned_by(
                meta.path(),
                format!(
                    "unknown `#[tenant_scoped]` option `{}`: expected `optional`, `transaction`, `connection` or `crate = \"...\"`",
                    quote::ToTokens::to_token_stream(meta.path()).to_string().replace(' ', "")
                ),
            ),
        }
    }
    options
}

/// `TenantDb`, `TenantTx`, or `Option<...>` of one of them (by the last path segment).
fn handle_kind(ty: &Type) -> Option<(Kind, bool)> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    match last.ident.to_string().as_str() {
        "TenantDb" => Some((Kind::Db, false)),
        "TenantTx" => Some((Kind::Tx, false)),
        "Option" => {
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            match args.args.first() {
                Some(GenericArgument::Type(inner)) => match handle_kind(inner) {
                    Some((kind, false)) => Some((kind, true)),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

pub fn parse_handler(cx: &Ctxt, options: Options, func: ItemFn) -> Option<Scoped> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            "`#[tenant_scoped]` requires an `async fn`: write `async fn`",
        );
    }
    let mut handle: Option<(Handle, bool, &Type)> = None;
    let mut unnamed_handle = false;
    for input in &sig.inputs {
        let arg = match input {
            FnArg::Receiver(r) => {
                cx.error_spanned_by(
                    r,
                    "`#[tenant_scoped]` handlers are free functions: remove `self`",
                );
                continue;
            }
            FnArg::Typed(arg) => arg,
        };
        let Some((kind, optional)) = handle_kind(&arg.ty) else {
            continue;
        };
        if let Some((first, _, _)) = &handle {
            cx.error_spanned_by(
                &arg.ty,
                format!(
                    "`#[tenant_scoped]` takes one tenant-bound handle, and `{}` already is one: remove this argument",
                    first.ident
                ),
            );
            continue;
        }
        let ident = match &*arg.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                cx.error_spanned_by(
                    other,
                    format!(
                        "`#[tenant_scoped]` needs the `{}` argument bound to a name, for example `db`",
                        kind.type_name()
                    ),
                );
                unnamed_handle = true;
                continue;
            }
        };
        handle = Some((Handle { ident, kind }, optional, &arg.ty));
    }
    let Some((handle, handle_optional, handle_ty)) = handle else {
        if unnamed_handle {
            return None;
        }
        cx.error_spanned_by(
            &sig.ident,
            "`#[tenant_scoped]` needs a tenant-bound handle: add an argument `db: tenantry::TenantDb` or `tx: tenantry::TenantTx` (written with that name: an alias or a renamed import of them is not recognised)",
        );
        return None;
    };
    match (options.optional.is_some(), handle_optional) {
        (true, false) => cx.error_spanned_by(
            handle_ty,
            format!(
                "with `#[tenant_scoped(optional)]` the handle must be `Option<{}>`",
                handle.kind.type_name()
            ),
        ),
        (false, true) => cx.error_spanned_by(
            handle_ty,
            "an `Option` handle means the tenant is optional: write `#[tenant_scoped(optional)]`",
        ),
        _ => {}
    }
    if let Some((mode, span)) = options.mode
        && mode != handle.kind
    {
        cx.syn_error(syn::Error::new(
            span,
            format!(
                "`#[tenant_scoped({})]` needs a `{}` argument, but the handle is `{}`",
                if mode == Kind::Tx {
                    "transaction"
                } else {
                    "connection"
                },
                mode.type_name(),
                handle.kind.type_name()
            ),
        ));
    }
    if handle.kind == Kind::Tx && matches!(sig.output, syn::ReturnType::Default) {
        cx.error_spanned_by(
            &sig.ident,
            "a `#[tenant_scoped]` handler with a `TenantTx` must return `Result<_, E>` (commit on `Ok`, roll back on `Err`)",
        );
    }
    Some(Scoped {
        func,
        options,
        handle,
    })
}
