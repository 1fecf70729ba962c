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
use tenantry::{
    CurrentTenant, Error, PoolConfig, Strategy, TenantDb, TenantLayer, TenantManager, TenantTx,
};
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

/// Changes its connection's session every way a handler could: another tenant's
/// schema and setting, and a transaction left open. None of it may reach the next
/// request on this connection.
async fn mess(mut db: TenantDb) -> Result<StatusCode, Error> {
    sqlx::raw_sql(
        "SET search_path TO tenant_soak_00, shared;
         SELECT set_config('tenantry.tenant_id', 'soak-00', false);
         SET statement_timeout = 5000;
         BEGIN;
         SELECT 1;",
    )
    .execute(&mut db)
    .await?;
    Ok(StatusCode::OK)
}

/// Writes a row naming the incarnation that served it, for tenants that are deleted
/// and re-created during the run.
async fn churn_write(
    CurrentTenant(tenant): CurrentTenant,
    mut db: TenantDb,
    body: String,
) -> Result<(StatusCode, String), Error> {
    let name = format!("{}:{}:{body}", tenant.id, tenant.incarnation);
    sqlx::query("INSERT INTO projects (name) VALUES ($1)")
        .bind(&name)
        .execute(&mut db)
        .await?;
    // The row's name says which incarnation acknowledged it.
    Ok((StatusCode::CREATED, name))
}

/// A planted leak for the soak's self-tests: writes the request's marker into
/// another tenant's schema (soak-00's, or soak-01's for soak-00), as a session left on
/// the wrong tenant would, and acknowledges it.
async fn leak_write(
    CurrentTenant(tenant): CurrentTenant,
    mut db: TenantDb,
    body: String,
) -> Result<StatusCode, Error> {
    let victim = if tenant.id.as_str() == "soak-00" {
        "tenant_soak_01, shared"
    } else {
        "tenant_soak_00, shared"
    };
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(victim)
        .execute(&mut db)
        .await?;
    sqlx::query("INSERT INTO projects (name) VALUES ($1)")
        .bind(&body)
        .execute(&mut db)
        .await?;
    Ok(StatusCode::CREATED)
}

/// A planted fault for the churn check: the row names the previous incarnation, as a
/// write of a deleted life that reached its successor would.
async fn churn_write_stale(
    CurrentTenant(tenant): CurrentTenant,
    mut db: TenantDb,
    body: String,
) -> Result<(StatusCode, String), Error> {
    let name = format!("{}:{}:{body}", tenant.id, tenant.incarnation - 1);
    sqlx::query("INSERT INTO projects (name) VALUES ($1)")
        .bind(&name)
        .execute(&mut db)
        .await?;
    Ok((
        StatusCode::CREATED,
        format!("{}:{}:{body}", tenant.id, tenant.incarnation),
    ))
}

/// A planted fault for the churn check: acknowledges a write it never made.
async fn churn_write_lost(
    CurrentTenant(tenant): CurrentTenant,
    body: String,
) -> (StatusCode, String) {
    let name = format!("{}:{}:{body}", tenant.id, tenant.incarnation);
    (StatusCode::CREATED, name)
}

/// What a soak self-test plants in the router; `None` for a real soak.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plant {
    None,
    /// One project write in twelve goes to `leak_write`.
    ForeignWrite,
    /// Churn writes name the previous incarnation.
    StaleIncarnation,
    /// Churn writes are acknowledged and not made.
    LostWrite,
}

const CHURN: [&str; 2] = ["churn-0", "churn-1"];

/// Deletes and re-creates the churn tenants (alternating schema and row) until `stop`.
async fn churn(manager: TenantManager, stop: Arc<std::sync::atomic::AtomicBool>) -> usize {
    let mut lives = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (i, id) in CHURN.iter().enumerate() {
            let id: tenantry::TenantId = id.parse().unwrap();
            manager.suspend_tenant(&id).await.unwrap();
            manager.delete_tenant(&id).await.unwrap();
            let strategy = if (lives + i) % 2 == 0 {
                Strategy::Row
            } else {
                Strategy::Schema
            };
            manager
                .create_tenant(tenantry::NewTenant::new(id, "churn").with_strategy(strategy))
                .await
                .unwrap();
            lives += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    lives
}

#[derive(Default)]
struct Ledger {
    attempted: HashMap<String, HashSet<String>>,
    acknowledged: HashMap<String, HashSet<String>>,
    doomed: HashMap<String, HashSet<String>>,
    /// Churn writes acknowledged (201), named `{tenant}:{incarnation}:{n}`.
    churn_acknowledged: HashSet<String>,
    cancelled: usize,
    completed: usize,
    unexpected: Vec<String>,
    foreign_reads: Vec<String>,
}

/// The Citus soak runs alone; the others share the machine with each other.
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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
    /// Schema and row tenants, in turn.
    SchemaAndRow,
}

