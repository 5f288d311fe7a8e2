//! Compute work (`yiyun.api.v1.Jobs`, REST under `/v1/namespaces/{namespace}/jobs`): a
//! department submits a job; it becomes a Kubernetes Job for yiyun-scheduler (and a PodGroup
//! when it is a gang) in one of its tenant's namespaces. Its pods show where they run (node,
//! rack, site, region) or, while they wait, the scheduler's explanation; its events stream.
//!
//! Access is the caller's own RBAC on `jobs.batch` in the namespace (and `create
//! podgroups.yiyun.io` for a gang), asked before anything is read: whoever may run Jobs there
//! with kubectl may run them here, and no one else. Jobs, their pods and the nodes are read
//! from watches, so following many jobs costs the apiserver nothing per call.
//!
//! A gang's Job is created suspended, its PodGroup (owned by the Job) next, and only then is
//! the Job let go, so the scheduler never sees a member before its gang; a submission that fails
//! half-way deletes what it made, and one repeated with its idempotency key finishes it.

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::HeaderMap,
    response::Response,
    routing::get,
};
use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    batch::v1::Job as Stored,
    core::v1::{Event as CoreEvent, Namespace, Node, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response as GrpcResponse, Status};
use yiyun_crds::{PodGroup, labels};
use yiyun_kube::access::{Action, User};
use yiyun_quota::Milli;

use crate::{
    caller::{Audit, Gate, authorize},
    error::{ApiError, FieldViolation, Refusals, is_label, respond},
    proto::{
        self, CancelJobRequest, GetJobRequest, Job, JobEvent, JobEvents, JobPod, ListJobsRequest,
        ListJobsResponse, SubmitJobRequest, WatchJobEventsRequest,
    },
    shared::{
        Events, Page, body, digest, idempotent_name, kube_error, namespace_violation, page_query, page_size,
        page_size_violation, tenant_of,
    },
};

/// The label the Job controller puts on a Job's pods.
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// Annotations on a submitted Job: who submitted it, and the digest of what they asked for
/// (an idempotent repeat must ask for the same).
const SUBMITTED_BY: &str = "yiyun.io/submitted-by";
const SUBMISSION: &str = "yiyun.io/submission";
/// The longest job name: its pods are named `<job>-<5 characters>`, within the 63 of a label.
const MAX_NAME: usize = 52;
const LATENCY_CLASSES: [&str; 4] = ["realtime", "interactive", "batch", "archive"];

/// What the jobs service reads from watches.
#[derive(Clone)]
pub struct Caches {
    jobs: Store<Stored>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// Tenants' namespaces only.
    namespaces: Store<Namespace>,
}

impl Caches {
    /// The watches of jobs, of the pods of jobs, of nodes and of tenants' namespaces: the caches, one receiver per
    /// watch that turns true once it has listed, and the future that keeps them current.
    pub fn start(client: &Client) -> (Caches, Vec<watch::Receiver<bool>>, impl Future<Output = ()> + use<>) {
        let config = watcher::Config::default();
        let (jobs, jobs_listed, job_events) = yiyun_kube::watches::reflect(
            watcher::watcher(Api::<Stored>::all(client.clone()), config.clone()),
            |_| {},
        );
        let (pods, pods_listed, pod_events) = yiyun_kube::watches::reflect(
            watcher::watcher(Api::<Pod>::all(client.clone()), config.clone().labels(JOB_NAME)),
            |_| {},
        );
        let (nodes, nodes_listed, node_events) = yiyun_kube::watches::reflect(
            watcher::watcher(Api::<Node>::all(client.clone()), config.clone()),
            |_| {},
        );
        let (namespaces, namespaces_listed, namespace_events) = yiyun_kube::watches::reflect(
            watcher::watcher(Api::<Namespace>::all(client.clone()), config.labels(labels::TENANT)),
            |_| {},
        );
        let drive = async move {
            futures::join!(
                job_events.for_each(|_| async {}),
                pod_events.for_each(|_| async {}),
                node_events.for_each(|_| async {}),
                namespace_events.for_each(|_| async {}),
            );
        };
        let listed = vec![jobs_listed, pods_listed, nodes_listed, namespaces_listed];
        (Caches { jobs, pods, nodes, namespaces }, listed, drive)
    }
}

/// The Jobs service.
pub struct JobService {
    gate: Arc<Gate>,
    client: Client,
    events: Events,
    caches: Caches,
    /// The scheduler that places submitted jobs' pods.
    scheduler: String,
}

/// Whether `value` is a Kubernetes label value (empty allowed).
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= 63
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric())
}

