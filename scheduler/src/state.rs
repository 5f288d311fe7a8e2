//! The scheduler's state, with no I/O: watch events and the outcomes of its writes come in,
//! decisions go out as [`Effect`]s that the edge ([`crate::edge`]) carries out. It owns the
//! engine; nothing else touches it, so it needs no lock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node as KubeNode, PersistentVolume, PersistentVolumeClaim, Pod as KubePod},
    policy::v1::PodDisruptionBudget,
    resource::v1::{DeviceClass, ResourceClaim, ResourceSlice},
    storage::v1::{CSINode, StorageClass},
};
use kube::{ResourceExt, runtime::watcher};
use tracing::{info, warn};
use yiyun_crds::{ComputeSite, PodGroup, PodGroupPhase, Tenant, TopologyLevel, TopologyMode, labels};
use yiyun_engine::{
    Engine, Placement, Policy,
    gang::{Gang, Level, Mode},
    gpu::Shape,
    model::{Node, Pod},
};
use yiyun_kube::{
    backoff::{Backoff, Retries},
    disruption::{disruptions_allowed, first_broken},
};

use crate::{
    Config, convert,
    devices::{ClaimWrite, Devices, PodClaim},
    metrics::Metrics,
    volumes::{Unbound, VolumeWrite, Volumes, claims_of},
};

/// The span of one try to place a pod or a gang (`kind`) named `key` (`namespace/name`): the
/// object, tenant and outcome are its attributes in traces and on each log line inside it.
fn scheduling_cycle(kind: &'static str, key: &str, tenant: Option<&str>) -> tracing::Span {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    yiyun_admin::trace::with_trace_id(tracing::info_span!(
        "scheduling_cycle",
        kind,
        namespace,
        object = name,
        tenant,
        outcome = tracing::field::Empty,
        node = tracing::field::Empty,
        reason = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    ))
}

/// The name part of a `namespace/name` key.
fn pod_name(key: &str) -> &str {
    key.split_once('/').map_or(key, |(_, name)| name)
}

/// Unschedulable pods are retried at least this often, whatever happens.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);
/// How often the sites' GPU gauges are measured.
const GPU_GAUGES_EVERY: Duration = Duration::from_secs(15);
/// Failed bindings are retried from half a second, doubling, to half a minute, with jitter.
const BIND_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// What the watches report. Boxed objects would add an allocation per event for nothing: the
/// events are moved once, from the watch to `apply`.
#[allow(clippy::large_enum_variant)]
pub enum Update {
    Node(watcher::Event<KubeNode>),
    Pod(watcher::Event<KubePod>),
    Namespace(watcher::Event<Namespace>),
    PodGroup(watcher::Event<PodGroup>),
    Tenant(watcher::Event<Tenant>),
    Site(watcher::Event<ComputeSite>),
    Budget(watcher::Event<PodDisruptionBudget>),
    Claim(watcher::Event<PersistentVolumeClaim>),
    Volume(watcher::Event<PersistentVolume>),
    StorageClass(watcher::Event<StorageClass>),
    CsiNode(watcher::Event<CSINode>),
    ResourceClaim(watcher::Event<ResourceClaim>),
    ResourceSlice(watcher::Event<ResourceSlice>),
    DeviceClass(watcher::Event<DeviceClass>),
    /// A watch failed (it restarts by itself): which kind, and why.
    Lost(&'static str, String),
}

/// A pod waiting for a node.
#[derive(Clone)]
struct Pending {
    pod: Pod,
    uid: String,
    /// The claims its volumes use.
    claims: Vec<String>,
    /// Its resource claims (DRA): its name for each, and the claim's once known.
    device_claims: Vec<(String, Option<String>)>,
}

/// Which unschedulable pods a change may let fit, gathered between rounds: as kube-scheduler's
/// queueing hints, a change of volumes or devices wakes only the pods that use them, so that a
/// stream of claim updates does not try every waiting pod again and again.
#[derive(Debug, Default)]
struct Wake {
    /// Capacity, nodes, labels or groups changed: every pod.
    all: bool,
    /// Volumes, storage classes or attach limits changed: pods with volume claims.
    volumes: bool,
    /// Devices went free or slices or classes changed: pods with resource claims.
    devices: bool,
    /// Resource claims changed (`namespace/name`): the pods that use them.
    claims: HashSet<String>,
}

impl Wake {
    fn any(&self) -> bool {
        self.all || self.volumes || self.devices || !self.claims.is_empty()
    }

    fn wakes(&self, pending: Option<&Pending>) -> bool {
        let Some(pending) = pending else { return true };
        self.all
            || (self.volumes && !pending.claims.is_empty())
            || (self.devices && !pending.device_claims.is_empty())
            // A claim made from a template and not yet named in the pod's status is woken by
            // the pod's own update.
            || pending.device_claims.iter().filter_map(|(_, claim)| claim.as_ref()).any(|claim| {
                self.claims.contains(&format!("{}/{claim}", pending.pod.namespace))
            })
    }
}

/// A PodGroup as the scheduler tracks it.
struct Group {
    gang: Gang,
    created: Instant,
    timeout: Option<Duration>,
    timed_out: bool,
    /// The status last written: phase, placed, running.
    written: Option<(PodGroupPhase, i32, i32)>,
    /// What the gang lacks, while it waits.
    waiting_for: Option<String>,
}

/// A pod bound to a node, as the watch last showed it.
#[derive(Clone)]
struct BoundPod {
    pod: Pod,
    gpus: Option<Vec<(u8, u16)>>,
    running: bool,
    /// What PodDisruptionBudgets select it by.
    labels: BTreeMap<String, String>,
    /// The claims its volumes use.
    claims: Vec<String>,
}

/// What a task reports back.
pub enum Done {
    /// A binding of pod `key`.
    Bound { key: String, result: Result<(), kube::Error>, seconds: f64 },
    /// An eviction of `victim` to make room for `preemptor`.
    Evicted { victim: String, preemptor: String, result: Result<(), kube::Error> },
}

/// A pod waiting for the pods it preempted to be gone before it is bound where it was
/// nominated.
struct Nomination {
    victims: HashSet<String>,
    node: String,
    since: Instant,
}

/// What trying to preempt for a pod came to.
enum Preempted {
    /// Victims are being evicted; the pod is nominated.
    Started,
    /// No set of victims makes room (or the rate limit holds).
    NotPossible,
    /// Room could be made, but not without breaking a PodDisruptionBudget: nothing evicted.
    BudgetRefuses(String),
}

/// Keys seen while a watch relists (at start, or after its resourceVersion expired with 410
/// Gone), so that what was deleted meanwhile, which sends no Delete, is forgotten at the end.
#[derive(Default)]
struct Relist(Option<HashSet<String>>);

impl Relist {
    fn start(&mut self) {
        self.0 = Some(HashSet::new());
    }

    fn saw(&mut self, key: &str) {
        if let Some(seen) = &mut self.0 {
            seen.insert(key.to_string());
        }
    }

