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
    let name = format!("{}zaud_acme", db.database_prefix());
    let pool = manager.admin().registry_pool();
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

    let r = Client::admin(&app)
        .post(
            "/api/v1/tenants",
            json!({"id": "zaud-acme", "name": "Acme", "strategy": "database"}),
        )
        .await;
    r.assert_problem(409);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{r:?}"
    );
    // The other database and its rows are untouched, and no tenant was registered.
    let mut conn = PgConnection::connect_with(&other).await.unwrap();
    let kept: String = sqlx::query_scalar("SELECT v FROM precious")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, "still here");
    let _ = conn.close().await;
    let r = Client::admin(&app).get("/api/v1/tenants/zaud-acme").await;
    r.assert_problem(404);

    // Once the owner removes it, the id can be created.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\"")))
        .execute(pool)
        .await
        .unwrap();
    let r = Client::admin(&app)
        .post(
            "/api/v1/tenants",
            json!({"id": "zaud-acme", "name": "Acme", "strategy": "database"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
}

/// The same for a schema of the tenant's name made by someone else.
#[tokio::test]
async fn creating_a_tenant_over_someone_elses_schema_is_409_and_touches_nothing() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let app = saas_app(&manager);
    let pool = manager.admin().registry_pool();
    sqlx::raw_sql(
        "CREATE SCHEMA tenant_handmade;
         CREATE TABLE tenant_handmade.precious (v text);
         INSERT INTO tenant_handmade.precious VALUES ('still here');",
    )
    .execute(pool)
    .await
    .unwrap();
    let r = Client::admin(&app)
        .post(
            "/api/v1/tenants",
            json!({"id": "handmade", "name": "Handmade"}),
        )
        .await;
    r.assert_problem(409);
    let kept: String = sqlx::query_scalar("SELECT v FROM tenant_handmade.precious")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(kept, "still here");
    let r = Client::admin(&app).get("/api/v1/tenants/handmade").await;
    r.assert_problem(404);
}

/// Database errors caused by the request's data are 4xx with a problem detail that
/// names the constraint or column, never SQL text; the handler's own bugs stay 500.
#[tokio::test]
async fn data_errors_are_4xx_by_sqlstate_and_the_tenant_keeps_working() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "nul").await;
    create_with(&manager, "nulrow", tenantry::Strategy::Row).await;
    let app = saas_app(&manager);
    for tenant in ["nul", "nulrow"] {
        let h = Client::tenant(&app, tenant);
        let r = h.post("/api/v1/projects", json!({"name": "a\u{0}b"})).await;
        r.assert_problem(422);
        let detail = r.json["detail"].as_str().unwrap();
        assert!(detail.contains("NUL"), "{r:?}");
        assert!(
            !detail.to_lowercase().contains("insert"),
            "no SQL text: {r:?}"
        );
        let r = h.post("/api/v1/data", json!({"value": "x\u{0}"})).await;
        r.assert_problem(422);
        let r = h.post("/api/v1/projects", json!({"name": "fine"})).await;
        assert_eq!(r.status, 201, "{r:?}");
        let r = h.get("/api/v1/projects").await;
        assert_eq!(r.json.as_array().unwrap().len(), 1, "{r:?}");
    }

    // Constraints, through a handler's own SQL.
    sqlx::raw_sql(
        "CREATE TABLE tenant_nul.things (
             id int PRIMARY KEY,
             parent int REFERENCES tenant_nul.things (id),
             n int NOT NULL CONSTRAINT n_positive CHECK (n > 0));
         INSERT INTO tenant_nul.things VALUES (1, NULL, 1);",
    )
    .execute(manager.admin().registry_pool())
    .await
    .unwrap();
    async fn run(
        mut db: tenantry::TenantDb,
        axum::extract::Path(case): axum::extract::Path<String>,
    ) -> Result<axum::Json<&'static str>, tenantry::Error> {
        let sql = match case.as_str() {
            "unique" => "INSERT INTO things VALUES (1, NULL, 1)",
            "not-null" => "INSERT INTO things VALUES (2, NULL, NULL)",
            "check" => "INSERT INTO things VALUES (3, NULL, -1)",
            "foreign-key" => "INSERT INTO things VALUES (4, 999, 1)",
            "out-of-range" => "INSERT INTO things VALUES (2147483648, NULL, 1)",
            _ => "SELECT 1 / 0",
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut db)
            .await?;
        Ok(axum::Json("ran"))
    }
    let app = axum::Router::new()
        .route("/test/{case}", axum::routing::post(run))
        .layer(tenantry::TenantLayer::new(manager.clone()));
    for (case, status, names) in [
        ("unique", 409, "things_pkey"),
        ("not-null", 422, "column `n`"),
        ("check", 422, "n_positive"),
        ("foreign-key", 409, "things_parent_fkey"),
        ("out-of-range", 422, "out of range"),
        ("division-by-zero", 500, "internal error"),
    ] {
        let r = send(
            &app,
            Method::POST,
            &format!("/test/{case}"),
            &[("x-tenant-id", "nul")],
            None,
        )
        .await;
        r.assert_problem(status);
        let detail = r.json["detail"].as_str().unwrap();
        assert!(detail.contains(names), "{case}: {r:?}");
        assert!(
            !detail.contains("INSERT") && !detail.contains("SELECT"),
            "{case}: {r:?}"
        );
    }
}

