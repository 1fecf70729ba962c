//! Two app instances on one registry: a change made through either one takes effect
//! in the other within a second (LISTEN/NOTIFY), with a cache TTL far longer than that.

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::http::Method;
use common::*;
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;
use tenantry::TenantManager;

async fn instance(url: &str) -> (TenantManager, Router) {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap();
    let manager = TenantManager::builder(pool)
        .migrations(saas::tenant_migrations())
        // Long enough that only a notification can explain a change seen within 1 s.
        .cache_ttl(Duration::from_secs(300))
        .build()
        .await
        .unwrap();
    let app = saas_app(&manager);
    (manager, app)
}

/// Polls until `check` holds, up to `limit`; returns how long it took.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not seen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn lifecycle_changes_reach_the_other_instance_within_a_second() {
    let db = tenantry::testing::TestDatabase::create().await.unwrap();
    let (_a_manager, a) = instance(db.url()).await;
    let (_b_manager, b) = instance(db.url()).await;
    let (k, v) = admin();
    let auth = [(k, v.as_str())];
    let acme = [("x-tenant-id", "acme")];
    let second = Duration::from_secs(1);

    let created = send(
        &a,
        Method::POST,
        "/api/v1/tenants",
        &auth,
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    assert_eq!(created.status, 201);
    // B caches acme as active.
    assert_eq!(
        send(&b, Method::GET, "/api/v1/projects", &acme, None)
            .await
            .status,
        200
    );

    // Suspend through A: B refuses within a second.
    let suspended = send(
        &a,
        Method::POST,
        "/api/v1/tenants/acme/suspend",
        &auth,
        None,
    )
    .await;
    assert_eq!(suspended.status, 200);
    assert_eq!(suspended.json["status"], "suspended");
    let took = within(second, || async {
        send(&b, Method::GET, "/api/v1/projects", &acme, None)
            .await
            .status
            == 403
    })
    .await;
    eprintln!("suspend seen by the other instance after {took:?}");

    // Resume through B: A serves again within a second.
    assert_eq!(
        send(&a, Method::GET, "/api/v1/projects", &acme, None)
            .await
            .status,
        403
    );
    let resumed = send(&b, Method::POST, "/api/v1/tenants/acme/resume", &auth, None).await;
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.json["status"], "active");
    within(second, || async {
        send(&a, Method::GET, "/api/v1/projects", &acme, None)
            .await
            .status
            == 200
    })
    .await;

    // Delete needs a suspended tenant.
    send(&a, Method::DELETE, "/api/v1/tenants/acme", &auth, None)
        .await
        .assert_problem(409);
    assert_eq!(
        send(
            &a,
            Method::POST,
            "/api/v1/tenants/acme/suspend",
            &auth,
            None
        )
        .await
        .status,
        200
    );
    let deleted = send(&b, Method::DELETE, "/api/v1/tenants/acme", &auth, None).await;
    assert_eq!(deleted.status, 204);
    within(second, || async {
        send(&a, Method::GET, "/api/v1/projects", &acme, None)
            .await
            .status
            == 404
    })
    .await;
    send(&b, Method::GET, "/api/v1/tenants/acme", &auth, None)
        .await
        .assert_problem(404);
    send(&b, Method::DELETE, "/api/v1/tenants/acme", &auth, None)
        .await
        .assert_problem(404);
    send(
        &b,
        Method::POST,
        "/api/v1/tenants/acme/suspend",
        &auth,
        None,
    )
    .await
    .assert_problem(404);
    send(
        &b,
        Method::POST,
        "/api/v1/tenants/NOPE/suspend",
        &auth,
        None,
    )
    .await
    .assert_problem(400);
    send(&a, Method::POST, "/api/v1/tenants/acme/resume", &[], None)
        .await
        .assert_problem(401);

    // A domain registered later is seen by the other instance, which had cached a miss.
    let host = [("host", "shop.globex.com")];
    assert_eq!(
        send(&b, Method::GET, "/api/v1/current-tenant", &host, None)
            .await
            .json,
        json!({"tenant": null})
    );
    let created = send(
        &a,
        Method::POST,
        "/api/v1/tenants",
        &auth,
        Some(json!({"id": "globex", "name": "Globex", "domain": "shop.globex.com"})),
    )
    .await;
    assert_eq!(created.status, 201);
    within(second, || async {
        send(&b, Method::GET, "/api/v1/current-tenant", &host, None)
            .await
            .json["tenant"]["id"]
            == "globex"
    })
    .await;
}

