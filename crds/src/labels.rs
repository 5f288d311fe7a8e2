//! Labels and annotations yiyun puts on the objects it manages; other components select by them.

use std::collections::BTreeMap;

/// Marks every object yiyun manages (value [`MANAGED_BY_VALUE`]).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "yiyun";
/// The tenant a namespace (and everything yiyun keeps in it) belongs to.
pub const TENANT: &str = "yiyun.io/tenant";
/// Set on a namespace released by a deleted tenant under the Retain policy.
pub const ORPHANED_FROM: &str = "yiyun.io/orphaned-from";
/// Annotation on a namespace yiyun created for a tenant: the Tenant's UID. Only such a namespace
/// is ever deleted by yiyun (under `deletionPolicy: Delete`, and only for the Tenant of that
/// UID); one an admin created and a tenant adopted is released, never deleted. Set at creation
/// only, so a label or a later apply cannot make an adopted namespace deletable.
pub const CREATED_FOR: &str = "yiyun.io/created-for";
/// On a tenant namespace under `strict` or `tenant` isolation, the mode: the admission policy
/// `yiyun-network-isolation` then refuses NetworkPolicy writes by the tenant's own members.
pub const NETWORK_ISOLATION: &str = "yiyun.io/network-isolation";
/// On a tenant namespace whose tenant or an ancestor limits regions: `"true"`, and the
/// annotation [`ALLOWED_REGIONS`] holds the lists, which the admission policy
/// `yiyun-allowed-regions` checks every pod's node against.
pub const REGION_RESTRICTED: &str = "yiyun.io/region-restricted";
/// The tenant's region rules, root first: lists separated by `;`, names within by `,`. A node
/// is allowed when its region or region class is in every list.
pub const ALLOWED_REGIONS: &str = "yiyun.io/allowed-regions";
/// The tenant's MLPS level, on its namespaces.
pub const SECURITY_LEVEL: &str = "yiyun.io/security-level";

/// Node labels the node pools write and the scheduler reads.
pub const REGION: &str = "topology.kubernetes.io/region";
pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const SITE: &str = "yiyun.io/site";
pub const RACK: &str = "yiyun.io/rack";
/// The NodePool a node belongs to.
pub const NODE_POOL: &str = "yiyun.io/node-pool";
/// Label and NoSchedule taint of nodes dedicated to a tenant (the value): only pods of that
/// tenant's subtree may run there, whatever they tolerate.
pub const DEDICATED: &str = "yiyun.io/dedicated";
/// `east` or `west`: the region class of the node's site.
pub const REGION_CLASS: &str = "yiyun.io/region-class";
/// Model of a node's GPUs (e.g. `A800`); read from `nvidia.com/gpu.product` when absent.
pub const GPU_MODEL: &str = "yiyun.io/gpu-model";
pub const NVIDIA_GPU_PRODUCT: &str = "nvidia.com/gpu.product";
/// The extended resource of whole GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Label putting a pod in a PodGroup (gang) of its namespace.
pub const POD_GROUP: &str = "yiyun.io/pod-group";
/// Pod annotation asking for part of one GPU, in milli (`"500"` is half a GPU).
pub const GPU_FRACTION: &str = "yiyun.io/gpu-milli";
/// Pod annotation asking for GPU models, comma-separated.
pub const GPU_MODELS: &str = "yiyun.io/gpu-models";
/// Pod annotation the scheduler sets through the Binding: the GPU devices it gave the pod, as
/// `device:milli` pairs (`0:1000,1:1000` or `3:500`), so a restarted scheduler knows them. The
/// admission policy `yiyun-gpu-assignment` refuses it on a new pod and any change to it later.
pub const GPU_ASSIGNMENT: &str = "yiyun.io/gpu-assignment";
/// Pod annotation: `realtime`, `interactive`, `batch` or `archive`.
pub const LATENCY_CLASS: &str = "yiyun.io/latency-class";
/// Pod annotations: the site holding the pod's input data, and its size in GB.
pub const DATA_SITE: &str = "yiyun.io/data-site";
pub const DATA_GIGABYTES: &str = "yiyun.io/data-gb";
/// Pod annotations: expected runtime and deadline, in seconds.
pub const EXPECTED_RUNTIME: &str = "yiyun.io/expected-runtime-seconds";
pub const DEADLINE: &str = "yiyun.io/deadline-seconds";

/// Whether a label key is yiyun's alone to set on a tenant namespace: under `yiyun.io/`, one of
/// its subdomains, or `pod-security.kubernetes.io/`. The Tenant schema refuses such keys in
/// `spec.namespaces[].labels`; this check also covers Tenants stored before it did.
pub fn is_reserved(key: &str) -> bool {
    let prefix = key.split_once('/').map_or("", |(prefix, _)| prefix);
    prefix == "yiyun.io" || prefix.ends_with(".yiyun.io") || prefix == "pod-security.kubernetes.io"
}

/// `tree.yiyun.io/<tenant>: "true"` marks a namespace of `tenant`'s subtree, one per ancestor.
pub fn tree_label(tenant: &str) -> String {
    format!("tree.yiyun.io/{tenant}")
}

/// The labels of every object yiyun keeps for `tenant`.
pub fn managed_labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (TENANT.to_string(), tenant.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yiyun_and_pod_security_keys_are_reserved() {
        for key in ["yiyun.io/tenant", "tree.yiyun.io/anhui", "pod-security.kubernetes.io/enforce"] {
            assert!(is_reserved(key), "{key}");
        }
        for key in ["workload", "app.kubernetes.io/name", "notyiyun.io/x", "example.com/yiyun.io"] {
            assert!(!is_reserved(key), "{key}");
        }
    }
}
