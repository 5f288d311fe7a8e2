//! What the engine reasons about: nodes with their topology and devices, pods with their
//! requests and constraints. Plain data, built by the simulator from traces and by the
//! Kubernetes scheduler from watched objects.

use std::collections::BTreeMap;

/// The node label every node has its own value of.
pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// Milli-units of one GPU: 1000 is a whole device.
pub const GPU_MILLI: u32 = 1000;

/// Countable resources of a node or a pod (GPUs are devices, see [`Node::gpus`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub pods: u64,
    /// Extended resources other than GPUs, by name (sorted, for stable comparisons).
    pub extended: BTreeMap<String, u64>,
}

impl Resources {
    pub fn new(cpu_milli: u64, memory_bytes: u64) -> Self {
        Resources { cpu_milli, memory_bytes, pods: 1, extended: BTreeMap::new() }
    }

    /// Whether `request` fits into `self` taken as what is free; the first resource that does
    /// not fit otherwise.
    pub fn first_shortage(&self, request: &Resources) -> Option<Shortage> {
        if request.pods > self.pods {
            return Some(Shortage::Pods);
        }
        if request.cpu_milli > self.cpu_milli {
            return Some(Shortage::Cpu);
        }
        if request.memory_bytes > self.memory_bytes {
            return Some(Shortage::Memory);
        }
        if request.extended.is_empty() {
            return None;
        }
        request
            .extended
            .iter()
            .find(|(name, amount)| self.extended.get(*name).copied().unwrap_or(0) < **amount)
            .map(|(name, _)| Shortage::Extended(name.clone()))
    }

    /// Adds `other`; saturates, so absurd requests can never wrap into small ones.
    pub fn add(&mut self, other: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_add(other.cpu_milli);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.pods = self.pods.saturating_add(other.pods);
        for (name, amount) in &other.extended {
            let have = self.extended.entry(name.clone()).or_insert(0);
            *have = have.saturating_add(*amount);
        }
    }

    /// Sets `self` to what `allocatable` leaves after `allocated` (none where it is exceeded).
    pub fn set_remaining(&mut self, allocatable: &Resources, allocated: &Resources) {
        self.cpu_milli = allocatable.cpu_milli.saturating_sub(allocated.cpu_milli);
        self.memory_bytes = allocatable.memory_bytes.saturating_sub(allocated.memory_bytes);
        self.pods = allocatable.pods.saturating_sub(allocated.pods);
        for (name, total) in &allocatable.extended {
            let left = total.saturating_sub(allocated.extended.get(name).copied().unwrap_or(0));
            match self.extended.get_mut(name) {
                Some(free) => *free = left,
                None => {
                    self.extended.insert(name.clone(), left);
                }
            }
        }
    }

    /// Subtracts what was added before; saturates so a bookkeeping slip can never wrap.
    pub fn sub(&mut self, other: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_sub(other.cpu_milli);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
        self.pods = self.pods.saturating_sub(other.pods);
        for (name, amount) in &other.extended {
            if let Some(have) = self.extended.get_mut(name) {
                *have = have.saturating_sub(*amount);
            }
        }
    }
}

/// A resource a node lacks for a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shortage {
    Pods,
    Cpu,
    Memory,
    Extended(String),
}

/// Where a node stands: region > site > rack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topology {
    pub region: String,
    /// `east` or `west`, in the sense of "East Data, West Compute".
    pub region_class: String,
    pub site: String,
    pub rack: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TolerationOperator {
    Equal,
    Exists,
}

/// A toleration with Kubernetes semantics: an empty key with `Exists` tolerates every taint,
/// no effect tolerates every effect.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Toleration {
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|effect| effect != taint.effect) {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

/// One node-selector requirement (`matchExpressions` entry).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Kubernetes semantics: `Gt`/`Lt` compare integers and fail on a missing label or one
    /// that is not an integer.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_option(labels.get(&self.key))
    }

    /// The requirement applied to one value (a field, which always exists).
    pub fn matches_value(&self, value: &str) -> bool {
        self.matches_option(Some(&value.to_string()))
    }

    fn matches_option(&self, value: Option<&String>) -> bool {
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Gt | Operator::Lt => {
                let (Some(value), Some(bound)) = (value, self.values.first()) else { return false };
                let (Ok(value), Ok(bound)) = (value.parse::<i64>(), bound.parse::<i64>()) else {
                    return false;
                };
                if self.operator == Operator::Gt { value > bound } else { value < bound }
            }
        }
    }
}

