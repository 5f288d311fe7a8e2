//! Pods' volumes as kube-scheduler's volume plugins see them, with no I/O: claims that must
//! exist and be bound (or wait for their first consumer), volume node affinity and zones,
//! `ReadWriteOncePod`, per-node attach limits of CSI drivers, and, for a claim waiting for its
//! first consumer, which volume to bind it to on the node chosen (or that the class's
//! provisioner should create one there).

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::{
    core::v1::{NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim, Pod as KubePod},
    storage::v1::{CSINode, StorageClass},
};
use kube::ResourceExt;
#[cfg(test)]
use kube::runtime::watcher;
use yiyun_engine::model::{Attachment, Node, Operator, Requirement, Term, VolumeConflict, VolumeRule};

use crate::{convert, store::Store};

/// The claims a pod's volumes use, by name: its PersistentVolumeClaims and the claims of its
/// generic ephemeral volumes (`<pod>-<volume>`).
pub fn claims_of(pod: &KubePod) -> Vec<String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .filter_map(|volume| match (&volume.persistent_volume_claim, &volume.ephemeral) {
            (Some(claim), _) => Some(claim.claim_name.clone()),
            (None, Some(_)) => Some(format!("{name}-{}", volume.name)),
            (None, None) => None,
        })
        .collect()
}

/// A claim waiting for its first consumer: the volumes it may be bound to, each with the
/// nodes it can be used from, and whether the class can provision one where the pod goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Unbound {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Smallest first.
    pub candidates: Vec<(String, Vec<Term>)>,
    pub provisioned_where: Option<Vec<Term>>,
}

/// What a pod's volumes need of the node it goes to.
#[derive(Debug, Default, PartialEq)]
pub struct Needs {
    pub rules: Vec<VolumeRule>,
    pub attachments: Vec<Attachment>,
    pub unbound: Vec<Unbound>,
}

/// A write that makes a claim usable on the node chosen, before the pod is bound there.
#[derive(Clone, Debug, PartialEq)]
pub enum VolumeWrite {
    /// Point the volume's `claimRef` at the claim; the volume controller completes the binding.
    BindVolume { volume: String, namespace: String, claim: String, uid: String },
    /// Ask the class's provisioner for a volume on `node` (annotation
    /// `volume.kubernetes.io/selected-node`).
    SelectNode { namespace: String, claim: String, node: String },
}

/// The annotation by which the scheduler tells a provisioner where a claim's pod goes.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const ZONE_LABELS: [&str; 4] = [
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
];

#[derive(Default)]
pub struct Volumes {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
    pub csi_nodes: Store<CSINode>,
    /// Volumes chosen for claims and not yet seen bound to them: claim key → volume.
    assumed: HashMap<String, String>,
}

fn node_terms(terms: &[NodeSelectorTerm]) -> Vec<Term> {
    terms.iter().map(convert::term).collect()
}

/// Every node: a term with no requirement.
fn anywhere() -> Vec<Term> {
    vec![Term::default()]
}

/// The nodes a volume can be used from, by its node affinity.
fn volume_terms(volume: &PersistentVolume) -> Vec<Term> {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map_or_else(anywhere, |required| node_terms(&required.node_selector_terms))
}

fn storage_request(claim: &PersistentVolumeClaim) -> i128 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or(0, |q| yiyun_kube::pods::amount(&q.0).0)
}

fn capacity(volume: &PersistentVolume) -> i128 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map_or(0, |q| yiyun_kube::pods::amount(&q.0).0)
}

impl Volumes {
    /// The CSI attach limits of a node, by driver.
    pub fn limits_of(&self, node: &str) -> BTreeMap<String, u32> {
        let Some(csi_node) = self.csi_nodes.get(node) else { return BTreeMap::new() };
        csi_node
            .spec
            .drivers
            .iter()
            .filter_map(|driver| {
                let count = driver.allocatable.as_ref()?.count?;
                Some((driver.name.clone(), u32::try_from(count).ok()?))
            })
            .collect()
    }

    /// The volumes a pod of `namespace` attaches through its bound claims.
    pub fn attachments(&self, namespace: &str, claims: &[String]) -> Vec<Attachment> {
        claims
            .iter()
            .filter_map(|claim| {
                let claim = self.claims.get(&format!("{namespace}/{claim}"))?;
                let volume = self.volumes.get(claim.spec.as_ref()?.volume_name.as_deref()?)?;
                let csi = volume.spec.as_ref()?.csi.as_ref()?;
                Some(Attachment { driver: csi.driver.clone(), volume: csi.volume_handle.clone() })
            })
            .collect()
    }