/// Whether `key` is a Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a
/// non-empty name.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let prefix_ok = prefix.is_empty()
        || (prefix.len() <= 253 && prefix.split('.').all(is_label) && !key.starts_with('/'));
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// Why `quantity` is not a positive amount, if it is not.
fn quantity_violation(field: &str, quantity: &str) -> Option<FieldViolation> {
    match Milli::parse(quantity) {
        _ if quantity.is_empty() => Some(FieldViolation::new(field, "required, e.g. \"4\" or \"16Gi\"")),
        Ok(m) if m.0 > 0 => None,
        Ok(_) => Some(FieldViolation::new(field, format!("{quantity:?} is not more than zero"))),
        Err(err) => Some(FieldViolation::new(field, err.to_string())),
    }
}

/// Every wrong field of a submission.
fn submit_violations(request: &SubmitJobRequest) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    let mut wrong = |field: &str, description: &str| violations.push(FieldViolation::new(field, description));
    if !is_label(&request.namespace) {
        wrong("namespace", "a namespace name");
    }
    let name_ok = request.name.is_empty() || (is_label(&request.name) && request.name.len() <= MAX_NAME);
    if !name_ok {
        wrong("name", "an RFC 1123 label of at most 52 characters, or empty for a generated one");
    }
    if request.idempotency_key.chars().count() > 128 {
        wrong("idempotency_key", "at most 128 characters");
    }
    if request.image.is_empty() || request.image.len() > 1024 || request.image.contains(char::is_whitespace) {
        wrong("image", "an image reference, e.g. registry.gov.local/ai/train:1.4");
    }
    if request.command.len() > 64 || request.command.iter().any(|part| part.len() > 4096) {
        wrong("command", "at most 64 parts of at most 4096 bytes");
    }
    if !(0..=64).contains(&request.gpus) {
        wrong("gpus", "0 to 64 whole GPUs");
    }
    if !(0..=999).contains(&request.gpu_milli) {
        wrong("gpu_milli", "1 to 999 thousandths of one GPU (0 for none)");
    } else if request.gpu_milli > 0 && request.gpus > 0 {
        wrong("gpu_milli", "either whole GPUs or a part of one, not both");
    }
    if request.gpu_models.iter().any(|model| model.is_empty() || !is_label_value(model)) {
        wrong("gpu_models", "GPU models as their node labels name them, e.g. A800");
    } else if !request.gpu_models.is_empty() && request.gpus == 0 && request.gpu_milli == 0 {
        wrong("gpu_models", "only with gpus or gpu_milli");
    }
    if !(0..=1000).contains(&request.replicas) {
        wrong("replicas", "1 to 1000 (0 for 1)");
    }
    match request.gang_topology.as_str() {
        "" => {}
        "rack" | "site" | "region" if request.gang => {}
        "rack" | "site" | "region" => wrong("gang_topology", "only for a gang (gang: true)"),
        _ => wrong("gang_topology", "rack, site or region (empty for anywhere)"),
    }
    if !request.latency_class.is_empty() && !LATENCY_CLASSES.contains(&request.latency_class.as_str()) {
        wrong("latency_class", "realtime, interactive, batch or archive");
    }
    if !request.data_site.is_empty() && !is_label(&request.data_site) {
        wrong("data_site", "a site's name");
    }
    if request.data_gigabytes < 0 || request.data_gigabytes > 100_000_000 {
        wrong("data_gigabytes", "0 to 100000000");
    } else if request.data_gigabytes > 0 && request.data_site.is_empty() {
        wrong("data_gigabytes", "only with data_site, where the data is");
    }
    if !(0..=31_536_000).contains(&request.deadline_seconds) {
        wrong("deadline_seconds", "0 to 31536000 (a year); 0 for none");
    }
    if request.node_selector.len() > 20
        || request.node_selector.iter().any(|(key, value)| !is_label_key(key) || !is_label_value(value))
    {
        wrong("node_selector", "at most 20 node labels, each a label key and value");
    }
    violations.extend(quantity_violation("cpu", &request.cpu));
    violations.extend(quantity_violation("memory", &request.memory));
    violations
}

