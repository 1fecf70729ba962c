//! Helpers shared by the benchmark programs.

use std::time::Duration;

/// The number after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> Result<usize, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number")),
    }
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The median of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `GET /api/v1/projects?limit=10` of the quick start's router as `tenant`: its
/// status (0 if the service failed).
pub async fn get_projects(app: &axum::Router, tenant: &str) -> u16 {
    use tower::ServiceExt;
    let req = axum::http::Request::get("/api/v1/projects?limit=10")
        .header("x-tenant-id", tenant)
        .body(axum::body::Body::empty())
        .expect("a request");
    app.clone()
        .oneshot(req)
        .await
        .map_or(0, |r| r.status().as_u16())
}
