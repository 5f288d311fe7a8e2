//! `ResourceRequest`: a department's request for a quota change, decided by an admin of its
//! parent tenant, and applied to the Tenant only if the tenant tree stays whole.

// Several printer columns share a type; clippy reads those as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::TenantQuota;

/// A request to change a tenant's quota, filed in one of the tenant's namespaces (through the
/// self-service API, or with kubectl). An admin of the parent tenant approves or rejects it;
/// an approved request is applied to the Tenant unless the new quota would break the tenant
/// tree (a guarantee its parent cannot cover, a max over the parent's), in which case it fails
/// with the tenancy rules' own message.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "yiyun.io",
    version = "v1alpha1",
    kind = "ResourceRequest",
    namespaced,
    doc = "A department's request for a quota change of its tenant, approved or rejected by an \
           admin of the parent tenant, and applied to the Tenant when the tree allows it.",
    status = "ResourceRequestStatus",
    shortname = "rr",
    category = "yiyun",
    derive = "PartialEq",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "By", type_ = "string", json_path = ".spec.requestedBy"),
    printcolumn(name = "Decided-By", type_ = "string", json_path = ".status.decidedBy"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a ResourceRequest's spec cannot change once filed; file a new one"))]
#[x_kube(validation = Rule::new("has(self.quota.guaranteed) || has(self.quota.max)")
    .message("spec.quota must ask for a guaranteed or a max amount"))]
pub struct ResourceRequestSpec {
    /// The tenant whose quota changes; the namespace the request is filed in belongs to it.
    #[schemars(length(min = 1, max = 63))]
    pub tenant: String,
    /// The quota asked for: what it names replaces the tenant's current amounts of those
    /// resources; what it leaves out stays as it is.
    pub quota: TenantQuota,
    /// Why the department needs it (shown to whoever decides).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// Who filed it, as the apiserver authenticated them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub requested_by: Option<String>,
}

/// Where a request stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ResourceRequestPhase {
    /// Waiting for an admin of the parent tenant.
    #[default]
    Pending,
    /// Approved; being applied to the Tenant.
    Approved,
    /// Rejected by an admin of the parent tenant.
    Rejected,
    /// The Tenant's quota now says what was asked.
    Applied,
    /// Approved, but the tenant tree does not allow it (see the message).
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequestStatus {
    #[serde(default)]
    pub phase: ResourceRequestPhase,
    /// Who approved or rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// The decider's comment, or why applying failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,
}