/// Every response of the quick start is problem+json: unknown routes 404, wrong
/// methods 405, matched before a tenant is demanded.
#[tokio::test]
async fn unknown_routes_and_methods_are_problems_before_any_tenant_check() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "known").await;
    let app = saas_app(&manager);
    let (k, v) = admin();
    for headers in [
        vec![],
        vec![("x-tenant-id", "known")],
        vec![("x-tenant-id", "nobody")],
    ] {
        let r = send(&app, Method::GET, "/api/v1/nope", &headers, None).await;
        r.assert_problem(404);
        let r = send(&app, Method::DELETE, "/api/v1/data", &headers, None).await;
        r.assert_problem(405);
        assert!(r.headers.contains_key("allow"), "{r:?}");
    }
    let r = send(
        &app,
        Method::PUT,
        "/api/v1/tenants",
        &[(k, v.as_str())],
        None,
    )
    .await;
    r.assert_problem(405);
    // A known route still demands its tenant.
    let r = Client::anyone(&app).get("/api/v1/projects").await;
    r.assert_problem(400);
    let r = Client::tenant(&app, "known").get("/api/v1/projects").await;
    assert_eq!(r.status, 200);
}

/// Slow clients: a client that never finishes its headers is disconnected after the
/// header-read timeout; one that never finishes its body gets 408 (problem details)
/// after the request timeout; everybody else is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_are_cut_and_stalled_bodies_get_408() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "patient").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeouts = saas::Timeouts {
        header_read: Duration::from_millis(300),
        request: Duration::from_millis(500),
        ..saas::Timeouts::default()
    };
    tokio::spawn(saas::serve(
        listener,
        saas_app(&manager),
        timeouts,
        std::future::pending(),
    ));

    // Half-sent headers: the server closes the connection.
    let started = Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /api/v1/projects HTTP/1.1\r\nHost: localhost\r\nx-tenant-id: pat")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was closed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Half-sent body: 408 with a problem body.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /api/v1/projects HTTP/1.1\r\nHost: localhost\r\nx-tenant-id: patient\r\n\
          content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"name\":",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");

    // A normal client is served, and nothing of the stalled write was stored.
    let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
    ok.write_all(
        b"GET /api/v1/projects HTTP/1.1\r\nHost: localhost\r\nx-tenant-id: patient\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    ok.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("[]"), "{text}");
}

/// A flood of made-up tenant ids does not drive the registry: they are answered from
/// the set of known ids, which still learns new tenants at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_ids_costs_no_registry_queries() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "real").await;
    let app = saas_app(&manager);
    let r = Client::tenant(&app, "real").get("/api/v1/projects").await;
    assert_eq!(r.status, 200);
    let before = manager.registry_lookups();
    for i in 0..2000 {
        let id = format!("made-up-{i}");
        let r = send(
            &app,
            Method::GET,
            "/api/v1/projects",
            &[("x-tenant-id", &id)],
            None,
        )
        .await;
        r.assert_problem(404);
    }
    let spent = manager.registry_lookups() - before;
    assert!(
        spent <= 2,
        "2,000 unknown ids cost {spent} registry queries"
    );
    // A tenant created now is served at once, and the real one still is.
    create(&manager, "made-up-7").await;
    let r = Client::tenant(&app, "made-up-7")
        .get("/api/v1/projects")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = Client::tenant(&app, "real").get("/api/v1/projects").await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Tenant domains are host names: IP literals, `localhost` and ports are refused (422),
