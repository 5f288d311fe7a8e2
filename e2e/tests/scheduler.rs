//! yiyun-scheduler against the real apiserver with kwok nodes. Every test runs its own
//! scheduler under its own name, on nodes of its own (a `yiyun.io/e2e-cell` label its pods
//! select), so tests run side by side on one cluster.

use std::time::Duration;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Node, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use yiyun_e2e::{
    FIELD_MANAGER, SchedulerProcess, TestNamespace, apply_yiyun, client, create_kwok_node_with, delete_nodes,
    eventually, install_crds, join_tenant, kubectl, node_of, tenant_with_max_cpu, unique,
    unschedulable_message, wait_ready,
};

const CELL: &str = "yiyun.io/e2e-cell";
const WAIT: Duration = Duration::from_secs(60);

/// `count` kwok nodes of this cell, `per_rack` to a rack, each with 32 CPUs and `gpus` GPUs.
async fn nodes(client: &Client, cell: &str, count: usize, per_rack: usize, gpus: u32) -> Vec<String> {
    let mut names = Vec::new();
    for index in 0..count {
        let name = format!("{cell}-n{index:03}");
        let labels = serde_json::json!({
            CELL: cell, "yiyun.io/site": "qingyang", "topology.kubernetes.io/region": "gansu",
            "yiyun.io/rack": format!("rack-{:02}", index / per_rack),
        });
        let capacity = serde_json::json!({"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string()});
        create_kwok_node_with(client, &name, labels, capacity).await;
        names.push(name);
    }
    wait_ready(client, &names).await;
    names
}

/// A pod for `scheduler` on the cell's nodes.
fn pod(name: &str, scheduler: &str, cell: &str, cpu: &str, gpus: u32) -> Pod {
    let mut requests = serde_json::json!({"cpu": cpu, "memory": "1Gi"});
    if gpus > 0 {
        requests["nvidia.com/gpu"] = gpus.to_string().into();
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "schedulerName": scheduler,
            "nodeSelector": {CELL: cell},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": "registry.local/app:1", "resources": {"requests": requests, "limits": if gpus > 0 { serde_json::json!({"nvidia.com/gpu": gpus.to_string()}) } else { serde_json::json!({}) }}}]
        }
    }))
    .expect("a valid pod")
}

#[tokio::test]
async fn pods_are_bound_and_an_impossible_one_is_explained() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "sched").await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 3, 3, 0).await;
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for index in 0..6 {
        pods.create(&PostParams::default(), &pod(&format!("web-{index}"), &scheduler, &cell, "1", 0))
            .await
            .expect("create pod");
    }
    pods.create(&PostParams::default(), &pod("huge", &scheduler, &cell, "1000", 0))
        .await
        .expect("create pod");
    for index in 0..6 {
        let name = format!("web-{index}");
        let node = eventually(WAIT, &format!("{name} bound"), || node_of(&pods, &name)).await;
        assert!(names.contains(&node), "{name} went to {node}, outside the cell");
    }
    let message = eventually(WAIT, "huge explained", || unschedulable_message(&pods, "huge")).await;
    assert!(message.contains("3 insufficient cpu"), "{message}");
    assert!(message.starts_with("0/"), "{message}");
    let describe = kubectl(&["describe", "pod", "huge", "-n", &ns.name]);
    let describe = String::from_utf8_lossy(&describe.stdout).to_string();
    assert!(describe.contains("FailedScheduling"), "{describe}");
    assert!(describe.contains("insufficient cpu"), "{describe}");
    delete_nodes(&client, &names).await;
}

