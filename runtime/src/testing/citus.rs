//! A throwaway Citus cluster: a coordinator and two workers started like the
//! throwaway server, each with `shared_preload_libraries = 'citus'` and
//! `wal_level = logical` (online moves use logical replication).

use sqlx::{Connection, PgConnection};

use super::{FlakyProxy, TestDbError, TestServer, find_bindir};

/// Whether the Citus extension is installed next to the PostgreSQL server binaries.
/// Where it is not, Citus tests say so and name the command that installs it.
pub fn citus_installed() -> bool {
    let Some(bindir) = find_bindir() else {
        return false;
    };
    let pg_config = bindir.join("pg_config");
    let libdir = std::process::Command::new(&pg_config)
        .arg("--pkglibdir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .or_else(|| bindir.parent().map(|p| p.join("lib").display().to_string()));
    libdir.is_some_and(|dir| std::path::Path::new(&dir).join("citus.so").exists())
}

/// Lets Citus's logical decoding plugin (online shard moves) run where the server
/// restricts output plugins (`output_plugin_libraries`, in recent Debian builds of
/// PostgreSQL 15; servers without the setting allow every plugin).
pub(crate) async fn allow_citus_output_plugin(conn: &mut PgConnection) -> Result<(), TestDbError> {
    let current: Option<String> = sqlx::query_scalar(
        "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(current) = current
        && !current.split(',').any(|p| p.trim() == "citus")
    {
        let value = if current.trim().is_empty() {
            "citus".to_owned()
        } else {
            format!("{current}, citus")
        };
        // A list setting: one literal per library.
        let list = value
            .split(',')
            .map(|p| crate::naming::quote_literal(p.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER SYSTEM SET output_plugin_libraries = {list}"
        )))
        .execute(&mut *conn)
        .await?;
        sqlx::raw_sql("SELECT pg_reload_conf()")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A coordinator and two workers, all on 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct TestCluster {
    coordinator: TestServer,
    workers: Vec<TestServer>,
    /// Each worker is known to the cluster through a proxy of its own, which can cut
    /// it off (a worker down) and bring it back.
    proxies: Vec<FlakyProxy>,
}

const SETTINGS: &[&str] = &[
    "shared_preload_libraries=citus",
    "wal_level=logical",
    "max_replication_slots=20",
    "max_wal_senders=20",
    "citus.max_shared_pool_size=100",
];

impl TestCluster {
    /// Starts the three servers and joins them: `CREATE EXTENSION citus` on each,
    /// `citus_set_coordinator_host`, `citus_add_node` for each worker.
    pub async fn start() -> Result<Self, TestDbError> {
        Self::start_with(&[]).await
    }

    /// [`Self::start`] with server settings of its own for every node (`name=value`,
    /// after the cluster's: `wal_level=replica` takes logical replication away).
    pub async fn start_with(extra: &[&str]) -> Result<Self, TestDbError> {
        if !citus_installed() {
            return Err(TestDbError::Start(
                "Citus is not installed: run ../shared/scripts/install-citus.sh (builds \
                 Citus 13.2.2 into the machine's PostgreSQL 15, about 4 minutes)"
                    .to_owned(),
            ));
        }
        let settings: Vec<String> = SETTINGS
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect();
        let start = move || {
            let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
            TestServer::start_with(&settings)
        };
        let (coordinator, w1, w2) = tokio::task::spawn_blocking(move || {
            Ok::<_, TestDbError>((start()?, start()?, start()?))
        })
        .await
        .map_err(|e| TestDbError::Start(format!("starting the cluster: {e}")))??;
        for server in [&coordinator, &w1, &w2] {
            let mut conn = PgConnection::connect(server.url()).await?;
            sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS citus")
                .execute(&mut conn)
                .await?;
            allow_citus_output_plugin(&mut conn).await?;
            let _ = conn.close().await;
        }
        let mut conn = PgConnection::connect(coordinator.url()).await?;
        sqlx::query("SELECT citus_set_coordinator_host('127.0.0.1', $1)")
            .bind(i32::from(coordinator.port()))
            .execute(&mut conn)
            .await?;
        let mut proxies = Vec::new();
        for worker in [&w1, &w2] {
            let proxy = FlakyProxy::start(([127, 0, 0, 1], worker.port()).into())
                .await
                .map_err(|e| TestDbError::Start(format!("a proxy for a worker: {e}")))?;
            sqlx::query("SELECT citus_add_node('127.0.0.1', $1)")
                .bind(i32::from(proxy.addr().port()))
                .execute(&mut conn)
                .await?;
            proxies.push(proxy);
        }
        let _ = conn.close().await;
        eprintln!(
            "tenantry::testing: started a Citus cluster: coordinator {}, workers 127.0.0.1:{} and 127.0.0.1:{}",
            coordinator.url(),
            proxies[0].addr().port(),
            proxies[1].addr().port()
        );
        Ok(Self {
            coordinator,
            workers: vec![w1, w2],
            proxies,
        })
    }

    /// The coordinator's `postgres` database (the registry goes there).
    pub fn url(&self) -> &str {
        self.coordinator.url()
    }

    /// The workers as the cluster knows them, `127.0.0.1:port` (their proxies).
    pub fn workers(&self) -> Vec<String> {
        self.proxies
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.addr().port()))
            .collect()
    }

    /// Cuts worker `i` off (every connection to it, and new ones refused): a worker
    /// down, as the coordinator sees it.
    pub fn stop_worker(&self, i: usize) {
        self.proxies[i].cut();
    }

    /// Brings worker `i` back.
    pub fn restart_worker(&self, i: usize) {
        self.proxies[i].restore();
    }

    /// The worker servers themselves (`postgres` databases), behind the proxies.
    pub fn worker_urls(&self) -> Vec<&str> {
        self.workers.iter().map(TestServer::url).collect()
    }
}
