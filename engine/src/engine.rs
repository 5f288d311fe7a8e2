//! The engine: nodes grouped by what they have free, filters run once per class of alike nodes,
//! scores once per group of nodes in the same state, and the assume/forget bookkeeping of what
//! is placed where.

use std::{
    cell::Cell,
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use self::groups::{GPU_BUCKETS, eligible_buckets, model_buckets, models_allowed};
#[cfg(test)]
use self::groups::{first_fitting_bucket, gpu_bucket};
use self::scoring::{FragKey, Scoring, displaced_steps, frag_key, memo_fragmentation, score_group};
use crate::{
    cost::CostModel,
    explain::Explanation,
    filter::{NodeClass, Reason, TenantScope},
    fxhash::FxHashMap,
    gpu::{GpuFree, MAX_GPUS, Shape, Workload},
    model::{Attachment, GpuRequest, HostPort, Node, Pod, Resources},
    observed::Observed,
    pressure::{self, stranded, stranding_ratio},
    ranking::{Entry, Rankings, Score, compare},
    rng::Rng,
    tenants::{Tenant, Tenants, Usage},
    topology::{NodeFacts, NodeScore, PodFacts, PodIndex, Rules, normalised},
};

/// Index of a node in the engine.
pub type NodeId = u32;

/// How the engine picks among feasible nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The first feasible node in the order nodes were added.
    FirstFit,
    /// Least CPU and GPU left after placing (FGD paper's best-fit: 0–100 score, random ties).
    BestFit,
    /// Most left after placing (kube-scheduler's LeastAllocated: 0–100 score, random ties).
    Spread,
    /// The FGD paper's policy as published: least growth of fragmentation, scored 0–100
    /// through a sigmoid, random ties.
    Fgd,
    /// yiyun's default: preferred affinity, then the cheapest site, then the least expected
    /// loss of GPU (FGD's fragmentation, plus half of it one typical pod later for GPU pods,
    /// plus, for pods of one GPU or less, GPUs left without the CPU GPU pods bring, or the
    /// node's own CPU per GPU when less (for pods without GPUs only while CPU does not run out
    /// first), plus GPUs of a model pinned pods will ask for; in steps of 60 milli-GPU), then
    /// for pods of several GPUs or none the tightest fit; ties to the node added first.
    Yiyun,
}

impl Policy {
    pub const ALL: [Policy; 5] =
        [Policy::FirstFit, Policy::BestFit, Policy::Spread, Policy::Fgd, Policy::Yiyun];

    pub fn name(self) -> &'static str {
        match self {
            Policy::FirstFit => "first-fit",
            Policy::BestFit => "best-fit",
            Policy::Spread => "spread",
            Policy::Fgd => "fgd",
            Policy::Yiyun => "yiyun",
        }
    }

    pub fn parse(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|policy| policy.name() == name)
    }

    /// Whether ties go to nodes in a seeded random order (as in the FGD paper's simulator,
    /// which shuffles node names once) rather than in the order nodes were added.
    fn shuffled_ties(self) -> bool {
        matches!(self, Policy::BestFit | Policy::Spread | Policy::Fgd)
    }
}

/// Where a pod goes: a node and, for GPU pods, the devices and milli it takes on each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub node: NodeId,
    pub gpus: Vec<(u8, u16)>,
}

/// What the state of a node's free resources looks like to the scores: nodes with equal keys
/// are interchangeable for everything but spreading.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ShapeKey {
    class: u32,
    allocatable_cpu: u64,
    allocatable_memory: u64,
    free: Resources,
    /// Sorted, largest first.
    gpus: GpuFree,
}

#[derive(Debug)]
struct Group {
    /// Where the group is listed: bucket and index in it.
    bucket: usize,
    position: usize,
    key: ShapeKey,
    /// Member nodes by (rank, id): the first is the one ties go to.
    members: BTreeSet<(u64, NodeId)>,
    /// The group's own fragmentation, without and with the lookahead, and the workload
    /// generation it was measured under: every score of the group starts from it, and reading
    /// it here spares a lookup in the large memo.
    fragmentation: Cell<[(u64, f64); 2]>,
}

