//! `tenantry doctor`.

use crate::connect::manager;
use crate::options::{Cli, DoctorArgs};
use crate::output::{Failure, print_json};

pub async fn doctor(cli: &Cli, args: &DoctorArgs) -> Result<u8, Failure> {
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
