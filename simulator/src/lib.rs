//! Replays cluster traces through yiyun's placement engine: the FGD paper's placement-quality
//! experiment, and a timeline replay with sites, tenants and latency classes assigned.

pub mod bench;
pub mod experiment;
pub mod fgd;
pub mod forced;
pub mod losses;
pub mod mix;
pub mod scenario;
pub mod timeline;
pub mod trace;

use std::path::Path;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file} line {line}: {message}")]
    Trace { file: String, line: usize, message: String },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Trace { .. } => "trace",
            Error::Read { .. } => "read",
            Error::Config(_) => "config",
        }
    }
}

pub(crate) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.display().to_string(), source })
}

/// `yiyun simulate`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// The FGD paper's placement-quality experiment: pod lists shuffled and inflated to 130% of
    /// GPU capacity, placed one by one by each policy, averaged over seeds.
    Fgd(FgdArgs),
    /// The trace replayed in time on four East/West sites with tenants and latency classes:
    /// cost against keeping work in the east, latency-class violations, tenant shares.
    Timeline(timeline::TimelineArgs),
    /// Nodes, tenants, gangs and pods from a YAML file, placed in order by one policy: where
    /// each pod goes, or why it waits.
    Scenario(scenario::ScenarioArgs),
}

/// Options of `yiyun simulate fgd`.
#[derive(clap::Args, Clone, Debug)]
pub struct FgdArgs {
    /// Directory holding the openb CSV files.
    #[arg(long, default_value = "../shared/traces/openb")]
    pub traces: String,
    /// Pod lists (suffixes of openb_pod_list_<list>.csv), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "default,gpushare40,multigpu20")]
    pub lists: Vec<String>,
    /// Generated mixes, comma-separated FAMILY-SHARE (gpuspec, gpushare, multigpu, cpuonly;
    /// share in percent), derived from the `--base` list; `--mixes ''` for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gpuspec-10,gpuspec-25,gpuspec-40,gpushare-20,gpushare-60,gpushare-90,multigpu-10,multigpu-30,multigpu-50,cpuonly-20,cpuonly-35,cpuonly-50"
    )]
    pub mixes: Vec<String>,
    /// The shared list the mixes are derived from.
    #[arg(long, default_value = "default")]
    pub base: String,
    /// Seed of the mixes' generation (the experiment's seeds are `--seed`).
    #[arg(long, default_value_t = 1)]
    pub mix_seed: u64,
    /// Policies, comma-separated: first-fit, best-fit, spread, fgd, yiyun.
    #[arg(long, value_delimiter = ',', default_value = "first-fit,best-fit,spread,fgd,yiyun")]
    pub policies: Vec<String>,
    /// First seed; seeds are consecutive.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of seeds.
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    /// Arrived GPU demand to stop at, as a multiple of capacity.
    #[arg(long, default_value_t = 1.3)]
    pub inflation: f64,
    /// Also write every point of every curve to this CSV file.
    #[arg(long)]
    pub curves_csv: Option<String>,
    /// Restarts the engine once this percentage of capacity has arrived: a new engine learns
    /// the nodes and the pods placed so far, as yiyun-scheduler does after a restart or a
    /// failover, and places the rest. None by default.
    #[arg(long)]
    pub restart_at: Option<u64>,
    /// Pods yiyun measured before each run, as a scheduler that ran on earlier days recalls its
    /// measure: the list's pods in another order. 0 starts it measuring from the first pod.
    #[arg(long, default_value_t = yiyun_engine::observed::WINDOW)]
    pub history: usize,
}

/// Runs `yiyun simulate …` and returns the report to print.
pub fn simulate(command: Command) -> Result<String, Error> {
    match command {
        Command::Timeline(args) => timeline::run(&args),
        Command::Scenario(args) => scenario::run(&args),
        Command::Fgd(args) => {
            let policies = args
                .policies
                .iter()
                .map(|name| {
                    yiyun_engine::Policy::parse(name).ok_or_else(|| {
                        Error::Config(format!(
                            "unknown policy `{name}`: expected first-fit, best-fit, spread, fgd or yiyun"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !(args.inflation > 0.0 && args.inflation <= 10.0) {
                return Err(Error::Config(format!(
                    "--inflation must be in (0, 10], found {}",
                    args.inflation
                )));
            }
            let arrived_percent = (args.inflation * 100.0).round() as u64;
            if let Some(percent) = args.restart_at
                && !(1..arrived_percent).contains(&percent)
            {
                return Err(Error::Config(format!(
                    "--restart-at must be a percentage of capacity from 1 to {}, below where the run stops (--inflation), found {percent}",
                    arrived_percent - 1
                )));
            }
            let mixes = args
                .mixes
                .iter()
                .filter(|mix| !mix.is_empty())
                .map(|mix| mix::Mix::parse(mix, args.mix_seed))
                .collect::<Result<Vec<_>, _>>()?;
            let config = fgd::FgdConfig {
                traces: args.traces,
                lists: args.lists.into_iter().filter(|list| !list.is_empty()).collect(),
                mixes,
                base: args.base,
                policies,
                seeds: (args.seed..args.seed + args.seeds).collect(),
                inflation: args.inflation,
                restart_at: args.restart_at,
                history: args.history,
                threads: std::thread::available_parallelism().map_or(1, usize::from),
            };
            let summaries = fgd::run_all(&config)?;
            if let Some(path) = &args.curves_csv {
                std::fs::write(path, fgd::curves_csv(&summaries))
                    .map_err(|source| Error::Read { path: path.clone(), source })?;
            }
            let mut report = String::new();
            if config.policies.contains(&yiyun_engine::Policy::Yiyun) {
                report.push_str(&match config.history {
                    0 => "yiyun measures the workload from each run's first pod (no history)\n".to_string(),
                    pods => format!(
                        "yiyun starts each run recalling {pods} pods measured on earlier days (the list in another order); FGD is given the list's typical pods\n"
                    ),
                });
            }
            if let Some(percent) = config.restart_at {
                report.push_str(&format!(
                    "Each run restarts its engine when {percent}% of capacity has arrived (a new engine learns the nodes and the pods placed so far, and recalls the workload measured)\n"
                ));
            }
            report.push_str(&fgd::table(&summaries, &config.seeds));
            Ok(report)
        }
    }
}
