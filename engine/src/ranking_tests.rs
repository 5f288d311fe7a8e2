//! Decisions read from the rankings are the decisions of scoring every group.

use proptest::prelude::*;

use crate::{
    Engine, Policy,
    model::{GpuRequest, Node, Pod, Resources},
};

const GIB: u64 = 1 << 30;

#[derive(Clone, Debug)]
enum Op {
    /// One of a few shapes (so they become typical and get rankings), pinned to one of two
    /// models or not (one in four: enough for each model's pressure to move rather than
    /// saturate, and to differ between models).
    Place {
        shape: usize,
        memory_gib: u64,
        pinned: Option<&'static str>,
    },
    Forget {
        pick: usize,
    },
    AddNode {
        size: usize,
    },
    RemoveNode {
        pick: usize,
    },
}

const SHAPES: [(u64, GpuRequest); 6] = [
    (4_000, GpuRequest::Fraction(500)),
    (8_000, GpuRequest::Fraction(250)),
    (12_000, GpuRequest::Whole(1)),
    (16_000, GpuRequest::Whole(2)),
    (2_000, GpuRequest::None),
    (30_000, GpuRequest::Whole(4)),
];

fn node(index: usize, size: usize) -> Node {
    let (cpu, gpus, model) =
        [(32_000, 2, "A10"), (64_000, 4, "A10"), (96_000, 8, "V100"), (48_000, 0, "")][size];
    let mut node = Node::new(
        format!("n{index}"),
        Resources { cpu_milli: cpu, memory_bytes: 128 * GIB, pods: 110, ..Default::default() },
    );
    node.gpus = gpus;
    node.gpu_model = (!model.is_empty()).then(|| model.to_string());
    node
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..SHAPES.len(), 1u64..=96, 0..8u8).prop_map(|(shape, memory_gib, pin)| Op::Place {
            shape,
            memory_gib,
            pinned: [Some("A10"), Some("V100")].get(usize::from(pin)).copied().flatten(),
        }),
        3 => any::<usize>().prop_map(|pick| Op::Forget { pick }),
        1 => (0usize..4).prop_map(|size| Op::AddNode { size }),
        1 => any::<usize>().prop_map(|pick| Op::RemoveNode { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn rankings_decide_as_scoring_every_group(
        sizes in proptest::collection::vec(0usize..4, 1..24),
        ops in proptest::collection::vec(op(), 1..600),
        // yiyun most often: its measures move with the cluster (the models' pressure).
        policy in prop_oneof![3 => Just(Policy::Yiyun), 2 => proptest::sample::select(Policy::ALL.to_vec())],
    ) {
        let mut ranked = Engine::new(policy, 3);
        let mut scanned = Engine::new(policy, 3).without_rankings();
        let mut nodes: Vec<String> = Vec::new();
        for (index, &size) in sizes.iter().enumerate() {
            ranked.upsert_node(node(index, size));
            scanned.upsert_node(node(index, size));
            nodes.push(format!("n{index}"));
        }
        let mut placed: Vec<String> = Vec::new();
        let (mut asked, mut read) = (0, false);
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Place { shape, memory_gib, pinned } => {
                    let (cpu, gpu) = SHAPES[shape];
                    let mut pod = Pod::new(format!("p{step}"), Resources::new(cpu, memory_gib * GIB));
                    pod.gpu = gpu;
                    if let Some(model) = pinned.filter(|_| gpu.milli() > 0) {
                        pod.gpu_models = vec![model.to_string()];
                    }
                    asked += 1;
                    let (a, b) = (ranked.schedule(&pod), scanned.schedule(&pod));
                    read |= ranked.rankings_kept() > 0;
                    prop_assert_eq!(a.as_ref().ok(), b.as_ref().ok(), "pod {} of shape {}", step, shape);
                    if a.is_ok() {
                        placed.push(pod.key);
                    }
                }
                Op::Forget { pick } if !placed.is_empty() => {
                    let key = placed.swap_remove(pick % placed.len());
                    prop_assert_eq!(ranked.forget(&key), scanned.forget(&key));
                }
                Op::AddNode { size } => {
                    let index = step + 1000;
                    ranked.upsert_node(node(index, size));
                    scanned.upsert_node(node(index, size));
                    nodes.push(format!("n{index}"));
                }
                Op::RemoveNode { pick } if nodes.len() > 1 => {
                    let name = nodes.swap_remove(pick % nodes.len());
                    let (mut a, mut b) = (ranked.remove_node(&name), scanned.remove_node(&name));
                    a.sort();
                    b.sort();
                    placed.retain(|key| !a.contains(key));
                    prop_assert_eq!(a, b);
                }
                _ => {}
            }
        }
        // The shapes are typical from the first pods on.
        prop_assert!(asked < 8 || read, "no decision read a ranking");
    }
}
