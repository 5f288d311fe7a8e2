//! Faults of the control plane under load: the apiserver, and separately etcd, killed for 30 s
//! and restarted while yiyun-scheduler binds pods and the controller reconciles. Nothing may be
//! bound twice, no node or GPU over-committed, no pod lost, and both resume by themselves.
//!
//! These tests stop parts of their local cluster, so they take turns, and this test binary
//! holds nothing else: `e2e/run-tests` gives it a cluster of its own.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use yiyun_e2e::{
    FIELD_MANAGER, LocalCluster, SchedulerProcess, TestNamespace, client, controller_command,
    controller_turn, create_kwok_node_with, eventually, free_port, install_crds, join_tenant, node_of,
    tenant_with_max_cpu, unique, unschedulable_message,
};

const CPUS_PER_NODE: u64 = 12;
const NODES: usize = 4;
const PODS: usize = 40;
const OUTAGE: Duration = Duration::from_secs(30);
/// How long a test waits for the cluster's own parts to catch up with an earlier fault.
const SETTLE: Duration = Duration::from_secs(120);

/// Pods of 1 CPU, every fourth also half a GPU, for the cell's nodes.
fn pod(name: &str, scheduler: &str, cell: &str, index: usize) -> Pod {
    let annotations = if index.is_multiple_of(4) { json!({"yiyun.io/gpu-milli": "500"}) } else { json!({}) };
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "schedulerName": scheduler,
            "nodeSelector": {"yiyun.io/e2e-cell": cell},
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "registry.local/app:1", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]
        }
    }))
    .expect("a valid pod")
}

/// Waits until `count` pods are bound, then checks the books: no node holds more CPU than it
/// has, no GPU device more than one GPU, and every pod is there.
async fn all_bound_and_nothing_overcommitted(pods: &Api<Pod>, count: usize) {
    let bound = eventually(Duration::from_secs(180), "every pod bound after the fault", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        (list.len() == count && list.iter().all(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some())))
            .then_some(list)
    })
    .await;
    let mut cpu: HashMap<String, u64> = HashMap::new();
    let mut devices: BTreeMap<(String, String), u64> = BTreeMap::new();
    for pod in &bound {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).expect("bound");
        *cpu.entry(node.clone()).or_default() += 1;
        let assignment = pod.metadata.annotations.as_ref().and_then(|a| a.get("yiyun.io/gpu-assignment"));
        for pair in assignment.into_iter().flat_map(|a| a.split(',')) {
            let (device, milli) = pair.split_once(':').expect("device:milli");
            *devices.entry((node.clone(), device.to_string())).or_default() +=
                milli.parse::<u64>().expect("milli");
        }
    }
    for (node, used) in &cpu {
        assert!(*used <= CPUS_PER_NODE, "{node} holds {used} CPUs of {CPUS_PER_NODE}");
    }
    for ((node, device), milli) in &devices {
        assert!(*milli <= 1000, "{node} GPU {device} holds {milli} milli");
    }
    let with_gpu = bound
        .iter()
        .filter(|p| p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("yiyun.io/gpu-milli")))
        .count();
    let assigned: u64 = devices.values().sum();
    assert_eq!(assigned, 500 * with_gpu as u64, "every GPU pod has its half GPU, once");
}