#[derive(Debug)]
struct NodeSlot {
    node: Node,
    /// Where the node stands when scores tie (lower first).
    rank: u64,
    class: u32,
    group: u32,
    /// What the node's pods request together, and what that leaves of its allocatable. Free is
    /// derived, never counted down on its own: a node overcommitted by pods bound elsewhere
    /// gets its room back exactly as they leave.
    allocated: Resources,
    free: Resources,
    gpus: GpuFree,
    pods: BTreeSet<String>,
    /// Host ports the node's pods hold.
    ports: Vec<HostPort>,
    /// Volumes attached for the node's pods, by CSI driver, with how many pods use each.
    attached: BTreeMap<String, HashMap<String, u32>>,
}

impl NodeSlot {
    fn facts(&self) -> NodeFacts<'_> {
        NodeFacts { node: &self.node, ports: &self.ports, attached: &self.attached }
    }

    /// Counts the pod's volumes in (`true`) or out.
    fn attach(&mut self, attachments: &[Attachment], attach: bool) {
        for attachment in attachments {
            let volumes = self.attached.entry(attachment.driver.clone()).or_default();
            let users = volumes.entry(attachment.volume.clone()).or_insert(0);
            *users = if attach { users.saturating_add(1) } else { users.saturating_sub(1) };
            if *users == 0 {
                volumes.remove(&attachment.volume);
            }
            if volumes.is_empty() {
                self.attached.remove(&attachment.driver);
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Bound {
    node: NodeId,
    requests: Resources,
    gpus: Vec<(u8, u16)>,
    usage: Usage,
    tenant: Option<String>,
    spread_key: Option<String>,
    priority: i32,
    /// Order of placement: later pods have done less work, so they are cheaper to preempt.
    sequence: u64,
    /// When the pod is expected to finish (the caller's clock), if its runtime is known.
    ends_at: Option<u64>,
    evictable: bool,
    /// What inter-pod rules and host ports need of it.
    facts: PodFacts,
}

/// Decisions between two measures of the GPU models' pressure (as often as the workload is
/// looked at).
const PRESSURE_EVERY: usize = 64;

/// Pods preemption may evict per minute unless configured otherwise.
pub const DEFAULT_EVICTIONS_PER_MINUTE: usize = 60;

/// A node as gang placement reads it.
pub(crate) struct NodeView<'a> {
    pub id: NodeId,
    pub node: &'a Node,
    pub rank: u64,
    pub class: u32,
    pub free: &'a Resources,
    pub gpus: &'a GpuFree,
}

/// A pod placed on a node, as [`Engine::pods_on`] lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedPod {
    pub key: String,
    pub tenant: Option<String>,
    pub priority: i32,
    pub requests: Resources,
    pub gpus: Vec<(u8, u16)>,
    pub gpu_milli: u64,
    /// Order of placement (later is larger).
    pub sequence: u64,
    /// When the pod is expected to finish, if its runtime is known.
    pub ends_at: Option<u64>,
    pub evictable: bool,
}

/// The placement engine.
pub struct Engine {
    policy: Policy,
    workload: Workload,
    /// The workload measured from the pods asked about; None once the caller fixed one.
    observed: Option<Observed>,
    costs: CostModel,
    pub(crate) tenants: Tenants,
    nodes: Vec<Option<NodeSlot>>,
    ids: HashMap<String, NodeId>,
    classes: Vec<NodeClass>,
    class_ids: HashMap<NodeClass, u32>,
    groups: Vec<Group>,
    group_ids: FxHashMap<ShapeKey, u32>,
    /// Non-empty groups, by GPU model and what their GPUs can still take (see
    /// [`groups::gpu_bucket`]): `GPU_BUCKETS` buckets for each entry of `gpu_models`.
    buckets: Vec<Vec<u32>>,
    /// GPU models of the nodes, in the order first seen (None: nodes without a model).
    gpu_models: Vec<Option<String>>,
    spare_groups: Vec<u32>,
    pods: HashMap<String, Bound>,
    /// Replicas per spread key per node.
    spread: HashMap<String, HashMap<NodeId, u32>>,
    frag_memo: FxHashMap<FragKey, f64>,
    /// Counts the workloads measured against, so a group knows its cached fragmentation stale.
    workload_generation: u64,
    /// By GPU model (as `gpu_models`): how much of its free GPUs pinned pods will ask for
    /// (see [`pressure::model_pressure`]); yiyun only.
    model_pressure: Vec<f64>,
    /// Whether CPU runs out before GPUs for the measured workload (see
    /// [`pressure::cpu_binds`]); yiyun only, measured with the model pressure.
    cpu_binds: bool,
    /// Decisions since the model pressure was last measured.
    since_pressure: usize,
    /// Groups in score order for the typical pod shapes.
    rankings: Rankings,
    /// Whether decisions read the rankings (off only to check them against scoring every group).
    use_rankings: bool,
    rng: Rng,
    node_count: usize,
    /// Largest allocatable CPU and GPU milli of any node, to normalise best-fit scores.
    largest_cpu: u64,
    largest_gpu: u64,
    /// Allocatable CPU milli and GPU milli of all nodes.
    cpu_capacity: u64,
    gpu_capacity: u64,
    gpu_allocated: u64,
    /// Pods placed so far, for their sequence numbers.
    placements: u64,
    /// When (caller's seconds) recent preemptions evicted pods, one entry per victim.
    pub(crate) evictions: std::collections::VecDeque<u64>,
    /// Most pods preemption may evict per minute.
    pub(crate) evictions_per_minute: usize,
    /// The caller's clock (seconds), for expected end times and reservations.
    pub(crate) now: u64,
    /// Nodes held for a blocked gang, see [`crate::reserve`].
    pub(crate) reserved: FxHashMap<NodeId, Hold>,
    /// Placed pods counted per topology domain, for inter-pod affinity and spread.
    index: PodIndex,
}

/// A node held for a gang from `starts_at` on: until then only pods that finish before may use
/// it (backfill).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hold {
    pub gang: String,
    pub starts_at: u64,
}

