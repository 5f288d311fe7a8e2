//! yiyun's scheduler on Kubernetes: schedules the pods whose `spec.schedulerName` is its name
//! with the placement engine, binds them through `pods/binding`, explains the ones that wait,
//! places PodGroups all or nothing, and leads through a Lease so standbys can take over.

mod convert;
mod core;
mod leader;
mod metrics;
mod report;
mod sites;
mod tenants;

use std::{net::SocketAddr, time::Duration};

use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::info;

const PROBE_INTERVAL: Duration = Duration::from_secs(2);

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
    /// Lead through a Lease so that standbys can take over; off for a single instance.
    #[arg(long, env = "YIYUN_SCHEDULER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "YIYUN_SCHEDULER_LEASE_NAMESPACE", default_value = "kube-system")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "YIYUN_SCHEDULER_LEASE_NAME", default_value = "yiyun-scheduler")]
    pub lease_name: String,
    /// Identity in the Lease; defaults to the host name and process id.
    #[arg(long, env = "YIYUN_SCHEDULER_IDENTITY")]
    pub identity: Option<String>,
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
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Admin(err) => err.label(),
            Error::WatchEnded => "watch_ended",
            Error::LostLease => "lost_lease",
        }
    }
}

fn identity(config: &Config) -> String {
    config.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let mut registry = yiyun_admin::registry("scheduler", env!("CARGO_PKG_VERSION"));
    let metrics = metrics::Metrics::register(&mut registry);
    yiyun_admin::run_with_admin(config.admin_addr, registry, shutdown.clone(), |readiness| async move {
        if !yiyun_admin::wait_for("the apiserver", PROBE_INTERVAL, &shutdown, || client.apiserver_version())
            .await
        {
            return Ok(());
        }
        let election = config.leader_elect.then(|| {
            leader::Election::new(
                client.clone(),
                &config.lease_namespace,
                &config.lease_name,
                &identity(&config),
            )
        });
        if let Some(election) = &election
            && !election.acquire(&shutdown).await
        {
            return Ok(());
        }
        readiness.set(true);
        info!(scheduler = %config.scheduler_name, "scheduling");
        let scheduler = core::Scheduler::new(config, client, metrics);
        let work = scheduler.run(shutdown.clone());
        match &election {
            Some(election) => tokio::select! {
                result = work => result,
                _ = election.keep(&shutdown) => {
                    if shutdown.is_cancelled() { Ok(()) } else { Err(Error::LostLease) }
                }
            },
            None => work.await,
        }
    })
    .await
}
