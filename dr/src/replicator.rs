//! Replication of protected namespaces: one watch per kind for the whole primary cluster feeds
//! a worker per policy, which applies each change to its standby (continuous mode), compares
//! the namespace with its copy in full (at start, every resync, and at each scheduled copy),
//! measures lag and the achieved RPO, and writes the policy's status.
//!
//! Crash-safe by construction: nothing is remembered between runs that the clusters do not
//! hold. A restarted worker's first full comparison finds what changed or was deleted while it
//! was down, and each copy carries the primary's resourceVersion it was made from, so a copy is
//! never replaced by an older one.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Namespace,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, VersionMatch,
    },
    runtime::{
        WatchStreamExt,
        reflector::ObjectRef,
        watcher::{self, Event},
    },
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};
use yiyun_admin::Readiness;
use yiyun_crds::{
    ConflictResolution, ReplicationMode, ReplicationPolicy, ReplicationPolicyStatus, ReplicationRole,
};

use crate::{
    Config, Error, FIELD_MANAGER,
    metrics::{Metrics, PolicyLabels, WriteLabels},
    rules::{
        durations,
        objects::{self, KINDS, Kind, POLICY_LABEL, ROLE, SOURCE_DELETED_AT},
        policy::{self, Targets},
        progress::{self, Health, LagWindow},
    },
    standby::{self, Unreached},
};

/// Writes to one standby in flight at once.
const WRITES_IN_FLIGHT: usize = 16;
/// Lag percentiles cover the last hour.
const LAG_WINDOW_SECONDS: f64 = 3_600.0;

/// The API resource of a replicated kind.
pub fn api_resource(kind: &Kind) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(kind.group, kind.version, kind.kind),
        kind.plural,
    )
}

/// A change seen on the primary.
#[derive(Clone, Debug)]
enum Change {
    Upsert(Value),
    Delete(Value),
}

enum Message {
    Policy(Arc<ReplicationPolicy>),
    Change { kind: usize, change: Change, seen: Instant },
}

/// The workers of each namespace, for the kind watches to hand changes to.
type Routes = Arc<RwLock<HashMap<String, Vec<(String, mpsc::UnboundedSender<Message>)>>>>;

pub async fn run(
    client: Client,
    metrics: Metrics,
    readiness: Readiness,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let routes: Routes = Arc::default();
    for index in 0..KINDS.len() {
        tokio::spawn(watch_kind(client.clone(), index, routes.clone(), shutdown.clone()));
    }
    let policies: Api<ReplicationPolicy> = Api::all(client.clone());
    let (store, listed, touched) =
        yiyun_kube::watches::reflect(watcher::watcher(policies, watcher::Config::default()), |_| {});
    let mut touched = std::pin::pin!(touched);
    let timing = Timing {
        resync: Duration::from_secs(config.resync_seconds.max(1)),
        status: Duration::from_secs(config.status_seconds.max(1)),
    };
    let mut workers = Workers {
        client: client.clone(),
        metrics,
        timing,
        shutdown: shutdown.clone(),
        running: HashMap::new(),
    };
    let mut listed = listed;
    loop {
        // The store holds the first list only once the watch has listed it whole: then every
        // policy gets its worker; after that, each touched one.
        let touched: Vec<ObjectRef<ReplicationPolicy>> = tokio::select! {
            () = shutdown.cancelled() => break,
            changed = listed.changed() => {
                if changed.is_err() {
                    break;
                }
                readiness.set(*listed.borrow());
                store.state().iter().map(|policy| ObjectRef::from_obj(policy.as_ref())).collect()
            }
            policy = touched.next() => match policy {
                Some(Ok(policy)) if *listed.borrow() => vec![ObjectRef::from_obj(&policy)],
                Some(_) => continue,
                None => break,
            },
        };
        for key in touched {
            let current = store.get(&key);
            workers.sync(key, current, &routes);
        }
    }
    Ok(())
}

/// The worker of each policy, started, told of changes and stopped with it.
struct Workers {
    client: Client,
    metrics: Metrics,
    timing: Timing,
    shutdown: CancellationToken,
    running: HashMap<ObjectRef<ReplicationPolicy>, (mpsc::UnboundedSender<Message>, CancellationToken)>,
}

