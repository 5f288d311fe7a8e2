//! `ComputeSite` and `NodePool`: the data centres of the one cloud and their container-cloud
//! nodes. The scheduler reads this topology: regions > sites > racks > nodes.

// Several printer columns share a type; clippy reads those as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity,
    apis::meta::v1::{Condition, LabelSelector},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A data centre of the one cloud: where it is, what its power costs, how it links to others.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "yiyun.io",
    version = "v1alpha1",
    kind = "ComputeSite",
    doc = "A data centre of the one cloud: its region (east or west), hub and city, the price and \
           efficiency of its power, and its network links to other sites.",
    status = "ComputeSiteStatus",
    shortname = "site",
    category = "yiyun",
    derive = "PartialEq",
    printcolumn(name = "Class", type_ = "string", json_path = ".spec.regionClass"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "City", type_ = "string", json_path = ".spec.city"),
    printcolumn(name = "CNY/kWh", type_ = "string", json_path = ".spec.powerPricePerKWh"),
    printcolumn(name = "PUE", type_ = "number", json_path = ".spec.pue"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes"),
    printcolumn(name = "Hub", type_ = "string", json_path = ".spec.hub", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(self.spec.links) || self.spec.links.all(l, l.to != self.metadata.name)")
        .message("a site cannot link to itself"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.links) || self.links.all(a, self.links.exists_one(b, b.to == a.to))")
    .message("spec.links names each other site at most once"))]
pub struct ComputeSiteSpec {
    /// Human-readable name (e.g. "芜湖数据中心集群 A 区").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// Geographic region, written on every node as `topology.kubernetes.io/region`
    /// (e.g. `anhui`, `gansu`).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub region: String,

    /// `east` (near users: latency-sensitive work) or `west` (cheap, green power: batch work).
    pub region_class: RegionClass,

    /// National computing hub (e.g. "Yangtze River Delta", "Gansu").
    #[schemars(length(min = 1, max = 128))]
    pub hub: String,

    /// City of the site (e.g. "芜湖", "庆阳").
    #[schemars(length(min = 1, max = 128))]
    pub city: String,

    /// Price of electricity in CNY per kWh, as a decimal string (e.g. "0.62").
    #[schemars(length(max = 16), regex(pattern = r"^[0-9]+(\.[0-9]{1,6})?$"))]
    pub power_price_per_k_wh: String,

    /// Power usage effectiveness: total facility power over IT power, 1.0 or more (e.g. 1.25).
    #[schemars(range(min = 1.0, max = 5.0))]
    pub pue: f64,

    /// Carbon intensity of the site's electricity in gCO2 per kWh.
    #[schemars(range(min = 0.0, max = 2000.0))]
    pub carbon_intensity: f64,

    /// Network links to other sites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub links: Vec<SiteLink>,

    /// Racks of the site, when they are known in advance; nodes name theirs through their pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub racks: Vec<Rack>,

    /// The member cluster the site's nodes live in; empty for this cluster. (Distant hubs are
    /// separate clusters: etcd does not stretch across 1,500 km.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub cluster: Option<String>,
}

/// East or west, in the sense of "East Data, West Compute".
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegionClass {
    East,
    West,
}

/// A network link from this site to another.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteLink {
    /// Name of the other ComputeSite.
    #[schemars(length(min = 1, max = 253))]
    pub to: String,
    /// Round-trip latency in milliseconds.
    #[schemars(range(min = 0.0, max = 10000.0))]
    pub latency_ms: f64,
    /// Bandwidth in Gbit/s.
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub bandwidth_gbps: f64,
    /// Price of moving data over the link in CNY per GB, as a decimal string (e.g. "0.03").
    #[serde(rename = "pricePerGB")]
    #[schemars(length(max = 16), regex(pattern = r"^[0-9]+(\.[0-9]{1,6})?$"))]
    pub price_per_gb: String,
}

/// A rack known in advance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rack {
    /// Name of the rack, as nodes carry it in `yiyun.io/rack`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Power budget of the rack in kW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub power_kw: Option<f64>,
}

/// Observed state of a ComputeSite.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeSiteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Nodes of the site's pools.
    #[serde(default)]
    pub nodes: i32,
    /// Racks those nodes are in.
    #[serde(default)]
    pub racks: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<NodeResources>,
    /// Requested by the pods bound to the site's nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<NodeResources>,
}

/// Amounts of node resources.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NodeResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    #[serde(rename = "nvidia.com/gpu", default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<Quantity>,
}

