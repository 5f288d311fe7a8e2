//! Disaster recovery on two real clusters beside the main one: `yiyun dr run` copies protected
//! namespaces from the primary to the standby; copies are dormant and stripped of what belongs
//! to the primary; changes and deletions follow within seconds; a hand edit on the standby is
//! reported, not overwritten; an unreachable standby degrades the policy and catches up without
//! loss; bad policies name the wrong field; a drill restores, checks and records.
//!
//! One test runs the scenarios side by side under one controller (two controllers would both
//! replicate every policy).

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Secret, Service},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use yiyun_crds::ReplicationPolicy;
use yiyun_e2e::{
    dr::{DrClusters, config_map, deployment, dr_command, message},
    eventually,
};

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn disaster_recovery() {
    let clusters = DrClusters::setup().await;
    let controller = clusters.start_controller();
    tokio::join!(
        replicates_changes_dormant_and_encrypted(&clusters),
        a_hand_edit_on_the_standby_is_reported_not_overwritten(&clusters),
        bad_policies_name_the_wrong_field(&clusters),
        an_unreachable_standby_degrades_then_catches_up(&clusters),
        scheduled_copies_are_consistent_and_aged(&clusters),
        a_drill_restores_checks_and_is_recorded(&clusters),
        failover_objects_fail_over_and_back(&clusters),
        copies_of_deleted_objects_are_kept_for_the_retention(&clusters),
    );
    drop(controller);
}

