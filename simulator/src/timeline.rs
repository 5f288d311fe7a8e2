//! `yiyun simulate timeline`: the trace replayed in time (pods arrive at `creation_time`, leave
//! at `deletion_time`) on a province-wide topology assigned by a documented, seeded rule, to
//! compare policies on cost, East/West split, latency classes and tenant shares.
//!
//! The rule (same seed, same topology):
//! - Four sites: `hefei` and `wuhu` in the east (Anhui; 0.65 and 0.62 CNY/kWh, PUE 1.30 and
//!   1.35), `qingyang` (Gansu; 0.26 CNY/kWh, PUE 1.15) and `guian` (Guizhou; 0.30 CNY/kWh, PUE
//!   1.20) in the west. Links: hefei–wuhu 2 ms, 400 Gbit/s, 0.001 CNY/GB; east–west 28–32 ms,
//!   100 Gbit/s, 0.01 CNY/GB; qingyang–guian 25 ms.
//! - Nodes, shuffled: the first 40% go east (alternating hefei, wuhu), the rest west
//!   (alternating qingyang, guian); 20 nodes to a rack in that order.
//! - Tenants: 8 departments of 2 cities of one province; each pod belongs to one at random.
//! - Latency class: latency-sensitive (LS) pods are 30% realtime, 70% interactive; best-effort
//!   (BE) pods 70% batch, 30% archive.
//! - Data: every pod's data is in an east site (hefei or wuhu at random), 1–500 GB
//!   (log-uniform). Runtime: deletion minus creation time. Deadline: batch 3× runtime + 2 h,
//!   archive 10× runtime + 24 h.

use std::{collections::BTreeMap, fmt::Write, path::Path, time::Instant};

use yiyun_engine::{
    Engine, Policy,
    cost::{CostModel, Link, Site},
    gpu::Workload,
    model::{DataLocality, LatencyClass, Node, Pod},
    observed::TYPICAL_POD_COVERAGE,
    rng::Rng,
    tenants::{Tenant, Usage},
};

use crate::{
    Error, read,
    trace::{Qos, TraceNode, TracePod, parse_nodes, parse_pods},
};

const SITES: [(&str, &str, bool, f64, f64); 4] = [
    ("hefei", "anhui", true, 0.65, 1.30),
    ("wuhu", "anhui", true, 0.62, 1.35),
    ("qingyang", "gansu", false, 0.26, 1.15),
    ("guian", "guizhou", false, 0.30, 1.20),
];
const RACK_SIZE: usize = 20;
const TENANTS: usize = 8;
/// Node label naming the site (what NodePools write), used to pin pods to a site.
const SITE_LABEL: &str = "yiyun.io/site";
/// Pending pods retried after each departure, oldest first.
const RETRIES_PER_DEPARTURE: usize = 64;

/// Options of `yiyun simulate timeline`.
#[derive(clap::Args, Clone, Debug)]
pub struct TimelineArgs {
    /// Directory holding the openb CSV files.
    #[arg(long, default_value = "../shared/traces/openb")]
    pub traces: String,
    /// Node list (suffix of openb_node_list_<nodes>.csv).
    #[arg(long, default_value = "gpu_node")]
    pub nodes: String,
    /// Pod list (suffix of openb_pod_list_<list>.csv).
    #[arg(long, default_value = "default")]
    pub list: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Divide arrival times by this (runtimes unchanged) to load the cluster harder: the trace
    /// itself spans 149 days with a few dozen pods running at a time.
    #[arg(long, default_value_t = 1)]
    pub compress: u64,
}

/// The cost model of the four sites.
pub fn cost_model() -> CostModel {
    let mut model = CostModel::default();
    for (name, region, east, power_price, pue) in SITES {
        model.add_site(Site { name: name.into(), region: region.into(), east, power_price, pue });
    }
    let link = |latency_ms, bandwidth_gbps, price_per_gb| Link { latency_ms, bandwidth_gbps, price_per_gb };
    model.add_link("hefei", "wuhu", link(2.0, 400.0, 0.001));
    model.add_link("hefei", "qingyang", link(32.0, 100.0, 0.01));
    model.add_link("wuhu", "qingyang", link(31.0, 100.0, 0.01));
    model.add_link("hefei", "guian", link(28.0, 100.0, 0.01));
    model.add_link("wuhu", "guian", link(29.0, 100.0, 0.01));
    model.add_link("qingyang", "guian", link(25.0, 100.0, 0.01));
    model
}