impl Workers {
    fn sync(
        &mut self,
        key: ObjectRef<ReplicationPolicy>,
        current: Option<Arc<ReplicationPolicy>>,
        routes: &Routes,
    ) {
        let namespace = key.namespace.clone().unwrap_or_default();
        match current {
            Some(current) => {
                if let Some((sender, _)) = self.running.get(&key)
                    && sender.send(Message::Policy(current.clone())).is_ok()
                {
                    return;
                }
                let (sender, receiver) = mpsc::unbounded_channel();
                let stop = self.shutdown.child_token();
                let worker = Worker::new(self.client.clone(), current, self.metrics.clone(), self.timing);
                info!(namespace, policy = %key.name, "protecting the namespace");
                // Every line the worker logs names its policy (a span this long lived is for the
                // logs, not a trace).
                let span = tracing::info_span!("replication", namespace, object = %key.name);
                tokio::spawn(worker.run(receiver, stop.clone()).instrument(span));
                let mut routes = routes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                let workers = routes.entry(namespace).or_default();
                workers.retain(|(name, _)| name != &key.name);
                workers.push((key.name.clone(), sender.clone()));
                self.running.insert(key, (sender, stop));
            }
            None => {
                if let Some((_, stop)) = self.running.remove(&key) {
                    info!(namespace, policy = %key.name, "policy deleted: its copies stay on the standby");
                    stop.cancel();
                }
                let mut routes = routes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(list) = routes.get_mut(&namespace) {
                    list.retain(|(name, _)| name != &key.name);
                }
            }
        }
    }
}

/// Follows one kind across the primary cluster and hands each change to the workers of its
/// namespace.
async fn watch_kind(client: Client, index: usize, routes: Routes, shutdown: CancellationToken) {
    let kind = KINDS[index];
    let api: Api<DynamicObject> = Api::all_with(client, &api_resource(&kind));
    let events = watcher::watcher(api, watcher::Config::default())
        .backoff(yiyun_kube::backoff::WatchBackoff::default());
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let (mut object, delete) = match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => (object, false),
            Ok(Event::Delete(object)) => (object, true),
            Ok(Event::Init | Event::InitDone) => continue,
            Err(error) => {
                warn!(kind = kind.kind, %error, "watch failed; it retries by itself");
                continue;
            }
        };
        let Some(namespace) = object.namespace() else { continue };
        let routes = routes.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(workers) = routes.get(&namespace) else { continue };
        object.managed_fields_mut().clear();
        let Ok(value) = serde_json::to_value(&object) else { continue };
        let change = if delete { Change::Delete(value) } else { Change::Upsert(value) };
        let seen = Instant::now();
        for (_, worker) in workers {
            let _ = worker.send(Message::Change { kind: index, change: change.clone(), seen });
        }
    }
}

#[derive(Clone, Copy)]
struct Timing {
    resync: Duration,
    status: Duration,
}

/// An object of the namespace: its kind's index in [`KINDS`] and its name.
type Key = (usize, String);

struct Pending {
    change: Change,
    /// When the oldest change not yet on the standby was seen (for the RPO).
    first_seen: Instant,
    /// When this change was seen (for the lag).
    seen: Instant,
}

/// What writing one change to the standby came to.
enum Outcome {
    Applied {
        version: u64,
    },
    Deleted,
    /// Kept on the standby for the retention, marked with when its original went.
    Retained,
    Skipped,
    Conflict(String),
    Rejected(String),
    Unreachable(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Deleted => "deleted",
            Outcome::Retained => "retained",
            Outcome::Skipped => "skipped",
            Outcome::Conflict(_) => "conflict",
            Outcome::Rejected(_) => "rejected",
            Outcome::Unreachable(_) => "unreachable",
        }
    }
}

struct Worker {
    primary: Client,
    policy: Arc<ReplicationPolicy>,
    namespace: String,
    name: String,
    metrics: Metrics,
    timing: Timing,
    validity: Result<Valid, String>,
    standby: Option<Client>,
    /// Why the standby cannot be written, when it cannot.
    unreachable: Option<String>,
    /// The standby missed writes: until a full comparison succeeds, the copy is only known to
    /// be as current as it was before (changes seen meanwhile may not be all there were).
    behind: bool,
    /// The standby namespace serves (a failover happened): nothing is copied.
    failed_over: bool,
    pending: BTreeMap<Key, Pending>,
    /// The primary's resourceVersion each copy on the standby was made from.
    copies: HashMap<Key, u64>,
    conflicts: BTreeMap<Key, String>,
    lag: LagWindow,
    started: Instant,
    /// A full comparison has succeeded since this worker started.
    synced: bool,
    /// The last instant the standby held everything the primary had (continuous), or the
    /// start of the last consistent copy (scheduled).
    consistent_at: Option<Instant>,
    failures: u32,
    next_flush: Instant,
    next_full_sync: Instant,
}

