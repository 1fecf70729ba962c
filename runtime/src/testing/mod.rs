//! A throwaway PostgreSQL for tests, examples and benchmarks (feature `testing`).
//!
//! [`TestDatabase::create`] gives each caller a fresh, empty database:
//!
//! - with `DATABASE_URL` set, on that server;
//! - otherwise on a private server this process starts from the PostgreSQL binaries
//!   installed on the machine (found on `PATH`, at `pg_config --bindir`, or in
//!   `/usr/lib/postgresql/*/bin`), listening on a free port of 127.0.0.1 with its data
//!   in a temporary directory. The server is shared by the whole process and is
//!   stopped, and its directory removed, when the process exits (a watchdog shell
//!   notices that its stdin closed). When run as root it runs as the `postgres` user,
//!   because PostgreSQL refuses to run as root.
//!
//! [`FlakyProxy`] sits between an app and the server and can cut the connection, to
//! prove what happens when the database is unreachable.

mod citus;
mod tenants;

pub use citus::{TestCluster, citus_installed};

pub use tenants::{TestTenants, TestTenantsOptions, assert_isolated, run};

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Why a test database could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TestDbError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries found (looked on PATH, at `pg_config --bindir` and in \
         /usr/lib/postgresql/*/bin): install PostgreSQL or set DATABASE_URL"
    )]
    NoBinaries,
    /// Starting the server failed.
    #[error("could not start a throwaway PostgreSQL: {0}")]
    Start(String),
    /// A database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A throwaway PostgreSQL server of its own (most tests share one through
/// [`TestDatabase`]; this is for tests that need a second server). Stopped, and its
/// directory removed, when dropped or when the process exits.
#[derive(Debug)]
pub struct TestServer {
    url: String,
    // Holding the watchdog's stdin keeps the server alive; closing it stops the server.
    _watchdog: Mutex<Child>,
}

impl TestServer {
    /// Starts a new server from the installed binaries (even with `DATABASE_URL` set).
    pub fn start() -> Result<Self, TestDbError> {
        start_server(&[])
    }

    /// Starts a new server with extra settings (`name=value`, each passed as `-c`),
    /// for example `shared_preload_libraries=citus`.
    pub fn start_with(settings: &[&str]) -> Result<Self, TestDbError> {
        start_server(settings)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_default()
    }

    /// The URL of its `postgres` database, as the superuser `postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

static SERVER: OnceLock<Result<TestServer, String>> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh database on the test server.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    admin_url: String,
    name: String,
    tag: String,
}

impl TestDatabase {
    /// Creates a new, empty database (see the module docs for which server).
    pub async fn create() -> Result<Self, TestDbError> {
        let admin_url = server_url()?;
        let name = format!(
            "tenantry_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let mut conn = PgConnection::connect(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let url = crate::pgbin::url_with_database(&admin_url, &name);
        // 64 random bits (a randomly keyed hash of the unique name), in base 36.
        let mut bits = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), &name);
        let mut tag = String::new();
        for _ in 0..12 {
            tag.push(char::from_digit((bits % 36) as u32, 36).expect("a base-36 digit"));
            bits /= 36;
        }
        Ok(Self {
            url,
            admin_url,
            name,
            tag,
        })
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connect options of this database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.url.parse().expect("a URL this module made")
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A random tag of this test database (12 lowercase letters and digits, 62 bits):
    /// for the names a test makes outside its database (roles, database prefixes),
    /// since tests share a server. Two test databases alive at once, in any process,
    /// practically never share one.
    pub fn tag(&self) -> String {
        self.tag.clone()
    }

    /// A prefix for the tenant databases a test makes (`t<tag>_`, for
    /// [`TenantManagerBuilder::database_prefix`](crate::TenantManagerBuilder::database_prefix)):
    /// dropping the test database drops every database whose name starts with it, so a
    /// test on a shared server (`DATABASE_URL`) leaves none of its tenants' databases.
    pub fn database_prefix(&self) -> String {
        format!("t{}_", self.tag())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Dropping needs async I/O; do it on a thread of its own so that it also works
        // from inside a runtime. Failures only leave an unused database behind.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let prefix = self.database_prefix();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                    // The tenant databases made under this test's prefix: its tag is
                    // random (see `tag`), so no other test's databases share it.
                    let made: Vec<String> = sqlx::query_scalar(
                        "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
                    )
                    .bind(&prefix)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
                    for db in made {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            crate::naming::quote_ident(&db)
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// The URL of the server tests use: `DATABASE_URL`, or a throwaway server started once
/// per process.
pub fn server_url() -> Result<String, TestDbError> {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return Ok(url);
    }
    match SERVER.get_or_init(|| start_server(&[]).map_err(|e| e.to_string())) {
        Ok(server) => Ok(server.url.clone()),
        Err(e) => Err(TestDbError::Start(e.clone())),
    }
}

/// The directory holding `initdb` and `postgres`: `PATH`, `pg_config --bindir`, or the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    crate::pgbin::server_bindir()
}

fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// When running as root (as CI does), the `postgres` user's uid and gid, after giving
/// it `paths`: PostgreSQL and PgBouncer refuse to run as root. `None` otherwise.
fn unprivileged(
    program: &str,
    hint: &str,
    paths: &[PathBuf],
) -> Result<Option<(u32, u32)>, TestDbError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| {
            TestDbError::Start(format!(
                "running as root, and there is no `postgres` user to run {program} as \
                 ({program} refuses to run as root); {hint}"
            ))
        })?;
    for path in paths {
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
            TestDbError::Start(format!("chown of {} for {program}: {e}", path.display()))
        })?;
    }
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn start_server(settings: &[&str]) -> Result<TestServer, TestDbError> {
    let bindir = find_bindir().ok_or(TestDbError::NoBinaries)?;
    let err = |what: &str, e: &dyn std::fmt::Display| TestDbError::Start(format!("{what}: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("tenantry-pg-")
        .tempdir()
        .map_err(|e| err("creating a temporary directory", &e))?
        .keep();
    // PostgreSQL refuses to run as root: run it as the unprivileged `postgres` user.
    let run_as = unprivileged(
        "PostgreSQL",
        "create one or set DATABASE_URL",
        std::slice::from_ref(&dir),
    )?;
    let command = |program: &Path| {
        let mut c = Command::new(program);
        c.current_dir(&dir).env("LC_ALL", "C").env("LANG", "C");
        if let Some((uid, gid)) = run_as {
            use std::os::unix::process::CommandExt;
            c.uid(uid)
                .gid(gid)
                .env("HOME", &dir)
                .env("USER", "postgres");
        }
        c
    };
    let data = dir.join("data");
    let out = command(&bindir.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ])
        .output()
        .map_err(|e| err("running initdb", &e))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(TestDbError::Start(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let port = free_port().map_err(|e| err("finding a free port", &e))?;
    // The watchdog starts the server, then blocks reading stdin; when this process
    // exits (and stdin closes) it stops the server and removes the directory.
    let script = r#"
        "$1/postgres" -D "$2/data" -p "$3" -k "$2" -c listen_addresses=127.0.0.1 \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_connections=400 -c shared_buffers=64MB $4 >"$2/server.log" 2>&1 &
        pid=$!
        echo started
        read -r _ignored
        kill -INT "$pid" 2>/dev/null
        wait "$pid"
        rm -rf "$2"
    "#;
    let mut child = command(Path::new("/bin/sh"))
        .arg("-c")
        .arg(script)
        .arg("tenantry-pg-watchdog")
        .arg(&bindir)
        .arg(&dir)
        .arg(port.to_string())
        .arg(
            settings
                .iter()
                .map(|s| format!("-c {s}"))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err("starting the server", &e))?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && ready(&url) {
            break;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            if let Some(stdin) = child.stdin.as_mut() {
                let _ = stdin.write_all(b"stop\n");
            }
            return Err(TestDbError::Start(format!(
                "the server did not start:\n{log}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "tenantry::testing: started a throwaway PostgreSQL at {url} (data in {})",
        dir.display()
    );
    Ok(TestServer {
        url,
        _watchdog: Mutex::new(child),
    })
}

fn ready(url: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    let url = url.to_owned();
    std::thread::spawn(move || rt.block_on(async { PgConnection::connect(&url).await.is_ok() }))
        .join()
        .unwrap_or(false)
}

/// A TCP proxy in front of a database server that can cut every connection and
/// refuse new ones, to simulate an outage.
#[derive(Debug, Clone)]
pub struct FlakyProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    epoch: watch::Sender<u64>,
}

impl FlakyProxy {
    /// Starts a proxy on a free local port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let (epoch, _) = watch::channel(0u64);
        let proxy = Self { addr, up, epoch };
        let state = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !state.up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = state.epoch.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// The address to connect to instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open connection and refuses new ones until [`FlakyProxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A PgBouncer in transaction mode in front of a test server (the Debian package
/// `pgbouncer`, found on `PATH` or in `/usr/sbin`), on a free port of 127.0.0.1: to
/// prove what works behind a transaction pooler. Run as the `postgres` user when
/// root (PgBouncer refuses to run as root). Stopped, and its directory removed, when
/// dropped or when the process exits.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    _watchdog: Mutex<Child>,
}

impl PgBouncer {
    /// The `pgbouncer` binary [`PgBouncer::start`] would run: the first of
    /// `/usr/sbin`, `/usr/bin`, `/usr/local/bin` that has one, else the first on `PATH`.
    /// `None` where PgBouncer is not installed, so that a test can say it is skipped.
    pub fn binary() -> Option<PathBuf> {
        [
            "/usr/sbin/pgbouncer",
            "/usr/bin/pgbouncer",
            "/usr/local/bin/pgbouncer",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("pgbouncer"))
                    .find(|p| p.exists())
            })
        })
    }

    /// Starts a PgBouncer in transaction mode for every database of the server at
    /// `upstream` (trust authentication for `users`), with `pool_size` server
    /// connections per database and user.
    pub fn start(
        upstream: &PgConnectOptions,
        users: &[&str],
        pool_size: u32,
    ) -> Result<Self, TestDbError> {
        let err =
            |what: &str, e: &dyn std::fmt::Display| TestDbError::Start(format!("{what}: {e}"));
        let binary = Self::binary().ok_or_else(|| {
            TestDbError::Start(
                "no `pgbouncer` binary found (on PATH or in /usr/sbin): install the \
                     `pgbouncer` package"
                    .to_owned(),
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("tenantry-pgbouncer-")
            .tempdir()
            .map_err(|e| err("creating a temporary directory", &e))?
            .keep();
        let port = free_port().map_err(|e| err("finding a free port", &e))?;
        let host = upstream.get_host();
        let host = if host.starts_with('/') {
            "127.0.0.1"
        } else {
            host
        };
        let config = format!(
            "[databases]\n* = host={host} port={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {dir}/users.txt\n\
             pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 2000\n\
             ignore_startup_parameters = extra_float_digits\nserver_reset_query =\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            upstream.get_port(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config)
            .map_err(|e| err("writing the config", &e))?;
        let users: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.join("users.txt"), users).map_err(|e| err("writing the users", &e))?;
        let run_as = unprivileged(
            "PgBouncer",
            "create one",
            &[
                dir.clone(),
                dir.join("pgbouncer.ini"),
                dir.join("users.txt"),
            ],
        )?;
        // Like the server's watchdog: stops PgBouncer when this process exits.
        let script = r#"
            "$1" "$2/pgbouncer.ini" >/dev/null 2>&1 &
            pid=$!
            echo started
            read -r _ignored
            kill -INT "$pid" 2>/dev/null
            wait "$pid"
            rm -rf "$2"
        "#;
        let mut command = Command::new("/bin/sh");
        command
            .current_dir(&dir)
            .arg("-c")
            .arg(script)
            .arg("tenantry-pgbouncer-watchdog")
            .arg(&binary)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid).env("HOME", &dir);
        }
        let mut child = command.spawn().map_err(|e| err("starting PgBouncer", &e))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
                if let Some(stdin) = child.stdin.as_mut() {
                    let _ = stdin.write_all(b"stop\n");
                }
                return Err(TestDbError::Start(format!(
                    "PgBouncer did not start:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            port,
            _watchdog: Mutex::new(child),
        })
    }

    /// The port PgBouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `options` pointed at PgBouncer instead of the server.
    pub fn options(&self, options: &PgConnectOptions) -> PgConnectOptions {
        options.clone().host("127.0.0.1").port(self.port)
    }
}
