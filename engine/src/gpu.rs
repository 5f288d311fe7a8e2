//! GPU devices of a node and the fragmentation measure of the FGD paper (Weng et al., "Beware of
//! Fragmentation", USENIX ATC '23): given the workload expected to arrive, how much of a node's
//! free GPU capacity no typical pod could use.

use crate::model::{GPU_MILLI, GpuRequest};

/// Most GPU devices one node may carry.
pub const MAX_GPUS: usize = 16;

/// Free milli of each GPU device of a node, in device order. Fixed size, so copying it and
/// using it in hash keys never allocates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GpuFree {
    len: u8,
    free: [u16; MAX_GPUS],
}

impl GpuFree {
    /// `count` idle devices (at most [`MAX_GPUS`]).
    pub fn idle(count: u8) -> Self {
        let len = count.min(MAX_GPUS as u8);
        let mut free = [0; MAX_GPUS];
        free[..usize::from(len)].fill(GPU_MILLI as u16);
        GpuFree { len, free }
    }

    pub fn devices(&self) -> &[u16] {
        &self.free[..usize::from(self.len)]
    }

    pub fn total(&self) -> u64 {
        self.devices().iter().map(|&milli| u64::from(milli)).sum()
    }

    /// The same multiset of free amounts, largest first: devices are interchangeable for
    /// scoring, so nodes differing only in which device is busy share one shape.
    pub fn sorted(&self) -> GpuFree {
        let mut sorted = *self;
        sorted.free[..usize::from(self.len)].sort_unstable_by(|a, b| b.cmp(a));
        sorted
    }

    /// Whether `request` fits on these devices.
    pub fn fits(&self, request: GpuRequest) -> bool {
        let (count, milli) = request.per_device();
        count == 0 || self.devices().iter().filter(|&&free| free >= milli).count() >= usize::from(count)
    }

    /// Applies an allocation made of (device, milli) pairs.
    pub fn take(&mut self, allocation: &[(u8, u16)]) {
        for &(device, milli) in allocation {
            if let Some(free) = self.free[..usize::from(self.len)].get_mut(usize::from(device)) {
                *free = free.saturating_sub(milli);
            }
        }
    }

    /// Returns an allocation taken before.
    pub fn give_back(&mut self, allocation: &[(u8, u16)]) {
        for &(device, milli) in allocation {
            if let Some(free) = self.free[..usize::from(self.len)].get_mut(usize::from(device)) {
                *free = free.saturating_add(milli).min(GPU_MILLI as u16);
            }
        }
    }

    /// Whole devices: the lowest-numbered idle ones. A fraction: the device given, which must
    /// have room. None when the request does not fit.
    pub fn allocation(&self, request: GpuRequest, fraction_device: Option<u8>) -> Option<Vec<(u8, u16)>> {
        match request {
            GpuRequest::None => Some(Vec::new()),
            GpuRequest::Whole(count) => {
                let idle: Vec<(u8, u16)> = (0..self.len)
                    .filter(|&device| self.free[usize::from(device)] == GPU_MILLI as u16)
                    .take(usize::from(count))
                    .map(|device| (device, GPU_MILLI as u16))
                    .collect();
                (idle.len() == usize::from(count)).then_some(idle)
            }
            GpuRequest::Fraction(milli) => {
                let device = fraction_device?;
                (self.devices().get(usize::from(device)).is_some_and(|&free| free >= milli))
                    .then(|| vec![(device, milli)])
            }
        }
    }

    /// Where `request` goes on these devices with nothing else to go by: the lowest idle
    /// devices for whole GPUs, the tightest device that fits for a fraction.
    pub fn tightest_allocation(&self, request: GpuRequest) -> Option<Vec<(u8, u16)>> {
        let device = match request {
            GpuRequest::Fraction(milli) => self.tightest_with_room(milli).map(|(device, _)| device),
            _ => None,
        };
        self.allocation(request, device)
    }

