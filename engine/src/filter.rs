//! Filters with the Kubernetes semantics users rely on, each failing with a [`Reason`] that the
//! explanation of an unplaced pod counts.

use std::{collections::BTreeMap, fmt};

use crate::model::{HOSTNAME, Node, Pod, Requirement, Shortage, Taint, TaintEffect, Term, VolumeConflict};

/// Why a node cannot take a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Cordoned,
    UntoleratedTaint(String),
    NodeSelector,
    NodeAffinity,
    GpuModel,
    /// The node is dedicated to a tenant outside the pod's tenant's line.
    DedicatedToOther(String),
    /// The pod's tenant may not use the node's region.
    RegionNotAllowed(String),
    /// The node's site is beyond the latency limit of a realtime pod from its data.
    LatencyLimit,
    /// Moving the data to the node's site and running there misses the pod's deadline.
    Deadline,
    Insufficient(Shortage),
    InsufficientGpu,
    /// Held for a gang that starts before the pod would finish.
    Reserved,
    /// Node name, `matchFields` or a `kubernetes.io/hostname` selector names another node.
    NodeName,
    HostPort,
    PodAffinity,
    PodAntiAffinity,
    /// A pod already there has anti-affinity to this one.
    ExistingAntiAffinity,
    TopologySpread,
    /// The node lacks the label a spread constraint counts by.
    TopologySpreadLabel,
    Volume(VolumeConflict),
    /// Attaching the pod's volumes would pass a CSI driver's limit on the node.
    VolumeLimit,
    /// The node has not the free devices the pod's resource claims ask for.
    Devices,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Cordoned => write!(f, "cordoned"),
            Reason::UntoleratedTaint(key) => write!(f, "untolerated taint {key}"),
            Reason::NodeSelector => write!(f, "node selector mismatch"),
            Reason::NodeAffinity => write!(f, "node affinity mismatch"),
            Reason::GpuModel => write!(f, "GPU model not allowed"),
            Reason::DedicatedToOther(tenant) => write!(f, "dedicated to tenant {tenant}"),
            Reason::RegionNotAllowed(region) => write!(f, "region {region} not allowed for the tenant"),
            Reason::LatencyLimit => write!(f, "site beyond the realtime latency limit"),
            Reason::Deadline => write!(f, "site misses the deadline"),
            Reason::Insufficient(Shortage::Pods) => write!(f, "too many pods"),
            Reason::Insufficient(Shortage::Cpu) => write!(f, "insufficient cpu"),
            Reason::Insufficient(Shortage::Memory) => write!(f, "insufficient memory"),
            Reason::Insufficient(Shortage::Extended(name)) => write!(f, "insufficient {name}"),
            Reason::InsufficientGpu => write!(f, "insufficient nvidia.com/gpu"),
            Reason::Reserved => write!(f, "reserved for a gang"),
            Reason::NodeName => write!(f, "didn't match the requested node name"),
            Reason::HostPort => write!(f, "didn't have free ports for the requested pod ports"),
            Reason::PodAffinity => write!(f, "didn't match pod affinity rules"),
            Reason::PodAntiAffinity => write!(f, "didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => write!(f, "didn't satisfy existing pods anti-affinity rules"),
            Reason::TopologySpread => write!(f, "didn't match pod topology spread constraints"),
            Reason::TopologySpreadLabel => {
                write!(f, "didn't match pod topology spread constraints (missing required label)")
            }
            Reason::Volume(VolumeConflict::NodeAffinity) => write!(f, "had volume node affinity conflict"),
            Reason::Volume(VolumeConflict::Zone) => write!(f, "had no available volume zone"),
            Reason::Volume(VolumeConflict::NoVolumeToBind) => {
                write!(f, "didn't find available persistent volumes to bind")
            }
            Reason::VolumeLimit => write!(f, "exceed max volume count"),
            Reason::Devices => write!(f, "cannot allocate all claims"),
        }
    }
}