#[tokio::test]
async fn a_gang_of_16_lands_in_one_rack_among_400_nodes() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "gang").await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 400, 20, 8).await;
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // Some single-GPU pods first, so racks differ.
    for index in 0..30 {
        pods.create(&PostParams::default(), &pod(&format!("small-{index}"), &scheduler, &cell, "1", 1))
            .await
            .expect("pod");
    }
    let group = serde_json::json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "PodGroup",
        "metadata": {"name": "train", "namespace": ns.name},
        "spec": {"minMember": 16, "topology": {"level": "rack", "mode": "required"}, "scheduleTimeoutSeconds": 600}
    });
    let groups: Api<yiyun_crds::PodGroup> = Api::namespaced(client.clone(), &ns.name);
    groups
        .patch("train", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&group))
        .await
        .expect("create the PodGroup");
    for index in 0..16 {
        let mut member = pod(&format!("train-{index}"), &scheduler, &cell, "4", 4);
        member.metadata.labels = Some([("yiyun.io/pod-group".to_string(), "train".to_string())].into());
        pods.create(&PostParams::default(), &member).await.expect("member");
    }
    let nodes_api: Api<Node> = Api::all(client.clone());
    let mut racks = std::collections::BTreeSet::new();
    for index in 0..16 {
        let name = format!("train-{index}");
        let node = eventually(WAIT, &format!("{name} bound"), || node_of(&pods, &name)).await;
        let node = nodes_api.get(&node).await.expect("the node");
        racks.insert(
            node.metadata.labels.unwrap_or_default().get("yiyun.io/rack").cloned().unwrap_or_default(),
        );
    }
    assert_eq!(racks.len(), 1, "the gang is in one rack: {racks:?}");
    let placed = eventually(WAIT, "PodGroup status", || async {
        let status = groups.get("train").await.ok()?.status?;
        (status.placed == 16).then_some(status)
    })
    .await;
    assert!(matches!(
        placed.phase,
        yiyun_crds::PodGroupPhase::Scheduled | yiyun_crds::PodGroupPhase::Running
    ));
    // A gang that fits no rack waits whole and says why.
    groups
        .patch(
            "huge",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&serde_json::json!({
                "apiVersion": "yiyun.io/v1alpha1", "kind": "PodGroup",
                "metadata": {"name": "huge", "namespace": ns.name},
                "spec": {"minMember": 25, "topology": {"level": "rack", "mode": "required"}}
            })),
        )
        .await
        .expect("second PodGroup");
    for index in 0..25 {
        let mut member = pod(&format!("huge-{index}"), &scheduler, &cell, "1", 8);
        member.metadata.labels = Some([("yiyun.io/pod-group".to_string(), "huge".to_string())].into());
        pods.create(&PostParams::default(), &member).await.expect("member");
    }
    // Until all 25 members exist it says so; then what the gang lacks.
    let message = eventually(WAIT, "huge gang explained", || async {
        unschedulable_message(&pods, "huge-0").await.filter(|message| message.contains("gang needs"))
    })
    .await;
    assert!(message.ends_with("gang needs 25 in one rack, best rack has 20"), "{message}");
    let bound = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .iter()
        .filter(|p| {
            p.metadata.name.as_deref().is_some_and(|n| n.starts_with("huge-"))
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        })
        .count();
    assert_eq!(bound, 0, "no member of a waiting gang is bound");
    delete_nodes(&client, &names).await;
}

#[tokio::test]
async fn a_job_with_8_parallel_pods_is_scheduled() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "job").await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 4, 4, 0).await;
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let template = pod("unused", &scheduler, &cell, "1", 0);
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "etl"},
        "spec": {
            "parallelism": 8, "completions": 8,
            "template": {"spec": {
                "schedulerName": scheduler, "restartPolicy": "Never",
                "nodeSelector": {CELL: cell},
                "tolerations": template.spec.as_ref().and_then(|s| s.tolerations.clone()),
                "containers": [{"name": "etl", "image": "registry.local/etl:1", "resources": {"requests": {"cpu": "1"}}}]
            }}
        }
    }))
    .expect("a valid job");
    Api::<Job>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &job)
        .await
        .expect("create job");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    eventually(WAIT, "8 job pods bound", || async {
        let list = pods.list(&ListParams::default().labels("job-name=etl")).await.ok()?;
        let bound = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        (bound >= 8).then_some(())
    })
    .await;
    delete_nodes(&client, &names).await;
}