struct Valid {
    targets: Targets,
    kinds: Vec<usize>,
}

fn validate(policy: &ReplicationPolicy) -> Result<Valid, String> {
    let targets = policy::validate(&policy.spec)
        .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    let chosen = objects::kinds_of(&policy.spec);
    let kinds = KINDS.iter().enumerate().filter(|(_, k)| chosen.contains(k)).map(|(i, _)| i).collect();
    Ok(Valid { targets, kinds })
}

impl Worker {
    fn new(primary: Client, policy: Arc<ReplicationPolicy>, metrics: Metrics, timing: Timing) -> Self {
        let now = Instant::now();
        Worker {
            primary,
            namespace: policy.namespace().unwrap_or_default(),
            name: policy.name_any(),
            validity: validate(&policy),
            policy,
            metrics,
            timing,
            standby: None,
            unreachable: None,
            behind: false,
            failed_over: false,
            pending: BTreeMap::new(),
            copies: HashMap::new(),
            conflicts: BTreeMap::new(),
            lag: LagWindow::new(LAG_WINDOW_SECONDS),
            started: now,
            synced: false,
            consistent_at: None,
            failures: 0,
            next_flush: now,
            next_full_sync: now,
        }
    }

    async fn run(mut self, mut messages: mpsc::UnboundedReceiver<Message>, stop: CancellationToken) {
        let mut status_tick = tokio::time::interval(self.timing.status);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let flush_due = !self.pending.is_empty() && self.synced;
            tokio::select! {
                () = stop.cancelled() => return,
                message = messages.recv() => {
                    let Some(message) = message else { return };
                    self.receive(message);
                    while let Ok(message) = messages.try_recv() {
                        self.receive(message);
                    }
                }
                () = tokio::time::sleep_until(self.next_flush.into()), if flush_due => self.flush().await,
                () = tokio::time::sleep_until(self.next_full_sync.into()) => self.full_sync().await,
                _ = status_tick.tick() => self.write_status().await,
            }
        }
    }

    fn receive(&mut self, message: Message) {
        match message {
            Message::Policy(policy) => {
                if policy.metadata.generation != self.policy.metadata.generation
                    || policy.spec != self.policy.spec
                {
                    self.validity = validate(&policy);
                    self.standby = None;
                    self.pending.clear();
                    self.next_full_sync = Instant::now();
                }
                self.policy = policy;
            }
            Message::Change { kind, change, seen } => {
                let Ok(valid) = &self.validity else { return };
                if self.policy.spec.mode != ReplicationMode::Continuous || !valid.kinds.contains(&kind) {
                    return;
                }
                let object = match &change {
                    Change::Upsert(object) | Change::Delete(object) => object,
                };
                if objects::cluster_own(&KINDS[kind], object) {
                    return;
                }
                let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                // An object the selection no longer takes loses its copy.
                let change = match change {
                    Change::Upsert(object) if !self.selected(&KINDS[kind], &object) => Change::Delete(object),
                    change => change,
                };
                let first_seen = self.pending.get(&(kind, name.clone())).map_or(seen, |p| p.first_seen);
                self.pending.insert((kind, name), Pending { change, first_seen, seen });
            }
        }
    }

    /// Whether the policy copies `object`: chosen by its labels, and not the Secret that holds
    /// the standby's own credentials.
    fn selected(&self, kind: &Kind, object: &Value) -> bool {
        let labels = serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default();
        let credentials = kind.kind == "Secret"
            && object["metadata"]["name"] == self.policy.spec.target.kubeconfig_secret.name.as_str();
        objects::selected(&self.policy.spec, &labels) && !credentials
    }

    /// The standby's client, connecting first if need be; `None` (with the reason kept) when
    /// it cannot be had.
    async fn standby(&mut self) -> Option<Client> {
        if let Some(client) = &self.standby {
            return Some(client.clone());
        }
        match standby::connect(&self.primary, &self.policy).await {
            Ok(client) => {
                self.standby = Some(client.clone());
                Some(client)
            }
            Err(Unreached::Invalid(problem)) => {
                self.validity = Err(problem.to_string());
                None
            }
            Err(Unreached::Transient(why)) => {
                self.unreachable = Some(why);
                None
            }
        }
    }

    /// Makes sure the namespace exists on the standby (dormant, unless a failover made it
    /// serve) and reads whether it serves. `Err` when the standby does not answer.
    async fn standby_namespace(&mut self, standby: &Client) -> Result<(), String> {
        let namespaces: Api<Namespace> = Api::all(standby.clone());
        let existing = namespaces.get_opt(&self.namespace).await.map_err(|err| err.to_string())?;
        let namespace = match existing {
            Some(namespace) => namespace,
            None => {
                let primary: Api<Namespace> = Api::all(self.primary.clone());
                let mut labels = primary
                    .get_opt(&self.namespace)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|ns| ns.metadata.labels)
                    .unwrap_or_default();
                labels.remove("kubernetes.io/metadata.name");
                let namespace: Namespace = serde_json::from_value(json!({
                    "metadata": {"name": self.namespace, "labels": labels, "annotations": {ROLE: "standby"}}
                }))
                .map_err(|err| err.to_string())?;
                match namespaces.create(&PostParams::default(), &namespace).await {
                    Ok(created) => created,
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        namespaces.get(&self.namespace).await.map_err(|err| err.to_string())?
                    }
                    Err(err) => return Err(err.to_string()),
                }
            }
        };
        // Anything but standby (serving, or failing back) pauses replication; back to standby
        // after a failback, the whole namespace is compared again.
        let failed_over = namespace.annotations().get(ROLE).is_some_and(|role| role != "standby");
        if self.failed_over && !failed_over {
            self.next_full_sync = Instant::now();
        }
        self.failed_over = failed_over;
        Ok(())
    }

    /// Writes every pending change to the standby.
    async fn flush(&mut self) {
        if self.validity.is_err() {
            return;
        }
        let Some(standby) = self.standby().await else { return self.failed_to_reach() };
        // Read just before writing: a failover may have begun since the last look.
        if let Err(why) = self.standby_namespace(&standby).await {
            self.unreachable = Some(why);
            return self.failed_to_reach();
        }
        if self.failed_over {
            self.pending.clear();
            return;
        }
        let batch: Vec<(Key, Pending)> = std::mem::take(&mut self.pending).into_iter().collect();
        let changes = batch.iter().map(|(key, pending)| (key, &pending.change)).collect();
        let (outcomes, unreachable) = self.write_all(&standby, changes).await;
        for ((key, pending), outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Unreachable(_) => {
                    self.pending.insert(key, pending);
                }
                Outcome::Applied { .. } | Outcome::Deleted | Outcome::Retained => {
                    let lag = pending.seen.elapsed().as_secs_f64();
                    self.lag.record(self.started.elapsed().as_secs_f64(), lag);
                    self.metrics.lag.observe(lag);
                }
                _ => {}
            }
        }
        match unreachable {
            Some(why) => {
                self.unreachable = Some(why);
                self.failed_to_reach();
            }
            None => {
                self.unreachable = None;
                self.failures = 0;
                if self.behind {
                    self.next_full_sync = Instant::now();
                } else if self.pending.is_empty() {
                    self.consistent_at = Some(Instant::now());
                }
            }
        }
    }

    /// Writes `changes` to the standby, a few at a time, and books each outcome. Returns the
    /// outcomes in order, and why the standby could not be reached if a write found it so.
    async fn write_all(
        &mut self,
        standby: &Client,
        changes: Vec<(&Key, &Change)>,
    ) -> (Vec<Outcome>, Option<String>) {
        let keep_deleted = self.validity.as_ref().map_or(0, |valid| valid.targets.keep_deleted_seconds);
        let force = self.policy.spec.conflicts == ConflictResolution::Overwrite;
        let writes: Vec<_> = changes
            .iter()
            .map(|(key, change)| {
                let known = self.copies.get(*key).copied();
                write(standby, &self.namespace, &self.name, &KINDS[key.0], change, known, keep_deleted, force)
            })
            .collect();
        let outcomes: Vec<Outcome> = futures::stream::iter(writes).buffered(WRITES_IN_FLIGHT).collect().await;
        let mut unreachable = None;
        for ((key, _), outcome) in changes.iter().zip(&outcomes) {
            if let Outcome::Unreachable(why) = outcome {
                unreachable = Some(why.clone());
            }
            self.settle((*key).clone(), outcome);
        }
        debug!(namespace = self.namespace, policy = self.name, changes = changes.len(), "changes written");
        (outcomes, unreachable)
    }

    /// Books what a write came to, and counts it (a skipped one wrote nothing).
    fn settle(&mut self, key: Key, outcome: &Outcome) {
        let kind = KINDS[key.0].kind;
        debug!(namespace = self.namespace, kind, name = key.1, outcome = outcome.label(), "written");
        match outcome {
            Outcome::Applied { version } => {
                self.conflicts.remove(&key);
                self.copies.insert(key, *version);
            }
            Outcome::Deleted => {
                self.conflicts.remove(&key);
                self.copies.remove(&key);
            }
            Outcome::Conflict(message) => {
                self.conflicts.insert(key, format!("edited on the standby: {message}"));
            }
            Outcome::Rejected(message) => {
                self.conflicts.insert(key, format!("rejected by the standby: {message}"));
            }
            Outcome::Retained | Outcome::Skipped | Outcome::Unreachable(_) => {}
        }
        if !matches!(outcome, Outcome::Skipped) {
            self.metrics.writes.get_or_create(&WriteLabels { kind, result: outcome.label() }).inc();
        }
    }

    /// A full comparison stopped by an unreachable standby: tried again after the backoff.
    fn full_sync_unreachable(&mut self, why: Option<String>) {
        if let Some(why) = why {
            self.unreachable = Some(why);
        }
        self.next_full_sync = Instant::now() + progress::retry_delay(self.failures.max(1));
        self.failed_to_reach();
    }

    fn failed_to_reach(&mut self) {
        self.standby = None;
        self.behind = true;
        self.failures += 1;
        self.next_flush = Instant::now() + progress::retry_delay(self.failures);
    }

    /// Compares the whole namespace with its copy: every kind listed at one resourceVersion,
    /// what differs applied, what the primary no longer has deleted (after the retention).
    async fn full_sync(&mut self) {
        let interval = match (&self.validity, self.policy.spec.mode) {
            (Ok(valid), ReplicationMode::Scheduled) => {
                Duration::from_secs(valid.targets.every_seconds.unwrap_or(3_600))
            }
            _ => self.timing.resync,
        };
        self.next_full_sync = Instant::now() + interval;
        let Ok(valid) = &self.validity else { return };
        let kinds = valid.kinds.clone();
        let Some(standby) = self.standby().await else { return self.full_sync_unreachable(None) };
        if let Err(why) = self.standby_namespace(&standby).await {
            return self.full_sync_unreachable(Some(why));
        }
        if self.failed_over {
            return;
        }
        let started = Instant::now();
        let (primary, version) = match self.list_primary(&kinds).await {
            Ok(listed) => listed,
            Err(err) => {
                warn!(namespace = self.namespace, policy = self.name, error = %err, "cannot list the primary; trying again soon");
                self.next_full_sync = Instant::now() + progress::retry_delay(1);
                return;
            }
        };
        let copies = match self.list_copies(&standby, &kinds).await {
            Ok(copies) => copies,
            Err(err) => return self.full_sync_unreachable(Some(err.to_string())),
        };
        self.copies = copies
            .iter()
            .filter_map(|(key, copy)| Some((key.clone(), objects::source_version(copy)?)))
            .collect();
        let mut changes: Vec<(Key, Change)> = Vec::new();
        for (key, object) in &primary {
            let copy = copies.get(key);
            if copy.is_some_and(|c| c["metadata"]["annotations"].get(SOURCE_DELETED_AT).is_some()) {
                // The original is back: the copy is no longer one of a deleted object.
                let api: Api<DynamicObject> =
                    Api::namespaced_with(standby.clone(), &self.namespace, &api_resource(&KINDS[key.0]));
                let unmark = json!({"metadata": {"annotations": {SOURCE_DELETED_AT: null}}});
                let _ = api.patch(&key.1, &PatchParams::default(), &Patch::Merge(&unmark)).await;
            }
            if copy.and_then(objects::source_version) < Some(objects::version(object)) {
                changes.push((key.clone(), Change::Upsert(object.clone())));
            }
        }
        for (key, copy) in &copies {
            if !primary.contains_key(key) && objects::source_version(copy).unwrap_or(0) <= version {
                changes.push((key.clone(), Change::Delete(copy.clone())));
            }
        }
        let (_, unreachable) =
            self.write_all(&standby, changes.iter().map(|(key, change)| (key, change)).collect()).await;
        if let Some(why) = unreachable {
            return self.full_sync_unreachable(Some(why));
        }
        // Copies the primary has that still exist: a pending change older than the list is
        // already on the standby.
        self.pending.retain(|key, pending| match &pending.change {
            Change::Upsert(object) => objects::version(object) > self.copies.get(key).copied().unwrap_or(0),
            Change::Delete(_) => true,
        });
        self.unreachable = None;
        self.behind = false;
        self.synced = true;
        if self.policy.spec.mode == ReplicationMode::Scheduled || self.pending.is_empty() {
            self.consistent_at = Some(started);
        }
        self.metrics.full_comparisons.inc();
        debug!(
            namespace = self.namespace,
            policy = self.name,
            objects = self.copies.len(),
            "full comparison done"
        );
    }

    /// Every object of the chosen kinds on the primary, listed at one resourceVersion, with
    /// that version.
    async fn list_primary(&self, kinds: &[usize]) -> Result<(BTreeMap<Key, Value>, u64), kube::Error> {
        let mut objects = BTreeMap::new();
        let mut at: Option<String> = None;
        for &index in kinds {
            let kind = &KINDS[index];
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.primary.clone(), &self.namespace, &api_resource(kind));
            let params = match &at {
                None => ListParams::default(),
                Some(version) => ListParams::default().at(version).matching(VersionMatch::Exact),
            };
            let list = api.list(&params).await?;
            if at.is_none() {
                at = list.metadata.resource_version.clone();
            }
            for mut object in list.items {
                object.managed_fields_mut().clear();
                let Ok(value) = serde_json::to_value(&object) else { continue };
                if objects::cluster_own(kind, &value) || !self.selected(kind, &value) {
                    continue;
                }
                objects.insert((index, object.name_any()), value);
            }
        }
        let version = at.and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((objects, version))
    }

    /// The copies this policy holds on the standby.
    async fn list_copies(
        &self,
        standby: &Client,
        kinds: &[usize],
    ) -> Result<HashMap<Key, Value>, kube::Error> {
        let mut copies = HashMap::new();
        let params = ListParams::default().labels(&format!("{POLICY_LABEL}={}", self.name));
        for &index in kinds {
            let api: Api<DynamicObject> =
                Api::namespaced_with(standby.clone(), &self.namespace, &api_resource(&KINDS[index]));
            for mut copy in api.list(&params).await?.items {
                copy.managed_fields_mut().clear();
                if let Ok(value) = serde_json::to_value(&copy) {
                    copies.insert((index, copy.name_any()), value);
                }
            }
        }
        Ok(copies)
    }

    /// Checks that the standby answers, then writes the policy's status if it changed.
    async fn write_status(&mut self) {
        if self.validity.is_ok()
            && let Some(standby) = self.standby().await
        {
            match self.standby_namespace(&standby).await {
                Ok(()) => {
                    // Back after an outage: catch up by a full comparison, not only by the
                    // changes seen meanwhile.
                    if self.behind {
                        self.next_full_sync = self.next_full_sync.min(Instant::now());
                        self.failures = 0;
                    }
                    self.unreachable = None;
                }
                Err(why) => {
                    self.unreachable = Some(why);
                    self.standby = None;
                }
            }
        }
        if self.failed_over {
            self.pending.clear();
        }
        let status = self.status();
        let labels = PolicyLabels { namespace: self.namespace.clone(), policy: self.name.clone() };
        self.metrics.pending.get_or_create(&labels).set(self.pending.len() as i64);
        if let Some(rpo) = status.achieved_rpo_seconds.or_else(|| self.unprotected_for()) {
            self.metrics.achieved_rpo.get_or_create(&labels).set(rpo);
        }
        if let Ok(valid) = &self.validity {
            self.metrics.rpo_target.get_or_create(&labels).set(valid.targets.rpo_seconds as f64);
        }
        let mut previous = self.policy.status.clone().unwrap_or_default();
        previous.failover = None;
        previous.drills.clear();
        if same_status(&previous, &status, self.timing.status) {
            return;
        }
        let api: Api<ReplicationPolicy> = Api::namespaced(self.primary.clone(), &self.namespace);
        let patch = json!({
            "apiVersion": ReplicationPolicy::api_version(&()),
            "kind": ReplicationPolicy::kind(&()),
            "status": status,
        });
        if let Err(err) = api
            .patch_status(&self.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
        {
            warn!(namespace = self.namespace, policy = self.name, error = %err, "cannot write the policy's status");
        }
    }

    fn status(&mut self) -> ReplicationPolicyStatus {
        let previous = self.policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let generation = self.policy.metadata.generation;
        let condition = |type_: &str, holds: bool, reason: &str, message: &str| -> Condition {
            yiyun_kube::conditions::condition(&previous, type_, holds, reason, message, generation)
        };
        let valid = match &self.validity {
            Ok(valid) => valid,
            Err(problems) => {
                return ReplicationPolicyStatus {
                    observed_generation: generation,
                    conditions: vec![
                        condition("Ready", false, "InvalidPolicy", problems),
                        condition("Protected", false, "InvalidPolicy", "the policy must be fixed first"),
                    ],
                    ..Default::default()
                };
            }
        };
        let rpo = self.achieved_rpo();
        let health = Health {
            achieved_rpo_seconds: rpo.unwrap_or(0.0),
            rpo_target_seconds: valid.targets.rpo_seconds,
            unreachable: self.unreachable.clone(),
            catching_up: self.behind && self.synced,
            conflicts: self.conflicts.len(),
            failed_over: self.failed_over,
        };
        let mut protected = progress::protected(&health);
        if rpo.is_none() && !self.failed_over {
            protected = progress::Verdict {
                holds: false,
                reason: "FirstCopy",
                message: "the first copy is being made".into(),
            };
        }
        let degraded = progress::degraded(&health);
        let ready = condition(
            "Ready",
            true,
            "Replicating",
            &format!("copying to site {}", self.policy.spec.target.site),
        );
        let conflicts = self
            .conflicts
            .iter()
            .take(50)
            .map(|((kind, name), message)| format!("{}/{name}: {message}", KINDS[*kind].kind))
            .collect();
        let rpo_seconds = rpo.map(|r| r.floor());
        ReplicationPolicyStatus {
            observed_generation: generation,
            conditions: vec![
                ready,
                condition("Protected", protected.holds, protected.reason, &protected.message),
                condition("Degraded", degraded.holds, degraded.reason, &degraded.message),
            ],
            role: if self.failed_over { ReplicationRole::Standby } else { ReplicationRole::Primary },
            rpo_target: Some(durations::format(valid.targets.rpo_seconds)),
            rto_target: Some(durations::format(valid.targets.rto_seconds)),
            last_consistent_copy_time: rpo.map(|r| {
                let at = Timestamp::now() - SignedDuration::from_secs_f64(r);
                Time(at.round(k8s_openapi::jiff::Unit::Second).unwrap_or(at))
            }),
            achieved_rpo: rpo_seconds.map(|r| durations::format(r as u64)),
            achieved_rpo_seconds: rpo_seconds,
            objects_replicated: self.copies.len() as i64,
            lag_p99_seconds: self
                .lag
                .quantile(self.started.elapsed().as_secs_f64(), 0.99)
                .map(|lag| (lag * 1000.0).round() / 1000.0),
            conflicts,
            failover: None,
            drills: Vec::new(),
        }
    }

    /// Before this worker's first consistent copy, what a failover now would lose at least: all
    /// since the last copy the status records, or since the policy was made. The metric reads
    /// it, so a standby never reached breaches the RPO alert rather than going unseen.
    fn unprotected_for(&self) -> Option<f64> {
        if self.failed_over {
            return None;
        }
        let status = self.policy.status.as_ref();
        let since = status.and_then(|s| s.last_consistent_copy_time.as_ref()).or(self
            .policy
            .metadata
            .creation_timestamp
            .as_ref())?;
        Some(Timestamp::now().duration_since(since.0).as_secs_f64().max(0.0))
    }

    /// What would be lost if the primary failed now, in seconds; `None` before the first copy.
    fn achieved_rpo(&self) -> Option<f64> {
        let consistent_at = self.consistent_at?;
        let now = Instant::now();
        let since = |at: Instant| now.saturating_duration_since(at).as_secs_f64();
        if self.policy.spec.mode == ReplicationMode::Scheduled {
            return Some(since(consistent_at));
        }
        if self.unreachable.is_some() || self.behind {
            return Some(since(consistent_at));
        }
        Some(self.pending.values().map(|p| since(p.first_seen)).fold(0.0, f64::max))
    }
}

