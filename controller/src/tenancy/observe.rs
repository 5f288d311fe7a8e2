//! Turns what the watches hold into the pure model of the tenant tree.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Namespace, ResourceQuota},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{ResourceExt, core::PartialObjectMeta};
use yiyun_crds::{
    ResourceAmounts, Tenant, TenantLevel,
    labels::{ORPHANED_FROM, TENANT},
};
use yiyun_quota::{Amounts, Milli, ObservedNamespace, Resource, Standing, TenantNode, World};

use super::desired::QUOTA;

pub fn world(
    tenants: &[std::sync::Arc<Tenant>],
    namespaces: &[std::sync::Arc<PartialObjectMeta<Namespace>>],
    quotas: &[std::sync::Arc<ResourceQuota>],
) -> World {
    let quotas: BTreeMap<&str, &ResourceQuota> = quotas
        .iter()
        .filter(|q| q.name_any() == QUOTA)
        .filter_map(|q| Some((q.metadata.namespace.as_deref()?, q.as_ref())))
        .collect();
    World {
        tenants: tenants.iter().map(|t| tenant_node(t)).collect(),
        namespaces: namespaces
            .iter()
            .map(|ns| {
                let name = ns.name_any();
                let labels = ns.labels();
                let quota = quotas.get(name.as_str());
                let observed = ObservedNamespace {
                    owner: labels.get(TENANT).cloned(),
                    orphaned: labels.contains_key(ORPHANED_FROM),
                    used: quota
                        .and_then(|q| q.status.as_ref()?.used.as_ref())
                        .map(quota_amounts)
                        .unwrap_or_default(),
                    hard: quota
                        .and_then(|q| q.spec.as_ref()?.hard.as_ref())
                        .map(quota_amounts)
                        .unwrap_or_default(),
                };
                (name, observed)
            })
            .collect(),
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

fn quota_amounts(list: &BTreeMap<String, Quantity>) -> Amounts {
    list.iter()
        .filter_map(|(key, q)| Some((Resource::from_quota_key(key)?, Milli::parse(&q.0).ok()?)))
        .collect()
}