async fn replicates_changes_dormant_and_encrypted(clusters: &DrClusters) {
    let (p, s) = (&clusters.p, &clusters.s);
    let ns = clusters.namespace("dr-copy", None).await;
    DrClusters::apply(p, &ns, deployment("web", 3)).await;
    DrClusters::apply(p, &ns, config_map("settings", json!({"mode": "a"}))).await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "s3cr3t-of-the-bureau"}});
    DrClusters::apply(p, &ns, secret).await;
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    DrClusters::apply(p, &ns, service).await;
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "report"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "c", "image": "registry.local/report:1"}]}}}});
    DrClusters::apply(p, &ns, job).await;
    DrClusters::apply(
        p,
        &ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
    )
    .await;
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]});
    DrClusters::apply(p, &ns, role).await;
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "app-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}]});
    DrClusters::apply(p, &ns, binding).await;
    clusters.protect(&ns, "protect", json!({"level": 5, "rpo": "30s"})).await;

    let policy = clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;
    let status = policy.status.clone().unwrap_or_default();
    // Deployment, ConfigMap, Secret, Service, Job, ServiceAccount, Role, RoleBinding: not the
    // namespace's own (default ServiceAccount, kube-root-ca.crt), nor the standby's credentials.
    assert_eq!(status.objects_replicated, 8, "{status:?}");
    assert_eq!(status.rpo_target.as_deref(), Some("30s"));
    assert!(status.achieved_rpo.is_some() && status.last_consistent_copy_time.is_some(), "{status:?}");

    // Dormant copies with their real size recorded; cluster fields stripped.
    let copy = Api::<Deployment>::namespaced(s.clone(), &ns).get("web").await.expect("the Deployment's copy");
    assert_eq!(copy.spec.as_ref().and_then(|s| s.replicas), Some(0));
    assert_eq!(
        copy.metadata.annotations.as_ref().and_then(|a| a.get("dr.yiyun.io/replicas")).map(String::as_str),
        Some("3")
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(s.clone(), &ns);
    let job = jobs.get("report").await.expect("the Job's copy");
    assert_eq!(job.spec.as_ref().and_then(|s| s.suspend), Some(true));
    let primary_ip = Api::<Service>::namespaced(p.clone(), &ns)
        .get("web")
        .await
        .expect("service")
        .spec
        .and_then(|s| s.cluster_ip);
    let standby_ip = Api::<Service>::namespaced(s.clone(), &ns)
        .get("web")
        .await
        .expect("service copy")
        .spec
        .and_then(|s| s.cluster_ip);
    assert!(standby_ip.is_some(), "the standby gave the Service a cluster IP of its own");
    assert!(primary_ip.is_some());
    assert!(
        Api::<Secret>::namespaced(s.clone(), &ns).get_opt("standby").await.expect("read").is_none(),
        "the credentials stay on the primary"
    );

    // The standby keeps the Secret encrypted in its etcd.
    let secret = Api::<Secret>::namespaced(s.clone(), &ns).get("db").await.expect("the Secret's copy");
    let value = secret.data.and_then(|d| d.get("password").cloned()).expect("the password");
    assert_eq!(value.0, b"s3cr3t-of-the-bureau");
    let raw = clusters.standby.etcd_value(&format!("/registry/secrets/{ns}/db")).expect("the Secret in etcd");
    assert!(
        raw.starts_with(b"k8s:enc:aescbc:v1:key1:"),
        "not encrypted at rest: {:?}",
        String::from_utf8_lossy(&raw[..40.min(raw.len())])
    );
    assert!(!raw.windows(10).any(|w| w == b"s3cr3t-of-"), "the password is in etcd in clear text");

    // Changes follow within seconds: 20 updates, each waited for on the standby.
    let copies: Api<ConfigMap> = Api::namespaced(s.clone(), &ns);
    let mut lags = Vec::new();
    for round in 0..20 {
        let value = format!("v{round}");
        DrClusters::apply(p, &ns, config_map("settings", json!({"mode": value}))).await;
        let changed = Instant::now();
        eventually(Duration::from_secs(30), &format!("update {round} on the standby"), || async {
            let copy = copies.get("settings").await.ok()?;
            (copy.data?.get("mode")? == &value).then_some(())
        })
        .await;
        lags.push(changed.elapsed().as_secs_f64());
    }
    lags.sort_by(f64::total_cmp);
    println!("replication lag of 20 updates, seen from the test: p50 {:.3}s, max {:.3}s", lags[10], lags[19]);

    // A new object and a deletion.
    DrClusters::apply(p, &ns, config_map("added", json!({"a": "1"}))).await;
    Api::<ConfigMap>::namespaced(p.clone(), &ns)
        .delete("settings", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(Duration::from_secs(30), "the addition and the deletion on the standby", || async {
        let added = copies.get_opt("added").await.ok()?.is_some();
        let deleted = copies.get_opt("settings").await.ok()?.is_none();
        (added && deleted).then_some(())
    })
    .await;
    let policy = eventually(Duration::from_secs(30), "the lag p99 in the status", || async {
        let policy = clusters.policy(&ns, "protect").await;
        policy.status.as_ref()?.lag_p99_seconds?;
        Some(policy)
    })
    .await;
    let status = policy.status.unwrap_or_default();
    println!(
        "status: achieved RPO {:?}, lag p99 {:?}s, objects {}",
        status.achieved_rpo, status.lag_p99_seconds, status.objects_replicated
    );
}

async fn a_hand_edit_on_the_standby_is_reported_not_overwritten(clusters: &DrClusters) {
    let (p, s) = (&clusters.p, &clusters.s);
    let ns = clusters.namespace("dr-edit", None).await;
    DrClusters::apply(p, &ns, config_map("limits", json!({"max": "10"}))).await;
    clusters.protect(&ns, "protect", json!({"level": 4})).await;
    let copies: Api<ConfigMap> = Api::namespaced(s.clone(), &ns);
    eventually(SETTLE, "the copy", || async { copies.get_opt("limits").await.ok().flatten() }).await;
    let edit = PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() };
    copies
        .patch("limits", &edit, &Patch::Merge(json!({"data": {"max": "99"}})))
        .await
        .expect("edit the copy by hand");
    DrClusters::apply(p, &ns, config_map("limits", json!({"max": "20"}))).await;
    let policy = clusters.condition(&ns, "protect", "Degraded", "True", SETTLE).await;
    let status = policy.status.clone().unwrap_or_default();
    assert!(message(&policy, "Degraded").starts_with("Conflicts"), "{}", message(&policy, "Degraded"));
    assert!(
        status.conflicts.iter().any(|c| c.starts_with("ConfigMap/limits") && c.contains("kubectl-edit")),
        "{:?}",
        status.conflicts
    );
    let copy = copies.get("limits").await.expect("the copy");
    assert_eq!(copy.data.and_then(|d| d.get("max").cloned()).as_deref(), Some("99"), "the hand edit stays");
}

