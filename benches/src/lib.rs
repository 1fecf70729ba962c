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

/// The text after `name` on the command line, if given.
pub fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
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

/// Serves `app` on a free port of 127.0.0.1, in the background; its address.
pub async fn serve(app: axum::Router) -> Result<std::net::SocketAddr, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The cumulative distribution of Zipf(`s`) over `n` items (the k-th most popular
/// with weight 1/k^s), for [`zipf_pick`].
pub fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n);
    let mut sum = 0.0;
    for k in 1..=n {
        sum += 1.0 / (k as f64).powf(s);
        cdf.push(sum);
    }
    for c in &mut cdf {
        *c /= sum;
    }
    cdf
}

/// An index drawn from `cdf` (see [`zipf_cdf`]) with the uniform draw `u` in [0, 1).
pub fn zipf_pick(cdf: &[f64], u: f64) -> usize {
    cdf.partition_point(|c| *c < u)
        .min(cdf.len().saturating_sub(1))
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

/// A client that inserts into tenant `big`'s `projects` non-stop through a manager
/// while a benchmark moves the tenant: what it was acknowledged, how often it was
/// refused with a 503 (it then waits 5 ms), and its longest gap between
/// acknowledged writes. Any other error panics.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    paused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    longest_gap_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing rows named `value`.
    pub fn start(manager: tenantry::TenantManager, value: &'static str) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let (acked, paused, gap) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let task = {
            let (stop, acked, paused, gap) =
                (stop.clone(), acked.clone(), paused.clone(), gap.clone());
            tokio::spawn(async move {
                let mut last_ok = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let written = async {
                        let tenant = manager.resolve_tenant(&"big".parse()?).await?;
                        let mut db = manager.tenant_db(tenant).await?;
                        sqlx::query("INSERT INTO projects (name) VALUES ($1)")
                            .bind(value)
                            .execute(&mut db)
                            .await?;
                        Ok::<_, tenantry::Error>(())
                    }
                    .await;
                    match written {
                        Ok(()) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            gap.fetch_max(last_ok.elapsed().as_micros() as u64, Ordering::Relaxed);
                            last_ok = std::time::Instant::now();
                        }
                        Err(e) if e.status().as_u16() == 503 => {
                            paused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("a write failed with something else than 503: {e}"),
                    }
                }
            })
        };
        Self {
            stop,
            acked,
            paused,
            longest_gap_us: gap,
            task,
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes refused with a 503 so far.
    pub fn paused(&self) -> u64 {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The longest gap between acknowledged writes since the last reset, in ms.
    pub fn longest_gap_ms(&self) -> f64 {
        self.longest_gap_us
            .load(std::sync::atomic::Ordering::Relaxed) as f64
            / 1e3
    }

    /// Starts measuring the longest gap afresh.
    pub fn reset_gap(&self) {
        self.longest_gap_us
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops the client and waits for it (a panic in it is an error here); its final
    /// counts of acknowledged and refused writes.
    pub async fn stop(self) -> Result<(u64, u64), tokio::task::JoinError> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let Self {
            task,
            acked,
            paused,
            ..
        } = self;
        task.await?;
        let count = |n: std::sync::Arc<std::sync::atomic::AtomicU64>| {
            n.load(std::sync::atomic::Ordering::Relaxed)
        };
        Ok((count(acked), count(paused)))
    }
}
