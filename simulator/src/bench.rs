//! `yiyun bench engine`: how fast the engine decides, on one core, against a scheduler that
//! scans every node for every pod, measured in the same run.

use std::{fmt::Write, path::Path, time::Instant};

use yiyun_engine::{
    Engine, Policy,
    filter::{NodeClass, TenantScope},
    gang::{Gang, Level, Mode},
    model::{
        GpuRequest, HOSTNAME, LabelSelector, NamespaceScope, Node, Pod, PodAffinityTerm, Resources,
        SpreadConstraint, WhenUnsatisfiable,
    },
    rng::Rng,
};

use crate::{
    Error,
    experiment::{self, ExperimentConfig},
    mix::Mix,
    read,
    trace::{TraceNode, TracePod, parse_nodes, parse_pods},
};

/// Options of `yiyun bench engine`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Directory holding the openb CSV files.
    #[arg(long, default_value = "../shared/traces/openb")]
    pub traces: String,
    /// Nodes for the decision-rate figure.
    #[arg(long, default_value_t = 5_000)]
    pub nodes: usize,
    /// Nodes for the gang and memory figures.
    #[arg(long, default_value_t = 10_000)]
    pub large_nodes: usize,
    /// Pods held for the memory figure.
    #[arg(long, default_value_t = 100_000)]
    pub pods: usize,
    /// Pods in the gang.
    #[arg(long, default_value_t = 256)]
    pub gang: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Mixes (as `yiyun simulate fgd --mixes`) whose decision rate is measured besides the
    /// default list's; `--mixes ''` for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gpuspec-10,gpuspec-25,gpuspec-40,gpushare-20,gpushare-60,gpushare-90,multigpu-10,multigpu-30,multigpu-50,cpuonly-20,cpuonly-35,cpuonly-50"
    )]
    pub mixes: Vec<String>,
    /// Seed of the mixes' generation.
    #[arg(long, default_value_t = 1)]
    pub mix_seed: u64,
    /// Runs of the engine and of the scan, taken in turn, per decision-rate figure: the
    /// fastest of each is reported, so a pause of a shared machine in one run does not decide
    /// the ratio.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
}

/// Nodes per rack when the bench assigns racks.
const RACK_SIZE: usize = 40;

/// Replicas per Deployment in the inter-pod rules figures.
const REPLICAS: usize = 100;

