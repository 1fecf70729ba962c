//! The schema strategy's template: cloning a template schema instead of replaying
//! every migration.
//!
//! The template (`<control schema>_template`) holds the tenant migrations applied
//! once; it is rebuilt when the migration source changes. A new tenant's schema is
//! made from it through the catalog: sequences, tables (`LIKE ... INCLUDING ALL`:
//! columns, `NOT NULL`, checks, indexes, identity, generated columns, comments),
//! column defaults, foreign keys, views and the template's rows, all in the creating
//! transaction. A template holding objects this does not copy (functions, triggers,
//! types, materialized views, partitioned tables, policies, rules) is reported as
//! unsupported, and the tenant is provisioned by replaying the migrations instead.

use sqlx::{PgConnection, Row};

use crate::error::Error;
use crate::naming::quote_ident;

/// Stands for the destination schema (quoted) in a clone script.
const DEST: &str = "\u{1}tenantry-dest\u{1}";

/// A template schema, and the script that clones it (`None`: not clonable).
#[derive(Debug, Clone)]
pub(crate) struct SchemaTemplate {
    pub fingerprint: Vec<u8>,
    pub script: Option<String>,
}

impl SchemaTemplate {
    /// The statements that fill the empty schema `dest` with a copy of the template,
    /// or `None` if the template holds objects cloning does not copy.
    pub fn script_for(&self, dest: &str) -> Option<String> {
        self.script
            .as_ref()
            .map(|s| s.replace(DEST, &quote_ident(dest)))
    }
}

