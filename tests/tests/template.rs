//! Provisioning by cloning the template schema gives the same schema as replaying
//! the migrations, compared through the catalog.

mod common;

use std::path::Path;

use common::*;
use sqlx::{Connection, PgConnection};
use tenantry::{NewTenant, TenantManager, TenantMigrations};

const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_core.sql",
        "CREATE TABLE customers (
             id bigserial PRIMARY KEY,
             email text NOT NULL UNIQUE,
             plan text NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro')),
             created_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE orders (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             customer_id bigint NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
             cents integer NOT NULL CHECK (cents >= 0),
             euros numeric GENERATED ALWAYS AS (cents / 100.0) STORED,
             note text
         );
         CREATE INDEX orders_customer ON orders (customer_id);
         CREATE INDEX orders_big ON orders (cents) WHERE cents > 10000;
         COMMENT ON TABLE orders IS 'what customers bought';",
    ),
    (
        "0002_settings.sql",
        "CREATE SEQUENCE invoice_numbers START 1000 INCREMENT 5;
         CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL,
                                invoice bigint NOT NULL DEFAULT nextval('invoice_numbers'));
         INSERT INTO settings (key, value) VALUES ('currency', 'EUR'), ('locale', 'de');
         CREATE VIEW big_orders AS SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.cents > 10000;",
    ),
];

async fn describe(url: &str, schema: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path TO \"{schema}\""
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let queries = [
        "SELECT format('column %s.%s %s null=%s default=%s identity=%s generated=%s', c.relname, a.attname,
                format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                a.attidentity, a.attgenerated)
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = $1::regnamespace AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v')
         ORDER BY 1",
        "SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
         FROM pg_constraint WHERE connamespace = $1::regnamespace ORDER BY 1",
        "SELECT format('index %s', pg_get_indexdef(indexrelid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = $1::regnamespace ORDER BY 1",
        "SELECT format('sequence %s %s start=%s inc=%s last=%s', sequencename, data_type, start_value, increment_by, last_value)
         FROM pg_sequences WHERE schemaname = $1 ORDER BY 1",
        "SELECT format('view %s %s', relname, pg_get_viewdef(oid)) FROM pg_class
         WHERE relnamespace = $1::regnamespace AND relkind = 'v' ORDER BY 1",
        "SELECT format('comment %s %s', c.relname, obj_description(c.oid, 'pg_class')) FROM pg_class c
         WHERE c.relnamespace = $1::regnamespace AND obj_description(c.oid, 'pg_class') IS NOT NULL ORDER BY 1",
        "SELECT format('owned %s by %s', s.relname, pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid))
         FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
         WHERE s.relnamespace = $1::regnamespace AND d.deptype IN ('a', 'i') ORDER BY 1",
    ];
    let mut out = Vec::new();
    for q in queries {
        let rows: Vec<String> = sqlx::query_scalar(q)
            .bind(schema)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        out.extend(rows.into_iter().map(|r| r.replace(schema, "<schema>")));
    }
    let settings: Vec<String> =
        sqlx::query_scalar("SELECT key || '=' || value FROM settings ORDER BY key")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    out.extend(settings.into_iter().map(|r| format!("row settings {r}")));
    out
}

async fn manager(pool: &sqlx::PgPool, dir: &Path, template: bool) -> TenantManager {
    TenantManager::builder(pool.clone())
        .migrations(TenantMigrations::from_dir(dir).await.unwrap())
        .provision_from_template(template)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn cloned_schema_equals_replayed_schema() {
    let (db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in MIGRATIONS {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    let replay = manager(&pool, dir.path(), false).await;
    let clone = manager(&pool, dir.path(), true).await;
    replay
        .create_tenant(NewTenant::new("replayed".parse().unwrap(), "R"))
        .await
        .unwrap();
    clone
        .create_tenant(NewTenant::new("cloned".parse().unwrap(), "C"))
        .await
        .unwrap();
    clone
        .create_tenant(NewTenant::new("cloned-too".parse().unwrap(), "C2"))
        .await
        .unwrap();
    let built: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tenantry_template')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(built, "the template schema exists");

    let replayed = describe(db.url(), "tenant_replayed").await;
    let cloned = describe(db.url(), "tenant_cloned").await;
    assert!(replayed.len() > 30, "{replayed:#?}");
    assert_eq!(replayed, cloned);
    assert_eq!(cloned, describe(db.url(), "tenant_cloned_too").await);

    // All three record every version, so migrate_all sees them as current.
    let status = clone.migration_status().await.unwrap();
    assert_eq!(status.len(), 3, "{status:?}");
    assert!(
        status
            .iter()
            .all(|s| s.version == Some(2) && s.pending.is_empty() && s.drift.is_empty()),
        "{status:?}"
    );

    // Cloned tenants are independent: their sequences and rows are their own.
    sqlx::raw_sql(
        "INSERT INTO tenant_cloned.customers (email) VALUES ('a@x');
         INSERT INTO tenant_cloned.orders (customer_id, cents) VALUES (1, 20000);
         INSERT INTO tenant_cloned.settings (key, value) VALUES ('new', 'x');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let next: i64 =
        sqlx::query_scalar("SELECT invoice FROM tenant_cloned.settings WHERE key = 'new'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        next, 1010,
        "continues after the template's two seed rows (1000, 1005)"
    );
    let empty: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_cloned_too.customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(empty, 0);
    let template_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantry_template.customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(template_rows, 0);
    let view: Vec<String> = sqlx::query_scalar("SELECT email FROM tenant_cloned.big_orders")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(view, ["a@x"]);
    let err = sqlx::query("INSERT INTO tenant_cloned.orders (customer_id, cents) VALUES (999, 1)")
        .execute(&pool)
        .await;
    assert!(err.is_err(), "the foreign key was cloned");

    // A new migration rebuilds the template; new tenants get it, old ones migrate.
    std::fs::write(
        dir.path().join("0003_more.sql"),
        "ALTER TABLE customers ADD COLUMN name text;",
    )
    .unwrap();
    let v3 = manager(&pool, dir.path(), true).await;
    v3.create_tenant(NewTenant::new("newer".parse().unwrap(), "N"))
        .await
        .unwrap();
    let report = v3.migrate_all(&Default::default(), |_| {}).await.unwrap();
    assert!(report.is_success());
    let a = describe(db.url(), "tenant_newer").await;
    assert_eq!(a, describe(db.url(), "tenant_cloned_too").await);
}

#[tokio::test]
async fn templates_with_functions_fall_back_to_replay() {
    let (db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_fn.sql"),
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.v := coalesce(NEW.v, 0) + 1; RETURN NEW; END $$;
         CREATE TRIGGER t_bump BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION bump();",
    )
    .unwrap();
    // Which path built the schema is said in the log: capture it for this test.
    let log = Log::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish(),
    );
    let m = manager(&pool, dir.path(), true).await;
    m.create_tenant(NewTenant::new("acme".parse().unwrap(), "A"))
        .await
        .unwrap();
    let said = log.text();
    assert!(
        said.contains("template not clonable; tenants get the migrations replayed")
            && said.contains("bump"),
        "the template was not refused for its function: {said}"
    );
    sqlx::query("INSERT INTO tenant_acme.t (id) VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM tenant_acme.t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        v, 1,
        "the trigger and its function exist in the tenant's schema"
    );
    let _ = db;
}

/// A log written to memory.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
