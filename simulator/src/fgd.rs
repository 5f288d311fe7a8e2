//! `yiyun simulate fgd`: the FGD paper's experiment for every policy and pod list, averaged over
//! seeds, printed beside the published figures.

use std::{fmt::Write, path::Path, thread};

use yiyun_engine::Policy;

use crate::{
    Error,
    experiment::{Curve, ExperimentConfig, run},
    losses::Losses,
    mix::Mix,
    read,
    trace::{TraceNode, TracePod, parse_nodes, parse_pods},
};

/// Published results (GPU allocation % at 100% / 130% arrived, mean of 10 seeds) of the FGD
/// paper (Weng et al., USENIX ATC '23) for the policies yiyun reimplements.
fn published(list: &str, policy: Policy) -> Option<(f64, f64)> {
    match (list, policy) {
        ("default", Policy::BestFit) => Some((92.86, 93.08)),
        ("default", Policy::Fgd) => Some((95.23, 95.39)),
        ("multigpu20", Policy::BestFit) => Some((93.73, 93.93)),
        ("multigpu20", Policy::Fgd) => Some((95.53, 95.65)),
        ("gpushare40", Policy::BestFit) => Some((91.44, 91.69)),
        ("gpushare40", Policy::Fgd) => Some((93.96, 94.15)),
        _ => None,
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct FgdConfig {
    /// Directory of the openb CSV files.
    pub traces: String,
    /// Pod lists by suffix: `default` reads `openb_pod_list_default.csv`.
    pub lists: Vec<String>,
    /// Mixes generated from the `base` list.
    pub mixes: Vec<Mix>,
    pub base: String,
    pub policies: Vec<Policy>,
    pub seeds: Vec<u64>,
    pub inflation: f64,
    /// Percent of capacity arrived at which each run restarts its engine.
    pub restart_at: Option<u64>,
    /// Pods of the list yiyun measured before each run (`ExperimentConfig::history`).
    pub history: usize,
    /// Worker threads (runs are independent).
    pub threads: usize,
}

/// Averages of one policy on one list.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub list: String,
    pub policy: Policy,
    /// Mean allocation ratio (%) at each 1% of capacity arrived.
    pub curve: Vec<f64>,
    pub placed: f64,
    pub failed: f64,
    /// GPUs (not milli) no typical pod could use at the end, by FGD's measure.
    pub fragmented_gpus: f64,
    pub decisions_per_second: f64,
    /// Mean of the runs' [`Curve::losses_at_full`].
    pub losses_at_full: Option<Losses>,
}

impl Summary {
    pub fn at(&self, percent: usize) -> f64 {
        percent.checked_sub(1).and_then(|index| self.curve.get(index)).copied().unwrap_or(f64::NAN)
    }
}

fn summarise(list: &str, policy: Policy, curves: &[Curve]) -> Summary {
    let runs = curves.len().max(1) as f64;
    let points = curves.iter().map(|curve| curve.allocated.len()).min().unwrap_or(0);
    let curve = (0..points)
        .map(|index| curves.iter().map(|curve| curve.allocated[index]).sum::<f64>() / runs * 100.0)
        .collect();
    let mean = |f: &dyn Fn(&Curve) -> f64| curves.iter().map(f).sum::<f64>() / runs;
    Summary {
        list: list.to_string(),
        policy,
        curve,
        placed: mean(&|c| c.placed as f64),
        failed: mean(&|c| c.failed as f64),
        fragmented_gpus: mean(&|c| c.fragmented_milli / 1000.0),
        decisions_per_second: mean(&|c| c.decisions_per_second),
        losses_at_full: curves
            .iter()
            .map(|curve| curve.losses_at_full)
            .collect::<Option<Vec<Losses>>>()
            .filter(|runs| !runs.is_empty())
            .map(|runs| Losses::mean(&runs)),
    }
}

/// Runs every (list, policy, seed) and summarises per (list, policy).
pub fn run_all(config: &FgdConfig) -> Result<Vec<Summary>, Error> {
    let node_file = Path::new(&config.traces).join("openb_node_list_gpu_node.csv");
    let nodes = parse_nodes(&read(&node_file)?, &node_file.display().to_string())?;
    let list_pods = |list: &str| -> Result<Vec<TracePod>, Error> {
        let pod_file = Path::new(&config.traces).join(format!("openb_pod_list_{list}.csv"));
        parse_pods(&read(&pod_file)?, &pod_file.display().to_string())
    };
    let mut workloads = Vec::new();
    for list in &config.lists {
        workloads.push((list.clone(), list_pods(list)?));
    }
    if !config.mixes.is_empty() {
        let base = list_pods(&config.base)?;
        for mix in &config.mixes {
            workloads.push((mix.to_string(), mix.generate(&base, &nodes)?));
        }
    }
    let mut summaries = Vec::new();
    for (list, pods) in &workloads {
        for &policy in &config.policies {
            eprintln!("[simulate] {list}: {} over {} seeds", policy.name(), config.seeds.len());
            let curves = run_seeds(&nodes, pods, policy, config);
            summaries.push(summarise(list, policy, &curves));
        }
    }
    Ok(summaries)
}

fn run_seeds(nodes: &[TraceNode], pods: &[TracePod], policy: Policy, config: &FgdConfig) -> Vec<Curve> {
    let threads = config.threads.max(1);
    let mut curves = Vec::new();
    for chunk in config.seeds.chunks(threads) {
        thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&seed| {
                    scope.spawn(move || {
                        let (restart_at, history) = (config.restart_at, config.history);
                        run(
                            nodes,
                            pods,
                            policy,
                            &ExperimentConfig { inflation: config.inflation, seed, restart_at, history },
                        )
                    })
                })
                .collect();
            curves.extend(handles.into_iter().filter_map(|handle| handle.join().ok()));
        });
    }
    curves
}

