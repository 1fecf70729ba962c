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

use crate::error::Error;
use crate::migrate::TenantMigrations;
use crate::repository::TenantRepository;
use crate::strategy::quote_ident;

const LOCAL_RECORDS: &str = "CREATE TABLE IF NOT EXISTS public._tenantry_migrations (
    version bigint PRIMARY KEY,
    checksum bytea NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, Error> {
    Ok(PgConnection::connect_with(options).await?)
}

/// Makes sure server `server_name` has a template database matching `migrations`
/// (rebuilt when the source changes); returns its name.
pub(crate) async fn ensure_template(
    repo: &TenantRepository,
    migrations: &TenantMigrations,
    server_name: &str,
    server: &PgConnectOptions,
    name: &str,
) -> Result<String, Error> {
    let name = name.to_owned();
    let key = format!("database:{server_name}:{name}");
    let fingerprint = migrations.fingerprint();
    // A session lock on the registry serialises builders across app instances.
    let mut lock = repo.pool().acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(format!("tenantry.template:{key}"))
        .execute(&mut *lock)
        .await?;
    let result = async {
        let current = repo.template_fingerprint(&mut lock, &key).await?;
        // Which registry a template belongs to, kept as its comment: another registry
        // on the same server (with the same prefix) must not drop or rebuild it.
        let registry_db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut *lock)
            .await?;
        let owner = format!(
            "tenantry template of registry {registry_db}.{}",
            repo.control_schema()
        );
        let mut admin = connect(server).await?;
        let found: Option<Option<String>> = sqlx::query_scalar(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
        )
        .bind(&name)
        .fetch_optional(&mut admin)
        .await?;
        match &found {
            // Ours (or one this registry built before templates carried an owner).
            Some(Some(comment)) if *comment == owner => {}
            Some(None) if current.is_some() => {}
            Some(_) => {
                let _ = admin.close().await;
                return Err(Error::Conflict(format!(
                    "a database named `{name}` exists on server `{server_name}` and is not this \
                     registry's template (another registry or application made it); it was \
                     left untouched: give this registry another database prefix"
                )));
            }
            None => {}
        }
        if current.as_deref() == Some(fingerprint.as_slice()) && found.is_some() {
            return Ok(());
        }
        let q = quote_ident(&name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {q} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {q}")))
            .execute(&mut admin)
            .await?;
        let built = async {
            let mut tpl = connect(&server.clone().database(&name)).await?;
            let mut tx = tpl.begin().await?;
            sqlx::raw_sql(LOCAL_RECORDS).execute(&mut *tx).await?;
            for version in migrations.versions() {
                migrations
                    .run_version_sql(
                        &mut tx,
                        &format!("template database on `{server_name}`"),
                        version,
                    )
                    .await?;
                record_local(&mut tx, migrations, version).await?;
            }
            tx.commit().await?;
            // No connection may stay on a template while databases are copied from it.
            tpl.close().await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = built {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {q} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
            return Err(e);
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "COMMENT ON DATABASE {q} IS {}",
            crate::strategy::quote_literal(&owner)
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        repo.record_template(&mut lock, &key, &fingerprint).await?;
        Ok(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(format!("tenantry.template:{key}"))
        .execute(&mut *lock)
        .await;
    result.map(|()| name)
}

async fn record_local(
    conn: &mut PgConnection,
    migrations: &TenantMigrations,
    version: i64,
) -> Result<(), Error> {
    let checksum = migrations.checksum(version)?;
    sqlx::query("INSERT INTO public._tenantry_migrations (version, checksum) VALUES ($1, $2)")
        .bind(version)
        .bind(checksum)
        .execute(conn)
        .await?;
    Ok(())
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
/// local record in one transaction; returns the versions applied, for the registry.
pub(crate) async fn migrate(
    server: &PgConnectOptions,
    db: &str,
    migrations: &TenantMigrations,
) -> Result<Vec<i64>, Error> {
    let mut conn = connect(&server.clone().database(db)).await?;
    sqlx::raw_sql(LOCAL_RECORDS).execute(&mut conn).await?;
    let mut applied = Vec::new();
    for version in migrations.versions() {
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
        migrations
            .run_version_sql(&mut tx, &format!("database `{db}`"), version)
            .await?;
        record_local(&mut tx, migrations, version).await?;
        tx.commit().await?;
        applied.push(version);
    }
    let _ = conn.close().await;
    Ok(applied)
}