/// case and a trailing dot are normalised. Two `Host` headers are a 400, and an
/// absolute-form target's authority wins over `Host`.
#[tokio::test]
async fn hosts_are_host_names_and_requests_name_one_host() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let app = saas_app(&manager);
    let auth = Client::admin(&app);
    for (i, bad) in [
        "127.0.0.1",
        "10.1.2.3",
        "localhost",
        "shop.localhost",
        "acme.example.com:8080",
        "[::1]",
    ]
    .iter()
    .enumerate()
    {
        let body = json!({"id": format!("bad{i}"), "name": "Bad", "domain": bad});
        let r = auth.post("/api/v1/tenants", body).await;
        r.assert_problem(422);
    }
    let body = json!({"id": "s1", "name": "S1", "domain": "Shop.Example.COM."});
    let r = auth.post("/api/v1/tenants", body).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["domain"], "shop.example.com");
    let r = auth
        .post("/api/v1/tenants", json!({"id": "s2", "name": "S2"}))
        .await;
    assert_eq!(r.status, 201);
    let r = Client::tenant(&app, "s2")
        .post("/api/v1/projects", json!({"name": "s2's"}))
        .await;
    assert_eq!(r.status, 201);
    let r = send(
        &app,
        Method::GET,
        "/api/v1/current-tenant",
        &[("host", "SHOP.example.com.")],
        None,
    )
    .await;
    assert_eq!(r.json["tenant"]["id"], "s1", "{r:?}");

    // Two Host headers: 400, whichever tenants they name and whatever the route.
    for (uri, extra) in [
        (
            "/api/v1/tenants",
            Some(("authorization", format!("Bearer {ADMIN_TOKEN}"))),
        ),
        ("/api/v1/projects", Some(("x-tenant-id", "s2".to_owned()))),
        ("/nowhere", None),
    ] {
        let mut request = axum::http::Request::get(uri)
            .header("host", "s1.localhost")
            .header("host", "s2.localhost");
        if let Some((k, v)) = extra {
            request = request.header(k, v);
        }
        let response = tower::ServiceExt::oneshot(
            app.clone(),
            request.body(axum::body::Body::empty()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 400, "{uri}");
    }
    let request = axum::http::Request::get("/api/v1/projects")
        .header("host", "s1.localhost")
        .header("host", "s2.localhost")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Absolute form: the target's authority names the tenant, not `Host`.
    let request = axum::http::Request::get("http://s2.localhost/api/v1/projects")
        .header("host", "s1.localhost")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("s2's"), "served s2");
}