/// Decisions per second for Deployments of CPU pods on the decision-rate nodes (three zones,
/// each node its own hostname), without inter-pod rules and with each kind of rule, in the
/// same run: what counting placed pods per topology domain costs a decision.
fn inter_pod_rules(nodes: &[Node]) -> String {
    let zone = "topology.kubernetes.io/zone";
    let nodes: Vec<Node> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let mut node = node.clone();
            node.labels.insert(HOSTNAME.into(), node.name.clone());
            node.labels.insert(zone.into(), format!("zone-{}", index % 3));
            node
        })
        .collect();
    let deployments = nodes.len() / REPLICAS;
    let selecting = |app: &str| {
        Some(LabelSelector {
            match_labels: [("app".to_string(), app.to_string())].into(),
            expressions: Vec::new(),
        })
    };
    let term = |app: &str, key: &str| PodAffinityTerm {
        selector: selecting(app),
        namespaces: NamespaceScope::default(),
        topology_key: key.to_string(),
    };
    let spread = |app: &str, key: &str, when: WhenUnsatisfiable| SpreadConstraint {
        max_skew: 1,
        topology_key: key.to_string(),
        when_unsatisfiable: when,
        selector: selecting(app),
        min_domains: None,
        honor_node_affinity: true,
        honor_node_taints: false,
    };
    type Rule = fn(
        &mut Pod,
        &str,
        &dyn Fn(&str, &str) -> PodAffinityTerm,
        &dyn Fn(&str, &str, WhenUnsatisfiable) -> SpreadConstraint,
    );
    let cases: [(&str, Rule); 5] = [
        ("no inter-pod rules", |_, _, _, _| {}),
        ("required anti-affinity, hostname", |pod, app, term, _| pod.anti_affinity.push(term(app, HOSTNAME))),
        ("preferred anti-affinity, hostname", |pod, app, term, _| {
            pod.preferred_affinity.push((-100, term(app, HOSTNAME)))
        }),
        ("required affinity, zone", |pod, app, term, _| {
            pod.affinity.push(term(app, "topology.kubernetes.io/zone"))
        }),
        ("spread maxSkew 1: zone DoNotSchedule, hostname ScheduleAnyway", |pod, app, _, spread| {
            pod.spread_constraints.push(spread(
                app,
                "topology.kubernetes.io/zone",
                WhenUnsatisfiable::DoNotSchedule,
            ));
            pod.spread_constraints.push(spread(app, HOSTNAME, WhenUnsatisfiable::ScheduleAnyway));
        }),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<58} {:>14} {:>14}",
        format!("Deployments of {REPLICAS}, on the nodes above"),
        "yiyun engine",
        "vs no rules"
    );
    let mut baseline = 0.0;
    for (name, rule) in cases {
        let mut engine = Engine::new(Policy::Yiyun, 1);
        for node in &nodes {
            engine.upsert_node(node.clone());
        }
        let pods: Vec<Pod> = (0..deployments * REPLICAS)
            .map(|index| {
                let app = format!("app-{}", index / REPLICAS);
                let mut pod = Pod::new(format!("ns/{app}-{index}"), Resources::new(1_000, 2 << 30));
                pod.namespace = "ns".into();
                pod.labels.insert("app".into(), app.clone());
                rule(&mut pod, &app, &term, &spread);
                pod
            })
            .collect();
        eprintln!("[bench] {} pods in Deployments of {REPLICAS}: {name}", pods.len());
        let started = Instant::now();
        let placed = pods.iter().filter(|pod| engine.try_schedule(pod).is_some()).count();
        let rate = pods.len() as f64 / started.elapsed().as_secs_f64();
        if baseline == 0.0 {
            baseline = rate;
        }
        let _ = writeln!(
            out,
            "{:<58} {:>14.0} {:>14}",
            format!("decisions/s, {name} ({placed} placed)"),
            rate,
            format!("{:.2}x", rate / baseline)
        );
    }
    out
}

/// Share of GPU capacity busy when the gang arrives.
const GANG_FILL: f64 = 0.5;

/// `count` nodes, 40 to a rack; each rack takes one node type drawn (seeded) from the trace's
/// node list, as racks are bought and cabled by model.
fn sample_nodes(trace: &[TraceNode], count: usize, rng: &mut Rng) -> Vec<Node> {
    let templates: Vec<&TraceNode> =
        (0..count.div_ceil(RACK_SIZE)).map(|_| &trace[rng.below(trace.len() as u64) as usize]).collect();
    (0..count)
        .map(|index| {
            let mut node = templates[index / RACK_SIZE].to_node();
            node.name = format!("node-{index:05}");
            node.topology.region = "gansu".into();
            node.topology.site = "qingyang".into();
            node.topology.rack = format!("rack-{:03}", index / RACK_SIZE);
            node
        })
        .collect()
}

/// The scheduler the engine is measured against: filters and best-fit on every node for every
/// pod, as a scheduler without an index does.
struct Scan {
    nodes: Vec<(Node, NodeClass, Resources, Vec<u16>)>,
}

impl Scan {
    fn new(nodes: &[Node]) -> Self {
        Scan {
            nodes: nodes
                .iter()
                .map(|node| {
                    (
                        node.clone(),
                        NodeClass::of(node),
                        node.allocatable.clone(),
                        vec![1000; usize::from(node.gpus)],
                    )
                })
                .collect(),
        }
    }

