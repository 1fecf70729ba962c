//! What a connection carries from one request to the next is decided by the server,
//! not by the text of the statements that ran on it.
//!
//! Two tenants share one connection (a budget of 1; behind PgBouncer, one server
//! connection). A handler of one runs SQL that leaves session state behind in ways no
//! statement-text rule sees (a function's temporary table, `set_config` inside a
//! function, a `SET` after a nested comment, `UPDATE pg_settings`, sequence state, a
//! session advisory lock and a `LISTEN` taken in a function, a hold cursor, a
//! prepared statement, `RESET ROLE`); the next request, of the other tenant or the
//! same one, must find the binding the pool believes in and nothing else. Every case
//! runs for schema and row tenants, in the session binding and the transaction
//! binding (behind a real PgBouncer in transaction mode).

mod common;

use std::time::Duration;

use axum::Router;
use axum::extract::Json;
use axum::routing::post;
use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tenantry::testing::{PgBouncer, TestDatabase};
use tenantry::{Binding, PoolConfig, Strategy, TenantDb, TenantLayer, TenantManager, TenantTx};

#[derive(Deserialize)]
struct Sql {
    sql: Vec<String>,
    /// Simple protocol (`raw_sql`, several statements allowed) instead of prepared.
    #[serde(default)]
    simple: bool,
}

/// The first column of each row as text (`null` where it is not text).
fn first_column(rows: &[sqlx::postgres::PgRow]) -> Value {
    rows.iter()
        .map(|r| {
            r.try_get::<Option<String>, _>(0)
                .ok()
                .flatten()
                .map_or(Value::Null, Value::String)
        })
        .collect()
}

/// Runs the request's statements through `&mut db`, one after the other; answers the
/// rows of the last one, or the first error.
async fn run(mut db: TenantDb, Json(req): Json<Sql>) -> Json<Value> {
    let mut last = Value::Null;
    for sql in req.sql {
        let rows = if req.simple {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut db)
                .await
        } else {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut db)
                .await
        };
        match rows {
            Ok(rows) => last = first_column(&rows),
            Err(e) => return Json(json!({ "error": e.to_string() })),
        }
    }
    Json(json!({ "rows": last }))
}

/// The same in a `TenantTx`, committed at the end.
async fn run_tx(mut tx: TenantTx, Json(req): Json<Sql>) -> Json<Value> {
    let mut last = Value::Null;
    for sql in req.sql {
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut tx)
            .await
        {
            Ok(rows) => last = first_column(&rows),
            Err(e) => return Json(json!({ "error": e.to_string() })),
        }
    }
    if let Err(e) = tx.commit().await {
        return Json(json!({ "error": e.to_string() }));
    }
    Json(json!({ "rows": last }))
}

/// The functions the handlers call: ordinary tenant code that changes the session
/// where the caller's statement cannot show it. `{s}` is the schema they live in (a
/// schema tenant's own, or the row tenants' shared one).
const FUNCTIONS: &str = r#"
CREATE FUNCTION {s}.report() RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS scratch (name text);
    INSERT INTO scratch SELECT name FROM projects;
    RETURN QUERY SELECT name FROM scratch ORDER BY name;
