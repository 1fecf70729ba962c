//! Resolvers besides the header (host, subdomain, path prefix, closure), chained in
//! order, and a policy that ties the tenant to the authenticated principal.

mod common;

use axum::Router;
use axum::http::Method;
use axum::routing::get;
use common::*;
use serde_json::json;
use tenantry::{Candidate, resolver_fn};
use tenantry::{
    CurrentTenant, HeaderResolver, NewTenant, PathPrefixResolver, PoolConfig, TenantLayer,
};

async fn setup() -> (tenantry::testing::TestDatabase, tenantry::TenantManager) {
    let (db, manager) = manager(PoolConfig::default()).await;
    manager
        .create_tenant(NewTenant::new("acme".parse().unwrap(), "Acme").with_domain("shop.acme.com"))
        .await
        .unwrap();
    create(&manager, "globex").await;
    create(&manager, "frozen").await;
    manager
        .create_tenant(
            NewTenant::new("iced".parse().unwrap(), "Iced").with_domain("iced.example.org"),
        )
        .await
        .unwrap();
    for id in ["frozen", "iced"] {
        manager.suspend_tenant(&id.parse().unwrap()).await.unwrap();
    }
    (db, manager)
}

async fn current(app: &Router, headers: &[(&str, &str)]) -> Reply {
    send(app, Method::GET, "/api/v1/current-tenant", headers, None).await
}

#[tokio::test]
async fn host_resolver_in_the_saas_example() {
    let (_db, manager) = setup().await;
    let app = saas_app(&manager);
    // A registered domain, and `{id}.localhost`, with or without a port.
    for (host, expected) in [
        ("shop.acme.com", "acme"),
        ("SHOP.ACME.COM:8080", "acme"),
        ("globex.localhost", "globex"),
        ("globex.localhost:3000", "globex"),
    ] {
        let r = current(&app, &[("host", host)]).await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.json["tenant"]["id"], expected, "{host}");
        let projects = send(
            &app,
            Method::GET,
            "/api/v1/projects",
            &[("host", host)],
            None,
        )
        .await;
        assert_eq!(projects.status, 200, "{host}");
    }
    // The header comes first in the chain.
    let r = current(
        &app,
        &[("host", "globex.localhost"), ("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(r.json["tenant"]["id"], "acme");
    // Hosts that name no tenant fall through.
    assert_eq!(
        current(&app, &[("host", "localhost:3000")]).await.json,
        json!({"tenant": null})
    );
    assert_eq!(
        current(&app, &[("host", "unknown.example.net")]).await.json,
        json!({"tenant": null})
    );
    send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("host", "127.0.0.1:3000")],
        None,
    )
    .await
    .assert_problem(400);
    // Same statuses as the header: malformed 400, unknown 404, suspended 403.
    current(&app, &[("host", "bad_id.localhost")])
        .await
        .assert_problem(400);
    current(&app, &[("host", "a.b.localhost")])
        .await
        .assert_problem(400);
    current(&app, &[("host", "ghost.localhost")])
        .await
        .assert_problem(404);
    current(&app, &[("host", "frozen.localhost")])
        .await
        .assert_problem(403);
    current(&app, &[("host", "iced.example.org")])
        .await
        .assert_problem(403);
}