#[tokio::test]
async fn a_tenant_at_its_max_waits_until_a_pod_finishes_or_the_tenant_is_deleted() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "quota").await;
    let tenant = tenant_with_max_cpu(&client, "2").await;
    let tenants: Api<yiyun_crds::Tenant> = Api::all(client.clone());
    join_tenant(&client, &ns.name, &tenant).await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 2, 2, 0).await;
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("first", &scheduler, &cell, "2", 0)).await.expect("pod");
    eventually(WAIT, "first bound", || node_of(&pods, "first")).await;
    pods.create(&PostParams::default(), &pod("second", &scheduler, &cell, "1", 0)).await.expect("pod");
    let message = eventually(WAIT, "second waits", || unschedulable_message(&pods, "second")).await;
    assert_eq!(message, format!("tenant {tenant} at max cpu 2/2"));
    pods.delete("first", &DeleteParams::default().grace_period(0)).await.expect("delete first");
    eventually(WAIT, "second bound once first is gone", || node_of(&pods, "second")).await;
    pods.create(&PostParams::default(), &pod("third", &scheduler, &cell, "2", 0)).await.expect("pod");
    let message = eventually(WAIT, "third waits", || unschedulable_message(&pods, "third")).await;
    assert_eq!(message, format!("tenant {tenant} at max cpu 1/2"));
    // Deleted, the tenant bounds its namespace's pods no more.
    tenants.delete(&tenant, &DeleteParams::default()).await.expect("delete the tenant");
    eventually(WAIT, "third bound once the tenant is gone", || node_of(&pods, "third")).await;
    delete_nodes(&client, &names).await;
}

#[tokio::test]
async fn a_pod_bound_before_its_namespace_joined_a_tenant_counts_against_it() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "late").await;
    let tenant = tenant_with_max_cpu(&client, "2").await;
    let tenants: Api<yiyun_crds::Tenant> = Api::all(client.clone());
    let cell = unique("cell");
    let names = nodes(&client, &cell, 2, 2, 0).await;
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("first", &scheduler, &cell, "2", 0)).await.expect("pod");
    eventually(WAIT, "first bound", || node_of(&pods, "first")).await;
    // Only now does the namespace join the tenant: the pod already bound there counts.
    join_tenant(&client, &ns.name, &tenant).await;
    pods.create(&PostParams::default(), &pod("second", &scheduler, &cell, "1", 0)).await.expect("pod");
    let message = eventually(WAIT, "second waits", || unschedulable_message(&pods, "second")).await;
    assert_eq!(message, format!("tenant {tenant} at max cpu 2/2"));
    tenants.delete(&tenant, &DeleteParams::default()).await.expect("delete the tenant");
    delete_nodes(&client, &names).await;
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_is_killed() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ha").await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 2, 2, 0).await;
    let scheduler = unique("yiyun-e2e");
    let lease = unique("lease");
    let args = ["--lease-namespace", "default", "--lease-name", lease.as_str()];
    let mut first = SchedulerProcess::start(&scheduler, &args);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("before", &scheduler, &cell, "1", 0)).await.expect("pod");
    eventually(WAIT, "bound by the first scheduler", || node_of(&pods, "before")).await;
    let mut second = SchedulerProcess::start(&scheduler, &args);
    eventually(WAIT, "the second stands by", || async {
        second.logs().contains("standing by").then_some(())
    })
    .await;
    first.kill();
    let killed = std::time::Instant::now();
    for index in 0..5 {
        pods.create(&PostParams::default(), &pod(&format!("after-{index}"), &scheduler, &cell, "1", 0))
            .await
            .expect("pod");
    }
    for index in 0..5 {
        let name = format!("after-{index}");
        eventually(WAIT, &format!("{name} bound by the standby"), || node_of(&pods, &name)).await;
    }
    // Reported, not asserted: how long the cluster went without a scheduler.
    eprintln!("handover: all pods bound {:.1} s after the leader was killed", killed.elapsed().as_secs_f64());
    let logs = second.logs();
    assert!(logs.contains("became the leader"), "{logs}");
    assert!(!logs.contains("binding failed"), "no binding was refused (none bound twice): {logs}");
    second.kill();
    delete_nodes(&client, &names).await;
}