impl Hold {
    /// Whether `pod` may use the held node now.
    pub(crate) fn admits(&self, pod: &Pod, now: u64) -> bool {
        pod.gang.as_deref() == Some(self.gang.as_str())
            || pod
                .expected_runtime_seconds
                .is_some_and(|runtime| now.saturating_add(runtime) <= self.starts_at)
    }
}

impl Engine {
    pub fn new(policy: Policy, seed: u64) -> Self {
        Engine {
            policy,
            workload: Workload::default(),
            observed: Some(Observed::default()),
            costs: CostModel::default(),
            tenants: Tenants::default(),
            nodes: Vec::new(),
            ids: HashMap::new(),
            classes: Vec::new(),
            class_ids: HashMap::new(),
            groups: Vec::new(),
            group_ids: FxHashMap::default(),
            buckets: Vec::new(),
            gpu_models: Vec::new(),
            spare_groups: Vec::new(),
            pods: HashMap::new(),
            spread: HashMap::new(),
            frag_memo: FxHashMap::default(),
            workload_generation: 0,
            model_pressure: Vec::new(),
            cpu_binds: false,
            since_pressure: 0,
            rankings: Rankings::default(),
            use_rankings: true,
            rng: Rng::new(seed),
            node_count: 0,
            largest_cpu: 1,
            largest_gpu: 1,
            cpu_capacity: 0,
            gpu_capacity: 0,
            gpu_allocated: 0,
            placements: 0,
            evictions: std::collections::VecDeque::new(),
            evictions_per_minute: DEFAULT_EVICTIONS_PER_MINUTE,
            now: 0,
            reserved: FxHashMap::default(),
            index: PodIndex::default(),
        }
    }

