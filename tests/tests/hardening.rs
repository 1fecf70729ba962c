//! Found by attacking the running quick start (hardening issue). Each test fails
//! without its fix.

mod common;

use axum::http::Method;
use common::*;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tenantry::PoolConfig;

/// A failed database-tenant creation never drops a database it did not create: a
/// database of the tenant's name made by someone else (another app's registry on the
/// same server, or by hand) is a 409, and it keeps its data.
#[tokio::test]
async fn creating_a_tenant_over_someone_elses_database_is_409_and_touches_nothing() {
    let (db, manager) = manager(PoolConfig::default()).await;
    let app = saas_app(&manager);
    let (k, v) = admin();
    let name = format!("{}zaud_acme", database_prefix(&db));
    let pool = manager.service().repository().pool();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(pool)
        .await
        .unwrap();
    let other = db.connect_options().database(&name);
    let mut conn = PgConnection::connect_with(&other).await.unwrap();
    sqlx::raw_sql("CREATE TABLE precious (v text); INSERT INTO precious VALUES ('still here')")
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;

    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &[(k, v.as_str())],
        Some(json!({"id": "zaud-acme", "name": "Acme", "strategy": "database"})),
    )
    .await;
    r.assert_problem(409);
    assert!(r.json["detail"].as_str().unwrap().contains("already exists"), "{r:?}");
    // The other database and its rows are untouched, and no tenant was registered.
    let mut conn = PgConnection::connect_with(&other).await.unwrap();
    let kept: String = sqlx::query_scalar("SELECT v FROM precious")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, "still here");
    let _ = conn.close().await;
    let r = send(&app, Method::GET, "/api/v1/tenants/zaud-acme", &[(k, v.as_str())], None).await;
    r.assert_problem(404);

    // Once the owner removes it, the id can be created.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\"")))
        .execute(pool)
        .await
        .unwrap();
    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &[(k, v.as_str())],
        Some(json!({"id": "zaud-acme", "name": "Acme", "strategy": "database"})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
}

/// The same for a schema of the tenant's name made by someone else.
#[tokio::test]
async fn creating_a_tenant_over_someone_elses_schema_is_409_and_touches_nothing() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let app = saas_app(&manager);
    let (k, v) = admin();
    let pool = manager.service().repository().pool();
    sqlx::raw_sql(
        "CREATE SCHEMA tenant_handmade;
         CREATE TABLE tenant_handmade.precious (v text);
         INSERT INTO tenant_handmade.precious VALUES ('still here');",
    )
    .execute(pool)
    .await
    .unwrap();
    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &[(k, v.as_str())],
        Some(json!({"id": "handmade", "name": "Handmade"})),
    )
    .await;
    r.assert_problem(409);
    let kept: String = sqlx::query_scalar("SELECT v FROM tenant_handmade.precious")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(kept, "still here");
    let r = send(&app, Method::GET, "/api/v1/tenants/handmade", &[(k, v.as_str())], None).await;
    r.assert_problem(404);
}
