//! Migrations across tenants: concurrent, isolated failures, resumable, canary waves,
//! status and drift.

mod common;

use std::path::Path;
use std::sync::Mutex;

use common::*;
use tenantry::migrate::{Canary, MigrateOptions, MigrationEvent, MigrationOutcome};
use tenantry::{TenantManager, TenantMigrations};

async fn manager_with(pool: &sqlx::PgPool, dir: &Path) -> TenantManager {
    TenantManager::builder(pool.clone())
        .migrations(TenantMigrations::from_dir(dir).await.unwrap())
        .build()
        .await
        .unwrap()
}

fn write(dir: &Path, name: &str, sql: &str) {
    std::fs::write(dir.join(name), sql).unwrap();
}

async fn versions(pool: &sqlx::PgPool, tenant: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT version FROM tenantry.tenant_migrations WHERE tenant_id = $1 ORDER BY 1",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i:02}")).collect()
}

#[tokio::test]
async fn migrate_all_applies_resumes_and_isolates_failures() {
    let (_db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_things.sql",
        "CREATE TABLE things (id bigserial PRIMARY KEY, n int NOT NULL);",
    );
    let v1 = manager_with(&pool, dir.path()).await;
    for id in ids(12) {
        create(&v1, &id).await;
    }
    // One tenant holds data the next migration rejects.
    sqlx::query("INSERT INTO tenant_t07.things (n) VALUES (-1)")
        .execute(&pool)
        .await
        .unwrap();

    write(
        dir.path(),
        "0002_label.sql",
        "ALTER TABLE things ADD COLUMN label text;",
    );
    write(
        dir.path(),
        "0003_positive.sql",
        "ALTER TABLE things ADD CONSTRAINT positive CHECK (n > 0);",
    );
    let v3 = manager_with(&pool, dir.path()).await;
    let events = Mutex::new(Vec::new());
    let report = v3
        .migrate_all(
            &MigrateOptions {
                concurrency: 3,
                ..MigrateOptions::default()
            },
            |e| events.lock().unwrap().push(e.clone()),
        )
        .await
        .unwrap();
    assert_eq!(report.results.len(), 12);
    assert_eq!(report.applied(), 11);
    assert_eq!(report.failed(), 1);
    assert!(!report.is_success());
    let failed = report
        .results
        .iter()
        .find(|r| matches!(r.outcome, MigrationOutcome::Failed { .. }))
        .unwrap();
    assert_eq!(failed.tenant.as_str(), "t07");
    // Per-version transactions: t07 keeps version 2; the others have 3.
    assert_eq!(versions(&pool, "t07").await, [1, 2]);
    assert_eq!(versions(&pool, "t03").await, [1, 2, 3]);
    let events = events.into_inner().unwrap();
    assert!(matches!(
        events[0],
        MigrationEvent::Planned {
            total: 12,
            pending: 12
        }
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, MigrationEvent::TenantFinished { .. }))
            .count(),
        12
    );

    // Fix the data and rerun: it converges, touching only t07.
    sqlx::query("UPDATE tenant_t07.things SET n = 1")
        .execute(&pool)
        .await
        .unwrap();
    let report = v3
        .migrate_all(&MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.is_success());
    assert_eq!(report.applied(), 1);
    assert_eq!(report.current(), 11);
    assert_eq!(
        report
            .results
            .iter()
            .find(|r| r.tenant.as_str() == "t07")
            .unwrap()
            .outcome,
        MigrationOutcome::Applied { versions: vec![3] }
    );
    // Nothing to apply: every tenant current, no tenant touched.
    let again = v3
        .migrate_all(&MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(again.current(), 12);
    let status = v3.migration_status().await.unwrap();
    assert_eq!(status.len(), 12, "{status:?}");
    assert!(
        status
            .iter()
            .all(|s| s.version == Some(3) && s.pending.is_empty() && s.drift.is_empty())
    );
}

#[tokio::test]
async fn canary_failure_halts_before_the_rest_and_max_failures_stops() {
    let (_db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_things.sql",
        "CREATE TABLE things (id int);",
    );
    let v1 = manager_with(&pool, dir.path()).await;
    for id in ids(10) {
        create(&v1, &id).await;
    }
    write(
        dir.path(),
        "0002_broken.sql",
        "ALTER TABLE no_such_table ADD COLUMN x int;",
    );
    let broken = manager_with(&pool, dir.path()).await;
    let halted = Mutex::new(None);
    let report = broken
        .migrate_all(
            &MigrateOptions {
                concurrency: 2,
                canary: Some(Canary::Count(2)),
                max_failures: None,
            },
            |e| {
                if let MigrationEvent::Halted { reason } = e {
                    *halted.lock().unwrap() = Some(reason.clone());
                }
            },
        )
        .await
        .unwrap();
    assert_eq!(report.failed(), 2, "{report:?}");
    assert_eq!(report.skipped(), 8);
    assert!(report.halted.is_some());
    assert!(halted.into_inner().unwrap().unwrap().contains("canary"));
    // The canary tenants are the first by id; the rest were not touched.
    assert!(matches!(
        report.results[0].outcome,
        MigrationOutcome::Failed { .. }
    ));
    assert_eq!(report.results[9].outcome, MigrationOutcome::Skipped);

    // Percentages round up.
    let report = broken
        .migrate_all(
            &MigrateOptions {
                concurrency: 1,
                canary: Some(Canary::Percent(15.0)),
                max_failures: None,
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.failed(), 2);

    // Without a canary: stop once more than one tenant failed.
    let report = broken
        .migrate_all(
            &MigrateOptions {
                concurrency: 1,
                canary: None,
                max_failures: Some(1),
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.failed(), 2, "{report:?}");
    assert_eq!(report.skipped(), 8);
    for id in ids(10) {
        assert_eq!(
            versions(&pool, &id).await,
            [1],
            "{id} untouched by the broken version"
        );
    }
}

#[tokio::test]
async fn status_reports_versions_and_drift() {
    let (_db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "0001_a.sql", "CREATE TABLE a (id int);");
    let m = manager_with(&pool, dir.path()).await;
    for id in ["acme", "globex", "initech"] {
        create(&m, id).await;
    }
    write(dir.path(), "0002_b.sql", "CREATE TABLE b (id int);");
    let m2 = manager_with(&pool, dir.path()).await;
    m2.migrate_tenant(&"acme".parse().unwrap()).await.unwrap();
    // Someone edited globex's record by hand: its checksum no longer matches.
    sqlx::query(
        "UPDATE tenantry.tenant_migrations SET checksum = '\\x00' WHERE tenant_id = 'globex'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let status = m2.migration_status().await.unwrap();
    let by = |id: &str| {
        status
            .iter()
            .find(|s| s.tenant.as_str() == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by("acme").version, Some(2));
    assert!(by("acme").pending.is_empty() && by("acme").drift.is_empty());
    assert_eq!(by("initech").version, Some(1));
    assert_eq!(by("initech").pending, [2]);
    assert_eq!(by("globex").drift.len(), 1, "{:?}", by("globex"));
    let report = m2
        .migrate_all(&MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    let globex = report
        .results
        .iter()
        .find(|r| r.tenant.as_str() == "globex")
        .unwrap();
    assert!(
        matches!(&globex.outcome, MigrationOutcome::Failed { error } if error.contains("checksum"))
    );
    assert_eq!(versions(&pool, "initech").await, [1, 2]);
}
