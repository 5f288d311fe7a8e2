//! `yiyun bench scheduler`: yiyun-scheduler against kube-scheduler on the same cluster in one
//! run, and the apiserver's ceiling: the same client POSTing bindings with no scheduling logic.
//!
//! For each node count: kwok nodes are created; then for each contender, pods are created as
//! fast as the client can in a namespace of their own, and a watch records when each is bound.
//! Reported: pods per second from the first creation to the last binding, p50 and p99 of
//! creation-to-bound, the scheduler's CPU seconds and peak RSS.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

use crate::{Error, cpu_seconds, peak_rss_mib, processes::Process, progress, wait_until};

/// What `yiyun bench scheduler` runs.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Node counts, comma-separated; each is a round of the whole comparison.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub nodes: Vec<usize>,
    /// Pods each contender schedules.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Pod creations in flight.
    #[arg(long, default_value_t = 64)]
    pub create_concurrency: usize,
    /// The kube-scheduler binary (built by e2e/build-binaries.sh).
    #[arg(long, env = "KUBE_SCHEDULER")]
    pub kube_scheduler: PathBuf,
    /// Give up on a contender after this long.
    #[arg(long, default_value_t = 900)]
    pub timeout_seconds: u64,
    /// Leave out kube-scheduler with its default client limits (50 QPS; the slowest round).
    #[arg(long)]
    pub skip_default_limits: bool,
    /// Pods left pending before yiyun-scheduler starts, on the largest node count: how soon a
    /// restarted scheduler binds again (0 leaves this out).
    #[arg(long, default_value_t = 50_000)]
    pub restart_pods: usize,
    /// Instead of the comparison above, run a suite of workloads: `scheduler-perf` is
    /// kube-scheduler's own (test/integration/scheduler_perf), read from `--suite-dir`.
    #[arg(long, value_enum)]
    pub suite: Option<Suite>,
    /// Where the suite's configs and templates are: for scheduler-perf,
    /// `$(go env GOMODCACHE)/k8s.io/kubernetes@<version>/test/integration/scheduler_perf`.
    #[arg(long, env = "SCHEDULER_PERF_DIR")]
    pub suite_dir: Option<PathBuf>,
    /// The suite's workloads to run, as TestCase/Workload, comma-separated (default: one of
    /// each kind at a size this machine carries).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// The schedulers the suite runs, comma-separated, in this order (e.g. only yiyun-scheduler
    /// while profiling it).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kube-scheduler,yiyun-scheduler")]
    pub contenders: Vec<crate::scheduler_perf::Contender>,
    /// The suite runs each workload for each scheduler on a cluster of its own, brought up
    /// and taken down with this script (`e2e/cluster`), instead of on `KUBECONFIG`'s: a
    /// cluster's second run creates pods measurably slower than its first, which favours
    /// whoever goes first.
    #[arg(long)]
    pub cluster_script: Option<PathBuf>,
}

/// Suites of workloads `yiyun bench scheduler` can run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    SchedulerPerf,
}

const NODE_PREFIX: &str = "bench-sched";
const KWOK_TAINT: &str = "kwok.x-k8s.io/node";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Contender {
    Ceiling,
    KubeScheduler { qps: u32, burst: u32 },
    Yiyun,
}

impl Contender {
    fn name(self) -> String {
        match self {
            Contender::Ceiling => "apiserver ceiling (bind only)".into(),
            Contender::KubeScheduler { qps, burst } => format!("kube-scheduler {qps}/{burst}"),
            Contender::Yiyun => "yiyun-scheduler".into(),
        }
    }

    fn scheduler_name(self) -> &'static str {
        match self {
            Contender::Ceiling => "bench-ceiling",
            Contender::KubeScheduler { .. } => "default-scheduler",
            Contender::Yiyun => "yiyun-scheduler",
        }
    }
}

struct Outcome {
    bound: usize,
    pods_per_second: f64,
    p50: Duration,
    p99: Duration,
    cpu_seconds: Option<f64>,
    peak_rss_mib: Option<f64>,
}

fn node(index: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{NODE_PREFIX}-{index:05}"), "annotations": {KWOK_TAINT: "fake"},
            "labels": {"yiyun.io/rack": format!("r{:03}", index / 40), "yiyun.io/site": "bench", "bench.yiyun.io/scheduler": "true"}},
        "spec": {"taints": [{"key": KWOK_TAINT, "value": "fake", "effect": "NoSchedule"}]},
        "status": {"capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                   "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}}
    }))
    .expect("a valid node")
}

