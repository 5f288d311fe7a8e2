//! `PodGroup`: pods that must be placed together (a gang), in one rack, site or region.

// Several printer columns share a type; clippy reads those as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pods of one namespace that yiyun-scheduler places all together or not at all. Pods join with
/// the label `yiyun.io/pod-group: <name>`; nothing is bound until `minMember` of them fit.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "yiyun.io",
    version = "v1alpha1",
    kind = "PodGroup",
    namespaced,
    doc = "Pods placed all together or not at all (a gang), optionally inside one rack, site or \
           region. Pods join with the label yiyun.io/pod-group.",
    status = "PodGroupStatus",
    shortname = "pg",
    category = "yiyun",
    derive = "PartialEq",
    printcolumn(name = "Min", type_ = "integer", json_path = ".spec.minMember"),
    printcolumn(name = "Placed", type_ = "integer", json_path = ".status.placed"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Topology", type_ = "string", json_path = ".spec.topology.level"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupSpec {
    /// Pods that must be placed together before any is bound.
    #[schemars(range(min = 1, max = 100000))]
    pub min_member: i32,

    /// Where the gang's pods must (or should) be, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<GangTopology>,

    /// Seconds the gang may wait, from the PodGroup's creation, before it is given up
    /// (phase Timeout) and stops holding any reservation. Unset: it waits for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub schedule_timeout_seconds: Option<i64>,
}

/// The topology domain a gang keeps to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GangTopology {
    /// `rack`, `site` or `region`.
    pub level: TopologyLevel,
    /// `required`: all pods in one domain of that level, or none placed. `preferred`: in as few
    /// domains as possible.
    #[serde(default)]
    pub mode: TopologyMode,
}

/// A level of the topology (nodes carry `yiyun.io/rack`, `yiyun.io/site`,
/// `topology.kubernetes.io/region`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TopologyLevel {
    Rack,
    Site,
    Region,
}

/// Whether the topology is a must or a wish.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TopologyMode {
    #[default]
    Required,
    Preferred,
}

/// Where a gang is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PodGroupPhase {
    /// Waiting for members or for room.
    #[default]
    Pending,
    /// At least `minMember` pods bound.
    Scheduled,
    /// At least `minMember` pods running.
    Running,
    /// Fewer than `minMember` pods left alive after having been scheduled.
    Failed,
    /// Not placed within `scheduleTimeoutSeconds`.
    Timeout,
}

/// Observed state of a PodGroup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: PodGroupPhase,
    /// Member pods bound to nodes.
    #[serde(default)]
    pub placed: i32,
    /// Member pods running.
    #[serde(default)]
    pub running: i32,
    /// `Scheduled` (with the reason it is not, e.g. the explanation of what the gang lacks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