END $$;
CREATE FUNCTION {s}.use_path(p text, t text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('search_path', p, false), set_config('tenantry.tenant_id', t, false);
    RETURN 'switched';
END $$;
CREATE FUNCTION {s}.grab() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_lock(4242);
    EXECUTE 'LISTEN tenant_news';
    RETURN 'grabbed';
END $$;
"#;

struct Env {
    db: TestDatabase,
    _bouncer: Option<PgBouncer>,
    admin: PgPool,
    manager: TenantManager,
    app: Router,
    /// Two (or more) tenants of one strategy sharing one connection.
    tenants: Vec<&'static str>,
    strategy: Strategy,
    binding: Binding,
}

async fn env(strategy: Strategy, binding: Binding) -> Env {
    let (db, admin) = database().await;
    saas::prepare_database(&admin).await.unwrap();
    let mut bouncer = None;
    let mut builder = saas_builder(&db, admin.clone());
    if binding == Binding::Transaction {
        // One server connection behind the pooler: every transaction of every
        // tenant runs on it.
        let b = PgBouncer::start(&db.connect_options(), &["postgres"], 1)
            .expect("a PgBouncer (install the `pgbouncer` package)");
        builder = builder.tenant_connections(b.options(&db.connect_options()));
        bouncer = Some(b);
    }
    let manager = builder
        .pool_config(PoolConfig {
            max_connections: Some(1),
            binding,
            ..saas::pool_config()
        })
        .build()
        .await
        .expect("build the manager");
    let tenants = match strategy {
        Strategy::Row => vec!["rowa", "rowb", "rowc"],
        _ => vec!["alpha", "bravo", "charlie"],
    };
    for id in &tenants {
        create_with(&manager, id, strategy).await;
    }
    match strategy {
        Strategy::Row => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(FUNCTIONS.replace("{s}", "shared")))
                .execute(&admin)
                .await
                .unwrap();
        }
        _ => {
            for id in &tenants {
                let schema = format!("tenant_{id}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(FUNCTIONS.replace("{s}", &schema)))
                    .execute(&admin)
                    .await
                    .unwrap();
            }
        }
    }
    let app = saas_app(&manager).merge(
        Router::new()
            .route("/test/sql", post(run))
            .route("/test/sql-tx", post(run_tx))
            .layer(TenantLayer::new(manager.clone())),
    );
    let env = Env {
        db,
        _bouncer: bouncer,
        admin,
        manager,
        app,
        tenants,
        strategy,
        binding,
    };
    for id in env.tenants.clone() {
        let r = Client::tenant(&env.app, id)
            .post("/api/v1/projects", json!({ "name": format!("{id}'s own") }))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    env
}

impl Env {
    fn label(&self) -> String {
        format!("{:?} tenants, {:?} binding", self.strategy, self.binding)
    }

    async fn call(&self, tenant: &str, path: &str, sql: &[&str], simple: bool) -> Value {
        let r = Client::tenant(&self.app, tenant)
            .post(path, json!({ "sql": sql, "simple": simple }))
            .await;
        assert_eq!(r.status, 200, "{}: {r:?}", self.label());
        r.json
    }

    /// Runs `sql` as `tenant`'s handler (prepared statements).
    async fn sql(&self, tenant: &str, sql: &str) -> Value {
        self.call(tenant, "/test/sql", &[sql], false).await
    }

    /// Runs `sql` as `tenant`'s handler (simple protocol).
    async fn simple(&self, tenant: &str, sql: &str) -> Value {
        self.call(tenant, "/test/sql", &[sql], true).await
    }

    /// Asserts that every tenant reads exactly its own projects, through the entity
    /// API and through its own SQL.
    async fn everyone_reads_their_own(&self, after: &str) {
        for id in &self.tenants {
            let mine = format!("{id}'s own");
            let rows = self
                .sql(id, "SELECT name FROM projects ORDER BY name")
                .await;
            assert_eq!(
                rows,
                json!({ "rows": [mine] }),
                "{}: after {after}, {id} read through its own SQL",
                self.label()
            );
            let r = Client::tenant(&self.app, id).get("/api/v1/projects").await;
            let names: Vec<&str> = r
                .json
                .as_array()
                .unwrap_or_else(|| panic!("{r:?}"))
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                names,
                [mine.as_str()],
                "{}: after {after}, {id} read through the entity API",
                self.label()
            );
        }
    }

    /// The search path a schema tenant's handler could switch to, and the tenant
    /// setting a row tenant's could: `victim`'s. (No `pg_temp` in it: the old text
    /// rule happened to flag any statement containing `temp`.)
    fn victim_path(&self, victim: &str) -> String {
        match self.strategy {
            Strategy::Row => "shared".to_owned(),
            _ => format!("\"tenant_{victim}\""),
        }
    }
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

// The cases: each leaves something on the shared connection, then checks that
// nobody finds it.

async fn temporary_table_through_a_function(env: &Env) {
    let (a, b) = (env.tenants[0], env.tenants[1]);
    // A function's temporary table, filled with the caller's rows.
    for (first, next) in [(a, b), (a, a)] {
        assert_eq!(
            env.sql(first, "SELECT report()").await,
            json!({ "rows": [format!("{first}'s own")] })
        );
        let report = env.sql(next, "SELECT report()").await;
        assert_eq!(
            report,
            json!({ "rows": [format!("{next}'s own")] }),
            "{}: {next}'s report after {first}'s (a temporary table through a function)",
            env.label()
        );
    }
    env.everyone_reads_their_own("temporary_table_through_a_function")
        .await;
}

async fn path_and_setting_through_a_function(env: &Env) {
    let (a, b) = (env.tenants[0], env.tenants[1]);
    // The path and the tenant setting, switched by a function.
    let r = env
        .sql(
            a,
            &format!(
                "SELECT use_path('{}', '{b}')",
                env.victim_path(b).replace('\'', "''")
            ),
        )
        .await;
    assert_eq!(r, json!({ "rows": ["switched"] }), "{}", env.label());
    env.everyone_reads_their_own("path_and_setting_through_a_function")
        .await;
}

async fn statements_no_text_rule_reads_right(env: &Env) {
    let (a, b) = (env.tenants[0], env.tenants[1]);
    // What no statement-text rule reads right.
    let switch = match env.strategy {
        Strategy::Row => format!("SET tenantry.tenant_id TO '{b}'"),
        _ => format!("SET search_path TO \"tenant_{b}\""),
    };
    for sql in [
        format!("/* /* */ select */ {switch}"),
        format!(
            "UPDATE pg_settings SET setting = '{}' WHERE name = 'search_path'",
            env.victim_path(b).replace('\'', "''")
        ),
        format!("SELECT U&\"set\\005fconfig\"('tenantry.tenant_id', '{b}', false)"),
    ] {
        let r = env.sql(a, &sql).await;
        assert!(r.get("rows").is_some(), "{}: {sql}: {r}", env.label());
        env.everyone_reads_their_own(&sql).await;
    }
    env.everyone_reads_their_own("statements_no_text_rule_reads_right")
        .await;
}

async fn sequence_state_of_another_tenant(env: &Env) {
    let (a, b) = (env.tenants[0], env.tenants[1]);
    // Sequence state: another tenant's insert, through its own SQL and the entity API.
    let r = env
        .sql(
            a,
            "INSERT INTO projects (name) VALUES ('counted') RETURNING id::text",
        )
        .await;
    assert!(r["rows"][0].is_string(), "{r}");
    let r = env.sql(b, "SELECT lastval()::text").await;
    assert!(
        error_of(&r).contains("lastval is not yet defined"),
        "{}: {b} read lastval after {a}'s insert: {r}",
        env.label()
    );
    let r = env
        .sql(a, "DELETE FROM projects WHERE name = 'counted'")
        .await;
    assert!(r.get("rows").is_some(), "{r}");
    let created = Client::tenant(&env.app, a)
        .post("/api/v1/projects", json!({ "name": "counted" }))
        .await;
    assert_eq!(created.status, 201);
    let r = env.sql(b, "SELECT currval('projects_id_seq')::text").await;
    assert!(
        error_of(&r).contains("is not yet defined in this session"),
        "{}: {b} read currval after {a}'s entity insert: {r}",
        env.label()
    );
    // Nor the same tenant's next request, after an entity insert.
    let created = Client::tenant(&env.app, a)
        .post("/api/v1/projects", json!({ "name": "counted again" }))
        .await;
    assert_eq!(created.status, 201);
    let r = env.sql(a, "SELECT lastval()::text").await;
    assert!(
        error_of(&r).contains("lastval is not yet defined"),
        "{}: {a}'s next request read the sequence state of its previous one: {r}",
        env.label()
    );
    let r = env
        .sql(a, "DELETE FROM projects WHERE name = 'counted again'")
        .await;
    assert!(r.get("rows").is_some(), "{r}");
    let r = env
        .sql(a, "DELETE FROM projects WHERE name = 'counted'")
        .await;
    assert!(r.get("rows").is_some(), "{r}");
    env.everyone_reads_their_own("sequence_state_of_another_tenant")
        .await;
}

async fn advisory_lock_and_listen_in_a_function(env: &Env) {
    let (a, b) = (env.tenants[0], env.tenants[1]);
    // A session advisory lock and a LISTEN, taken inside a function.
    let r = env.sql(a, "SELECT grab()").await;
    assert_eq!(r, json!({ "rows": ["grabbed"] }), "{}", env.label());
    let r = env
        .sql(
            b,
            "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid())::text || ',' || \
             (SELECT count(*) FROM pg_listening_channels())::text",
        )
        .await;
    assert_eq!(
        r,
        json!({ "rows": ["0,0"] }),
        "{}: {b}'s session",
        env.label()
    );
    let r = env.sql(a, "SELECT grab()").await;
    assert_eq!(r, json!({ "rows": ["grabbed"] }));
    // Idle afterwards, the lock does not outlive its request for long.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4242)")
        .fetch_one(&env.admin)
        .await
        .unwrap();
    assert!(
        free,
        "{}: a's advisory lock is still held by the idle connection",
        env.label()
    );
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&env.admin)
        .await
        .unwrap();
    env.everyone_reads_their_own("advisory_lock_and_listen_in_a_function")
        .await;
}