/// Trace nodes with sites, regions and racks.
pub fn place_nodes(trace: &[TraceNode], rng: &mut Rng) -> Vec<Node> {
    let mut order: Vec<usize> = (0..trace.len()).collect();
    rng.shuffle(&mut order);
    let east = trace.len() * 2 / 5;
    let mut per_site = [0usize; 4];
    order
        .iter()
        .enumerate()
        .map(|(position, &index)| {
            let site = if position < east { position % 2 } else { 2 + position % 2 };
            let (name, region, ..) = SITES[site];
            let mut node = trace[index].to_node();
            node.topology.region = region.into();
            node.topology.site = name.into();
            node.topology.rack = format!("{name}-r{:03}", per_site[site] / RACK_SIZE);
            node.labels.insert(SITE_LABEL.into(), name.into());
            per_site[site] += 1;
            node
        })
        .collect()
}

fn tenants() -> Vec<Tenant> {
    let unlimited = |name: &str, parent: Option<&str>| Tenant {
        name: name.into(),
        parent: parent.map(Into::into),
        guaranteed: Usage::default(),
        max: Usage::UNLIMITED,
        allowed_regions: Vec::new(),
    };
    let mut tree = vec![
        unlimited("anhui", None),
        unlimited("hefei-city", Some("anhui")),
        unlimited("wuhu-city", Some("anhui")),
    ];
    for index in 0..TENANTS {
        let city = if index < TENANTS / 2 { "hefei-city" } else { "wuhu-city" };
        tree.push(unlimited(&format!("dept-{index}"), Some(city)));
    }
    tree
}

/// A trace pod with tenant, latency class, data and deadline assigned.
pub fn describe(pod: &TracePod, key: String, rng: &mut Rng) -> Pod {
    let mut out = pod.to_pod(key);
    out.tenant = Some(format!("dept-{}", rng.below(TENANTS as u64)));
    let roll = rng.below(100);
    out.latency_class = match pod.qos {
        Qos::LatencySensitive if roll < 30 => LatencyClass::Realtime,
        Qos::LatencySensitive => LatencyClass::Interactive,
        Qos::BestEffort if roll < 70 => LatencyClass::Batch,
        Qos::BestEffort => LatencyClass::Archive,
    };
    let site = if rng.below(2) == 0 { "hefei" } else { "wuhu" };
    let gigabytes = (((rng.below(1_000_000) as f64 / 1_000_000.0) * 500f64.ln()).exp()).round() as u64;
    out.data = Some(DataLocality { site: site.into(), gigabytes: gigabytes.max(1) });
    let runtime = pod.deleted.map_or(3600, |deleted| deleted.saturating_sub(pod.created).max(1));
    out.expected_runtime_seconds = Some(runtime);
    out.deadline_seconds = match out.latency_class {
        LatencyClass::Batch => Some(3 * runtime + 2 * 3600),
        LatencyClass::Archive => Some(10 * runtime + 24 * 3600),
        _ => None,
    };
    out
}

/// How a policy is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// The policy on resources alone, costs measured afterwards (as a scheduler without a
    /// cost model would place).
    Plain(Policy),
    /// yiyun with the cost model.
    CostAware,
    /// Every pod pinned to the east site nearest its data: the baseline of the cost figures.
    NearestEast,
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::Plain(policy) => policy.name().to_string(),
            Variant::CostAware => "yiyun".to_string(),
            Variant::NearestEast => "nearest-east".to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    placed: usize,
    never_placed: usize,
    waited: usize,
    gpu_hours_east: f64,
    gpu_hours_west: f64,
    /// Energy and data movement, in CNY.
    cost: f64,
    /// What the latency classes charge for distance to the data (the scheduler weighs it; it is
    /// not money paid).
    latency_penalty: f64,
    violations: usize,
    mean_allocation: f64,
    tenant_gpu_hours: BTreeMap<String, f64>,
    decisions_per_second: f64,
}

