//! yiyun's disaster recovery. `run` replicates every namespace a `ReplicationPolicy` protects
//! to its standby cluster and measures the achieved RPO, and carries out `Failover` objects;
//! [`operations`] fail over, fail back and drill; [`snapshots`] keep etcd's. The rules (targets by level, what a copy holds, what the measurements say) are
//! pure, in [`rules`].

mod failovers;
mod metrics;
pub mod operations;
mod replicator;
pub mod rules;
pub mod snapshots;
mod standby;
pub mod store;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use kube::{Api, api::ListParams};
use tokio_util::sync::CancellationToken;
use tracing::info;
use yiyun_crds::ReplicationPolicy;

/// The field manager of the copies on the standby and of the policies' status.
pub const FIELD_MANAGER: &str = "yiyun-dr";

/// Configuration of `yiyun dr run`. The primary's apiserver comes from `KUBECONFIG` or the
/// in-cluster service account; each standby from its policy's kubeconfig Secret.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "YIYUN_DR_ADMIN_ADDR", default_value = "127.0.0.1:9444")]
    pub admin_addr: SocketAddr,
    /// A kubeconfig to use instead of `KUBECONFIG` or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds between full comparisons of a continuously replicated namespace with its copy
    /// (they catch deletions missed while the controller was down).
    #[arg(long, default_value_t = 300)]
    pub resync_seconds: u64,
    /// Seconds between status updates of a policy (and checks that its standby answers).
    #[arg(long, default_value_t = 5)]
    pub status_seconds: u64,
    #[command(flatten)]
    pub election: yiyun_kube::leader::Args,
}

/// Errors of disaster recovery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Admin(#[from] yiyun_admin::Error),
    #[error(transparent)]
    Election(#[from] yiyun_kube::leader::Error),
    #[error("lost the leader lease; stopping so that another replica can take over")]
    LostLease,
    #[error("{0}")]
    Policy(String),
    #[error("the standby cluster: {0}")]
    Standby(String),
    #[error("the primary cluster cannot be reached: {0}")]
    PrimaryUnreachable(String),
    #[error("{0}")]
    Drill(String),
    #[error("{0}")]
    Snapshot(String),
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Admin(err) => err.label(),
            Error::Election(_) => "election_config",
            Error::LostLease => "lost_lease",
            Error::Policy(_) => "policy",
            Error::Standby(_) => "standby",
            Error::PrimaryUnreachable(_) => "primary_unreachable",
            Error::Drill(_) => "drill",
            Error::Snapshot(_) => "snapshot",
        }
    }
}

const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Replicates until `shutdown` is cancelled; with leader election, only while this replica
/// holds the lease.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let client = yiyun_kube::client(config.kubeconfig.as_deref()).await?;
    let mut registry = yiyun_admin::registry("dr", env!("CARGO_PKG_VERSION"));
    let metrics = metrics::Metrics::register(&mut registry);
    let leading = yiyun_kube::leader::leader_gauge(&mut registry);
    yiyun_admin::run_with_admin(config.admin_addr, registry, shutdown.clone(), |readiness| async move {
        let policies: Api<ReplicationPolicy> = Api::all(client.clone());
        let one = ListParams::default().limit(1);
        let waiting_for = "the apiserver and the yiyun CRDs (install them: `yiyun crd | kubectl apply -f -`)";
        if !yiyun_admin::wait_for(waiting_for, PROBE_INTERVAL, &shutdown, || policies.list_metadata(&one))
            .await
        {
            return Ok(());
        }
        let election = config.election.election(client.clone(), "yiyun-dr", leading)?;
        if let Some(election) = &election
            && !election.acquire(&shutdown).await
        {
            return Ok(());
        }
        let work = shutdown.child_token();
        let replication = async {
            tokio::try_join!(
                replicator::run(client.clone(), metrics, readiness, &config, work.clone()),
                failovers::run(client.clone(), config.kubeconfig.clone(), work.clone()),
            )
            .map(|_| ())
        };
        let result = match &election {
            Some(election) => tokio::select! {
                biased;
                () = election.keep(&shutdown) => {
                    work.cancel();
                    if shutdown.is_cancelled() { Ok(()) } else { Err(Error::LostLease) }
                }
                result = replication => result,
            },
            None => replication.await,
        };
        info!("disaster recovery stopped");
        result
    })
    .await
}