/// Whether two statuses say the same; the time of the last consistent copy counts as changed
/// only once it moved by more than a dozen status intervals (in continuous mode it is "now").
fn same_status(
    previous: &ReplicationPolicyStatus,
    next: &ReplicationPolicyStatus,
    interval: Duration,
) -> bool {
    let moved = match (&previous.last_consistent_copy_time, &next.last_consistent_copy_time) {
        (Some(a), Some(b)) => {
            b.0.duration_since(a.0).abs() > SignedDuration::try_from(interval * 12).unwrap_or_default()
        }
        (a, b) => a.is_some() != b.is_some(),
    };
    let mut previous = previous.clone();
    previous.last_consistent_copy_time = next.last_consistent_copy_time.clone();
    !moved && previous == *next
}

/// Writes one change to the standby. `known`: the source version of the copy the standby is
/// known to hold (a change no newer than it is skipped).
#[allow(clippy::too_many_arguments)]
async fn write(
    standby: &Client,
    namespace: &str,
    policy: &str,
    kind: &Kind,
    change: &Change,
    known: Option<u64>,
    keep_deleted: u64,
    force: bool,
) -> Outcome {
    let api: Api<DynamicObject> = Api::namespaced_with(standby.clone(), namespace, &api_resource(kind));
    let outcome = |result: Result<Outcome, kube::Error>| match result {
        Ok(outcome) => outcome,
        Err(kube::Error::Api(status)) if status.code == 409 => Outcome::Conflict(status.message),
        Err(kube::Error::Api(status)) if (400..500).contains(&status.code) && status.code != 429 => {
            Outcome::Rejected(status.message)
        }
        Err(err) => Outcome::Unreachable(err.to_string()),
    };
    match change {
        Change::Upsert(object) => {
            let version = objects::version(object);
            if known.is_some_and(|known| known >= version) {
                return Outcome::Skipped;
            }
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let copy = objects::standby_copy(kind, object, policy);
            let mut params = PatchParams::apply(FIELD_MANAGER);
            params.force = force;
            outcome(
                api.patch(name, &params, &Patch::Apply(&copy)).await.map(|_| Outcome::Applied { version }),
            )
        }
        Change::Delete(object) => {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            outcome(delete_copy(&api, name, policy, keep_deleted).await)
        }
    }
}

