//! What yiyun weighs besides FGD's fragmentation, from the measured workload and the cluster's
//! free resources: GPUs a placement leaves without the CPU that GPU pods bring with them, whether
//! CPU runs out before GPUs at all, and GPUs of a model that pods pinned to it will ask for.

use crate::{gpu::Workload, model::GPU_MILLI};

/// GPU milli (of `free_gpu_milli`) that the workload's GPU pods could not use for want of CPU,
/// if they arrived in the measured mix: each brings `cpu_per_gpu` CPU milli per GPU milli.
pub(crate) fn stranded(cpu_per_gpu: f64, free_cpu_milli: u64, free_gpu_milli: u64) -> f64 {
    (free_gpu_milli as f64 - free_cpu_milli as f64 / cpu_per_gpu).max(0.0)
}

/// The CPU milli per GPU milli a node's free GPUs are judged against: what the measured GPU pods
/// bring (`cpu_per_gpu`), or what the node was built with when that is less. A node with less CPU
/// per GPU than the average pod brings is there for the pods that bring less (four-GPU nodes
/// with 32 CPUs hold four-GPU pods asking 32): its GPUs are not stranded while its free CPU keeps
/// the node's own ratio, so a small pod earns nothing for taking them.
pub(crate) fn stranding_ratio(cpu_per_gpu: f64, allocatable_cpu_milli: u64, devices: usize) -> f64 {
    if devices == 0 || allocatable_cpu_milli == 0 {
        return cpu_per_gpu;
    }
    let built = allocatable_cpu_milli as f64 / (devices as f64 * f64::from(GPU_MILLI));
    cpu_per_gpu.min(built)
}

/// Whether the workload's pods, in the measured mix, ask for more CPU per GPU than the cluster
/// has (`cpu_milli` and `gpu_milli` allocatable): then CPU runs out first and GPUs are left beside
/// it wherever pods without GPUs go, so steering them away from free GPUs only breaks up CPU that
/// GPU pods would need.
pub(crate) fn cpu_binds(workload: &Workload, cpu_milli: u64, gpu_milli: u64) -> bool {
    workload
        .cpu_asked_per_gpu()
        .is_some_and(|asked| gpu_milli > 0 && asked > cpu_milli as f64 / gpu_milli as f64)
}

