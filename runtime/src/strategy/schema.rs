//! The schema strategy (the default): each tenant owns the schema
//! `tenant_<id>`, made in one transaction with its registry row and its migrations
//! (cloned from the template schema, or replayed), and dropped with its tombstone.

use std::sync::Arc;

use sqlx::PgConnection;

use super::clone;
pub(crate) use super::clone::SchemaTemplate;
use super::template::TemplateLock;
use super::{Finding, Strategies};
use crate::error::Error;
use crate::migrate::Record;
use crate::mobility::copy::{self, Place};
use crate::mobility::format::Snapshot;
use crate::naming::{quote_ident, tenant_schema_pattern};
use crate::tenant::{NewTenant, Strategy, Tenant, TenantId, TenantStatus};

/// Registry row, schema and migrations in one transaction: if any step fails nothing
/// is left behind, and the id can be used again once the cause is fixed. The schema
/// is cloned from the template unless that is turned off or not possible, in which
/// case the migrations are replayed.
pub(crate) async fn provision(
    s: &Strategies,
    new: &NewTenant,
    fill: Option<&Snapshot>,
) -> Result<Tenant, Error> {
    let template = template_for(s).await?;
    let schema = s.names.schema(&new.id);
    let precreated = match precreate(s, &schema).await? {
        Some(p) => {
            // A tenant of that id has that schema: say so, not that the name is taken.
            if let Some(t) = s.repo.find(&new.id).await?
                && t.status != TenantStatus::Deleted
            {
                p.discard(s).await;
                return Err(Error::TenantExists(new.id.clone()));
            }
            Some(p)
        }
        None => None,
    };
    let made = async {
        let mut tx = s.repo.pool().begin().await?;
        s.repo.purge_deleted(&mut tx, &new.id).await?;
        s.repo
            .insert(&mut tx, new, TenantStatus::Provisioning, &schema)
            .await?;
        let pre = precreated.is_some();
        build(s, &mut tx, &schema, template.as_deref(), &new.id, fill, pre).await?;
        s.activate(tx, new).await
    }
    .await;
    if made.is_err()
        && let Some(p) = precreated
    {
        p.discard(s).await;
    }
    made
}

/// A tenant schema made, empty and committed, ahead of the transaction that builds
/// it: on a Citus coordinator with a registry login that is not a superuser, Citus
/// cannot distribute a schema created in the same transaction (it makes such a
/// login's schemas on the workers over a connection of its own, which the
/// transaction does not see: "schema .. does not exist" on a worker). Dropped again
/// by [`Precreated::discard`] when the build fails.
#[derive(Debug)]
pub(crate) struct Precreated {
    name: String,
}

/// Makes the schema ahead (see [`Precreated`]) where it must be; `None` elsewhere
/// (the build's transaction creates it).
pub(crate) async fn precreate(s: &Strategies, name: &str) -> Result<Option<Precreated>, Error> {
    if s.citus.is_none() {
        return Ok(None);
    }
    let mut conn = s.repo.pool().acquire().await?;
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut *conn)
            .await?;
    if superuser {
        return Ok(None);
    }
    match sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {}",
        quote_ident(name)
    )))
    .execute(&mut *conn)
    .await
    {
        Ok(_) => Ok(Some(Precreated {
            name: name.to_owned(),
        })),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P06") => {
            Err(schema_taken(name))
        }
        Err(e) => Err(e.into()),
    }
}

impl Precreated {
    /// Drops the schema this attempt made, with what the attempt left in it: its
    /// transaction rolled back on the coordinator, but Citus makes a non-superuser's
    /// dependencies on the workers (the schema, its tables' sequences) over
    /// connections of their own, which commit. The name is this tenant's, made by this
    /// attempt: nothing else is in it.
    pub(crate) async fn discard(self, s: &Strategies) {
        let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&self.name));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(s.repo.pool())
            .await
        {
            tracing::warn!(schema = %self.name, error = %e, "could not drop the schema a failed provisioning made; `tenantry doctor` lists it");
        }
    }
}

fn schema_taken(name: &str) -> Error {
    Error::Conflict(format!(
        "a schema named `{name}` already exists and was not made by tenantry for this \
         tenant; it was left untouched (remove it, or use another tenant id)"
    ))
}

/// The template to clone new schemas from, unless cloning is off or there are no
/// migrations.
pub(crate) async fn template_for(s: &Strategies) -> Result<Option<Arc<SchemaTemplate>>, Error> {
    if s.from_template && !s.migrations.versions().is_empty() {
        Ok(Some(template(s).await?))
    } else {
        Ok(None)
    }
}

/// Creates schema `schema` for tenant `id` inside the caller's transaction (or fills
/// it, made ahead when `precreated`): cloned from `template` (or every migration
/// replayed), the migrations recorded for the tenant in the registry, and `fill`'s
/// data loaded and verified.
pub(crate) async fn build(
    s: &Strategies,
    tx: &mut PgConnection,
    schema: &str,
    template: Option<&SchemaTemplate>,
    id: &TenantId,
    fill: Option<&Snapshot>,
    precreated: bool,
) -> Result<(), Error> {
    if precreated {
        set_local_search_path(tx, schema).await?;
    } else {
        create_schema(tx, schema).await?;
    }
    let cloned = match template {
        Some(t) => clone::clone_into(tx, t, schema).await?,
        None => false,
    };
    let record = Record::Registry(&s.repo, id);
    if cloned {
        s.migrations.record_all(tx, &record).await?;
    } else {
        set_local_search_path(tx, schema).await?;
        let target = format!("tenant `{id}`");
        s.migrations
            .apply(tx, &target, &s.migrations.versions(), &record)
            .await?;
    }
    if s.citus.is_some() {
        // On a Citus coordinator: placed on a worker, in this same transaction.
        crate::citus::distribute_schema(tx, schema).await?;
    }
    if let Some(fill) = fill {
        copy::write(tx, Place::Schema(schema), id, fill).await?;
    }
    Ok(())
}

