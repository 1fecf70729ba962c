//! Per-tenant pools are bounded: beyond `max_pools` the least recently used pool is
//! closed, and an evicted tenant's next request simply reopens its pool; never an
//! error because the cache is full, never a connection of another tenant.

mod common;

use axum::http::Method;
use common::*;
use serde_json::json;
use tenantry::{PoolConfig, Strategy};

#[tokio::test]
async fn pools_are_evicted_least_recently_used_first_and_reopened() {
    let (_db, manager) = manager(PoolConfig {
        max_pools: 3,
        max_connections_per_tenant: 2,
        ..PoolConfig::default()
    })
    .await;
    let strategies = [Strategy::Schema, Strategy::Row, Strategy::Database];
    let tenants: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    for (i, t) in tenants.iter().enumerate() {
        create_with(&manager, t, strategies[i % 3]).await;
    }
    let app = saas_app(&manager);
    for round in 0..4 {
        for t in &tenants {
            let r = send(
                &app,
                Method::POST,
                "/api/v1/data",
                &[("x-tenant-id", t)],
                Some(json!({"value": format!("{t}:{round}")})),
            )
            .await;
            assert_eq!(r.status, 201, "{t} round {round}: {r:?}");
            assert!(
                manager.pools().open_pools() <= 3,
                "never more than max_pools open"
            );
        }
    }
    for t in &tenants {
        let r = send(
            &app,
            Method::GET,
            "/api/v1/data",
            &[("x-tenant-id", t)],
            None,
        )
        .await;
        let values: Vec<_> = r.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["value"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            values,
            (0..4)
                .map(|round| format!("{t}:{round}"))
                .collect::<Vec<_>>(),
            "{t}"
        );
    }
    let stats = manager.pools().stats();
    assert!(stats.evicted >= 20, "{stats:?}");
    assert_eq!(stats.opened, stats.evicted + stats.open as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_fail_because_pools_are_evicted() {
    let (db, manager) = manager(PoolConfig {
        max_pools: 2,
        max_connections_per_tenant: 1,
        ..PoolConfig::default()
    })
    .await;
    let tenants: Vec<String> = (0..6).map(|i| format!("q{i}")).collect();
    for (i, t) in tenants.iter().enumerate() {
        create_with(&manager, t, [Strategy::Schema, Strategy::Database][i % 2]).await;
    }
    let app = saas_app(&manager);
    let calls = (0..300).map(|n| {
        let app = app.clone();
        let tenant = tenants[n * 7 % tenants.len()].clone();
        tokio::spawn(async move {
            let path = if n % 2 == 0 {
                "/api/v1/projects"
            } else {
                "/api/v1/data"
            };
            send(&app, Method::GET, path, &[("x-tenant-id", &tenant)], None)
                .await
                .status
        })
    });
    for status in futures::future::join_all(calls).await {
        assert_eq!(status.unwrap(), 200);
    }
    assert!(manager.pools().stats().evicted > 0);
    // Evicted pools are not leaked: once their last user let go, their connections
    // closed. Still open: at most the two pools' connections (one each).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let tenant_connections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND starts_with(datname, $1)",
    )
    .bind(database_prefix(&db))
    .fetch_one(manager.service().repository().pool())
    .await
    .unwrap();
    let schema_tenant_connections: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM pg_stat_activity a
           WHERE a.backend_type = 'client backend' AND a.datname = current_database()
             AND a.pid <> pg_backend_pid()
             AND (a.query LIKE '%FROM "projects"%' OR a.query LIKE '%FROM "data"%')"#,
    )
    .fetch_one(manager.service().repository().pool())
    .await
    .unwrap();
    eprintln!(
        "database-tenant connections {tenant_connections}, schema-tenant connections {schema_tenant_connections}"
    );
    assert!(
        tenant_connections + schema_tenant_connections <= 2,
        "connections left open"
    );
}
