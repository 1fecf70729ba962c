//! The one template mechanism: a template (schema or database) is built from the
//! migration source once, under a lock that app instances share, recorded in the
//! registry with the source's fingerprint, and rebuilt when the source changes.

use std::sync::{Arc, Mutex};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};

use super::clone::SchemaTemplate;
use crate::error::Error;
use crate::repository::TenantRepository;

/// The schema template this process checked (or built) last, with its clone script.
#[derive(Debug, Clone, Default)]
pub(super) struct Templates {
    schema: Arc<Mutex<Option<Arc<SchemaTemplate>>>>,
}

impl Templates {
    /// The cached schema template, if it was built from `fingerprint`.
    pub fn schema(&self, fingerprint: &[u8]) -> Option<Arc<SchemaTemplate>> {
        self.schema
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|t| t.fingerprint == fingerprint)
    }

    /// Remembers the schema template.
    pub fn keep_schema(&self, template: Arc<SchemaTemplate>) {
        *self.schema.lock().unwrap_or_else(|e| e.into_inner()) = Some(template);
    }
}

/// A session advisory lock on a registry connection, held while a template is
/// checked or built: builders in every app instance take turns. Released by
/// [`TemplateLock::release`]; if dropped instead (an error or a cancelled future),
/// the connection is closed rather than returned to the pool, so the lock ends with
/// its session and never stays behind on a pooled connection.
pub(super) struct TemplateLock {
    conn: Option<PoolConnection<Postgres>>,
    /// The template's key in the registry's `templates` table.
    key: String,
}

impl TemplateLock {
    /// Waits for the lock of the template recorded as `key`.
    pub async fn acquire(repo: &TenantRepository, key: &str) -> Result<Self, Error> {
        // The guard owns the connection before the lock is asked for: if this future
        // is dropped while it waits, the guard closes the connection, and a lock
        // granted after that dies with the session instead of riding a pooled one.
        let mut guard = Self {
            conn: Some(repo.pool().acquire().await?),
            key: key.to_owned(),
        };
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(lock_name(key))
            .execute(guard.conn())
            .await?;
        Ok(guard)
    }

    /// The connection holding the lock (a registry connection).
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("held until released")
    }

    /// The fingerprint the registry records for this template, if any.
    pub async fn recorded(&mut self, repo: &TenantRepository) -> Result<Option<Vec<u8>>, Error> {
        let key = self.key.clone();
        repo.template_fingerprint(self.conn(), &key).await
    }

    /// Records that the template now holds the source of `fingerprint`.
    pub async fn record(
        &mut self,
        repo: &TenantRepository,
        fingerprint: &[u8],
    ) -> Result<(), Error> {
        let key = self.key.clone();
        repo.record_template(self.conn(), &key, fingerprint).await
    }

    /// Gives the lock back (and the connection to the pool).
    pub async fn release(mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // Still in the guard while the unlock runs: cancelled here, the guard closes it.
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(lock_name(&self.key))
            .execute(&mut **conn)
            .await;
        if unlocked.is_ok() {
            // Unlocked: the connection may go back to the pool.
            drop(self.conn.take());
        }
    }
}

impl Drop for TemplateLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

fn lock_name(key: &str) -> String {
    format!("tenantry.template:{key}")
}
