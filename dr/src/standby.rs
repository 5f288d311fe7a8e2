//! The standby cluster of a policy, reached with the kubeconfig its Secret holds.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use yiyun_crds::ReplicationPolicy;

use crate::rules::policy::Problem;

/// Why the standby could not be reached.
#[derive(Debug)]
pub enum Unreached {
    /// The policy points at something missing or invalid: the admin must fix it.
    Invalid(Problem),
    /// Reading the Secret failed; it is tried again.
    Transient(String),
}

/// A client for the standby cluster of `policy`.
pub async fn connect(primary: &Client, policy: &ReplicationPolicy) -> Result<Client, Unreached> {
    let namespace = policy.namespace().unwrap_or_default();
    let reference = &policy.spec.target.kubeconfig_secret;
    let secrets: Api<Secret> = Api::namespaced(primary.clone(), &namespace);
    let secret = match secrets.get_opt(&reference.name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(Unreached::Invalid(Problem {
                field: "spec.target.kubeconfigSecret.name",
                message: format!("Secret {} does not exist in namespace {namespace}", reference.name),
            }));
        }
        Err(err) => return Err(Unreached::Transient(format!("reading Secret {}: {err}", reference.name))),
    };
    let Some(bytes) = secret.data.as_ref().and_then(|data| data.get(&reference.key)) else {
        return Err(Unreached::Invalid(Problem {
            field: "spec.target.kubeconfigSecret.key",
            message: format!("Secret {} has no key {:?}", reference.name, reference.key),
        }));
    };
    let invalid = |why: String| {
        Unreached::Invalid(Problem {
            field: "spec.target.kubeconfigSecret",
            message: format!(
                "Secret {} key {:?} is not a usable kubeconfig: {why}",
                reference.name, reference.key
            ),
        })
    };
    let text = std::str::from_utf8(&bytes.0).map_err(|_| invalid("it is not UTF-8 text".into()))?;
    yiyun_kube::client_from_yaml(text).await.map_err(|err| invalid(err.to_string()))
}
