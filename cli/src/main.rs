//! `tenantry`: operate the tenants of a tenantry registry.
//!
//! Exit status: 0 on success, 1 when something failed (some tenants, an unknown
//! tenant, an unreachable database, problems found by `doctor`), 2 for a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use tenantry::migrate::{Canary, MigrateOptions, MigrationEvent, MigrationOutcome};
use tenantry::{
    NewTenant, Strategy, Tenant, TenantId, TenantManager, TenantMigrations, TenantStatus,
};

#[derive(Parser, Debug)]
#[command(
    name = "tenantry",
    version,
    about = "Operate the tenants of a tenantry registry"
)]
struct Cli {
    /// PostgreSQL URL of the registry.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The schema holding the registry.
    #[arg(long, default_value = "tenantry", global = true)]
    control_schema: String,
    /// The prefix of `database` tenants' database names.
    #[arg(long, default_value = "tenant_", global = true)]
    database_prefix: String,
    /// The role row tenants act as (`SET ROLE`): one without `BYPASSRLS` that owns no
    /// shared table, so their row-level security applies (what the app configures as
    /// `PoolConfig::row_role`).
    #[arg(long, env = "TENANTRY_ROW_ROLE", global = true)]
    row_role: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, inspect and remove tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Apply tenant migrations to every tenant (or `migrate status`).
    Migrate(MigrateArgs),
    /// Look for orphan schemas, missing schemas, drifted tenants and tables without RLS.
    Doctor(DoctorArgs),
    /// Run a SQL file in every active tenant (or some), each in its own transaction
    /// under the tenant's binding (row tenants under their row-level security).
    ///
    /// Checked by the server before a tenant's transaction commits: every relation it
    /// read, wrote or altered (by statements, functions, triggers or rules, as the lock
    /// table records them) lies outside every other schema tenant's schema and the
    /// registry; the transaction was not ended by the script; the role and the tenant
    /// setting are unchanged. A failed check rolls that tenant's run back.
    ///
    /// Not checked: which tenant's rows a row tenant's script wrote in the shared
    /// tables. Row-level security applies the tenant setting at each statement, so a
    /// script that switches the setting, writes and switches back is not caught.
    Exec(ExecArgs),
    /// The named PostgreSQL servers database tenants can live on.
    #[command(subcommand)]
    Servers(ServersCommand),
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// The SQL file: a query (rows are reported) or a script (rows changed are).
    #[arg(long)]
    sql: PathBuf,
    /// Only these tenants (comma-separated ids).
    #[arg(long, value_delimiter = ',', value_parser = parse_id)]
    tenants: Vec<TenantId>,
    /// Only tenants of this strategy.
    #[arg(long, value_enum, conflicts_with = "tenants")]
    strategy: Option<StrategyArg>,
    /// Tenants worked on at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Seconds one tenant may take; past it, its transaction is rolled back.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Print one JSON array: `tenant`, `status` (`ok` or `error`), and `rows`/`affected` or `error`.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum TenantsCommand {
    /// Create a tenant (schema and tenant migrations, all or nothing).
    Create {
        /// The tenant id: lowercase letters, digits and `-`, starting with a letter.
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// A display name.
        #[arg(long)]
        name: String,
        /// The tenant's domain.
        #[arg(long)]
        domain: Option<String>,
        /// The isolation strategy.
        #[arg(long, value_enum, default_value_t = StrategyArg::Schema)]
        strategy: StrategyArg,
        /// The tenant migrations directory (sqlx format) to provision with. Default: the
        /// tenant migrations the application registered in the registry.
        #[arg(long)]
        migrations: Option<PathBuf>,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant.
    Show {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Suspend a tenant: its requests get 403.
    Suspend {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume a suspended tenant.
    Resume {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a suspended tenant and its data.
    Delete {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
        /// Suspend the tenant first if it is active.
        #[arg(long)]
        force: bool,
        /// Print the tombstone as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a tenant's limits; flags not given keep their value, `--reset` clears
    /// them all (back to the application's defaults).
    SetLimits {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// Requests per second, on average.
        #[arg(long)]
        rate: Option<f64>,
        /// Requests allowed at once above the rate.
        #[arg(long)]
        burst: Option<u32>,
        /// Requests in flight at the same time.
        #[arg(long)]
        concurrency: Option<u32>,
        /// The longest a statement may run: `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
        #[arg(long, value_parser = parse_duration)]
        statement_timeout: Option<Duration>,
        /// Clear every limit first.
        #[arg(long)]
        reset: bool,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a domain to a tenant (requests to that host name are its requests).
    AddDomain {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// A lowercase host name, for example `www.acme.example.com`.
        domain: String,
        /// Make it the primary domain.
        #[arg(long)]
        primary: bool,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a domain of a tenant (the primary one only as the last).
    RemoveDomain {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        domain: String,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make one of a tenant's domains its primary one.
    PrimaryDomain {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        domain: String,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a tenant's data to a file: a tenantry export (`tenants import` reads it
    /// back, under any strategy and id), or SQL from pg_dump (`--format sql`).
    Export {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// `tenantry` (importable, any strategy or server) or `sql` (pg_dump, for psql).
        #[arg(long, value_enum, default_value_t = ExportFormat::Tenantry)]
        format: ExportFormat,
        /// Print a summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a tenant from an export, all or nothing (a failed import leaves no
    /// tenant, schema, database or rows).
    Import {
        /// The export file (`tenantry tenants export ID --out FILE`).
        file: PathBuf,
        /// The new tenant's id (default: the exported one).
        #[arg(long = "as", value_parser = parse_id)]
        as_id: Option<TenantId>,
        /// Its strategy (default: the exported one).
        #[arg(long, value_enum)]
        strategy: Option<StrategyArg>,
        /// Its server (database tenants; see `tenantry servers`).
        #[arg(long)]
        server: Option<String>,
        /// The tenant migrations directory the export's version comes from. Default:
        /// the tenant migrations the application registered in the registry.
        #[arg(long)]
        migrations: Option<PathBuf>,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move a tenant to another strategy or server, online: reads go on, writes get
    /// 503 with Retry-After only while the data is copied and the registry switched.
    #[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
    Move {
        #[arg(value_parser = parse_id)]
        id: TenantId,
        /// The strategy to move to.
        #[arg(long, value_enum, group = "target")]
        to_strategy: Option<StrategyArg>,
        /// The named server to move a database tenant to (see `tenantry servers`).
        #[arg(long, group = "target")]
        to_server: Option<String>,
        /// The Citus worker to move the tenant to (HOST:PORT; Citus registries only).
        #[arg(long, group = "target")]
        to_node: Option<String>,
        /// How Citus copies the tenant to the worker: `logical` (writes go on) or
        /// `block-writes` (writes wait for the copy). Default: logical for a schema
        /// tenant whose tables allow it, else block-writes.
        #[arg(long, value_enum)]
        transfer: Option<TransferArg>,
        /// Lift the write fence and change capture of a move whose process died
        /// (`tenantry doctor` reports them as move-leftover).
        #[arg(long, group = "target")]
        recover: bool,
        /// How long the old place keeps refusing writes after the switch, for every
        /// instance to hear of it, before it is dropped.
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        grace: Duration,
        /// The tenant migrations directory (the new place gets these versions). Default:
        /// the tenant migrations the application registered in the registry.
        #[arg(long)]
        migrations: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// A tenantry export: manifest and COPY data, importable under any strategy.
    Tenantry,
    /// SQL from pg_dump (needs pg_dump; the registry's server only).
    Sql,
}

#[derive(Subcommand, Debug)]
enum ServersCommand {
    /// List the named servers (the registry's, and this CLI's `default`).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep a server in the registry, for every instance and this CLI. The URL names a
    /// maintenance database (e.g. postgres://app@db2.internal/postgres) and no password
    /// (the server's auth, ~/.pgpass or PGPASSWORD provide it).
    Add {
        name: String,
        url: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a server (refused while tenants live on it).
    Remove {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StrategyArg {
    /// One schema per tenant.
    Schema,
    /// Shared tables with a tenant_id column and row-level security.
    Row,
    /// A database per tenant, created from a template database.
    Database,
}

impl StrategyArg {
    fn strategy(self) -> Strategy {
        match self {
            StrategyArg::Schema => Strategy::Schema,
            StrategyArg::Row => Strategy::Row,
            StrategyArg::Database => Strategy::Database,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TransferArg {
    /// Logical replication: writes go on while the shards are copied.
    Logical,
    /// Writes wait until the copy is done.
    BlockWrites,
}

impl TransferArg {
    fn transfer(self) -> tenantry::admin::NodeTransfer {
        match self {
            TransferArg::Logical => tenantry::admin::NodeTransfer::Logical,
            TransferArg::BlockWrites => tenantry::admin::NodeTransfer::BlockWrites,
        }
    }
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct MigrateArgs {
    #[command(subcommand)]
    command: Option<MigrateCommand>,
    /// The tenant migrations directory (sqlx format).
    #[arg(long)]
    source: Option<PathBuf>,
    /// Tenants migrated at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Migrate this many tenants first; any failure among them stops the run.
    #[arg(long)]
    canary: Option<usize>,
    /// Stop starting tenants once more than this many failed.
    #[arg(long)]
    max_failures: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum MigrateCommand {
    /// Which tenant is at which version, and which have drifted.
    Status {
        /// The tenant migrations directory, to show pending versions and drift.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// The tenant migrations directory, to check for drift.
    #[arg(long)]
    source: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration: write 500ms, 5s, 2m or 1h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("`{raw}`: the unit must be ms, s, m or h")),
    }
    .ok_or_else(|| format!("`{raw}` is too long"))?;
    Ok(Duration::from_millis(ms))
}

fn parse_id(raw: &str) -> Result<TenantId, String> {
    TenantId::parse(raw).map_err(|e| e.to_string())
}

/// A failure with its exit status.
struct Failure {
    code: u8,
    message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    /// The error's text with control characters escaped: names from an import file
    /// or the database never reach the operator's terminal as escape sequences.
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            message: tenantry::Problem::printable(&e.to_string()),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantry: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            if failure.code == 2 {
                let _ = Cli::command()
                    .error(clap::error::ErrorKind::InvalidValue, &failure.message)
                    .print();
            } else {
                eprintln!("tenantry: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn manager(cli: &Cli, migrations: Option<&PathBuf>) -> Result<TenantManager, Failure> {
    manager_with(cli, migrations, false).await
}

/// A manager that provisions with `--migrations`, or else with the tenant migrations
/// the application registered in the registry (for `create`, `import` and `move`).
async fn provisioning_manager(
    cli: &Cli,
    migrations: Option<&PathBuf>,
) -> Result<TenantManager, Failure> {
    manager_with(cli, migrations, true).await
}

/// Where a command's tenant migrations came from, for its messages.
fn source_note(manager: &TenantManager, given: Option<&PathBuf>) -> String {
    let versions = manager.migrations().versions();
    match (given, versions.first(), versions.last()) {
        (Some(dir), _, _) => format!("the tenant migrations in {}", dir.display()),
        (None, Some(first), Some(last)) => format!(
            "the tenant migrations the application registered in the registry (versions \
             {first} to {last})"
        ),
        _ => "no tenant migrations: none given with --migrations, and no application has \
              registered its tenant migrations in this registry (an application does when \
              it starts with `TenantManagerBuilder::migrations`)"
            .to_owned(),
    }
}

/// Adds to a failure of `import` or `move` whose cause is the migration source what
/// the source was and which flag changes it.
fn with_source_hint(failure: Failure, manager: &TenantManager, given: Option<&PathBuf>) -> Failure {
    let about_source = failure.message.contains("migration source")
        || failure.message.contains("does not exist here");
    if !about_source {
        return failure;
    }
    let fix = if given.is_some() {
        "pass --migrations with the tenant migrations the tenant's data was made with, then \
         run `tenantry migrate`"
    } else {
        "pass --migrations DIR, the tenant migrations the tenant's data was made with (then \
         run `tenantry migrate` to bring it to the current version)"
    };
    Failure {
        code: failure.code,
        message: format!(
            "{}\n  used: {}\n  fix: {fix}",
            failure.message,
            source_note(manager, given)
        ),
    }
}

async fn manager_with(
    cli: &Cli,
    migrations: Option<&PathBuf>,
    registered: bool,
) -> Result<TenantManager, Failure> {
    let url = cli
        .database_url
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| usage("no database: pass --database-url URL or set DATABASE_URL"))?;
    // One direct connection first, so that an unreachable server is reported with its
    // real cause (a pool would only say that it timed out).
    let probe = tokio::time::timeout(
        Duration::from_secs(10),
        <sqlx::PgConnection as sqlx::Connection>::connect(url),
    )
    .await
    .map_err(|_| "cannot connect to the database: no answer within 10 s".to_owned())?
    .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let _ = sqlx::Connection::close(probe).await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let migrations = match migrations {
        Some(dir) => TenantMigrations::from_dir(dir)
            .await
            .map_err(|e| format!("cannot read migrations from {}: {e}", dir.display()))?,
        None => TenantMigrations::empty(),
    };
    let mut builder = TenantManager::builder(pool)
        .pool_config(tenantry::PoolConfig {
            row_role: cli.row_role.clone(),
            ..tenantry::PoolConfig::default()
        })
        .control_schema(cli.control_schema.clone())
        .database_prefix(cli.database_prefix.clone())
        .migrations(migrations)
        // A directory handed to the CLI is the operator's, not the application's.
        .register_migrations(false)
        .listen_for_changes(false);
    if registered {
        builder = builder.migrations_from_registry();
    }
    Ok(builder.build().await?)
}

fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_tenant(t: &Tenant) {
    println!("id:          {}", t.id);
    println!("name:        {}", t.name);
    println!("domain:      {}", t.domain.as_deref().unwrap_or("-"));
    if t.domains.len() > 1 {
        println!("domains:     {}", t.domains.join(", "));
    }
    println!("status:      {}", t.status);
    println!("strategy:    {}", t.strategy);
    match (t.schema(), t.database()) {
        (Some(schema), _) => println!("schema:      {schema}"),
        (_, Some(database)) => println!("database:    {database}"),
        _ => println!("rows:        shared tables, tenant_id = '{}'", t.id),
    }
    println!("server:      {}", t.server);
    println!(
        "limits:      {}",
        serde_json::to_string(&t.limits).unwrap_or_default()
    );
    println!("created at:  {}", t.created_at);
    println!("updated at:  {}", t.updated_at);
}

fn print_status(t: &Tenant, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(t);
    }
    println!("tenant `{}` is {}", t.id, t.status);
    Ok(())
}

/// A spinner on a terminal (not with `--json`, not when stderr is redirected).
fn progress_spinner(json: bool, message: &str) -> Option<ProgressBar> {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(120));
    Some(spinner)
}

async fn servers(cli: &Cli, cmd: &ServersCommand) -> Result<u8, Failure> {
    let manager = manager(cli, None).await?;
    let admin = manager.admin();
    let json = match cmd {
        ServersCommand::List { json } => *json,
        ServersCommand::Add { name, url, json } => {
            admin.add_server(name, url).await?;
            if !json {
                println!("server `{name}` kept in the registry");
            }
            *json
        }
        ServersCommand::Remove { name, json } => {
            admin.remove_server(name).await?;
            if !json {
                println!("server `{name}` removed from the registry");
            }
            *json
        }
    };
    let registered = admin.registry().servers().await?;
    if json {
        let list: Vec<_> = registered
            .iter()
            .map(|(name, url)| serde_json::json!({ "name": name, "url": url }))
            .collect();
        print_json(&list)?;
    } else if matches!(cmd, ServersCommand::List { .. }) {
        println!("default  (the registry's own server)");
        for (name, url) in &registered {
            println!("{name}  {url}");
        }
    }
    Ok(0)
}

fn print_domains(t: &Tenant, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(t);
    }
    println!(
        "tenant `{}` domains: {} (primary: {})",
        t.id,
        if t.domains.is_empty() {
            "-".to_owned()
        } else {
            t.domains.join(", ")
        },
        t.domain.as_deref().unwrap_or("-")
    );
    Ok(())
}

async fn existing(manager: &TenantManager, id: &TenantId) -> Result<Tenant, Failure> {
    Ok(manager.admin().existing(id).await?)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Tenants(cmd) => tenants(&cli, cmd).await,
        Command::Migrate(args) => match &args.command {
            Some(MigrateCommand::Status { source, json }) => {
                migrate_status(&cli, source.as_ref(), *json).await
            }
            None => migrate(&cli, args).await,
        },
        Command::Doctor(args) => doctor(&cli, args).await,
        Command::Exec(args) => exec(&cli, args).await,
        Command::Servers(cmd) => servers(&cli, cmd).await,
    }
}

async fn tenants(cli: &Cli, cmd: &TenantsCommand) -> Result<u8, Failure> {
    match cmd {
        TenantsCommand::Create {
            id,
            name,
            domain,
            strategy,
            migrations,
            json,
        } => {
            let manager = provisioning_manager(cli, migrations.as_ref()).await?;
            let strategy = strategy.strategy();
            let new = NewTenant {
                id: id.clone(),
                name: name.clone(),
                domain: domain.clone(),
                strategy,
                server: None,
            };
            let tenant = manager.create_tenant(new).await?;
            if *json {
                return print_json(&tenant).map(|()| 0);
            }
            if migrations.is_none() && tenant.strategy != tenantry::Strategy::Row {
                let note = source_note(&manager, None);
                if manager.migrations().versions().is_empty() {
                    eprintln!("note: {note}; the tenant's tables are empty: pass --migrations DIR");
                } else {
                    eprintln!("note: provisioned with {note}");
                }
            }
            let place = match (tenant.schema(), tenant.database()) {
                (Some(schema), _) => format!("schema {schema}"),
                (_, Some(database)) => format!("database {database}"),
                _ => "rows in the shared tables".to_owned(),
            };
            println!("created tenant `{}` ({place})", tenant.id);
        }
        TenantsCommand::List { json } => {
            let manager = manager(cli, None).await?;
            let tenants = manager.list_tenants().await?;
            if *json {
                print_json(&tenants)?;
            } else if tenants.is_empty() {
                println!("no tenants");
            } else {
                println!(
                    "{:<40}  {:<12}  {:<8}  {:<24}  DOMAIN",
                    "ID", "STATUS", "STRATEGY", "NAME"
                );
                for t in tenants {
                    println!(
                        "{:<40}  {:<12}  {:<8}  {:<24}  {}",
                        t.id.as_str(),
                        t.status.as_str(),
                        t.strategy.as_str(),
                        t.name,
                        t.domain.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        TenantsCommand::Show { id, json } => {
            let manager = manager(cli, None).await?;
            let tenant = existing(&manager, id).await?;
            // On Citus, the worker holding it (Citus's metadata is the truth).
            let node = manager.admin().node_of(&tenant).await?;
            if *json {
                let mut value = serde_json::to_value(&tenant)?;
                if let (Some(node), Some(fields)) = (&node, value.as_object_mut()) {
                    fields.insert("node".to_owned(), node.clone().into());
                }
                print_json(&value)?;
            } else {
                print_tenant(&tenant);
                if let Some(node) = node {
                    println!("node:        {node} (Citus worker)");
                }
            }
        }
        TenantsCommand::Suspend { id, json } => {
            let manager = manager(cli, None).await?;
            let t = manager.suspend_tenant(id).await?;
            print_status(&t, *json)?;
        }
        TenantsCommand::Resume { id, json } => {
            let manager = manager(cli, None).await?;
            let t = manager.resume_tenant(id).await?;
            print_status(&t, *json)?;
        }
        TenantsCommand::Delete {
            id,
            yes,
            force,
            json,
        } => {
            if !yes {
                return Err(usage(format!(
                    "deleting tenant `{id}` drops all of its data: confirm with --yes"
                )));
            }
            let manager = manager(cli, None).await?;
            let tenant = existing(&manager, id).await?;
            if tenant.status == TenantStatus::Active {
                if !force {
                    return Err(format!(
                        "tenant `{id}` is active: suspend it first (`tenantry tenants suspend {id}`), or pass --force"
                    )
                    .into());
                }
                manager.suspend_tenant(id).await?;
            }
            let tombstone = manager.delete_tenant(id).await?;
            if *json {
                print_json(&tombstone)?;
            } else {
                println!("deleted tenant `{id}`");
            }
        }
        TenantsCommand::SetLimits {
            id,
            rate,
            burst,
            concurrency,
            statement_timeout,
            reset,
            json,
        } => {
            let manager = manager(cli, None).await?;
            let tenant = existing(&manager, id).await?;
            let mut limits = if *reset {
                tenantry::TenantLimits::default()
            } else {
                tenant.limits
            };
            limits.rate = rate.or(limits.rate);
            limits.burst = burst.or(limits.burst);
            limits.concurrency = concurrency.or(limits.concurrency);
            if let Some(timeout) = statement_timeout {
                limits.statement_timeout_ms =
                    Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
            }
            if let Err(e) = limits.check() {
                return Err(usage(e));
            }
            let tenant = manager.set_tenant_limits(id, limits).await?;
            if *json {
                print_json(&tenant)?;
            } else {
                println!(
                    "tenant `{}` limits: {}",
                    tenant.id,
                    serde_json::to_string(&tenant.limits)?
                );
            }
        }
        TenantsCommand::AddDomain {
            id,
            domain,
            primary,
            json,
        } => {
            let manager = manager(cli, None).await?;
            let tenant = manager.add_tenant_domain(id, domain, *primary).await?;
            print_domains(&tenant, *json)?;
        }
        TenantsCommand::RemoveDomain { id, domain, json } => {
            let manager = manager(cli, None).await?;
            let tenant = manager.remove_tenant_domain(id, domain).await?;
            print_domains(&tenant, *json)?;
        }
        TenantsCommand::PrimaryDomain { id, domain, json } => {
            let manager = manager(cli, None).await?;
            let tenant = manager.set_primary_domain(id, domain).await?;
            print_domains(&tenant, *json)?;
        }
        TenantsCommand::Export {
            id,
            out,
            format,
            json,
        } => {
            let manager = manager(cli, None).await?;
            let body = match format {
                ExportFormat::Tenantry => manager.admin().export(id).await?,
                ExportFormat::Sql => {
                    let url = cli.database_url.as_deref().unwrap_or_default();
                    manager.admin().export_sql(id, url).await?
                }
            };
            std::fs::write(out, &body)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            if *json {
                print_json(&serde_json::json!({
                    "tenant": id,
                    "file": out,
                    "format": if *format == ExportFormat::Sql { "sql" } else { "tenantry" },
                    "bytes": body.len(),
                }))?;
            } else {
                println!("exported tenant `{id}` to {}", out.display());
            }
        }
        TenantsCommand::Import {
            file,
            as_id,
            strategy,
            server,
            migrations,
            json,
        } => {
            let body =
                std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let manager = provisioning_manager(cli, migrations.as_ref()).await?;
            let options = tenantry::admin::ImportOptions {
                id: as_id.clone(),
                strategy: strategy.map(StrategyArg::strategy),
                server: server.clone(),
            };
            let tenant = manager
                .admin()
                .import(&body, options)
                .await
                .map_err(|e| with_source_hint(e.into(), &manager, migrations.as_ref()))?;
            if *json {
                print_json(&tenant)?;
            } else {
                println!(
                    "imported tenant `{}` ({} strategy) from {}",
                    tenant.id,
                    tenant.strategy,
                    file.display()
                );
            }
        }
        TenantsCommand::Move {
            id,
            to_strategy,
            to_server,
            to_node,
            transfer,
            recover,
            grace,
            migrations,
            json,
        } => {
            if transfer.is_some() && to_node.is_none() {
                return Err(usage(
                    "--transfer says how Citus copies a tenant: it goes with --to-node",
                ));
            }
            if *recover {
                let manager = manager(cli, migrations.as_ref()).await?;
                let found = manager.admin().recover_move(id).await?;
                if *json {
                    print_json(&serde_json::json!({ "tenant": id, "recovered": found }))?;
                } else if found {
                    println!("lifted the fence and capture of an interrupted move of `{id}`");
                } else {
                    println!("tenant `{id}` had nothing left of a move");
                }
                return Ok(0);
            }
            let to = match (to_strategy, to_server, to_node) {
                (Some(s), _, _) => tenantry::admin::MoveTo::Strategy(s.strategy()),
                (_, Some(server), _) => tenantry::admin::MoveTo::Server(server.clone()),
                (_, _, Some(node)) => match transfer {
                    None => tenantry::admin::MoveTo::Node(node.clone()),
                    Some(t) => tenantry::admin::MoveTo::NodeWith(node.clone(), t.transfer()),
                },
                _ => return Err(usage("give one of --to-strategy, --to-server, --to-node")),
            };
            let manager = provisioning_manager(cli, migrations.as_ref()).await?;
            let spinner = progress_spinner(*json, &format!("moving tenant `{id}`"));
            let report = manager.admin().move_tenant(id, to, *grace).await;
            if let Some(spinner) = spinner {
                spinner.finish_and_clear();
            }
            let report =
                report.map_err(|e| with_source_hint(e.into(), &manager, migrations.as_ref()))?;
            if *json {
                print_json(&report)?;
            } else if let Some(node) = &report.node {
                let how = report
                    .transfer
                    .map(|t| format!(" ({t}, {} ms)", report.total_ms))
                    .unwrap_or_default();
                println!("moved tenant `{id}` to Citus worker {node}{how}");
            } else {
                println!(
                    "moved tenant `{id}` from {} on `{}` to {} on `{}`: {} rows in {} tables, \
                     writes paused {} ms{}",
                    report.from_strategy,
                    report.from_server,
                    report.tenant.strategy,
                    report.tenant.server,
                    report.rows,
                    report.tables,
                    report.write_pause_ms,
                    if report.old_place_dropped {
                        ""
                    } else {
                        "; the old place could not be dropped (see `tenantry doctor`)"
                    }
                );
            }
        }
    }
    Ok(0)
}

async fn migrate(cli: &Cli, args: &MigrateArgs) -> Result<u8, Failure> {
    let source = args
        .source
        .as_ref()
        .ok_or_else(|| usage("`tenantry migrate` needs --source DIR (the tenant migrations)"))?;
    let manager = manager(cli, Some(source)).await?;
    let options = MigrateOptions {
        concurrency: args.concurrency as usize,
        canary: args.canary.map(Canary::Count),
        max_failures: args.max_failures,
    };
    // Drawn only when stderr is a terminal.
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tenants {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = manager
        .migrate_all(&options, |event| match event {
            MigrationEvent::Planned { pending, .. } => bar.set_length(*pending as u64),
            MigrationEvent::TenantFinished {
                tenant, outcome, ..
            } => {
                bar.inc(1);
                if let MigrationOutcome::Failed { error } = outcome {
                    bar.suspend(|| eprintln!("{tenant}: {error}"));
                }
            }
            MigrationEvent::Halted { reason } => bar.set_message(reason.clone()),
        })
        .await?;
    bar.finish_and_clear();
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "{} tenants: {} migrated, {} already current, {} failed, {} skipped",
            report.results.len(),
            report.applied(),
            report.current(),
            report.failed(),
            report.skipped()
        );
        for r in &report.results {
            if let MigrationOutcome::Failed { error } = &r.outcome {
                println!("failed  {}: {error}", r.tenant);
            }
        }
        if let Some(reason) = &report.halted {
            println!("halted: {reason}");
        }
    }
    Ok(if report.is_success() { 0 } else { 1 })
}

async fn migrate_status(cli: &Cli, source: Option<&PathBuf>, json: bool) -> Result<u8, Failure> {
    let manager = manager(cli, source).await?;
    let status = manager.admin().migration_status(source.is_some()).await?;
    if json {
        print_json(&status)?;
        return Ok(0);
    }
    println!(
        "{:<40}  {:<12}  {:>8}  {:<12}  DRIFT",
        "TENANT", "STATUS", "VERSION", "PENDING"
    );
    for s in &status {
        println!(
            "{:<40}  {:<12}  {:>8}  {:<12}  {}",
            s.tenant.as_str(),
            s.status.as_str(),
            s.version.map_or("-".to_owned(), |v| v.to_string()),
            if s.pending.is_empty() {
                "-".to_owned()
            } else {
                format!("{:?}", s.pending)
            },
            if s.drift.is_empty() {
                "-".to_owned()
            } else {
                s.drift.join("; ")
            }
        );
    }
    if source.is_none() {
        eprintln!("note: without --source, pending versions and checksums are not checked");
    }
    Ok(0)
}

async fn doctor(cli: &Cli, args: &DoctorArgs) -> Result<u8, Failure> {
    let manager = manager(cli, args.source.as_ref()).await?;
    let findings = manager.admin().doctor(args.source.is_some()).await?;
    if args.json {
        print_json(&findings)?;
    } else if findings.is_empty() {
        let tenants = manager.list_tenants().await?;
        println!("no problems found ({} tenants)", tenants.len());
    } else {
        for f in &findings {
            println!("{:<15} {}: {}", f.kind, f.subject, f.detail);
        }
        println!("{} problems found", findings.len());
    }
    Ok(if findings.is_empty() { 0 } else { 1 })
}

#[derive(Serialize)]
struct ExecReport {
    tenant: String,
    status: &'static str,
    #[serde(flatten)]
    output: Option<tenantry::admin::ScriptOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn exec(cli: &Cli, args: &ExecArgs) -> Result<u8, Failure> {
    let sql = std::fs::read_to_string(&args.sql)
        .map_err(|e| format!("cannot read {}: {e}", args.sql.display()))?;
    if sql.trim().is_empty() {
        return Err(usage(format!("{} holds no SQL", args.sql.display())));
    }
    let manager = manager(cli, None).await?;
    // Row tenants see only their rows through row-level security, which a superuser
    // or a BYPASSRLS role skips: without a row role, such a login must not run SQL
    // as a row tenant.
    let tenants = manager.list_tenants().await?;
    let row_selected = match (&args.tenants[..], args.strategy) {
        ([], None) => true,
        ([], Some(strategy)) => strategy.strategy() == Strategy::Row,
        (ids, _) => ids.iter().any(|id| {
            tenants
                .iter()
                .any(|t| &t.id == id && t.strategy == Strategy::Row)
        }),
    };
    if let (true, Some(role)) = (row_selected, &cli.row_role) {
        // The row role must itself be subject to row-level security, and one the
        // login may act as.
        let found: Option<(bool, bool)> = sqlx::query_as(
            "SELECT rolsuper OR rolbypassrls, pg_has_role(current_user, oid, 'MEMBER') \
             FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_optional(manager.admin().registry_pool())
        .await?;
        match found {
            None => return Err(usage(format!("--row-role: there is no role `{role}`"))),
            Some((true, _)) => {
                return Err(usage(format!(
                    "--row-role `{role}` bypasses row-level security (a superuser or BYPASSRLS \
                     role): row tenants would see every tenant's rows"
                )));
            }
            Some((false, false)) => {
                return Err(usage(format!(
                    "--row-role `{role}`: the login is not a member of it and cannot act as it"
                )));
            }
            Some((false, true)) => {}
        }
    }
    if row_selected && cli.row_role.is_none() {
        let bypasses: bool = sqlx::query_scalar(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(manager.admin().registry_pool())
        .await?;
        let has_row_tenants = tenants.iter().any(|t| t.strategy == Strategy::Row);
        if bypasses && has_row_tenants {
            return Err(usage(
                "the login bypasses row-level security (a superuser or BYPASSRLS role), so SQL \
                 run as a row tenant would see every tenant's rows: pass --row-role ROLE (the \
                 role the app's row tenants act as), or select other tenants",
            ));
        }
    }
    let selection = match (&args.tenants[..], args.strategy) {
        ([], None) => tenantry::Selection::All,
        ([], Some(strategy)) => tenantry::Selection::Strategy(strategy.strategy()),
        (ids, _) => tenantry::Selection::Ids(ids.to_vec()),
    };
    let options = tenantry::FanOut {
        selection,
        concurrency: args.concurrency as usize,
        timeout: Duration::from_secs(args.timeout),
    };
    let sql = std::sync::Arc::new(sql);
    let fence = std::sync::Arc::new(tenantry::admin::ScriptFence::new(
        &cli.control_schema,
        &tenants,
    ));
    let outcomes = manager
        .fan_out(options, move |_tenant, mut tx| {
            let (sql, fence) = (sql.clone(), fence.clone());
            async move {
                let out = tenantry::admin::run_script(&mut tx, &sql, &fence).await?;
                Ok((out, tx))
            }
        })
        .await?;
    let mut reports: Vec<ExecReport> = futures::StreamExt::collect::<Vec<_>>(outcomes)
        .await
        .into_iter()
        .map(|o| match o.result {
            Ok(output) => ExecReport {
                tenant: o.tenant.to_string(),
                status: "ok",
                output: Some(output),
                error: None,
            },
            Err(e) => ExecReport {
                tenant: o.tenant.to_string(),
                status: "error",
                output: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    reports.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    let failed = reports.iter().filter(|r| r.status == "error").count();
    if args.json {
        print_json(&reports)?;
    } else {
        for r in &reports {
            match (&r.output, &r.error) {
                (Some(out), _) => match &out.rows {
                    Some(rows) => {
                        println!("{}: {} rows", r.tenant, rows.len());
                        for row in rows {
                            println!("  {row}");
                        }
                    }
                    None => println!("{}: ok, {} rows changed", r.tenant, out.affected),
                },
                (None, Some(e)) => println!("{}: error: {e}", r.tenant),
                (None, None) => {}
            }
        }
        println!(
            "{} tenants: {} ok, {failed} failed",
            reports.len(),
            reports.len() - failed
        );
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
