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
            GpuRequest::Fraction(milli) => self
                .devices()
                .iter()
                .enumerate()
                .filter(|(_, free)| **free >= milli)
                .min_by_key(|(_, free)| **free)
                .and_then(|(device, _)| u8::try_from(device).ok()),
            _ => None,
        };
        self.allocation(request, device)
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

/// The distribution of pods expected to arrive, against which fragmentation is measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    shapes: Vec<WorkloadShape>,
}

/// Identity of a pod shape for counting its popularity.
type ShapeCount = ((u64, u64, GpuRequest, Vec<String>), f64);

impl Workload {
    /// The most popular shapes of `pods` (cpu milli, memory, GPU request, models) that together
    /// make up `coverage` (0–1] of them, as the FGD paper takes its "typical pods"; weights are
    /// renormalised to sum to 1.
    pub fn from_pods<'a>(
        pods: impl IntoIterator<Item = (u64, u64, GpuRequest, &'a [String])>,
        coverage: f64,
    ) -> Workload {
        let mut counts: Vec<ShapeCount> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let mut total = 0.0;
        for (cpu, memory, gpu, models) in pods {
            let key = (cpu, memory, gpu, models.to_vec());
            let slot = *index.entry(key.clone()).or_insert_with(|| {
                counts.push((key, 0.0));
                counts.len() - 1
            });
            counts[slot].1 += 1.0;
            total += 1.0;
        }
        if total == 0.0 {
            return Workload::default();
        }
        // Most popular first; equal counts in a fixed order so runs repeat exactly.
        counts.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut kept = Vec::new();
        let mut covered = 0.0;
        for ((cpu_milli, memory_bytes, gpu, gpu_models), count) in counts {
            if covered >= coverage * total {
                break;
            }
            covered += count;
            kept.push(WorkloadShape { cpu_milli, memory_bytes, gpu, gpu_models, weight: count });
        }
        for shape in &mut kept {
            shape.weight /= covered;
        }
        Workload { shapes: kept }
    }

    pub fn shapes(&self) -> &[WorkloadShape] {
        &self.shapes
    }

    /// Expected GPU milli of a node that the workload could not use (FGD's F_n(M)): for each
    /// shape, every free device when the shape cannot run on the node at all (too little CPU,
    /// memory or GPU, a model it may not use, or no GPU asked for), else the devices with less
    /// free than the shape needs of one device; weighted by the shape's popularity.
    pub fn fragmentation(&self, cpu_free: u64, memory_free: u64, gpus: &GpuFree, model: Option<&str>) -> f64 {
        let total = gpus.total() as f64;
        if total == 0.0 {
            return 0.0;
        }
        let mut fragmented = 0.0;
        for shape in &self.shapes {
            let (count, milli) = shape.gpu.per_device();
            let usable = count > 0
                && cpu_free >= shape.cpu_milli
                && memory_free >= shape.memory_bytes
                && (shape.gpu_models.is_empty()
                    || model.is_some_and(|model| shape.gpu_models.iter().any(|m| m == model)))
                && gpus.fits(shape.gpu);
            let lost = if usable {
                gpus.devices().iter().filter(|&&free| free < milli).map(|&free| f64::from(free)).sum()
            } else {
                total
            };
            fragmented += shape.weight * lost;
        }
        fragmented
    }
}