/// The Job a checked submission asks for, named `name`, for `tenant`'s namespace: its pods for
/// `scheduler`, tolerating the tenant's dedicated nodes; suspended when it is a gang, whose
/// PodGroup must exist first.
fn desired_job(request: &SubmitJobRequest, name: &str, tenant: &str, scheduler: &str) -> Stored {
    let replicas = request.replicas.max(1);
    let mut pod_labels = BTreeMap::new();
    if request.gang {
        pod_labels.insert(labels::POD_GROUP.to_string(), name.to_string());
    }
    let mut annotations = BTreeMap::new();
    let latency = if request.latency_class.is_empty() { "batch" } else { &request.latency_class };
    annotations.insert(labels::LATENCY_CLASS.to_string(), latency.to_string());
    if !request.data_site.is_empty() {
        annotations.insert(labels::DATA_SITE.to_string(), request.data_site.clone());
        annotations.insert(labels::DATA_GIGABYTES.to_string(), request.data_gigabytes.to_string());
    }
    if request.deadline_seconds > 0 {
        annotations.insert(labels::DEADLINE.to_string(), request.deadline_seconds.to_string());
    }
    if request.gpu_milli > 0 {
        annotations.insert(labels::GPU_FRACTION.to_string(), request.gpu_milli.to_string());
    }
    if !request.gpu_models.is_empty() {
        annotations.insert(labels::GPU_MODELS.to_string(), request.gpu_models.join(","));
    }
    let mut requests = json!({"cpu": request.cpu, "memory": request.memory});
    let mut limits = json!({});
    if request.gpus > 0 {
        requests[labels::GPU_RESOURCE] = request.gpus.to_string().into();
        limits[labels::GPU_RESOURCE] = request.gpus.to_string().into();
    }
    let node_selector: BTreeMap<&String, &String> = request.node_selector.iter().collect();
    // The restricted Pod Security Standard, which tenant namespaces of MLPS level 3 and above
    // enforce: a job runs as a non-root user with no privileges to gain.
    let mut container = json!({
        "name": "main",
        "image": request.image,
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
    });
    if !request.command.is_empty() {
        container["command"] = json!(request.command);
    }
    let mut spec = json!({
        "parallelism": replicas,
        "completions": replicas,
        // A gang stands or falls together; a lone pod is retried a few times.
        "backoffLimit": if request.gang { 0 } else { 3 },
        "suspend": request.gang,
        "template": {
            "metadata": {"labels": pod_labels, "annotations": annotations},
            "spec": {
                "schedulerName": scheduler,
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "nodeSelector": node_selector,
                "tolerations": [{"key": labels::DEDICATED, "operator": "Equal", "value": tenant, "effect": "NoSchedule"}],
                "containers": [container],
            },
        },
    });
    if request.deadline_seconds > 0 {
        spec["activeDeadlineSeconds"] = request.deadline_seconds.into();
    }
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": request.namespace},
        "spec": spec,
    });
    serde_json::from_value(job).expect("the Job's JSON is a Job")
}

/// The PodGroup of a gang job: all its replicas, in one domain of `gang_topology` if asked,
/// owned by the Job so that it goes with it.
fn desired_pod_group(request: &SubmitJobRequest, job: &Stored) -> PodGroup {
    let mut spec = json!({"minMember": request.replicas.max(1)});
    if !request.gang_topology.is_empty() {
        spec["topology"] = json!({"level": request.gang_topology, "mode": "required"});
    }
    let owner = json!({
        "apiVersion": "batch/v1", "kind": "Job", "name": job.name_any(),
        "uid": job.metadata.uid, "controller": true,
    });
    serde_json::from_value(json!({
        "apiVersion": "yiyun.io/v1alpha1",
        "kind": "PodGroup",
        "metadata": {"name": job.name_any(), "namespace": job.namespace(), "ownerReferences": [owner]},
        "spec": spec,
    }))
    .expect("the PodGroup's JSON is a PodGroup")
}

/// Whether a pod named `pod` is one of job `job`'s: the Job controller names them
/// `<job>-<5 characters>`.
fn is_pod_of(job: &str, pod: &str) -> bool {
    pod.strip_prefix(job)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|suffix| suffix.len() == 5 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Where `pod` runs, or why it waits; `node` looks a node up by name.
fn pod_message(pod: &Pod, node: &dyn Fn(&str) -> Option<Arc<Node>>) -> JobPod {
    let status = pod.status.clone().unwrap_or_default();
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let node_labels = node(&node_name).map(|n| n.labels().clone()).unwrap_or_default();
    let label = |key: &str| node_labels.get(key).cloned().unwrap_or_default();
    let waiting_reason = if node_name.is_empty() {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .and_then(|c| c.message.clone())
            .unwrap_or_else(|| "not considered by the scheduler yet".into())
    } else {
        String::new()
    };
    JobPod {
        name: pod.name_any(),
        phase: status.phase.unwrap_or_else(|| "Pending".into()),
        site: label(labels::SITE),
        rack: label(labels::RACK),
        region: label(labels::REGION),
        node: node_name,
        waiting_reason,
    }
}

/// The phase of a job, and what went wrong when it failed.
fn job_phase(job: &Stored, pods: &[JobPod]) -> (&'static str, String) {
    if job.metadata.deletion_timestamp.is_some() {
        return ("Cancelled", String::new());
    }
    let status = job.status.clone().unwrap_or_default();
    let condition = |kind: &str| {
        status.conditions.iter().flatten().find(|c| c.type_ == kind && c.status == "True").cloned()
    };
    if condition("Complete").is_some() {
        return ("Succeeded", String::new());
    }
    if let Some(failed) = condition("Failed") {
        return ("Failed", failed.message.unwrap_or_default());
    }
    if pods.iter().any(|p| p.phase == "Running") {
        ("Running", String::new())
    } else {
        ("Pending", String::new())
    }
}

/// A job as the API shows it, with its pods.
fn job_message(
    job: &Stored,
    tenant: &str,
    pods: &[Arc<Pod>],
    node: &dyn Fn(&str) -> Option<Arc<Node>>,
) -> Job {
    let mut pods: Vec<JobPod> = pods.iter().map(|pod| pod_message(pod, node)).collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    let (phase, message) = job_phase(job, &pods);
    let spec = job.spec.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let template = spec.template.spec.unwrap_or_default();
    let time = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| t.0.to_string()).unwrap_or_default()
    };
    Job {
        name: job.name_any(),
        namespace: job.namespace().unwrap_or_default(),
        tenant: tenant.into(),
        phase: phase.into(),
        image: template.containers.first().and_then(|c| c.image.clone()).unwrap_or_default(),
        replicas: spec.completions.unwrap_or(1),
        gang: spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .is_some_and(|l| l.contains_key(labels::POD_GROUP)),
        submitted_by: job.annotations().get(SUBMITTED_BY).cloned().unwrap_or_default(),
        created_at: time(job.metadata.creation_timestamp.as_ref()),
        completed_at: time(status.completion_time.as_ref()),
        active: status.active.unwrap_or(0),
        succeeded: status.succeeded.unwrap_or(0),
        failed: status.failed.unwrap_or(0),
        message,
        pods,
    }
}

