//! What carries over from a Citus cluster on one machine: the per-request overhead of
//! routing through the coordinator against a single server (the quick start's
//! `GET /api/v1/projects`, in process, schema and row tenants, same run), the rate of
//! provisioning distributed schema tenants against plain ones, and the write pause of
//! moving a schema tenant of `--rows` rows to the other worker while a client writes
//! (by logical replication, then back with writes waiting). `--moves-only` skips the
//! rest.
//!
//! ```text
//! cargo run --release -p tenantry-benches --bin citus_bench -- [--tenants 20] [--requests 2000] [--rows 100000] [--moves-only]
//! ```
//!
//! Starts its own cluster (coordinator + 2 workers) and its own single server from the
//! installed binaries; needs Citus (`../shared/scripts/install-citus.sh`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tenantry::admin::{MoveTo, NodeTransfer};
use tenantry::testing::{TestCluster, TestServer};
use tenantry::{NewTenant, Strategy, TenantManager};
use tenantry_benches::{Writer, arg, get_projects, median, percentile};

async fn manager(url: &str) -> Result<TenantManager, Box<dyn std::error::Error>> {
    let pool = sqlx::PgPool::connect(url).await?;
    saas::prepare_database(&pool).await?;
    Ok(TenantManager::builder(pool)
        .migrations(saas::tenant_migrations())
        .pool_config(saas::pool_config())
        .build()
        .await?)
}