/// A node-selector term: all requirements must match. Terms are ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Term {
    pub requirements: Vec<Requirement>,
    /// `matchFields`: requirements on the node's name (`metadata.name`, the only field
    /// Kubernetes allows), checked node by node.
    pub name_requirements: Vec<Requirement>,
}

impl Term {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|requirement| requirement.matches(labels))
    }

    /// Whether the term holds for a node of these labels and this name.
    pub fn matches_node(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        self.matches(labels)
            && self.name_requirements.iter().all(|requirement| requirement.matches_value(name))
    }
}

/// A label selector with Kubernetes semantics: every `matchLabels` pair and every expression
/// (`In`, `NotIn`, `Exists`, `DoesNotExist`) must hold; an empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(key, value)| labels.get(key) == Some(value))
            && self.expressions.iter().all(|requirement| requirement.matches(labels))
    }
}

/// The namespaces a pod affinity term looks at: those named, and those whose labels match
/// `selector` (`Some` of an empty selector is every namespace). Neither names the pod's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceScope {
    pub names: Vec<String>,
    pub selector: Option<LabelSelector>,
}

/// A pod (anti-)affinity term: pods selected by `selector` in `namespaces`, counted per domain
/// of `topology_key` (a node label). `selector: None` selects no pod, as in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAffinityTerm {
    pub selector: Option<LabelSelector>,
    pub namespaces: NamespaceScope,
    pub topology_key: String,
}

/// Whether a spread constraint may be broken when it cannot be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WhenUnsatisfiable {
    DoNotSchedule,
    ScheduleAnyway,
}

/// A pod topology spread constraint: pods selected by `selector` in the pod's own namespace,
/// counted per domain of `topology_key`, may differ between domains by at most `max_skew`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpreadConstraint {
    pub max_skew: u32,
    pub topology_key: String,
    pub when_unsatisfiable: WhenUnsatisfiable,
    pub selector: Option<LabelSelector>,
    /// With fewer eligible domains than this, the global minimum is taken as zero.
    pub min_domains: Option<u32>,
    /// Whether only nodes matching the pod's node selector and affinity count (`Honor`, the
    /// default) or all nodes.
    pub honor_node_affinity: bool,
    /// Whether nodes with taints the pod does not tolerate are left out (`Honor`) or count
    /// (`Ignore`, the default).
    pub honor_node_taints: bool,
}

/// A port a pod takes on its node's address: two pods conflict on a node when protocol and
/// port are equal and their addresses are equal or either is every address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: String,
    /// `0.0.0.0` (or empty) for every address.
    pub ip: String,
    pub port: u16,
}

impl HostPort {
    fn every_address(&self) -> bool {
        self.ip.is_empty() || self.ip == "0.0.0.0" || self.ip == "::"
    }

    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.every_address() || other.every_address())
    }
}

/// Why a volume keeps a pod off a node, in kube-scheduler's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VolumeConflict {
    /// A bound volume's node affinity excludes the node.
    NodeAffinity,
    /// A bound volume's zone or region labels exclude the node.
    Zone,
    /// An unbound WaitForFirstConsumer claim finds no volume (static or provisioned) there.
    NoVolumeToBind,
}

/// What one of a pod's volumes requires of a node: one of `terms` (ORed, as node affinity
/// terms are) must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VolumeRule {
    pub terms: Vec<Term>,
    pub conflict: VolumeConflict,
}

/// A volume attached to the node for a pod, counted against the node's limit for its CSI
/// driver; pods sharing a volume on a node attach it once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    pub driver: String,
    pub volume: String,
}

/// A node as the engine sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub topology: Topology,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Cordoned.
    pub unschedulable: bool,
    pub allocatable: Resources,
    /// Number of GPU devices, each of [`GPU_MILLI`].
    pub gpus: u8,
    pub gpu_model: Option<String>,
    /// The tenant the node is dedicated to: only pods of that tenant's subtree may use it.
    pub dedicated_to: Option<String>,
    /// Most volumes each CSI driver may attach to the node (CSINode).
    pub volume_limits: BTreeMap<String, u32>,
}

impl Node {
    pub fn new(name: impl Into<String>, allocatable: Resources) -> Self {
        Node {
            name: name.into(),
            topology: Topology::default(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            allocatable,
            gpus: 0,
            gpu_model: None,
            dedicated_to: None,
            volume_limits: BTreeMap::new(),
        }
    }
}

/// What a pod asks of GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GpuRequest {
    #[default]
    None,
    /// Whole devices.
    Whole(u8),
    /// Part of one device, in milli (1–999).
    Fraction(u16),
}

