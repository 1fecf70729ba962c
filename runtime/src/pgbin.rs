//! Finding the PostgreSQL programs installed on the machine (`pg_dump` for exports,
//! `initdb` and `postgres` for the throwaway test server).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding `program`: on `PATH` (following a symlink to the real
/// installation), at `pg_config --bindir`, or the newest `/usr/lib/postgresql/*/bin`.
pub fn bindir_of(program: &str) -> Option<PathBuf> {
    bindir_with(&[program])
}

/// The directory holding both `initdb` and `postgres`.
#[cfg(feature = "testing")]
pub fn server_bindir() -> Option<PathBuf> {
    bindir_with(&["initdb", "postgres"])
}

fn bindir_with(programs: &[&str]) -> Option<PathBuf> {
    let has = |dir: &Path| programs.iter().all(|p| dir.join(p).is_file());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has(&dir) {
                // Follow a symlink to the real installation, if the rest is there too.
                let real = std::fs::canonicalize(dir.join(programs[0])).ok();
                if let Some(parent) = real.as_deref().and_then(Path::parent)
                    && has(parent)
                {
                    return Some(parent.to_path_buf());
                }
                return Some(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has(&dir) {
            return Some(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir)
}

/// `url` with its database replaced by `name` and query parameters kept, so that the
/// URL stays usable by libpq tools such as `psql` and `pg_dump`.
pub fn url_with_database(url: &str, name: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..path_start])
}

/// The URL without sqlx's own query parameters (`statement-cache-capacity`, ...),
/// which libpq tools reject; libpq's parameters have no `-`.
pub fn libpq_url(url: &str) -> String {
    match url.split_once('?') {
        None => url.to_owned(),
        Some((base, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.split('=').next().unwrap_or_default().contains('-'))
                .collect();
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
    }
}

/// `url` without its password, and the password (percent-decoded), for a libpq tool
/// that gets the password through `PGPASSWORD`.
fn split_password(url: &str) -> (String, Option<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_owned(), None);
    };
    let password = parsed.password().map(|p| {
        // Percent-decoding (a `+` in user info is a plus, not a space).
        url::form_urlencoded::parse(format!("p={}", p.replace('+', "%2B")).as_bytes())
            .next()
            .map_or_else(|| p.to_owned(), |(_, v)| v.into_owned())
    });
    if password.is_some() && parsed.set_password(None).is_err() {
        return (url.to_owned(), None);
    }
    (parsed.to_string(), password)
}

/// Runs `pg_dump` against `url` (a libpq URL) with `args`, without owners or
/// privileges, and returns what it wrote. Asynchronous (the runtime's threads are
/// not blocked), and the process is killed if the caller goes away.
pub(crate) async fn pg_dump(url: &str, args: &[&str]) -> Result<Vec<u8>, crate::error::Error> {
    let internal = crate::error::Error::Internal;
    let bindir = bindir_of("pg_dump").ok_or_else(|| {
        internal(
            "pg_dump not found (looked on PATH, at `pg_config --bindir` and in \
             /usr/lib/postgresql/*/bin)"
                .to_owned(),
        )
    })?;
    // The password goes through the environment, never the command line (which
    // every user of the machine sees in `ps`).
    let (url, password) = split_password(&libpq_url(url));
    let mut command = tokio::process::Command::new(bindir.join("pg_dump"));
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let dump = command
        .arg("--dbname")
        .arg(url)
        .args(["--no-owner", "--no-privileges"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| internal(format!("cannot run pg_dump: {e}")))?;
    if !dump.status.success() {
        return Err(internal(format!(
            "pg_dump failed: {}",
            String::from_utf8_lossy(&dump.stderr).trim()
        )));
    }
    Ok(dump.stdout)
}

#[cfg(test)]
mod tests {
    use super::split_password;

    #[test]
    fn the_password_leaves_the_url() {
        let (url, password) = split_password("postgres://app:s3cr%40t@db:5432/app?sslmode=require");
        assert_eq!(url, "postgres://app@db:5432/app?sslmode=require");
        assert_eq!(password.as_deref(), Some("s3cr@t"));
        let (_, password) = split_password("postgres://app:a+b%20c@db/app");
        assert_eq!(password.as_deref(), Some("a+b c"));
        let (url, password) = split_password("postgres://app@db/app");
        assert_eq!(url, "postgres://app@db/app");
        assert_eq!(password, None);
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn url_with_database_keeps_the_query() {
        assert_eq!(
            url_with_database("postgres://u@h:5/old?sslmode=disable", "new"),
            "postgres://u@h:5/new?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://h", "new"), "postgres://h/new");
    }

    #[test]
    fn libpq_url_drops_sqlx_parameters() {
        assert_eq!(
            libpq_url("postgres://h/db?sslmode=disable&statement-cache-capacity=0"),
            "postgres://h/db?sslmode=disable"
        );
        assert_eq!(
            libpq_url("postgres://h/db?statement-cache-capacity=0"),
            "postgres://h/db"
        );
    }
}