    fn schedule(&mut self, pod: &Pod) -> bool {
        let (count, milli) = pod.gpu.per_device();
        let mut best: Option<(f64, usize)> = None;
        for (index, (_, class, free, gpus)) in self.nodes.iter().enumerate() {
            if class.reject(pod, &TenantScope::default()).is_some()
                || free.first_shortage(&pod.requests).is_some()
            {
                continue;
            }
            if gpus.iter().filter(|&&free| free >= milli).count() < usize::from(count) {
                continue;
            }
            let left = (free.cpu_milli - pod.requests.cpu_milli) as f64 / 128_000.0
                + (gpus.iter().map(|&f| u64::from(f)).sum::<u64>() - pod.gpu.milli()) as f64 / 8000.0;
            if best.is_none_or(|(score, _)| left < score) {
                best = Some((left, index));
            }
        }
        let Some((_, index)) = best else { return false };
        let (_, _, free, gpus) = &mut self.nodes[index];
        free.sub(&pod.requests);
        let mut needed = count;
        for device in gpus.iter_mut() {
            if needed > 0 && *device >= milli {
                *device -= milli;
                needed -= 1;
            }
        }
        true
    }
}

/// Peak resident memory of this process, in MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn arrivals(pods: &[TracePod], capacity_milli: u64, seed: u64) -> Vec<TracePod> {
    experiment::arrivals(
        pods,
        capacity_milli,
        &ExperimentConfig { inflation: 1.0, seed, restart_at: None, history: 0 },
    )
}

/// Decisions per second of the engine and of a full scan on `nodes`, for pods of `list` arriving
/// until their GPUs add up to the cluster's: the fastest of `repeats` runs of each, in turn.
fn decision_rate(name: &str, list: &[TracePod], nodes: &[Node], seed: u64, repeats: u32) -> String {
    let mut out = String::new();
    let engine_on_nodes = || {
        let mut engine = Engine::new(Policy::Yiyun, seed);
        for node in nodes {
            engine.upsert_node(node.clone());
        }
        engine
    };
    let list = arrivals(list, engine_on_nodes().gpu_milli().0, seed);
    let pods: Vec<Pod> =
        list.iter().enumerate().map(|(index, pod)| pod.to_pod(format!("p{index}"))).collect();
    eprintln!(
        "[bench] {name}: {} pods on {} nodes, yiyun engine then a full scan, {repeats} times",
        pods.len(),
        nodes.len()
    );
    let (mut engine_seconds, mut scan_seconds) = (f64::INFINITY, f64::INFINITY);
    let (mut placed, mut scan_placed, mut groups) = (0, 0, 0);
    for _ in 0..repeats {
        let mut engine = engine_on_nodes();
        let started = Instant::now();
        placed = pods.iter().filter(|pod| engine.try_schedule(pod).is_some()).count();
        engine_seconds = engine_seconds.min(started.elapsed().as_secs_f64());
        groups = engine.group_count();
        let mut scan = Scan::new(nodes);
        let started = Instant::now();
        scan_placed = pods.iter().filter(|pod| scan.schedule(pod)).count();
        scan_seconds = scan_seconds.min(started.elapsed().as_secs_f64());
    }
    let (engine_rate, scan_rate) = (pods.len() as f64 / engine_seconds, pods.len() as f64 / scan_seconds);
    let _ = writeln!(
        out,
        "{:<58} {:>14.0} {:>14.0}",
        format!("decisions/s, {name}: {} pods on {} nodes", pods.len(), nodes.len()),
        engine_rate,
        scan_rate
    );
    let _ = writeln!(
        out,
        "{:<58} {:>14} {:>14}",
        format!("  {:.1}x the scan; pods placed", engine_rate / scan_rate),
        placed,
        scan_placed
    );
    let _ = writeln!(
        out,
        "{:<58} {:>14} {:>14}",
        "  distinct node states (groups scored) at the end",
        groups,
        nodes.len()
    );
    out
}

