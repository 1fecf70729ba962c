//! Several domains per tenant: added and removed through the manager, the admin API
//! and the CLI, with one primary; the host resolver and its cache (in every
//! instance) follow; a deleted tenant's domains are free again.

mod common;

use std::time::{Duration, Instant};

use axum::http::Method;
use common::*;
use serde_json::json;
use tenantry::PoolConfig;

async fn tenant_of_host(app: &axum::Router, host: &str) -> serde_json::Value {
    let r = send(
        app,
        Method::GET,
        "/api/v1/current-tenant",
        &[("host", host)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["tenant"]["id"].clone()
}

#[tokio::test]
async fn domains_are_added_removed_and_followed_by_the_resolver() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    manager
        .create_tenant(
            tenantry::NewTenant::new("acme".parse().unwrap(), "Acme")
                .with_domain("acme.example.com"),
        )
        .await
        .unwrap();
    create(&manager, "globex").await;
    let app = saas_app(&manager);
    let admin = [admin_header()];

    assert_eq!(tenant_of_host(&app, "acme.example.com").await, "acme");
    // Not yet a domain: cached as naming no tenant.
    assert_eq!(
        tenant_of_host(&app, "www.acme.example.com").await,
        serde_json::Value::Null
    );

    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants/acme/domains",
        &admin,
        Some(json!({"domain": "WWW.acme.example.com."})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json["domains"],
        json!(["acme.example.com", "www.acme.example.com"])
    );
    assert_eq!(
        r.json["domain"], "acme.example.com",
        "the first domain stays primary"
    );
    assert_eq!(
        tenant_of_host(&app, "www.acme.example.com").await,
        "acme",
        "the cached miss was dropped"
    );

    // Another tenant's domain, a bad name, a local name: refused, nothing changes.
    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants/globex/domains",
        &admin,
        Some(json!({"domain": "www.acme.example.com"})),
    )
    .await;
    r.assert_problem(409);
    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants/globex/domains",
        &admin,
        Some(json!({"domain": "not a host"})),
    )
    .await;
    r.assert_problem(400);
    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants/globex/domains",
        &admin,
        Some(json!({"domain": "db.localhost"})),
    )
    .await;
    r.assert_problem(422);
    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants/ghost/domains",
        &admin,
        Some(json!({"domain": "ghost.example.com"})),
    )
    .await;
    r.assert_problem(404);

    // The primary goes last: make the other one primary first.
    let r = send(
        &app,
        Method::DELETE,
        "/api/v1/tenants/acme/domains/acme.example.com",
        &admin,
        None,
    )
    .await;
    r.assert_problem(409);
    let r = send(
        &app,
        Method::PUT,
        "/api/v1/tenants/acme/domains/www.acme.example.com/primary",
        &admin,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["domain"], "www.acme.example.com");
    let r = send(
        &app,
        Method::DELETE,
        "/api/v1/tenants/acme/domains/acme.example.com",
        &admin,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["domains"], json!(["www.acme.example.com"]));
    assert_eq!(
        tenant_of_host(&app, "acme.example.com").await,
        serde_json::Value::Null,
        "a removed domain names no tenant, though it was cached"
    );
    let r = send(
        &app,
        Method::DELETE,
        "/api/v1/tenants/acme/domains/nope.example.com",
        &admin,
        None,
    )
    .await;
    r.assert_problem(404);

    // A freed domain can be another tenant's.
    let t = manager
        .add_tenant_domain(&"globex".parse().unwrap(), "acme.example.com", true)
        .await
        .unwrap();
    assert_eq!(t.domain.as_deref(), Some("acme.example.com"));
    assert_eq!(tenant_of_host(&app, "acme.example.com").await, "globex");

    // Deleting a tenant frees its domains.
    let acme = "acme".parse().unwrap();
    manager.suspend_tenant(&acme).await.unwrap();
    manager.delete_tenant(&acme).await.unwrap();
    assert_eq!(
        tenant_of_host(&app, "www.acme.example.com").await,
        serde_json::Value::Null
    );
    let t = manager
        .add_tenant_domain(&"globex".parse().unwrap(), "www.acme.example.com", false)
        .await
        .unwrap();
    assert_eq!(t.domains, ["acme.example.com", "www.acme.example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_follows_within_a_second() {
    let (db, a) = manager(PoolConfig::default()).await;
    create(&a, "acme").await;
    a.add_tenant_domain(&"acme".parse().unwrap(), "acme.example.com", true)
        .await
        .unwrap();
    let b = second_instance(&db).await;
    assert!(
        b.find_tenant_by_domain("acme.example.com")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        b.find_tenant_by_domain("shop.example.com")
            .await
            .unwrap()
            .is_none()
    );
    let acme = "acme".parse().unwrap();
    a.add_tenant_domain(&acme, "shop.example.com", false)
        .await
        .unwrap();
    a.set_primary_domain(&acme, "shop.example.com")
        .await
        .unwrap();
    a.remove_tenant_domain(&acme, "acme.example.com")
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let gone = b
            .find_tenant_by_domain("acme.example.com")
            .await
            .unwrap()
            .is_none();
        let added = b
            .find_tenant_by_domain("shop.example.com")
            .await
            .unwrap()
            .is_some();
        if gone && added {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the other instance still answers from its cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
