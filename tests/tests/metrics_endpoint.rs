//! The quick start's `GET /metrics`: the Prometheus text format, scraped after traffic,
//! with per-tenant request counts and latencies and the pool's figures per server.
//! (Its own test binary: the exporter is the process's global `metrics` recorder.)

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use tenantry::{PoolConfig, Strategy};
use tower::ServiceExt;

/// The value of the one sample of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matches: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        matches.len() <= 1,
        "{name} {labels:?} matches {} samples",
        matches.len()
    );
    matches.first().copied()
}

async fn scrape(app: &axum::Router, token: Option<&str>) -> (StatusCode, String, String) {
    let mut request = Request::builder().method(Method::GET).uri("/metrics");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_per_tenant_and_the_pool_per_server() {
    // Two connections for three tenants, each connection recycled after two tenants:
    // requests rebind and recycle connections.
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(2),
        max_tenants_per_connection: 2,
        acquire_timeout: Duration::from_millis(300),
        ..PoolConfig::default()
    })
    .await;
    create_with(&manager, "acme", Strategy::Schema).await;
    create_with(&manager, "globex", Strategy::Row).await;
    create_with(&manager, "initech", Strategy::Schema).await;
    let app = saas_app(&manager);

    // Admin only: a scrape without the token is refused.
    let (status, _, _) = scrape(&app, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let plan = [("acme", 7), ("globex", 5), ("initech", 3)];
    for round in 0..7 {
        for (tenant, n) in plan {
            if round >= n {
                continue;
            }
            let r = Client::tenant(&app, tenant)
                .post(
                    "/api/v1/projects",
                    serde_json::json!({"name": format!("{tenant}-{round}")}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        }
    }
    // Two client errors of acme's.
    for _ in 0..2 {
        let r = Client::tenant(&app, "acme")
            .post("/api/v1/projects", serde_json::json!({"name": ""}))
            .await;
        assert_eq!(r.status.as_u16() / 100, 4, "{r:?}");
    }
    // A request that finds the budget full: held connections, then a 503.
    let mut held = Vec::new();
    for id in ["acme", "initech"] {
        let tenant = manager.resolve_tenant(&id.parse().unwrap()).await.unwrap();
        let mut db = manager.tenant_db(tenant).await.unwrap();
        db.conn().await.unwrap();
        held.push(db);
    }
    let waiter = {
        let app = app.clone();
        tokio::spawn(async move { Client::tenant(&app, "globex").get("/api/v1/projects").await })
    };
    // While it waits, the scrape shows it waiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, _, during) = scrape(&app, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        sample(
            &during,
            "tenantry_pool_requests_waiting",
            &[("server", "default")]
        ),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        sample(
            &during,
            "tenantry_pool_connections_idle",
            &[("server", "default")]
        ),
        Some(0.0),
        "{during}"
    );
    waiter.await.unwrap().assert_problem(503);
    drop(held);
    // Let the held connections come back.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, content_type, text) = scrape(&app, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(
        text.contains(
            "# HELP tenantry_pool_timeouts_total Requests that found no connection in time (503)"
        ),
        "{text}"
    );

    // Per-tenant requests: exactly the ones sent, by status class. A tenant gets a
    // label of its own from its second request on (the first counts as `other`), so
    // that a flood of one-off tenants cannot grow the series.
    for (tenant, n) in plan {
        assert_eq!(
            sample(
                &text,
                "tenantry_requests_total",
                &[("tenant", tenant), ("status", "2xx")]
            ),
            Some(n as f64 - 1.0),
            "{tenant}:\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "tenantry_requests_total",
            &[("tenant", "other"), ("status", "2xx")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "tenantry_requests_total",
            &[("tenant", "acme"), ("status", "4xx")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "tenantry_requests_total",
            &[("tenant", "globex"), ("status", "5xx")]
        ),
        Some(1.0),
        "{text}"
    );
    // Latencies: a histogram per tenant, every request counted, in buckets.
    assert_eq!(
        sample(
            &text,
            "tenantry_request_duration_seconds_count",
            &[("tenant", "acme")]
        ),
        Some(8.0),
        "{text}"
    );
    let within_5s = sample(
        &text,
        "tenantry_request_duration_seconds_bucket",
        &[("tenant", "acme"), ("le", "5")],
    );
    assert_eq!(within_5s, Some(8.0), "{text}");

    // The pool, per server, as the pool itself counts it.
    let stats = manager.pool_stats_by_server();
    assert_eq!(stats.len(), 1, "{stats:?}");
    let server = &stats[0];
    assert_eq!(server.server, "default");
    let pool = |name: &str| {
        sample(&text, name, &[("server", "default")]).unwrap_or_else(|| panic!("{name}:\n{text}"))
    };
    assert_eq!(pool("tenantry_pool_budget"), 2.0);
    let open = pool("tenantry_pool_connections_open");
    assert!((1.0..=2.0).contains(&open), "open {open}");
    assert_eq!(open, server.stats.open as f64);
    assert_eq!(
        pool("tenantry_pool_connections_idle"),
        server.stats.idle as f64
    );
    assert_eq!(pool("tenantry_pool_requests_waiting"), 0.0);
    assert_eq!(pool("tenantry_pool_timeouts_total"), 1.0);
    let rebinds = pool("tenantry_pool_rebinds_total");
    assert!(
        rebinds >= 3.0,
        "three tenants on two connections: {rebinds}"
    );
    assert_eq!(rebinds, server.stats.rebound as f64);
    let recycled = pool("tenantry_pool_recycled_total");
    assert!(
        recycled >= 1.0,
        "connections serve at most two tenants: {recycled}"
    );
    assert_eq!(recycled, server.stats.recycled as f64);
    assert_eq!(
        pool("tenantry_pool_opened_total"),
        server.stats.opened as f64
    );
    assert_eq!(
        pool("tenantry_pool_resets_total"),
        server.stats.reset as f64
    );
}
