//! `cargo run -p saas`: the tenantry quick start on 127.0.0.1:3000 (`PORT` overrides).
//!
//! Uses `DATABASE_URL`, or else starts a private PostgreSQL and says so. The admin
//! token comes from `SAAS_ADMIN_TOKEN`; when unset, one is made and written to a file
//! only its owner can read, whose path is printed.
//!
//! Behind a transaction pooler (PgBouncer, Supavisor, RDS Proxy): `DATABASE_URL` is
//! the pooler, `SAAS_BINDING=transaction` binds tenants per transaction, and
//! `DIRECT_DATABASE_URL` (default: `DATABASE_URL`) reaches the server directly, for
//! the registry, change notifications and provisioning.

use std::net::{Ipv4Addr, SocketAddr};

use rand::RngExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenantry::{Binding, PoolConfig, TenantManager};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("saas: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=debug")),
        )
        .init();

    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT `{p}` is not a port number"))?,
        Err(_) => 3000,
    };

    // Keep the throwaway database alive for as long as the server runs.
    let mut _throwaway = None;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
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

    let admin_token = match std::env::var("SAAS_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let bytes: [u8; 16] = rand::rng().random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Written to a file only its owner reads, never to the terminal or the logs.
            let mut file = tempfile::Builder::new()
                .prefix("tenantry-saas-admin-token-")
                .tempfile()?;
            std::io::Write::write_all(&mut file, token.as_bytes())?;
            let (_, path) = file.keep()?;
            println!(
                "SAAS_ADMIN_TOKEN is not set: made an admin token for this run, in {} \
                 (readable by you only)",
                path.display()
            );
            token
        }
    };

    let binding = match std::env::var("SAAS_BINDING").as_deref() {
        Err(_) | Ok("") | Ok("session") => Binding::Session,
        Ok("transaction") => Binding::Transaction,
        Ok(other) => {
            return Err(format!("SAAS_BINDING `{other}` is not `session` or `transaction`").into());
        }
    };
    let direct = match std::env::var("DIRECT_DATABASE_URL") {
        Ok(direct) if !direct.is_empty() => direct,
        _ => url.clone(),
    };
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(&direct)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    saas::prepare_database(&pool).await?;
    let tenant_connections: PgConnectOptions = url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
    let manager = TenantManager::builder(pool)
        .migrations(saas::tenant_migrations())
        .tenant_connections(tenant_connections)
        .pool_config(PoolConfig {
            binding,
            ..saas::pool_config()
        })
        .build()
        .await?;
    let mut state = saas::AppState::new(manager, admin_token);
    if let Ok(base) = std::env::var("SAAS_BASE_DOMAIN")
        && !base.is_empty()
    {
        state.base_domain = base;
    }
    if let Ok(spec) = std::env::var("SAAS_USER_TOKENS")
        && !spec.is_empty()
    {
        let tokens = saas::AppState::parse_user_tokens(&spec)
            .map_err(|e| format!("SAAS_USER_TOKENS: {e}"))?;
        println!(
            "tenant routes require a user token ({} configured)",
            tokens.len()
        );
        state = state.with_user_tokens(tokens);
    }
    let app = saas::router(state);

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("saas listening on http://{addr}");
    saas::serve(listener, app, saas::Timeouts::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
