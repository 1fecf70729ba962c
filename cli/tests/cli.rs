//! The `tenantry` binary against a throwaway PostgreSQL.

use std::path::Path;
use std::process::{Command, Output};

use tenantry::testing::TestDatabase;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tenantry(url: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.args(args).env_remove("DATABASE_URL");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run tenantry");
    Run {
        code: status.code().expect("exit code"),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn saas_migrations() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/saas/migrations/tenant")
        .display()
        .to_string()
}

async fn db() -> TestDatabase {
    TestDatabase::create().await.expect("a test database")
}

#[tokio::test]
async fn tenant_lifecycle() {
    let db = db().await;
    let url = Some(db.url());
    let migrations = saas_migrations();
    let r = tenantry(
        url,
        &[
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme",
            "--domain",
            "acme.example.com",
            "--migrations",
            &migrations,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("created tenant `acme`"));
    let r = tenantry(
        url,
        &[
            "tenants",
            "create",
            "globex",
            "--name",
            "Globex",
            "--strategy",
            "schema",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    let r = tenantry(url, &["tenants", "list", "--json"]);
    assert_eq!(r.code, 0);
    let list: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let ids: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["acme", "globex"]);
    let r = tenantry(url, &["tenants", "list"]);
    assert!(
        r.stdout.contains("acme")
            && r.stdout.contains("acme.example.com")
            && r.stdout.contains("active")
    );

    let r = tenantry(url, &["tenants", "show", "acme", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(shown["domain"], "acme.example.com");
    assert_eq!(shown["status"], "active");
    let r = tenantry(url, &["tenants", "show", "acme"]);
    assert!(
        r.stdout.contains("schema:      tenant_acme"),
        "{}",
        r.stdout
    );

    // Two-phase delete.
    let r = tenantry(url, &["tenants", "delete", "acme"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    let r = tenantry(url, &["tenants", "delete", "acme", "--yes"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("suspend it first"), "{}", r.stderr);
    let r = tenantry(url, &["tenants", "suspend", "acme"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("suspended"));
    let r = tenantry(url, &["tenants", "resume", "acme"]);
    assert!(r.stdout.contains("active"));
    tenantry(url, &["tenants", "suspend", "acme"]);
    let r = tenantry(url, &["tenants", "delete", "acme", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = tenantry(url, &["tenants", "show", "acme"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("tenant `acme` does not exist"));
    // --force suspends first.
    let r = tenantry(url, &["tenants", "delete", "globex", "--yes", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = tenantry(url, &["tenants", "list"]);
    assert!(r.stdout.contains("no tenants"));
}

#[tokio::test]
async fn clear_errors_and_exit_codes() {
    let db = db().await;
    let url = Some(db.url());
    for (args, code, needle) in [
        (vec!["tenants", "show", "Not-Valid"], 2, "invalid tenant id"),
        (
            vec!["tenants", "create", "x\";drop", "--name", "X"],
            2,
            "invalid tenant id",
        ),
        (
            vec![
                "tenants",
                "create",
                "ok",
                "--name",
                "X",
                "--strategy",
                "nosuch",
            ],
            2,
            "possible values",
        ),
        (vec!["tenants", "frobnicate"], 2, "unrecognized subcommand"),
        (vec!["migrate"], 2, "--source"),
        (
            vec!["migrate", "--source", "/x", "--concurrency", "0"],
            2,
            "concurrency",
        ),
        (
            vec!["tenants", "suspend", "ghost"],
            1,
            "tenant `ghost` does not exist",
        ),
        (
            vec!["tenants", "export", "ghost", "--out", "/tmp/x.sql"],
            1,
            "does not exist",
        ),
    ] {
        let r = tenantry(url, &args);
        assert_eq!(r.code, code, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    let r = tenantry(None, &["tenants", "list"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("DATABASE_URL"));
    let r = tenantry(
        Some("postgres://postgres@127.0.0.1:1/none"),
        &["tenants", "list"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot connect to the database"),
        "{}",
        r.stderr
    );
    let r = tenantry(
        None,
        &[
            "--database-url",
            "postgres://postgres@127.0.0.1:1/none",
            "tenants",
            "list",
        ],
    );
    assert_eq!(r.code, 1);
}

fn copy_dir(from: &str, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn migrate_across_tenants_status_and_failures() {
    let db = db().await;
    let url = Some(db.url());
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&saas_migrations(), dir.path());
    let source = dir.path().display().to_string();
    for i in 0..6 {
        let id = format!("t{i}");
        assert_eq!(
            tenantry(
                url,
                &[
                    "tenants",
                    "create",
                    &id,
                    "--name",
                    &id,
                    "--migrations",
                    &source
                ]
            )
            .code,
            0
        );
    }
    // Nothing to apply.
    let r = tenantry(url, &["migrate", "--source", &source]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("6 tenants: 0 migrated, 6 already current"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {:?}",
        r.stderr
    );

    std::fs::write(
        dir.path().join("0003_tags.sql"),
        "CREATE TABLE tags (id bigserial PRIMARY KEY, name text NOT NULL);",
    )
    .unwrap();
    let r = tenantry(url, &["migrate", "status", "--source", &source, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 6, "{status}");
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["pending"] == serde_json::json!([3]))
    );
    let r = tenantry(
        url,
        &[
            "migrate",
            "--source",
            &source,
            "--concurrency",
            "3",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["results"].as_array().unwrap().len(), 6);
    assert!(
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["outcome"] == "applied" && t["versions"] == serde_json::json!([3]))
    );
    let r = tenantry(url, &["migrate", "status", "--source", &source]);
    assert_eq!(r.stdout.lines().skip(1).count(), 6, "{}", r.stdout);
    assert!(
        r.stdout.lines().skip(1).all(|l| l.contains(" 3 ")),
        "{}",
        r.stdout
    );

    // A migration that fails: exit 1, failures listed; with a canary the rest is untouched.
    std::fs::write(
        dir.path().join("0004_broken.sql"),
        "ALTER TABLE nope ADD COLUMN x int;",
    )
    .unwrap();
    let r = tenantry(url, &["migrate", "--source", &source, "--canary", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("1 failed, 5 skipped"), "{}", r.stdout);
    assert!(r.stdout.contains("halted"), "{}", r.stdout);
    let r = tenantry(url, &["migrate", "--source", &source]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("6 failed"), "{}", r.stdout);
    assert!(r.stdout.contains("failed  t0: "), "{}", r.stdout);
    // Fixed: the rerun converges.
    std::fs::write(
        dir.path().join("0004_broken.sql"),
        "ALTER TABLE tags ADD COLUMN x int;",
    )
    .unwrap();
    let r = tenantry(url, &["migrate", "--source", &source]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("6 migrated"));
    // A changed migration file is drift.
    std::fs::write(
        dir.path().join("0004_broken.sql"),
        "ALTER TABLE tags ADD COLUMN y int;",
    )
    .unwrap();
    let r = tenantry(url, &["doctor", "--source", &source]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("drift") && r.stdout.contains("checksum"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn export_and_doctor() {
    let db = db().await;
    let url = Some(db.url());
    let migrations = saas_migrations();
    assert_eq!(
        tenantry(
            url,
            &[
                "tenants",
                "create",
                "acme",
                "--name",
                "Acme",
                "--migrations",
                &migrations
            ]
        )
        .code,
        0
    );
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("INSERT INTO tenant_acme.projects (name) VALUES ('export-me')")
        .execute(&pool)
        .await
        .unwrap();

    let out = tempfile::NamedTempFile::new().unwrap();
    let r = tenantry(
        url,
        &[
            "tenants",
            "export",
            "acme",
            "--format",
            "sql",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dump = std::fs::read_to_string(out.path()).unwrap();
    assert!(dump.starts_with("-- tenantry export of tenant `acme`"));
    assert!(dump.contains("CREATE TABLE tenant_acme.projects"), "{dump}");
    assert!(dump.contains("export-me"));
    assert!(
        !dump.contains("tenantry.tenants"),
        "only the tenant's schema"
    );

    // A database tenant: its own database is dumped.
    let prefix = db.database_prefix();
    let r = tenantry(
        url,
        &[
            "--database-prefix",
            &prefix,
            "tenants",
            "create",
            "dbco",
            "--name",
            "D",
            "--strategy",
            "database",
            "--migrations",
            &migrations,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = tenantry(
        url,
        &[
            "--database-prefix",
            &prefix,
            "tenants",
            "export",
            "dbco",
            "--format",
            "sql",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dump = std::fs::read_to_string(out.path()).unwrap();
    assert!(
        dump.contains(&format!("database {prefix}dbco")),
        "{}",
        &dump[..200]
    );
    assert!(
        dump.contains("CREATE TABLE public.projects"),
        "the tenant's database"
    );
    // A row tenant: the shared tables' definitions and only its rows. (Created before
    // its rows exist: rows left under an id make its creation a 409.)
    sqlx::raw_sql(
        "CREATE TABLE public.shared_items (tenant_id text NOT NULL, label text NOT NULL);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    tenantry::strategy::install_rls(&mut conn, "public.shared_items", "tenant_id")
        .await
        .unwrap();
    drop(conn);
    assert_eq!(
        tenantry(
            url,
            &[
                "tenants",
                "create",
                "rowco",
                "--name",
                "R",
                "--strategy",
                "row"
            ]
        )
        .code,
        0
    );
    // As the table's owner (a superuser here), past its policies.
    sqlx::raw_sql(
        "INSERT INTO public.shared_items VALUES ('rowco', 'mine'), ('other', 'not mine');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let r = tenantry(
        url,
        &[
            "tenants",
            "export",
            "rowco",
            "--format",
            "sql",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dump = std::fs::read_to_string(out.path()).unwrap();
    assert!(dump.contains("CREATE TABLE public.shared_items"), "{dump}");
    assert!(dump.contains("rowco\tmine"), "{dump}");
    assert!(!dump.contains("not mine"), "only this tenant's rows");
    // A database nobody owns is an orphan.
    let zombie = format!("{prefix}zombie");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{zombie}\"")))
        .execute(&pool)
        .await
        .unwrap();
    let r = tenantry(url, &["--database-prefix", &prefix, "doctor"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains(&format!("orphan-database {zombie}")),
        "{}",
        r.stdout
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{zombie}\"")))
        .execute(&pool)
        .await
        .unwrap();
    for id in ["dbco", "rowco"] {
        assert_eq!(
            tenantry(
                url,
                &[
                    "--database-prefix",
                    &prefix,
                    "tenants",
                    "delete",
                    id,
                    "--yes",
                    "--force"
                ]
            )
            .code,
            0
        );
    }
    sqlx::query("DROP TABLE public.shared_items")
        .execute(&pool)
        .await
        .unwrap();

    let r = tenantry(url, &["doctor"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("no problems found"));
    sqlx::raw_sql(
        "CREATE SCHEMA tenant_zombie;
         CREATE TABLE public.shared_items (id int PRIMARY KEY, tenant_id text);
         DROP SCHEMA tenant_acme CASCADE;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let r = tenantry(url, &["doctor", "--json"]);
    assert_eq!(r.code, 1);
    let findings: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let kinds: Vec<(String, String)> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("orphan-schema".into(), "tenant_zombie".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("missing-schema".into(), "acme".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("missing-rls".into(), "public.shared_items".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(
            "tenant-key".into(),
            "public.shared_items shared_items_pkey".into()
        )),
        "a shared table keyed without tenant_id: {kinds:?}"
    );
}

/// Names read back from the registry are validated before they reach `pg_dump`, a
/// connection URL or SQL: a tampered row is refused with a message, nothing is run.
#[tokio::test]
async fn tampered_registry_names_are_refused() {
    let db = db().await;
    let url = db.url().to_owned();
    let created = tenantry(
        Some(&url),
        &["tenants", "create", "victim", "--name", "Victim"],
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    for evil in [
        "--file=/tmp/tenantry-pwned",
        "tenant_victim; DROP SCHEMA public",
        "x\"y",
    ] {
        sqlx::query("UPDATE tenantry.tenants SET schema_name = $1 WHERE id = 'victim'")
            .bind(evil)
            .execute(&pool)
            .await
            .unwrap();
        let out = std::env::temp_dir().join("tenantry-tampered.sql");
        let run = tenantry(
            Some(&url),
            &[
                "tenants",
                "export",
                "victim",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(run.code, 1, "{evil}: {} {}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("invalid schema or database name"),
            "{}",
            run.stderr
        );
        assert!(!Path::new("/tmp/tenantry-pwned").exists());
        let show = tenantry(Some(&url), &["tenants", "show", "victim"]);
        assert_eq!(show.code, 1, "{}", show.stderr);
    }
    let public: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(public);
}

#[tokio::test]
async fn exec_runs_sql_in_each_tenant_under_its_binding() {
    let db = db().await;
    let url = Some(db.url());
    let migrations = saas_migrations();
    for id in ["acme", "globex"] {
        let r = tenantry(
            url,
            &[
                "tenants",
                "create",
                id,
                "--name",
                id,
                "--migrations",
                &migrations,
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    // Row tenants over a shared table under row-level security, acting as a role
    // that does not bypass it.
    let role = format!("exec_app_{}", db.name().rsplit('_').next().unwrap());
    {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE notes (tenant_id text NOT NULL DEFAULT current_setting('tenantry.tenant_id', true), body text NOT NULL);
             CREATE ROLE {role} NOLOGIN NOBYPASSRLS;
             GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {role};"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        tenantry::strategy::install_rls(&mut conn, "public.notes", "tenant_id")
            .await
            .unwrap();
    }
    for id in ["r-one", "r-two"] {
        let r = tenantry(
            url,
            &["tenants", "create", id, "--name", id, "--strategy", "row"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, sql: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, sql).unwrap();
        path.display().to_string()
    };

    // A change with RETURNING in every schema tenant, reported as rows.
    let insert = file(
        "insert.sql",
        "INSERT INTO projects (name) VALUES ('from exec') RETURNING name;",
    );
    let r = tenantry(
        url,
        &["exec", "--sql", &insert, "--strategy", "schema", "--json"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report.as_array().unwrap().len(), 2, "{report}");
    for entry in report.as_array().unwrap() {
        assert_eq!(entry["status"], "ok", "{entry}");
        assert_eq!(
            entry["rows"],
            serde_json::json!([{"name": "from exec"}]),
            "{entry}"
        );
    }

    // A script (several statements) runs as one transaction per tenant.
    let script = file(
        "script.sql",
        "CREATE TABLE audit (n int); INSERT INTO audit VALUES (1), (2);",
    );
    let r = tenantry(url, &["exec", "--sql", &script, "--tenants", "acme"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("acme: ok"), "{}", r.stdout);

    // One unknown tenant fails alone; the others run; the exit status says so.
    let count = file("count.sql", "SELECT count(*) AS n FROM projects");
    let r = tenantry(
        url,
        &["exec", "--sql", &count, "--tenants", "acme,ghost", "--json"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report[0]["tenant"], "acme");
    assert_eq!(report[0]["rows"], serde_json::json!([{"n": 1}]));
    assert_eq!(report[1]["tenant"], "ghost");
    assert_eq!(report[1]["status"], "error");
    assert!(
        report[1]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );

    // A failing statement rolls that tenant's transaction back.
    let broken = file(
        "broken.sql",
        "INSERT INTO projects (name) VALUES ('half'); SELECT 1/0;",
    );
    let r = tenantry(url, &["exec", "--sql", &broken, "--tenants", "globex"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let r = tenantry(
        url,
        &["exec", "--sql", &count, "--tenants", "globex", "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        report[0]["rows"],
        serde_json::json!([{"n": 1}]),
        "nothing of the failed run stayed"
    );

    // Row tenants: refused while the login bypasses row-level security...
    let write = file("write.sql", "INSERT INTO notes (body) VALUES ('mine')");
    let r = tenantry(url, &["exec", "--sql", &write, "--strategy", "row"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--row-role"), "{}", r.stderr);
    // ...and so is a row role that bypasses it, or one that does not exist...
    let r = tenantry(
        url,
        &[
            "exec",
            "--sql",
            &write,
            "--strategy",
            "row",
            "--row-role",
            "postgres",
        ],
    );
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("bypasses"), "{}", r.stderr);
    let r = tenantry(
        url,
        &[
            "exec",
            "--sql",
            &write,
            "--strategy",
            "row",
            "--row-role",
            "nobody_here",
        ],
    );
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    // ...and under their binding with the row role: each writes and sees only its own.
    let r = tenantry(
        url,
        &[
            "exec",
            "--sql",
            &write,
            "--strategy",
            "row",
            "--row-role",
            &role,
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let read = file("read.sql", "SELECT tenant_id FROM notes");
    let r = tenantry(
        url,
        &[
            "exec",
            "--sql",
            &read,
            "--strategy",
            "row",
            "--row-role",
            &role,
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        report.as_array().unwrap().len() >= 2,
        "every row tenant reports: {report}"
    );
    for entry in report.as_array().unwrap() {
        let tenant = entry["tenant"].as_str().unwrap();
        assert_eq!(
            entry["rows"],
            serde_json::json!([{"tenant_id": tenant}]),
            "{entry}"
        );
    }

    // A script that commits by itself is reported, not taken as the tenant's one transaction.
    let commits = file(
        "commits.sql",
        "INSERT INTO projects (name) VALUES ('x'); COMMIT;",
    );
    let r = tenantry(
        url,
        &["exec", "--sql", &commits, "--tenants", "acme", "--json"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ended its transaction"), "{}", r.stdout);

    // A script run for acme that reaches another tenant's schema, however it gets
    // there (the path set and set back, a qualified name, a read), is refused from
    // the locks its transaction holds, and nothing of it stays.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let globex_before: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_globex.projects")
        .fetch_one(&pool)
        .await
        .unwrap();
    for (name, sql) in [
        (
            "path.sql",
            "SET search_path TO tenant_globex; INSERT INTO projects (name) VALUES ('planted'); \
             SET search_path TO tenant_acme;",
        ),
        (
            "qualified.sql",
            "INSERT INTO tenant_globex.projects (name) VALUES ('planted') RETURNING id",
        ),
        ("peek.sql", "SELECT name FROM tenant_globex.projects"),
        (
            "function.sql",
            "CREATE FUNCTION pg_temp.sneak() RETURNS void LANGUAGE sql AS \
             $$ INSERT INTO tenant_globex.projects (name) VALUES ('planted') $$; \
             SELECT pg_temp.sneak();",
        ),
    ] {
        let path = file(name, sql);
        let r = tenantry(
            url,
            &["exec", "--sql", &path, "--tenants", "acme", "--json"],
        );
        assert_eq!(r.code, 1, "{name}: {}{}", r.stdout, r.stderr);
        let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(report[0]["status"], "error", "{name}: {report}");
        assert!(report[0].get("rows").is_none(), "{name}: {report}");
        assert!(
            report[0]["error"]
                .as_str()
                .unwrap()
                .contains("touched `tenant_globex`"),
            "{name}: {report}"
        );
    }
    let globex_after: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_globex.projects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        globex_after, globex_before,
        "a refused script wrote globex's rows"
    );
    // Its own schema and shared tables outside every tenant's schema stay usable.
    let own = file(
        "own.sql",
        "SET search_path TO tenant_acme; SELECT count(*) AS n FROM projects",
    );
    let r = tenantry(url, &["exec", "--sql", &own, "--tenants", "acme"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // Bad input: no file, an empty file, a bad id.
    let r = tenantry(url, &["exec", "--sql", "/nonexistent.sql"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot read"), "{}", r.stderr);
    let empty = file("empty.sql", "  \n");
    assert_eq!(tenantry(url, &["exec", "--sql", &empty]).code, 2);
    assert_eq!(
        tenantry(url, &["exec", "--sql", &count, "--tenants", "Bad!"]).code,
        2
    );
    // The role is the server's, not the database's: remove it once the database is gone.
    pool.close().await;
    drop(dir);
    drop(db);
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(
        &tenantry::testing::server_url().unwrap(),
    )
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn set_limits_changes_what_show_reports() {
    let db = db().await;
    let url = Some(db.url());
    assert_eq!(
        tenantry(url, &["tenants", "create", "acme", "--name", "Acme"]).code,
        0
    );
    let r = tenantry(
        url,
        &[
            "tenants",
            "set-limits",
            "acme",
            "--rate",
            "5",
            "--burst",
            "10",
            "--statement-timeout",
            "2s",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = tenantry(
        url,
        &[
            "tenants",
            "set-limits",
            "acme",
            "--concurrency",
            "3",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let shown: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        shown["limits"],
        serde_json::json!({"rate": 5.0, "burst": 10, "concurrency": 3, "statement_timeout_ms": 2000}),
        "flags not given keep their value"
    );
    let r = tenantry(url, &["tenants", "show", "acme"]);
    assert!(r.stdout.contains("\"concurrency\":3"), "{}", r.stdout);
    let r = tenantry(url, &["tenants", "set-limits", "acme", "--reset", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let shown: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(shown["limits"], serde_json::json!({}));
    // Bad input: a clear message, exit 2, nothing stored.
    for bad in [
        &["tenants", "set-limits", "acme", "--rate=-1"][..],
        &[
            "tenants",
            "set-limits",
            "acme",
            "--statement-timeout",
            "5 parsecs",
        ],
        &["tenants", "set-limits", "acme", "--concurrency", "0"],
    ] {
        let r = tenantry(url, bad);
        assert_eq!(r.code, 2, "{bad:?}: {}{}", r.stdout, r.stderr);
    }
    assert_eq!(
        tenantry(url, &["tenants", "set-limits", "ghost", "--rate", "1"]).code,
        1
    );
    let r = tenantry(url, &["tenants", "show", "acme", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(shown["limits"], serde_json::json!({}));
}

#[tokio::test]
async fn domains_are_added_and_removed_from_the_cli() {
    let db = db().await;
    let url = Some(db.url());
    let r = tenantry(
        url,
        &[
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme",
            "--domain",
            "acme.example.com",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        tenantry(url, &["tenants", "create", "globex", "--name", "Globex"]).code,
        0
    );
    let r = tenantry(
        url,
        &[
            "tenants",
            "add-domain",
            "acme",
            "www.acme.example.com",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        t["domains"],
        serde_json::json!(["acme.example.com", "www.acme.example.com"])
    );
    assert_eq!(t["domain"], "acme.example.com");
    // Taken, the primary, a bad name: clear errors, exit 1.
    let r = tenantry(
        url,
        &["tenants", "add-domain", "globex", "www.acme.example.com"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("already used by another tenant"),
        "{}",
        r.stderr
    );
    let r = tenantry(
        url,
        &["tenants", "remove-domain", "acme", "acme.example.com"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("primary"), "{}", r.stderr);
    assert_eq!(
        tenantry(url, &["tenants", "add-domain", "acme", "127.0.0.1"]).code,
        1
    );
    let r = tenantry(
        url,
        &["tenants", "primary-domain", "acme", "www.acme.example.com"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("primary: www.acme.example.com"),
        "{}",
        r.stdout
    );
    let r = tenantry(
        url,
        &[
            "tenants",
            "remove-domain",
            "acme",
            "acme.example.com",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(t["domains"], serde_json::json!(["www.acme.example.com"]));
}

#[tokio::test]
async fn import_move_and_servers_with_json_and_clear_errors() {
    let db = db().await;
    let url = Some(db.url());
    let migrations = saas_migrations();
    let create = tenantry(
        url,
        &[
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme",
            "--migrations",
            &migrations,
            "--json",
        ],
    );
    assert_eq!(create.code, 0, "{}", create.stderr);
    let created: serde_json::Value = serde_json::from_str(&create.stdout).unwrap();
    assert_eq!(created["id"], "acme");
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("INSERT INTO tenant_acme.projects (name) VALUES ('carried'), ('over')")
        .execute(&pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.tenantry");
    let file = file.to_str().unwrap();
    let r = tenantry(url, &["tenants", "export", "acme", "--out", file, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(summary["format"], "tenantry");

    // Shared tables for row tenants, as an application makes them.
    for table in ["projects", "data"] {
        let column = if table == "projects" { "name" } else { "value" };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS shared;
             CREATE TABLE shared.{table} (
                 id bigserial, tenant_id text NOT NULL, {column} text NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id));
             {}",
            tenantry::strategy::rls_sql(&format!("shared.{table}"), "tenant_id").unwrap()
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    // Imported under a new id as a row tenant: the rows come along.
    let r = tenantry(
        url,
        &[
            "tenants",
            "import",
            file,
            "--as",
            "acme-rows",
            "--strategy",
            "row",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let imported: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(imported["id"], "acme-rows");
    assert_eq!(imported["strategy"], "row");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM shared.projects WHERE tenant_id = 'acme-rows' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(names, ["carried", "over"]);

    // Moved back to a schema of its own, reported as JSON.
    let r = tenantry(
        url,
        &[
            "tenants",
            "move",
            "acme-rows",
            "--to-strategy",
            "schema",
            "--grace",
            "0s",
            "--migrations",
            &migrations,
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["tenant"]["strategy"], "schema");
    assert_eq!(report["from_strategy"], "row");
    assert_eq!(report["rows"], 2);
    assert!(report["write_pause_ms"].is_u64());
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM tenant_acme_rows.projects ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(names, ["carried", "over"]);

    // Named servers: kept in the registry, no passwords.
    let r = tenantry(
        url,
        &[
            "servers",
            "add",
            "eu",
            "postgres://app@db-eu.internal/postgres",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let listed: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(listed[0]["name"], "eu");
    let r = tenantry(url, &["servers", "list"]);
    assert!(r.stdout.contains("db-eu.internal"), "{}", r.stdout);

    // Bad input: a message and a non-zero exit, nothing changed.
    let missing = dir.path().join("missing").display().to_string();
    let garbage = dir.path().join("garbage.sql");
    std::fs::write(&garbage, "DROP TABLE tenantry.tenants;").unwrap();
    let garbage = garbage.to_str().unwrap();
    for (args, code, needle) in [
        (
            vec!["tenants", "import", missing.as_str()],
            1,
            "cannot read",
        ),
        (
            vec!["tenants", "import", garbage],
            1,
            "not a tenantry export",
        ),
        (
            vec!["tenants", "import", file],
            1,
            "fix: pass --migrations DIR, the tenant migrations the tenant's data was made with",
        ),
        (
            vec!["tenants", "import", file, "--migrations", &migrations],
            1,
            "already exists",
        ),
        (
            vec!["tenants", "import", file, "--as", "Bad Id"],
            2,
            "invalid",
        ),
        (vec!["tenants", "move", "acme"], 2, "required"),
        (
            vec![
                "tenants",
                "move",
                "acme",
                "--to-strategy",
                "row",
                "--to-server",
                "eu",
            ],
            2,
            "cannot be used with",
        ),
        (
            vec!["tenants", "move", "ghost", "--to-strategy", "row"],
            1,
            "does not exist",
        ),
        (
            vec!["tenants", "move", "acme", "--to-server", "eu"],
            1,
            "only database tenants",
        ),
        (
            vec!["tenants", "move", "acme", "--to-node", "10.0.0.5:5432"],
            1,
            "Citus",
        ),
        (
            vec![
                "tenants",
                "move",
                "acme",
                "--to-strategy",
                "row",
                "--transfer",
                "logical",
            ],
            2,
            "--to-node",
        ),
        (
            vec![
                "tenants",
                "move",
                "acme",
                "--to-node",
                "10.0.0.5:5432",
                "--transfer",
                "sideways",
            ],
            2,
            "block-writes",
        ),
        (
            vec![
                "servers",
                "add",
                "eu2",
                "postgres://app:hunter2@db/postgres",
            ],
            1,
            "password",
        ),
        (
            vec!["servers", "add", "default", "postgres://db/postgres"],
            1,
            "not `default`",
        ),
        (
            vec!["servers", "add", "x", "mysql://db/x"],
            1,
            "postgres://",
        ),
        (vec!["servers", "remove", "nowhere"], 1, "no server"),
    ] {
        let r = tenantry(url, &args);
        assert_eq!(r.code, code, "{args:?}: {} {}", r.stdout, r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT url FROM tenantry.servers")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, ["postgres://app@db-eu.internal/postgres"]);
    let r = tenantry(url, &["servers", "remove", "eu", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "[]");
}

/// Without `--migrations`, `create`, `import` and `move` provision with the tenant
/// migrations the application registered in the registry when it started; a registry
/// no application registered a source in gets a message naming the flag.
#[tokio::test]
async fn create_import_and_move_use_the_migrations_the_application_registered() {
    let db = db().await;
    let url = Some(db.url());
    let prefix = db.database_prefix();

    // No application yet: create says what is missing and which flag to pass.
    let r = tenantry(url, &["tenants", "create", "early", "--name", "Early"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("no application has registered its tenant migrations")
            && r.stderr.contains("pass --migrations DIR"),
        "{}",
        r.stderr
    );

    // The application starts with its migrations: they are registered.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let app = tenantry::TenantManager::builder(pool.clone())
        .migrations(
            tenantry::TenantMigrations::from_dir(saas_migrations())
                .await
                .unwrap(),
        )
        .listen_for_changes(false)
        .build()
        .await
        .unwrap();
    let latest = app.migrations().latest_version().unwrap();
    drop(app);

    let r = tenantry(url, &["tenants", "create", "acme", "--name", "Acme"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "provisioned with the tenant migrations the application registered in the \
             registry (versions 1 to {latest})"
        )),
        "{}",
        r.stderr
    );
    sqlx::query("INSERT INTO tenant_acme.projects (name) VALUES ('carried'), ('over')")
        .execute(&pool)
        .await
        .unwrap();
    let status = tenantry(url, &["migrate", "status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains(&format!("\"version\": {latest}")),
        "acme is at the latest version: {}",
        status.stdout
    );

    // Export, then import under a new id: the registered source builds its tables.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.tenantry");
    let file = file.to_str().unwrap();
    let r = tenantry(url, &["tenants", "export", "acme", "--out", file]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = tenantry(
        url,
        &["tenants", "import", file, "--as", "acme-copy", "--json"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM tenant_acme_copy.projects ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(names, ["carried", "over"]);

    // Moved into a database of its own: the new place gets the registered versions.
    let r = tenantry(
        url,
        &[
            "--database-prefix",
            &prefix,
            "tenants",
            "move",
            "acme-copy",
            "--to-strategy",
            "database",
            "--grace",
            "0s",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["tenant"]["strategy"], "database");
    assert_eq!(report["rows"], 2);

    // A registered source the export does not match: the message says what was used
    // and which flag fixes it.
    sqlx::query(
        "INSERT INTO tenantry.migration_source (version, description, sql, checksum) \
         VALUES (9999, 'later', 'CREATE TABLE later (id int)', '\\x00')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let r = tenantry(url, &["tenants", "import", file, "--as", "acme-late"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("versions [9999] are not applied")
            && r.stderr.contains(
                "used: the tenant migrations the application registered in the registry \
                 (versions 1 to 9999)"
            )
            && r.stderr.contains("fix: pass --migrations DIR"),
        "{}",
        r.stderr
    );
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenantry.tenants WHERE id = 'acme-late'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, 0, "a refused import leaves no tenant");
}

/// Names read from an import file reach the operator's terminal escaped: a table name
/// carrying a terminal escape sequence is printed as `\u{1b}`, never as the byte.
#[tokio::test]
async fn error_messages_from_an_import_file_are_safe_to_print() {
    let db = db().await;
    let url = Some(db.url());
    let migrations = saas_migrations();
    let r = tenantry(
        url,
        &[
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme",
            "--migrations",
            &migrations,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.tenantry");
    let r = tenantry(
        url,
        &["tenants", "export", "acme", "--out", file.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The manifest names a table with an escape sequence that would clear the screen.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"name\":\"projects\""), "{text}");
    let crafted = text.replacen(
        "\"name\":\"projects\"",
        "\"name\":\"pro\\u001b[2Jjects\"",
        1,
    );
    std::fs::write(&file, crafted).unwrap();
    let r = tenantry(
        url,
        &[
            "tenants",
            "import",
            file.to_str().unwrap(),
            "--as",
            "crafted",
            "--migrations",
            &migrations,
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        !r.stderr.contains('\u{1b}'),
        "an escape byte reached the terminal: {:?}",
        r.stderr
    );
    assert!(r.stderr.contains("pro\\u{1b}[2Jjects"), "{}", r.stderr);
}

/// Output piped into a reader that goes away (`| head -1`, `| grep -q`) ends the CLI
/// the way it ends any Unix tool, by SIGPIPE, not with a panic about a broken pipe.
#[cfg(unix)]
#[tokio::test]
async fn a_reader_that_goes_away_ends_the_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let db = db().await;
    let migrations = saas_migrations();
    let r = tenantry(
        Some(db.url()),
        &[
            "tenants",
            "create",
            "piped",
            "--name",
            "Piped",
            "--migrations",
            &migrations,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["tenants", "list", "--json"])
        .env("DATABASE_URL", db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tenantry");
    // The reader leaves before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for tenantry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}