    /// Of the devices with at least `milli` free, the one with the least (the first of equals),
    /// and its free milli.
    pub fn tightest_with_room(&self, milli: u16) -> Option<(u8, u16)> {
        self.devices()
            .iter()
            .enumerate()
            .filter(|(_, free)| **free >= milli)
            .min_by_key(|(_, free)| **free)
            .and_then(|(device, &free)| Some((u8::try_from(device).ok()?, free)))
    }

    /// The lowest-numbered device with exactly `free` milli free.
    pub fn device_with(&self, free: u16) -> Option<u8> {
        self.devices().iter().position(|&milli| milli == free).and_then(|device| u8::try_from(device).ok())
    }
}

/// One kind of pod expected to arrive, and how often (weights sum to 1).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadShape {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub gpu: GpuRequest,
    /// GPU models it may use; empty for any.
    pub gpu_models: Vec<String>,
    pub weight: f64,
}

impl WorkloadShape {
    /// What tells it apart from other typical pods.
    pub fn shape(&self) -> Shape {
        Shape { cpu_milli: self.cpu_milli, gpu: self.gpu, gpu_models: self.gpu_models.clone() }
    }
}

/// The distribution of pods expected to arrive, against which fragmentation is measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    shapes: Vec<WorkloadShape>,
    /// The shapes as nodes of each GPU model see them: the models pinned shapes name, then one
    /// view for every other model (and nodes without one).
    views: Vec<ModelView>,
    /// The CPU and memory amounts the measure compares a node's free CPU and memory with (what
    /// one shape, or two one after the other, need), ascending from 0.
    cpu_steps: Vec<u64>,
    memory_steps: Vec<u64>,
    /// CPU milli the GPU shapes ask for per GPU milli, weighted by popularity.
    cpu_per_gpu: Option<f64>,
    /// CPU milli all the shapes ask for per GPU milli, weighted by popularity.
    cpu_asked_per_gpu: Option<f64>,
}

/// Which typical pods can use a node's GPUs, for nodes of one GPU model: measuring a node only
/// visits those, so shapes pinned to other models cost nothing.
#[derive(Clone, Debug, Default, PartialEq)]
struct ModelView {
    /// None: any model no shape names.
    model: Option<String>,
    /// GPU shapes allowed on the model, by the GPUs they ask for.
    usable: Vec<RequestGroup>,
    /// Weight of the shapes without GPUs: they use none of the GPUs, but take CPU and memory.
    cpu_only_weight: f64,
    /// Weight of the GPU shapes pinned to other models, which can never use these GPUs.
    pinned_elsewhere: f64,
    /// Weight of all shapes (1 but for rounding).
    weight: f64,
    /// For each two request groups (`first * usable.len() + second`), a need of the first and
    /// one of the second after it: the CPU both take and the product of their weights. The
    /// lookahead asks, for every group, which pairs a node's CPU holds.
    pairs: Vec<ByCpu>,
}

/// Weights of CPU amounts, ascending, with the weight of all amounts up to each: how much of
/// them a node's free CPU holds is one binary search.
#[derive(Clone, Debug, Default, PartialEq)]
struct ByCpu {
    cpus: Vec<u64>,
    cumulative: Vec<f64>,
}

impl ByCpu {
    /// Adds `weight` at `cpu`, which must not be below the amounts added before.
    fn push(&mut self, cpu: u64, weight: f64) {
        let total = self.cumulative.last().copied().unwrap_or(0.0) + weight;
        if self.cpus.last() == Some(&cpu) {
            if let Some(last) = self.cumulative.last_mut() {
                *last = total;
            }
        } else {
            self.cpus.push(cpu);
            self.cumulative.push(total);
        }
    }

    /// How many amounts `cpu_free` holds, and their weight.
    fn held(&self, cpu_free: u64) -> (usize, f64) {
        let held = self.cpus.partition_point(|&cpu| cpu <= cpu_free);
        (held, held.checked_sub(1).map_or(0.0, |last| self.cumulative[last]))
    }

