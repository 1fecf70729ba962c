//! TenantLayer and the extractors: statuses, problem details, hostile input, the
//! task-local context, and the routes that opt out.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, Method};
use axum::routing::get;
use common::*;
use tenantry::{CurrentTenant, PoolConfig, TenantContext, TenantDb, TenantLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOSTILE: &[&str] = &[
    "\"",
    "'",
    "acme'--",
    "\";DROP SCHEMA public;--",
    "'; DROP SCHEMA public CASCADE; --",
    "$user",
    "pg_catalog",
    "public",
    "PUBLIC",
    "tenant_acme",
    "acme,public",
    "acme public",
    " acme",
    "acme ",
    "../acme",
    "%61cme",
    "",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "a-very-long-tenant-identifier-that-exceeds-forty-bytes",
];

#[tokio::test]
async fn statuses_of_the_layer() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    create(&manager, "frozen").await;
    manager
        .suspend_tenant(&"frozen".parse().unwrap())
        .await
        .unwrap();
    let app = saas_app(&manager);

    assert_eq!(
        Client::tenant(&app, "acme")
            .get("/api/v1/projects")
            .await
            .status,
        200
    );
    Client::anyone(&app)
        .get("/api/v1/projects")
        .await
        .assert_problem(400);
    send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("x-tenant-id", "Acme")],
        None,
    )
    .await
    .assert_problem(400);
    Client::tenant(&app, "ghost")
        .get("/api/v1/projects")
        .await
        .assert_problem(404);
    Client::tenant(&app, "frozen")
        .get("/api/v1/projects")
        .await
        .assert_problem(403);
    // The optional route still refuses a present but bad tenant.
    Client::tenant(&app, "frozen")
        .get("/api/v1/current-tenant")
        .await
        .assert_problem(403);
    send(
        &app,
        Method::GET,
        "/api/v1/current-tenant",
        &[("x-tenant-id", "BAD")],
        None,
    )
    .await
    .assert_problem(400);
}

#[tokio::test]
async fn hostile_tenant_ids_get_400_and_run_no_sql() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    let pool = manager.admin().registry_pool().clone();
    let app = saas_app(&manager);
    let schemas_before: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let lookups = manager.registry_lookups();
    for value in HOSTILE {
        for uri in ["/api/v1/projects", "/api/v1/current-tenant", "/api/v1/data"] {
            let reply = Client::tenant(&app, value).get(uri).await;
            reply.assert_problem(400);
            assert_eq!(
                reply.json["type"], "https://tenantry.dev/problems/invalid-tenant-id",
                "{value:?}"
            );
        }
    }
    // Bytes that are valid in a header but not text (obs-text, unicode).
    for raw in [&b"\xc3\xbcnicode"[..], b"acme\xff", b"\xe2\x80\x8bacme"] {
        let request = axum::http::Request::get("/api/v1/projects")
            .header(
                "x-tenant-id",
                axum::http::HeaderValue::from_bytes(raw).unwrap(),
            )
            .body(axum::body::Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(app.clone(), request)
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
    assert_eq!(
        manager.registry_lookups(),
        lookups,
        "no hostile value reached the registry"
    );
    let schemas_after: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(schemas_before, schemas_after);
    // The legitimate tenant still works.
    assert_eq!(
        Client::tenant(&app, "acme")
            .get("/api/v1/projects")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn nul_and_control_bytes_over_real_http_get_400() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    let app = saas_app(&manager);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let lookups = manager.registry_lookups();
    for value in [&b"ac\0me"[..], b"\0", b"acme\x01", b"acme\x7f"] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut request =
            b"GET /api/v1/projects HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-tenant-id: "
                .to_vec();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 400"), "{value:?}: {text}");
    }
    assert_eq!(manager.registry_lookups(), lookups);
}

#[tokio::test]
async fn header_name_is_configurable_and_context_is_set() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    async fn handler(CurrentTenant(tenant): CurrentTenant, mut db: TenantDb) -> String {
        let from_context = TenantContext::tenant_id().unwrap();
        let from_spawned = TenantContext::spawn(async { TenantContext::tenant_id() })
            .await
            .unwrap()
            .unwrap();
        let path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
            .fetch_one(&mut db)
            .await
            .unwrap();
        format!("{} {} {} {}", tenant.id, from_context, from_spawned, path)
    }
    let app = Router::new()
        .route("/who", get(handler))
        .layer(TenantLayer::new(manager.clone()).header(HeaderName::from_static("x-org")));
    let request = axum::http::Request::get("/who")
        .header("x-org", "acme")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"acme acme acme \"tenant_acme\", pg_temp");
    // The default header means nothing to this layer.
    let reply = Client::tenant(&app, "acme").get("/who").await;
    reply.assert_problem(400);
    assert!(reply.json["detail"].as_str().unwrap().contains("x-org"));
}

#[tokio::test]
async fn extractors_without_the_layer_fail_closed() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    async fn handler(_db: TenantDb) -> &'static str {
        "leaked"
    }
    let app = Router::new().route("/oops", get(handler));
    let reply = Client::tenant(&app, "acme").get("/oops").await;
    reply.assert_problem(500);
}

#[tokio::test]
async fn outside_a_scope_there_is_no_tenant_connection() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    assert!(TenantContext::current().is_none());
    let err = manager.db().await.unwrap_err();
    assert!(matches!(err, tenantry::Error::NoTenantInScope));
    let tenant = manager
        .resolve_tenant(&"acme".parse().unwrap())
        .await
        .unwrap();
    let inside = TenantContext::scope(Arc::clone(&tenant), async {
        let mut db = manager.db().await.unwrap();
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projects")
            .fetch_one(&mut db)
            .await
    })
    .await;
    assert_eq!(inside.unwrap(), 0);
    // A plain tokio::spawn does not inherit the tenant.
    let plain = TenantContext::scope(tenant, async {
        tokio::spawn(async { TenantContext::current() })
            .await
            .unwrap()
    })
    .await;
    assert!(plain.is_none());
}

#[tokio::test]
async fn admin_routes_without_the_layer_need_no_tenant() {
    // Admin routes carry no TenantLayer: they work without any tenant header.
    let (_db, manager) = manager(PoolConfig::default()).await;
    let app = saas_app(&manager);
    let reply = Client::admin(&app).get("/api/v1/tenants").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json, serde_json::json!([]));
}
