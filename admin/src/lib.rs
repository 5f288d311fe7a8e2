//! The admin server of a yiyun component: `/healthz` (the process is alive), `/readyz` (it can do
//! its job: the component decides when) and `/metrics` (Prometheus text format).

pub mod trace;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("admin server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("admin server task ended abnormally: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Bind { .. } => "admin_bind",
            Error::Serve(_) => "admin_serve",
            Error::Join(_) => "admin_join",
        }
    }
}

/// Readiness shared between a component and its admin server. Starts not ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Calls `probe` every `interval` until it succeeds (`true`) or `shutdown` comes first (`false`).
/// Each failure is logged with `waiting_for`, which tells the operator what is missing.
pub async fn wait_for<P, Fut, T, E>(
    waiting_for: &str,
    interval: Duration,
    shutdown: &CancellationToken,
    mut probe: P,
) -> bool
where
    P: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    loop {
        match probe().await {
            Ok(_) => return true,
            Err(err) => tracing::warn!(error = %err, "waiting for {waiting_for}"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return false,
        }
    }
}

/// A bound, not yet serving, admin server.
pub struct AdminServer {
    listener: TcpListener,
}

impl AdminServer {
    /// Binds the address first, so a port in use is reported before the component starts work.
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        Ok(Self { listener })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(
        self,
        readiness: Readiness,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let state = Arc::new(AdminState { readiness, registry });
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(state);
        tracing::info!(addr = %self.local_addr(), "admin server listening");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(Error::Serve)
    }
}

/// A metrics registry for `component`, prefixed `yiyun_<component>_`, holding its build info.
pub fn registry(component: &str, version: &str) -> Registry {
    let mut registry = Registry::with_prefix(format!("yiyun_{component}"));
    // A gauge of 1 labelled with the version, as Prometheus's own `prometheus_build_info`: an
    // OpenMetrics `info` type would be the same sample, but Prometheus's text format and
    // promtool know no such type.
    let build: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    build.get_or_create(&vec![("version", version.to_string())]).set(1);
    registry.register("build_info", "Version of the running yiyun build (always 1)", build);
    registry
}

/// Runs a component's `work` beside its admin server: binds `addr`, serves health, readiness
/// and `registry` until `shutdown`, and stops the server when the work ends for any reason.
/// The work receives the readiness to set once it can do its job.
pub async fn run_with_admin<W, Fut, E>(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
    work: W,
) -> Result<(), E>
where
    W: FnOnce(Readiness) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<Error>,
{
    let server = AdminServer::bind(addr).await?;
    let readiness = Readiness::default();
    let admin = tokio::spawn(server.serve(readiness.clone(), registry, shutdown.clone()));
    let worked = work(readiness).await;
    shutdown.cancel();
    let served = admin.await.map_err(Error::from)?;
    worked?;
    Ok(served?)
}

/// A plain HTTP/1.0 GET of an admin endpoint, for tests and benchmarks: the status code and
/// the body, or `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Some((status, body))
}

struct AdminState {
    readiness: Readiness,
    registry: Registry,
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.readiness.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else Prometheus's classic text
/// format, which `curl` and `promtool check metrics` read.
async fn metrics(State(state): State<Arc<AdminState>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) if openmetrics => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            classic(&body),
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {err}"),
        ),
    }
}

/// OpenMetrics text as Prometheus's classic text format: a counter family is named with its
/// `_total` (as its samples are), and the `# UNIT` and `# EOF` lines go.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {rest}"))
        });
        out.push_str(described.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_starts_false_and_is_shared_between_clones() {
        let readiness = Readiness::default();
        let seen_by_server = readiness.clone();
        assert!(!seen_by_server.get());
        readiness.set(true);
        assert!(seen_by_server.get());
    }

    #[test]
    fn classic_text_names_counters_with_their_total_and_drops_what_it_has_no_word_for() {
        let openmetrics = "# HELP yiyun_x_bound Pods bound.\n# TYPE yiyun_x_bound counter\nyiyun_x_bound_total 3\n\
            # HELP yiyun_x_lag_seconds Lag.\n# TYPE yiyun_x_lag_seconds histogram\n# UNIT yiyun_x_lag_seconds seconds\n\
            yiyun_x_lag_seconds_count 0\n# EOF\n";
        assert_eq!(
            classic(openmetrics),
            "# HELP yiyun_x_bound_total Pods bound.\n# TYPE yiyun_x_bound_total counter\nyiyun_x_bound_total 3\n\
             # HELP yiyun_x_lag_seconds Lag.\n# TYPE yiyun_x_lag_seconds histogram\nyiyun_x_lag_seconds_count 0\n"
        );
    }
}