/// With user tokens on, an unauthenticated request gets the same 401 whatever tenant
/// it names (unknown, existing, suspended), before any registry lookup.
#[tokio::test]
async fn unauthenticated_requests_cannot_enumerate_tenants() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "exists").await;
    create(&manager, "resting").await;
    manager
        .suspend_tenant(&"resting".parse().unwrap())
        .await
        .unwrap();
    let tokens = saas::AppState::parse_user_tokens("tok-exists=exists").unwrap();
    let app =
        saas::router(saas::AppState::new(manager.clone(), ADMIN_TOKEN).with_user_tokens(tokens));
    let before = manager.registry_lookups();
    let mut bodies = Vec::new();
    for tenant in ["exists", "resting", "nobody", "made-up-1"] {
        for auth in [None, Some("Bearer wrong")] {
            let mut caller = Client::tenant(&app, tenant);
            if let Some(a) = auth {
                caller = caller.with("authorization", a);
            }
            let r = caller.get("/api/v1/projects").await;
            r.assert_problem(401);
            bodies.push(r.json["detail"].clone());
        }
    }
    assert_eq!(
        manager.registry_lookups(),
        before,
        "no lookup before authentication"
    );
    assert!(
        bodies.chunks(2).all(|c| c == &bodies[..2]),
        "the same answer for every tenant: {bodies:?}"
    );
    // An authenticated client still gets its tenant, and 403 for another.
    let r = send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[
            ("x-tenant-id", "exists"),
            ("authorization", "Bearer tok-exists"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[
            ("x-tenant-id", "resting"),
            ("authorization", "Bearer tok-exists"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 403);
}

/// Lists are paged without changing their body's shape: `?limit=N` (default 50, at
/// most 500) and a `Link: <...>; rel="next"` header with an opaque cursor. Stored
/// values are bounded.
#[tokio::test]
async fn lists_are_paged_and_values_bounded() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "pager").await;
    let app = saas_app(&manager);
    let h = Client::tenant(&app, "pager");
    for i in 0..120 {
        let r = h
            .post("/api/v1/projects", json!({"name": format!("p{i:03}")}))
            .await;
        assert_eq!(r.status, 201);
    }
    let mut seen = Vec::new();
    let mut next = Some("/api/v1/projects".to_owned());
    let mut pages = 0;
    while let Some(uri) = next.take() {
        let r = h.get(&uri).await;
        assert_eq!(r.status, 200, "{r:?}");
        let page = r.json.as_array().expect("still a JSON array");
        assert!(page.len() <= 50);
        seen.extend(page.iter().map(|p| p["name"].as_str().unwrap().to_owned()));
        pages += 1;
        next = r.headers.get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with("rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_owned()
        });
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..120).map(|i| format!("p{i:03}")).collect();
    assert_eq!(seen, expected, "every row once, in order");
    for bad in [
        "/api/v1/projects?limit=0",
        "/api/v1/projects?limit=-1",
        "/api/v1/projects?limit=x",
        "/api/v1/projects?after=zzz",
        "/api/v1/data?after=c",
    ] {
        let r = h.get(bad).await;
        r.assert_problem(400);
    }
    for i in 0..3 {
        let r = h
            .post("/api/v1/data", json!({"value": format!("v{i}")}))
            .await;
        assert_eq!(r.status, 201);
    }
    let r = h.get("/api/v1/data?limit=2").await;
    assert_eq!(r.json["data"].as_array().unwrap().len(), 2);
    assert!(r.headers.contains_key("link"));
    // Values: 64 KiB at most (422), bodies beyond axum's 2 MB limit 413.
    let r = h
        .post("/api/v1/data", json!({"value": "x".repeat(70_000)}))
        .await;
    r.assert_problem(422);
    let r = h
        .post("/api/v1/data", json!({"value": "x".repeat(3_000_000)}))
        .await;
    r.assert_problem(413);
    let r = h.get("/api/v1/data?limit=500").await;
    assert_eq!(
        r.json["data"].as_array().unwrap().len(),
        3,
        "nothing oversized was stored"
    );
}

/// Shared tables are keyed by `(tenant_id, id)`: a row tenant cannot learn from a key
/// conflict that another tenant's row exists, and the checker finds a key without
/// the tenant column.
#[tokio::test]
async fn shared_keys_include_the_tenant() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create_with(&manager, "keya", tenantry::Strategy::Row).await;
    create_with(&manager, "keyb", tenantry::Strategy::Row).await;
    for tenant in ["keya", "keyb"] {
        let t = manager
            .resolve_tenant(&tenant.parse().unwrap())
            .await
            .unwrap();
        let mut db = manager.tenant_db(t).await.unwrap();
        // The same explicit id in both tenants: no conflict, so nothing is revealed.
        sqlx::query("INSERT INTO projects (id, name) VALUES (4242, $1)")
            .bind(tenant)
            .execute(&mut db)
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e}"));
    }
    let pool = manager.admin().registry_pool();
    let mut conn = pool.acquire().await.unwrap();
    let missing = tenantry::strategy::shared_keys_without_tenant(&mut conn, "tenantry")
        .await
        .unwrap();
    assert!(
        missing.is_empty(),
        "the quick start's shared tables: {missing:?}"
    );
    sqlx::raw_sql("CREATE TABLE shared.badly_keyed (id int PRIMARY KEY, tenant_id text NOT NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let missing = tenantry::strategy::shared_keys_without_tenant(&mut conn, "tenantry")
        .await
        .unwrap();
    assert_eq!(
        missing,
        [(
            "shared.badly_keyed".to_owned(),
            "badly_keyed_pkey".to_owned()
        )]
    );
}