impl Mix {
    fn strategy(self, i: usize) -> Strategy {
        match self {
            Mix::Schema => Strategy::Schema,
            Mix::Row => Strategy::Row,
            Mix::Database => Strategy::Database,
            Mix::Mixed => [Strategy::Schema, Strategy::Row, Strategy::Database][i % 3],
            Mix::SchemaAndRow => [Strategy::Schema, Strategy::Row][i % 2],
        }
    }
}

/// `budget` connections for 20 tenants: most requests rebind a connection. With
/// `churn`, two more tenants are deleted and re-created (switching strategy) all along,
/// while requests write to them.
async fn soak(pool_size: u32, mix: Mix, with_churn: bool) {
    planted_soak(pool_size, mix, with_churn, Plant::None).await;
}

async fn planted_soak(pool_size: u32, mix: Mix, with_churn: bool, plant: Plant) {
    let _alone = HEAVY.read().await;
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(pool_size),
        // The soak checks isolation, not latency: with two connections for all its
        // workers, and other soaks of this file running at the same time on a
        // two-core machine, a request can wait past the default 5 s (503), which is
        // the pool doing its job. As the PgBouncer soak does, it waits longer.
        acquire_timeout: Duration::from_secs(30),
        ..PoolConfig::default()
    })
    .await;
    run_soak(manager, pool_size, mix, with_churn, plant).await;
}

/// The soak behind a real PgBouncer in transaction mode with `server_connections`
/// server connections, in the transaction binding.
async fn soak_behind_pgbouncer(budget: u32, server_connections: u32, mix: Mix) {
    let _alone = HEAVY.read().await;
    let (db, pool) = database().await;
    saas::prepare_database(&pool).await.unwrap();
    let bouncer = tenantry::testing::PgBouncer::start(
        &db.connect_options(),
        &["postgres"],
        server_connections,
    )
    .expect("a PgBouncer (install the `pgbouncer` package)");
    let manager = saas_builder(&db, pool)
        .tenant_connections(bouncer.options(&db.connect_options()))
        .pool_config(PoolConfig {
            binding: tenantry::Binding::Transaction,
            max_connections: Some(budget),
            ..saas::pool_config()
        })
        .build()
        .await
        .unwrap();
    run_soak(manager, budget, mix, true, Plant::None).await;
    drop(bouncer);
}