    /// Records a namespace's labels (`None`: deleted), which pod affinity terms may select
    /// namespaces by; returns whether they changed.
    pub fn set_namespace(&mut self, name: &str, labels: Option<BTreeMap<String, String>>) -> bool {
        self.index.set_namespace(name, labels)
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Fixes the workload fragmentation is measured against (the FGD paper's policy is given
    /// the pod list's typical pods in advance). Without it, the engine measures the pods it is
    /// asked to place.
    pub fn set_workload(&mut self, workload: Workload) {
        self.observed = None;
        self.workload = workload;
        self.workload_generation += 1;
        self.frag_memo.clear();
        self.rankings.reset(&self.workload);
    }

    /// Rankings kept now.
    #[cfg(test)]
    pub(crate) fn rankings_kept(&self) -> usize {
        self.rankings.kept()
    }

    /// Scores every group for every pod instead of reading the rankings, to check them.
    #[cfg(test)]
    pub(crate) fn without_rankings(mut self) -> Self {
        self.use_rankings = false;
        self
    }

    /// Counts `pod` into the measured workload.
    pub(crate) fn observe(&mut self, pod: &Pod) {
        if let Some(measured) =
            self.observed.as_mut().and_then(|observed| observed.record(pod, &self.workload))
        {
            self.adopt(measured);
        }
    }

    /// The workload measured so far, as many pods of each shape as the measure holds (empty
    /// when the workload was set instead): what a scheduler keeps, so that after a restart it
    /// places its first pods knowing the workload ([`recall_measure`](Self::recall_measure)).
    pub fn measure(&self) -> Vec<(Shape, u32)> {
        self.observed.as_ref().map(Observed::counts).unwrap_or_default()
    }

    /// Takes an earlier measure ([`measure`](Self::measure)) as older than the pods measured
    /// since, and scores by it from the next decision on. Ignored when the workload was set.
    pub fn recall_measure(&mut self, counts: &[(Shape, u32)]) {
        if let Some(measured) = self.observed.as_mut().map(|observed| observed.recall(counts)) {
            self.adopt(measured);
        }
    }

    fn adopt(&mut self, measured: Workload) {
        self.workload = measured;
        self.workload_generation += 1;
        self.frag_memo.clear();
        self.rankings.reset(&self.workload);
        self.since_pressure = PRESSURE_EVERY;
    }

    /// Measures again, every [`PRESSURE_EVERY`] decisions, how much of each GPU model's free
    /// GPUs pinned pods will ask for, and whether CPU runs out first. Rankings leave the
    /// pressure out (it moves with every placement); decisions take it off the scores they
    /// read, see [`displaced_steps`].
    fn measure_pressure(&mut self) {
        if self.policy != Policy::Yiyun {
            return;
        }
        self.since_pressure += 1;
        if self.since_pressure < PRESSURE_EVERY && self.model_pressure.len() == self.gpu_models.len() {
            return;
        }
        self.since_pressure = 0;
        let mut free = vec![0u64; self.gpu_models.len()];
        for group in &self.groups {
            if let Some(slot) = free.get_mut(group.bucket / GPU_BUCKETS) {
                *slot += group.members.len() as u64 * group.key.gpus.total();
            }
        }
        let models: Vec<(Option<&str>, u64)> =
            self.gpu_models.iter().map(Option::as_deref).zip(free).collect();
        self.model_pressure = pressure::model_pressure(&self.workload, &models);
        let cpu_binds = pressure::cpu_binds(&self.workload, self.cpu_capacity, self.gpu_capacity);
        if cpu_binds != self.cpu_binds {
            // Scores of pods without GPUs depend on it.
            self.cpu_binds = cpu_binds;
            self.rankings.reset(&self.workload);
        }
    }

    /// Sets the clock (seconds): pods placed from now on are expected to end at now plus their
    /// expected runtime.
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// Most pods preemption may evict per minute.
    pub fn set_evictions_per_minute(&mut self, limit: usize) {
        self.evictions_per_minute = limit;
    }

    pub fn set_costs(&mut self, costs: CostModel) {
        self.costs = costs;
    }

    pub fn costs(&self) -> &CostModel {
        &self.costs
    }

    pub fn upsert_tenant(&mut self, tenant: Tenant) {
        self.tenants.upsert(tenant);
    }

    pub fn remove_tenant(&mut self, name: &str) {
        self.tenants.remove(name);
    }

    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    pub fn node_count(&self) -> usize {
        self.node_count
    }

    /// Distinct states nodes are in (what one decision iterates over).
    pub fn group_count(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.slot(id).map(|slot| &slot.node)
    }

    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.ids.get(name).copied()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().enumerate().filter(|(_, slot)| slot.is_some()).map(|(id, _)| id as NodeId)
    }

    /// What is free on a node: resources and GPU devices.
    pub fn free(&self, id: NodeId) -> Option<(&Resources, &GpuFree)> {
        self.slot(id).map(|slot| (&slot.free, &slot.gpus))
    }

    /// GPU milli of all nodes, and how much of it pods hold.
    pub fn gpu_milli(&self) -> (u64, u64) {
        (self.gpu_capacity, self.gpu_allocated)
    }

    /// Where a placed pod is.
    pub fn placement_of(&self, pod_key: &str) -> Option<Placement> {
        self.pods.get(pod_key).map(|bound| Placement { node: bound.node, gpus: bound.gpus.clone() })
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Pods placed on a node.
    pub fn pods_on(&self, id: NodeId) -> Vec<PlacedPod> {
        let Some(slot) = self.slot(id) else { return Vec::new() };
        slot.pods
            .iter()
            .filter_map(|key| {
                self.pods.get(key).map(|bound| PlacedPod {
                    key: key.clone(),
                    tenant: bound.tenant.clone(),
                    priority: bound.priority,
                    requests: bound.requests.clone(),
                    gpus: bound.gpus.clone(),
                    gpu_milli: bound.usage.gpu_milli,
                    sequence: bound.sequence,
                    ends_at: bound.ends_at,
                    evictable: bound.evictable,
                })
            })
            .collect()
    }

    fn slot(&self, id: NodeId) -> Option<&NodeSlot> {
        self.nodes.get(id as usize).and_then(Option::as_ref)
    }

    /// Every node with what gang placement needs of it.
    pub(crate) fn node_views(&self) -> impl Iterator<Item = NodeView<'_>> {
        (0..self.nodes.len() as NodeId).filter_map(|id| self.node_view(id))
    }

    pub(crate) fn node_view(&self, id: NodeId) -> Option<NodeView<'_>> {
        self.slot(id).map(|slot| NodeView {
            id,
            node: &slot.node,
            rank: slot.rank,
            class: slot.class,
            free: &slot.free,
            gpus: &slot.gpus,
        })
    }

