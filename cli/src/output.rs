//! What the commands print, and how they fail: JSON or text, progress on a terminal,
//! exit statuses.

use std::time::Duration;

use indicatif::ProgressBar;
use serde::Serialize;
use tenantry::Tenant;

/// A failure with its exit status.
pub struct Failure {
    pub code: u8,
    pub message: String,
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

pub fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

pub fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn print_tenant(t: &Tenant) {
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

pub fn print_status(t: &Tenant, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(t);
    }
    println!("tenant `{}` is {}", t.id, t.status);
    Ok(())
}

/// A spinner on a terminal (not with `--json`, not when stderr is redirected).
pub fn progress_spinner(json: bool, message: &str) -> Option<ProgressBar> {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(120));
    Some(spinner)
}

pub fn print_domains(t: &Tenant, json: bool) -> Result<(), Failure> {
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