impl Reason {
    /// A short, stable name of the reason's kind (no tenant, taint or resource names), for
    /// metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Cordoned => "cordoned",
            Reason::UntoleratedTaint(_) => "taint",
            Reason::NodeSelector => "node_selector",
            Reason::NodeAffinity => "node_affinity",
            Reason::GpuModel => "gpu_model",
            Reason::DedicatedToOther(_) => "dedicated",
            Reason::RegionNotAllowed(_) => "region",
            Reason::LatencyLimit => "latency",
            Reason::Deadline => "deadline",
            Reason::Insufficient(Shortage::Pods) => "insufficient_pods",
            Reason::Insufficient(Shortage::Cpu) => "insufficient_cpu",
            Reason::Insufficient(Shortage::Memory) => "insufficient_memory",
            Reason::Insufficient(Shortage::Extended(_)) => "insufficient_extended",
            Reason::InsufficientGpu => "insufficient_gpu",
            Reason::Reserved => "reserved",
            Reason::NodeName => "node_name",
            Reason::HostPort => "host_port",
            Reason::PodAffinity => "pod_affinity",
            Reason::PodAntiAffinity | Reason::ExistingAntiAffinity => "pod_anti_affinity",
            Reason::TopologySpread | Reason::TopologySpreadLabel => "topology_spread",
            Reason::Volume(_) | Reason::VolumeLimit => "volumes",
            Reason::Devices => "devices",
        }
    }
}

/// What of a node never changes while pods come and go: nodes alike in all of it pass the
/// same filters, so the engine filters classes of nodes rather than nodes. The label every node
/// has its own value of (`kubernetes.io/hostname`) is left out, or each node would be a class;
/// rules that name it are checked node by node (see [`names_nodes`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeClass {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub region: String,
    pub region_class: String,
    pub site: String,
    pub gpu_model: Option<String>,
    pub dedicated_to: Option<String>,
}

/// What a pod's tenant may use, from the tenant tree.
#[derive(Clone, Debug, Default)]
pub struct TenantScope<'a> {
    /// The region lists of the tenant and its ancestors: a node's region or region class must
    /// be in each.
    pub region_rules: Vec<&'a [String]>,
    /// The tenant and its ancestors, whose dedicated nodes the pod may use; `None` for a pod
    /// outside every tenant (a system namespace), which dedication does not restrict.
    pub lineage: Option<Vec<&'a str>>,
}

impl NodeClass {
    pub fn of(node: &Node) -> NodeClass {
        let mut labels = node.labels.clone();
        labels.remove(HOSTNAME);
        NodeClass {
            labels,
            taints: node.taints.clone(),
            unschedulable: node.unschedulable,
            region: node.topology.region.clone(),
            region_class: node.topology.region_class.clone(),
            site: node.topology.site.clone(),
            gpu_model: node.gpu_model.clone(),
            dedicated_to: node.dedicated_to.clone(),
        }
    }

    /// The first filter that rejects `pod` on nodes of this class, in the order kube-scheduler
    /// reports them.
    pub fn reject(&self, pod: &Pod, scope: &TenantScope) -> Option<Reason> {
        if self.unschedulable && !tolerates_unschedulable(pod) {
            return Some(Reason::Cordoned);
        }
        if let Some(taint) = self.taints.iter().find(|taint| {
            taint.effect != TaintEffect::PreferNoSchedule
                && !pod.tolerations.iter().any(|toleration| toleration.tolerates(taint))
        }) {
            return Some(Reason::UntoleratedTaint(taint.key.clone()));
        }
        // Tolerating the dedication taint is not enough: the node must be the pod's tenant's.
        if let (Some(owner), Some(lineage)) = (&self.dedicated_to, &scope.lineage)
            && !lineage.contains(&owner.as_str())
        {
            return Some(Reason::DedicatedToOther(owner.clone()));
        }
        if !self.selected_by(pod) {
            return Some(
                if pod
                    .node_selector
                    .iter()
                    .any(|(key, value)| !per_node(key) && self.labels.get(key) != Some(value))
                {
                    Reason::NodeSelector
                } else {
                    Reason::NodeAffinity
                },
            );
        }
        if let Some(rule) =
            pod.volume_rules.iter().find(|rule| !rule.terms.iter().any(|term| self.admits_term(term)))
        {
            return Some(Reason::Volume(rule.conflict));
        }
        if pod.gpu.milli() > 0
            && !pod.gpu_models.is_empty()
            && !self.gpu_model.as_ref().is_some_and(|model| pod.gpu_models.contains(model))
        {
            return Some(Reason::GpuModel);
        }
        // A tenant names regions (`anhui`) or region classes (`east`).
        if scope
            .region_rules
            .iter()
            .any(|allowed| !allowed.contains(&self.region) && !allowed.contains(&self.region_class))
        {
            return Some(Reason::RegionNotAllowed(self.region.clone()));
        }
        None
    }

