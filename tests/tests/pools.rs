//! One budgeted pool per server: connections scale with the server, not with the
//! tenants. The budget is never exceeded, whatever the number of tenants, strategies
//! or clients; a request that finds no connection in time gets 503 with
//! `Retry-After`; a slow client holds no connection.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use common::*;
use serde_json::json;
use tenantry::{PoolConfig, Strategy, TenantManager};
use tower::ServiceExt;

/// Samples the server's tenant connections of this test (its database and its tenant
/// databases) until `stop`, keeping the maximum.
fn sample_connections(
    manager: &TenantManager,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicI64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicI64::new(0));
    let pool = manager.admin().registry_pool().clone();
    let seen = peak.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE (application_name = 'tenantry' OR application_name LIKE 'tenantry:%')
                   AND (datname = current_database() OR starts_with(datname, $1))",
            )
            .bind(&prefix)
            .fetch_one(&pool)
            .await
            .unwrap();
            seen.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (peak, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_over_more_tenants_and_clients_than_connections() {
    let budget = 3;
    let (db, manager) = manager(PoolConfig {
        max_connections: Some(budget),
        ..PoolConfig::default()
    })
    .await;
    let strategies = [Strategy::Schema, Strategy::Row, Strategy::Database];
    let tenants: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    for (i, t) in tenants.iter().enumerate() {
        create_with(&manager, t, strategies[i % 3]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (peak, sampler) = sample_connections(&manager, db.database_prefix(), stop.clone());
    let app = saas_app(&manager);
    // 48 clients at once, 4 writes per tenant: every request needs a connection, and
    // most find the budget taken.
    let calls = (0..48).map(|n| {
        let app = app.clone();
        let tenant = tenants[n % tenants.len()].clone();
        tokio::spawn(async move {
            let r = send(
                &app,
                Method::POST,
                "/api/v1/data",
                &[("x-tenant-id", &tenant)],
                Some(json!({"value": format!("{tenant}:{n}")})),
            )
            .await;
            (tenant, n, r.status.as_u16())
        })
    });
    for call in futures::future::join_all(calls).await {
        let (tenant, n, status) = call.unwrap();
        assert_eq!(status, 201, "{tenant} write {n}");
    }
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    // Every tenant reads exactly its own four rows.
    for (i, t) in tenants.iter().enumerate() {
        let r = Client::tenant(&app, t).get("/api/v1/data").await;
        let mut values: Vec<String> = r.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["value"].as_str().unwrap().to_owned())
            .collect();
        values.sort();
        let mut expected: Vec<String> = (0..48)
            .filter(|n| n % tenants.len() == i)
            .map(|n| format!("{t}:{n}"))
            .collect();
        expected.sort();
        assert_eq!(values, expected, "{t} reads only its own rows");
    }
    let stats = manager.pool_stats();
    eprintln!(
        "{stats:?}, peak seen by the server {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(stats.peak_open <= budget as usize, "{stats:?}");
    assert!(
        peak.load(Ordering::SeqCst) <= budget as i64,
        "the server saw {} tenant connections, budget {budget}",
        peak.load(Ordering::SeqCst)
    );
    assert!(
        stats.rebound > 0,
        "schema and row tenants shared connections: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_is_503_with_retry_after_and_recovers() {
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(1),
        acquire_timeout: Duration::from_millis(300),
        ..PoolConfig::default()
    })
    .await;
    create(&manager, "holder").await;
    create(&manager, "waiter").await;
    let holder = manager
        .resolve_tenant(&"holder".parse().unwrap())
        .await
        .unwrap();
    let mut held = manager.tenant_db(holder).await.unwrap();
    held.conn().await.unwrap();
    let app = saas_app(&manager);
    let r = Client::tenant(&app, "waiter").get("/api/v1/projects").await;
    r.assert_problem(503);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert_eq!(manager.pool_stats().timed_out, 1);
    drop(held);
    let r = Client::tenant(&app, "waiter").get("/api/v1/projects").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_holds_no_connection() {
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(1),
        acquire_timeout: Duration::from_millis(500),
        ..PoolConfig::default()
    })
    .await;
    create(&manager, "slow").await;
    create(&manager, "fast").await;
    let app = saas_app(&manager);
    // Four clients send headers and then nothing of their bodies.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let body = Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
        let request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/projects")
            .header("x-tenant-id", "slow")
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        let app = app.clone();
        slow.push(tokio::spawn(async move { app.oneshot(request).await }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let r = Client::tenant(&app, "fast")
            .post("/api/v1/projects", json!({"name": "quick"}))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    assert_eq!(manager.pool_stats().timed_out, 0);
    // The slow ones are still waiting for their bodies (they were not cut or failed
    // early, which would also have freed the connection).
    for task in &slow {
        assert!(!task.is_finished(), "a slow request ended early");
    }
    for task in slow {
        task.abort();
    }
}
