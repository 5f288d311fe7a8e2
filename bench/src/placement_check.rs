//! Whether a final placement keeps the rules its pods asked for, checked from the Kubernetes
//! objects alone (no scheduler code): required inter-pod affinity and anti-affinity, DoNotSchedule
//! spread within maxSkew, host ports, node selectors and affinity, taints, and resources.
//! Used on what each scheduler left behind in the scheduler_perf suite.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{
    api::{
        core::v1::{
            Node, NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim, Pod, PodAffinityTerm,
        },
        resource::v1::ResourceClaim,
        storage::v1::CSINode,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

type Labels = BTreeMap<String, String>;

/// Broken rules, each with one example.
#[derive(Debug, Default)]
pub struct Violations {
    pub by_rule: BTreeMap<&'static str, (usize, String)>,
}

impl Violations {
    fn add(&mut self, rule: &'static str, example: impl FnOnce() -> String) {
        let entry = self.by_rule.entry(rule).or_insert_with(|| (0, example()));
        entry.0 += 1;
    }

    pub fn total(&self) -> usize {
        self.by_rule.values().map(|(count, _)| count).sum()
    }
}

fn requirement_matches(key: &str, operator: &str, values: &[String], labels: &Labels) -> bool {
    let value = labels.get(key);
    match operator {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().flatten().all(|e| {
            requirement_matches(&e.key, &e.operator, e.values.as_deref().unwrap_or_default(), labels)
        })
}

fn node_requirements_match(list: &Option<Vec<NodeSelectorRequirement>>, labels: &Labels) -> bool {
    list.iter()
        .flatten()
        .all(|r| requirement_matches(&r.key, &r.operator, r.values.as_deref().unwrap_or_default(), labels))
}

/// A term's selector with `matchLabelKeys`/`mismatchLabelKeys` merged in, as the apiserver does.
fn term_selects(
    term: &PodAffinityTerm,
    owner: &Pod,
    other: &Pod,
    namespace_labels: &HashMap<String, Labels>,
) -> bool {
    let owner_ns = owner.metadata.namespace.as_deref().unwrap_or_default();
    let other_ns = other.metadata.namespace.as_deref().unwrap_or_default();
    let names = term.namespaces.as_deref().unwrap_or_default();
    let in_scope = match (&term.namespace_selector, names.is_empty()) {
        (None, true) => other_ns == owner_ns,
        (selector, _) => {
            names.iter().any(|n| n == other_ns)
                || selector.as_ref().is_some_and(|s| {
                    namespace_labels.get(other_ns).is_some_and(|labels| selector_matches(s, labels))
                })
        }
    };
    let Some(selector) = &term.label_selector else { return false };
    let owner_labels = owner.metadata.labels.clone().unwrap_or_default();
    let other_labels = other.metadata.labels.clone().unwrap_or_default();
    let keys_agree = term
        .match_label_keys
        .iter()
        .flatten()
        .all(|key| owner_labels.get(key).is_none_or(|value| other_labels.get(key) == Some(value)))
        && term
            .mismatch_label_keys
            .iter()
            .flatten()
            .all(|key| owner_labels.get(key).is_none_or(|value| other_labels.get(key) != Some(value)));
    in_scope && keys_agree && selector_matches(selector, &other_labels)
}

/// Checks every bound pod of `pods` (all pods of the cluster that matter: the rules of one
/// may select another) on `nodes`.
pub fn check(pods: &[Pod], nodes: &[Node], namespace_labels: &HashMap<String, Labels>) -> Violations {
    let mut violations = Violations::default();
    let node_by_name: HashMap<&str, &Node> =
        nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n))).collect();
    let labels_of = |node: &Node| node.metadata.labels.clone().unwrap_or_default();
    let bound: Vec<(&Pod, &Node)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p, *node_by_name.get(p.spec.as_ref()?.node_name.as_deref()?)?)))
        .collect();
    let name = |pod: &Pod| {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let same_domain = |a: &Node, b: &Node, key: &str| {
        let (a, b) = (labels_of(a), labels_of(b));
        a.get(key).is_some_and(|value| b.get(key) == Some(value))
    };
    let mut requested: HashMap<&str, (i128, i128, i128)> = HashMap::new();
    let mut ports: HashMap<(&str, String, i32), Vec<String>> = HashMap::new();
    for &(pod, node) in &bound {
        let Some(spec) = &pod.spec else { continue };
        let node_labels = labels_of(node);
        let node_name = node.metadata.name.as_deref().unwrap_or_default();
        if spec.scheduling_gates.as_ref().is_some_and(|gates| !gates.is_empty()) {
            violations.add("scheduling gates", || format!("{} bound while gated", name(pod)));
        }
        if !selected(spec, node, &node_labels) {
            violations.add("node selector or affinity", || format!("{} on {node_name}", name(pod)));
        }
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        for taint in taints.iter().filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute") {
            let tolerated = spec.tolerations.iter().flatten().any(|t| {
                t.effect.as_ref().is_none_or(|e| e.is_empty() || *e == taint.effect)
                    && match t.operator.as_deref() {
                        Some("Exists") => t.key.as_ref().is_none_or(|k| k.is_empty() || *k == taint.key),
                        _ => t.key.as_deref() == Some(taint.key.as_str()) && t.value == taint.value,
                    }
            });
            if !tolerated {
                violations.add("taints", || format!("{} on {node_name} ({})", name(pod), taint.key));
            }
        }
        for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            for port in container.ports.iter().flatten().filter(|p| p.host_port.unwrap_or(0) > 0) {
                let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
                ports.entry((node_name, protocol, port.host_port.unwrap_or(0))).or_default().push(name(pod));
            }
        }
        let requests = yiyun_kube_requests(pod);
        let total = requested.entry(node_name).or_default();
        total.0 += requests.0;
        total.1 += requests.1;
        total.2 += 1;
        // Required anti-affinity: no other pod its terms select in its domain.
        let affinity = spec.affinity.as_ref();
        for term in affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some((other, _)) = bound.iter().find(|(other, other_node)| {
                !std::ptr::eq(*other, pod)
                    && same_domain(node, other_node, &term.topology_key)
                    && term_selects(term, pod, other, namespace_labels)
            }) {
                violations.add("pod anti-affinity", || {
                    format!("{} beside {} ({})", name(pod), name(other), term.topology_key)
                });
            }
        }
        // Required affinity: a selected pod in its domain (itself, when it selects itself).
        for term in affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
        {
            let met = bound.iter().any(|(other, other_node)| {
                same_domain(node, other_node, &term.topology_key)
                    && term_selects(term, pod, other, namespace_labels)
            });
            if !met {
                violations.add("pod affinity", || format!("{} ({})", name(pod), term.topology_key));
            }
        }
    }
    for ((node, protocol, port), holders) in &ports {
        if holders.len() > 1 {
            violations.add("host ports", || format!("{holders:?} on {node} {protocol}/{port}"));
        }
    }
    for (node, (cpu, memory, count)) in &requested {
        let Some(allocatable) = node_by_name.get(node).and_then(|n| n.status.as_ref()?.allocatable.clone())
        else {
            continue;
        };
        let amount =
            |name: &str| allocatable.get(name).map_or(i128::MAX, |q| yiyun_kube::pods::amount(&q.0).0);
        if *cpu > amount("cpu") || *memory > amount("memory") || *count * 1000 > amount("pods") {
            violations.add("resources", || format!("{node}: cpu {cpu}m, {count} pods"));
        }
    }
    check_spread(&bound, nodes, &labels_of, &name, &mut violations);
    violations
}

