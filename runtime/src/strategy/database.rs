//! The database strategy: a database per tenant, on the server it is placed on,
//! created from a template database that already holds the tenant migrations.
//!
//! `CREATE DATABASE` is not transactional, so provisioning is: registry row
//! (`provisioning`), `CREATE DATABASE .. TEMPLATE ..`, then versions and `active` in
//! one registry transaction; on any failure the half-made database is dropped and the
//! row removed. Each tenant database records its own migrations in
//! `public._tenantry_migrations`, in the same transaction as their DDL; the registry
//! mirrors them.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::template::TemplateLock;
use super::{Finding, Strategies};
use crate::error::Error;
use crate::migrate::Record;
use crate::mobility::copy::{self, Place};
use crate::mobility::format::Snapshot;
use crate::naming::{quote_ident, quote_literal};
use crate::servers::DEFAULT_SERVER;
use crate::tenant::{NewTenant, Strategy, Tenant, TenantStatus};

const LOCAL_RECORDS: &str = "CREATE TABLE IF NOT EXISTS public._tenantry_migrations (
    version bigint PRIMARY KEY,
    checksum bytea NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, Error> {
    Ok(PgConnection::connect_with(options).await?)
}

/// Makes sure server `server_name` has a template database matching the migrations
/// (rebuilt when the source changes); returns its name. Another registry's template
/// (or any database of that name it did not make) is a conflict, never dropped.
pub(crate) async fn template(
    s: &Strategies,
    server_name: &str,
    server: &PgConnectOptions,
) -> Result<String, Error> {
    let name = s.names.template_database();
    let key = format!("database:{server_name}:{name}");
    let fingerprint = s.migrations.fingerprint();
    let mut lock = TemplateLock::acquire(&s.repo, &key).await?;
    let recorded = lock.recorded(&s.repo).await?;
    // Which registry a template belongs to, kept as its comment: another registry on
    // the same server (with the same prefix) must not drop or rebuild it.
    let registry_db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(lock.conn())
        .await?;
    let owner = format!(
        "tenantry template of registry {registry_db}.{}",
        s.repo.control_schema()
    );
    let mut admin = connect(server).await?;
    let found: Option<Option<String>> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(&name)
    .fetch_optional(&mut admin)
    .await?;
    let current = match &found {
        // Ours (or one this registry built before templates carried an owner).
        Some(Some(comment)) if *comment == owner => true,
        Some(None) if recorded.is_some() => true,
        Some(_) => {
            let _ = admin.close().await;
            lock.release().await;
            return Err(Error::Conflict(format!(
                "a database named `{name}` exists on server `{server_name}` and is not this \
                 registry's template (another registry or application made it); it was \
                 left untouched: give this registry another database prefix"
            )));
        }
        None => false,
    } && recorded.as_deref() == Some(fingerprint.as_slice());
    if !current {
        build_template(s, &mut admin, server_name, server, &name, &owner).await?;
        lock.record(&s.repo, &fingerprint).await?;
    }
    let _ = admin.close().await;
    lock.release().await;
    Ok(name)
}

/// (Re)builds the template database `name` with every migration, marked as `owner`'s;
/// a failed build leaves no template behind.
async fn build_template(
    s: &Strategies,
    admin: &mut PgConnection,
    server_name: &str,
    server: &PgConnectOptions,
    name: &str,
    owner: &str,
) -> Result<(), Error> {
    let q = quote_ident(name);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {q} WITH (FORCE)"
    )))
    .execute(&mut *admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {q}")))
        .execute(&mut *admin)
        .await?;
    let built = async {
        let mut tpl = connect(&server.clone().database(name)).await?;
        let mut tx = tpl.begin().await?;
        sqlx::raw_sql(LOCAL_RECORDS).execute(&mut *tx).await?;
        let versions = s.migrations.versions();
        let target = format!("template database on `{server_name}`");
        s.migrations
            .apply(&mut tx, &target, &versions, &Record::Local)
            .await?;
        tx.commit().await?;
        // No connection may stay on a template while databases are copied from it.
        tpl.close().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "COMMENT ON DATABASE {q} IS {}",
            quote_literal(owner)
        )))
        .execute(&mut *admin)
        .await?;
        Ok::<_, Error>(())
    }
    .await;
    if built.is_err() {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {q} WITH (FORCE)"
        )))
        .execute(&mut *admin)
        .await;
    }
    built
}

