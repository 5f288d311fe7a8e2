//! The placement-quality experiment of the FGD paper: pods of one list shuffled with a seed,
//! inflated with re-sampled copies until their GPUs add up to a multiple of the cluster's
//! (130%), placed one by one and never leaving; at every 1% of capacity arrived, the share of
//! GPU capacity allocated. A pod that fits nowhere is skipped.

use std::{collections::HashMap, time::Instant};

use yiyun_engine::{
    Engine, Placement, Policy,
    gpu::{Shape, Workload},
    model::{Node, Pod},
    observed::{TYPICAL_POD_COVERAGE, WINDOW},
    rng::Rng,
};

use crate::{
    forced::forced_away_milli,
    losses::{Losses, SmallestGpuPod},
    trace::{TraceNode, TracePod},
};

#[derive(Clone, Debug)]
pub struct ExperimentConfig {
    /// Arrived GPU demand to stop at, as a multiple of capacity (1.3 in the paper).
    pub inflation: f64,
    pub seed: u64,
    /// Percent of capacity arrived at which the engine is restarted: a new one learns the
    /// nodes and the pods placed so far, and recalls the workload measured, as the scheduler
    /// does after a restart or a failover.
    pub restart_at: Option<u64>,
    /// Pods yiyun has measured before the run: the list's pods in another order, as a scheduler
    /// that ran on earlier days recalls them (0: it starts measuring from the run's first pod).
    pub history: usize,
}

impl ExperimentConfig {
    /// The paper's experiment on one seed: up to 130% of capacity, no restart, yiyun starting
    /// from as much history as its measure holds.
    pub fn paper(seed: u64) -> ExperimentConfig {
        ExperimentConfig { inflation: 1.3, seed, restart_at: None, history: WINDOW }
    }
}

/// Offset of the seed that orders the history from the run's: another day's arrivals.
const HISTORY_SEED_OFFSET: u64 = 1 << 32;

impl ExperimentConfig {
    /// The same experiment on an earlier day: the list's pods in another order.
    fn earlier_day(&self) -> ExperimentConfig {
        ExperimentConfig { seed: self.seed.wrapping_add(HISTORY_SEED_OFFSET), ..self.clone() }
    }
}

/// One run of one policy on one seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub policy: Policy,
    pub seed: u64,
    /// GPU allocation ratio (0–1) when 1%, 2%, … of capacity had arrived.
    pub allocated: Vec<f64>,
    pub placed: usize,
    pub failed: usize,
    /// Cluster fragmentation (GPU milli) at the end, against the workload.
    pub fragmented_milli: f64,
    pub capacity_milli: u64,
    pub decisions_per_second: f64,
    /// Where the unallocated GPUs were, and the pods turned away until then, when 100% of
    /// capacity had arrived (None for runs stopping earlier).
    pub losses_at_full: Option<Losses>,
    /// Whether the engine was restarted (`ExperimentConfig::restart_at`) before the run ended.
    pub restarted: bool,
}

impl Curve {
    /// Allocation ratio when `percent` of capacity had arrived.
    pub fn at(&self, percent: usize) -> Option<f64> {
        percent.checked_sub(1).and_then(|index| self.allocated.get(index)).copied()
    }
}

/// The pod list of one seed: shuffled, then inflated with re-sampled copies.
pub fn arrivals(pods: &[TracePod], capacity_milli: u64, config: &ExperimentConfig) -> Vec<TracePod> {
    let mut rng = Rng::new(config.seed);
    let mut list = pods.to_vec();
    rng.shuffle(&mut list);
    let target = (capacity_milli as f64 * config.inflation) as u64;
    let mut demand: u64 = list.iter().map(|pod| pod.gpu.milli()).sum();
    let gpu_pods = pods.iter().any(|pod| pod.gpu.milli() > 0);
    while gpu_pods && demand < target {
        let mut copy = pods[rng.below(pods.len() as u64) as usize].clone();
        copy.name = format!("{}-copy{}", copy.name, list.len());
        demand += copy.gpu.milli();
        list.push(copy);
    }
    list
}

