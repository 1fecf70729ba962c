//! The command line: every command, subcommand and flag, as clap parses them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tenantry::{Strategy, TenantId};

#[derive(Parser, Debug)]
#[command(
    name = "tenantry",
    version,
    about = "Operate the tenants of a tenantry registry"
)]
pub struct Cli {
    /// PostgreSQL URL of the registry.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// The schema holding the registry.
    #[arg(long, default_value = "tenantry", global = true)]
    pub control_schema: String,
    /// The prefix of `database` tenants' database names.
    #[arg(long, default_value = "tenant_", global = true)]
    pub database_prefix: String,
    /// The role row tenants act as (`SET ROLE`): one without `BYPASSRLS` that owns no
    /// shared table, so their row-level security applies (what the app configures as
    /// `PoolConfig::row_role`).
    #[arg(long, env = "TENANTRY_ROW_ROLE", global = true)]
    pub row_role: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
pub struct ExecArgs {
    /// The SQL file: a query (rows are reported) or a script (rows changed are).
    #[arg(long)]
    pub sql: PathBuf,
    /// Only these tenants (comma-separated ids).
    #[arg(long, value_delimiter = ',', value_parser = parse_id)]
    pub tenants: Vec<TenantId>,
    /// Only tenants of this strategy.
    #[arg(long, value_enum, conflicts_with = "tenants")]
    pub strategy: Option<StrategyArg>,
    /// Tenants worked on at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Seconds one tenant may take; past it, its transaction is rolled back.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Print one JSON array: `tenant`, `status` (`ok` or `error`), and `rows`/`affected` or `error`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
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
    SetLimits(SetLimitsArgs),
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
    Move(MoveArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A tenantry export: manifest and COPY data, importable under any strategy.
    Tenantry,
    /// SQL from pg_dump (needs pg_dump; the registry's server only).
    Sql,
}

#[derive(Subcommand, Debug)]
pub enum ServersCommand {
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
pub enum StrategyArg {
    /// One schema per tenant.
    Schema,
    /// Shared tables with a tenant_id column and row-level security.
    Row,
    /// A database per tenant, created from a template database.
    Database,
}

impl StrategyArg {
    pub fn strategy(self) -> Strategy {
        match self {
            StrategyArg::Schema => Strategy::Schema,
            StrategyArg::Row => Strategy::Row,
            StrategyArg::Database => Strategy::Database,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TransferArg {
    /// Logical replication: writes go on while the shards are copied.
    Logical,
    /// Writes wait until the copy is done.
    BlockWrites,
}

impl TransferArg {
    pub fn transfer(self) -> tenantry::admin::NodeTransfer {
        match self {
            TransferArg::Logical => tenantry::admin::NodeTransfer::Logical,
            TransferArg::BlockWrites => tenantry::admin::NodeTransfer::BlockWrites,
        }
    }
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: Option<MigrateCommand>,
    /// The tenant migrations directory (sqlx format).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Tenants migrated at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Migrate this many tenants first; any failure among them stops the run.
    #[arg(long)]
    pub canary: Option<usize>,
    /// Stop starting tenants once more than this many failed.
    #[arg(long)]
    pub max_failures: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
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
pub struct DoctorArgs {
    /// The tenant migrations directory, to check for drift.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
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

pub fn parse_id(raw: &str) -> Result<TenantId, String> {
    TenantId::parse(raw).map_err(|e| e.to_string())
}

/// The arguments of `tenantry tenants set-limits`.
#[derive(Args, Debug)]
pub struct SetLimitsArgs {
    #[arg(value_parser = parse_id)]
    pub id: TenantId,
    /// Requests per second, on average.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate.
    #[arg(long)]
    pub burst: Option<u32>,
    /// Requests in flight at the same time.
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// The longest a statement may run: `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    pub statement_timeout: Option<Duration>,
    /// Clear every limit first.
    #[arg(long)]
    pub reset: bool,
    /// Print the tenant as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `tenantry tenants move`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
pub struct MoveArgs {
    #[arg(value_parser = parse_id)]
    pub id: TenantId,
    /// The strategy to move to.
    #[arg(long, value_enum, group = "target")]
    pub to_strategy: Option<StrategyArg>,
    /// The named server to move a database tenant to (see `tenantry servers`).
    #[arg(long, group = "target")]
    pub to_server: Option<String>,
    /// The Citus worker to move the tenant to (HOST:PORT; Citus registries only).
    #[arg(long, group = "target")]
    pub to_node: Option<String>,
    /// How Citus copies the tenant to the worker: `logical` (writes go on) or
    /// `block-writes` (writes wait for the copy). Default: logical for a schema
    /// tenant whose tables allow it, else block-writes.
    #[arg(long, value_enum)]
    pub transfer: Option<TransferArg>,
    /// Lift the write fence and change capture of a move whose process died
    /// (`tenantry doctor` reports them as move-leftover).
    #[arg(long, group = "target")]
    pub recover: bool,
    /// How long the old place keeps refusing writes after the switch, for every
    /// instance to hear of it, before it is dropped.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub grace: Duration,
    /// The tenant migrations directory (the new place gets these versions). Default:
    /// the tenant migrations the application registered in the registry.
    #[arg(long)]
    pub migrations: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}
