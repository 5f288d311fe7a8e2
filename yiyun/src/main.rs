//! `yiyun`: parses configuration, starts telemetry and runs one component.

mod telemetry;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "yiyun", version, about = "Control plane of the provincial government one cloud")]
struct Cli {
    #[command(flatten)]
    telemetry: telemetry::Config,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every yiyun CustomResourceDefinition as YAML (pipe to `kubectl apply -f -`).
    Crd,
    /// Run the controllers (tenancy, sites, node pools).
    Controller(yiyun_controller::Config),
    /// Run the scheduler.
    Scheduler(yiyun_scheduler::Config),
    /// Metering and billing: the meter, month bills, month close, exports for finance.
    #[command(subcommand)]
    Billing(Billing),
    /// Disaster recovery: replication to standby clusters, failover, failback, drills.
    #[command(subcommand)]
    Dr(Dr),
    /// Serve the departments' self-service API (gRPC and REST over TLS).
    Api(yiyun_api::Config),
    /// Replay cluster traces through the placement engine and compare policies.
    #[command(subcommand)]
    Simulate(yiyun_simulator::Command),
    /// Run a benchmark against the cluster of KUBECONFIG and print its figures.
    #[command(subcommand)]
    Bench(Bench),
    /// Print the version.
    Version,
}

#[derive(Subcommand, Debug)]
enum Billing {
    /// Run the metering controller: pods, volume claims and quota into the ledger.
    Run(yiyun_billing::meter_controller::Config),
    /// Print the tenant tree's bill for a month (own and subtree cost, cost centres).
    Bill(yiyun_billing::cli::BillArgs),
    /// Close a month: rate it once more and freeze it; its figures never change again.
    Close(yiyun_billing::cli::MonthArgs),
    /// Export a month's bill lines (CSV with Chinese headers by default, or JSON).
    Export(yiyun_billing::cli::ExportArgs),
}