    /// The keys the relist saw, once; `None` when no relist was under way.
    fn finish(&mut self) -> Option<HashSet<String>> {
        self.0.take()
    }
}

/// Which watches have listed everything once.
#[derive(Default)]
struct Synced {
    nodes: bool,
    pods: bool,
    namespaces: bool,
    groups: bool,
    tenants: bool,
    sites: bool,
    budgets: bool,
}

impl Synced {
    fn all(&self) -> bool {
        self.nodes
            && self.pods
            && self.namespaces
            && self.groups
            && self.tenants
            && self.sites
            && self.budgets
    }
}

/// A write the state asks the edge to make. Its outcome, where it matters, comes back as a
/// [`Done`].
#[derive(Debug)]
pub enum Effect {
    /// Bind pod `key` (`namespace/name`, uid `uid`) to `node`, with its GPU devices if any,
    /// once the volume writes are made and its resource claims allocated.
    Bind {
        key: String,
        uid: String,
        node: String,
        gpus: Option<String>,
        volumes: Vec<VolumeWrite>,
        claims: Vec<ClaimWrite>,
    },
    /// Record that `pod` waits for preemption victims to leave `node`.
    Nominate { pod: String, node: String },
    /// Evict `victim` to make room for `preemptor`.
    Evict { victim: String, preemptor: String },
    /// Write a PodGroup's status (`key` is `namespace/name`).
    GroupStatus { key: String, status: serde_json::Value },
    /// Tell a pod (and its events) why it waits.
    Unschedulable { key: String, uid: String, message: String },
    /// A pod is gone: forget what was reported about it.
    Forget { key: String },
}

pub struct State {
    config: Config,
    engine: Engine,
    /// Tenant of each namespace (label `yiyun.io/tenant`).
    tenant_of: HashMap<String, String>,
    /// Every namespace the watch has shown, to forget those a relist no longer lists.
    namespaces: HashSet<String>,
    pending: BTreeMap<String, Pending>,
    /// Pending pods to try in the next round.
    active: BTreeSet<String>,
    /// Pending pods that did not fit, with when they were last tried and why not (a metric
    /// label).
    unschedulable: HashMap<String, (Instant, &'static str)>,
    /// Pods whose binding failed (an apiserver down, a timeout), with when to try again: a
    /// dead apiserver is not hammered with every pod at every round.
    retry_at: HashMap<String, Instant>,
    bind_retries: Retries<String>,
    /// Which unschedulable pods what changed may let fit.
    wake: Wake,
    binding: HashSet<String>,
    /// Pods bound and not yet seen bound by the watch, with their uid.
    just_bound: HashMap<String, String>,
    /// Bound pods by node, to account them again when their node (re)appears.
    bound_on: HashMap<String, HashMap<String, BoundPod>>,
    groups: HashMap<String, Group>,
    sites: BTreeMap<String, ComputeSite>,
    /// PodDisruptionBudgets by `namespace/name`: preemption evicts all its victims or none.
    budgets: HashMap<String, PodDisruptionBudget>,
    /// Claims, volumes, storage classes and CSI nodes.
    volumes: Volumes,
    /// Claims of pods being placed that wait for their first consumer, by pod.
    unbound: HashMap<String, Vec<Unbound>>,
    /// Claims whose volumes a binding in flight writes, by pod.
    volume_writes: HashMap<String, Vec<String>>,
    /// Resource claims, slices and device classes.
    devices: Devices,
    /// The resource claims of pods being placed, by pod.
    device_claims: HashMap<String, Vec<PodClaim>>,
    /// Resource claims a binding in flight allocates, by pod.
    claim_writes: HashMap<String, Vec<String>>,
    synced: Synced,
    /// Whether the measure was recalled from the saved one (which counts the pods bound then).
    recalled: bool,
    /// Keys seen while a watch relists, to drop what is gone afterwards.
    relisting_nodes: Relist,
    relisting_pods: Relist,
    relisting_tenants: Relist,
    relisting_namespaces: Relist,
    relisting_groups: Relist,
    relisting_budgets: Relist,
    /// Bindings sent and not answered yet; at most `--bind-concurrency`.
    binds_in_flight: usize,
    nominated: HashMap<String, Nomination>,
    metrics: Metrics,
    first_bind_logged: bool,
    started: Instant,
    /// When the per-site GPU gauges were last brought up to date.
    gauges_at: Option<Instant>,
    /// What the edge is to do next.
    effects: Vec<Effect>,
}

impl State {
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let mut engine = Engine::new(Policy::Yiyun, 1);
        engine.set_evictions_per_minute(config.evictions_per_minute);
        State {
            binds_in_flight: 0,
            effects: Vec::new(),
            config,
            engine,
            tenant_of: HashMap::new(),
            namespaces: HashSet::new(),
            pending: BTreeMap::new(),
            active: BTreeSet::new(),
            unschedulable: HashMap::new(),
            retry_at: HashMap::new(),
            bind_retries: Retries::new(BIND_RETRY),
            wake: Wake::default(),
            binding: HashSet::new(),
            just_bound: HashMap::new(),
            bound_on: HashMap::new(),
            groups: HashMap::new(),
            sites: BTreeMap::new(),
            budgets: HashMap::new(),
            volumes: Volumes::default(),
            unbound: HashMap::new(),
            volume_writes: HashMap::new(),
            devices: Devices::default(),
            device_claims: HashMap::new(),
            claim_writes: HashMap::new(),
            synced: Synced::default(),
            recalled: false,
            relisting_nodes: Relist::default(),
            relisting_pods: Relist::default(),
            relisting_tenants: Relist::default(),
            relisting_namespaces: Relist::default(),
            relisting_groups: Relist::default(),
            relisting_budgets: Relist::default(),
            nominated: HashMap::new(),
            metrics,
            first_bind_logged: false,
            started: Instant::now(),
            gauges_at: None,
        }
    }

    /// The workload the engine measured, as many pods of each shape as the measure holds; the
    /// gauge of pods measured is brought up to date with it.
    pub fn measure(&self) -> Vec<(Shape, u32)> {
        let counts = self.engine.measure();
        self.metrics.pods_measured.set(counts.iter().map(|(_, pods)| i64::from(*pods)).sum());
        counts
    }

    /// Takes a measure saved before (by this scheduler or the leader it takes over from) as
    /// older than the pods measured since; returns the measure held now.
    pub fn recall_measure(&mut self, counts: &[(Shape, u32)]) -> Vec<(Shape, u32)> {
        self.engine.recall_measure(counts);
        self.recalled = true;
        self.measure()
    }

    /// Whether every watch has listed once: only then are decisions made.
    pub fn synced(&self) -> bool {
        self.synced.all()
            && self.volumes.claims.synced
            && self.volumes.volumes.synced
            && self.volumes.classes.synced
            && self.volumes.csi_nodes.synced
            && self.devices.claims.synced
            && self.devices.slices.synced
            && self.devices.classes.synced
    }

