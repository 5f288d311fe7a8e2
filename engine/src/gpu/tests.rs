//! GPU devices and the fragmentation measure; the measure and the lookahead are also held to
//! their definitions, taken shape by shape.

use super::*;

impl Workload {
    /// [`fragmentation`](Self::fragmentation) as the paper defines it, shape by shape.
    fn fragmentation_by_shape(
        &self,
        cpu_free: u64,
        memory_free: u64,
        gpus: &GpuFree,
        model: Option<&str>,
    ) -> f64 {
        let Some((view, total)) = self.measured(gpus, model) else { return 0.0 };
        let mut fragmented = (view.pinned_elsewhere + view.cpu_only_weight) * total;
        for shape in self.shapes.iter().filter(|shape| shape.gpu.milli() > 0 && view.allows(shape)) {
            let (_, milli) = shape.gpu.per_device();
            let usable =
                cpu_free >= shape.cpu_milli && memory_free >= shape.memory_bytes && gpus.fits(shape.gpu);
            let lost = if usable {
                gpus.devices().iter().filter(|&&free| free < milli).map(|&free| f64::from(free)).sum()
            } else {
                total
            };
            fragmented += shape.weight * lost;
        }
        fragmented
    }

    /// [`fragmentation_ahead`](Self::fragmentation_ahead) as it reads, shape by shape.
    fn fragmentation_ahead_by_shape(
        &self,
        cpu_free: u64,
        memory_free: u64,
        gpus: &GpuFree,
        model: Option<&str>,
    ) -> f64 {
        let Some((view, total)) = self.measured(gpus, model) else { return 0.0 };
        let mut expected = 0.0;
        for shape in &self.shapes {
            let fits =
                cpu_free >= shape.cpu_milli && memory_free >= shape.memory_bytes && gpus.fits(shape.gpu);
            let after = if shape.gpu.milli() == 0 {
                self.fragmentation_by_shape(cpu_free, memory_free, gpus, model)
            } else if view.allows(shape) && fits {
                let mut next = *gpus;
                next.take(&next.tightest_allocation(shape.gpu).expect("it fits"));
                let (cpu, memory) = (cpu_free - shape.cpu_milli, memory_free - shape.memory_bytes);
                self.fragmentation_by_shape(cpu, memory, &next, model)
            } else {
                total
            };
            expected += shape.weight * after;
        }
        expected
    }
}

fn workload(shapes: &[(u64, GpuRequest, f64)]) -> Workload {
    Workload::new(
        shapes
            .iter()
            .map(|&(cpu_milli, gpu, weight)| WorkloadShape {
                cpu_milli,
                memory_bytes: 0,
                gpu,
                gpu_models: Vec::new(),
                weight,
            })
            .collect(),
    )
}

/// Shapes that each ask for `memory` as well.
fn workload_with_memory(shapes: &[(u64, GpuRequest, f64)], memory: u64) -> Workload {
    let plain = workload(shapes);
    Workload::new(
        plain.shapes.into_iter().map(|shape| WorkloadShape { memory_bytes: memory, ..shape }).collect(),
    )
}

#[test]
fn cpu_per_gpu_weighs_the_gpu_shapes_by_popularity_and_leaves_cpu_only_pods_out() {
    let mixed = workload(&[
        (4_000, GpuRequest::Whole(1), 0.5),
        (8_000, GpuRequest::Whole(2), 0.25),
        (2_000, GpuRequest::None, 0.25),
    ]);
    assert_eq!(mixed.cpu_per_gpu(), Some(4.0));
    assert_eq!(workload(&[(2_000, GpuRequest::None, 1.0)]).cpu_per_gpu(), None);
}

fn free(devices: &[u16]) -> GpuFree {
    let mut gpus = GpuFree::idle(devices.len() as u8);
    gpus.free[..devices.len()].copy_from_slice(devices);
    gpus
}

