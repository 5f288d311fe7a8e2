//! The chart's admission policies against the real apiserver: a tenant's dedicated nodes and
//! allowed regions hold for every pod, not only for pods that ask yiyun-scheduler. These tests
//! label namespaces as the tenancy controller would (its own tests check that it does) and place
//! pods the ways a pod can be placed without yiyun: `spec.nodeName` at creation, or a Binding,
//! which is all any other scheduler can post.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use yiyun_e2e::{
    TestNamespace, client, create_kwok_node, delete_nodes, eventually, install_admission_policies, unique,
};

const WAIT: Duration = Duration::from_secs(30);

/// A namespace labelled as `tenant`'s, under each of `tree` (root first, the tenant last), with
/// extra labels and annotations.
async fn tenant_namespace(
    client: &Client,
    tenant: &str,
    tree: &[&str],
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> TestNamespace {
    let ns = TestNamespace::create(client, tenant).await;
    let mut all = json!({"yiyun.io/tenant": tenant});
    for ancestor in tree {
        all[format!("tree.yiyun.io/{ancestor}")] = json!("true");
    }
    for (key, value) in labels.as_object().into_iter().flatten() {
        all[key] = value.clone();
    }
    let patch = json!({"metadata": {"labels": all, "annotations": annotations}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label the namespace");
    ns
}

/// A pod tolerating every taint (as one trying to reach a dedicated node would), on `node` if
/// given, otherwise left for a scheduler that never runs.
fn pod(name: &str, node: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "schedulerName": "some-other-scheduler",
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "main", "image": "registry.local/app:1"}]
        }
    }))
    .expect("a valid pod")
}

/// Creates the pod; `Err` with the apiserver's message when admission refuses it.
async fn create(pods: &Api<Pod>, name: &str, node: Option<&str>) -> Result<(), String> {
    pods.create(&PostParams::default(), &pod(name, node)).await.map(|_| ()).map_err(|err| err.to_string())
}

/// Binds the pod to `node` as a scheduler does.
async fn bind(pods: &Api<Pod>, name: &str, node: &str) -> Result<(), String> {
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}
    });
    pods.create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding)
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
}

/// Waits until the policies refuse a dry-run pod on `node` in `pods`' namespace with a message
/// containing `refusal`: the apiserver loads new policies asynchronously.
async fn wait_enforced(pods: &Api<Pod>, node: &str, refusal: &str) {
    let probe = pod(&unique("probe"), Some(node));
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    eventually(WAIT, "the admission policies in force", || async {
        let refused = pods.create(&dry_run, &probe).await.err()?;
        refused.to_string().contains(refusal).then_some(())
    })
    .await;
}

#[tokio::test]
async fn another_tenants_dedicated_node_refuses_a_pod_however_it_is_placed() {
    let client = client().await;
    install_admission_policies();
    let owner = unique("health");
    let dedicated = unique("dedicated");
    create_kwok_node(&client, &dedicated, json!({"yiyun.io/dedicated": owner})).await;

    let other = tenant_namespace(&client, &unique("edu"), &["anhui"], json!({}), json!({})).await;
    let others: Api<Pod> = Api::namespaced(client.clone(), &other.name);
    wait_enforced(&others, &dedicated, "is dedicated to tenant").await;
    let refused = create(&others, "by-node-name", Some(&dedicated)).await.expect_err("refused");
    assert!(refused.contains(&format!("node {dedicated} is dedicated to tenant {owner}")), "{refused}");
    // Another scheduler's Binding is refused the same way, and the pod stays unbound.
    create(&others, "by-binding", None).await.expect("an unplaced pod is admitted");
    let refused = bind(&others, "by-binding", &dedicated).await.expect_err("refused");
    assert!(refused.contains("is dedicated to tenant"), "{refused}");
    let pod = others.get("by-binding").await.expect("the pod");
    assert_eq!(pod.spec.and_then(|s| s.node_name), None);

    // The tenant itself, a tenant of its subtree and a namespace outside every tenant may.
    let own = tenant_namespace(&client, &owner, &["anhui", &owner], json!({}), json!({})).await;
    let own_pods: Api<Pod> = Api::namespaced(client.clone(), &own.name);
    create(&own_pods, "by-node-name", Some(&dedicated)).await.expect("the tenant's own pod");
    create(&own_pods, "by-binding", None).await.expect("pod");
    bind(&own_pods, "by-binding", &dedicated).await.expect("the tenant's own pod is bound");
    let team = unique("health-team");
    let child = tenant_namespace(&client, &team, &["anhui", &owner, &team], json!({}), json!({})).await;
    let child_pods: Api<Pod> = Api::namespaced(client.clone(), &child.name);
    create(&child_pods, "by-node-name", Some(&dedicated)).await.expect("a pod of the tenant's subtree");
    let system = TestNamespace::create(&client, "system").await;
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), &system.name);
    create(&system_pods, "daemon", Some(&dedicated)).await.expect("a system namespace's pod");

    for ns in [other, own, child, system] {
        ns.delete().await;
    }
    delete_nodes(&client, &[&dedicated]).await;
}

