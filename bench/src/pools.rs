//! `yiyun bench pools`: thousands of kwok nodes in node pools, timed end to end.
//!
//! 1. Baseline: the nodes created, then patched once each with a label, by a plain client with
//!    the same concurrency: the apiserver's own limit for writing these nodes.
//! 2. The pools applied with `yiyun controller` running: time until every node carries its
//!    pool's topology labels.
//! 3. A label added to one pool: time until every node of it shows the label.
//! 4. Idle: reconciles, writes and CPU per minute with nothing changing.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use yiyun_crds::{ComputeSite, NodePool};

use crate::{Common, Controller, Error, MANAGER, idle, install_crds, progress, wait_until};

const PREFIX: &str = "bench-node";
const POOL_LABEL: &str = "bench.yiyun.io/pool";

/// What `yiyun bench pools` runs.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Fake (kwok) nodes to create.
    #[arg(long, default_value_t = 5000)]
    pub nodes: usize,
    /// Pools to spread them over.
    #[arg(long, default_value_t = 10)]
    pub pools: usize,
    #[command(flatten)]
    pub common: Common,
}

fn node_object(i: usize, pools: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{PREFIX}-{i}"),
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {POOL_LABEL: format!("p{}", i % pools), "bench.yiyun.io/rack": format!("r{}", i % 200)}
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {"capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                   "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}}
    }))
    .expect("a valid node")
}

fn pool_object(pool: usize, extra_labels: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "NodePool", "metadata": {"name": format!("bench-p{pool}")},
        "spec": {"site": if pool.is_multiple_of(2) { "bench-east" } else { "bench-west" },
                 "nodeSelector": {"matchLabels": {POOL_LABEL: format!("p{pool}")}},
                 "rack": {"label": "bench.yiyun.io/rack"}, "onboarding": "Automatic", "labels": extra_labels}})
}

/// Runs the benchmark and prints its table.
pub async fn run(config: Config) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let timeout = Duration::from_secs(config.common.timeout_seconds);
    install_crds(&client, timeout).await?;
    let sites: Api<ComputeSite> = Api::all(client.clone());
    for (name, class) in [("bench-east", "east"), ("bench-west", "west")] {
        let site = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "ComputeSite", "metadata": {"name": name},
            "spec": {"region": class, "regionClass": class, "hub": "bench", "city": "bench", "powerPricePerKWh": "0.5", "pue": 1.2, "carbonIntensity": 500}});
        sites.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&site)).await?;
    }

    // 1. Baseline: create the nodes, then one direct label patch each.
    progress(&format!("phase 1/4: creating {} kwok nodes, then labelling each once directly", config.nodes));
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    stream::iter((0..config.nodes).map(|i| {
        let nodes = nodes.clone();
        let node = node_object(i, config.pools);
        async move { nodes.create(&PostParams::default(), &node).await.map(|_| ()) }
    }))
    .buffer_unordered(config.common.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    let created = started.elapsed();
    let started = Instant::now();
    stream::iter((0..config.nodes).map(|i| {
        let nodes = nodes.clone();
        async move {
            let patch = json!({"metadata": {"labels": {"bench.yiyun.io/baseline": "1"}}});
            nodes
                .patch(&format!("{PREFIX}-{i}"), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    }))
    .buffer_unordered(config.common.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    let baseline = started.elapsed();

    // 2. The pools, applied with the controller running.
    let (store, writer) = reflector::store();
    let watch = tokio::spawn(
        reflector(writer, watcher(nodes.clone(), watcher::Config::default().labels(POOL_LABEL)))
            .default_backoff()
            .for_each(|_| async {}),
    );
    let count = |predicate: &dyn Fn(&Node) -> bool| store.state().iter().filter(|n| predicate(n)).count();
    let mut controller = Controller::start()?;
    controller.wait_ready(timeout).await?;
    progress(&format!("phase 2/4: applying {} pools", config.pools));
    let pools: Api<NodePool> = Api::all(client.clone());
    let cpu_before = controller.cpu_seconds();
    let started = Instant::now();
    for pool in 0..config.pools {
        let object = pool_object(pool, json!({}));
        pools
            .patch(&format!("bench-p{pool}"), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object))
            .await?;
    }
    wait_until(timeout, "every node labelled", || async {
        let labelled = count(&|n| {
            n.labels().contains_key("yiyun.io/node-pool") && n.labels().contains_key("yiyun.io/rack")
        });
        Ok((labelled == config.nodes, format!("{labelled}/{} nodes labelled", config.nodes)))
    })
    .await?;
    let to_label = started.elapsed();
    let cpu_label = controller.cpu_seconds() - cpu_before;

    // 3. One pool gets a new label.
    progress("phase 3/4: adding a label to pool bench-p0");
    let in_pool = config.nodes.div_ceil(config.pools);
    let started = Instant::now();
    let object = pool_object(0, json!({"yiyun.io/tier": "batch"}));
    pools.patch("bench-p0", &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object)).await?;
    wait_until(timeout, "the pool-wide label", || async {
        let done = count(&|n| n.labels().get("yiyun.io/tier").is_some_and(|t| t == "batch"));
        Ok((done == in_pool, format!("{done}/{in_pool} nodes relabelled")))
    })
    .await?;
    let to_relabel = started.elapsed();

    // 4. Idle.
    progress("phase 4/4: idle");
    let (idle_reconciles, idle_writes, idle_cpu) = idle(&controller, config.common.idle_seconds).await?;
    let rss = controller.peak_rss_mib();
    controller.stop();
    watch.abort();

    progress("cleaning up the nodes");
    stream::iter((0..config.nodes).map(|i| {
        let nodes = nodes.clone();
        async move { nodes.delete(&format!("{PREFIX}-{i}"), &DeleteParams::default()).await.map(|_| ()) }
    }))
    .buffer_unordered(config.common.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    for pool in 0..config.pools {
        let _ = pools.delete(&format!("bench-p{pool}"), &DeleteParams::default()).await;
    }

    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    println!();
    println!("yiyun bench pools: {} kwok nodes in {} pools", config.nodes, config.pools);
    println!("| measure | result |");
    println!("|---|---|");
    println!(
        "| create the nodes (plain client, concurrency {}) | {} |",
        config.common.concurrency,
        secs(created)
    );
    println!("| baseline: one label patch per node, directly | {} |", secs(baseline));
    println!(
        "| pools applied → every node labelled | {} ({:.2}× baseline) |",
        secs(to_label),
        to_label.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("| controller CPU until labelled | {cpu_label:.1} s |");
    println!("| pool-wide label change ({in_pool} nodes) | {} |", secs(to_relabel));
    println!("| idle reconciles / writes per minute | {idle_reconciles:.1} / {idle_writes:.1} |");
    println!("| idle controller CPU over {}s | {idle_cpu:.2} s |", config.common.idle_seconds);
    println!("| controller peak RSS | {rss:.0} MiB |");
    Ok(())
}
