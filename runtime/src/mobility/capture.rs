//! Change capture during a move: the keys written to the old place while its data is
//! copied, recorded by triggers of the move's own, and copied again (caught up) before
//! the switch.

use sqlx::PgConnection;

use super::copy::{
    CAPTURE_TABLE_IN_DATABASE, Place, advance_all, checksum, copy_out, in_table, load, positions,
    prepare, select, tables,
};
use super::move_name;
use crate::error::Error;
use crate::naming::{quote_ident, quote_literal};
use crate::strategy::shared::TENANT_COLUMN;
use crate::tenant::TenantId;

/// Where a move records the keys written while it copies: a table and a trigger
/// function of the move's own, in `schema` of the old place's database.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    /// The quoted changes table (a `FROM` item with columns `tbl` and `key`).
    pub table: String,
    /// The quoted trigger function.
    pub function: String,
    /// The trigger name (unquoted).
    trigger: String,
    /// The tenant, for row tenants (their triggers see every tenant's writes).
    rows_of: Option<TenantId>,
}

/// Every trigger a move of `tenant` may leave on a table: its fence's (row, old row,
/// truncate) and its capture's (row, truncate).
pub(crate) fn move_triggers(tenant: &TenantId) -> [String; 5] {
    let (fence, capture) = (move_name("fence", tenant), move_name("capture", tenant));
    [
        format!("{fence}_old"),
        format!("{fence}_truncate"),
        format!("{capture}_truncate"),
        fence,
        capture,
    ]
}

impl Capture {
    /// The capture of `tenant`'s move, in `schema` (quoted).
    pub fn new(schema: &str, tenant: &TenantId, rows: bool) -> Self {
        let trigger = move_name("capture", tenant);
        if schema == "public" {
            // A tenant database's: names of tenantry's own there, like its migrations'.
            return Self {
                table: CAPTURE_TABLE_IN_DATABASE.to_owned(),
                function: "public._tenantry_move_capture".to_owned(),
                trigger,
                rows_of: None,
            };
        }
        Self {
            table: format!("{schema}.{}", quote_ident(&move_name("moving", tenant))),
            function: format!("{schema}.{}", quote_ident(&trigger)),
            trigger,
            rows_of: rows.then(|| tenant.clone()),
        }
    }

    /// The capture of row tenant `tenant`'s move through the shared tables' guard
    /// triggers (see `row_guard`): its records in the registry in `quoted_control`.
    pub fn guarded(quoted_control: &str, tenant: &TenantId) -> Self {
        Self {
            table: super::row_guard::changes_of(quoted_control, tenant),
            function: String::new(),
            trigger: String::new(),
            rows_of: Some(tenant.clone()),
        }
    }

    /// The DDL that starts capturing on `tables` (`up`), or stops and removes it.
    /// Creating the triggers waits for the writes in flight, like the fence: every
    /// write that commits afterwards is recorded.
    pub fn sql(&self, tables: &[String], names: &[(String, Vec<String>)], up: bool) -> String {
        let trigger = quote_ident(&self.trigger);
        let truncate = quote_ident(&format!("{}_truncate", self.trigger));
        let (table, function) = (&self.table, &self.function);
        let mut sql = String::from("SET LOCAL lock_timeout = '10s';");
        if !up {
            for t in tables {
                sql.push_str(&format!(
                    "DROP TRIGGER IF EXISTS {trigger} ON {t}; DROP TRIGGER IF EXISTS {truncate} ON {t};"
                ));
            }
            sql.push_str(&format!(
                "DROP FUNCTION IF EXISTS {function}(); DROP TABLE IF EXISTS {table};"
            ));
            return sql;
        }
        // Each row written records its key (as JSON: the primary key's columns but
        // `tenant_id`), old and new; a TRUNCATE, or a table without a key, records
        // NULL: copy the whole table again.
        sql.push_str(&format!(
            "CREATE UNLOGGED TABLE {table} (tbl text NOT NULL, key jsonb);
             CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
               SET search_path = pg_catalog, pg_temp AS $capture$
             DECLARE r jsonb;
             BEGIN
               IF TG_LEVEL = 'STATEMENT' THEN
                 INSERT INTO {table} (tbl, key) VALUES (TG_ARGV[1], NULL);
                 RETURN NULL;
               END IF;
               FOREACH r IN ARRAY ARRAY[
                   CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
                   CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END] LOOP
                 IF r IS NOT NULL AND (TG_ARGV[0] = '' OR r ->> {col} = TG_ARGV[0]) THEN
                   INSERT INTO {table} (tbl, key)
                     SELECT TG_ARGV[1], jsonb_object_agg(k, r -> k) FROM unnest(TG_ARGV[2:]) k;
                 END IF;
               END LOOP;
               RETURN NULL;
             END
             $capture$;",
            col = quote_literal(TENANT_COLUMN)
        ));
        let tenant = quote_literal(self.rows_of.as_ref().map_or("", |t| t.as_str()));
        for (t, (name, key)) in tables.iter().zip(names) {
            let mut args = vec![tenant.clone(), quote_literal(name)];
            args.extend(key.iter().map(|k| quote_literal(k)));
            let args = args.join(", ");
            sql.push_str(&format!(
                "CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW
                   EXECUTE FUNCTION {function}({args});"
            ));
            if self.rows_of.is_none() {
                sql.push_str(&format!(
                    "CREATE TRIGGER {truncate} AFTER TRUNCATE ON {t} FOR EACH STATEMENT
                       EXECUTE FUNCTION {function}('', {});",
                    quote_literal(name)
                ));
            }
        }
        sql
    }
}