async fn run_soak(
    manager: TenantManager,
    pool_size: u32,
    mix: Mix,
    with_churn: bool,
    plant: Plant,
) {
    // A self-test needs far fewer requests to show that a check catches its fault.
    let operations = if plant == Plant::None {
        OPERATIONS
    } else {
        3_000
    };
    for i in 0..TENANTS {
        create_with(&manager, &tenant_name(i), mix.strategy(i)).await;
    }
    for id in CHURN {
        create_with(&manager, id, Strategy::Row).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churner = with_churn.then(|| tokio::spawn(churn(manager.clone(), stop.clone())));
    let app: Router = saas_app(&manager).merge(
        Router::new()
            .route("/test/insert-then-fail", post(insert_then_fail))
            .route("/test/mess", post(mess))
            .route(
                "/test/churn-write",
                match plant {
                    Plant::StaleIncarnation => post(churn_write_stale),
                    Plant::LostWrite => post(churn_write_lost),
                    _ => post(churn_write),
                },
            )
            .route("/test/leak-write", post(leak_write))
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
                if n >= operations {
                    break;
                }
                let mut tenant = tenant_name(rng.random_range(0..TENANTS));
                let marker = format!("{tenant}:{n}");
                let kind = rng.random_range(0..12);
                if kind == 11 {
                    tenant = CHURN[n % CHURN.len()].to_owned();
                }
                let (method, uri, body) = match kind {
                    10 => ("POST", "/test/mess", None),
                    0 if plant == Plant::ForeignWrite => {
                        ("POST", "/test/leak-write", Some(marker.clone()))
                    }
                    11 => ("POST", "/test/churn-write", Some(n.to_string())),
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
                if body.is_some() && kind != 6 && !uri.starts_with("/test/") {
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
                    (6, 400) | (10, 200) => {}
                    // A tenant being deleted and re-created: refused, never misplaced.
                    (11, 201) => {
                        l.churn_acknowledged
                            .insert(String::from_utf8_lossy(&bytes).into_owned());
                    }
                    (11, 403 | 404 | 503) => {}
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
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(churner) = churner {
        let lives = churner.await.unwrap();
        assert!(lives >= 10, "the churn re-created tenants {lives} times");
        let mut acknowledged = ledger.lock().unwrap().churn_acknowledged.clone();
        // The last incarnations get writes of their own too: the check below then
        // has acknowledged writes of the final incarnation to find.
        for id in CHURN {
            for n in 0..5 {
                let request = Request::builder()
                    .method("POST")
                    .uri("/test/churn-write")
                    .header("x-tenant-id", id)
                    .body(Body::from(format!("after-{n}")))
                    .unwrap();
                let response = app.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                acknowledged.insert(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        check_churned(&manager, &acknowledged).await;
    }
    // Let connections dropped by cancelled requests go back to their pools.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let l = std::mem::take(&mut *ledger.lock().unwrap());
    assert_eq!(l.completed + l.cancelled, operations);
    // A real soak must have cancelled enough requests to mean something; a self-test
    // (fewer requests, its outcome the planted fault's message) need not.
    assert!(
        plant != Plant::None || l.cancelled > operations / 20,
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
    let pool = manager.admin().registry_pool();
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
                let t = manager
                    .resolve_tenant(&tenant.parse().unwrap())
                    .await
                    .unwrap();
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(
                    &pool.connect_options().as_ref().clone().database(&t.storage),
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
        let stored: HashSet<&String> = rows.iter().collect();
        if let Some(lost) = l
            .acknowledged
            .get(&tenant)
            .and_then(|a| a.iter().find(|m| !stored.contains(m)))
        {
            eprintln!(
                "{tenant}: {lost} is missing; found at: {:?}",
                find_marker(pool, lost).await
            );
        }
        check_tenant(&tenant, rows, &l);
        acknowledged_total += l.acknowledged.get(&tenant).map_or(0, |a| a.len());
    }
    assert!(
        acknowledged_total > operations / 4,
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
        "soak {mix:?} pool={pool_size}: {operations} operations, {} completed, {} cancelled, {acknowledged_total} acknowledged writes",
        l.completed, l.cancelled
    );
    close(manager).await;
}

/// Where a row with this marker is stored, in any tenant schema or shared table (for
/// the failure message of a lost write).
async fn find_marker(pool: &sqlx::PgPool, marker: &str) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.columns \
         WHERE table_name IN ('projects', 'data') AND column_name IN ('name', 'value')",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let mut found = Vec::new();
    for table in tables {
        let column = if table.ends_with(".data") || table.ends_with(".\"data\"") {
            "value"
        } else {
            "name"
        };
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {column} = $1"
        )))
        .bind(marker)
        .fetch_one(pool)
        .await
        .unwrap_or(-1);
        if n != 0 {
            found.push(format!("{table}: {n}"));
        }
    }
    found
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

/// Every row of a churned tenant's current life was written by a request that this
/// life served: none of a deleted incarnation's writes reached its successor.
/// Each churned tenant holds only rows of its current incarnation, and every write
/// that incarnation acknowledged.
async fn check_churned(manager: &TenantManager, acknowledged: &HashSet<String>) {
    assert!(
        acknowledged.len() >= 10,
        "churn writes acknowledged: {}",
        acknowledged.len()
    );
    let pool = manager.admin().registry_pool();
    for id in CHURN {
        let t = manager.resolve_tenant(&id.parse().unwrap()).await.unwrap();
        let names: Vec<String> = match t.strategy {
            Strategy::Row => {
                sqlx::query_scalar("SELECT name FROM shared.projects WHERE tenant_id = $1")
                    .bind(id)
                    .fetch_all(pool)
                    .await
                    .unwrap()
            }
            _ => {
                let shared: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM shared.projects WHERE tenant_id = $1")
                        .bind(id)
                        .fetch_one(pool)
                        .await
                        .unwrap();
                assert_eq!(
                    shared, 0,
                    "{id}: rows of a deleted row-strategy life survived"
                );
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM {}.projects",
                    t.storage
                )))
                .fetch_all(pool)
                .await
                .unwrap()
            }
        };
        let own = format!("{id}:{}:", t.incarnation);
        for name in &names {
            assert!(
                name.starts_with(&own),
                "{id} (incarnation {}) holds {name}",
                t.incarnation
            );
        }
        for name in acknowledged.iter().filter(|n| n.starts_with(&own)) {
            assert!(
                names.contains(name),
                "{id}: the acknowledged write {name} is missing from its incarnation"
            );
        }
    }
}

/// Runs a soak with a planted fault and returns the message it failed with.
async fn failure_of(mix: Mix, with_churn: bool, plant: Plant) -> String {
    let outcome = tokio::spawn(planted_soak(2, mix, with_churn, plant)).await;
    let panic = outcome
        .expect_err("the soak passed with a planted fault")
        .into_panic();
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Self-test: a handler that writes into another tenant's schema fails the soak with
/// its foreign-read message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_catches_a_write_into_another_tenant() {
    let message = failure_of(Mix::Schema, false, Plant::ForeignWrite).await;
    assert!(message.contains("cross-tenant reads"), "{message}");
    // The planted handler writes every tenant's rows into soak-00's schema, and
    // soak-00's into soak-01's: whichever is read first reports it.
    assert!(
        message.contains("soak-00 read soak-") || message.contains("soak-01 read soak-00"),
        "{message}"
    );
}

/// Self-test: a churned tenant holding a row of an earlier incarnation fails the soak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_catches_a_row_of_an_earlier_incarnation() {
    let message = failure_of(Mix::Schema, true, Plant::StaleIncarnation).await;
    assert!(message.contains("(incarnation "), "{message}");
    assert!(message.contains(" holds churn-"), "{message}");
}

/// Self-test: an acknowledged churn write that is not stored fails the soak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_catches_a_lost_write_of_a_churned_tenant() {
    let message = failure_of(Mix::Schema, true, Plant::LostWrite).await;
    assert!(
        message.contains("is missing from its incarnation"),
        "{message}"
    );
}

