//! The write pause of an online move: a tenant of `--rows` projects (and a tenth as
//! many data rows) moved schema -> row -> database -> schema, `--rounds` times, while
//! a client keeps writing to it through the manager. Prints, per move, the pause the
//! move reports (fence to switch), the longest gap between two acknowledged writes
//! the client saw, and how many writes got the 503; and as a baseline measured in the
//! same run, a plain `COPY` of the same rows out of one table and into another (the
//! floor of any copy-based move).
//!
//! ```text
//! cargo run --release -p tenantry-benches --bin move_bench -- [--rows 100000] [--rounds 1]
//! ```
//!
//! Uses `DATABASE_URL`, or else a throwaway PostgreSQL.

use std::time::{Duration, Instant};

use tenantry::admin::MoveTo;
use tenantry::testing::TestDatabase;
use tenantry::{NewTenant, Strategy, TenantManager};
use tenantry_benches::{Writer, arg, median};

/// A plain copy of the tenant's projects into a scratch table: out, in, dropped.
async fn baseline(pool: &sqlx::PgPool) -> Duration {
    let mut conn = pool.acquire().await.expect("a connection");
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS public.bench_copy;
         CREATE TABLE public.bench_copy (LIKE tenant_big.projects INCLUDING ALL)",
    )
    .execute(&mut *conn)
    .await
    .expect("a scratch table");
    let started = Instant::now();
    let mut out = conn
        .copy_out_raw("COPY tenant_big.projects TO STDOUT")
        .await
        .expect("copy out");
    let mut text = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut out).await {
        text.extend_from_slice(&chunk.expect("a chunk"));
    }
    drop(out);
    let mut copy = conn
        .copy_in_raw("COPY public.bench_copy FROM STDIN")
        .await
        .expect("copy in");
    copy.send(text).await.expect("send");
    copy.finish().await.expect("finish");
    let took = started.elapsed();
    sqlx::raw_sql("DROP TABLE public.bench_copy")
        .execute(&mut *conn)
        .await
        .expect("drop the scratch table");
    took
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows = arg("--rows", 100_000)?;
    let rounds = arg("--rounds", 1)?.max(1);
    let db = TestDatabase::create().await?;
    let pool = sqlx::PgPool::connect(db.url()).await?;
    saas::prepare_database(&pool).await?;
    let manager = TenantManager::builder(pool.clone())
        .migrations(saas::tenant_migrations())
        .database_prefix(format!("mb{}_", std::process::id()))
        .pool_config(saas::pool_config())
        .build()
        .await?;
    manager
        .create_tenant(NewTenant::new("big".parse()?, "Big"))
        .await?;
    sqlx::query(
        "INSERT INTO tenant_big.projects (name)
         SELECT 'project ' || i FROM generate_series(1, $1) i",
    )
    .bind(rows as i64)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO tenant_big.data (value) SELECT md5(i::text) FROM generate_series(1, $1) i",
    )
    .bind((rows / 10) as i64)
    .execute(&pool)
    .await?;
    sqlx::raw_sql("ANALYZE").execute(&pool).await?;
    println!(
        "tenant `big`: {rows} projects, {} data rows; {rounds} round(s) of 3 moves",
        rows / 10
    );

    let writer = Writer::start(manager.clone(), "during the move");

    let mut copies = Vec::new();
    let mut pauses: Vec<(Strategy, f64, f64)> = Vec::new();
    println!(
        "{:<22} {:>10} {:>10} {:>14} {:>8} {:>12}",
        "move", "pause ms", "total ms", "client gap ms", "503s", "copy ms"
    );
    for _ in 0..rounds {
        for to in [Strategy::Row, Strategy::Database, Strategy::Schema] {
            // The baseline needs the tenant's schema: measured while it has one.
            let copy = if to == Strategy::Row {
                let c = baseline(&pool).await;
                copies.push(c.as_secs_f64() * 1e3);
                format!("{:.0}", c.as_secs_f64() * 1e3)
            } else {
                "-".to_owned()
            };
            writer.reset_gap();
            let before = writer.paused();
            let from = manager.admin().existing(&"big".parse()?).await?.strategy;
            let report = manager
                .admin()
                .move_tenant(
                    &"big".parse()?,
                    MoveTo::Strategy(to),
                    Duration::from_millis(500),
                )
                .await?;
            let gap = writer.longest_gap_ms();
            println!(
                "{:<22} {:>10} {:>10} {:>14.0} {:>8} {:>12}",
                format!("{from} -> {to}"),
                report.write_pause_ms,
                report.total_ms,
                gap,
                writer.paused() - before,
                copy
            );
            pauses.push((to, report.write_pause_ms as f64, gap));
        }
    }
    let (acked, refused) = writer.stop().await?;
    let copy = median(copies);
    println!("\nbaseline: a plain COPY out and in of the {rows} projects: {copy:.0} ms (median)");
    for to in [Strategy::Row, Strategy::Database, Strategy::Schema] {
        let p = median(pauses.iter().filter(|x| x.0 == to).map(|x| x.1).collect());
        let g = median(pauses.iter().filter(|x| x.0 == to).map(|x| x.2).collect());
        println!(
            "to {to:<9} write pause {p:>6.0} ms (median), {:.1}x the plain copy; longest gap the client saw {g:.0} ms",
            p / copy
        );
    }
    println!(
        "writes acknowledged during the run: {}, refused with 503: {}",
        acked, refused
    );
    Ok(())
}
