//! The tenant registry: tables in a control schema, and all of their SQL.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::error::Error;
use crate::naming::quote_ident;
use crate::tenant::{NewTenant, Strategy, Tenant, TenantId, TenantLimits, TenantStatus};

/// Upgrades of the registry, applied in order; the index + 1 is the version.
/// `{schema}` is replaced by the quoted control schema.
const REGISTRY_UPGRADES: &[&str] = &[
    // 1: tenants and their migration records
    r#"
    CREATE TABLE {schema}.tenants (
        id          text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9-]{0,39}$'),
        name        text NOT NULL,
        domain      text UNIQUE,
        strategy    text NOT NULL DEFAULT 'schema',
        status      text NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'deleted')),
        schema_name text NOT NULL UNIQUE,
        server      text NOT NULL DEFAULT 'default',
        placement   jsonb NOT NULL DEFAULT '{}'::jsonb,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE {schema}.tenant_migrations (
        tenant_id   text NOT NULL REFERENCES {schema}.tenants (id) ON DELETE CASCADE,
        version     bigint NOT NULL,
        description text NOT NULL,
        checksum    bytea NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, version)
    );
    "#,
    // 2: templates (schema or database) and the migration source they were built from
    r#"
    CREATE TABLE IF NOT EXISTS {schema}.templates (
        name        text PRIMARY KEY,
        fingerprint bytea NOT NULL,
        built_at    timestamptz NOT NULL DEFAULT now()
    );
    "#,
    // 3: incarnations: every tenant the registry creates gets a number never used
    // before, so a binding to a deleted tenant never matches its successor
    r#"
    CREATE SEQUENCE {schema}.incarnations;
    ALTER TABLE {schema}.tenants
        ADD COLUMN incarnation bigint NOT NULL DEFAULT nextval('{schema}.incarnations');
    "#,
    // 4: per-tenant limits (rate, burst, concurrency, statement timeout); `{}` = defaults
    r#"
    ALTER TABLE {schema}.tenants ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'::jsonb;
    "#,
    // 5: several domains per tenant; `tenants.domain` stays the primary one
    r#"
    CREATE TABLE {schema}.tenant_domains (
        domain    text PRIMARY KEY,
        tenant_id text NOT NULL REFERENCES {schema}.tenants (id) ON DELETE CASCADE,
        added_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX tenant_domains_tenant ON {schema}.tenant_domains (tenant_id);
    INSERT INTO {schema}.tenant_domains (domain, tenant_id)
        SELECT domain, id FROM {schema}.tenants
        WHERE domain IS NOT NULL AND status <> 'deleted';
    "#,
    // 6: named servers, kept where every instance and the CLI see them (connection
    // settings only: a password comes from the server's auth, a passfile or the app),
    // and the write fence of tenant moves
    r#"
    CREATE TABLE {schema}.servers (
        name     text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,39}$' AND name <> 'default'),
        url      text NOT NULL,
        added_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE FUNCTION {schema}.write_fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
    BEGIN
        RAISE EXCEPTION 'tenant % is being moved: writes are paused, retry shortly',
            TG_ARGV[0] USING ERRCODE = 'read_only_sql_transaction';
    END
    $fence$;
    "#,
    // 7: the session binding, decided by the server. Whatever a request left on its
    // connection (settings and role, also set by a function; temporary objects;
    // sequence state; session advisory locks; `LISTEN`s; cursors; SQL-level prepared
    // statements), one call discards it and sets the binding, in one round trip. Every
    // name is schema-qualified: a handler's `search_path` cannot change what it calls.
    // `p_path` NULL: discard only. `p_local`: transaction-local settings (behind a
    // transaction pooler, at the start of each transaction). `p_prepared`: also
    // deallocate SQL-level prepared statements, and count the protocol-level ones
    // (which the caller compares with its statement cache); outside the transaction
    // binding, the call is then a simple query, and refuses to run inside a
    // transaction block.
    r#"
    CREATE FUNCTION {schema}.session_bind(
        p_path text, p_setting_name text, p_setting text, p_role text, p_app text,
        p_timeout text, p_local boolean, p_prepared boolean
    ) RETURNS bigint LANGUAGE plpgsql AS $bind$
    DECLARE
        protocol_level bigint;
        from_sql text[];
        name text;
    BEGIN
        -- Called in a simple query outside a transaction block, the statement starts
        -- the transaction; inside a block a request left open, it does not. The
        -- caller rolls back and calls again.
        IF NOT p_local AND p_prepared AND pg_catalog.transaction_timestamp()
                OPERATOR(pg_catalog.<>) pg_catalog.statement_timestamp() THEN
            RAISE EXCEPTION 'the session is inside a transaction block'
                USING ERRCODE = 'active_sql_transaction';
        END IF;
        SET SESSION AUTHORIZATION DEFAULT;
        RESET ALL;
        EXECUTE 'CLOSE ALL';
        UNLISTEN *;
        PERFORM pg_catalog.pg_advisory_unlock_all();
        IF pg_catalog.pg_my_temp_schema() OPERATOR(pg_catalog.<>) 0 THEN
            DISCARD TEMP;
        END IF;
        DISCARD SEQUENCES;
        IF p_prepared THEN
            -- One scan: the SQL-level statements to drop, and the count of the others.
            SELECT pg_catalog.count(*) FILTER (WHERE NOT s.from_sql),
                   pg_catalog.array_agg(s.name) FILTER (WHERE s.from_sql)
              INTO protocol_level, from_sql
              FROM pg_catalog.pg_prepared_statements s;
            IF from_sql IS NOT NULL THEN
                FOREACH name IN ARRAY from_sql LOOP
                    EXECUTE pg_catalog.format('DEALLOCATE %I', name);
                END LOOP;
            END IF;
            -- `setseed` survives RESET ALL: reseed random() from strong randomness.
            PERFORM pg_catalog.setseed(pg_catalog.hashtext(pg_catalog.gen_random_uuid()::text)
                OPERATOR(pg_catalog./) 2147483648.0);
        END IF;
        -- `role` is not reset by RESET ALL.
        PERFORM pg_catalog.set_config('role', COALESCE(p_role, 'none'), p_local);
        IF p_path IS NOT NULL THEN
            PERFORM pg_catalog.set_config('search_path', p_path, p_local),
                pg_catalog.set_config(p_setting_name, p_setting, p_local),
                pg_catalog.set_config('application_name', p_app, p_local);
        END IF;
        IF p_timeout IS NOT NULL THEN
            PERFORM pg_catalog.set_config('statement_timeout', p_timeout, p_local);
        END IF;
        -- the protocol-level statements: the client's statement cache (NULL unless
        -- p_prepared)
        RETURN protocol_level;
    END
    $bind$;
    GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
    GRANT EXECUTE ON FUNCTION {schema}.session_bind(text, text, text, text, text, text,
        boolean, boolean) TO PUBLIC;
    "#,
    // 8: the tenant migrations the application registered (its source, version by
    // version), so that operator tools provision and check tenants without a copy
    r#"
    CREATE TABLE {schema}.migration_source (
        version       bigint PRIMARY KEY,
        description   text NOT NULL,
        sql           text NOT NULL,
        checksum      bytea NOT NULL,
        registered_at timestamptz NOT NULL DEFAULT now()
    );
    "#,
    // 9: settings the application records for operator tools: `row_schema`, the
    // schema of the shared tables this registry's row tenants live in (their moves,
    // exports and deletions touch no table elsewhere)
    r#"
    CREATE TABLE {schema}.settings (
        name  text PRIMARY KEY,
        value text NOT NULL
    );
    "#,
    // 10: the change log: a change notification carries only the number of its entry
    // here, and instances act on the entry, so a notification nobody logged (any role
    // that can connect can NOTIFY) changes nothing; `tenant_id` NULL: the named servers
    r#"
    CREATE TABLE {schema}.changes (
        seq       bigserial PRIMARY KEY,
        tenant_id text,
        logged_at timestamptz NOT NULL DEFAULT now()
    );
    "#,
    // 11: row tenants' moves without DDL on the shared tables: guard triggers on each
    // shared table and partition (one per command, for each statement, installed once,
    // the shared table's name as argument) read the
    // tenants in `row_moves`: none, the statement goes on; a tenant whose rows it wrote,
    // those rows are recorded in `row_move_changes` for its move's catch-up, or if the
    // tenant is `fenced`, the statement fails with SQLSTATE 25006. A move switches its
    // tenant by writing its row here, which locks no shared table.
    r#"
    CREATE TABLE {schema}.row_moves (
        tenant_id  text PRIMARY KEY,
        fenced     boolean NOT NULL DEFAULT false,
        started_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE UNLOGGED TABLE {schema}.row_move_changes (
        tenant_id text NOT NULL,
        tbl       text NOT NULL,
        key       jsonb
    );
    CREATE INDEX ON {schema}.row_move_changes (tenant_id, tbl);
    CREATE FUNCTION {schema}.row_move_guard() RETURNS trigger LANGUAGE plpgsql
      SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $guard$
    DECLARE
        fenced text;
        tbl text := TG_ARGV[0];
    BEGIN
        -- The usual case: no move, one look at an empty table per statement.
        IF NOT EXISTS (SELECT 1 FROM {schema}.row_moves) THEN
            RETURN NULL;
        END IF;
        -- A TRUNCATE takes every tenant's rows: none while any tenant moves.
        IF TG_OP = 'TRUNCATE' THEN
            RAISE EXCEPTION 'tenants are being moved: TRUNCATE of % is paused, retry shortly',
                tbl USING ERRCODE = 'read_only_sql_transaction';
        END IF;
        IF TG_OP <> 'DELETE' THEN
            SELECT m.tenant_id INTO fenced FROM {schema}.row_moves m
             WHERE m.fenced AND m.tenant_id IN (SELECT n.tenant_id::text FROM new_rows n)
             LIMIT 1;
            IF fenced IS NOT NULL THEN
                RAISE EXCEPTION 'tenant % is being moved: writes are paused, retry shortly',
                    fenced USING ERRCODE = 'read_only_sql_transaction';
            END IF;
            INSERT INTO {schema}.row_move_changes (tenant_id, tbl, key)
            SELECT n.tenant_id::text, tbl, to_jsonb(n) FROM new_rows n
             WHERE n.tenant_id::text IN (SELECT m.tenant_id FROM {schema}.row_moves m);
        END IF;
        IF TG_OP <> 'INSERT' THEN
            SELECT m.tenant_id INTO fenced FROM {schema}.row_moves m
             WHERE m.fenced AND m.tenant_id IN (SELECT o.tenant_id::text FROM old_rows o)
             LIMIT 1;
            IF fenced IS NOT NULL THEN
                RAISE EXCEPTION 'tenant % is being moved: writes are paused, retry shortly',
                    fenced USING ERRCODE = 'read_only_sql_transaction';
            END IF;
            INSERT INTO {schema}.row_move_changes (tenant_id, tbl, key)
            SELECT o.tenant_id::text, tbl, to_jsonb(o) FROM old_rows o
             WHERE o.tenant_id::text IN (SELECT m.tenant_id FROM {schema}.row_moves m);
        END IF;
        RETURN NULL;
    END
    $guard$;
    -- Only the registry's login attaches it: on another role's table it would run that
    -- role's code (a cast, an operator) as the registry's owner.
    REVOKE ALL ON FUNCTION {schema}.row_move_guard() FROM PUBLIC;
    -- The backends of moves under way (their new place's transaction): moves wait for
    -- the transactions open when they switch a row tenant's capture or fence on, but
    -- not for each other's.
    CREATE TABLE {schema}.move_backends (
        pid           integer NOT NULL,
        backend_start timestamptz NOT NULL,
        PRIMARY KEY (pid, backend_start)
    );
    "#,
];

/// How long the change log keeps an entry: far longer than a notification takes to
/// arrive (an instance that loses its listener re-reads everything anyway).
const CHANGE_LOG_KEPT: &str = "1 hour";

/// A notification names a change logged at most this long ago, or it is a replay (an
/// instance whose listener lagged longer clears nothing it should have: the cache TTL
/// still bounds what it serves).
const CHANGE_ANNOUNCED_WITHIN: &str = "10 minutes";

/// A digest of everything a tenant record carries (its row, domains and migration
/// version), `{schema}` being the quoted control schema: one sweep of these per cache
/// TTL tells which cached records are still current, instead of a lookup per tenant.
const FINGERPRINT: &str = "md5(ROW(tenants.id, tenants.name, tenants.domain, tenants.strategy, \
     tenants.status, tenants.schema_name, tenants.server, tenants.incarnation, tenants.limits, \
     tenants.placement, \
     (SELECT array_agg(d.domain ORDER BY d.domain) FROM {schema}.tenant_domains d \
      WHERE d.tenant_id = tenants.id), \
     (SELECT max(m.version) FROM {schema}.tenant_migrations m WHERE m.tenant_id = tenants.id) \
     )::text)";

/// The columns of a tenant record, `{schema}` being the quoted control schema.
const TENANT_COLUMNS: &str = "id, name, domain, strategy, status, schema_name, server, \
     incarnation, limits::text AS limits, created_at, updated_at, \
     coalesce((SELECT array_agg(d.domain ORDER BY d.domain) FROM {schema}.tenant_domains d \
               WHERE d.tenant_id = tenants.id), '{}') AS domains, \
     (SELECT max(m.version) FROM {schema}.tenant_migrations m WHERE m.tenant_id = tenants.id) \
     AS schema_version";

/// All SQL against the registry. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct TenantRepository {
    pool: PgPool,
    schema: String,
    quoted_schema: String,
    sql: Sql,
}

