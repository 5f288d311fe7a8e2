//! yiyun's controllers. `run` starts them beside the admin server; later issues add the tenancy,
//! site, node-pool, replication and metering reconcilers.

use std::{net::SocketAddr, time::Duration};

use kube::{Api, Client, api::ListParams};
use tokio_util::sync::CancellationToken;
use tracing::info;
use yiyun_crds::Tenant;

const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Configuration of `yiyun controller`. The apiserver comes from `KUBECONFIG` or the in-cluster
/// service account.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "YIYUN_CONTROLLER_ADMIN_ADDR", default_value = "127.0.0.1:9440")]
    pub admin_addr: SocketAddr,
}

/// Errors of the controller component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Admin(#[from] yiyun_admin::Error),
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Admin(err) => err.label(),
        }
    }
}

/// Runs the controllers until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let registry = yiyun_admin::registry("controller", env!("CARGO_PKG_VERSION"));
    yiyun_admin::run_with_admin(
        config.admin_addr,
        registry,
        shutdown.clone(),
        |readiness| async move {
            // Ready once the apiserver answers and serves the yiyun CRDs.
            let tenants: Api<Tenant> = Api::all(client.clone());
            let one = ListParams::default().limit(1);
            let waiting_for =
                "the apiserver and the yiyun CRDs (install them: `yiyun crd | kubectl apply -f -`)";
            readiness
                .probe_until_ready(waiting_for, PROBE_INTERVAL, &shutdown, || {
                    tenants.list_metadata(&one)
                })
                .await;
            shutdown.cancelled().await;
            info!("controller stopped");
            Ok(())
        },
    )
    .await
}
