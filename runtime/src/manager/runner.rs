//! Migrating every tenant: waves, canaries, failure limits, status.

use futures::StreamExt;

use super::TenantManager;
use crate::error::Error;
use crate::migrate::{
    Canary, MigrateOptions, MigrationEvent, MigrationOutcome, MigrationReport,
    TenantMigrationResult, TenantMigrationStatus,
};
use crate::tenant::{Tenant, TenantId};

impl TenantManager {
    /// Applies pending tenant migrations to one tenant (see [`Self::migrate_all`] for
    /// every tenant), one transaction per version; returns the versions applied (none
    /// for a row tenant, whose shared tables the application migrates itself).
    pub async fn migrate_tenant(&self, id: &TenantId) -> Result<Vec<i64>, Error> {
        let applied = self.inner.lifecycle.migrate(id).await;
        // Its schema version changed: bindings and cached records follow.
        self.invalidate(id);
        applied
    }

    /// Applies pending tenant migrations to every schema tenant that is not deleted.
    ///
    /// Tenants with nothing to apply are found with one query and not touched.
    /// The others are migrated `concurrency` at a time, each version in its own
    /// transaction; one tenant's failure does not stop the others. With a canary,
    /// that many tenants go first and any failure among them halts the run; after it,
    /// the run stops starting tenants once `max_failures` is exceeded. Rerunning
    /// resumes: every tenant continues at the first version it lacks.
    ///
    /// ```no_run
    /// use tenantry::migrate::{Canary, MigrateOptions, MigrationEvent};
    /// # async fn f(manager: tenantry::TenantManager) -> Result<(), tenantry::Error> {
    /// let options = MigrateOptions { concurrency: 4, canary: Some(Canary::Percent(5.0)), max_failures: Some(10) };
    /// let report = manager
    ///     .migrate_all(&options, |event| {
    ///         if let MigrationEvent::TenantFinished { done, pending, .. } = event {
    ///             eprintln!("{done}/{pending}");
    ///         }
    ///     })
    ///     .await?;
    /// assert!(report.is_success(), "{} tenants failed", report.failed());
    /// # Ok(()) }
    /// ```
    pub async fn migrate_all(
        &self,
        options: &MigrateOptions,
        on_event: impl Fn(&MigrationEvent) + Send + Sync,
    ) -> Result<MigrationReport, Error> {
        let lifecycle = &self.inner.lifecycle;
        let tenants = self.migrated_tenants().await?;
        let applied = lifecycle.repository().all_applied_migrations().await?;
        let mut results: std::collections::BTreeMap<TenantId, MigrationOutcome> =
            std::collections::BTreeMap::new();
        let mut todo = Vec::new();
        for tenant in &tenants {
            let done = applied.get(&tenant.id).map(Vec::as_slice).unwrap_or(&[]);
            let (pending, drift) = lifecycle.migrations().compare(done);
            if let Some(d) = drift.first() {
                results.insert(
                    tenant.id.clone(),
                    MigrationOutcome::Failed {
                        error: format!("drifted: {d}"),
                    },
                );
            } else if pending.is_empty() {
                results.insert(tenant.id.clone(), MigrationOutcome::Current);
            } else {
                todo.push(tenant.id.clone());
            }
        }
        let pending_total = todo.len();
        on_event(&MigrationEvent::Planned {
            total: tenants.len(),
            pending: pending_total,
        });
        let canary = match options.canary {
            None => 0,
            Some(Canary::Count(n)) => n,
            Some(Canary::Percent(p)) => {
                ((pending_total as f64) * p.clamp(0.0, 100.0) / 100.0).ceil() as usize
            }
        }
        .min(pending_total);
        let rest = todo.split_off(canary);
        let waves = [(todo, true), (rest, false)];
        let concurrency = options.concurrency.max(1);
        let done = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicUsize::new(0);
        let mut halted: Option<String> = None;
        for (wave, is_canary) in waves {
            if wave.is_empty() {
                continue;
            }
            if halted.is_some() {
                for id in wave {
                    results.insert(id, MigrationOutcome::Skipped);
                }
                continue;
            }
            let stop = std::sync::atomic::AtomicBool::new(false);
            let outcomes: Vec<(TenantId, MigrationOutcome)> = futures::stream::iter(wave)
                .map(|id| {
                    let (done, failed, stop, on_event) = (&done, &failed, &stop, &on_event);
                    async move {
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            return (id, MigrationOutcome::Skipped);
                        }
                        let migrated = lifecycle.migrate(&id).await;
                        // Its schema version changed: bindings and cached records follow.
                        self.invalidate(&id);
                        let outcome = match migrated {
                            Ok(versions) if versions.is_empty() => MigrationOutcome::Current,
                            Ok(versions) => MigrationOutcome::Applied { versions },
                            Err(e) => {
                                let n =
                                    failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                                if !is_canary && options.max_failures.is_some_and(|max| n > max) {
                                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                                }
                                MigrationOutcome::Failed {
                                    error: e.to_string(),
                                }
                            }
                        };
                        let finished = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        on_event(&MigrationEvent::TenantFinished {
                            tenant: id.clone(),
                            outcome: outcome.clone(),
                            done: finished,
                            pending: pending_total,
                        });
                        (id, outcome)
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            let wave_failures = outcomes
                .iter()
                .filter(|(_, o)| matches!(o, MigrationOutcome::Failed { .. }))
                .count();
            results.extend(outcomes);
            if is_canary && wave_failures > 0 {
                halted = Some(format!(
                    "{wave_failures} of {canary} canary tenants failed; the other tenants were not touched"
                ));
            } else if stop.load(std::sync::atomic::Ordering::SeqCst) {
                halted = Some(format!(
                    "more than {} tenants failed; the run stopped starting new tenants",
                    options.max_failures.unwrap_or_default()
                ));
            }
            if let Some(reason) = &halted {
                on_event(&MigrationEvent::Halted {
                    reason: reason.clone(),
                });
            }
        }
        Ok(MigrationReport {
            results: results
                .into_iter()
                .map(|(tenant, outcome)| TenantMigrationResult { tenant, outcome })
                .collect(),
            halted,
        })
    }

    /// Tenants with a schema or a database of their own (schema and database
    /// strategies): the ones tenant migrations apply to.
    pub(crate) async fn migrated_tenants(&self) -> Result<Vec<Tenant>, Error> {
        let mut tenants = self.list_tenants().await?;
        tenants.retain(|t| t.strategy != crate::tenant::Strategy::Row);
        Ok(tenants)
    }

    /// Where every schema tenant that is not deleted stands against the migration
    /// source (row tenants share tables, which the application migrates itself).
    pub async fn migration_status(&self) -> Result<Vec<TenantMigrationStatus>, Error> {
        let lifecycle = &self.inner.lifecycle;
        let tenants = self.migrated_tenants().await?;
        let applied = lifecycle.repository().all_applied_migrations().await?;
        Ok(tenants
            .into_iter()
            .map(|tenant| {
                let done = applied.get(&tenant.id).map(Vec::as_slice).unwrap_or(&[]);
                let (pending, drift) = lifecycle.migrations().compare(done);
                TenantMigrationStatus {
                    version: done.iter().map(|(v, _)| *v).max(),
                    tenant: tenant.id,
                    status: tenant.status,
                    pending,
                    drift,
                }
            })
            .collect())
    }
}