fn pod(index: usize, scheduler: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("p{index:05}")},
        "spec": {
            "schedulerName": scheduler,
            "tolerations": [{"key": KWOK_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"bench.yiyun.io/scheduler": "true"},
            "containers": [{"name": "c", "image": "registry.local/app:1", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]
        }
    }))
    .expect("a valid pod")
}

/// Starts a contender; `extra` are more flags for yiyun-scheduler.
fn start(contender: Contender, config: &Config, extra: &[&str]) -> Result<Option<Process>, Error> {
    match contender {
        Contender::Ceiling => Ok(None),
        Contender::KubeScheduler { qps, burst } => Ok(Some(crate::processes::kube_scheduler(
            &config.kube_scheduler,
            &crate::processes::kubeconfig()?,
            qps,
            burst,
        )?)),
        Contender::Yiyun => Ok(Some(crate::processes::yiyun_scheduler(extra)?)),
    }
}

/// Binds every pending pod of the namespace to the nodes in turn, as fast as it can: what the
/// apiserver allows without any scheduling.
async fn ceiling(
    client: Client,
    namespace: String,
    nodes: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
) {
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stream = watcher(pods.clone(), watcher::Config::default()).applied_objects().default_backoff();
    let bindings = stream
        .filter_map(|pod| async move { pod.ok() })
        .filter(|pod| {
            let pending = pod.spec.as_ref().is_some_and(|s| s.node_name.is_none());
            async move { pending }
        })
        .map(|pod| {
            let pods = pods.clone();
            let node = nodes[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % nodes.len()].clone();
            async move {
                let binding = Binding {
                    metadata: ObjectMeta {
                        name: Some(pod.name_any()),
                        uid: pod.metadata.uid.clone(),
                        ..ObjectMeta::default()
                    },
                    target: ObjectReference {
                        kind: Some("Node".into()),
                        name: Some(node),
                        ..ObjectReference::default()
                    },
                };
                let _ = pods
                    .create_subresource::<Binding, serde_json::Value>(
                        "binding",
                        &pod.name_any(),
                        &PostParams::default(),
                        &binding,
                    )
                    .await;
            }
        })
        .buffer_unordered(256);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = bindings.for_each(|_| async {}) => {}
    }
}