/// For each GPU model (`models`, with the GPU milli each has free), the share of its free GPUs
/// that pods pinned to it are expected to ask for: the share of the workload's GPU demand pinned
/// to the model (split evenly among a pod's models) over the model's share of all free GPUs,
/// at most 1. An unpinned pod taking one milli of the model takes that much from the pinned
/// pods to come.
pub(crate) fn model_pressure(workload: &Workload, models: &[(Option<&str>, u64)]) -> Vec<f64> {
    let demand: f64 = workload.shapes().iter().map(|shape| shape.weight * shape.gpu.milli() as f64).sum();
    let free: u64 = models.iter().map(|(_, free)| free).sum();
    models
        .iter()
        .map(|&(model, model_free)| {
            let Some(model) = model else { return 0.0 };
            let pinned: f64 = workload
                .shapes()
                .iter()
                .filter(|shape| shape.gpu_models.iter().any(|name| name == model))
                .map(|shape| shape.weight * shape.gpu.milli() as f64 / shape.gpu_models.len() as f64)
                .sum();
            if pinned <= 0.0 || demand <= 0.0 {
                return 0.0;
            }
            if model_free == 0 {
                return 1.0;
            }
            let supply = model_free as f64 / free as f64;
            (pinned / demand / supply).min(1.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        gpu::{Shape, Workload},
        model::GpuRequest,
    };

    fn workload(shapes: &[(GpuRequest, &[&str], f64)]) -> Workload {
        Workload::from_counts(
            shapes.iter().map(|&(gpu, models, count)| {
                (
                    Shape {
                        cpu_milli: 4000,
                        gpu,
                        gpu_models: models.iter().map(|m| m.to_string()).collect(),
                    },
                    count,
                )
            }),
            1.0,
        )
    }

    fn assert_close(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?}");
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-9, "{actual:?} against {expected:?}");
        }
    }

    #[test]
    fn gpus_beyond_what_the_free_cpu_can_serve_are_stranded() {
        // GPU pods bring 10 CPUs per GPU: 40 CPUs serve 4 of 8 free GPUs.
        assert_eq!(stranded(10.0, 40_000, 8_000), 4_000.0);
        assert_eq!(stranded(10.0, 96_000, 8_000), 0.0);
        assert_eq!(stranded(10.0, 0, 0), 0.0);
    }

    #[test]
    fn a_node_built_with_less_cpu_per_gpu_than_the_pods_bring_is_judged_by_its_own() {
        // 32 CPUs beside 4 GPUs: 8 CPUs per GPU, less than the 10 the pods bring.
        assert_eq!(stranding_ratio(10.0, 32_000, 4), 8.0);
        // The empty node strands nothing, and a pod of one GPU and 3 CPUs leaves it within its
        // own ratio (29 CPUs for 3 GPUs); against the pods' 10 it would have taken back 0.7 of a
        // stranded GPU.
        assert_eq!(stranded(stranding_ratio(10.0, 32_000, 4), 32_000, 4_000), 0.0);
        assert_eq!(stranded(stranding_ratio(10.0, 32_000, 4), 29_000, 3_000), 0.0);
        assert_eq!(stranded(10.0, 32_000, 4_000) - stranded(10.0, 29_000, 3_000), 700.0);
        // A node with more CPU per GPU, or without GPUs or CPU, is judged by the pods' ratio.
        assert_eq!(stranding_ratio(10.0, 96_000, 8), 10.0);
        assert_eq!(stranding_ratio(10.0, 96_000, 0), 10.0);
        assert_eq!(stranding_ratio(10.0, 0, 8), 10.0);
    }

    #[test]
    fn cpu_binds_when_the_pods_ask_for_more_cpu_per_gpu_than_the_cluster_has() {
        // Every shape asks for 4 CPUs; half of them for a GPU: 8 CPUs per GPU asked.
        let half_gpu = workload(&[(GpuRequest::Whole(1), &[], 1.0), (GpuRequest::None, &[], 1.0)]);
        assert!(cpu_binds(&half_gpu, 64_000, 10_000));
        assert!(!cpu_binds(&half_gpu, 96_000, 10_000));
        // Without GPUs asked for or to give, GPUs are never left for want of CPU.
        assert!(!cpu_binds(&workload(&[(GpuRequest::None, &[], 1.0)]), 64_000, 10_000));
        assert!(!cpu_binds(&half_gpu, 64_000, 0));
    }

    #[test]
    fn a_model_pinned_pods_ask_for_beyond_its_share_of_free_gpus_is_under_pressure() {
        // Half the GPU demand is pinned to A, which has a quarter of the free GPUs: every A GPU
        // an unpinned pod takes, a pinned pod will miss.
        let pinned_half = workload(&[(GpuRequest::Whole(1), &["A"], 1.0), (GpuRequest::Whole(1), &[], 1.0)]);
        let models = [(Some("A"), 1_000), (Some("B"), 3_000), (None, 0)];
        assert_eq!(model_pressure(&pinned_half, &models), vec![1.0, 0.0, 0.0]);
        // A tenth pinned to A, with half the free GPUs: a fifth of A's GPUs are spoken for.
        let pinned_tenth = workload(&[(GpuRequest::Whole(1), &["A"], 1.0), (GpuRequest::Whole(1), &[], 9.0)]);
        let models = [(Some("A"), 2_000), (Some("B"), 2_000)];
        assert_close(&model_pressure(&pinned_tenth, &models), &[0.2, 0.0]);
    }

    #[test]
    fn a_pod_pinned_to_two_models_presses_on_each_by_half_and_a_full_model_is_spoken_for() {
        let both = workload(&[(GpuRequest::Whole(2), &["A", "B"], 1.0), (GpuRequest::Whole(2), &[], 3.0)]);
        let models = [(Some("A"), 2_000), (Some("B"), 0), (Some("C"), 2_000)];
        assert_close(&model_pressure(&both, &models), &[0.25, 1.0, 0.0]);
        assert_eq!(model_pressure(&Workload::default(), &models), vec![0.0, 0.0, 0.0]);
    }
}
