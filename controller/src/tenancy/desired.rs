//! What a tenant's namespaces should contain, built from the Tenant and its plan. Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec},
        networking::v1::{
            NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
            NetworkPolicyPort, NetworkPolicySpec,
        },
        rbac::v1::{RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use yiyun_crds::{DeletionPolicy, NetworkIsolation, SubjectKind, Tenant};
use yiyun_quota::{Amounts, Milli, Resource, TenantPlan};

use yiyun_crds::labels::{
    ALLOWED_REGIONS, CREATED_FOR, MANAGED_BY, MANAGED_BY_VALUE, NETWORK_ISOLATION, ORPHANED_FROM,
    REGION_RESTRICTED, SECURITY_LEVEL, TENANT, is_reserved, managed_labels, tree_label,
};

/// Names of the objects yiyun keeps in every tenant namespace.
pub const QUOTA: &str = "yiyun-quota";
pub const LIMIT_RANGE: &str = "yiyun-defaults";
pub const OWNERS: &str = "yiyun-owners";
pub const MEMBERS: &str = "yiyun-members";
/// The parent tenant's owners decide this tenant's quota requests through this binding.
pub const APPROVERS: &str = "yiyun-approvers";
/// The chart's role for deciding quota requests (`charts/yiyun/templates/api-roles.yaml`).
pub const APPROVER_ROLE: &str = "yiyun-resourcerequest-approver";
pub const ISOLATION: &str = "yiyun-isolation";

/// The ResourceQuota limit of a resource the tree counts but no ceiling up the tree bounds: high
/// enough never to bind, present so the apiserver counts the namespace's usage of it.
pub const UNLIMITED: &str = "1E";

/// Everything yiyun keeps in one tenant namespace. `None` means the object must not exist.
#[derive(Clone, Debug)]
pub struct NamespaceObjects {
    pub namespace: Namespace,
    pub quota: ResourceQuota,
    pub limit_range: LimitRange,
    pub owners: Option<RoleBinding>,
    pub members: Option<RoleBinding>,
    pub approvers: Option<RoleBinding>,
    pub isolation: Option<NetworkPolicy>,
}

/// The desired objects of `namespace`, which `tenant` owns; `parent_owners` are the owners of
/// its parent tenant, who decide its quota requests.
pub fn namespace_objects(
    tenant: &Tenant,
    plan: &TenantPlan,
    namespace: &str,
    parent_owners: &[yiyun_crds::Subject],
) -> NamespaceObjects {
    let name = tenant_name(tenant);
    let spec = &tenant.spec;
    let extra = spec.namespaces.iter().find(|ns| ns.name == namespace).map(|ns| ns.labels.clone());
    let mut labels: BTreeMap<String, String> = extra.unwrap_or_default();
    labels.retain(|key, _| !is_reserved(key));
    labels.extend(managed_labels(name));
    for ancestor in &plan.path {
        labels.insert(tree_label(ancestor), "true".into());
    }
    labels.insert(SECURITY_LEVEL.into(), spec.security_level.to_string());
    // MLPS level 3 and above run under the restricted Pod Security Standard.
    let pod_security = if spec.security_level >= 3 { "restricted" } else { "baseline" };
    labels.insert("pod-security.kubernetes.io/enforce".into(), pod_security.into());
    labels.insert("pod-security.kubernetes.io/warn".into(), "restricted".into());
    let isolation_mode = match spec.network_isolation {
        NetworkIsolation::Strict => Some("strict"),
        NetworkIsolation::Tenant => Some("tenant"),
        NetworkIsolation::None => None,
    };
    if let Some(mode) = isolation_mode {
        labels.insert(NETWORK_ISOLATION.into(), mode.into());
    }
    let mut annotations = BTreeMap::new();
    if !plan.region_rules.is_empty() {
        labels.insert(REGION_RESTRICTED.into(), "true".into());
        let rules: Vec<String> = plan.region_rules.iter().map(|list| list.join(",")).collect();
        annotations.insert(ALLOWED_REGIONS.into(), rules.join(";"));
    }

    let hard = plan.namespace_hard.get(namespace).cloned().unwrap_or_default();
    NamespaceObjects {
        namespace: Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.into()),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        },
        quota: ResourceQuota {
            metadata: meta(QUOTA, namespace, name),
            spec: Some(ResourceQuotaSpec {
                hard: Some(quota_hard(&hard, &plan.counted)),
                ..ResourceQuotaSpec::default()
            }),
            ..ResourceQuota::default()
        },
        limit_range: limit_range(namespace, name),
        owners: role_binding(OWNERS, "admin", &spec.owners, namespace, name),
        members: role_binding(MEMBERS, "edit", &spec.members, namespace, name),
        approvers: role_binding(APPROVERS, APPROVER_ROLE, parent_owners, namespace, name),
        isolation: isolation(spec.network_isolation, namespace, name),
    }
}

