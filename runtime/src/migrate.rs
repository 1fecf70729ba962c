//! Tenant migrations: the application's sqlx migrations, applied per tenant, and
//! across all tenants ([`TenantManager::migrate_all`](crate::TenantManager::migrate_all)).
//!
//! Each version's DDL and its record in the registry commit in the same transaction,
//! so a tenant is never left half way through a version, and a rerun resumes at the
//! first version a tenant lacks.

use std::sync::Arc;

use serde::Serialize;
use sqlx::PgConnection;
use sqlx::migrate::{Migration, Migrator};

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

    /// A source from `(version, description, sql)` triples, as a migrations directory
    /// of those files would give (the checksums are computed from the SQL the same way).
    pub fn from_sources(
        migrations: impl IntoIterator<Item = (i64, String, String)>,
    ) -> Result<Self, Error> {
        let migrations = migrations
            .into_iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    sqlx::migrate::MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
                    false,
                )
            })
            .collect();
        Self::new(Migrator::with_migrations(migrations))
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

    /// The up migrations, in version order.
    pub(crate) fn ups(&self) -> impl Iterator<Item = &Migration> {
        self.migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
    }

    /// The versions this source has, in order.
    pub fn versions(&self) -> Vec<i64> {
        self.ups().map(|m| m.version).collect()
    }

    /// Compares what a tenant has applied with this source: the versions it lacks, and
    /// every way it differs (a changed checksum, a version this source does not have).
    pub fn compare(&self, applied: &[(i64, Vec<u8>)]) -> (Vec<i64>, Vec<String>) {
        let mut drift = Vec::new();
        for (version, checksum) in applied {
            match self.ups().find(|m| m.version == *version) {
                None => drift.push(format!(
                    "version {version} is applied but not in the migration source"
                )),
                Some(m) if m.checksum.as_ref() != checksum.as_slice() => drift.push(format!(
                    "version {version} was applied with a different checksum"
                )),
                Some(_) => {}
            }
        }
        let pending = self
            .ups()
            .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
            .map(|m| m.version)
            .collect();
        (pending, drift)
    }

    /// Identifies the source: every version with its checksum. The template schema is
    /// rebuilt when this changes.
    pub(crate) fn fingerprint(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for m in self.ups() {
            out.extend_from_slice(&m.version.to_be_bytes());
            out.extend_from_slice(&m.checksum);
        }
        out
    }

    fn get(&self, version: i64) -> Result<&Migration, Error> {
        self.ups()
            .find(|m| m.version == version)
            .ok_or_else(|| Error::Migration(format!("no migration {version} in the source")))
    }

    /// Runs the SQL of `version` on `conn` (whose `search_path` names the target
    /// schema); `target` names it in error messages.
    pub(crate) async fn run_version_sql(
        &self,
        conn: &mut PgConnection,
        target: &str,
        version: i64,
    ) -> Result<(), Error> {
        let migration = self.get(version)?;
        sqlx::raw_sql(migration.sql.clone())
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                Error::Migration(format!(
                    "{target}: migration {} `{}` failed: {e}",
                    migration.version, migration.description
                ))
            })?;
        Ok(())
    }

    /// Applies `versions` in order on `conn` (whose `search_path` names the target
    /// schema), each recorded as `record` says in the same transaction as its DDL:
    /// the one loop that runs tenant migrations, for tenants and templates of every
    /// strategy. `target` names where, in error messages.
    pub(crate) async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &str,
        versions: &[i64],
        record: &Record<'_>,
    ) -> Result<(), Error> {
        for &version in versions {
            self.run_version_sql(conn, target, version).await?;
            self.record(conn, record, version).await?;
        }
        Ok(())
    }

    /// Records every version of the source as applied without running it (a tenant
    /// copied from a template that holds them all).
    pub(crate) async fn record_all(
        &self,
        conn: &mut PgConnection,
        record: &Record<'_>,
    ) -> Result<(), Error> {
        for version in self.versions() {
            self.record(conn, record, version).await?;
        }
        Ok(())
    }

    /// Records `version` as applied, inside the caller's transaction.
    pub(crate) async fn record(
        &self,
        conn: &mut PgConnection,
        record: &Record<'_>,
        version: i64,
    ) -> Result<(), Error> {
        let m = self.get(version)?;
        match record {
            Record::Nowhere => Ok(()),
            Record::Registry(repo, tenant) => {
                repo.record_migration(conn, tenant, m.version, &m.description, &m.checksum)
                    .await
            }
            Record::Local => {
                sqlx::query(
                    "INSERT INTO public._tenantry_migrations (version, checksum) VALUES ($1, $2)",
                )
                .bind(m.version)
                .bind(m.checksum.as_ref())
                .execute(conn)
                .await?;
                Ok(())
            }
        }
    }

    /// The versions `tenant` lacks according to the registry (read on `conn`), or the
    /// first way it drifted from this source.
    pub(crate) async fn pending(
        &self,
        conn: &mut PgConnection,
        repo: &TenantRepository,
        tenant: &TenantId,
    ) -> Result<Vec<i64>, Error> {
        let applied = repo.applied_migrations(conn, tenant).await?;
        let (pending, drift) = self.compare(&applied);
        match drift.first() {
            Some(d) => Err(Error::Migration(format!(
                "tenant `{tenant}` has drifted: {d}"
            ))),
            None => Ok(pending),
        }
    }
}

