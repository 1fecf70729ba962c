//! With the database unreachable the app answers 503 with problem details, and it
//! recovers by itself when the database is back.

mod common;

use std::time::{Duration, Instant};

use axum::http::Method;
use common::*;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tenantry::PoolConfig;
use tenantry::testing::{FlakyProxy, TestDatabase};

#[tokio::test]
async fn database_down_gives_503_and_recovery_is_automatic() {
    let db = TestDatabase::create().await.unwrap();
    let direct = db.connect_options();
    let target = tokio::net::lookup_host((direct.get_host().to_owned(), direct.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = FlakyProxy::start(target).await.unwrap();
    let via_proxy = direct.host("127.0.0.1").port(proxy.addr().port());
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(via_proxy)
        .await
        .unwrap();
    saas::prepare_database(&pool).await.unwrap();
    let manager = saas_builder(&db, pool)
        .pool_config(PoolConfig {
            acquire_timeout: Duration::from_secs(1),
            ..saas::pool_config()
        })
        .build()
        .await
        .unwrap();
    create(&manager, "acme").await;
    create_with(&manager, "rowco", tenantry::Strategy::Row).await;
    create_with(&manager, "dbco", tenantry::Strategy::Database).await;
    // Exists, but no request looked it up yet: the registry has to be asked about it.
    create(&manager, "ghost").await;
    let app = saas_app(&manager);
    let acme = [("x-tenant-id", "acme")];
    let (k, v) = admin();
    let auth = [(k, v.as_str())];

    let r = send(
        &app,
        Method::POST,
        "/api/v1/projects",
        &acme,
        Some(json!({"name": "before"})),
    )
    .await;
    assert_eq!(r.status, 201);

    proxy.cut();
    let started = Instant::now();
    // A cached tenant whose connections died.
    send(&app, Method::GET, "/api/v1/projects", &acme, None)
        .await
        .assert_problem(503);
    send(
        &app,
        Method::POST,
        "/api/v1/projects",
        &acme,
        Some(json!({"name": "during"})),
    )
    .await
    .assert_problem(503);
    // A tenant the registry has to be asked about (an unknown id would be a 404 from
    // the set of known ids, without asking).
    Client::tenant(&app, "ghost")
        .get("/api/v1/projects")
        .await
        .assert_problem(503);
    // Admin routes.
    send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &auth,
        Some(json!({"id": "new", "name": "New"})),
    )
    .await
    .assert_problem(503);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "503s come promptly"
    );
    // Invalid input is still a client error, not a 503: it never needs the database.
    send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("x-tenant-id", "BAD")],
        None,
    )
    .await
    .assert_problem(400);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let r = send(&app, Method::GET, "/api/v1/projects", &acme, None).await;
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed.status, 200, "recovered: {listed:?}");
    assert_eq!(
        listed.json,
        json!([{"id": 1, "name": "before"}]),
        "nothing written while down"
    );
    let created = send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &auth,
        Some(json!({"id": "new", "name": "New"})),
    )
    .await;
    assert_eq!(created.status, 201);
}
