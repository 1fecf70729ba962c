//! A noisy neighbour: the p99 latency of a quiet tenant (one client, one request at a
//! time) while another tenant floods the same app, without and with per-tenant limits
//! on the noisy one. The quick start's router, in process (no HTTP), on a budget of
//! 8 tenant connections so that the flood can take them all.
//!
//! ```text
//! cargo run --release -p tenantry-benches --bin limits_bench -- [--rounds 3] [--secs 3] [--flood 64]
//! ```
//!
//! Uses `DATABASE_URL`, or else a throwaway PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use tenantry::testing::TestDatabase;
use tenantry::{NewTenant, PoolConfig, TenantLimits, TenantManager};
use tenantry_benches::{arg, get_projects, median, percentile};

struct Round {
    quiet_p50: Duration,
    quiet_p99: Duration,
    noisy_ok: u64,
    noisy_429: u64,
}

/// `secs` of the quiet tenant's requests, with `flood` clients on the noisy one.
async fn round(app: &Router, flood: usize, secs: u64) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flooders = Vec::new();
    for _ in 0..flood {
        let (app, stop, ok, limited) = (app.clone(), stop.clone(), ok.clone(), limited.clone());
        flooders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get_projects(&app, "noisy").await {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        limited.fetch_add(1, Ordering::Relaxed);
                        // A well-behaved client backs off; a hostile one would not,
                        // and costs the app only the 429.
                        tokio::task::yield_now().await;
                        0
                    }
                    _ => 0,
                };
            }
        }));
    }
    let mut latencies = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let started = Instant::now();
        let status = get_projects(app, "quiet").await;
        assert_eq!(status, 200, "the quiet tenant is always served");
        latencies.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    latencies.sort();
    Round {
        quiet_p50: percentile(&latencies, 0.5),
        quiet_p99: percentile(&latencies, 0.99),
        noisy_ok: ok.load(Ordering::Relaxed),
        noisy_429: limited.load(Ordering::Relaxed),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds = arg("--rounds", 3)?;
    let secs = arg("--secs", 3)? as u64;
    let flood = arg("--flood", 64)?;
    let db = TestDatabase::create().await?;
    let pool = sqlx::PgPool::connect(db.url()).await?;
    let manager = TenantManager::builder(pool)
        .migrations(saas::tenant_migrations())
        .pool_config(PoolConfig {
            max_connections: Some(8),
            ..saas::pool_config()
        })
        .build()
        .await?;
    for id in ["noisy", "quiet"] {
        manager
            .create_tenant(NewTenant::new(id.parse()?, id))
            .await?;
        let tenant = manager.resolve_tenant(&id.parse()?).await?;
        let mut db = manager.tenant_db(tenant).await?;
        for n in 0..10 {
            sqlx::query("INSERT INTO projects (name) VALUES ($1)")
                .bind(format!("p{n}"))
                .execute(&mut db)
                .await?;
        }
    }
    let app = saas::router(saas::AppState::new(manager.clone(), "bench-admin-token"));
    let noisy = "noisy".parse()?;
    let limits = TenantLimits {
        concurrency: Some(4),
        rate: Some(500.0),
        burst: Some(500),
        ..TenantLimits::default()
    };
    println!(
        "limits_bench: {rounds} rounds x {secs} s, {flood} clients flooding `noisy`, 1 client on `quiet`, budget 8 connections; noisy's limits when on: {limits:?}"
    );
    let mut results: Vec<(&str, Vec<Round>)> = vec![
        ("quiet alone", vec![]),
        ("flood, no limits", vec![]),
        ("flood, noisy limited", vec![]),
    ];
    for _ in 0..rounds {
        for (case, runs) in results.iter_mut() {
            let (set, clients) = match *case {
                "quiet alone" => (TenantLimits::default(), 0),
                "flood, no limits" => (TenantLimits::default(), flood),
                _ => (limits, flood),
            };
            manager.set_tenant_limits(&noisy, set).await?;
            runs.push(round(&app, clients, secs).await);
        }
    }
    println!();
    println!(
        "| case | quiet p50 (ms) | quiet p99 (ms) | quiet p99 vs alone | noisy served/s | noisy 429/s |"
    );
    println!("|---|---|---|---|---|---|");
    let alone_p99: Vec<f64> = results[0]
        .1
        .iter()
        .map(|r| r.quiet_p99.as_secs_f64())
        .collect();
    for (case, runs) in &results {
        let p50 = median(
            runs.iter()
                .map(|r| r.quiet_p50.as_secs_f64() * 1e3)
                .collect(),
        );
        let p99 = median(
            runs.iter()
                .map(|r| r.quiet_p99.as_secs_f64() * 1e3)
                .collect(),
        );
        let ratio = median(
            runs.iter()
                .zip(&alone_p99)
                .map(|(r, a)| r.quiet_p99.as_secs_f64() / a)
                .collect(),
        );
        let served = median(
            runs.iter()
                .map(|r| r.noisy_ok as f64 / secs as f64)
                .collect(),
        );
        let limited = median(
            runs.iter()
                .map(|r| r.noisy_429 as f64 / secs as f64)
                .collect(),
        );
        println!("| {case} | {p50:.2} | {p99:.2} | {ratio:.1}x | {served:.0} | {limited:.0} |");
    }
    Ok(())
}
