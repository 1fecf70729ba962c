//! Scale benchmark: many tenants, a random (or Zipf-skewed) tenant per request, over
//! HTTP, against two plain servers measured in the same run:
//!
//! - **plain**: axum + sqlx, one table, no tenancy (the limit), with
//!   `test_before_acquire(false)`: sqlx pings every connection it hands out by
//!   default, a round trip a tuned server does not pay. The default-ping server is
//!   reported too, as what a default sqlx app does;
//! - **naive**: axum + sqlx, a shared pool, `set_config('search_path', ..)` then the
//!   query on every request (django-tenants' pattern), also with and without the ping;
//! - **tenantry**: the `saas` quick start's router, unchanged, and a handler that runs
//!   its own `sqlx::query` through `&mut db` (the server-verified release).
//!
//! Every request is `GET /api/v1/projects/{id}` of one row. Servers are interleaved in
//! rounds; figures are medians over rounds and ratios are taken within each round.
//! Also reported: the most tenant connections the server saw at 128 clients (against
//! the budget), and the private memory of tenant backends after a run over every
//! schema tenant, with and without recycling.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! cargo run --release -p tenantry-benches --bin scale_bench -- \
//!     [--tenants 1000] [--zipf-tenants 10000] [--schema-zipf-tenants 0] [--rounds 3] \
//!     [--secs 3] [--concurrency 16] [--recycle N] [--statement-cache N] [--no-pooler] \
//!     [--only "random of schema|row tenants"]
//! ```
//!
//! `--only` keeps the three baselines and the cases whose name contains one of the
//! `|`-separated parts.
//!
//! `--schema-zipf-tenants N` (N > `--tenants`) provisions N schema tenants and adds
//! random and Zipf(1.1) cases over all of them. Ratios are against the tuned plain
//! server (`vs plain`), the tuned naive one (`vs naive`), and the default-ping plain
//! one (`vs default plain`). Also reported: registry lookups per second of the
//! tenantry server in each of its cases.
//!
//! Unless `--no-pooler` is given (or PgBouncer is missing), it also serves the quick
//! start through a PgBouncer in transaction mode with the transaction binding.
//!
//! Uses `DATABASE_URL` (a server with the default `max_connections` is what users run),
//! or else a throwaway PostgreSQL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tenantry::{NewTenant, PoolConfig, Strategy, TenantId, TenantManager};
use tenantry_benches::{arg, arg_text, median, serve, zipf_cdf, zipf_pick};

type Row = (i64, String, chrono::DateTime<chrono::Utc>);