#[derive(Subcommand, Debug)]
enum Dr {
    /// Run the replication controller: every namespace a ReplicationPolicy protects is copied
    /// to its standby cluster, and the achieved RPO measured.
    Run(yiyun_dr::Config),
    /// Promote the standby of a policy: its workloads wake to their recorded sizes, the primary
    /// is fenced when it answers; prints the achieved RTO.
    Failover(yiyun_dr::operations::Args),
    /// Copy back what changed on the standby while it served, put it to sleep, wake the
    /// primary and resume replication.
    Failback(yiyun_dr::operations::Args),
    /// Restore the newest copy into an isolated namespace on the standby, check it, report
    /// RPO and RTO against the targets, clean up and record the drill.
    Drill(yiyun_dr::operations::Args),
    /// Take an etcd snapshot through its maintenance API (checksummed, optionally encrypted,
    /// kept with retention in a directory or an S3-compatible object store); with --every, one
    /// every so often until stopped.
    Snapshot(yiyun_dr::snapshots::SnapshotArgs),
    /// Check a snapshot and restore it into a new etcd data directory (with etcdutl, revisions
    /// bumped as etcd's restore guide asks).
    RestoreSnapshot(yiyun_dr::snapshots::RestoreArgs),
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// A province-wide tenant tree: apply to Ready, a root ceiling change, idle, deletion.
    Tenancy(yiyun_bench::tenancy::Config),
    /// Thousands of kwok nodes in node pools: labelled, relabelled, idle.
    Pools(yiyun_bench::pools::Config),
    /// yiyun-scheduler against kube-scheduler (default and raised client limits) and the
    /// apiserver's binding ceiling, on kwok nodes.
    Scheduler(yiyun_bench::scheduler::Config),
    /// A month of pods metered, rated and exported on SQLite (and PostgreSQL), then the meter's
    /// CPU and memory on the local cluster.
    Billing(yiyun_bench::billing::Config),
    /// The self-service API under 100 callers of 10 tenants: submit-job and list-jobs against
    /// the same callers asking the apiserver directly, the review cache, CPU and memory.
    Api(yiyun_bench::api::Config),
    /// Disaster recovery at scale on a primary and a standby: the first copy, replication lag
    /// at a steady rate of changes, a consistent copy of everything, a failover of every
    /// namespace; controller CPU and memory.
    Dr(yiyun_bench::dr::Config),
    /// The placement engine alone, on one core: decisions per second against a full scan, a
    /// large gang, memory.
    Engine(yiyun_simulator::bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", yiyun_crds::crds_yaml().context("cannot render the CRDs as YAML")?);
            Ok(())
        }
        Command::Simulate(command) => {
            print!("{}", yiyun_simulator::simulate(command).context("simulation failed")?);
            Ok(())
        }
        Command::Bench(bench) => match bench {
            Bench::Engine(args) => {
                print!("{}", yiyun_simulator::bench::run(&args).context("benchmark failed")?);
                Ok(())
            }
            Bench::Tenancy(config) => block_on(yiyun_bench::tenancy::run(config)),
            Bench::Pools(config) => block_on(yiyun_bench::pools::run(config)),
            Bench::Scheduler(config) => block_on(yiyun_bench::scheduler::run(config)),
            Bench::Billing(config) => block_on(yiyun_bench::billing::run(config)),
            Bench::Api(config) => block_on(yiyun_bench::api::run(config)),
            Bench::Dr(config) => block_on(yiyun_bench::dr::run(config)),
        },
        Command::Billing(Billing::Run(config)) => {
            serve(&cli.telemetry, "yiyun-billing", Threads::One, |shutdown| async move {
                yiyun_billing::meter_controller::run(config, shutdown)
                    .await
                    .map_err(|err| anyhow::anyhow!(err).context("metering failed"))
            })
        }
        Command::Billing(Billing::Bill(args)) => {
            print_output(async { yiyun_billing::cli::bill(args).await.map(|text| Some(text.into_bytes())) })
        }
        Command::Billing(Billing::Close(args)) => print_output(async {
            yiyun_billing::cli::close_month(args).await.map(|text| Some(text.into_bytes()))
        }),
        Command::Billing(Billing::Export(args)) => print_output(yiyun_billing::cli::export_month(args)),
        Command::Version => {
            println!("yiyun {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        // The controllers wait on the apiserver nearly all the time (they plan on a blocking
        // thread): on one thread they wake no others. Measured against a runtime per core, the
        // controller's CPU until 1,000 tenants were Ready fell from 3.0–4.2 s to 2.4 s, and
        // until 5,000 pool nodes were labelled from 8.4 s to 6.1 s.
        Command::Controller(config) => {
            serve(&cli.telemetry, "yiyun-controller", Threads::One, |shutdown| async move {
                yiyun_controller::run(config, shutdown)
                    .await
                    .map_err(|err| anyhow::anyhow!(err).context("controller failed"))
            })
        }
        Command::Dr(Dr::Run(config)) => {
            serve(&cli.telemetry, "yiyun-dr", Threads::One, |shutdown| async move {
                yiyun_dr::run(config, shutdown)
                    .await
                    .map_err(|err| anyhow::anyhow!(err).context("disaster recovery failed"))
            })
        }
        Command::Dr(Dr::Failover(args)) => dr_operation(async move {
            yiyun_dr::operations::failover(&args).await.map(|r| yiyun_dr::operations::describe_failover(&r))
        }),
        Command::Dr(Dr::Failback(args)) => dr_operation(async move {
            yiyun_dr::operations::failback(&args).await.map(|r| yiyun_dr::operations::describe_failover(&r))
        }),
        Command::Dr(Dr::Drill(args)) => dr_operation(async move {
            yiyun_dr::operations::drill(&args).await.map(|r| yiyun_dr::operations::describe_drill(&r))
        }),
        Command::Dr(Dr::Snapshot(args)) => dr_operation(async move {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let report = |m: &yiyun_dr::snapshots::Manifest| {
                let sealed = if m.encrypted { ", encrypted" } else { "" };
                println!(
                    "{}  revision {}  {} bytes  sha256 {}{sealed}",
                    m.file, m.revision, m.bytes, m.sha256
                );
            };
            yiyun_dr::snapshots::snapshots(&args, shutdown, report).await.map(|()| String::new())
        }),
        Command::Dr(Dr::RestoreSnapshot(args)) => {
            dr_operation(async move { yiyun_dr::snapshots::restore(&args).await })
        }
        Command::Api(config) => serve(&cli.telemetry, "yiyun-api", Threads::PerCore, |shutdown| async move {
            yiyun_api::run(config, shutdown).await.map_err(|err| anyhow::anyhow!(err).context("API failed"))
        }),
        Command::Scheduler(config) => {
            serve(&cli.telemetry, "yiyun-scheduler", Threads::PerCore, |shutdown| async move {
                yiyun_scheduler::run(config, shutdown)
                    .await
                    .map_err(|err| anyhow::anyhow!(err).context("scheduler failed"))
            })
        }
    }
}

/// Runs a benchmark against the cluster on a multi-threaded runtime.
fn block_on(benchmark: impl Future<Output = Result<(), yiyun_bench::Error>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Interrupted, the benchmark is dropped: what it started (schedulers, clusters of its
        // own) is stopped and taken down on the way out.
        tokio::select! {
            result = benchmark => result.context("benchmark failed"),
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        }
    })
}

/// Runs a one-off billing command and writes what it returns to standard output.
fn print_output(
    command: impl Future<Output = Result<Option<Vec<u8>>, yiyun_billing::Error>>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let output = runtime.block_on(command).map_err(anyhow::Error::new).context("billing failed")?;
    if let Some(bytes) = output {
        std::io::stdout().write_all(&bytes).context("cannot write to standard output")?;
    }
    Ok(())
}

/// Runs a failover, failback or drill (with logs on standard error) and prints its report.
fn dr_operation(operation: impl Future<Output = Result<String, yiyun_dr::Error>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
        operation.await
    });
    print!("{}", report.map_err(anyhow::Error::new).context("disaster recovery")?);
    Ok(())
}

/// The threads a component's async runtime runs on.
enum Threads {
    One,
    PerCore,
}

/// Runs a long-lived component with telemetry, until SIGTERM or Ctrl-C cancels its shutdown
/// token.
fn serve<F, Fut>(
    telemetry: &telemetry::Config,
    service: &'static str,
    threads: Threads,
    component: F,
) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut builder = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder.enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let guard = telemetry::init(telemetry, service)?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let result = component(shutdown).await;
        guard.shutdown().await;
        result
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received: shutting down"),
    }
    shutdown.cancel();
}
