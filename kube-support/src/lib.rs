//! What every yiyun component needs of Kubernetes, written once: a client, watches reflected
//! into stores, server-side apply under yiyun's field manager, status conditions, label
//! selectors and disruption budgets, retries that back off, what a pod holds on its node, what pods use (metrics.k8s.io), and
//! leader election with client-go's semantics. Components do their I/O through this crate;
//! their rules stay in pure crates.

pub mod access;
pub mod apply;
pub mod backoff;
pub mod conditions;
pub mod disruption;
pub mod leader;
pub mod pods;
pub mod resource_metrics;
pub mod tenants;
pub mod watches;

use std::path::Path;

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

/// A client for the apiserver of `kubeconfig`, or else of `KUBECONFIG` or the in-cluster
/// service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, kube::Error> {
    let Some(path) = kubeconfig else { return Client::try_default().await };
    client_for(Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?).await
}

/// A client for the current context of a kubeconfig given as text (as another cluster's
/// kubeconfig is kept in a Secret).
pub async fn client_from_yaml(kubeconfig: &str) -> Result<Client, kube::Error> {
    client_for(Kubeconfig::from_yaml(kubeconfig).map_err(kube::Error::InferKubeconfig)?).await
}

async fn client_for(kubeconfig: Kubeconfig) -> Result<Client, kube::Error> {
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kube::Error::InferKubeconfig)?;
    Client::try_from(config)
}
