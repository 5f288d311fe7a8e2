//! Node pools against the real apiserver with kwok nodes: topology labels, pool labels and
//! taints, onboarding approval, dedication, conflicts and nodes moving between pools.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use yiyun_crds::{ComputeSite, NodePool};
use yiyun_e2e::{
    InProcessController, client, controller_turn, create_kwok_node, eventually, install_crds, unique,
};

const WAIT: Duration = Duration::from_secs(30);

async fn apply<K>(api: &Api<K>, name: &str, object: Value)
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply("e2e-admin").force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|err| panic!("apply {name}: {err}"));
}

/// The node's taint keys, without the `node.kubernetes.io/*` ones kube-controller-manager adds
/// and removes on its own (a new node is `not-ready` until kwok reports it Ready).
fn taints(node: &Node) -> Vec<String> {
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    taints.into_iter().map(|t| t.key).filter(|k| !k.starts_with("node.kubernetes.io/")).collect()
}

async fn node_where(nodes: &Api<Node>, name: &str, what: &str, check: impl Fn(&Node) -> bool) -> Node {
    eventually(WAIT, &format!("node {name}: {what}"), || async {
        let node = nodes.get(name).await.ok()?;
        check(&node).then_some(node)
    })
    .await
}

async fn pool_ready(pools: &Api<NodePool>, name: &str, status: &str) -> NodePool {
    eventually(WAIT, &format!("pool {name} Ready={status}"), || async {
        let pool = pools.get(name).await.ok()?;
        let ready = pool.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.status.clone();
        (ready == status).then_some(pool)
    })
    .await
}

