//! Behind a transaction pooler (a real PgBouncer 1.18 in transaction mode, started by
//! the test): session settings follow the pooler's server connection, so the session
//! binding would mix tenants and tenantry refuses to start with it; the transaction
//! binding (`SET LOCAL` per transaction, no named prepared statements) keeps tenants
//! apart with fewer server connections than clients.

mod common;

use axum::http::Method;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use tenantry::testing::{PgBouncer, TestDatabase};
use tenantry::{Binding, Error, PoolConfig, Strategy, TenantDb, TenantLayer, TenantManager};

fn bouncer(db: &TestDatabase, pool_size: u32) -> PgBouncer {
    PgBouncer::start(&db.connect_options(), &["postgres"], pool_size)
        .expect("a PgBouncer (install the `pgbouncer` package)")
}

async fn pooled_manager(pool_size: u32) -> (TestDatabase, PgBouncer, TenantManager) {
    let (db, pool) = database().await;
    saas::prepare_database(&pool).await.unwrap();
    let bouncer = bouncer(&db, pool_size);
    let manager = saas_builder(&db, pool)
        .tenant_connections(bouncer.options(&db.connect_options()))
        .pool_config(PoolConfig {
            binding: Binding::Transaction,
            max_connections: Some(12),
            ..saas::pool_config()
        })
        .build()
        .await
        .expect("the transaction binding starts behind PgBouncer");
    (db, bouncer, manager)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PgBouncer (Debian package `pgbouncer`): cargo test -- --ignored; .ci/run runs it"]
async fn session_settings_behind_a_transaction_pooler_reach_other_clients() {
    if !pgbouncer_or_skip("session_settings_behind_a_transaction_pooler_reach_other_clients") {
        return;
    }
    let (db, pool) = database().await;
    saas::prepare_database(&pool).await.unwrap();
    // One server connection behind the pooler, two clients.
    let bouncer = bouncer(&db, 1);
    let options = bouncer.options(&db.connect_options());
    let mut acme = PgConnection::connect_with(&options).await.unwrap();
    let mut globex = PgConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql("SET search_path TO tenant_acme; SET tenantry.tenant_id TO 'acme'")
        .execute(&mut acme)
        .await
        .unwrap();
    let row = sqlx::raw_sql(
        "SELECT current_setting('search_path'), current_setting('tenantry.tenant_id', true)",
    )
    .fetch_one(&mut globex)
    .await
    .unwrap();
    let (path, setting): (String, String) = (row.get(0), row.get(1));
    assert_eq!(
        (path.as_str(), setting.as_str()),
        ("tenant_acme", "acme"),
        "another client got acme's session: this is why the session binding is refused here"
    );
    let _ = acme.close().await;
    let _ = globex.close().await;

    // tenantry refuses the session binding there, and a registry pool behind it.
    let refused = TenantManager::builder(pool.clone())
        .tenant_connections(options.clone())
        .build()
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Validation(_)), "{refused}");
    assert!(
        refused.to_string().contains("Binding::Transaction"),
        "{refused}"
    );
    let pooled_registry = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let refused = TenantManager::builder(pooled_registry)
        .pool_config(PoolConfig {
            binding: Binding::Transaction,
            ..PoolConfig::default()
        })
        .build()
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("direct"), "{refused}");
}