async fn hold_cursor_and_prepared_statement(env: &Env) {
    let (a, b) = (env.tenants[0], env.tenants[1]);
    // A hold cursor and a prepared statement, over the caller's rows.
    let r = env
        .simple(
            a,
            "DECLARE leftover_cursor CURSOR WITH HOLD FOR SELECT name FROM projects",
        )
        .await;
    assert!(r.get("rows").is_some(), "{}: {r}", env.label());
    let r = env.simple(b, "FETCH ALL FROM leftover_cursor").await;
    assert!(
        error_of(&r).contains("does not exist"),
        "{}: {b} fetched {a}'s cursor: {r}",
        env.label()
    );
    let r = env
        .simple(a, "PREPARE leftover AS SELECT name FROM projects")
        .await;
    assert!(r.get("rows").is_some(), "{}: {r}", env.label());
    for next in [b, a] {
        let r = env.simple(next, "EXECUTE leftover").await;
        assert!(
            error_of(&r).contains("does not exist"),
            "{}: {next} executed {a}'s prepared statement: {r}",
            env.label()
        );
    }
    env.everyone_reads_their_own("hold_cursor_and_prepared_statement")
        .await;
}

async fn settings_and_role(env: &Env) {
    let (a, b) = (env.tenants[0], env.tenants[1]);
    // Settings and role.
    // The random generator's seed (which RESET ALL keeps).
    let seeded: String = sqlx::raw_sql("SELECT setseed(0.5); SELECT random()::text")
        .fetch_all(&env.admin)
        .await
        .unwrap()
        .last()
        .map(|row| row.get(0))
        .unwrap();
    let r = env.sql(a, "SELECT setseed(0.5)::text").await;
    assert!(r.get("rows").is_some(), "{r}");
    let r = env.sql(b, "SELECT random()::text").await;
    assert_ne!(
        r,
        json!({ "rows": [seeded] }),
        "{}: {b} drew {a}'s seeded random number",
        env.label()
    );
    let r = env
        .simple(a, "SET work_mem = '7MB'; SET statement_timeout = 4321")
        .await;
    assert!(r.get("rows").is_some(), "{r}");
    for next in [a, b] {
        let r = env
            .sql(
                next,
                "SELECT current_setting('work_mem') || ',' || current_setting('statement_timeout')",
            )
            .await;
        assert_eq!(r, json!({ "rows": ["4MB,0"] }), "{}: {next}", env.label());
    }
    if env.strategy == Strategy::Row {
        let r = env.simple(a, "RESET ROLE").await;
        assert!(r.get("rows").is_some(), "{r}");
        for next in [a, b] {
            let r = env.sql(next, "SELECT current_user::text").await;
            assert_eq!(
                r,
                json!({ "rows": [saas::ROW_ROLE] }),
                "{}: {next} after RESET ROLE",
                env.label()
            );
        }
        env.everyone_reads_their_own("RESET ROLE").await;
    }
    env.everyone_reads_their_own("settings_and_role").await;
}

