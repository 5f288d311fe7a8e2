//! `ReplicationPolicy`: disaster recovery of one tenant namespace to a standby cluster, at a
//! GB/T 20988 level, with its achieved RPO measured and shown.

// Several printer columns share a type; clippy reads those as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration such as `30s`, `15m`, `4h`, `7d` or `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}[dhms]){1,4}$";

/// Protects the namespace it is created in: its objects are copied to a standby cluster
/// (continuously or on a schedule), the standby's workloads stay scaled to zero until a
/// failover, and the achieved RPO is measured against the level's targets.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "yiyun.io",
    version = "v1alpha1",
    kind = "ReplicationPolicy",
    namespaced,
    doc = "Disaster recovery of the namespace it is created in: its objects copied to a standby \
           cluster at a GB/T 20988 level (1-6), with RPO and RTO targets, the achieved RPO \
           measured, failover, failback and drills.",
    status = "ReplicationPolicyStatus",
    shortname = "rp",
    category = "yiyun",
    derive = "PartialEq",
    printcolumn(name = "Level", type_ = "integer", json_path = ".spec.level"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.target.site"),
    printcolumn(
        name = "Protected",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Protected\")].status"
    ),
    printcolumn(name = "RPO", type_ = "string", json_path = ".status.achievedRpo"),
    printcolumn(name = "RPO Target", type_ = "string", json_path = ".status.rpoTarget"),
    printcolumn(name = "Objects", type_ = "integer", json_path = ".status.objectsReplicated"),
    printcolumn(name = "Role", type_ = "string", json_path = ".status.role"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'scheduled' || has(self.schedule)")
    .message("spec.schedule is required when spec.mode is scheduled (e.g. schedule: {every: 1h})"))]
#[x_kube(validation = Rule::new("self.mode != 'continuous' || !has(self.schedule)")
    .message("spec.schedule is only for spec.mode scheduled; continuous replication follows every change"))]
pub struct ReplicationPolicySpec {
    /// The GB/T 20988 disaster-recovery level, 1 (weekly backup off site) to 6 (zero data loss,
    /// RTO in minutes). It sets the default RPO and RTO targets and the loosest ones allowed.
    #[schemars(range(min = 1, max = 6))]
    pub level: i32,
    /// Recovery point objective: at most this much recent change may be lost. Defaults to the
    /// level's; may be tighter, never looser (e.g. `30m`, `1h30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub rpo: Option<String>,
    /// Recovery time objective: a failover or drill brings the workloads up within this long.
    /// Defaults to the level's; may be tighter, never looser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub rto: Option<String>,
    /// The standby cluster the namespace is copied to.
    pub target: ReplicationTarget,
    /// `continuous` follows every change within seconds; `scheduled` copies a consistent set
    /// (every kind listed at one resourceVersion) on `schedule`.
    #[serde(default)]
    pub mode: ReplicationMode,
    /// When `mode` is `scheduled`: how often a consistent copy is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ReplicationSchedule>,
    /// What is copied: kinds by name (e.g. `Deployment`, `Secret`, `PodGroup`; all supported
    /// kinds when empty) and objects by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<ObjectSelection>,
    /// What is left out, though included above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<ObjectSelection>,
    /// How long copies of what the primary deleted stay on the standby, and how many drill
    /// reports the status keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// What happens when someone edited a copy on the standby by hand: `report` (the default)
    /// leaves the edit and reports the conflict; `overwrite` replaces it with the primary's.
    #[serde(default)]
    pub conflicts: ConflictResolution,
}

/// The standby cluster: how to reach it and where it runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationTarget {
    /// A Secret in the policy's namespace holding a kubeconfig for the standby cluster.
    pub kubeconfig_secret: SecretKey,
    /// The ComputeSite the standby cluster runs in.
    #[schemars(length(min = 1, max = 63))]
    pub site: String,
}

/// A key of a Secret in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the kubeconfig.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".into()
}

/// How changes reach the standby.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReplicationMode {
    /// Every change is applied to the standby within seconds.
    #[default]
    Continuous,
    /// A consistent copy on a schedule.
    Scheduled,
}

/// How often a scheduled copy is made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSchedule {
    /// The interval between consistent copies (e.g. `1h`, `6h`, `1d`).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub every: String,
}

