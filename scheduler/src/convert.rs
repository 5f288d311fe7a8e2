//! Kubernetes objects as the engine sees them. Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Node as KubeNode, NodeSelectorRequirement, NodeSelectorTerm, Pod as KubePod,
        PodAffinityTerm as KubePodAffinityTerm, TopologySpreadConstraint,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::LabelSelector as KubeLabelSelector},
};
use yiyun_crds::labels;
use yiyun_engine::model::{
    DataLocality, GpuRequest, HostPort, LabelSelector, LatencyClass, NamespaceScope, Node, Operator, Pod,
    PodAffinityTerm, Requirement, Resources, SpreadConstraint, Taint, TaintEffect, Term, Toleration,
    TolerationOperator, WhenUnsatisfiable,
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

/// How a quantity is counted: in milli-units, or in whole units rounded up or down.
#[derive(Clone, Copy)]
enum Count {
    Milli,
    UnitsUp,
    UnitsDown,
}

/// An amount counted as `count` says. One beyond what u64 holds (the apiserver admits up to
/// about 2^63 whole units, 10^21 milli) counts as the most there can be: such a request fits
/// nowhere and is explained, never wrapped or taken for nothing.
fn counted(Milli(milli): Milli, count: Count) -> u64 {
    let milli = milli.max(0);
    let value = match count {
        Count::Milli => milli,
        Count::UnitsUp => (milli + 999) / 1000,
        Count::UnitsDown => milli / 1000,
    };
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Resource amounts from a `name → amount` map: cpu in milli, memory in bytes, pods and
/// extended resources in units; GPUs apart.
fn amounts(map: &BTreeMap<String, Milli>) -> (Resources, u64) {
    let mut resources = Resources { pods: 0, ..Resources::default() };
    let mut gpus = 0;
    for (name, &amount) in map {
        match name.as_str() {
            "cpu" => resources.cpu_milli = counted(amount, Count::Milli),
            "memory" => resources.memory_bytes = counted(amount, Count::UnitsUp),
            "pods" => resources.pods = counted(amount, Count::UnitsDown),
            "ephemeral-storage" | "storage" => {}
            name if name == labels::GPU_RESOURCE => gpus = counted(amount, Count::UnitsDown),
            name if name.starts_with("hugepages-") => {}
            name => {
                resources.extended.insert(name.to_string(), counted(amount, Count::UnitsDown));
            }
        }
    }
    (resources, gpus)
}

/// A quantity list (a node's allocatable) as amounts.
fn quantities(list: &BTreeMap<String, Quantity>) -> BTreeMap<String, Milli> {
    list.iter().map(|(name, quantity)| (name.clone(), yiyun_kube::pods::amount(&quantity.0))).collect()
}

/// A node: allocatable resources, GPUs, labels, taints, topology.
pub fn node(node: &KubeNode) -> Node {
    let name = node.metadata.name.clone().unwrap_or_default();
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
    let (resources, gpus) = amounts(&quantities(&allocatable));
    let mut out = Node::new(name, resources);
    out.gpus = u8::try_from(gpus.min(yiyun_engine::gpu::MAX_GPUS as u64)).unwrap_or(0);
    out.labels = node.metadata.labels.clone().unwrap_or_default();
    out.topology.region = out.labels.get(labels::REGION).cloned().unwrap_or_default();
    out.topology.region_class = out.labels.get(labels::REGION_CLASS).cloned().unwrap_or_default();
    out.topology.site = out.labels.get(labels::SITE).cloned().unwrap_or_default();
    out.topology.rack = out.labels.get(labels::RACK).cloned().unwrap_or_default();
    out.dedicated_to = out.labels.get(labels::DEDICATED).cloned();
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

fn requirement(key: &str, operator: &str, values: Option<&Vec<String>>) -> Requirement {
    Requirement {
        key: key.to_string(),
        operator: match operator {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            "Gt" => Operator::Gt,
            // The apiserver admits only these six; `Lt` is the last.
            _ => Operator::Lt,
        },
        values: values.cloned().unwrap_or_default(),
    }
}

pub(crate) fn term(term: &NodeSelectorTerm) -> Term {
    let requirements = |list: &Option<Vec<NodeSelectorRequirement>>| {
        list.iter().flatten().map(|r| requirement(&r.key, &r.operator, r.values.as_ref())).collect()
    };
    Term {
        requirements: requirements(&term.match_expressions),
        name_requirements: requirements(&term.match_fields),
    }
}

fn selector(selector: &KubeLabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        expressions: selector
            .match_expressions
            .iter()
            .flatten()
            .map(|r| requirement(&r.key, &r.operator, r.values.as_ref()))
            .collect(),
    }
}

/// A selector with `matchLabelKeys` (`key In` the pod's value) and `mismatchLabelKeys`
/// (`key NotIn` it) merged in, as the apiserver does; keys the pod lacks are ignored.
fn with_label_keys(
    selected: Option<LabelSelector>,
    pod_labels: &BTreeMap<String, String>,
    match_keys: Option<&Vec<String>>,
    mismatch_keys: Option<&Vec<String>>,
) -> Option<LabelSelector> {
    let mut selected = selected?;
    for (keys, operator) in [(match_keys, Operator::In), (mismatch_keys, Operator::NotIn)] {
        for key in keys.into_iter().flatten() {
            if let Some(value) = pod_labels.get(key) {
                selected.expressions.push(Requirement {
                    key: key.clone(),
                    operator,
                    values: vec![value.clone()],
                });
            }
        }
    }
    Some(selected)
}

fn affinity_term(term: &KubePodAffinityTerm, pod_labels: &BTreeMap<String, String>) -> PodAffinityTerm {
    PodAffinityTerm {
        selector: with_label_keys(
            term.label_selector.as_ref().map(selector),
            pod_labels,
            term.match_label_keys.as_ref(),
            term.mismatch_label_keys.as_ref(),
        ),
        namespaces: NamespaceScope {
            names: term.namespaces.clone().unwrap_or_default(),
            selector: term.namespace_selector.as_ref().map(selector),
        },
        topology_key: term.topology_key.clone(),
    }
}

fn spread_constraint(
    constraint: &TopologySpreadConstraint,
    pod_labels: &BTreeMap<String, String>,
) -> SpreadConstraint {
    SpreadConstraint {
        max_skew: u32::try_from(constraint.max_skew).unwrap_or(1).max(1),
        topology_key: constraint.topology_key.clone(),
        when_unsatisfiable: if constraint.when_unsatisfiable == "ScheduleAnyway" {
            WhenUnsatisfiable::ScheduleAnyway
        } else {
            WhenUnsatisfiable::DoNotSchedule
        },
        selector: with_label_keys(
            constraint.label_selector.as_ref().map(selector),
            pod_labels,
            constraint.match_label_keys.as_ref(),
            None,
        ),
        min_domains: constraint.min_domains.and_then(|m| u32::try_from(m).ok()),
        honor_node_affinity: constraint.node_affinity_policy.as_deref() != Some("Ignore"),
        honor_node_taints: constraint.node_taints_policy.as_deref() == Some("Honor"),
    }
}

/// A pod: what it requests ([`yiyun_kube::pods::requests`]: as kube-scheduler counts), its
/// constraints and yiyun's annotations. `tenant` is the tenant of its namespace.
pub fn pod(pod: &KubePod, tenant: Option<&str>) -> Pod {
    let spec = pod.spec.clone().unwrap_or_default();
    let (mut total, gpus) = amounts(&yiyun_kube::pods::requests(pod));
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
    let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
    if let Some(affinity) = spec.affinity.as_ref().and_then(|a| a.pod_affinity.as_ref()) {
        let required = affinity.required_during_scheduling_ignored_during_execution.iter().flatten();
        out.affinity = required.map(|term| affinity_term(term, &pod_labels)).collect();
        let preferred = affinity.preferred_during_scheduling_ignored_during_execution.iter().flatten();
        out.preferred_affinity.extend(
            preferred.map(|p| (i64::from(p.weight), affinity_term(&p.pod_affinity_term, &pod_labels))),
        );
    }
    if let Some(anti) = spec.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref()) {
        let required = anti.required_during_scheduling_ignored_during_execution.iter().flatten();
        out.anti_affinity = required.map(|term| affinity_term(term, &pod_labels)).collect();
        let preferred = anti.preferred_during_scheduling_ignored_during_execution.iter().flatten();
        out.preferred_affinity.extend(
            preferred.map(|p| (-i64::from(p.weight), affinity_term(&p.pod_affinity_term, &pod_labels))),
        );
    }
    out.spread_constraints = spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .map(|constraint| spread_constraint(constraint, &pod_labels))
        .collect();
    out.host_ports = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|container| container.ports.iter().flatten())
        .filter_map(|port| {
            let host_port = u16::try_from(port.host_port?).ok().filter(|p| *p > 0)?;
            Some(HostPort {
                protocol: port.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                ip: port.host_ip.clone().unwrap_or_default(),
                port: host_port,
            })
        })
        .collect();
    out.priority = spec.priority.unwrap_or(0);
    out.preempts = spec.preemption_policy.as_deref() != Some("Never");
    let daemon = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "DaemonSet");
    let mirror = annotations.contains_key("kubernetes.io/config.mirror");
    out.evictable = !daemon && !mirror;
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
    out.namespace = namespace.clone();
    out.labels = pod_labels;
    out.gang = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(labels::POD_GROUP))
        .map(|group| format!("{namespace}/{group}"));
    // Interactive replicas of one owner spread over racks and nodes: yiyun's default spreading,
    // which, like the cluster's default constraints, gives way to the pod's own.
    if out.latency_class == LatencyClass::Interactive
        && out.gang.is_none()
        && out.spread_constraints.is_empty()
    {
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
        assert!(pod.preempts && pod.evictable);
    }

    #[test]
    fn an_absurd_request_is_the_most_there_can_be_never_nothing_or_wrapped() {
        let pod: KubePod = parse(serde_json::json!({
            "metadata": {"name": "greedy", "namespace": "ns"},
            "spec": {"containers": [
                {"name": "a", "resources": {"requests": {"cpu": "9223372036854775807", "memory": "9E"}}},
                {"name": "b", "resources": {"requests": {"cpu": "8E", "memory": "9E"}}},
                {"name": "c", "resources": {"requests": {"memory": "9E"}}}]}
        }));
        let pod = super::pod(&pod, None);
        // CPU beyond u64 milli; memory 27 EB in all, more bytes than u64 counts.
        assert_eq!((pod.requests.cpu_milli, pod.requests.memory_bytes), (u64::MAX, u64::MAX));
    }

    #[test]
    fn inter_pod_rules_spread_ports_and_node_fields_are_read_with_their_label_keys_merged() {
        let pod: KubePod = parse(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "portal", "labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {
                "containers": [{"name": "c", "ports": [{"containerPort": 8080, "hostPort": 80}, {"containerPort": 9090}]}],
                "affinity": {
                    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
                    ]}},
                    "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 30, "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone",
                        "namespaceSelector": {}
                    }}]},
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname",
                        "matchLabelKeys": ["pod-template-hash"], "namespaces": ["portal", "other"]
                    }]}
                },
                "topologySpreadConstraints": [{
                    "maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 3,
                    "labelSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
                    "nodeAffinityPolicy": "Ignore", "nodeTaintsPolicy": "Honor"
                }]
            }
        }));
        let converted = super::pod(&pod, None);
        assert_eq!(converted.namespace, "portal");
        assert_eq!(
            converted.host_ports,
            vec![HostPort { protocol: "TCP".into(), ip: String::new(), port: 80 }]
        );
        assert_eq!(converted.required_terms[0].name_requirements[0].values, vec!["n1".to_string()]);
        let anti = &converted.anti_affinity[0];
        assert_eq!(anti.namespaces.names, vec!["portal".to_string(), "other".to_string()]);
        let selector = anti.selector.as_ref().expect("a selector");
        assert_eq!(
            selector.expressions,
            vec![Requirement {
                key: "pod-template-hash".into(),
                operator: Operator::In,
                values: vec!["abc".into()]
            }],
            "matchLabelKeys narrows the selector to this pod's revision"
        );
        let (weight, preferred) = &converted.preferred_affinity[0];
        assert_eq!(*weight, 30);
        assert_eq!(
            preferred.namespaces.selector,
            Some(LabelSelector::default()),
            "{{}} selects every namespace"
        );
        let spread = &converted.spread_constraints[0];
        assert_eq!(spread.when_unsatisfiable, WhenUnsatisfiable::ScheduleAnyway);
        assert_eq!((spread.max_skew, spread.min_domains), (2, Some(3)));
        assert!(!spread.honor_node_affinity && spread.honor_node_taints);
        assert_eq!(converted.spread_key, None, "the pod's own constraints replace yiyun's default spreading");
    }

    #[test]
    fn daemonset_and_mirror_pods_are_not_evictable_and_never_policy_does_not_preempt() {
        let daemon: KubePod = parse(serde_json::json!({
            "metadata": {"name": "agent-x", "namespace": "kube-system", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c"}], "preemptionPolicy": "Never"}
        }));
        let daemon = super::pod(&daemon, None);
        assert!(!daemon.evictable && !daemon.preempts);
        let mirror: KubePod = parse(serde_json::json!({
            "metadata": {"name": "etcd-n1", "namespace": "kube-system", "annotations": {"kubernetes.io/config.mirror": "x"}},
            "spec": {"containers": [{"name": "c"}]}
        }));
        assert!(!super::pod(&mirror, None).evictable);
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

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// Quantities as the apiserver admits them, from nothing to its cap.
        fn quantity() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9]{1,4}(m|Mi|Gi)?",
                "[0-9]{1,19}(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?",
                Just("9223372036854775807".to_string()),
                Just("8E".to_string()),
                Just("100P".to_string()),
            ]
        }

        fn request_map() -> impl Strategy<Value = serde_json::Value> {
            let names = prop_oneof![
                Just("cpu"),
                Just("memory"),
                Just("nvidia.com/gpu"),
                Just("pods"),
                Just("example.com/fpga")
            ];
            proptest::collection::btree_map(names, quantity(), 0..5).prop_map(|map| serde_json::json!(map))
        }

        fn annotation() -> impl Strategy<Value = String> {
            prop_oneof!["[0-9]{0,25}", "[ -~]{0,20}", Just("0:1000,1:1000".to_string())]
        }

        fn kube_pod() -> impl Strategy<Value = KubePod> {
            (
                proptest::collection::vec(request_map(), 1..4),
                proptest::collection::vec(request_map(), 0..3),
                request_map(),
                proptest::collection::vec(annotation(), 6),
                any::<i32>(),
            )
                .prop_map(|(containers, inits, overhead, values, priority)| {
                    let container = |(i, requests): (usize, serde_json::Value)| {
                        serde_json::json!({"name": format!("c{i}"), "resources": {"requests": requests}})
                    };
                    let keys = [
                        labels::GPU_FRACTION,
                        labels::GPU_MODELS,
                        labels::DATA_GIGABYTES,
                        labels::EXPECTED_RUNTIME,
                        labels::DEADLINE,
                        labels::GPU_ASSIGNMENT,
                    ];
                    let annotations: BTreeMap<&str, String> = keys.into_iter().zip(values).collect();
                    serde_json::from_value(serde_json::json!({
                        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
                        "spec": {
                            "containers": containers.into_iter().enumerate().map(container).collect::<Vec<_>>(),
                            "initContainers": inits.into_iter().enumerate().map(container).collect::<Vec<_>>(),
                            "overhead": overhead,
                            "priority": priority
                        }
                    }))
                    .expect("a valid pod")
                })
        }

        proptest! {
            #[test]
            fn any_admitted_pod_converts_without_overflow_and_asks_at_least_each_container(pod in kube_pod()) {
                let converted = super::super::pod(&pod, Some("t"));
                let spec = pod.spec.as_ref().expect("spec");
                for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
                    let requested = container.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
                    let (alone, _) = amounts(&quantities(&requested));
                    prop_assert!(converted.requests.cpu_milli >= alone.cpu_milli);
                    prop_assert!(converted.requests.memory_bytes >= alone.memory_bytes);
                }
                let _ = gpu_assignment(&pod);
            }
        }
    }
}
