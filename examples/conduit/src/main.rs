//! `cargo run -p conduit`: the RealWorld API on 127.0.0.1:3001, one Conduit community
//! per tenant. See the example's README.md.

use std::net::{Ipv4Addr, SocketAddr};

use clap::Parser;
use rand::RngExt;
use sqlx::postgres::PgPoolOptions;
use tenantry::Strategy;
use tracing_subscriber::EnvFilter;

/// RealWorld ("Conduit") on tenantry: each tenant an independent community, at
/// `/t/{tenant}/api` or by host (`{tenant}.localhost/api`).
#[derive(Debug, Parser)]
#[command(name = "conduit")]
struct Args {
    /// The port on 127.0.0.1.
    #[arg(long, env = "PORT", default_value_t = 3001)]
    port: u16,
    /// The database; without it a private PostgreSQL is started from the installed
    /// server binaries (and removed at exit).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Creates the demo communities `demo-schema`, `demo-row` and `demo-database`
    /// (one per strategy) unless they exist.
    #[arg(long)]
    demo: bool,
    /// Communities to create unless they exist: `id:strategy,...` (strategy
    /// `schema`, `row` or `database`; `schema` when left out).
    #[arg(long, env = "CONDUIT_DEMO_TENANTS", value_name = "ID:STRATEGY,...")]
    tenants: Option<String>,
    /// The secret the tokens' per-tenant keys derive from (at least 32 bytes); a
    /// random one when unset (tokens then die with the process).
    #[arg(long, env = "CONDUIT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Database tenants' databases are named `{prefix}{tenant}` (another registry on
    /// the same server needs another prefix; the CLI's `--database-prefix` must match).
    #[arg(long, env = "CONDUIT_DATABASE_PREFIX", default_value = "tenant_")]
    database_prefix: String,
    /// Hosts `{tenant}.{base}` name a tenant.
    #[arg(long, env = "CONDUIT_BASE_DOMAIN", default_value = "localhost")]
    base_domain: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("conduit: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let mut wanted = Vec::new();
    if args.demo {
        wanted.push(("demo-schema".to_owned(), Strategy::Schema));
        wanted.push(("demo-row".to_owned(), Strategy::Row));
        wanted.push(("demo-database".to_owned(), Strategy::Database));
    }
    if let Some(spec) = &args.tenants {
        wanted.extend(
            conduit::parse_tenant_list(spec).map_err(|e| format!("CONDUIT_DEMO_TENANTS: {e}"))?,
        );
    }
    let tokens = match &args.secret {
        Some(secret) => {
            conduit::Tokens::new(secret.as_bytes()).map_err(|e| format!("CONDUIT_SECRET: {e}"))?
        }
        None => {
            let secret: [u8; 32] = rand::rng().random();
            conduit::Tokens::new(&secret)?
        }
    };

    // Keep the throwaway database alive for as long as the server runs.
    let mut _throwaway = None;
    let url = match args.database_url.filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => {
            let db = tenantry::testing::TestDatabase::create().await?;
            println!(
                "DATABASE_URL is not set: started a private PostgreSQL, database at {}",
                db.url()
            );
            let url = db.url().to_owned();
            _throwaway = Some(db);
            url
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(&url)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let manager = conduit::manager_for(pool, conduit::pool_config(), &args.database_prefix).await?;
    for (id, strategy) in &wanted {
        if conduit::ensure_tenant(&manager, id, *strategy).await? {
            println!("created community `{id}` ({strategy:?})");
        }
    }
    let app = conduit::router(conduit::AppState { manager, tokens }, &args.base_domain);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("conduit listening on http://{addr} (APIURL http://{addr}/t/<tenant>/api)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
