//! tenantry on a Citus cluster: a coordinator (the registry) and two workers, started
//! from the installed binaries. They are ignored by `cargo test` (the summary counts
//! them as ignored, with the reason) and run by `cargo test -- --ignored`. Run so where
//! Citus is not installed, they say so loudly and return, unless
//! `TENANTRY_REQUIRE_CITUS` is set (`.ci/run` sets it after installing Citus), in which
//! case they fail.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use sqlx::PgPool;
use tenantry::admin::{MoveTo, NodeTransfer};
use tenantry::testing::{TestCluster, citus_installed};
use tenantry::{NewTenant, Strategy, TenantEntity, TenantId, TenantManager};
use tower::ServiceExt;

async fn cluster() -> Option<TestCluster> {
    if !citus_or_skip() {
        return None;
    }
    Some(TestCluster::start().await.expect("a Citus cluster"))
}

/// Whether Citus is installed; says so loudly when not (and fails where
/// `TENANTRY_REQUIRE_CITUS` is set).
fn citus_or_skip() -> bool {
    if !citus_installed() {
        let message = "Citus is not installed: these tests need it; run \
             ../shared/scripts/install-citus.sh (builds Citus 13.2.2 into PostgreSQL 15, \
             about 4 minutes)";
        if std::env::var_os("TENANTRY_REQUIRE_CITUS").is_some() {
            panic!("{message}");
        }
        eprintln!("\n*** SKIPPED: {message} ***\n");
        return false;
    }
    true
}

/// The quick start's manager on the cluster's coordinator: nothing set for Citus.
async fn manager(cluster: &TestCluster) -> (PgPool, TenantManager) {
    let pool = PgPool::connect(cluster.url()).await.unwrap();
    saas::prepare_database(&pool).await.unwrap();
    let manager = TenantManager::builder(pool.clone())
        .migrations(saas::tenant_migrations())
        .pool_config(saas::pool_config())
        .build()
        .await
        .unwrap();
    (pool, manager)
}

fn id(s: &str) -> TenantId {
    s.parse().unwrap()
}

async fn call(
    app: &axum::Router,
    method: &str,
    tenant: &str,
    body: Option<String>,
) -> (u16, serde_json::Value) {
    let mut request = Request::builder()
        .method(method)
        .uri("/api/v1/projects")
        .header("x-tenant-id", tenant);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let response = app
        .clone()
        .oneshot(
            request
                .body(body.map(Body::from).unwrap_or_else(Body::empty))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Where rows are on the cluster, read on each worker directly (what a failed move test
/// prints): each table of `schema` there, its row count, and which of `keys` (matched
/// against `column` as text) it holds.
async fn on_workers(
    cluster: &TestCluster,
    schema: &str,
    column: &str,
    keys: &[String],
) -> Vec<String> {
    let mut seen = Vec::new();
    for url in cluster.worker_urls() {
        let Ok(wpool) = PgPool::connect(url).await else {
            seen.push(format!("{url}: unreachable"));
            continue;
        };
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r'",
        )
        .bind(schema)
        .fetch_all(&wpool)
        .await
        .unwrap_or_default();
        for table in tables {
            let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT {column}::text FROM {table} WHERE {column}::text = ANY($1)"
            )))
            .bind(keys)
            .fetch_all(&wpool)
            .await
            .unwrap_or_default();
            let count: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(&wpool)
                    .await
                    .unwrap_or(-1);
            seen.push(format!(
                "{url} {table}: {count} rows, {} of the keys: {found:?}",
                found.len()
            ));
        }
        wpool.close().await;
    }
    seen
}

async fn names(app: &axum::Router, tenant: &str) -> BTreeSet<String> {
    let (status, json) = call(app, "GET", tenant, None).await;
    assert_eq!(status, 200, "{json}");
    json.as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn schema_and_row_tenants_spread_over_both_workers_and_stay_isolated() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let (pool, m) = manager(&cluster).await;
    let citus = m.admin().citus().expect("Citus detected at start").clone();
    assert_eq!(citus.workers.len(), 2, "{citus:?}");
    // The workers' connection limits, read at start (the test cluster: a shared pool
    // of 100, workers taking 400 less 3 reserved for superusers).
    assert_eq!(citus.max_shared_pool_size, Some(100), "{citus:?}");
    assert_eq!(citus.worker_connections, Some(397), "{citus:?}");
    assert_eq!(citus.connection_budget_problem(50, 2), None);
    assert!(citus.connection_budget_problem(51, 2).is_some());
    let mut tenants = Vec::new();
    for i in 0..4 {
        tenants.push((format!("s{i}"), Strategy::Schema));
    }
    for i in 0..12 {
        tenants.push((format!("r{i}"), Strategy::Row));
    }
    for (t, strategy) in &tenants {
        m.create_tenant(NewTenant::new(id(t), t.as_str()).with_strategy(*strategy))
            .await
            .unwrap();
    }
    // Database tenants cannot live on the coordinator.
    let refused = m
        .create_tenant(NewTenant::new(id("db"), "Db").with_strategy(Strategy::Database))
        .await
        .unwrap_err();
    assert_eq!(refused.status().as_u16(), 422, "{refused}");
    assert!(refused.to_string().contains("Citus"), "{refused}");

    // Where each tenant is, from Citus's metadata: both workers hold some of each kind.
    let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (t, strategy) in &tenants {
        let tenant = m.admin().existing(&id(t)).await.unwrap();
        let node = m.admin().node_of(&tenant).await.unwrap().expect("a node");
        assert!(citus.workers.contains(&node), "{node} is not a worker");
        nodes.entry(strategy.to_string()).or_default().insert(node);
    }
    assert_eq!(nodes["schema"].len(), 2, "{nodes:?}");
    assert_eq!(nodes["row"].len(), 2, "{nodes:?}");
    let distributed: i64 = sqlx::query_scalar("SELECT count(*) FROM citus_schemas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        distributed, 4,
        "the four tenant schemas, not the template or control schema"
    );

    // Through the quick start's routes: every tenant reads its own rows only.
    let app = saas::router(saas::AppState::new(m.clone(), "token"));
    for (t, _) in &tenants {
        for n in 0..2 {
            let (status, json) = call(
                &app,
                "POST",
                t,
                Some(serde_json::json!({ "name": format!("{t}:{n}") }).to_string()),
            )
            .await;
            assert_eq!(status, 201, "{t}: {json}");
        }
    }
    for (t, _) in &tenants {
        let expected: BTreeSet<String> = (0..2).map(|n| format!("{t}:{n}")).collect();
        assert_eq!(names(&app, t).await, expected, "{t}");
    }
}