#[tokio::test]
async fn pool_nodes_are_labelled_onboarded_dedicated_and_moved() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let p = unique("np");
    let (site, pool_a, pool_b) = (format!("{p}-site"), format!("{p}-a"), format!("{p}-b"));
    let (a1, a2, b1) = (format!("{p}-a1"), format!("{p}-a2"), format!("{p}-b1"));
    let sites: Api<ComputeSite> = Api::all(client.clone());
    let pools: Api<NodePool> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());

    apply(&sites, &site, json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "ComputeSite", "metadata": {"name": site},
        "spec": {"region": "gansu", "regionClass": "west", "hub": "Gansu", "city": "庆阳", "powerPricePerKWh": "0.32", "pue": 1.18, "carbonIntensity": 420}}))
    .await;
    apply(&pools, &pool_a, json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "NodePool", "metadata": {"name": pool_a},
        "spec": {"site": site, "nodeSelector": {"matchLabels": {"e2e/pool": pool_a}}, "rack": {"label": "e2e/rack"},
                 "labels": {"yiyun.io/node-class": "general"}, "onboarding": "Manual"}}))
    .await;
    apply(&pools, &pool_b, json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "NodePool", "metadata": {"name": pool_b},
        "spec": {"site": site, "nodeNames": [b1], "rack": {"nodes": {b1.clone(): "r9"}}, "dedicatedTo": "jj-health", "onboarding": "Automatic"}}))
    .await;
    create_kwok_node(&client, &a1, json!({"e2e/pool": pool_a, "e2e/rack": "r1"})).await;
    create_kwok_node(&client, &a2, json!({"e2e/pool": pool_a, "e2e/rack": "r2"})).await;
    create_kwok_node(&client, &b1, json!({})).await;

    // Topology and pool labels; a Manual pool's new node waits behind the onboarding taint.
    let node = node_where(&nodes, &a1, "labelled", |n| n.labels().contains_key("yiyun.io/site")).await;
    let labels = node.labels();
    assert_eq!(labels["topology.kubernetes.io/region"], "gansu");
    assert_eq!(labels["topology.kubernetes.io/zone"], site);
    assert_eq!(labels["yiyun.io/site"], site);
    assert_eq!(labels["yiyun.io/rack"], "r1");
    assert_eq!(labels["yiyun.io/region-class"], "west");
    assert_eq!(labels["yiyun.io/node-class"], "general");
    assert_eq!(taints(&node), ["kwok.x-k8s.io/node", "yiyun.io/onboarding"], "other taints are kept");

    // A dedicated pool: label and taint for its tenant; the rack from the explicit map.
    let node = node_where(&nodes, &b1, "dedicated", |n| n.labels().contains_key("yiyun.io/dedicated")).await;
    assert_eq!(node.labels()["yiyun.io/dedicated"], "jj-health");
    assert_eq!(node.labels()["yiyun.io/rack"], "r9");
    assert!(taints(&node).contains(&"yiyun.io/dedicated".to_string()));

    // The site counts the nodes and racks of its pools.
    eventually(WAIT, "the site's node and rack counts", || async {
        let status = sites.get(&site).await.ok()?.status?;
        let cpu = status.capacity.as_ref()?.cpu.as_ref()?.0.clone();
        (status.nodes == 3 && status.racks == 3 && cpu == "96").then_some(())
    })
    .await;

    // Approval lifts the onboarding taint of that node only.
    let status = pool_ready(&pools, &pool_a, "True").await.status.unwrap();
    assert_eq!((status.nodes.total, status.nodes.onboarding), (2, 2));
    assert_eq!(status.capacity.unwrap().cpu.unwrap().0, "64");
    pools
        .patch(&pool_a, &PatchParams::default(), &Patch::Merge(json!({"spec": {"approvedNodes": [a1]}})))
        .await
        .unwrap();
    node_where(&nodes, &a1, "approved", |n| !taints(n).contains(&"yiyun.io/onboarding".to_string())).await;
    assert!(taints(&nodes.get(&a2).await.unwrap()).contains(&"yiyun.io/onboarding".to_string()));

    // What the pods bound to its nodes request is the pool's and the site's allocation.
    let ns = yiyun_e2e::TestNamespace::create(&client, "alloc").await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut pod = bound_pod("worker", &a1, "web");
    pod.spec.as_mut().expect("a spec").containers[0].resources =
        serde_json::from_value(json!({"requests": {"cpu": "2", "memory": "4Gi"}})).ok();
    pods.create(&PostParams::default(), &pod).await.expect("create a pod");
    eventually(WAIT, "the allocation reported", || async {
        let pool = pools.get(&pool_a).await.ok()?.status?.allocated?;
        let site = sites.get(&site).await.ok()?.status?.allocated?;
        let cpu = |r: &yiyun_crds::NodeResources| r.cpu.as_ref().map(|q| q.0.clone());
        (cpu(&pool).as_deref() == Some("2") && cpu(&site).as_deref() == Some("2")).then_some(())
    })
    .await;
    ns.delete().await;

    // A node two pools select is reported by both and left as it was.
    pools
        .patch(&pool_b, &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodeNames": [b1, a2]}})))
        .await
        .unwrap();
    for pool in [&pool_a, &pool_b] {
        let status = pool_ready(&pools, pool, "False").await.status.unwrap();
        let condition = &status.conditions[0];
        assert_eq!(condition.reason, "NodeConflict");
        assert!(condition.message.contains(&a2), "{}", condition.message);
    }
    assert_eq!(nodes.get(&a2).await.unwrap().labels()["yiyun.io/node-pool"], pool_a);

    // Moved: only pool B selects it now. Pool A's labels and taints go, pool B's come.
    nodes
        .patch(
            &a2,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"e2e/pool": "elsewhere"}}})),
        )
        .await
        .unwrap();
    let moved =
        node_where(&nodes, &a2, "in pool B", |n| n.labels().get("yiyun.io/node-pool") == Some(&pool_b)).await;
    assert!(!moved.labels().contains_key("yiyun.io/node-class"));
    assert_eq!(moved.labels()["yiyun.io/dedicated"], "jj-health");
    assert!(!moved.labels().contains_key("yiyun.io/rack"), "pool B's rack map does not know it");
    assert_eq!(taints(&moved), ["kwok.x-k8s.io/node", "yiyun.io/dedicated"]);
    pool_ready(&pools, &pool_a, "True").await;

    for node in [&a1, &a2, &b1] {
        nodes.delete(node, &DeleteParams::default()).await.unwrap();
    }
    for pool in [&pool_a, &pool_b] {
        pools.delete(pool, &DeleteParams::default()).await.unwrap();
    }
    sites.delete(&site, &DeleteParams::default()).await.unwrap();
    controller.stop().await;
}

