//! yiyun's controllers. `run` starts them beside the admin server: tenancy, and node pools with
//! their sites' status and maintenance drains.

mod metrics;
mod sites;
mod tenancy;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use kube::{Api, api::ListParams};
use tokio_util::sync::CancellationToken;
use tracing::info;
use yiyun_crds::Tenant;

const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How failed reconciles and status writes are retried: from half a second, doubling, to a
/// minute, with jitter.
const RETRY: yiyun_kube::backoff::Backoff =
    yiyun_kube::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(60));

/// Configuration of `yiyun controller`. The apiserver comes from `KUBECONFIG` or the in-cluster
/// service account.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "YIYUN_CONTROLLER_ADMIN_ADDR", default_value = "127.0.0.1:9440")]
    pub admin_addr: SocketAddr,
    /// A kubeconfig to use instead of `KUBECONFIG` or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub election: yiyun_kube::leader::Args,
}

/// Errors of the controller component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Admin(#[from] yiyun_admin::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("a watch stopped before it had listed")]
    WatchStopped,
    #[error("the watches have not listed yet (is the apiserver reachable?)")]
    NotSynced,
    #[error("tenant {tenant} waits for its children to be deleted: {}", children.join(", "))]
    HasChildren { tenant: String, children: Vec<String> },
    #[error("lost the leader lease; stopping so that another controller can take over")]
    LostLease,
    /// A bug, never input (the planner reports bad input as problems): the process exits so
    /// that it is restarted with a clean slate, not left reconciling against a stale plan.
    #[error("planning the tenant tree panicked: {0}")]
    PlannerPanicked(String),
    #[error(transparent)]
    Election(#[from] yiyun_kube::leader::Error),
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as Finalizer;
        match self {
            Error::Kube(_) => "kube",
            Error::Admin(err) => err.label(),
            Error::Finalizer(err) => match err.as_ref() {
                Finalizer::ApplyFailed(inner) | Finalizer::CleanupFailed(inner) => inner.label(),
                Finalizer::AddFinalizer(_) | Finalizer::RemoveFinalizer(_) => "finalizer_patch",
                Finalizer::UnnamedObject | Finalizer::InvalidFinalizer => "finalizer",
            },
            Error::WatchStopped => "watch_stopped",
            Error::NotSynced => "not_synced",
            Error::HasChildren { .. } => "has_children",
            Error::LostLease => "lost_lease",
            Error::PlannerPanicked(_) => "planner_panicked",
            Error::Election(_) => "election_config",
        }
    }

    /// Whether the error only means "not yet" (deletion waiting for children), not a failure.
    pub fn is_waiting(&self) -> bool {
        self.label() == "has_children"
    }
}

/// The span of one reconcile of the object `name` (of `tenant`, when it belongs to one): the
/// object, tenant and outcome are its attributes in traces and on each log line inside it.
fn reconcile_span(controller: &'static str, name: &str, tenant: Option<&str>) -> tracing::Span {
    yiyun_admin::trace::with_trace_id(tracing::info_span!(
        "reconcile",
        controller,
        object = name,
        tenant,
        outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    ))
}

/// Records a reconcile's outcome (`ok`, or the error's label) in the current span.
fn record_outcome(error: Option<&'static str>) {
    tracing::Span::current().record("outcome", error.unwrap_or("ok"));
}

/// Runs the controllers until `shutdown` is cancelled; with leader election, only while this
/// replica holds the lease (it stops with [`Error::LostLease`] when it loses it).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let client = yiyun_kube::client(config.kubeconfig.as_deref()).await?;
    let mut registry = yiyun_admin::registry("controller", env!("CARGO_PKG_VERSION"));
    let metrics = metrics::Metrics::register(&mut registry);
    let leading = yiyun_kube::leader::leader_gauge(&mut registry);
    yiyun_admin::run_with_admin(config.admin_addr, registry, shutdown.clone(), |readiness| async move {
        // The watches need the CRDs installed.
        let tenants: Api<Tenant> = Api::all(client.clone());
        let one = ListParams::default().limit(1);
        let waiting_for = "the apiserver and the yiyun CRDs (install them: `yiyun crd | kubectl apply -f -`)";
        if !yiyun_admin::wait_for(waiting_for, PROBE_INTERVAL, &shutdown, || tenants.list_metadata(&one))
            .await
        {
            return Ok(());
        }
        let election = config.election.election(client.clone(), "yiyun-controller", leading)?;
        if let Some(election) = &election
            && !election.acquire(&shutdown).await
        {
            return Ok(());
        }
        // The controllers stop with the process or with the lease.
        let work = shutdown.child_token();
        // Readiness follows the tenancy watches; node pools come up beside them.
        let controllers = async {
            tokio::try_join!(
                tenancy::run(client.clone(), metrics.clone(), readiness, work.clone()),
                sites::run(client.clone(), metrics.clone(), work.clone()),
            )
        };
        let result = match &election {
            // Renewal first: a leader resumed past its deadline stops before it writes. Losing
            // the lease drops every reconcile in flight with its request.
            Some(election) => tokio::select! {
                biased;
                () = election.keep(&shutdown) => {
                    work.cancel();
                    if shutdown.is_cancelled() { Ok(()) } else { Err(Error::LostLease) }
                }
                result = controllers => result.map(|_| ()),
            },
            None => controllers.await.map(|_| ()),
        };
        info!("controller stopped");
        result
    })
    .await
}
