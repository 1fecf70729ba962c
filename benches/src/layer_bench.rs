//! The cost of tenant resolution per request, without HTTP or a database query in the
//! way: the same empty handler called in-process through an axum `Router`, without
//! the layer, with `TenantLayer` (header), and with header + host resolvers and
//! metrics (tenant named by host). Cached tenants; medians over interleaved rounds.
//!
//! ```text
//! cargo run --release -p tenantry-benches --bin layer_bench -- [--rounds 7] [--requests 100000]
//! ```

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use sqlx::postgres::PgPoolOptions;
use tenantry::{CurrentTenant, HostResolver, NewTenant, TenantLayer, TenantManager, TenantMetrics};
use tenantry_benches::arg;
use tower::ServiceExt;

async fn empty() -> &'static str {
    "ok"
}

async fn named(CurrentTenant(_t): CurrentTenant) -> &'static str {
    "ok"
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("layer_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let rounds = arg("--rounds", 7)?.max(1);
    let requests = arg("--requests", 100_000)?.max(1);
    let db = tenantry::testing::TestDatabase::create().await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(db.url())
        .await?;
    let manager = TenantManager::builder(pool).build().await?;
    for t in 0..20 {
        manager
            .create_tenant(NewTenant::new(format!("bench-{t:03}").parse()?, "Bench"))
            .await?;
    }
    let plain = Router::new().route("/", get(empty));
    let header = Router::new()
        .route("/", get(named))
        .layer(TenantLayer::new(manager.clone()));
    let full = Router::new().route("/", get(named)).layer(
        TenantLayer::new(manager.clone())
            .resolver(HostResolver::domains().subdomains_of("localhost"))
            .metrics(TenantMetrics::new(50)),
    );
    let variants: [(&str, &Router, bool); 3] = [
        ("no layer", &plain, false),
        ("TenantLayer, header", &header, false),
        ("TenantLayer, host + metrics", &full, true),
    ];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..=rounds {
        for (i, (_, app, by_host)) in variants.iter().enumerate() {
            let started = Instant::now();
            for n in 0..requests {
                let tenant = format!("bench-{:03}", n % 20);
                let mut req = axum::http::Request::get("/");
                req = if *by_host {
                    req.header("host", format!("{tenant}.localhost"))
                } else {
                    req.header("x-tenant-id", tenant)
                };
                let response = (*app).clone().oneshot(req.body(Body::empty())?).await?;
                assert!(response.status().is_success());
            }
            // Round 0 warms up.
            if round > 0 {
                ns[i].push(started.elapsed().as_nanos() as f64 / requests as f64);
            }
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "layer_bench: {rounds} rounds x {requests} in-process requests per variant, 20 cached tenants"
    );
    println!();
    println!("| variant | ns per request (median) | added by tenantry |");
    println!("|---|---|---|");
    let base = median(&ns[0]);
    for (i, (name, _, _)) in variants.iter().enumerate() {
        let m = median(&ns[i]);
        println!("| {name} | {m:.0} | {:+.0} ns |", m - base);
    }
    Ok(())
}
