//! Per-tenant request metrics through the `metrics` facade, with bounded cardinality.
//!
//! Recorded by [`TenantLayer`](crate::TenantLayer) when configured with
//! [`TenantLayer::metrics`](crate::TenantLayer::metrics):
//!
//! - `tenantry_requests_total` (counter), labels `tenant`, `status` (the class: `2xx`, `4xx`, ...)
//! - `tenantry_request_duration_seconds` (histogram), label `tenant`
//!
//! At most `top_n` tenants get a label of their own; the rest are recorded as
//! `tenant="other"`, so the number of series stays bounded however many tenants
//! there are. Request counts are tracked with the Space-Saving algorithm (2 x `top_n`
//! counters); a tenant is given its own label once it is among the counted tenants
//! and has been seen at least twice, while fewer than `top_n` labels are in use.
//! Labels are sticky for the life of the process (a series never changes meaning), so
//! the busiest tenants, which show up first and most often, are the ones labelled.
//! Install any `metrics` recorder (Prometheus, OpenTelemetry, ...) to export them.
//!
//! The tenant connections are exported by [`record_pool`] (or
//! [`TenantManager::record_pool_metrics`](crate::TenantManager::record_pool_metrics)),
//! called where the metrics are read (a `/metrics` handler, or a timer), with one
//! `server` label per database server (bounded by the servers the registry knows):
//!
//! - gauges `tenantry_pool_connections_open`, `tenantry_pool_connections_idle`,
//!   `tenantry_pool_requests_waiting`, `tenantry_pool_budget`
//! - counters `tenantry_pool_opened_total`, `tenantry_pool_closed_total`,
//!   `tenantry_pool_reused_total`, `tenantry_pool_rebinds_total`,
//!   `tenantry_pool_resets_total`, `tenantry_pool_recycled_total`,
//!   `tenantry_pool_binding_free_total`, `tenantry_pool_timeouts_total` (requests
//!   answered 503 after waiting for a connection)
//!
//! ```
//! # async fn serve(manager: tenantry::TenantManager) {
//! // In a `/metrics` handler, before rendering the recorder's text:
//! manager.record_pool_metrics();
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pool::ServerStats;
use crate::tenant::TenantId;

/// Sets the pool gauges and counters listed in the [module docs](self) from `servers`
/// (see [`TenantManager::pool_stats_by_server`](crate::TenantManager::pool_stats_by_server)), one
/// `server` label each, through the installed `metrics` recorder.
pub fn record_pool(servers: &[ServerStats]) {
    describe();
    for s in servers {
        let server = s.server.clone();
        let gauge = |name: &'static str, value: f64| {
            metrics::gauge!(name, "server" => server.clone()).set(value);
        };
        gauge("tenantry_pool_connections_open", s.stats.open as f64);
        gauge("tenantry_pool_connections_idle", s.stats.idle as f64);
        gauge("tenantry_pool_requests_waiting", s.stats.waiting as f64);
        gauge("tenantry_pool_budget", f64::from(s.budget));
        let counter = |name: &'static str, value: u64| {
            metrics::counter!(name, "server" => server.clone()).absolute(value);
        };
        counter("tenantry_pool_opened_total", s.stats.opened);
        counter("tenantry_pool_closed_total", s.stats.closed);
        counter("tenantry_pool_reused_total", s.stats.reused);
        counter("tenantry_pool_rebinds_total", s.stats.rebound);
        counter("tenantry_pool_resets_total", s.stats.reset);
        counter("tenantry_pool_recycled_total", s.stats.recycled);
        counter("tenantry_pool_binding_free_total", s.stats.binding_free);
        counter("tenantry_pool_timeouts_total", s.stats.timed_out);
    }
}