#[tokio::test]
async fn without_notifications_the_ttl_bounds_staleness() {
    let db = tenantry::testing::TestDatabase::create().await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url())
        .await
        .unwrap();
    let quiet = TenantManager::builder(pool.clone())
        .listen_for_changes(false)
        .cache_ttl(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let other = TenantManager::builder(pool).build().await.unwrap();
    create(&other, "acme").await;
    let id = "acme".parse().unwrap();
    quiet.resolve_tenant(&id).await.unwrap();
    other.suspend_tenant(&id).await.unwrap();
    assert!(
        quiet.resolve_tenant(&id).await.is_ok(),
        "stale within the TTL, as configured"
    );
    let took = within(Duration::from_secs(2), || async {
        quiet.resolve_tenant(&id).await.is_err()
    })
    .await;
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

/// Any role that can connect can `NOTIFY` on the change channel. A flood of made-up
/// notifications (tenant ids, the old servers payload, garbage, numbers no change was
/// logged under) empties no instance's cache; a real change still arrives at once.
#[tokio::test]
async fn spoofed_change_notifications_change_nothing() {
    let db = tenantry::testing::TestDatabase::create().await.unwrap();
    let (a, _) = instance(db.url()).await;
    let (b, _) = instance(db.url()).await;
    for t in ["acme", "other", "marker"] {
        create(&a, t).await;
    }
    let [acme, other, marker]: [tenantry::TenantId; 3] =
        ["acme", "other", "marker"].map(|t| t.parse().unwrap());
    b.resolve_tenant(&acme).await.unwrap();
    b.resolve_tenant(&other).await.unwrap();

    // A second application's role on the same server, with nothing granted.
    let admin = sqlx::PgPool::connect(db.url()).await.unwrap();
    let role = format!("intruder_{}", db.tag());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'intruder'"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let mut intruder =
        sqlx::PgConnection::connect_with(&options.username(&role).password("intruder"))
            .await
            .unwrap();
    let logged: i64 = sqlx::query_scalar("SELECT max(seq) FROM tenantry.changes")
        .fetch_one(&admin)
        .await
        .unwrap();
    for i in 0..300_i64 {
        // Separate transactions: PostgreSQL folds equal notifications of one.
        sqlx::query(
            "SELECT pg_notify('tenantry_changes', p) \
             FROM unnest(ARRAY['acme', 'other', ':servers', 'garbage!', $1, $2, '-1']) p",
        )
        .bind(i.to_string())
        .bind((logged - i).to_string())
        .execute(&mut intruder)
        .await
        .unwrap();
    }
    // Notifications arrive in commit order: once the marker's change is seen, every
    // spoofed one before it has been handled.
    a.suspend_tenant(&marker).await.unwrap();
    within(Duration::from_secs(2), || async {
        b.resolve_tenant(&marker).await.is_err()
    })
    .await;
    let before = b.registry_lookups();
    b.resolve_tenant(&acme).await.unwrap();
    b.resolve_tenant(&other).await.unwrap();
    assert_eq!(
        b.registry_lookups(),
        before,
        "the spoofed notifications dropped cached tenants"
    );
    // A real change still reaches the other instance at once.
    a.suspend_tenant(&acme).await.unwrap();
    within(Duration::from_secs(1), || async {
        b.resolve_tenant(&acme).await.is_err()
    })
    .await;
    let _ = intruder.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&admin)
        .await
        .unwrap();
}