/// Objects chosen by kind and by label.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSelection {
    /// Kinds by name, e.g. `Deployment`, `ConfigMap`, `PodGroup`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub kinds: Vec<String>,
    /// Objects whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// How long things are kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// A copy whose original the primary deleted stays on the standby this long (a safety net
    /// against a mistaken delete); `0s`, the default, deletes it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub deleted: Option<String>,
    /// Drill reports kept in the status (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub drills: Option<i32>,
}

/// What to do with a copy someone edited on the standby.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConflictResolution {
    /// Leave the edit, report the object in the status (condition Degraded, reason Conflicts).
    #[default]
    Report,
    /// Replace the edit with the primary's object.
    Overwrite,
}

/// Which cluster serves the namespace's workloads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReplicationRole {
    /// The primary serves; the standby holds copies scaled to zero.
    #[default]
    Primary,
    /// Failed over: the standby serves, replication is paused until failback.
    Standby,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the policy is valid and its target reachable), `Protected` (the standby holds a
    /// copy within the RPO target), `Degraded` (with the reason: TargetUnreachable,
    /// RPOBreached, Conflicts).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Which cluster serves the workloads.
    #[serde(default)]
    pub role: ReplicationRole,
    /// The effective targets (the level's, or the tighter ones of the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_target: Option<String>,
    /// The latest time at which the standby held everything the primary had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_consistent_copy_time: Option<Time>,
    /// What would be lost if the primary failed now (e.g. `0s`, `2s`, `1h4m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_rpo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_rpo_seconds: Option<f64>,
    /// Objects the standby holds for this policy.
    #[serde(default)]
    pub objects_replicated: i64,
    /// From a change seen on the primary to its copy on the standby, p99 over the last hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_p99_seconds: Option<f64>,
    /// Copies edited by hand on the standby, left as they are (`Kind/name: what`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// The last failover or failback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverRecord>,
    /// The latest drills, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<DrillReport>,
}

/// What a failover or failback did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    /// `failover` or `failback`.
    pub action: String,
    pub started: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Time>,
    /// Whether the side that stopped serving was reached and its workloads scaled to zero.
    pub fenced: bool,
    /// From the start until every workload ran, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    pub message: String,
}

/// A drill: the newest copy restored into an isolated namespace on the standby and checked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    pub started: Time,
    /// Whether every object came back, every workload ran, and the targets were met.
    pub passed: bool,
    /// The copy's age when the drill started.
    pub rpo_seconds: f64,
    /// From the start until every workload ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    pub objects: i64,
    pub workloads_running: i64,
    pub workloads: i64,
    pub message: String,
}

/// A disaster-recovery operation on one ReplicationPolicy, carried out by `yiyun dr run`: a
/// failover (the standby serves), a failback (the primary serves again), or a drill. It runs
/// once; for another, create a new one. With the primary down, its controller is down too: then
/// `yiyun dr failover --standby-kubeconfig` is the way.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "yiyun.io",
    version = "v1alpha1",
    kind = "Failover",
    doc = "A disaster-recovery operation on one ReplicationPolicy (failover, failback or drill), \
           carried out once by yiyun dr run; its status holds the outcome and the measured RTO.",
    status = "FailoverStatus",
    shortname = "fo",
    category = "yiyun",
    derive = "PartialEq",
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.policy.namespace"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy.name"),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "RTO", type_ = "number", json_path = ".status.rtoSeconds"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Failover's spec cannot change once created; create a new one"))]
pub struct FailoverSpec {
    /// The ReplicationPolicy acted on.
    pub policy: PolicyReference,
    /// `failover`, `failback` or `drill`.
    pub action: FailoverAction,
}

/// A ReplicationPolicy by namespace and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReference {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What a Failover does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailoverAction {
    /// Promote the standby and fence the primary.
    Failover,
    /// Copy back what changed on the standby, and let the primary serve again.
    Failback,
    /// Restore the newest copy into an isolated namespace on the standby, check it, clean up.
    Drill,
}

/// Where a Failover stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailoverPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    #[serde(default)]
    pub phase: FailoverPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Time>,
    /// From the start until every workload ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    /// What happened, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A drill's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillReport>,
}