/// `CREATE DATABASE db TEMPLATE template` on the server. Copies from one template
/// are serialised on the server (a copy needs the template to itself).
pub(crate) async fn create(
    server: &PgConnectOptions,
    db: &str,
    template: &str,
) -> Result<(), Error> {
    let mut admin = connect(server).await?;
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(format!("tenantry.createdb:{template}"))
        .execute(&mut admin)
        .await?;
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {} TEMPLATE {}",
        quote_ident(db),
        quote_ident(template)
    )))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
    match result {
        Ok(_) => Ok(()),
        // Someone else's database (another app's registry, or made by hand): refuse,
        // and leave it as it is.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {
            Err(Error::Conflict(format!(
                "a database named `{db}` already exists on the tenant's server and was not \
                 made by tenantry for this tenant; it was left untouched (remove it, or use \
                 another tenant id or database prefix)"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// `DROP DATABASE db WITH (FORCE)` on the server.
pub(crate) async fn drop(server: &PgConnectOptions, db: &str) -> Result<(), Error> {
    let mut admin = connect(server).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(db)
    )))
    .execute(&mut admin)
    .await?;
    let _ = admin.close().await;
    Ok(())
}

/// Applies pending migrations inside the tenant database, each version with its
/// local record in one transaction, then mirrors them in the registry; returns the
/// versions applied.
pub(crate) async fn migrate(s: &Strategies, tenant: &Tenant) -> Result<Vec<i64>, Error> {
    let server = s.servers.get(&tenant.server)?;
    let db = &tenant.storage;
    let mut conn = connect(&server.clone().database(db)).await?;
    sqlx::raw_sql(LOCAL_RECORDS).execute(&mut conn).await?;
    let target = format!("database `{db}`");
    let mut applied = Vec::new();
    for version in s.migrations.versions() {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tenantry.migrate'))")
            .execute(&mut *tx)
            .await?;
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM public._tenantry_migrations WHERE version = $1)",
        )
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
        if done {
            continue;
        }
        s.migrations
            .apply(&mut tx, &target, &[version], &Record::Local)
            .await?;
        tx.commit().await?;
        applied.push(version);
    }
    let _ = conn.close().await;
    let mut tx = s.repo.pool().begin().await?;
    let record = Record::Registry(&s.repo, &tenant.id);
    for &version in &applied {
        s.migrations.record(&mut tx, &record, version).await?;
    }
    tx.commit().await?;
    Ok(applied)
}

/// Registry row, `CREATE DATABASE` from the server's template database, then versions
/// and `active`; on failure the database is dropped and the row removed (`CREATE
/// DATABASE` cannot join a transaction).
pub(crate) async fn provision(
    s: &Strategies,
    new: &NewTenant,
    server_name: &str,
    fill: Option<&Snapshot>,
) -> Result<Tenant, Error> {
    let server = s.servers.get(server_name)?;
    let template = template(s, server_name, &server).await?;
    let db = s.names.database(&new.id);
    let mut tx = s.repo.pool().begin().await?;
    s.repo.purge_deleted(&mut tx, &new.id).await?;
    s.repo
        .insert(&mut tx, new, TenantStatus::Provisioning, &db)
        .await?;
    tx.commit().await?;
    // Only what this attempt made is ever dropped: `created` turns true once `CREATE
    // DATABASE` succeeded, never for a database that existed before.
    let mut created = false;
    let finished = async {
        create(&server, &db, &template).await?;
        created = true;
        if let Some(fill) = fill {
            load(&server, &db, &new.id, fill).await?;
        }
        let mut tx = s.repo.pool().begin().await?;
        let record = Record::Registry(&s.repo, &new.id);
        s.migrations.record_all(&mut tx, &record).await?;
        s.activate(tx, new).await
    }
    .await;
    if finished.is_err() {
        if created && let Err(cleanup) = drop(&server, &db).await {
            tracing::error!(tenant = %new.id, error = %cleanup, "could not drop a half-made tenant database; `tenantry doctor` lists it");
        }
        let _ = s.repo.delete_provisioning(&new.id).await;
    }
    finished
}

/// Loads and verifies `fill` in database `db`, in one transaction there.
pub(crate) async fn load(
    server: &PgConnectOptions,
    db: &str,
    id: &crate::tenant::TenantId,
    fill: &Snapshot,
) -> Result<(), Error> {
    let mut conn = connect(&server.clone().database(db)).await?;
    let mut tx = conn.begin().await?;
    copy::write(&mut tx, Place::Database, id, fill).await?;
    tx.commit().await?;
    let _ = conn.close().await;
    Ok(())
}

/// Drops the tenant's database on its server.
pub(crate) async fn remove(s: &Strategies, tenant: &Tenant) -> Result<(), Error> {
    let server = s.servers.get(&tenant.server)?;
    drop(&server, &tenant.storage).await
}

/// The tenant's database, from `pg_dump` (on the registry's server only).
pub(crate) async fn export(tenant: &Tenant, url: &str) -> Result<Vec<u8>, Error> {
    if tenant.server != DEFAULT_SERVER {
        return Err(Error::Unprocessable(format!(
            "tenant `{}` lives in database `{}` on server `{}`; run pg_dump against that server",
            tenant.id, tenant.storage, tenant.server
        )));
    }
    let url = crate::pgbin::url_with_database(url, &tenant.storage);
    crate::pgbin::pg_dump(&url, &[]).await
}

/// Tenant databases on the registry's server that no tenant owns (a provisioning
/// that failed and could not clean up, or a registry row removed by hand:
/// `orphan-database`), and database tenants without their database
/// (`missing-database`).
pub(crate) async fn doctor(
    s: &Strategies,
    tenants: &[Tenant],
    findings: &mut Vec<Finding>,
) -> Result<(), Error> {
    let databases: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database
         WHERE starts_with(datname, $1) AND datname <> $2 ORDER BY 1",
    )
    .bind(s.names.database_prefix())
    .bind(s.names.template_database())
    .fetch_all(s.repo.pool())
    .await?;
    let here: Vec<&Tenant> = tenants
        .iter()
        .filter(|t| t.strategy == Strategy::Database && t.server == DEFAULT_SERVER)
        .collect();
    for db in &databases {
        if !here.iter().any(|t| &t.storage == db) {
            findings.push(Finding {
                kind: "orphan-database",
                subject: db.clone(),
                detail: "a tenant database that no tenant in the registry owns".to_owned(),
            });
        }
    }
    for t in &here {
        if !databases.contains(&t.storage) {
            findings.push(Finding {
                kind: "missing-database",
                subject: t.id.to_string(),
                detail: format!("database {} does not exist", t.storage),
            });
        }
    }
    Ok(())
}