/// Runs the scheduler and the controller, creates load, kills `component` for [`OUTAGE`] mid-way
/// and checks that everything resumed.
async fn ride_out(component: &str) {
    let _turn = controller_turn().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create_within(&client, "fault", SETTLE).await;
    let cell = unique("cell");
    let mut nodes = Vec::new();
    for index in 0..NODES {
        let node = format!("{cell}-n{index}");
        let capacity =
            json!({"cpu": CPUS_PER_NODE.to_string(), "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "2"});
        create_kwok_node_with(&client, &node, json!({"yiyun.io/e2e-cell": cell}), capacity).await;
        nodes.push(node);
    }
    let scheduler = unique("yiyun-e2e");
    let mut scheduler_process = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let admin = format!("127.0.0.1:{}", free_port());
    let controller_log = std::env::temp_dir().join(format!("{}.log", unique("controller")));
    let log_file = std::fs::File::create(&controller_log).expect("a log file");
    let mut controller = controller_command(&admin)
        .arg("--leader-elect=false")
        .env("RUST_LOG", "info,yiyun_controller=debug")
        .stdout(log_file.try_clone().expect("log handle"))
        .stderr(log_file)
        .spawn()
        .expect("start yiyun controller");
    let controller_logs = || std::fs::read_to_string(&controller_log).unwrap_or_default();

    // Load: pods keep coming while the component goes away.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for index in 0..PODS / 2 {
        pods.create(&PostParams::default(), &pod(&format!("before-{index}"), &scheduler, &cell, index))
            .await
            .expect("create a pod");
    }
    let cluster = LocalCluster::current();
    cluster.control("stop", component);
    tokio::time::sleep(OUTAGE).await;
    cluster.control("start", component);
    let restarted = std::time::Instant::now();
    for index in 0..PODS / 2 {
        let name = format!("after-{index}");
        eventually(Duration::from_secs(60), "the apiserver takes pods again", || async {
            match pods.create(&PostParams::default(), &pod(&name, &scheduler, &cell, index)).await {
                // Created by an attempt whose answer was lost.
                Ok(_) | Err(kube::Error::Api(_)) if pods.get_opt(&name).await.ok().flatten().is_some() => {
                    Some(())
                }
                _ => None,
            }
        })
        .await;
    }
    all_bound_and_nothing_overcommitted(&pods, PODS).await;
    // Reported, not asserted: how long binding took to resume.
    eprintln!(
        "{component}: all {PODS} pods bound {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );

    // The controller resumed too: a tenant applied now gets Ready.
    let tenant = unique("after-fault");
    let tenants: Api<yiyun_crds::Tenant> = Api::all(client.clone());
    let object = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"displayName": "灾后", "level": "province"}});
    tenants
        .patch(&tenant, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
        .await
        .expect("apply");
    let ready = yiyun_e2e::within(Duration::from_secs(90), async {
        loop {
            let status = tenants.get(&tenant).await.ok().and_then(|t| t.status);
            if status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(
        ready.is_some(),
        "the tenant is not Ready after the fault; the controller logged:\n{}",
        controller_logs()
    );

    assert!(scheduler_process.running(), "the scheduler exited: {}", scheduler_process.logs());
    assert!(matches!(controller.try_wait(), Ok(None)), "the controller exited:\n{}", controller_logs());
    let _ = controller.kill();
    let _ = controller.wait();
    let _ = tenants.delete(&tenant, &DeleteParams::default()).await;
    ns.delete().await;
    let node_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for node in nodes {
        let _ = node_api.delete(&node, &DeleteParams::default()).await;
    }
}

#[tokio::test]
async fn scheduler_and_controller_ride_out_an_apiserver_restart() {
    ride_out("kube-apiserver").await;
}

#[tokio::test]
async fn scheduler_and_controller_ride_out_an_etcd_restart() {
    ride_out("etcd").await;
}

#[tokio::test]
async fn a_scheduler_whose_watches_expired_forgets_what_was_deleted_meanwhile() {
    let _turn = controller_turn().await;
    let client = client().await;
    install_crds(&client).await;
    let cell = unique("cell");
    let node = format!("{cell}-n0");
    let capacity = json!({"cpu": "8", "memory": "64Gi", "pods": "110"});
    create_kwok_node_with(&client, &node, json!({"yiyun.io/e2e-cell": cell}), capacity).await;
    let scheduler = unique("yiyun-e2e");
    let wait = Duration::from_secs(60);

    // A tenant at its ceiling, and a gang waiting for its third member.
    let capped = tenant_with_max_cpu(&client, "500m").await;
    let capped_ns = TestNamespace::create_within(&client, "capped", SETTLE).await;
    join_tenant(&client, &capped_ns.name, &capped).await;
    let gang_ns = TestNamespace::create(&client, "gang").await;
    let group = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": "train"},
        "spec": {"minMember": 3}});
    let groups: Api<yiyun_crds::PodGroup> = Api::namespaced(client.clone(), &gang_ns.name);
    groups
        .patch("train", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&group))
        .await
        .expect("PodGroup");
    // Started now, the scheduler lists all of this before it decides anything.
    let mut process = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);

    let capped_pods: Api<Pod> = Api::namespaced(client.clone(), &capped_ns.name);
    capped_pods.create(&PostParams::default(), &pod("waits", &scheduler, &cell, 1)).await.expect("pod");
    let gang_pods: Api<Pod> = Api::namespaced(client.clone(), &gang_ns.name);
    for name in ["worker-0", "worker-1"] {
        let mut member = pod(name, &scheduler, &cell, 1);
        member.metadata.labels = Some([("yiyun.io/pod-group".to_string(), "train".to_string())].into());
        gang_pods.create(&PostParams::default(), &member).await.expect("pod");
    }
    let message =
        eventually(wait, "the capped pod waits", || unschedulable_message(&capped_pods, "waits")).await;
    assert!(message.contains(&format!("tenant {capped} at max cpu")), "{message}");
    eventually(wait, "the gang waits", || unschedulable_message(&gang_pods, "worker-0")).await;

    // Paused, the scheduler misses both deletions; then its watches find their resourceVersion
    // compacted away (410 Gone) and must relist.
    process.signal("STOP");
    Api::<yiyun_crds::Tenant>::all(client.clone())
        .delete(&capped, &DeleteParams::default())
        .await
        .expect("delete");
    groups.delete("train", &DeleteParams::default()).await.expect("delete the PodGroup");
    let cluster = LocalCluster::current();
    cluster.compact_etcd();
    cluster.control("stop", "kube-apiserver");
    cluster.control("start", "kube-apiserver");
    process.signal("CONT");

    // The deleted tenant no longer caps its namespace.
    eventually(wait, "the capped pod bound once its tenant is forgotten", || node_of(&capped_pods, "waits"))
        .await;
    // The deleted PodGroup is gone for its pods.
    eventually(wait, "the gang's pods told their PodGroup is gone", || async {
        let message = unschedulable_message(&gang_pods, "worker-0").await?;
        message.contains("does not exist").then_some(())
    })
    .await;
    assert!(process.running(), "the scheduler restarted: {}", process.logs());

    capped_ns.delete().await;
    gang_ns.delete().await;
    let _ = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .delete(&node, &DeleteParams::default())
        .await;
}
