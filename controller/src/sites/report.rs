//! What a NodePool's and a ComputeSite's status say, from the nodes, pools and pods the watches
//! hold. Pure: no I/O.

use k8s_openapi::api::core::v1::{Node, Pod};
use yiyun_crds::{NodeCounts, NodePool, NodeResources};
use yiyun_quota::{Amounts, Milli, Resource};

use super::desired::{is_onboarding, pools_selecting, rack_of};

/// Why a pool is not Ready, or `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolProblem {
    pub reason: &'static str,
    pub message: String,
}

/// Counts, capacity and the Ready verdict of `pool`.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolReport {
    pub nodes: NodeCounts,
    pub capacity: NodeResources,
    pub allocated: NodeResources,
    pub problem: Option<PoolProblem>,
}

/// Every node with the pools that select it, worked out once per status pass.
pub struct Membership<'a>(Vec<(&'a Node, Vec<&'a NodePool>)>);

impl<'a> Membership<'a> {
    pub fn of(pools: &'a [&'a NodePool], nodes: &[&'a Node]) -> Self {
        Membership(nodes.iter().map(|node| (*node, pools_selecting(node, pools))).collect())
    }

    /// The nodes `pool` holds: it, and no other pool, selects them.
    pub fn members<'s>(&'s self, pool: &'s NodePool) -> impl Iterator<Item = &'a Node> + 's {
        self.0
            .iter()
            .filter(move |(_, selecting)| matches!(selecting[..], [only] if same(only, pool)))
            .map(|(n, _)| *n)
    }
}

fn same(a: &NodePool, b: &NodePool) -> bool {
    a.metadata.name == b.metadata.name
}

/// Reports on `pool`; `site_exists` tells whether its ComputeSite does.
pub fn report(
    pool: &NodePool,
    membership: &Membership,
    site_exists: bool,
    requested: &Requested,
) -> PoolReport {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let mut counts = NodeCounts::default();
    let mut capacity = Amounts::default();
    let mut allocated = Amounts::default();
    let mut conflicts: Vec<String> = Vec::new();
    for (node, selecting) in &membership.0 {
        if !selecting.iter().any(|p| same(p, pool)) {
            continue;
        }
        let node_name = node.metadata.name.clone().unwrap_or_default();
        if selecting.len() > 1 {
            let others: Vec<&str> = selecting
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .filter(|other| *other != name)
                .collect();
            conflicts.push(format!("{node_name} (also {})", others.join(", ")));
            continue;
        }
        counts.total += 1;
        if is_ready(node) {
            counts.ready += 1;
        } else {
            counts.not_ready += 1;
        }
        if is_onboarding(pool, node) {
            counts.onboarding += 1;
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
            counts.cordoned += 1;
        }
        capacity.add(&node_amounts(node.status.as_ref().and_then(|s| s.capacity.as_ref())));
        allocated.add(requested.get(&node_name).unwrap_or(&Amounts::default()));
    }
    let problem = if !site_exists {
        Some(PoolProblem {
            reason: "SiteNotFound",
            message: format!(
                "ComputeSite {:?} does not exist; the pool's nodes are left as they are",
                pool.spec.site
            ),
        })
    } else if !conflicts.is_empty() {
        let shown = conflicts.len().min(10);
        Some(PoolProblem {
            reason: "NodeConflict",
            message: format!(
                "{} node(s) selected by more than one pool are left as they were: {}{}",
                conflicts.len(),
                conflicts[..shown].join("; "),
                if conflicts.len() > shown { "; …" } else { "" }
            ),
        })
    } else {
        None
    };
    PoolReport {
        nodes: counts,
        capacity: node_resources(&capacity),
        allocated: node_resources(&allocated),
        problem,
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a ComputeSite's status says of the nodes of its pools.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteReport {
    pub nodes: i32,
    pub racks: i32,
    pub capacity: NodeResources,
    pub allocatable: NodeResources,
    pub allocated: NodeResources,
}

/// Reports on site `site`: the nodes exactly one of its pools holds, their racks and sums.
pub fn site_report(site: &str, membership: &Membership, requested: &Requested) -> SiteReport {
    let mut count = 0;
    let mut racks = std::collections::BTreeSet::new();
    let (mut capacity, mut allocatable, mut allocated) =
        (Amounts::default(), Amounts::default(), Amounts::default());
    for (node, selecting) in &membership.0 {
        let [pool] = selecting[..] else { continue };
        if pool.spec.site != site {
            continue;
        }
        count += 1;
        if let Some(rack) = rack_of(pool, node) {
            racks.insert(rack);
        }
        let status = node.status.as_ref();
        capacity.add(&node_amounts(status.and_then(|s| s.capacity.as_ref())));
        allocatable.add(&node_amounts(status.and_then(|s| s.allocatable.as_ref())));
        if let Some(requests) = node.metadata.name.as_ref().and_then(|n| requested.get(n)) {
            allocated.add(requests);
        }
    }
    SiteReport {
        nodes: count,
        racks: i32::try_from(racks.len()).unwrap_or(i32::MAX),
        capacity: node_resources(&capacity),
        allocatable: node_resources(&allocatable),
        allocated: node_resources(&allocated),
    }
}

/// Requests of the pods bound to each node, by node name.
pub type Requested = std::collections::BTreeMap<String, Amounts>;

/// Sums what the bound, unfinished pods request, node by node.
pub fn requested_by_node<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Requested {
    let mut requested = Requested::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if !finished {
            requested.entry(node).or_default().add(&pod_requests(pod));
        }
    }
    requested
}