/// A handler that changes the pooler's server session (not transaction-local).
async fn mess(mut db: TenantDb) -> Result<Json<&'static str>, Error> {
    sqlx::raw_sql(
        "SET search_path TO tenant_victim; SET tenantry.tenant_id TO 'victim'; SET ROLE NONE",
    )
    .execute(&mut db)
    .await?;
    Ok(Json("messed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PgBouncer (Debian package `pgbouncer`): cargo test -- --ignored; .ci/run runs it"]
async fn the_transaction_binding_keeps_tenants_apart_behind_pgbouncer() {
    if !pgbouncer_or_skip("the_transaction_binding_keeps_tenants_apart_behind_pgbouncer") {
        return;
    }
    // Two server connections for 24 concurrent clients and 8 tenants.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let (_db, _bouncer, manager) = pooled_manager(2).await;
    let tenants: Vec<(String, Strategy)> = (0..8)
        .map(|i| {
            let strategy = if i % 2 == 0 {
                Strategy::Schema
            } else {
                Strategy::Row
            };
            (format!("pb{i}"), strategy)
        })
        .collect();
    for (id, strategy) in &tenants {
        create_with(&manager, id, *strategy).await;
    }
    create(&manager, "victim").await;
    let app = saas_app(&manager).merge(
        Router::new()
            .route("/test/mess", post(mess))
            .layer(TenantLayer::new(manager.clone())),
    );
    let calls = (0..240).map(|n| {
        let app = app.clone();
        let (tenant, _) = tenants[n % tenants.len()].clone();
        tokio::spawn(async move {
            // Every fifth request leaves session settings on the pooler's connection.
            if n % 5 == 0 {
                let r = send(
                    &app,
                    Method::POST,
                    "/test/mess",
                    &[("x-tenant-id", &tenant)],
                    None,
                )
                .await;
                assert_eq!(r.status, 200, "{r:?}");
            }
            let (path, body) = if n % 2 == 0 {
                ("/api/v1/projects", json!({"name": format!("{tenant}:{n}")}))
            } else {
                ("/api/v1/data", json!({"value": format!("{tenant}:{n}")}))
            };
            let r = send(
                &app,
                Method::POST,
                path,
                &[("x-tenant-id", &tenant)],
                Some(body),
            )
            .await;
            assert_eq!(r.status, 201, "{tenant} {n}: {r:?}");
            // Reads in between, while other requests mess with the pooler's server
            // connections, see only the tenant's rows.
            let r = Client::tenant(&app, &tenant)
                .get("/api/v1/projects?limit=500")
                .await;
            assert_eq!(r.status, 200, "{tenant} {n}: {r:?}");
            for p in r.json.as_array().unwrap() {
                let name = p["name"].as_str().unwrap();
                assert!(
                    name.starts_with(&format!("{tenant}:")),
                    "{tenant} read {name}"
                );
            }
        })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap();
    }
    for (i, (tenant, _)) in tenants.iter().enumerate() {
        let projects = Client::tenant(&app, tenant)
            .get("/api/v1/projects?limit=500")
            .await;
        let data = Client::tenant(&app, tenant).get("/api/v1/data").await;
        let mut seen: Vec<String> = projects
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .chain(
                data.json["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["value"].as_str().unwrap().to_owned()),
            )
            .collect();
        seen.sort();
        let mut expected: Vec<String> = (0..240)
            .filter(|n| n % tenants.len() == i)
            .map(|n| format!("{tenant}:{n}"))
            .collect();
        expected.sort();
        assert_eq!(seen, expected, "{tenant} reads exactly its own rows");
    }
    let victim = Client::tenant(&app, "victim").get("/api/v1/projects").await;
    assert_eq!(
        victim.json,
        json!([]),
        "nothing landed in the schema the handlers pointed at"
    );
    // The 240 requests ran concurrently through several client connections (more
    // than the pooler's 2 server connections), within the budget of 12.
    let stats = manager.pool_stats();
    assert!(
        (3..=12).contains(&stats.peak_open),
        "client connections at once: {stats:?}"
    );
}

/// With the transaction binding (what runs behind a pooler) the tenant's name is set per
/// transaction too.
#[tokio::test]
async fn the_transaction_binding_names_the_tenant_for_the_server() {
    let (_db, manager) = manager(PoolConfig {
        binding: tenantry::Binding::Transaction,
        ..PoolConfig::default()
    })
    .await;
    create(&manager, "acme").await;
    let acme = manager
        .resolve_tenant(&"acme".parse().unwrap())
        .await
        .unwrap();
    let mut db = manager.tenant_db(acme).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(name, "tenantry:acme");
}
