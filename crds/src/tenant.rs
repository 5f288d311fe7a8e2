//! `Tenant`: one government unit in the province > city > county > department tree.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity,
    apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Blocks a Tenant's deletion until the tenancy controller has released its namespaces.
pub const TENANT_FINALIZER: &str = "yiyun.io/tenant-cleanup";

/// A government unit of the one cloud: a province, city, county or department. Tenants form a
/// tree through `spec.parent`; each owns namespaces and holds guaranteed and maximum quota for
/// its whole subtree.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "yiyun.io",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "A government unit of the one cloud (province, city, county or department) in a tree, \
           with quota for its whole subtree, the namespaces it owns, its owners and members, \
           its security level and network isolation.",
    status = "TenantStatus",
    shortname = "tnt",
    category = "yiyun",
    derive = "PartialEq",
    printcolumn(name = "Level", type_ = "string", json_path = ".spec.level"),
    printcolumn(name = "Parent", type_ = "string", json_path = ".spec.parent"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "CPU Used",
        type_ = "string",
        description = "CPU requested in the namespaces of the tenant's whole subtree",
        json_path = ".status.usage.subtree.cpu"
    ),
    printcolumn(
        name = "CPU Max",
        type_ = "string",
        json_path = ".spec.quota.max.cpu"
    ),
    printcolumn(
        name = "Cost MTD",
        type_ = "string",
        description = "Cost of the whole subtree this month so far, CNY",
        json_path = ".status.cost.subtree"
    ),
    printcolumn(name = "Display Name", type_ = "string", json_path = ".spec.displayName", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("a tenant's name must be at most 63 characters: it prefixes namespace labels"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("a tenant's name must be lowercase letters, digits and '-', starting and ending with a letter or digit"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.level == 'province' || (has(self.parent) && self.parent != '')")
        .message("spec.parent is required for every level below province"),
)]
pub struct TenantSpec {
    /// Human-readable name of the unit, in any language (e.g. "芜湖市数据资源管理局").
    #[schemars(length(min = 1, max = 256))]
    pub display_name: String,

    /// Name of the parent Tenant. Absent only for a root (a province).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,

    /// Tier of the unit in the tree: province > city > county > department. A child's level is
    /// always below its parent's.
    pub level: TenantLevel,

    /// Users and groups that administer the tenant's namespaces (bound to the `admin` role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<Subject>,

    /// Users and groups that work in the tenant's namespaces (bound to the `edit` role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Subject>,

    /// Quota of the tenant's whole subtree: what it is guaranteed and the hard ceiling.
    #[serde(default)]
    pub quota: TenantQuota,

    /// Namespaces the tenant owns; yiyun creates and keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub namespaces: Vec<TenantNamespace>,

    /// Classified protection level (MLPS / 等保), 1 to 4. Government systems are mostly 2 or 3.
    #[serde(default = "default_security_level")]
    #[schemars(range(min = 1, max = 4))]
    pub security_level: i32,

    /// Network isolation of the tenant's namespaces: `strict` denies all traffic except DNS and
    /// the tenant's own namespaces; `tenant` also allows the tenant's subtree; `none` adds no
    /// policy.
    #[serde(default)]
    pub network_isolation: NetworkIsolation,

    /// Finance cost centre that bills of this tenant are charged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub cost_center: Option<String>,

    /// Regions or region classes (e.g. `anhui`, `east`) where the tenant's workloads may run.
    /// Empty means every region the parent allows; a list narrows the parent's, never widens it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_regions: Vec<String>,

    /// Monthly budget of the tenant's whole subtree, in CNY: the Tenant's `BudgetAlert` condition
    /// turns True, with an event, when the month-to-date cost reaches 80% and again at 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<TenantBudget>,

    /// What happens to the tenant's namespaces when the Tenant is deleted: `Retain` (default)
    /// keeps them, labelled as orphaned; `Delete` deletes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_security_level() -> i32 {
    2
}

/// A tenant's spending limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TenantBudget {
    /// CNY per calendar month (China Standard Time) for the whole subtree, e.g. `"50000.00"`.
    #[schemars(length(max = 20), regex(pattern = r"^[0-9]{1,12}(\.[0-9]{1,2})?$"))]
    pub monthly: String,
}