#[derive(Debug, TenantEntity)]
#[tenant(table = "projects")]
struct SharedProject {
    #[tenant(id, generated)]
    id: i64,
    #[tenant(tenant_column)]
    tenant_id: TenantId,
    name: String,
}

/// Every statement an entity with a tenant column generates is routed to one worker:
/// its plan on the coordinator is a single-task router plan, under the row tenant's
/// per-transaction binding.
#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn row_entities_statements_route_to_one_node() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let (_pool, m) = manager(&cluster).await;
    m.create_tenant(NewTenant::new(id("acme"), "Acme").with_strategy(Strategy::Row))
        .await
        .unwrap();
    let tenant = m.resolve_tenant(&id("acme")).await.unwrap();
    let mut db = m.tenant_db(tenant).await.unwrap();
    let made = SharedProject {
        id: 0,
        tenant_id: id("acme"),
        name: "routed".into(),
    }
    .insert(&mut db)
    .await
    .unwrap();
    assert_eq!(SharedProject::count(&mut db).await.unwrap(), 1);
    assert_router_plans(&mut db, "SharedProject", SharedProject::sql(), made.id).await;
    // The quick start's own entities serve schema and row tenants alike: for row
    // tenants their statements carry the `tenant_id` filter too (row_tenant_column),
    // the page query of `GET /api/v1/projects` included.
    let made = saas::NewProject {
        name: "quick".into(),
    }
    .insert(&mut db)
    .await
    .unwrap();
    let row = saas::Project::sql().for_strategy(Strategy::Row);
    assert_router_plans(&mut db, "saas::Project", row, made.id).await;
    let page = saas::Project::select()
        .sort_named("id", false)
        .limit(11)
        .filter_named("id", tenantry::Op::Gt, 0_i64)
        .sql(Strategy::Row);
    let plan = explain(&mut db, &page, |q| q.bind(0_i64).bind("acme").bind(11_i64)).await;
    assert!(plan.contains("Task Count: 1"), "{page}\n{plan}");
    // And they find the tenant's rows: both projects, through the entity and its page.
    assert_eq!(saas::Project::count(&mut db).await.unwrap(), 2);
    let data = saas::DataRow::sql().for_strategy(Strategy::Row);
    assert_router_plans(&mut db, "saas::DataRow", data, 1).await;
}

type Scalar<'q> = sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments>;

/// The plan of `sql` with the values `bind` gives.
async fn explain(
    db: &mut tenantry::TenantDb,
    sql: &str,
    bind: impl for<'q> FnOnce(Scalar<'q>) -> Scalar<'q>,
) -> String {
    let explain = format!("EXPLAIN (COSTS OFF) {sql}");
    let query = bind(sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(
        explain,
    )));
    query.fetch_all(db).await.unwrap().join("\n")
}

/// find, list, count and delete of an entity's `statements` are single-task
/// router plans for tenant `acme`.
async fn assert_router_plans(
    db: &mut tenantry::TenantDb,
    entity: &str,
    statements: &tenantry::__private::EntitySql,
    key: i64,
) {
    for (name, sql) in statements.reads() {
        // find/delete: (id, tenant); list: (tenant, limit, offset); count: (tenant).
        let plan = explain(db, sql, |q| match name {
            "find" | "delete" => q.bind(key).bind("acme"),
            "list" => q.bind("acme").bind(10_i64).bind(0_i64),
            _ => q.bind("acme"),
        })
        .await;
        assert!(
            plan.contains("Task Count: 1"),
            "{entity}::{name}: {sql}\n{plan}"
        );
    }
}

