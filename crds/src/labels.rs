//! Labels and annotations yiyun puts on the objects it manages; other components select by them.

use std::collections::BTreeMap;

/// Marks every object yiyun manages (value [`MANAGED_BY_VALUE`]).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "yiyun";
/// The tenant a namespace (and everything yiyun keeps in it) belongs to.
pub const TENANT: &str = "yiyun.io/tenant";
/// Set on a namespace released by a deleted tenant under the Retain policy.
pub const ORPHANED_FROM: &str = "yiyun.io/orphaned-from";
/// The tenant's MLPS level, on its namespaces.
pub const SECURITY_LEVEL: &str = "yiyun.io/security-level";

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
