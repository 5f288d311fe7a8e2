//! Turns what the watches hold into the pure model of the tenant tree.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::{
    api::core::v1::{Namespace, ResourceQuota},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{ResourceExt, core::PartialObjectMeta};
use yiyun_crds::{
    ResourceAmounts, Tenant, TenantLevel,
    labels::{CREATED_FOR, ORPHANED_FROM, TENANT},
};
use yiyun_quota::{Amounts, Milli, ObservedNamespace, Resource, Standing, TenantNode, World};

use super::desired::{QUOTA, UNLIMITED};

/// Turns the stores into the [`World`] the planner plans from. The tree is planned again after
/// every burst of changes, so objects converted before are kept by resourceVersion and reused
/// (parsing 2,000 quotas' quantities each time was most of a plan's cost).
#[derive(Default)]
pub struct Observer {
    tenants: HashMap<String, (Option<String>, TenantNode)>,
    quotas: HashMap<String, (Option<String>, Amounts, Amounts)>,
}

impl Observer {
    pub fn world(
        &mut self,
        tenants: &[Arc<Tenant>],
        namespaces: &[Arc<PartialObjectMeta<Namespace>>],
        quotas: &[Arc<ResourceQuota>],
    ) -> World {
        let mut converted = HashMap::with_capacity(tenants.len());
        let nodes = tenants
            .iter()
            .map(|tenant| {
                let name = tenant.name_any();
                let version = tenant.metadata.resource_version.clone();
                let node = match self.tenants.remove(&name) {
                    Some((seen, node)) if seen == version && version.is_some() => node,
                    _ => tenant_node(tenant),
                };
                converted.insert(name, (version, node.clone()));
                node
            })
            .collect::<Vec<_>>();
        self.tenants = converted;

        let mut converted = HashMap::with_capacity(quotas.len());
        for quota in quotas.iter().filter(|q| q.name_any() == QUOTA) {
            let Some(namespace) = quota.metadata.namespace.clone() else { continue };
            let version = quota.metadata.resource_version.clone();
            let amounts = match self.quotas.remove(&namespace) {
                Some((seen, used, hard)) if seen == version && version.is_some() => (used, hard),
                _ => (
                    quota
                        .status
                        .as_ref()
                        .and_then(|s| s.used.as_ref())
                        .map(quota_amounts)
                        .unwrap_or_default(),
                    quota.spec.as_ref().and_then(|s| s.hard.as_ref()).map(quota_limits).unwrap_or_default(),
                ),
            };
            converted.insert(namespace, (version, amounts.0, amounts.1));
        }
        self.quotas = converted;

        // Only namespaces a tenant owns, claims or may adopt matter to the plan; a cluster has
        // many others.
        let claimed: HashSet<&str> =
            nodes.iter().flat_map(|t| t.namespaces.iter().map(String::as_str)).collect();
        let by_uid: HashMap<&str, &str> = tenants
            .iter()
            .filter_map(|t| Some((t.metadata.uid.as_deref()?, t.metadata.name.as_deref()?)))
            .collect();
        let namespaces = namespaces
            .iter()
            .filter_map(|ns| {
                let name = ns.name_any();
                let labels = ns.labels();
                let orphaned = labels.contains_key(ORPHANED_FROM);
                let owner = labels.get(TENANT).cloned().or_else(|| {
                    // Created for a tenant and not yet labelled (the controller stopped between
                    // the two writes): still that tenant's, not a stranger's namespace.
                    let created_for = ns.annotations().get(CREATED_FOR)?;
                    (!orphaned).then(|| by_uid.get(created_for.as_str()).map(|t| t.to_string()))?
                });
                if owner.is_none() && !orphaned && !claimed.contains(name.as_str()) {
                    return None;
                }
                let (used, hard) = self
                    .quotas
                    .get(&name)
                    .map(|(_, used, hard)| (used.clone(), hard.clone()))
                    .unwrap_or_default();
                Some((name, ObservedNamespace { owner, orphaned, used, hard }))
            })
            .collect();
        World { tenants: nodes, namespaces }
    }
}