/// A Kubernetes event as a job's event.
fn event_message(event: &CoreEvent) -> JobEvent {
    let time = event
        .event_time
        .as_ref()
        .map(|t| t.0)
        .or(event.last_timestamp.as_ref().map(|t| t.0))
        .or(event.first_timestamp.as_ref().map(|t| t.0))
        .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let object = &event.involved_object;
    JobEvent {
        time: time.map(|t| t.to_string()).unwrap_or_default(),
        r#type: event.type_.clone().unwrap_or_default(),
        reason: event.reason.clone().unwrap_or_default(),
        message: event.message.clone().unwrap_or_default(),
        object: format!(
            "{}/{}",
            object.kind.as_deref().unwrap_or_default(),
            object.name.as_deref().unwrap_or_default()
        ),
        source: event
            .reporting_component
            .clone()
            .filter(|c| !c.is_empty())
            .or(event.source.as_ref().and_then(|s| s.component.clone()))
            .unwrap_or_default(),
    }
}

/// Whether `event` is about job `job`: the Job, its PodGroup or one of its pods.
fn is_event_of(job: &str, event: &CoreEvent) -> bool {
    let object = &event.involved_object;
    let name = object.name.as_deref().unwrap_or_default();
    match object.kind.as_deref() {
        Some("Job" | "PodGroup") => name == job,
        Some("Pod") => is_pod_of(job, name),
        _ => false,
    }
}

/// The stream of a job's events over gRPC.
pub type JobEventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

impl JobService {
    pub fn new(gate: Arc<Gate>, client: Client, caches: Caches, scheduler: String) -> Arc<JobService> {
        let events = Events::new(&client);
        Arc::new(JobService { gate, client, events, caches, scheduler })
    }

