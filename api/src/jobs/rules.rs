//! The pure rules of jobs: what a submission may ask, the Job and PodGroup it becomes, and how
//! a Job, its pods and their events are shown. No I/O: the service in `mod.rs` reads and
//! writes.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    batch::v1::Job as Stored,
    core::v1::{Event as CoreEvent, Node, Pod},
};
use kube::ResourceExt;
use serde_json::json;
use yiyun_crds::{PodGroup, labels};
use yiyun_quota::Milli;

use crate::{
    error::{FieldViolation, is_label},
    proto::{Job, JobEvent, JobPod, SubmitJobRequest},
};

/// The label the Job controller puts on a Job's pods.
pub(super) const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// Annotations on a submitted Job: who submitted it, and the digest of what they asked for
/// (an idempotent repeat must ask for the same).
pub(super) const SUBMITTED_BY: &str = "yiyun.io/submitted-by";
pub(super) const SUBMISSION: &str = "yiyun.io/submission";
/// The longest job name: its pods are named `<job>-<5 characters>`, within the 63 of a label.
const MAX_NAME: usize = 52;
const LATENCY_CLASSES: [&str; 4] = ["realtime", "interactive", "batch", "archive"];

/// Whether `value` is a Kubernetes label value (empty allowed).
pub(super) fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= 63
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric())
}

/// Whether `key` is a Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a
/// non-empty name.
pub(super) fn is_label_key(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let prefix_ok = prefix.is_empty()
        || (prefix.len() <= 253 && prefix.split('.').all(is_label) && !key.starts_with('/'));
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// Why `quantity` is not a positive amount, if it is not.
pub(super) fn quantity_violation(field: &str, quantity: &str) -> Option<FieldViolation> {
    match Milli::parse(quantity) {
        _ if quantity.is_empty() => Some(FieldViolation::new(field, "required, e.g. \"4\" or \"16Gi\"")),
        Ok(m) if m.0 > 0 => None,
        Ok(_) => Some(FieldViolation::new(field, format!("{quantity:?} is not more than zero"))),
        Err(err) => Some(FieldViolation::new(field, err.to_string())),
    }
}

/// Every wrong field of a submission.
pub(super) fn submit_violations(request: &SubmitJobRequest) -> Vec<FieldViolation> {
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
pub(super) fn desired_job(request: &SubmitJobRequest, name: &str, tenant: &str, scheduler: &str) -> Stored {
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
pub(super) fn desired_pod_group(request: &SubmitJobRequest, job: &Stored) -> PodGroup {
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
pub(super) fn is_pod_of(job: &str, pod: &str) -> bool {
    pod.strip_prefix(job)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|suffix| suffix.len() == 5 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Where `pod` runs, or why it waits; `node` looks a node up by name.
pub(super) fn pod_message(pod: &Pod, node: &dyn Fn(&str) -> Option<Arc<Node>>) -> JobPod {
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
pub(super) fn job_phase(job: &Stored, pods: &[JobPod]) -> (&'static str, String) {
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
pub(super) fn job_message(
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
pub(super) fn event_message(event: &CoreEvent) -> JobEvent {
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
pub(super) fn is_event_of(job: &str, event: &CoreEvent) -> bool {
    let object = &event.involved_object;
    let name = object.name.as_deref().unwrap_or_default();
    match object.kind.as_deref() {
        Some("Job" | "PodGroup") => name == job,
        Some("Pod") => is_pod_of(job, name),
        _ => false,
    }
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