/// Whether the namespace carries a label or annotation yiyun wrote that `desired` no longer has
/// (a tree label of a former parent, an isolation mode or region rules since lifted). The apply
/// removes them, but only when it runs: `holds` alone ignores extra keys.
pub fn carries_dropped_keys(current: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let yiyun_label = |key: &str| {
        key.starts_with("tree.yiyun.io/")
            || [NETWORK_ISOLATION, REGION_RESTRICTED, ORPHANED_FROM].contains(&key)
    };
    let dropped = |current: &Option<BTreeMap<String, String>>,
                   desired: &Option<BTreeMap<String, String>>,
                   ours: &dyn Fn(&str) -> bool| {
        current
            .iter()
            .flatten()
            .any(|(key, _)| ours(key) && !desired.as_ref().is_some_and(|desired| desired.contains_key(key)))
    };
    dropped(&current.labels, &desired.labels, &yiyun_label)
        || dropped(&current.annotations, &desired.annotations, &|key| key == ALLOWED_REGIONS)
}

/// A namespace yiyun is about to create for `tenant`: only its name and the [`CREATED_FOR`]
/// annotation (the labels follow by apply, so the apply owns them and can remove them later).
pub fn new_namespace(namespace: &str, tenant: &Tenant) -> Namespace {
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(CREATED_FOR.into(), uid)])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// Whether `tenant` has this namespace to release: yiyun keeps it (it carries yiyun's managed-by
/// label) and it is not released by `tenant` already. A namespace an admin only labelled
/// `yiyun.io/tenant` is waiting to be adopted: yiyun neither keeps nor releases it.
pub fn to_release(namespace: &ObjectMeta, tenant: &str) -> bool {
    let labels = namespace.labels.clone().unwrap_or_default();
    let kept = labels.get(MANAGED_BY).is_some_and(|v| v == MANAGED_BY_VALUE);
    kept && labels.get(ORPHANED_FROM).is_none_or(|from| from != tenant)
}

/// What releasing a namespace does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Delete it, on condition that it still is the namespace of this UID.
    Delete { uid: String },
    /// Keep it with the department's data, remove yiyun's objects and mark it orphaned.
    Orphan,
}

/// How `tenant` releases `namespace`: deleted only under its `deletionPolicy: Delete` and only
/// when yiyun created it for this very Tenant (its UID in [`CREATED_FOR`]); any other
/// namespace, adopted or mislabelled, is orphaned with everything in it.
pub fn release(namespace: &ObjectMeta, tenant: &Tenant) -> Release {
    let created_for = namespace.annotations.as_ref().and_then(|a| a.get(CREATED_FOR));
    let created_for_tenant = created_for.is_some_and(|uid| tenant.metadata.uid.as_ref() == Some(uid));
    match (tenant.spec.deletion_policy, created_for_tenant, namespace.uid.clone()) {
        (DeletionPolicy::Delete, true, Some(uid)) => Release::Delete { uid },
        _ => Release::Orphan,
    }
}

