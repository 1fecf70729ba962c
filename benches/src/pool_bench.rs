//! The database strategy at scale: many tenant databases, a cap on open pools, and
//! Zipf-distributed tenant traffic (a few tenants are hot, most are cold). In-process
//! (no HTTP): each operation takes a tenant-bound connection and runs one query.
//! Compared, in the same run, with the same loop on one plain pool of as many
//! connections as the cap.
//!
//! ```text
//! cargo run --release -p tenantry-benches --bin pool_bench -- [--tenants 1000] [--cap 50] [--secs 10] [--concurrency 16]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use tenantry::{NewTenant, PoolConfig, Strategy, Tenant, TenantManager, TenantMigrations};
use tenantry_benches::arg;
use tenantry_benches::percentile;

/// Cumulative Zipf(s = 1) weights over `n` ranks.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / k as f64;
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn pick(cdf: &[f64], rng: &mut StdRng) -> usize {
    let u: f64 = rng.random();
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("pool_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let tenants = arg("--tenants", 1000)?.max(1);
    let cap = arg("--cap", 50)?.max(1);
    let secs = arg("--secs", 10)?.max(1) as u64;
    let concurrency = arg("--concurrency", 16)?.max(1);
    let db = tenantry::testing::TestDatabase::create().await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url())
        .await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("0001_items.sql"),
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
    )?;
    let manager = TenantManager::builder(pool.clone())
        .migrations(TenantMigrations::from_dir(dir.path()).await?)
        .database_prefix("pb_")
        .listen_for_changes(false)
        .pool_config(PoolConfig {
            max_connections: Some(cap as u32),
            max_connections_per_tenant: Some(1),
            ..PoolConfig::default()
        })
        .build()
        .await?;
    let started = Instant::now();
    let mut all: Vec<Arc<Tenant>> = Vec::with_capacity(tenants);
    for t in 0..tenants {
        let tenant = manager
            .create_tenant(
                NewTenant::new(format!("t{t:04}").parse()?, "T").with_strategy(Strategy::Database),
            )
            .await?;
        all.push(Arc::new(tenant));
    }
    let provisioning = started.elapsed();
    let cdf = Arc::new(zipf_cdf(tenants));

    // Baseline: one plain pool of `cap` connections, same query, no tenancy.
    let plain = PgPoolOptions::new()
        .max_connections(cap as u32)
        .connect(db.url())
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
                   INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
    )
    .execute(&plain)
    .await?;

    let mut lines = Vec::new();
    for tenanted in [false, true] {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let tasks = (0..concurrency).map(|w| {
            let (manager, plain, all, cdf) =
                (manager.clone(), plain.clone(), all.clone(), cdf.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(w as u64);
                let (mut acquires, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let id: i32 = rng.random_range(1..=100);
                    let t = Instant::now();
                    let ok = if tenanted {
                        let tenant = all[pick(&cdf, &mut rng)].clone();
                        match manager.tenant_db(tenant).await {
                            Ok(mut db) => {
                                acquires.push(t.elapsed());
                                sqlx::query_scalar::<_, String>(
                                    "SELECT name FROM items WHERE id = $1",
                                )
                                .bind(id)
                                .fetch_one(&mut db)
                                .await
                                .is_ok()
                            }
                            Err(_) => false,
                        }
                    } else {
                        match plain.acquire().await {
                            Ok(mut conn) => {
                                acquires.push(t.elapsed());
                                sqlx::query_scalar::<_, String>(
                                    "SELECT name FROM items WHERE id = $1",
                                )
                                .bind(id)
                                .fetch_one(&mut *conn)
                                .await
                                .is_ok()
                            }
                            Err(_) => false,
                        }
                    };
                    if !ok {
                        errors += 1;
                    }
                }
                (acquires, errors)
            })
        });
        let started = Instant::now();
        let mut acquires = Vec::new();
        let mut errors = 0;
        for task in tasks.collect::<Vec<_>>() {
            let (a, e) = task.await?;
            acquires.extend(a);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        acquires.sort();
        lines.push((
            if tenanted {
                "database tenants, Zipf(1)"
            } else {
                "one plain pool (baseline)"
            },
            acquires.len() as f64 / elapsed,
            percentile(&acquires, 0.5),
            percentile(&acquires, 0.99),
            errors,
        ));
    }
    let stats = manager.pool_stats();
    println!(
        "pool_bench: {tenants} database tenants (provisioned in {:.1} s, {:.1}/s), pool cap {cap} (1 connection each), {concurrency} workers x {secs} s",
        provisioning.as_secs_f64(),
        tenants as f64 / provisioning.as_secs_f64()
    );
    println!();
    println!("| workload | ops/s | acquire p50 | acquire p99 | errors |");
    println!("|---|---|---|---|---|");
    for (what, ops, p50, p99, errors) in &lines {
        println!(
            "| {what} | {ops:.0} | {:.0} us | {:.0} us | {errors} |",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    println!();
    println!(
        "ratio tenants / plain = {:.3}; connections: {} open (peak {}), {} opened, {} closed",
        lines[1].1 / lines[0].1,
        stats.open,
        stats.peak_open,
        stats.opened,
        stats.closed
    );
    Ok(())
}