async fn close(manager: TenantManager) {
    manager.admin().close_idle_connections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PgBouncer (Debian package `pgbouncer`): cargo test -- --ignored; .ci/run runs it"]
async fn soak_schema_and_row_tenants_behind_pgbouncer() {
    if !pgbouncer_or_skip("soak_schema_and_row_tenants_behind_pgbouncer") {
        return;
    }
    soak_behind_pgbouncer(8, 3, Mix::SchemaAndRow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_schema_tenants_two_connections() {
    soak(2, Mix::Schema, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_schema_tenants_eight_connections() {
    soak(8, Mix::Schema, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_row_tenants_two_connections() {
    soak(2, Mix::Row, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_row_tenants_eight_connections() {
    soak(8, Mix::Row, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_database_tenants_eight_connections() {
    soak(8, Mix::Database, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_schema_row_and_database_tenants_mixed() {
    soak(6, Mix::Mixed, true).await;
}

/// The soak on a Citus cluster (coordinator + 2 workers): schema tenants as distributed
/// schemas, row tenants on tables distributed by tenant_id and bound per transaction,
/// with churn. Says so loudly and passes where Citus is not installed, unless
/// `TENANTRY_REQUIRE_CITUS` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn soak_schema_and_row_tenants_on_citus() {
    if !tenantry::testing::citus_installed() {
        let message = "Citus is not installed: run ../shared/scripts/install-citus.sh";
        assert!(
            std::env::var_os("TENANTRY_REQUIRE_CITUS").is_none(),
            "{message}"
        );
        eprintln!("\n*** SKIPPED: {message} ***\n");
        return;
    }
    // Three more servers on a small machine: the other soaks wait, so that their
    // requests are not starved past their acquire timeout.
    let _alone = HEAVY.write().await;
    let cluster = tenantry::testing::TestCluster::start().await.unwrap();
    let pool = sqlx::PgPool::connect(cluster.url()).await.unwrap();
    saas::prepare_database(&pool).await.unwrap();
    let manager = TenantManager::builder(pool)
        .migrations(saas::tenant_migrations())
        .pool_config(PoolConfig {
            max_connections: Some(8),
            // Three servers on two cores, and schemas distributed by the churn: a
            // request may wait longer for a connection than on one server.
            acquire_timeout: Duration::from_secs(30),
            ..saas::pool_config()
        })
        .build()
        .await
        .unwrap();
    run_soak(manager, 8, Mix::SchemaAndRow, true, Plant::None).await;
}
