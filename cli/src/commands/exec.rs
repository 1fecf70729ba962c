//! `tenantry exec`.

use std::time::Duration;

use serde::Serialize;
use tenantry::Strategy;

use crate::connect::manager;
use crate::options::{Cli, ExecArgs};
use crate::output::{Failure, print_json, usage};

#[derive(Serialize)]
struct ExecReport {
    tenant: String,
    status: &'static str,
    #[serde(flatten)]
    output: Option<tenantry::admin::ScriptOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn exec(cli: &Cli, args: &ExecArgs) -> Result<u8, Failure> {
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
