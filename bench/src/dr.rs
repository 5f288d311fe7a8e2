//! `yiyun bench dr`: disaster recovery at scale, on a primary and a standby cluster
//! (`YIYUN_DR_PRIMARY`, `YIYUN_DR_STANDBY`; `make bench-dr` starts both).
//!
//! 1. 100 namespaces of 50 objects each (a Deployment, a Service, 48 ConfigMaps) on the primary,
//!    then 100 continuous policies: time until every namespace is copied.
//! 2. 20 changes per second for a minute, each stamped with its number: from the write to the
//!    change arriving on the standby's watch (the replication lag), against the same write
//!    arriving on the primary's own watch (the baseline: what any watcher waits).
//! 3. The controller restarted: time until every namespace has been compared in full with its
//!    copy (a consistent copy of everything, listed at one resourceVersion per namespace).
//! 4. Every namespace failed over at once (16 at a time): time until all workloads run on the
//!    standby, against creating the same workloads directly on the standby.
//!
//! The controller runs as a process of its own, so its CPU time and peak RSS are its own.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Node},
};
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use yiyun_crds::ReplicationPolicy;

use crate::{Common, Error, MANAGER, cpu_seconds, install_crds, peak_rss_mib, progress, wait_until};

const PREFIX: &str = "bench-dr";

/// What `yiyun bench dr` runs.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Protected namespaces.
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    /// Objects in each (a Deployment, a Service, the rest ConfigMaps).
    #[arg(long, default_value_t = 50)]
    pub objects: usize,
    /// Changes per second on the primary during the lag phase.
    #[arg(long, default_value_t = 20)]
    pub changes_per_second: u32,
    /// How long the changes go on.
    #[arg(long, default_value_t = 60)]
    pub change_seconds: u64,
    /// The primary cluster's kubeconfig.
    #[arg(long, env = "YIYUN_DR_PRIMARY")]
    pub primary: PathBuf,
    /// The standby cluster's kubeconfig (it needs a scheduler for the failover phase).
    #[arg(long, env = "YIYUN_DR_STANDBY")]
    pub standby: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// `yiyun dr run` as a child process on the primary.
struct DrController {
    child: Child,
    admin: SocketAddr,
}

impl DrController {
    fn start(primary: &Path) -> Result<Self, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let admin: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::env::temp_dir().join("yiyun-bench-dr.log");
        progress(&format!("starting yiyun dr run (log: {})", log.display()));
        let child = Command::new(std::env::current_exe()?)
            .args([
                "dr",
                "run",
                "--leader-elect=false",
                "--status-seconds",
                "2",
                "--admin-addr",
                &admin.to_string(),
            ])
            .env("KUBECONFIG", primary)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(DrController { child, admin })
    }

    /// A counter or gauge of its `/metrics`, summed over labels.
    fn metric(&self, name: &str) -> f64 {
        let Some((_, text)) = yiyun_admin::http_get(self.admin, "/metrics") else { return 0.0 };
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for DrController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client(kubeconfig: &Path) -> Result<Client, Error> {
    Ok(yiyun_kube::client(Some(kubeconfig)).await?)
}

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"tolerations": [{"operator": "Exists"}],
                                       "containers": [{"name": "app", "image": "registry.local/app:1"}]}}}
    })
}

async fn apply(client: &Client, namespace: &str, object: Value) -> Result<(), Error> {
    let (api_version, kind) =
        (object["apiVersion"].as_str().unwrap_or_default(), object["kind"].as_str().unwrap_or_default());
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "ReplicationPolicy" => "replicationpolicies".to_string(),
        other => format!("{}s", other.to_lowercase()),
    };
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object)).await?;
    Ok(())
}

/// Percentile `q` (0..=1) of `values`, nearest rank.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Waits until every Deployment in the namespaces `names` has all its replicas ready.
async fn all_running(client: &Client, names: &[String], timeout: Duration) -> Result<(), Error> {
    wait_until(timeout, "every workload running", || async {
        let deployments: Api<Deployment> = Api::all(client.clone());
        let list = deployments.list(&ListParams::default()).await?;
        let running = list
            .items
            .iter()
            .filter(|d| names.contains(&d.metadata.namespace.clone().unwrap_or_default()))
            .filter(|d| {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                want > 0 && d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= want
            })
            .count();
        Ok((running >= names.len(), format!("{running} of {} running", names.len())))
    })
    .await
}

