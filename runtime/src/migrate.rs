//! Tenant migrations: the application's sqlx migrations, applied per tenant.
//!
//! Each version's DDL and its record in the registry commit in the same transaction,
//! so a tenant is never left half migrated.

use std::sync::Arc;

use sqlx::PgConnection;
use sqlx::migrate::Migrator;

use crate::error::Error;
use crate::repository::TenantRepository;
use crate::tenant::TenantId;

/// The tenant migrations of an application (a sqlx migrations directory).
///
/// Build one with `sqlx::migrate!("./migrations/tenant")` (embedded at compile time)
/// or [`TenantMigrations::from_dir`] (read at run time).
#[derive(Debug, Clone)]
pub struct TenantMigrations {
    migrator: Arc<Migrator>,
}

impl TenantMigrations {
    /// Wraps a sqlx [`Migrator`].
    pub fn new(migrator: Migrator) -> Result<Self, Error> {
        if let Some(m) = migrator.iter().find(|m| m.no_tx) {
            return Err(Error::Migration(format!(
                "migration {} `{}` is marked `no-transaction`; tenant migrations must run in a transaction",
                m.version, m.description
            )));
        }
        Ok(Self {
            migrator: Arc::new(migrator),
        })
    }

    /// Reads the migrations in `dir` (sqlx's file format) at run time.
    pub async fn from_dir(dir: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let migrator = Migrator::new(dir.as_ref().to_path_buf()).await?;
        Self::new(migrator)
    }

    /// No migrations at all.
    pub fn empty() -> Self {
        Self {
            migrator: Arc::new(Migrator::with_migrations(Vec::new())),
        }
    }

    /// The latest version, if any.
    pub fn latest_version(&self) -> Option<i64> {
        self.migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| m.version)
            .max()
    }

    /// Applies every pending migration to `tenant` inside the caller's transaction,
    /// whose `search_path` must already point at the tenant's schema. Returns how many
    /// versions were applied.
    pub(crate) async fn apply_in(
        &self,
        conn: &mut PgConnection,
        repo: &TenantRepository,
        tenant: &TenantId,
    ) -> Result<usize, Error> {
        let applied = repo.applied_migrations(conn, tenant).await?;
        let mut count = 0;
        for migration in self
            .migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
        {
            match applied.iter().find(|(v, _)| *v == migration.version) {
                Some((_, checksum)) if checksum.as_slice() != &*migration.checksum => {
                    return Err(Error::Migration(format!(
                        "tenant `{tenant}`: migration {} was applied with a different checksum (drift)",
                        migration.version
                    )));
                }
                Some(_) => continue,
                None => {}
            }
            sqlx::raw_sql(migration.sql.clone())
                .execute(&mut *conn)
                .await
                .map_err(|e| {
                    Error::Migration(format!(
                        "tenant `{tenant}`: migration {} `{}` failed: {e}",
                        migration.version, migration.description
                    ))
                })?;
            repo.record_migration(
                conn,
                tenant,
                migration.version,
                &migration.description,
                &migration.checksum,
            )
            .await?;
            count += 1;
        }
        Ok(count)
    }
}
