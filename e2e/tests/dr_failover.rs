//! Failover and failback on the disaster-recovery clusters: the primary's apiserver and etcd
//! are killed, the standby is promoted without it (and says the primary is not fenced); once
//! the primary is back, the failover fences it; what changed on the standby while it served is
//! copied back by a failback that is SIGKILLed halfway and run again.
//!
//! This binary stops parts of the DR primary, so it holds nothing else (binaries run one after
//! another).

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace},
};
use kube::Api;
use serde_json::json;
use yiyun_e2e::{
    YiyunProcess,
    dr::{DrClusters, config_map, deployment, dr_command},
    eventually,
};

const SETTLE: Duration = Duration::from_secs(60);

async fn ready_replicas(api: &Api<Deployment>, name: &str) -> i32 {
    api.get(name).await.ok().and_then(|d| d.status).and_then(|s| s.ready_replicas).unwrap_or(0)
}

#[tokio::test]
async fn failover_without_the_primary_then_failback() {
    let clusters = DrClusters::setup().await;
    let controller = clusters.start_controller();
    let (p, s) = (&clusters.p, &clusters.s);
    let ns = clusters.namespace("dr-failover", None).await;
    DrClusters::apply(p, &ns, deployment("web", 2)).await;
    DrClusters::apply(p, &ns, config_map("before", json!({"v": "1"}))).await;
    clusters.protect(&ns, "protect", json!({"level": 5, "rpo": "30s", "rto": "5m"})).await;
    let protected = clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;
    assert_eq!(protected.status.map(|s| s.objects_replicated), Some(2));
    let primary_deployments: Api<Deployment> = Api::namespaced(p.clone(), &ns);
    eventually(SETTLE, "the primary's web running", || async {
        (ready_replicas(&primary_deployments, "web").await == 2).then_some(())
    })
    .await;

    // The primary dies: its apiserver and etcd killed.
    drop(controller);
    clusters.primary.control("stop", "kube-apiserver");
    clusters.primary.control("stop", "etcd");
    let policy = format!("{ns}/protect");
    let standby_kubeconfig = clusters.standby.kubeconfig();
    let standby_flag = ["--standby-kubeconfig", standby_kubeconfig.to_str().expect("a path")];
    let (ok, out) = dr_command("failover", &policy, &clusters.primary.kubeconfig(), &standby_flag);
    assert!(ok, "{out}");
    assert!(
        out.contains("primary fenced: NO") && out.contains("1 of 1 workloads run on the standby"),
        "{out}"
    );

    // Everything the primary had before it died is on the standby, and runs.
    let standby_deployments: Api<Deployment> = Api::namespaced(s.clone(), &ns);
    assert_eq!(ready_replicas(&standby_deployments, "web").await, 2);
    let standby_maps: Api<ConfigMap> = Api::namespaced(s.clone(), &ns);
    assert!(standby_maps.get_opt("before").await.expect("read").is_some());

    // The primary comes back: a second failover fences it.
    clusters.primary.control("start", "etcd");
    clusters.primary.control("start", "kube-apiserver");
    eventually(SETTLE, "the primary's apiserver back", || async {
        primary_deployments.get("web").await.ok()
    })
    .await;
    let (ok, out) = dr_command("failover", &policy, &clusters.primary.kubeconfig(), &[]);
    assert!(ok && out.contains("primary fenced: yes"), "{out}");
    let fenced = primary_deployments.get("web").await.expect("the primary's web");
    assert_eq!(fenced.spec.and_then(|s| s.replicas), Some(0), "the primary is fenced");

    // While the standby serves, the department changes things there.
    DrClusters::apply(s, &ns, config_map("during", json!({"v": "made on the standby"}))).await;
    DrClusters::apply(s, &ns, deployment("web", 3)).await;

    // A failback killed halfway, then run again: it picks up where the clusters are.
    let kubeconfig = clusters.primary.kubeconfig();
    let mut interrupted =
        YiyunProcess::spawn("failback", &["dr", "failback", &policy], Some(&kubeconfig), "info");
    tokio::time::sleep(Duration::from_millis(150)).await;
    interrupted.kill();
    let controller = clusters.start_controller();
    let (ok, out) = dr_command("failback", &policy, &clusters.primary.kubeconfig(), &[]);
    assert!(ok && out.contains("1 of 1 workloads run on the primary"), "{out}");
    let primary_maps: Api<ConfigMap> = Api::namespaced(p.clone(), &ns);
    let during = primary_maps.get("during").await.expect("what was made on the standby is on the primary");
    assert_eq!(during.data.and_then(|d| d.get("v").cloned()).as_deref(), Some("made on the standby"));
    assert_eq!(ready_replicas(&primary_deployments, "web").await, 3, "the size set on the standby");
    let asleep = standby_deployments.get("web").await.expect("the standby's web");
    assert_eq!(asleep.spec.and_then(|s| s.replicas), Some(0), "the standby sleeps again");
    let role = Api::<Namespace>::all(s.clone()).get(&ns).await.expect("the standby namespace");
    assert_eq!(
        role.metadata.annotations.and_then(|a| a.get("dr.yiyun.io/role").cloned()).as_deref(),
        Some("standby")
    );

    // Replication resumes.
    DrClusters::apply(p, &ns, config_map("after", json!({"v": "1"}))).await;
    eventually(SETTLE, "a change after the failback on the standby", || async {
        standby_maps.get_opt("after").await.ok().flatten()
    })
    .await;
    let policy = clusters.condition(&ns, "protect", "Protected", "True", SETTLE).await;
    let record = policy.status.and_then(|s| s.failover).expect("the failback recorded");
    assert_eq!(record.action, "failback");
    assert!(record.fenced && record.rto_seconds.is_some(), "{record:?}");
    drop(controller);
}