async fn a_handlers_commit_inside_the_transaction(env: &Env) {
    let a = env.tenants[0];
    // A handler's own COMMIT inside tenantry's transaction: the statements after it
    // still run bound to their tenant.
    let r = env
        .call(
            a,
            "/test/sql-tx",
            &["COMMIT", "SELECT string_agg(name, ',') FROM projects"],
            false,
        )
        .await;
    assert_eq!(
        r,
        json!({ "rows": [format!("{a}'s own")] }),
        "{}: after a handler's COMMIT",
        env.label()
    );
}

/// Each case on a fresh environment of each kind: schema and row tenants, session and
/// transaction binding.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn schema_session() {
                    let env = env(Strategy::Schema, Binding::Session).await;
                    env.everyone_reads_their_own("setup").await;
                    super::$case(&env).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn row_session() {
                    let env = env(Strategy::Row, Binding::Session).await;
                    env.everyone_reads_their_own("setup").await;
                    super::$case(&env).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PgBouncer (Debian package `pgbouncer`): cargo test -- --ignored; .ci/run runs it"]
                async fn schema_pooler() {
                    if !pgbouncer_or_skip(concat!(stringify!($case), "::schema_pooler")) {
                        return;
                    }
                    let env = env(Strategy::Schema, Binding::Transaction).await;
                    env.everyone_reads_their_own("setup").await;
                    super::$case(&env).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PgBouncer (Debian package `pgbouncer`): cargo test -- --ignored; .ci/run runs it"]
                async fn row_pooler() {
                    if !pgbouncer_or_skip(concat!(stringify!($case), "::row_pooler")) {
                        return;
                    }
                    let env = env(Strategy::Row, Binding::Transaction).await;
                    env.everyone_reads_their_own("setup").await;
                    super::$case(&env).await;
                }
            }
        )*
    };
}