    /// Whether nodes of this class match the pod's node selector and required node affinity,
    /// as far as a class tells: what names single nodes is checked by [`names_nodes`].
    pub fn selected_by(&self, pod: &Pod) -> bool {
        pod.node_selector.iter().all(|(key, value)| per_node(key) || self.labels.get(key) == Some(value))
            && (pod.required_terms.is_empty() || pod.required_terms.iter().any(|term| self.admits_term(term)))
    }

    /// Whether nodes of this class may match a node-selector term, as far as a class tells.
    fn admits_term(&self, term: &Term) -> bool {
        term.requirements.iter().all(|r| per_node(&r.key) || r.matches(&self.labels))
    }

    /// Whether the pod tolerates every NoSchedule and NoExecute taint of the class.
    pub fn tolerated_by(&self, pod: &Pod) -> bool {
        self.taints.iter().all(|taint| {
            taint.effect == TaintEffect::PreferNoSchedule
                || pod.tolerations.iter().any(|toleration| toleration.tolerates(taint))
        })
    }

    /// Preferred node affinity and PreferNoSchedule taints, as kube-scheduler weighs them:
    /// the sum of the weights of matching preferred terms, less one per untolerated
    /// PreferNoSchedule taint. Terms that name single nodes are weighed node by node.
    pub fn preference(&self, pod: &Pod) -> i64 {
        let preferred: i64 = pod
            .preferred_terms
            .iter()
            .filter(|(_, term)| !names_nodes(term) && term.matches(&self.labels))
            .map(|(weight, _)| i64::from(*weight))
            .sum();
        let avoided = self
            .taints
            .iter()
            .filter(|taint| {
                taint.effect == TaintEffect::PreferNoSchedule
                    && !pod.tolerations.iter().any(|toleration| toleration.tolerates(taint))
            })
            .count() as i64;
        preferred - avoided
    }
}

/// Whether a label is one every node has its own value of, so classes do not hold it.
fn per_node(key: &str) -> bool {
    key == HOSTNAME
}

/// Whether a node-selector term names single nodes (by `matchFields` or the hostname label),
/// so that only the node itself can say whether it matches.
pub fn names_nodes(term: &Term) -> bool {
    !term.name_requirements.is_empty() || term.requirements.iter().any(|r: &Requirement| per_node(&r.key))
}