/// The namespace of a released tenant namespace under the Retain policy: yiyun's labels are
/// replaced by one that says where it came from, so another tenant may adopt it.
pub fn orphaned_namespace(namespace: &str, tenant: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.into()),
            labels: Some(BTreeMap::from([(ORPHANED_FROM.into(), tenant.into())])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn tenant_name(tenant: &Tenant) -> &str {
    tenant.metadata.name.as_deref().unwrap_or_default()
}

fn meta(name: &str, namespace: &str, tenant: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(managed_labels(tenant)),
        ..ObjectMeta::default()
    }
}

/// Whether a namespace's ResourceQuota limits are what the plan wants for it (by value: the
/// apiserver rewrites quantities in canonical form).
pub fn quota_as_planned(plan: &TenantPlan, namespace: &str, current: &BTreeMap<String, Quantity>) -> bool {
    let wanted = quota_hard(&plan.namespace_hard.get(namespace).cloned().unwrap_or_default(), &plan.counted);
    same_limits(current, &wanted)
}

/// Whether two quotas' limits name the same resources with the same values.
pub fn same_limits(current: &BTreeMap<String, Quantity>, wanted: &BTreeMap<String, Quantity>) -> bool {
    wanted.len() == current.len()
        && wanted.iter().all(|(key, q)| {
            current.get(key).is_some_and(|c| {
                c.0 == q.0 || matches!((Milli::parse(&c.0), Milli::parse(&q.0)), (Ok(a), Ok(b)) if a == b)
            })
        })
}

/// The JSON merge patch that turns `current` limits into `wanted`: every wanted limit, and null
/// for each limit the tree no longer counts.
pub fn limits_patch(
    current: &BTreeMap<String, Quantity>,
    wanted: &BTreeMap<String, Quantity>,
) -> serde_json::Value {
    let mut hard: serde_json::Map<String, serde_json::Value> =
        wanted.iter().map(|(key, q)| (key.clone(), serde_json::Value::String(q.0.clone()))).collect();
    for key in current.keys().filter(|key| !wanted.contains_key(*key)) {
        hard.insert(key.clone(), serde_json::Value::Null);
    }
    serde_json::json!({ "spec": { "hard": hard } })
}

fn quota_hard(hard: &Amounts, counted: &[Resource]) -> BTreeMap<String, Quantity> {
    counted
        .iter()
        .map(|&r| {
            let limit = hard.get(r).map_or_else(|| UNLIMITED.to_string(), |m| m.format(r.is_bytes()));
            (r.quota_key().to_string(), Quantity(limit))
        })
        .collect()
}

/// Default requests for containers that set none: quota on requests would refuse them otherwise.
/// No default limits: a default limit below a container's request makes the pod invalid.
fn limit_range(namespace: &str, tenant: &str) -> LimitRange {
    LimitRange {
        metadata: meta(LIMIT_RANGE, namespace, tenant),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default_request: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("100m".into())),
                    ("memory".into(), Quantity("128Mi".into())),
                ])),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

fn role_binding(
    name: &str,
    cluster_role: &str,
    subjects: &[yiyun_crds::Subject],
    namespace: &str,
    tenant: &str,
) -> Option<RoleBinding> {
    if subjects.is_empty() {
        return None;
    }
    Some(RoleBinding {
        metadata: meta(name, namespace, tenant),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: cluster_role.into(),
        },
        subjects: Some(
            subjects
                .iter()
                .map(|s| Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: match s.kind {
                        SubjectKind::User => "User".into(),
                        SubjectKind::Group => "Group".into(),
                    },
                    name: s.name.clone(),
                    namespace: None,
                })
                .collect(),
        ),
    })
}

