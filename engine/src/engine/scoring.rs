//! How a group of alike nodes scores for a pod under each policy: FGD's fragmentation from a
//! memo (with the lookahead and yiyun's terms), and the whole steps decisions compare.

use super::*;

/// Key of the fragmentation memo: what the measure depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct FragKey {
    /// yiyun's measure, which also looks one pod ahead.
    lookahead: bool,
    /// The node's GPU model (its entry in `gpu_models`), all the measure reads of its class.
    model: u32,
    cpu: u64,
    memory: u64,
    gpus: GpuFree,
}

/// Entries of the fragmentation memo before it is cleared, to bound memory.
const FRAG_MEMO_LIMIT: usize = 1 << 20;

/// Weight of the fragmentation one typical pod later in yiyun's measure. FGD's measure only
/// asks whether the next pod could use what is free; adding half of what would be stranded after
/// that pod steers away from nodes about to run out of CPU beside free GPUs, the largest loss on
/// the Alibaba trace.
const LOOKAHEAD_WEIGHT: f64 = 0.5;

/// Growth of fragmentation (GPU milli) that yiyun treats as equal: among nodes that close, the
/// tightest fit (for pods of several GPUs or none), then the node added first, wins. Chasing
/// smaller differences spreads pods over many nodes and leaves none empty for the large pods that
/// come later (measured on the trace: exact differences allocate 1.4 points less).
const FRAGMENTATION_STEP_MILLI: f64 = 60.0;

pub(super) fn frag_key(
    lookahead: bool,
    workload: &Workload,
    group: &Group,
    cpu: u64,
    gpus: GpuFree,
) -> FragKey {
    let (cpu, memory) = workload.canonical(cpu, group.key.free.memory_bytes);
    FragKey { lookahead, model: (group.bucket / GPU_BUCKETS) as u32, cpu, memory, gpus }
}

pub(super) fn memo_fragmentation(
    memo: &mut FxHashMap<FragKey, f64>,
    workload: &Workload,
    key: FragKey,
    model: Option<&str>,
) -> f64 {
    if let Some(&value) = memo.get(&key) {
        return value;
    }
    if memo.len() >= FRAG_MEMO_LIMIT {
        memo.clear();
    }
    let mut value = workload.fragmentation(key.cpu, key.memory, &key.gpus, model);
    if key.lookahead {
        value += LOOKAHEAD_WEIGHT * workload.fragmentation_ahead(key.cpu, key.memory, &key.gpus, model);
    }
    memo.insert(key, value);
    value
}

/// For yiyun, the GPUs (in steps of the fragmentation score) of the GPU model in slot `model`
/// that pinned pods will ask for and `pod` would take though it could go anywhere.
pub(super) fn displaced_steps(policy: Policy, pod: &Pod, model: usize, model_pressure: &[f64]) -> f64 {
    if policy != Policy::Yiyun || !pod.gpu_models.is_empty() {
        return 0.0;
    }
    let pressure = model_pressure.get(model).copied().unwrap_or(0.0);
    (pod.gpu.milli() as f64 * pressure / FRAGMENTATION_STEP_MILLI).round()
}

/// A group's fragmentation not measured yet (no workload generation reaches it).
pub(super) const NOT_MEASURED: u64 = u64::MAX;

/// What scoring a group reads besides the group and the pod.
pub(super) struct Scoring<'a> {
    pub(super) policy: Policy,
    pub(super) workload: &'a Workload,
    pub(super) workload_generation: u64,
    pub(super) classes: &'a [NodeClass],
    /// The largest node's CPU and GPU milli, which best-fit terms are normalised by.
    pub(super) largest_cpu: u64,
    pub(super) largest_gpu: u64,
    pub(super) cpu_binds: bool,
}