cases!(
    temporary_table_through_a_function,
    path_and_setting_through_a_function,
    statements_no_text_rule_reads_right,
    sequence_state_of_another_tenant,
    advisory_lock_and_listen_in_a_function,
    hold_cursor_and_prepared_statement,
    settings_and_role,
    a_handlers_commit_inside_the_transaction,
);

/// Random sequences of session-changing statements across three tenants on one
/// connection; every read is checked against the reader's own rows.
async fn random_sequences(env: &Env, seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    for step in 0..steps {
        let me = env.tenants[rng.random_range(0..env.tenants.len())];
        let other = env.tenants[rng.random_range(0..env.tenants.len())];
        let mine = format!("{me}'s own");
        let other_path = env.victim_path(other).replace('\'', "''");
        let (sql, simple, check): (String, bool, &str) = match rng.random_range(0..12) {
            0 => ("SELECT report()".into(), false, "own"),
            1 => (
                format!("SELECT use_path('{other_path}', '{other}')"),
                false,
                "-",
            ),
            2 => (
                format!("/* /* */ select */ SET search_path TO \"tenant_{other}\""),
                false,
                "-",
            ),
            3 => (
                format!("SELECT set_config('tenantry.tenant_id', '{other}', false)"),
                false,
                "-",
            ),
            4 => ("SELECT grab()".into(), false, "-"),
            5 => (
                "DECLARE c CURSOR WITH HOLD FOR SELECT name FROM projects".into(),
                true,
                "-",
            ),
            6 => ("FETCH ALL FROM c".into(), true, "own-or-error"),
            7 => (
                "SELECT name FROM scratch ORDER BY name".into(),
                false,
                "own-or-error",
            ),
            8 => ("SELECT lastval()::text".into(), false, "error"),
            9 => ("RESET ROLE".into(), true, "-"),
            10 => ("BEGIN; SET LOCAL work_mem = '5MB'".into(), true, "-"),
            _ => (
                "SELECT name FROM projects ORDER BY name".into(),
                false,
                "own",
            ),
        };
        log.push(format!("{step}: {me}: {sql}"));
        let r = env.call(me, "/test/sql", &[&sql], simple).await;
        let rows = r["rows"].as_array();
        let only_mine = rows.is_some_and(|rows| rows.iter().all(|v| v.as_str() == Some(&mine)));
        let ok = match check {
            "own" => rows.is_some_and(|rows| rows.len() == 1) && only_mine,
            "own-or-error" => r.get("error").is_some() || only_mine,
            "error" => r.get("error").is_some(),
            _ => true,
        };
        assert!(
            ok,
            "{}: seed {seed}: step {step}: {me} got {r}\n{}",
            env.label(),
            log.join("\n")
        );
        // Reads after every step, by someone.
        let reader = env.tenants[rng.random_range(0..env.tenants.len())];
        let r = env
            .sql(reader, "SELECT name FROM projects ORDER BY name")
            .await;
        assert_eq!(
            r,
            json!({ "rows": [format!("{reader}'s own")] }),
            "{}: seed {seed}: read after step {step}\n{}",
            env.label(),
            log.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_of_session_changes_never_reach_another_request() {
    random_sequences_in(Binding::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PgBouncer (Debian package `pgbouncer`): cargo test -- --ignored; .ci/run runs it"]
async fn random_sequences_of_session_changes_never_reach_another_request_behind_pgbouncer() {
    if !pgbouncer_or_skip(
        "random_sequences_of_session_changes_never_reach_another_request_behind_pgbouncer",
    ) {
        return;
    }
    random_sequences_in(Binding::Transaction).await;
}

async fn random_sequences_in(binding: Binding) {
    for strategy in [Strategy::Schema, Strategy::Row] {
        let env = env(strategy, binding).await;
        for seed in 1..=3 {
            random_sequences(&env, seed, 60).await;
        }
        // The connection was shared all along, and cleaned by the server.
        let stats = env.manager.pool_stats();
        assert!(stats.opened <= 2, "{}: {stats:?}", env.label());
        drop(env.db);
    }
}

/// A plain client sees the function tenantry binds with, and what it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_bind_discards_everything_and_binds_in_one_call() {
    let (db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "alpha").await;
    let mut conn = PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TEMP TABLE t (x int); CREATE TEMP SEQUENCE s; SELECT nextval('s'); \
         SET work_mem = '9MB'; LISTEN x; SELECT pg_advisory_lock(1); \
         DECLARE c CURSOR WITH HOLD FOR SELECT 1; PREPARE p AS SELECT 1",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql(
        "SELECT tenantry.session_bind('\"tenant_alpha\", pg_temp', 'tenantry.tenant_id', '', \
         'none', 'tenantry:alpha', '1500', false, true)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let row = sqlx::raw_sql(
        "SELECT current_setting('search_path'), current_setting('work_mem'), \
         current_setting('statement_timeout'), current_setting('application_name'), \
         (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::text, \
         (SELECT count(*) FROM pg_listening_channels())::text, \
         (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::text, \
         (SELECT count(*) FROM pg_cursors)::text, \
         (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::text",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let got: Vec<String> = (0..9).map(|i| row.get::<String, _>(i)).collect();
    assert_eq!(
        got,
        [
            "\"tenant_alpha\", pg_temp",
            "4MB",
            "1500ms",
            "tenantry:alpha",
            "0",
            "0",
            "0",
            "0",
            "0"
        ]
    );
    let lastval = sqlx::raw_sql("SELECT lastval()").execute(&mut conn).await;
    assert!(lastval.is_err(), "sequence state survived");
    conn.close().await.unwrap();
}

/// Database tenants (no control schema in their databases: the discarding runs as
/// statements): a handler's own SQL again and again, on a budget smaller than the
/// tenants, leaves nothing behind and never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tenants_running_their_own_sql_reuse_their_connections() {
    let (db, admin) = database().await;
    saas::prepare_database(&admin).await.unwrap();
    let manager = saas_builder(&db, admin.clone())
        .pool_config(PoolConfig {
            max_connections: Some(2),
            ..saas::pool_config()
        })
        .build()
        .await
        .unwrap();
    for id in ["dba", "dbb", "dbc"] {
        create_with(&manager, id, Strategy::Database).await;
    }
    let app = saas_app(&manager).merge(
        Router::new()
            .route("/test/sql", post(run))
            .layer(TenantLayer::new(manager.clone())),
    );
    // Two of the three tenants in turn: each keeps its connection (budget 2).
    for i in 0..30 {
        let id = ["dba", "dbb"][i % 2];
        let sql = if (i / 2) % 2 == 0 {
            "CREATE TEMP TABLE IF NOT EXISTS leftover (x int); SELECT count(*)::text FROM leftover"
        } else {
            "SELECT current_setting('statement_timeout') || ',' || \
             (to_regclass('pg_temp.leftover') IS NULL)::text"
        };
        let r = Client::tenant(&app, id)
            .post("/test/sql", json!({ "sql": [sql], "simple": true }))
            .await;
        assert_eq!(r.status, 200, "{i}: {r:?}");
        assert!(r.json.get("rows").is_some(), "{i}: {id}: {}", r.json);
        if (i / 2) % 2 == 1 {
            assert_eq!(r.json["rows"], json!(["0,true"]), "{i}: {id}");
        }
    }
    let stats = manager.pool_stats();
    assert!(stats.opened <= 4, "connections churned: {stats:?}");
    assert!(stats.reset >= 20, "dirty connections cleaned: {stats:?}");
    // Each tenant twice in a row, the second request about when the first one's
    // connection is being cleaned in the background: the request waits for it, it
    // does not close the other tenant's connection to open one of its own.
    for i in 0..40 {
        let id = ["dba", "dbb"][(i / 2) % 2];
        let r = Client::tenant(&app, id).post("/test/sql", json!({ "sql": ["CREATE TEMP TABLE IF NOT EXISTS leftover (x int)"], "simple": true }))
        .await;
        assert_eq!(r.status, 200, "{i}: {r:?}");
        tokio::time::sleep(Duration::from_millis(16 + (i as u64 * 3) % 10)).await;
    }
    let after = manager.pool_stats();
    assert_eq!(
        after.opened, stats.opened,
        "a request for a connection being cleaned opened another: {after:?}"
    );
    for id in ["dba", "dbb", "dbc"] {
        manager.delete_tenant(&id.parse().unwrap()).await.ok();
    }
}