/// Pods of the test's own shape (1.25 CPUs and one GPU, which no other test asks for) in the
/// workload measure kept in `kept`, if it holds any.
fn own_shape_pods(kept: &ConfigMap) -> Option<u64> {
    let text = kept.data.as_ref()?.get("measure.json")?;
    let saved: serde_json::Value = serde_json::from_str(text).ok()?;
    saved["shapes"]
        .as_array()?
        .iter()
        .find(|shape| shape["cpuMilli"] == 1250 && shape["gpus"] == 1 && shape["gpuMilli"] == 1000)
        .and_then(|shape| shape["pods"].as_u64())
}

#[tokio::test]
async fn a_restarted_scheduler_recalls_the_workload_it_measured_and_mends_a_broken_one() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "measure").await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 2, 2, 8).await;
    let scheduler = unique("yiyun-e2e");
    let lease = unique("lease");
    let args = [
        "--leader-elect=false",
        "--lease-namespace",
        "default",
        "--lease-name",
        lease.as_str(),
        "--workload-save-seconds",
        "1",
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let place = |name: String| {
        let pods = pods.clone();
        let (scheduler, cell) = (scheduler.clone(), cell.clone());
        async move {
            pods.create(&PostParams::default(), &pod(&name, &scheduler, &cell, "1250m", 1))
                .await
                .expect("pod");
            eventually(WAIT, &format!("{name} bound"), || node_of(&pods, &name)).await;
        }
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let kept_name = format!("{lease}-workload");
    let saved_with = |pods: u64| {
        let (configmaps, kept_name) = (configmaps.clone(), kept_name.clone());
        async move {
            eventually(WAIT, &format!("{pods} pods of the shape saved"), || async {
                let kept = configmaps.get_opt(&kept_name).await.ok()??;
                (own_shape_pods(&kept) == Some(pods)).then_some(())
            })
            .await;
        }
    };

    let mut first = SchedulerProcess::start(&scheduler, &args);
    for index in 0..5 {
        place(format!("first-{index}")).await;
    }
    saved_with(5).await;
    first.kill();

    // A new scheduler scores its first pod by what the first one measured, and does not count
    // the pods still running a second time.
    let mut second = SchedulerProcess::start(&scheduler, &args);
    place("second".to_string()).await;
    let logs = second.logs();
    assert!(logs.contains("recalled the workload measured before"), "{logs}");
    saved_with(6).await;
    second.kill();

    // A measure that cannot be read is reported by its field and scheduling goes on, measuring
    // afresh from the pods running; the next save writes a readable measure over it.
    let broken = serde_json::json!({"data": {"measure.json":
        r#"{"version": 1, "shapes": [{"cpuMilli": 1250, "gpus": 1, "gpuMilli": 1500, "pods": 5}]}"#}});
    configmaps.patch(&kept_name, &PatchParams::default(), &Patch::Merge(&broken)).await.expect("break it");
    let mut third = SchedulerProcess::start(&scheduler, &args);
    place("third".to_string()).await;
    let logs = third.logs();
    assert!(logs.contains("shapes[0].gpuMilli: 1500 is more than a GPU (1000)"), "{logs}");
    saved_with(7).await;
    third.kill();
    let _ = configmaps.delete(&kept_name, &DeleteParams::default()).await;
    delete_nodes(&client, &names).await;
}

#[tokio::test]
async fn tolerating_the_dedication_taint_does_not_open_another_tenants_nodes() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "dedicated").await;
    let tenant = tenant_with_max_cpu(&client, "100").await;
    join_tenant(&client, &ns.name, &tenant).await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 1, 1, 0).await;
    let dedication = serde_json::json!({
        "metadata": {"labels": {"yiyun.io/dedicated": "some-other-tenant"}},
        "spec": {"taints": [
            {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"},
            {"key": "yiyun.io/dedicated", "value": "some-other-tenant", "effect": "NoSchedule"}
        ]}
    });
    Api::<Node>::all(client.clone())
        .patch(&names[0], &PatchParams::default(), &Patch::Merge(&dedication))
        .await
        .expect("dedicate the node");
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut intruder = pod("intruder", &scheduler, &cell, "1", 0);
    let tolerate_all = serde_json::json!({"operator": "Exists"});
    intruder.spec.as_mut().expect("spec").tolerations =
        Some(vec![serde_json::from_value(tolerate_all).expect("a toleration")]);
    pods.create(&PostParams::default(), &intruder).await.expect("pod");
    let message = eventually(WAIT, "intruder explained", || unschedulable_message(&pods, "intruder")).await;
    assert!(message.contains("dedicated to tenant some-other-tenant"), "{message}");
    assert_eq!(node_of(&pods, "intruder").await, None);
    Api::<yiyun_crds::Tenant>::all(client.clone())
        .delete(&tenant, &DeleteParams::default())
        .await
        .expect("delete the tenant");
    delete_nodes(&client, &names).await;
}

#[tokio::test]
async fn a_paused_leader_is_replaced_only_after_its_lease_and_binds_nothing_once_resumed() {
    use k8s_openapi::api::coordination::v1::Lease;
    let client = client().await;
    let ns = TestNamespace::create(&client, "pause").await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 2, 2, 0).await;
    let scheduler = unique("yiyun-e2e");
    let lease = unique("lease");
    let (lease_seconds, retry_seconds) = (6u64, 1u64);
    let (first_id, second_id) = (unique("first"), unique("second"));
    let args = |identity: &str| -> Vec<String> {
        let mut args: Vec<String> =
            ["--lease-namespace", "default", "--lease-name", &lease, "--identity", identity]
                .map(String::from)
                .to_vec();
        for (flag, value) in [
            ("--lease-duration-seconds", lease_seconds),
            ("--renew-deadline-seconds", 4),
            ("--retry-period-seconds", retry_seconds),
        ] {
            args.extend([flag.to_string(), value.to_string()]);
        }
        args
    };
    let (first_args, second_args) = (args(&first_id), args(&second_id));
    let (first_args, second_args): (Vec<&str>, Vec<&str>) =
        (first_args.iter().map(String::as_str).collect(), second_args.iter().map(String::as_str).collect());
    let cluster = yiyun_e2e::LocalCluster::current();
    let (first_user, second_user) = (format!("{first_id}-user"), format!("{second_id}-user"));
    let mut first = SchedulerProcess::start_as(&scheduler, &first_args, &cluster.kubeconfig_as(&first_user));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("before", &scheduler, &cell, "1", 0)).await.expect("pod");
    eventually(WAIT, "bound by the first scheduler", || node_of(&pods, "before")).await;
    let mut second =
        SchedulerProcess::start_as(&scheduler, &second_args, &cluster.kubeconfig_as(&second_user));
    eventually(WAIT, "the second stands by", || async {
        second.logs().contains("standing by").then_some(())
    })
    .await;

    // Paused, the leader stops renewing; pods keep arriving.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    first.signal("STOP");
    let held = leases.get(&lease).await.expect("the lease").spec.expect("spec");
    assert_eq!(held.holder_identity.as_deref(), Some(first_id.as_str()));
    let last_renewal = held.renew_time.expect("renewed").0;
    for index in 0..5 {
        pods.create(&PostParams::default(), &pod(&format!("during-{index}"), &scheduler, &cell, "1", 0))
            .await
            .expect("pod");
    }
    for index in 0..5 {
        let name = format!("during-{index}");
        eventually(WAIT, &format!("{name} bound by the standby"), || node_of(&pods, &name)).await;
    }
    let taken = leases.get(&lease).await.expect("the lease").spec.expect("spec");
    assert_eq!(taken.holder_identity.as_deref(), Some(second_id.as_str()));
    let acquired = taken.acquire_time.expect("acquired").0;
    // The standby waited out the lease from the last renewal it saw, and not much longer.
    let handover = acquired.duration_since(last_renewal).as_secs_f64();
    assert!(
        handover >= lease_seconds as f64,
        "taken {handover:.2} s after the last renewal, before the lease of {lease_seconds} s ran out"
    );
    let latest = (lease_seconds + 3 * retry_seconds + 5) as f64;
    assert!(handover <= latest, "taken {handover:.2} s after the last renewal (at most {latest} s expected)");

    // Resumed, the old leader finds its renew deadline long past: it writes nothing and stops.
    first.signal("CONT");
    let resumed = std::time::Instant::now();
    while first.running() {
        assert!(resumed.elapsed() < WAIT, "the resumed leader still runs: {}", first.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(first.logs().contains("lost the leader lease"), "{}", first.logs());
    for index in 0..5 {
        pods.create(&PostParams::default(), &pod(&format!("after-{index}"), &scheduler, &cell, "1", 0))
            .await
            .expect("pod");
    }
    for index in 0..5 {
        let name = format!("after-{index}");
        eventually(WAIT, &format!("{name} bound"), || node_of(&pods, &name)).await;
    }
    // The apiserver's audit log says who bound what: each replica acts as its own user.
    let bindings = cluster.audited_bindings(&ns.name);
    for (pod, user, code) in &bindings {
        if pod != "before" {
            assert_ne!(user, &first_user, "the old leader posted a binding of {pod} (answered {code})");
        }
    }
    for index in 0..5 {
        for name in [format!("during-{index}"), format!("after-{index}")] {
            let by =
                bindings.iter().find(|(pod, _, code)| *pod == name && *code == 201).map(|(_, user, _)| user);
            assert_eq!(by, Some(&second_user), "who bound {name}: {bindings:?}");
        }
    }
    second.kill();
    delete_nodes(&client, &names).await;
}

#[tokio::test]
async fn a_batch_pod_goes_west_and_a_realtime_pod_stays_east() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "east-west").await;
    let (east, west) = (unique("wuhu"), unique("qingyang"));
    let site = |name: &str, class: &str, region: &str, price: &str, pue: f64, links: serde_json::Value| {
        serde_json::json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "ComputeSite", "metadata": {"name": name},
            "spec": {"region": region, "regionClass": class, "hub": "e2e", "city": "e2e", "powerPricePerKWh": price,
                     "pue": pue, "carbonIntensity": 500, "links": links}})
    };
    let link =
        serde_json::json!([{"to": west, "latencyMs": 28, "bandwidthGbps": 100, "pricePerGB": "0.005"}]);
    apply_yiyun::<yiyun_crds::ComputeSite>(&client, &east, site(&east, "east", "anhui", "0.62", 1.4, link))
        .await;
    apply_yiyun::<yiyun_crds::ComputeSite>(
        &client,
        &west,
        site(&west, "west", "gansu", "0.28", 1.15, serde_json::json!([])),
    )
    .await;
    let cell = unique("cell");
    let mut names = Vec::new();
    for site in [&east, &west] {
        let name = format!("{cell}-{site}");
        let labels = serde_json::json!({CELL: cell, "yiyun.io/site": site});
        let capacity =
            serde_json::json!({"cpu": "64", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"});
        create_kwok_node_with(&client, &name, labels, capacity).await;
        names.push(name);
    }
    wait_ready(&client, &names).await;
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let with_data = |name: &str, class: &str| {
        let mut pod = pod(name, &scheduler, &cell, "16", 4);
        pod.metadata.annotations = Some(
            [
                ("yiyun.io/latency-class", class),
                ("yiyun.io/data-site", east.as_str()),
                ("yiyun.io/data-gb", "200"),
                ("yiyun.io/expected-runtime-seconds", "28800"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        pod
    };
    pods.create(&PostParams::default(), &with_data("training", "batch")).await.expect("pod");
    pods.create(&PostParams::default(), &with_data("inference", "realtime")).await.expect("pod");
    let training = eventually(WAIT, "training bound", || node_of(&pods, "training")).await;
    let inference = eventually(WAIT, "inference bound", || node_of(&pods, "inference")).await;
    assert_eq!(training, format!("{cell}-{west}"), "batch work goes to the cheaper west");
    assert_eq!(inference, format!("{cell}-{east}"), "realtime work stays within 10 ms of its data");
    delete_nodes(&client, &names).await;
    for site in [&east, &west] {
        let _ =
            Api::<yiyun_crds::ComputeSite>::all(client.clone()).delete(site, &DeleteParams::default()).await;
    }
}

/// A lender tenant guaranteed `lender_cpu` CPUs and a borrower guaranteed 1 (both 4Gi, at most
/// 8 CPUs), each with a namespace of its own, in that order.
async fn lender_and_borrower(client: &Client, lender_cpu: &str) -> ([String; 2], Vec<TestNamespace>) {
    let tenants = [unique("lender"), unique("borrower")];
    let mut namespaces = Vec::new();
    for (tenant, guaranteed) in tenants.iter().zip([lender_cpu, "1"]) {
        apply_yiyun::<yiyun_crds::Tenant>(
            client,
            tenant,
            serde_json::json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
                "spec": {"displayName": "测试", "level": "province",
                    "quota": {"guaranteed": {"cpu": guaranteed, "memory": "4Gi"}, "max": {"cpu": "8", "memory": "64Gi"}}}}),
        )
        .await;
        let ns = TestNamespace::create(client, "reclaim").await;
        join_tenant(client, &ns.name, tenant).await;
        namespaces.push(ns);
    }
    (tenants, namespaces)
}

/// A cell of one Ready kwok node with 8 CPUs: its cell and its name.
async fn node_of_8_cpus(client: &Client) -> (String, String) {
    let cell = unique("cell");
    let node = format!("{cell}-n0");
    let capacity = serde_json::json!({"cpu": "8", "memory": "64Gi", "pods": "110"});
    create_kwok_node_with(client, &node, serde_json::json!({CELL: cell}), capacity).await;
    wait_ready(client, std::slice::from_ref(&node)).await;
    (cell, node)
}

#[tokio::test]
async fn a_lender_reclaims_what_a_borrower_took_by_preemption() {
    let client = client().await;
    install_crds(&client).await;
    // A tenant reclaims only within its guarantee of every resource its pod asks for.
    let ([lender, borrower], namespaces) = lender_and_borrower(&client, "4").await;
    let (cell, node) = node_of_8_cpus(&client).await;
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let lender_pods: Api<Pod> = Api::namespaced(client.clone(), &namespaces[0].name);
    let borrower_pods: Api<Pod> = Api::namespaced(client.clone(), &namespaces[1].name);
    for name in ["b1", "b2"] {
        borrower_pods
            .create(&PostParams::default(), &pod(name, &scheduler, &cell, "4", 0))
            .await
            .expect("pod");
        eventually(WAIT, &format!("{name} bound while the cluster is idle"), || {
            node_of(&borrower_pods, name)
        })
        .await;
    }
    lender_pods.create(&PostParams::default(), &pod("mine", &scheduler, &cell, "4", 0)).await.expect("pod");
    eventually(WAIT, "the lender's pod bound after reclaim", || node_of(&lender_pods, "mine")).await;
    let left = borrower_pods.list(&ListParams::default()).await.expect("pods").items;
    let left: Vec<String> = left
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(left, vec!["b1".to_string()], "the latest borrowed pod was evicted, only it");
    for tenant in [&lender, &borrower] {
        let _ = Api::<yiyun_crds::Tenant>::all(client.clone()).delete(tenant, &DeleteParams::default()).await;
    }
    delete_nodes(&client, &[node]).await;
}

#[tokio::test]
async fn preemption_that_would_break_a_disruption_budget_evicts_nobody() {
    let client = client().await;
    install_crds(&client).await;
    let ([lender, borrower], namespaces) = lender_and_borrower(&client, "8").await;
    let (cell, node) = node_of_8_cpus(&client).await;
    let scheduler = unique("yiyun-e2e");
    let _running = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);
    let borrower_pods: Api<Pod> = Api::namespaced(client.clone(), &namespaces[1].name);
    for name in ["portal-1", "portal-2"] {
        let mut replica = pod(name, &scheduler, &cell, "4", 0);
        replica.metadata.labels = Some([("app".to_string(), "portal".to_string())].into());
        borrower_pods.create(&PostParams::default(), &replica).await.expect("pod");
        eventually(WAIT, &format!("{name} bound"), || node_of(&borrower_pods, name)).await;
    }
    // The portal may lose one replica at a time; reclaiming 8 CPUs would take both.
    let budget: k8s_openapi::api::policy::v1::PodDisruptionBudget =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "portal"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "portal"}}}
        }))
        .expect("a budget");
    let budgets = Api::namespaced(client.clone(), &namespaces[1].name);
    budgets.create(&PostParams::default(), &budget).await.expect("budget");
    eventually(WAIT, "the disruption controller allows one disruption", || async {
        let budget: k8s_openapi::api::policy::v1::PodDisruptionBudget = budgets.get("portal").await.ok()?;
        (budget.status?.disruptions_allowed == Some(1)).then_some(())
    })
    .await;
    let lender_pods: Api<Pod> = Api::namespaced(client.clone(), &namespaces[0].name);
    lender_pods.create(&PostParams::default(), &pod("mine", &scheduler, &cell, "8", 0)).await.expect("pod");
    let message =
        eventually(WAIT, "the lender's pod explained", || unschedulable_message(&lender_pods, "mine")).await;
    assert!(
        message.contains(&format!(
            "preemption would evict 2 pod(s) of PodDisruptionBudget {}/portal, which allows 1; nothing evicted",
            namespaces[1].name
        )),
        "{message}"
    );
    for name in ["portal-1", "portal-2"] {
        let replica = borrower_pods.get(name).await.expect("the replica is still there");
        assert!(replica.metadata.deletion_timestamp.is_none(), "{name} was evicted");
    }
    for tenant in [&lender, &borrower] {
        let _ = Api::<yiyun_crds::Tenant>::all(client.clone()).delete(tenant, &DeleteParams::default()).await;
    }
    delete_nodes(&client, &[node]).await;
}