/// Objects of the template that cloning does not copy, as `kind name` lines.
async fn unsupported(conn: &mut PgConnection, template: &str) -> Result<Vec<String>, Error> {
    let rows: Vec<String> = sqlx::query_scalar(
        "WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = $1)
         SELECT 'function ' || p.proname FROM pg_proc p, ns WHERE p.pronamespace = ns.oid
         UNION ALL
         SELECT 'trigger ' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid, ns
           WHERE c.relnamespace = ns.oid AND NOT t.tgisinternal
         UNION ALL
         SELECT 'type ' || t.typname FROM pg_type t, ns WHERE t.typnamespace = ns.oid
           AND (t.typtype IN ('e', 'd', 'r', 'm')
                OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
         UNION ALL
         SELECT 'relation ' || c.relname FROM pg_class c, ns WHERE c.relnamespace = ns.oid
           AND c.relkind IN ('m', 'p', 'f')
         UNION ALL
         SELECT 'policy ' || p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid, ns
           WHERE c.relnamespace = ns.oid
         UNION ALL
         SELECT 'rule ' || r.rulename FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class, ns
           WHERE c.relnamespace = ns.oid AND c.relkind = 'r'",
    )
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// Copies the template into the existing, empty schema `dest` inside the caller's
/// transaction. `Ok(false)` if the template is not clonable (nothing was changed then).
pub(super) async fn clone_into(
    conn: &mut PgConnection,
    template: &SchemaTemplate,
    dest: &str,
) -> Result<bool, Error> {
    let Some(script) = template.script_for(dest) else {
        return Ok(false);
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::Migration(format!("cloning the template into `{dest}` failed: {e}")))?;
    Ok(true)
}

/// Reads the catalog once and writes the statements that clone the template into a
/// schema named by the `DEST` placeholder; `None` if the template is not clonable.
pub(super) async fn clone_script(
    conn: &mut PgConnection,
    template: &str,
) -> Result<Option<String>, Error> {
    let skipped = unsupported(conn, template).await?;
    if !skipped.is_empty() {
        tracing::info!(template, objects = ?skipped, "template not clonable; tenants get the migrations replayed");
        return Ok(None);
    }
    let t = quote_ident(template);
    let d = DEST;
    // Read definitions with the template first on the search_path, so that names in
    // them come out unqualified and resolve to `dest` when the script runs there.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL search_path TO {t}")))
        .execute(&mut *conn)
        .await?;
    let ns = "(SELECT oid FROM pg_namespace WHERE nspname = $1)";
    let sequences = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT c.relname::text AS name, format_type(s.seqtypid, NULL) AS type, s.seqstart, s.seqincrement,
                s.seqmin, s.seqmax, s.seqcache, s.seqcycle
         FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid
         WHERE c.relnamespace = {ns} AND c.relkind = 'S'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i')
         ORDER BY c.oid"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    let tables: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT relname::text FROM pg_class WHERE relnamespace = {ns} AND relkind = 'r' ORDER BY oid"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    let defaults = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT c.relname::text AS tbl, a.attname::text AS col, pg_get_expr(d.adbin, d.adrelid) AS expr
         FROM pg_attrdef d
         JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
         JOIN pg_class c ON c.oid = d.adrelid
         WHERE c.relnamespace = {ns} AND a.attgenerated = '' AND c.relkind = 'r'
         ORDER BY c.oid, a.attnum"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    let owned = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT s.relname::text AS seq, c.relname::text AS tbl, a.attname::text AS col
         FROM pg_depend d
         JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
         JOIN pg_class c ON c.oid = d.refobjid
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
         WHERE d.deptype = 'a' AND s.relnamespace = {ns}"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    // Keys first (foreign keys need them), then foreign keys; each as its statement.
    let constraints: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('ALTER TABLE %I ADD CONSTRAINT %I %s;', c.relname, k.conname, pg_get_constraintdef(k.oid))
         FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE k.connamespace = {ns} AND k.contype IN ('p', 'u', 'x', 'f') AND c.relkind = 'r'
         ORDER BY k.contype = 'f', k.oid"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    // Indexes that back no constraint, under their own names (pg_get_indexdef always
    // qualifies the table; the qualification is dropped so it lands in `dest`).
    let indexes: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT replace(pg_get_indexdef(i.indexrelid), ' ON ' || quote_ident($1) || '.', ' ON ') || ';'
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = {ns}
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
         ORDER BY i.indexrelid"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    // LIKE copies column comments, not the table's own.
    let comments: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('COMMENT ON %s %I IS %L;', CASE relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
                       relname, obj_description(oid, 'pg_class'))
         FROM pg_class WHERE relnamespace = {ns} AND relkind IN ('r', 'v')
           AND obj_description(oid, 'pg_class') IS NOT NULL ORDER BY oid"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    // Every sequence continues where the template's is (it may hold seed rows).
    let setvals: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT format('SELECT setval(%L, last_value, is_called) FROM {t}.%I;',
                       '{d_lit}.' || quote_ident(c.relname), c.relname)
         FROM pg_class c WHERE c.relnamespace = {ns} AND c.relkind = 'S'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i')
         UNION ALL
         SELECT format('SELECT setval(pg_get_serial_sequence(%L, %L), last_value, is_called) FROM %s;',
                       '{d_lit}.' || quote_ident(c.relname), a.attname,
                       pg_get_serial_sequence('{t_lit}.' || quote_ident(c.relname), a.attname))
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = {ns} AND c.relkind = 'r' AND a.attidentity <> ''"
    , d_lit = d.replace('\'', "''"), t_lit = t.replace('\'', "''"))))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    let views = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT relname::text AS name, pg_get_viewdef(oid) AS def
         FROM pg_class WHERE relnamespace = {ns} AND relkind = 'v' ORDER BY oid"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;
    let columns = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT c.relname::text AS tbl, string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) AS cols,
                bool_or(a.attidentity = 'a') AS always
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = {ns} AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attgenerated = ''
         GROUP BY c.relname, c.oid ORDER BY c.oid"
    )))
    .bind(template)
    .fetch_all(&mut *conn)
    .await?;

    let mut script = format!("SET LOCAL search_path TO {d};\n");
    for s in &sequences {
        let name: String = s.try_get("name")?;
        let ty: String = s.try_get("type")?;
        let (start, inc, min, max, cache): (i64, i64, i64, i64, i64) = (
            s.try_get("seqstart")?,
            s.try_get("seqincrement")?,
            s.try_get("seqmin")?,
            s.try_get("seqmax")?,
            s.try_get("seqcache")?,
        );
        let cycle: bool = s.try_get("seqcycle")?;
        script.push_str(&format!(
            "CREATE SEQUENCE {} AS {ty} INCREMENT {inc} MINVALUE {min} MAXVALUE {max} START {start} CACHE {cache} {};\n",
            quote_ident(&name),
            if cycle { "CYCLE" } else { "NO CYCLE" }
        ));
    }
    for table in &tables {
        script.push_str(&format!(
            "CREATE TABLE {} (LIKE {t}.{} INCLUDING ALL EXCLUDING DEFAULTS EXCLUDING INDEXES);\n",
            quote_ident(table),
            quote_ident(table)
        ));
    }
    for row in &defaults {
        let (tbl, col, expr): (String, String, String) = (
            row.try_get("tbl")?,
            row.try_get("col")?,
            row.try_get("expr")?,
        );
        script.push_str(&format!(
            "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {expr};\n",
            quote_ident(&tbl),
            quote_ident(&col)
        ));
    }
    for row in &owned {
        let (seq, tbl, col): (String, String, String) = (
            row.try_get("seq")?,
            row.try_get("tbl")?,
            row.try_get("col")?,
        );
        script.push_str(&format!(
            "ALTER SEQUENCE {} OWNED BY {}.{};\n",
            quote_ident(&seq),
            quote_ident(&tbl),
            quote_ident(&col)
        ));
    }
    for row in &columns {
        let (tbl, cols, always): (String, String, bool) = (
            row.try_get("tbl")?,
            row.try_get("cols")?,
            row.try_get("always")?,
        );
        script.push_str(&format!(
            "INSERT INTO {} ({cols}) {} SELECT {cols} FROM {t}.{};\n",
            quote_ident(&tbl),
            if always {
                "OVERRIDING SYSTEM VALUE"
            } else {
                ""
            },
            quote_ident(&tbl)
        ));
    }
    for statement in constraints.iter().chain(&indexes) {
        script.push_str(statement);
        script.push('\n');
    }
    for row in &views {
        let (name, def): (String, String) = (row.try_get("name")?, row.try_get("def")?);
        script.push_str(&format!("CREATE VIEW {} AS {def}\n", quote_ident(&name)));
    }
    for statement in comments.iter().chain(&setvals) {
        script.push_str(statement);
        script.push('\n');
    }
    Ok(Some(script))
}
