//! Invalidation: a changed tenant's cached record, known-id entry, domain entries
//! and every connection binding go together, whether the change was made here or
//! announced by another instance (PostgreSQL `NOTIFY`).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::Inner;
use crate::tenant::TenantId;

impl Inner {
    pub(super) fn invalidate(&self, id: &TenantId) {
        // Bindings first: a record cached after this point is fresh.
        self.pools.invalidate(id);
        // A changed id may be a new one: known until the registry says otherwise.
        if let Some((ids, _)) = self
            .known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            // No digest matches an empty one: the next lookup asks the registry.
            ids.insert(id.clone(), String::new());
        }
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        // The tenant may have a new domain: the next host lookup re-reads the set.
        *self
            .known_domains
            .write()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (hit, _)| hit.as_ref().is_some_and(|t| t.id != *id));
    }

    pub(super) fn invalidate_all(&self) {
        self.pools.invalidate_all();
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = None;
        *self
            .known_domains
            .write()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// At most this many notifications are checked against the change log in one query.
const BATCH: usize = 1024;

/// The change-log entries this instance acted on, the newest [`Applied::CAP`]: a
/// notification that repeats one (a replay) changes nothing.
#[derive(Default)]
struct Applied {
    seen: HashSet<i64>,
    order: VecDeque<i64>,
}

impl Applied {
    /// More than the changes of the replay window at any plausible rate.
    const CAP: usize = 65_536;

    /// Whether `seq` is new (and remembers it).
    fn first_time(&mut self, seq: i64) -> bool {
        if !self.seen.insert(seq) {
            return false;
        }
        self.order.push_back(seq);
        if self.order.len() > Self::CAP
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// Drops cache entries of tenants changed by any app instance, until the manager is
/// dropped. A lost connection may have missed notifications, so it clears the cache.
///
/// A notification carries only the number of a change-log entry; the entry says what
/// changed. A notification that names no entry (any role that can connect can
/// `NOTIFY` on the channel), or one that repeats an entry already acted on, changes
/// nothing, so a flood of them empties no cache: it costs one indexed query per batch
/// of notifications read together, one batch at a time.
pub(super) async fn listen_for_changes(
    mut listener: PgListener,
    inner: std::sync::Weak<Inner>,
    mut stopped: watch::Receiver<()>,
) {
    let mut applied = Applied::default();
    loop {
        let next = tokio::select! {
            next = listener.try_recv() => next,
            _ = stopped.changed() => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        match next {
            Ok(Some(first)) => {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match listener.next_buffered() {
                        Some(n) => batch.push(n),
                        None => break,
                    }
                }
                let payloads: Vec<&str> = batch.iter().map(|n| n.payload()).collect();
                match inner.lifecycle.repository().logged_changes(&payloads).await {
                    Ok(changes) => {
                        let fresh: Vec<_> = changes
                            .into_iter()
                            .filter(|(seq, _)| applied.first_time(*seq))
                            .collect();
                        if fresh.len() < payloads.len() {
                            tracing::debug!(
                                ignored = payloads.len() - fresh.len(),
                                "change notifications that name no new logged change ignored"
                            );
                        }
                        for (_, change) in fresh {
                            match change {
                                Some(id) => inner.invalidate(&id),
                                None => reload_servers(&inner).await,
                            }
                        }
                    }
                    Err(error) => {
                        // What changed is unknown: everything may have.
                        tracing::warn!(%error, "could not read the change log; cache cleared");
                        inner.invalidate_all();
                        drop(inner);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Ok(None) => {
                tracing::warn!("tenant change listener reconnecting; cache cleared");
                inner.invalidate_all();
                reload_servers(&inner).await;
            }
            Err(error) => {
                tracing::warn!(%error, "tenant change listener failed; retrying");
                inner.invalidate_all();
                drop(inner);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn reload_servers(inner: &Inner) {
    match inner.lifecycle.repository().servers().await {
        Ok(servers) => inner.pools.servers().set_registered(&servers),
        Err(error) => tracing::warn!(%error, "could not reload the named servers"),
    }
}
