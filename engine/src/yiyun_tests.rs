//! How yiyun's measure places GPU pods, against FGD's, on small clusters built to show each term.

use crate::{
    Engine, Policy,
    gpu::{Shape, Workload},
    model::{GpuRequest, Node, Pod},
    tests::{node, pod},
};

/// A workload of `(cpu, gpu, models, weight)` shapes, fixed in advance.
fn workload(shapes: &[(u64, GpuRequest, &[&str], f64)]) -> Workload {
    Workload::from_counts(
        shapes.iter().map(|&(cpu_milli, gpu, models, weight)| {
            let gpu_models = models.iter().map(|model| model.to_string()).collect();
            (Shape { cpu_milli, gpu, gpu_models }, weight)
        }),
        1.0,
    )
}

/// Where FGD and yiyun each put `pod` on fresh `nodes` measured against `shapes`.
fn fgd_and_yiyun(nodes: &[Node], shapes: &[(u64, GpuRequest, &[&str], f64)], pod: &Pod) -> [String; 2] {
    [Policy::Fgd, Policy::Yiyun].map(|policy| {
        let mut engine = Engine::new(policy, 1);
        for node in nodes {
            engine.upsert_node(node.clone());
        }
        engine.set_workload(workload(shapes));
        let placement = engine.schedule(pod).expect("fits");
        engine.node(placement.node).map(|node| node.name.clone()).unwrap_or_default()
    })
}

#[test]
fn yiyun_leaves_a_model_pinned_pods_will_ask_for_to_them() {
    let mut a = node("a", 16_000, 1);
    a.gpu_model = Some("A".into());
    let mut b = node("b", 16_000, 2);
    b.gpu_model = Some("B".into());
    // Pods pinned to A bring 2/7 of the GPU demand; A has a third of the free GPUs.
    let shapes: &[(u64, GpuRequest, &[&str], f64)] = &[
        (1_000, GpuRequest::Whole(1), &["A"], 0.4),
        (1_000, GpuRequest::Whole(1), &[], 0.2),
        (1_000, GpuRequest::Whole(2), &[], 0.4),
    ];
    let unpinned = pod("free-to-go", 1_000, GpuRequest::Whole(1));
    // FGD keeps b's two GPUs together for a two-GPU pod and takes A's last GPU.
    assert_eq!(fgd_and_yiyun(&[a, b], shapes, &unpinned), ["a", "b"]);
}

#[test]
fn yiyun_puts_a_cpu_heavy_pod_where_it_leaves_no_gpu_without_cpu() {
    // GPU pods bring 4 CPUs a GPU: the 8-GPU node's 64 CPUs serve all its GPUs, until a pod
    // takes 48 of them and leaves 16 CPUs beside 7 GPUs, enough for 4 of them.
    let shapes: &[(u64, GpuRequest, &[&str], f64)] =
        &[(4_000, GpuRequest::Whole(1), &[], 0.5), (8_000, GpuRequest::Whole(2), &[], 0.5)];
    let nodes = [node("dense", 64_000, 8), node("roomy", 104_000, 2)];
    let heavy = pod("heavy", 48_000, GpuRequest::Whole(1));
    // FGD only asks whether a typical pod still fits (on the dense node it does, twice over),
    // and keeps the roomy node's two GPUs together for a two-GPU pod.
    assert_eq!(fgd_and_yiyun(&nodes, shapes, &heavy), ["dense", "roomy"]);
}

#[test]
fn yiyun_keeps_a_pod_without_gpus_off_free_gpus_only_while_gpus_run_out_first() {
    // 80 CPUs beside 8 GPUs: 10 CPUs per GPU. GPU pods bring 4 CPUs a GPU, so the tight node's
    // 16 CPUs serve its 4 GPUs until a pod without GPUs takes some of them.
    let nodes = [node("tight", 16_000, 4), node("roomy", 64_000, 4)];
    let place = |shapes: &[(u64, GpuRequest, &[&str], f64)]| {
        let mut engine = Engine::new(Policy::Yiyun, 1);
        for node in &nodes {
            engine.upsert_node(node.clone());
        }
        engine.set_workload(workload(shapes));
        let placement = engine.schedule(&pod("batch", 4_000, GpuRequest::None)).expect("fits");
        engine.node(placement.node).map(|node| node.name.clone()).unwrap_or_default()
    };
    // Mostly GPU pods (5 CPUs asked per GPU): GPUs run out first, and a GPU the tight node
    // could no longer serve would be lost.
    let gpus_run_out = [(4_000, GpuRequest::Whole(1), &[][..], 0.8), (4_000, GpuRequest::None, &[][..], 0.2)];
    assert_eq!(place(&gpus_run_out), "roomy");
    // Mostly large pods without GPUs (68 CPUs asked per GPU): CPU runs out first and GPUs are
    // left somewhere whatever happens; the tightest fit keeps the roomy node's CPU whole.
    let cpu_runs_out =
        [(4_000, GpuRequest::Whole(1), &[][..], 0.2), (16_000, GpuRequest::None, &[][..], 0.8)];
    assert_eq!(place(&cpu_runs_out), "tight");
}