/// Tier of a government unit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantLevel {
    Province,
    City,
    County,
    Department,
}

/// A user or a group, as the apiserver's authenticator names them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Subject {
    /// `User` or `Group`.
    pub kind: SubjectKind,
    /// The user's or group's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kind of a [`Subject`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SubjectKind {
    User,
    Group,
}

/// Guaranteed and maximum quota of a tenant's subtree.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new(
        "!has(self.guaranteed) || !has(self.max) || !has(self.guaranteed.cpu) || !has(self.max.cpu) || \
         quantity(string(self.guaranteed.cpu)).compareTo(quantity(string(self.max.cpu))) <= 0"
    ).message(Message::Expression(
        "'quota.guaranteed[cpu] (' + string(self.guaranteed.cpu) + ') must not exceed quota.max[cpu] (' + string(self.max.cpu) + ')'".into()
    )),
    validation = Rule::new(
        "!has(self.guaranteed) || !has(self.max) || !has(self.guaranteed.memory) || !has(self.max.memory) || \
         quantity(string(self.guaranteed.memory)).compareTo(quantity(string(self.max.memory))) <= 0"
    ).message(Message::Expression(
        "'quota.guaranteed[memory] (' + string(self.guaranteed.memory) + ') must not exceed quota.max[memory] (' + string(self.max.memory) + ')'".into()
    )),
    validation = Rule::new(
        "!has(self.guaranteed) || !has(self.max) || !has(self.guaranteed.nvidia__dot__com__slash__gpu) || !has(self.max.nvidia__dot__com__slash__gpu) || \
         quantity(string(self.guaranteed.nvidia__dot__com__slash__gpu)).compareTo(quantity(string(self.max.nvidia__dot__com__slash__gpu))) <= 0"
    ).message(Message::Expression(
        "'quota.guaranteed[nvidia.com/gpu] (' + string(self.guaranteed.nvidia__dot__com__slash__gpu) + ') must not exceed quota.max[nvidia.com/gpu] (' + string(self.max.nvidia__dot__com__slash__gpu) + ')'".into()
    )),
    validation = Rule::new(
        "!has(self.guaranteed) || !has(self.max) || !has(self.guaranteed.requests__dot__storage) || !has(self.max.requests__dot__storage) || \
         quantity(string(self.guaranteed.requests__dot__storage)).compareTo(quantity(string(self.max.requests__dot__storage))) <= 0"
    ).message(Message::Expression(
        "'quota.guaranteed[requests.storage] (' + string(self.guaranteed.requests__dot__storage) + ') must not exceed quota.max[requests.storage] (' + string(self.max.requests__dot__storage) + ')'".into()
    )),
    validation = Rule::new(
        "!has(self.guaranteed) || !has(self.max) || !has(self.guaranteed.pods) || !has(self.max.pods) || \
         quantity(string(self.guaranteed.pods)).compareTo(quantity(string(self.max.pods))) <= 0"
    ).message(Message::Expression(
        "'quota.guaranteed[pods] (' + string(self.guaranteed.pods) + ') must not exceed quota.max[pods] (' + string(self.max.pods) + ')'".into()
    )),
)]
pub struct TenantQuota {
    /// Resources the subtree is guaranteed; the scheduler honours it before any borrowing.
    /// The children's guarantees add up to at most their parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guaranteed: Option<ResourceAmounts>,
    /// Hard ceiling for the subtree across all its namespaces, enforced at admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<ResourceAmounts>,
}

/// Amounts of the resources yiyun accounts for. Quantities use Kubernetes notation
/// (`500m`, `4`, `16Gi`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct ResourceAmounts {
    /// CPU cores (`4`, `500m`).
    #[schemars(schema_with = "quantity_schema")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory (`16Gi`).
    #[schemars(schema_with = "quantity_schema")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Whole NVIDIA GPUs.
    #[schemars(schema_with = "quantity_schema")]
    #[serde(rename = "nvidia.com/gpu", default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Quantity>,
    /// Persistent storage requested by volume claims (`1Ti`).
    #[schemars(schema_with = "quantity_schema")]
    #[serde(rename = "requests.storage", default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
    /// Number of pods.
    #[schemars(schema_with = "quantity_schema")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<Quantity>,
}