impl Workload {
    /// Fragmentation one typical pod later: the expected [`fragmentation`](Self::fragmentation)
    /// after the next pod drawn from the workload lands on the node (tightest device for a
    /// fraction), or all free GPU when it cannot.
    pub fn fragmentation_ahead(
        &self,
        cpu_free: u64,
        memory_free: u64,
        gpus: &GpuFree,
        model: Option<&str>,
    ) -> f64 {
        let total = gpus.total() as f64;
        if total == 0.0 {
            return 0.0;
        }
        let mut expected = 0.0;
        for shape in &self.shapes {
            let fits = cpu_free >= shape.cpu_milli
                && memory_free >= shape.memory_bytes
                && (shape.gpu_models.is_empty()
                    || model.is_some_and(|model| shape.gpu_models.iter().any(|m| m == model)))
                && gpus.fits(shape.gpu);
            let after = if !fits || shape.gpu.milli() == 0 {
                if fits {
                    self.fragmentation(
                        cpu_free - shape.cpu_milli,
                        memory_free - shape.memory_bytes,
                        gpus,
                        model,
                    )
                } else {
                    total
                }
            } else {
                let mut next = *gpus;
                if let Some(allocation) = next.tightest_allocation(shape.gpu) {
                    next.take(&allocation);
                }
                self.fragmentation(cpu_free - shape.cpu_milli, memory_free - shape.memory_bytes, &next, model)
            };
            expected += shape.weight * after;
        }
        expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(shapes: &[(u64, GpuRequest, f64)]) -> Workload {
        Workload {
            shapes: shapes
                .iter()
                .map(|&(cpu_milli, gpu, weight)| WorkloadShape {
                    cpu_milli,
                    memory_bytes: 0,
                    gpu,
                    gpu_models: Vec::new(),
                    weight,
                })
                .collect(),
        }
    }

    fn free(devices: &[u16]) -> GpuFree {
        let mut gpus = GpuFree::idle(devices.len() as u8);
        gpus.free[..devices.len()].copy_from_slice(devices);
        gpus
    }

    #[test]
    fn fragmentation_counts_devices_too_small_for_each_shape() {
        // Half the pods want half a GPU, half want a whole one.
        let workload = workload(&[(1000, GpuRequest::Fraction(500), 0.5), (1000, GpuRequest::Whole(1), 0.5)]);
        // 300 free on one device: too small for both; 1000 free on the other: fine for both.
        let f = workload.fragmentation(8000, 0, &free(&[300, 1000]), None);
        assert_eq!(f, 300.0);
        // 600 free: fine for the half-GPU shape, a fragment for the whole-GPU one.
        let f = workload.fragmentation(8000, 0, &free(&[600, 0]), None);
        assert_eq!(f, 0.5 * 600.0);
    }

    #[test]
    fn a_node_out_of_cpu_loses_every_free_gpu() {
        let workload = workload(&[(4000, GpuRequest::Whole(1), 1.0)]);
        assert_eq!(workload.fragmentation(2000, 0, &free(&[1000, 1000]), None), 2000.0);
        assert_eq!(workload.fragmentation(4000, 0, &free(&[1000, 1000]), None), 0.0);
    }

    #[test]
    fn typical_pods_cover_the_most_popular_shapes() {
        let none: &[String] = &[];
        let mut pods = vec![(1000, 0, GpuRequest::Whole(1), none); 6];
        pods.extend(vec![(2000, 0, GpuRequest::Fraction(500), none); 3]);
        pods.push((500, 0, GpuRequest::None, none));
        let workload = Workload::from_pods(pods, 0.9);
        assert_eq!(workload.shapes().len(), 2);
        assert!((workload.shapes()[0].weight - 6.0 / 9.0).abs() < 1e-9);
        assert!((workload.shapes()[1].weight - 3.0 / 9.0).abs() < 1e-9);
    }

    #[test]
    fn whole_devices_are_the_lowest_idle_ones() {
        let gpus = free(&[1000, 200, 1000, 1000]);
        assert_eq!(gpus.allocation(GpuRequest::Whole(2), None), Some(vec![(0, 1000), (2, 1000)]));
        assert_eq!(gpus.allocation(GpuRequest::Whole(4), None), None);
        assert_eq!(gpus.allocation(GpuRequest::Fraction(300), Some(1)), None);
        assert_eq!(gpus.allocation(GpuRequest::Fraction(200), Some(1)), Some(vec![(1, 200)]));
        assert_eq!(gpus.sorted().devices(), &[1000, 1000, 1000, 200]);
    }
}