/// The measure a scheduler would recall from earlier days: the shapes of the first
/// `config.history` pods of another seed's arrivals.
fn history(pods: &[TracePod], capacity_milli: u64, config: &ExperimentConfig) -> Vec<(Shape, u32)> {
    let mut counts: HashMap<Shape, u32> = HashMap::new();
    for pod in arrivals(pods, capacity_milli, &config.earlier_day()).iter().take(config.history) {
        *counts.entry(Shape::of(&pod.to_pod(String::new()))).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// An engine of `policy` on `nodes`.
fn engine_on(nodes: &[TraceNode], policy: Policy, seed: u64) -> Engine {
    let mut engine = Engine::new(policy, seed);
    for node in nodes {
        engine.upsert_node(node.to_node());
    }
    engine
}

/// Runs one policy on one seed.
pub fn run(nodes: &[TraceNode], list_pods: &[TracePod], policy: Policy, config: &ExperimentConfig) -> Curve {
    let mut engine = engine_on(nodes, policy, config.seed);
    let (capacity, _) = engine.gpu_milli();
    let list = arrivals(list_pods, capacity, config);
    let pods: Vec<Pod> = list.iter().enumerate().map(|(index, pod)| pod.to_pod(format!("{index}"))).collect();
    // FGD as published knows the list's typical pods in advance; yiyun measures what arrives,
    // from what it measured on earlier days.
    let known = (policy != Policy::Yiyun).then(|| Workload::from_pods(&pods, TYPICAL_POD_COVERAGE));
    match &known {
        Some(workload) => engine.set_workload(workload.clone()),
        None if config.history > 0 => engine.recall_measure(&history(list_pods, capacity, config)),
        None => {}
    }
    // Where each pod went, kept only to tell a restarted engine.
    let mut placements: Vec<(&Pod, Placement)> = Vec::new();
    let mut restart_at = config.restart_at;
    let smallest = SmallestGpuPod::of(
        pods.iter().map(|pod| (pod.requests.cpu_milli, pod.requests.memory_bytes, pod.gpu)),
    )
    .unwrap_or_default();
    let mut losses = Losses::default();
    let mut losses_at_full = None;
    let marks = (config.inflation * 100.0).round() as usize;
    let mut allocated = Vec::with_capacity(marks);
    let (mut arrived, mut placed, mut failed) = (0u64, 0, 0);
    let started = Instant::now();
    for (index, pod) in pods.iter().enumerate() {
        if allocated.len() >= marks {
            break;
        }
        if let Some(percent) = restart_at
            && arrived * 100 >= capacity * percent
        {
            restart_at = None;
            let measure = engine.measure();
            engine = engine_on(nodes, policy, config.seed);
            if let Some(workload) = &known {
                engine.set_workload(workload.clone());
            }
            // Yiyun's recalled measure counts the pods placed so far already; a policy given its
            // workload measures nothing (both calls are no-ops for its measure).
            engine.recall_measure(&measure);
            for (pod, placement) in placements.drain(..) {
                engine.assume_measured(pod, &placement);
            }
        }
        match engine.try_schedule(pod) {
            Some(placement) => {
                placed += 1;
                if restart_at.is_some() {
                    placements.push((pod, placement));
                }
            }
            None => {
                failed += 1;
                if losses_at_full.is_none() {
                    losses.add_failed(pod.gpu);
                }
            }
        }
        arrived += pod.gpu.milli();
        while allocated.len() < marks && arrived * 100 >= capacity * (allocated.len() as u64 + 1) {
            let (_, used) = engine.gpu_milli();
            allocated.push(used as f64 / capacity as f64);
            if allocated.len() == FULL {
                let mut at_full = where_unallocated(&engine, losses, smallest);
                let cluster: Vec<Node> = nodes.iter().map(TraceNode::to_node).collect();
                at_full.forced_away_milli = forced_away_milli(&cluster, &pods[..=index]);
                losses_at_full = Some(at_full);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Curve {
        policy,
        seed: config.seed,
        allocated,
        placed,
        failed,
        fragmented_milli: engine.fragmentation(),
        capacity_milli: capacity,
        decisions_per_second: (placed + failed) as f64 / seconds.max(1e-9),
        losses_at_full,
        restarted: config.restart_at.is_some() && restart_at.is_none(),
    }
}

/// The mark (percent of capacity arrived) at which losses are broken down.
const FULL: usize = 100;

/// `failed` with the engine's free GPUs added, node by node.
fn where_unallocated(engine: &Engine, mut losses: Losses, smallest: SmallestGpuPod) -> Losses {
    for id in engine.node_ids() {
        if let Some((free, gpus)) = engine.free(id) {
            losses.add_node(free.cpu_milli, free.memory_bytes, gpus, smallest);
        }
    }
    losses
}

#[cfg(test)]
mod tests {
    use yiyun_engine::model::GpuRequest;

    use super::*;
    use crate::trace::fixtures::{node, pod};

    /// The losses `curve` broke down when 100% had arrived and the GPU milli unallocated then,
    /// checked to be the same amount.
    fn losses_at_full(curve: &Curve, run: &str) -> (Losses, f64) {
        let losses = curve.losses_at_full.expect("100% arrived");
        let used = curve.at(100).expect("a 100% mark") * curve.capacity_milli as f64;
        let unallocated = curve.capacity_milli as f64 - used;
        assert!((losses.unallocated_milli() as f64 - unallocated).abs() < 0.5, "{run}: {losses:?}");
        (losses, unallocated)
    }

    #[test]
    fn the_history_is_the_lists_pods_arriving_on_another_day() {
        let pods: Vec<TracePod> = (0..40)
            .map(|index| {
                let gpu = if index % 4 == 0 { GpuRequest::Whole(8) } else { GpuRequest::Fraction(500) };
                pod(&format!("p{index}"), 4_000, gpu)
            })
            .collect();
        let config = ExperimentConfig { history: 30, ..ExperimentConfig::paper(7) };
        let capacity = 20_000;
        let counts = history(&pods, capacity, &config);
        assert_eq!(counts.iter().map(|(_, count)| count).sum::<u32>(), 30);
        assert_eq!(counts.len(), 2, "{counts:?}");
        // Another order than the run's: the first 30 arrivals of the run hold other pods.
        let shapes_of = |list: &[TracePod]| -> Vec<GpuRequest> { list.iter().map(|pod| pod.gpu).collect() };
        assert_ne!(
            shapes_of(&arrivals(&pods, capacity, &config)[..30]),
            shapes_of(&arrivals(&pods, capacity, &config.earlier_day())[..30])
        );
        let cold = ExperimentConfig { history: 0, ..config };
        assert!(history(&pods, capacity, &cold).is_empty());
    }

    #[test]
    fn losses_at_full_account_for_every_unallocated_gpu_and_the_demand_turned_away() {
        let nodes: Vec<TraceNode> = (0..3).map(|index| node(&format!("n{index}"), 16_000, 2, "T4")).collect();
        let pods: Vec<TracePod> = [GpuRequest::Fraction(600), GpuRequest::Whole(1), GpuRequest::Whole(2)]
            .into_iter()
            .enumerate()
            .map(|(index, gpu)| pod(&format!("p{index}"), 2_000, gpu))
            .collect();
        for seed in 1..6 {
            let config = ExperimentConfig::paper(seed);
            let curve = run(&nodes, &pods, Policy::Yiyun, &config);
            let (losses, unallocated) = losses_at_full(&curve, &format!("seed {seed}"));
            // What had arrived by then was at least the capacity: what was turned away is at
            // least what is unallocated.
            assert!(losses.away_milli() as f64 >= unallocated, "seed {seed}: {losses:?}");
        }
    }

    #[test]
    fn no_policy_turns_away_less_than_what_was_forced_away() {
        // Eight-GPU pods asking 120 CPUs fit only the one large node.
        let mut nodes = vec![node("large", 128_000, 8, "G3")];
        nodes.extend((0..3).map(|index| node(&format!("eight{index}"), 96_000, 8, "G2")));
        nodes.extend((0..4).map(|index| node(&format!("two{index}"), 32_000, 2, "T4")));
        let pods = vec![
            pod("large", 120_000, GpuRequest::Whole(8)),
            pod("eight", 64_000, GpuRequest::Whole(8)),
            pod("one", 8_000, GpuRequest::Whole(1)),
            pod("half", 4_000, GpuRequest::Fraction(500)),
            pod("two", 8_000, GpuRequest::Whole(2)),
        ];
        let mut forced_somewhere = false;
        for policy in [Policy::Yiyun, Policy::Fgd, Policy::BestFit, Policy::FirstFit, Policy::Spread] {
            for seed in 1..6 {
                let config = ExperimentConfig::paper(seed);
                let curve = run(&nodes, &pods, policy, &config);
                let (losses, _) = losses_at_full(&curve, &format!("{policy:?} seed {seed}"));
                assert!(
                    losses.forced_away_milli <= losses.away_milli(),
                    "{policy:?} seed {seed}: {losses:?}"
                );
                forced_somewhere |= losses.forced_away_milli > 0;
            }
        }
        assert!(forced_somewhere, "no seed brought more large pods than there are large nodes");
    }

    #[test]
    fn a_restarted_engine_keeps_every_pod_placed_before_it_and_goes_on_placing() {
        let nodes: Vec<TraceNode> = (0..8).map(|index| node(&format!("n{index}"), 32_000, 4, "T4")).collect();
        let pods: Vec<TracePod> = [GpuRequest::Fraction(500), GpuRequest::Whole(1), GpuRequest::Whole(2)]
            .into_iter()
            .enumerate()
            .map(|(index, gpu)| pod(&format!("p{index}"), 4_000, gpu))
            .collect();
        for policy in [Policy::Yiyun, Policy::Fgd] {
            for seed in 1..4 {
                let through = run(&nodes, &pods, policy, &ExperimentConfig::paper(seed));
                let config = ExperimentConfig { restart_at: Some(50), ..ExperimentConfig::paper(seed) };
                let restarted = run(&nodes, &pods, policy, &config);
                assert!(restarted.restarted && !through.restarted, "{policy:?} seed {seed}");
                // Up to the restart both runs are the same run.
                assert_eq!(restarted.allocated[..49], through.allocated[..49], "{policy:?} seed {seed}");
                // The new engine holds what was placed and adds to it.
                assert!(
                    restarted.allocated.windows(2).all(|pair| pair[1] >= pair[0]),
                    "{policy:?} seed {seed}"
                );
                assert!(
                    restarted.at(100) > restarted.at(50),
                    "{policy:?} seed {seed}: {:?}",
                    restarted.allocated
                );
                losses_at_full(&restarted, &format!("{policy:?} seed {seed}"));
            }
        }
    }
}
