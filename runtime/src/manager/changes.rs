//! Invalidation: a changed tenant's cached record, known-id entry, domain entries
//! and every connection binding go together, whether the change was made here or
//! announced by another instance (PostgreSQL `NOTIFY`).

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

/// Drops cache entries of tenants changed by any app instance, until the manager is
/// dropped. A lost connection may have missed notifications, so it clears the cache.
pub(super) async fn listen_for_changes(
    mut listener: PgListener,
    inner: std::sync::Weak<Inner>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let next = tokio::select! {
            next = listener.try_recv() => next,
            _ = stopped.changed() => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        match next {
            Ok(Some(notification))
                if notification.payload() == crate::repository::SERVERS_CHANGED =>
            {
                match inner.lifecycle.repository().servers().await {
                    Ok(servers) => inner.pools.servers().set_registered(&servers),
                    Err(error) => tracing::warn!(%error, "could not reload the named servers"),
                }
            }
            Ok(Some(notification)) => match TenantId::parse(notification.payload()) {
                Ok(id) => inner.invalidate(&id),
                Err(_) => inner.invalidate_all(),
            },
            Ok(None) => {
                tracing::warn!("tenant change listener reconnecting; cache cleared");
                inner.invalidate_all();
                if let Ok(servers) = inner.lifecycle.repository().servers().await {
                    inner.pools.servers().set_registered(&servers);
                }
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
