//! Benchmarks of yiyun against a real cluster (`KUBECONFIG`), printed as tables. Each compares
//! against a baseline measured in the same run.

pub mod api;
pub mod billing;
pub mod dr;
pub mod placement_check;
pub mod pools;
mod processes;
pub mod scheduler;
pub mod scheduler_perf;
pub mod tenancy;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};

/// Options every benchmark takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Writes in flight at once, for the baseline and for what the benchmark applies.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to watch the idle controller.
    #[arg(long, default_value_t = 60)]
    pub idle_seconds: u64,
    /// Give up on a phase after this long.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(String),
    /// What the benchmark needs is missing or wrong: a setting, a template, a cluster.
    #[error("{0}")]
    Setup(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("HTTP: {0}")]
    Http(#[from] http::Error),
}

/// Progress on stderr, so the table on stdout stays clean.
fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

/// Field manager of what the benchmarks write.
const MANAGER: &str = "yiyun-bench";

/// The CRDs of this build, so the benchmark measures the controller it ships with.
pub(crate) async fn install_crds(client: &Client, timeout: Duration) -> Result<(), Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in yiyun_crds::crds() {
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd)).await?;
        wait_until(timeout, &format!("CRD {name} established"), || async {
            let crd = crds.get(&name).await?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            let established = conditions.iter().any(|c| c.type_ == "Established" && c.status == "True");
            Ok((established, "not established".to_string()))
        })
        .await?;
    }
    Ok(())
}

/// Waits (at most three minutes) until the apiserver has taken no write for 2 s: the cluster's
/// own controllers done with what the previous phase caused (kube-controller-manager gives every
/// new namespace a ServiceAccount and a ConfigMap, and counts every new quota), so that a phase
/// measures only itself.
pub(crate) async fn quiet_cluster(client: &Client) -> Result<(), Error> {
    progress("waiting until the apiserver has taken no write for 2 s");
    let started = Instant::now();
    let mut last = apiserver_writes(client).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = apiserver_writes(client).await?;
        if now == last {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(180) {
            progress("the cluster is still writing after 3 min; measuring anyway");
            return Ok(());
        }
        last = now;
    }
}

/// Writes the apiserver has served, from its own metrics; lease renewals do not count.
async fn apiserver_writes(client: &Client) -> Result<f64, Error> {
    const WRITES: [&str; 6] = ["POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"];
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let metrics = client.request_text(request).await?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && !l.contains(r#"resource="leases""#))
        .filter(|l| WRITES.iter().any(|verb| l.contains(&format!(r#"verb="{verb}""#))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Polls `check` every 100 ms until it reports done, printing its progress every 5 s.
pub(crate) async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(bool, String), Error>>,
{
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let (done, state) = check().await?;
        if done {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(Error::Timeout(format!("{what}: {state} after {timeout:?}")));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(&format!("  {state} ({:.0}s)", started.elapsed().as_secs_f64()));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `yiyun controller` as a child process of this benchmark.
pub(crate) struct Controller {
    child: Child,
    admin: SocketAddr,
}

pub(crate) struct Counters {
    pub(crate) reconciles: f64,
    pub(crate) writes: f64,
    pub(crate) cpu_seconds: f64,
}

impl Controller {
    pub(crate) fn start() -> Result<Self, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let admin: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::env::temp_dir().join("yiyun-bench-controller.log");
        progress(&format!("starting yiyun controller (log: {})", log.display()));
        let child = Command::new(std::env::current_exe()?)
            .args(["controller", "--leader-elect=false", "--admin-addr", &admin.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Controller { child, admin })
    }

    pub(crate) async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let admin = self.admin;
        wait_until(timeout, "the controller ready", || async move {
            let ready = yiyun_admin::http_get(admin, "/readyz").is_some_and(|(status, _)| status == 200);
            Ok((ready, "controller not ready".to_string()))
        })
        .await
    }

    pub(crate) fn counters(&self) -> Result<Counters, Error> {
        let (_, metrics) = yiyun_admin::http_get(self.admin, "/metrics")
            .ok_or_else(|| Error::Timeout("the controller's /metrics did not answer".into()))?;
        let sum = |prefix: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok(Counters {
            reconciles: sum("yiyun_controller_reconciles_total"),
            writes: sum("yiyun_controller_writes_total"),
            cpu_seconds: self.cpu_seconds(),
        })
    }

    /// Waits (at most two minutes) until the controller has done nothing for 2 s: no reconcile,
    /// and the echoes of its last writes (kube-controller-manager's quota counts included) seen.
    pub(crate) async fn settle(&self) -> Result<(), Error> {
        let mut last = self.counters()?;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = self.counters()?;
            if now.reconciles == last.reconciles && now.cpu_seconds - last.cpu_seconds < 0.05 {
                break;
            }
            last = now;
        }
        Ok(())
    }

    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    pub(crate) fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(self.child.id())
    }

    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// User plus system CPU time of a process, from /proc (clock ticks of 1/100 s on Linux).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by the processes of a local cluster from `e2e/cluster`, which keeps
/// their pids next to its kubeconfig; none against any other cluster.
pub(crate) fn cluster_cpu_seconds() -> Vec<(&'static str, f64)> {
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG").map(std::path::PathBuf::from) else {
        return Vec::new();
    };
    let Some(state) = kubeconfig.parent() else {
        return Vec::new();
    };
    ["kube-apiserver", "etcd", "kube-controller-manager"]
        .into_iter()
        .filter_map(|component| {
            let pid = std::fs::read_to_string(state.join(format!("{component}.pid"))).ok()?;
            Some((component, cpu_seconds(pid.trim().parse().ok()?)))
        })
        .collect()
}

/// Peak resident memory of a process in MiB, from /proc.
pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Reconciles and writes per minute, and CPU seconds, of an idle controller over `seconds`.
/// Idle starts once the echoes of the last writes have settled.
pub(crate) async fn idle(controller: &Controller, seconds: u64) -> Result<(f64, f64, f64), Error> {
    progress(&format!("watching the idle controller for {seconds}s"));
    controller.settle().await?;
    let before = controller.counters()?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = controller.counters()?;
    let per_minute = |a: f64, b: f64| (b - a) * 60.0 / seconds.max(1) as f64;
    Ok((
        per_minute(before.reconciles, after.reconciles),
        per_minute(before.writes, after.writes),
        after.cpu_seconds - before.cpu_seconds,
    ))
}
