//! Tenant mobility: exports that import under any id and strategy (all or nothing),
//! and online moves between strategies behind a write fence, with the soak running.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use http_body_util::BodyExt;
use sqlx::Row;
use tenantry::admin::{ImportOptions, MoveTo};
use tenantry::{Error, PoolConfig, Strategy, TenantId, TenantManager};
use tower::ServiceExt;

fn id(s: &str) -> TenantId {
    s.parse().unwrap()
}

/// Inserts projects named `names` as tenant `tenant`, through its binding.
async fn add_projects(m: &TenantManager, tenant: &str, names: &[&str]) {
    let t = m.resolve_tenant(&id(tenant)).await.unwrap();
    let mut db = m.tenant_db(t).await.unwrap();
    for name in names {
        sqlx::query("INSERT INTO projects (name) VALUES ($1)")
            .bind(name)
            .execute(&mut db)
            .await
            .unwrap();
    }
}

/// `(id, name)` of the tenant's projects and `(id, value)` of its data, through its
/// binding.
async fn contents(m: &TenantManager, tenant: &str) -> (Vec<(i64, String)>, Vec<(i64, String)>) {
    let t = m.resolve_tenant(&id(tenant)).await.unwrap();
    let mut db = m.tenant_db(t).await.unwrap();
    let projects = sqlx::query_as("SELECT id, name FROM projects ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let data = sqlx::query_as("SELECT id, value FROM data ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    (projects, data)
}

/// The id the tenant's next project gets (consumes it).
async fn next_project_id(m: &TenantManager, tenant: &str) -> i64 {
    let t = m.resolve_tenant(&id(tenant)).await.unwrap();
    let mut db = m.tenant_db(t).await.unwrap();
    sqlx::query_scalar("INSERT INTO projects (name) VALUES ('next') RETURNING id")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

async fn schema_exists(pool: &sqlx::PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn database_exists(pool: &sqlx::PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Rows of `tenant` in the shared tables, read past row-level security.
async fn shared_rows(pool: &sqlx::PgPool, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM shared.projects WHERE tenant_id = $1)
              + (SELECT count(*) FROM shared.data WHERE tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_export_imports_under_a_new_id_with_its_rows_sequences_and_version() {
    let (db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin();
    let pool = admin.registry_pool().clone();
    create(&m, "acme").await;
    add_projects(
        &m,
        "acme",
        &["alpha", "beta", "tab\there", "back\\slash", "doomed"],
    )
    .await;
    // A deleted row: the sequence is past the highest id.
    sqlx::query("DELETE FROM tenant_acme.projects WHERE name = 'doomed'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO tenant_acme.data (value) VALUES ('ünïcode ✓'), (E'line\\nbreak')")
        .execute(&pool)
        .await
        .unwrap();
    let original = contents(&m, "acme").await;
    let export = admin.export(&id("acme")).await.unwrap();
    let text = String::from_utf8_lossy(&export);
    assert!(
        text.starts_with("-- tenantry export of tenant `acme`"),
        "{text}"
    );
    assert!(!text.contains("tenant_acme"), "the export names no schema");

    // Under a new id, schema strategy: the same rows, version and sequence position.
    let copy = admin
        .import(
            &export,
            ImportOptions {
                id: Some(id("acme-copy")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(copy.strategy, Strategy::Schema);
    assert_eq!(copy.name, "Tenant acme");
    let acme = admin.existing(&id("acme")).await.unwrap();
    assert_eq!(copy.schema_version, acme.schema_version);
    assert_eq!(contents(&m, "acme-copy").await, original);
    // As a database tenant too.
    let in_db = admin
        .import(
            &export,
            ImportOptions {
                id: Some(id("acme-db")),
                strategy: Some(Strategy::Database),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(in_db.strategy, Strategy::Database);
    assert_eq!(contents(&m, "acme-db").await, original);
    let next = next_project_id(&m, "acme").await;
    assert_eq!(next, 6, "ids 1-5 were handed out");
    assert_eq!(next_project_id(&m, "acme-copy").await, next);
    assert_eq!(next_project_id(&m, "acme-db").await, next);

    // A database tenant's export imports back as a schema tenant.
    let from_db = admin.export(&id("acme-db")).await.unwrap();
    admin
        .import(
            &from_db,
            ImportOptions {
                id: Some(id("acme-again")),
                strategy: Some(Strategy::Schema),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let again = contents(&m, "acme-again").await;
    assert_eq!(again.1, original.1);
    assert_eq!(again.0.len(), original.0.len() + 1, "with acme-db's `next`");

    // The same id again: 409, the existing tenant untouched.
    let twice = admin
        .import(
            &export,
            ImportOptions {
                id: Some(id("acme-copy")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(twice, Error::TenantExists(_)), "{twice}");
    assert_eq!(contents(&m, "acme-copy").await.1, original.1);
    drop(db);
}

#[tokio::test]
async fn a_row_tenants_export_becomes_a_schema_tenant_and_back() {
    let (_db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin();
    let pool = admin.registry_pool().clone();
    create_with(&m, "rowy", Strategy::Row).await;
    create_with(&m, "neighbour", Strategy::Row).await;
    add_projects(&m, "rowy", &["r1", "r2", "r3"]).await;
    add_projects(&m, "neighbour", &["n1"]).await;
    let original = contents(&m, "rowy").await;
    assert_eq!(original.0.len(), 3);

    let export = admin.export(&id("rowy")).await.unwrap();
    assert!(!String::from_utf8_lossy(&export).contains("\tneighbour"));
    let schema = admin
        .import(
            &export,
            ImportOptions {
                id: Some(id("rowy-schema")),
                strategy: Some(Strategy::Schema),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(schema.strategy, Strategy::Schema);
    assert_eq!(contents(&m, "rowy-schema").await, original);
    // Its own sequence continues past the shared one's position: no id is reused.
    assert!(next_project_id(&m, "rowy-schema").await > original.0.last().unwrap().0);

    let back = admin.export(&id("rowy-schema")).await.unwrap();
    let row = admin
        .import(
            &back,
            ImportOptions {
                id: Some(id("rowy-back")),
                strategy: Some(Strategy::Row),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(row.strategy, Strategy::Row);
    let (projects, data) = contents(&m, "rowy-back").await;
    assert_eq!(data, original.1);
    assert_eq!(
        projects.len(),
        original.0.len() + 1,
        "with rowy-schema's `next`"
    );
    assert_eq!(&projects[..3], &original.0[..]);
    // Each row tenant still sees only its own rows.
    assert_eq!(contents(&m, "rowy").await, original);
    assert_eq!(contents(&m, "neighbour").await.0.len(), 1);
    assert_eq!(shared_rows(&pool, "rowy-back").await, 4);
}

#[tokio::test]
async fn a_failed_import_leaves_no_tenant_schema_database_or_rows() {
    let (db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin();
    let pool = admin.registry_pool().clone();
    create(&m, "src").await;
    add_projects(&m, "src", &["fine", "spoiled"]).await;
    let export = admin.export(&id("src")).await.unwrap();
    // A name the CHECK constraint refuses (1 to 200 characters).
    let text = String::from_utf8(export.clone()).unwrap();
    let spoiled = text.replace("\tspoiled\t", "\t\t").into_bytes();
    let prefix = db.database_prefix();
    for strategy in [Strategy::Schema, Strategy::Row, Strategy::Database] {
        let e = admin
            .import(
                &spoiled,
                ImportOptions {
                    id: Some(id("bad")),
                    strategy: Some(strategy),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 422, "{strategy}: {e}");
        assert!(e.to_string().contains("projects"), "{e}");
        assert!(
            admin.find(&id("bad")).await.unwrap().is_none(),
            "{strategy}"
        );
        assert!(!schema_exists(&pool, "tenant_bad").await, "{strategy}");
        assert!(
            !database_exists(&pool, &format!("{prefix}bad")).await,
            "{strategy}"
        );
        assert_eq!(shared_rows(&pool, "bad").await, 0, "{strategy}");
    }
    // Not an export at all, a truncated one, one that smuggles a tenant_id column.
    let truncated = &export[..export.len() - 10];
    let smuggled = text
        .replacen(
            "\"columns\":[\"id\"",
            "\"columns\":[\"tenant_id\",\"id\"",
            1,
        )
        .into_bytes();
    for (input, needle) in [
        (&b"DROP TABLE x;"[..], "not a tenantry export"),
        (truncated, "has no end"),
        (&smuggled[..], "tenant_id"),
    ] {
        let e = admin
            .import(
                input,
                ImportOptions {
                    id: Some(id("bad")),
                    strategy: Some(Strategy::Row),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 422, "{e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
        assert!(admin.find(&id("bad")).await.unwrap().is_none());
        assert_eq!(shared_rows(&pool, "bad").await, 0);
    }
    // An export at another migration version: refused, with what to do.
    let other = text.replace("\"version\":1,\"checksum\"", "\"version\":9,\"checksum\"");
    let e = admin
        .import(
            other.as_bytes(),
            ImportOptions {
                id: Some(id("bad")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status().as_u16(), 422, "{e}");
    assert!(e.to_string().contains("migration source"), "{e}");
}

#[tokio::test]
async fn moves_between_strategies_keep_ids_rows_and_sequences_and_drop_the_old_place() {
    let (db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin();
    let pool = admin.registry_pool().clone();
    create(&m, "mover").await;
    create_with(&m, "bystander", Strategy::Row).await;
    add_projects(&m, "mover", &["m1", "m2", "m3"]).await;
    add_projects(&m, "bystander", &["b1"]).await;
    let mut expected = contents(&m, "mover").await;
    let prefix = db.database_prefix();
    let grace = Duration::from_millis(200);

    let report = admin
        .move_tenant(&id("mover"), MoveTo::Strategy(Strategy::Row), grace)
        .await
        .unwrap();
    assert_eq!(report.tenant.strategy, Strategy::Row);
    assert_eq!(report.from_strategy, Strategy::Schema);
    assert_eq!(report.rows, 3);
    assert!(report.old_place_dropped);
    assert!(!schema_exists(&pool, "tenant_mover").await);
    assert_eq!(contents(&m, "mover").await, expected);
    assert_eq!(
        report.tenant.schema_version, None,
        "row tenants have no migrations"
    );
    let n = next_project_id(&m, "mover").await;
    assert!(n > 3, "{n}");
    expected.0.push((n, "next".into()));

    let report = admin
        .move_tenant(&id("mover"), MoveTo::Strategy(Strategy::Database), grace)
        .await
        .unwrap();
    assert_eq!(report.tenant.strategy, Strategy::Database);
    assert_eq!(
        shared_rows(&pool, "mover").await,
        0,
        "its shared rows are gone"
    );
    assert!(database_exists(&pool, &format!("{prefix}mover")).await);
    assert_eq!(contents(&m, "mover").await, expected);
    assert_eq!(report.tenant.schema_version, Some(2));

    let report = admin
        .move_tenant(&id("mover"), MoveTo::Strategy(Strategy::Schema), grace)
        .await
        .unwrap();
    assert_eq!(report.tenant.strategy, Strategy::Schema);
    assert!(!database_exists(&pool, &format!("{prefix}mover")).await);
    assert_eq!(contents(&m, "mover").await, expected);
    assert!(next_project_id(&m, "mover").await > n);
    // The bystander saw none of it.
    assert_eq!(contents(&m, "bystander").await.0.len(), 1);
    // Moving where it is, or by server as a schema tenant: 422, nothing changes.
    for to in [
        MoveTo::Strategy(Strategy::Schema),
        MoveTo::Server("default".into()),
    ] {
        let e = admin
            .move_tenant(&id("mover"), to, grace)
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 422, "{e}");
    }
}

#[tokio::test]
async fn a_failed_move_leaves_the_tenant_where_it_was_serving() {
    let (_db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin();
    let pool = admin.registry_pool().clone();
    create_with(&m, "stay", Strategy::Row).await;
    add_projects(&m, "stay", &["s1"]).await;
    // Someone else's schema has the name the tenant's would get.
    sqlx::raw_sql("CREATE SCHEMA tenant_stay; CREATE TABLE tenant_stay.keep (x int)")
        .execute(&pool)
        .await
        .unwrap();
    let e = admin
        .move_tenant(
            &id("stay"),
            MoveTo::Strategy(Strategy::Schema),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status().as_u16(), 409, "{e}");
    let t = admin.existing(&id("stay")).await.unwrap();
    assert_eq!(t.strategy, Strategy::Row);
    // Still serving, writes included: the fence is lifted.
    add_projects(&m, "stay", &["s2"]).await;
    assert_eq!(contents(&m, "stay").await.0.len(), 2);
    // The other schema is untouched.
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_stay.keep")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    let triggers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tenantry_fence%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(triggers, 0, "no fence is left behind");
    let findings = admin.doctor(false).await.unwrap();
    assert!(
        !findings.iter().any(|f| f.kind == "move-leftover"),
        "{findings:?}"
    );

    // A fence whose move died: the tenant's writes get the 503 (nothing written, the
    // other tenants unaffected), and doctor names it.
    create_with(&m, "other", Strategy::Row).await;
    sqlx::raw_sql(
        "CREATE TRIGGER tenantry_fence_stay BEFORE INSERT OR UPDATE ON shared.projects
         FOR EACH ROW WHEN (NEW.tenant_id = 'stay') EXECUTE FUNCTION tenantry.write_fence('stay')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let t = m.resolve_tenant(&id("stay")).await.unwrap();
    let mut db = m.tenant_db(t).await.unwrap();
    let refused: Error = sqlx::query("INSERT INTO projects (name) VALUES ('s3')")
        .execute(&mut db)
        .await
        .unwrap_err()
        .into();
    assert_eq!(refused.status().as_u16(), 503, "{refused}");
    assert!(refused.to_problem().type_.ends_with("/writes-paused"));
    drop(db);
    add_projects(&m, "other", &["o1"]).await;
    assert_eq!(contents(&m, "stay").await.0.len(), 2);
    let findings = admin.doctor(false).await.unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.kind == "move-leftover" && f.subject.contains("tenantry_fence_stay")),
        "{findings:?}"
    );
}

/// What the clients saw during the soak.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeMap<String, BTreeSet<String>>,
    paused: usize,
    ok: usize,
    unexpected: Vec<String>,
    foreign: Vec<String>,
}

/// The soak while one tenant moves schema -> row -> database -> schema: every
/// acknowledged write is in its tenant's final place, no tenant reads another's
/// rows, and the only 5xx is the documented 503 with `Retry-After`.
#[tokio::test]
async fn the_soak_runs_while_a_tenant_moves_between_strategies() {
    let (_db, m) = manager(PoolConfig::default()).await;
    let tenants = [
        ("mover", Strategy::Schema),
        ("plain", Strategy::Schema),
        ("rowmate", Strategy::Row),
        ("rowpal", Strategy::Row),
    ];
    for (t, strategy) in tenants {
        create_with(&m, t, strategy).await;
    }
    let app = saas_app(&m);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let app = app.clone();
            let ledger = ledger.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let (tenant, _) = tenants[(w + n) % tenants.len()];
                    let write = !n.is_multiple_of(3);
                    let marker = format!("{tenant}:{w}:{n}");
                    let request = if write {
                        Request::post("/api/v1/projects")
                            .header("x-tenant-id", tenant)
                            .header("content-type", "application/json")
                            .body(Body::from(
                                serde_json::json!({ "name": marker }).to_string(),
                            ))
                    } else {
                        Request::get("/api/v1/projects")
                            .header("x-tenant-id", tenant)
                            .body(Body::empty())
                    }
                    .unwrap();
                    let response = app.clone().oneshot(request).await.unwrap();
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let bytes = response.into_body().collect().await.unwrap().to_bytes();
                    let mut l = ledger.lock().unwrap();
                    match (write, status) {
                        (true, 201) => {
                            l.ok += 1;
                            l.acknowledged
                                .entry(tenant.to_owned())
                                .or_default()
                                .insert(marker);
                        }
                        (false, 200) => {
                            l.ok += 1;
                            let items: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                            for item in items.as_array().unwrap() {
                                let name = item["name"].as_str().unwrap();
                                if !name.starts_with(&format!("{tenant}:")) {
                                    l.foreign.push(format!("{tenant} read {name}"));
                                }
                            }
                        }
                        (_, 503) if retry_after => l.paused += 1,
                        (_, s) => l.unexpected.push(format!(
                            "{tenant} write={write} -> {s}: {}",
                            String::from_utf8_lossy(&bytes)
                        )),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = m.admin();
    for to in [Strategy::Row, Strategy::Database, Strategy::Schema] {
        let report = admin
            .move_tenant(
                &id("mover"),
                MoveTo::Strategy(to),
                Duration::from_millis(300),
            )
            .await
            .unwrap_or_else(|e| panic!("move to {to}: {e}"));
        assert_eq!(report.tenant.strategy, to);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let l = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(l.unexpected.is_empty(), "{:#?}", l.unexpected);
    assert!(l.foreign.is_empty(), "{:#?}", l.foreign);
    assert!(l.ok > 100, "the soak made {} requests", l.ok);
    assert!(
        l.paused > 0,
        "no write met the fence: the moves were not under load"
    );
    for (tenant, _) in tenants {
        let t = m.resolve_tenant(&id(tenant)).await.unwrap();
        let mut db = m.tenant_db(t).await.unwrap();
        let names: BTreeSet<String> = sqlx::query("SELECT name FROM projects")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        let acked = l.acknowledged.get(tenant).cloned().unwrap_or_default();
        let lost: Vec<_> = acked.difference(&names).collect();
        assert!(
            lost.is_empty(),
            "{tenant} lost acknowledged writes: {lost:?}"
        );
        assert!(
            names.iter().all(|n| n.starts_with(&format!("{tenant}:"))),
            "{tenant} holds another tenant's rows"
        );
    }
    eprintln!(
        "soak during moves: {} requests ok, {} answered 503 while writes paused",
        l.ok, l.paused
    );
}

/// Inserts, updates and deletes made while a move copies are caught up: after moves
/// schema -> row -> database -> schema, the tenant holds exactly the rows the
/// acknowledged writes left (a refused write, the 503 of the fence, changed nothing).
#[tokio::test]
async fn writes_during_the_copy_are_caught_up_inserts_updates_and_deletes() {
    let (_db, m) = manager(PoolConfig::default()).await;
    create(&m, "busy").await;
    let pool = m.admin().registry_pool().clone();
    sqlx::query(
        "INSERT INTO tenant_busy.projects (name) SELECT 'seed ' || i FROM generate_series(1, 20000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let expected: Arc<Mutex<BTreeMap<i64, String>>> = Arc::new(Mutex::new(
        sqlx::query_as("SELECT id, name FROM tenant_busy.projects")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect(),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (m, expected, stop, refused) =
            (m.clone(), expected.clone(), stop.clone(), refused.clone());
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let target = 1 + (n * 7919) % 20000;
                let done: Result<Option<(i64, Option<String>)>, Error> = async {
                    let t = m.resolve_tenant(&id("busy")).await?;
                    let mut db = m.tenant_db(t).await?;
                    Ok(match n % 3 {
                        0 => {
                            let name = format!("new {n}");
                            let row: i64 = sqlx::query_scalar(
                                "INSERT INTO projects (name) VALUES ($1) RETURNING id",
                            )
                            .bind(&name)
                            .fetch_one(&mut db)
                            .await?;
                            Some((row, Some(name)))
                        }
                        1 => {
                            let name = format!("renamed {n}");
                            let row: Option<i64> = sqlx::query_scalar(
                                "UPDATE projects SET name = $2 WHERE id = $1 RETURNING id",
                            )
                            .bind(target)
                            .bind(&name)
                            .fetch_optional(&mut db)
                            .await?;
                            row.map(|r| (r, Some(name)))
                        }
                        _ => {
                            let row: Option<i64> = sqlx::query_scalar(
                                "DELETE FROM projects WHERE id = $1 RETURNING id",
                            )
                            .bind(target)
                            .fetch_optional(&mut db)
                            .await?;
                            row.map(|r| (r, None))
                        }
                    })
                }
                .await;
                match done {
                    Ok(Some((row, Some(name)))) => {
                        expected.lock().unwrap().insert(row, name);
                    }
                    Ok(Some((row, None))) => {
                        expected.lock().unwrap().remove(&row);
                    }
                    Ok(None) => {}
                    Err(e) if e.status().as_u16() == 503 => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(e) => panic!("write {n} failed: {e}"),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut caught_up = 0;
    for to in [Strategy::Row, Strategy::Database, Strategy::Schema] {
        let report = m
            .admin()
            .move_tenant(
                &id("busy"),
                MoveTo::Strategy(to),
                Duration::from_millis(200),
            )
            .await
            .unwrap_or_else(|e| panic!("move to {to}: {e}"));
        caught_up += report.rows_caught_up;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let t = m.resolve_tenant(&id("busy")).await.unwrap();
    let mut db = m.tenant_db(t).await.unwrap();
    let now: BTreeMap<i64, String> = sqlx::query_as("SELECT id, name FROM projects")
        .fetch_all(&mut db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let expected = expected.lock().unwrap().clone();
    assert_eq!(now.len(), expected.len());
    assert!(
        now == expected,
        "the tenant's rows differ from what was acknowledged"
    );
    assert!(
        caught_up > 0,
        "no write landed during a copy: the catch-up was not exercised"
    );
    eprintln!(
        "rows caught up over 3 moves: {caught_up}; writes refused by the fence: {}",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Another app instance that caches the tenant for an hour follows a move through the
/// change notifications: its next write lands in the new place.
#[tokio::test]
async fn another_instance_follows_a_move_through_the_notifications() {
    let (db, m) = manager(PoolConfig::default()).await;
    let other = TenantManager::builder(sqlx::PgPool::connect(db.url()).await.unwrap())
        .migrations(saas::tenant_migrations())
        .database_prefix(db.database_prefix())
        .pool_config(saas::pool_config())
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    create(&m, "wanderer").await;
    add_projects(&other, "wanderer", &["before"]).await;
    for to in [Strategy::Row, Strategy::Database, Strategy::Schema] {
        m.admin()
            .move_tenant(
                &id("wanderer"),
                MoveTo::Strategy(to),
                Duration::from_millis(500),
            )
            .await
            .unwrap();
        add_projects(&other, "wanderer", &[&format!("after {to}")]).await;
        let seen: Vec<String> = contents(&m, "wanderer")
            .await
            .0
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        assert_eq!(seen.last().unwrap(), &format!("after {to}"), "{seen:?}");
        assert_eq!(
            seen.len(),
            2 + [Strategy::Row, Strategy::Database, Strategy::Schema]
                .iter()
                .position(|s| *s == to)
                .unwrap()
        );
    }
}

/// A server kept in the registry (no password in its URL): a database tenant moves to
/// it and back with its rows; its address cannot change under the tenant.
#[tokio::test]
async fn a_database_tenant_moves_to_a_server_kept_in_the_registry() {
    let east = tenantry::testing::TestServer::start().expect("a second throwaway server");
    let (db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin();
    admin.add_server("east", east.url()).await.unwrap();
    let refused = admin
        .add_server("west", "postgres://app:secret@db.internal/postgres")
        .await
        .unwrap_err();
    assert_eq!(refused.status().as_u16(), 400, "{refused}");
    create_with(&m, "nomad", Strategy::Database).await;
    add_projects(&m, "nomad", &["n1", "n2"]).await;
    let before = contents(&m, "nomad").await;
    let report = admin
        .move_tenant(&id("nomad"), MoveTo::Server("east".into()), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.tenant.server, "east");
    assert_eq!(report.tenant.strategy, Strategy::Database);
    assert_eq!(contents(&m, "nomad").await, before);
    let east_pool = sqlx::PgPool::connect(east.url()).await.unwrap();
    let name = format!("{}nomad", db.database_prefix());
    assert!(database_exists(&east_pool, &name).await);
    assert!(!database_exists(admin.registry_pool(), &name).await);
    // Its address cannot change while the tenant lives there; removing it neither.
    let moved_address = admin
        .add_server("east", "postgres://postgres@10.9.9.9/postgres")
        .await
        .unwrap_err();
    assert_eq!(moved_address.status().as_u16(), 409, "{moved_address}");
    assert_eq!(
        admin
            .remove_server("east")
            .await
            .unwrap_err()
            .status()
            .as_u16(),
        409
    );
    add_projects(&m, "nomad", &["n3"]).await;
    admin
        .move_tenant(
            &id("nomad"),
            MoveTo::Server("default".into()),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(contents(&m, "nomad").await.0.len(), 3);
    assert!(!database_exists(&east_pool, &name).await);
    admin.remove_server("east").await.unwrap();
}

/// One move per tenant at a time; a fence and capture left by a move whose process
/// died are lifted by `recover_move`, after which the tenant writes again.
#[tokio::test]
async fn one_move_at_a_time_and_recovery_from_an_interrupted_one() {
    let (_db, m) = manager(PoolConfig::default()).await;
    create(&m, "solo").await;
    add_projects(&m, "solo", &["s1"]).await;
    let first = {
        let m = m.clone();
        tokio::spawn(async move {
            m.admin()
                .move_tenant(
                    &id("solo"),
                    MoveTo::Strategy(Strategy::Row),
                    Duration::from_secs(2),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = m
        .admin()
        .move_tenant(
            &id("solo"),
            MoveTo::Strategy(Strategy::Database),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(second.status().as_u16(), 409, "{second}");
    assert!(second.to_string().contains("being moved"), "{second}");
    assert_eq!(first.await.unwrap().unwrap().tenant.strategy, Strategy::Row);
    assert_eq!(contents(&m, "solo").await.0.len(), 1);
    assert!(
        !m.admin().recover_move(&id("solo")).await.unwrap(),
        "nothing left"
    );

    // A move that died after its fence: writes get 503 until recover_move.
    let pool = m.admin().registry_pool().clone();
    sqlx::raw_sql(
        "CREATE TRIGGER tenantry_fence_solo BEFORE INSERT OR UPDATE ON shared.projects
         FOR EACH ROW WHEN (NEW.tenant_id = 'solo') EXECUTE FUNCTION tenantry.write_fence('solo')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let t = m.resolve_tenant(&id("solo")).await.unwrap();
    let mut db = m.tenant_db(t).await.unwrap();
    let refused: Error = sqlx::query("INSERT INTO projects (name) VALUES ('s2')")
        .execute(&mut db)
        .await
        .unwrap_err()
        .into();
    assert_eq!(refused.status().as_u16(), 503);
    drop(db);
    assert!(m.admin().recover_move(&id("solo")).await.unwrap());
    add_projects(&m, "solo", &["s2"]).await;
    assert_eq!(contents(&m, "solo").await.0.len(), 2);
    let findings = m.admin().doctor(false).await.unwrap();
    assert!(
        !findings.iter().any(|f| f.kind == "move-leftover"),
        "{findings:?}"
    );
}

/// A file cannot push the sequences every row tenant shares: ids past them are a
/// 422 for a row import (nothing left); a checksum that lies is a 422 too.
#[tokio::test]
async fn an_import_cannot_move_the_shared_sequences_or_lie_about_its_rows() {
    let (_db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin();
    let pool = admin.registry_pool().clone();
    create(&m, "src").await;
    add_projects(&m, "src", &["one"]).await;
    let text = String::from_utf8(admin.export(&id("src")).await.unwrap()).unwrap();
    // bigserial: 1% of what is left is ~9.2e16.
    let huge = text.replace("\n1\tone\t", "\n9000000000000000000\tone\t");
    assert_ne!(huge, text);
    let e = admin
        .import(
            huge.as_bytes(),
            ImportOptions {
                id: Some(id("greedy")),
                strategy: Some(Strategy::Row),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status().as_u16(), 422, "{e}");
    assert!(e.to_string().contains("every row tenant shares"), "{e}");
    assert!(e.to_string().contains("at most 1%"), "{e}");
    assert!(admin.find(&id("greedy")).await.unwrap().is_none());
    assert_eq!(shared_rows(&pool, "greedy").await, 0);
    let position: i64 = sqlx::query_scalar("SELECT last_value FROM shared.projects_id_seq")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(position < 1000, "{position}");
    // The same file into a schema tenant: its rows no longer match the manifest.
    let e = admin
        .import(
            huge.as_bytes(),
            ImportOptions {
                id: Some(id("greedy")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status().as_u16(), 422, "{e}");
    assert!(e.to_string().contains("does not match its manifest"), "{e}");
    assert!(!schema_exists(&pool, "tenant_greedy").await);
}

/// Moving a schema tenant whose ids sit near the top of the 64-bit range into the row
/// strategy would push the sequence every row tenant shares there: the move is refused
/// (422) as an import would be, the tenant stays where it was and serves, and the row
/// tenants keep inserting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_cannot_use_up_the_shared_sequences() {
    let (_db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin();
    let pool = admin.registry_pool().clone();
    create_with(&m, "neighbour", Strategy::Row).await;
    add_projects(&m, "neighbour", &["n1"]).await;
    create_with(&m, "huge", Strategy::Schema).await;
    sqlx::raw_sql(
        "SELECT setval('tenant_huge.projects_id_seq', 9223372036854775000);
         INSERT INTO tenant_huge.projects (name) VALUES ('near the top');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let e = admin
        .move_tenant(&id("huge"), MoveTo::Strategy(Strategy::Row), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(e.status().as_u16(), 422, "{e}");
    assert!(e.to_string().contains("a move moves it"), "{e}");
    let t = admin.existing(&id("huge")).await.unwrap();
    assert_eq!(t.strategy, Strategy::Schema);
    add_projects(&m, "huge", &["still here"]).await;
    // The shared sequence did not move, and the row tenant goes on inserting.
    let next = next_project_id(&m, "neighbour").await;
    assert!(next < 1_000, "the shared sequence stayed low: {next}");
    assert_eq!(shared_rows(&pool, "huge").await, 0, "no rows left behind");
}

/// A row tenant's move stalls no other row tenant, whatever transactions are open:
/// its change capture and write fence are its row in the registry, read by one guard
/// trigger per shared table, not triggers created and dropped per move (their locks
/// queued behind a third tenant's open transaction, and every other tenant's
/// statements on the table queued behind them for as long as it stayed open).
#[tokio::test]
async fn a_row_tenants_move_stalls_no_other_tenant_behind_an_open_transaction() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_db, m) = manager(PoolConfig::default()).await;
    for t in ["mover", "other", "third"] {
        create_with(&m, t, Strategy::Row).await;
    }
    {
        let t = m.resolve_tenant(&id("mover")).await.unwrap();
        let mut db = m.tenant_db(t).await.unwrap();
        sqlx::query(
            "INSERT INTO projects (name) SELECT 'seed' || g FROM generate_series(1, 3000) g",
        )
        .execute(&mut db)
        .await
        .unwrap();
    }
    let hold = Duration::from_secs(3);
    let mut mover_names: BTreeSet<String> = (1..=3000).map(|g| format!("seed{g}")).collect();
    let mut other_names = BTreeSet::new();
    // Out of the row strategy (its capture and fence on the shared tables: the first
    // move puts the guards on them), back (a schema place's; the shared tables are the
    // target), and out again (the guards in place: only the move's waits hold the
    // open transactions' writes).
    let rounds = [Strategy::Schema, Strategy::Row, Strategy::Schema];
    for (round, to) in rounds.into_iter().enumerate() {
        // The third tenant reads and writes the shared table and keeps its transaction
        // open through the move's start.
        let (opened, third) = {
            let m = m.clone();
            let (tell, opened) = tokio::sync::oneshot::channel();
            let third = tokio::spawn(async move {
                let t = m.resolve_tenant(&id("third")).await.unwrap();
                let mut tx = m.tenant_tx(t).await.unwrap();
                sqlx::query("SELECT count(*) FROM projects")
                    .execute(&mut tx)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO projects (name) VALUES ('held')")
                    .execute(&mut tx)
                    .await
                    .unwrap();
                tell.send(()).unwrap();
                tokio::time::sleep(hold).await;
                tx.commit().await.unwrap();
            });
            (opened, third)
        };
        opened.await.unwrap();
        // The mover has a write in flight as its move starts, committed later: it is
        // neither in the copy's snapshot nor seen by a capture that went on after it.
        let in_flight = format!("mover:{round}:in-flight");
        let (began, late) = {
            let (m, name) = (m.clone(), in_flight.clone());
            let (tell, began) = tokio::sync::oneshot::channel();
            let late = tokio::spawn(async move {
                let t = m.resolve_tenant(&id("mover")).await.unwrap();
                let mut tx = m.tenant_tx(t).await.unwrap();
                sqlx::query("INSERT INTO projects (name) VALUES ($1)")
                    .bind(&name)
                    .execute(&mut tx)
                    .await
                    .unwrap();
                tell.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                tx.commit().await.unwrap();
            });
            (began, late)
        };
        began.await.unwrap();
        mover_names.insert(in_flight);
        let stop = Arc::new(AtomicBool::new(false));
        // Another row tenant reads and writes throughout, each statement timed.
        let other = {
            let (m, stop) = (m.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut slowest, mut written) = (Duration::ZERO, Vec::new());
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let t = m.resolve_tenant(&id("other")).await.unwrap();
                    let mut db = m.tenant_db(t).await.unwrap();
                    let name = format!("other:{round}:{n}");
                    let started = std::time::Instant::now();
                    sqlx::query("SELECT count(*) FROM projects")
                        .execute(&mut db)
                        .await
                        .unwrap();
                    slowest = slowest.max(started.elapsed());
                    let started = std::time::Instant::now();
                    sqlx::query("INSERT INTO projects (name) VALUES ($1)")
                        .bind(&name)
                        .execute(&mut db)
                        .await
                        .unwrap();
                    slowest = slowest.max(started.elapsed());
                    written.push(name);
                    drop(db);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (slowest, written)
            })
        };
        // The mover writes throughout too: what it is told was written stays.
        let mover = {
            let (m, stop) = (m.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acked, mut refused) = (Vec::new(), 0);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let name = format!("mover:{round}:{n}");
                    let t = m.resolve_tenant(&id("mover")).await.unwrap();
                    let mut db = m.tenant_db(t).await.unwrap();
                    match sqlx::query("INSERT INTO projects (name) VALUES ($1)")
                        .bind(&name)
                        .execute(&mut db)
                        .await
                    {
                        Ok(_) => acked.push(name),
                        Err(e) => {
                            let e = Error::from(e);
                            assert_eq!(e.status().as_u16(), 503, "{e}");
                            refused += 1;
                        }
                    }
                    drop(db);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                (acked, refused)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = m
            .admin()
            .move_tenant(
                &id("mover"),
                MoveTo::Strategy(to),
                Duration::from_millis(200),
            )
            .await
            .unwrap_or_else(|e| panic!("move to {to}: {e}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Relaxed);
        let (slowest, written) = other.await.unwrap();
        let (acked, refused) = mover.await.unwrap();
        third.await.unwrap();
        late.await.unwrap();
        assert_eq!(report.tenant.strategy, to);
        assert!(
            slowest < Duration::from_secs(1),
            "round {round}: another row tenant's statement waited {slowest:?} during the \
             move (a transaction was held open for {hold:?})"
        );
        assert!(!written.is_empty() && !acked.is_empty());
        mover_names.extend(acked);
        other_names.extend(written);
        // Every acknowledged write is where its tenant now reads, and nothing else.
        let t = m.resolve_tenant(&id("mover")).await.unwrap();
        let mut db = m.tenant_db(t).await.unwrap();
        let names: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM projects")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .collect();
        drop(db);
        let lost: Vec<_> = mover_names.difference(&names).take(5).collect();
        let foreign: Vec<_> = names
            .iter()
            .filter(|n| !n.starts_with("mover:") && !n.starts_with("seed"))
            .take(5)
            .collect();
        assert!(
            lost.is_empty() && foreign.is_empty(),
            "round {round} ({refused} writes refused while fenced): lost {lost:?}, \
             another tenant's rows {foreign:?}"
        );
        let t = m.resolve_tenant(&id("other")).await.unwrap();
        let mut db = m.tenant_db(t).await.unwrap();
        let theirs: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM projects")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            theirs, other_names,
            "round {round}: the other tenant's rows"
        );
    }
    // Nothing of the moves is left.
    let findings = m.admin().doctor(false).await.unwrap();
    assert!(
        !findings.iter().any(|f| f.kind == "move-leftover"),
        "{findings:?}"
    );
    // A row tenant's move whose process died with the fence up: its writes get 503,
    // `doctor` names it, and recovery ends it.
    let pool = m.admin().registry_pool().clone();
    sqlx::query("INSERT INTO tenantry.row_moves (tenant_id, fenced) VALUES ('other', true)")
        .execute(&pool)
        .await
        .unwrap();
    let t = m.resolve_tenant(&id("other")).await.unwrap();
    let mut db = m.tenant_db(t).await.unwrap();
    let refused: Error = sqlx::query("INSERT INTO projects (name) VALUES ('refused')")
        .execute(&mut db)
        .await
        .unwrap_err()
        .into();
    assert_eq!(refused.status().as_u16(), 503, "{refused}");
    drop(db);
    let findings = m.admin().doctor(false).await.unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.kind == "move-leftover" && f.subject == "row tenant other"),
        "{findings:?}"
    );
    assert!(m.admin().recover_move(&id("other")).await.unwrap());
    add_projects(&m, "other", &["after recovery"]).await;
    assert!(
        !m.admin().recover_move(&id("other")).await.unwrap(),
        "nothing left"
    );
    // A dead move's change records are copies of the tenant's rows: its deletion takes
    // them too, and nothing of it is there for the next tenant of its id.
    sqlx::raw_sql(
        "INSERT INTO tenantry.row_moves (tenant_id) VALUES ('third');
         INSERT INTO tenantry.row_move_changes (tenant_id, tbl, key)
         VALUES ('third', 'projects', '{\"name\": \"held\"}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    m.suspend_tenant(&id("third")).await.unwrap();
    m.delete_tenant(&id("third")).await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM tenantry.row_moves WHERE tenant_id = 'third')
              + (SELECT count(*) FROM tenantry.row_move_changes WHERE tenant_id = 'third')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "a deleted tenant's move records");
}

/// A registry login that is no superuser sees other logins' sessions (their database)
/// but not their kind: a row tenant's move still waits for their transactions, so a
/// write of the tenant in flight under another login as the move starts is kept.
#[tokio::test]
async fn a_non_superuser_registry_login_waits_for_other_logins_writes() {
    let (db, m) = manager(PoolConfig::default()).await;
    let admin = m.admin().registry_pool().clone();
    let owner = format!("registry_{}", db.tag());
    for statement in [
        format!("CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"),
        format!("GRANT {} TO {owner}", saas::ROW_ROLE),
        format!("GRANT CREATE ON DATABASE {} TO {owner}", db.name()),
        format!("ALTER SCHEMA shared OWNER TO {owner}"),
        format!("ALTER TABLE shared.projects OWNER TO {owner}"),
        format!("ALTER TABLE shared.data OWNER TO {owner}"),
        format!("ALTER SCHEMA tenantry OWNER TO {owner}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    // What the registry made in its schema (and the template schema) is its login's.
    let owned: Vec<String> = sqlx::query_scalar(
        "SELECT format('ALTER %s %s OWNER TO %I',
                  CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
                  c.oid::regclass, $1::text)
         FROM pg_class c
         WHERE c.relnamespace IN (SELECT oid FROM pg_namespace
                                  WHERE nspname = 'tenantry' OR nspname LIKE 'tenantry\\_%')
           AND c.relkind IN ('r', 'v', 'p', 'S')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
                           AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
         UNION ALL
         SELECT format('ALTER FUNCTION %s OWNER TO %I', p.oid::regprocedure, $1::text)
         FROM pg_proc p WHERE p.pronamespace = 'tenantry'::regnamespace
         UNION ALL
         SELECT format('ALTER SCHEMA %I OWNER TO %I', nspname, $1::text)
         FROM pg_namespace WHERE nspname LIKE 'tenantry\\_%'",
    )
    .bind(&owner)
    .fetch_all(&admin)
    .await
    .unwrap();
    for statement in owned {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let pool = sqlx::PgPool::connect_with(options.username(&owner))
        .await
        .unwrap();
    let m = saas_builder(&db, pool).build().await.unwrap();
    create_with(&m, "mover", Strategy::Row).await;
    add_projects(&m, "mover", &["m1", "m2"]).await;
    // Out and back: the guards go on the shared tables.
    for to in [Strategy::Schema, Strategy::Row] {
        m.admin()
            .move_tenant(&id("mover"), MoveTo::Strategy(to), Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("move to {to}: {e}"));
    }
    // Another login (here a superuser, whose sessions the registry's login may not
    // inspect) has a write of the tenant in flight as the move starts.
    let (began, late) = {
        let admin = admin.clone();
        let (tell, began) = tokio::sync::oneshot::channel();
        let late = tokio::spawn(async move {
            let mut tx = admin.begin().await.unwrap();
            sqlx::query("INSERT INTO shared.projects (tenant_id, name) VALUES ('mover', 'late')")
                .execute(&mut *tx)
                .await
                .unwrap();
            tell.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx.commit().await.unwrap();
        });
        (began, late)
    };
    began.await.unwrap();
    m.admin()
        .move_tenant(
            &id("mover"),
            MoveTo::Strategy(Strategy::Schema),
            Duration::ZERO,
        )
        .await
        .unwrap();
    late.await.unwrap();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM tenant_mover.projects ORDER BY name")
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(names, ["late", "m1", "m2"], "the write in flight was kept");
    // The guard runs as its owner: no other role may attach it to a table of its own.
    let attach = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE {role}; CREATE TEMP TABLE mine (tenant_id text);
         CREATE TRIGGER steal AFTER INSERT ON mine REFERENCING NEW TABLE AS new_rows
           FOR EACH STATEMENT EXECUTE FUNCTION tenantry.row_move_guard('x')",
        role = saas::ROW_ROLE
    )))
    .execute(&mut admin.acquire().await.unwrap().detach())
    .await
    .unwrap_err();
    assert!(attach.to_string().contains("permission denied"), "{attach}");
}

/// Two row tenants move at once: neither waits for the other's new place (the move's
/// own transaction, which holds only its tenant's rows), so both finish, neither
/// stalled for the other's copy.
#[tokio::test]
async fn two_row_tenants_move_at_once() {
    let (_db, m) = manager(PoolConfig::default()).await;
    for t in ["left", "right"] {
        create_with(&m, t, Strategy::Row).await;
        let tenant = m.resolve_tenant(&id(t)).await.unwrap();
        let mut db = m.tenant_db(tenant).await.unwrap();
        sqlx::query("INSERT INTO projects (name) SELECT 'p' || g FROM generate_series(1, 5000) g")
            .execute(&mut db)
            .await
            .unwrap();
    }
    // The guards go on with a first move.
    for to in [Strategy::Schema, Strategy::Row] {
        m.admin()
            .move_tenant(&id("left"), MoveTo::Strategy(to), Duration::ZERO)
            .await
            .unwrap();
    }
    for round in 0..3 {
        let started = std::time::Instant::now();
        let admin = m.admin();
        let (a, b) = (id("left"), id("right"));
        let (left, right) = tokio::join!(
            admin.move_tenant(&a, MoveTo::Strategy(Strategy::Schema), Duration::ZERO),
            admin.move_tenant(&b, MoveTo::Strategy(Strategy::Schema), Duration::ZERO),
        );
        let took = started.elapsed();
        left.unwrap_or_else(|e| panic!("round {round}: left: {e}"));
        right.unwrap_or_else(|e| panic!("round {round}: right: {e}"));
        assert!(took < Duration::from_secs(8), "round {round}: {took:?}");
        for t in ["left", "right"] {
            assert_eq!(contents(&m, t).await.0.len(), 5000, "round {round}: {t}");
            m.admin()
                .move_tenant(&id(t), MoveTo::Strategy(Strategy::Row), Duration::ZERO)
                .await
                .unwrap();
        }
    }
}

/// A partitioned shared table: a statement names the table it writes, and a statement
/// trigger fires on that table only, so the guards go on every partition too (with
/// the shared table's name for the catch-up): a write straight into a partition is
/// fenced and recorded like one through the shared table, and no TRUNCATE runs while
/// a tenant moves.
#[tokio::test]
async fn partitions_of_shared_tables_are_guarded_too() {
    let (db, pool) = database().await;
    let role = format!("rows_{}", db.tag());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN NOBYPASSRLS;
         CREATE SCHEMA shared;
         CREATE TABLE shared.events (
             tenant_id text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
             id bigint NOT NULL,
             body text NOT NULL,
             PRIMARY KEY (tenant_id, id)
         ) PARTITION BY RANGE (id);
         CREATE TABLE shared.events_low PARTITION OF shared.events
             FOR VALUES FROM (MINVALUE) TO (1000);
         CREATE TABLE shared.events_high PARTITION OF shared.events
             FOR VALUES FROM (1000) TO (MAXVALUE);
         GRANT USAGE ON SCHEMA shared TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON shared.events TO {role};"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    tenantry::strategy::install_rls(&mut conn, "shared.events", "tenant_id")
        .await
        .unwrap();
    drop(conn);
    let migrations = tenantry::TenantMigrations::from_sources([(
        1,
        "events".to_owned(),
        "CREATE TABLE events (id bigint PRIMARY KEY, body text NOT NULL) PARTITION BY RANGE (id);
         CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (MINVALUE) TO (1000);
         CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (1000) TO (MAXVALUE);"
            .to_owned(),
    )])
    .unwrap();
    let m = TenantManager::builder(pool.clone())
        .migrations(migrations)
        .pool_config(PoolConfig {
            row_schema: Some("shared".into()),
            row_user: Some(role.clone()),
            ..PoolConfig::default()
        })
        .build()
        .await
        .unwrap();
    create_with(&m, "acme", Strategy::Row).await;
    {
        let t = m.resolve_tenant(&id("acme")).await.unwrap();
        let mut db = m.tenant_db(t).await.unwrap();
        sqlx::query("INSERT INTO events (id, body) VALUES (1, 'low'), (2000, 'high')")
            .execute(&mut db)
            .await
            .unwrap();
    }
    for to in [Strategy::Schema, Strategy::Row] {
        m.admin()
            .move_tenant(&id("acme"), MoveTo::Strategy(to), Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("move to {to}: {e}"));
    }
    let guards: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, count(t.oid) FROM pg_class c
         LEFT JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname LIKE 'tenantry\\_guard\\_%'
         WHERE c.relnamespace = 'shared'::regnamespace AND c.relkind IN ('r', 'p')
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        guards,
        [
            ("events".to_owned(), 4),
            ("events_high".to_owned(), 4),
            ("events_low".to_owned(), 4)
        ]
    );
    // A move's capture: a write straight into a partition is recorded under the
    // shared table's name.
    sqlx::raw_sql(
        "INSERT INTO tenantry.row_moves (tenant_id) VALUES ('acme');
         INSERT INTO shared.events_high (tenant_id, id, body) VALUES ('acme', 3000, 'direct');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let recorded: Vec<(String, String)> = sqlx::query_as(
        "SELECT tbl, key ->> 'body' FROM tenantry.row_move_changes WHERE tenant_id = 'acme'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, [("events".to_owned(), "direct".to_owned())]);
    // Its fence: refused straight into a partition too, and no TRUNCATE meanwhile.
    sqlx::query("UPDATE tenantry.row_moves SET fenced = true WHERE tenant_id = 'acme'")
        .execute(&pool)
        .await
        .unwrap();
    for statement in [
        "INSERT INTO shared.events_low (tenant_id, id, body) VALUES ('acme', 5, 'x')",
        "UPDATE shared.events_high SET body = 'y' WHERE tenant_id = 'acme'",
        "DELETE FROM shared.events_low WHERE tenant_id = 'acme'",
        "TRUNCATE shared.events_low",
        "TRUNCATE shared.events",
    ] {
        let e = sqlx::query(statement).execute(&pool).await.unwrap_err();
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .unwrap_or_default();
        assert_eq!(code, "25006", "{statement}: {e}");
    }
    assert!(m.admin().recover_move(&id("acme")).await.unwrap());
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM shared.events WHERE tenant_id = 'acme'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 3, "the refused writes wrote nothing");
}

/// A move's lock is gone when the move returns: the same process's next move (or
/// recovery) of the tenant, right after, is never told that one is still running.
/// (A closed session's advisory locks go only when its backend has exited, after
/// the client's close returned; the lock is unlocked first.)
#[tokio::test]
async fn back_to_back_moves_of_a_tenant_are_not_refused_as_concurrent() {
    let (_db, m) = manager(PoolConfig::default()).await;
    create_with(&m, "hasty", Strategy::Row).await;
    for round in 0..200 {
        let recovered = m.admin().recover_move(&id("hasty")).await;
        assert!(
            matches!(recovered, Ok(false)),
            "round {round}: {recovered:?}"
        );
    }
    for to in [Strategy::Schema, Strategy::Row, Strategy::Schema] {
        m.admin()
            .move_tenant(&id("hasty"), MoveTo::Strategy(to), Duration::ZERO)
            .await
            .unwrap();
    }
}