    /// The needs of `first` followed by those of `second`.
    fn of_pairs(first: &RequestGroup, second: &RequestGroup) -> ByCpu {
        let mut pairs: Vec<(u64, f64)> = first
            .needs
            .iter()
            .flat_map(|a| second.needs.iter().map(move |b| (a.cpu_milli + b.cpu_milli, a.weight * b.weight)))
            .collect();
        pairs.sort_by_key(|&(cpu, _)| cpu);
        let mut by_cpu = ByCpu::default();
        for (cpu, weight) in pairs {
            by_cpu.push(cpu, weight);
        }
        by_cpu
    }
}

/// The usable shapes that ask for one GPU request: which devices they cannot use is the same
/// for all, and the ones a node's CPU holds are a prefix by CPU.
#[derive(Clone, Debug, Default, PartialEq)]
struct RequestGroup {
    gpu: GpuRequest,
    /// The CPU and memory the shapes ask for, by CPU ascending, with their weights: shapes that
    /// differ only in the models they name are measured alike on one model, so they are one
    /// entry (pinned pods repeat unpinned shapes).
    needs: Vec<Need>,
    /// The needs' weights by CPU, one entry per need.
    by_cpu: ByCpu,
    weight: f64,
    /// Most memory any of them asks for: a node with that much free is answered by CPU alone.
    memory: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Need {
    cpu_milli: u64,
    memory_bytes: u64,
    weight: f64,
}

impl RequestGroup {
    /// Weight of the shapes that `cpu_free` and `memory_free` hold.
    fn fitting(&self, cpu_free: u64, memory_free: u64) -> f64 {
        let (held, weight) = self.by_cpu.held(cpu_free);
        if memory_free >= self.memory {
            return weight;
        }
        self.needs[..held]
            .iter()
            .filter(|need| need.memory_bytes <= memory_free)
            .map(|need| need.weight)
            .sum()
    }
}

impl Workload {
    pub(crate) fn new(shapes: Vec<WorkloadShape>) -> Workload {
        let mut named: Vec<Option<String>> =
            shapes.iter().flat_map(|shape| shape.gpu_models.iter().cloned().map(Some)).collect();
        named.sort();
        named.dedup();
        named.push(None);
        let views = named
            .into_iter()
            .map(|model| {
                let mut view = ModelView { model: model.clone(), ..ModelView::default() };
                let mut usable: Vec<&WorkloadShape> = Vec::new();
                for shape in &shapes {
                    if shape.gpu.milli() == 0 {
                        view.cpu_only_weight += shape.weight;
                    } else if view.allows(shape) {
                        usable.push(shape);
                    } else {
                        view.pinned_elsewhere += shape.weight;
                    }
                }
                usable.sort_by_key(|shape| (shape.gpu, shape.cpu_milli, shape.memory_bytes));
                for shape in usable {
                    if view.usable.last().is_none_or(|group| group.gpu != shape.gpu) {
                        view.usable.push(RequestGroup { gpu: shape.gpu, ..RequestGroup::default() });
                    }
                    if let Some(group) = view.usable.last_mut() {
                        group.weight += shape.weight;
                        group.memory = group.memory.max(shape.memory_bytes);
                        match group.needs.last_mut() {
                            Some(need)
                                if (need.cpu_milli, need.memory_bytes)
                                    == (shape.cpu_milli, shape.memory_bytes) =>
                            {
                                need.weight += shape.weight;
                            }
                            _ => {
                                let (cpu_milli, memory_bytes) = (shape.cpu_milli, shape.memory_bytes);
                                group.needs.push(Need { cpu_milli, memory_bytes, weight: shape.weight });
                            }
                        }
                    }
                }
                for group in &mut view.usable {
                    // One entry per need (not merged by CPU): `fitting` reads the needs a node's
                    // CPU holds as a prefix of them.
                    let mut sum = 0.0;
                    for need in &group.needs {
                        sum += need.weight;
                        group.by_cpu.cpus.push(need.cpu_milli);
                        group.by_cpu.cumulative.push(sum);
                    }
                }
                view.weight = view.pinned_elsewhere
                    + view.cpu_only_weight
                    + view.usable.iter().map(|group| group.weight).sum::<f64>();
                view.pairs = view
                    .usable
                    .iter()
                    .flat_map(|first| view.usable.iter().map(move |second| ByCpu::of_pairs(first, second)))
                    .collect();
                view
            })
            .collect();
        let steps = |need: fn(&WorkloadShape) -> u64| {
            let mut steps = vec![0];
            for a in &shapes {
                steps.push(need(a));
                steps.extend(shapes.iter().map(|b| need(a).saturating_add(need(b))));
            }
            steps.sort_unstable();
            steps.dedup();
            steps
        };
        let (cpu_steps, memory_steps) = (steps(|shape| shape.cpu_milli), steps(|shape| shape.memory_bytes));
        let cpu_per_gpu = cpu_per_gpu_of(shapes.iter().filter(|shape| shape.gpu.milli() > 0));
        let cpu_asked_per_gpu = cpu_per_gpu_of(shapes.iter());
        Workload { shapes, views, cpu_steps, memory_steps, cpu_per_gpu, cpu_asked_per_gpu }
    }

