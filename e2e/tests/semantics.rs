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

    /// The pod's explanation once it says `text` (it may first wait for something else, e.g.
    /// its claim to be made from a template).
    async fn waits_saying(&self, name: &str, text: &str) -> String {
        let pods = self.pods();
        eventually(WAIT, &format!("{name} explained with {text:?}"), || async {
            unschedulable_message(&pods, name).await.filter(|message| message.contains(text))
        })
        .await
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

/// Applies the objects a volume test needs (the test deletes the cluster-scoped ones at its end).
fn apply_all(objects: &[serde_json::Value]) {
    for object in objects {
        let (ok, out) = yiyun_e2e::kubectl_apply(&object.to_string());
        assert!(ok, "apply {object}: {out}");
    }
}

fn local_volume(name: &str, class: &str, node: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": class,
        "local": {"path": "/mnt/disk"},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec})
}

fn claim(namespace: &str, name: &str, class: &str, modes: &[&str]) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
        "spec": {"storageClassName": class, "accessModes": modes, "resources": {"requests": {"storage": "1Gi"}}}})
}

fn with_claim(claim: &str) -> serde_json::Value {
    serde_json::json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]})
}

#[tokio::test]
async fn claims_waiting_for_their_first_consumer_are_bound_where_the_pod_goes_and_bound_volumes_hold_their_node()
 {
    let cell = Cell::start("volumes").await;
    let ns = cell.ns.name.clone();
    let (local, zonal) = (format!("{}-local", cell.name), format!("{}-zonal", cell.name));
    let (on_b, wffc_a) = (format!("{}-pv-b", cell.name), format!("{}-pv-a", cell.name));
    apply_all(&[
        serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": local},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}),
        serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": zonal},
            "provisioner": "disk.csi.example.com", "volumeBindingMode": "WaitForFirstConsumer",
            "allowedTopologies": [{"matchLabelExpressions": [{"key": ZONE, "values": ["b"]}]}]}),
        // Already bound to its claim, on node b.
        local_volume(
            &on_b,
            &local,
            &cell.nodes[1],
            serde_json::json!({"claimRef": {"namespace": ns, "name": "bound"}}),
        ),
        // Free, on node a: the waiting claim must be bound to it, so its pod must go to a.
        local_volume(&wffc_a, &local, &cell.nodes[0], serde_json::json!({})),
        {
            let mut bound = claim(&ns, "bound", &local, &["ReadWriteOnce"]);
            bound["spec"]["volumeName"] = on_b.clone().into();
            bound
        },
        claim(&ns, "waiting", &local, &["ReadWriteOnce"]),
        claim(&ns, "provisioned", &zonal, &["ReadWriteOnce"]),
        claim(&ns, "immediate", "no-such-class", &["ReadWriteOnce"]),
    ]);
    cell.create("uses-bound", serde_json::json!({}), with_claim("bound")).await;
    assert_eq!(
        cell.bound("uses-bound").await,
        cell.nodes[1],
        "the volume's node affinity holds the pod on b"
    );
    cell.create("uses-waiting", serde_json::json!({}), with_claim("waiting")).await;
    assert_eq!(cell.bound("uses-waiting").await, cell.nodes[0], "the only free volume is on a");
    let volumes: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(cell.client.clone());
    let claim_ref =
        volumes.get(&wffc_a).await.expect("the volume").spec.and_then(|s| s.claim_ref).expect("claimed");
    assert_eq!(
        (claim_ref.namespace.as_deref(), claim_ref.name.as_deref()),
        (Some(ns.as_str()), Some("waiting"))
    );
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(cell.client.clone(), &ns);
    eventually(WAIT, "the volume controller binds the claim", || async {
        let claim = claims.get("waiting").await.ok()?;
        (claim.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    cell.create("uses-provisioned", serde_json::json!({}), with_claim("provisioned")).await;
    assert_eq!(cell.bound("uses-provisioned").await, cell.nodes[1], "the class provisions in zone b only");
    let annotations =
        claims.get("provisioned").await.expect("claim").metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("volume.kubernetes.io/selected-node"), Some(&cell.nodes[1]));
    cell.create("uses-missing", serde_json::json!({}), with_claim("missing")).await;
    let message = cell.waits_because("uses-missing").await;
    assert!(message.contains("persistentvolumeclaim \"missing\" not found"), "{message}");
    cell.create("uses-immediate", serde_json::json!({}), with_claim("immediate")).await;
    let message = cell.waits_because("uses-immediate").await;
    assert!(message.contains("storage class \"no-such-class\" is not found"), "{message}");
    // A second waiting claim of the class finds no free volume left anywhere.
    apply_all(&[claim(&ns, "late", &local, &["ReadWriteOnce"])]);
    cell.create("uses-late", serde_json::json!({}), with_claim("late")).await;
    let message = cell.waits_because("uses-late").await;
    assert!(message.contains("2 didn't find available persistent volumes to bind"), "{message}");
    for name in [&on_b, &wffc_a] {
        let _ = volumes.delete(name, &Default::default()).await;
    }
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(cell.client.clone());
    for name in [&local, &zonal] {
        let _ = classes.delete(name, &Default::default()).await;
    }
    cell.stop().await;
}

#[tokio::test]
async fn read_write_once_pod_claims_and_csi_attach_limits_are_kept() {
    let cell = Cell::start("attach").await;
    let ns = cell.ns.name.clone();
    let driver = format!("{}.csi.example.com", cell.name);
    let mut objects = Vec::new();
    for node in &cell.nodes {
        objects.push(serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": node},
            "spec": {"drivers": [{"name": driver, "nodeID": node, "allocatable": {"count": 1}}]}}));
    }
    let mut volume_names = Vec::new();
    for index in 0..3 {
        let name = format!("{}-csi-{index}", cell.name);
        objects.push(serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOncePod"], "storageClassName": "",
                "csi": {"driver": driver, "volumeHandle": format!("handle-{index}")},
                "claimRef": {"namespace": ns, "name": format!("disk-{index}")}}}));
        let mut claim = claim(&ns, &format!("disk-{index}"), "", &["ReadWriteOncePod"]);
        claim["spec"]["volumeName"] = name.clone().into();
        objects.push(claim);
        volume_names.push(name);
    }
    apply_all(&objects);
    cell.create("disk-0-user", serde_json::json!({}), with_claim("disk-0")).await;
    cell.bound("disk-0-user").await;
    cell.create("disk-0-second", serde_json::json!({}), with_claim("disk-0")).await;
    let message = cell.waits_because("disk-0-second").await;
    assert!(message.contains("ReadWriteOncePod access mode is already in use"), "{message}");
    cell.create("disk-1-user", serde_json::json!({}), with_claim("disk-1")).await;
    let first = cell.bound("disk-0-user").await;
    let second = cell.bound("disk-1-user").await;
    assert_ne!(first, second, "one attachment per node for the driver");
    cell.create("disk-2-user", serde_json::json!({}), with_claim("disk-2")).await;
    let message = cell.waits_because("disk-2-user").await;
    assert!(message.contains("2 exceed max volume count"), "{message}");
    let volumes: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(cell.client.clone());
    for name in &volume_names {
        let _ = volumes.delete(name, &Default::default()).await;
    }
    let csi_nodes: Api<k8s_openapi::api::storage::v1::CSINode> = Api::all(cell.client.clone());
    for node in &cell.nodes {
        let _ = csi_nodes.delete(node, &Default::default()).await;
    }
    cell.stop().await;
}