/// Where applying a version records it.
pub(crate) enum Record<'a> {
    /// Nowhere: a template, whose fingerprint in the registry says what it holds.
    Nowhere,
    /// In the registry, for this tenant.
    Registry(&'a TenantRepository, &'a TenantId),
    /// In the tenant database's own `public._tenantry_migrations` (database strategy).
    Local,
}

/// How [`TenantManager::migrate_all`](crate::TenantManager::migrate_all) proceeds.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Tenants migrated at the same time (default 4).
    pub concurrency: usize,
    /// Tenants migrated first, as a canary wave; any failure among them halts the run
    /// before the rest is touched.
    pub canary: Option<Canary>,
    /// After the canary, stop starting new tenants once more than this many failed
    /// (default: never stop).
    pub max_failures: Option<usize>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            canary: None,
            max_failures: None,
        }
    }
}

/// The size of a canary wave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Canary {
    /// This many tenants.
    Count(usize),
    /// This percentage of the tenants with something to apply (rounded up).
    Percent(f64),
}

/// What happened to one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MigrationOutcome {
    /// These versions were applied.
    Applied {
        /// The versions, in order.
        versions: Vec<i64>,
    },
    /// Nothing to apply.
    Current,
    /// Applying failed (earlier versions of this run stay applied).
    Failed {
        /// Why.
        error: String,
    },
    /// Not attempted: the run halted first.
    Skipped,
}

/// One tenant's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantMigrationResult {
    /// The tenant.
    pub tenant: TenantId,
    /// What happened.
    #[serde(flatten)]
    pub outcome: MigrationOutcome,
}

/// The result of a run across tenants.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationReport {
    /// One entry per tenant, ordered by tenant id.
    pub results: Vec<TenantMigrationResult>,
    /// Why the run halted early, if it did.
    pub halted: Option<String>,
}

impl MigrationReport {
    fn count(&self, f: impl Fn(&MigrationOutcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }
    /// Tenants that got new versions.
    pub fn applied(&self) -> usize {
        self.count(|o| matches!(o, MigrationOutcome::Applied { .. }))
    }
    /// Tenants that were already current.
    pub fn current(&self) -> usize {
        self.count(|o| matches!(o, MigrationOutcome::Current))
    }
    /// Tenants that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, MigrationOutcome::Failed { .. }))
    }
    /// Tenants not attempted.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, MigrationOutcome::Skipped))
    }
    /// Every tenant is current now.
    pub fn is_success(&self) -> bool {
        self.failed() == 0 && self.skipped() == 0 && self.halted.is_none()
    }
}

/// Progress of a run, for a caller to display.
#[derive(Debug, Clone)]
pub enum MigrationEvent {
    /// The plan: how many tenants, and how many have something to apply.
    Planned {
        /// Tenants considered.
        total: usize,
        /// Tenants with pending versions.
        pending: usize,
    },
    /// One tenant finished.
    TenantFinished {
        /// The tenant.
        tenant: TenantId,
        /// What happened.
        outcome: MigrationOutcome,
        /// Tenants with pending versions finished so far.
        done: usize,
        /// Tenants with pending versions in all.
        pending: usize,
    },
    /// The run stopped early.
    Halted {
        /// Why.
        reason: String,
    },
}

/// Where one tenant stands against the migration source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantMigrationStatus {
    /// The tenant.
    pub tenant: TenantId,
    /// Its lifecycle status.
    pub status: crate::tenant::TenantStatus,
    /// The highest applied version.
    pub version: Option<i64>,
    /// Versions the source has and the tenant lacks.
    pub pending: Vec<i64>,
    /// How the tenant differs from the source (changed checksums, unknown versions).
    pub drift: Vec<String>,
}