    /// CPU milli the typical GPU pods bring per GPU milli (None without GPU pods that ask for
    /// CPU): a node's GPUs beyond what its free CPU serves at that ratio are likely stranded.
    pub fn cpu_per_gpu(&self) -> Option<f64> {
        self.cpu_per_gpu
    }

    /// CPU milli the typical pods, with and without GPUs, ask for per GPU milli (None without
    /// pods asking for both).
    pub fn cpu_asked_per_gpu(&self) -> Option<f64> {
        self.cpu_asked_per_gpu
    }

    /// The least free CPU and memory the measures answer alike for as for `cpu` and `memory`:
    /// they only ask whether one or two typical pods fit, so nodes that differ below the next
    /// step share memo entries.
    pub fn canonical(&self, cpu: u64, memory: u64) -> (u64, u64) {
        let step = |steps: &[u64], amount: u64| {
            steps.partition_point(|&step| step <= amount).checked_sub(1).map_or(0, |index| steps[index])
        };
        (step(&self.cpu_steps, cpu), step(&self.memory_steps, memory))
    }

    /// The view of `model` and the node's free GPU milli, when it has some to measure.
    fn measured(&self, gpus: &GpuFree, model: Option<&str>) -> Option<(&ModelView, f64)> {
        let total = gpus.total() as f64;
        if total == 0.0 {
            return None;
        }
        Some((self.view(model)?, total))
    }

    fn view(&self, model: Option<&str>) -> Option<&ModelView> {
        self.views
            .iter()
            .find(|view| view.model.as_deref() == model)
            .or_else(|| self.views.iter().find(|view| view.model.is_none()))
    }
}

/// CPU milli per GPU milli that `shapes` ask for, weighted by popularity (None unless they ask
/// for both).
fn cpu_per_gpu_of<'a>(shapes: impl Iterator<Item = &'a WorkloadShape>) -> Option<f64> {
    let (cpu, gpu) = shapes.fold((0.0, 0.0), |(cpu, gpu), shape| {
        (cpu + shape.weight * shape.cpu_milli as f64, gpu + shape.weight * shape.gpu.milli() as f64)
    });
    (cpu > 0.0 && gpu > 0.0).then_some(cpu / gpu)
}

/// What tells typical pods apart: CPU and GPU request and the GPU models allowed, as the FGD
/// paper takes them (memory is not part of it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    pub cpu_milli: u64,
    pub gpu: GpuRequest,
    pub gpu_models: Vec<String>,
}

impl Shape {
    pub fn of(pod: &crate::model::Pod) -> Shape {
        Shape { cpu_milli: pod.requests.cpu_milli, gpu: pod.gpu, gpu_models: pod.gpu_models.clone() }
    }
}

impl Workload {
    /// The most popular of `shapes` (with how many pods had each) that together make up
    /// `coverage` (0–1] of the pods, as the FGD paper takes its "typical pods"; weights are
    /// renormalised to sum to 1.
    pub fn from_counts(shapes: impl IntoIterator<Item = (Shape, f64)>, coverage: f64) -> Workload {
        Workload::new(Workload::typical(shapes, coverage))
    }