/// A table every tenant reads (no tenant_id) becomes a reference table: a row
/// tenant's statement joining it to its own rows is still one router task, and reads
/// the copy on its node. A table of tenants' rows is refused as a reference table.
#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn shared_tables_without_tenant_id_become_reference_tables() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let (pool, m) = manager(&cluster).await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE shared.plans (code text PRIMARY KEY, seats int NOT NULL);
         INSERT INTO shared.plans VALUES ('free', 1), ('pro', 25);",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    tenantry::strategy::reference_table(&mut conn, "shared.plans")
        .await
        .unwrap();
    // Idempotent, like the application's migrations that call it.
    tenantry::strategy::reference_table(&mut conn, "shared.plans")
        .await
        .unwrap();
    sqlx::raw_sql("GRANT SELECT ON shared.plans TO saas_row_tenant")
        .execute(&mut *conn)
        .await
        .unwrap();
    let kind: String = sqlx::query_scalar(
        "SELECT partmethod::text || repmodel::text FROM pg_dist_partition
         WHERE logicalrelid = 'shared.plans'::regclass",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        kind, "nt",
        "a reference table (no partition column, 2PC replication)"
    );
    let refused = tenantry::strategy::reference_table(&mut conn, "shared.projects")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, tenantry::Error::Unprocessable(ref m) if m.contains("tenant_id")),
        "{refused:?}"
    );

    // A table Citus distributes otherwise is not taken for a reference table.
    sqlx::raw_sql(
        "CREATE TABLE shared.tags (code text PRIMARY KEY);
         SELECT create_distributed_table('shared.tags', 'code');",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let refused = tenantry::strategy::reference_table(&mut conn, "shared.tags")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, tenantry::Error::Unprocessable(ref m) if m.contains("distributed")),
        "{refused:?}"
    );

    m.create_tenant(NewTenant::new(id("acme"), "Acme").with_strategy(Strategy::Row))
        .await
        .unwrap();
    let tenant = m.resolve_tenant(&id("acme")).await.unwrap();
    let mut db = m.tenant_db(tenant).await.unwrap();
    saas::NewProject { name: "one".into() }
        .insert(&mut db)
        .await
        .unwrap();
    let join = "SELECT p.name || ':' || pl.seats FROM projects p \
                JOIN plans pl ON pl.code = 'pro' WHERE p.tenant_id = $1";
    let plan = explain(&mut db, join, |q| q.bind("acme")).await;
    assert!(plan.contains("Task Count: 1"), "{plan}");
    let rows: Vec<String> = sqlx::query_scalar(join)
        .bind("acme")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, ["one:25"]);
}