async fn bad_policies_name_the_wrong_field(clusters: &DrClusters) {
    let p = &clusters.p;
    let missing = clusters.namespace("dr-bad", None).await;
    let policy = |name: &str, spec: serde_json::Value| {
        let mut spec = spec;
        spec["target"] = json!({"kubeconfigSecret": {"name": "standby"}, "site": "west"});
        serde_json::from_value::<ReplicationPolicy>(json!({
            "apiVersion": "yiyun.io/v1alpha1", "kind": "ReplicationPolicy", "metadata": {"name": name}, "spec": spec
        }))
        .expect("a policy")
    };
    let api: Api<ReplicationPolicy> = Api::namespaced(p.clone(), &missing);

    // Schema and CEL: refused by the apiserver, with a message an admin understands.
    let refused = api
        .create(&PostParams::default(), &policy("no-schedule", json!({"level": 3, "mode": "scheduled"})))
        .await;
    let error = refused.expect_err("scheduled without a schedule is refused").to_string();
    assert!(error.contains("spec.schedule is required when spec.mode is scheduled"), "{error}");
    let refused = api.create(&PostParams::default(), &policy("level-7", json!({"level": 7}))).await;
    assert!(refused.expect_err("level 7 is refused").to_string().contains("spec.level"));
    let refused =
        api.create(&PostParams::default(), &policy("bad-rpo", json!({"level": 3, "rpo": "soon"}))).await;
    assert!(refused.expect_err("an RPO that is no duration is refused").to_string().contains("spec.rpo"));

    // What only the controller can judge: Ready=False naming the field.
    api.create(&PostParams::default(), &policy("loose", json!({"level": 5, "rpo": "2h"})))
        .await
        .expect("create");
    let loose = clusters.condition(&missing, "loose", "Ready", "False", SETTLE).await;
    assert!(
        message(&loose, "Ready").contains("spec.rpo: 2h is looser than level 5 allows"),
        "{}",
        message(&loose, "Ready")
    );

    let mut no_secret = policy("no-secret", json!({"level": 3}));
    no_secret.spec.target.kubeconfig_secret.name = "absent".into();
    api.create(&PostParams::default(), &no_secret).await.expect("create");
    let no_secret = clusters.condition(&missing, "no-secret", "Ready", "False", SETTLE).await;
    assert!(
        message(&no_secret, "Ready")
            .contains("spec.target.kubeconfigSecret.name: Secret absent does not exist"),
        "{}",
        message(&no_secret, "Ready")
    );

    let garbage = clusters.namespace("dr-bad", Some("this: [is not a kubeconfig")).await;
    Api::<ReplicationPolicy>::namespaced(p.clone(), &garbage)
        .create(&PostParams::default(), &policy("garbage", json!({"level": 3})))
        .await
        .expect("create");
    let garbage = clusters.condition(&garbage, "garbage", "Ready", "False", SETTLE).await;
    assert!(
        message(&garbage, "Ready").contains(
            "spec.target.kubeconfigSecret: Secret standby key \"kubeconfig\" is not a usable kubeconfig"
        ),
        "{}",
        message(&garbage, "Ready")
    );
}

