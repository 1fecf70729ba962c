//! Reaching the registry: the manager each command works through.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tenantry::{Tenant, TenantId, TenantManager, TenantMigrations};

use crate::options::Cli;
use crate::output::{Failure, usage};

pub async fn manager(cli: &Cli, migrations: Option<&PathBuf>) -> Result<TenantManager, Failure> {
    manager_with(cli, migrations, false).await
}

/// A manager that provisions with `--migrations`, or else with the tenant migrations
/// the application registered in the registry (for `create`, `import` and `move`).
pub async fn provisioning_manager(
    cli: &Cli,
    migrations: Option<&PathBuf>,
) -> Result<TenantManager, Failure> {
    manager_with(cli, migrations, true).await
}

/// Where a command's tenant migrations came from, for its messages.
pub fn source_note(manager: &TenantManager, given: Option<&PathBuf>) -> String {
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
pub fn with_source_hint(
    failure: Failure,
    manager: &TenantManager,
    given: Option<&PathBuf>,
) -> Failure {
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

pub async fn manager_with(
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

pub async fn existing(manager: &TenantManager, id: &TenantId) -> Result<Tenant, Failure> {
    Ok(manager.admin().existing(id).await?)
}
