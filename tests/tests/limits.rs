//! Per-tenant limits: stored in the registry, changed at run time (manager, admin
//! API), reaching other instances through the change notifications, enforced by
//! `TenantLimitLayer` (429 with `Retry-After`) and as the tenant's statement timeout.

mod common;

use std::time::{Duration, Instant};

use axum::http::Method;
use axum::routing::get;
use common::*;
use serde_json::json;
use tenantry::{PoolConfig, TenantLayer, TenantLimitLayer, TenantLimits};

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_and_the_others_do_not_notice() {
    let (_db, manager) = manager(saas::pool_config()).await;
    create(&manager, "acme").await;
    create(&manager, "globex").await;
    let app = saas_app(&manager);
    let acme = [("x-tenant-id", "acme")];

    // Set through the admin API: 2 requests per second, a bucket of 2.
    let r = send(
        &app,
        Method::PUT,
        "/api/v1/tenants/acme/limits",
        &[admin_header()],
        Some(json!({"rate": 2.0, "burst": 2})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["limits"], json!({"rate": 2.0, "burst": 2}));

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send(&app, Method::GET, "/api/v1/projects", &acme, None).await);
    }
    assert_eq!(statuses[0].status, 200);
    assert_eq!(statuses[1].status, 200);
    let over = &statuses[2];
    over.assert_problem(429);
    assert_eq!(
        over.json["type"],
        "https://tenantry.dev/problems/too-many-requests"
    );
    let retry: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{over:?}");
    for _ in 0..10 {
        let r = Client::tenant(&app, "globex").get("/api/v1/projects").await;
        assert_eq!(r.status, 200, "globex has no limit: {r:?}");
    }

    // Cleared: back to the defaults (none here), at once.
    let r = send(
        &app,
        Method::PUT,
        "/api/v1/tenants/acme/limits",
        &[admin_header()],
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(&app, Method::GET, "/api/v1/projects", &acme, None).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Bad limits are refused and nothing changes.
    for bad in [
        json!({"rate": -1.0}),
        json!({"concurrency": 0}),
        json!({"bogus": 1}),
    ] {
        let r = send(
            &app,
            Method::PUT,
            "/api/v1/tenants/acme/limits",
            &[admin_header()],
            Some(bad.clone()),
        )
        .await;
        r.assert_problem(422);
    }
    let r = send(
        &app,
        Method::PUT,
        "/api/v1/tenants/ghost/limits",
        &[admin_header()],
        Some(json!({})),
    )
    .await;
    r.assert_problem(404);
    let stored = manager
        .admin()
        .find(&"acme".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.limits, TenantLimits::default());
}

#[tokio::test]
async fn concurrency_is_bounded_per_tenant() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    create(&manager, "globex").await;
    manager
        .set_tenant_limits(
            &"acme".parse().unwrap(),
            TenantLimits {
                concurrency: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
        .route_layer(TenantLimitLayer::new(TenantLimits::default()))
        .route_layer(TenantLayer::new(manager.clone()));
    let call = |tenant: &'static str| {
        let app = app.clone();
        async move {
            let req = axum::http::Request::get("/slow")
                .header("x-tenant-id", tenant)
                .body(axum::body::Body::empty())
                .unwrap();
            tower::ServiceExt::oneshot(app, req)
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (a1, a2, g1, g2) = tokio::join!(call("acme"), call("acme"), call("globex"), call("globex"));
    let mut acme = [a1, a2];
    acme.sort();
    assert_eq!(acme, [200, 429], "one acme request at a time");
    assert_eq!(
        (g1, g2),
        (200, 200),
        "globex is not bounded by acme's limit"
    );
    // Once the first finished, the next one passes.
    assert_eq!(call("acme").await, 200);
}

#[tokio::test]
async fn the_statement_timeout_is_the_tenants() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    create(&manager, "globex").await;
    manager
        .set_tenant_limits(
            &"acme".parse().unwrap(),
            TenantLimits {
                statement_timeout_ms: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for (id, cancelled) in [("acme", true), ("globex", false), ("acme", true)] {
        let tenant = manager.resolve_tenant(&id.parse().unwrap()).await.unwrap();
        let mut db = manager.tenant_db(tenant).await.unwrap();
        let started = Instant::now();
        let r = sqlx::query("SELECT pg_sleep(0.5)").execute(&mut db).await;
        match r {
            Err(sqlx::Error::Database(e)) if cancelled => {
                assert_eq!(e.code().as_deref(), Some("57014"), "{e}");
                assert!(started.elapsed() < Duration::from_millis(450));
                // As a response: 503 with Retry-After, a problem saying what happened.
                let error = tenantry::Error::from(sqlx::Error::Database(e));
                assert_eq!(error.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
                let problem = error.to_problem();
                assert_eq!(
                    problem.type_,
                    "https://tenantry.dev/problems/statement-timeout"
                );
                assert!(
                    problem.detail.contains("statement timeout"),
                    "{}",
                    problem.detail
                );
            }
            Ok(_) if !cancelled => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    // Cleared: the next binding has the server's default again.
    manager
        .set_tenant_limits(&"acme".parse().unwrap(), TenantLimits::default())
        .await
        .unwrap();
    let tenant = manager
        .resolve_tenant(&"acme".parse().unwrap())
        .await
        .unwrap();
    let mut db = manager.tenant_db(tenant).await.unwrap();
    sqlx::query("SELECT pg_sleep(0.3)")
        .execute(&mut db)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_another_instance_within_a_second() {
    let (db, a) = manager(PoolConfig::default()).await;
    create(&a, "acme").await;
    let b = second_instance(&db).await;
    let id = "acme".parse().unwrap();
    assert_eq!(
        b.resolve_tenant(&id).await.unwrap().limits,
        TenantLimits::default()
    );
    let limits = TenantLimits {
        rate: Some(7.0),
        ..Default::default()
    };
    a.set_tenant_limits(&id, limits).await.unwrap();
    let started = Instant::now();
    loop {
        if b.resolve_tenant(&id).await.unwrap().limits == limits {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not seen by the other instance within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
