//! A Tenant as the pure model of the tenant tree sees it (`yiyun_quota`), and amounts back in
//! the Tenant's form: the tenancy controller plans the tree from these, and the self-service API
//! checks a quota change against the same rules before applying it.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use yiyun_crds::{ResourceAmounts, Tenant, TenantLevel};
use yiyun_quota::{Amounts, Milli, Resource, Standing, TenantNode};

/// The node of `tenant` in the tree model.
pub fn tenant_node(tenant: &Tenant) -> TenantNode {
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
pub fn tenant_amounts(amounts: &ResourceAmounts) -> Amounts {
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