#[derive(Debug, Clone)]
struct Sql {
    select_by_id: String,
    select_fingerprinted: String,
    fingerprints: String,
    select_all: String,
    insert: String,
    set_status: String,
    select_for_update: String,
    set_limits: String,
    purge_deleted: String,
    delete_provisioning: String,
    select_by_domain: String,
    record_migration: String,
    applied_versions: String,
    all_applied: String,
    template_fingerprint: String,
    record_template: String,
    log_change: String,
    logged_changes: String,
}

impl TenantRepository {
    /// A repository over `pool`, keeping its tables in the schema `control_schema`.
    ///
    /// The name must be a plain lowercase identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub fn new(pool: PgPool, control_schema: &str) -> Result<Self, Error> {
        crate::naming::check_identifier("control schema", control_schema, 63)?;
        let q = quote_ident(control_schema);
        let tenant_columns = TENANT_COLUMNS.replace("{schema}", &q);
        let tenant_columns = tenant_columns.as_str();
        let sql = Sql {
            select_by_id: format!("SELECT {tenant_columns} FROM {q}.tenants WHERE id = $1"),
            select_fingerprinted: format!(
                "SELECT {tenant_columns}, {} AS fingerprint FROM {q}.tenants WHERE id = $1",
                FINGERPRINT.replace("{schema}", &q)
            ),
            fingerprints: format!(
                "SELECT id, {} FROM {q}.tenants WHERE status <> 'deleted'",
                FINGERPRINT.replace("{schema}", &q)
            ),
            select_all: format!(
                "SELECT {tenant_columns} FROM {q}.tenants WHERE status <> 'deleted' ORDER BY id"
            ),
            insert: format!(
                "INSERT INTO {q}.tenants (id, name, domain, strategy, status, schema_name, server) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {tenant_columns}"
            ),
            set_status: format!(
                "UPDATE {q}.tenants SET status = $2, updated_at = now() WHERE id = $1 \
                 RETURNING {tenant_columns}"
            ),
            set_limits: format!(
                "UPDATE {q}.tenants SET limits = $2::jsonb, updated_at = now() \
                 WHERE id = $1 AND status <> 'deleted' RETURNING {tenant_columns}"
            ),
            select_for_update: format!(
                "SELECT {tenant_columns} FROM {q}.tenants WHERE id = $1 FOR UPDATE"
            ),
            select_by_domain: format!(
                "SELECT {tenant_columns} FROM {q}.tenants WHERE status <> 'deleted' \
                 AND id = (SELECT tenant_id FROM {q}.tenant_domains WHERE domain = $1)"
            ),
            delete_provisioning: format!(
                "DELETE FROM {q}.tenants WHERE id = $1 AND status = 'provisioning'"
            ),
            purge_deleted: format!("DELETE FROM {q}.tenants WHERE id = $1 AND status = 'deleted'"),
            record_migration: format!(
                "INSERT INTO {q}.tenant_migrations (tenant_id, version, description, checksum) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, version) DO NOTHING"
            ),
            template_fingerprint: format!("SELECT fingerprint FROM {q}.templates WHERE name = $1"),
            record_template: format!(
                "INSERT INTO {q}.templates (name, fingerprint) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, built_at = now()"
            ),
            log_change: format!(
                "WITH logged AS (INSERT INTO {q}.changes (tenant_id) VALUES ($2) RETURNING seq), \
                 pruned AS (DELETE FROM {q}.changes WHERE seq IN ( \
                     SELECT seq FROM {q}.changes \
                     WHERE logged_at < now() - interval '{CHANGE_LOG_KEPT}' \
                       AND (SELECT seq FROM logged) % 64 = 0 \
                     FOR UPDATE SKIP LOCKED)) \
                 SELECT pg_notify($1, seq::text) FROM logged"
            ),
            logged_changes: format!(
                "SELECT seq, tenant_id FROM {q}.changes WHERE seq = ANY($1) \
                 AND logged_at > now() - interval '{CHANGE_ANNOUNCED_WITHIN}'"
            ),
            all_applied: format!(
                "SELECT m.tenant_id, m.version, m.checksum FROM {q}.tenant_migrations m \
                 JOIN {q}.tenants t ON t.id = m.tenant_id WHERE t.status <> 'deleted' \
                 ORDER BY m.tenant_id, m.version"
            ),
            applied_versions: format!(
                "SELECT version, checksum FROM {q}.tenant_migrations WHERE tenant_id = $1 ORDER BY version"
            ),
        };
        Ok(Self {
            pool,
            schema: control_schema.to_owned(),
            quoted_schema: q,
            sql,
        })
    }

    /// The pool the registry lives on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The control schema's name.
    pub fn control_schema(&self) -> &str {
        &self.schema
    }

    /// Creates or upgrades the registry tables. Idempotent, and safe when several app
    /// instances start at once: upgrades run under a transaction-scoped advisory lock.
    pub async fn ensure_schema(&self) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("tenantry.registry:{}", self.schema))
            .execute(&mut *tx)
            .await?;
        let q = &self.quoted_schema;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {q};
             CREATE TABLE IF NOT EXISTS {q}.registry_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        )))
        .execute(&mut *tx)
        .await?;
        let current: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(max(version), 0) FROM {q}.registry_version"
        )))
        .fetch_one(&mut *tx)
        .await?;
        for (index, upgrade) in REGISTRY_UPGRADES.iter().enumerate() {
            let version = index as i32 + 1;
            if version <= current {
                continue;
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(upgrade.replace("{schema}", q)))
                .execute(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {q}.registry_version (version) VALUES ($1)"
            )))
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores `tenant`'s limits, inside the caller's transaction; `None` if there is no
    /// such tenant (or it is deleted).
    pub async fn set_limits(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        limits: &TenantLimits,
    ) -> Result<Option<Tenant>, Error> {
        let json = serde_json::to_string(limits)
            .map_err(|e| Error::Internal(format!("cannot write tenant limits: {e}")))?;
        let row = sqlx::query(sqlx::AssertSqlSafe(self.sql.set_limits.as_str()))
            .bind(id.as_str())
            .bind(json)
            .fetch_optional(conn)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    /// The tenant with this id, deleted ones included.
    pub async fn find(&self, id: &TenantId) -> Result<Option<Tenant>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.sql.select_by_id.as_str()))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    /// The tenant with this id (any status) and the digest of its record, which
    /// [`TenantRepository::fingerprints`] reports for it as long as it is unchanged.
    pub(crate) async fn find_fingerprinted(
        &self,
        id: &TenantId,
    ) -> Result<Option<(Tenant, String)>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.sql.select_fingerprinted.as_str()))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((tenant_from_row(&r)?, r.try_get("fingerprint")?)))
            .transpose()
    }

    /// The id and record digest of every tenant that is not deleted: one query.
    pub(crate) async fn fingerprints(&self) -> Result<Vec<(TenantId, String)>, Error> {
        let rows: Vec<(String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(self.sql.fingerprints.as_str()))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(id, fingerprint)| {
                let id = TenantId::parse(&id).map_err(|_| {
                    Error::Registry(format!("invalid tenant id `{id}` in the registry"))
                })?;
                Ok((id, fingerprint))
            })
            .collect()
    }

    /// Every tenant that is not deleted, ordered by id.
    ///
    /// A row that cannot be read (an invalid id or name, tampered with) is skipped and
    /// logged, so the others stay listable and migratable; `find` of that id reports it.
    pub async fn list(&self) -> Result<Vec<Tenant>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql.select_all.as_str()))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| match tenant_from_row(row) {
                Ok(tenant) => Some(tenant),
                Err(error) => {
                    tracing::error!(%error, "unreadable tenant row in the registry; skipped");
                    None
                }
            })
            .collect())
    }

    /// The (not deleted) tenant that registered this domain.
    pub async fn find_by_domain(&self, domain: &str) -> Result<Option<Tenant>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.sql.select_by_domain.as_str()))
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    /// The `LISTEN`/`NOTIFY` channel on which changes to tenants are announced.
    pub fn channel(&self) -> String {
        format!("{}_changes", self.schema)
    }

    /// Announces a change to tenant `id` to every app instance, when the caller's
    /// transaction commits (`NOTIFY` is transactional): the change goes into the
    /// registry's change log and the notification carries only its entry's number.
    pub async fn notify(&self, conn: &mut PgConnection, id: &TenantId) -> Result<(), Error> {
        self.log_change(conn, Some(id.as_str())).await
    }

    /// Logs a change (`None`: the named servers) and notifies its entry's number. One
    /// entry in 64 also prunes entries older than [`CHANGE_LOG_KEPT`] (skipping any a
    /// concurrent pruning holds).
    async fn log_change(&self, conn: &mut PgConnection, id: Option<&str>) -> Result<(), Error> {
        sqlx::query(sqlx::AssertSqlSafe(self.sql.log_change.as_str()))
            .bind(self.channel())
            .bind(id)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The logged changes these notification payloads name, with their numbers: a
    /// tenant id, or `None` for the named servers. Payloads that name no entry (not a
    /// number, a number never logged, or an entry logged more than
    /// [`CHANGE_ANNOUNCED_WITHIN`] ago: a notification arrives in milliseconds) are
    /// left out: nobody logged them, or they replay an old change.
    pub(crate) async fn logged_changes(
        &self,
        payloads: &[&str],
    ) -> Result<Vec<(i64, Option<TenantId>)>, Error> {
        let seqs: Vec<i64> = payloads
            .iter()
            .filter_map(|p| p.parse::<i64>().ok())
            .collect();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Option<String>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(self.sql.logged_changes.as_str()))
                .bind(&seqs)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            // An id the registry holds is valid; one that is not cannot be anyone's.
            .filter_map(|(seq, id)| match id {
                None => Some((seq, None)),
                Some(id) => TenantId::parse(&id).ok().map(|id| (seq, Some(id))),
            })
            .collect())
    }

    /// The tenant with this id, locked until the caller's transaction ends.
    pub async fn find_for_update(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
    ) -> Result<Option<Tenant>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.sql.select_for_update.as_str()))
            .bind(id.as_str())
            .fetch_optional(conn)
            .await?;
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    /// Removes the row of a tenant whose provisioning failed.
    pub async fn delete_provisioning(&self, id: &TenantId) -> Result<(), Error> {
        sqlx::query(sqlx::AssertSqlSafe(self.sql.delete_provisioning.as_str()))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes the tombstone of a deleted tenant so that its id can be used again.
    pub async fn purge_deleted(&self, conn: &mut PgConnection, id: &TenantId) -> Result<(), Error> {
        sqlx::query(sqlx::AssertSqlSafe(self.sql.purge_deleted.as_str()))
            .bind(id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Inserts a tenant row with `status` inside the caller's transaction; `storage` is
    /// the tenant's schema (or database) name.
    pub async fn insert(
        &self,
        conn: &mut PgConnection,
        new: &NewTenant,
        status: TenantStatus,
        storage: &str,
    ) -> Result<Tenant, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.sql.insert.as_str()))
            .bind(new.id.as_str())
            .bind(&new.name)
            .bind(new.domain.as_deref())
            .bind(new.strategy.as_str())
            .bind(status.as_str())
            .bind(storage)
            .bind(
                new.server
                    .as_deref()
                    .unwrap_or(crate::servers::DEFAULT_SERVER),
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| match unique_violation(&e) {
                Some(c) if c.contains("domain") => Error::Validation(format!(
                    "domain `{}` is already used by another tenant",
                    new.domain.as_deref().unwrap_or_default()
                )),
                Some(_) => Error::TenantExists(new.id.clone()),
                None => Error::Database(e),
            })?;
        let tenant = tenant_from_row(&row)?;
        match &new.domain {
            Some(domain) => {
                self.add_domain(conn, &new.id, domain).await?;
                self.find_for_update(conn, &new.id)
                    .await?
                    .ok_or_else(|| Error::Registry("the new tenant row vanished".to_owned()))
            }
            None => Ok(tenant),
        }
    }

    /// Points tenant `id` at its new place (strategy, schema or database, server),
    /// inside the caller's transaction; its incarnation stays.
    pub async fn relocate(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        strategy: Strategy,
        storage: &str,
        server: &str,
    ) -> Result<Tenant, Error> {
        let q = &self.quoted_schema;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {q}.tenants SET strategy = $2, schema_name = $3, server = $4, \
             updated_at = now() WHERE id = $1"
        )))
        .bind(id.as_str())
        .bind(strategy.as_str())
        .bind(storage)
        .bind(server)
        .execute(&mut *conn)
        .await?;
        if strategy == Strategy::Row {
            // Row tenants share tables that the application migrates.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {q}.tenant_migrations WHERE tenant_id = $1"
            )))
            .bind(id.as_str())
            .execute(&mut *conn)
            .await?;
        }
        self.find_for_update(conn, id)
            .await?
            .ok_or_else(|| Error::TenantNotFound(id.clone()))
    }

    /// The named servers kept in the registry: `(name, url)`, by name.
    pub async fn servers(&self) -> Result<Vec<(String, String)>, Error> {
        let q = &self.quoted_schema;
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT name, url FROM {q}.servers ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Keeps server `name` at `url` (a URL without a password), replacing an earlier
    /// one of that name, and announces it to every instance.
    pub async fn put_server(&self, name: &str, url: &str) -> Result<(), Error> {
        let q = &self.quoted_schema;
        let mut tx = self.pool.begin().await?;
        let users = self.lock_servers(&mut tx, name).await?;
        let before: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT url FROM {q}.servers WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if users > 0 && before.as_deref().is_some_and(|b| b != url) {
            // Their databases are on the old address: another server's database of the
            // same name must never be served, or dropped, as theirs.
            return Err(Error::Conflict(format!(
                "{users} tenant(s) live on server `{name}`; its address cannot change \
                 under them: add the new server under another name and move them"
            )));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {q}.servers (name, url) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url, added_at = now()"
        )))
        .bind(name)
        .bind(url)
        .execute(&mut *tx)
        .await?;
        self.notify_servers(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets server `name`; a server tenants still live on is a conflict.
    pub async fn remove_server(&self, name: &str) -> Result<bool, Error> {
        let q = &self.quoted_schema;
        let mut tx = self.pool.begin().await?;
        let users = self.lock_servers(&mut tx, name).await?;
        if users > 0 {
            return Err(Error::Conflict(format!(
                "{users} tenant(s) live on server `{name}`; move them first"
            )));
        }
        let removed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {q}.servers WHERE name = $1"
        )))
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        self.notify_servers(&mut tx).await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Locks the named servers against concurrent changes, inside the caller's
    /// transaction, and counts the tenants (not deleted) that live on server `name`.
    async fn lock_servers(&self, conn: &mut PgConnection, name: &str) -> Result<i64, Error> {
        let q = &self.quoted_schema;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {q}.servers IN SHARE ROW EXCLUSIVE MODE"
        )))
        .execute(&mut *conn)
        .await?;
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {q}.tenants WHERE server = $1 AND status <> 'deleted'"
        )))
        .bind(name)
        .fetch_one(&mut *conn)
        .await?)
    }

    /// Tells every instance that the named servers changed.
    async fn notify_servers(&self, conn: &mut PgConnection) -> Result<(), Error> {
        self.log_change(conn, None).await
    }

    /// The quoted fence function of moves, in the control schema.
    pub(crate) fn fence_function(&self) -> String {
        format!("{}.write_fence", self.quoted_schema)
    }

    /// Registers `domain` for tenant `id` (idempotent), inside the caller's
    /// transaction; another tenant's domain is a conflict.
    pub async fn add_domain(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        domain: &str,
    ) -> Result<(), Error> {
        let q = &self.quoted_schema;
        let mine: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {q}.tenant_domains (domain, tenant_id) VALUES ($1, $2) \
             ON CONFLICT (domain) DO UPDATE SET tenant_id = EXCLUDED.tenant_id \
             WHERE {q}.tenant_domains.tenant_id = EXCLUDED.tenant_id RETURNING tenant_id"
        )))
        .bind(domain)
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        match mine {
            Some(_) => Ok(()),
            None => Err(Error::Conflict(format!(
                "domain `{domain}` is already used by another tenant"
            ))),
        }
    }

    /// Unregisters `domain` of tenant `id`, inside the caller's transaction; `false`
    /// if the tenant did not have it.
    pub async fn remove_domain(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        domain: &str,
    ) -> Result<bool, Error> {
        let q = &self.quoted_schema;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {q}.tenant_domains WHERE domain = $1 AND tenant_id = $2"
        )))
        .bind(domain)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Unregisters every domain of tenant `id` (it is being deleted), and clears its
    /// primary domain, so the names are free and never lead to its tombstone.
    pub async fn remove_all_domains(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
    ) -> Result<(), Error> {
        let q = &self.quoted_schema;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {q}.tenant_domains WHERE tenant_id = {id};
             UPDATE {q}.tenants SET domain = NULL WHERE id = {id};",
            id = crate::naming::quote_literal(id.as_str())
        )))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Sets tenant `id`'s primary domain (one of its domains, or none).
    pub async fn set_primary_domain(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        domain: Option<&str>,
    ) -> Result<(), Error> {
        let q = &self.quoted_schema;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {q}.tenants SET domain = $2, updated_at = now() WHERE id = $1"
        )))
        .bind(id.as_str())
        .bind(domain)
        .execute(&mut *conn)
        .await
        .map_err(|e| match unique_violation(&e) {
            Some(_) => Error::Conflict(format!(
                "domain `{}` is the primary domain of another tenant",
                domain.unwrap_or_default()
            )),
            None => Error::Database(e),
        })?;
        Ok(())
    }

    /// Sets a tenant's status, on `conn` (a transaction) or the pool.
    pub async fn set_status(
        &self,
        conn: Option<&mut PgConnection>,
        id: &TenantId,
        status: TenantStatus,
    ) -> Result<Option<Tenant>, Error> {
        let query = sqlx::query(sqlx::AssertSqlSafe(self.sql.set_status.as_str()))
            .bind(id.as_str())
            .bind(status.as_str());
        let row = match conn {
            Some(conn) => query.fetch_optional(conn).await?,
            None => query.fetch_optional(&self.pool).await?,
        };
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    /// Records that `version` of the tenant migrations was applied, inside the caller's
    /// transaction (the same one that ran its DDL).
    pub async fn record_migration(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
        version: i64,
        description: &str,
        checksum: &[u8],
    ) -> Result<(), Error> {
        sqlx::query(sqlx::AssertSqlSafe(self.sql.record_migration.as_str()))
            .bind(id.as_str())
            .bind(version)
            .bind(description)
            .bind(checksum)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The fingerprint of the migration source template `name` was built from.
    pub async fn template_fingerprint(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        Ok(
            sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql.template_fingerprint.as_str()))
                .bind(name)
                .fetch_optional(conn)
                .await?,
        )
    }

    /// Records that template `name` was (re)built from the source `fingerprint`.
    pub async fn record_template(
        &self,
        conn: &mut PgConnection,
        name: &str,
        fingerprint: &[u8],
    ) -> Result<(), Error> {
        sqlx::query(sqlx::AssertSqlSafe(self.sql.record_template.as_str()))
            .bind(name)
            .bind(fingerprint)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Every domain a tenant registered (of tenants not deleted), in one query.
    pub async fn all_domains(&self) -> Result<std::collections::HashSet<String>, Error> {
        let q = &self.quoted_schema;
        let domains: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT d.domain FROM {q}.tenant_domains d JOIN {q}.tenants t ON t.id = d.tenant_id \
             WHERE t.status <> 'deleted'"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(domains.into_iter().collect())
    }

    /// Records the schema of the shared tables this registry's row tenants live in
    /// (`PoolConfig::row_schema`): row tenants' deletions, exports and moves then touch
    /// only tables there, never another registry's in the same database.
    pub async fn record_row_schema(&self, schema: &str) -> Result<(), Error> {
        let q = &self.quoted_schema;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {q}.settings (name, value) VALUES ('row_schema', $1) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
        )))
        .bind(schema)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the application's tenant migrations, `(version, description, SQL,
    /// checksum)` each, replacing a version whose checksum changed; versions the source
    /// does not have stay (an older instance does not unregister a newer one's).
    pub async fn register_migrations(
        &self,
        migrations: impl IntoIterator<Item = (i64, String, String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let q = &self.quoted_schema;
        let sql = format!(
            "INSERT INTO {q}.migration_source (version, description, sql, checksum) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[]) \
             ON CONFLICT (version) DO UPDATE SET description = EXCLUDED.description, \
             sql = EXCLUDED.sql, checksum = EXCLUDED.checksum, registered_at = now() \
             WHERE {q}.migration_source.checksum IS DISTINCT FROM EXCLUDED.checksum"
        );
        let (mut versions, mut descriptions, mut sqls, mut checksums) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (version, description, sql, checksum) in migrations {
            versions.push(version);
            descriptions.push(description);
            sqls.push(sql);
            checksums.push(checksum);
        }
        if versions.is_empty() {
            return Ok(());
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(versions)
            .bind(descriptions)
            .bind(sqls)
            .bind(checksums)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The tenant migrations an application registered ([`Self::register_migrations`]),
    /// `(version, description, SQL)` each in version order (for
    /// [`TenantMigrations::from_sources`](crate::TenantMigrations::from_sources));
    /// empty when none did.
    pub async fn registered_migrations(&self) -> Result<Vec<(i64, String, String)>, Error> {
        let q = &self.quoted_schema;
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, description, sql FROM {q}.migration_source ORDER BY version"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The migration versions applied to every tenant that is not deleted, with their
    /// checksums, in one query.
    pub async fn all_applied_migrations(
        &self,
    ) -> Result<std::collections::HashMap<TenantId, Vec<(i64, Vec<u8>)>>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql.all_applied.as_str()))
            .fetch_all(&self.pool)
            .await?;
        let mut map: std::collections::HashMap<TenantId, Vec<(i64, Vec<u8>)>> =
            std::collections::HashMap::new();
        for row in rows {
            let id: String = row.try_get("tenant_id")?;
            let id = TenantId::parse(&id).map_err(|_| {
                Error::Registry(format!("invalid tenant id `{id}` in the registry"))
            })?;
            map.entry(id)
                .or_default()
                .push((row.try_get("version")?, row.try_get("checksum")?));
        }
        Ok(map)
    }

    /// The migration versions applied to a tenant, with their checksums.
    pub async fn applied_migrations(
        &self,
        conn: &mut PgConnection,
        id: &TenantId,
    ) -> Result<Vec<(i64, Vec<u8>)>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql.applied_versions.as_str()))
            .bind(id.as_str())
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("version")?, r.try_get("checksum")?)))
            .collect()
    }
}

