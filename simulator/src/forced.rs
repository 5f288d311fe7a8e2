//! Pods no policy could have placed: a lower bound on the GPUs any scheduler turns away from a
//! pod list on a node list, so that what a policy loses can be told apart from what the list
//! loses on those nodes whatever places it.

use std::collections::{BTreeMap, HashMap};

use yiyun_engine::{
    filter::{NodeClass, TenantScope},
    gpu::GpuFree,
    model::{GpuRequest, Node, Pod, Resources},
};

/// Kinds of node-filling pods that share nodes, beyond which not every set of them is tried:
/// then each kind alone and all of them together are (still a bound, perhaps a looser one).
const KINDS_TRIED_IN_FULL: usize = 16;

/// Whether `pod` fits `node` (of `class`) with nothing else on it, by the engine's own filters.
/// Tenant rules and what names single nodes are left out: they only keep pods off more nodes,
/// which keeps the bound below what is possible.
fn fits_empty(class: &NodeClass, node: &Node, pod: &Pod) -> bool {
    class.reject(pod, &TenantScope::default()).is_none()
        && node.allocatable.first_shortage(&pod.requests).is_none()
        && GpuFree::idle(node.gpus).fits(pod.gpu)
}

/// Pods of one kind that each need more than half the GPUs of every node they fit on, so no two
/// of them (of any such kind) share a node.
#[derive(Debug)]
struct FillingKind {
    /// The kinds of node they fit on (indexes into the node kinds).
    fits: Vec<usize>,
    gpu_milli: u64,
    arrived: u64,
}

/// GPU milli of `pods` (all of them tried, in any order) that no placement on `nodes` could
/// have held: pods that fit no node, and pods beyond the nodes there are for them among those
/// that fill a node's GPUs more than half. Such pods take a node each, so of any set of their
/// kinds, as many as outnumber the nodes any of them fits are turned away (Hall's condition),
/// whatever the policy and whatever else arrives.
pub fn forced_away_milli(nodes: &[Node], pods: &[Pod]) -> u64 {
    // Nodes alike for fitting, with how many of each.
    let mut kind_of: HashMap<(NodeClass, &Resources, u8), usize> = HashMap::new();
    let mut node_kinds: Vec<(NodeClass, &Node, u64)> = Vec::new();
    for node in nodes {
        let class = NodeClass::of(node);
        let kind = *kind_of.entry((class.clone(), &node.allocatable, node.gpus)).or_insert_with(|| {
            node_kinds.push((class, node, 0));
            node_kinds.len() - 1
        });
        node_kinds[kind].2 += 1;
    }
    let mut forced = 0;
    let mut filling: BTreeMap<(Vec<usize>, u64), u64> = BTreeMap::new();
    for pod in pods.iter().filter(|pod| pod.gpu.milli() > 0) {
        let fits: Vec<usize> = (0..node_kinds.len())
            .filter(|&kind| fits_empty(&node_kinds[kind].0, node_kinds[kind].1, pod))
            .collect();
        if fits.is_empty() {
            forced += pod.gpu.milli();
        } else if let GpuRequest::Whole(count) = pod.gpu
            && fits.iter().all(|&kind| 2 * u16::from(count) > u16::from(node_kinds[kind].1.gpus))
        {
            *filling.entry((fits, pod.gpu.milli())).or_insert(0) += 1;
        }
    }
    let kinds =
        filling.into_iter().map(|((fits, gpu_milli), arrived)| FillingKind { fits, gpu_milli, arrived });
    let counts: Vec<u64> = node_kinds.iter().map(|(_, _, count)| *count).collect();
    forced + sharing_nodes(kinds.collect()).iter().map(|group| turned_away(group, &counts)).sum::<u64>()
}

/// `kinds` split into groups that share no node kind, so that their bounds add up.
fn sharing_nodes(kinds: Vec<FillingKind>) -> Vec<Vec<FillingKind>> {
    let mut groups: Vec<Vec<FillingKind>> = Vec::new();
    for kind in kinds {
        let (mut joined, rest): (Vec<_>, Vec<_>) = groups.into_iter().partition(|group| {
            group.iter().any(|other| other.fits.iter().any(|node| kind.fits.contains(node)))
        });
        let mut group: Vec<FillingKind> = joined.drain(..).flatten().collect();
        group.push(kind);
        groups = rest;
        groups.push(group);
    }
    groups
}