fn replay(
    nodes: &[Node],
    pods: &[Pod],
    created: &[u64],
    variant: Variant,
    seed: u64,
    workload: &Workload,
) -> Outcome {
    let costs = cost_model();
    let policy = match variant {
        Variant::Plain(policy) => policy,
        _ => Policy::Yiyun,
    };
    let mut engine = Engine::new(policy, seed);
    if variant != Variant::Plain(policy) || matches!(variant, Variant::CostAware | Variant::NearestEast) {
        engine.set_costs(costs.clone());
    }
    for node in nodes {
        engine.upsert_node(node.clone());
    }
    for tenant in tenants() {
        engine.upsert_tenant(tenant);
    }
    // FGD as published is given the trace's typical pods; yiyun measures what arrives.
    if policy != Policy::Yiyun {
        engine.set_workload(workload.clone());
    }
    let pinned = |pod: &Pod| -> Pod {
        let mut pod = pod.clone();
        if variant == Variant::NearestEast
            && let Some(data) = &pod.data
            && let Some(site) = costs.nearest_east_site(&data.site)
        {
            pod.node_selector.insert(SITE_LABEL.into(), site.name.clone());
        }
        pod
    };
    // Events: (time, 0 = departure first, index).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(pods.len() * 2);
    for (index, &at) in created.iter().enumerate() {
        events.push((at, 1, index));
    }
    events.sort();
    let mut outcome = Outcome::default();
    let mut pending: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut departures: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> = Default::default();
    let (capacity, _) = engine.gpu_milli();
    let (mut last_time, mut allocation_area) = (created.first().copied().unwrap_or(0), 0.0);
    let first_time = last_time;
    let mut decisions = 0usize;
    let started = Instant::now();
    let place = |engine: &mut Engine,
                 index: usize,
                 now: u64,
                 outcome: &mut Outcome,
                 departures: &mut std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>>|
     -> bool {
        let pod = pinned(&pods[index]);
        let Some(placement) = engine.try_schedule(&pod) else { return false };
        let node = engine.node(placement.node).map(|node| node.topology.site.clone()).unwrap_or_default();
        let runtime = pod.expected_runtime_seconds.unwrap_or(3600);
        let gpu_hours = pod.gpu.milli() as f64 / 1000.0 * runtime as f64 / 3600.0;
        let east = costs.site(&node).is_some_and(|site| site.east);
        if east {
            outcome.gpu_hours_east += gpu_hours;
        } else {
            outcome.gpu_hours_west += gpu_hours;
        }
        match costs.evaluate(&pod, &node) {
            Ok(cost) => {
                outcome.cost += cost.energy + cost.data_movement;
                outcome.latency_penalty += cost.latency_penalty;
            }
            Err(_) => outcome.violations += 1,
        }
        if let Some(tenant) = &pod.tenant {
            *outcome.tenant_gpu_hours.entry(tenant.clone()).or_insert(0.0) += gpu_hours;
        }
        outcome.placed += 1;
        departures.push(std::cmp::Reverse((now + runtime, index)));
        true
    };
    for (now, _, index) in events {
        // Departures up to now, each followed by a retry of what waits.
        while let Some(std::cmp::Reverse((at, leaving))) = departures.peek().copied() {
            if at > now {
                break;
            }
            departures.pop();
            allocation_area += engine.gpu_milli().1 as f64 * (at.saturating_sub(last_time)) as f64;
            last_time = at.max(last_time);
            engine.forget(&pods[leaving].key);
            for _ in 0..RETRIES_PER_DEPARTURE.min(pending.len()) {
                let Some(waiting) = pending.pop_front() else { break };
                decisions += 1;
                if !place(&mut engine, waiting, at, &mut outcome, &mut departures) {
                    pending.push_back(waiting);
                }
            }
        }
        allocation_area += engine.gpu_milli().1 as f64 * (now.saturating_sub(last_time)) as f64;
        last_time = now.max(last_time);
        decisions += 1;
        if !place(&mut engine, index, now, &mut outcome, &mut departures) {
            outcome.waited += 1;
            pending.push_back(index);
        }
    }
    outcome.never_placed = pending.len();
    let span = (last_time - first_time).max(1) as f64;
    outcome.mean_allocation = allocation_area / span / capacity.max(1) as f64;
    outcome.decisions_per_second = decisions as f64 / started.elapsed().as_secs_f64().max(1e-9);
    outcome
}

