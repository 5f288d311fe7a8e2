//! The scheduler as one task that owns the engine: watch events update its view, scheduling
//! rounds decide and assume, binding tasks report back. Nothing else touches the engine, so it
//! needs no lock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt, stream::BoxStream};
use k8s_openapi::{
    api::{
        core::v1::{Binding, Namespace, Node as KubeNode, ObjectReference, Pod as KubePod},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use yiyun_crds::{ComputeSite, PodGroup, PodGroupPhase, Tenant, TopologyLevel, TopologyMode, labels};
use yiyun_engine::{
    Engine, Placement, Policy,
    gang::{Gang, Level, Mode},
    model::Pod,
};
use yiyun_kube::{
    backoff::{Backoff, Retries},
    disruption::{disruptions_allowed, first_broken},
    leader::Leadership,
};

use crate::{Config, Error, convert, metrics::Metrics, report::Reporter};

/// Unschedulable pods are retried at least this often, whatever happens.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);
/// Failed bindings are retried from half a second, doubling, to half a minute, with jitter.
const BIND_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// Watch events applied before the next scheduling round.
const EVENT_BATCH: usize = 2_000;

/// What the watches report. Boxed objects would add an allocation per event for nothing: the
/// events are moved once, from the watch to `apply`.
#[allow(clippy::large_enum_variant)]
enum Update {
    Node(watcher::Event<KubeNode>),
    Pod(watcher::Event<KubePod>),
    Namespace(watcher::Event<Namespace>),
    PodGroup(watcher::Event<PodGroup>),
    Tenant(watcher::Event<Tenant>),
    Site(watcher::Event<ComputeSite>),
    Budget(watcher::Event<PodDisruptionBudget>),
    /// A watch failed (it restarts by itself): which kind, and why.
    Lost(&'static str, String),
}

/// A pod waiting for a node.
struct Pending {
    pod: Pod,
    uid: String,
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
}

/// What a task reports back.
enum Done {
    /// A binding of pod `key`.
    Bound { key: String, result: Result<(), kube::Error> },
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

pub struct Scheduler {
    config: Config,
    client: Client,
    engine: Engine,
    /// Tenant of each namespace (label `yiyun.io/tenant`).
    tenant_of: HashMap<String, String>,
    pending: BTreeMap<String, Pending>,
    /// Pending pods to try in the next round.
    active: BTreeSet<String>,
    /// Pending pods that did not fit, with when they were last tried.
    unschedulable: HashMap<String, Instant>,
    /// Pods whose binding failed (an apiserver down, a timeout), with when to try again: a
    /// dead apiserver is not hammered with every pod at every round.
    retry_at: HashMap<String, Instant>,
    bind_retries: Retries<String>,
    /// Something changed that may let unschedulable pods fit.
    requeue: bool,
    binding: HashSet<String>,
    /// Bound pods by node, to account them again when their node (re)appears.
    bound_on: HashMap<String, HashMap<String, BoundPod>>,
    groups: HashMap<String, Group>,
    sites: BTreeMap<String, ComputeSite>,
    /// PodDisruptionBudgets by `namespace/name`: preemption evicts all its victims or none.
    budgets: HashMap<String, PodDisruptionBudget>,
    synced: Synced,
    /// Keys seen while a watch relists, to drop what is gone afterwards.
    relisting_nodes: Relist,
    relisting_pods: Relist,
    relisting_tenants: Relist,
    relisting_namespaces: Relist,
    relisting_groups: Relist,
    relisting_budgets: Relist,
    bind_permits: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    nominated: HashMap<String, Nomination>,
    reporter: Reporter,
    metrics: Metrics,
    first_bind_logged: bool,
    started: Instant,
    /// Every write goes through it: nothing is sent once the lease is lost.
    leadership: Leadership,
}

/// The events of one kind, tagged; `kind` names it when the watch fails.
fn watch<K>(
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    tag: fn(watcher::Event<K>) -> Update,
) -> BoxStream<'static, Update>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .backoff(yiyun_kube::backoff::WatchBackoff::default())
        .map(move |event| match event {
            Ok(event) => tag(event),
            Err(err) => Update::Lost(kind, err.to_string()),
        })
        .boxed()
}

impl Scheduler {
    pub fn new(config: Config, client: Client, metrics: Metrics, leadership: Leadership) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut engine = Engine::new(Policy::Yiyun, 1);
        engine.set_evictions_per_minute(config.evictions_per_minute);
        Scheduler {
            bind_permits: Arc::new(Semaphore::new(config.bind_concurrency.max(1))),
            reporter: Reporter::new(client.clone(), config.scheduler_name.clone(), leadership.clone()),
            leadership,
            config,
            client,
            engine,
            tenant_of: HashMap::new(),
            pending: BTreeMap::new(),
            active: BTreeSet::new(),
            unschedulable: HashMap::new(),
            retry_at: HashMap::new(),
            bind_retries: Retries::new(BIND_RETRY),
            requeue: false,
            binding: HashSet::new(),
            bound_on: HashMap::new(),
            groups: HashMap::new(),
            sites: BTreeMap::new(),
            budgets: HashMap::new(),
            synced: Synced::default(),
            relisting_nodes: Relist::default(),
            relisting_pods: Relist::default(),
            relisting_tenants: Relist::default(),
            relisting_namespaces: Relist::default(),
            relisting_groups: Relist::default(),
            relisting_budgets: Relist::default(),
            done_tx,
            done_rx,
            nominated: HashMap::new(),
            metrics,
            first_bind_logged: false,
            started: Instant::now(),
        }
    }

    fn updates(&self) -> impl Stream<Item = Update> + use<> {
        let client = &self.client;
        // Finished pods hold nothing; the apiserver leaves them out.
        // Large pages: a restarted scheduler lists tens of thousands of pods before it may bind,
        // and every page is a round trip.
        let pods = watcher::Config::default()
            .fields("status.phase!=Succeeded,status.phase!=Failed")
            .page_size(10_000);
        futures::stream::select_all([
            watch("Node", Api::<KubeNode>::all(client.clone()), watcher::Config::default(), Update::Node),
            watch("Pod", Api::<KubePod>::all(client.clone()), pods, Update::Pod),
            watch(
                "Namespace",
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
                Update::Namespace,
            ),
            watch(
                "PodGroup",
                Api::<PodGroup>::all(client.clone()),
                watcher::Config::default(),
                Update::PodGroup,
            ),
            watch("Tenant", Api::<Tenant>::all(client.clone()), watcher::Config::default(), Update::Tenant),
            watch(
                "ComputeSite",
                Api::<ComputeSite>::all(client.clone()),
                watcher::Config::default(),
                Update::Site,
            ),
            watch(
                "PodDisruptionBudget",
                Api::<PodDisruptionBudget>::all(client.clone()),
                watcher::Config::default(),
                Update::Budget,
            ),
        ])
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut updates = self.updates();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                update = updates.next() => {
                    let Some(update) = update else { return Err(Error::WatchEnded) };
                    self.apply(update);
                    // Apply what else has arrived before deciding anything.
                    for _ in 0..EVENT_BATCH {
                        match futures::FutureExt::now_or_never(updates.next()) {
                            Some(Some(update)) => self.apply(update),
                            Some(None) => return Err(Error::WatchEnded),
                            None => break,
                        }
                    }
                }
                Some(done) = self.done_rx.recv() => self.done(done),
                _ = tick.tick() => self.housekeeping(),
            }
            while let Ok(done) = self.done_rx.try_recv() {
                self.done(done);
            }
            if self.synced.all() {
                self.round();
            }
        }
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Node(event) => self.node_event(event),
            Update::Pod(event) => self.pod_event(event),
            Update::Namespace(event) => match event {
                watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                    self.relisting_namespaces.saw(&ns.name_any());
                    let tenant = ns.labels().get(labels::TENANT).cloned();
                    self.set_tenant_of(ns.name_any(), tenant);
                }
                watcher::Event::Delete(ns) => self.set_tenant_of(ns.name_any(), None),
                watcher::Event::Init => self.relisting_namespaces.start(),
                watcher::Event::InitDone => {
                    if let Some(seen) = self.relisting_namespaces.finish() {
                        let gone: Vec<String> =
                            self.tenant_of.keys().filter(|ns| !seen.contains(*ns)).cloned().collect();
                        for namespace in gone {
                            self.set_tenant_of(namespace, None);
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
                self.requeue = true;
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
            Update::Lost(kind, error) => {
                // Without yiyun's CRDs there are no PodGroups, Tenants or ComputeSites: schedule
                // without them rather than not at all (the watch keeps trying and picks them up
                // once the CRDs are installed).
                let absent = error.contains("404");
                let synced = match kind {
                    "PodGroup" if absent => Some(&mut self.synced.groups),
                    "Tenant" if absent => Some(&mut self.synced.tenants),
                    "ComputeSite" if absent => Some(&mut self.synced.sites),
                    _ => None,
                };
                match synced {
                    Some(flag) => {
                        if !*flag {
                            warn!(kind, "the yiyun.io CRD is not installed; scheduling without it");
                        }
                        *flag = true;
                    }
                    None => warn!(kind, %error, "a watch failed; it restarts with backoff"),
                }
            }
        }
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
        self.requeue = true;
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
        self.requeue = true;
    }

    fn node_event(&mut self, event: watcher::Event<KubeNode>) {
        match event {
            watcher::Event::Init => self.relisting_nodes.start(),
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                let name = node.name_any();
                self.relisting_nodes.saw(&name);
                let known = self.engine.node_id(&name).is_some();
                self.engine.upsert_node(convert::node(&node));
                if !known {
                    // Pods bound before the node was seen are accounted now.
                    let bound: Vec<BoundPod> = self
                        .bound_on
                        .get(&name)
                        .map(|pods| pods.values().cloned().collect())
                        .unwrap_or_default();
                    for bound in bound {
                        self.account(&name, &bound.pod, bound.gpus);
                    }
                }
                self.requeue = true;
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
                self.requeue = true;
            }
        }
    }

    /// Records a bound pod in the engine at its node.
    fn account(&mut self, node_name: &str, pod: &Pod, gpus: Option<Vec<(u8, u16)>>) {
        let Some(node) = self.engine.node_id(node_name) else { return };
        if self.engine.placement_of(&pod.key).is_some_and(|placement| placement.node == node) {
            return;
        }
        // Without a recorded assignment (bound by someone else), devices as the engine would pick.
        let gpus = gpus.or_else(|| self.engine.free(node)?.1.tightest_allocation(pod.gpu));
        self.engine.assume(pod, &Placement { node, gpus: gpus.unwrap_or_default() });
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
            self.pending.remove(&key);
            self.active.remove(&key);
            self.unschedulable.remove(&key);
            let gpus = convert::gpu_assignment(kube_pod);
            let running = kube_pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let labels = kube_pod.metadata.labels.clone().unwrap_or_default();
            let bound = BoundPod { pod: pod.clone(), gpus: gpus.clone(), running, labels };
            self.bound_on.entry(node_name.clone()).or_default().insert(key, bound);
            self.account(&node_name, &pod, gpus);
            return;
        }
        let ours =
            spec.and_then(|s| s.scheduler_name.as_deref()) == Some(self.config.scheduler_name.as_str());
        if !ours || kube_pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let uid = kube_pod.metadata.uid.clone().unwrap_or_default();
        let changed = self.pending.get(&key).is_none_or(|pending| pending.pod != pod || pending.uid != uid);
        if changed && !self.binding.contains(&key) {
            self.pending.insert(key.clone(), Pending { pod, uid });
            self.unschedulable.remove(&key);
            self.active.insert(key);
        }
    }

    /// A pod deleted or finished; `node_name` is where it was bound (none for a pending pod).
    fn pod_gone(&mut self, key: &str, node_name: Option<String>) {
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
        self.reporter.forget(key);
        if let Some(node_name) = node_name
            && let Some(pods) = self.bound_on.get_mut(&node_name)
        {
            pods.remove(key);
            if pods.is_empty() {
                self.bound_on.remove(&node_name);
            }
        }
        if !self.binding.contains(key) && self.engine.forget(key) {
            self.requeue = true;
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
                self.requeue = true;
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
        self.requeue = true;
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Bound { key, result } => self.bound(key, result),
            Done::Evicted { victim, preemptor, result } => self.evicted(victim, preemptor, result),
        }
    }

    fn bound(&mut self, key: String, result: Result<(), kube::Error>) {
        self.binding.remove(&key);
        match result {
            Ok(()) => {
                self.metrics.bound.inc();
                self.bind_retries.succeeded(&key);
                if !self.first_bind_logged {
                    self.first_bind_logged = true;
                    info!(pod = %key, seconds = self.started.elapsed().as_secs_f64(), "first pod bound");
                }
                // The watch will show it bound; until then it stays assumed and out of the queue.
                self.pending.remove(&key);
            }
            // The outcome is not known: a 409 means bound already, or (etcd down) nothing at all;
            // a timeout may have bound it. The pod keeps its room until the watch shows it bound
            // (or gone), or the retry finds it still waiting and places it afresh.
            Err(err) => {
                self.metrics.bind_errors.inc();
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

    fn housekeeping(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= RETRY_UNSCHEDULABLE)
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
        self.metrics.pending.set(self.pending.len() as i64);
        self.group_statuses();
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
            let Some((namespace, name)) = key.split_once('/') else { continue };
            let api: Api<PodGroup> = Api::namespaced(self.client.clone(), namespace);
            let name = name.to_string();
            let scheduled = matches!(phase, PodGroupPhase::Scheduled | PodGroupPhase::Running);
            let status = serde_json::json!({"status": {
                "phase": phase, "placed": placed, "running": running,
                "conditions": [{
                    "type": "Scheduled", "status": if scheduled { "True" } else { "False" },
                    "reason": format!("{phase:?}"), "message": message,
                    "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
                }],
            }});
            let leadership = self.leadership.clone();
            tokio::spawn(async move {
                if let Some(Err(err)) = leadership
                    .while_leading(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)))
                    .await
                {
                    debug!(group = %name, error = %err, "cannot write the PodGroup status");
                }
            });
        }
    }

    /// One scheduling round over the active pods.
    fn round(&mut self) {
        if self.requeue {
            self.requeue = false;
            for key in self.unschedulable.drain().map(|(key, _)| key) {
                self.active.insert(key);
            }
        }
        if self.active.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.active);
        let mut pods: Vec<Pod> = keys
            .iter()
            .filter(|key| !self.binding.contains(*key) && !self.nominated.contains_key(*key))
            .filter_map(|key| self.pending.get(key).map(|pending| pending.pod.clone()))
            .collect();
        self.engine.queue_order(&mut pods);
        let mut gangs: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        for pod in pods {
            if let Some(gang) = &pod.gang {
                gangs.entry(gang.clone()).or_default().push(pod);
                continue;
            }
            // Bindings in flight are bounded: a pod without a permit now waits for a later round.
            if self.bind_permits.available_permits() == 0 {
                self.active.insert(pod.key.clone());
                continue;
            }
            match self.engine.schedule(&pod) {
                Ok(placement) => self.bind(&pod, placement),
                Err(explanation) => match self.preempt(&pod) {
                    Preempted::Started => {}
                    Preempted::NotPossible => self.unplaced(&pod, explanation.to_string()),
                    Preempted::BudgetRefuses(why) => self.unplaced(&pod, format!("{explanation}; {why}")),
                },
            }
        }
        for (gang, members) in gangs {
            self.schedule_gang(&gang, members);
        }
    }

    fn schedule_gang(&mut self, key: &str, members: Vec<Pod>) {
        // A gang is placed when all its members can be bound at once.
        if self.bind_permits.available_permits() < members.len() {
            self.active.extend(members.into_iter().map(|pod| pod.key));
            return;
        }
        let Some(group) = self.groups.get(key) else {
            for pod in &members {
                self.unplaced(pod, format!("PodGroup {key} does not exist"));
            }
            return;
        };
        if group.timed_out {
            for pod in &members {
                self.unplaced(pod, format!("PodGroup {key} timed out"));
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
                self.unplaced(pod, message.clone());
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
                let message = explanation.to_string();
                if let Some(group) = self.groups.get_mut(key) {
                    group.waiting_for = Some(message.clone());
                }
                for pod in &members {
                    self.unplaced(pod, message.clone());
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
        let nomination = Nomination {
            victims: preemption.victims.iter().cloned().collect(),
            node: node.clone(),
            since: Instant::now(),
        };
        self.nominated.insert(pod.key.clone(), nomination);
        let (namespace, name) = pod.key.split_once('/').unwrap_or_default();
        let pods: Api<KubePod> = Api::namespaced(self.client.clone(), namespace);
        let status = serde_json::json!({"status": {"nominatedNodeName": node}});
        let name = name.to_string();
        let leadership = self.leadership.clone();
        tokio::spawn(async move {
            if let Some(Err(err)) = leadership
                .while_leading(pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)))
                .await
            {
                debug!(pod = %name, error = %err, "cannot write nominatedNodeName");
            }
        });
        for victim in preemption.victims {
            let Some((namespace, name)) = victim.split_once('/').map(|(n, p)| (n.to_string(), p.to_string()))
            else {
                continue;
            };
            let api: Api<KubePod> = Api::namespaced(self.client.clone(), &namespace);
            let done = self.done_tx.clone();
            let preemptor = pod.key.clone();
            let leadership = self.leadership.clone();
            tokio::spawn(async move {
                // Lease lost: the process is stopping, nothing to record.
                let Some(result) =
                    leadership.while_leading(api.evict(&name, &kube::api::EvictParams::default())).await
                else {
                    return;
                };
                let _ = done.send(Done::Evicted { victim, preemptor, result: result.map(|_| ()) });
            });
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
                    self.account(&nomination.node, &bound.pod, bound.gpus);
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
            self.account(&node, &bound.pod, bound.gpus);
        }
        if self.nominated.remove(&preemptor).is_some() {
            self.engine.forget(&preemptor);
            if let Some(pod) = self.pending.get(&preemptor).map(|p| p.pod.clone()) {
                self.unplaced(&pod, format!("preemption refused: {victim} may not be evicted now ({err})"));
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
            Err(explanation) => self.unplaced(pod, explanation.to_string()),
        }
    }

    fn unplaced(&mut self, pod: &Pod, message: String) {
        self.metrics.unschedulable.inc();
        self.unschedulable.insert(pod.key.clone(), Instant::now());
        if let Some(pending) = self.pending.get(&pod.key) {
            self.reporter.unschedulable(&pod.key, &pending.uid, &message);
        }
    }

    fn bind(&mut self, pod: &Pod, placement: Placement) {
        let Some(pending) = self.pending.get(&pod.key) else {
            self.engine.forget(&pod.key);
            return;
        };
        let Some(node) = self.engine.node(placement.node).map(|node| node.name.clone()) else {
            self.engine.forget(&pod.key);
            return;
        };
        let Ok(permit) = self.bind_permits.clone().try_acquire_owned() else {
            // Rounds check for permits first; should they run out all the same, try later.
            self.engine.forget(&pod.key);
            self.active.insert(pod.key.clone());
            return;
        };
        self.binding.insert(pod.key.clone());
        self.unschedulable.remove(&pod.key);
        let (namespace, name) =
            pod.key.split_once('/').map(|(n, p)| (n.to_string(), p.to_string())).unwrap_or_default();
        let uid = pending.uid.clone();
        let gpus = (!placement.gpus.is_empty()).then(|| convert::gpu_assignment_value(&placement.gpus));
        let api: Api<KubePod> = Api::namespaced(self.client.clone(), &namespace);
        let done = self.done_tx.clone();
        let key = pod.key.clone();
        let leadership = self.leadership.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Lease lost: the process is stopping, nothing to record.
            let Some(result) = leadership.while_leading(bind(&api, &name, &uid, &node, gpus)).await else {
                return;
            };
            let _ = done.send(Done::Bound { key, result });
        });
    }
}

/// Binds the pod through `pods/binding` (guarded by its uid: a pod deleted and recreated under
/// the same name is not bound), with the GPU devices it gets, if any, as an annotation of the
/// Binding: the apiserver copies it onto the pod in the same write, and the chart's admission
/// policy lets nobody set or change it otherwise.
async fn bind(
    api: &Api<KubePod>,
    name: &str,
    uid: &str,
    node: &str,
    gpus: Option<String>,
) -> Result<(), kube::Error> {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            uid: Some(uid.to_string()),
            annotations: gpus.map(|gpus| [(labels::GPU_ASSIGNMENT.to_string(), gpus)].into()),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            api_version: Some("v1".into()),
            ..ObjectReference::default()
        },
    };
    api.create_subresource::<Binding, serde_json::Value>("binding", name, &PostParams::default(), &binding)
        .await?;
    Ok(())
}
