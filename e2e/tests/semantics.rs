//! The scheduling rules ordinary workloads rely on, kept by yiyun-scheduler as kube-scheduler
//! keeps them: inter-pod (anti-)affinity, topology spread, host ports, scheduling gates, node
//! names. Each test runs its own scheduler on two kwok nodes of its own cell, in two zones.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use yiyun_e2e::{
    SchedulerProcess, TestNamespace, client, create_kwok_node, delete_nodes, eventually, node_of, unique,
    unschedulable_message, wait_ready,
};

const CELL: &str = "yiyun.io/e2e-cell";
const ZONE: &str = "topology.kubernetes.io/zone";
const WAIT: Duration = Duration::from_secs(60);

/// A cell of two kwok nodes, `<cell>-a` in zone a and `<cell>-b` in zone b, with its own
/// scheduler and namespace.
struct Cell {
    client: Client,
    name: String,
    nodes: Vec<String>,
    scheduler: String,
    ns: TestNamespace,
    _running: SchedulerProcess,
}

impl Cell {
    async fn start(prefix: &str) -> Cell {
        let client = client().await;
        let name = unique(prefix);
        let mut nodes = Vec::new();
        for zone in ["a", "b"] {
            let node = format!("{name}-{zone}");
            let labels = serde_json::json!({CELL: name, ZONE: zone, "kubernetes.io/hostname": node});
            create_kwok_node(&client, &node, labels).await;
            nodes.push(node);
        }
        wait_ready(&client, &nodes).await;
        let scheduler = unique("yiyun-e2e");
        let running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
        let ns = TestNamespace::create(&client, prefix).await;
        Cell { client, name, nodes, scheduler, ns, _running: running }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// A pod spec for the cell: its scheduler, its nodes, kwok's taint tolerated, plus `extra`.
    fn spec(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "schedulerName": self.scheduler,
            "nodeSelector": {CELL: self.name},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": "registry.local/app:1", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                spec.insert(key.clone(), value.clone());
            }
        }
        spec
    }

    async fn create(&self, name: &str, labels: serde_json::Value, extra: serde_json::Value) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels}, "spec": self.spec(extra)
        }))
        .expect("a valid pod");
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|err| panic!("create {name}: {err}"));
    }

    async fn bound(&self, name: &str) -> String {
        let pods = self.pods();
        eventually(WAIT, &format!("{name} bound"), || node_of(&pods, name)).await
    }

    async fn waits_because(&self, name: &str) -> String {
        let pods = self.pods();
        eventually(WAIT, &format!("{name} explained"), || unschedulable_message(&pods, name)).await
    }

    async fn stop(self) {
        delete_nodes(&self.client, &self.nodes).await;
        self.ns.delete().await;
    }
}

#[tokio::test]
async fn three_replicas_with_required_anti_affinity_take_two_nodes_and_the_third_waits() {
    let cell = Cell::start("anti").await;
    let mut template_spec = cell.spec(serde_json::json!({
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "portal"}}, "topologyKey": "kubernetes.io/hostname"}
        ]}}
    }));
    template_spec["terminationGracePeriodSeconds"] = 0.into();
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "portal"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "portal"}},
            "template": {"metadata": {"labels": {"app": "portal"}}, "spec": template_spec}
        }
    }))
    .expect("a valid deployment");
    Api::<Deployment>::namespaced(cell.client.clone(), &cell.ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the deployment");
    let pods = cell.pods();
    let (bound, waiting) = eventually(WAIT, "two replicas bound and one explained", || async {
        let list = pods.list(&ListParams::default().labels("app=portal")).await.ok()?;
        if list.items.len() != 3 {
            return None;
        }
        let mut bound = Vec::new();
        let mut waiting = Vec::new();
        for pod in &list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                Some(node) => bound.push(node),
                None => waiting.push(unschedulable_message(&pods, &name).await?),
            }
        }
        (bound.len() == 2 && waiting.len() == 1).then_some((bound, waiting))
    })
    .await;
    assert_ne!(bound[0], bound[1], "each replica on its own node: {bound:?}");
    assert!(waiting[0].contains("2 didn't match pod anti-affinity rules"), "{}", waiting[0]);
    cell.stop().await;
}