/// An east site in Wuhu.
async fn wuhu_site(sites: &Api<ComputeSite>, name: &str) {
    apply(sites, name, json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "ComputeSite", "metadata": {"name": name},
        "spec": {"region": "anhui", "regionClass": "east", "hub": "Yangtze River Delta", "city": "芜湖", "powerPricePerKWh": "0.65", "pue": 1.25, "carbonIntensity": 640}}))
    .await;
}

fn bound_pod(name: &str, node: &str, app: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}]
        }
    }))
    .expect("a valid pod")
}

#[tokio::test]
async fn a_rack_is_drained_through_evictions_and_a_blocking_budget_is_reported() {
    use k8s_openapi::api::{core::v1::Pod, policy::v1::PodDisruptionBudget};
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let p = unique("drain");
    let (site, pool) = (format!("{p}-site"), format!("{p}-pool"));
    let (n1, n2, n3) = (format!("{p}-n1"), format!("{p}-n2"), format!("{p}-n3"));
    let sites: Api<ComputeSite> = Api::all(client.clone());
    let pools: Api<NodePool> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    wuhu_site(&sites, &site).await;
    let pool_spec = |maintenance: Value| {
        json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "NodePool", "metadata": {"name": pool},
            "spec": {"site": site, "nodeNames": [n1, n2, n3], "rack": {"nodes": {n1.clone(): "r1", n2.clone(): "r1", n3.clone(): "r2"}},
                     "onboarding": "Automatic", "maintenance": maintenance}})
    };
    apply(&pools, &pool, pool_spec(json!([]))).await;
    for node in [&n1, &n2, &n3] {
        create_kwok_node(&client, node, json!({})).await;
    }
    let ns = yiyun_e2e::TestNamespace::create(&client, "drain").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for (name, node, app) in
        [("web-1", &n1, "web"), ("web-2", &n2, "web"), ("guarded", &n1, "guarded"), ("elsewhere", &n3, "web")]
    {
        pods.create(&PostParams::default(), &bound_pod(name, node, app)).await.expect("create a pod");
    }
    let budget: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "guard"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}
    }))
    .unwrap();
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &budget)
        .await
        .unwrap();
    for name in ["web-1", "web-2", "guarded", "elsewhere"] {
        eventually(WAIT, &format!("pod {name} running"), || async {
            let pod = pods.get(name).await.ok()?;
            (pod.status?.phase? == "Running").then_some(())
        })
        .await;
    }

    // Rack r1 under maintenance: cordoned, evicted, the guarded pod reported with its budget.
    apply(
        &pools,
        &pool,
        pool_spec(json!([{"name": "ups", "rack": "r1", "reason": "UPS replacement", "drainTimeout": "20s"}])),
    )
    .await;
    for node in [&n1, &n2] {
        node_where(&nodes, node, "cordoned", |n| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true))
            .await;
    }
    assert_ne!(
        nodes.get(&n3).await.unwrap().spec.unwrap().unschedulable,
        Some(true),
        "rack r2 is not touched"
    );
    for name in ["web-1", "web-2"] {
        eventually(WAIT, &format!("pod {name} evicted"), || async {
            pods.get_opt(name)
                .await
                .ok()?
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        })
        .await;
    }
    let status = eventually(WAIT, "the blocked pod reported", || async {
        let pool = pools.get(&pool).await.ok()?;
        let entry = pool.status?.maintenance.into_iter().find(|m| m.name == "ups")?;
        (!entry.blocked.is_empty() && entry.pods_left == 1).then_some(entry)
    })
    .await;
    assert_eq!(status.phase, "Draining");
    assert_eq!((status.blocked[0].pod.as_str(), status.blocked[0].budget.as_str()), ("guarded", "guard"));
    assert!(
        pods.get_opt("elsewhere").await.unwrap().is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    );

    // At the timeout the drain stops and says so; the guarded pod is never force-deleted.
    let timed_out = eventually(Duration::from_secs(60), "the drain to time out", || async {
        let pool = pools.get(&pool).await.ok()?;
        pool.status?.maintenance.into_iter().find(|m| m.name == "ups" && m.phase == "TimedOut")
    })
    .await;
    assert_eq!(timed_out.pods_left, 1);
    assert!(pods.get_opt("guarded").await.unwrap().is_some_and(|p| p.metadata.deletion_timestamp.is_none()));

    // Removing the entry lifts the cordon.
    apply(&pools, &pool, pool_spec(json!([]))).await;
    for node in [&n1, &n2] {
        node_where(&nodes, node, "uncordoned", |n| {
            n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true)
        })
        .await;
    }

    ns.delete().await;
    for node in [&n1, &n2, &n3] {
        nodes.delete(node, &DeleteParams::default()).await.unwrap();
    }
    pools.delete(&pool, &DeleteParams::default()).await.unwrap();
    sites.delete(&site, &DeleteParams::default()).await.unwrap();
    controller.stop().await;
}