/// Runs the benchmark and returns its table.
pub fn run(args: &BenchArgs) -> Result<String, Error> {
    let node_file = Path::new(&args.traces).join("openb_node_list_gpu_node.csv");
    let pod_file = Path::new(&args.traces).join("openb_pod_list_default.csv");
    let trace_nodes = parse_nodes(&read(&node_file)?, &node_file.display().to_string())?;
    let trace_pods = parse_pods(&read(&pod_file)?, &pod_file.display().to_string())?;
    let mut rng = Rng::new(args.seed);
    let mut out = String::new();
    let measure = format!("measure (one core; decisions/s: fastest of {} runs)", args.repeats);
    let _ = writeln!(out, "{measure:<58} {:>14} {:>14}", "yiyun engine", "full scan");

    // Decision rate: pods arriving until their GPUs add up to the cluster's, for the default
    // list and every mix.
    let nodes = sample_nodes(&trace_nodes, args.nodes, &mut rng);
    let mut lists = vec![("default".to_string(), trace_pods.clone())];
    for mix in args.mixes.iter().filter(|mix| !mix.is_empty()) {
        let mix = Mix::parse(mix, args.mix_seed)?;
        lists.push((mix.to_string(), mix.generate(&trace_pods, &trace_nodes)?));
    }
    for (name, list_pods) in &lists {
        let _ = write!(out, "{}", decision_rate(name, list_pods, &nodes, args.seed, args.repeats));
    }

    // A gang in one rack among many, half the cluster's GPUs busy.
    let large = sample_nodes(&trace_nodes, args.large_nodes, &mut rng);
    let mut engine = Engine::new(Policy::Yiyun, args.seed);
    for node in &large {
        engine.upsert_node(node.clone());
    }
    let list = experiment::arrivals(
        &trace_pods,
        engine.gpu_milli().0,
        &ExperimentConfig { inflation: GANG_FILL, seed: args.seed, restart_at: None, history: 0 },
    );
    eprintln!("[bench] filling {} nodes to half their GPUs", large.len());
    for (index, pod) in list.iter().enumerate() {
        let _ = engine.try_schedule(&pod.to_pod(format!("fill{index}")));
    }
    let gang =
        Gang { name: "train".into(), min_member: args.gang, topology: Some((Level::Rack, Mode::Required)) };
    let members: Vec<Pod> = (0..args.gang)
        .map(|index| {
            let mut pod = Pod::new(format!("train-{index}"), Resources::new(4_000, 16 << 30));
            pod.gpu = GpuRequest::Whole(1);
            pod.gang = Some("train".into());
            pod
        })
        .collect();
    let started = Instant::now();
    let result = engine.schedule_gang(&gang, &members);
    let gang_ms = started.elapsed().as_secs_f64() * 1000.0;
    let outcome = match &result {
        Ok(placements) => {
            let racks: std::collections::BTreeSet<String> = placements
                .iter()
                .filter_map(|p| engine.node(p.node).map(|node| node.topology.rack.clone()))
                .collect();
            format!("placed in {} rack(s)", racks.len())
        }
        Err(explanation) => format!("not placed: {explanation}"),
    };
    let _ = writeln!(
        out,
        "{:<58} {:>14.1} {:>14}",
        format!("ms to place a {}-pod gang in one rack of {} nodes", args.gang, large.len()),
        gang_ms,
        "-"
    );
    let _ = writeln!(out, "{:<58} {:>14} {:>14}", "gang", outcome, "-");

    let _ = write!(out, "{}", inter_pod_rules(&nodes));

    // Memory: the large cluster holding many small pods.
    eprintln!("[bench] {} pods held on {} nodes", args.pods, large.len());
    let mut engine = Engine::new(Policy::Yiyun, args.seed);
    for node in &large {
        engine.upsert_node(node.clone());
    }
    let mut held = 0;
    for index in 0..args.pods {
        let mut pod = Pod::new(format!("tenant-{}/pod-{index}", index % 100), Resources::new(100, 64 << 20));
        pod.spread_key = None;
        if engine.try_schedule(&pod).is_some() {
            held += 1;
        }
    }
    let _ = writeln!(
        out,
        "{:<58} {:>14} {:>14}",
        format!("peak RSS (MiB) of this process, {held} pods on {} nodes", large.len()),
        peak_rss_mib().map_or("-".to_string(), |mib| format!("{mib:.0}")),
        "-"
    );
    Ok(out)
}