#[tokio::test]
async fn path_prefix_and_custom_resolvers_chained() {
    let (_db, manager) = setup().await;
    async fn who(CurrentTenant(t): CurrentTenant) -> String {
        t.id.to_string()
    }
    #[derive(Clone)]
    struct Claims {
        tenant: String,
    }
    let layer = TenantLayer::new(manager.clone())
        .resolvers(vec![])
        .resolver(PathPrefixResolver::new("/t/"))
        .resolver(resolver_fn("sign in", |parts| {
            match parts.extensions.get::<Claims>() {
                Some(c) => Ok(Some(Candidate::Id(c.tenant.parse()?))),
                None => Ok(None),
            }
        }))
        .resolver(HeaderResolver::default());
    let app = Router::new()
        .nest("/t/{tenant}", Router::new().route("/who", get(who)))
        .route("/who", get(who))
        .layer(layer);
    let text = |r: axum::response::Response| async {
        let status = r.status();
        let bytes = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    };
    let call = |uri: &str, claims: Option<&str>, header: Option<&str>| {
        let mut req = axum::http::Request::get(uri);
        if let Some(h) = header {
            req = req.header("x-tenant-id", h);
        }
        let mut req = req.body(axum::body::Body::empty()).unwrap();
        if let Some(c) = claims {
            req.extensions_mut().insert(Claims {
                tenant: c.to_owned(),
            });
        }
        tower::ServiceExt::oneshot(app.clone(), req)
    };
    assert_eq!(
        text(call("/t/acme/who", None, None).await.unwrap()).await,
        (200, "acme".into())
    );
    assert_eq!(
        text(
            call("/t/acme/who", Some("globex"), Some("globex"))
                .await
                .unwrap()
        )
        .await,
        (200, "acme".into()),
        "first resolver wins"
    );
    assert_eq!(
        text(call("/who", Some("globex"), Some("acme")).await.unwrap()).await,
        (200, "globex".into())
    );
    assert_eq!(
        text(call("/who", None, Some("acme")).await.unwrap()).await,
        (200, "acme".into())
    );
    assert_eq!(
        text(call("/t/ACME/who", None, None).await.unwrap()).await.0,
        400
    );
    assert_eq!(
        text(call("/t/ghost/who", None, None).await.unwrap())
            .await
            .0,
        404
    );
    assert_eq!(
        text(call("/t/frozen/who", None, None).await.unwrap())
            .await
            .0,
        403
    );
    assert_eq!(
        text(call("/who", Some("Not Valid"), None).await.unwrap())
            .await
            .0,
        400
    );
    let (status, body) = text(call("/who", None, None).await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("/t/{tenant}/") && body.contains("sign in") && body.contains("x-tenant-id"),
        "{body}"
    );
}

#[tokio::test]
async fn user_tokens_tie_the_tenant_to_the_principal() {
    let (_db, manager) = setup().await;
    let tokens = saas::AppState::parse_user_tokens("alice-token=acme, bob-token=globex").unwrap();
    let app =
        saas::router(saas::AppState::new(manager.clone(), ADMIN_TOKEN).with_user_tokens(tokens));
    let alice = ("authorization", "Bearer alice-token");
    assert_eq!(
        send(
            &app,
            Method::GET,
            "/api/v1/projects",
            &[("x-tenant-id", "acme"), alice],
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(
            &app,
            Method::GET,
            "/api/v1/projects",
            &[("host", "shop.acme.com"), alice],
            None
        )
        .await
        .status,
        200
    );
    // Changing the header or the host does not reach another tenant.
    send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("x-tenant-id", "globex"), alice],
        None,
    )
    .await
    .assert_problem(403);
    send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("host", "globex.localhost"), alice],
        None,
    )
    .await
    .assert_problem(403);
    send(
        &app,
        Method::POST,
        "/api/v1/projects",
        &[("x-tenant-id", "globex"), alice],
        Some(json!({"name": "sneaky"})),
    )
    .await
    .assert_problem(403);
    // No token, or an unknown one: 401.
    Client::tenant(&app, "acme")
        .get("/api/v1/projects")
        .await
        .assert_problem(401);
    send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("x-tenant-id", "acme"), ("authorization", "Bearer nope")],
        None,
    )
    .await
    .assert_problem(401);
    // Nothing was written to globex.
    let bob = ("authorization", "Bearer bob-token");
    let listed = send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("x-tenant-id", "globex"), bob],
        None,
    )
    .await;
    assert_eq!(listed.json, json!([]));
    assert!(saas::AppState::parse_user_tokens("x=Bad Tenant").is_err());
}
