//! Kubernetes objects as the engine sees them. Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Node as KubeNode, NodeSelectorTerm, Pod as KubePod, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};
use yiyun_crds::labels;
use yiyun_engine::model::{
    DataLocality, GpuRequest, LatencyClass, Node, Operator, Pod, Requirement, Resources, Taint, TaintEffect,
    Term, Toleration, TolerationOperator,
};
use yiyun_quota::Milli;

/// `namespace/name`, the engine's key of a pod.
pub fn pod_key(pod: &KubePod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Milli-units of a quantity; unparsable or negative quantities count as zero (the apiserver
/// validates quantities, so this only guards against the impossible).
fn milli(quantity: &Quantity) -> u64 {
    Milli::parse(&quantity.0).ok().and_then(|m| u64::try_from(m.0).ok()).unwrap_or(0)
}

/// Resource amounts from a `name → quantity` map: cpu in milli, memory in bytes, pods and
/// extended resources in units.
fn amounts(map: &BTreeMap<String, Quantity>) -> (Resources, u64) {
    let mut resources = Resources { pods: 0, ..Resources::default() };
    let mut gpus = 0;
    for (name, quantity) in map {
        let value = milli(quantity);
        match name.as_str() {
            "cpu" => resources.cpu_milli = value,
            "memory" => resources.memory_bytes = value.div_ceil(1000),
            "pods" => resources.pods = value / 1000,
            "ephemeral-storage" | "storage" => {}
            name if name == labels::GPU_RESOURCE => gpus = value / 1000,
            name if name.starts_with("hugepages-") => {}
            name => {
                resources.extended.insert(name.to_string(), value / 1000);
            }
        }
    }
    (resources, gpus)
}

/// A node: allocatable resources, GPUs, labels, taints, topology.
pub fn node(node: &KubeNode) -> Node {
    let name = node.metadata.name.clone().unwrap_or_default();
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
    let (resources, gpus) = amounts(&allocatable);
    let mut out = Node::new(name, resources);
    out.gpus = u8::try_from(gpus.min(yiyun_engine::gpu::MAX_GPUS as u64)).unwrap_or(0);
    out.labels = node.metadata.labels.clone().unwrap_or_default();
    out.topology.region = out.labels.get(labels::REGION).cloned().unwrap_or_default();
    out.topology.region_class = out.labels.get(labels::REGION_CLASS).cloned().unwrap_or_default();
    out.topology.site = out.labels.get(labels::SITE).cloned().unwrap_or_default();
    out.topology.rack = out.labels.get(labels::RACK).cloned().unwrap_or_default();
    out.gpu_model =
        out.labels.get(labels::GPU_MODEL).or_else(|| out.labels.get(labels::NVIDIA_GPU_PRODUCT)).cloned();
    let spec = node.spec.clone().unwrap_or_default();
    out.unschedulable = spec.unschedulable.unwrap_or(false);
    out.taints = spec
        .taints
        .unwrap_or_default()
        .into_iter()
        .filter_map(|taint| {
            Some(Taint {
                key: taint.key,
                value: taint.value.unwrap_or_default(),
                effect: effect(&taint.effect)?,
            })
        })
        .collect();
    out
}

fn effect(text: &str) -> Option<TaintEffect> {
    match text {
        "NoSchedule" => Some(TaintEffect::NoSchedule),
        "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
        "NoExecute" => Some(TaintEffect::NoExecute),
        _ => None,
    }
}

fn requests(requirements: Option<&ResourceRequirements>) -> BTreeMap<String, Quantity> {
    requirements.and_then(|r| r.requests.clone()).unwrap_or_default()
}

fn max_into(total: &mut Resources, total_gpus: &mut u64, other: &(Resources, u64)) {
    total.cpu_milli = total.cpu_milli.max(other.0.cpu_milli);
    total.memory_bytes = total.memory_bytes.max(other.0.memory_bytes);
    for (name, amount) in &other.0.extended {
        let entry = total.extended.entry(name.clone()).or_insert(0);
        *entry = (*entry).max(*amount);
    }
    *total_gpus = (*total_gpus).max(other.1);
}

fn term(term: &NodeSelectorTerm) -> Term {
    Term {
        requirements: term
            .match_expressions
            .iter()
            .flatten()
            .map(|expression| Requirement {
                key: expression.key.clone(),
                operator: match expression.operator.as_str() {
                    "In" => Operator::In,
                    "NotIn" => Operator::NotIn,
                    "Exists" => Operator::Exists,
                    "DoesNotExist" => Operator::DoesNotExist,
                    "Gt" => Operator::Gt,
                    // The apiserver admits only these six; `Lt` is the last.
                    _ => Operator::Lt,
                },
                values: expression.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// A pod: what it requests (containers summed, init containers at their largest, plus
/// overhead, as kube-scheduler counts), its constraints and yiyun's annotations. `tenant` is the
/// tenant of its namespace.
pub fn pod(pod: &KubePod, tenant: Option<&str>) -> Pod {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut total = Resources { pods: 1, ..Resources::default() };
    let mut gpus = 0u64;
    for container in &spec.containers {
        let (resources, container_gpus) = amounts(&requests(container.resources.as_ref()));
        total.add(&resources);
        gpus += container_gpus;
    }
    for init in spec.init_containers.iter().flatten() {
        max_into(&mut total, &mut gpus, &amounts(&requests(init.resources.as_ref())));
    }
    if let Some(overhead) = &spec.overhead {
        total.add(&amounts(overhead).0);
    }
    total.pods = 1;
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let annotation = |key: &str| annotations.get(key).map(String::as_str);
    let mut out = Pod::new(pod_key(pod), total);
    out.gpu = match (gpus, annotation(labels::GPU_FRACTION).and_then(|m| m.trim().parse::<u16>().ok())) {
        (0, Some(milli @ 1..=999)) => GpuRequest::Fraction(milli),
        (0, _) => GpuRequest::None,
        (count, _) => GpuRequest::Whole(u8::try_from(count).unwrap_or(u8::MAX)),
    };
    out.gpu_models = annotation(labels::GPU_MODELS)
        .map(|models| {
            models.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_string).collect()
        })
        .unwrap_or_default();
    out.tenant = tenant.map(str::to_string);
    out.node_selector = spec.node_selector.clone().unwrap_or_default();
    if let Some(node_affinity) = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()) {
        if let Some(required) = &node_affinity.required_during_scheduling_ignored_during_execution {
            out.required_terms = required.node_selector_terms.iter().map(term).collect();
        }
        out.preferred_terms = node_affinity
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .map(|preferred| (u32::try_from(preferred.weight).unwrap_or(0), term(&preferred.preference)))
            .collect();
    }
    out.tolerations = spec
        .tolerations
        .iter()
        .flatten()
        .map(|toleration| Toleration {
            key: toleration.key.clone().unwrap_or_default(),
            operator: if toleration.operator.as_deref() == Some("Exists") {
                TolerationOperator::Exists
            } else {
                TolerationOperator::Equal
            },
            value: toleration.value.clone().unwrap_or_default(),
            effect: toleration.effect.as_deref().and_then(effect),
        })
        .collect();
    out.priority = spec.priority.unwrap_or(0);
    out.latency_class = match annotation(labels::LATENCY_CLASS) {
        Some("realtime") => LatencyClass::Realtime,
        Some("batch") => LatencyClass::Batch,
        Some("archive") => LatencyClass::Archive,
        _ => LatencyClass::Interactive,
    };
    if let Some(site) = annotation(labels::DATA_SITE) {
        let gigabytes = annotation(labels::DATA_GIGABYTES).and_then(|g| g.trim().parse().ok()).unwrap_or(0);
        out.data = Some(DataLocality { site: site.to_string(), gigabytes });
    }
    out.expected_runtime_seconds = annotation(labels::EXPECTED_RUNTIME).and_then(|s| s.trim().parse().ok());
    out.deadline_seconds = annotation(labels::DEADLINE).and_then(|s| s.trim().parse().ok());
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    out.gang = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(labels::POD_GROUP))
        .map(|group| format!("{namespace}/{group}"));
    // Interactive replicas of one owner spread over racks and nodes.
    if out.latency_class == LatencyClass::Interactive && out.gang.is_none() {
        out.spread_key = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|owner| {
                owner.controller == Some(true) && matches!(owner.kind.as_str(), "ReplicaSet" | "StatefulSet")
            })
            .map(|owner| owner.uid.clone());
    }
    out
}

/// The GPU devices a bound pod holds, from the annotation yiyun writes before binding.
pub fn gpu_assignment(pod: &KubePod) -> Option<Vec<(u8, u16)>> {
    let text = pod.metadata.annotations.as_ref()?.get(labels::GPU_ASSIGNMENT)?;
    text.split(',')
        .map(|pair| {
            let (device, milli) = pair.trim().split_once(':')?;
            Some((device.parse().ok()?, milli.parse().ok()?))
        })
        .collect()
}

/// The annotation value for a GPU assignment.
pub fn gpu_assignment_value(gpus: &[(u8, u16)]) -> String {
    gpus.iter().map(|(device, milli)| format!("{device}:{milli}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
        serde_json::from_value(json).expect("valid object")
    }

    #[test]
    fn a_node_brings_its_gpus_topology_and_taints() {
        let node: KubeNode = parse(serde_json::json!({
            "metadata": {"name": "qy-g1", "labels": {
                "topology.kubernetes.io/region": "gansu", "yiyun.io/site": "qingyang", "yiyun.io/rack": "q1",
                "nvidia.com/gpu.product": "A800"}},
            "spec": {"taints": [{"key": "yiyun.io/dedicated", "value": "wuhu-dsj", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "95500m", "memory": "768Gi", "pods": "110", "nvidia.com/gpu": "8",
                "example.com/fpga": "2"}}
        }));
        let node = super::node(&node);
        assert_eq!(node.allocatable.cpu_milli, 95_500);
        assert_eq!(node.allocatable.memory_bytes, 768 << 30);
        assert_eq!(node.allocatable.pods, 110);
        assert_eq!(node.allocatable.extended.get("example.com/fpga"), Some(&2));
        assert_eq!((node.gpus, node.gpu_model.as_deref()), (8, Some("A800")));
        assert_eq!((node.topology.site.as_str(), node.topology.rack.as_str()), ("qingyang", "q1"));
        assert_eq!(node.taints.len(), 1);
    }

    #[test]
    fn a_pod_counts_like_kube_scheduler_and_reads_yiyun_annotations() {
        let pod: KubePod = parse(serde_json::json!({
            "metadata": {"name": "train-0", "namespace": "wuhu-dsj",
                "labels": {"yiyun.io/pod-group": "train"},
                "annotations": {"yiyun.io/latency-class": "batch", "yiyun.io/data-site": "wuhu",
                    "yiyun.io/data-gb": "500", "yiyun.io/expected-runtime-seconds": "3600"}},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "2"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
                "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "4", "memory": "1Gi"}}}],
                "priority": 100,
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]}}}
            }
        }));
        let pod = super::pod(&pod, Some("wuhu-dsj"));
        assert_eq!(pod.key, "wuhu-dsj/train-0");
        assert_eq!(pod.requests.cpu_milli, 4_000, "the init container's 4 CPUs outweigh 2.5");
        assert_eq!(pod.requests.memory_bytes, 5 << 30);
        assert_eq!(pod.gpu, GpuRequest::Whole(2));
        assert_eq!(pod.gang.as_deref(), Some("wuhu-dsj/train"));
        assert_eq!(pod.latency_class, LatencyClass::Batch);
        assert_eq!(pod.data, Some(DataLocality { site: "wuhu".into(), gigabytes: 500 }));
        assert_eq!((pod.priority, pod.expected_runtime_seconds), (100, Some(3600)));
        assert_eq!(pod.required_terms[0].requirements[0].operator, Operator::Gt);
    }

    #[test]
    fn a_gpu_fraction_and_its_assignment_round_trip() {
        let pod: KubePod = parse(serde_json::json!({
            "metadata": {"name": "ocr", "namespace": "ns", "annotations": {
                "yiyun.io/gpu-milli": "500", "yiyun.io/gpu-assignment": "3:500"}},
            "spec": {"containers": [{"name": "c"}]}
        }));
        assert_eq!(super::pod(&pod, None).gpu, GpuRequest::Fraction(500));
        assert_eq!(gpu_assignment(&pod), Some(vec![(3, 500)]));
        assert_eq!(gpu_assignment_value(&[(0, 1000), (1, 1000)]), "0:1000,1:1000");
    }
}
