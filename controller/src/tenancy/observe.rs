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
    Tenant,
    labels::{CREATED_FOR, ORPHANED_FROM, TENANT},
};
use yiyun_kube::tenants::tenant_node;
use yiyun_quota::{Amounts, Milli, ObservedNamespace, Resource, TenantNode, World};

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
