//! `tenantry tenants ...`: one function per subcommand.

use std::path::PathBuf;

use tenantry::{NewTenant, TenantId, TenantStatus};

use crate::connect::{existing, manager, provisioning_manager, source_note, with_source_hint};
use crate::options::{Cli, ExportFormat, MoveArgs, SetLimitsArgs, StrategyArg, TenantsCommand};
use crate::output::{
    Failure, print_domains, print_json, print_status, print_tenant, progress_spinner, usage,
};

pub async fn tenants(cli: &Cli, cmd: &TenantsCommand) -> Result<u8, Failure> {
    match cmd {
        TenantsCommand::Create {
            id,
            name,
            domain,
            strategy,
            migrations,
            json,
        } => create(cli, id, name, domain, strategy, migrations, json).await,
        TenantsCommand::List { json } => list(cli, json).await,
        TenantsCommand::Show { id, json } => show(cli, id, json).await,
        TenantsCommand::Suspend { id, json } => suspend(cli, id, json).await,
        TenantsCommand::Resume { id, json } => resume(cli, id, json).await,
        TenantsCommand::Delete {
            id,
            yes,
            force,
            json,
        } => delete(cli, id, yes, force, json).await,
        TenantsCommand::SetLimits(args) => set_limits(cli, args).await,
        TenantsCommand::AddDomain {
            id,
            domain,
            primary,
            json,
        } => add_domain(cli, id, domain, primary, json).await,
        TenantsCommand::RemoveDomain { id, domain, json } => {
            remove_domain(cli, id, domain, json).await
        }
        TenantsCommand::PrimaryDomain { id, domain, json } => {
            primary_domain(cli, id, domain, json).await
        }
        TenantsCommand::Export {
            id,
            out,
            format,
            json,
        } => export(cli, id, out, format, json).await,
        TenantsCommand::Import {
            file,
            as_id,
            strategy,
            server,
            migrations,
            json,
        } => import(cli, file, as_id, strategy, server, migrations, json).await,
        TenantsCommand::Move(args) => move_tenant(cli, args).await,
    }
}

/// `tenantry tenants create`.
async fn create(
    cli: &Cli,
    id: &TenantId,
    name: &str,
    domain: &Option<String>,
    strategy: &StrategyArg,
    migrations: &Option<PathBuf>,
    json: &bool,
) -> Result<u8, Failure> {
    let manager = provisioning_manager(cli, migrations.as_ref()).await?;
    let strategy = strategy.strategy();
    let new = NewTenant {
        id: id.clone(),
        name: name.to_owned(),
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
    Ok(0)
}

/// `tenantry tenants list`.
async fn list(cli: &Cli, json: &bool) -> Result<u8, Failure> {
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
    Ok(0)
}

/// `tenantry tenants show`.
async fn show(cli: &Cli, id: &TenantId, json: &bool) -> Result<u8, Failure> {
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
    Ok(0)
}

/// `tenantry tenants suspend`.
async fn suspend(cli: &Cli, id: &TenantId, json: &bool) -> Result<u8, Failure> {
    let manager = manager(cli, None).await?;
    let t = manager.suspend_tenant(id).await?;
    print_status(&t, *json)?;
    Ok(0)
}

/// `tenantry tenants resume`.
async fn resume(cli: &Cli, id: &TenantId, json: &bool) -> Result<u8, Failure> {
    let manager = manager(cli, None).await?;
    let t = manager.resume_tenant(id).await?;
    print_status(&t, *json)?;
    Ok(0)
}

/// `tenantry tenants delete`.
async fn delete(
    cli: &Cli,
    id: &TenantId,
    yes: &bool,
    force: &bool,
    json: &bool,
) -> Result<u8, Failure> {
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
    Ok(0)
}

/// `tenantry tenants set-limits`.
async fn set_limits(cli: &Cli, args: &SetLimitsArgs) -> Result<u8, Failure> {
    let SetLimitsArgs {
        id,
        rate,
        burst,
        concurrency,
        statement_timeout,
        reset,
        json,
    } = args;
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
        limits.statement_timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
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
    Ok(0)
}

/// `tenantry tenants add-domain`.
async fn add_domain(
    cli: &Cli,
    id: &TenantId,
    domain: &str,
    primary: &bool,
    json: &bool,
) -> Result<u8, Failure> {
    let manager = manager(cli, None).await?;
    let tenant = manager.add_tenant_domain(id, domain, *primary).await?;
    print_domains(&tenant, *json)?;
    Ok(0)
}

/// `tenantry tenants remove-domain`.
async fn remove_domain(cli: &Cli, id: &TenantId, domain: &str, json: &bool) -> Result<u8, Failure> {
    let manager = manager(cli, None).await?;
    let tenant = manager.remove_tenant_domain(id, domain).await?;
    print_domains(&tenant, *json)?;
    Ok(0)
}

/// `tenantry tenants primary-domain`.
async fn primary_domain(
    cli: &Cli,
    id: &TenantId,
    domain: &str,
    json: &bool,
) -> Result<u8, Failure> {
    let manager = manager(cli, None).await?;
    let tenant = manager.set_primary_domain(id, domain).await?;
    print_domains(&tenant, *json)?;
    Ok(0)
}

/// `tenantry tenants export`.
async fn export(
    cli: &Cli,
    id: &TenantId,
    out: &PathBuf,
    format: &ExportFormat,
    json: &bool,
) -> Result<u8, Failure> {
    let manager = manager(cli, None).await?;
    let body = match format {
        ExportFormat::Tenantry => manager.admin().export(id).await?,
        ExportFormat::Sql => {
            let url = cli.database_url.as_deref().unwrap_or_default();
            manager.admin().export_sql(id, url).await?
        }
    };
    std::fs::write(out, &body).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
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
    Ok(0)
}

/// `tenantry tenants import`.
async fn import(
    cli: &Cli,
    file: &PathBuf,
    as_id: &Option<TenantId>,
    strategy: &Option<StrategyArg>,
    server: &Option<String>,
    migrations: &Option<PathBuf>,
    json: &bool,
) -> Result<u8, Failure> {
    let body = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
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
    Ok(0)
}

/// `tenantry tenants move`.
async fn move_tenant(cli: &Cli, args: &MoveArgs) -> Result<u8, Failure> {
    let MoveArgs {
        id,
        to_strategy,
        to_server,
        to_node,
        transfer,
        recover,
        grace,
        migrations,
        json,
    } = args;
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
    let report = report.map_err(|e| with_source_hint(e.into(), &manager, migrations.as_ref()))?;
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
    Ok(0)
}