    /// Adds a node, or updates one the engine knows (its pods stay placed on it).
    pub fn upsert_node(&mut self, node: Node) -> NodeId {
        let class = self.class_of(&node);
        if let Some(&id) = self.ids.get(&node.name) {
            let Some(slot) = self.nodes.get_mut(id as usize).and_then(Option::take) else { return id };
            self.leave_group(id, slot.rank, slot.group);
            let relabelled = slot.node.labels != node.labels || slot.class != class;
            if relabelled {
                self.index.count_node(&slot.node, slot.class, -1);
                self.index.count_node(&node, class, 1);
                for bound in slot.pods.iter().filter_map(|key| self.pods.get(key)) {
                    self.index.count_pod(&bound.facts, &slot.node, slot.class, -1);
                    self.index.count_pod(&bound.facts, &node, class, 1);
                }
            }
            self.cpu_capacity = self.cpu_capacity.saturating_sub(slot.node.allocatable.cpu_milli);
            self.gpu_capacity = self.gpu_capacity.saturating_sub(slot.gpus.devices().len() as u64 * 1000);
            self.gpu_allocated = self
                .gpu_allocated
                .saturating_sub(slot.gpus.devices().iter().map(|&f| 1000 - u64::from(f)).sum::<u64>());
            let mut allocated = Resources::default();
            let mut gpus = GpuFree::idle(node.gpus);
            for key in &slot.pods {
                if let Some(bound) = self.pods.get(key) {
                    allocated.add(&bound.requests);
                    gpus.take(&bound.gpus);
                }
            }
            let mut free = node.allocatable.clone();
            free.set_remaining(&node.allocatable, &allocated);
            let (ports, attached) = (slot.ports, slot.attached);
            self.install(
                id,
                NodeSlot {
                    node,
                    rank: slot.rank,
                    class,
                    group: 0,
                    allocated,
                    free,
                    gpus,
                    pods: slot.pods,
                    ports,
                    attached,
                },
            );
            return id;
        }
        let id = self.nodes.len() as NodeId;
        self.ids.insert(node.name.clone(), id);
        self.nodes.push(None);
        self.node_count += 1;
        let free = node.allocatable.clone();
        let allocated = Resources::default();
        let gpus = GpuFree::idle(node.gpus);
        let rank = if self.policy.shuffled_ties() { self.rng.next_u64() } else { u64::from(id) };
        self.index.count_node(&node, class, 1);
        let (pods, ports, attached) = (BTreeSet::new(), Vec::new(), BTreeMap::new());
        let slot = NodeSlot { node, rank, class, group: 0, allocated, free, gpus, pods, ports, attached };
        self.install(id, slot);
        id
    }

