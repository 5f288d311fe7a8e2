//! Where the GPUs a policy leaves unallocated sit when 100% of capacity has arrived, and which
//! pods it turned away: the breakdown that tells a study of a mix which loss to attack (GPU
//! left over beside fractions, GPUs beside exhausted CPU or memory, or idle GPUs too scattered
//! for the multi-GPU pods that came).

use yiyun_engine::{gpu::GpuFree, model::GpuRequest};

/// The least CPU and memory any GPU pod of a list asks for: a node with less free cannot take
/// any of them, whatever its GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SmallestGpuPod {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
}

impl SmallestGpuPod {
    /// Of the pods' requests (CPU milli, memory bytes, GPU request); None without GPU pods.
    pub fn of(pods: impl IntoIterator<Item = (u64, u64, GpuRequest)>) -> Option<SmallestGpuPod> {
        pods.into_iter().filter(|(_, _, gpu)| gpu.milli() > 0).fold(None, |smallest, (cpu, memory, _)| {
            Some(match smallest {
                None => SmallestGpuPod { cpu_milli: cpu, memory_bytes: memory },
                Some(SmallestGpuPod { cpu_milli, memory_bytes }) => {
                    SmallestGpuPod { cpu_milli: cpu_milli.min(cpu), memory_bytes: memory_bytes.min(memory) }
                }
            })
        })
    }
}

/// GPU milli unallocated, by where it sits, and GPU milli of the pods turned away, by request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Losses {
    /// Free on devices partly taken by fractions.
    pub partial_milli: u64,
    /// Idle devices on nodes whose free CPU or memory no GPU pod of the list fits.
    pub idle_starved_milli: u64,
    /// Idle devices on the other nodes.
    pub idle_milli: u64,
    /// Asked for by fraction pods that fit nowhere.
    pub failed_fraction_milli: u64,
    /// Asked for by one-GPU pods that fit nowhere.
    pub failed_one_milli: u64,
    /// Asked for by pods of two GPUs or more that fit nowhere.
    pub failed_several_milli: u64,
    /// Of all the pods turned away, what no placement could have held
    /// ([`crate::forced::forced_away_milli`]).
    pub forced_away_milli: u64,
}

impl Losses {
    /// Counts one node's free GPUs.
    pub fn add_node(&mut self, cpu_free: u64, memory_free: u64, gpus: &GpuFree, smallest: SmallestGpuPod) {
        let starved = cpu_free < smallest.cpu_milli || memory_free < smallest.memory_bytes;
        for &free in gpus.devices() {
            let free = u64::from(free);
            if free < 1000 {
                self.partial_milli += free;
            } else if starved {
                self.idle_starved_milli += free;
            } else {
                self.idle_milli += free;
            }
        }
    }

    /// Counts a pod that fit nowhere.
    pub fn add_failed(&mut self, gpu: GpuRequest) {
        match gpu {
            GpuRequest::None => {}
            GpuRequest::Fraction(_) => self.failed_fraction_milli += gpu.milli(),
            GpuRequest::Whole(1) => self.failed_one_milli += gpu.milli(),
            GpuRequest::Whole(_) => self.failed_several_milli += gpu.milli(),
        }
    }

    /// All GPU milli left unallocated.
    pub fn unallocated_milli(&self) -> u64 {
        self.partial_milli + self.idle_starved_milli + self.idle_milli
    }

    /// GPU milli of all the pods turned away.
    pub fn away_milli(&self) -> u64 {
        self.failed_fraction_milli + self.failed_one_milli + self.failed_several_milli
    }

    /// The mean of several runs' losses (to the milli below).
    pub fn mean(runs: &[Losses]) -> Losses {
        let count = runs.len().max(1) as u64;
        let mean = |field: fn(&Losses) -> u64| runs.iter().map(field).sum::<u64>() / count;
        Losses {
            partial_milli: mean(|run| run.partial_milli),
            idle_starved_milli: mean(|run| run.idle_starved_milli),
            idle_milli: mean(|run| run.idle_milli),
            failed_fraction_milli: mean(|run| run.failed_fraction_milli),
            failed_one_milli: mean(|run| run.failed_one_milli),
            failed_several_milli: mean(|run| run.failed_several_milli),
            forced_away_milli: mean(|run| run.forced_away_milli),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(devices: &[u16]) -> GpuFree {
        let mut free = GpuFree::idle(devices.len() as u8);
        let taken: Vec<(u8, u16)> =
            devices.iter().enumerate().map(|(index, &left)| (index as u8, 1000 - left)).collect();
        free.take(&taken);
        free
    }

    const SMALLEST: SmallestGpuPod = SmallestGpuPod { cpu_milli: 4000, memory_bytes: 1 << 30 };

    #[test]
    fn free_gpu_is_split_by_partial_devices_and_whether_the_node_can_still_take_a_gpu_pod() {
        let mut losses = Losses::default();
        losses.add_node(8000, 8 << 30, &gpus(&[1000, 190, 0, 1000]), SMALLEST);
        losses.add_node(2000, 8 << 30, &gpus(&[1000, 530]), SMALLEST);
        losses.add_node(8000, 1 << 20, &gpus(&[1000]), SMALLEST);
        assert_eq!(losses.partial_milli, 720);
        assert_eq!(losses.idle_starved_milli, 2000);
        assert_eq!(losses.idle_milli, 2000);
        assert_eq!(losses.unallocated_milli(), 4720);
    }

    #[test]
    fn pods_turned_away_are_counted_by_request_and_cpu_only_pods_count_no_gpu() {
        let mut losses = Losses::default();
        for gpu in [GpuRequest::Fraction(810), GpuRequest::Whole(1), GpuRequest::Whole(8), GpuRequest::None] {
            losses.add_failed(gpu);
        }
        assert_eq!(
            (losses.failed_fraction_milli, losses.failed_one_milli, losses.failed_several_milli),
            (810, 1000, 8000)
        );
        assert_eq!(Losses::mean(&[losses, Losses::default()]).failed_several_milli, 4000);
    }

    #[test]
    fn the_smallest_gpu_pod_takes_the_least_cpu_and_memory_of_gpu_pods_only() {
        let pods = [
            (500, 1 << 40, GpuRequest::None),
            (8000, 2 << 30, GpuRequest::Whole(1)),
            (2000, 16 << 30, GpuRequest::Fraction(300)),
        ];
        assert_eq!(SmallestGpuPod::of(pods), Some(SmallestGpuPod { cpu_milli: 2000, memory_bytes: 2 << 30 }));
        assert_eq!(SmallestGpuPod::of([(500, 1, GpuRequest::None)]), None);
    }
}
