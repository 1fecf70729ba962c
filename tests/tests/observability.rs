//! Every request's span carries the tenant id, and per-tenant metrics keep their
//! cardinality bounded. (Its own test binary: it installs a global metrics recorder.)

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tenantry::{PoolConfig, TenantMetrics};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn spans_carry_the_tenant_and_metrics_are_bounded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let logs = Buffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (_db, manager) = manager(PoolConfig::default()).await;
    for id in ["acme", "globex", "initech"] {
        create(&manager, id).await;
    }
    let mut state = saas::AppState::new(manager.clone(), ADMIN_TOKEN);
    state.metrics = TenantMetrics::new(2);
    let app = saas::router(state);
    for (tenant, times) in [("acme", 5), ("globex", 4), ("initech", 1)] {
        for _ in 0..times {
            let r = Client::tenant(&app, tenant).get("/api/v1/projects").await;
            assert_eq!(r.status, 200);
        }
    }
    Client::tenant(&app, "acme")
        .get("/api/v1/projects/999")
        .await
        .assert_problem(404);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let request_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("finished processing request"))
        .collect();
    assert_eq!(request_lines.len(), 11, "{text}");
    assert_eq!(
        request_lines
            .iter()
            .filter(|l| l.contains("tenant{tenant_id=acme}"))
            .count(),
        6
    );
    assert_eq!(
        request_lines
            .iter()
            .filter(|l| l.contains("tenant{tenant_id=globex}"))
            .count(),
        4
    );
    assert_eq!(
        request_lines
            .iter()
            .filter(|l| l.contains("tenant{tenant_id=initech}"))
            .count(),
        1
    );

    let mut requests: Vec<(String, String, u64)> = Vec::new();
    let mut histogram_tenants = std::collections::BTreeSet::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: std::collections::HashMap<String, String> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        match (key.key().name(), value) {
            ("tenantry_requests_total", DebugValue::Counter(n)) => {
                requests.push((labels["tenant"].clone(), labels["status"].clone(), n));
            }
            ("tenantry_request_duration_seconds", DebugValue::Histogram(samples)) => {
                assert!(!samples.is_empty());
                assert!(samples.iter().all(|s| s.into_inner() >= 0.0));
                histogram_tenants.insert(labels["tenant"].clone());
            }
            _ => {}
        }
    }
    requests.sort();
    let tenants: std::collections::BTreeSet<_> =
        requests.iter().map(|(t, _, _)| t.clone()).collect();
    assert!(
        tenants.len() <= 3,
        "two tenant labels plus `other`: {requests:?}"
    );
    assert!(
        tenants.contains("acme") && tenants.contains("globex") && tenants.contains("other"),
        "{requests:?}"
    );
    assert!(
        !tenants.contains("initech"),
        "the quiet tenant is aggregated: {requests:?}"
    );
    let total: u64 = requests.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, 11, "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|(t, s, n)| t == "acme" && s == "4xx" && *n == 1),
        "{requests:?}"
    );
    assert_eq!(histogram_tenants, tenants);
}
