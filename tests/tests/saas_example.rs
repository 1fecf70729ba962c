//! The `saas` example, route by route: the seed's FastAPI example plus projects.

mod common;

use axum::http::Method;
use common::*;
use serde_json::json;
use tenantry::PoolConfig;

#[tokio::test]
async fn tenants_admin_routes() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let app = saas_app(&manager);
    let (k, v) = admin();
    let auth = [(k, v.as_str())];

    let created = send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &auth,
        Some(json!({"id": "acme", "name": "Acme", "domain": "acme.example.com"})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json["id"], "acme");
    assert_eq!(created.json["name"], "Acme");
    assert_eq!(created.json["domain"], "acme.example.com");
    assert_eq!(created.json["status"], "active");

    let duplicate = send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &auth,
        Some(json!({"id": "acme", "name": "Again"})),
    )
    .await;
    duplicate.assert_problem(409);

    for bad in [
        json!({"id": "Not Valid", "name": "X"}),
        json!({"id": "ok", "name": ""}),
        json!({"id": "ok"}),
        json!({"id": "ok", "name": "X", "domain": "Bad Domain"}),
        json!({"id": "ok", "name": "X", "unknown": 1}),
        json!([1, 2]),
    ] {
        let reply = send(
            &app,
            Method::POST,
            "/api/v1/tenants",
            &auth,
            Some(bad.clone()),
        )
        .await;
        assert!(
            reply.status == 400 || reply.status == 422,
            "{bad}: {reply:?}"
        );
        assert_eq!(reply.content_type(), "application/problem+json", "{bad}");
    }
    assert!(
        manager
            .find_tenant(&"ok".parse().unwrap())
            .await
            .unwrap()
            .is_none(),
        "a rejected request created nothing"
    );

    let got = send(&app, Method::GET, "/api/v1/tenants/acme", &auth, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json["name"], "Acme");
    send(&app, Method::GET, "/api/v1/tenants/nobody", &auth, None)
        .await
        .assert_problem(404);
    send(&app, Method::GET, "/api/v1/tenants/NOT_AN_ID", &auth, None)
        .await
        .assert_problem(400);

    let listed = send(&app, Method::GET, "/api/v1/tenants", &auth, None).await;
    assert_eq!(listed.json.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn admin_routes_need_the_token() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let app = saas_app(&manager);
    let body = Some(json!({"id": "acme", "name": "Acme"}));
    send(&app, Method::POST, "/api/v1/tenants", &[], body.clone())
        .await
        .assert_problem(401);
    send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &[("authorization", "Bearer wrong")],
        body,
    )
    .await
    .assert_problem(401);
    Client::anyone(&app)
        .get("/api/v1/tenants/acme")
        .await
        .assert_problem(401);
    assert!(manager.list_tenants().await.unwrap().is_empty());
}

#[tokio::test]
async fn current_tenant_is_null_without_header() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    let app = saas_app(&manager);

    let none = Client::anyone(&app).get("/api/v1/current-tenant").await;
    assert_eq!(none.status, 200);
    assert_eq!(none.json, json!({"tenant": null}));

    let some = Client::tenant(&app, "acme")
        .get("/api/v1/current-tenant")
        .await;
    assert_eq!(some.status, 200);
    assert_eq!(some.json["tenant"]["id"], "acme");
    assert_eq!(some.json["tenant"]["name"], "Tenant acme");

    Client::tenant(&app, "ghost")
        .get("/api/v1/current-tenant")
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn projects_belong_to_their_tenant() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    create(&manager, "globex").await;
    let app = saas_app(&manager);
    let acme = [("x-tenant-id", "acme")];
    let globex = [("x-tenant-id", "globex")];

    let mut acme_ids = Vec::new();
    for name in ["apollo", "gemini", "mercury"] {
        let r = send(
            &app,
            Method::POST,
            "/api/v1/projects",
            &acme,
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.json["name"], name);
        acme_ids.push(r.json["id"].as_i64().unwrap());
    }
    let g = send(
        &app,
        Method::POST,
        "/api/v1/projects",
        &globex,
        Some(json!({"name": "hal"})),
    )
    .await;
    assert_eq!(g.status, 201);

    let listed = send(&app, Method::GET, "/api/v1/projects", &acme, None).await;
    let names: Vec<_> = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![json!("apollo"), json!("gemini"), json!("mercury")]
    );
    let listed = send(&app, Method::GET, "/api/v1/projects", &globex, None).await;
    assert_eq!(listed.json, json!([{"id": g.json["id"], "name": "hal"}]));

    // acme's third project does not exist for globex (whose only project has id 1).
    let third = format!("/api/v1/projects/{}", acme_ids[2]);
    assert_eq!(
        send(&app, Method::GET, &third, &acme, None).await.status,
        200
    );
    send(&app, Method::GET, &third, &globex, None)
        .await
        .assert_problem(404);
    send(&app, Method::DELETE, &third, &globex, None)
        .await
        .assert_problem(404);
    assert_eq!(
        send(&app, Method::GET, &third, &acme, None).await.status,
        200,
        "globex's delete touched nothing"
    );

    let deleted = send(&app, Method::DELETE, &third, &acme, None).await;
    assert_eq!(deleted.status, 204);
    send(&app, Method::GET, &third, &acme, None)
        .await
        .assert_problem(404);
    send(&app, Method::DELETE, &third, &acme, None)
        .await
        .assert_problem(404);

    send(
        &app,
        Method::POST,
        "/api/v1/projects",
        &acme,
        Some(json!({"name": ""})),
    )
    .await
    .assert_problem(400);
    let r = send(
        &app,
        Method::POST,
        "/api/v1/projects",
        &acme,
        Some(json!({"nom": "x"})),
    )
    .await;
    assert!(r.status == 400 || r.status == 422);
    send(&app, Method::GET, "/api/v1/projects/abc", &acme, None)
        .await
        .assert_problem(400);
    Client::anyone(&app)
        .get("/api/v1/projects")
        .await
        .assert_problem(400);
}

