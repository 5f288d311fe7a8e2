//! yiyun's scheduler. `run` starts it beside the admin server; the placement engine, the
//! simulator and the Kubernetes scheduler come with the scheduling issues.

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
}

/// Errors of the scheduler component.
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

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let registry = yiyun_admin::registry("scheduler", env!("CARGO_PKG_VERSION"));
    yiyun_admin::run_with_admin(config.admin_addr, registry, shutdown.clone(), |readiness| async move {
        if yiyun_admin::wait_for("the apiserver", PROBE_INTERVAL, &shutdown, || client.apiserver_version())
            .await
        {
            info!("apiserver reachable: ready");
            readiness.set(true);
        }
        shutdown.cancelled().await;
        info!("scheduler stopped");
        Ok(())
    })
    .await
}
