//! The departments' self-service API: gRPC services from the `.proto` files in `proto/` (with
//! server reflection, so `grpcurl` works, and standard health checking) and REST/JSON on the
//! same handlers, over TLS on one port. Every call is a Kubernetes authorization decision
//! (TokenReview, then SubjectAccessReview on a yiyun resource), and leaves an audit line.
//!
//! Served: usage and bills ([`billing`]), quota requests ([`resource_requests`]), compute work
//! ([`jobs`]); protection and drills of disaster recovery ([`disaster_recovery`]).

pub mod billing;
mod caller;
pub mod disaster_recovery;
pub mod error;
pub mod jobs;
mod limits;
pub mod openapi;
pub mod resource_requests;
mod server;
mod shared;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::info;
use yiyun_kube::access::Access;

/// The generated messages and services of `yiyun.api.v1`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("yiyun.api.v1");

    /// The descriptors server reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("yiyun_api_v1_descriptor");
}

/// Configuration of `yiyun api`.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Where gRPC and REST are served (TLS).
    #[arg(long, env = "YIYUN_API_ADDR", default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,
    /// The serving certificate (PEM, the chain after the leaf).
    #[arg(long, env = "YIYUN_API_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, env = "YIYUN_API_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "YIYUN_API_ADMIN_ADDR", default_value = "127.0.0.1:9443")]
    pub admin_addr: SocketAddr,
    /// A kubeconfig to use instead of `KUBECONFIG` or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The billing ledger bills are read from: `sqlite://PATH` or `postgres://USER@HOST/DATABASE`.
    #[arg(long, env = "YIYUN_BILLING_DATABASE", default_value = "sqlite://yiyun-billing.db")]
    pub billing_database: String,
    /// How long the apiserver's answers about a token or an access are reused: a revoked
    /// token or a removed binding stops working within this.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub auth_cache_seconds: u64,
    /// The largest request body accepted, gRPC message or REST body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_request_bytes: usize,
    /// The scheduler that places submitted jobs' pods.
    #[arg(long, env = "YIYUN_SCHEDULER_NAME", default_value = "yiyun-scheduler")]
    pub scheduler_name: String,
    /// Calls a second each caller may make on average (0: no limit); beyond it, calls are
    /// refused with the time to wait (429 / RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 50)]
    pub rate_limit_per_second: u32,
    /// Calls a caller may make at once before the average applies.
    #[arg(long, default_value_t = 100)]
    pub rate_limit_burst: u32,
}

/// Errors of the API server, each with a stable label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Admin(#[from] yiyun_admin::Error),
    #[error(transparent)]
    Ledger(Box<yiyun_billing::ledger::LedgerError>),
    #[error("the TLS certificate or key: {0}")]
    Tls(String),
    #[error("cannot serve on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Admin(err) => err.label(),
            Error::Ledger(err) => err.label(),
            Error::Tls(_) => "tls",
            Error::Bind { .. } => "bind",
            Error::Reflection(_) => "reflection",
        }
    }
}

/// Serves the API until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let tls = server::tls_config(&config.tls_cert, &config.tls_key)?;
    let client = yiyun_kube::client(config.kubeconfig.as_deref()).await?;
    let ledger = yiyun_billing::ledger::Ledger::connect(&config.billing_database)
        .await
        .map_err(|err| Error::Ledger(Box::new(err)))?;
    let mut registry = yiyun_admin::registry("api", env!("CARGO_PKG_VERSION"));
    let access = Arc::new(Access::new(client.clone(), Duration::from_secs(config.auth_cache_seconds)));
    let metrics = caller::Metrics::register(&mut registry, &access);
    yiyun_admin::run_with_admin(config.admin_addr, registry, shutdown.clone(), |readiness| async move {
        let gate = Arc::new(caller::Gate {
            access,
            limiter: limits::RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            metrics,
        });
        let (caches, listed, watches) = jobs::Caches::start(&client);
        tokio::spawn(watches);
        let services = server::Services { gate, client, ledger, caches, scheduler: config.scheduler_name };
        let routes = server::routes(services, config.max_request_bytes).await?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Bind { addr: config.addr, source })?;
        info!(addr = %config.addr, "self-service API listening (gRPC and REST over TLS)");
        // Ready once jobs, pods and nodes are listed: a list of jobs before would be wrong.
        let ready = async move {
            if yiyun_kube::watches::all_listed(&listed).await {
                readiness.set(true);
            }
        };
        tokio::spawn(ready);
        server::serve(listener, tls, routes, shutdown).await;
        Ok(())
    })
    .await
}