#[tokio::test]
async fn data_endpoint_returns_this_tenants_rows() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    create(&manager, "globex").await;
    let app = saas_app(&manager);
    for (tenant, value) in [("acme", "a1"), ("globex", "g1"), ("acme", "a2")] {
        let r = Client::tenant(&app, tenant)
            .post("/api/v1/data", json!({"value": value}))
            .await;
        assert_eq!(r.status, 201);
    }
    let acme = Client::tenant(&app, "acme").get("/api/v1/data").await;
    let values: Vec<_> = acme.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(values, vec![json!("a1"), json!("a2")]);
    let globex = Client::tenant(&app, "globex").get("/api/v1/data").await;
    assert_eq!(globex.json["data"].as_array().unwrap().len(), 1);
    assert_eq!(globex.json["data"][0]["value"], "g1");
}

#[tokio::test]
async fn row_tenants_through_the_same_routes() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let app = saas_app(&manager);
    let (k, v) = admin();
    let auth = [(k, v.as_str())];
    for (id, strategy) in [("rowa", "row"), ("rowb", "row"), ("schemac", "schema")] {
        let r = send(
            &app,
            Method::POST,
            "/api/v1/tenants",
            &auth,
            Some(json!({"id": id, "name": id, "strategy": strategy})),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.json["strategy"], strategy);
    }
    let r = send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        &auth,
        Some(json!({"id": "x", "name": "x", "strategy": "sharded"})),
    )
    .await;
    assert!(r.status == 400 || r.status == 422, "{r:?}");
    assert_eq!(r.content_type(), "application/problem+json");

    let mut ids = Vec::new();
    for tenant in ["rowa", "rowb", "schemac"] {
        let r = Client::tenant(&app, tenant)
            .post(
                "/api/v1/projects",
                json!({"name": format!("{tenant} project")}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        ids.push(r.json["id"].as_i64().unwrap());
    }
    for (i, tenant) in ["rowa", "rowb", "schemac"].iter().enumerate() {
        let listed = Client::tenant(&app, tenant).get("/api/v1/projects").await;
        assert_eq!(
            listed.json,
            json!([{"id": ids[i], "name": format!("{tenant} project")}])
        );
    }
    // rowb's project id is invisible to rowa (the shared table's ids are global).
    let uri = format!("/api/v1/projects/{}", ids[1]);
    Client::tenant(&app, "rowa")
        .get(&uri)
        .await
        .assert_problem(404);
    Client::tenant(&app, "rowa")
        .delete(&uri)
        .await
        .assert_problem(404);
    assert_eq!(Client::tenant(&app, "rowb").get(&uri).await.status, 200);
}

#[tokio::test]
async fn prepare_database_works_for_an_app_user_that_is_not_a_superuser() {
    let (db, pool) = database().await;
    let digits = db.tag();
    let user = format!("saas_app_{digits}");
    // An administrator created the row role earlier; the app user may not grant it.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE saas_row_tenant NOLOGIN NOBYPASSRLS;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         CREATE ROLE {user} LOGIN;
         GRANT CREATE ON DATABASE \"{}\" TO {user};",
        db.name()
    )))
    .execute(&pool)
    .await
    .unwrap();
    let app = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.connect_options().username(&user))
        .await
        .unwrap();
    saas::prepare_database(&app)
        .await
        .expect("prepared without superuser rights");
    let missing: Vec<String> = {
        let mut conn = pool.acquire().await.unwrap();
        tenantry::strategy::tables_missing_rls(&mut conn, "tenantry")
            .await
            .unwrap()
    };
    assert!(missing.is_empty(), "{missing:?}");
    app.close().await;
}