    async fn allow(
        &self,
        user: &User,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<(), ApiError> {
        let action = Action {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
            namespace: Some(namespace.into()),
            name: name.map(String::from),
            ..Action::default()
        };
        let what = format!("{verb} {resource} in namespace {namespace}");
        authorize(&self.gate.access, user, &action, &what).await
    }

    fn jobs(&self, namespace: &str) -> Api<Stored> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The tenant whose namespace `namespace` is, from the watch (empty if it is not one).
    fn tenant_in(&self, namespace: &str) -> String {
        let ns = self.caches.namespaces.get(&ObjectRef::new(namespace));
        ns.and_then(|ns| ns.labels().get(labels::TENANT).cloned()).unwrap_or_default()
    }

    /// `job` of `tenant` as the API shows it, its pods from the watch.
    fn show(&self, job: &Stored, tenant: &str) -> Job {
        let namespace = job.namespace().unwrap_or_default();
        let name = job.name_any();
        let pods: Vec<Arc<Pod>> = self
            .caches
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(&namespace) && p.labels().get(JOB_NAME) == Some(&name)
            })
            .collect();
        let node = |name: &str| self.caches.nodes.get(&ObjectRef::new(name));
        job_message(job, tenant, &pods, &node)
    }

    pub async fn submit(&self, user: &User, request: &SubmitJobRequest) -> Result<Job, ApiError> {
        // Who may submit here first: the rules of a job are for those who may run one.
        if let Some(violation) = namespace_violation(&request.namespace) {
            return Err(ApiError::InvalidArgument(vec![violation]));
        }
        let namespace = request.namespace.as_str();
        self.allow(user, "create", "batch", "jobs", namespace, None).await?;
        if request.gang {
            self.allow(user, "create", yiyun_crds::GROUP, "podgroups", namespace, None).await?;
        }
        let violations = submit_violations(request);
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        // The watch knows the tenant's namespaces; one made a moment ago is asked for.
        let cached = self.caches.namespaces.get(&ObjectRef::new(namespace));
        let tenant = match cached.and_then(|ns| ns.labels().get(labels::TENANT).cloned()) {
            Some(tenant) => tenant,
            None => tenant_of(&self.client, namespace).await?,
        };
        let name = match (request.name.as_str(), request.idempotency_key.as_str()) {
            ("", "") => format!("job-{}", random_hex()),
            ("", key) => idempotent_name("job", &user.name, key),
            (name, _) => name.to_string(),
        };
        let mut job = desired_job(request, &name, &tenant, &self.scheduler);
        let submission =
            digest(&[user.name.as_bytes(), &serde_json::to_vec(&job.spec).unwrap_or_default()], 16);
        job.annotations_mut().insert(SUBMITTED_BY.into(), user.name.clone());
        job.annotations_mut().insert(SUBMISSION.into(), submission.clone());
        let api = self.jobs(namespace);
        let created = match api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                let note = format!("{} submitted it through the self-service API", user.name);
                self.events.tell(&created, false, "Submitted", "Submit", note);
                created
            }
            Err(kube::Error::Api(status)) if status.code == 409 && !request.idempotency_key.is_empty() => {
                // The same key again: the same job, finished if it was left half-made.
                let existing = api.get(&name).await.map_err(|err| kube_error(err, &format!("job {name}")))?;
                if existing.annotations().get(SUBMISSION) != Some(&submission) {
                    return Err(ApiError::Conflict(format!(
                        "idempotency key {:?} was used for job {name}, which asked for something else",
                        request.idempotency_key
                    )));
                }
                existing
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return Err(ApiError::Conflict(format!("job {name} exists already in {namespace}")));
            }
            Err(err) => return Err(kube_error(err, &format!("job {name}"))),
        };
        if !request.gang {
            return Ok(self.show(&created, &tenant));
        }
        match self.release_gang(request, created).await {
            Ok(released) => Ok(self.show(&released, &tenant)),
            Err(err) => {
                // Nothing half-made is left behind: the Job goes, its PodGroup with it.
                let delete = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                if let Err(cleanup) = api.delete(&name, &delete).await {
                    tracing::warn!(job = %name, %cleanup, "cannot delete the job of a failed submission");
                }
                Err(err)
            }
        }
    }

    /// Creates a gang's PodGroup (unless it exists) and lets its suspended Job go: the Job as
    /// it is then.
    async fn release_gang(&self, request: &SubmitJobRequest, job: Stored) -> Result<Stored, ApiError> {
        let namespace = &request.namespace;
        let name = job.name_any();
        let groups: Api<PodGroup> = Api::namespaced(self.client.clone(), namespace);
        match groups.create(&PostParams::default(), &desired_pod_group(request, &job)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(kube_error(err, &format!("podgroup {name}"))),
        }
        if job.spec.as_ref().and_then(|s| s.suspend) != Some(true) {
            return Ok(job);
        }
        self.jobs(namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}})))
            .await
            .map_err(|err| kube_error(err, &format!("job {name}")))
    }

    fn checked_name(namespace: &str, name: &str) -> Result<(), ApiError> {
        let mut violations = Vec::new();
        violations.extend(namespace_violation(namespace));
        if !is_label(name) {
            violations.push(FieldViolation::new("name", "a job's name"));
        }
        if violations.is_empty() { Ok(()) } else { Err(ApiError::InvalidArgument(violations)) }
    }

    /// The job from the watch, or from the apiserver when the watch has not seen it yet (just
    /// submitted).
    async fn find(&self, namespace: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
        if let Some(job) = self.caches.jobs.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(job);
        }
        let job =
            self.jobs(namespace).get(name).await.map_err(|err| kube_error(err, &format!("job {name}")))?;
        Ok(Arc::new(job))
    }

    pub async fn read(&self, user: &User, request: &GetJobRequest) -> Result<Job, ApiError> {
        Self::checked_name(&request.namespace, &request.name)?;
        self.allow(user, "get", "batch", "jobs", &request.namespace, Some(&request.name)).await?;
        let job = self.find(&request.namespace, &request.name).await?;
        Ok(self.show(&job, &self.tenant_in(&request.namespace)))
    }

    pub async fn list(&self, user: &User, request: &ListJobsRequest) -> Result<ListJobsResponse, ApiError> {
        let mut violations = Vec::new();
        violations.extend(namespace_violation(&request.namespace));
        violations.extend(page_size_violation(request.page_size));
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        self.allow(user, "list", "batch", "jobs", &request.namespace, None).await?;
        // The token is the last name of the previous page.
        if !request.page_token.is_empty() && !is_label(&request.page_token) {
            return Err(ApiError::invalid("page_token", "not from this list: start again without one"));
        }
        let namespace = Some(request.namespace.clone());
        let mut jobs: Vec<Arc<Stored>> = self
            .caches
            .jobs
            .state()
            .into_iter()
            .filter(|job| {
                job.namespace() == namespace && job.name_any().as_str() > request.page_token.as_str()
            })
            .collect();
        jobs.sort_by_key(|job| job.name_any());
        let size = page_size(request.page_size);
        let next_page_token = if jobs.len() > size { jobs[size - 1].name_any() } else { String::new() };
        jobs.truncate(size);
        // One pass over the namespace's pods for the whole page.
        let mut pods: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in self.caches.pods.state() {
            if pod.namespace() == namespace
                && let Some(job) = pod.labels().get(JOB_NAME)
            {
                pods.entry(job.clone()).or_default().push(pod);
            }
        }
        let node = |name: &str| self.caches.nodes.get(&ObjectRef::new(name));
        let tenant = self.tenant_in(&request.namespace);
        let items = jobs
            .iter()
            .map(|job| job_message(job, &tenant, pods.get(&job.name_any()).map_or(&[], Vec::as_slice), &node))
            .collect();
        Ok(ListJobsResponse { items, next_page_token })
    }

    pub async fn cancel(&self, user: &User, request: &CancelJobRequest) -> Result<Job, ApiError> {
        Self::checked_name(&request.namespace, &request.name)?;
        self.allow(user, "delete", "batch", "jobs", &request.namespace, Some(&request.name)).await?;
        let name = &request.name;
        let job = self.find(&request.namespace, name).await?;
        let mut shown = self.show(&job, &self.tenant_in(&request.namespace));
        self.events.tell(&*job, false, "Cancelled", "Cancel", format!("{} cancelled it", user.name));
        // Background: the Job goes now, its pods and PodGroup right after (their owner is gone).
        let delete = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        self.jobs(&request.namespace)
            .delete(name, &delete)
            .await
            .map_err(|err| kube_error(err, &format!("job {name}")))?;
        shown.phase = "Cancelled".into();
        Ok(shown)
    }

    /// The job's events so far, oldest first, and (with `follow`) a watch of the namespace's
    /// events from then on.
    pub async fn events(
        &self,
        user: &User,
        request: &WatchJobEventsRequest,
    ) -> Result<JobEventStream, ApiError> {
        Self::checked_name(&request.namespace, &request.name)?;
        self.allow(user, "get", "batch", "jobs", &request.namespace, Some(&request.name)).await?;
        self.find(&request.namespace, &request.name).await?;
        let events: Api<CoreEvent> = Api::namespaced(self.client.clone(), &request.namespace);
        let job = request.name.clone();
        if !request.follow {
            let listed =
                events.list(&Default::default()).await.map_err(|err| kube_error(err, "the job's events"))?;
            let mut found: Vec<JobEvent> =
                listed.items.iter().filter(|e| is_event_of(&job, e)).map(event_message).collect();
            found.sort_by(|a, b| a.time.cmp(&b.time));
            return Ok(Box::pin(futures::stream::iter(found.into_iter().map(Ok))));
        }
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(follow_events(events, job, sender));
        Ok(Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|event| (event, receiver))
        })))
    }
}