#[tokio::test]
async fn a_claim_from_a_template_gets_a_whole_device_selected_by_cel_and_a_second_waits() {
    let cell = Cell::start("dra").await;
    let ns = cell.ns.name.clone();
    let driver = format!("{}.gpu.example.com", cell.name);
    let (class, slice) = (format!("{}-gpu", cell.name), format!("{}-slice", cell.name));
    apply_all(&[
        serde_json::json!({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": class},
            "spec": {"selectors": [{"cel": {"expression": format!("device.driver == \"{driver}\"")}}]}}),
        // One A100 and one H800 on node b; the claims ask for an H800.
        serde_json::json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": slice},
        "spec": {"driver": driver, "nodeName": cell.nodes[1], "pool": {"name": cell.nodes[1], "resourceSliceCount": 1},
            "devices": [
                {"name": "gpu-0", "attributes": {"model": {"string": "A100"}}},
                {"name": "gpu-1", "attributes": {"model": {"string": "H800"}}}
            ]}}),
        serde_json::json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "h800", "namespace": ns},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": class,
                "selectors": [{"cel": {"expression": format!("device.attributes[\"{driver}\"].model == \"H800\"")}}]}}]}}}}),
    ]);
    let with_template = serde_json::json!({
        "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "h800"}],
        "containers": [{"name": "main", "image": "registry.local/train:1",
            "resources": {"requests": {"cpu": "100m"}, "claims": [{"name": "gpu"}]}}]
    });
    cell.create("train-0", serde_json::json!({}), with_template.clone()).await;
    assert_eq!(cell.bound("train-0").await, cell.nodes[1], "the only H800 is on b");
    let pod = cell.pods().get("train-0").await.expect("the pod");
    let claim_name = pod
        .status
        .and_then(|s| s.resource_claim_statuses)
        .and_then(|statuses| statuses.into_iter().next())
        .and_then(|status| status.resource_claim_name)
        .expect("the claim made from the template");
    let claims: Api<k8s_openapi::api::resource::v1::ResourceClaim> =
        Api::namespaced(cell.client.clone(), &ns);
    let status = claims.get(&claim_name).await.expect("the claim").status.expect("allocated");
    let results = status.allocation.and_then(|a| a.devices).and_then(|d| d.results).expect("devices");
    assert_eq!(
        results.iter().map(|r| r.device.as_str()).collect::<Vec<_>>(),
        vec!["gpu-1"],
        "the H800, by CEL"
    );
    let reserved = status.reserved_for.unwrap_or_default();
    assert_eq!(reserved.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["train-0"]);
    cell.create("train-1", serde_json::json!({}), with_template).await;
    let message = cell.waits_saying("train-1", "cannot allocate all claims").await;
    assert!(message.contains("2 cannot allocate all claims"), "{message}");
    let slices: Api<k8s_openapi::api::resource::v1::ResourceSlice> = Api::all(cell.client.clone());
    let _ = slices.delete(&slice, &Default::default()).await;
    let classes: Api<k8s_openapi::api::resource::v1::DeviceClass> = Api::all(cell.client.clone());
    let _ = classes.delete(&class, &Default::default()).await;
    cell.stop().await;
}