/// The table: one row per list and policy, with the published figure beside ours.
pub fn table(summaries: &[Summary], seeds: &[u64]) -> String {
    let mut out = String::new();
    let seeds = match (seeds.first(), seeds.last()) {
        (Some(first), Some(last)) if seeds.len() > 1 => format!("seeds {first}-{last}"),
        (Some(first), _) => format!("seed {first}"),
        _ => "no seeds".to_string(),
    };
    let _ = writeln!(
        out,
        "GPU allocation ratio (%) by arrived GPU demand, mean of {seeds}; published: FGD paper (ATC '23)"
    );
    let _ = writeln!(
        out,
        "{:<11} {:<10} {:>7} {:>7} {:>15} {:>8} {:>8} {:>11} {:>11}",
        "pod list", "policy", "@100%", "@130%", "published", "placed", "failed", "frag GPUs", "decisions/s"
    );
    for summary in summaries {
        let published = published(&summary.list, summary.policy)
            .map(|(at100, at130)| format!("{at100:.2} / {at130:.2}"))
            .unwrap_or_else(|| "-".to_string());
        let _ = writeln!(
            out,
            "{:<11} {:<10} {:>7.2} {:>7.2} {:>15} {:>8.0} {:>8.0} {:>11.1} {:>11.0}",
            summary.list,
            summary.policy.name(),
            summary.at(100),
            summary.at(130),
            published,
            summary.placed,
            summary.failed,
            summary.fragmented_gpus,
            summary.decisions_per_second
        );
    }
    let _ = write!(out, "{}", against_fgd(summaries));
    let _ = write!(out, "{}", losses_table(summaries));
    let _ = writeln!(out, "\nWhole curves (allocation % at every 10% arrived):");
    let marks: Vec<usize> = (1..=13).map(|m| m * 10).collect();
    let header: Vec<String> = marks.iter().map(|m| format!("{m:>6}")).collect();
    let _ = writeln!(out, "{:<11} {:<10} {}", "pod list", "policy", header.join(""));
    for summary in summaries {
        let points: Vec<String> = marks.iter().map(|&m| format!("{:>6.1}", summary.at(m))).collect();
        let _ = writeln!(out, "{:<11} {:<10} {}", summary.list, summary.policy.name(), points.join(""));
    }
    out
}

