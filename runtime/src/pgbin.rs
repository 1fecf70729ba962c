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