/// Sends the job's events: those already there oldest first, then each new one, until the
/// caller hangs up.
async fn follow_events(events: Api<CoreEvent>, job: String, sender: mpsc::Sender<Result<JobEvent, Status>>) {
    let mut watch = std::pin::pin!(watcher::watcher(events, watcher::Config::default()));
    let mut initial = Vec::new();
    loop {
        let next = tokio::select! {
            () = sender.closed() => return,
            next = watch.next() => next,
        };
        let sent = match next {
            None => return,
            Some(Ok(watcher::Event::InitApply(event))) => {
                if is_event_of(&job, &event) {
                    initial.push(event_message(&event));
                }
                Ok(())
            }
            Some(Ok(watcher::Event::InitDone)) => {
                initial.sort_by(|a, b| a.time.cmp(&b.time));
                let mut sent = Ok(());
                for event in initial.drain(..) {
                    sent = sent.and(sender.send(Ok(event)).await.map_err(drop));
                }
                sent
            }
            Some(Ok(watcher::Event::Apply(event))) if is_event_of(&job, &event) => {
                sender.send(Ok(event_message(&event))).await.map_err(drop)
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(err)) => {
                tracing::debug!(%err, "watch of a job's events failed; it retries");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// 10 random bytes in hex: a generated job name.
fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 5];
    // The system's random source failing leaves zeros: a name that may clash, refused as such.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl proto::jobs_server::Jobs for Arc<JobService> {
    type WatchJobEventsStream = JobEventStream;

    async fn submit_job(&self, request: Request<SubmitJobRequest>) -> Result<GrpcResponse<Job>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("SubmitJob", "grpc", "", &body.namespace);
        self.gate.grpc(&request, audit, async |user, body| self.submit(user, body).await).await
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<GrpcResponse<Job>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("GetJob", "grpc", "", &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.read(user, body).await).await
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<GrpcResponse<ListJobsResponse>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("ListJobs", "grpc", "", &body.namespace);
        self.gate.grpc(&request, audit, async |user, body| self.list(user, body).await).await
    }

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<GrpcResponse<Job>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("CancelJob", "grpc", "", &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.cancel(user, body).await).await
    }

    async fn watch_job_events(
        &self,
        request: Request<WatchJobEventsRequest>,
    ) -> Result<GrpcResponse<JobEventStream>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("WatchJobEvents", "grpc", "", &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.events(user, body).await).await
    }
}