    /// Removes a node; returns the keys of the pods that were placed on it (now forgotten).
    pub fn remove_node(&mut self, name: &str) -> Vec<String> {
        let Some(id) = self.ids.remove(name) else { return Vec::new() };
        let Some(slot) = self.nodes.get_mut(id as usize).and_then(Option::take) else { return Vec::new() };
        self.leave_group(id, slot.rank, slot.group);
        self.node_count -= 1;
        self.index.count_node(&slot.node, slot.class, -1);
        // What its pods hold is given back as each is forgotten below.
        self.cpu_capacity = self.cpu_capacity.saturating_sub(slot.node.allocatable.cpu_milli);
        self.gpu_capacity = self.gpu_capacity.saturating_sub(slot.gpus.devices().len() as u64 * 1000);
        let displaced: Vec<String> = slot.pods.into_iter().collect();
        for key in &displaced {
            if let Some(bound) = self.pods.remove(key) {
                self.index.count_pod(&bound.facts, &slot.node, slot.class, -1);
                self.unaccount(&bound);
            }
        }
        displaced
    }

    fn install(&mut self, id: NodeId, mut slot: NodeSlot) {
        let largest = (self.largest_cpu, self.largest_gpu);
        self.largest_cpu = self.largest_cpu.max(slot.node.allocatable.cpu_milli);
        self.largest_gpu = self.largest_gpu.max(u64::from(slot.node.gpus) * 1000);
        if largest != (self.largest_cpu, self.largest_gpu) {
            // Best-fit terms are normalised by the largest node.
            self.rankings.reset(&self.workload);
        }
        self.cpu_capacity += slot.node.allocatable.cpu_milli;
        self.gpu_capacity += slot.gpus.devices().len() as u64 * 1000;
        self.gpu_allocated += slot.gpus.devices().iter().map(|&f| 1000 - u64::from(f)).sum::<u64>();
        slot.group = self.join_group(id, &slot);
        self.nodes[id as usize] = Some(slot);
    }

    /// Decides where `pod` goes without placing it, or explains why it cannot go anywhere.
    pub fn decide(&mut self, pod: &Pod) -> Result<Placement, Explanation> {
        self.decision(pod, true)
    }

    /// Places `pod` where [`decide`](Self::decide) would, without explaining a failure (which
    /// counts every node's reason): for callers that only count failures, like the simulator.
    pub fn try_schedule(&mut self, pod: &Pod) -> Option<Placement> {
        let placement = self.decision(pod, false).ok()?;
        self.assume(pod, &placement);
        Some(placement)
    }

    /// Places `pod` where [`decide`](Self::decide) says.
    pub fn schedule(&mut self, pod: &Pod) -> Result<Placement, Explanation> {
        let placement = self.decide(pod)?;
        self.assume(pod, &placement);
        Ok(placement)
    }

    /// Records `pod` as placed (decided here, or bound by someone else and observed). A pod
    /// already placed is moved. A pod bound by someone else, or before a restart, counts into
    /// the measured workload too: the pods running are a sample of what arrives, so a scheduler
    /// starting in a busy cluster does not decide its first pods against an empty workload (a
    /// pod decided here was counted when it was asked about, and counts once).
    pub fn assume(&mut self, pod: &Pod, placement: &Placement) {
        self.observe(pod);
        self.assume_measured(pod, placement);
    }

    /// [`assume`](Self::assume) for a pod the measure counts already: one placed before a
    /// restart, which the measure recalled then holds ([`recall_measure`](Self::recall_measure)).
    pub fn assume_measured(&mut self, pod: &Pod, placement: &Placement) {
        self.forget(&pod.key);
        let Some(slot) = self.nodes.get_mut(placement.node as usize).and_then(Option::as_mut) else { return };
        slot.allocated.add(&pod.requests);
        slot.free.set_remaining(&slot.node.allocatable, &slot.allocated);
        slot.gpus.take(&placement.gpus);
        slot.pods.insert(pod.key.clone());
        slot.ports.extend(pod.host_ports.iter().cloned());
        slot.attach(&pod.attachments, true);
        let facts = PodFacts::of(pod);
        self.index.count_pod(&facts, &slot.node, slot.class, 1);
        let usage = usage_of(pod);
        self.gpu_allocated += placement.gpus.iter().map(|(_, milli)| u64::from(*milli)).sum::<u64>();
        if let Some(tenant) = &pod.tenant {
            self.tenants.charge(tenant, usage);
        }
        if let Some(key) = &pod.spread_key {
            *self.spread.entry(key.clone()).or_default().entry(placement.node).or_insert(0) += 1;
        }
        self.pods.insert(
            pod.key.clone(),
            Bound {
                node: placement.node,
                requests: pod.requests.clone(),
                gpus: placement.gpus.clone(),
                usage,
                tenant: pod.tenant.clone(),
                spread_key: pod.spread_key.clone(),
                priority: pod.priority,
                sequence: self.placements,
                ends_at: pod.expected_runtime_seconds.map(|runtime| self.now.saturating_add(runtime)),
                evictable: pod.evictable,
                facts,
            },
        );
        self.placements += 1;
        self.regroup(placement.node);
    }

