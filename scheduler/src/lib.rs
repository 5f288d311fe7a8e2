//! yiyun's scheduler on Kubernetes: schedules the pods whose `spec.schedulerName` is its name
//! with the placement engine, binds them through `pods/binding`, explains the ones that wait,
//! places PodGroups all or nothing, and leads through a Lease so standbys can take over.

mod convert;
mod devices;
mod edge;
mod measure;
mod metrics;
mod report;
mod sites;
mod state;
mod store;
mod tenants;
mod volumes;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::info;
use yiyun_kube::leader::Leadership;

const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The component's name: its Lease's by default, and the field manager of what it applies.
const COMPONENT: &str = "yiyun-scheduler";

/// Configuration of `yiyun scheduler`. The apiserver comes from `KUBECONFIG` or the in-cluster
/// service account.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "YIYUN_SCHEDULER_ADMIN_ADDR", default_value = "127.0.0.1:9441")]
    pub admin_addr: SocketAddr,
    /// Pods whose `spec.schedulerName` is this are scheduled.
    #[arg(long, env = "YIYUN_SCHEDULER_NAME", default_value = "yiyun-scheduler")]
    pub scheduler_name: String,
    /// Bindings in flight at once.
    #[arg(long, env = "YIYUN_SCHEDULER_BIND_CONCURRENCY", default_value_t = 256)]
    pub bind_concurrency: usize,
    /// Most pods preemption may evict per minute.
    #[arg(long, env = "YIYUN_SCHEDULER_EVICTIONS_PER_MINUTE", default_value_t = yiyun_engine::DEFAULT_EVICTIONS_PER_MINUTE)]
    pub evictions_per_minute: usize,
    /// Seconds a preempting pod waits for its victims to go before it gives its nominated room
    /// back and is tried again.
    #[arg(long, env = "YIYUN_SCHEDULER_NOMINATION_TIMEOUT_SECONDS", default_value_t = 120)]
    pub nomination_timeout_seconds: u64,
    /// Seconds between two saves of the workload the engine measured, kept in the ConfigMap
    /// `<lease name>-workload` beside the Lease, so a restarted scheduler or a standby taking over
    /// places its first pods knowing the workload. 0 neither saves nor recalls it; at most a day.
    #[arg(long, env = "YIYUN_SCHEDULER_WORKLOAD_SAVE_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub workload_save_seconds: u64,
    /// A kubeconfig to use instead of `KUBECONFIG` or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub election: yiyun_kube::leader::Args,
}

/// Errors of the scheduler component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Admin(#[from] yiyun_admin::Error),
    #[error("a watch stream ended")]
    WatchEnded,
    #[error("lost the leader lease; stopping so that another scheduler can take over")]
    LostLease,
    #[error(transparent)]
    Election(#[from] yiyun_kube::leader::Error),
    #[error("the saved workload measure is not readable: {field}: {message}")]
    SavedMeasure { field: String, message: String },
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Admin(err) => err.label(),
            Error::WatchEnded => "watch_ended",
            Error::LostLease => "lost_lease",
            Error::Election(_) => "election_config",
            Error::SavedMeasure { .. } => "saved_measure",
        }
    }
}

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let client = yiyun_kube::client(config.kubeconfig.as_deref()).await?;
    let mut registry = yiyun_admin::registry("scheduler", env!("CARGO_PKG_VERSION"));
    let metrics = metrics::Metrics::register(&mut registry);
    let leading = yiyun_kube::leader::leader_gauge(&mut registry);
    yiyun_admin::run_with_admin(config.admin_addr, registry, shutdown.clone(), |readiness| async move {
        if !yiyun_admin::wait_for("the apiserver", PROBE_INTERVAL, &shutdown, || client.apiserver_version())
            .await
        {
            return Ok(());
        }
        let election = config.election.election(client.clone(), COMPONENT, leading)?;
        if let Some(election) = &election
            && !election.acquire(&shutdown).await
        {
            return Ok(());
        }
        readiness.set(true);
        info!(scheduler = %config.scheduler_name, "scheduling");
        let leadership = election.as_ref().map_or_else(Leadership::alone, |e| e.leadership());
        let scheduler = edge::Scheduler::new(config, client, metrics, leadership);
        let work = scheduler.run(shutdown.clone());
        match &election {
            // Renewal first: a leader resumed past its deadline stops before it schedules.
            Some(election) => tokio::select! {
                biased;
                _ = election.keep(&shutdown) => {
                    if shutdown.is_cancelled() { Ok(()) } else { Err(Error::LostLease) }
                }
                result = work => result,
            },
            None => work.await,
        }
    })
    .await
}