/// Deletes the copy of a deleted object, or marks it and keeps it for the retention.
async fn delete_copy(
    api: &Api<DynamicObject>,
    name: &str,
    policy: &str,
    keep_deleted: u64,
) -> Result<Outcome, kube::Error> {
    let Some(copy) = api.get_opt(name).await? else { return Ok(Outcome::Deleted) };
    if copy.labels().get(POLICY_LABEL).map(String::as_str) != Some(policy) {
        // Not this policy's copy: someone else's object of the same name.
        return Ok(Outcome::Skipped);
    }
    if keep_deleted > 0 {
        let now = Timestamp::now();
        let deleted_at =
            copy.annotations().get(SOURCE_DELETED_AT).and_then(|at| at.parse::<Timestamp>().ok());
        match deleted_at {
            None => {
                let mark = json!({"metadata": {"annotations": {SOURCE_DELETED_AT: now.to_string()}}});
                api.patch(name, &PatchParams::default(), &Patch::Merge(&mark)).await?;
                return Ok(Outcome::Retained);
            }
            Some(at) if now.duration_since(at) < SignedDuration::from_secs(keep_deleted as i64) => {
                return Ok(Outcome::Retained);
            }
            Some(_) => {}
        }
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Outcome::Deleted),
        Err(err) => Err(err),
    }
}