/// Where each policy's unallocated GPUs were at 100% arrived, and what it turned away.
fn losses_table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let rows: Vec<(&Summary, Losses)> =
        summaries.iter().filter_map(|summary| Some((summary, summary.losses_at_full?))).collect();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nGPUs unallocated at 100% arrived, by where they are, and GPUs of the pods turned away until then"
    );
    let _ = writeln!(
        out,
        "{:<12} {:<10} {:>11} {:>13} {:>14} {:>11} {:>10} {:>8} {:>8} {:>10}",
        "pod list",
        "policy",
        "unallocated",
        "partial GPUs",
        "idle, no CPU*",
        "idle, else",
        "away frac",
        "away 1",
        "away 2+",
        "forced**"
    );
    let gpus = |milli: u64| milli as f64 / 1000.0;
    for (summary, losses) in rows {
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:>11.1} {:>13.1} {:>14.1} {:>11.1} {:>10.1} {:>8.1} {:>8.1} {:>10.1}",
            summary.list,
            summary.policy.name(),
            gpus(losses.unallocated_milli()),
            gpus(losses.partial_milli),
            gpus(losses.idle_starved_milli),
            gpus(losses.idle_milli),
            gpus(losses.failed_fraction_milli),
            gpus(losses.failed_one_milli),
            gpus(losses.failed_several_milli),
            gpus(losses.forced_away_milli)
        );
    }
    let _ = writeln!(
        out,
        "* idle GPUs on nodes whose free CPU or memory is below the least any GPU pod of the list asks"
    );
    let _ = writeln!(
        out,
        "** of the GPUs turned away, those no policy could place: pods that fit no node, and pods \
         taking over half the GPUs of every node they fit, beyond the nodes there are for them"
    );
    out
}

/// Every point of every curve as CSV: `pod_list,policy,arrived_percent,allocated_percent`.
pub fn curves_csv(summaries: &[Summary]) -> String {
    let mut out = String::from("pod_list,policy,arrived_percent,allocated_percent\n");
    for summary in summaries {
        for (index, allocated) in summary.curve.iter().enumerate() {
            let _ = writeln!(out, "{},{},{},{allocated:.4}", summary.list, summary.policy.name(), index + 1);
        }
    }
    out
}

/// yiyun beside FGD and best-fit on every list and mix: GPUs left unallocated by yiyun as a
/// ratio of FGD's (below 1: fewer stranded GPUs), and the mean ratio over all rows.
fn against_fgd(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let find = |list: &str, policy: Policy| {
        summaries.iter().find(|summary| summary.list == list && summary.policy == policy)
    };
    let mut lists: Vec<&str> = Vec::new();
    for summary in summaries {
        if !lists.contains(&summary.list.as_str()) {
            lists.push(&summary.list);
        }
    }
    let rows: Vec<(&str, &Summary, &Summary, Option<&Summary>)> = lists
        .into_iter()
        .filter_map(|list| {
            Some((list, find(list, Policy::Yiyun)?, find(list, Policy::Fgd)?, find(list, Policy::BestFit)))
        })
        .collect();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nyiyun against FGD: allocation % at 100% and 130% arrived; unallocated GPUs of yiyun as a ratio of FGD's"
    );
    let _ = writeln!(
        out,
        "{:<12} {:>15} {:>15} {:>15} {:>8} {:>8} {:>13}",
        "pod list", "best-fit", "fgd", "yiyun", "@100%", "@130%", "yiyun dec/s"
    );
    let unallocated_ratio = |yiyun: &Summary, fgd: &Summary, percent: usize| {
        (100.0 - yiyun.at(percent)) / (100.0 - fgd.at(percent))
    };
    let (mut sum100, mut sum130) = (0.0, 0.0);
    for (list, yiyun, fgd, best_fit) in &rows {
        let pair = |summary: &Summary| format!("{:.2} / {:.2}", summary.at(100), summary.at(130));
        let (at100, at130) = (unallocated_ratio(yiyun, fgd, 100), unallocated_ratio(yiyun, fgd, 130));
        sum100 += at100;
        sum130 += at130;
        let _ = writeln!(
            out,
            "{:<12} {:>15} {:>15} {:>15} {:>8.3} {:>8.3} {:>13.0}",
            list,
            best_fit.map_or("-".to_string(), &pair),
            pair(fgd),
            pair(yiyun),
            at100,
            at130,
            yiyun.decisions_per_second
        );
    }
    let count = rows.len() as f64;
    let _ = writeln!(
        out,
        "{:<12} {:>15} {:>15} {:>15} {:>8.3} {:>8.3}",
        format!("mean of {}", rows.len()),
        "",
        "",
        "",
        sum100 / count,
        sum130 / count
    );
    out
}
