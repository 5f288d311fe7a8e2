//! Disaster recovery's two clusters (a primary and a standby beside the main e2e cluster, as
//! `make e2e` starts them with `e2e/with-named-cluster`) and what its tests do on them.

use std::{path::Path, time::Duration};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use yiyun_crds::ReplicationPolicy;

use crate::{
    FIELD_MANAGER, LocalCluster, YiyunProcess, create_kwok_node, eventually, free_port, install_crds, unique,
    wait_ready,
};

/// The primary (where workloads run and the DR controller watches) and the standby (with
/// kube-scheduler, so that workloads run there after a failover, and Secrets encrypted at rest).
pub struct DrClusters {
    pub primary: LocalCluster,
    pub standby: LocalCluster,
    pub p: Client,
    pub s: Client,
}

impl DrClusters {
    /// Both clusters with yiyun's CRDs and a kwok node each.
    pub async fn setup() -> Self {
        let clusters = Self::beside(LocalCluster::of_kubeconfig_in("YIYUN_DR_PRIMARY")).await;
        Self::node(&clusters.p).await;
        clusters
    }

    /// `primary` (with yiyun's CRDs, its nodes left as they are: another test's cluster) and the
    /// standby, with a kwok node for drills and failovers to run workloads on.
    pub async fn beside(primary: LocalCluster) -> Self {
        let standby = LocalCluster::of_kubeconfig_in("YIYUN_DR_STANDBY");
        let (p, s) = (primary.client().await, standby.client().await);
        install_crds(&p).await;
        install_crds(&s).await;
        Self::node(&s).await;
        DrClusters { primary, standby, p, s }
    }

    async fn node(client: &Client) {
        let node = unique("dr-node");
        create_kwok_node(client, &node, json!({})).await;
        wait_ready(client, &[node]).await;
    }

    /// `yiyun dr run` against the primary with exactly its chart role, reporting status every
    /// second.
    pub fn start_controller(&self) -> YiyunProcess {
        let admin = format!("127.0.0.1:{}", free_port());
        let args = ["dr", "run", "--leader-elect=false", "--status-seconds", "1", "--resync-seconds", "20"];
        let args: Vec<&str> = args.iter().copied().chain(["--admin-addr", &admin]).collect();
        let kubeconfig = self.primary.service_account_kubeconfig("dr-rbac.yaml", "yiyun-dr");
        YiyunProcess::spawn("yiyun-dr", &args, Some(&kubeconfig), "info,yiyun_dr=debug")
    }

    /// A namespace on the primary, with a Secret `standby` holding `kubeconfig` (the standby's
    /// by default).
    pub async fn namespace(&self, prefix: &str, kubeconfig: Option<&str>) -> String {
        let name = unique(prefix);
        let namespaces: Api<Namespace> = Api::all(self.p.clone());
        let namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"yiyun.io/e2e": "true"}}}))
                .expect("a namespace");
        namespaces.create(&PostParams::default(), &namespace).await.expect("create the namespace");
        let kubeconfig = match kubeconfig {
            Some(text) => text.to_string(),
            None => std::fs::read_to_string(self.standby.kubeconfig()).expect("the standby's kubeconfig"),
        };
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "standby"}, "stringData": {"kubeconfig": kubeconfig}
        }))
        .expect("a secret");
        Api::<Secret>::namespaced(self.p.clone(), &name)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create the standby's Secret");
        name
    }

    /// Applies `object` (any namespaced kind, JSON) to `namespace` on `client`'s cluster.
    pub async fn apply(client: &Client, namespace: &str, object: Value) {
        let (group_version, kind) =
            (object["apiVersion"].as_str().unwrap_or_default(), object["kind"].as_str().unwrap_or_default());
        let (group, version) = group_version.split_once('/').unwrap_or(("", group_version));
        let lower = kind.to_lowercase();
        let plural = match lower.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{lower}s"),
        };
        let resource = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(group, version, kind),
            &plural,
        );
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|err| panic!("apply {kind} {namespace}/{name}: {err}"));
    }

    /// A ReplicationPolicy `name` in `namespace` with `spec` (the target added).
    pub async fn protect(&self, namespace: &str, name: &str, mut spec: Value) {
        spec["target"] = json!({"kubeconfigSecret": {"name": "standby"}, "site": "west-standby"});
        let policy = json!({
            "apiVersion": "yiyun.io/v1alpha1", "kind": "ReplicationPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec
        });
        Self::apply(&self.p, namespace, policy).await;
    }

    /// Waits until the policy's condition `type_` has `status`; returns the policy.
    pub async fn condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
        status: &str,
        within: Duration,
    ) -> ReplicationPolicy {
        let api: Api<ReplicationPolicy> = Api::namespaced(self.p.clone(), namespace);
        eventually(within, &format!("{namespace}/{name} {type_}={status}"), || async {
            let policy = api.get(name).await.ok()?;
            let conditions = &policy.status.as_ref()?.conditions;
            conditions.iter().any(|c| c.type_ == type_ && c.status == status).then_some(policy)
        })
        .await
    }

    /// The policy as it is now.
    pub async fn policy(&self, namespace: &str, name: &str) -> ReplicationPolicy {
        Api::<ReplicationPolicy>::namespaced(self.p.clone(), namespace).get(name).await.expect("the policy")
    }
}

/// A condition's message, or "" when it is not there.
pub fn message(policy: &ReplicationPolicy, type_: &str) -> String {
    let conditions = policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

/// A Deployment of `replicas` pods that run on kwok nodes.
pub fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"tolerations": [{"operator": "Exists"}],
                                       "containers": [{"name": "app", "image": "registry.local/app:1"}]}}}
    })
}

pub fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

/// Runs `yiyun dr ACTION POLICY ...` to its end: whether it succeeded, and its output.
pub fn dr_command(action: &str, policy: &str, kubeconfig: &Path, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(crate::yiyun_bin())
        .args(["dr", action, policy])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run yiyun dr");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
