//! `tenantry`: operate the tenants of a tenantry registry.
//!
//! Exit status: 0 on success, 1 when something failed (some tenants, an unknown
//! tenant, an unreachable database, problems found by `doctor`), 2 for a usage error.

mod commands;
mod connect;
mod options;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::commands::{doctor, exec, migrate, servers, tenants};
use crate::options::{Cli, Command, MigrateCommand};
use crate::output::Failure;

fn main() -> ExitCode {
    // Output piped into `head` or `grep -q` ends like any Unix tool's when the reader
    // goes away (killed by SIGPIPE), not with a panic about a broken pipe: Rust
    // ignores SIGPIPE, so every `println!` after the reader left would panic.
    #[cfg(unix)]
    // SAFETY: at the start of `main`, before any thread exists, the signal's
    // disposition is set back to the default; nothing else handles SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Tenants(cmd) => tenants::tenants(&cli, cmd).await,
        Command::Migrate(args) => match &args.command {
            Some(MigrateCommand::Status { source, json }) => {
                migrate::migrate_status(&cli, source.as_ref(), *json).await
            }
            None => migrate::migrate(&cli, args).await,
        },
        Command::Doctor(args) => doctor::doctor(&cli, args).await,
        Command::Exec(args) => exec::exec(&cli, args).await,
        Command::Servers(cmd) => servers::servers(&cli, cmd).await,
    }
}
