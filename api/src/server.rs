//! One TLS port for gRPC and REST: HTTP/2 (gRPC, and REST for clients that speak it) and
//! HTTP/1.1 (REST), negotiated by ALPN, both routed by one axum router that holds the gRPC
//! services, server reflection, health checking and the REST routes.

use std::{path::Path, sync::Arc, time::Duration};

use axum::extract::DefaultBodyLimit;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    Error,
    billing::{self, BillingService},
    caller::Gate,
    disaster_recovery::{self, DisasterRecoveryService},
    jobs::{self, JobService},
    proto::{
        self, billing_server::BillingServer, disaster_recovery_server::DisasterRecoveryServer,
        jobs_server::JobsServer, resource_requests_server::ResourceRequestsServer,
    },
    resource_requests::{self, ResourceRequestService},
};

/// TLS from PEM files, offering HTTP/2 and HTTP/1.1.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let tls = |what: &str, path: &Path, err: &dyn std::fmt::Display| {
        Error::Tls(format!("{what} {}: {err}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| tls("certificate", cert, &err))?;
    if chain.is_empty() {
        return Err(tls("certificate", cert, &"no certificate in the file"));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|err| tls("key", key, &err))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::Tls(err.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|err| Error::Tls(format!("{} and {}: {err}", cert.display(), key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the services are made of.
pub struct Services {
    pub gate: Arc<Gate>,
    pub client: kube::Client,
    pub ledger: yiyun_billing::ledger::Ledger,
    pub caches: jobs::Caches,
    /// The scheduler submitted jobs are for.
    pub scheduler: String,
}

/// Every gRPC service and REST route, requests limited to `max_request_bytes`.
pub async fn routes(services: Services, max_request_bytes: usize) -> Result<axum::Router, Error> {
    let Services { gate, client, ledger, caches, scheduler } = services;
    let billing = BillingService::new(gate.clone(), client.clone(), ledger);
    let jobs = JobService::new(gate.clone(), client.clone(), caches, scheduler);
    let disaster_recovery = DisasterRecoveryService::new(gate.clone(), client.clone());
    let requests = ResourceRequestService::new(gate, client);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BillingServer<Arc<BillingService>>>().await;
    health.set_serving::<ResourceRequestsServer<Arc<ResourceRequestService>>>().await;
    health.set_serving::<JobsServer<Arc<JobService>>>().await;
    health.set_serving::<DisasterRecoveryServer<Arc<DisasterRecoveryService>>>().await;
    // Both reflection versions (older grpcurl releases speak v1alpha), describing the
    // health service too.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let grpc = tonic::service::Routes::new(
        BillingServer::new(billing.clone()).max_decoding_message_size(max_request_bytes),
    )
    .add_service(
        DisasterRecoveryServer::new(disaster_recovery.clone()).max_decoding_message_size(max_request_bytes),
    )
    .add_service(ResourceRequestsServer::new(requests.clone()).max_decoding_message_size(max_request_bytes))
    .add_service(JobsServer::new(jobs.clone()).max_decoding_message_size(max_request_bytes))
    .add_service(health_service)
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha);
    Ok(grpc
        .into_axum_router()
        .merge(billing::routes(billing))
        .merge(resource_requests::routes(requests))
        .merge(jobs::routes(jobs))
        .merge(disaster_recovery::routes(disaster_recovery))
        .merge(crate::openapi::routes())
        .layer(DefaultBodyLimit::max(max_request_bytes)))
}

/// Accepts TLS connections until `shutdown`, each served on a task of its own.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    routes: axum::Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    debug!(%err, "accept failed");
                    continue;
                }
            },
        };
        let (acceptor, routes) = (acceptor.clone(), routes.clone());
        tokio::spawn(async move {
            // A client that opens a connection and never finishes its handshake holds nothing.
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return debug!(%peer, %err, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let service = TowerToHyperService::new(routes);
            if let Err(err) =
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await
            {
                debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
}