fn unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            Some(db.constraint().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

/// A schema, database or server name read back from the registry: it is used in SQL
/// (quoted), in connection URLs and as a `pg_dump` argument, so it must be what
/// tenantry itself writes there (a plain lowercase identifier) and nothing else.
fn stored_name(what: &str, name: String) -> Result<String, Error> {
    if crate::naming::is_identifier(&name, 63) {
        Ok(name)
    } else {
        Err(Error::Registry(format!(
            "the registry holds an invalid {what} `{}`; refusing to use it",
            name.chars().take(64).collect::<String>().escape_debug()
        )))
    }
}

/// A server name read back from the registry: a key of the configured servers, shown
/// in messages (never in SQL or URLs); no control characters, at most 200 bytes.
fn stored_server(name: String) -> Result<String, Error> {
    let ok = !name.is_empty() && name.len() <= 200 && !name.chars().any(char::is_control);
    if ok {
        Ok(name)
    } else {
        Err(Error::Registry(format!(
            "the registry holds an invalid server name `{}`; refusing to use it",
            name.chars().take(64).collect::<String>().escape_debug()
        )))
    }
}

/// Limits read back from the registry: what tenantry wrote there, in range.
fn stored_limits(text: String) -> Result<TenantLimits, Error> {
    let limits: TenantLimits = serde_json::from_str(&text).map_err(|e| {
        Error::Registry(format!("the registry holds unreadable tenant limits: {e}"))
    })?;
    limits
        .check()
        .map_err(|e| Error::Registry(format!("the registry holds invalid tenant limits: {e}")))?;
    Ok(limits)
}

fn tenant_from_row(row: &PgRow) -> Result<Tenant, Error> {
    let id: String = row.try_get("id")?;
    let strategy: String = row.try_get("strategy")?;
    let status: String = row.try_get("status")?;
    Ok(Tenant {
        id: TenantId::parse(&id)
            .map_err(|_| Error::Registry(format!("invalid tenant id `{id}` in the registry")))?,
        name: row.try_get("name")?,
        domain: row.try_get("domain")?,
        strategy: Strategy::from_db(&strategy).ok_or_else(|| {
            Error::Registry(format!("unknown strategy `{strategy}` in the registry"))
        })?,
        status: TenantStatus::from_db(&status).ok_or_else(|| {
            Error::Registry(format!("unknown tenant status `{status}` in the registry"))
        })?,
        storage: stored_name("schema or database name", row.try_get("schema_name")?)?,
        server: stored_server(row.try_get("server")?)?,
        incarnation: row.try_get("incarnation")?,
        schema_version: row.try_get("schema_version")?,
        created_at: row.try_get("created_at")?,
        limits: stored_limits(row.try_get("limits")?)?,
        domains: row.try_get("domains")?,
        updated_at: row.try_get("updated_at")?,
    })
}