#[tokio::test]
async fn the_shipped_rbac_is_all_the_scheduler_needs() {
    let client = client().await;
    install_crds(&client).await;
    // A kubeconfig holding only the ServiceAccount's token.
    let kubeconfig = yiyun_e2e::service_account_kubeconfig("scheduler-rbac.yaml", "yiyun-scheduler");
    let ns = TestNamespace::create(&client, "rbac").await;
    let cell = unique("cell");
    let names = nodes(&client, &cell, 2, 2, 0).await;
    let scheduler = unique("yiyun-e2e");
    // The chart's Lease, the only one its role may renew.
    let mut process = SchedulerProcess::start_as(&scheduler, &[], &kubeconfig);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("fits", &scheduler, &cell, "1", 0)).await.expect("pod");
    pods.create(&PostParams::default(), &pod("too-big", &scheduler, &cell, "100", 0)).await.expect("pod");
    eventually(WAIT, "bound as the ServiceAccount", || node_of(&pods, "fits")).await;
    let message =
        eventually(WAIT, "explained as the ServiceAccount", || unschedulable_message(&pods, "too-big")).await;
    assert!(message.contains("insufficient cpu"), "{message}");
    process.kill();
    let logs = process.logs();
    assert!(!logs.contains("forbidden"), "no request was forbidden: {logs}");
    delete_nodes(&client, &names).await;
}