/// A TCP relay to the standby's apiserver that the test can cut and restore.
struct Relay {
    port: u16,
    target: String,
    cut: CancellationToken,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let relay = Relay { port, target, cut: CancellationToken::new() };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let (target, cut) = (self.target.clone(), self.cut.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cut.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else { continue };
                let (target, cut) = (target.clone(), cut.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        () = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }

    /// Drops every connection and refuses new ones.
    fn cut(&mut self) {
        self.cut.cancel();
    }

    /// Listens again on the same port.
    async fn restore(&mut self) {
        self.cut = CancellationToken::new();
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("the relay's port again");
        self.serve(listener);
    }
}

async fn an_unreachable_standby_degrades_then_catches_up(clusters: &DrClusters) {
    let p = &clusters.p;
    let mut relay = Relay::start(format!("127.0.0.1:{}", clusters.standby.port("API_PORT"))).await;
    let token = std::fs::read_to_string(clusters.standby.state.join("pki/admin.token")).expect("the token");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: s, cluster: {{server: \"https://127.0.0.1:{}\", certificate-authority: \"{}\"}}}}]\n\
         users: [{{name: a, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: s, context: {{cluster: s, user: a}}}}]\ncurrent-context: s\n",
        relay.port,
        clusters.standby.pki("ca.crt"),
        token.trim()
    );
    let ns = clusters.namespace("dr-cut", Some(&kubeconfig)).await;
    DrClusters::apply(p, &ns, config_map("kept", json!({"v": "1"}))).await;
    DrClusters::apply(p, &ns, config_map("removed", json!({"v": "1"}))).await;
    clusters.protect(&ns, "protect", json!({"level": 6})).await;
    clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;

    relay.cut();
    DrClusters::apply(p, &ns, config_map("kept", json!({"v": "2"}))).await;
    DrClusters::apply(p, &ns, config_map("made-while-cut", json!({"v": "1"}))).await;
    Api::<ConfigMap>::namespaced(p.clone(), &ns)
        .delete("removed", &DeleteParams::default())
        .await
        .expect("delete");
    let degraded = clusters.condition(&ns, "protect", "Degraded", "True", SETTLE).await;
    assert!(
        message(&degraded, "Degraded").starts_with("TargetUnreachable"),
        "{}",
        message(&degraded, "Degraded")
    );
    // Level 6 allows 10 s: the copy ages past it while the standby is away.
    let breached = clusters.condition(&ns, "protect", "Protected", "False", SETTLE).await;
    assert!(
        message(&breached, "Protected").starts_with("RPOBreached"),
        "{}",
        message(&breached, "Protected")
    );

    relay.restore().await;
    clusters.condition(&ns, "protect", "Degraded", "False", Duration::from_secs(120)).await;
    clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;
    let copies: Api<ConfigMap> = Api::namespaced(clusters.s.clone(), &ns);
    let kept = copies.get("kept").await.expect("kept");
    assert_eq!(
        kept.data.and_then(|d| d.get("v").cloned()).as_deref(),
        Some("2"),
        "the change made while cut arrived"
    );
    assert!(
        copies.get_opt("made-while-cut").await.expect("read").is_some(),
        "the object made while cut arrived"
    );
    assert!(copies.get_opt("removed").await.expect("read").is_none(), "the deletion made while cut arrived");
}

async fn scheduled_copies_are_consistent_and_aged(clusters: &DrClusters) {
    let p = &clusters.p;
    let ns = clusters.namespace("dr-sched", None).await;
    DrClusters::apply(p, &ns, config_map("a", json!({"v": "1"}))).await;
    clusters
        .protect(&ns, "nightly", json!({"level": 3, "mode": "scheduled", "schedule": {"every": "8s"}}))
        .await;
    let policy = clusters.condition(&ns, "nightly", "Protected", "True", SETTLE).await;
    assert_eq!(policy.status.as_ref().map(|s| s.objects_replicated), Some(1));
    DrClusters::apply(p, &ns, config_map("b", json!({"v": "1"}))).await;
    let copies: Api<ConfigMap> = Api::namespaced(clusters.s.clone(), &ns);
    eventually(Duration::from_secs(30), "the next scheduled copy", || async {
        copies.get_opt("b").await.ok().flatten()
    })
    .await;
    // Between copies the achieved RPO is the copy's age, not zero.
    let aged = eventually(Duration::from_secs(30), "an aged copy", || async {
        let policy = clusters.policy(&ns, "nightly").await;
        (policy.status.as_ref()?.achieved_rpo_seconds? >= 2.0).then_some(policy)
    })
    .await;
    assert!(aged.status.and_then(|s| s.achieved_rpo_seconds).is_some_and(|rpo| rpo <= 12.0));
}

async fn a_drill_restores_checks_and_is_recorded(clusters: &DrClusters) {
    let (p, s) = (&clusters.p, &clusters.s);
    let ns = clusters.namespace("dr-drill", None).await;
    DrClusters::apply(p, &ns, deployment("portal", 2)).await;
    DrClusters::apply(p, &ns, config_map("portal-settings", json!({"theme": "gov"}))).await;
    clusters.protect(&ns, "protect", json!({"level": 5, "rto": "5m"})).await;
    clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;
    let (ok, out) = dr_command("drill", &format!("{ns}/protect"), &clusters.primary.kubeconfig(), &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("PASSED")
            && out.contains("2 of 2 objects restored")
            && out.contains("1 of 1 workloads running"),
        "{out}"
    );
    let policy = clusters.policy(&ns, "protect").await;
    let drill = policy.status.and_then(|s| s.drills.first().cloned()).expect("the drill in the status");
    assert!(drill.passed && drill.workloads_running == 1 && drill.objects == 2, "{drill:?}");
    assert!(drill.rto_seconds.is_some_and(|rto| rto < 300.0));
    println!("drill: RPO {:.1}s, RTO {:?}s", drill.rpo_seconds, drill.rto_seconds);
    // Cleaned up: the drill's namespace is gone (or going); the copy itself untouched.
    let namespaces: Api<Namespace> = Api::all(s.clone());
    let drills = namespaces
        .list(&kube::api::ListParams::default().labels(&format!("dr.yiyun.io/drill-of={ns}")))
        .await
        .expect("list");
    assert!(
        drills.items.iter().all(|n| n.metadata.deletion_timestamp.is_some()),
        "the drill namespace is being deleted"
    );
    let copy = Api::<Deployment>::namespaced(s.clone(), &ns).get("portal").await.expect("the copy");
    assert_eq!(copy.spec.and_then(|s| s.replicas), Some(0), "the standby's copy stays dormant");
}

/// A Failover object, as a cloud admin applies it, carried out once by the controller.
async fn carried_out(
    clusters: &DrClusters,
    namespace: &str,
    policy: &str,
    action: &str,
) -> yiyun_crds::Failover {
    let name = yiyun_e2e::unique(action);
    let failover = json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "Failover", "metadata": {"name": name},
        "spec": {"policy": {"namespace": namespace, "name": policy}, "action": action}
    });
    yiyun_e2e::apply_yiyun::<yiyun_crds::Failover>(&clusters.p, &name, failover).await;
    let api: Api<yiyun_crds::Failover> = Api::all(clusters.p.clone());
    eventually(Duration::from_secs(120), &format!("Failover {name} carried out"), || async {
        let failover = api.get(&name).await.ok()?;
        let phase = failover.status.as_ref()?.phase;
        matches!(phase, yiyun_crds::FailoverPhase::Succeeded | yiyun_crds::FailoverPhase::Failed)
            .then_some(failover)
    })
    .await
}

