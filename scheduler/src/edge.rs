//! The scheduler's I/O edge: the watches feed the [`State`], and the [`Effect`]s it decides are
//! sent to the apiserver (each through the leadership, so nothing is sent once the lease is
//! lost), their outcomes fed back as [`Done`]s.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt, stream::BoxStream};
use k8s_openapi::{
    api::{
        core::v1::{
            Binding, ConfigMap, Namespace, Node as KubeNode, ObjectReference, PersistentVolume,
            PersistentVolumeClaim, Pod as KubePod,
        },
        policy::v1::PodDisruptionBudget,
        resource::v1::{DeviceClass, ResourceClaim, ResourceSlice},
        storage::v1::{CSINode, StorageClass},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{EvictParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use yiyun_crds::{ComputeSite, PodGroup, Tenant, labels};
use yiyun_engine::gpu::Shape;
use yiyun_kube::leader::Leadership;

use crate::{
    COMPONENT, Config, Error,
    devices::{ClaimWrite, claim_status},
    measure,
    metrics::Metrics,
    report::Reporter,
    state::{Done, Effect, State, Update},
    volumes::{SELECTED_NODE, VolumeWrite},
};

/// Watch events applied before the next scheduling round.
const EVENT_BATCH: usize = 2_000;

/// How long a starting scheduler waits for the measure saved before it measures afresh.
const RECALL_DEADLINE: Duration = Duration::from_secs(10);

pub struct Scheduler {
    state: State,
    client: Client,
    reporter: Reporter,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Every write goes through it: nothing is sent once the lease is lost.
    leadership: Leadership,
    /// Where the measured workload is kept; None with `--workload-save-seconds 0`.
    workload: Option<WorkloadStore>,
}

/// The ConfigMap the measured workload is kept in, beside the Lease.
struct WorkloadStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    every: Duration,
    /// What was last sent, so an unchanged measure is not written again.
    sent: Vec<(Shape, u32)>,
    /// Set when a save failed, so the next one writes even an unchanged measure.
    failed: Arc<AtomicBool>,
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
        let namespace = config.election.lease_namespace.clone();
        let workload = (config.workload_save_seconds > 0).then(|| WorkloadStore {
            api: Api::namespaced(client.clone(), &namespace),
            name: format!("{}-workload", config.election.lease_name(COMPONENT)),
            namespace,
            every: Duration::from_secs(config.workload_save_seconds),
            sent: Vec::new(),
            failed: Arc::default(),
        });
        Scheduler {
            workload,
            reporter: Reporter::new(client.clone(), config.scheduler_name.clone(), leadership.clone()),
            state: State::new(config, metrics),
            client,
            done_tx,
            done_rx,
            leadership,
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
            watch(
                "PersistentVolumeClaim",
                Api::<PersistentVolumeClaim>::all(client.clone()),
                watcher::Config::default(),
                Update::Claim,
            ),
            watch(
                "PersistentVolume",
                Api::<PersistentVolume>::all(client.clone()),
                watcher::Config::default(),
                Update::Volume,
            ),
            watch(
                "StorageClass",
                Api::<StorageClass>::all(client.clone()),
                watcher::Config::default(),
                Update::StorageClass,
            ),
            watch(
                "CSINode",
                Api::<CSINode>::all(client.clone()),
                watcher::Config::default(),
                Update::CsiNode,
            ),
            watch(
                "ResourceClaim",
                Api::<ResourceClaim>::all(client.clone()),
                watcher::Config::default(),
                Update::ResourceClaim,
            ),
            watch(
                "ResourceSlice",
                Api::<ResourceSlice>::all(client.clone()),
                watcher::Config::default(),
                Update::ResourceSlice,
            ),
            watch(
                "DeviceClass",
                Api::<DeviceClass>::all(client.clone()),
                watcher::Config::default(),
                Update::DeviceClass,
            ),
        ])
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        self.recall_measure().await;
        let mut updates = self.updates();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Without a store the branch below never runs; the hour only keeps the timer finite.
        let every = self.workload.as_ref().map_or(Duration::from_secs(3_600), |store| store.every);
        let mut save = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                update = updates.next() => {
                    let Some(update) = update else { return Err(Error::WatchEnded) };
                    self.state.apply(update);
                    // Apply what else has arrived before deciding anything.
                    for _ in 0..EVENT_BATCH {
                        match futures::FutureExt::now_or_never(updates.next()) {
                            Some(Some(update)) => self.state.apply(update),
                            Some(None) => return Err(Error::WatchEnded),
                            None => break,
                        }
                    }
                }
                Some(done) = self.done_rx.recv() => self.state.done(done),
                _ = tick.tick() => self.state.housekeeping(),
                _ = save.tick(), if self.workload.is_some() => self.save_measure(),
            }
            while let Ok(done) = self.done_rx.try_recv() {
                self.state.done(done);
            }
            if self.state.synced() {
                self.state.round();
            }
            for effect in self.state.take_effects() {
                self.carry_out(effect);
            }
        }
    }

    /// Scores by the measure saved before, if there is one: a restart or a takeover then places
    /// its first pods knowing the workload. One that cannot be read is left to be overwritten.
    async fn recall_measure(&mut self) {
        let Some(store) = self.workload.as_mut() else { return };
        let configmap = format!("{}/{}", store.namespace, store.name);
        // Scheduling waits for this read, so not for long.
        let read = tokio::time::timeout(RECALL_DEADLINE, store.api.get_opt(&store.name)).await;
        match read.unwrap_or_else(|_| Err(kube::Error::Service("no answer within the deadline".into()))) {
            Ok(Some(kept)) => match measure::counts(&kept) {
                Ok(counts) => {
                    let pods: u32 = counts.iter().map(|(_, pods)| pods).sum();
                    store.sent = self.state.recall_measure(&counts);
                    info!(%configmap, pods, "recalled the workload measured before");
                }
                Err(err) => {
                    warn!(%configmap, error = %err, label = err.label(), "measuring the workload afresh");
                }
            },
            Ok(None) => info!(%configmap, "no workload measured before: measuring from the first pod"),
            Err(err) => {
                warn!(%configmap, error = %err, "cannot read the workload measured before; measuring afresh")
            }
        }
    }

    /// Writes the measure to its ConfigMap when it changed since the last write (or that failed).
    fn save_measure(&mut self) {
        let Some(store) = self.workload.as_mut() else { return };
        let counts = self.state.measure();
        let failed = store.failed.swap(false, Ordering::Relaxed);
        if counts.is_empty() || (counts == store.sent && !failed) {
            return;
        }
        let kept = measure::config_map(&store.namespace, &store.name, &counts);
        store.sent = counts;
        let (api, name, failed) = (store.api.clone(), store.name.clone(), store.failed.clone());
        let leadership = self.leadership.clone();
        tokio::spawn(async move {
            let params = PatchParams::apply(COMPONENT).force();
            if let Some(Err(err)) =
                leadership.while_leading(api.patch(&name, &params, &Patch::Apply(&kept))).await
            {
                failed.store(true, Ordering::Relaxed);
                warn!(configmap = %name, error = %err, "cannot save the workload measure; trying again at the next save");
            }
        });
    }

    /// Sends one effect on its way; what comes of a binding or an eviction returns as a [`Done`].
    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Bind { key, uid, node, gpus, volumes, claims } => {
                let Some((namespace, name)) = split_key(&key) else { return };
                let api: Api<KubePod> = Api::namespaced(self.client.clone(), &namespace);
                let (done, leadership, client) =
                    (self.done_tx.clone(), self.leadership.clone(), self.client.clone());
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let binding = async {
                        for write in volumes {
                            write_volume(&client, write).await?;
                        }
                        for write in claims {
                            allocate(&client, &write).await?;
                        }
                        bind(&api, &name, &uid, &node, gpus).await
                    };
                    // Lease lost: the process is stopping, nothing to record.
                    let Some(result) = leadership.while_leading(binding).await else {
                        return;
                    };
                    let seconds = started.elapsed().as_secs_f64();
                    let _ = done.send(Done::Bound { key, result, seconds });
                });
            }
            Effect::Nominate { pod, node } => {
                let Some((namespace, name)) = split_key(&pod) else { return };
                let api: Api<KubePod> = Api::namespaced(self.client.clone(), &namespace);
                let status = serde_json::json!({"status": {"nominatedNodeName": node}});
                self.patch_status(api, name, status, "cannot write nominatedNodeName");
            }
            Effect::Evict { victim, preemptor } => {
                let Some((namespace, name)) = split_key(&victim) else { return };
                let api: Api<KubePod> = Api::namespaced(self.client.clone(), &namespace);
                let (done, leadership) = (self.done_tx.clone(), self.leadership.clone());
                tokio::spawn(async move {
                    // Lease lost: the process is stopping, nothing to record.
                    let Some(result) =
                        leadership.while_leading(api.evict(&name, &EvictParams::default())).await
                    else {
                        return;
                    };
                    let _ = done.send(Done::Evicted { victim, preemptor, result: result.map(|_| ()) });
                });
            }
            Effect::GroupStatus { key, status } => {
                let Some((namespace, name)) = split_key(&key) else { return };
                let api: Api<PodGroup> = Api::namespaced(self.client.clone(), &namespace);
                self.patch_status(api, name, status, "cannot write the PodGroup status");
            }
            Effect::Unschedulable { key, uid, message } => self.reporter.unschedulable(&key, &uid, &message),
            Effect::Forget { key } => self.reporter.forget(&key),
        }
    }

    /// A merge patch of `name`'s status, best effort: the next change writes it again.
    fn patch_status<K>(&self, api: Api<K>, name: String, status: serde_json::Value, failure: &'static str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let leadership = self.leadership.clone();
        tokio::spawn(async move {
            let (params, patch) = (PatchParams::default(), Patch::Merge(&status));
            if let Some(Err(err)) = leadership.while_leading(api.patch_status(&name, &params, &patch)).await {
                debug!(object = %name, error = %err, "{failure}");
            }
        });
    }
}

