//! Groups of alike nodes: nodes of one class with the same free resources share a group, which
//! is scored once for all of them, and groups are listed in buckets by GPU model and by what their
//! GPUs can still take, so a pod only looks at the buckets that can hold it.

use std::{cell::Cell, collections::BTreeSet};

use super::{Engine, Group, NodeId, NodeSlot, ShapeKey, scoring::NOT_MEASURED};
use crate::{
    filter::NodeClass,
    gpu::{GpuFree, MAX_GPUS},
    model::{GpuRequest, Node, Pod},
};

impl Engine {
    pub(super) fn class_of(&mut self, node: &Node) -> u32 {
        let class = NodeClass::of(node);
        if let Some(&id) = self.class_ids.get(&class) {
            return id;
        }
        let id = self.classes.len() as u32;
        self.classes.push(class.clone());
        self.class_ids.insert(class, id);
        id
    }

    fn shape_of(slot: &NodeSlot) -> ShapeKey {
        ShapeKey {
            class: slot.class,
            allocatable_cpu: slot.node.allocatable.cpu_milli,
            allocatable_memory: slot.node.allocatable.memory_bytes,
            free: slot.free.clone(),
            gpus: slot.gpus.sorted(),
        }
    }

    pub(super) fn join_group(&mut self, id: NodeId, slot: &NodeSlot) -> u32 {
        let key = Self::shape_of(slot);
        let group = match self.group_ids.get(&key) {
            Some(&group) => group,
            None => {
                let model = self.classes[key.class as usize].gpu_model.clone();
                let bucket = self.model_slot(model) * GPU_BUCKETS + gpu_bucket(&key.gpus);
                let group = Group {
                    bucket,
                    position: self.buckets[bucket].len(),
                    key: key.clone(),
                    members: BTreeSet::new(),
                    fragmentation: Cell::new([(NOT_MEASURED, 0.0); 2]),
                };
                let index = match self.spare_groups.pop() {
                    Some(index) => {
                        self.groups[index as usize] = group;
                        index
                    }
                    None => {
                        self.groups.push(group);
                        self.groups.len() as u32 - 1
                    }
                };
                self.group_ids.insert(key, index);
                self.buckets[bucket].push(index);
                index
            }
        };
        self.groups[group as usize].members.insert((slot.rank, id));
        self.rankings.changed(group);
        group
    }

    /// Where the buckets of nodes with GPU `model` start, in units of `GPU_BUCKETS`.
    fn model_slot(&mut self, model: Option<String>) -> usize {
        if let Some(slot) = self.gpu_models.iter().position(|known| *known == model) {
            return slot;
        }
        self.gpu_models.push(model);
        self.buckets.resize(self.gpu_models.len() * GPU_BUCKETS, Vec::new());
        self.gpu_models.len() - 1
    }

    pub(super) fn leave_group(&mut self, id: NodeId, rank: u64, group: u32) {
        let Some(entry) = self.groups.get_mut(group as usize) else { return };
        entry.members.remove(&(rank, id));
        self.rankings.changed(group);
        if entry.members.is_empty() {
            self.group_ids.remove(&entry.key);
            let (bucket, position) = (entry.bucket, entry.position);
            let listed = &mut self.buckets[bucket];
            listed.swap_remove(position);
            if let Some(&moved) = listed.get(position) {
                self.groups[moved as usize].position = position;
            }
            self.spare_groups.push(group);
        }
    }

    /// Moves a node to the group of its new state after its free resources changed.
    pub(super) fn regroup(&mut self, id: NodeId) {
        let Some(slot) = self.nodes.get_mut(id as usize).and_then(Option::take) else { return };
        self.leave_group(id, slot.rank, slot.group);
        let mut slot = slot;
        slot.group = self.join_group(id, &slot);
        self.nodes[id as usize] = Some(slot);
    }
}

/// Groups are listed by what their GPUs can still take: the number of idle devices (0–16) and
/// the largest free amount on a device in use, in tenths of a GPU (0–9). A pod only looks at the
/// buckets that can hold it, so a full cluster is not walked for every GPU pod.
pub(super) const GPU_BUCKETS: usize = (MAX_GPUS + 1) * 10;

pub(super) fn gpu_bucket(gpus: &GpuFree) -> usize {
    let idle = gpus.devices().iter().filter(|&&free| free >= 1000).count();
    let partial = gpus.devices().iter().filter(|&&free| free < 1000).max().copied().unwrap_or(0);
    idle * 10 + usize::from(partial / 100)
}

/// For each GPU model slot, whether `pod` may use the model: a pod asking for no GPU, or not
/// pinned to models, may use any.
pub(super) fn models_allowed(gpu_models: &[Option<String>], pod: &Pod) -> Vec<bool> {
    let pinned = pod.gpu.milli() > 0 && !pod.gpu_models.is_empty();
    gpu_models
        .iter()
        .map(|model| !pinned || model.as_ref().is_some_and(|model| pod.gpu_models.contains(model)))
        .collect()
}

/// Buckets whose groups may hold a pod asking for `request`: of the GPU models it may use
/// (`allowed`, by slot), with room for its GPUs.
pub(super) fn eligible_buckets(allowed: &[bool], request: GpuRequest) -> impl Iterator<Item = usize> + '_ {
    allowed
        .iter()
        .enumerate()
        .filter(|(_, allowed)| **allowed)
        .flat_map(move |(model, _)| model_buckets(model, request))
}

/// The buckets of the GPU model in slot `model` whose groups may fit `request`.
pub(super) fn model_buckets(model: usize, request: GpuRequest) -> std::ops::Range<usize> {
    let end = (model + 1) * GPU_BUCKETS;
    (model * GPU_BUCKETS + first_fitting_bucket(request)).min(end)..end
}

/// The first of a GPU model's buckets whose groups may fit `request`: buckets go by idle
/// devices, then by the largest free amount on a device in use (in tenths), so no group in an
/// earlier bucket can.
pub(super) fn first_fitting_bucket(request: GpuRequest) -> usize {
    match request {
        GpuRequest::None => 0,
        GpuRequest::Whole(count) => usize::from(count) * 10,
        GpuRequest::Fraction(milli) => usize::from(milli / 100),
    }
}