#[derive(serde::Serialize)]
struct Project {
    id: i64,
    name: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

fn project((id, name, created_at): Row) -> Json<Project> {
    Json(Project {
        id,
        name,
        created_at,
    })
}

/// One table, no tenancy.
async fn plain(
    State(pool): State<PgPool>,
    Path(id): Path<i64>,
) -> Result<Json<Project>, tenantry::Error> {
    let row: Row = sqlx::query_as("SELECT id, name, created_at FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    Ok(project(row))
}

/// The SET-per-request pattern: set the search path, then query, on a shared pool.
async fn naive(
    State(pool): State<PgPool>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Project>, tenantry::Error> {
    let tenant: TenantId = headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .parse()?;
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(tenant.schema_name())
        .execute(&mut *conn)
        .await?;
    let row: Row = sqlx::query_as("SELECT id, name, created_at FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(project(row))
}

/// The tenantry server's handler that runs its own SQL through `&mut db`.
async fn own_sql(
    mut db: tenantry::TenantDb,
    Path(id): Path<i64>,
) -> Result<Json<Project>, tenantry::Error> {
    let row: Row = sqlx::query_as("SELECT id, name, created_at FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&mut db)
        .await?;
    Ok(project(row))
}

/// Which tenant each request names.
#[derive(Clone)]
enum Traffic {
    /// One of `n` (with the project id of each), uniformly at random.
    Uniform(Arc<Vec<(String, i64)>>),
    /// Zipf(s) over the tenants: the k-th most popular with weight 1/k^s.
    Zipf(Arc<Vec<(String, i64)>>, Arc<Vec<f64>>),
}

impl Traffic {
    fn zipf(tenants: Arc<Vec<(String, i64)>>, s: f64) -> Self {
        let cdf = zipf_cdf(tenants.len(), s);
        Traffic::Zipf(tenants, Arc::new(cdf))
    }

    fn pick(&self, rng: &mut StdRng) -> &(String, i64) {
        match self {
            Traffic::Uniform(t) => &t[rng.random_range(0..t.len())],
            Traffic::Zipf(t, cdf) => {
                let u: f64 = rng.random_range(0.0..1.0);
                let i = zipf_pick(cdf, u);
                &t[i]
            }
        }
    }
}

struct Figures {
    rps: f64,
    errors: usize,
}

async fn drive(
    addr: SocketAddr,
    path: &'static str,
    traffic: &Traffic,
    concurrency: usize,
    secs: f64,
) -> Figures {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let tasks = (0..concurrency).map(|c| {
        let client = client.clone();
        let traffic = traffic.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0x5ca1e + c as u64);
            let (mut ok, mut errors) = (0usize, 0usize);
            while Instant::now() < deadline {
                let (tenant, id) = traffic.pick(&mut rng);
                let request = hyper::Request::get(format!("http://{addr}{path}/{id}"))
                    .header("x-tenant-id", tenant.as_str())
                    .body(Empty::<Bytes>::new())
                    .expect("a valid request");
                match client.request(request).await {
                    Ok(response) => {
                        let success = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        if success {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (ok, errors)
        })
    });
    let (mut ok, mut errors) = (0, 0);
    for r in futures::future::join_all(tasks).await {
        let (o, e) = r.expect("a load task");
        ok += o;
        errors += e;
    }
    Figures {
        rps: ok as f64 / started.elapsed().as_secs_f64(),
        errors,
    }
}

/// Tenant connections the server has open now (`application_name` `tenantry` or `tenantry:<tenant>`).
async fn tenant_connections(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE (application_name = 'tenantry' OR application_name LIKE 'tenantry:%') AND datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(-1)
}

/// The private memory (RssAnon) of the largest tenant backend, in KB, when the server
/// runs on this machine.
async fn largest_backend_kb(pool: &PgPool) -> Option<u64> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE (application_name = 'tenantry' OR application_name LIKE 'tenantry:%') AND datname = current_database()",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    pids.iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find(|l| l.starts_with("RssAnon:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .max()
}

async fn manager(pool: &PgPool, config: PoolConfig) -> Result<TenantManager, tenantry::Error> {
    TenantManager::builder(pool.clone())
        .migrations(saas::tenant_migrations())
        .listen_for_changes(false)
        .pool_config(PoolConfig {
            row_schema: Some("shared".to_owned()),
            row_role: Some(saas::ROW_ROLE.to_owned()),
            ..config
        })
        .build()
        .await
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("scale_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let tenants = arg("--tenants", 1000)?;
    let zipf_tenants = arg("--zipf-tenants", 10_000)?.max(tenants);
    let schema_zipf = arg("--schema-zipf-tenants", 0)?;
    let schema_total = schema_zipf.max(tenants);
    let rounds = arg("--rounds", 3)?.max(1);
    let secs = arg("--secs", 3)?.max(1) as f64;
    let concurrency = arg("--concurrency", 16)?.max(1);
    let recycle = arg(
        "--recycle",
        PoolConfig::default().max_tenants_per_connection as usize,
    )?
    .clamp(1, u32::MAX as usize) as u32;
    let statement_cache = arg(
        "--statement-cache",
        PoolConfig::default().statement_cache_capacity,
    )?;
    let db = tenantry::testing::TestDatabase::create().await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(db.url())
        .await?;
    let tuned = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect(db.url())
        .await?;
    let admin = PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url())
        .await?;
    let server_max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&admin)
        .await?;
    saas::prepare_database(&admin).await?;

    // Tenants: `tenants` schema tenants and `zipf_tenants` row tenants, one project each.
    let setup = manager(&admin, PoolConfig::default()).await?;
    let started = Instant::now();
    let made: Vec<Result<_, tenantry::Error>> = futures::stream::iter(0..schema_total)
        .map(|i| {
            let m = setup.clone();
            async move {
                m.create_tenant(NewTenant::new(format!("s{i:05}").parse()?, "schema"))
                    .await
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for r in made {
        r?;
    }
    let schema_secs = started.elapsed().as_secs_f64();
    sqlx::raw_sql(
        // A commit every 500 schemas: one transaction over 10,000 tables would run
        // out of lock table.
        "DO $$ DECLARE s text; n int := 0; BEGIN
           FOR s IN SELECT schema_name FROM tenantry.tenants WHERE strategy = 'schema' LOOP
             EXECUTE format('INSERT INTO %I.projects (name) VALUES (''project 1'')', s);
             n := n + 1;
             IF n % 500 = 0 THEN COMMIT; END IF;
           END LOOP; END $$",
    )
    .execute(&admin)
    .await?;
    let started = Instant::now();
    let made: Vec<Result<_, tenantry::Error>> = futures::stream::iter(0..zipf_tenants)
        .map(|i| {
            let m = setup.clone();
            async move {
                m.create_tenant(
                    NewTenant::new(format!("r{i:05}").parse()?, "row").with_strategy(Strategy::Row),
                )
                .await
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for r in made {
        r?;
    }
    let row_secs = started.elapsed().as_secs_f64();
    sqlx::raw_sql(
        "INSERT INTO shared.projects (tenant_id, name)
           SELECT id, 'project 1' FROM tenantry.tenants WHERE strategy = 'row' ORDER BY id;
         ANALYZE shared.projects;
         CREATE TABLE public.projects (id bigserial PRIMARY KEY, name text NOT NULL,
                                       created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO public.projects (name) VALUES ('project 1');",
    )
    .execute(&admin)
    .await?;
    let row_ids: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT tenant_id, id FROM shared.projects")
            .fetch_all(&admin)
            .await?
            .into_iter()
            .collect();
    drop(setup);
    eprintln!(
        "provisioned {schema_total} schema tenants in {schema_secs:.1} s, {zipf_tenants} row tenants in {row_secs:.1} s"
    );
    let schema: Arc<Vec<(String, i64)>> =
        Arc::new((0..tenants).map(|i| (format!("s{i:05}"), 1)).collect());
    let schema_all: Arc<Vec<(String, i64)>> =
        Arc::new((0..schema_total).map(|i| (format!("s{i:05}"), 1)).collect());
    let rows_all: Vec<(String, i64)> = (0..zipf_tenants)
        .map(|i| {
            let id = format!("r{i:05}");
            let project = row_ids[&id];
            (id, project)
        })
        .collect();
    let rows_uniform = Arc::new(rows_all[..tenants].to_vec());
    let rows_zipf = Arc::new(rows_all);
    let one: Arc<Vec<(String, i64)>> = Arc::new(vec![("s00000".to_owned(), 1)]);

    // The servers.
    let plain_addr = serve(
        Router::new()
            .route("/api/v1/projects/{id}", get(plain))
            .with_state(pool.clone()),
    )
    .await?;
    let naive_addr = serve(
        Router::new()
            .route("/api/v1/projects/{id}", get(naive))
            .with_state(pool.clone()),
    )
    .await?;
    let tuned_plain_addr = serve(
        Router::new()
            .route("/api/v1/projects/{id}", get(plain))
            .with_state(tuned.clone()),
    )
    .await?;
    let tuned_naive_addr = serve(
        Router::new()
            .route("/api/v1/projects/{id}", get(naive))
            .with_state(tuned.clone()),
    )
    .await?;
    let t_default = manager(
        &admin,
        PoolConfig {
            max_tenants_per_connection: recycle,
            statement_cache_capacity: statement_cache,
            ..PoolConfig::default()
        },
    )
    .await?;
    let t_eight = manager(
        &admin,
        PoolConfig {
            max_connections: Some(8),
            max_tenants_per_connection: recycle,
            statement_cache_capacity: statement_cache,
            ..PoolConfig::default()
        },
    )
    .await?;
    let t_addr = serve(
        saas::router(saas::AppState::new(t_default.clone(), "bench")).merge(
            Router::new()
                .route("/own/projects/{id}", get(own_sql))
                .layer(tenantry::TenantLayer::new(t_default.clone())),
        ),
    )
    .await?;
    let t8_addr = serve(saas::router(saas::AppState::new(t_eight.clone(), "bench"))).await?;
    // The transaction binding behind a real PgBouncer (transaction mode, 8 server
    // connections), unless `--no-pooler` or PgBouncer is not installed.
    let bouncer = if std::env::args().any(|a| a == "--no-pooler") {
        None
    } else {
        match tenantry::testing::PgBouncer::start(&db.connect_options(), &["postgres"], 8) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("scale_bench: no PgBouncer case ({e})");
                None
            }
        }
    };
    let t_pooled = match &bouncer {
        Some(b) => Some(
            TenantManager::builder(admin.clone())
                .migrations(saas::tenant_migrations())
                .listen_for_changes(false)
                .tenant_connections(b.options(&db.connect_options()))
                .pool_config(PoolConfig {
                    binding: tenantry::Binding::Transaction,
                    max_connections: Some(16),
                    row_schema: Some("shared".to_owned()),
                    row_role: Some(saas::ROW_ROLE.to_owned()),
                    ..PoolConfig::default()
                })
                .build()
                .await?,
        ),
        None => None,
    };
    let tp_addr = match &t_pooled {
        Some(m) => Some(serve(saas::router(saas::AppState::new(m.clone(), "bench"))).await?),
        None => None,
    };
    println!(
        "scale_bench: server max_connections {server_max}; tenantry budget {} (default) and 8, recycling after {recycle} tenants; plain and naive pools 8; {concurrency} clients, {rounds} rounds x {secs} s",
        t_default
            .pool_stats_by_server()
            .first()
            .map_or(0, |s| s.budget)
    );

    const API: &str = "/api/v1/projects";
    const OWN: &str = "/own/projects";
    // The first three are the baselines: tuned plain, tuned naive, default plain.
    let mut cases: Vec<(String, SocketAddr, &'static str, Traffic)> = vec![
        (
            "plain, one table, no ping (the limit)".into(),
            tuned_plain_addr,
            API,
            Traffic::Uniform(one.clone()),
        ),
        (
            "naive SET, no ping, random of schema tenants".into(),
            tuned_naive_addr,
            API,
            Traffic::Uniform(schema.clone()),
        ),
        (
            "plain, one table, sqlx default (ping)".into(),
            plain_addr,
            API,
            Traffic::Uniform(one.clone()),
        ),
        (
            "naive SET, sqlx default (ping), random of schema tenants".into(),
            naive_addr,
            API,
            Traffic::Uniform(schema.clone()),
        ),
        (
            "tenantry, random of schema tenants".into(),
            t_addr,
            API,
            Traffic::Uniform(schema.clone()),
        ),
        (
            "tenantry, own SQL through &mut db, random of schema tenants".into(),
            t_addr,
            OWN,
            Traffic::Uniform(schema.clone()),
        ),
        (
            "tenantry budget 8, random of schema tenants".into(),
            t8_addr,
            API,
            Traffic::Uniform(schema.clone()),
        ),
        (
            "tenantry, random of row tenants".into(),
            t_addr,
            API,
            Traffic::Uniform(rows_uniform.clone()),
        ),
        (
            "tenantry, Zipf(1.1) over row tenants".into(),
            t_addr,
            API,
            Traffic::zipf(rows_zipf.clone(), 1.1),
        ),
        (
            "tenantry, one schema tenant".into(),
            t_addr,
            API,
            Traffic::Uniform(one.clone()),
        ),
        (
            "tenantry, own SQL through &mut db, one schema tenant".into(),
            t_addr,
            OWN,
            Traffic::Uniform(one.clone()),
        ),
    ];
    if schema_total > tenants {
        cases.push((
            "tenantry, random of all schema tenants".into(),
            t_addr,
            API,
            Traffic::Uniform(schema_all.clone()),
        ));
        cases.push((
            "tenantry, Zipf(1.1) over schema tenants".into(),
            t_addr,
            API,
            Traffic::zipf(schema_all.clone(), 1.1),
        ));
        cases.push((
            "naive SET, no ping, random of all schema tenants".into(),
            tuned_naive_addr,
            API,
            Traffic::Uniform(schema_all.clone()),
        ));
    }
    if let Some(addr) = tp_addr {
        cases.push((
            "tenantry behind PgBouncer (transaction binding), random of schema tenants".into(),
            addr,
            API,
            Traffic::Uniform(schema.clone()),
        ));
        cases.push((
            "tenantry behind PgBouncer (transaction binding), random of row tenants".into(),
            addr,
            API,
            Traffic::Uniform(rows_uniform.clone()),
        ));
    }
    // `--only a,b`: the baselines and the cases whose name contains one of them.
    if let Some(only) = arg_text("--only") {
        let wanted: Vec<&str> = only.split('|').filter(|w| !w.is_empty()).collect();
        let mut k = 0;
        cases.retain(|(name, ..)| {
            k += 1;
            k <= 3 || wanted.iter().any(|w| name.contains(w))
        });
    }
    // Warm-up: caches of every server and a pass over the tenants.
    for (_, addr, path, traffic) in &cases {
        drive(*addr, path, traffic, concurrency, 1.0).await;
    }
    let mut rps = vec![Vec::new(); cases.len()];
    let mut lookups = vec![Vec::new(); cases.len()];
    let mut errors = vec![0; cases.len()];
    for round in 0..rounds {
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let before = t_default.registry_lookups();
            let started = Instant::now();
            let f = drive(cases[i].1, cases[i].2, &cases[i].3, concurrency, secs).await;
            let per_sec =
                (t_default.registry_lookups() - before) as f64 / started.elapsed().as_secs_f64();
            rps[i].push(f.rps);
            lookups[i].push(per_sec);
            errors[i] += f.errors;
        }
    }
    let ratio =
        |i: usize, base: usize| median(rps[i].iter().zip(&rps[base]).map(|(a, b)| a / b).collect());
    println!();
    println!(
        "| case | tenants | requests/s (median) | errors | vs plain | vs naive | vs default plain | registry lookups/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (name, addr, _, traffic)) in cases.iter().enumerate() {
        let n = match traffic {
            Traffic::Uniform(t) | Traffic::Zipf(t, _) => t.len(),
        };
        let lookups = if *addr == t_addr {
            format!("{:.0}", median(lookups[i].clone()))
        } else {
            "-".to_owned()
        };
        println!(
            "| {name} | {n} | {:.0} | {} | {:.2}x | {:.2}x | {:.2}x | {lookups} |",
            median(rps[i].clone()),
            errors[i],
            ratio(i, 0),
            ratio(i, 1),
            ratio(i, 2)
        );
    }
    let stats = t_default.pool_stats();
    println!();
    println!(
        "tenantry (default budget): {} connections opened, {} rebinds, {} reused bound, {} binding-free, {} resets, peak open {}",
        stats.opened, stats.rebound, stats.reused, stats.binding_free, stats.reset, stats.peak_open
    );

    // 128 clients against the default budget: the server's view of tenant connections
    // (the other manager's connections closed first, so that only this one's count).
    t_eight.admin().close_idle_connections().await;
    // PgBouncer's server connections carry the same application_name: stop it first.
    if let Some(m) = &t_pooled {
        m.admin().close_idle_connections().await;
    }
    drop(t_pooled);
    drop(bouncer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (stop, peak, admin) = (stop.clone(), peak.clone(), admin.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(tenant_connections(&admin).await, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let f = drive(
        t_addr,
        API,
        &Traffic::Uniform(schema.clone()),
        128,
        secs * 2.0,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    sampler.await?;
    println!(
        "128 clients, random of {tenants} schema tenants: {:.0} requests/s, {} errors, peak tenant connections seen by the server {}, by the pool {} (budget {})",
        f.rps,
        f.errors,
        peak.load(Ordering::SeqCst),
        t_default.pool_stats().peak_open,
        t_default
            .pool_stats_by_server()
            .first()
            .map_or(0, |s| s.budget)
    );

    // Backend memory after a pass over every schema tenant, recycling on and off.
    for (label, recycle) in [
        ("recycle after 100 tenants", 100),
        ("no recycling", u32::MAX),
    ] {
        t_default.admin().close_idle_connections().await;
        t_eight.admin().close_idle_connections().await;
        let m = manager(
            &admin,
            PoolConfig {
                max_connections: Some(4),
                max_tenants_per_connection: recycle,
                ..PoolConfig::default()
            },
        )
        .await?;
        let addr = serve(saas::router(saas::AppState::new(m.clone(), "bench"))).await?;
        let list: Vec<(String, i64)> = schema.iter().cloned().collect();
        let traffic = Traffic::Uniform(Arc::new(list));
        drive(addr, API, &traffic, 4, secs * 2.0).await;
        let kb = largest_backend_kb(&admin).await;
        println!(
            "backend private memory after a run over {tenants} schema tenants, 4 connections, {label}: largest {} ({} connections opened)",
            kb.map_or("n/a (server not on this machine)".to_owned(), |kb| format!(
                "{:.1} MB",
                kb as f64 / 1024.0
            )),
            m.pool_stats().opened
        );
        m.admin().close_idle_connections().await;
    }
    Ok(())
}
