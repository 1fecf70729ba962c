//! `tenantry servers add|list|remove`.

use crate::connect::manager;
use crate::options::{Cli, ServersCommand};
use crate::output::{Failure, print_json};

pub async fn servers(cli: &Cli, cmd: &ServersCommand) -> Result<u8, Failure> {
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
    let registered = admin.registered_servers().await?;
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