/// DaemonSet-style pods tolerate `node.kubernetes.io/unschedulable`.
fn tolerates_unschedulable(pod: &Pod) -> bool {
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".to_string(),
        value: String::new(),
        effect: TaintEffect::NoSchedule,
    };
    pod.tolerations.iter().any(|toleration| toleration.tolerates(&taint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Operator, Requirement, Resources, Term, Toleration, TolerationOperator};

    fn class() -> NodeClass {
        let mut node = Node::new("n1", Resources::new(8000, 1 << 34));
        node.labels.insert("zone".into(), "a".into());
        node.labels.insert("gen".into(), "5".into());
        node.taints.push(Taint {
            key: "yiyun.io/dedicated".into(),
            value: "wuhu-dsj".into(),
            effect: TaintEffect::NoSchedule,
        });
        node.topology.region = "anhui".into();
        node.dedicated_to = Some("wuhu-dsj".into());
        NodeClass::of(&node)
    }

    fn tolerating(pod: &mut Pod) {
        pod.tolerations.push(Toleration {
            key: "yiyun.io/dedicated".into(),
            operator: TolerationOperator::Equal,
            value: "wuhu-dsj".into(),
            effect: Some(TaintEffect::NoSchedule),
        });
    }

    fn in_regions(regions: &[String]) -> TenantScope<'_> {
        TenantScope { region_rules: vec![regions], lineage: None }
    }

    fn requirement(key: &str, operator: Operator, values: &[&str]) -> Term {
        Term {
            requirements: vec![Requirement {
                key: key.into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
            name_requirements: Vec::new(),
        }
    }

    #[test]
    fn taints_must_be_tolerated() {
        let mut pod = Pod::new("p", Resources::new(100, 0));
        assert_eq!(
            class().reject(&pod, &TenantScope::default()),
            Some(Reason::UntoleratedTaint("yiyun.io/dedicated".into()))
        );
        tolerating(&mut pod);
        assert_eq!(class().reject(&pod, &TenantScope::default()), None);
    }

    #[test]
    fn a_dedicated_node_takes_only_its_tenants_subtree_however_it_tolerates() {
        let mut pod = Pod::new("p", Resources::new(100, 0));
        tolerating(&mut pod);
        let of = |lineage: &[&'static str]| TenantScope {
            region_rules: Vec::new(),
            lineage: Some(lineage.to_vec()),
        };
        assert_eq!(
            class().reject(&pod, &of(&["qianjiang", "hubei"])),
            Some(Reason::DedicatedToOther("wuhu-dsj".into()))
        );
        assert_eq!(class().reject(&pod, &of(&["wuhu-dsj", "anhui"])), None, "the tenant itself");
        assert_eq!(class().reject(&pod, &of(&["wuhu-dsj-team", "wuhu-dsj", "anhui"])), None, "its subtree");
        assert_eq!(class().reject(&pod, &TenantScope::default()), None, "a system namespace's pod");
    }

    #[test]
    fn affinity_operators_follow_kubernetes() {
        let mut pod = Pod::new("p", Resources::new(100, 0));
        tolerating(&mut pod);
        let cases = [
            (requirement("zone", Operator::In, &["a", "b"]), true),
            (requirement("zone", Operator::NotIn, &["a"]), false),
            (requirement("missing", Operator::NotIn, &["a"]), true),
            (requirement("zone", Operator::Exists, &[]), true),
            (requirement("zone", Operator::DoesNotExist, &[]), false),
            (requirement("gen", Operator::Gt, &["4"]), true),
            (requirement("gen", Operator::Lt, &["5"]), false),
            (requirement("zone", Operator::Gt, &["1"]), false),
        ];
        for (term, admitted) in cases {
            pod.required_terms = vec![term.clone()];
            let rejected = class().reject(&pod, &TenantScope::default());
            assert_eq!(rejected.is_none(), admitted, "{term:?}");
        }
        // Terms are ORed.
        pod.required_terms =
            vec![requirement("zone", Operator::In, &["x"]), requirement("zone", Operator::In, &["a"])];
        assert_eq!(class().reject(&pod, &TenantScope::default()), None);
    }

    #[test]
    fn cordoned_nodes_regions_and_models_are_filtered() {
        let mut pod = Pod::new("p", Resources::new(100, 0));
        tolerating(&mut pod);
        let mut cordoned = class();
        cordoned.unschedulable = true;
        assert_eq!(cordoned.reject(&pod, &TenantScope::default()), Some(Reason::Cordoned));
        let regions = vec!["gansu".to_string()];
        assert_eq!(
            class().reject(&pod, &in_regions(&regions)),
            Some(Reason::RegionNotAllowed("anhui".into()))
        );
        let mut east = class();
        east.region_class = "east".into();
        assert_eq!(
            east.reject(&pod, &in_regions(&["east".to_string()])),
            None,
            "a region class names the region too"
        );
        let (east_only, gansu) = (["east".to_string()], ["gansu".to_string(), "anhui".to_string()]);
        let scope = TenantScope { region_rules: vec![&east_only, &gansu], lineage: None };
        assert_eq!(east.reject(&pod, &scope), None, "in every list");
        let west_child = ["gansu".to_string()];
        let scope = TenantScope { region_rules: vec![&east_only, &west_child], lineage: None };
        assert!(east.reject(&pod, &scope).is_some(), "a child cannot widen its parent's regions");
        pod.gpu = crate::model::GpuRequest::Whole(1);
        pod.gpu_models = vec!["A100".into()];
        assert_eq!(class().reject(&pod, &TenantScope::default()), Some(Reason::GpuModel));
        pod.node_selector.insert("zone".into(), "b".into());
        assert_eq!(class().reject(&pod, &TenantScope::default()), Some(Reason::NodeSelector));
    }
}
