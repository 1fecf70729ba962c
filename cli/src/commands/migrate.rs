//! `tenantry migrate` and `tenantry migrate status`.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use tenantry::migrate::{Canary, MigrateOptions, MigrationEvent, MigrationOutcome};

use crate::connect::manager;
use crate::options::{Cli, MigrateArgs};
use crate::output::{Failure, print_json, usage};

pub async fn migrate(cli: &Cli, args: &MigrateArgs) -> Result<u8, Failure> {
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

pub async fn migrate_status(
    cli: &Cli,
    source: Option<&PathBuf>,
    json: bool,
) -> Result<u8, Failure> {
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