/// Whether a node matches a pod's node selector and required node affinity.
fn selected(spec: &k8s_openapi::api::core::v1::PodSpec, node: &Node, labels: &Labels) -> bool {
    let fields: Labels =
        [("metadata.name".to_string(), node.metadata.name.clone().unwrap_or_default())].into();
    spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
        && spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
            .is_none_or(|required| {
                required.node_selector_terms.iter().any(|term| {
                    node_requirements_match(&term.match_expressions, labels)
                        && node_requirements_match(&term.match_fields, &fields)
                })
            })
}

/// The volume objects a placement is checked against.
#[derive(Default)]
pub struct Storage {
    pub claims: Vec<PersistentVolumeClaim>,
    pub volumes: Vec<PersistentVolume>,
    pub csi_nodes: Vec<CSINode>,
    pub resource_claims: Vec<ResourceClaim>,
}

/// Resource claims: every claim of a bound pod is allocated on the pod's node and reserved for
/// it, and no device is allocated to two claims.
pub fn check_claims(pods: &[Pod], storage: &Storage, violations: &mut Violations) {
    let claims: HashMap<(String, String), &ResourceClaim> = storage
        .resource_claims
        .iter()
        .map(|c| {
            (
                (
                    c.metadata.namespace.clone().unwrap_or_default(),
                    c.metadata.name.clone().unwrap_or_default(),
                ),
                c,
            )
        })
        .collect();
    let mut owners: HashMap<(String, String, String), String> = HashMap::new();
    for claim in &storage.resource_claims {
        let results = claim.status.iter().flat_map(|s| s.allocation.iter()).flat_map(|a| a.devices.iter());
        for result in results.flat_map(|d| d.results.iter().flatten()) {
            let device = (result.driver.clone(), result.pool.clone(), result.device.clone());
            let name = claim.metadata.name.clone().unwrap_or_default();
            if let Some(other) = owners.insert(device.clone(), name.clone()) {
                violations.add("devices allocated twice", || format!("{device:?} to {other} and {name}"));
            }
        }
    }
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let names = pod
            .status
            .iter()
            .flat_map(|s| s.resource_claim_statuses.iter().flatten())
            .filter_map(|s| s.resource_claim_name.clone());
        let direct = pod
            .spec
            .iter()
            .flat_map(|s| s.resource_claims.iter().flatten())
            .filter_map(|c| c.resource_claim_name.clone());
        for name in names.chain(direct) {
            let Some(claim) = claims.get(&(namespace.clone(), name.clone())) else {
                violations.add("claims allocated", || format!("{namespace}/{name} missing"));
                continue;
            };
            let status = claim.status.clone().unwrap_or_default();
            let on_node =
                status.allocation.as_ref().and_then(|a| a.node_selector.as_ref()).is_some_and(|selector| {
                    selector.node_selector_terms.iter().any(|t| {
                        t.match_fields.iter().flatten().any(|f| f.values.iter().flatten().any(|v| *v == node))
                    })
                });
            let reserved = status.reserved_for.iter().flatten().any(|r| r.uid == uid);
            if !on_node || !reserved {
                violations.add("claims allocated", || {
                    format!("{namespace}/{name}: on {node} {on_node}, reserved {reserved}")
                });
            }
        }
    }
}