/// The most GPU milli a group of node-filling kinds must turn away: over sets of its kinds, the
/// pods beyond the nodes the set fits, each asking at least the set's smallest request.
fn turned_away(group: &[FillingKind], node_counts: &[u64]) -> u64 {
    let beyond = |set: &[&FillingKind]| -> u64 {
        let mut nodes: Vec<usize> = set.iter().flat_map(|kind| kind.fits.iter().copied()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let room: u64 = nodes.iter().map(|&node| node_counts[node]).sum();
        let arrived: u64 = set.iter().map(|kind| kind.arrived).sum();
        let smallest = set.iter().map(|kind| kind.gpu_milli).min().unwrap_or(0);
        arrived.saturating_sub(room) * smallest
    };
    if group.len() > KINDS_TRIED_IN_FULL {
        let all: Vec<&FillingKind> = group.iter().collect();
        return group.iter().map(|kind| beyond(&[kind])).chain([beyond(&all)]).max().unwrap_or(0);
    }
    (1..1usize << group.len())
        .map(|members| {
            let set: Vec<&FillingKind> = group
                .iter()
                .enumerate()
                .filter(|(index, _)| members >> index & 1 == 1)
                .map(|(_, kind)| kind)
                .collect();
            beyond(&set)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpu: u64, gpus: u8, model: &str) -> Node {
        let mut node = Node::new("n", Resources::new(cpu * 1000, 512 << 30));
        node.gpus = gpus;
        node.gpu_model = Some(model.to_string());
        node
    }

    fn pods(count: usize, cpu: u64, gpu: GpuRequest) -> Vec<Pod> {
        (0..count)
            .map(|index| {
                let mut pod = Pod::new(format!("p{index}"), Resources::new(cpu * 1000, 1 << 30));
                pod.gpu = gpu;
                pod
            })
            .collect()
    }

    /// One large eight-GPU node and two smaller ones.
    fn eight_gpu_nodes() -> Vec<Node> {
        vec![node(128, 8, "G3"), node(96, 8, "G2"), node(96, 8, "G2")]
    }

    #[test]
    fn pods_that_need_a_whole_node_beyond_the_nodes_they_fit_are_forced_away() {
        // Three pods fit only the large node: two of them cannot be placed.
        assert_eq!(forced_away_milli(&eight_gpu_nodes(), &pods(3, 120, GpuRequest::Whole(8))), 16_000);
        // Pods that fit every node compete for the same nodes: with two of those as well, the
        // five need three nodes.
        let mut list = pods(3, 120, GpuRequest::Whole(8));
        list.extend(pods(2, 64, GpuRequest::Whole(8)));
        assert_eq!(forced_away_milli(&eight_gpu_nodes(), &list), 16_000);
        list.extend(pods(1, 64, GpuRequest::Whole(8)));
        assert_eq!(forced_away_milli(&eight_gpu_nodes(), &list), 24_000);
    }

    #[test]
    fn pods_that_fit_no_node_are_forced_away_and_pods_that_can_share_a_node_are_not() {
        let mut list = pods(1, 200, GpuRequest::Whole(1));
        list.extend(pods(1, 8, GpuRequest::Whole(16)));
        // Fractions, single GPUs and half nodes can share a node: none is forced, however many.
        list.extend(pods(50, 8, GpuRequest::Whole(4)));
        list.extend(pods(50, 8, GpuRequest::Fraction(500)));
        assert_eq!(forced_away_milli(&eight_gpu_nodes(), &list), 1_000 + 16_000);
    }

    #[test]
    fn a_pod_pinned_to_a_gpu_model_only_counts_the_nodes_of_that_model() {
        let mut list = pods(2, 8, GpuRequest::Whole(8));
        for pod in &mut list {
            pod.gpu_models = vec!["G3".to_string()];
        }
        assert_eq!(forced_away_milli(&eight_gpu_nodes(), &list), 8_000);
    }

    #[test]
    fn many_kinds_sharing_nodes_are_still_bounded_all_together() {
        // More kinds than are tried set by set: one pod of each, asking 8 GPUs and 1–17 CPUs.
        let list: Vec<Pod> =
            (1..=KINDS_TRIED_IN_FULL as u64 + 1).flat_map(|cpu| pods(1, cpu, GpuRequest::Whole(8))).collect();
        assert_eq!(forced_away_milli(&eight_gpu_nodes(), &list), (list.len() as u64 - 3) * 8_000);
    }

    #[test]
    fn kinds_on_separate_nodes_add_up() {
        let nodes = vec![node(128, 8, "G3"), node(16, 1, "P100")];
        let mut list = pods(2, 120, GpuRequest::Whole(8));
        let mut pinned = pods(3, 8, GpuRequest::Whole(1));
        for pod in &mut pinned {
            pod.gpu_models = vec!["P100".to_string()];
        }
        list.extend(pinned);
        // One eight-GPU pod and two one-GPU pods pinned to the one-GPU node have no node.
        assert_eq!(forced_away_milli(&nodes, &list), 8_000 + 2_000);
    }
}