pub async fn run(config: Config) -> Result<(), Error> {
    let timeout = Duration::from_secs(config.common.timeout_seconds);
    let (primary, standby) = (client(&config.primary).await?, client(&config.standby).await?);
    install_crds(&primary, timeout).await?;
    install_crds(&standby, timeout).await?;
    let standby_kubeconfig = std::fs::read_to_string(&config.standby)?;
    let names: Vec<String> = (0..config.namespaces).map(|i| format!("{PREFIX}-{i}")).collect();
    let configmaps = config.objects.saturating_sub(2).max(1);

    progress("kwok nodes on the standby for the failed-over workloads");
    let nodes: Api<Node> = Api::all(standby.clone());
    let node_count = config.namespaces.div_ceil(100) * 2 + 1;
    for i in 0..node_count {
        let node = serde_json::from_value(json!({
            "metadata": {"name": format!("{PREFIX}-node-{i}"), "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"}, "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}}
        }))?;
        let _ = nodes.create(&PostParams::default(), &node).await;
    }

    // 1. The namespaces, then the policies.
    progress(&format!(
        "phase 1/4: {} namespaces of {} objects on the primary",
        config.namespaces, config.objects
    ));
    let namespaces: Api<Namespace> = Api::all(primary.clone());
    for name in &names {
        let namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        let _ = namespaces.create(&PostParams::default(), &namespace).await;
    }
    let writes = names.iter().flat_map(|ns| {
        let mut objects = vec![
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "standby"}, "stringData": {"kubeconfig": standby_kubeconfig}}),
            deployment("app"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}}),
        ];
        objects.extend((0..configmaps).map(|j| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cfg-{j}"), "labels": {"bench": "dr"}}, "data": {"v": "initial"}})
        }));
        objects.into_iter().map(move |object| (ns.clone(), object))
    });
    stream::iter(writes.map(|(ns, object)| {
        let primary = primary.clone();
        async move { apply(&primary, &ns, object).await }
    }))
    .buffer_unordered(config.common.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    let mut controller = DrController::start(&config.primary)?;
    let started = Instant::now();
    for name in &names {
        let policy = json!({
            "apiVersion": "yiyun.io/v1alpha1", "kind": "ReplicationPolicy", "metadata": {"name": "protect"},
            "spec": {"level": 5, "rpo": "30s", "rto": "5m", "target": {"kubeconfigSecret": {"name": "standby"}, "site": "standby"}}
        });
        apply(&primary, name, policy).await?;
    }
    let policies: Api<ReplicationPolicy> = Api::all(primary.clone());
    let want = config.objects as i64;
    wait_until(timeout, "every namespace copied", || async {
        let list = policies.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| s.objects_replicated >= want && s.achieved_rpo.is_some())
            })
            .count();
        Ok((done >= names.len(), format!("{done} of {} namespaces copied", names.len())))
    })
    .await?;
    let initial_copy = started.elapsed();

    // 2. Changes at a steady rate; arrivals on the standby's and on the primary's own watch.
    let changes = (config.changes_per_second as u64 * config.change_seconds) as usize;
    progress(&format!("phase 2/4: {changes} changes at {}/s", config.changes_per_second));
    let arrivals = |client: &Client, selector: &str| {
        let seen: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
        let api: Api<ConfigMap> = Api::all(client.clone());
        let events = watcher(api, watcher::Config::default().labels(selector)).applied_objects();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(Ok(map)) = events.next().await {
                let change = map.data.as_ref().and_then(|d| d.get("v")).and_then(|v| v.parse::<usize>().ok());
                if let Some(change) = change {
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(change)
                        .or_insert_with(Instant::now);
                }
            }
        });
        (seen, task)
    };
    let (on_standby, standby_task) = arrivals(&standby, "bench=dr");
    let (on_primary, primary_task) = arrivals(&primary, "bench=dr");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before = cpu_seconds(controller.child.id());
    let sent: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let begin = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(config.changes_per_second.max(1)));
    let mut writers = Vec::with_capacity(changes);
    for change in 0..changes {
        tokio::time::sleep_until((begin + interval * change as u32).into()).await;
        let namespace = names[change % names.len()].clone();
        let map = format!("cfg-{}", (change / names.len()) % configmaps);
        let (primary, sent) = (primary.clone(), sent.clone());
        writers.push(tokio::spawn(async move {
            let api: Api<ConfigMap> = Api::namespaced(primary, &namespace);
            let at = Instant::now();
            let patch = json!({"data": {"v": change.to_string()}});
            let written = api.patch(&map, &PatchParams::default(), &Patch::Merge(&patch)).await;
            if written.is_ok() {
                sent.lock().unwrap_or_else(|p| p.into_inner()).insert(change, at);
            }
        }));
    }
    for writer in writers {
        let _ = writer.await;
    }
    wait_until(Duration::from_secs(120), "every change on the standby", || async {
        let arrived = on_standby.lock().unwrap_or_else(|p| p.into_inner()).len();
        Ok((arrived >= changes, format!("{arrived} of {changes} changes on the standby")))
    })
    .await?;
    let change_cpu = cpu_seconds(controller.child.id()) - cpu_before;
    standby_task.abort();
    primary_task.abort();
    let lags = |arrivals: &Arc<Mutex<HashMap<usize, Instant>>>| -> Vec<f64> {
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        let arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter()
            .filter_map(|(change, at)| {
                Some(arrivals.get(change)?.saturating_duration_since(*at).as_secs_f64())
            })
            .collect()
    };
    let (mut standby_lags, mut primary_lags) = (lags(&on_standby), lags(&on_primary));

    // 3. Restarted, the controller compares every namespace in full.
    progress("phase 3/4: the controller restarted; every namespace compared in full");
    let first_rss = peak_rss_mib(controller.child.id());
    drop(controller);
    controller = DrController::start(&config.primary)?;
    let restarted = Instant::now();
    let namespaces_count = names.len() as f64;
    let probe = &controller;
    wait_until(timeout, "every namespace compared", || async move {
        let compared = probe.metric("yiyun_dr_full_comparisons_total");
        Ok((compared >= namespaces_count, format!("{compared} of {namespaces_count} namespaces compared")))
    })
    .await?;
    let full_copy = restarted.elapsed();
    let rss = first_rss.max(peak_rss_mib(controller.child.id()));

    // 4. Failover of every namespace, against the same workloads created directly.
    progress("phase 4/4: baseline, the same workloads created directly on the standby");
    let base: Vec<String> = (0..config.namespaces).map(|i| format!("{PREFIX}-base-{i}")).collect();
    let standby_namespaces: Api<Namespace> = Api::all(standby.clone());
    let started = Instant::now();
    for name in &base {
        let namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        let _ = standby_namespaces.create(&PostParams::default(), &namespace).await;
    }
    stream::iter(base.iter().map(|ns| {
        let standby = standby.clone();
        async move { apply(&standby, ns, deployment("app")).await }
    }))
    .buffer_unordered(config.common.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    all_running(&standby, &base, timeout).await?;
    let direct = started.elapsed();
    progress("phase 4/4: every namespace failed over");
    let started = Instant::now();
    let failovers = stream::iter(names.iter().map(|ns| {
        let args = yiyun_dr::operations::Args {
            policy: format!("{ns}/protect"),
            kubeconfig: Some(config.primary.clone()),
            standby_kubeconfig: None,
            timeout_seconds: Some(config.common.timeout_seconds),
            keep: false,
        };
        async move { yiyun_dr::operations::failover(&args).await }
    }))
    .buffer_unordered(config.common.concurrency)
    .try_collect::<Vec<_>>()
    .await
    .map_err(|err| Error::Setup(format!("failover: {err}")))?;
    all_running(&standby, &names, timeout).await?;
    let failover = started.elapsed();
    let mut rtos: Vec<f64> = failovers.iter().filter_map(|r| r.rto_seconds).collect();

    let ms = |seconds: f64| format!("{:.0} ms", seconds * 1000.0);
    println!(
        "\n## yiyun bench dr: {} namespaces × {} objects, {} changes at {}/s\n",
        config.namespaces, config.objects, changes, config.changes_per_second
    );
    println!("| what | figure |");
    println!("|---|---|");
    println!(
        "| first copy of all {} objects (policies applied → every namespace copied) | {:.1} s |",
        config.namespaces * config.objects,
        initial_copy.as_secs_f64()
    );
    println!(
        "| replication lag p50 / p99 / max (write → standby watch) | {} / {} / {} |",
        ms(percentile(&mut standby_lags, 0.5)),
        ms(percentile(&mut standby_lags, 0.99)),
        ms(percentile(&mut standby_lags, 1.0))
    );
    println!(
        "| baseline: the primary's own watch p50 / p99 / max (write → primary watch) | {} / {} / {} |",
        ms(percentile(&mut primary_lags, 0.5)),
        ms(percentile(&mut primary_lags, 0.99)),
        ms(percentile(&mut primary_lags, 1.0))
    );
    println!("| changes measured | {} of {changes} |", standby_lags.len());
    println!(
        "| consistent copy of every namespace after a restart (full comparison) | {:.1} s |",
        full_copy.as_secs_f64()
    );
    println!(
        "| failover of {} namespaces, until every workload runs on the standby | {:.1} s |",
        config.namespaces,
        failover.as_secs_f64()
    );
    println!(
        "| per-namespace RTO p50 / max | {:.1} s / {:.1} s |",
        percentile(&mut rtos, 0.5),
        percentile(&mut rtos, 1.0)
    );
    println!(
        "| baseline: the same {} workloads created directly on the standby, until running | {:.1} s |",
        config.namespaces,
        direct.as_secs_f64()
    );
    println!(
        "| controller CPU during the changes | {change_cpu:.2} s ({:.2} s per 1,000 changes) |",
        change_cpu * 1000.0 / changes.max(1) as f64
    );
    println!("| controller peak RSS | {rss:.0} MiB |");
    Ok(())
}