/// The quoted tables of `place` with their names and keys (for a capture).
pub(crate) async fn capture_targets(
    conn: &mut PgConnection,
    place: Place<'_>,
) -> Result<(Vec<String>, Vec<(String, Vec<String>)>), Error> {
    let found = tables(conn, place).await?;
    Ok((
        found.iter().map(|t| t.qualified.clone()).collect(),
        found.into_iter().map(|t| (t.name, t.key)).collect(),
    ))
}

/// The final catch-up of a move, with the writes fenced: brings `target` (the new
/// place, on `to`, inside its transaction, holding the copy made while the capture
/// ran) up to `source` (the old place, on `from`, one fresh snapshot). Rows whose key
/// was captured are deleted at the target and copied again; a table truncated, or
/// whose keys differ between the places, is copied whole. Then sequences, and every
/// table's row count and checksum compared between the two places. Returns the rows
/// copied again.
pub(crate) async fn catch_up(
    from: &mut PgConnection,
    source: Place<'_>,
    capture: &Capture,
    to: &mut PgConnection,
    target: Place<'_>,
    tenant: &TenantId,
) -> Result<u64, Error> {
    prepare(from, source, tenant).await?;
    prepare(to, target, tenant).await?;
    let sources = tables(from, source).await?;
    let targets = tables(to, target).await?;
    let changed: Vec<(String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tbl, bool_or(key IS NULL) FROM {} c GROUP BY tbl",
        capture.table
    )))
    .fetch_all(&mut *from)
    .await?;
    let mut recopied = 0;
    let mut positions_now = Vec::new();
    for s in &sources {
        positions_now.extend(positions(from, s).await?);
        let Some((_, whole)) = changed.iter().find(|(t, _)| *t == s.name) else {
            continue;
        };
        let t = targets
            .iter()
            .find(|t| t.name == s.name)
            .ok_or_else(|| Error::Internal(format!("table `{}` vanished", s.name)))?;
        let mut same_key = s.key.clone();
        same_key.sort();
        let mut their_key = t.key.clone();
        their_key.sort();
        let whole = *whole || s.key.is_empty() || same_key != their_key;
        let tenant_filter = if t.tenant_column {
            format!(" AND t.{} = $1", quote_ident(TENANT_COLUMN))
        } else {
            String::new()
        };
        let data = if whole {
            let delete = format!("DELETE FROM {} t WHERE true{tenant_filter}", t.qualified);
            let mut delete = sqlx::query(sqlx::AssertSqlSafe(delete));
            if t.tenant_column {
                delete = delete.bind(tenant.as_str());
            }
            delete.execute(&mut *to).await?;
            copy_out(from, &select(s, &s.columns, source)).await?
        } else {
            let on = |a: &str, b: &str| {
                s.key
                    .iter()
                    .map(|k| format!("{a}.{k} = {b}.{k}", k = quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            let keys: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT coalesce(jsonb_agg(DISTINCT key), '[]')::text FROM {} c WHERE tbl = $1",
                capture.table
            )))
            .bind(&s.name)
            .fetch_one(&mut *from)
            .await?;
            let delete = format!(
                "DELETE FROM {tq} t USING jsonb_populate_recordset(NULL::{tq}, $1::jsonb) k
                 WHERE {on}{filter}",
                tq = t.qualified,
                on = on("t", "k"),
                filter = tenant_filter.replace("$1", "$2"),
            );
            let mut delete = sqlx::query(sqlx::AssertSqlSafe(delete)).bind(&keys);
            if t.tenant_column {
                delete = delete.bind(tenant.as_str());
            }
            delete.execute(&mut *to).await?;
            // The changed rows as they are now (deleted ones are simply not there).
            let list = s
                .key
                .iter()
                .map(|k| format!("k.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ");
            let select_changed = format!(
                "SELECT {cols} FROM ({base}) s WHERE ({key}) IN (
                   SELECT {list} FROM {changes} c,
                     jsonb_populate_record(NULL::{sq}, c.key) k WHERE c.tbl = {name})",
                cols = s
                    .columns
                    .iter()
                    .map(|c| format!("s.{}", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", "),
                base = select(s, &s.columns, source),
                key = s
                    .key
                    .iter()
                    .map(|k| format!("s.{}", quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(", "),
                changes = capture.table,
                sq = s.qualified,
                name = quote_literal(&s.name),
            );
            copy_out(from, &select_changed).await?
        };
        recopied += data.iter().filter(|&&b| b == b'\n').count() as u64;
        load(to, t, &s.columns, &data, tenant)
            .await
            .map_err(|e| in_table(e, &s.name))?;
    }
    advance_all(to, &targets, &positions_now, target, true).await?;
    for s in &sources {
        let t = targets
            .iter()
            .find(|t| t.name == s.name)
            .ok_or_else(|| Error::Internal(format!("table `{}` vanished", s.name)))?;
        // Both places at once: the pause is the longer of the two.
        let (here, there) = tokio::try_join!(
            checksum(from, s, &s.columns, source),
            checksum(to, t, &s.columns, target)
        )?;
        if here != there {
            return Err(Error::Internal(format!(
                "verification failed for table `{}`: {} rows with checksum {} at the old \
                 place, {} rows with checksum {} at the new one; nothing was switched",
                s.name, here.0, here.1, there.0, there.1
            )));
        }
    }
    Ok(recopied)
}