fn tenant_node(tenant: &Tenant) -> TenantNode {
    let spec = &tenant.spec;
    TenantNode {
        name: tenant.name_any(),
        parent: spec.parent.clone().filter(|p| !p.is_empty()),
        level: match spec.level {
            TenantLevel::Province => yiyun_quota::Level::Province,
            TenantLevel::City => yiyun_quota::Level::City,
            TenantLevel::County => yiyun_quota::Level::County,
            TenantLevel::Department => yiyun_quota::Level::Department,
        },
        guaranteed: spec.quota.guaranteed.as_ref().map(tenant_amounts).unwrap_or_default(),
        max: spec.quota.max.as_ref().map(tenant_amounts).unwrap_or_default(),
        namespaces: spec.namespaces.iter().map(|ns| ns.name.clone()).collect(),
        standing: standing(tenant),
        seniority: tenant.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        allowed_regions: spec.allowed_regions.clone(),
    }
}

/// Ready with the current spec; or admitted once (only a valid tenant gets `allocated`).
fn standing(tenant: &Tenant) -> Standing {
    let Some(status) = &tenant.status else { return Standing::New };
    let ready_now = status.conditions.iter().any(|c| {
        c.type_ == "Ready" && c.status == "True" && c.observed_generation == tenant.metadata.generation
    });
    match (ready_now, status.allocated.is_some()) {
        (true, _) => Standing::Ready,
        (false, true) => Standing::Admitted,
        (false, false) => Standing::New,
    }
}

fn slot(amounts: &ResourceAmounts, resource: Resource) -> Option<&Quantity> {
    match resource {
        Resource::Cpu => amounts.cpu.as_ref(),
        Resource::Memory => amounts.memory.as_ref(),
        Resource::Gpu => amounts.gpu.as_ref(),
        Resource::Storage => amounts.storage.as_ref(),
        Resource::Pods => amounts.pods.as_ref(),
    }
}

/// A Tenant's amounts. The apiserver has validated them; one that still fails to parse counts
/// as unset rather than failing the whole tree.
fn tenant_amounts(amounts: &ResourceAmounts) -> Amounts {
    Resource::ALL.into_iter().filter_map(|r| Some((r, Milli::parse(&slot(amounts, r)?.0).ok()?))).collect()
}

/// Amounts in the status form of a Tenant.
pub fn resource_amounts(amounts: &Amounts) -> ResourceAmounts {
    let format = |r: Resource| amounts.get(r).map(|m| Quantity(m.format(r.is_bytes())));
    ResourceAmounts {
        cpu: format(Resource::Cpu),
        memory: format(Resource::Memory),
        gpu: format(Resource::Gpu),
        storage: format(Resource::Storage),
        pods: format(Resource::Pods),
    }
}

/// A quota's limits: a resource it does not list, it does not limit.
fn quota_limits(hard: &BTreeMap<String, Quantity>) -> Amounts {
    let mut limits = quota_amounts(hard);
    let unlimited = Milli::parse(UNLIMITED).expect("a valid quantity");
    for resource in Resource::ALL {
        if limits.get(resource).is_none() {
            limits.set(resource, unlimited);
        }
    }
    limits
}

fn quota_amounts(list: &BTreeMap<String, Quantity>) -> Amounts {
    list.iter()
        .filter_map(|(key, q)| Some((Resource::from_quota_key(key)?, Milli::parse(&q.0).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::core::PartialObjectMetaExt;

    fn tenant(name: &str, uid: &str, namespace: &str) -> Arc<Tenant> {
        let tenant: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name, "uid": uid},
            "spec": {"displayName": "教育局", "level": "province", "namespaces": [{"name": namespace}]}
        }))
        .unwrap();
        Arc::new(tenant)
    }

    fn namespace(
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Arc<PartialObjectMeta<Namespace>> {
        let map =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let meta = ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(labels)),
            annotations: Some(map(annotations)),
            ..ObjectMeta::default()
        };
        Arc::new(meta.into_response_partial())
    }

    #[test]
    fn a_namespace_created_for_a_tenant_but_not_yet_labelled_is_that_tenants() {
        let tenants = [tenant("edu", "uid-edu", "edu-a")];
        let namespaces = [
            namespace("edu-a", &[], &[(CREATED_FOR, "uid-edu")]),
            // Created for a Tenant since deleted: nobody's.
            namespace("old", &[], &[(CREATED_FOR, "uid-gone")]),
            // Released: free to adopt, whoever it was created for.
            namespace("released", &[(ORPHANED_FROM, "edu")], &[(CREATED_FOR, "uid-edu")]),
        ];
        let world = Observer::default().world(&tenants, &namespaces, &[]);
        assert_eq!(world.namespaces["edu-a"].owner.as_deref(), Some("edu"));
        assert!(!world.namespaces.contains_key("old"));
        assert_eq!(world.namespaces["released"].owner, None);
        assert!(world.namespaces["released"].orphaned);
    }
}