/// What a pod reserves on its node ([`yiyun_kube::pods::requests`], as the scheduler counts
/// it) in the resources a report shows, and one pod slot.
pub fn pod_requests(pod: &Pod) -> Amounts {
    let requests = yiyun_kube::pods::requests(pod);
    let mut total: Amounts = [Resource::Cpu, Resource::Memory, Resource::Gpu]
        .into_iter()
        .filter_map(|r| Some((r, *requests.get(resource_name(r))?)))
        .collect();
    total.set(Resource::Pods, Milli::units(1));
    total
}

/// The cpu, memory, GPUs and pods of a node's capacity or allocatable list.
fn node_amounts(
    list: Option<
        &std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
) -> Amounts {
    let Some(list) = list else { return Amounts::default() };
    [Resource::Cpu, Resource::Memory, Resource::Gpu, Resource::Pods]
        .into_iter()
        .filter_map(|r| Some((r, Milli::parse(&list.get(resource_name(r))?.0).ok()?)))
        .collect()
}

/// The name Kubernetes gives a resource in a pod's requests or a node's capacity.
fn resource_name(resource: Resource) -> &'static str {
    if resource == Resource::Gpu { "nvidia.com/gpu" } else { resource.tenant_key() }
}

fn node_resources(amounts: &Amounts) -> NodeResources {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let format = |r: Resource| amounts.get(r).map(|m| Quantity(m.format(r.is_bytes())));
    NodeResources {
        cpu: format(Resource::Cpu),
        memory: format(Resource::Memory),
        gpu: format(Resource::Gpu),
        pods: format(Resource::Pods),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_saphyr::from_str(text).unwrap()
    }

    fn pool(name: &str, spec: &str) -> NodePool {
        yaml(&format!(
            "apiVersion: yiyun.io/v1alpha1\nkind: NodePool\nmetadata: {{name: {name}}}\nspec: {{site: s, {spec}}}\n"
        ))
    }

    fn node(name: &str, ready: &str, extra: &str) -> Node {
        yaml(&format!(
            "metadata: {{name: {name}, labels: {{pool: a}}}}\nspec: {{{extra}}}\nstatus: {{conditions: [{{type: Ready, status: \"{ready}\"}}], capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}}}\n"
        ))
    }

    #[test]
    fn counts_nodes_by_state_and_sums_capacity() {
        let a = pool("a", "nodeSelector: {matchLabels: {pool: a}}, approvedNodes: [n1, n2]");
        let nodes =
            [node("n1", "True", ""), node("n2", "False", "unschedulable: true"), node("n3", "True", "")];
        let refs: Vec<&Node> = nodes.iter().collect();
        let pods: Vec<Pod> = vec![
            yaml(
                "metadata: {name: web}\nspec: {nodeName: n1, containers: [{name: a, resources: {requests: {cpu: 1500m, memory: 1Gi}}}, {name: b, resources: {requests: {cpu: 500m}}}], initContainers: [{name: init, resources: {requests: {cpu: \"3\"}}}]}\n",
            ),
            yaml(
                "metadata: {name: done}\nspec: {nodeName: n2, containers: [{name: a, resources: {requests: {cpu: \"8\"}}}]}\nstatus: {phase: Succeeded}\n",
            ),
        ];
        let requested = requested_by_node(&pods);
        let pools = [&a];
        let report = report(&a, &Membership::of(&pools, &refs), true, &requested);
        let allocated = report.allocated.clone();
        assert_eq!(allocated.cpu.unwrap().0, "3", "the init container's 3 CPUs exceed the containers' 2");
        assert_eq!(allocated.memory.unwrap().0, "1Gi");
        assert_eq!(allocated.pods.unwrap().0, "1", "a finished pod holds nothing");
        assert_eq!(
            report.nodes,
            NodeCounts { total: 3, ready: 2, not_ready: 1, onboarding: 1, cordoned: 1, draining: 0 }
        );
        assert_eq!(report.capacity.cpu.unwrap().0, "96");
        assert_eq!(report.capacity.memory.unwrap().0, "768Gi");
        assert_eq!(report.problem, None);
    }

    #[test]
    fn both_pools_report_a_node_they_share_and_leave_it_out() {
        let a = pool("a", "nodeSelector: {matchLabels: {pool: a}}");
        let b = pool("b", "nodeNames: [n1]");
        let nodes = [node("n1", "True", ""), node("n2", "True", "")];
        let refs: Vec<&Node> = nodes.iter().collect();
        let pools = [&a, &b];
        let membership = Membership::of(&pools, &refs);
        let for_a = report(&a, &membership, true, &Requested::new());
        assert_eq!(for_a.nodes.total, 1);
        let problem = for_a.problem.unwrap();
        assert_eq!(problem.reason, "NodeConflict");
        assert!(problem.message.contains("n1 (also b)"), "{}", problem.message);
        let for_b = report(&b, &membership, true, &Requested::new());
        assert_eq!(membership.members(&a).count(), 1, "the shared node is nobody's member");
        assert!(for_b.problem.unwrap().message.contains("n1 (also a)"));
    }

    #[test]
    fn a_site_counts_the_nodes_and_racks_of_its_pools() {
        let a = pool("a", "nodeSelector: {matchLabels: {pool: a}}, rack: {nodes: {n1: r1, n2: r1, n3: r2}}");
        let mut other = pool("o", "nodeNames: [x]");
        other.spec.site = "elsewhere".into();
        let nodes = [node("n1", "True", ""), node("n2", "True", ""), node("n3", "False", "")];
        let refs: Vec<&Node> = nodes.iter().collect();
        let pools = [&a, &other];
        let membership = Membership::of(&pools, &refs);
        let report = site_report("s", &membership, &Requested::new());
        assert_eq!((report.nodes, report.racks), (3, 2));
        assert_eq!(report.capacity.pods.unwrap().0, "330");
        assert_eq!(site_report("elsewhere", &membership, &Requested::new()).nodes, 0);
    }

    #[test]
    fn a_missing_site_is_reported() {
        let a = pool("a", "nodeNames: [n1]");
        let problem = report(&a, &Membership::of(&[&a], &[]), false, &Requested::new()).problem.unwrap();
        assert_eq!(problem.reason, "SiteNotFound");
        assert!(problem.message.contains("\"s\""));
    }
}
