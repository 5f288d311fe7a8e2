//! What a pod or a volume claim holds, read from the objects' own lifecycle: pure functions
//! from Kubernetes objects to ledger intervals.
//!
//! A pod is metered from the moment its first container started running to the moment its
//! last one finished (its phase Succeeded or Failed) or the pod was deleted, with its
//! requests (the basis government clouds bill: what is allocated), on the site, region class,
//! node pool and GPU model of its node. A claim is metered from its creation while bound,
//! with the storage it was given.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ContainerStatus, PersistentVolumeClaim, Pod};
use yiyun_crds::labels;

use crate::{calendar::Seconds, ledger::Interval, meter::Meter};

/// Where a node is, as its labels (written by the node pools) say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlace {
    pub site: String,
    pub region: String,
    pub region_class: String,
    pub pool: String,
    pub gpu_model: String,
}

impl NodePlace {
    pub fn from_labels(labels: &std::collections::BTreeMap<String, String>) -> NodePlace {
        let get = |key: &str| labels.get(key).cloned().unwrap_or_default();
        NodePlace {
            site: get(labels::SITE),
            region: get(labels::REGION),
            region_class: get(labels::REGION_CLASS),
            pool: get(labels::NODE_POOL),
            gpu_model: labels
                .get(labels::GPU_MODEL)
                .or_else(|| labels.get(labels::NVIDIA_GPU_PRODUCT))
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// What the meter knows of the cluster: the tenant of each namespace, where each node is, and
/// the region of each site (for cross-region transfers).
#[derive(Clone, Debug, Default)]
pub struct Places {
    pub tenant_of_namespace: HashMap<String, String>,
    pub nodes: HashMap<String, NodePlace>,
    pub site_regions: HashMap<String, String>,
}

/// A pod's state as billing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Not running yet (pending, or not on a node), or not a tenant's: nothing to meter.
    NotMetered,
    /// Running since `started`.
    Running { started: Seconds },
    /// Ran from `started` to `ended`.
    Ended { started: Seconds, ended: Seconds },
}

fn seconds(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Seconds {
    time.0.as_second()
}

fn container_times(statuses: &[ContainerStatus]) -> (Option<Seconds>, Option<Seconds>, bool) {
    let mut started: Option<Seconds> = None;
    let mut finished: Option<Seconds> = None;
    let mut all_terminated = !statuses.is_empty();
    for status in statuses {
        let state = status.state.as_ref();
        let run_start = state.and_then(|s| s.running.as_ref()).and_then(|r| r.started_at.as_ref());
        let terminated = state.and_then(|s| s.terminated.as_ref());
        let last_terminated = status.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let starts = [
            run_start,
            terminated.and_then(|t| t.started_at.as_ref()),
            last_terminated.and_then(|t| t.started_at.as_ref()),
        ];
        for start in starts.into_iter().flatten().map(seconds) {
            started = Some(started.map_or(start, |s| s.min(start)));
        }
        match terminated.and_then(|t| t.finished_at.as_ref()) {
            Some(end) => finished = Some(finished.map_or(seconds(end), |f| f.max(seconds(end)))),
            None => all_terminated = false,
        }
    }
    (started, finished, all_terminated)
}

/// The state of `pod`; `gone_at` when it was deleted (observed then), which ends it unless
/// its containers' own end times say when.
pub fn pod_state(pod: &Pod, gone_at: Option<Seconds>) -> PodState {
    let Some(status) = &pod.status else { return PodState::NotMetered };
    if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
        return PodState::NotMetered;
    }
    let (started, finished, all_terminated) =
        container_times(status.container_statuses.as_deref().unwrap_or_default());
    let phase = status.phase.as_deref().unwrap_or_default();
    // Without container times (a kubelet that reports none), the pod's start as the kubelet saw it.
    let started = match started {
        Some(started) => started,
        None if matches!(phase, "Running" | "Succeeded" | "Failed") => match &status.start_time {
            Some(start) => seconds(start),
            None => return PodState::NotMetered,
        },
        None => return PodState::NotMetered,
    };
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let ended = match (terminal || gone_at.is_some(), finished, all_terminated) {
        (false, _, _) => None,
        (true, Some(finished), true) => Some(finished),
        // Deleted while running: it ran until it was seen gone.
        (true, _, _) => gone_at.or(finished),
    };
    match ended {
        Some(ended) => PodState::Ended { started, ended: ended.max(started) },
        None if terminal => PodState::NotMetered,
        None => PodState::Running { started },
    }
}

/// What every interval of a metered pod shares (whose, where, from when to when), with the
/// meter, key, amount and GPU model left for each meter to fill; `None` when the pod is not
/// metered.
fn pod_interval_base(pod: &Pod, state: &PodState, places: &Places) -> Option<(Interval, NodePlace)> {
    let (started, ended) = match *state {
        PodState::NotMetered => return None,
        PodState::Running { started } => (started, None),
        PodState::Ended { started, ended } => (started, Some(ended)),
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let tenant = places.tenant_of_namespace.get(&namespace)?;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let place = places.nodes.get(&node).cloned().unwrap_or_default();
    let base = Interval {
        key: String::new(),
        source: pod.metadata.uid.clone().unwrap_or_default(),
        kind: "pod".into(),
        tenant: tenant.clone(),
        namespace,
        object: pod.metadata.name.clone().unwrap_or_default(),
        node,
        site: place.site.clone(),
        region_class: place.region_class.clone(),
        pool: place.pool.clone(),
        meter: Meter::Cpu,
        gpu_model: String::new(),
        amount: 0,
        started_at: started,
        ended_at: ended,
        estimated: false,
    };
    Some((base, place))
}

/// A pod's request of `resource` in milli-units (milli-vCPU, milli-bytes, milli-GPU).
fn request_milli(requests: &BTreeMap<String, yiyun_quota::Milli>, resource: &str) -> i64 {
    requests.get(resource).map_or(0, |m| i64::try_from(m.0).unwrap_or(i64::MAX))
}

/// What a metered pod requests of the resources the usage basis compares with usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    /// The fields its intervals share (see [`pod_interval_base`]).
    pub base: Interval,
    pub cpu_milli: i64,
    pub memory_bytes: i64,
}

/// The requests of `pod` in `state`, when it is metered.
pub fn pod_requested(pod: &Pod, state: &PodState, places: &Places) -> Option<Requested> {
    let (base, _) = pod_interval_base(pod, state, places)?;
    let requests = yiyun_kube::pods::requests(pod);
    Some(Requested {
        base,
        cpu_milli: request_milli(&requests, "cpu"),
        memory_bytes: request_milli(&requests, "memory") / 1000,
    })
}

/// The intervals of `pod` in `state`: one per meter it requests, plus a cross-region transfer
/// of its input data when that sits in another region.
pub fn pod_intervals(pod: &Pod, state: &PodState, places: &Places) -> Vec<Interval> {
    let Some((base, place)) = pod_interval_base(pod, state, places) else { return Vec::new() };
    let uid = base.source.clone();
    let requests = yiyun_kube::pods::requests(pod);
    let request = |name: &str| request_milli(&requests, name);
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let whole_gpus = request(labels::GPU_RESOURCE);
    let fraction: i64 = annotations
        .get(labels::GPU_FRACTION)
        .and_then(|m| m.trim().parse().ok())
        .filter(|m| *m > 0)
        .unwrap_or(0);
    let gpu_milli = if whole_gpus > 0 { whole_gpus } else { fraction.min(1000) };
    let mut meters = vec![
        (Meter::Cpu, request("cpu"), String::new()),
        (Meter::Memory, request("memory") / 1000, String::new()),
    ];
    if gpu_milli > 0 {
        meters.push((
            Meter::Gpu,
            gpu_milli,
            if place.gpu_model.is_empty() { "unknown".into() } else { place.gpu_model.clone() },
        ));
    }
    let interval = |meter: Meter, amount: i64, gpu_model: String| Interval {
        key: format!("pod/{uid}/{}", meter.key()),
        meter,
        gpu_model,
        amount,
        ..base.clone()
    };
    let mut intervals: Vec<Interval> = meters
        .into_iter()
        .filter(|(_, amount, _)| *amount > 0)
        .map(|(meter, amount, model)| interval(meter, amount, model))
        .collect();
    let data_site = annotations.get(labels::DATA_SITE);
    let data_region = data_site.and_then(|site| places.site_regions.get(site));
    let gigabytes: Option<i64> = annotations
        .get(labels::DATA_GIGABYTES)
        .and_then(|gb| gb.trim().parse::<f64>().ok())
        .filter(|gb| gb.is_finite() && *gb > 0.0)
        .map(|gb| (gb * 1e9).round() as i64);
    if let (Some(data_region), Some(bytes)) = (data_region, gigabytes)
        && !place.region.is_empty()
        && *data_region != place.region
    {
        let started = base.started_at;
        intervals.push(Interval {
            started_at: started,
            ended_at: Some(started),
            ..interval(Meter::CrossRegion, bytes, String::new())
        });
    }
    intervals
}

/// The interval of a bound claim (`gone_at` when it was deleted); none while it is unbound or
/// not a tenant's.
pub fn claim_interval(
    claim: &PersistentVolumeClaim,
    gone_at: Option<Seconds>,
    places: &Places,
) -> Option<Interval> {
    let status = claim.status.as_ref()?;
    if status.phase.as_deref() != Some("Bound") {
        return None;
    }
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let tenant = places.tenant_of_namespace.get(&namespace)?;
    let capacity = status
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .or_else(|| claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage"))?;
    let bytes = yiyun_quota::Milli::parse(&capacity.0).ok()?.0 / 1000;
    let started = claim.metadata.creation_timestamp.as_ref().map(seconds)?;
    let node = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("volume.kubernetes.io/selected-node"))
        .cloned()
        .unwrap_or_default();
    let place = places.nodes.get(&node).cloned().unwrap_or_default();
    let uid = claim.metadata.uid.clone()?;
    Some(Interval {
        key: format!("pvc/{uid}"),
        source: uid,
        kind: "pvc".into(),
        tenant: tenant.clone(),
        namespace,
        object: claim.metadata.name.clone().unwrap_or_default(),
        node,
        site: place.site,
        region_class: place.region_class,
        pool: place.pool,
        meter: Meter::Storage,
        gpu_model: String::new(),
        amount: i64::try_from(bytes).unwrap_or(i64::MAX),
        started_at: started,
        ended_at: gone_at.map(|gone| gone.max(started)),
        estimated: false,
    })
}