#[test]
fn fragmentation_by_request_is_fragmentation_by_shape() {
    let mut shapes = vec![
        (4000, GpuRequest::Fraction(500), 0.2),
        (9000, GpuRequest::Fraction(500), 0.1),
        (7000, GpuRequest::Whole(1), 0.2),
        (1000, GpuRequest::Whole(1), 0.1),
        (16000, GpuRequest::Whole(2), 0.1),
        (2500, GpuRequest::None, 0.3),
    ];
    let mut workload = workload(&shapes);
    for gpus in [free(&[500, 1000, 250]), free(&[1000, 1000]), free(&[100, 0, 600, 1000])] {
        for cpu in (0..20_000).step_by(250) {
            let (grouped, by_shape) = (
                workload.fragmentation(cpu, 0, &gpus, None),
                workload.fragmentation_by_shape(cpu, 0, &gpus, None),
            );
            assert!((grouped - by_shape).abs() < 1e-9, "{gpus:?} at {cpu}: {grouped} != {by_shape}");
        }
    }
    // Shapes that ask for memory are held by memory as well.
    shapes.truncate(3);
    workload = workload_with_memory(&shapes, 8 << 30);
    for memory in [0, 4 << 30, 8 << 30] {
        let gpus = free(&[500, 1000]);
        let (grouped, by_shape) = (
            workload.fragmentation(12_000, memory, &gpus, None),
            workload.fragmentation_by_shape(12_000, memory, &gpus, None),
        );
        assert!((grouped - by_shape).abs() < 1e-9, "memory {memory}: {grouped} != {by_shape}");
    }
}

#[test]
fn looking_ahead_by_request_pairs_is_looking_ahead_by_shape() {
    let mut shapes: Vec<WorkloadShape> = [
        (4000, GpuRequest::Fraction(500), 0.15),
        (9000, GpuRequest::Fraction(500), 0.1),
        (3000, GpuRequest::Fraction(300), 0.05),
        (7000, GpuRequest::Whole(1), 0.15),
        (1000, GpuRequest::Whole(1), 0.1),
        (16000, GpuRequest::Whole(2), 0.1),
        (2500, GpuRequest::None, 0.2),
    ]
    .into_iter()
    .map(|(cpu_milli, gpu, weight)| WorkloadShape {
        cpu_milli,
        memory_bytes: 0,
        gpu,
        gpu_models: Vec::new(),
        weight,
    })
    .collect();
    // The same request pinned to a model (one need with the unpinned shape on it) and to
    // another model (lost on it).
    for (model, weight) in [("A10", 0.1), ("T4", 0.05)] {
        shapes.push(WorkloadShape {
            cpu_milli: 7000,
            memory_bytes: 0,
            gpu: GpuRequest::Whole(1),
            gpu_models: vec![model.to_string()],
            weight,
        });
    }
    let devices = [free(&[500, 1000, 250]), free(&[1000, 1000]), free(&[100, 0, 600, 1000]), free(&[300])];
    let check = |workload: &Workload, cpu: u64, memory: u64, gpus: &GpuFree, model: Option<&str>| {
        let (by_pairs, by_shape) = (
            workload.fragmentation_ahead(cpu, memory, gpus, model),
            workload.fragmentation_ahead_by_shape(cpu, memory, gpus, model),
        );
        assert!(
            (by_pairs - by_shape).abs() < 1e-9,
            "{gpus:?} {model:?} at {cpu} milli, {memory} bytes: {by_pairs} != {by_shape}"
        );
    };
    let workload = Workload::new(shapes.clone());
    for gpus in &devices {
        for model in [None, Some("A10"), Some("T4")] {
            for cpu in (0..40_000).step_by(500) {
                check(&workload, cpu, 0, gpus, model);
            }
        }
    }
    // Shapes that ask for memory are held by memory as well, one after the other too.
    for (index, shape) in shapes.iter_mut().enumerate() {
        shape.memory_bytes = (index as u64 % 3) << 30;
    }
    let workload = Workload::new(shapes);
    for gpus in &devices {
        for memory in [0, 1 << 30, 2 << 30, 3 << 30, 4 << 30] {
            for cpu in (0..40_000).step_by(1000) {
                check(&workload, cpu, memory, gpus, Some("A10"));
            }
        }
    }
}

#[test]
fn looking_ahead_a_cpu_only_pod_to_come_leaves_the_node_as_it_is() {
    let workload = workload(&[(4_000, GpuRequest::Whole(1), 0.5), (4_000, GpuRequest::None, 0.5)]);
    let gpus = free(&[1000, 1000]);
    // Now: the CPU-only half strands both GPUs (1,000), the GPU half fits (0).
    assert_eq!(workload.fragmentation(4_000, 1 << 30, &gpus, None), 1_000.0);
    // A GPU pod lands and takes the CPU: both halves strand the GPU left (1,000), weighed
    // 0.5; a CPU-only pod counts as now (1,000), weighed 0.5. Had it landed, it would
    // have taken the CPU and stranded both GPUs for everyone (2,000).
    assert_eq!(workload.fragmentation_ahead(4_000, 1 << 30, &gpus, None), 1_000.0);
}