/// Container-cloud nodes of one site: how they are found, labelled, tainted, onboarded and
/// maintained.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "yiyun.io",
    version = "v1alpha1",
    kind = "NodePool",
    doc = "Container-cloud nodes of one ComputeSite: which nodes, their rack, the labels and \
           taints they carry, tenant dedication, onboarding approval and maintenance.",
    status = "NodePoolStatus",
    shortname = "np",
    category = "yiyun",
    derive = "PartialEq",
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.site"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes.total"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.nodes.ready"),
    printcolumn(name = "Onboarding", type_ = "integer", json_path = ".status.nodes.onboarding"),
    printcolumn(name = "Draining", type_ = "integer", json_path = ".status.nodes.draining"),
    printcolumn(name = "Dedicated To", type_ = "string", json_path = ".spec.dedicatedTo", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.nodeSelector) != (has(self.nodeNames) && size(self.nodeNames) > 0)")
        .message("set exactly one of spec.nodeSelector and spec.nodeNames"),
)]
pub struct NodePoolSpec {
    /// Name of the ComputeSite the nodes are in.
    #[schemars(length(min = 1, max = 253))]
    pub site: String,

    /// Selects the pool's nodes by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// Names the pool's nodes one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000))]
    pub node_names: Vec<String>,

    /// How a node's rack is known.
    #[serde(default)]
    pub rack: RackSource,

    /// Labels written on every node of the pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Taints written on every node of the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub taints: Vec<PoolTaint>,

    /// A tenant the nodes are dedicated to: they get the label and the NoSchedule taint
    /// `yiyun.io/dedicated=<tenant>`, so only that tenant's pods (which tolerate it) land there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub dedicated_to: Option<String>,

    /// `Manual` (default): a new node carries the NoSchedule taint `yiyun.io/onboarding` until
    /// its name is listed in `approvedNodes`. `Automatic`: nodes join at once.
    #[serde(default)]
    pub onboarding: Onboarding,

    /// Nodes an admin approved for a `Manual` pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000))]
    pub approved_nodes: Vec<String>,

    /// Nodes or racks under maintenance: cordoned, then drained through the Eviction API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub maintenance: Vec<Maintenance>,
}

/// Where a node's rack comes from: a label the node already has, or an explicit map.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.label) && has(self.nodes))")
    .message("set at most one of rack.label and rack.nodes"))]
pub struct RackSource {
    /// A node label holding the rack's name (e.g. `example.com/rack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 317))]
    pub label: Option<String>,
    /// Node name to rack name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<BTreeMap<String, String>>,
}

/// A taint of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PoolTaint {
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

/// Effect of a taint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// How a pool takes new nodes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Onboarding {
    #[default]
    Manual,
    Automatic,
}

/// A maintenance window: cordon the nodes, evict their pods honouring PodDisruptionBudgets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.rack) != (has(self.nodes) && size(self.nodes) > 0)")
    .message("a maintenance entry names either nodes or a rack"))]
pub struct Maintenance {
    /// Names the entry in status.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Nodes to maintain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub nodes: Vec<String>,
    /// A rack to maintain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub rack: Option<String>,
    /// Why (shown in status and events).
    #[schemars(length(min = 1, max = 512))]
    pub reason: String,
    /// How long to keep evicting before stopping and reporting what is left (e.g. `30m`, `2h`).
    /// Pods are never force-deleted.
    #[serde(default = "default_drain_timeout")]
    #[schemars(length(max = 16), regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub drain_timeout: String,
}

fn default_drain_timeout() -> String {
    "30m".into()
}

/// Observed state of a NodePool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Nodes by state.
    #[serde(default)]
    pub nodes: NodeCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeResources>,
    /// Requested by the pods bound to the pool's nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<NodeResources>,
    /// Progress of each maintenance entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceStatus>,
}

/// Nodes of a pool by state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub total: i32,
    pub ready: i32,
    pub not_ready: i32,
    pub onboarding: i32,
    pub cordoned: i32,
    pub draining: i32,
}

/// Progress of a maintenance entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatus {
    pub name: String,
    /// `Draining`, `Drained` or `TimedOut`.
    pub phase: String,
    /// Pods still on the nodes.
    pub pods_left: i32,
    /// Pods still to move and why each stays (a budget, a refused eviction, the timeout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<BlockedPod>,
    /// When the entry first appeared: the drain timeout counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// A pod a drain could not move yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct BlockedPod {
    pub namespace: String,
    pub pod: String,
    /// The PodDisruptionBudget covering the pod, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub budget: String,
    /// Why it is still there: the budget allows no disruption, the apiserver refused the
    /// eviction (with its answer), or the drain timed out.
    #[serde(default)]
    pub reason: String,
}