/// Row tenants and another application's tables on the same database: creating a row
/// tenant over rows someone left under its id is a 409, and deleting one touches only
/// tables under tenantry's policies.
#[tokio::test]
async fn row_tenants_leave_other_applications_rows_alone() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let pool = manager.admin().registry_pool();
    sqlx::raw_sql(
        "CREATE TABLE public.other_app (tenant_id text NOT NULL, v text NOT NULL);
         INSERT INTO public.other_app VALUES ('neighbour', 'theirs');",
    )
    .execute(pool)
    .await
    .unwrap();
    create_with(&manager, "neighbour", tenantry::Strategy::Row).await;
    let id: tenantry::TenantId = "neighbour".parse().unwrap();
    manager.suspend_tenant(&id).await.unwrap();
    manager.delete_tenant(&id).await.unwrap();
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.other_app WHERE tenant_id = 'neighbour'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(kept, 1, "another application's rows were not deleted");

    // Rows left in a tenantry table under an id: a new tenant of that id would inherit them.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('tenantry.tenant_id', 'squatter', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO shared.projects (tenant_id, name) VALUES ('squatter', 'left behind')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let err = manager
        .create_tenant(
            tenantry::NewTenant::new("squatter".parse().unwrap(), "S")
                .with_strategy(tenantry::Strategy::Row),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
    assert!(
        manager
            .find_tenant(&"squatter".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

/// Two applications with registries of their own on one server and the same database
/// prefix: the second never drops or rebuilds the first one's template database.
#[tokio::test]
async fn a_second_registry_never_rebuilds_another_registrys_template() {
    let (db_a, a) = manager(PoolConfig::default()).await;
    let prefix = db_a.database_prefix();
    create_with(&a, "first", tenantry::Strategy::Database).await;
    let (_db_b, pool_b) = database().await;
    let b = tenantry::TenantManager::builder(pool_b)
        .migrations(tenantry::TenantMigrations::empty())
        .database_prefix(prefix.clone())
        .build()
        .await
        .unwrap();
    let err = b
        .create_tenant(
            tenantry::NewTenant::new("second".parse().unwrap(), "S")
                .with_strategy(tenantry::Strategy::Database),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
    // The first application still makes tenants from its own, intact template.
    create_with(&a, "third", tenantry::Strategy::Database).await;
    let t = a.resolve_tenant(&"third".parse().unwrap()).await.unwrap();
    let mut db = a.tenant_db(t).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('projects', 'data')",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(tables, 2);
}

/// `{:?}` of a builder (in a startup log, a panic message) shows where the servers
/// are, never their passwords (sqlx's own `Debug` of connect options prints them).
#[tokio::test]
async fn debug_output_carries_no_password() {
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("db.example")
        .username("app")
        .password("hunter2-secret")
        .database("app");
    let pool = sqlx::PgPool::connect_lazy_with(options.clone());
    let builder = tenantry::TenantManager::builder(pool)
        .tenant_connections(options.clone())
        .server("eu", options)
        .pool_config(PoolConfig {
            row_password: Some("row-secret".to_owned()),
            ..PoolConfig::default()
        });
    let shown = format!("{builder:?}");
    assert!(shown.contains("app@db.example:5432/app"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("row-secret"), "{shown}");
}

/// The quick start keeps its tokens to itself: its state's `Debug` redacts them, and
/// the admin token is compared by digest (any length, no early exit).
#[tokio::test]
async fn the_quick_starts_tokens_stay_secret() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let tokens = saas::AppState::parse_user_tokens("user-sekrit=acme").unwrap();
    let state = saas::AppState::new(manager, "admin-sekrit").with_user_tokens(tokens);
    let shown = format!("{state:?}");
    assert!(!shown.contains("sekrit"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(saas::tokens_match("admin-sekrit", "admin-sekrit"));
    for wrong in [
        "",
        "admin",
        "admin-sekrit ",
        "admin-sekriT",
        "x".repeat(4096).as_str(),
    ] {
        assert!(!saas::tokens_match(wrong, "admin-sekrit"), "{wrong}");
    }
}

/// Unknown hosts cost nothing: 2,000 made-up hosts are answered from the set of
/// registered domains (one registry query per TTL), a host over 253 bytes is refused
/// before any lookup, and a domain added now is served at once.
#[tokio::test]
async fn a_flood_of_unknown_hosts_costs_no_registry_queries() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    manager
        .create_tenant(
            tenantry::NewTenant::new("real".parse().unwrap(), "Real")
                .with_domain("real.example.com"),
        )
        .await
        .unwrap();
    let app = saas_app(&manager);
    let r = send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("host", "real.example.com")],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let before = manager.registry_lookups();
    for i in 0..2000 {
        let host = format!("made-up-{i}.example.net");
        let r = send(
            &app,
            Method::GET,
            "/api/v1/projects",
            &[("host", &host)],
            None,
        )
        .await;
        assert_eq!(r.status.as_u16() / 100, 4, "{r:?}");
    }
    let long = format!("{}.example.net", "a".repeat(300));
    let r = send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("host", &long)],
        None,
    )
    .await;
    assert_eq!(r.status.as_u16() / 100, 4, "{r:?}");
    assert_eq!(manager.find_tenant_by_domain(&long).await.unwrap(), None);
    let spent = manager.registry_lookups() - before;
    assert!(
        spent <= 2,
        "2,000 unknown hosts cost {spent} registry queries"
    );
    // A domain added now is served at once.
    manager
        .add_tenant_domain(&"real".parse().unwrap(), "made-up-7.example.net", false)
        .await
        .unwrap();
    let r = send(
        &app,
        Method::GET,
        "/api/v1/projects",
        &[("host", "made-up-7.example.net")],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A client that reads a response too slowly is disconnected at the response-write
/// deadline (it never gets the whole body), a keep-alive connection idle past it is
/// still served, and past `max_connections` a connection waits unserved until another
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_cut_and_connections_are_bounded() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "big").await;
    // About 12 MiB of values: more than a page holds.
    let pool = manager.admin().registry_pool().clone();
    sqlx::query("INSERT INTO tenant_big.data (value) SELECT repeat('x', 60000) FROM generate_series(1, 200)")
        .execute(&pool)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeouts = saas::Timeouts {
        response_write: Duration::from_millis(1500),
        max_connections: 2,
        ..saas::Timeouts::default()
    };
    tokio::spawn(saas::serve(
        listener,
        saas_app(&manager),
        timeouts,
        std::future::pending(),
    ));
    let request = b"GET /api/v1/data?limit=500 HTTP/1.1\r\nHost: localhost\r\nx-tenant-id: big\r\nconnection: close\r\n\r\n";

    // A fast reader gets the page, capped at 1 MiB of rows, with the link to the rest.
    let mut fast = tokio::net::TcpStream::connect(addr).await.unwrap();
    fast.write_all(request).await.unwrap();
    let mut whole = Vec::new();
    fast.read_to_end(&mut whole).await.unwrap();
    let text = String::from_utf8_lossy(&whole);
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..200]);
    assert!(text.contains("rel=\"next\""), "{}", &text[..400]);
    assert!(
        (900_000..1_100_000).contains(&whole.len()),
        "a page of {} bytes",
        whole.len()
    );
    drop(fast);

    // A reader with a small receive window, reading 1 KiB per 100 ms (10 KiB/s: the
    // page would take 100 s), is cut at the deadline.
    let started = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(request).await.unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the slow reader was never cut ({got} bytes)"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(got < whole.len(), "the slow reader got all {got} bytes");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "cut after {:?}",
        started.elapsed()
    );

    // A keep-alive connection idle for longer than the deadline is still served.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    let small = b"GET /api/v1/current-tenant HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for _ in 0..2 {
        kept.write_all(small).await.unwrap();
        let mut head = [0u8; 12];
        kept.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        let mut rest = [0u8; 4096];
        let _ = kept.read(&mut rest).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1800)).await;
    }
    drop(kept);

    // Two idle connections fill the bound: a third is not served until one closes.
    let idle_a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _idle_b = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    third
        .write_all(
            b"GET /api/v1/current-tenant HTTP/1.1\r\nHost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut answer)).await;
    assert!(early.is_err() && answer.is_empty(), "served past the bound");
    drop(idle_a);
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}
