//! Connections are shared by tenants and rebound between requests. Nothing a request
//! leaves on a connection (settings, role, an open transaction, temporary objects)
//! reaches the next request, and a binding belongs to one incarnation of a tenant: a
//! tenant deleted and re-created under the same id is never served through the old
//! binding, by this instance or another one.

mod common;

use std::time::Duration;

use axum::extract::Path;
use axum::http::Method;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::*;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgPoolOptions;
use tenantry::{
    Error, NewTenant, PoolConfig, Strategy, TenantDb, TenantLayer, TenantManager, TenantMigrations,
};

/// What a connection's session looks like to the next request.
async fn probe(mut db: TenantDb) -> Result<Json<Value>, Error> {
    // A simple query: `transaction_timestamp() = statement_timestamp()` tells a
    // statement outside a transaction block only in the simple protocol.
    let row = sqlx::raw_sql(
        "SELECT current_setting('search_path'),
                coalesce(current_setting('tenantry.tenant_id', true), ''),
                current_user::text,
                current_setting('statement_timeout'),
                transaction_timestamp() = statement_timestamp(),
                (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover'),
                to_regclass('pg_temp.leftover') IS NOT NULL",
    )
    .fetch_one(&mut db)
    .await?;
    let get = |i: usize| row.try_get::<String, _>(i);
    let (path, setting, user, timeout) = (get(0)?, get(1)?, get(2)?, get(3)?);
    let fresh: bool = row.try_get(4)?;
    let prepared: i64 = row.try_get(5)?;
    let temp: bool = row.try_get(6)?;
    Ok(Json(json!({
        "search_path": path, "tenant_setting": setting, "user": user,
        "statement_timeout": timeout, "outside_transaction": fresh,
        "leftover_statement": prepared, "leftover_temp_table": temp,
    })))
}

/// A handler that changes its connection's session in every way it can, and leaves
/// a transaction open with a write in it.
async fn mess(mut db: TenantDb, Path(victim): Path<String>) -> Result<Json<&'static str>, Error> {
    let conn = db.conn().await?;
    let victim_schema = format!("tenant_{}", victim.replace('-', "_"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path TO {victim_schema};
         SELECT set_config('tenantry.tenant_id', '{victim}', false);
         SET statement_timeout = 1234;
         CREATE TEMP TABLE leftover (x int);
         PREPARE leftover AS SELECT 1;
         BEGIN;
         INSERT INTO {victim_schema}.projects (name) VALUES ('written by an open transaction');"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(Json("messed"))
}

/// A row-tenant handler that switches to another tenant's setting and role.
async fn mess_row(
    mut db: TenantDb,
    Path(victim): Path<String>,
) -> Result<Json<&'static str>, Error> {
    sqlx::query("SELECT set_config('tenantry.tenant_id', $1, false)")
        .bind(victim)
        .execute(&mut db)
        .await?;
    sqlx::raw_sql("RESET ROLE").execute(&mut db).await?;
    Ok(Json("messed"))
}

fn app(manager: &TenantManager) -> Router {
    saas_app(manager).merge(
        Router::new()
            .route("/test/probe", get(probe))
            .route("/test/mess/{victim}", post(mess))
            .route("/test/mess-row/{victim}", post(mess_row))
            .layer(TenantLayer::new(manager.clone())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_changes_of_a_handler_never_reach_the_next_request() {
    // One connection: every request gets the connection the previous one used.
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(1),
        ..PoolConfig::default()
    })
    .await;
    create(&manager, "alpha").await;
    create(&manager, "bravo").await;
    let app = app(&manager);
    let r = Client::tenant(&app, "bravo")
        .post("/api/v1/projects", json!({"name": "bravo's own"}))
        .await;
    assert_eq!(r.status, 201);

    for next in ["alpha", "bravo"] {
        let r = send(
            &app,
            Method::POST,
            "/test/mess/bravo",
            &[("x-tenant-id", "alpha")],
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        // Give the release check (off the request's path) time to run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = Client::tenant(&app, next).get("/test/probe").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.json["search_path"],
            format!("\"tenant_{next}\", pg_temp"),
            "{r:?}"
        );
        assert_eq!(r.json["tenant_setting"], "", "{r:?}");
        assert_eq!(r.json["statement_timeout"], "0", "{r:?}");
        assert_eq!(r.json["outside_transaction"], true, "{r:?}");
        assert_eq!(r.json["leftover_statement"], 0, "{r:?}");
        assert_eq!(r.json["leftover_temp_table"], false, "{r:?}");
        // The open transaction's write was rolled back, and alpha sees only alpha.
        let r = Client::tenant(&app, "bravo").get("/api/v1/projects").await;
        let names: Vec<&str> = r
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["bravo's own"]);
        let r = Client::tenant(&app, "alpha").get("/api/v1/projects").await;
        assert_eq!(r.json, json!([]), "alpha reads nothing of bravo's");
    }
    let stats = manager.pool_stats();
    assert!(stats.reset >= 2, "{stats:?}");
    assert_eq!(stats.opened, 1, "reset, not reopened: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_tenant_that_switches_its_setting_and_role_does_not_pass_them_on() {
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(1),
        ..PoolConfig::default()
    })
    .await;
    create_with(&manager, "rowa", Strategy::Row).await;
    create_with(&manager, "rowb", Strategy::Row).await;
    let app = app(&manager);
    let r = Client::tenant(&app, "rowb")
        .post("/api/v1/data", json!({"value": "rowb's secret"}))
        .await;
    assert_eq!(r.status, 201);
    for _ in 0..3 {
        let r = send(
            &app,
            Method::POST,
            "/test/mess-row/rowb",
            &[("x-tenant-id", "rowa")],
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = Client::tenant(&app, "rowa").get("/test/probe").await;
        assert_eq!(r.json["tenant_setting"], "rowa", "{r:?}");
        assert_eq!(r.json["user"], saas::ROW_ROLE, "{r:?}");
        let r = Client::tenant(&app, "rowa").get("/api/v1/data").await;
        assert_eq!(r.json["data"], json!([]), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_while_its_tenant_is_deleted_and_recreated_never_reaches_the_new_one() {
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(1),
        acquire_timeout: Duration::from_secs(10),
        ..PoolConfig::default()
    })
    .await;
    create(&manager, "holder").await;
    create_with(&manager, "phoenix", Strategy::Row).await;
    let app = app(&manager);
    let r = Client::tenant(&app, "phoenix")
        .post("/api/v1/data", json!({"value": "first life"}))
        .await;
    assert_eq!(r.status, 201);
    // The only connection is taken; phoenix's next request waits for it.
    let holder = manager
        .resolve_tenant(&"holder".parse().unwrap())
        .await
        .unwrap();
    let mut held = manager.tenant_db(holder).await.unwrap();
    held.conn().await.unwrap();
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move {
            Client::tenant(&app, "phoenix")
                .post(
                    "/api/v1/data",
                    json!({"value": "written by the first life's request"}),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = "phoenix".parse().unwrap();
    manager.suspend_tenant(&id).await.unwrap();
    manager.delete_tenant(&id).await.unwrap();
    manager
        .create_tenant(NewTenant::new(id.clone(), "Phoenix again"))
        .await
        .unwrap();
    drop(held);
    let r = waiting.await.unwrap();
    r.assert_problem(503);
    assert!(r.headers.contains_key("retry-after"));
    // The new owner of the id has nothing of the old one.
    let r = Client::tenant(&app, "phoenix").get("/api/v1/data").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["data"], json!([]), "{r:?}");
    let pool = manager.admin().registry_pool();
    let orphans: i64 =
        sqlx::query_scalar("SELECT count(*) FROM shared.data WHERE tenant_id = 'phoenix'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        orphans, 0,
        "no write of the old life landed after its deletion"
    );
}

/// A second instance that misses every change notification (listening off) and
/// trusts its cache for 100 ms.
async fn deaf_instance(db: &tenantry::testing::TestDatabase) -> TenantManager {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(db.url())
        .await
        .unwrap();
    saas_builder(db, pool)
        .listen_for_changes(false)
        .cache_ttl(Duration::from_millis(100))
        .pool_config(PoolConfig {
            max_connections: Some(1),
            ..saas::pool_config()
        })
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_of_a_deleted_incarnation_is_never_reused_by_its_successor() {
    let (db, a) = manager(PoolConfig::default()).await;
    let b = deaf_instance(&db).await;
    let (app_a, app_b) = (saas_app(&a), saas_app(&b));
    create_with(&a, "phoenix", Strategy::Row).await;
    // B serves the row tenant: its one connection is now bound to it.
    let r = Client::tenant(&app_b, "phoenix")
        .get("/api/v1/projects")
        .await;
    assert_eq!(r.status, 200);
    // A deletes it and creates a schema tenant under the same id; B hears nothing.
    let id = "phoenix".parse().unwrap();
    a.suspend_tenant(&id).await.unwrap();
    a.delete_tenant(&id).await.unwrap();
    a.create_tenant(NewTenant::new(id, "Phoenix, schema"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B's cache expired, so it reads the new record; its connection is still bound
    // to the old incarnation and must be rebound, not reused.
    let r = Client::tenant(&app_b, "phoenix")
        .post("/api/v1/projects", json!({"name": "second life"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = Client::tenant(&app_a, "phoenix")
        .get("/api/v1/projects")
        .await;
    let names: Vec<&str> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["second life"],
        "the write landed in the new tenant's schema"
    );
    let shared: i64 =
        sqlx::query_scalar("SELECT count(*) FROM shared.projects WHERE tenant_id = 'phoenix'")
            .fetch_one(a.admin().registry_pool())
            .await
            .unwrap();
    assert_eq!(
        shared, 0,
        "nothing went to the old incarnation's shared tables"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_recycled_after_serving_many_tenants() {
    let (_db, manager) = manager(PoolConfig {
        max_connections: Some(1),
        max_tenants_per_connection: 3,
        ..PoolConfig::default()
    })
    .await;
    let tenants: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    for t in &tenants {
        create(&manager, t).await;
    }
    let app = saas_app(&manager);
    for t in &tenants {
        let r = Client::tenant(&app, t).get("/api/v1/projects").await;
        assert_eq!(r.status, 200);
    }
    let stats = manager.pool_stats();
    assert!(
        stats.opened >= 4,
        "a connection serves at most 3 tenants: {stats:?}"
    );
    assert!(stats.closed >= 3, "{stats:?}");
    assert!(stats.peak_open <= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_caches_follow_the_binding_when_schemas_differ_mid_rollout() {
    let (_db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_t.sql"),
        "CREATE TABLE t (id int, a text); INSERT INTO t VALUES (1, 'a');",
    )
    .unwrap();
    let v1 = TenantMigrations::from_dir(dir.path()).await.unwrap();
    let old = TenantManager::builder(pool.clone())
        .migrations(v1)
        .listen_for_changes(false)
        .build()
        .await
        .unwrap();
    for id in ["early", "late"] {
        old.create_tenant(NewTenant::new(id.parse().unwrap(), id))
            .await
            .unwrap();
    }
    std::fs::write(
        dir.path().join("0002_b.sql"),
        "ALTER TABLE t ADD COLUMN b text DEFAULT 'b';",
    )
    .unwrap();
    let v2 = TenantMigrations::from_dir(dir.path()).await.unwrap();
    let new = TenantManager::builder(pool.clone())
        .migrations(v2)
        .listen_for_changes(false)
        .pool_config(PoolConfig {
            max_connections: Some(1),
            ..PoolConfig::default()
        })
        .build()
        .await
        .unwrap();
    // Half rolled out: `early` has column b, `late` does not yet.
    new.migrate_tenant(&"early".parse().unwrap()).await.unwrap();
    for round in 0..3 {
        for (id, columns) in [("early", 3), ("late", 2)] {
            let tenant = new.resolve_tenant(&id.parse().unwrap()).await.unwrap();
            let mut db = new.tenant_db(tenant).await.unwrap();
            // The same statement text on the same (only) connection, one prepared statement.
            let row = sqlx::query("SELECT * FROM t").fetch_one(&mut db).await;
            let row = row.unwrap_or_else(|e| panic!("{id} round {round}: {e}"));
            assert_eq!(sqlx::Row::len(&row), columns, "{id}");
        }
    }
    assert_eq!(new.pool_stats().opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_held_across_suspension_is_refused_and_deletion_waits_for_it() {
    let (_db, manager) = manager(PoolConfig {
        acquire_timeout: Duration::from_millis(300),
        ..PoolConfig::default()
    })
    .await;
    create(&manager, "lingering").await;
    let id: tenantry::TenantId = "lingering".parse().unwrap();
    let tenant = manager.resolve_tenant(&id).await.unwrap();
    // A long request (or a background job) holds its handle and has used it.
    let mut held = manager.tenant_db(tenant).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut held)
        .await
        .unwrap();
    assert_eq!(n, 0);
    manager.suspend_tenant(&id).await.unwrap();
    // Its next statement is refused: the tenant changed under it.
    let refused = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projects")
        .fetch_one(&mut held)
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert_eq!(refused.status(), 403, "{refused}");
    // Deleting waits for it, and deletes nothing while it is still held.
    let busy = manager.delete_tenant(&id).await.unwrap_err();
    assert_eq!(busy.status(), 409, "{busy}");
    assert!(manager.find_tenant(&id).await.unwrap().is_some());
    drop(held);
    tokio::time::sleep(Duration::from_millis(50)).await;
    manager.delete_tenant(&id).await.unwrap();
    assert!(manager.find_tenant(&id).await.unwrap().is_none());
}
