//! The database strategy: a database per tenant, created from a template database,
//! on the registry's server or on another one; routing, isolation and deletion
//! across two servers.

mod common;

use common::*;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tenantry::testing::TestServer;
use tenantry::{NewTenant, PoolConfig, Strategy, TenantManager, TenantStatus};

/// Tenant databases with `prefix` on a server (not the template).
async fn databases(options: &PgConnectOptions, prefix: &str) -> Vec<String> {
    let mut conn = PgConnection::connect_with(options).await.unwrap();
    let names = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) AND datname <> $1 || '_template' ORDER BY 1",
    )
    .bind(prefix)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    names
}

#[tokio::test]
async fn database_tenants_on_two_servers() {
    let east = TestServer::start().expect("a second throwaway server");
    let east_options: PgConnectOptions = east.url().parse().unwrap();
    let (db, pool) = database().await;
    saas::prepare_database(&pool).await.unwrap();
    let manager = TenantManager::builder(pool.clone())
        .migrations(saas::tenant_migrations())
        .pool_config(saas::pool_config())
        .server("east", east_options.clone())
        .database_prefix(db.database_prefix())
        .build()
        .await
        .unwrap();
    let home: PgConnectOptions = db.url().parse().unwrap();
    let p = db.database_prefix();
    let here_db = format!("{p}here");

    let here = manager
        .create_tenant(
            NewTenant::new("here".parse().unwrap(), "Here").with_strategy(Strategy::Database),
        )
        .await
        .unwrap();
    assert_eq!(
        (here.strategy, here.server.as_str()),
        (Strategy::Database, "default")
    );
    let there = manager
        .create_tenant(
            NewTenant::new("there".parse().unwrap(), "There")
                .with_strategy(Strategy::Database)
                .on_server("east"),
        )
        .await
        .unwrap();
    assert_eq!(there.server, "east");
    create(&manager, "schemaful").await;
    create_with(&manager, "rowful", Strategy::Row).await;
    assert_eq!(here.storage, here_db);
    assert_eq!(databases(&home, &p).await, [here_db]);
    assert_eq!(
        databases(&east_options, &p).await,
        [format!("{p}there")],
        "placed on the other server"
    );

    // Through the saas routes: four tenants, three strategies, two servers.
    let app = saas_app(&manager);
    for tenant in ["here", "there", "schemaful", "rowful"] {
        let r = Client::tenant(&app, tenant)
            .post("/api/v1/projects", json!({"name": format!("{tenant}'s")}))
            .await;
        assert_eq!(r.status, 201, "{tenant}: {r:?}");
    }
    for tenant in ["here", "there", "schemaful", "rowful"] {
        let r = Client::tenant(&app, tenant).get("/api/v1/projects").await;
        let names: Vec<_> = r
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, [format!("{tenant}'s")], "{tenant}");
    }
    // The row really is on the east server, in the tenant's own database.
    let mut conn = PgConnection::connect_with(&east_options.clone().database(&format!("{p}there")))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let _ = conn.close().await;

    // Migrations reach database tenants on both servers, recorded in each database.
    let status = manager.migration_status().await.unwrap();
    assert_eq!(status.len(), 3, "schema and database tenants: {status:?}");
    assert!(
        status
            .iter()
            .all(|s| s.version == Some(2) && s.pending.is_empty())
    );

    // Unknown servers and misplaced strategies are refused.
    let err = manager
        .create_tenant(
            NewTenant::new("nowhere".parse().unwrap(), "N")
                .with_strategy(Strategy::Database)
                .on_server("mars"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    assert!(err.to_string().contains("unknown server"));
    let err = manager
        .create_tenant(NewTenant::new("odd".parse().unwrap(), "O").on_server("east"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        manager
            .find_tenant(&"nowhere".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Two-phase delete drops the database on the right server.
    let id = "there".parse().unwrap();
    assert!(manager.delete_tenant(&id).await.is_err());
    manager.suspend_tenant(&id).await.unwrap();
    let deleted = manager.delete_tenant(&id).await.unwrap();
    assert_eq!(deleted.status, TenantStatus::Deleted);
    assert!(databases(&east_options, &p).await.is_empty());
    Client::tenant(&app, "there")
        .get("/api/v1/projects")
        .await
        .assert_problem(404);
    assert_eq!(
        Client::tenant(&app, "here")
            .get("/api/v1/projects")
            .await
            .status,
        200
    );
    drop(manager);
    drop(east);
}

#[tokio::test]
async fn failed_database_provisioning_leaves_nothing() {
    let (db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_broken.sql"),
        "CREATE TABLE t (id int); SELECT * FROM no_such_table;",
    )
    .unwrap();
    let p = db.database_prefix();
    let broken = TenantManager::builder(pool.clone())
        .migrations(
            tenantry::TenantMigrations::from_dir(dir.path())
                .await
                .unwrap(),
        )
        .database_prefix(p.clone())
        .build()
        .await
        .unwrap();
    let err = broken
        .create_tenant(
            NewTenant::new("acme".parse().unwrap(), "A").with_strategy(Strategy::Database),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("migration 1"), "{err}");
    let home: PgConnectOptions = db.url().parse().unwrap();
    assert!(databases(&home, &p).await.is_empty());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantry.tenants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);

    // Fixed, the same id can be created.
    std::fs::write(
        dir.path().join("0001_broken.sql"),
        "CREATE TABLE t (id int);",
    )
    .unwrap();
    let fixed = TenantManager::builder(pool.clone())
        .migrations(
            tenantry::TenantMigrations::from_dir(dir.path())
                .await
                .unwrap(),
        )
        .pool_config(PoolConfig::default())
        .database_prefix(p.clone())
        .build()
        .await
        .unwrap();
    let t = fixed
        .create_tenant(
            NewTenant::new("acme".parse().unwrap(), "A").with_strategy(Strategy::Database),
        )
        .await
        .unwrap();
    assert_eq!(t.status, TenantStatus::Active);
    assert_eq!(databases(&home, &p).await, [format!("{p}acme")]);
    let mut tenant_db = fixed
        .tenant_db(fixed.resolve_tenant(&t.id).await.unwrap())
        .await
        .unwrap();
    let local: Vec<i64> = sqlx::query_scalar("SELECT version FROM _tenantry_migrations")
        .fetch_all(&mut tenant_db)
        .await
        .unwrap();
    assert_eq!(local, [1], "the database carries its own migration record");
    drop(tenant_db);
    fixed.suspend_tenant(&t.id).await.unwrap();
    fixed.delete_tenant(&t.id).await.unwrap();
    assert!(databases(&home, &p).await.is_empty());
}