#[tokio::test]
async fn an_eviction_the_apiserver_refuses_is_recorded_and_the_drain_still_times_out() {
    use k8s_openapi::api::core::v1::Pod;
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let p = unique("refused");
    let (site, pool, node) = (format!("{p}-site"), format!("{p}-pool"), format!("{p}-n1"));
    let ns = yiyun_e2e::TestNamespace::create(&client, "refused").await;
    // The apiserver answers every eviction in this namespace 403, as an admission policy or an
    // authorizer would.
    let policy = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {{name: {p}}}\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}\n    resourceRules: [{{apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE], resources: [pods/eviction]}}]\n  validations: [{{expression: \"false\", reason: Forbidden, message: \"evictions are frozen\"}}]\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {{name: {p}}}\nspec: {{policyName: {p}, validationActions: [Deny]}}\n",
        ns = ns.name
    );
    let (ok, out) = yiyun_e2e::kubectl_apply(&policy);
    assert!(ok, "{out}");
    let sites: Api<ComputeSite> = Api::all(client.clone());
    let pools: Api<NodePool> = Api::all(client.clone());
    wuhu_site(&sites, &site).await;
    create_kwok_node(&client, &node, json!({})).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // Wait until the policy refuses (the apiserver loads it asynchronously): a probe pod is
    // evicted until then.
    eventually(WAIT, "evictions refused", || async {
        let _ = pods.create(&PostParams::default(), &bound_pod("probe", &node, "probe")).await;
        let err = pods.evict("probe", &Default::default()).await.err()?;
        err.to_string().contains("evictions are frozen").then_some(())
    })
    .await;
    let _ = pods.delete("probe", &DeleteParams::default().grace_period(0)).await;
    pods.create(&PostParams::default(), &bound_pod("frozen", &node, "web")).await.expect("create a pod");
    apply(&pools, &pool, json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "NodePool", "metadata": {"name": pool},
        "spec": {"site": site, "nodeNames": [node], "onboarding": "Automatic",
                 "maintenance": [{"name": "swap", "nodes": [node], "reason": "disk swap", "drainTimeout": "15s"}]}}))
    .await;

    let entry = eventually(WAIT, "the refusal recorded on the pod", || async {
        let pool = pools.get(&pool).await.ok()?;
        let entry = pool.status?.maintenance.into_iter().find(|m| m.name == "swap")?;
        (!entry.blocked.is_empty()).then_some(entry)
    })
    .await;
    assert_eq!(entry.phase, "Draining");
    assert!(entry.started.is_some());
    let blocked = &entry.blocked[0];
    assert_eq!((blocked.pod.as_str(), blocked.budget.as_str()), ("frozen", ""));
    assert!(blocked.reason.starts_with("eviction refused (403 Forbidden)"), "{}", blocked.reason);
    assert!(blocked.reason.contains("evictions are frozen"), "{}", blocked.reason);
    let timed_out = eventually(Duration::from_secs(60), "the drain to time out", || async {
        let pool = pools.get(&pool).await.ok()?;
        pool.status?.maintenance.into_iter().find(|m| m.name == "swap" && m.phase == "TimedOut")
    })
    .await;
    assert_eq!(timed_out.started, entry.started, "the clock started once");
    assert!(timed_out.blocked[0].reason.starts_with("drain timed out after 15s"), "{:?}", timed_out.blocked);

    let _ = yiyun_e2e::kubectl(&["delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", &p]);
    ns.delete().await;
    let _ = Api::<Node>::all(client.clone()).delete(&node, &DeleteParams::default()).await;
    pools.delete(&pool, &DeleteParams::default()).await.unwrap();
    sites.delete(&site, &DeleteParams::default()).await.unwrap();
    controller.stop().await;
}