/// Makes a claim usable on the node its pod goes to, as kube-scheduler's volume binder does:
/// a volume's `claimRef` set (the volume controller then binds both), or the node named for
/// the class's provisioner. A volume already claimed by another is refused by the apiserver's
/// conflict check on the resourceVersion read, so it is never taken twice.
async fn write_volume(client: &Client, write: VolumeWrite) -> Result<(), kube::Error> {
    match write {
        VolumeWrite::BindVolume { volume, namespace, claim, uid } => {
            let api: Api<PersistentVolume> = Api::all(client.clone());
            let current = api.get(&volume).await?;
            let taken = current.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| {
                r.name.as_deref() != Some(claim.as_str())
                    || r.namespace.as_deref() != Some(namespace.as_str())
            });
            if taken {
                return Err(kube::Error::Api(
                    kube::core::Status::failure(
                        &format!("persistentvolume {volume} is bound to another claim"),
                        "Conflict",
                    )
                    .with_code(409)
                    .boxed(),
                ));
            }
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": namespace, "name": claim, "uid": uid}}
            });
            api.patch(&volume, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        VolumeWrite::SelectNode { namespace, claim, node } => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
            let patch = serde_json::json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
            api.patch(&claim, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
    }
    Ok(())
}

/// Allocates a resource claim's devices on the node and reserves it for the pod, as
/// kube-scheduler's DynamicResources plugin does before binding.
async fn allocate(client: &Client, write: &ClaimWrite) -> Result<(), kube::Error> {
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), &write.namespace);
    api.patch_status(&write.name, &PatchParams::default(), &Patch::Merge(&claim_status(write))).await?;
    Ok(())
}

/// `namespace/name` as its two parts.
fn split_key(key: &str) -> Option<(String, String)> {
    key.split_once('/').map(|(namespace, name)| (namespace.to_string(), name.to_string()))
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
