//! Request benchmark: the same `SELECT ... WHERE id = $1` handler, over the same HTTP
//! stack and the same data, (a) plain axum + sqlx with no tenancy, (b) scoped by
//! tenantry, (c) tenant resolution alone; plus the transaction variants, the same
//! handlers written with `#[tenant_scoped]`, and an empty handler. Variants are interleaved in rounds; the figures are medians over rounds.
//!
//! ```text
//! cargo run --release -p tenantry-benches --bin request_bench -- [--rounds 5] [--secs 2] [--concurrency 16] [--tenants 20] [--per-tenant 4]
//! ```
//!
//! Uses `DATABASE_URL`, or else a throwaway PostgreSQL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tenantry::{
    CurrentTenant, NewTenant, PoolConfig, TenantDb, TenantLayer, TenantManager, TenantTx,
};
use tenantry_benches::median;
use tenantry_benches::percentile;

const ROWS: i64 = 1000;

struct Args {
    rounds: usize,
    secs: u64,
    concurrency: usize,
    tenants: usize,
    per_tenant: u32,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 5,
        secs: 2,
        concurrency: 16,
        tenants: 20,
        per_tenant: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .map_err(|_| format!("{flag}: `{value}` is not a number"))?;
        match flag.as_str() {
            "--rounds" => a.rounds = n.max(1),
            "--secs" => a.secs = n.max(1) as u64,
            "--concurrency" => a.concurrency = n.max(1),
            "--tenants" => a.tenants = n.max(1),
            "--per-tenant" => a.per_tenant = n.clamp(1, 64) as u32,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

async fn plain(State(pool): State<PgPool>, Path(id): Path<i64>) -> Result<String, tenantry::Error> {
    let name: String = sqlx::query_scalar("SELECT name FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    Ok(name)
}

async fn plain_tx(
    State(pool): State<PgPool>,
    Path(id): Path<i64>,
) -> Result<String, tenantry::Error> {
    let mut tx = pool.begin().await?;
    let name: String = sqlx::query_scalar("SELECT name FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(name)
}

async fn scoped(mut db: TenantDb, Path(id): Path<i64>) -> Result<String, tenantry::Error> {
    let name: String = sqlx::query_scalar("SELECT name FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&mut db)
        .await?;
    Ok(name)
}

async fn scoped_tx(mut tx: TenantTx, Path(id): Path<i64>) -> Result<String, tenantry::Error> {
    let name: String = sqlx::query_scalar("SELECT name FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&mut tx)
        .await?;
    tx.commit().await?;
    Ok(name)
}

#[tenantry::tenant_scoped]
async fn scoped_macro(mut db: TenantDb, Path(id): Path<i64>) -> Result<String, tenantry::Error> {
    let name: String = sqlx::query_scalar("SELECT name FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&mut db)
        .await?;
    Ok(name)
}

#[tenantry::tenant_scoped(transaction)]
async fn scoped_tx_macro(mut tx: TenantTx, Path(id): Path<i64>) -> Result<String, tenantry::Error> {
    let name: String = sqlx::query_scalar("SELECT name FROM projects WHERE id = $1")
        .bind(id)
        .fetch_one(&mut tx)
        .await?;
    Ok(name)
}

async fn resolve_only(CurrentTenant(tenant): CurrentTenant, Path(_id): Path<i64>) -> String {
    tenant.name.clone()
}

async fn empty(Path(_id): Path<i64>) -> &'static str {
    "ok"
}

struct Figures {
    rps: f64,
    latencies: Vec<Duration>,
    errors: usize,
}

async fn drive(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    prefix: &str,
    tenant_prefix: &str,
    tenants: usize,
    concurrency: usize,
    secs: u64,
) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks = (0..concurrency).map(|c| {
        let client = client.clone();
        let prefix = prefix.to_owned();
        let tenant_prefix = tenant_prefix.to_owned();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let tenant = rng.random_range(0..tenants);
                let id = rng.random_range(1..=ROWS);
                let mut request = hyper::Request::get(format!("http://{addr}{prefix}/{id}"));
                if prefix.starts_with("/full/") {
                    request =
                        request.header("host", format!("{tenant_prefix}-{tenant:03}.localhost"));
                } else {
                    request = request.header("x-tenant-id", format!("{tenant_prefix}-{tenant:03}"));
                }
                let request = request.body(Empty::<Bytes>::new()).expect("valid request");
                let t = Instant::now();
                match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        if ok {
                            latencies.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for (l, e) in futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.expect("load task"))
    {
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Figures {
        rps: latencies.len() as f64 / elapsed,
        latencies,
        errors,
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("request_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    // A database of our own: on DATABASE_URL's server, or a throwaway one.
    let db = tenantry::testing::TestDatabase::create().await?;
    let url = db.url().to_owned();
    let connections_per_tenant = args.per_tenant;
    // The plain baseline is tuned: sqlx pings every connection it hands out unless
    // `test_before_acquire(false)`, a round trip a fair baseline does not pay. The
    // default-ping pool is measured too (`a-ping`): what a default sqlx app does.
    let plain_pool = PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect(&url)
        .await?;
    let ping_pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    let registry = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let manager = TenantManager::builder(registry)
        .migrations(saas::tenant_migrations())
        .pool_config(PoolConfig {
            // Within the server's default 100 connections, next to two plain pools of 16.
            max_connections: Some(
                (connections_per_tenant * 3 * args.tenants.max(1) as u32).min(48),
            ),
            row_schema: Some("shared".to_owned()),
            row_role: Some("bench_row".to_owned()),
            ..PoolConfig::default()
        })
        .build()
        .await?;

    // The same table and rows, once in `public` for the plain handler and once per tenant.
    sqlx::raw_sql(
        "CREATE TABLE projects (id bigserial PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO projects (name) SELECT 'project ' || g FROM generate_series(1, 1000) g;",
    )
    .execute(&plain_pool)
    .await?;
    for t in 0..args.tenants {
        let tenant = manager
            .create_tenant(NewTenant::new(
                format!("bench-{t:03}").parse()?,
                format!("Bench {t}"),
            ))
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {}.projects (name) SELECT 'project ' || g FROM generate_series(1, {ROWS}) g; ANALYZE {}.projects",
            tenant.storage, tenant.storage
        )))
        .execute(&plain_pool)
        .await?;
    }
    sqlx::query("ANALYZE projects").execute(&plain_pool).await?;

    // Row tenants: one shared table under forced RLS, keyed by (tenant_id, id).
    sqlx::raw_sql(
        "DO $$ BEGIN CREATE ROLE bench_row NOLOGIN NOBYPASSRLS;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         CREATE SCHEMA shared;
         CREATE TABLE shared.projects (
             tenant_id text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
             id bigint NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
         GRANT USAGE ON SCHEMA shared TO bench_row;
         GRANT SELECT ON shared.projects TO bench_row;",
    )
    .execute(&plain_pool)
    .await?;
    let mut conn = plain_pool.acquire().await?;
    tenantry::strategy::install_rls(&mut conn, "shared.projects", "tenant_id").await?;
    drop(conn);
    for t in 0..args.tenants {
        let id = format!("brow-{t:03}");
        manager
            .create_tenant(
                NewTenant::new(id.parse()?, "Row").with_strategy(tenantry::Strategy::Row),
            )
            .await?;
        sqlx::query(
            "INSERT INTO shared.projects (tenant_id, id, name) SELECT $1, g, 'project ' || g FROM generate_series(1, $2) g",
        )
        .bind(&id)
        .bind(ROWS)
        .execute(&plain_pool)
        .await?;
        // Database tenants: their own database, created from the template database.
        let tenant = manager
            .create_tenant(
                NewTenant::new(format!("bdb-{t:03}").parse()?, "Db")
                    .with_strategy(tenantry::Strategy::Database),
            )
            .await?;
        let mut db = manager
            .tenant_db(manager.resolve_tenant(&tenant.id).await?)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO projects (name) SELECT 'project ' || g FROM generate_series(1, {ROWS}) g; ANALYZE projects"
        )))
        .execute(&mut db)
        .await?;
    }
    sqlx::query("ANALYZE shared.projects")
        .execute(&plain_pool)
        .await?;

    let app = Router::new()
        .route("/plain/{id}", get(plain))
        .route("/plain-tx/{id}", get(plain_tx))
        .route("/empty/{id}", get(empty))
        .with_state(plain_pool.clone())
        .merge(
            Router::new()
                .route("/plain-ping/{id}", get(plain))
                .route("/plain-tx-ping/{id}", get(plain_tx))
                .with_state(ping_pool.clone()),
        )
        .merge(
            Router::new()
                .route("/scoped/{id}", get(scoped))
                .route("/scoped-tx/{id}", get(scoped_tx))
                .route("/resolve/{id}", get(resolve_only))
                .route("/scoped-macro/{id}", get(scoped_macro))
                .route("/scoped-tx-macro/{id}", get(scoped_tx_macro))
                .layer(TenantLayer::new(manager.clone())),
        )
        .merge(
            // The full resolution path: header, then host (a registered domain or a
            // subdomain), per-tenant metrics; the request names its tenant by host.
            Router::new()
                .route("/full/scoped/{id}", get(scoped))
                .route("/full/resolve/{id}", get(resolve_only))
                .layer(
                    TenantLayer::new(manager.clone())
                        .resolver(tenantry::HostResolver::domains().subdomains_of("localhost"))
                        .metrics(tenantry::TenantMetrics::new(50)),
                ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build_http();

    let variants = [
        ("a", "plain axum + sqlx", "/plain", "bench"),
        ("b", "scoped by tenantry (TenantDb)", "/scoped", "bench"),
        ("c", "tenant resolution alone", "/resolve", "bench"),
        ("d", "empty handler, no layer", "/empty", "bench"),
        ("a-tx", "plain, BEGIN/query/COMMIT", "/plain-tx", "bench"),
        (
            "b-tx",
            "scoped by tenantry (TenantTx)",
            "/scoped-tx",
            "bench",
        ),
        (
            "m",
            "#[tenant_scoped] handler (TenantDb)",
            "/scoped-macro",
            "bench",
        ),
        (
            "m-tx",
            "#[tenant_scoped(transaction)] handler",
            "/scoped-tx-macro",
            "bench",
        ),
        (
            "e",
            "scoped, tenant by host, + metrics",
            "/full/scoped",
            "bench",
        ),
        (
            "c-e",
            "resolution alone, by host, + metrics",
            "/full/resolve",
            "bench",
        ),
        ("b-row", "scoped, row tenants (RLS)", "/scoped", "brow"),
        ("b-db", "scoped, database tenants", "/scoped", "bdb"),
        (
            "a-ping",
            "plain axum + sqlx, default pool (ping)",
            "/plain-ping",
            "bench",
        ),
        (
            "a-tx-ping",
            "plain, BEGIN/query/COMMIT, default pool (ping)",
            "/plain-tx-ping",
            "bench",
        ),
    ];
    // Warm up every variant (connections, statement caches, tenant cache).
    for (_, _, prefix, tenant_prefix) in &variants {
        drive(
            &client,
            addr,
            prefix,
            tenant_prefix,
            args.tenants,
            args.concurrency,
            1,
        )
        .await;
    }
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    let mut errors = vec![0; variants.len()];
    for round in 0..args.rounds {
        // Rotate the order every round, so no variant always runs first.
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let f = drive(
                &client,
                addr,
                variants[i].2,
                variants[i].3,
                args.tenants,
                args.concurrency,
                args.secs,
            )
            .await;
            rps[i].push(f.rps);
            lat[i].extend(f.latencies);
            errors[i] += f.errors;
        }
    }
    let medians: Vec<f64> = rps.iter().map(|r| median(r.clone())).collect();
    let ratio_of = |i: usize, base: usize| -> Vec<f64> {
        rps[i].iter().zip(&rps[base]).map(|(x, b)| x / b).collect()
    };

    println!(
        "request_bench: {} rounds x {} s per variant, {} client connections, {} tenants of each strategy x {ROWS} rows, random tenant and id per request, {} connections per tenant, plain pools 16 (a: test_before_acquire(false); a-ping: sqlx's default)",
        args.rounds, args.secs, args.concurrency, args.tenants, connections_per_tenant
    );
    println!();
    println!("| variant | what | requests/s (median) | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    for (i, (key, what, _, _)) in variants.iter().enumerate() {
        lat[i].sort();
        println!(
            "| {key} | {what} | {:.0} | {:.0} us | {:.0} us | {} |",
            medians[i],
            percentile(&lat[i], 0.50).as_secs_f64() * 1e6,
            percentile(&lat[i], 0.99).as_secs_f64() * 1e6,
            errors[i]
        );
    }
    println!();
    println!("ratios (median over rounds of the per-round ratio):");
    println!("  b / a       = {:.3}", median(ratio_of(1, 0)));
    println!("  b-tx / a-tx = {:.3}", median(ratio_of(5, 4)));
    println!(
        "  m / a       = {:.3}  (macro-generated handler)",
        median(ratio_of(6, 0))
    );
    println!(
        "  m / b       = {:.3}  (macro against the hand-written scoped handler)",
        median(ratio_of(6, 1))
    );
    println!("  m-tx / a-tx = {:.3}", median(ratio_of(7, 4)));
    println!("  m-tx / b-tx = {:.3}", median(ratio_of(7, 5)));
    println!(
        "  e / a       = {:.3}  (host resolution + metrics; compare with b / a)",
        median(ratio_of(8, 0))
    );
    println!("  e / b       = {:.3}", median(ratio_of(8, 1)));
    println!("  c-e / c     = {:.3}", median(ratio_of(9, 2)));
    println!(
        "  b-row / a   = {:.3}  (row strategy)",
        median(ratio_of(10, 0))
    );
    println!(
        "  b-db / a    = {:.3}  (database strategy)",
        median(ratio_of(11, 0))
    );
    println!(
        "  c / d       = {:.3}  (cost of resolution against an empty handler)",
        median(ratio_of(2, 3))
    );
    println!(
        "  b / a-ping  = {:.3}  (against a default sqlx pool, which pings)",
        median(ratio_of(1, 12))
    );
    println!(
        "  a-ping / a  = {:.3}  (what the ping costs plain sqlx)",
        median(ratio_of(12, 0))
    );
    let stats = manager.pool_stats();
    println!(
        "  tenant connections: {} open (peak {}), {} opened, {} rebinds, {} resets; registry lookups {}",
        stats.open,
        stats.peak_open,
        stats.opened,
        stats.rebound,
        stats.reset,
        manager.registry_lookups()
    );
    Ok(())
}