    /// The effects decided since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Bindings that may still start now.
    fn bind_permits(&self) -> usize {
        self.config.bind_concurrency.max(1).saturating_sub(self.binds_in_flight)
    }

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Node(event) => self.node_event(event),
            Update::Pod(event) => self.pod_event(event),
            Update::Namespace(event) => match event {
                watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                    let name = ns.name_any();
                    self.relisting_namespaces.saw(&name);
                    let tenant = ns.labels().get(labels::TENANT).cloned();
                    self.set_tenant_of(name.clone(), tenant);
                    // Pod affinity terms may select namespaces by their labels.
                    self.wake.all |= self.engine.set_namespace(&name, Some(ns.labels().clone()));
                    self.namespaces.insert(name);
                }
                watcher::Event::Delete(ns) => self.namespace_gone(&ns.name_any()),
                watcher::Event::Init => self.relisting_namespaces.start(),
                watcher::Event::InitDone => {
                    if let Some(seen) = self.relisting_namespaces.finish() {
                        let gone: Vec<String> =
                            self.namespaces.iter().filter(|ns| !seen.contains(*ns)).cloned().collect();
                        for namespace in gone {
                            self.namespace_gone(&namespace);
                        }
                    }
                    self.synced.namespaces = true;
                }
            },
            Update::PodGroup(event) => self.group_event(event),
            Update::Tenant(event) => self.tenant_event(event),
            Update::Site(event) => {
                match event {
                    watcher::Event::Apply(site) | watcher::Event::InitApply(site) => {
                        self.sites.insert(site.name_any(), site);
                    }
                    watcher::Event::Delete(site) => {
                        self.sites.remove(&site.name_any());
                    }
                    watcher::Event::Init => self.sites.clear(),
                    watcher::Event::InitDone => self.synced.sites = true,
                }
                self.engine.set_costs(crate::sites::cost_model(self.sites.values()));
                self.wake.all = true;
            }
            Update::Budget(event) => match event {
                watcher::Event::Apply(budget) | watcher::Event::InitApply(budget) => {
                    let key = format!("{}/{}", budget.namespace().unwrap_or_default(), budget.name_any());
                    self.relisting_budgets.saw(&key);
                    self.budgets.insert(key, budget);
                }
                watcher::Event::Delete(budget) => {
                    let key = format!("{}/{}", budget.namespace().unwrap_or_default(), budget.name_any());
                    self.budgets.remove(&key);
                }
                // Budgets stay in force while the watch relists; only the unseen go after.
                watcher::Event::Init => self.relisting_budgets.start(),
                watcher::Event::InitDone => {
                    if let Some(seen) = self.relisting_budgets.finish() {
                        self.budgets.retain(|key, _| seen.contains(key));
                    }
                    self.synced.budgets = true;
                }
            },
            Update::Claim(event) => self.volume_event(|volumes| volumes.claims.apply(event)),
            Update::Volume(event) => self.volume_event(|volumes| volumes.volumes.apply(event)),
            Update::StorageClass(event) => self.volume_event(|volumes| volumes.classes.apply(event)),
            Update::CsiNode(event) => {
                for node in self.volumes.csi_nodes.apply(event) {
                    let Some(mut updated) =
                        self.engine.node_id(&node).and_then(|id| self.engine.node(id)).cloned()
                    else {
                        continue;
                    };
                    updated.volume_limits = self.volumes.limits_of(&node);
                    self.engine.upsert_node(updated);
                    self.wake.volumes = true;
                }
            }
            Update::ResourceClaim(event) => {
                let change = self.devices.apply_claim(event);
                self.wake.claims.extend(change.claims);
                self.wake.devices |= change.freed;
            }
            Update::ResourceSlice(event) => {
                self.devices.apply_slice(event);
                self.wake.devices = true;
            }
            Update::DeviceClass(event) => {
                self.devices.apply_class(event);
                self.wake.devices = true;
            }
            Update::Lost(kind, error) => {
                // Without yiyun's CRDs there are no PodGroups, Tenants or ComputeSites: schedule
                // without them rather than not at all (the watch keeps trying and picks them up
                // once the CRDs are installed).
                let absent = error.contains("404");
                let synced = match kind {
                    "PodGroup" if absent => Some(&mut self.synced.groups),
                    "Tenant" if absent => Some(&mut self.synced.tenants),
                    "ComputeSite" if absent => Some(&mut self.synced.sites),
                    // A cluster that does not serve Dynamic Resource Allocation has no claims.
                    "ResourceClaim" if absent => Some(&mut self.devices.claims.synced),
                    "ResourceSlice" if absent => Some(&mut self.devices.slices.synced),
                    "DeviceClass" if absent => Some(&mut self.devices.classes.synced),
                    _ => None,
                };
                match synced {
                    Some(flag) => {
                        if !*flag {
                            warn!(kind, "the API is not served; scheduling without it");
                        }
                        *flag = true;
                    }
                    None => warn!(kind, %error, "a watch failed; it restarts with backoff"),
                }
            }
        }
    }

    /// A claim, volume or storage class changed: holds on volumes may be settled, waiting pods
    /// may fit, and once claims and volumes have all been listed, bound pods count the volumes
    /// they attach.
    fn volume_event(&mut self, apply: impl FnOnce(&mut Volumes) -> Vec<String>) {
        let was_synced = self.volumes.claims.synced && self.volumes.volumes.synced;
        apply(&mut self.volumes);
        self.volumes.settle();
        self.wake.volumes = true;
        if !was_synced && self.volumes.claims.synced && self.volumes.volumes.synced {
            let bound: Vec<(String, BoundPod)> = self
                .bound_on
                .iter()
                .flat_map(|(node, pods)| pods.values().map(move |pod| (node.clone(), pod.clone())))
                .filter(|(_, pod)| !pod.claims.is_empty())
                .collect();
            for (node, pod) in bound {
                self.engine.forget(&pod.pod.key);
                self.account(&node, &pod);
            }
        }
    }

    /// Forgets a namespace deleted (or missing from a relist): its tenant and its labels.
    fn namespace_gone(&mut self, name: &str) {
        self.set_tenant_of(name.to_string(), None);
        self.engine.set_namespace(name, None);
        self.namespaces.remove(name);
    }

    /// Records the tenant a namespace belongs to. Pods seen there before (the watches are
    /// independent, so a pod can arrive before its namespace) are charged to it from now on.
    fn set_tenant_of(&mut self, namespace: String, tenant: Option<String>) {
        if self.tenant_of.get(&namespace) == tenant.as_ref() {
            return;
        }
        match &tenant {
            Some(tenant) => self.tenant_of.insert(namespace.clone(), tenant.clone()),
            None => self.tenant_of.remove(&namespace),
        };
        let in_namespace = |key: &str| key.split_once('/').is_some_and(|(ns, _)| ns == namespace);
        let pending = self.pending.iter_mut().map(|(key, pending)| (key, &mut pending.pod));
        let bound =
            self.bound_on.values_mut().flat_map(|pods| pods.iter_mut().map(|(key, b)| (key, &mut b.pod)));
        for (key, pod) in pending.chain(bound).filter(|(key, _)| in_namespace(key)) {
            pod.tenant = tenant.clone();
            if let Some(placement) = self.engine.placement_of(key) {
                self.engine.assume(pod, &placement);
            }
        }
        self.wake.all = true;
    }

    fn tenant_event(&mut self, event: watcher::Event<Tenant>) {
        match event {
            watcher::Event::Init => self.relisting_tenants.start(),
            watcher::Event::Apply(tenant) | watcher::Event::InitApply(tenant) => {
                self.relisting_tenants.saw(&tenant.name_any());
                self.engine.upsert_tenant(crate::tenants::tenant(&tenant));
            }
            // A deleted tenant's ceiling no longer holds its namespaces' pods.
            watcher::Event::Delete(tenant) => self.engine.remove_tenant(&tenant.name_any()),
            watcher::Event::InitDone => {
                // Tenants deleted while the watch was down sent no Delete.
                if let Some(seen) = self.relisting_tenants.finish() {
                    let gone: Vec<String> = self
                        .engine
                        .tenants()
                        .names()
                        .filter(|name| !seen.contains(*name))
                        .map(String::from)
                        .collect();
                    for name in gone {
                        self.engine.remove_tenant(&name);
                    }
                }
                self.synced.tenants = true;
            }
        }
        self.wake.all = true;
    }

    fn node_event(&mut self, event: watcher::Event<KubeNode>) {
        match event {
            watcher::Event::Init => self.relisting_nodes.start(),
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                let name = node.name_any();
                self.relisting_nodes.saw(&name);
                let known = self.engine.node_id(&name);
                let mut converted = convert::node(&node);
                converted.volume_limits = self.volumes.limits_of(&name);
                // Most node updates are kubelet heartbeats that change nothing a decision reads.
                if known.and_then(|id| self.engine.node(id)) == Some(&converted) {
                    return;
                }
                self.engine.upsert_node(converted);
                if known.is_none() {
                    // Pods bound before the node was seen are accounted now.
                    let bound: Vec<BoundPod> = self
                        .bound_on
                        .get(&name)
                        .map(|pods| pods.values().cloned().collect())
                        .unwrap_or_default();
                    for bound in bound {
                        self.account(&name, &bound);
                    }
                }
                self.wake.all = true;
            }
            watcher::Event::Delete(node) => {
                self.engine.remove_node(&node.name_any());
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisting_nodes.finish() {
                    let gone: Vec<String> = self
                        .engine
                        .node_ids()
                        .filter_map(|id| self.engine.node(id).map(|node| node.name.clone()))
                        .filter(|name| !seen.contains(name))
                        .collect();
                    for name in gone {
                        self.engine.remove_node(&name);
                    }
                }
                self.synced.nodes = true;
                self.wake.all = true;
            }
        }
    }

    /// Records a bound pod in the engine at its node, with the volumes it attaches there.
    fn account(&mut self, node_name: &str, bound: &BoundPod) {
        let Some(node) = self.engine.node_id(node_name) else { return };
        if self.engine.placement_of(&bound.pod.key).is_some_and(|placement| placement.node == node) {
            return;
        }
        let mut pod = bound.pod.clone();
        pod.attachments = self.volumes.attachments(&pod.namespace, &bound.claims);
        // Without a recorded assignment (bound by someone else), devices as the engine would pick.
        let gpus = bound.gpus.clone().or_else(|| self.engine.free(node)?.1.tightest_allocation(pod.gpu));
        let placement = Placement { node, gpus: gpus.unwrap_or_default() };
        // Pods bound before this scheduler started count into the measure, unless it recalled
        // one: that measure counts them already.
        if self.recalled && !self.synced() {
            self.engine.assume_measured(&pod, &placement);
        } else {
            self.engine.assume(&pod, &placement);
        }
    }

    fn pod_event(&mut self, event: watcher::Event<KubePod>) {
        match event {
            watcher::Event::Init => self.relisting_pods.start(),
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let key = convert::pod_key(&pod);
                self.relisting_pods.saw(&key);
                self.pod_applied(key, &pod);
            }
            watcher::Event::Delete(pod) => {
                let key = convert::pod_key(&pod);
                self.pod_gone(&key, pod.spec.as_ref().and_then(|s| s.node_name.clone()));
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisting_pods.finish() {
                    let pending_gone: Vec<String> =
                        self.pending.keys().filter(|key| !seen.contains(*key)).cloned().collect();
                    for key in pending_gone {
                        self.pod_gone(&key, None);
                    }
                    let bound_gone: Vec<(String, String)> = self
                        .bound_on
                        .iter()
                        .flat_map(|(node, pods)| pods.keys().map(move |key| (key.clone(), node.clone())))
                        .filter(|(key, _)| !seen.contains(key))
                        .collect();
                    for (key, node) in bound_gone {
                        self.pod_gone(&key, Some(node));
                    }
                }
                self.synced.pods = true;
            }
        }
    }

    fn pod_applied(&mut self, key: String, kube_pod: &KubePod) {
        let spec = kube_pod.spec.as_ref();
        let node_name = spec.and_then(|s| s.node_name.clone());
        let namespace = kube_pod.metadata.namespace.clone().unwrap_or_default();
        let tenant = self.tenant_of.get(&namespace).cloned();
        let pod = convert::pod(kube_pod, tenant.as_deref());
        if let Some(node_name) = node_name {
            // Bound (by us or anyone): account it where it is.
            self.just_bound.remove(&key);
            self.pending.remove(&key);
            self.active.remove(&key);
            self.unschedulable.remove(&key);
            let gpus = convert::gpu_assignment(kube_pod);
            let running = kube_pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let labels = kube_pod.metadata.labels.clone().unwrap_or_default();
            let bound = BoundPod { pod, gpus, running, labels, claims: claims_of(kube_pod) };
            self.account(&node_name, &bound);
            self.bound_on.entry(node_name).or_default().insert(key, bound);
            return;
        }
        let ours =
            spec.and_then(|s| s.scheduler_name.as_deref()) == Some(self.config.scheduler_name.as_str());
        // A pod with scheduling gates is held until they are all removed.
        let gated = spec.and_then(|s| s.scheduling_gates.as_ref()).is_some_and(|gates| !gates.is_empty());
        if !ours || gated || kube_pod.metadata.deletion_timestamp.is_some() {
            if !self.binding.contains(&key) && self.pending.remove(&key).is_some() {
                self.active.remove(&key);
                self.unschedulable.remove(&key);
            }
            return;
        }
        let uid = kube_pod.metadata.uid.clone().unwrap_or_default();
        let (claims, device_claims) = (claims_of(kube_pod), crate::devices::claims_of(kube_pod));
        let changed = self.pending.get(&key).is_none_or(|pending| {
            pending.pod != pod
                || pending.uid != uid
                || pending.claims != claims
                || pending.device_claims != device_claims
        });
        let just_bound = self.just_bound.get(&key).is_some_and(|bound_uid| *bound_uid == uid);
        if changed && !self.binding.contains(&key) && !just_bound {
            self.pending.insert(key.clone(), Pending { pod, uid, claims, device_claims });
            self.unschedulable.remove(&key);
            self.active.insert(key);
        }
    }

    /// A pod deleted or finished; `node_name` is where it was bound (none for a pending pod).
    fn pod_gone(&mut self, key: &str, node_name: Option<String>) {
        self.just_bound.remove(key);
        if self.nominated.remove(key).is_some() {
            // A nominated pod deleted before its victims went: give its room back.
            self.engine.forget(key);
        }
        let ready: Vec<String> = self
            .nominated
            .iter_mut()
            .filter_map(|(preemptor, nomination)| {
                (nomination.victims.remove(key) && nomination.victims.is_empty()).then(|| preemptor.clone())
            })
            .collect();
        for preemptor in ready {
            self.nominated.remove(&preemptor);
            self.bind_nominated(&preemptor);
        }
        self.pending.remove(key);
        self.active.remove(key);
        self.unschedulable.remove(key);
        self.retry_at.remove(key);
        self.bind_retries.succeeded(&key.to_string());
        self.effects.push(Effect::Forget { key: key.to_string() });
        if let Some(node_name) = node_name
            && let Some(pods) = self.bound_on.get_mut(&node_name)
        {
            pods.remove(key);
            if pods.is_empty() {
                self.bound_on.remove(&node_name);
            }
        }
        if !self.binding.contains(key) && self.engine.forget(key) {
            self.wake.all = true;
        }
    }

    fn group_event(&mut self, event: watcher::Event<PodGroup>) {
        match event {
            watcher::Event::Apply(group) | watcher::Event::InitApply(group) => {
                let key = format!("{}/{}", group.namespace().unwrap_or_default(), group.name_any());
                self.relisting_groups.saw(&key);
                let topology = group.spec.topology.as_ref().map(|t| {
                    let level = match t.level {
                        TopologyLevel::Rack => Level::Rack,
                        TopologyLevel::Site => Level::Site,
                        TopologyLevel::Region => Level::Region,
                    };
                    let mode = match t.mode {
                        TopologyMode::Required => Mode::Required,
                        TopologyMode::Preferred => Mode::Preferred,
                    };
                    (level, mode)
                });
                let age = group
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
                    .unwrap_or_default();
                let created = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                let status = group.status.clone().unwrap_or_default();
                let timed_out = status.phase == PodGroupPhase::Timeout;
                let written = group.status.as_ref().map(|s| (s.phase, s.placed, s.running));
                let waiting_for = self.groups.get(&key).and_then(|g| g.waiting_for.clone());
                self.groups.insert(
                    key.clone(),
                    Group {
                        gang: Gang {
                            name: key,
                            min_member: usize::try_from(group.spec.min_member).unwrap_or(1).max(1),
                            topology,
                        },
                        created,
                        timeout: group
                            .spec
                            .schedule_timeout_seconds
                            .and_then(|s| u64::try_from(s).ok())
                            .map(Duration::from_secs),
                        timed_out,
                        written,
                        waiting_for,
                    },
                );
                self.wake.all = true;
            }
            watcher::Event::Delete(group) => {
                let key = format!("{}/{}", group.namespace().unwrap_or_default(), group.name_any());
                self.forget_group(&key);
            }
            watcher::Event::Init => self.relisting_groups.start(),
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisting_groups.finish() {
                    let gone: Vec<String> =
                        self.groups.keys().filter(|key| !seen.contains(*key)).cloned().collect();
                    for key in gone {
                        self.forget_group(&key);
                    }
                }
                self.synced.groups = true;
            }
        }
    }

    fn forget_group(&mut self, key: &str) {
        self.engine.release_reservation(key);
        self.groups.remove(key);
        self.wake.all = true;
    }

    pub fn done(&mut self, done: Done) {
        match done {
            Done::Bound { key, result, seconds } => {
                self.metrics.bind_seconds.observe(seconds);
                let (namespace, name) = key.split_once('/').unwrap_or(("", &key));
                let tenant = self.tenant_of.get(namespace).map(String::as_str);
                let outcome = if result.is_ok() { "bound" } else { "failed" };
                let span = tracing::info_span!(
                    "binding",
                    namespace,
                    object = name,
                    tenant,
                    outcome,
                    trace_id = tracing::field::Empty
                );
                let _binding = yiyun_admin::trace::with_trace_id(span).entered();
                self.bound(key, result)
            }
            Done::Evicted { victim, preemptor, result } => self.evicted(victim, preemptor, result),
        }
    }

    fn bound(&mut self, key: String, result: Result<(), kube::Error>) {
        self.binding.remove(&key);
        self.binds_in_flight = self.binds_in_flight.saturating_sub(1);
        match result {
            Ok(()) => {
                self.metrics.bound.inc();
                self.count_placement(&key);
                self.bind_retries.succeeded(&key);
                // Volumes and devices stay held until the watch shows their claims bound.
                self.volume_writes.remove(&key);
                self.claim_writes.remove(&key);
                if !self.first_bind_logged {
                    self.first_bind_logged = true;
                    info!(pod = %key, seconds = self.started.elapsed().as_secs_f64(), "first pod bound");
                }
                // The watch will show it bound; until then it stays assumed and out of the queue,
                // and an event from before the binding does not queue it again.
                if let Some(pending) = self.pending.remove(&key) {
                    self.just_bound.insert(key, pending.uid);
                }
            }
            // The outcome is not known: a 409 means bound already, or (etcd down) nothing at all;
            // a timeout may have bound it. The pod keeps its room until the watch shows it bound
            // (or gone), or the retry finds it still waiting and places it afresh.
            Err(err) => {
                self.metrics.bind_errors.inc();
                for claim in self.volume_writes.remove(&key).unwrap_or_default() {
                    self.volumes.release(&claim);
                }
                for claim in self.claim_writes.remove(&key).unwrap_or_default() {
                    self.devices.release(&claim);
                }
                let delay = self.bind_retries.failed(key.clone());
                warn!(pod = %key, error = %err, retry_in = ?delay, "binding failed; retrying unless the watch shows it bound");
                if self.pending.contains_key(&key) {
                    self.retry_at.insert(key, Instant::now() + delay);
                } else {
                    self.engine.forget(&key);
                }
            }
        }
    }

    pub fn housekeeping(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= RETRY_UNSCHEDULABLE)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            self.unschedulable.remove(&key);
            self.active.insert(key);
        }
        let retry: Vec<String> =
            self.retry_at.iter().filter(|(_, at)| **at <= now).map(|(key, _)| key.clone()).collect();
        for key in retry {
            self.retry_at.remove(&key);
            if self.pending.contains_key(&key) {
                self.engine.forget(&key);
                self.active.insert(key);
            }
        }
        self.expire_nominations(now);
        self.group_statuses();
        self.update_gauges(now);
        self.engine.set_now(k8s_openapi::jiff::Timestamp::now().as_second().max(0) as u64);
    }

    /// Works out each PodGroup's phase, times out those that waited too long, and writes what
    /// changed.
    fn group_statuses(&mut self) {
        let mut counts: HashMap<&str, (i32, i32)> = HashMap::new();
        for bound in self.bound_on.values().flat_map(|pods| pods.values()) {
            if let Some(gang) = &bound.pod.gang {
                let entry = counts.entry(gang.as_str()).or_default();
                entry.0 += 1;
                entry.1 += i32::from(bound.running);
            }
        }
        let mut writes = Vec::new();
        let mut released = Vec::new();
        for (key, group) in &mut self.groups {
            let (placed, running) = counts.get(key.as_str()).copied().unwrap_or_default();
            let min = i32::try_from(group.gang.min_member).unwrap_or(i32::MAX);
            let expired = group.timeout.is_some_and(|timeout| group.created.elapsed() >= timeout);
            if placed < min && expired && !group.timed_out {
                group.timed_out = true;
                released.push(key.clone());
            }
            let was_scheduled = group.written.is_some_and(|(phase, ..)| {
                matches!(phase, PodGroupPhase::Scheduled | PodGroupPhase::Running | PodGroupPhase::Failed)
            });
            let phase = if group.timed_out && placed < min {
                PodGroupPhase::Timeout
            } else if running >= min {
                PodGroupPhase::Running
            } else if placed >= min {
                PodGroupPhase::Scheduled
            } else if was_scheduled {
                PodGroupPhase::Failed
            } else {
                PodGroupPhase::Pending
            };
            if group.written != Some((phase, placed, running)) {
                group.written = Some((phase, placed, running));
                let message = match phase {
                    PodGroupPhase::Pending => {
                        group.waiting_for.clone().unwrap_or_else(|| "waiting for members".into())
                    }
                    PodGroupPhase::Timeout => {
                        format!("not placed within {}s", group.timeout.map_or(0, |t| t.as_secs()))
                    }
                    PodGroupPhase::Failed => format!("{placed} of at least {min} pods left"),
                    _ => format!("{placed} of {min} pods placed"),
                };
                writes.push((key.clone(), phase, placed, running, message));
            }
        }
        for key in released {
            self.engine.release_reservation(&key);
        }
        for (key, phase, placed, running, message) in writes {
            let scheduled = matches!(phase, PodGroupPhase::Scheduled | PodGroupPhase::Running);
            let status = serde_json::json!({"status": {
                "phase": phase, "placed": placed, "running": running,
                "conditions": [{
                    "type": "Scheduled", "status": if scheduled { "True" } else { "False" },
                    "reason": format!("{phase:?}"), "message": message,
                    "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
                }],
            }});
            self.effects.push(Effect::GroupStatus { key, status });
        }
    }

    /// Counts a pod just bound under its node's site and region class.
    fn count_placement(&self, key: &str) {
        let Some(node) = self.engine.placement_of(key).and_then(|placement| self.engine.node(placement.node))
        else {
            return;
        };
        let topology = &node.topology;
        let labels = vec![("site", topology.site.clone()), ("region_class", topology.region_class.clone())];
        self.metrics.placements.get_or_create(&labels).inc();
    }

    /// Pending pods by reason each second; the sites' GPUs every [`GPU_GAUGES_EVERY`], as
    /// measuring fragmentation visits every node.
    fn update_gauges(&mut self, now: Instant) {
        let mut by_reason: BTreeMap<&'static str, i64> = BTreeMap::new();
        for key in self.pending.keys() {
            let reason = match self.unschedulable.get(key) {
                Some((_, reason)) => reason,
                None if self.nominated.contains_key(key) => "preempting",
                None if self.retry_at.contains_key(key) => "bind_retry",
                None => "queued",
            };
            *by_reason.entry(reason).or_default() += 1;
        }
        // Reasons no pod has now are dropped rather than left at their last count; `queued`
        // stays, at 0 when nothing waits.
        self.metrics.pending.clear();
        by_reason.entry("queued").or_default();
        for (reason, count) in by_reason {
            self.metrics.pending.get_or_create(&vec![("reason", reason)]).set(count);
        }
        let waiting = self.groups.values().filter(|group| {
            group
                .written
                .is_some_and(|(phase, ..)| matches!(phase, PodGroupPhase::Pending | PodGroupPhase::Timeout))
        });
        self.metrics.gangs_waiting.set(waiting.count() as i64);
        // Measured once the watches have listed, then every so often.
        if !self.synced() || self.gauges_at.is_some_and(|at| now.duration_since(at) < GPU_GAUGES_EVERY) {
            return;
        }
        self.gauges_at = Some(now);
        let sites = self.engine.gpus_by_site();
        for family in
            [&self.metrics.site_gpus, &self.metrics.site_gpus_allocated, &self.metrics.site_gpu_fragmentation]
        {
            family.clear();
        }
        for (site, gpus) in sites {
            let labels = vec![("site", site)];
            self.metrics.site_gpus.get_or_create(&labels).set(gpus.capacity_milli as f64 / 1000.0);
            self.metrics.site_gpus_allocated.get_or_create(&labels).set(gpus.allocated_milli as f64 / 1000.0);
            self.metrics.site_gpu_fragmentation.get_or_create(&labels).set(gpus.fragmentation_milli / 1000.0);
        }
    }

    /// One scheduling round over the active pods.
    pub fn round(&mut self) {
        let wake = std::mem::take(&mut self.wake);
        if wake.any() {
            let pending = &self.pending;
            let woken: Vec<String> =
                self.unschedulable.keys().filter(|key| wake.wakes(pending.get(*key))).cloned().collect();
            for key in woken {
                self.unschedulable.remove(&key);
                self.active.insert(key);
            }
        }
        if self.active.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.active);
        let mut pods: Vec<Pod> = Vec::with_capacity(keys.len());
        let mut waiting: Vec<(Pod, &'static str, String)> = Vec::new();
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|key| !self.binding.contains(key) && !self.nominated.contains_key(key))
            .collect();
        for key in &keys {
            let Some(pending) = self.pending.get(key).cloned() else { continue };
            let prepared = self.with_volumes(key, &pending).map_err(|message| ("volumes", message)).and_then(
                |(pod, unbound)| {
                    let with_devices =
                        self.with_devices(pod, &pending).map_err(|message| ("devices", message))?;
                    Ok((with_devices, unbound))
                },
            );
            match prepared {
                Ok(((pod, claims), unbound)) => {
                    if !unbound.is_empty() {
                        self.unbound.insert(key.clone(), unbound);
                    }
                    if !claims.is_empty() {
                        self.device_claims.insert(key.clone(), claims);
                    }
                    pods.push(pod);
                }
                Err((reason, message)) => waiting.push((pending.pod, reason, message)),
            }
        }
        for (pod, reason, message) in waiting {
            let _cycle = scheduling_cycle("pod", &pod.key, pod.tenant.as_deref()).entered();
            self.unplaced(&pod, reason, message);
        }
        self.engine.queue_order(&mut pods);
        let mut gangs: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        for pod in pods {
            if let Some(gang) = &pod.gang {
                gangs.entry(gang.clone()).or_default().push(pod);
                continue;
            }
            // Bindings in flight are bounded: a pod without a permit now waits for a later round.
            if self.bind_permits() == 0 {
                self.active.insert(pod.key.clone());
                continue;
            }
            let _cycle = scheduling_cycle("pod", &pod.key, pod.tenant.as_deref()).entered();
            match self.engine.schedule(&pod) {
                Ok(placement) => self.bind(&pod, placement),
                Err(explanation) => match self.preempt(&pod) {
                    Preempted::Started => {}
                    Preempted::NotPossible => {
                        self.unplaced(&pod, explanation.label(), explanation.to_string())
                    }
                    Preempted::BudgetRefuses(why) => {
                        self.unplaced(&pod, "disruption_budget", format!("{explanation}; {why}"))
                    }
                },
            }
        }
        for (gang, members) in gangs {
            self.schedule_gang(&gang, members);
        }
    }

    /// The pod with what its volumes require of a node, and its claims that wait for their
    /// first consumer; or why its volumes keep it from every node now.
    fn with_volumes(&self, key: &str, pending: &Pending) -> Result<(Pod, Vec<Unbound>), String> {
        if pending.claims.is_empty() {
            return Ok((pending.pod.clone(), Vec::new()));
        }
        let namespace = &pending.pod.namespace;
        let in_use = |claim: &str| {
            let used_by = |pod: &Pod, claims: &[String]| {
                pod.key != key && claims.iter().any(|c| format!("{}/{c}", pod.namespace) == claim)
            };
            self.bound_on.values().flat_map(HashMap::values).any(|bound| used_by(&bound.pod, &bound.claims))
                || self.binding.iter().filter_map(|k| self.pending.get(k)).any(|p| used_by(&p.pod, &p.claims))
        };
        let needs = self.volumes.needs(namespace, &pending.claims, in_use)?;
        let mut pod = pending.pod.clone();
        pod.volume_rules = needs.rules;
        pod.attachments = needs.attachments;
        Ok((pod, needs.unbound))
    }

    /// The pod with the nodes where its resource claims can be allocated, and the claims; or
    /// why it waits.
    fn with_devices(&mut self, mut pod: Pod, pending: &Pending) -> Result<(Pod, Vec<PodClaim>), String> {
        if pending.device_claims.is_empty() {
            return Ok((pod, Vec::new()));
        }
        let claims = self.devices.pod_claims(&pod.namespace, &pending.device_claims)?;
        pod.device_nodes = Some(self.devices.nodes_for(&claims));
        Ok((pod, claims))
    }

    fn schedule_gang(&mut self, key: &str, members: Vec<Pod>) {
        let tenant = members.first().and_then(|pod| pod.tenant.clone());
        let _cycle = scheduling_cycle("gang", key, tenant.as_deref()).entered();
        // A gang is placed when all its members can be bound at once.
        if self.bind_permits() < members.len() {
            self.active.extend(members.into_iter().map(|pod| pod.key));
            return;
        }
        let Some(group) = self.groups.get(key) else {
            for pod in &members {
                self.unplaced(pod, "gang", format!("PodGroup {key} does not exist"));
            }
            return;
        };
        if group.timed_out {
            for pod in &members {
                self.unplaced(pod, "gang", format!("PodGroup {key} timed out"));
            }
            return;
        }
        // Members already bound count towards minMember.
        let in_gang = |pod: &Pod| pod.gang.as_deref() == Some(key);
        let bound =
            self.bound_on.values().flat_map(|pods| pods.values()).filter(|bound| in_gang(&bound.pod)).count()
                + self.binding.iter().filter_map(|k| self.pending.get(k)).filter(|p| in_gang(&p.pod)).count();
        let needed = group.gang.min_member.saturating_sub(bound);
        if needed == 0 {
            // The gang stands; later members are placed like any pod.
            for pod in members {
                self.place_alone(&pod);
            }
            return;
        }
        let gang = Gang { min_member: needed, ..group.gang.clone() };
        if members.len() < needed {
            let message =
                format!("gang {key} has {} of its {} pods", members.len() + bound, group.gang.min_member);
            for pod in &members {
                self.unplaced(pod, "gang", message.clone());
            }
            return;
        }
        match self.engine.schedule_gang(&gang, &members) {
            Ok(placements) => {
                let placed = placements.len();
                for (pod, placement) in members.iter().zip(placements) {
                    self.bind(pod, placement);
                }
                // Members beyond minMember go one by one.
                for pod in &members[placed..] {
                    self.place_alone(pod);
                }
            }
            Err(explanation) => {
                self.metrics.gang_waits.inc();
                let message = explanation.to_string();
                if let Some(group) = self.groups.get_mut(key) {
                    group.waiting_for = Some(message.clone());
                }
                for pod in &members {
                    self.unplaced(pod, "gang", message.clone());
                }
            }
        }
    }

    /// Tries to make room for `pod` by preemption: the engine picks the victims; unless that
    /// would break a PodDisruptionBudget, it takes the room, the victims are evicted and the pod
    /// is bound to its nominated node once they are gone.
    fn preempt(&mut self, pod: &Pod) -> Preempted {
        let now = k8s_openapi::jiff::Timestamp::now().as_second().max(0) as u64;
        let Ok(plan) = self.engine.preemption_for(pod) else { return Preempted::NotPossible };
        let Some(node) = self.engine.node(plan.placement.node).map(|node| node.name.clone()) else {
            return Preempted::NotPossible;
        };
        let on_node = self.bound_on.get(&node);
        let victims: Vec<(&str, &BTreeMap<String, String>)> = plan
            .victims
            .iter()
            .filter_map(|key| {
                let labels = &on_node?.get(key)?.labels;
                Some((key.split_once('/')?.0, labels))
            })
            .collect();
        if let Some((budget, count)) = first_broken(self.budgets.values(), &victims) {
            return Preempted::BudgetRefuses(format!(
                "preemption would evict {count} pod(s) of PodDisruptionBudget {}/{}, which allows {}; nothing evicted",
                budget.namespace().unwrap_or_default(),
                budget.name_any(),
                disruptions_allowed(budget)
            ));
        }
        let Ok(preemption) = self.engine.commit_preemption(pod, plan, now) else {
            return Preempted::NotPossible;
        };
        info!(pod = %pod.key, %node, victims = ?preemption.victims, "preempting");
        self.metrics.preemptions.inc();
        self.metrics.attempted("preempting");
        tracing::Span::current().record("outcome", "preempting").record("node", node.as_str());
        let nomination = Nomination {
            victims: preemption.victims.iter().cloned().collect(),
            node: node.clone(),
            since: Instant::now(),
        };
        self.nominated.insert(pod.key.clone(), nomination);
        self.effects.push(Effect::Nominate { pod: pod.key.clone(), node });
        for victim in preemption.victims {
            self.effects.push(Effect::Evict { victim, preemptor: pod.key.clone() });
        }
        Preempted::Started
    }

    /// Drops nominations whose victims have not gone within the timeout (stuck terminating, a
    /// finalizer): the victims still there hold their room again, and the pod is tried afresh.
    fn expire_nominations(&mut self, now: Instant) {
        let timeout = Duration::from_secs(self.config.nomination_timeout_seconds);
        let expired: Vec<String> = self
            .nominated
            .iter()
            .filter(|(_, nomination)| now.duration_since(nomination.since) >= timeout)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            let Some(nomination) = self.nominated.remove(&key) else { continue };
            warn!(pod = %key, node = %nomination.node, victims = ?nomination.victims, "victims still there after the nomination timeout; trying again");
            self.engine.forget(&key);
            for victim in &nomination.victims {
                if let Some(bound) =
                    self.bound_on.get(&nomination.node).and_then(|pods| pods.get(victim)).cloned()
                {
                    self.account(&nomination.node, &bound);
                }
            }
            self.active.insert(key);
        }
    }

    fn evicted(&mut self, victim: String, preemptor: String, result: Result<(), kube::Error>) {
        let Err(err) = result else { return };
        if matches!(&err, kube::Error::Api(status) if status.code == 404) {
            // Already gone: as good as evicted.
            return;
        }
        // Refused (a PodDisruptionBudget answers 429): the victim stays, so its room is its own
        // again and the preemptor waits.
        warn!(%victim, pod = %preemptor, error = %err, "eviction refused; preemption abandoned");
        if let Some(node) =
            self.bound_on.iter().find(|(_, pods)| pods.contains_key(&victim)).map(|(n, _)| n.clone())
            && let Some(bound) = self.bound_on.get(&node).and_then(|pods| pods.get(&victim)).cloned()
        {
            self.account(&node, &bound);
        }
        if self.nominated.remove(&preemptor).is_some() {
            self.engine.forget(&preemptor);
            if let Some(pod) = self.pending.get(&preemptor).map(|p| p.pod.clone()) {
                let message = format!("preemption refused: {victim} may not be evicted now ({err})");
                self.unplaced(&pod, "preemption_refused", message);
            }
        }
    }

    /// Binds a nominated pod where the engine holds its room.
    fn bind_nominated(&mut self, key: &str) {
        let Some(pod) = self.pending.get(key).map(|pending| pending.pod.clone()) else {
            self.engine.forget(key);
            return;
        };
        match self.engine.placement_of(key) {
            Some(placement) => self.bind(&pod, placement),
            None => {
                self.active.insert(key.to_string());
            }
        }
    }

    /// Places a pod that belongs to no waiting gang, or records why it waits.
    fn place_alone(&mut self, pod: &Pod) {
        match self.engine.schedule(pod) {
            Ok(placement) => self.bind(pod, placement),
            Err(explanation) => self.unplaced(pod, explanation.label(), explanation.to_string()),
        }
    }

    /// Records that `pod` waits, `reason` saying why in a word (a metric label) and `message`
    /// in full (the pod's condition and events).
    fn unplaced(&mut self, pod: &Pod, reason: &'static str, message: String) {
        self.unbound.remove(&pod.key);
        self.device_claims.remove(&pod.key);
        self.metrics.attempted("unschedulable");
        tracing::Span::current().record("outcome", "unschedulable").record("reason", reason);
        self.unschedulable.insert(pod.key.clone(), (Instant::now(), reason));
        if let Some(pending) = self.pending.get(&pod.key) {
            let (key, uid) = (pod.key.clone(), pending.uid.clone());
            self.effects.push(Effect::Unschedulable { key, uid, message });
        }
    }

    fn bind(&mut self, pod: &Pod, placement: Placement) {
        let Some(uid) = self.pending.get(&pod.key).map(|pending| pending.uid.clone()) else {
            self.engine.forget(&pod.key);
            return;
        };
        let Some(node) = self.engine.node(placement.node).cloned() else {
            self.engine.forget(&pod.key);
            return;
        };
        if self.bind_permits() == 0 {
            // Rounds check for permits first; should they run out all the same, try later.
            self.engine.forget(&pod.key);
            self.active.insert(pod.key.clone());
            return;
        }
        let Some((volumes, claims)) = self.claim_writes_for(pod, &node, &uid) else {
            // Another pod took the volume or the devices chosen meanwhile: place the pod again.
            self.engine.forget(&pod.key);
            self.unplaced(
                pod,
                "claims_taken",
                "the volume or devices chosen for it were taken by another; trying again".into(),
            );
            self.wake.all = true;
            return;
        };
        self.metrics.attempted("scheduled");
        tracing::Span::current().record("outcome", "scheduled").record("node", node.name.as_str());
        self.binds_in_flight += 1;
        self.binding.insert(pod.key.clone());
        self.unschedulable.remove(&pod.key);
        let gpus = (!placement.gpus.is_empty()).then(|| convert::gpu_assignment_value(&placement.gpus));
        let node = node.name;
        self.effects.push(Effect::Bind { key: pod.key.clone(), uid, node, gpus, volumes, claims });
    }

    /// The writes that bind the pod's waiting volume claims and allocate its resource claims on
    /// `node`, the volumes and devices held until the watch shows them taken; `None` (holding
    /// nothing) when one is no longer to be had there.
    fn claim_writes_for(
        &mut self,
        pod: &Pod,
        node: &Node,
        uid: &str,
    ) -> Option<(Vec<VolumeWrite>, Vec<ClaimWrite>)> {
        let unbound = self.unbound.remove(&pod.key).unwrap_or_default();
        let volumes = self.volumes.writes_for(&unbound, node)?;
        let volume_claims: Vec<String> =
            unbound.iter().map(|claim| format!("{}/{}", claim.namespace, claim.name)).collect();
        let Some(device_claims) = self.device_claims.remove(&pod.key) else {
            if !volume_claims.is_empty() {
                self.volume_writes.insert(pod.key.clone(), volume_claims);
            }
            return Some((volumes, Vec::new()));
        };
        let Some(claims) = self.devices.writes_for(&device_claims, &node.name, (pod_name(&pod.key), uid))
        else {
            for claim in &volume_claims {
                self.volumes.release(claim);
            }
            return None;
        };
        self.volume_writes.insert(pod.key.clone(), volume_claims);
        self.claim_writes
            .insert(pod.key.clone(), claims.iter().map(|w| format!("{}/{}", w.namespace, w.name)).collect());
        Some((volumes, claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct SchedulerFlags {
        #[command(flatten)]
        config: Config,
    }

    /// A state whose watches have all listed, with one node of 8 CPUs.
    fn synced_state() -> State {
        let mut state = listing_state();
        finish_listing(&mut state);
        state
    }

    /// A state whose watches are listing, one node of 8 CPUs listed so far.
    fn listing_state() -> State {
        let config = <SchedulerFlags as clap::Parser>::parse_from(["yiyun-scheduler"]).config;
        let mut state = State::new(config, Metrics::default());
        state.apply(Update::Node(watcher::Event::InitApply(json(
            r#"{"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "8", "memory": "64Gi", "pods": "110"}}}"#,
        ))));
        state
    }

    fn finish_listing(state: &mut State) {
        for done in [
            Update::Node(watcher::Event::InitDone),
            Update::Pod(watcher::Event::InitDone),
            Update::Namespace(watcher::Event::InitDone),
            Update::PodGroup(watcher::Event::InitDone),
            Update::Tenant(watcher::Event::InitDone),
            Update::Site(watcher::Event::InitDone),
            Update::Budget(watcher::Event::InitDone),
            Update::Claim(watcher::Event::InitDone),
            Update::Volume(watcher::Event::InitDone),
            Update::StorageClass(watcher::Event::InitDone),
            Update::CsiNode(watcher::Event::InitDone),
            Update::ResourceClaim(watcher::Event::InitDone),
            Update::ResourceSlice(watcher::Event::InitDone),
            Update::DeviceClass(watcher::Event::InitDone),
        ] {
            state.apply(done);
        }
        assert!(state.synced());
    }

    fn json<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_json::from_str(text).expect("a valid object")
    }

    fn pending_pod(name: &str) -> KubePod {
        json(&format!(
            r#"{{"metadata": {{"name": "{name}", "namespace": "ns", "uid": "u-{name}"}},
                "spec": {{"schedulerName": "yiyun-scheduler", "containers": [{{"name": "c", "resources": {{"requests": {{"cpu": "2"}}}}}}]}}}}"#
        ))
    }

    fn bound_pod(name: &str) -> KubePod {
        json(&format!(
            r#"{{"metadata": {{"name": "{name}", "namespace": "ns", "uid": "u-{name}"}},
                "spec": {{"nodeName": "n1", "containers": [{{"name": "c", "resources": {{"requests": {{"cpu": "2"}}}}}}]}},
                "status": {{"phase": "Running"}}}}"#
        ))
    }

    #[test]
    fn pods_running_at_a_restart_count_once_whether_the_measure_is_recalled_or_not() {
        let two_cpus =
            Shape { cpu_milli: 2_000, gpu: yiyun_engine::model::GpuRequest::None, gpu_models: Vec::new() };
        // Without a saved measure, the pods running are what the workload is measured from.
        let mut cold = listing_state();
        cold.apply(Update::Pod(watcher::Event::InitApply(bound_pod("old"))));
        finish_listing(&mut cold);
        assert_eq!(cold.measure(), vec![(two_cpus.clone(), 1)]);
        // A recalled measure counts them already (the scheduler that saved it measured them).
        let mut warm = listing_state();
        warm.recall_measure(&[(two_cpus.clone(), 3)]);
        warm.apply(Update::Pod(watcher::Event::InitApply(bound_pod("old"))));
        finish_listing(&mut warm);
        assert_eq!(warm.measure(), vec![(two_cpus.clone(), 3)]);
        assert_eq!(warm.metrics.pods_measured.get(), 3);
        // Pods bound by others from then on are new to it.
        warm.apply(Update::Pod(watcher::Event::Apply(bound_pod("new"))));
        assert_eq!(warm.measure(), vec![(two_cpus, 4)]);
    }

    #[test]
    fn pending_pods_are_counted_by_why_they_wait_and_attempts_by_result() {
        let mut state = synced_state();
        let with_cpu = |name: &str, cpu: &str| {
            let mut pod = pending_pod(name);
            let spec = pod.spec.as_mut().expect("spec");
            spec.containers[0].resources = Some(json(&format!(r#"{{"requests": {{"cpu": "{cpu}"}}}}"#)));
            pod
        };
        state.apply(Update::Pod(watcher::Event::Apply(with_cpu("web", "2"))));
        state.apply(Update::Pod(watcher::Event::Apply(with_cpu("huge", "16"))));
        state.round();
        state.housekeeping();
        let metrics = &state.metrics;
        let pending = |reason: &'static str| metrics.pending.get_or_create(&vec![("reason", reason)]).get();
        assert_eq!(pending("queued"), 1, "web is being bound");
        assert_eq!(pending("insufficient_cpu"), 1, "huge fits on no node");
        let attempts = |result: &'static str| metrics.attempts.get_or_create(&vec![("result", result)]).get();
        assert_eq!((attempts("scheduled"), attempts("unschedulable")), (1, 1));

        state.done(Done::Bound { key: "ns/web".into(), result: Ok(()), seconds: 0.01 });
        state.housekeeping();
        let metrics = &state.metrics;
        assert_eq!(metrics.pending.get_or_create(&vec![("reason", "queued")]).get(), 0, "bound, not pending");
        let placed = vec![("site", String::new()), ("region_class", String::new())];
        assert_eq!(
            metrics.placements.get_or_create(&placed).get(),
            1,
            "a node without a site counts under none"
        );
    }

    #[test]
    fn a_binding_whose_outcome_is_unknown_keeps_its_room_and_the_pod() {
        let mut state = synced_state();
        state.apply(Update::Pod(watcher::Event::Apply(pending_pod("web"))));
        state.round();
        let effects = state.take_effects();
        assert!(matches!(&effects[..], [Effect::Bind { key, node, .. }] if key == "ns/web" && node == "n1"));
        // etcd down: the apiserver answers 409 although nothing was bound.
        let conflict =
            kube::core::Status::failure("rpc error: code = Unavailable", "Conflict").with_code(409);
        state.done(Done::Bound {
            key: "ns/web".into(),
            result: Err(kube::Error::Api(Box::new(conflict))),
            seconds: 0.01,
        });
        assert!(state.pending.contains_key("ns/web"), "the pod is not dropped");
        assert!(state.retry_at.contains_key("ns/web"), "it is tried again after a backoff");
        assert!(state.engine.placement_of("ns/web").is_some(), "its room stays held meanwhile");
        // The watch then shows it bound after all: nothing more to do.
        let mut bound = pending_pod("web");
        bound.spec.as_mut().expect("spec").node_name = Some("n1".into());
        state.apply(Update::Pod(watcher::Event::Apply(bound)));
        assert!(!state.pending.contains_key("ns/web"));
        assert_eq!(state.binds_in_flight, 0);
    }

    #[test]
    fn an_event_from_before_a_binding_does_not_bind_the_pod_again() {
        let mut state = synced_state();
        state.apply(Update::Pod(watcher::Event::Apply(pending_pod("web"))));
        state.round();
        assert_eq!(state.take_effects().len(), 1);
        state.done(Done::Bound { key: "ns/web".into(), result: Ok(()), seconds: 0.01 });
        // A status write of the reporter, older than the binding, arrives after it.
        let mut stale = pending_pod("web");
        stale.metadata.resource_version = Some("2".into());
        state.apply(Update::Pod(watcher::Event::Apply(stale)));
        state.round();
        assert!(state.take_effects().is_empty(), "not bound twice");
        // Deleted and made again under the same name: a new pod, scheduled.
        state.apply(Update::Pod(watcher::Event::Delete(pending_pod("web"))));
        state.take_effects();
        let mut again = pending_pod("web");
        again.metadata.uid = Some("another".into());
        state.apply(Update::Pod(watcher::Event::Apply(again)));
        state.round();
        assert!(matches!(&state.take_effects()[..], [Effect::Bind { uid, .. }] if uid == "another"));
    }

    #[test]
    fn a_claim_update_wakes_only_the_pods_that_use_it_and_a_heartbeat_none() {
        let mut state = synced_state();
        let with_claim = |name: &str, claim: &str| -> KubePod {
            let mut pod = pending_pod(name);
            pod.spec.as_mut().expect("spec").resource_claims =
                Some(vec![json(&format!(r#"{{"name": "gpu", "resourceClaimName": "{claim}"}}"#))]);
            pod
        };
        state.apply(Update::Pod(watcher::Event::Apply(with_claim("a", "claim-a"))));
        state.apply(Update::Pod(watcher::Event::Apply(with_claim("b", "claim-b"))));
        let mut big = pending_pod("big");
        big.spec.as_mut().expect("spec").containers[0].resources =
            Some(json(r#"{"requests": {"cpu": "64"}}"#));
        state.apply(Update::Pod(watcher::Event::Apply(big)));
        state.round();
        assert_eq!(state.unschedulable.len(), 3, "no claims yet, and no room for big");
        state.take_effects();
        state.apply(Update::DeviceClass(watcher::Event::Apply(json(
            r#"{"metadata": {"name": "gpu"}, "spec": {}}"#,
        ))));
        state.apply(Update::ResourceSlice(watcher::Event::Apply(json(
            r#"{"metadata": {"name": "n1"}, "spec": {"driver": "gpu.example.com", "nodeName": "n1",
                "pool": {"name": "n1", "resourceSliceCount": 1}, "devices": [{"name": "gpu-0"}]}}"#,
        ))));
        state.round();
        state.take_effects();
        assert_eq!(state.unschedulable.len(), 3, "a new device does not make a missing claim");
        let claim = json(
            r#"{"metadata": {"name": "claim-a", "namespace": "ns"},
                "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu"}}]}}}"#,
        );
        state.apply(Update::ResourceClaim(watcher::Event::Apply(claim)));
        let heartbeat = json(
            r#"{"metadata": {"name": "n1", "resourceVersion": "9"}, "status": {"allocatable": {"cpu": "8", "memory": "64Gi", "pods": "110"}}}"#,
        );
        state.apply(Update::Node(watcher::Event::Apply(heartbeat)));
        state.round();
        let tried: Vec<String> = state
            .take_effects()
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Bind { key, .. } | Effect::Unschedulable { key, .. } => Some(key),
                _ => None,
            })
            .collect();
        assert_eq!(tried, ["ns/a"], "only the pod whose claim appeared is tried again, and bound");
        assert!(state.unschedulable.contains_key("ns/b"), "another claim's update leaves it waiting");
        assert!(state.unschedulable.contains_key("ns/big"), "a heartbeat changes nothing it needs");
    }

    #[test]
    fn bindings_in_flight_are_bounded() {
        let mut state = synced_state();
        state.config.bind_concurrency = 2;
        for name in ["a", "b", "c"] {
            state.apply(Update::Pod(watcher::Event::Apply(pending_pod(name))));
        }
        state.round();
        let binds = state.take_effects().iter().filter(|e| matches!(e, Effect::Bind { .. })).count();
        assert_eq!(binds, 2);
        assert!(state.active.contains("ns/c"), "the third waits for a permit");
    }

    #[test]
    fn a_nomination_whose_victims_stay_is_dropped_and_the_pod_tried_again() {
        let mut state = synced_state();
        state.config.nomination_timeout_seconds = 0;
        let with = |name: &str, cpu: &str, priority: i32, node: Option<&str>| -> KubePod {
            let mut pod = pending_pod(name);
            let spec = pod.spec.as_mut().expect("spec");
            spec.priority = Some(priority);
            spec.node_name = node.map(String::from);
            spec.containers[0].resources = Some(json(&format!(r#"{{"requests": {{"cpu": "{cpu}"}}}}"#)));
            pod
        };
        state.apply(Update::Pod(watcher::Event::Apply(with("low", "8", 0, Some("n1")))));
        state.apply(Update::Pod(watcher::Event::Apply(with("urgent", "8", 10, None))));
        state.round();
        let effects = state.take_effects();
        assert!(
            effects.iter().any(|e| matches!(e, Effect::Evict { victim, .. } if victim == "ns/low")),
            "{effects:?}"
        );
        assert!(state.nominated.contains_key("ns/urgent"));
        // The victim never leaves (a finalizer, a stuck kubelet): past the timeout the room goes
        // back to it and the preemptor is tried afresh.
        state.housekeeping();
        assert!(!state.nominated.contains_key("ns/urgent"));
        assert!(state.active.contains("ns/urgent"));
        assert!(state.engine.placement_of("ns/low").is_some(), "the victim holds its room again");
        assert!(state.engine.placement_of("ns/urgent").is_none());
    }

    #[test]
    fn a_relist_forgets_podgroups_deleted_while_the_watch_was_down() {
        let mut state = synced_state();
        let group: PodGroup =
            json(r#"{"metadata": {"name": "train", "namespace": "ns"}, "spec": {"minMember": 3}}"#);
        state.apply(Update::PodGroup(watcher::Event::Apply(group)));
        assert!(state.groups.contains_key("ns/train"));
        state.apply(Update::PodGroup(watcher::Event::Init));
        state.apply(Update::PodGroup(watcher::Event::InitDone));
        assert!(!state.groups.contains_key("ns/train"), "no Delete came, but the relist did not see it");
    }
}