async fn failover_objects_fail_over_and_back(clusters: &DrClusters) {
    let (p, s) = (&clusters.p, &clusters.s);
    let ns = clusters.namespace("dr-object", None).await;
    DrClusters::apply(p, &ns, deployment("intake", 1)).await;
    clusters.protect(&ns, "protect", json!({"level": 4})).await;
    clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;

    let failover = carried_out(clusters, &ns, "protect", "failover").await;
    let status = failover.status.unwrap_or_default();
    assert_eq!(status.phase, yiyun_crds::FailoverPhase::Succeeded, "{status:?}");
    assert!(
        status.rto_seconds.is_some()
            && status.message.as_deref().is_some_and(|m| m.contains("1 of 1 workloads run on the standby")),
        "{status:?}"
    );
    let standby_web =
        Api::<Deployment>::namespaced(s.clone(), &ns).get("intake").await.expect("the standby's copy");
    assert_eq!(standby_web.spec.and_then(|s| s.replicas), Some(1), "woken on the standby");
    let policy = clusters.condition(&ns, "protect", "Protected", "False", SETTLE).await;
    assert!(message(&policy, "Protected").starts_with("FailedOver"), "{}", message(&policy, "Protected"));

    let failback = carried_out(clusters, &ns, "protect", "failback").await;
    let status = failback.status.unwrap_or_default();
    assert_eq!(status.phase, yiyun_crds::FailoverPhase::Succeeded, "{status:?}");
    let primary_web =
        Api::<Deployment>::namespaced(p.clone(), &ns).get("intake").await.expect("the primary's web");
    assert_eq!(primary_web.spec.and_then(|s| s.replicas), Some(1), "the primary serves again");
    clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;

    let drill = carried_out(clusters, &ns, "protect", "drill").await;
    let status = drill.status.unwrap_or_default();
    assert_eq!(status.phase, yiyun_crds::FailoverPhase::Succeeded, "{status:?}");
    assert!(status.drill.is_some_and(|d| d.passed && d.workloads_running == 1));

    // One for a policy that does not exist fails and says why.
    let missing = carried_out(clusters, &ns, "absent", "failover").await;
    let status = missing.status.unwrap_or_default();
    assert_eq!(status.phase, yiyun_crds::FailoverPhase::Failed, "{status:?}");
    assert!(status.message.as_deref().is_some_and(|m| m.contains("does not exist")), "{status:?}");
}

async fn copies_of_deleted_objects_are_kept_for_the_retention(clusters: &DrClusters) {
    let (p, s) = (&clusters.p, &clusters.s);
    let ns = clusters.namespace("dr-keep", None).await;
    DrClusters::apply(p, &ns, config_map("mistake", json!({"v": "1"}))).await;
    clusters.protect(&ns, "protect", json!({"level": 4, "retention": {"deleted": "10s"}})).await;
    clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;
    Api::<ConfigMap>::namespaced(p.clone(), &ns)
        .delete("mistake", &DeleteParams::default())
        .await
        .expect("delete");
    let copies: Api<ConfigMap> = Api::namespaced(s.clone(), &ns);
    let marked = eventually(Duration::from_secs(30), "the copy marked as deleted on the primary", || async {
        let copy = copies.get_opt("mistake").await.ok().flatten()?;
        copy.metadata.annotations.as_ref()?.get("dr.yiyun.io/source-deleted-at")?;
        Some(copy)
    })
    .await;
    assert_eq!(marked.data.and_then(|d| d.get("v").cloned()).as_deref(), Some("1"), "kept whole meanwhile");
    // The controller runs with a 20 s resync: the copy goes at the first comparison after 10 s.
    eventually(Duration::from_secs(60), "the copy deleted after the retention", || async {
        copies.get_opt("mistake").await.ok()?.is_none().then_some(())
    })
    .await;
}