#[test]
fn the_measures_answer_for_the_canonical_cpu_as_for_the_exact_one() {
    let workload = workload(&[
        (4000, GpuRequest::Fraction(500), 0.4),
        (7000, GpuRequest::Whole(1), 0.3),
        (2500, GpuRequest::None, 0.3),
    ]);
    let gpus = free(&[500, 1000, 250]);
    for cpu in (0..20_000).step_by(125) {
        let (canonical, memory) = workload.canonical(cpu, 1 << 30);
        assert!(canonical <= cpu && memory == 0);
        assert_eq!(
            workload.fragmentation(cpu, 1 << 30, &gpus, None),
            workload.fragmentation(canonical, 0, &gpus, None)
        );
        assert_eq!(
            workload.fragmentation_ahead(cpu, 1 << 30, &gpus, None),
            workload.fragmentation_ahead(canonical, 0, &gpus, None),
            "at {cpu} milli"
        );
    }
    // 9,499 milli answer as 8,000 do: two half-GPU pods fit, a half and a whole GPU do not.
    assert_eq!(workload.canonical(9_499, 0).0, 8_000);
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
fn shapes_pinned_to_another_model_lose_every_free_gpu() {
    let pinned = |model: &str| WorkloadShape {
        cpu_milli: 1000,
        memory_bytes: 0,
        gpu: GpuRequest::Whole(1),
        gpu_models: vec![model.to_string()],
        weight: 0.25,
    };
    let any = WorkloadShape { gpu_models: Vec::new(), gpu: GpuRequest::Fraction(500), ..pinned("") };
    let cpu = WorkloadShape { gpu: GpuRequest::None, gpu_models: Vec::new(), ..pinned("") };
    let workload = Workload::new(vec![pinned("A100"), pinned("T4"), any, cpu]);
    let gpus = free(&[1000, 300]);
    // On an A100: the T4 shape and the CPU shape lose all 1300, the others the 300.
    assert_eq!(workload.fragmentation(8000, 0, &gpus, Some("A100")), 0.25 * (1300.0 * 2.0 + 300.0 * 2.0));
    // On a model nobody pins to (or none), both pinned shapes lose everything.
    let elsewhere = 0.25 * (1300.0 * 3.0 + 300.0);
    assert_eq!(workload.fragmentation(8000, 0, &gpus, Some("V100")), elsewhere);
    assert_eq!(workload.fragmentation(8000, 0, &gpus, None), elsewhere);
}

#[test]
fn a_node_out_of_cpu_loses_every_free_gpu() {
    let workload = workload(&[(4000, GpuRequest::Whole(1), 1.0)]);
    assert_eq!(workload.fragmentation(2000, 0, &free(&[1000, 1000]), None), 2000.0);
    assert_eq!(workload.fragmentation(4000, 0, &free(&[1000, 1000]), None), 0.0);
}

#[test]
fn typical_pods_cover_the_most_popular_shapes() {
    let pod = |index: usize, cpu: u64, gpu: GpuRequest| {
        let mut pod = crate::model::Pod::new(format!("p{index}"), crate::model::Resources::new(cpu, 1 << 30));
        pod.gpu = gpu;
        pod
    };
    let mut pods: Vec<_> = (0..6).map(|index| pod(index, 1000, GpuRequest::Whole(1))).collect();
    pods.extend((6..9).map(|index| pod(index, 2000, GpuRequest::Fraction(500))));
    pods.push(pod(9, 500, GpuRequest::None));
    let workload = Workload::from_pods(&pods, 0.9);
    assert_eq!(workload.shapes().len(), 2);
    assert!((workload.shapes()[0].weight - 6.0 / 9.0).abs() < 1e-9);
    assert!((workload.shapes()[1].weight - 3.0 / 9.0).abs() < 1e-9);
    assert_eq!(workload.distance(&workload), 0.0);
    let only_whole = Workload::from_pods(&pods[..6], 0.9);
    assert!((workload.distance(&only_whole) - 1.0 / 3.0).abs() < 1e-9);
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