/// `strict`: ingress and egress only within the tenant's own namespaces, plus DNS.
/// `tenant`: ingress from the tenant's whole subtree; egress open (shared services).
fn isolation(mode: NetworkIsolation, namespace: &str, tenant: &str) -> Option<NetworkPolicy> {
    let from_labels = |key: String, value: &str| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(key, value.to_string())])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let spec = match mode {
        NetworkIsolation::None => return None,
        NetworkIsolation::Tenant => NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![from_labels(tree_label(tenant), "true")]),
                ..NetworkPolicyIngressRule::default()
            }]),
            ..NetworkPolicySpec::default()
        },
        NetworkIsolation::Strict => {
            let own = from_labels(TENANT.into(), tenant);
            let dns_port = |protocol: &str| NetworkPolicyPort {
                port: Some(IntOrString::Int(53)),
                protocol: Some(protocol.into()),
                ..NetworkPolicyPort::default()
            };
            NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![own.clone()]),
                    ..NetworkPolicyIngressRule::default()
                }]),
                egress: Some(vec![
                    NetworkPolicyEgressRule { to: Some(vec![own]), ..NetworkPolicyEgressRule::default() },
                    NetworkPolicyEgressRule {
                        to: Some(vec![from_labels("kubernetes.io/metadata.name".into(), "kube-system")]),
                        ports: Some(vec![dns_port("UDP"), dns_port("TCP")]),
                    },
                ]),
            }
        }
    };
    Some(NetworkPolicy { metadata: meta(ISOLATION, namespace, tenant), spec: Some(spec) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use yiyun_quota::Milli;

    fn tenant(yaml: &str) -> Tenant {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn edu() -> Tenant {
        tenant(
            "apiVersion: yiyun.io/v1alpha1\nkind: Tenant\nmetadata: {name: jj-edu}\nspec:\n  displayName: 鸠江区教育局\n  parent: jiujiang\n  level: department\n  securityLevel: 3\n  networkIsolation: strict\n  owners: [{kind: User, name: li.na}]\n  namespaces: [{name: edu, labels: {workload: web, pod-security.kubernetes.io/audit: privileged}}]\n",
        )
    }

    fn plan() -> TenantPlan {
        let hard: Amounts =
            [(Resource::Cpu, Milli::units(80)), (Resource::Memory, Milli::parse("320Gi").unwrap())]
                .into_iter()
                .collect();
        TenantPlan {
            path: vec!["anhui".into(), "wuhu".into(), "jiujiang".into(), "jj-edu".into()],
            namespace_hard: BTreeMap::from([("edu".into(), hard)]),
            counted: vec![Resource::Cpu, Resource::Memory, Resource::Pods],
            ..TenantPlan::default()
        }
    }

    fn limits(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
    }

    fn namespace_meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ObjectMeta {
            name: Some("edu".into()),
            uid: Some("ns-uid".into()),
            labels: Some(map(labels)),
            annotations: Some(map(annotations)),
            ..ObjectMeta::default()
        }
    }

    fn edu_with(uid: Option<&str>, policy: DeletionPolicy) -> Tenant {
        let mut tenant = edu();
        tenant.metadata.uid = uid.map(String::from);
        tenant.spec.deletion_policy = policy;
        tenant
    }

    #[test]
    fn only_a_namespace_created_for_this_very_tenant_is_deleted() {
        let created = namespace_meta(&[("yiyun.io/tenant", "jj-edu")], &[(CREATED_FOR, "t-uid")]);
        let deleting = edu_with(Some("t-uid"), DeletionPolicy::Delete);
        assert_eq!(release(&created, &deleting), Release::Delete { uid: "ns-uid".into() });
        assert_eq!(release(&created, &edu_with(Some("t-uid"), DeletionPolicy::Retain)), Release::Orphan);
        // A Tenant of the same name created again is another tenant.
        assert_eq!(release(&created, &edu_with(Some("other-uid"), DeletionPolicy::Delete)), Release::Orphan);
        // Adopted or mislabelled: no annotation, or none of this tenant's.
        let adopted = namespace_meta(&[("yiyun.io/tenant", "jj-edu")], &[]);
        assert_eq!(release(&adopted, &deleting), Release::Orphan);
        // A tenant without a UID (never from the apiserver) deletes nothing.
        assert_eq!(release(&created, &edu_with(None, DeletionPolicy::Delete)), Release::Orphan);
    }

    #[test]
    fn only_a_namespace_yiyun_keeps_and_has_not_released_yet_is_released() {
        let labelled = [("yiyun.io/tenant", "jj-edu")];
        assert!(!to_release(&namespace_meta(&labelled, &[]), "jj-edu"), "waiting for adoption");
        let kept = [("yiyun.io/tenant", "jj-edu"), ("app.kubernetes.io/managed-by", "yiyun")];
        assert!(to_release(&namespace_meta(&kept, &[]), "jj-edu"));
        let released = [kept[0], kept[1], (ORPHANED_FROM, "jj-edu")];
        assert!(!to_release(&namespace_meta(&released, &[]), "jj-edu"), "released already");
    }

    #[test]
    fn a_new_namespace_records_the_tenant_it_was_created_for_and_nothing_else() {
        let ns = new_namespace("edu", &edu_with(Some("t-uid"), DeletionPolicy::Retain));
        assert_eq!(ns.metadata.annotations.unwrap()[CREATED_FOR], "t-uid");
        assert!(ns.metadata.labels.is_none(), "labels are the apply's to own");
    }

    #[test]
    fn limits_compare_by_value_and_by_the_resources_they_name() {
        let wanted = limits(&[("requests.cpu", "2000"), ("pods", "1E")]);
        assert!(same_limits(&limits(&[("requests.cpu", "2k"), ("pods", "1E")]), &wanted));
        assert!(!same_limits(&limits(&[("requests.cpu", "2001"), ("pods", "1E")]), &wanted));
        assert!(!same_limits(&limits(&[("requests.cpu", "2000")]), &wanted));
        assert!(!same_limits(
            &limits(&[("requests.cpu", "2000"), ("pods", "1E"), ("requests.storage", "1E")]),
            &wanted
        ));
    }

    #[test]
    fn the_limits_patch_sets_every_wanted_limit_and_removes_uncounted_ones() {
        let current = limits(&[("requests.cpu", "2"), ("requests.storage", "1E")]);
        let wanted = limits(&[("requests.cpu", "3"), ("pods", "1E")]);
        assert_eq!(
            limits_patch(&current, &wanted),
            serde_json::json!({"spec": {"hard": {"requests.cpu": "3", "pods": "1E", "requests.storage": null}}})
        );
    }

    #[test]
    fn the_namespace_carries_tenant_ancestor_and_security_labels() {
        let objects = namespace_objects(&edu(), &plan(), "edu", &[]);
        let labels = objects.namespace.metadata.labels.unwrap();
        assert_eq!(labels["yiyun.io/tenant"], "jj-edu");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "yiyun");
        for ancestor in ["anhui", "wuhu", "jiujiang", "jj-edu"] {
            assert_eq!(labels[&format!("tree.yiyun.io/{ancestor}")], "true");
        }
        assert_eq!(labels["yiyun.io/security-level"], "3");
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert_eq!(labels["workload"], "web");
        assert!(!labels.contains_key("pod-security.kubernetes.io/audit"), "reserved keys are yiyun's");
        assert_eq!(labels[NETWORK_ISOLATION], "strict");
        assert!(!labels.contains_key(REGION_RESTRICTED), "no tenant up the tree limits regions");
    }

    #[test]
    fn region_rules_go_on_the_namespace_for_the_admission_policy() {
        let mut plan = plan();
        plan.region_rules = vec![vec!["east".into()], vec!["anhui".into(), "hubei".into()]];
        let namespace = namespace_objects(&edu(), &plan, "edu", &[]).namespace.metadata;
        assert_eq!(namespace.labels.unwrap()[REGION_RESTRICTED], "true");
        assert_eq!(namespace.annotations.unwrap()[ALLOWED_REGIONS], "east;anhui,hubei");
    }

    #[test]
    fn a_namespace_keeping_keys_yiyun_dropped_is_applied_again() {
        let mut plan = plan();
        plan.region_rules = vec![vec!["east".into()]];
        let restricted = namespace_objects(&edu(), &plan, "edu", &[]).namespace.metadata;
        let lifted = namespace_objects(&edu(), &plan_with_path(&["jj-edu"]), "edu", &[]).namespace.metadata;
        assert!(!carries_dropped_keys(&restricted, &restricted));
        assert!(carries_dropped_keys(&restricted, &lifted), "region rules and former ancestors' tree labels");
        let mut foreign = lifted.clone();
        foreign.labels.as_mut().unwrap().insert("yiyun.io/set-by-an-admin".into(), "x".into());
        assert!(!carries_dropped_keys(&foreign, &lifted), "keys yiyun never writes are not its to drop");
    }

    fn plan_with_path(path: &[&str]) -> TenantPlan {
        TenantPlan { path: path.iter().map(|p| p.to_string()).collect(), ..plan() }
    }

    #[test]
    fn the_quota_counts_what_the_tree_names_and_limits_what_it_bounds() {
        let hard = namespace_objects(&edu(), &plan(), "edu", &[]).quota.spec.unwrap().hard.unwrap();
        assert_eq!(hard["requests.cpu"].0, "80");
        assert_eq!(hard["requests.memory"].0, "320Gi");
        assert_eq!(hard["pods"].0, UNLIMITED);
        assert_eq!(hard.len(), 3, "GPUs and storage are named nowhere in the tree: {hard:?}");
    }

    #[test]
    fn owners_are_admins_and_no_members_means_no_binding() {
        let objects = namespace_objects(&edu(), &plan(), "edu", &[]);
        let owners = objects.owners.unwrap();
        assert_eq!(owners.role_ref.name, "admin");
        assert_eq!(owners.subjects.unwrap()[0].name, "li.na");
        assert!(objects.members.is_none());
        assert!(objects.approvers.is_none(), "a root tenant's requests are the cloud admins' to decide");
    }

    #[test]
    fn the_parent_owners_decide_quota_requests() {
        let parent_owners =
            [yiyun_crds::Subject { kind: SubjectKind::Group, name: "jiujiang-admins".into() }];
        let approvers = namespace_objects(&edu(), &plan(), "edu", &parent_owners).approvers.unwrap();
        assert_eq!(approvers.role_ref.name, APPROVER_ROLE);
        let subjects = approvers.subjects.unwrap();
        assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("Group", "jiujiang-admins"));
    }

    #[test]
    fn strict_isolation_allows_only_the_tenant_and_dns() {
        let policy = namespace_objects(&edu(), &plan(), "edu", &[]).isolation.unwrap().spec.unwrap();
        assert_eq!(policy.policy_types.unwrap(), ["Ingress", "Egress"]);
        let from = &policy.ingress.unwrap()[0].from.clone().unwrap()[0];
        assert_eq!(
            from.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["yiyun.io/tenant"],
            "jj-edu"
        );
        let egress = policy.egress.unwrap();
        assert_eq!(egress[1].ports.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn tenant_isolation_admits_the_subtree_and_none_removes_the_policy() {
        let mut t = edu();
        t.spec.network_isolation = NetworkIsolation::Tenant;
        let policy = namespace_objects(&t, &plan(), "edu", &[]).isolation.unwrap().spec.unwrap();
        let from = &policy.ingress.unwrap()[0].from.clone().unwrap()[0];
        assert_eq!(
            from.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["tree.yiyun.io/jj-edu"],
            "true"
        );
        t.spec.network_isolation = NetworkIsolation::None;
        assert!(namespace_objects(&t, &plan(), "edu", &[]).isolation.is_none());
    }
}