/// Volumes: every claim of a bound pod exists and is bound, its volume's node affinity admits
/// the node, and no node attaches more volumes of a CSI driver than its CSINode allows.
pub fn check_volumes(pods: &[Pod], nodes: &[Node], storage: &Storage, violations: &mut Violations) {
    let claims: HashMap<(String, String), &PersistentVolumeClaim> = storage
        .claims
        .iter()
        .map(|c| {
            (
                (
                    c.metadata.namespace.clone().unwrap_or_default(),
                    c.metadata.name.clone().unwrap_or_default(),
                ),
                c,
            )
        })
        .collect();
    let volumes: HashMap<&str, &PersistentVolume> =
        storage.volumes.iter().filter_map(|v| Some((v.metadata.name.as_deref()?, v))).collect();
    let nodes: HashMap<&str, &Node> =
        nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n))).collect();
    let mut attached: HashMap<(String, String), std::collections::HashSet<String>> = HashMap::new();
    for pod in pods {
        let Some(spec) = &pod.spec else { continue };
        let Some(node) = spec.node_name.as_deref().and_then(|n| nodes.get(n)) else { continue };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        for claim_name in spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
        {
            let volume = claims
                .get(&(namespace.clone(), claim_name.clone()))
                .and_then(|c| c.spec.as_ref()?.volume_name.as_deref())
                .and_then(|v| volumes.get(v));
            let Some(volume) = volume else {
                violations
                    .add("volumes bound", || format!("{namespace}/{pod_name}: claim {claim_name} unbound"));
                continue;
            };
            let labels = node.metadata.labels.clone().unwrap_or_default();
            let admitted =
                volume.spec.as_ref().and_then(|s| s.node_affinity.as_ref()?.required.as_ref()).is_none_or(
                    |required| {
                        required
                            .node_selector_terms
                            .iter()
                            .any(|t| node_requirements_match(&t.match_expressions, &labels))
                    },
                );
            if !admitted {
                violations.add("volume node affinity", || {
                    format!("{namespace}/{pod_name} on {:?}", node.metadata.name)
                });
            }
            if let Some(csi) = volume.spec.as_ref().and_then(|s| s.csi.as_ref()) {
                let node_name = node.metadata.name.clone().unwrap_or_default();
                attached
                    .entry((node_name, csi.driver.clone()))
                    .or_default()
                    .insert(csi.volume_handle.clone());
            }
        }
    }
    for csi_node in &storage.csi_nodes {
        let node = csi_node.metadata.name.clone().unwrap_or_default();
        for driver in &csi_node.spec.drivers {
            let Some(limit) = driver.allocatable.as_ref().and_then(|a| a.count) else { continue };
            let count = attached.get(&(node.clone(), driver.name.clone())).map_or(0, |v| v.len());
            if count > limit as usize {
                violations.add("volume attach limit", || {
                    format!("{node}: {count} {} volumes, limit {limit}", driver.name)
                });
            }
        }
    }
}