/// REST: `POST /v1/namespaces/{namespace}/jobs`, `GET` it for a page, `GET` and `DELETE`
/// `.../{name}`, and `GET .../{name}/events`.
pub fn routes(service: Arc<JobService>) -> Router {
    Router::new()
        .route("/v1/namespaces/{namespace}/jobs", get(rest_list).post(rest_submit))
        .route("/v1/namespaces/{namespace}/jobs/{name}", get(rest_get).delete(rest_cancel))
        .route("/v1/namespaces/{namespace}/jobs/{name}/events", get(rest_events))
        .with_state(service)
}

/// Submits a job.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{namespace}/jobs",
    tag = "Jobs",
    operation_id = "SubmitJob",
    params(("namespace" = String, Path, description = "A namespace of the caller's tenant", pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    request_body = SubmitJobRequest,
    responses((status = 200, description = "The job", body = Job), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_submit(
    State(service): State<Arc<JobService>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    request: Result<Json<SubmitJobRequest>, JsonRejection>,
) -> Response {
    let audit = Audit::new("SubmitJob", "rest", "", &namespace);
    let call = async |user: &User| {
        let request = SubmitJobRequest { namespace: namespace.clone(), ..body(request)? };
        service.submit(user, &request).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

/// One job, with where its pods run or why they wait.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/jobs/{name}",
    tag = "Jobs",
    operation_id = "GetJob",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses((status = 200, description = "The job", body = Job), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_get(
    State(service): State<Arc<JobService>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("GetJob", "rest", "", &name);
    let request = GetJobRequest { namespace, name: name.clone() };
    respond(service.gate.call(&headers, audit, async |user| service.read(user, &request).await).await)
}

/// A page of a namespace's jobs, by name.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/jobs",
    tag = "Jobs",
    operation_id = "ListJobs",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), Page),
    responses((status = 200, description = "A page", body = ListJobsResponse), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_list(
    State(service): State<Arc<JobService>>,
    Path(namespace): Path<String>,
    page: Result<Query<Page>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("ListJobs", "rest", "", &namespace);
    let call = async |user: &User| {
        let (page_size, page_token) = page_query(page)?;
        service.list(user, &ListJobsRequest { namespace: namespace.clone(), page_size, page_token }).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

/// Cancels a job: it and its pods are deleted.
#[utoipa::path(
    delete,
    path = "/v1/namespaces/{namespace}/jobs/{name}",
    tag = "Jobs",
    operation_id = "CancelJob",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses((status = 200, description = "The job as it was, Cancelled", body = Job), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_cancel(
    State(service): State<Arc<JobService>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("CancelJob", "rest", "", &name);
    let request = CancelJobRequest { namespace, name: name.clone() };
    respond(service.gate.call(&headers, audit, async |user| service.cancel(user, &request).await).await)
}

/// The job's events so far, oldest first (gRPC's WatchJobEvents also follows new ones).
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/jobs/{name}/events",
    tag = "Jobs",
    operation_id = "ListJobEvents",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses((status = 200, description = "The events", body = JobEvents), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_events(
    State(service): State<Arc<JobService>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("ListJobEvents", "rest", "", &name);
    let request = WatchJobEventsRequest { namespace, name: name.clone(), follow: false };
    let call = async |user: &User| {
        let events = service.events(user, &request).await?;
        let items = events.filter_map(|event| async move { event.ok() }).collect().await;
        Ok(JobEvents { items })
    };
    respond(service.gate.call(&headers, audit, call).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SubmitJobRequest {
        SubmitJobRequest {
            namespace: "dept-ns".into(),
            image: "registry.gov.local/ai/train:1.4".into(),
            cpu: "4".into(),
            memory: "16Gi".into(),
            ..SubmitJobRequest::default()
        }
    }

    #[test]
    fn a_plain_submission_is_valid() {
        assert_eq!(submit_violations(&request()), []);
    }

    #[test]
    fn a_submission_names_every_wrong_field() {
        let wrong = SubmitJobRequest {
            namespace: "Dept".into(),
            name: "x".repeat(53),
            image: "has space".into(),
            cpu: "lots".into(),
            memory: String::new(),
            gpus: 1,
            gpu_milli: 500,
            replicas: 1001,
            gang_topology: "rack".into(),
            latency_class: "soon".into(),
            data_gigabytes: 10,
            deadline_seconds: -1,
            node_selector: [("bad key!".to_string(), "v".to_string())].into(),
            ..SubmitJobRequest::default()
        };
        let fields: Vec<String> = submit_violations(&wrong).into_iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            [
                "namespace",
                "name",
                "image",
                "gpu_milli",
                "replicas",
                "gang_topology",
                "latency_class",
                "data_gigabytes",
                "deadline_seconds",
                "node_selector",
                "cpu",
                "memory"
            ]
        );
    }

    #[test]
    fn a_job_carries_what_the_scheduler_reads() {
        let asked = SubmitJobRequest {
            gpu_milli: 500,
            gpu_models: vec!["A800".into()],
            replicas: 4,
            gang: true,
            gang_topology: "rack".into(),
            latency_class: "realtime".into(),
            data_site: "guiyang".into(),
            data_gigabytes: 200,
            deadline_seconds: 3600,
            node_selector: [(labels::SITE.to_string(), "qingyang".to_string())].into(),
            ..request()
        };
        let job = desired_job(&asked, "train", "dept", "yiyun-scheduler");
        let spec = job.spec.clone().unwrap();
        assert_eq!((spec.parallelism, spec.completions, spec.suspend), (Some(4), Some(4), Some(true)));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        let template = spec.template;
        let annotations = template.metadata.as_ref().unwrap().annotations.clone().unwrap();
        assert_eq!(annotations[labels::LATENCY_CLASS], "realtime");
        assert_eq!(annotations[labels::DATA_SITE], "guiyang");
        assert_eq!(annotations[labels::DATA_GIGABYTES], "200");
        assert_eq!(annotations[labels::GPU_FRACTION], "500");
        assert_eq!(annotations[labels::GPU_MODELS], "A800");
        assert_eq!(template.metadata.unwrap().labels.unwrap()[labels::POD_GROUP], "train");
        let pod = template.spec.unwrap();
        assert_eq!(pod.scheduler_name.as_deref(), Some("yiyun-scheduler"));
        assert_eq!(pod.node_selector.unwrap()[labels::SITE], "qingyang");
        let security = pod.security_context.clone().unwrap();
        assert_eq!(security.run_as_non_root, Some(true), "the restricted Pod Security Standard");
        let container = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(container.allow_privilege_escalation, Some(false));
        assert_eq!(container.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        let toleration = &pod.tolerations.unwrap()[0];
        assert_eq!(
            (toleration.key.as_deref(), toleration.value.as_deref()),
            (Some(labels::DEDICATED), Some("dept"))
        );
        let group = desired_pod_group(&asked, &job);
        assert_eq!(group.spec.min_member, 4);
        assert_eq!(group.metadata.owner_references.unwrap()[0].kind, "Job");
        // Not a gang: runs at once, no PodGroup label.
        let lone = desired_job(&request(), "one", "dept", "yiyun-scheduler");
        assert_eq!(lone.spec.as_ref().unwrap().suspend, Some(false));
        assert!(lone.spec.unwrap().template.metadata.unwrap().labels.unwrap().is_empty());
    }

    #[test]
    fn a_jobs_pods_are_told_from_another_jobs() {
        assert!(is_pod_of("train", "train-x7k2p"));
        assert!(!is_pod_of("train", "train-big-x7k2p"));
        assert!(!is_pod_of("train-big", "train-x7k2p"));
        assert!(!is_pod_of("train", "trainx-x7k2p"));
    }

    #[test]
    fn a_waiting_pod_shows_the_schedulers_explanation_and_a_placed_one_its_place() {
        let waiting: Pod = serde_json::from_value(json!({
            "metadata": {"name": "train-aaaaa"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/3 nodes: 3 too little cpu"}]}
        }))
        .unwrap();
        let placed: Pod = serde_json::from_value(json!({
            "metadata": {"name": "train-bbbbb"}, "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {
            labels::SITE: "qingyang", labels::RACK: "rack-01", labels::REGION: "gansu"}}}))
        .unwrap();
        let node = Arc::new(node);
        let lookup = |name: &str| (name == "n1").then(|| node.clone());
        let shown = pod_message(&waiting, &lookup);
        assert_eq!((shown.node.as_str(), shown.waiting_reason.as_str()), ("", "0/3 nodes: 3 too little cpu"));
        let shown = pod_message(&placed, &lookup);
        assert_eq!(
            (shown.site.as_str(), shown.rack.as_str(), shown.region.as_str(), shown.waiting_reason.as_str()),
            ("qingyang", "rack-01", "gansu", "")
        );
        let job = desired_job(&request(), "train", "dept", "s");
        let shown = job_message(&job, "dept", &[Arc::new(waiting), Arc::new(placed)], &lookup);
        assert_eq!((shown.phase.as_str(), shown.tenant.as_str()), ("Running", "dept"));
        assert_eq!(shown.pods.len(), 2);
    }
}