impl GpuRequest {
    /// Total GPU milli asked for.
    pub fn milli(self) -> u64 {
        match self {
            GpuRequest::None => 0,
            GpuRequest::Whole(count) => u64::from(count) * u64::from(GPU_MILLI),
            GpuRequest::Fraction(milli) => u64::from(milli),
        }
    }

    /// Devices touched and the milli needed free on each.
    pub fn per_device(self) -> (u8, u16) {
        match self {
            GpuRequest::None => (0, 0),
            GpuRequest::Whole(count) => (count, GPU_MILLI as u16),
            GpuRequest::Fraction(milli) => (1, milli),
        }
    }
}

/// How long a pod may wait on the network to reach its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LatencyClass {
    /// Only sites whose link to the data site is within the realtime latency limit.
    Realtime,
    /// Served to people: prefers low latency, spread over nodes.
    #[default]
    Interactive,
    /// Cheapest site that meets the deadline.
    Batch,
    /// Cheapest site that meets the deadline; least urgent.
    Archive,
}

/// Where a pod's input data lives and how much of it there is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DataLocality {
    pub site: String,
    pub gigabytes: u64,
}

/// A pod as the engine sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    /// Unique key, e.g. `namespace/name`.
    pub key: String,
    pub tenant: Option<String>,
    pub requests: Resources,
    pub gpu: GpuRequest,
    /// GPU models the pod may use; empty for any.
    pub gpu_models: Vec<String>,
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: ORed terms. Empty for none.
    pub required_terms: Vec<Term>,
    /// Preferred node affinity: weight (1–100) and term.
    pub preferred_terms: Vec<(u32, Term)>,
    pub tolerations: Vec<Toleration>,
    pub priority: i32,
    pub latency_class: LatencyClass,
    pub data: Option<DataLocality>,
    /// Expected runtime in seconds, for backfill and energy estimates.
    pub expected_runtime_seconds: Option<u64>,
    /// Seconds from now by which the pod must have finished (batch, archive).
    pub deadline_seconds: Option<u64>,
    /// Replicas with the same spread key (the scheduler uses the owner of interactive pods) are
    /// spread over racks first, then nodes, before any other score.
    pub spread_key: Option<String>,
    /// The gang (PodGroup) the pod belongs to.
    pub gang: Option<String>,
    /// Whether the pod may preempt others (`preemptionPolicy: Never` says no).
    pub preempts: bool,
    /// Whether preemption may evict the pod: a DaemonSet's or a mirror pod would only come back
    /// on the same node, so they never are.
    pub evictable: bool,
    pub namespace: String,
    /// The pod's own labels, which other pods' affinity terms and spread constraints select.
    pub labels: BTreeMap<String, String>,
    /// Required inter-pod affinity: every term must find a selected pod in the node's domain.
    pub affinity: Vec<PodAffinityTerm>,
    /// Required inter-pod anti-affinity: no term may find a selected pod in the node's domain.
    pub anti_affinity: Vec<PodAffinityTerm>,
    /// Preferred inter-pod affinity (positive weight) and anti-affinity (negative weight).
    pub preferred_affinity: Vec<(i64, PodAffinityTerm)>,
    pub spread_constraints: Vec<SpreadConstraint>,
    pub host_ports: Vec<HostPort>,
    /// What the pod's volumes require of a node: every rule must hold.
    pub volume_rules: Vec<VolumeRule>,
    /// Volumes attached to the node for the pod.
    pub attachments: Vec<Attachment>,
    /// The nodes where the pod's resource claims (DRA) can be allocated; `None` without claims.
    pub device_nodes: Option<std::collections::BTreeSet<String>>,
}

impl Pod {
    pub fn new(key: impl Into<String>, requests: Resources) -> Self {
        Pod {
            key: key.into(),
            tenant: None,
            requests,
            gpu: GpuRequest::None,
            gpu_models: Vec::new(),
            node_selector: BTreeMap::new(),
            required_terms: Vec::new(),
            preferred_terms: Vec::new(),
            tolerations: Vec::new(),
            priority: 0,
            latency_class: LatencyClass::default(),
            data: None,
            expected_runtime_seconds: None,
            deadline_seconds: None,
            spread_key: None,
            gang: None,
            preempts: true,
            evictable: true,
            namespace: String::new(),
            labels: BTreeMap::new(),
            affinity: Vec::new(),
            anti_affinity: Vec::new(),
            preferred_affinity: Vec::new(),
            spread_constraints: Vec::new(),
            host_ports: Vec::new(),
            volume_rules: Vec::new(),
            attachments: Vec::new(),
            device_nodes: None,
        }
    }
}