/// The template schema for the current migrations: checked (or built) once per
/// process, then reused with its clone script.
async fn template(s: &Strategies) -> Result<Arc<SchemaTemplate>, Error> {
    let fingerprint = s.migrations.fingerprint();
    if let Some(t) = s.templates.schema(&fingerprint) {
        return Ok(t);
    }
    let name = s.names.template_schema();
    let mut lock = TemplateLock::acquire(&s.repo, &name).await?;
    let recorded = lock.recorded(&s.repo).await?;
    let mut tx = sqlx::Connection::begin(lock.conn()).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
    let current = exists && recorded.as_deref() == Some(fingerprint.as_slice());
    if !current {
        let q = quote_ident(&name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {q} CASCADE; CREATE SCHEMA {q}; SET LOCAL search_path TO {q}"
        )))
        .execute(&mut *tx)
        .await?;
        let versions = s.migrations.versions();
        s.migrations
            .apply(&mut tx, &name, &versions, &Record::Nowhere)
            .await?;
        s.repo.record_template(&mut tx, &name, &fingerprint).await?;
    }
    let script = clone::clone_script(&mut tx, &name).await?;
    if current {
        // Reading the script set a transaction-local search_path; nothing to keep.
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    lock.release().await;
    let template = Arc::new(SchemaTemplate {
        fingerprint,
        script,
    });
    s.templates.keep_schema(template.clone());
    Ok(template)
}

/// Drops the tenant's schema and everything in it, inside the caller's transaction.
pub(crate) async fn remove(tx: &mut PgConnection, tenant: &Tenant) -> Result<(), Error> {
    let schema = quote_ident(&tenant.id.schema_name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(tx)
    .await?;
    Ok(())
}

/// Pending migrations, one transaction per version (its DDL, its record and the
/// announcement that voids every instance's bindings together). A failure keeps the
/// versions before it; a rerun resumes at the failed one. Concurrent runs on the same
/// tenant wait for each other (the registry row is locked).
pub(crate) async fn migrate(s: &Strategies, tenant: &Tenant) -> Result<Vec<i64>, Error> {
    let id = &tenant.id;
    let pending = {
        let mut conn = s.repo.pool().acquire().await?;
        s.migrations.pending(&mut conn, &s.repo, id).await?
    };
    let record = Record::Registry(&s.repo, id);
    let target = format!("tenant `{id}`");
    let mut applied = Vec::new();
    for version in pending {
        let mut tx = s.repo.pool().begin().await?;
        s.repo
            .find_for_update(&mut tx, id)
            .await?
            .filter(|t| t.status != TenantStatus::Deleted)
            .ok_or_else(|| Error::TenantNotFound(id.clone()))?;
        // Another run may have applied it while this one waited for the lock.
        let now = s.repo.applied_migrations(&mut tx, id).await?;
        if now.iter().any(|(v, _)| *v == version) {
            continue;
        }
        set_local_search_path(&mut tx, &tenant.id.schema_name()).await?;
        s.migrations
            .apply(&mut tx, &target, &[version], &record)
            .await?;
        // Every instance drops its bindings: statements prepared against the old
        // tables are not reused.
        s.repo.notify(&mut tx, id).await?;
        tx.commit().await?;
        applied.push(version);
    }
    Ok(applied)
}

/// The tenant's schema, from `pg_dump --schema`.
pub(crate) async fn export(tenant: &Tenant, url: &str) -> Result<Vec<u8>, Error> {
    crate::pgbin::pg_dump(url, &["--schema", &tenant.storage]).await
}

/// Tenant schemas no tenant owns (`orphan-schema`), and schema tenants without their
/// schema (`missing-schema`).
pub(crate) async fn doctor(
    s: &Strategies,
    tenants: &[Tenant],
    findings: &mut Vec<Finding>,
) -> Result<(), Error> {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 ORDER BY 1",
    )
    .bind(tenant_schema_pattern())
    .fetch_all(s.repo.pool())
    .await?;
    for schema in &schemas {
        if !tenants.iter().any(|t| &t.storage == schema) {
            findings.push(Finding {
                kind: "orphan-schema",
                subject: schema.clone(),
                detail: "a tenant schema that no tenant in the registry owns".to_owned(),
            });
        }
    }
    for t in tenants.iter().filter(|t| t.strategy == Strategy::Schema) {
        if !schemas.contains(&t.storage) {
            findings.push(Finding {
                kind: "missing-schema",
                subject: t.id.to_string(),
                detail: format!("schema {} does not exist", t.storage),
            });
        }
    }
    Ok(())
}

/// Creates the schema inside the caller's transaction and points the transaction's
/// `search_path` at it, so the migrations that follow land there.
///
/// A schema of that name that exists already (made by hand, or by another app) is a
/// conflict: the transaction fails and the schema is left as it is.
async fn create_schema(conn: &mut PgConnection, name: &str) -> Result<(), Error> {
    let schema = quote_ident(name);
    match sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; SET LOCAL search_path TO {schema}"
    )))
    .execute(conn)
    .await
    {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P06") => {
            Err(schema_taken(name))
        }
        Err(e) => Err(e.into()),
    }
}

/// Points the caller's transaction at an existing schema.
async fn set_local_search_path(conn: &mut PgConnection, name: &str) -> Result<(), Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL search_path TO {}",
        quote_ident(name)
    )))
    .execute(conn)
    .await?;
    Ok(())
}