/// Runs the replay for every policy and returns the table.
pub fn run(args: &TimelineArgs) -> Result<String, Error> {
    let node_file = Path::new(&args.traces).join(format!("openb_node_list_{}.csv", args.nodes));
    let pod_file = Path::new(&args.traces).join(format!("openb_pod_list_{}.csv", args.list));
    let trace_nodes = parse_nodes(&read(&node_file)?, &node_file.display().to_string())?;
    let trace_pods = parse_pods(&read(&pod_file)?, &pod_file.display().to_string())?;
    let mut rng = Rng::new(args.seed);
    let nodes = place_nodes(&trace_nodes, &mut rng);
    let mut indexed: Vec<&TracePod> = trace_pods.iter().collect();
    indexed.sort_by_key(|pod| pod.created);
    let pods: Vec<Pod> =
        indexed.iter().enumerate().map(|(index, pod)| describe(pod, format!("p{index}"), &mut rng)).collect();
    let compress = args.compress.max(1);
    let created: Vec<u64> = indexed.iter().map(|pod| pod.created / compress).collect();
    let workload = Workload::from_pods(&pods, TYPICAL_POD_COVERAGE);
    let variants = [
        Variant::Plain(Policy::FirstFit),
        Variant::Plain(Policy::BestFit),
        Variant::Plain(Policy::Spread),
        Variant::Plain(Policy::Fgd),
        Variant::NearestEast,
        Variant::CostAware,
    ];
    let mut rows = Vec::new();
    for variant in variants {
        eprintln!("[simulate] timeline: {}", variant.name());
        rows.push((variant, replay(&nodes, &pods, &created, variant, args.seed, &workload)));
    }
    // Per GPU-hour, so policies that place more work are not counted as dearer for it.
    let per_gpu_hour = |o: &Outcome| o.cost / (o.gpu_hours_east + o.gpu_hours_west).max(1e-9);
    let baseline =
        rows.iter().find(|(v, _)| *v == Variant::NearestEast).map(|(_, o)| per_gpu_hour(o)).unwrap_or(0.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Timeline replay of openb_pod_list_{} on {} nodes (4 sites, seed {}, arrivals compressed {compress}x); cost = energy + data movement in CNY; vs east: CNY per GPU-hour against every pod in the east site nearest its data",
        args.list,
        nodes.len(),
        args.seed
    );
    let _ = writeln!(
        out,
        "{:<13} {:>7} {:>7} {:>7} {:>9} {:>9} {:>11} {:>8} {:>11} {:>10} {:>11}",
        "policy",
        "placed",
        "waited",
        "never",
        "mean GPU%",
        "west GPU%",
        "cost (CNY)",
        "vs east",
        "latency pen",
        "violations",
        "decisions/s"
    );
    for (variant, outcome) in &rows {
        let total_hours = outcome.gpu_hours_east + outcome.gpu_hours_west;
        let _ = writeln!(
            out,
            "{:<13} {:>7} {:>7} {:>7} {:>9.1} {:>9.1} {:>11.0} {:>10.3} {:>7.1}% {:>11.0} {:>10} {:>11.0}",
            variant.name(),
            outcome.placed,
            outcome.waited,
            outcome.never_placed,
            outcome.mean_allocation * 100.0,
            outcome.gpu_hours_west / total_hours.max(1e-9) * 100.0,
            outcome.cost,
            outcome.cost / total_hours.max(1e-9),
            (outcome.cost / total_hours.max(1e-9) / baseline.max(1e-9) - 1.0) * 100.0,
            outcome.latency_penalty,
            outcome.violations,
            outcome.decisions_per_second
        );
    }
    if let Some((_, yiyun)) = rows.iter().find(|(v, _)| *v == Variant::CostAware) {
        let total: f64 = yiyun.tenant_gpu_hours.values().sum();
        let shares: Vec<String> = yiyun
            .tenant_gpu_hours
            .iter()
            .map(|(tenant, hours)| format!("{tenant} {:.1}%", hours / total.max(1e-9) * 100.0))
            .collect();
        let _ = writeln!(out, "\nyiyun GPU-hours by tenant: {}", shares.join(", "));
    }
    let _ = writeln!(
        out,
        "violations: realtime pods beyond the latency limit of their data, batch/archive pods past their deadline"
    );
    Ok(out)
}
