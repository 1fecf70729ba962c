//! Provisioning and migrating many schema tenants, in one run:
//!
//! - provisioning with a 10-table migration set: raw DDL in one transaction (the
//!   baseline), tenantry replaying the migrations, tenantry cloning the template;
//!   rotated in chunks so the growing catalog affects all three alike;
//! - `migrate_all` of one new migration over all cloned tenants at concurrency 1, 2, 4;
//! - `migrate_all` with nothing to apply.
//!
//! ```text
//! cargo run --release -p tenantry-benches --bin provision_bench -- [--tenants 1000] [--chunk 50]
//! ```

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tenantry::migrate::MigrateOptions;
use tenantry::{NewTenant, TenantManager, TenantMigrations};
use tenantry_benches::arg;

/// One migration file per table, ten in all.
fn ten_tables() -> Vec<(String, String)> {
    (1..=10)
        .map(|i| {
            (
                format!("{i:04}_table_{i}.sql"),
                format!(
                    "CREATE TABLE table_{i} (
                         id bigserial PRIMARY KEY,
                         name text NOT NULL,
                         amount integer NOT NULL DEFAULT 0,
                         created_at timestamptz NOT NULL DEFAULT now()
                     );
                     CREATE INDEX table_{i}_name ON table_{i} (name);"
                ),
            )
        })
        .collect()
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("provision_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let tenants = arg("--tenants", 1000)?.max(1);
    let chunk = arg("--chunk", 50)?.max(1);
    let db = tenantry::testing::TestDatabase::create().await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(db.url())
        .await?;
    let dir = tempfile::tempdir()?;
    let migrations = ten_tables();
    for (name, sql) in &migrations {
        std::fs::write(dir.path().join(name), sql)?;
    }
    let raw_ddl: String = migrations
        .iter()
        .map(|(_, sql)| sql.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let replay = TenantManager::builder(pool.clone())
        .migrations(TenantMigrations::from_dir(dir.path()).await?)
        .provision_from_template(false)
        .listen_for_changes(false)
        .build()
        .await?;
    let clone = TenantManager::builder(pool.clone())
        .migrations(TenantMigrations::from_dir(dir.path()).await?)
        .listen_for_changes(false)
        .build()
        .await?;

    let mut time = [Duration::ZERO; 3];
    let mut made = [0usize; 3];
    let mut next = 0;
    while made.iter().any(|&m| m < tenants) {
        for (way, spent) in time.iter_mut().enumerate() {
            let n = chunk.min(tenants - made[way]);
            let started = Instant::now();
            for _ in 0..n {
                next += 1;
                match way {
                    0 => {
                        let mut tx = pool.begin().await?;
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "CREATE SCHEMA raw_{next}; SET LOCAL search_path TO raw_{next}; {raw_ddl}"
                        )))
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                    }
                    1 => {
                        replay
                            .create_tenant(NewTenant::new(format!("replay-{next}").parse()?, "R"))
                            .await?;
                    }
                    _ => {
                        clone
                            .create_tenant(NewTenant::new(format!("clone-{next}").parse()?, "C"))
                            .await?;
                    }
                }
            }
            *spent += started.elapsed();
            made[way] += n;
        }
    }
    println!(
        "provision_bench: {tenants} tenants per way, 10 tables + 10 indexes each, rotated in chunks of {chunk}"
    );
    println!();
    println!("| provisioning | tenants/s | ms per tenant |");
    println!("|---|---|---|");
    for (way, name) in [
        "raw DDL, one transaction (baseline)",
        "tenantry, replaying migrations",
        "tenantry, cloning the template",
    ]
    .iter()
    .enumerate()
    {
        let secs = time[way].as_secs_f64();
        println!(
            "| {name} | {:.1} | {:.1} |",
            tenants as f64 / secs,
            secs * 1000.0 / tenants as f64
        );
    }

    // Drop the replayed and raw tenants, so the migration runs see only the clones.
    for t in replay.list_tenants().await? {
        if t.id.as_str().starts_with("replay-") {
            replay.suspend_tenant(&t.id).await?;
            replay.delete_tenant(&t.id).await?;
        }
    }
    for i in 0..=next {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS raw_{i} CASCADE"
        )))
        .execute(&pool)
        .await?;
    }
    let count = clone.list_tenants().await?.len();

    println!();
    println!("| migrate_all over {count} tenants | wall time | tenants/s |");
    println!("|---|---|---|");
    for (i, concurrency) in [1usize, 2, 4].iter().enumerate() {
        let version = 11 + i;
        std::fs::write(
            dir.path().join(format!("{version:04}_more_{version}.sql")),
            format!(
                "ALTER TABLE table_{} ADD COLUMN extra_{version} text;",
                i + 1
            ),
        )?;
        let manager = TenantManager::builder(pool.clone())
            .migrations(TenantMigrations::from_dir(dir.path()).await?)
            .listen_for_changes(false)
            .build()
            .await?;
        let started = Instant::now();
        let report = manager
            .migrate_all(
                &MigrateOptions {
                    concurrency: *concurrency,
                    ..MigrateOptions::default()
                },
                |_| {},
            )
            .await?;
        let secs = started.elapsed().as_secs_f64();
        if !report.is_success() || report.applied() != count {
            return Err(format!(
                "migration run failed: {} failed, {} applied",
                report.failed(),
                report.applied()
            )
            .into());
        }
        println!(
            "| one new migration, concurrency {concurrency} | {secs:.2} s | {:.0} |",
            count as f64 / secs
        );
    }
    let manager = TenantManager::builder(pool.clone())
        .migrations(TenantMigrations::from_dir(dir.path()).await?)
        .listen_for_changes(false)
        .build()
        .await?;
    let started = Instant::now();
    let report = manager
        .migrate_all(&MigrateOptions::default(), |_| {})
        .await?;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.current(), count);
    println!(
        "| nothing to apply | {secs:.3} s | {:.0} |",
        count as f64 / secs
    );
    Ok(())
}