    /// The shapes [`from_counts`](Self::from_counts) keeps, without what measuring needs built.
    pub(crate) fn typical(
        shapes: impl IntoIterator<Item = (Shape, f64)>,
        coverage: f64,
    ) -> Vec<WorkloadShape> {
        let mut counts: Vec<(Shape, f64)> = shapes.into_iter().filter(|(_, count)| *count > 0.0).collect();
        let total: f64 = counts.iter().map(|(_, count)| count).sum();
        if total == 0.0 {
            return Vec::new();
        }
        // Most popular first; equal counts in a fixed order so runs repeat exactly.
        counts.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut kept = Vec::new();
        let mut covered = 0.0;
        for (shape, count) in counts {
            if covered >= coverage * total {
                break;
            }
            covered += count;
            kept.push(WorkloadShape {
                cpu_milli: shape.cpu_milli,
                memory_bytes: 0,
                gpu: shape.gpu,
                gpu_models: shape.gpu_models,
                weight: count,
            });
        }
        for shape in &mut kept {
            shape.weight /= covered;
        }
        kept
    }

    /// The typical pods of a pod list: their CPU and GPU requests and GPU models.
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a crate::model::Pod>, coverage: f64) -> Workload {
        let mut counts: std::collections::HashMap<Shape, f64> = std::collections::HashMap::new();
        for pod in pods {
            *counts.entry(Shape::of(pod)).or_insert(0.0) += 1.0;
        }
        Workload::from_counts(counts, coverage)
    }

    /// Total variation distance between two workloads (0: the same, 1: nothing in common).
    pub fn distance(&self, other: &Workload) -> f64 {
        Workload::distance_of(&self.shapes, &other.shapes)
    }

    /// [`distance`](Self::distance) between two lists of typical shapes.
    pub(crate) fn distance_of(shapes: &[WorkloadShape], others: &[WorkloadShape]) -> f64 {
        let mut weights: std::collections::HashMap<Shape, (f64, f64)> = std::collections::HashMap::new();
        for shape in shapes {
            weights.entry(shape.shape()).or_default().0 += shape.weight;
        }
        for shape in others {
            weights.entry(shape.shape()).or_default().1 += shape.weight;
        }
        weights.values().map(|(a, b)| (a - b).abs()).sum::<f64>() / 2.0
    }

    pub fn shapes(&self) -> &[WorkloadShape] {
        &self.shapes
    }

    /// Expected GPU milli of a node that the workload could not use (FGD's F_n(M)): for each
    /// shape, every free device when the shape cannot run on the node at all (too little CPU,
    /// memory or GPU, a model it may not use, or no GPU asked for), else the devices with less
    /// free than the shape needs of one device; weighted by the shape's popularity.
    pub fn fragmentation(&self, cpu_free: u64, memory_free: u64, gpus: &GpuFree, model: Option<&str>) -> f64 {
        let Some((view, total)) = self.measured(gpus, model) else { return 0.0 };
        self.fragmentation_of(view, &view.rooms(gpus), total, cpu_free, memory_free)
    }

    /// [`fragmentation`](Self::fragmentation) of a node whose GPUs deny the view's request
    /// groups `losses` out of `total` free: what does not depend on CPU is worked out once.
    fn fragmentation_of(
        &self,
        view: &ModelView,
        rooms: &[Room],
        total: f64,
        cpu_free: u64,
        memory_free: u64,
    ) -> f64 {
        if total == 0.0 {
            return 0.0;
        }
        // Every shape loses all free GPUs, but those the node holds: only the devices too small.
        let mut fragmented = view.weight * total;
        for (group, room) in view.usable.iter().zip(rooms) {
            if let Some(lost) = room.lost(group.gpu) {
                fragmented += group.fitting(cpu_free, memory_free) * (lost - total);
            }
        }
        fragmented
    }
}

impl ModelView {
    /// Whether a GPU shape may use this view's model.
    fn allows(&self, shape: &WorkloadShape) -> bool {
        shape.gpu_models.is_empty()
            || self.model.as_ref().is_some_and(|model| shape.gpu_models.contains(model))
    }

