//! Which objects are copied, and how a primary's object becomes its copy on the standby: the
//! fields only one cluster may hold stripped, workloads kept dormant with their real size
//! recorded, and woken (or fenced) again at a failover.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value, json};
use yiyun_crds::ReplicationPolicySpec;

/// The label on every copy: the name of the policy it belongs to.
pub const POLICY_LABEL: &str = "dr.yiyun.io/policy";
/// The primary's resourceVersion a copy was made from: a copy is never replaced by an older one.
pub const SOURCE_VERSION: &str = "dr.yiyun.io/source-version";
/// A workload's real replica count while it is kept at zero.
pub const REPLICAS: &str = "dr.yiyun.io/replicas";
/// A Job's or CronJob's own `suspend` while it is kept suspended.
pub const SUSPEND: &str = "dr.yiyun.io/suspend";
/// When the primary deleted a copy's original (the copy is kept for `retention.deleted`).
pub const SOURCE_DELETED_AT: &str = "dr.yiyun.io/source-deleted-at";
/// On a namespace: whether it serves (`active`) or holds dormant copies (`standby`).
pub const ROLE: &str = "dr.yiyun.io/role";

/// A kind yiyun copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// How its workloads stay dormant on the standby.
    pub dormancy: Dormancy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dormancy {
    /// Not a workload.
    None,
    /// `spec.replicas` kept at zero.
    Replicas,
    /// `spec.suspend` kept true.
    Suspend,
}

const fn plain(group: &'static str, version: &'static str, kind: &'static str, plural: &'static str) -> Kind {
    Kind { group, version, kind, plural, dormancy: Dormancy::None }
}

/// Every kind yiyun copies, in the order a restore creates them (what others refer to first).
pub const KINDS: [Kind; 13] = [
    plain("", "v1", "ServiceAccount", "serviceaccounts"),
    plain("", "v1", "Secret", "secrets"),
    plain("", "v1", "ConfigMap", "configmaps"),
    plain("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    plain("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    plain("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
    plain("", "v1", "Service", "services"),
    plain("yiyun.io", "v1alpha1", "PodGroup", "podgroups"),
    plain("yiyun.io", "v1alpha1", "ResourceRequest", "resourcerequests"),
    Kind { dormancy: Dormancy::Replicas, ..plain("apps", "v1", "Deployment", "deployments") },
    Kind { dormancy: Dormancy::Replicas, ..plain("apps", "v1", "StatefulSet", "statefulsets") },
    Kind { dormancy: Dormancy::Suspend, ..plain("batch", "v1", "Job", "jobs") },
    Kind { dormancy: Dormancy::Suspend, ..plain("batch", "v1", "CronJob", "cronjobs") },
];

/// The kind named `name` (as in `Deployment`).
pub fn kind(name: &str) -> Option<Kind> {
    KINDS.iter().copied().find(|k| k.kind == name)
}

pub fn kind_names() -> String {
    KINDS.iter().map(|k| k.kind).collect::<Vec<_>>().join(", ")
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.into() } else { format!("{}/{}", self.group, self.version) }
    }
}

/// The kinds a policy copies.
pub fn kinds_of(spec: &ReplicationPolicySpec) -> Vec<Kind> {
    let named = |selection: &Option<yiyun_crds::ObjectSelection>, kind: &Kind| {
        selection.as_ref().is_some_and(|s| s.kinds.iter().any(|k| k == kind.kind))
    };
    let include_all = spec.include.as_ref().is_none_or(|s| s.kinds.is_empty());
    KINDS
        .iter()
        .filter(|kind| (include_all || named(&spec.include, kind)) && !named(&spec.exclude, kind))
        .copied()
        .collect()
}

/// Whether a policy copies an object with `labels` (its kind already chosen).
pub fn selected(spec: &ReplicationPolicySpec, labels: &BTreeMap<String, String>) -> bool {
    let selects = |selector: &Option<LabelSelector>| {
        selector.as_ref().map(|s| yiyun_kube::disruption::selects(s, labels))
    };
    let included = spec.include.as_ref().and_then(|s| selects(&s.selector)).unwrap_or(true);
    let excluded = spec.exclude.as_ref().and_then(|s| selects(&s.selector)).unwrap_or(false);
    included && !excluded
}