/// Scores one group of alike nodes for `pod`; for a GPU fraction also which device (by its
/// free milli) the pod should take.
pub(super) fn score_group(
    scoring: &Scoring,
    pod: &Pod,
    group: &Group,
    preference: i64,
    cost: f64,
    memo: &mut FxHashMap<FragKey, f64>,
) -> (Score, Option<u16>) {
    let Scoring { policy, workload, workload_generation, classes, largest_cpu, largest_gpu, cpu_binds } =
        *scoring;
    let shape = &group.key;
    let cpu_after = shape.free.cpu_milli - pod.requests.cpu_milli;
    let gpu_free = shape.gpus.total();
    let gpu_after = gpu_free - pod.gpu.milli();
    // For a fraction, each distinct free amount that fits is a choice of device (devices come
    // sorted, so equal amounts are neighbours).
    let mut distinct = [None; MAX_GPUS];
    let choices: &[Option<u16>] = match pod.gpu {
        GpuRequest::Fraction(milli) => {
            let mut count = 0;
            for &free in shape.gpus.devices().iter().filter(|&&free| free >= milli) {
                if count == 0 || distinct[count - 1] != Some(free) {
                    distinct[count] = Some(free);
                    count += 1;
                }
            }
            &distinct[..count]
        }
        _ => &[None],
    };
    let after = |device: Option<u16>| -> GpuFree {
        let mut gpus = shape.gpus;
        match (pod.gpu, device) {
            (GpuRequest::Fraction(milli), Some(free)) => {
                if let Some(d) = gpus.device_with(free) {
                    gpus.take(&[(d, milli)]);
                }
            }
            (GpuRequest::Whole(count), _) => {
                // Sorted largest first: the idle devices lead.
                for device in 0..count {
                    gpus.take(&[(device, 1000)]);
                }
            }
            _ => {}
        }
        gpus.sorted()
    };
    match policy {
        Policy::FirstFit => {
            let first = group.members.first().map_or(u64::MAX, |(rank, _)| *rank);
            // The tightest device, as a packing device plugin would.
            ([-(first as f64), 0.0, 0.0, 0.0], choices.last().copied().flatten())
        }
        Policy::BestFit => {
            let left =
                0.5 * cpu_after as f64 / largest_cpu as f64 + 0.5 * gpu_after as f64 / largest_gpu as f64;
            ([((1.0 - left) * 100.0).trunc(), 0.0, 0.0, 0.0], choices.last().copied().flatten())
        }
        Policy::Spread => {
            let cpu = cpu_after as f64 / shape.allocatable_cpu.max(1) as f64;
            let memory = (shape.free.memory_bytes - pod.requests.memory_bytes) as f64
                / shape.allocatable_memory.max(1) as f64;
            ([((cpu + memory) / 2.0 * 100.0).trunc(), 0.0, 0.0, 0.0], choices.first().copied().flatten())
        }
        Policy::Fgd | Policy::Yiyun => {
            let model = classes[shape.class as usize].gpu_model.as_deref();
            let yiyun = policy == Policy::Yiyun;
            // Looking ahead for CPU-only pods left more GPUs beside exhausted CPU (measured on
            // the CPU-heavy mixes); the CPU-to-GPU term below speaks for the GPUs they strand.
            let lookahead = yiyun && pod.gpu.milli() > 0;
            // GPUs a pod of two or more leaves without CPU are left to the fragmentation measure:
            // counting them too turned more such pods away (measured on the multi-GPU mixes).
            // Nor are a pod without GPUs when CPU runs out first: GPUs are left beside it anyway,
            // and steering it off them broke up CPU that GPU pods needed (measured on the
            // CPU-heavy mixes). A node built with less CPU per GPU than the pods bring is judged
            // by its own ratio (`stranding_ratio`).
            let strands = yiyun
                && !matches!(pod.gpu, GpuRequest::Whole(count) if count > 1)
                && !(cpu_binds && pod.gpu == GpuRequest::None);
            let cpu_per_gpu = workload
                .cpu_per_gpu()
                .filter(|_| strands)
                .map(|ratio| stranding_ratio(ratio, shape.allocatable_cpu, shape.gpus.devices().len()));
            let stranded_before =
                cpu_per_gpu.map_or(0.0, |ratio| stranded(ratio, shape.free.cpu_milli, gpu_free));
            let mut measured = group.fragmentation.get();
            let before = match measured[usize::from(lookahead)] {
                (generation, value) if generation == workload_generation => value,
                _ => {
                    let key = frag_key(lookahead, workload, group, shape.free.cpu_milli, shape.gpus);
                    let value = memo_fragmentation(memo, workload, key, model);
                    measured[usize::from(lookahead)] = (workload_generation, value);
                    group.fragmentation.set(measured);
                    value
                }
            };
            let mut best: Option<(f64, Option<u16>)> = None;
            for &device in choices {
                let gpus = after(device);
                let mut grown = memo_fragmentation(
                    memo,
                    workload,
                    frag_key(lookahead, workload, group, cpu_after, gpus),
                    model,
                ) - before;
                if let Some(ratio) = cpu_per_gpu {
                    grown += stranded(ratio, cpu_after, gpus.total()) - stranded_before;
                }
                let value = if policy == Policy::Fgd {
                    // As published: sigmoid of the drop in fragmentation (in GPUs), scaled to 0–100
                    // and truncated to an integer; the first device wins a tie.
                    (sigmoid(-grown / 1000.0) * 100.0).trunc()
                } else {
                    // Whole steps, zero without a sign: a decision lowers scores by whole steps
                    // per model (`displaced_steps`), which must keep each model's order.
                    0.0 - (grown / FRAGMENTATION_STEP_MILLI).round()
                };
                // Choices come largest free first: FGD keeps the first of equals, yiyun the
                // tightest device.
                let better = |score: f64| if policy == Policy::Fgd { value > score } else { value >= score };
                if best.is_none_or(|(score, _)| better(score)) {
                    best = Some((value, device));
                }
            }
            let (value, device) = best.unwrap_or((0.0, None));
            if policy == Policy::Fgd {
                return ([value, 0.0, 0.0, 0.0], device);
            }
            // Among nodes alike in expected loss, a pod of one GPU or less goes to the node added
            // first, so such pods keep filling the same nodes; the tightest fit sent them to the
            // nodes with least CPU, often four-GPU nodes the four-GPU pods then missed. Pods of
            // several GPUs or none take the tightest fit, which keeps large nodes whole.
            let tightness = match pod.gpu {
                GpuRequest::Whole(1) | GpuRequest::Fraction(_) => 0.0,
                _ => -(cpu_after as f64 / largest_cpu as f64 + gpu_after as f64 / largest_gpu as f64),
            };
            // Costs in whole fen, so a rounding error never outweighs fragmentation.
            ([preference as f64, -(cost * 100.0).round(), value, tightness], device)
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