    /// Forgets a pod (finished, deleted or its binding failed); returns whether it was placed.
    pub fn forget(&mut self, pod_key: &str) -> bool {
        let Some(bound) = self.pods.remove(pod_key) else { return false };
        if let Some(slot) = self.nodes.get_mut(bound.node as usize).and_then(Option::as_mut) {
            slot.allocated.sub(&bound.requests);
            slot.free.set_remaining(&slot.node.allocatable, &slot.allocated);
            slot.gpus.give_back(&bound.gpus);
            slot.pods.remove(pod_key);
            for port in &bound.facts.host_ports {
                if let Some(index) = slot.ports.iter().position(|held| held == port) {
                    slot.ports.swap_remove(index);
                }
            }
            slot.attach(&bound.facts.attachments, false);
            self.index.count_pod(&bound.facts, &slot.node, slot.class, -1);
        }
        self.unaccount(&bound);
        self.regroup(bound.node);
        true
    }

    fn unaccount(&mut self, bound: &Bound) {
        self.gpu_allocated = self
            .gpu_allocated
            .saturating_sub(bound.gpus.iter().map(|(_, milli)| u64::from(*milli)).sum::<u64>());
        if let Some(tenant) = &bound.tenant {
            self.tenants.refund(tenant, bound.usage);
        }
        if let Some(key) = &bound.spread_key
            && let Some(replicas) = self.spread.get_mut(key)
        {
            if let Some(count) = replicas.get_mut(&bound.node) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    replicas.remove(&bound.node);
                }
            }
            if replicas.is_empty() {
                self.spread.remove(key);
            }
        }
    }

    /// Fragmentation of the whole cluster against the workload, in GPU milli.
    pub fn fragmentation(&mut self) -> f64 {
        let mut total = 0.0;
        for &group_index in self.buckets.iter().flatten() {
            let group = &self.groups[group_index as usize];
            let members = group.members.len() as f64;
            let key = frag_key(false, &self.workload, group, group.key.free.cpu_milli, group.key.gpus);
            let model = self.classes[group.key.class as usize].gpu_model.as_deref();
            total += members * memo_fragmentation(&mut self.frag_memo, &self.workload, key, model);
        }
        total
    }

    /// GPU capacity, allocation and fragmentation (against the workload) of each site's nodes,
    /// in GPU milli; sites without GPUs are left out.
    pub fn gpus_by_site(&mut self) -> BTreeMap<String, SiteGpus> {
        let mut sites: BTreeMap<String, SiteGpus> = BTreeMap::new();
        for &group_index in self.buckets.iter().flatten() {
            let group = &self.groups[group_index as usize];
            let key = frag_key(false, &self.workload, group, group.key.free.cpu_milli, group.key.gpus);
            let model = self.classes[group.key.class as usize].gpu_model.as_deref();
            let fragmentation = memo_fragmentation(&mut self.frag_memo, &self.workload, key, model);
            for &(_, id) in &group.members {
                let Some(slot) = self.nodes.get(id as usize).and_then(Option::as_ref) else { continue };
                let capacity = slot.gpus.devices().len() as u64 * 1000;
                if capacity == 0 {
                    continue;
                }
                let site = sites.entry(slot.node.topology.site.clone()).or_default();
                site.capacity_milli += capacity;
                site.allocated_milli += capacity.saturating_sub(slot.gpus.total());
                site.fragmentation_milli += fragmentation;
            }
        }
        sites
    }
}

/// A site's GPUs, in GPU milli.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteGpus {
    pub capacity_milli: u64,
    pub allocated_milli: u64,
    /// Free GPU milli that the typical pods of the workload cannot use (FGD's measure).
    pub fragmentation_milli: f64,
}

/// What a pod counts against its tenant.
pub(crate) fn usage_of(pod: &Pod) -> Usage {
    Usage {
        cpu_milli: pod.requests.cpu_milli,
        memory_bytes: pod.requests.memory_bytes,
        gpu_milli: pod.gpu.milli(),
    }
}

mod decide;
mod groups;
mod scoring;
#[cfg(test)]
mod scoring_tests;
