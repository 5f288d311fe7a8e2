//! Tenants as the engine's queue tree: guarantees and ceilings from the Tenant objects.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use yiyun_crds::{ResourceAmounts, Tenant as KubeTenant};
use yiyun_engine::tenants::{Tenant, Usage};
use yiyun_quota::Milli;

/// Milli-units of a quantity, `unset` when absent (or, impossibly, invalid).
fn milli(quantity: Option<&Quantity>) -> Option<u64> {
    quantity.and_then(|q| Milli::parse(&q.0).ok()).and_then(|m| u64::try_from(m.0).ok())
}

fn usage(amounts: Option<&ResourceAmounts>, unset: u64) -> Usage {
    let Some(amounts) = amounts else {
        return Usage { cpu_milli: unset, memory_bytes: unset, gpu_milli: unset };
    };
    Usage {
        cpu_milli: milli(amounts.cpu.as_ref()).unwrap_or(unset),
        memory_bytes: milli(amounts.memory.as_ref()).map_or(unset, |m| m.div_ceil(1000)),
        gpu_milli: milli(amounts.gpu.as_ref()).unwrap_or(unset),
    }
}

/// The engine's view of a Tenant: what its subtree is guaranteed and may hold at most (unset
/// means nothing guaranteed, no ceiling), and where its pods may run.
pub fn tenant(tenant: &KubeTenant) -> Tenant {
    let quota = &tenant.spec.quota;
    Tenant {
        name: tenant.metadata.name.clone().unwrap_or_default(),
        parent: tenant.spec.parent.clone(),
        guaranteed: usage(quota.guaranteed.as_ref(), 0),
        max: usage(quota.max.as_ref(), u64::MAX),
        allowed_regions: tenant.spec.allowed_regions.clone(),
    }
}