    /// What the pod's claims need, or why it cannot be placed anywhere now. `in_use` says
    /// whether a claim (`namespace/name`) is used by a pod other than this one.
    pub fn needs(
        &self,
        namespace: &str,
        claims: &[String],
        in_use: impl Fn(&str) -> bool,
    ) -> Result<Needs, String> {
        let mut needs = Needs::default();
        for name in claims {
            let key = format!("{namespace}/{name}");
            let Some(claim) = self.claims.get(&key) else {
                return Err(format!("persistentvolumeclaim \"{name}\" not found"));
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            let spec = claim.spec.clone().unwrap_or_default();
            let modes = spec.access_modes.clone().unwrap_or_default();
            if modes.iter().any(|mode| mode == "ReadWriteOncePod") && in_use(&key) {
                return Err(format!(
                    "persistentvolumeclaim \"{name}\" with ReadWriteOncePod access mode is already in use by another pod"
                ));
            }
            if let Some(volume_name) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
                let Some(volume) = self.volumes.get(volume_name) else {
                    return Err(format!("persistentvolume \"{volume_name}\" of claim \"{name}\" not found"));
                };
                needs
                    .rules
                    .push(VolumeRule { terms: volume_terms(volume), conflict: VolumeConflict::NodeAffinity });
                for label in ZONE_LABELS {
                    if let Some(values) = volume.labels().get(label) {
                        let requirement = Requirement {
                            key: label.to_string(),
                            operator: Operator::In,
                            values: values.split("__").map(str::to_string).collect(),
                        };
                        let term = Term { requirements: vec![requirement], name_requirements: Vec::new() };
                        needs.rules.push(VolumeRule { terms: vec![term], conflict: VolumeConflict::Zone });
                    }
                }
                if let Some(csi) = volume.spec.as_ref().and_then(|s| s.csi.as_ref()) {
                    needs
                        .attachments
                        .push(Attachment { driver: csi.driver.clone(), volume: csi.volume_handle.clone() });
                }
                continue;
            }
            let class_name = spec.storage_class_name.clone().or_else(|| {
                self.classes
                    .values()
                    .find(|class| class.annotations().get(DEFAULT_CLASS).is_some_and(|v| v == "true"))
                    .map(|class| class.name_any())
            });
            let Some(class) = class_name.as_deref().and_then(|name| self.classes.get(name)) else {
                return Err(format!(
                    "persistentvolumeclaim \"{name}\" is unbound and its storage class \"{}\" is not found",
                    class_name.unwrap_or_default()
                ));
            };
            if class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer") {
                return Err("pod has unbound immediate PersistentVolumeClaims".to_string());
            }
            let request = storage_request(claim);
            let taken: HashSet<&String> =
                self.assumed.iter().filter(|(c, _)| **c != key).map(|(_, v)| v).collect();
            let mut candidates: Vec<(i128, String, Vec<Term>)> = self
                .volumes
                .values()
                .filter(|volume| {
                    let Some(volume_spec) = volume.spec.as_ref() else { return false };
                    let free = volume_spec.claim_ref.as_ref().is_none_or(|r| {
                        r.namespace.as_deref() == Some(namespace) && r.name.as_deref() == Some(name.as_str())
                    });
                    let phase_ok = volume
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_none_or(|p| p == "Available");
                    let modes_ok =
                        modes.iter().all(|m| volume_spec.access_modes.iter().flatten().any(|v| v == m));
                    free && phase_ok
                        && modes_ok
                        && volume_spec.storage_class_name == class_name
                        && capacity(volume) >= request
                        && !taken.contains(&volume.name_any())
                })
                .map(|volume| (capacity(volume), volume.name_any(), volume_terms(volume)))
                .collect();
            candidates.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            let provisioned_where = (class.provisioner != NO_PROVISIONER).then(|| {
                let topologies = class.allowed_topologies.clone().unwrap_or_default();
                if topologies.is_empty() {
                    return anywhere();
                }
                topologies
                    .iter()
                    .map(|topology| Term {
                        requirements: topology
                            .match_label_expressions
                            .iter()
                            .flatten()
                            .map(|e| Requirement {
                                key: e.key.clone(),
                                operator: Operator::In,
                                values: e.values.clone(),
                            })
                            .collect(),
                        name_requirements: Vec::new(),
                    })
                    .collect()
            });
            let mut terms: Vec<Term> = candidates.iter().flat_map(|(_, _, terms)| terms.clone()).collect();
            terms.extend(provisioned_where.clone().into_iter().flatten());
            needs.rules.push(VolumeRule { terms, conflict: VolumeConflict::NoVolumeToBind });
            needs.unbound.push(Unbound {
                namespace: namespace.to_string(),
                name: name.clone(),
                uid: claim.metadata.uid.clone().unwrap_or_default(),
                candidates: candidates.into_iter().map(|(_, volume, terms)| (volume, terms)).collect(),
                provisioned_where,
            });
        }
        Ok(needs)
    }

    /// The writes that make the unbound claims usable on `node`, the volumes chosen held for
    /// their claims until seen bound; `None` if one of them has no volume there.
    pub fn writes_for(&mut self, unbound: &[Unbound], node: &Node) -> Option<Vec<VolumeWrite>> {
        let fits = |terms: &[Term]| terms.iter().any(|term| term.matches_node(&node.labels, &node.name));
        let mut writes = Vec::new();
        let mut chosen: Vec<(String, String)> = Vec::new();
        for claim in unbound {
            let key = format!("{}/{}", claim.namespace, claim.name);
            let taken = |volume: &String| chosen.iter().any(|(_, v)| v == volume);
            if let Some((volume, _)) =
                claim.candidates.iter().find(|(volume, terms)| !taken(volume) && fits(terms))
            {
                chosen.push((key, volume.clone()));
                writes.push(VolumeWrite::BindVolume {
                    volume: volume.clone(),
                    namespace: claim.namespace.clone(),
                    claim: claim.name.clone(),
                    uid: claim.uid.clone(),
                });
            } else if claim.provisioned_where.as_deref().is_some_and(fits) {
                writes.push(VolumeWrite::SelectNode {
                    namespace: claim.namespace.clone(),
                    claim: claim.name.clone(),
                    node: node.name.clone(),
                });
            } else {
                return None;
            }
        }
        self.assumed.extend(chosen);
        Some(writes)
    }

    /// Forgets volumes held for a claim whose binding is done, or failed (`claim_key`).
    pub fn release(&mut self, claim_key: &str) {
        self.assumed.remove(claim_key);
    }

    /// Drops holds the watch shows settled: the claim bound, or the volume taken by another.
    pub fn settle(&mut self) {
        let (claims, volumes) = (&self.claims, &self.volumes);
        self.assumed.retain(|claim, volume| {
            let bound = claims.get(claim).and_then(|c| c.spec.as_ref()?.volume_name.clone()).is_some();
            let exists = volumes.get(volume).is_some();
            !bound && exists
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
        serde_json::from_value(json).expect("valid object")
    }

    fn volumes_with(objects: serde_json::Value) -> Volumes {
        let mut volumes = Volumes::default();
        for claim in objects["claims"].as_array().into_iter().flatten() {
            volumes.claims.apply(watcher::Event::Apply(parse(claim.clone())));
        }
        for volume in objects["volumes"].as_array().into_iter().flatten() {
            volumes.volumes.apply(watcher::Event::Apply(parse(volume.clone())));
        }
        for class in objects["classes"].as_array().into_iter().flatten() {
            volumes.classes.apply(watcher::Event::Apply(parse(class.clone())));
        }
        volumes
    }

    fn node(name: &str, zone: &str) -> Node {
        let mut node = Node::new(name, yiyun_engine::model::Resources::default());
        node.labels.insert("kubernetes.io/hostname".into(), name.into());
        node.labels.insert("topology.kubernetes.io/zone".into(), zone.into());
        node
    }

    fn local_volume(name: &str, host: &str, size: &str) -> serde_json::Value {
        serde_json::json!({"metadata": {"name": name}, "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}
        }, "status": {"phase": "Available"}})
    }

    #[test]
    fn missing_immediate_and_read_write_once_pod_claims_keep_the_pod_waiting_with_a_reason() {
        let volumes = volumes_with(serde_json::json!({
            "claims": [
                {"metadata": {"name": "imm", "namespace": "ns"}, "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"]}},
                {"metadata": {"name": "solo", "namespace": "ns"}, "spec": {"volumeName": "pv-solo", "accessModes": ["ReadWriteOncePod"]}}
            ],
            "volumes": [{"metadata": {"name": "pv-solo"}, "spec": {"csi": {"driver": "ebs", "volumeHandle": "vol-1"}}}],
            "classes": [{"metadata": {"name": "fast"}, "provisioner": "ebs", "volumeBindingMode": "Immediate"}]
        }));
        let unused = |_: &str| false;
        assert_eq!(
            volumes.needs("ns", &["gone".into()], unused),
            Err("persistentvolumeclaim \"gone\" not found".into())
        );
        assert_eq!(
            volumes.needs("ns", &["imm".into()], unused),
            Err("pod has unbound immediate PersistentVolumeClaims".into())
        );
        assert!(
            volumes
                .needs("ns", &["solo".into()], |claim| claim == "ns/solo")
                .is_err_and(|e| e.contains("ReadWriteOncePod"))
        );
        let needs = volumes.needs("ns", &["solo".into()], unused).expect("usable");
        assert_eq!(needs.attachments, vec![Attachment { driver: "ebs".into(), volume: "vol-1".into() }]);
    }

    #[test]
    fn a_claim_waiting_for_its_first_consumer_is_bound_to_the_smallest_volume_on_the_node_chosen() {
        let mut volumes = volumes_with(serde_json::json!({
            "claims": [
                {"metadata": {"name": "data", "namespace": "ns", "uid": "u1"}, "spec": {"storageClassName": "local", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}},
                {"metadata": {"name": "more", "namespace": "ns", "uid": "u2"}, "spec": {"storageClassName": "local", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}
            ],
            "volumes": [local_volume("big-n1", "n1", "100Gi"), local_volume("small-n1", "n1", "20Gi"), local_volume("tiny-n2", "n2", "1Gi")],
            "classes": [{"metadata": {"name": "local"}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}]
        }));
        let needs = volumes.needs("ns", &["data".into()], |_| false).expect("waits for a node");
        let rule = &needs.rules[0];
        assert_eq!(rule.conflict, VolumeConflict::NoVolumeToBind);
        assert!(rule.terms.iter().any(|t| t.matches_node(&node("n1", "a").labels, "n1")));
        assert!(
            !rule.terms.iter().any(|t| t.matches_node(&node("n2", "a").labels, "n2")),
            "n2's volume is too small"
        );
        let writes = volumes.writes_for(&needs.unbound, &node("n1", "a")).expect("a volume on n1");
        assert_eq!(
            writes,
            vec![VolumeWrite::BindVolume {
                volume: "small-n1".into(),
                namespace: "ns".into(),
                claim: "data".into(),
                uid: "u1".into()
            }]
        );
        // The volume is held: the next claim gets the other one.
        let needs = volumes.needs("ns", &["more".into()], |_| false).expect("waits for a node");
        let writes = volumes.writes_for(&needs.unbound, &node("n1", "a")).expect("the other volume");
        assert!(matches!(&writes[0], VolumeWrite::BindVolume { volume, .. } if volume == "big-n1"));
        assert_eq!(volumes.writes_for(&needs.unbound, &node("n2", "a")), None, "nothing fits on n2");
    }

    #[test]
    fn a_provisioner_is_asked_for_a_volume_where_the_class_allows() {
        let mut volumes = volumes_with(serde_json::json!({
            "claims": [{"metadata": {"name": "data", "namespace": "ns"}, "spec": {"storageClassName": "zonal", "accessModes": ["ReadWriteOnce"]}}],
            "classes": [{"metadata": {"name": "zonal"}, "provisioner": "disk.csi", "volumeBindingMode": "WaitForFirstConsumer",
                "allowedTopologies": [{"matchLabelExpressions": [{"key": "topology.kubernetes.io/zone", "values": ["a"]}]}]}]
        }));
        let needs = volumes.needs("ns", &["data".into()], |_| false).expect("waits for a node");
        assert_eq!(volumes.writes_for(&needs.unbound, &node("n2", "b")), None, "zone b is not allowed");
        assert_eq!(
            volumes.writes_for(&needs.unbound, &node("n1", "a")),
            Some(vec![VolumeWrite::SelectNode {
                namespace: "ns".into(),
                claim: "data".into(),
                node: "n1".into()
            }])
        );
    }
}