#[tokio::test]
async fn a_pod_outside_its_tenants_regions_is_refused_at_every_level_of_the_tree() {
    let client = client().await;
    install_admission_policies();
    let east = unique("east");
    let west = unique("west");
    create_kwok_node(
        &client,
        &east,
        json!({"topology.kubernetes.io/region": "anhui", "yiyun.io/region-class": "east"}),
    )
    .await;
    create_kwok_node(
        &client,
        &west,
        json!({"topology.kubernetes.io/region": "gansu", "yiyun.io/region-class": "west"}),
    )
    .await;

    // Only the east: a region class.
    let restricted = json!({"yiyun.io/region-restricted": "true"});
    let tenant = unique("wuhu");
    let ns = tenant_namespace(
        &client,
        &tenant,
        &[&tenant],
        restricted.clone(),
        json!({"yiyun.io/allowed-regions": "east"}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_enforced(&pods, &west, "outside the regions").await;
    let refused = create(&pods, "west", Some(&west)).await.expect_err("refused");
    assert!(
        refused.contains(&format!(
            "node {west} is in region gansu (west), outside the regions tenant {tenant} may use: east"
        )),
        "{refused}"
    );
    create(&pods, "east", Some(&east)).await.expect("the east is allowed");
    create(&pods, "by-binding", None).await.expect("pod");
    let refused = bind(&pods, "by-binding", &west).await.expect_err("refused");
    assert!(refused.contains("outside the regions"), "{refused}");

    // A child naming the west under a parent that allows only the east gets neither.
    let child = unique("jiujiang");
    let child_ns = tenant_namespace(
        &client,
        &child,
        &[&tenant, &child],
        restricted,
        json!({"yiyun.io/allowed-regions": "east;gansu"}),
    )
    .await;
    let child_pods: Api<Pod> = Api::namespaced(client.clone(), &child_ns.name);
    wait_enforced(&child_pods, &west, "outside the regions").await;
    for node in [&east, &west] {
        let refused = create(&child_pods, "p", Some(node)).await.expect_err("refused");
        assert!(refused.contains("may use: east and gansu"), "{refused}");
    }
    // An unrestricted tenant's namespace is not held to any region.
    let free = tenant_namespace(&client, &unique("free"), &[], json!({}), json!({})).await;
    let free_pods: Api<Pod> = Api::namespaced(client.clone(), &free.name);
    create(&free_pods, "west", Some(&west)).await.expect("no regions listed, none refused");

    for ns in [ns, child_ns, free] {
        ns.delete().await;
    }
    delete_nodes(&client, &[&east, &west]).await;
}

#[tokio::test]
async fn the_gpu_assignment_comes_with_the_binding_alone_and_never_changes() {
    let client = client().await;
    install_admission_policies();
    let ns = TestNamespace::create(&client, "gpu").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let forged = |name: &str| -> Pod {
        let mut pod = pod(name, None);
        pod.metadata.annotations =
            Some([("yiyun.io/gpu-assignment".to_string(), "0:1000".to_string())].into());
        pod
    };
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    eventually(WAIT, "the GPU assignment policy in force", || async {
        let refused = pods.create(&dry_run, &forged(&unique("probe"))).await.err()?;
        refused.to_string().contains("gpu-assignment").then_some(())
    })
    .await;
    let refused = pods.create(&PostParams::default(), &forged("forged")).await.expect_err("refused");
    assert!(refused.to_string().contains("cannot be set on a new pod"), "{refused}");

    // yiyun-scheduler places half a GPU; its Binding brings the assignment.
    let cell = unique("cell");
    let node = format!("{cell}-gpu");
    let capacity = json!({"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "2"});
    yiyun_e2e::create_kwok_node_with(&client, &node, json!({"yiyun.io/e2e-cell": cell}), capacity).await;
    let scheduler = unique("yiyun-e2e");
    let _running = yiyun_e2e::SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let mut half: Pod = pod("half", None);
    let spec = half.spec.as_mut().expect("spec");
    spec.scheduler_name = Some(scheduler.clone());
    spec.node_selector = Some([("yiyun.io/e2e-cell".to_string(), cell.clone())].into());
    half.metadata.annotations = Some([("yiyun.io/gpu-milli".to_string(), "500".to_string())].into());
    pods.create(&PostParams::default(), &half).await.expect("create the pod");
    let assignment = eventually(Duration::from_secs(60), "the pod bound with its GPU assignment", || async {
        let pod = pods.get("half").await.ok()?;
        pod.spec.as_ref()?.node_name.as_ref()?;
        pod.metadata.annotations?.get("yiyun.io/gpu-assignment").cloned()
    })
    .await;
    assert!(assignment == "0:500" || assignment == "1:500", "{assignment}");

    // Nobody moves it to another device later; other changes to the pod still go through.
    let moved = if assignment == "0:500" { "1:500" } else { "0:500" };
    let patch = json!({"metadata": {"annotations": {"yiyun.io/gpu-assignment": moved}}});
    let refused =
        pods.patch("half", &PatchParams::default(), &Patch::Merge(&patch)).await.expect_err("refused");
    assert!(refused.to_string().contains("cannot be changed"), "{refused}");
    let removed = json!({"metadata": {"annotations": {"yiyun.io/gpu-assignment": null}}});
    pods.patch("half", &PatchParams::default(), &Patch::Merge(&removed)).await.expect_err("refused");
    let label = json!({"metadata": {"labels": {"tier": "ocr"}}});
    pods.patch("half", &PatchParams::default(), &Patch::Merge(&label)).await.expect("a label may change");

    ns.delete().await;
    delete_nodes(&client, &[&node]).await;
}

#[tokio::test]
async fn only_yiyun_and_cloud_admins_write_the_records_that_lift_a_cordon_or_taint() {
    let client = client().await;
    install_admission_policies();
    // A labelling tool with full rights on nodes, but none on yiyun's node pools.
    let tool = unique("node-labeller");
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {tool}}}\nrules: [{{apiGroups: [\"\"], resources: [nodes], verbs: [get, list, patch, update]}}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {tool}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {tool}}}\nsubjects: [{{kind: User, name: {tool}}}]\n"
    );
    let (ok, out) = yiyun_e2e::kubectl_apply(&role);
    assert!(ok, "{out}");
    let node = unique("cordoned");
    create_kwok_node(&client, &node, json!({})).await;
    // The admin cordons the node by hand.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(&node, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"unschedulable": true}})))
        .await
        .expect("cordon");

    let as_tool: Api<Node> = Api::all(yiyun_e2e::client_as(&tool).await);
    let forged = json!({"metadata": {"annotations": {"yiyun.io/cordoned-for": "ups", "yiyun.io/managed-taints": "node.kubernetes.io/out-of-service:NoExecute"}}});
    let refused = eventually(WAIT, "the node-records policy in force", || async {
        let dry_run = PatchParams { dry_run: true, ..PatchParams::default() };
        let err = as_tool.patch(&node, &dry_run, &Patch::Merge(&forged)).await.err()?.to_string();
        err.contains("yiyun's record").then_some(err)
    })
    .await;
    assert!(
        refused.contains(
            "the node annotations yiyun.io/managed-taints, yiyun.io/cordoned-for are yiyun's record"
        ),
        "{refused}"
    );
    let label = json!({"metadata": {"labels": {"disk": "ssd"}}});
    as_tool
        .patch(&node, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("other changes go through");
    let annotations = nodes.get(&node).await.expect("node").metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("yiyun.io/cordoned-for"));

    let _ = yiyun_e2e::kubectl(&["delete", "clusterrolebinding,clusterrole", &tool]);
    delete_nodes(&client, &[&node]).await;
}
