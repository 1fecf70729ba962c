//! Isolation soak: many tenants, concurrent requests through the real router, random
//! cancellation (the request future dropped at random points, also inside the
//! transaction) and injected handler errors. Afterwards every tenant holds exactly its
//! own acknowledged rows: none of another tenant's, none lost, none rolled back.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use common::*;
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tenantry::{Error, PoolConfig, Strategy, TenantLayer, TenantManager, TenantTx};
use tower::ServiceExt;

const TENANTS: usize = 20;
const OPERATIONS: usize = 20_000;
const WORKERS: usize = 32;

/// Inserts a project in the tenant's transaction, then fails: the insert must roll back.
async fn insert_then_fail(mut tx: TenantTx, body: String) -> Result<StatusCode, Error> {
    sqlx::query("INSERT INTO projects (name) VALUES ($1)")
        .bind(&body)
        .execute(&mut tx)
        .await?;
    Err(Error::Validation(
        "injected failure after the insert".to_owned(),
    ))
}

#[derive(Default)]
struct Ledger {
    attempted: HashMap<String, HashSet<String>>,
    acknowledged: HashMap<String, HashSet<String>>,
    doomed: HashMap<String, HashSet<String>>,
    cancelled: usize,
    completed: usize,
    unexpected: Vec<String>,
    foreign_reads: Vec<String>,
}

fn tenant_name(i: usize) -> String {
    format!("soak-{i:02}")
}

/// Which strategy each tenant gets.
#[derive(Clone, Copy, Debug)]
enum Mix {
    Schema,
    Row,
    Database,
    /// Schema, row and database tenants, in turn.
    Mixed,
}

impl Mix {
    fn strategy(self, i: usize) -> Strategy {
        match self {
            Mix::Schema => Strategy::Schema,
            Mix::Row => Strategy::Row,
            Mix::Database => Strategy::Database,
            Mix::Mixed => [Strategy::Schema, Strategy::Row, Strategy::Database][i % 3],
        }
    }
}