/// A Kubernetes quantity, written as a number or a string (`4`, `500m`, `16Gi`). Bounded in
/// length so the apiserver can afford the CEL rules that compare quantities.
fn quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "maxLength": 32,
        "x-kubernetes-validations": [{
            "rule": "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))",
            "message": "must be a non-negative quantity such as 500m, 4 or 16Gi"
        }]
    })
}

/// A namespace the tenant owns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct TenantNamespace {
    /// Name of the namespace (a DNS label).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("a namespace name must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    pub name: String,
    /// Extra labels for the namespace, on top of the ones yiyun sets. Keys under `yiyun.io/`,
    /// its subdomains (`tree.yiyun.io/`) and `pod-security.kubernetes.io/` are yiyun's to set:
    /// they decide ownership, isolation and the Pod Security level.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.matches('^([^/]*[.])?yiyun[.]io/') && !k.startsWith('pod-security.kubernetes.io/'))")
        .message("labels under yiyun.io/, tree.yiyun.io/ (any *.yiyun.io/) and pod-security.kubernetes.io/ are set by yiyun and cannot be given in spec.namespaces[].labels"))]
    pub labels: BTreeMap<String, String>,
}

/// Network isolation modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkIsolation {
    /// Deny all traffic except DNS and traffic between the tenant's own namespaces.
    Strict,
    /// Allow traffic within the tenant's subtree.
    #[default]
    Tenant,
    /// No network policy.
    None,
}

/// What happens to a deleted tenant's namespaces.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the namespaces, labelled as orphaned.
    #[default]
    Retain,
    /// Delete the namespaces.
    Delete,
}

/// Observed state of a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the tenancy controller's) and `BudgetAlert` (billing's), one of each type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Cost of the month so far, written by the meter (`yiyun billing run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<TenantCost>,
    /// Names from the root of the tree down to this tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    /// Namespaces yiyun created for the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Resources in use, in the tenant's own namespaces and in its whole subtree: those its
    /// tree names in any `quota.guaranteed` or `quota.max`, the only ones its quotas count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TenantUsage>,
    /// What the whole subtree may use now: `quota.max`, or less where an ancestor's ceiling is
    /// shared among more than it can hold. A resource absent here is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "status_amounts_schema")]
    pub allocated: Option<ResourceAmounts>,
    /// Number of direct children.
    #[serde(default)]
    pub children: i32,
}

/// A tenant's cost of the month so far, in CNY (decimal strings, to the fen).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantCost {
    /// The billing month, `YYYY-MM` (China Standard Time).
    pub month: String,
    /// Cost of the tenant's own namespaces and unused guarantee.
    pub own: String,
    /// Cost of the whole subtree.
    pub subtree: String,
    /// The subtree's cost as a percentage of `spec.budget.monthly`, when there is a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_used_percent: Option<i64>,
    /// Usage counted up to this time.
    pub as_of: Time,
}

/// Resources in use by a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TenantUsage {
    /// Usage of the tenant's own namespaces.
    #[serde(rename = "own")]
    #[schemars(schema_with = "status_amounts_schema")]
    pub own: ResourceAmounts,
    /// Usage of the tenant's and all its descendants' namespaces.
    #[schemars(schema_with = "status_amounts_schema")]
    pub subtree: ResourceAmounts,
}

/// [`ResourceAmounts`] in the status: only the controller writes them, always in canonical
/// form, so they go without the CEL rules of the spec. Those cost the apiserver 15 quantity
/// parses on every status write, and a change at the root rewrites every tenant's status.
fn status_amounts_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    fn strip_rules(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip_rules);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_rules),
            _ => {}
        }
    }
    let mut value = <ResourceAmounts as schemars::JsonSchema>::json_schema(generator).to_value();
    strip_rules(&mut value);
    schemars::Schema::try_from(value).unwrap_or_default()
}