async fn round(
    client: &Client,
    contender: Contender,
    config: &Config,
    nodes: &[String],
) -> Result<Outcome, Error> {
    let namespace = format!("bench-sched-{}", std::process::id() % 10_000 + rand_suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": namespace}}))?)
        .await?;
    let process = start(contender, config, &[])?;
    let stop = tokio_util::sync::CancellationToken::new();
    if contender == Contender::Ceiling {
        tokio::spawn(ceiling(client.clone(), namespace.clone(), nodes.to_vec(), stop.clone()));
    }
    // Let the scheduler list the cluster before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let bound_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let recorder = {
        let bound_at = bound_at.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher(pods, watcher::Config::default()).applied_objects().default_backoff());
            while let Some(Ok(pod)) = events.next().await {
                if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                    bound_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(pod.name_any())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    progress(&format!("{}: creating {} pods on {} nodes", contender.name(), config.pods, nodes.len()));
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    stream::iter((0..config.pods).map(|index| {
        let pods = pods.clone();
        let created_at = created_at.clone();
        let pod = pod(index, contender.scheduler_name());
        async move {
            let sent = Instant::now();
            pods.create(&PostParams::default(), &pod).await?;
            created_at.lock().unwrap_or_else(|p| p.into_inner()).insert(pod.name_any(), sent);
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(config.create_concurrency)
    .try_collect::<Vec<_>>()
    .await?;
    let created_in = started.elapsed();
    let total = config.pods;
    let waited = wait_until(
        Duration::from_secs(config.timeout_seconds),
        &format!("{} binding", contender.name()),
        || {
            let count = bound_at.lock().map(|b| b.len()).unwrap_or(0);
            async move { Ok((count >= total, format!("{count}/{total} bound"))) }
        },
    )
    .await;
    let (cpu, rss) = match &process {
        Some(Process(child)) => (Some(cpu_seconds(child.id())), Some(peak_rss_mib(child.id()))),
        None => (None, None),
    };
    stop.cancel();
    drop(process);
    recorder.abort();
    if let Err(err) = waited {
        progress(&format!("{}: {err}", contender.name()));
    }
    let bound_at = bound_at.lock().map(|b| b.clone()).unwrap_or_default();
    let created_at = created_at.lock().map(|c| c.clone()).unwrap_or_default();
    let mut latencies: Vec<Duration> = bound_at
        .iter()
        .filter_map(|(name, bound)| {
            created_at.get(name).map(|created| bound.saturating_duration_since(*created))
        })
        .collect();
    latencies.sort();
    let last = bound_at.values().max().map_or(created_in, |last| last.saturating_duration_since(started));
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    progress(&format!("{}: cleaning up", contender.name()));
    namespaces.delete(&namespace, &DeleteParams::default()).await?;
    wait_until(Duration::from_secs(600), "the namespace deleted", || {
        let namespaces = namespaces.clone();
        let namespace = namespace.clone();
        async move { Ok((namespaces.get_opt(&namespace).await?.is_none(), "deleting".into())) }
    })
    .await?;
    Ok(Outcome {
        bound: bound_at.len(),
        pods_per_second: bound_at.len() as f64 / last.as_secs_f64().max(1e-9),
        p50: percentile(0.5),
        p99: percentile(0.99),
        cpu_seconds: cpu,
        peak_rss_mib: rss,
    })
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 100_000)
        .unwrap_or(0)
}

async fn create_nodes(client: &Client, count: usize) -> Result<Vec<String>, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let existing: Vec<String> = api
        .list(&ListParams::default().labels("bench.yiyun.io/scheduler=true"))
        .await?
        .items
        .iter()
        .map(|node| node.name_any())
        .collect();
    progress(&format!("creating {} kwok nodes", count.saturating_sub(existing.len())));
    stream::iter((existing.len()..count).map(|index| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &node(index)).await.map(|_| ()) }
    }))
    .buffer_unordered(64)
    .try_collect::<Vec<_>>()
    .await?;
    // kube-scheduler skips nodes until they are Ready, so every contender starts from Ready nodes.
    wait_until(Duration::from_secs(600), "kwok nodes Ready", || {
        let api = api.clone();
        async move {
            let nodes = api.list(&ListParams::default().labels("bench.yiyun.io/scheduler=true")).await?.items;
            let ready = nodes
                .iter()
                .filter(|node| {
                    node.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|conditions| {
                        conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                    }) && node
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_none_or(|taints| taints.iter().all(|t| t.key == KWOK_TAINT))
                })
                .count();
            Ok((ready >= count, format!("{ready}/{count} Ready")))
        }
    })
    .await?;
    Ok((0..count).map(|index| format!("{NODE_PREFIX}-{index:05}")).collect())
}

/// Seconds from starting yiyun-scheduler, with `pods` pods already pending, to its first and to
/// its last binding.
async fn restart(client: &Client, config: &Config, nodes: usize) -> Result<(f64, f64, usize), Error> {
    let namespace = format!("bench-restart-{}", rand_suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": namespace}}))?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    progress(&format!(
        "restart: {} pending pods on {nodes} nodes, no scheduler running",
        config.restart_pods
    ));
    stream::iter((0..config.restart_pods).map(|index| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(index, Contender::Yiyun.scheduler_name()))
                .await
                .map(|_| ())
        }
    }))
    .buffer_unordered(config.create_concurrency)
    .try_collect::<Vec<_>>()
    .await?;
    // First binding, last binding, pods bound.
    type Progress = (Option<Instant>, Option<Instant>, usize);
    let bound: Arc<Mutex<Progress>> = Arc::default();
    let recorder = {
        let bound = bound.clone();
        let pods = pods.clone();
        let total = config.restart_pods;
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut events =
                std::pin::pin!(watcher(pods, watcher::Config::default()).applied_objects().default_backoff());
            while let Some(Ok(pod)) = events.next().await {
                if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) && seen.insert(pod.name_any()) {
                    let mut bound = bound.lock().unwrap_or_else(|p| p.into_inner());
                    bound.0.get_or_insert_with(Instant::now);
                    bound.2 = seen.len();
                    if seen.len() >= total {
                        bound.1 = Some(Instant::now());
                    }
                }
            }
        })
    };
    // Let the recorder list the pending pods first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    progress("restart: starting yiyun-scheduler");
    let started = Instant::now();
    let process = start(Contender::Yiyun, config, &[])?;
    let total = config.restart_pods;
    let waited = wait_until(Duration::from_secs(config.timeout_seconds), "all pending pods bound", || {
        let count = bound.lock().map(|b| b.2).unwrap_or(0);
        async move { Ok((count >= total, format!("{count}/{total} bound"))) }
    })
    .await;
    drop(process);
    recorder.abort();
    if let Err(err) = waited {
        progress(&format!("restart: {err}"));
    }
    let (first, last, count) = *bound.lock().unwrap_or_else(|p| p.into_inner());
    let since =
        |at: Option<Instant>| at.map_or(f64::NAN, |at| at.saturating_duration_since(started).as_secs_f64());
    progress("restart: cleaning up");
    namespaces.delete(&namespace, &DeleteParams::default()).await?;
    wait_until(Duration::from_secs(900), "the namespace deleted", || {
        let namespaces = namespaces.clone();
        let namespace = namespace.clone();
        async move { Ok((namespaces.get_opt(&namespace).await?.is_none(), "deleting".into())) }
    })
    .await?;
    Ok((since(first), since(last), count))
}