/// `budget` connections for 20 tenants: most requests rebind a connection.
async fn soak(pool_size: u32, mix: Mix) {
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(pool_size),
        ..PoolConfig::default()
    })
    .await;
    for i in 0..TENANTS {
        create_with(&manager, &tenant_name(i), mix.strategy(i)).await;
    }
    let app: Router = saas_app(&manager).merge(
        Router::new()
            .route("/test/insert-then-fail", post(insert_then_fail))
            .layer(TenantLayer::new(manager.clone())),
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let workers = (0..WORKERS).map(|w| {
        let app = app.clone();
        let ledger = ledger.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0x7e4a + w as u64 + pool_size as u64 * 1000);
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= OPERATIONS {
                    break;
                }
                let tenant = tenant_name(rng.random_range(0..TENANTS));
                let marker = format!("{tenant}:{n}");
                let kind = rng.random_range(0..10);
                let (method, uri, body) = match kind {
                    0..=3 => (
                        "POST",
                        "/api/v1/projects",
                        Some(serde_json::json!({"name": marker}).to_string()),
                    ),
                    4..=5 => (
                        "POST",
                        "/api/v1/data",
                        Some(serde_json::json!({"value": marker}).to_string()),
                    ),
                    6 => (
                        "POST",
                        "/test/insert-then-fail",
                        Some(format!("{marker}:doomed")),
                    ),
                    7..=8 => ("GET", "/api/v1/projects", None),
                    _ => ("GET", "/api/v1/data", None),
                };
                {
                    let mut l = ledger.lock().unwrap();
                    match kind {
                        0..=5 => {
                            l.attempted
                                .entry(tenant.clone())
                                .or_default()
                                .insert(marker.clone());
                        }
                        6 => {
                            l.doomed
                                .entry(tenant.clone())
                                .or_default()
                                .insert(format!("{marker}:doomed"));
                        }
                        _ => {}
                    }
                }
                let mut request = Request::builder()
                    .method(method)
                    .uri(uri)
                    .header("x-tenant-id", &tenant);
                if body.is_some() && kind != 6 {
                    request = request.header("content-type", "application/json");
                }
                let request = request
                    .body(body.map(Body::from).unwrap_or_else(Body::empty))
                    .unwrap();
                let call = async {
                    let response = app.clone().oneshot(request).await.unwrap();
                    let status = response.status();
                    let bytes = response.into_body().collect().await.unwrap().to_bytes();
                    (status, bytes)
                };
                // One request in four is cancelled after a random delay: before the
                // handler, while BEGIN is in flight, inside the transaction, at COMMIT.
                let outcome = if rng.random_range(0..4) == 0 {
                    let delay = Duration::from_micros(rng.random_range(0..3_000));
                    tokio::time::timeout(delay, call).await.ok()
                } else {
                    Some(call.await)
                };
                let mut l = ledger.lock().unwrap();
                let Some((status, bytes)) = outcome else {
                    l.cancelled += 1;
                    continue;
                };
                l.completed += 1;
                match (kind, status.as_u16()) {
                    (0..=5, 201) => {
                        l.acknowledged
                            .entry(tenant.clone())
                            .or_default()
                            .insert(marker);
                    }
                    (6, 400) => {}
                    (7..=9, 200) => {
                        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                        let items = if kind == 9 {
                            json["data"].clone()
                        } else {
                            json
                        };
                        for item in items.as_array().unwrap() {
                            let text = item
                                .get("name")
                                .or_else(|| item.get("value"))
                                .unwrap()
                                .as_str()
                                .unwrap();
                            if !text.starts_with(&format!("{tenant}:")) {
                                l.foreign_reads.push(format!("{tenant} read {text}"));
                            }
                        }
                    }
                    (k, s) => l.unexpected.push(format!(
                        "kind {k} -> {s}: {}",
                        String::from_utf8_lossy(&bytes)
                    )),
                }
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w.unwrap();
    }
    // Let connections dropped by cancelled requests go back to their pools.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let l = std::mem::take(&mut *ledger.lock().unwrap());
    assert_eq!(l.completed + l.cancelled, OPERATIONS);
    assert!(
        l.cancelled > OPERATIONS / 20,
        "the soak cancelled enough requests: {}",
        l.cancelled
    );
    assert!(
        l.foreign_reads.is_empty(),
        "cross-tenant reads: {:?}",
        &l.foreign_reads[..l.foreign_reads.len().min(5)]
    );
    assert!(
        l.unexpected.is_empty(),
        "unexpected statuses: {:?}",
        &l.unexpected[..l.unexpected.len().min(5)]
    );

    // Read every tenant's tables directly (not through tenantry) and compare.
    let pool = manager.service().repository().pool();
    let mut acknowledged_total = 0;
    for i in 0..TENANTS {
        let tenant = tenant_name(i);
        let (projects, data, filter) = match mix.strategy(i) {
            Strategy::Row => (
                "shared.projects".to_owned(),
                "shared.data".to_owned(),
                "WHERE tenant_id = $1",
            ),
            Strategy::Schema => {
                let schema = format!("tenant_{}", tenant.replace('-', "_"));
                (
                    format!("{schema}.projects"),
                    format!("{schema}.data"),
                    "WHERE $1::text IS NOT NULL",
                )
            }
            Strategy::Database => {
                // Read through a connection of its own to the tenant's database.
                let t = manager.resolve(&tenant.parse().unwrap()).await.unwrap();
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(
                    &pool
                        .connect_options()
                        .as_ref()
                        .clone()
                        .database(&t.schema_name),
                )
                .await
                .unwrap();
                let mut rows: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                let values: Vec<String> = sqlx::query_scalar("SELECT value FROM data")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                rows.extend(values);
                check_tenant(&tenant, rows, &l);
                acknowledged_total += l.acknowledged.get(&tenant).map_or(0, |a| a.len());
                continue;
            }
        };
        let mut rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM {projects} {filter}"
        )))
        .bind(&tenant)
        .fetch_all(pool)
        .await
        .unwrap();
        let values: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT value FROM {data} {filter}"
        )))
        .bind(&tenant)
        .fetch_all(pool)
        .await
        .unwrap();
        rows.extend(values);
        check_tenant(&tenant, rows, &l);
        acknowledged_total += l.acknowledged.get(&tenant).map_or(0, |a| a.len());
    }
    assert!(
        acknowledged_total > OPERATIONS / 4,
        "enough writes were acknowledged: {acknowledged_total}"
    );
    // Every row in the shared tables carries the tenant that wrote it.
    let mislabelled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT tenant_id, name AS v FROM shared.projects
                               UNION ALL SELECT tenant_id, value FROM shared.data) t
         WHERE split_part(v, ':', 1) <> tenant_id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(mislabelled, 0, "shared rows under another tenant's id");
    eprintln!(
        "soak {mix:?} pool={pool_size}: {OPERATIONS} operations, {} completed, {} cancelled, {acknowledged_total} acknowledged writes",
        l.completed, l.cancelled
    );
    close(manager).await;
}

/// Every row stored for `tenant` is its own, was written, was not rolled back, and
/// every acknowledged write is there.
fn check_tenant(tenant: &str, rows: Vec<String>, l: &Ledger) {
    let stored: HashSet<String> = rows.iter().cloned().collect();
    assert_eq!(stored.len(), rows.len(), "{tenant}: no row stored twice");
    let empty = HashSet::new();
    let acknowledged = l.acknowledged.get(tenant).unwrap_or(&empty);
    let attempted = l.attempted.get(tenant).unwrap_or(&empty);
    let doomed = l.doomed.get(tenant).unwrap_or(&empty);
    for row in &stored {
        assert!(
            row.starts_with(&format!("{tenant}:")),
            "{tenant} holds another tenant's row {row}"
        );
        assert!(
            !doomed.contains(row),
            "{tenant}: a rolled-back insert survived: {row}"
        );
        assert!(
            attempted.contains(row),
            "{tenant}: a row nobody wrote: {row}"
        );
    }
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{tenant}: acknowledged rows lost: {lost:?}"
    );
}

async fn close(manager: TenantManager) {
    manager.pools().close_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_schema_tenants_two_connections() {
    soak(2, Mix::Schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_schema_tenants_eight_connections() {
    soak(8, Mix::Schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_row_tenants_two_connections() {
    soak(2, Mix::Row).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_row_tenants_eight_connections() {
    soak(8, Mix::Row).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_database_tenants_eight_connections() {
    soak(8, Mix::Database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_schema_row_and_database_tenants_mixed() {
    soak(6, Mix::Mixed).await;
}