/// Objects that belong to their cluster, never copied: what a controller made (it makes them
/// again from their owner), and what every namespace gets by itself.
pub fn cluster_own(kind: &Kind, object: &Value) -> bool {
    let metadata = &object["metadata"];
    let owned = metadata["ownerReferences"].as_array().is_some_and(|owners| !owners.is_empty());
    let name = metadata["name"].as_str().unwrap_or_default();
    owned
        || (kind.kind == "ConfigMap" && name == "kube-root-ca.crt")
        || (kind.kind == "ServiceAccount" && name == "default")
        || (kind.kind == "Secret" && object["type"] == "kubernetes.io/service-account-token")
}

/// Annotations the apiserver or a controller of one cluster writes.
const CLUSTER_ANNOTATIONS: [&str; 9] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
    "batch.kubernetes.io/job-tracking",
    "kubernetes.io/change-cause",
];

/// Labels a Job controller puts on its pods' template, bound to the Job's uid.
const JOB_LABELS: [&str; 4] =
    ["controller-uid", "batch.kubernetes.io/controller-uid", "job-name", "batch.kubernetes.io/job-name"];

/// `object` without what belongs to its cluster: uid, resourceVersion, status, a Service's
/// cluster IPs, a claim's bound volume, a Job's generated selector, a pod template's node, the
/// annotations controllers write. What remains can be applied to another cluster.
pub fn portable(kind: &Kind, object: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), kind.api_version().into());
    out.insert("kind".into(), kind.kind.into());
    let metadata = &object["metadata"];
    let mut meta = Map::new();
    for key in ["name", "namespace", "labels"] {
        if let Some(value) = metadata.get(key) {
            meta.insert(key.into(), value.clone());
        }
    }
    if let Some(annotations) = metadata["annotations"].as_object() {
        let kept: Map<String, Value> = annotations
            .iter()
            .filter(|(key, _)| {
                !CLUSTER_ANNOTATIONS.contains(&key.as_str()) && !key.starts_with("dr.yiyun.io/")
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if !kept.is_empty() {
            meta.insert("annotations".into(), kept.into());
        }
    }
    if let Some(Value::Object(labels)) = meta.get_mut("labels") {
        labels.remove(POLICY_LABEL);
        if labels.is_empty() {
            meta.remove("labels");
        }
    }
    out.insert("metadata".into(), meta.into());
    if let Some(fields) = object.as_object() {
        for (key, value) in fields {
            if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let mut out = Value::Object(out);
    match kind.kind {
        "Service" => {
            remove(&mut out, &["spec"], &["clusterIP", "clusterIPs", "healthCheckNodePort"]);
            if let Some(ports) = out.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for port in ports {
                    remove(port, &[], &["nodePort"]);
                }
            }
        }
        "PersistentVolumeClaim" => remove(&mut out, &["spec"], &["volumeName"]),
        "Job" => {
            remove(&mut out, &["spec"], &["selector", "manualSelector"]);
            remove(&mut out, &["spec", "template", "metadata", "labels"], &JOB_LABELS);
        }
        _ => {}
    }
    remove(&mut out, &["spec", "template", "spec"], &["nodeName"]);
    remove(&mut out, &["spec", "jobTemplate", "spec", "template", "spec"], &["nodeName"]);
    out
}

/// Removes `keys` from the object at `path` in `value`, if there is one.
fn remove(value: &mut Value, path: &[&str], keys: &[&str]) {
    let target = path.iter().try_fold(value, |value, key| value.get_mut(*key));
    if let Some(map) = target.and_then(Value::as_object_mut) {
        for key in keys {
            map.remove(*key);
        }
    }
}

/// The copy of `object` the standby holds for policy `policy`: portable, labelled with the
/// policy and the primary's resourceVersion, and dormant.
pub fn standby_copy(kind: &Kind, object: &Value, policy: &str) -> Value {
    let mut copy = dormant(kind, object);
    copy["metadata"]["labels"][POLICY_LABEL] = policy.into();
    copy["metadata"]["annotations"][SOURCE_VERSION] = object["metadata"]["resourceVersion"].clone();
    copy
}

/// Keeps a workload from running, recording its real size: replicas to zero, Jobs and
/// CronJobs suspended. The size is `original`'s, or the one it records if it is asleep itself.
fn put_to_sleep(kind: &Kind, copy: &mut Value, original: &Value) {
    let recorded = &original["metadata"]["annotations"];
    match kind.dormancy {
        Dormancy::None => {}
        Dormancy::Replicas => {
            let replicas = original["spec"]["replicas"].as_i64().unwrap_or(1);
            let recorded = recorded[REPLICAS].as_str().and_then(|r| r.parse().ok());
            let replicas = if replicas == 0 { recorded.unwrap_or(0) } else { replicas };
            copy["metadata"]["annotations"][REPLICAS] = replicas.to_string().into();
            copy["spec"]["replicas"] = 0.into();
        }
        Dormancy::Suspend => {
            let suspend = original["spec"]["suspend"].as_bool().unwrap_or(false);
            let recorded = recorded[SUSPEND].as_str().and_then(|s| s.parse().ok());
            let suspend = if suspend { recorded.unwrap_or(true) } else { suspend };
            copy["metadata"]["annotations"][SUSPEND] = suspend.to_string().into();
            copy["spec"]["suspend"] = true.into();
        }
    }
}

/// `original` as a dormant copy for another cluster: portable, asleep, its size recorded.
pub fn dormant(kind: &Kind, original: &Value) -> Value {
    let mut copy = portable(kind, original);
    put_to_sleep(kind, &mut copy, original);
    copy
}

/// The fields that wake a dormant workload to its recorded size (a merge patch), or `None`
/// for what is not a dormant workload.
pub fn wake_patch(kind: &Kind, object: &Value) -> Option<Value> {
    let annotations = &object["metadata"]["annotations"];
    match kind.dormancy {
        Dormancy::None => None,
        Dormancy::Replicas => {
            let replicas: i64 = annotations[REPLICAS].as_str()?.parse().ok()?;
            Some(json!({"spec": {"replicas": replicas}}))
        }
        Dormancy::Suspend => {
            let suspend: bool = annotations[SUSPEND].as_str()?.parse().ok()?;
            Some(json!({"spec": {"suspend": suspend}}))
        }
    }
}

/// The fields that put a running workload to sleep where it is (a merge patch that records its
/// size), or `None` when it is not a workload or already asleep.
pub fn sleep_patch(kind: &Kind, object: &Value) -> Option<Value> {
    let annotations = &object["metadata"]["annotations"];
    match kind.dormancy {
        Dormancy::None => None,
        Dormancy::Replicas => {
            let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
            (replicas != 0 || annotations[REPLICAS].is_null()).then(|| {
                json!({"metadata": {"annotations": {REPLICAS: replicas.to_string()}}, "spec": {"replicas": 0}})
            })
        }
        Dormancy::Suspend => {
            let suspend = object["spec"]["suspend"].as_bool().unwrap_or(false);
            (!suspend || annotations[SUSPEND].is_null()).then(|| {
                json!({"metadata": {"annotations": {SUSPEND: suspend.to_string()}}, "spec": {"suspend": true}})
            })
        }
    }
}

/// The primary's resourceVersion a copy was made from.
pub fn source_version(copy: &Value) -> Option<u64> {
    copy["metadata"]["annotations"][SOURCE_VERSION].as_str()?.parse().ok()
}

/// An object's own resourceVersion as a number (etcd's revision; 0 when it is not one).
pub fn version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "wuhu", "uid": "1234", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-11-30T00:00:00Z",
                "labels": {"app": "web"},
                "annotations": {"deployment.kubernetes.io/revision": "3", "team": "gov"},
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"replicas": 3, "readyReplicas": 3}
        })
    }

    #[test]
    fn a_copy_drops_what_belongs_to_the_primary_and_sleeps() {
        let kind = kind("Deployment").unwrap();
        let copy = standby_copy(&kind, &deployment(), "protect");
        assert_eq!(
            copy,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {
                    "name": "web", "namespace": "wuhu",
                    "labels": {"app": "web", POLICY_LABEL: "protect"},
                    "annotations": {"team": "gov", SOURCE_VERSION: "42", REPLICAS: "3"}
                },
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
            })
        );
        assert_eq!(source_version(&copy), Some(42));
        assert_eq!(wake_patch(&kind, &copy), Some(json!({"spec": {"replicas": 3}})));
    }

    #[test]
    fn services_jobs_and_claims_lose_their_cluster_fields() {
        let service = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
            "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
        let copy = portable(&kind("Service").unwrap(), &service);
        assert_eq!(copy["spec"], json!({"type": "NodePort", "ports": [{"port": 80}]}));

        let job = json!({"metadata": {"name": "j"}, "spec": {"suspend": false, "manualSelector": false,
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
            "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u", "job-name": "j", "app": "x"}},
                         "spec": {"restartPolicy": "Never"}}}});
        let kind = kind("Job").unwrap();
        let copy = standby_copy(&kind, &job, "p");
        assert_eq!(copy["spec"]["template"]["metadata"]["labels"], json!({"app": "x"}));
        assert!(copy["spec"].get("selector").is_none());
        assert_eq!(copy["spec"]["suspend"], json!(true));
        assert_eq!(wake_patch(&kind, &copy), Some(json!({"spec": {"suspend": false}})));

        let claim = json!({"metadata": {"name": "c", "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {"volumeName": "pv-1", "resources": {"requests": {"storage": "1Gi"}}}});
        let copy = portable(&self::kind("PersistentVolumeClaim").unwrap(), &claim);
        assert_eq!(copy["metadata"], json!({"name": "c"}));
        assert_eq!(copy["spec"], json!({"resources": {"requests": {"storage": "1Gi"}}}));
    }

    #[test]
    fn what_a_cluster_makes_by_itself_is_not_copied() {
        let owned = json!({"metadata": {"name": "x", "ownerReferences": [{"uid": "u"}]}});
        assert!(cluster_own(&kind("Job").unwrap(), &owned));
        assert!(cluster_own(&kind("ConfigMap").unwrap(), &json!({"metadata": {"name": "kube-root-ca.crt"}})));
        assert!(cluster_own(&kind("ServiceAccount").unwrap(), &json!({"metadata": {"name": "default"}})));
        let token = json!({"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"});
        assert!(cluster_own(&kind("Secret").unwrap(), &token));
        assert!(!cluster_own(
            &kind("Secret").unwrap(),
            &json!({"metadata": {"name": "db"}, "type": "Opaque"})
        ));
    }

    #[test]
    fn sleeping_a_running_workload_records_its_size_once() {
        let kind = kind("Deployment").unwrap();
        let running = deployment();
        let patch = sleep_patch(&kind, &running).unwrap();
        assert_eq!(patch["spec"]["replicas"], json!(0));
        assert_eq!(patch["metadata"]["annotations"][REPLICAS], json!("3"));
        let mut asleep = running.clone();
        asleep["spec"]["replicas"] = 0.into();
        asleep["metadata"]["annotations"][REPLICAS] = "3".into();
        assert_eq!(sleep_patch(&kind, &asleep), None, "asleep already: the recorded size stays");
        assert_eq!(sleep_patch(&self::kind("ConfigMap").unwrap(), &running), None);
        assert_eq!(
            dormant(&kind, &asleep)["metadata"]["annotations"][REPLICAS],
            json!("3"),
            "copied asleep, it keeps its size"
        );
    }

    #[test]
    fn a_policy_chooses_kinds_and_labels() {
        let spec: ReplicationPolicySpec = serde_saphyr::from_str(
            "level: 3\ntarget: {kubeconfigSecret: {name: s}, site: w}\n\
             include: {kinds: [Deployment, Secret, ConfigMap]}\n\
             exclude: {kinds: [Secret], selector: {matchLabels: {dr: skip}}}\n",
        )
        .unwrap();
        let kinds: Vec<_> = kinds_of(&spec).iter().map(|k| k.kind).collect();
        assert_eq!(kinds, ["ConfigMap", "Deployment"]);
        let labels =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(selected(&spec, &labels(&[("app", "web")])));
        assert!(!selected(&spec, &labels(&[("dr", "skip")])));
    }
}