#[tokio::test]
async fn four_pods_spread_with_max_skew_one_take_two_per_zone() {
    let cell = Cell::start("spread").await;
    let constraint = serde_json::json!({"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "spread"}}
    }]});
    for index in 0..4 {
        cell.create(&format!("spread-{index}"), serde_json::json!({"app": "spread"}), constraint.clone())
            .await;
    }
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    for index in 0..4 {
        *per_node.entry(cell.bound(&format!("spread-{index}")).await).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2], "{per_node:?}");
    // A fifth, allowed only in zone a (node affinity), is limited by zone b's two: skew 1
    // allows one more in a, not two.
    let in_a = serde_json::json!({
        "topologySpreadConstraints": constraint["topologySpreadConstraints"],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["a"]}]}
        ]}}}
    });
    cell.create("spread-4", serde_json::json!({"app": "spread"}), in_a.clone()).await;
    assert_eq!(cell.bound("spread-4").await, cell.nodes[0]);
    // Honor (the default) counts only zone a, where the pod may go: any number fits there.
    cell.create("spread-5", serde_json::json!({"app": "spread"}), in_a).await;
    assert_eq!(cell.bound("spread-5").await, cell.nodes[0]);
    let mut ignoring = constraint.clone();
    ignoring["topologySpreadConstraints"][0]["nodeAffinityPolicy"] = "Ignore".into();
    ignoring["affinity"] = serde_json::json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["a"]}]}]}}});
    cell.create("spread-6", serde_json::json!({"app": "spread"}), ignoring).await;
    let message = cell.waits_because("spread-6").await;
    assert!(message.contains("1 didn't match pod topology spread constraints"), "{message}");
    cell.stop().await;
}

#[tokio::test]
async fn pods_asking_for_one_host_port_take_a_node_each() {
    let cell = Cell::start("ports").await;
    let with_port = serde_json::json!({"containers": [{
        "name": "dns", "image": "registry.local/dns:1",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "ports": [{"containerPort": 53, "hostPort": 53, "protocol": "UDP"}]
    }]});
    for index in 0..3 {
        cell.create(&format!("dns-{index}"), serde_json::json!({"app": "dns"}), with_port.clone()).await;
    }
    let first = cell.bound("dns-0").await;
    let second = cell.bound("dns-1").await;
    assert_ne!(first, second, "one host port per node");
    let message = cell.waits_because("dns-2").await;
    assert!(message.contains("2 didn't have free ports for the requested pod ports"), "{message}");
    cell.stop().await;
}

#[tokio::test]
async fn affinity_follows_selected_pods_and_existing_anti_affinity_keeps_others_away() {
    let cell = Cell::start("affinity").await;
    let to_node_b = serde_json::json!({"affinity": {"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [cell.nodes[1]]}]}
    ]}}}});
    // A database pinned by node name (matchFields, as DaemonSets pin), keeping "batch" pods out.
    let mut db = to_node_b.clone();
    db["affinity"]["podAntiAffinity"] = serde_json::json!({"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "batch"}}, "topologyKey": ZONE}
    ]});
    cell.create("db", serde_json::json!({"app": "db"}), db).await;
    assert_eq!(cell.bound("db").await, cell.nodes[1], "matchFields names the node");
    let near_db = serde_json::json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": ZONE}
    ]}}});
    cell.create("cache", serde_json::json!({"app": "cache"}), near_db).await;
    assert_eq!(cell.bound("cache").await, cell.nodes[1], "beside the db");
    cell.create("batch", serde_json::json!({"app": "batch"}), serde_json::json!({})).await;
    assert_eq!(cell.bound("batch").await, cell.nodes[0], "the db's anti-affinity keeps batch out of zone b");
    let nowhere = serde_json::json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "missing"}}, "topologyKey": ZONE}
    ]}}});
    cell.create("lonely", serde_json::json!({"app": "lonely"}), nowhere).await;
    let message = cell.waits_because("lonely").await;
    assert!(message.contains("2 didn't match pod affinity rules"), "{message}");
    cell.stop().await;
}

#[tokio::test]
async fn a_gated_pod_waits_until_its_gates_are_lifted() {
    let cell = Cell::start("gates").await;
    cell.create(
        "gated",
        serde_json::json!({}),
        serde_json::json!({"schedulingGates": [{"name": "example.com/quota"}]}),
    )
    .await;
    cell.create("free", serde_json::json!({}), serde_json::json!({})).await;
    cell.bound("free").await;
    let pods = cell.pods();
    // The ungated pod bound means the scheduler has seen both: the gated one must still wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node_of(&pods, "gated").await, None, "a gated pod is not scheduled");
    pods.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"schedulingGates": null}})),
    )
    .await
    .expect("lift the gate");
    cell.bound("gated").await;
    cell.stop().await;
}
