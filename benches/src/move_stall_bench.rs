//! What a row tenant's move costs the other row tenants: `--moves` moves (default 10)
//! of a row tenant of `--rows` projects (default 100,000), out of the row strategy
//! and back in turn, each with a third tenant's transaction open on the shared table
//! for `--hold` seconds (default 5) as it starts, while `--clients` clients (default
//! 4) of another row tenant read and write non-stop. Prints the other tenant's read
//! and write latencies (median, p99, max) during each move, and as the baseline,
//! measured in the same run, during as long a spell without a move, before the first
//! move (no guard triggers on the shared tables yet) and after the last (guards on:
//! what they cost every write).
//!
//! ```text
//! cargo run --release -p tenantry-benches --bin move_stall_bench -- \
//!     [--rows 100000] [--moves 10] [--hold 5] [--clients 4]
//! ```
//!
//! Uses `DATABASE_URL`, or else a throwaway PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tenantry::admin::MoveTo;
use tenantry::testing::TestDatabase;
use tenantry::{NewTenant, Strategy, TenantManager};
use tenantry_benches::{arg, percentile};

/// The other tenant's statement latencies while `stop` is unset: (reads, writes).
async fn clients(
    manager: &TenantManager,
    n: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<Duration>, Vec<Duration>) {
    let tasks: Vec<_> = (0..n)
        .map(|c| {
            let (manager, stop) = (manager.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut reads, mut writes) = (Vec::new(), Vec::new());
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let tenant = manager
                        .resolve_tenant(&"other".parse().expect("an id"))
                        .await
                        .expect("the other tenant");
                    let mut db = manager.tenant_db(tenant).await.expect("a connection");
                    let started = Instant::now();
                    sqlx::query("SELECT id, name FROM projects ORDER BY id DESC LIMIT 10")
                        .fetch_all(&mut db)
                        .await
                        .expect("a read");
                    reads.push(started.elapsed());
                    let started = Instant::now();
                    sqlx::query("INSERT INTO projects (name) VALUES ($1)")
                        .bind(format!("client {c} write {i}"))
                        .execute(&mut db)
                        .await
                        .expect("a write");
                    writes.push(started.elapsed());
                    drop(db);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (reads, writes)
            })
        })
        .collect();
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    for task in tasks {
        let (r, w) = task.await.expect("a client");
        reads.extend(r);
        writes.extend(w);
    }
    reads.sort();
    writes.sort();
    (reads, writes)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(label: &str, took: Duration, reads: &[Duration], writes: &[Duration]) {
    println!(
        "{label:<26} {:>8.0} {:>6} {:>7.2} {:>7.1} {:>7.1} {:>6} {:>7.2} {:>7.1} {:>7.1}",
        ms(took),
        reads.len(),
        ms(percentile(reads, 0.5)),
        ms(percentile(reads, 0.99)),
        ms(reads.last().copied().unwrap_or_default()),
        writes.len(),
        ms(percentile(writes, 0.5)),
        ms(percentile(writes, 0.99)),
        ms(writes.last().copied().unwrap_or_default()),
    );
}

/// The other tenant's latencies for `spell`, nothing else going on.
async fn quiet(
    manager: &TenantManager,
    n: usize,
    spell: Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = {
        let (manager, stop) = (manager.clone(), stop.clone());
        tokio::spawn(async move { clients(&manager, n, stop).await })
    };
    tokio::time::sleep(spell).await;
    stop.store(true, Ordering::Relaxed);
    measuring.await.expect("the clients")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows = arg("--rows", 100_000)?;
    let moves = arg("--moves", 10)?.max(1);
    let hold = Duration::from_secs(arg("--hold", 5)? as u64);
    let n = arg("--clients", 4)?.max(1);
    let db = TestDatabase::create().await?;
    let pool = sqlx::PgPool::connect(db.url()).await?;
    saas::prepare_database(&pool).await?;
    let manager = TenantManager::builder(pool.clone())
        .migrations(saas::tenant_migrations())
        .database_prefix(format!("ms{}_", std::process::id()))
        .pool_config(saas::pool_config())
        .build()
        .await?;
    for id in ["big", "other", "third"] {
        let mut new = NewTenant::new(id.parse()?, id);
        new.strategy = Strategy::Row;
        manager.create_tenant(new).await?;
    }
    {
        let big = manager.resolve_tenant(&"big".parse()?).await?;
        let mut db = manager.tenant_db(big).await?;
        sqlx::query(
            "INSERT INTO projects (name) SELECT 'project ' || i FROM generate_series(1, $1) i",
        )
        .bind(rows as i64)
        .execute(&mut db)
        .await?;
    }
    sqlx::raw_sql("ANALYZE shared.projects")
        .execute(&pool)
        .await?;
    println!(
        "{rows} rows moved {moves} times; a third tenant's transaction open {} s as each \
         starts; {n} clients of another row tenant; latencies in ms",
        hold.as_secs()
    );
    println!(
        "{:<26} {:>8} {:>6} {:>7} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7}",
        "spell", "ms", "reads", "p50", "p99", "max", "writes", "p50", "p99", "max"
    );
    let spell = hold + Duration::from_secs(2);
    let (r, w) = quiet(&manager, n, spell).await;
    row("no move, no guards yet", spell, &r, &w);
    let (mut all_reads, mut all_writes) = (Vec::new(), Vec::new());
    for i in 0..moves {
        let to = if i % 2 == 0 {
            Strategy::Schema
        } else {
            Strategy::Row
        };
        // The third tenant's transaction: it read and wrote the shared table.
        let (opened, held) = {
            let manager = manager.clone();
            let (tell, opened) = tokio::sync::oneshot::channel();
            let held = tokio::spawn(async move {
                let third = manager
                    .resolve_tenant(&"third".parse().expect("an id"))
                    .await
                    .expect("the third tenant");
                let mut tx = manager.tenant_tx(third).await.expect("a transaction");
                sqlx::query("SELECT count(*) FROM projects")
                    .execute(&mut tx)
                    .await
                    .expect("a read");
                sqlx::query("INSERT INTO projects (name) VALUES ('held')")
                    .execute(&mut tx)
                    .await
                    .expect("a write");
                let _ = tell.send(());
                tokio::time::sleep(hold).await;
                tx.commit().await.expect("commit");
            });
            (opened, held)
        };
        opened.await?;
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = {
            let (manager, stop) = (manager.clone(), stop.clone());
            tokio::spawn(async move { clients(&manager, n, stop).await })
        };
        let started = Instant::now();
        let report = manager
            .admin()
            .move_tenant(
                &"big".parse()?,
                MoveTo::Strategy(to),
                Duration::from_millis(500),
            )
            .await?;
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (r, w) = measuring.await?;
        held.await?;
        row(
            &format!("move {} -> {}", report.from_strategy, to),
            took,
            &r,
            &w,
        );
        all_reads.extend(r);
        all_writes.extend(w);
    }
    all_reads.sort();
    all_writes.sort();
    row("all moves", Duration::ZERO, &all_reads, &all_writes);
    let (r, w) = quiet(&manager, n, spell).await;
    row("no move, guards on", spell, &r, &w);
    Ok(())
}