/// Gives every metric of tenantry its help text (once per process; a recorder
/// installed later misses them, which costs only the `# HELP` lines).
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "tenantry_requests_total",
            "Requests per tenant and status class"
        );
        describe_histogram!(
            "tenantry_request_duration_seconds",
            Unit::Seconds,
            "Request latency per tenant"
        );
        describe_gauge!("tenantry_pool_connections_open", "Tenant connections open");
        describe_gauge!("tenantry_pool_connections_idle", "Tenant connections idle");
        describe_gauge!(
            "tenantry_pool_requests_waiting",
            "Requests waiting for a tenant connection"
        );
        describe_gauge!(
            "tenantry_pool_budget",
            "The most tenant connections to the server"
        );
        describe_counter!("tenantry_pool_opened_total", "Tenant connections opened");
        describe_counter!("tenantry_pool_closed_total", "Tenant connections closed");
        describe_counter!(
            "tenantry_pool_reused_total",
            "Acquisitions of a connection already bound to the tenant"
        );
        describe_counter!(
            "tenantry_pool_rebinds_total",
            "Acquisitions that bound a connection to the tenant"
        );
        describe_counter!(
            "tenantry_pool_resets_total",
            "Connections cleaned after a request's own SQL or a cancellation"
        );
        describe_counter!(
            "tenantry_pool_recycled_total",
            "Connections closed after serving their most tenants or living their lifetime"
        );
        describe_counter!(
            "tenantry_pool_binding_free_total",
            "Acquisitions that read without binding the connection"
        );
        describe_counter!(
            "tenantry_pool_timeouts_total",
            "Requests that found no connection in time (503)"
        );
    });
}

/// The label of tenants outside the top N.
pub const OTHER_TENANTS: &str = "other";

/// Per-tenant request metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TenantMetrics {
    inner: Arc<Mutex<TopN>>,
}

#[derive(Debug)]
struct TopN {
    top_n: usize,
    counts: HashMap<TenantId, u64>,
    labelled: std::collections::HashSet<TenantId>,
}

impl TenantMetrics {
    /// Labels for at most `top_n` tenants (at least 1).
    pub fn new(top_n: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(TopN {
                top_n: top_n.max(1),
                counts: HashMap::new(),
                labelled: std::collections::HashSet::new(),
            })),
        }
    }

    /// The label `tenant` gets now: its id if it is among the busiest, else `other`.
    pub fn label(&self, tenant: &TenantId) -> String {
        let mut top = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        top.observe(tenant)
    }

    pub(crate) fn record(&self, tenant: &TenantId, status: u16, elapsed: Duration) {
        describe();
        let label = self.label(tenant);
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        metrics::counter!("tenantry_requests_total", "tenant" => label.clone(), "status" => class)
            .increment(1);
        metrics::histogram!("tenantry_request_duration_seconds", "tenant" => label)
            .record(elapsed.as_secs_f64());
    }
}

impl TopN {
    fn observe(&mut self, tenant: &TenantId) -> String {
        if self.labelled.contains(tenant) {
            return tenant.to_string();
        }
        let count = self.count(tenant);
        if self.labelled.len() < self.top_n && count >= 2 {
            self.labelled.insert(tenant.clone());
            return tenant.to_string();
        }
        OTHER_TENANTS.to_owned()
    }

    /// Space-Saving: a counted tenant counts up; a new one replaces the least counted
    /// and inherits its count + 1.
    fn count(&mut self, tenant: &TenantId) -> u64 {
        if let Some(count) = self.counts.get_mut(tenant) {
            *count += 1;
            return *count;
        }
        if self.counts.len() < 2 * self.top_n {
            self.counts.insert(tenant.clone(), 1);
            return 1;
        }
        let (victim, min) = self
            .counts
            .iter()
            .min_by_key(|(_, c)| **c)
            .map(|(id, c)| (id.clone(), *c))
            .expect("at least two counters");
        self.counts.remove(&victim);
        self.counts.insert(tenant.clone(), min + 1);
        min + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_tenants_keep_their_label_and_the_tail_is_other() {
        let m = TenantMetrics::new(3);
        let id = |s: &str| s.parse::<TenantId>().unwrap();
        let mut labels = std::collections::HashSet::new();
        for round in 0..200 {
            for busy in ["a", "b", "c"] {
                labels.insert(m.label(&id(busy)));
            }
            // A long tail of tenants seen once each.
            labels.insert(m.label(&id(&format!("tail{round}"))));
        }
        for busy in ["a", "b", "c"] {
            assert_eq!(m.label(&id(busy)), busy, "the busiest keep their own label");
        }
        assert_eq!(
            labels.len(),
            3 + 1,
            "three tenant labels and `other`: {labels:?}"
        );
        assert!(labels.contains(OTHER_TENANTS));
    }
}