/// Evictions a running `yiyun controller` has made, from its /metrics.
fn evictions(admin: std::net::SocketAddr) -> Option<u64> {
    let (_, metrics) = yiyun_e2e::http_get(admin, "/metrics")?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("yiyun_controller_writes_total{") && l.contains("kind=\"Eviction\""));
    Some(line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0))
}

fn start_controller_process() -> (std::process::Child, std::net::SocketAddr) {
    let admin: std::net::SocketAddr =
        format!("127.0.0.1:{}", yiyun_e2e::free_port()).parse().expect("an address");
    let child = yiyun_e2e::controller_command(&admin.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start yiyun controller");
    (child, admin)
}

#[tokio::test]
async fn a_controller_killed_mid_drain_resumes_without_evicting_twice() {
    use k8s_openapi::api::core::v1::Pod;
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let p = unique("resume");
    let (site, pool, node) = (format!("{p}-site"), format!("{p}-pool"), format!("{p}-n1"));
    let sites: Api<ComputeSite> = Api::all(client.clone());
    let pools: Api<NodePool> = Api::all(client.clone());
    wuhu_site(&sites, &site).await;
    create_kwok_node(&client, &node, json!({})).await;
    let ns = yiyun_e2e::TestNamespace::create(&client, "resume").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // A finalizer keeps the evicted pod terminating, as a slow shutdown would.
    let mut held = bound_pod("held", &node, "web");
    held.metadata.finalizers = Some(vec!["e2e.yiyun.io/hold".into()]);
    pods.create(&PostParams::default(), &held).await.unwrap();
    pods.create(&PostParams::default(), &bound_pod("free", &node, "web")).await.unwrap();

    let (mut first, admin) = start_controller_process();
    apply(&pools, &pool, json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "NodePool", "metadata": {"name": pool},
        "spec": {"site": site, "nodeNames": [node], "onboarding": "Automatic",
                 "maintenance": [{"name": "swap", "nodes": [node], "reason": "disk swap", "drainTimeout": "10m"}]}}))
    .await;
    eventually(WAIT, "the held pod evicted", || async {
        pods.get("held").await.ok()?.metadata.deletion_timestamp.map(|_| ())
    })
    .await;
    let before = eventually(WAIT, "the first controller's evictions", || async {
        evictions(admin).filter(|n| *n >= 1)
    })
    .await;
    first.kill().expect("SIGKILL the controller");
    first.wait().unwrap();

    let (mut second, admin) = start_controller_process();
    let status = eventually(WAIT, "the resumed drain reported", || async {
        let pool = pools.get(&pool).await.ok()?;
        let entry = pool.status?.maintenance.into_iter().find(|m| m.name == "swap")?;
        (entry.phase == "Draining" && entry.pods_left == 1 && evictions(admin).is_some()).then_some(entry)
    })
    .await;
    // Several drain passes (every 2 s) later, the terminating pod was not evicted again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(evictions(admin), Some(0), "the restarted controller evicted again (first made {before})");
    assert!(status.started.is_some(), "the drain keeps its start time across restarts");

    pods.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    eventually(WAIT, "the drain to finish", || async {
        let pool = pools.get(&pool).await.ok()?;
        pool.status?.maintenance.into_iter().find(|m| m.name == "swap" && m.phase == "Drained").map(|_| ())
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    ns.delete().await;
    Api::<Node>::all(client.clone()).delete(&node, &DeleteParams::default()).await.unwrap();
    pools.delete(&pool, &DeleteParams::default()).await.unwrap();
    sites.delete(&site, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn four_hundred_nodes_in_three_sites_and_twenty_racks_carry_their_topology() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let p = unique("topo");
    let sites: Api<ComputeSite> = Api::all(client.clone());
    let pools: Api<NodePool> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let site_names = [format!("{p}-wuhu-a"), format!("{p}-wuhu-b"), format!("{p}-qingyang")];
    for (i, (site, class)) in site_names.iter().zip(["east", "east", "west"]).enumerate() {
        let others: Vec<Value> = site_names
            .iter()
            .filter(|o| *o != site)
            .map(|o| json!({"to": o, "latencyMs": if i == 2 { 32 } else { 1 }, "bandwidthGbps": 20, "pricePerGB": "0.03"}))
            .collect();
        apply(&sites, site, json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "ComputeSite", "metadata": {"name": site},
            "spec": {"region": if class == "east" { "anhui" } else { "gansu" }, "regionClass": class, "hub": "hub", "city": "city",
                     "powerPricePerKWh": "0.5", "pue": 1.2, "carbonIntensity": 500, "links": others}}))
        .await;
    }
    // Four pools: wuhu-a has two (general and dedicated), the others one each.
    let pool_sites = [&site_names[0], &site_names[0], &site_names[1], &site_names[2]];
    for (i, site) in pool_sites.iter().enumerate() {
        let dedicated = if i == 1 { json!("jj-health") } else { Value::Null };
        apply(
            &pools,
            &format!("{p}-pool{i}"),
            json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "NodePool",
            "metadata": {"name": format!("{p}-pool{i}")},
            "spec": {"site": site, "nodeSelector": {"matchLabels": {"e2e/pool": format!("{p}-pool{i}")}},
                     "rack": {"label": "e2e/rack"}, "onboarding": "Automatic", "dedicatedTo": dedicated}}),
        )
        .await;
    }
    // 400 nodes: 100 per pool, 5 racks per pool (20 racks in all).
    let mut creating = tokio::task::JoinSet::new();
    for n in 0..400 {
        let client = client.clone();
        let (name, pool, rack) =
            (format!("{p}-n{n}"), format!("{p}-pool{}", n % 4), format!("{p}-r{}", n % 20));
        creating.spawn(async move {
            create_kwok_node(&client, &name, json!({"e2e/pool": pool, "e2e/rack": rack})).await
        });
        if creating.len() >= 16 {
            creating.join_next().await.expect("a task").expect("node created");
        }
    }
    while let Some(done) = creating.join_next().await {
        done.expect("node created");
    }

    let prefix = format!("{p}-n");
    let labelled = eventually(Duration::from_secs(60), "400 nodes labelled", || async {
        let listed = nodes.list(&Default::default()).await.ok()?;
        let ours: Vec<Node> =
            listed.items.into_iter().filter(|n| n.name_any().starts_with(&prefix)).collect();
        (ours.len() == 400 && ours.iter().all(|n| n.labels().contains_key("yiyun.io/rack"))).then_some(ours)
    })
    .await;
    for node in &labelled {
        let n: usize = node.name_any().trim_start_matches(&prefix).parse().expect("a node number");
        let labels = node.labels();
        assert_eq!(labels["yiyun.io/site"], *pool_sites[n % 4], "{}", node.name_any());
        assert_eq!(labels["yiyun.io/rack"], format!("{p}-r{}", n % 20));
        assert_eq!(labels["yiyun.io/region-class"], if n % 4 == 3 { "west" } else { "east" });
        assert_eq!(labels.contains_key("yiyun.io/dedicated"), n % 4 == 1);
    }
    let expected = [(&site_names[0], 200, 10), (&site_names[1], 100, 5), (&site_names[2], 100, 5)];
    for (site, count, racks) in expected {
        eventually(WAIT, &format!("site {site} counts"), || async {
            let status = sites.get(site).await.ok()?.status?;
            (status.nodes == count && status.racks == racks).then_some(())
        })
        .await;
    }

    for n in 0..400 {
        nodes.delete(&format!("{p}-n{n}"), &DeleteParams::default()).await.expect("delete node");
    }
    for i in 0..4 {
        pools.delete(&format!("{p}-pool{i}"), &DeleteParams::default()).await.expect("delete pool");
    }
    for site in &site_names {
        sites.delete(site, &DeleteParams::default()).await.expect("delete site");
    }
    controller.stop().await;
}