/// Creates `n` tenants of `strategy` (ids `{prefix}{i}`); returns tenants per second.
async fn provision(
    m: &TenantManager,
    prefix: &str,
    n: usize,
    strategy: Strategy,
) -> Result<f64, Box<dyn std::error::Error>> {
    let started = Instant::now();
    for i in 0..n {
        m.create_tenant(
            NewTenant::new(format!("{prefix}{i}").parse()?, "T").with_strategy(strategy),
        )
        .await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Median and p99 of `requests` sequential GETs spread over `tenants`.
async fn latencies(
    app: &Router,
    prefix: &str,
    tenants: usize,
    requests: usize,
) -> (Duration, Duration) {
    let mut all = Vec::with_capacity(requests);
    for i in 0..requests {
        let tenant = format!("{prefix}{}", i % tenants);
        let started = Instant::now();
        assert_eq!(get_projects(app, &tenant).await, 200, "{tenant}");
        all.push(started.elapsed());
    }
    all.sort();
    (percentile(&all, 0.5), percentile(&all, 0.99))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tenants = arg("--tenants", 20)?;
    let requests = arg("--requests", 2000)?;
    let rows = arg("--rows", 100_000)?;
    let moves_only = std::env::args().any(|a| a == "--moves-only");
    let cluster = TestCluster::start().await?;
    let single = tokio::task::spawn_blocking(TestServer::start).await??;
    let on_citus = manager(cluster.url()).await?;
    let plain = manager(single.url()).await?;

    if !moves_only {
        println!("provisioning {tenants} tenants of each kind, one at a time:");
        for (name, m) in [("single server", &plain), ("citus", &on_citus)] {
            let schema = provision(m, "s", tenants, Strategy::Schema).await?;
            let row = provision(m, "r", tenants, Strategy::Row).await?;
            println!("  {name:<14} schema {schema:>6.1}/s   row {row:>6.1}/s");
        }

        println!(
            "\nGET /api/v1/projects, {requests} requests over {tenants} tenants, 3 rounds (median of rounds):"
        );
        let apps = [
            (
                "single server",
                saas::router(saas::AppState::new(plain.clone(), "t")),
            ),
            (
                "citus",
                saas::router(saas::AppState::new(on_citus.clone(), "t")),
            ),
        ];
        let mut results = Vec::new();
        for prefix in ["s", "r"] {
            for (name, app) in &apps {
                let mut p50s = Vec::new();
                let mut p99s = Vec::new();
                for _ in 0..3 {
                    let (p50, p99) = latencies(app, prefix, tenants, requests).await;
                    p50s.push(p50.as_secs_f64() * 1e3);
                    p99s.push(p99.as_secs_f64() * 1e3);
                }
                let (p50, p99) = (median(p50s), median(p99s));
                println!(
                    "  {} tenants on {name:<14} p50 {p50:>6.3} ms   p99 {p99:>6.3} ms",
                    if prefix == "s" { "schema" } else { "row   " }
                );
                results.push((prefix, *name, p50));
            }
        }
        for prefix in ["s", "r"] {
            let base = results
                .iter()
                .find(|r| r.0 == prefix && r.1 == "single server")
                .unwrap()
                .2;
            let citus = results
                .iter()
                .find(|r| r.0 == prefix && r.1 == "citus")
                .unwrap()
                .2;
            println!(
                "  {} tenants: routing through the coordinator costs {:.2}x the single server's p50",
                if prefix == "s" { "schema" } else { "row" },
                citus / base
            );
        }
    }

    // A schema tenant of `rows` rows moved to the other worker while a client writes.
    on_citus
        .create_tenant(NewTenant::new("big".parse()?, "Big"))
        .await?;
    let pool = on_citus.admin().registry_pool().clone();
    sqlx::query(
        "INSERT INTO tenant_big.projects (name) SELECT 'p' || i FROM generate_series(1, $1) i",
    )
    .bind(rows as i64)
    .execute(&pool)
    .await?;
    // There and back: by logical replication (the default for a schema tenant whose
    // tables have primary keys), then with writes waiting (block_writes).
    for transfer in [NodeTransfer::Logical, NodeTransfer::BlockWrites] {
        let before: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_big.projects")
            .fetch_one(&pool)
            .await?;
        let writer = Writer::start(on_citus.clone(), "w");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let big = on_citus.admin().existing(&"big".parse()?).await?;
        let from = on_citus.admin().node_of(&big).await?.unwrap_or_default();
        let to = on_citus
            .admin()
            .citus()
            .map(|c| c.workers.clone())
            .unwrap_or_default()
            .into_iter()
            .find(|w| *w != from)
            .ok_or("no other worker")?;
        writer.reset_gap();
        let started = Instant::now();
        let report = on_citus
            .admin()
            .move_tenant(
                &"big".parse()?,
                MoveTo::NodeWith(to.clone(), transfer),
                Duration::ZERO,
            )
            .await?;
        let took = started.elapsed();
        let longest = writer.longest_gap_ms();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (acked, paused) = writer.stop().await?;
        if paused > 0 {
            return Err("a write was refused during a move between workers".into());
        }
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_big.projects")
            .fetch_one(&pool)
            .await?;
        println!(
            "\nmove of a schema tenant of {before} rows from {from} to {to} ({}): {:.0} ms; the \
             writing client's longest wait {longest:.0} ms; {} writes acknowledged, {} rows \
             stored ({} expected)",
            report.transfer.map(|t| t.to_string()).unwrap_or_default(),
            took.as_secs_f64() * 1e3,
            acked,
            stored,
            before as u64 + acked
        );
    }
    // The same tenant moved between strategies on the cluster (schema -> row ->
    // schema): its writes get 503 while the fence is up, which is the whole copy there.
    for to in [Strategy::Row, Strategy::Schema] {
        let before = on_citus.admin().existing(&"big".parse()?).await?;
        let rows_before: i64 = {
            let mut db = on_citus.tenant_db(Arc::new(before.clone())).await?;
            sqlx::query_scalar("SELECT count(*) FROM projects")
                .fetch_one(&mut db)
                .await?
        };
        let writer = Writer::start(on_citus.clone(), "w");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = on_citus
            .admin()
            .move_tenant(&"big".parse()?, MoveTo::Strategy(to), Duration::ZERO)
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (acked, paused) = writer.stop().await?;
        let after = on_citus.admin().existing(&"big".parse()?).await?;
        let mut db = on_citus.tenant_db(Arc::new(after)).await?;
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
            .fetch_one(&mut db)
            .await?;
        println!(
            "\nmove of the same tenant ({} rows) to the {to} strategy on the cluster: {} ms in \
             all, writes paused {} ms (503 {} times); {} writes acknowledged, rows stored {stored} \
             ({} expected)",
            report.rows,
            report.total_ms,
            report.write_pause_ms,
            paused,
            acked,
            rows_before + acked as i64,
        );
    }
    Ok(())
}