    /// For each request group, the room `gpus` have for one of its pods.
    fn rooms(&self, gpus: &GpuFree) -> Vec<Room> {
        self.usable
            .iter()
            .map(|group| {
                let (_, milli) = group.gpu.per_device();
                let mut room = Room::default();
                for &free in gpus.devices() {
                    room.count(milli, free, 1);
                }
                room
            })
            .collect()
    }
}

/// What a node's devices hold of one request: how many have room for a device's share of it,
/// and the free milli of the others, which it cannot use.
#[derive(Clone, Copy, Debug, Default)]
struct Room {
    devices: i32,
    lost: f64,
}

impl Room {
    /// Counts a device with `free` milli, `sign` 1 to add it and -1 to take it out, for a
    /// request of `milli` per device.
    fn count(&mut self, milli: u16, free: u16, sign: i32) {
        if free >= milli {
            self.devices += sign;
        } else {
            self.lost += f64::from(sign) * f64::from(free);
        }
    }

    /// The milli `request` cannot use; None when it does not fit at all.
    fn lost(&self, request: GpuRequest) -> Option<f64> {
        let (count, _) = request.per_device();
        (self.devices >= i32::from(count)).then_some(self.lost)
    }
}

impl Workload {
    /// Fragmentation one typical pod later: the expected [`fragmentation`](Self::fragmentation)
    /// after the next GPU pod drawn from the workload lands on the node (tightest device for a
    /// fraction), or all free GPU when it cannot. A CPU-only pod drawn leaves it as it is: it
    /// need not land beside free GPUs, and the GPUs it would strand there yiyun counts apart
    /// (by the measured CPU-to-GPU ratio).
    pub fn fragmentation_ahead(
        &self,
        cpu_free: u64,
        memory_free: u64,
        gpus: &GpuFree,
        model: Option<&str>,
    ) -> f64 {
        let Some((view, total)) = self.measured(gpus, model) else { return 0.0 };
        let mut expected = view.pinned_elsewhere * total;
        let rooms = view.rooms(gpus);
        expected += view.cpu_only_weight * self.fragmentation_of(view, &rooms, total, cpu_free, memory_free);
        let groups = view.usable.len();
        for (first, group) in view.usable.iter().enumerate() {
            // A pod of the group the node cannot hold strands every free GPU.
            let held = if gpus.fits(group.gpu) { group.fitting(cpu_free, memory_free) } else { 0.0 };
            expected += (group.weight - held) * total;
            if held == 0.0 {
                continue;
            }
            // Shapes of one request leave the same devices, `free` milli of them; after one, as in
            // `fragmentation_of`, every shape loses all of them but those the node still holds.
            let free = total - group.gpu.milli() as f64;
            if free <= 0.0 {
                continue;
            }
            // Whole GPUs take idle devices; a fraction the tightest device with room.
            let (taken_from, taken, times) = match group.gpu {
                GpuRequest::Fraction(milli) => {
                    (gpus.tightest_with_room(milli).map_or(milli, |(_, free)| free), milli, 1)
                }
                GpuRequest::Whole(count) => (GPU_MILLI as u16, GPU_MILLI as u16, i32::from(count)),
                GpuRequest::None => continue,
            };
            expected += held * view.weight * free;
            for (second, (other, room)) in view.usable.iter().zip(&rooms).enumerate() {
                let (_, milli) = other.gpu.per_device();
                let mut after = *room;
                after.count(milli, taken_from, -times);
                after.count(milli, taken_from - taken, times);
                let Some(lost) = after.lost(other.gpu) else { continue };
                // Weight of the pairs (a pod of the group, then one of the other) that fit.
                let pairs = if memory_free >= group.memory + other.memory {
                    view.pairs[first * groups + second].held(cpu_free).1
                } else {
                    group
                        .needs
                        .iter()
                        .filter(|need| need.cpu_milli <= cpu_free && need.memory_bytes <= memory_free)
                        .map(|need| {
                            need.weight
                                * other.fitting(cpu_free - need.cpu_milli, memory_free - need.memory_bytes)
                        })
                        .sum()
                };
                expected += pairs * (lost - free);
            }
        }
        expected
    }
}

#[cfg(test)]
mod tests;