#[test]
fn among_nodes_alike_yiyun_sends_small_gpu_pods_to_the_node_added_first_and_larger_ones_to_the_tightest() {
    // Every shape fits either node before and after any one of them lands: the nodes differ
    // only in CPU, which no shape runs short of.
    let shapes = [
        (2_000, GpuRequest::Whole(1), &[][..], 1.0),
        (2_000, GpuRequest::Whole(2), &[][..], 1.0),
        (2_000, GpuRequest::Fraction(500), &[][..], 1.0),
    ];
    let (tight, roomy) = (node("tight", 32_000, 4), node("roomy", 64_000, 4));
    for order in [[&tight, &roomy], [&roomy, &tight]] {
        let place = |gpu: GpuRequest| {
            let mut engine = Engine::new(Policy::Yiyun, 1);
            for node in order {
                engine.upsert_node(node.clone());
            }
            engine.set_workload(workload(&shapes));
            let placement = engine.schedule(&pod("p", 2_000, gpu)).expect("fits");
            engine.node(placement.node).map(|node| node.name.clone()).unwrap_or_default()
        };
        let added = order.map(|node| node.name.as_str());
        assert_eq!(place(GpuRequest::Whole(1)), added[0], "one GPU, nodes added {added:?}");
        assert_eq!(place(GpuRequest::Fraction(500)), added[0], "a fraction, nodes added {added:?}");
        assert_eq!(place(GpuRequest::Whole(2)), "tight", "two GPUs, nodes added {added:?}");
    }
}

#[test]
fn yiyun_does_not_reward_a_small_pod_for_taking_gpus_of_a_node_built_lean_on_cpu() {
    // The pods bring 10.7 CPUs per GPU; the lean node has 8 per GPU, which four-GPU pods asking
    // 32 CPUs use whole. Judged by the pods' ratio, a GPU of the empty lean node would count as
    // stranded, and a one-GPU pod asking 3 CPUs would earn 0.7 GPU for taking it there.
    let shapes = [(16_000, GpuRequest::Whole(1), &[][..], 2.0), (32_000, GpuRequest::Whole(4), &[][..], 1.0)];
    let mut engine = Engine::new(Policy::Yiyun, 1);
    // Added first, so it would win a tie: the roomy node must win on the measure.
    engine.upsert_node(node("lean", 32_000, 4));
    engine.upsert_node(node("roomy", 64_000, 4));
    engine.set_workload(workload(&shapes));
    let placement = engine.schedule(&pod("small", 3_000, GpuRequest::Whole(1))).expect("fits");
    let chosen = engine.node(placement.node).map(|node| node.name.as_str());
    assert_eq!(chosen, Some("roomy"), "the next one-GPU pod asking 16 CPUs still fits beside it there");
}

#[test]
fn a_restarted_engine_recalls_the_measure_and_places_its_first_pod_by_it() {
    let cluster = || {
        let mut engine = Engine::new(Policy::Yiyun, 1);
        // Added first, so a pod with nothing measured yet goes there.
        engine.upsert_node(node("eight", 96_000, 8));
        engine.upsert_node(node("two", 16_000, 2));
        engine
    };
    let small = pod("small", 1_000, GpuRequest::Whole(1));
    let placed_on = |engine: &mut Engine| {
        let placement = engine.decide(&small).expect("fits");
        engine.node(placement.node).map(|node| node.name.clone()).unwrap_or_default()
    };
    let mut measured = cluster();
    for index in 0..200 {
        measured.decide(&pod(&format!("eight-gpu-{index}"), 8_000, GpuRequest::Whole(8))).expect("fits");
    }
    // Eight-GPU pods are all it has seen: the small pod keeps the eight-GPU node whole.
    assert_eq!(placed_on(&mut measured), "two");
    assert_eq!(placed_on(&mut cluster()), "eight");

    let mut restarted = cluster();
    restarted.recall_measure(&measured.measure());
    assert_eq!(restarted.measure(), measured.measure());
    assert_eq!(placed_on(&mut restarted), "two");
}