#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn migrate_all_and_a_move_to_the_other_worker_under_traffic() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let (pool, m) = manager(&cluster).await;
    // Tenants made at version 1, then migrated to 2 through the coordinator.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/saas/migrations/tenant/0001_projects.sql"
        ),
        dir.path().join("0001_projects.sql"),
    )
    .unwrap();
    let old = TenantManager::builder(pool.clone())
        .migrations(
            tenantry::TenantMigrations::from_dir(dir.path())
                .await
                .unwrap(),
        )
        .pool_config(saas::pool_config())
        .build()
        .await
        .unwrap();
    for (t, strategy) in [("walker", Strategy::Schema), ("rover", Strategy::Row)] {
        old.create_tenant(NewTenant::new(id(t), t).with_strategy(strategy))
            .await
            .unwrap();
    }
    let report = m
        .migrate_all(&tenantry::migrate::MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.applied(), 1, "{report:?}");
    let walker = m.admin().existing(&id("walker")).await.unwrap();
    assert_eq!(walker.schema_version, Some(2));
    let app = saas::router(saas::AppState::new(m.clone(), "token"));
    let citus = m.admin().citus().unwrap().clone();
    for t in ["walker", "rover"] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let (app, stop, written) = (app.clone(), stop.clone(), written.clone());
            let t = t.to_owned();
            tokio::spawn(async move {
                let mut acked = BTreeSet::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    written.store(n, std::sync::atomic::Ordering::Relaxed);
                    let name = format!("{t}:{n}");
                    let body = serde_json::json!({ "name": name }).to_string();
                    match call(&app, "POST", &t, Some(body)).await {
                        (201, _) => {
                            acked.insert(name);
                        }
                        (503, _) => tokio::time::sleep(Duration::from_millis(5)).await,
                        (s, json) => panic!("{t}: {s} {json}"),
                    }
                }
                acked
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tenant = m.admin().existing(&id(t)).await.unwrap();
        let from = m.admin().node_of(&tenant).await.unwrap().unwrap();
        let to = citus.workers.iter().find(|w| **w != from).unwrap().clone();
        let report = m
            .admin()
            .move_tenant(&id(t), MoveTo::Node(to.clone()), Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("move {t} to {to}: {e}"));
        let at_move = written.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(report.node.as_deref(), Some(to.as_str()));
        // A schema tenant whose tables all have a primary key moves by logical
        // replication (writes go on); a row tenant's rows, under row-level security,
        // with writes waiting.
        let expected = if t == "walker" {
            NodeTransfer::Logical
        } else {
            NodeTransfer::BlockWrites
        };
        assert_eq!(report.transfer, Some(expected), "{t}");
        assert_eq!(m.admin().node_of(&tenant).await.unwrap(), Some(to.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let acked = writer.await.unwrap();
        assert!(acked.len() > 10, "{t}: {} writes", acked.len());
        let tenant = m.resolve_tenant(&id(t)).await.unwrap();
        let mut db = m.tenant_db(tenant).await.unwrap();
        let stored: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM projects")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .collect();
        drop(db);
        let lost: Vec<_> = acked.difference(&stored).collect();
        let direct: i64 = if t == "walker" {
            sqlx::query_scalar("SELECT count(*) FROM tenant_walker.projects")
                .fetch_one(&pool)
                .await
                .unwrap()
        } else {
            0
        };
        if !lost.is_empty() {
            let keys: Vec<String> = lost.iter().map(|s| s.to_string()).collect();
            let seen = on_workers(&cluster, "tenant_walker", "name", &keys).await;
            panic!(
                "{t} lost {} of {} acknowledged writes ({} stored, {direct} read directly), e.g. {:?}; \
                 writes when the move returned: {at_move}; placements: {seen:?}",
                lost.len(),
                acked.len(),
                stored.len(),
                lost.iter().take(5).collect::<Vec<_>>()
            );
        }
        assert!(stored.iter().all(|n| n.starts_with(&format!("{t}:"))));
        // Moving where it is: 422.
        let again = m
            .admin()
            .move_tenant(&id(t), MoveTo::Node(to), Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(again.status().as_u16(), 422, "{again}");
    }
    // Logical replication asked for where it cannot work: 422, and the tenant stays.
    let rover = m.admin().existing(&id("rover")).await.unwrap();
    let rover_at = m.admin().node_of(&rover).await.unwrap().unwrap();
    let other = |at: &str| citus.workers.iter().find(|w| *w != at).unwrap().clone();
    let refused = m
        .admin()
        .move_tenant(
            &id("rover"),
            MoveTo::NodeWith(other(&rover_at), NodeTransfer::Logical),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().as_u16(), 422, "{refused}");
    assert!(
        refused.to_string().contains("row-level security"),
        "{refused}"
    );
    assert_eq!(m.admin().node_of(&rover).await.unwrap(), Some(rover_at));
    // A table without a primary key in a schema tenant: logical refused, and the
    // default picks block-writes.
    sqlx::raw_sql("CREATE TABLE tenant_walker.notes (body text)")
        .execute(&pool)
        .await
        .unwrap();
    let walker = m.admin().existing(&id("walker")).await.unwrap();
    let walker_at = m.admin().node_of(&walker).await.unwrap().unwrap();
    let refused = m
        .admin()
        .move_tenant(
            &id("walker"),
            MoveTo::NodeWith(other(&walker_at), NodeTransfer::Logical),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().as_u16(), 422, "{refused}");
    assert!(refused.to_string().contains("notes"), "{refused}");
    let report = m
        .admin()
        .move_tenant(
            &id("walker"),
            MoveTo::Node(other(&walker_at)),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(report.transfer, Some(NodeTransfer::BlockWrites));
    assert_eq!(
        m.admin().node_of(&walker).await.unwrap(),
        Some(other(&walker_at))
    );
}

/// A schema tenant moved by logical replication while a client inserts, updates and
/// deletes its rows: afterwards the tenant holds exactly what the client was told it
/// holds (every acknowledged insert, update and delete, nothing else).
#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn a_logical_move_keeps_every_acknowledged_insert_update_and_delete() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let (pool, m) = manager(&cluster).await;
    m.create_tenant(NewTenant::new(id("busy"), "Busy"))
        .await
        .unwrap();
    // Enough rows that the copy takes a while.
    sqlx::query("INSERT INTO tenant_busy.projects (name) SELECT 'seed' || i FROM generate_series(1, 20000) i")
        .execute(&pool)
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (m, stop) = (m.clone(), stop.clone());
        tokio::spawn(async move {
            // What the client was told: id -> name (None: deleted).
            let mut told: BTreeMap<i64, Option<String>> = BTreeMap::new();
            let mut n = 0_i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let tenant = m.resolve_tenant(&id("busy")).await.unwrap();
                let mut db = m.tenant_db(tenant).await.unwrap();
                let name = format!("w{n}");
                let made: i64 =
                    sqlx::query_scalar("INSERT INTO projects (name) VALUES ($1) RETURNING id")
                        .bind(&name)
                        .fetch_one(&mut db)
                        .await
                        .unwrap();
                told.insert(made, Some(name));
                // Rename a seed row and delete another, both acknowledged.
                let renamed = format!("renamed{n}");
                let seed = 1 + (n * 7) % 20000;
                let done = sqlx::query("UPDATE projects SET name = $1 WHERE id = $2")
                    .bind(&renamed)
                    .bind(seed)
                    .execute(&mut db)
                    .await
                    .unwrap();
                if done.rows_affected() == 1 {
                    told.insert(seed, Some(renamed));
                }
                let gone = 1 + (n * 13 + 5) % 20000;
                let done = sqlx::query("DELETE FROM projects WHERE id = $1")
                    .bind(gone)
                    .execute(&mut db)
                    .await
                    .unwrap();
                if done.rows_affected() == 1 {
                    told.insert(gone, None);
                }
            }
            told
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tenant = m.admin().existing(&id("busy")).await.unwrap();
    let from = m.admin().node_of(&tenant).await.unwrap().unwrap();
    let citus = m.admin().citus().unwrap().clone();
    let to = citus.workers.iter().find(|w| **w != from).unwrap().clone();
    let started = std::time::Instant::now();
    let report = m
        .admin()
        .move_tenant(&id("busy"), MoveTo::Node(to.clone()), Duration::ZERO)
        .await
        .unwrap();
    let moved = started.elapsed();
    assert_eq!(report.transfer, Some(NodeTransfer::Logical));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let told = writer.await.unwrap();
    assert!(told.len() > 30, "{} changes acknowledged", told.len());
    assert_eq!(m.admin().node_of(&tenant).await.unwrap(), Some(to));
    let stored: BTreeMap<i64, String> =
        sqlx::query_as::<_, (i64, String)>("SELECT id, name FROM tenant_busy.projects")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut wrong = Vec::new();
    for (key, name) in &told {
        if stored.get(key) != name.as_ref() {
            wrong.push((key, name.clone(), stored.get(key).cloned()));
        }
    }
    if !wrong.is_empty() {
        let keys: Vec<String> = wrong.iter().take(5).map(|w| w.0.to_string()).collect();
        let seen = on_workers(&cluster, "tenant_busy", "id", &keys).await;
        panic!(
            "{} of {} acknowledged changes not as told, e.g. {:?}; placements: {seen:?}; move took {moved:?}",
            wrong.len(),
            told.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
    // Nothing else changed: the rows the client never touched are the seeds.
    let untouched = stored
        .iter()
        .filter(|(k, _)| !told.contains_key(k))
        .filter(|(k, name)| **name != format!("seed{k}"))
        .count();
    assert_eq!(untouched, 0);
}

/// Database tenants live on named servers next to a Citus cluster; they move into
/// it: to a distributed schema, or into the distributed shared tables, with their
/// rows. A move to a database on the coordinator is a 422.
#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn database_tenants_on_named_servers_move_into_the_cluster() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let east = tenantry::testing::TestServer::start().expect("a plain server");
    let (pool, m) = manager(&cluster).await;
    m.admin().add_server("east", east.url()).await.unwrap();
    let app = saas::router(saas::AppState::new(m.clone(), "token"));
    for t in ["outside", "elsewhere"] {
        let mut new = NewTenant::new(id(t), t).with_strategy(Strategy::Database);
        new.server = Some("east".to_owned());
        m.create_tenant(new).await.unwrap();
        for n in 0..3 {
            let body = serde_json::json!({ "name": format!("{t}:{n}") }).to_string();
            assert_eq!(call(&app, "POST", t, Some(body)).await.0, 201);
        }
    }
    // Refused on the coordinator itself, as at creation.
    let refused = m
        .admin()
        .move_tenant(
            &id("outside"),
            MoveTo::Server("default".into()),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().as_u16(), 422, "{refused}");

    for (t, to) in [("outside", Strategy::Schema), ("elsewhere", Strategy::Row)] {
        let report = m
            .admin()
            .move_tenant(&id(t), MoveTo::Strategy(to), Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{t} to {to}: {e}"));
        assert_eq!(report.tenant.strategy, to);
        assert_eq!(report.rows, 3, "{t}");
        let expected: BTreeSet<String> = (0..3).map(|n| format!("{t}:{n}")).collect();
        assert_eq!(names(&app, t).await, expected, "{t}");
        // Placed on a worker by Citus.
        let tenant = m.admin().existing(&id(t)).await.unwrap();
        let node = m.admin().node_of(&tenant).await.unwrap();
        assert!(
            node.as_ref()
                .is_some_and(|n| m.admin().citus().unwrap().workers.contains(n)),
            "{t}: {node:?}"
        );
        // And writes go on there.
        let body = serde_json::json!({ "name": format!("{t}:after") }).to_string();
        assert_eq!(call(&app, "POST", t, Some(body)).await.0, 201);
    }
    let distributed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM citus_schemas WHERE schema_name::text = 'tenant_outside')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(distributed, "the moved schema is a distributed schema");

    // A schema tenant on the cluster cannot become a database tenant there (the
    // coordinator's databases are not part of the cluster): 422, unchanged.
    let refused = m
        .admin()
        .move_tenant(
            &id("outside"),
            MoveTo::Strategy(Strategy::Database),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().as_u16(), 422, "{refused}");
    assert!(refused.to_string().contains("Citus"), "{refused}");
    assert_eq!(
        m.admin().existing(&id("outside")).await.unwrap().strategy,
        Strategy::Schema
    );
    assert_eq!(names(&app, "outside").await.len(), 4);

    // A row tenant's export on the cluster imports as a new row tenant there, its rows
    // only (the tenant setting reaches the workers' shards).
    let export = m.admin().export(&id("elsewhere")).await.unwrap();
    let copy = m
        .admin()
        .import(
            &export,
            tenantry::admin::ImportOptions {
                id: Some(id("copied")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(copy.strategy, Strategy::Row);
    let mut expected: BTreeSet<String> = (0..3).map(|n| format!("elsewhere:{n}")).collect();
    expected.insert("elsewhere:after".to_owned());
    assert_eq!(names(&app, "copied").await, expected);
    assert_eq!(names(&app, "elsewhere").await, expected);
}

/// Schema and row tenants on the cluster move between strategies (schema -> row ->
/// schema) while a client writes: its writes get 503 only while the fence is up,
/// every acknowledged write is there afterwards, nothing of another tenant is, and
/// each old place is gone (the distributed schema, the rows in the shared tables).
#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn schema_and_row_tenants_on_the_cluster_move_between_strategies_under_writes() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let (pool, m) = manager(&cluster).await;
    let app = saas::router(saas::AppState::new(m.clone(), "token"));
    for (t, strategy) in [("mover", Strategy::Schema), ("stayer", Strategy::Row)] {
        m.create_tenant(NewTenant::new(id(t), t).with_strategy(strategy))
            .await
            .unwrap();
        let body = serde_json::json!({ "name": format!("{t}:0") }).to_string();
        assert_eq!(call(&app, "POST", t, Some(body)).await.0, 201);
    }
    sqlx::query("INSERT INTO tenant_mover.projects (name) SELECT 'seed' || i FROM generate_series(1, 5000) i")
        .execute(&pool)
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut paused, mut n) = (BTreeSet::new(), 0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let name = format!("mover:w{n}");
                let body = serde_json::json!({ "name": name }).to_string();
                match call(&app, "POST", "mover", Some(body)).await {
                    (201, _) => {
                        acked.insert(name);
                    }
                    (503, _) => {
                        paused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (s, json) => panic!("mover: {s} {json}"),
                }
            }
            (acked, paused)
        })
    };
    for to in [Strategy::Row, Strategy::Schema] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = m
            .admin()
            .move_tenant(
                &id("mover"),
                MoveTo::Strategy(to),
                Duration::from_millis(200),
            )
            .await
            .unwrap_or_else(|e| panic!("mover to {to}: {e}"));
        assert_eq!(report.tenant.strategy, to);
        assert!(report.old_place_dropped, "{report:?}");
        assert_eq!(
            report.rows_caught_up, 0,
            "the copy under the fence is the last"
        );
        let tenant = m.admin().existing(&id("mover")).await.unwrap();
        assert!(m.admin().node_of(&tenant).await.unwrap().is_some());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, paused) = writer.await.unwrap();
    assert!(acked.len() > 10, "{} writes acknowledged", acked.len());
    assert!(
        paused > 0,
        "the fence on the workers refused writes while the data moved"
    );
    let stored = names(&app, "mover").await;
    // The page holds 50: read everything from the tenant's schema instead.
    let all: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM tenant_mover.projects")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(!stored.is_empty());
    let lost: Vec<_> = acked.difference(&all).collect();
    assert!(
        lost.is_empty(),
        "lost {} of {} ({paused} paused)",
        lost.len(),
        acked.len()
    );
    assert!(
        all.iter()
            .all(|n| n.starts_with("mover:") || n.starts_with("seed"))
    );
    assert_eq!(all.len(), acked.len() + 1 + 5000);
    // No row copied twice either (the set above would hide it).
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_mover.projects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows as usize, all.len());
    // Back in a distributed schema; no rows of it left in the shared tables; the
    // other row tenant untouched.
    let in_shared: i64 =
        sqlx::query_scalar("SELECT count(*) FROM shared.projects WHERE tenant_id = 'mover'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(in_shared, 0);
    let distributed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM citus_schemas WHERE schema_name::text = 'tenant_mover')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(distributed);
    assert_eq!(
        names(&app, "stayer").await,
        BTreeSet::from(["stayer:0".to_owned()])
    );
    // No fence or capture left behind, on the coordinator or the workers.
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE starts_with(tgname::text, 'tenantry_')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    let on_workers: Vec<String> = sqlx::query_scalar(
        "SELECT result FROM run_command_on_workers(
             $$SELECT count(*) FROM pg_trigger WHERE starts_with(tgname::text, 'tenantry_')$$)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(on_workers, ["0", "0"]);

    // A move whose process died left its fence on the workers: the tenant's writes get
    // 503 until `--recover` lifts it, for a schema and for a row tenant.
    for (t, table, when) in [
        ("mover", "tenant_mover.projects", ""),
        (
            "stayer",
            "shared.projects",
            "WHEN (NEW.tenant_id = 'stayer')",
        ),
    ] {
        let mut tx = pool.begin().await.unwrap();
        sqlx::raw_sql("SET LOCAL citus.enable_unsafe_triggers TO on")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TRIGGER tenantry_fence_{t} BEFORE INSERT OR UPDATE ON {table} \
             FOR EACH ROW {when} EXECUTE FUNCTION tenantry.write_fence('{t}')"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let body = serde_json::json!({ "name": format!("{t}:fenced") }).to_string();
        let (status, json) = call(&app, "POST", t, Some(body.clone())).await;
        assert_eq!(status, 503, "{t}: {json}");
        assert!(m.admin().recover_move(&id(t)).await.unwrap(), "{t}");
        assert_eq!(call(&app, "POST", t, Some(body)).await.0, 201, "{t}");
    }
}

/// With a registry login that is not a superuser (the shared tables' owner, under
/// their forced row-level security like every other login): deleting a row tenant
/// removes its rows on the workers' shards and a new tenant under the same id starts
/// empty (tenantry's own statements on the shared tables carry the tenant as
/// `SET LOCAL`, forwarded to the workers; a `set_config` is not, and deleted
/// nothing); schema tenants are made (their schema ahead of the transaction, dropped
/// on every node when the build fails); a row tenant moves to a schema and back, and
/// imports as another row tenant (rows inserted in batches: Citus would load the
/// shards with COPY, which row-level security refuses).
#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn a_non_superuser_registry_login_on_citus() {
    let Some(cluster) = cluster().await else {
        return;
    };
    // Set up by a superuser; then the shared tables belong to `app_owner`, which the
    // registry logs in as: their owner, under their forced row-level security.
    let (admin_pool, _) = manager(&cluster).await;
    for statement in [
        "CREATE ROLE app_owner LOGIN NOSUPERUSER NOBYPASSRLS",
        "GRANT saas_row_tenant TO app_owner",
        "GRANT CREATE ON DATABASE postgres TO app_owner",
        "GRANT USAGE, CREATE ON SCHEMA shared, tenantry TO app_owner",
        "GRANT ALL ON ALL TABLES IN SCHEMA tenantry TO app_owner",
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA tenantry TO app_owner",
        "ALTER TABLE shared.projects OWNER TO app_owner",
        "ALTER TABLE shared.data OWNER TO app_owner",
        "ALTER SCHEMA tenantry OWNER TO app_owner",
    ] {
        sqlx::raw_sql(statement).execute(&admin_pool).await.unwrap();
    }
    // What the registry made in its schema belongs to its login too.
    let owned: Vec<String> = sqlx::query_scalar(
        "SELECT format('ALTER %s %s OWNER TO app_owner',
                  CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
                  c.oid::regclass)
         FROM pg_class c
         WHERE c.relnamespace = 'tenantry'::regnamespace
           AND c.relkind IN ('r', 'v', 'p', 'S')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
                           AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
         UNION ALL
         SELECT format('ALTER FUNCTION %s OWNER TO app_owner', p.oid::regprocedure)
         FROM pg_proc p
         WHERE p.pronamespace = 'tenantry'::regnamespace",
    )
    .fetch_all(&admin_pool)
    .await
    .unwrap();
    for statement in owned {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&admin_pool)
            .await
            .unwrap();
    }
    let url = cluster.url().replacen("postgres@", "app_owner@", 1);
    let pool = PgPool::connect(&url).await.unwrap();
    let m = TenantManager::builder(pool.clone())
        .migrations(saas::tenant_migrations())
        .pool_config(saas::pool_config())
        .build()
        .await
        .unwrap();
    let app = saas::router(saas::AppState::new(m.clone(), "token"));
    let count = |t: &'static str| {
        let admin_pool = admin_pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM shared.projects WHERE tenant_id = $1",
            )
            .bind(t)
            .fetch_one(&admin_pool)
            .await
            .unwrap()
        }
    };
    m.create_tenant(NewTenant::new(id("acme"), "Acme").with_strategy(Strategy::Row))
        .await
        .unwrap();
    for n in 0..3 {
        let body = serde_json::json!({ "name": format!("acme:{n}") }).to_string();
        assert_eq!(call(&app, "POST", "acme", Some(body)).await.0, 201);
    }
    assert_eq!(count("acme").await, 3);
    m.suspend_tenant(&id("acme")).await.unwrap();
    m.delete_tenant(&id("acme")).await.unwrap();
    assert_eq!(
        count("acme").await,
        0,
        "the deleted tenant's rows are gone from the shards"
    );
    m.create_tenant(NewTenant::new(id("acme"), "Acme again").with_strategy(Strategy::Row))
        .await
        .unwrap();
    assert!(
        names(&app, "acme").await.is_empty(),
        "the new owner of the id starts empty"
    );

    let body = serde_json::json!({ "name": "acme:new" }).to_string();
    assert_eq!(call(&app, "POST", "acme", Some(body)).await.0, 201);

    // Schema tenants with this login: Citus cannot distribute a schema a non-superuser
    // created in the same transaction, so tenantry makes it ahead, committed, and
    // drops it if the build fails.
    m.create_tenant(NewTenant::new(id("beta"), "Beta"))
        .await
        .unwrap();
    let body = serde_json::json!({ "name": "beta:0" }).to_string();
    assert_eq!(call(&app, "POST", "beta", Some(body)).await.0, 201);
    assert_eq!(
        names(&app, "beta").await,
        BTreeSet::from(["beta:0".to_owned()])
    );
    let beta = m.admin().existing(&id("beta")).await.unwrap();
    assert!(m.admin().node_of(&beta).await.unwrap().is_some());
    // A second tenant of that id: 409 for the tenant, and its schema stays.
    let again = m
        .create_tenant(NewTenant::new(id("beta"), "Beta again"))
        .await
        .unwrap_err();
    assert_eq!(again.status().as_u16(), 409, "{again}");
    assert_eq!(names(&app, "beta").await.len(), 1);
    // An import that does not fit the tables fails inside the build, after the schema
    // was made ahead: the schema goes with the failure, on every node.
    let export = m.admin().export(&id("beta")).await.unwrap();
    let text = String::from_utf8(export).unwrap();
    assert!(text.contains("\"name\",\"created_at\""), "{text}");
    let lying = text.replace("\"name\",\"created_at\"", "\"nom\",\"created_at\"");
    let refused = m
        .admin()
        .import(
            lying.as_bytes(),
            tenantry::admin::ImportOptions {
                id: Some(id("gamma")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().as_u16(), 422, "{refused}");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT result FROM run_command_on_all_nodes(
             $$SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_gamma'$$)",
    )
    .fetch_all(&admin_pool)
    .await
    .unwrap();
    assert_eq!(left, ["0", "0", "0"], "no schema left by the failed import");

    // A row tenant moves to a schema with this login (its schema made ahead too).
    let report = m
        .admin()
        .move_tenant(
            &id("acme"),
            MoveTo::Strategy(Strategy::Schema),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(report.old_place_dropped, "{report:?}");
    assert_eq!(
        names(&app, "acme").await,
        BTreeSet::from(["acme:new".to_owned()])
    );
    assert_eq!(count("acme").await, 0);
    // And back into the shared tables: Citus would copy an `INSERT .. SELECT`'s rows to
    // the shards with COPY, which PostgreSQL refuses under row-level security, so
    // tenantry inserts them in batches of `INSERT .. VALUES` there.
    let body = serde_json::json!({ "name": "acme:after" }).to_string();
    assert_eq!(call(&app, "POST", "acme", Some(body)).await.0, 201);
    let report = m
        .admin()
        .move_tenant(&id("acme"), MoveTo::Strategy(Strategy::Row), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.tenant.strategy, Strategy::Row);
    assert_eq!(
        names(&app, "acme").await,
        BTreeSet::from(["acme:new".to_owned(), "acme:after".to_owned()])
    );
    assert_eq!(count("acme").await, 2);
    // An export of it imports as another row tenant with this login too.
    let export = m.admin().export(&id("acme")).await.unwrap();
    m.admin()
        .import(
            &export,
            tenantry::admin::ImportOptions {
                id: Some(id("acme-copy")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        names(&app, "acme-copy").await,
        BTreeSet::from(["acme:new".to_owned(), "acme:after".to_owned()])
    );
}

/// Without `wal_level = logical` on the workers, or with an unlogged table, a schema
/// tenant moves with block-writes, and asking for logical is a 422 that says why.
#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn moves_fall_back_to_block_writes_where_logical_replication_cannot_work() {
    if !citus_or_skip() {
        return;
    }
    let cluster = TestCluster::start_with(&["wal_level=replica"])
        .await
        .expect("a Citus cluster");
    let (pool, m) = manager(&cluster).await;
    m.create_tenant(NewTenant::new(id("plain"), "Plain"))
        .await
        .unwrap();
    let tenant = m.admin().existing(&id("plain")).await.unwrap();
    let at = m.admin().node_of(&tenant).await.unwrap().unwrap();
    let citus = m.admin().citus().unwrap().clone();
    let other = |at: &str| citus.workers.iter().find(|w| *w != at).unwrap().clone();
    let refused = m
        .admin()
        .move_tenant(
            &id("plain"),
            MoveTo::NodeWith(other(&at), NodeTransfer::Logical),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().as_u16(), 422, "{refused}");
    assert!(refused.to_string().contains("wal_level"), "{refused}");
    let report = m
        .admin()
        .move_tenant(&id("plain"), MoveTo::Node(other(&at)), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.transfer, Some(NodeTransfer::BlockWrites));
    assert_eq!(m.admin().node_of(&tenant).await.unwrap(), Some(other(&at)));
    drop(m);
    drop(pool);
    drop(cluster);

    // With logical replication on, an unlogged table keeps the tenant on block-writes.
    let cluster = TestCluster::start().await.expect("a Citus cluster");
    let (pool, m) = manager(&cluster).await;
    m.create_tenant(NewTenant::new(id("scratchy"), "Scratchy"))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE UNLOGGED TABLE tenant_scratchy.scratch (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let tenant = m.admin().existing(&id("scratchy")).await.unwrap();
    let at = m.admin().node_of(&tenant).await.unwrap().unwrap();
    let citus = m.admin().citus().unwrap().clone();
    let other = citus.workers.iter().find(|w| **w != at).unwrap().clone();
    let refused = m
        .admin()
        .move_tenant(
            &id("scratchy"),
            MoveTo::NodeWith(other.clone(), NodeTransfer::Logical),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("unlogged"), "{refused}");
    let report = m
        .admin()
        .move_tenant(&id("scratchy"), MoveTo::Node(other), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.transfer, Some(NodeTransfer::BlockWrites));
}

/// A worker cut off mid-load: its tenants get 503 (never a wrong answer or another
/// tenant's rows), the other worker's tenants are served, and the cut-off tenants are
/// served again once it is back.
#[tokio::test]
#[ignore = "needs Citus 13 in PostgreSQL 15: cargo test -- --ignored; .ci/run installs and runs it"]
async fn a_worker_stopped_mid_load_gives_503s_and_recovers() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let (_pool, m) = manager(&cluster).await;
    let app = saas::router(saas::AppState::new(m.clone(), "token"));
    let workers = cluster.workers();
    let mut on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..4 {
        let t = format!("s{i}");
        let tenant = m
            .create_tenant(NewTenant::new(id(&t), t.as_str()))
            .await
            .unwrap();
        let (status, json) = call(
            &app,
            "POST",
            &t,
            Some(serde_json::json!({ "name": format!("{t}:0") }).to_string()),
        )
        .await;
        assert_eq!(status, 201, "{json}");
        let node = m.admin().node_of(&tenant).await.unwrap().unwrap();
        on.entry(node).or_default().push(t);
    }
    assert_eq!(on.len(), 2, "{on:?}");
    let down = &on[&workers[0]];
    let up = &on[&workers[1]];
    cluster.stop_worker(0);
    for round in 0..5 {
        for t in down {
            let (status, json) = call(&app, "GET", t, None).await;
            assert_eq!(
                status, 503,
                "round {round}, {t} on the stopped worker: {json}"
            );
            let (status, json) = call(
                &app,
                "POST",
                t,
                Some(serde_json::json!({ "name": format!("{t}:lost") }).to_string()),
            )
            .await;
            assert_eq!(status, 503, "{t}: {json}");
        }
        for t in up {
            let expected: BTreeSet<String> = [format!("{t}:0")].into();
            assert_eq!(names(&app, t).await, expected, "round {round}, {t}");
        }
    }
    cluster.restart_worker(0);
    for t in down {
        let mut served = None;
        for _ in 0..50 {
            let (status, _) = call(&app, "GET", t, None).await;
            if status == 200 {
                served = Some(names(&app, t).await);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let expected: BTreeSet<String> = [format!("{t}:0")].into();
        assert_eq!(served, Some(expected), "{t} after the worker came back");
    }
}