/// The requests of a pod: CPU and memory in milli-units, as kube-scheduler counts them.
fn yiyun_kube_requests(pod: &Pod) -> (i128, i128) {
    let requests = yiyun_kube::pods::requests(pod);
    let get = |name: &str| requests.get(name).map_or(0, |milli| milli.0);
    (get("cpu"), get("memory"))
}

/// DoNotSchedule constraints: in the final placement, the pods each constraint selects differ
/// by at most maxSkew between the domains of the nodes the pod could use.
fn check_spread(
    bound: &[(&Pod, &Node)],
    nodes: &[Node],
    labels_of: &dyn Fn(&Node) -> Labels,
    name: &dyn Fn(&Pod) -> String,
    violations: &mut Violations,
) {
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for &(pod, _) in bound {
        let Some(spec) = &pod.spec else { continue };
        for constraint in spec.topology_spread_constraints.iter().flatten() {
            if constraint.when_unsatisfiable != "DoNotSchedule" {
                continue;
            }
            let Some(selector) = &constraint.label_selector else { continue };
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let key = format!("{namespace}|{selector:?}|{}|{}", constraint.topology_key, constraint.max_skew);
            if !seen.insert(key) {
                continue;
            }
            let honor_taints = constraint.node_taints_policy.as_deref() == Some("Honor");
            let honor_affinity = constraint.node_affinity_policy.as_deref() != Some("Ignore");
            let mut counts: BTreeMap<String, i64> = BTreeMap::new();
            for node in nodes {
                if honor_affinity && !selected(spec, node, &labels_of(node)) {
                    continue;
                }
                let tainted = node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|taints| {
                    taints.iter().any(|t| {
                        t.effect == "NoSchedule"
                            && !spec
                                .tolerations
                                .iter()
                                .flatten()
                                .any(|tol| tol.key.as_deref() == Some(t.key.as_str()))
                    })
                });
                if honor_taints && tainted {
                    continue;
                }
                if let Some(domain) = labels_of(node).get(&constraint.topology_key) {
                    counts.entry(domain.clone()).or_insert(0);
                }
            }
            for &(other, node) in bound {
                let other_labels = other.metadata.labels.clone().unwrap_or_default();
                if other.metadata.namespace.as_deref() != Some(namespace.as_str())
                    || !selector_matches(selector, &other_labels)
                {
                    continue;
                }
                if let Some(count) =
                    labels_of(node).get(&constraint.topology_key).and_then(|d| counts.get_mut(d))
                {
                    *count += 1;
                }
            }
            let (min, max) =
                (counts.values().min().copied().unwrap_or(0), counts.values().max().copied().unwrap_or(0));
            if max - min > i64::from(constraint.max_skew) {
                violations.add("topology spread", || {
                    format!(
                        "{}: {} skew {} > {}",
                        name(pod),
                        constraint.topology_key,
                        max - min,
                        constraint.max_skew
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": zone}},
            "status": {"allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"}}
        }))
        .expect("node")
    }

    fn pod(name: &str, node: &str, spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["nodeName"] = node.into();
        spec["containers"] = serde_json::json!([{"name": "c", "resources": {"requests": {"cpu": "1"}}}]);
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}}, "spec": spec
        }))
        .expect("pod")
    }

    #[test]
    fn each_broken_rule_is_counted_and_a_kept_one_is_not() {
        let nodes = [node("n1", "a"), node("n2", "b")];
        let anti = serde_json::json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let kept = [pod("a", "n1", anti.clone()), pod("b", "n2", anti.clone())];
        assert_eq!(check(&kept, &nodes, &HashMap::new()).total(), 0);
        let broken = [pod("a", "n1", anti.clone()), pod("b", "n1", anti)];
        let violations = check(&broken, &nodes, &HashMap::new());
        assert_eq!(violations.by_rule["pod anti-affinity"].0, 2, "{violations:?}");
        let spread = serde_json::json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
        let skewed = [pod("a", "n1", spread.clone()), pod("b", "n1", spread.clone()), pod("c", "n1", spread)];
        assert_eq!(check(&skewed, &nodes, &HashMap::new()).by_rule["topology spread"].0, 1);
        let port = |name: &str| {
            let mut p = pod(name, "n2", serde_json::json!({}));
            if let Some(spec) = p.spec.as_mut() {
                spec.containers[0].ports = Some(vec![
                    serde_json::from_value(serde_json::json!({"containerPort": 80, "hostPort": 80}))
                        .expect("port"),
                ]);
            }
            p
        };
        assert_eq!(check(&[port("x"), port("y")], &nodes, &HashMap::new()).by_rule["host ports"].0, 1);
        let with_claim = |name: &str, claim: &str| {
            pod(
                name,
                "n1",
                serde_json::json!({"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}),
            )
        };
        let storage = Storage {
            claims: vec![serde_json::from_value(serde_json::json!({"metadata": {"name": "c1", "namespace": "ns"}, "spec": {"volumeName": "pv1"}})).expect("claim"),
                serde_json::from_value(serde_json::json!({"metadata": {"name": "c2", "namespace": "ns"}, "spec": {"volumeName": "pv2"}})).expect("claim")],
            volumes: ["pv1", "pv2"].iter().map(|name| serde_json::from_value(serde_json::json!({"metadata": {"name": name},
                "spec": {"csi": {"driver": "d", "volumeHandle": name}}})).expect("volume")).collect(),
            csi_nodes: vec![serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"},
                "spec": {"drivers": [{"name": "d", "nodeID": "n1", "allocatable": {"count": 1}}]}})).expect("csinode")],
            resource_claims: Vec::new(),
        };
        let mut violations = Violations::default();
        check_volumes(
            &[with_claim("a", "c1"), with_claim("b", "c2"), with_claim("c", "missing")],
            &nodes,
            &storage,
            &mut violations,
        );
        assert_eq!(violations.by_rule["volume attach limit"].0, 1, "{violations:?}");
        assert_eq!(violations.by_rule["volumes bound"].0, 1, "{violations:?}");
        let crowded: Vec<Pod> = (0..5).map(|i| pod(&format!("p{i}"), "n1", serde_json::json!({}))).collect();
        assert_eq!(
            check(&crowded, &nodes, &HashMap::new()).by_rule["resources"].0,
            1,
            "5 CPUs on a 4-CPU node"
        );
    }
}