/// Runs the benchmark and prints its table.
pub async fn run(config: Config) -> Result<(), Error> {
    if config.suite == Some(Suite::SchedulerPerf) {
        let dir = config.suite_dir.clone().ok_or_else(|| {
            Error::Setup("--suite-dir (or SCHEDULER_PERF_DIR) must say where scheduler_perf is".into())
        })?;
        let workloads: Vec<String> = if config.workloads.is_empty() {
            crate::scheduler_perf::DEFAULT_WORKLOADS.iter().map(|w| w.to_string()).collect()
        } else {
            config.workloads.clone()
        };
        return crate::scheduler_perf::run(
            &config.kube_scheduler,
            config.create_concurrency,
            &dir,
            &workloads,
            &config.contenders,
            config.cluster_script.as_deref(),
        )
        .await;
    }
    let client = Client::try_default().await?;
    crate::install_crds(&client, Duration::from_secs(60)).await?;
    let mut rows = Vec::new();
    let mut contenders = vec![Contender::Ceiling];
    if !config.skip_default_limits {
        contenders.push(Contender::KubeScheduler { qps: 50, burst: 100 });
    }
    contenders.extend([Contender::KubeScheduler { qps: 5000, burst: 5000 }, Contender::Yiyun]);
    let mut counts = config.nodes.clone();
    counts.sort();
    let mut restarted = None;
    for &count in &counts {
        let nodes = create_nodes(&client, count).await?;
        for &contender in &contenders {
            let outcome = round(&client, contender, &config, &nodes).await?;
            rows.push((count, contender, outcome));
        }
        if config.restart_pods > 0 && Some(&count) == counts.last() {
            restarted = Some((count, restart(&client, &config, count).await?));
        }
    }
    println!(
        "{:>6} {:<32} {:>7} {:>9} {:>10} {:>10} {:>8} {:>9}",
        "nodes", "contender", "bound", "pods/s", "p50 (ms)", "p99 (ms)", "CPU (s)", "RSS (MiB)"
    );
    for (count, contender, outcome) in &rows {
        let or_dash = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "{:>6} {:<32} {:>7} {:>9.0} {:>10.0} {:>10.0} {:>8} {:>9}",
            count,
            contender.name(),
            outcome.bound,
            outcome.pods_per_second,
            outcome.p50.as_secs_f64() * 1000.0,
            outcome.p99.as_secs_f64() * 1000.0,
            or_dash(outcome.cpu_seconds),
            or_dash(outcome.peak_rss_mib),
        );
    }
    if let Some((nodes, (first, last, bound))) = restarted {
        println!(
            "restart with {} pods pending on {nodes} nodes: first pod bound {first:.1} s after yiyun-scheduler started, {bound} bound after {last:.1} s",
            config.restart_pods
        );
    }
    for &count in &counts {
        let rate = |wanted: Contender| {
            rows.iter().find(|(c, who, _)| *c == count && *who == wanted).map(|(_, _, o)| o.pods_per_second)
        };
        if let (Some(yiyun), Some(ceiling)) = (rate(Contender::Yiyun), rate(Contender::Ceiling)) {
            let versus = |qps, burst| {
                rate(Contender::KubeScheduler { qps, burst })
                    .map_or("-".to_string(), |k| format!("{:.1}x", yiyun / k.max(1e-9)))
            };
            println!(
                "{count} nodes: yiyun {:.0}% of the ceiling; vs kube-scheduler 50/100: {}; vs 5000/5000: {}",
                yiyun / ceiling.max(1e-9) * 100.0,
                versus(50, 100),
                versus(5000, 5000)
            );
        }
    }
    Ok(())
}
