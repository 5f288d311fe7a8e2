//! The tenant tree as the scheduler's queue tree: a subtree never holds more than its `max`,
//! and what each tenant holds against its `guaranteed` decides fair share and who lends.

use std::collections::HashMap;

/// What tenant quotas count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub gpu_milli: u64,
}

impl Usage {
    /// No limit on any resource.
    pub const UNLIMITED: Usage = Usage { cpu_milli: u64::MAX, memory_bytes: u64::MAX, gpu_milli: u64::MAX };

    pub(crate) fn add(&mut self, other: Usage) {
        self.cpu_milli = self.cpu_milli.saturating_add(other.cpu_milli);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.gpu_milli = self.gpu_milli.saturating_add(other.gpu_milli);
    }

    fn sub(&mut self, other: Usage) {
        self.cpu_milli = self.cpu_milli.saturating_sub(other.cpu_milli);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
        self.gpu_milli = self.gpu_milli.saturating_sub(other.gpu_milli);
    }

    /// The resources, named as Kubernetes names them, with their amounts in `self` and `limit`.
    fn pairs(self, limit: Usage) -> [(&'static str, u64, u64); 3] {
        [
            ("cpu", self.cpu_milli, limit.cpu_milli),
            ("memory", self.memory_bytes, limit.memory_bytes),
            ("nvidia.com/gpu", self.gpu_milli, limit.gpu_milli),
        ]
    }

    /// Whether any resource exceeds `limit`.
    pub fn exceeds(self, limit: Usage) -> bool {
        self.pairs(limit).iter().any(|(_, have, cap)| have > cap)
    }

    /// The largest share of `base` this usage takes over cpu, memory and GPUs (the dominant
    /// share of dominant-resource fairness); 0 when `base` is empty.
    pub fn dominant_share(self, base: Usage) -> f64 {
        self.pairs(base)
            .iter()
            .filter(|(_, _, base)| *base > 0 && *base != u64::MAX)
            .map(|(_, have, base)| *have as f64 / *base as f64)
            .fold(0.0, f64::max)
    }
}

/// A tenant of the tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub parent: Option<String>,
    pub guaranteed: Usage,
    pub max: Usage,
    /// Regions its pods may run in; empty inherits the parent's (none anywhere: all regions).
    pub allowed_regions: Vec<String>,
}

/// A tenant's subtree at its max for one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantLimit {
    pub tenant: String,
    pub resource: &'static str,
    pub used: u64,
    pub max: u64,
}

impl std::fmt::Display for TenantLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (used, max) = match self.resource {
            "cpu" | "nvidia.com/gpu" => (format_milli(self.used), format_milli(self.max)),
            _ => (format!("{}Mi", self.used >> 20), format!("{}Mi", self.max >> 20)),
        };
        write!(f, "tenant {} at max {} {used}/{max}", self.tenant, self.resource)
    }
}

fn format_milli(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{:.1}", milli as f64 / 1000.0)
    }
}

#[derive(Clone, Debug)]
struct TenantState {
    tenant: Tenant,
    /// Held by the pods of the tenant and all its descendants.
    subtree: Usage,
}

/// The tree and what every subtree holds.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    tenants: HashMap<String, TenantState>,
}

/// Deepest tree the walks follow; deeper (or cyclic) parents are ignored rather than looped on.
const MAX_DEPTH: usize = 32;

impl Tenants {
    pub fn upsert(&mut self, tenant: Tenant) {
        let subtree = self.tenants.get(&tenant.name).map(|state| state.subtree).unwrap_or_default();
        self.tenants.insert(tenant.name.clone(), TenantState { tenant, subtree });
    }

    /// Forgets a deleted tenant. Its ancestors stop counting what its subtree holds: those pods
    /// belong to no known tenant now, and refunding them later reaches nobody. A child left
    /// behind is a root of its own until its parent comes back.
    pub fn remove(&mut self, name: &str) {
        let Some(held) = self.tenants.get(name).map(|state| state.subtree) else { return };
        self.refund(name, held);
        self.tenants.remove(name);
    }

    /// Names of every known tenant.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tenants.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name).map(|state| &state.tenant)
    }

    /// What the subtree of `name` holds.
    pub fn subtree_usage(&self, name: &str) -> Usage {
        self.tenants.get(name).map(|state| state.subtree).unwrap_or_default()
    }

    /// `name` and its ancestors, nearest first.
    pub fn chain<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Tenant> + 'a {
        let mut next = self.tenants.get_key_value(name).map(|(key, _)| key.as_str());
        std::iter::from_fn(move || {
            let state = self.tenants.get(next?)?;
            next = state.tenant.parent.as_deref();
            Some(&state.tenant)
        })
        .take(MAX_DEPTH)
    }

    /// The first tenant on the way to the root whose subtree would exceed its max with
    /// `request` added.
    pub fn limit_for(&self, name: &str, request: Usage) -> Option<TenantLimit> {
        self.chain(name).find_map(|tenant| {
            let mut after = self.subtree_usage(&tenant.name);
            after.add(request);
            after.pairs(tenant.max).iter().find(|(_, have, max)| have > max).map(|(resource, _, max)| {
                TenantLimit {
                    tenant: tenant.name.clone(),
                    resource,
                    used: self.subtree_usage(&tenant.name).pairs(tenant.max)[index_of(resource)].1,
                    max: *max,
                }
            })
        })
    }

    /// The region lists of a tenant and its ancestors (the non-empty ones): its pods may use a
    /// node whose region or region class is in every list, so no child widens its parent's.
    pub fn region_rules(&self, name: &str) -> Vec<&[String]> {
        self.chain(name)
            .filter(|tenant| !tenant.allowed_regions.is_empty())
            .map(|t| t.allowed_regions.as_slice())
            .collect()
    }

    pub fn charge(&mut self, name: &str, usage: Usage) {
        for ancestor in self.chain(name).map(|tenant| tenant.name.clone()).collect::<Vec<_>>() {
            if let Some(state) = self.tenants.get_mut(&ancestor) {
                state.subtree.add(usage);
            }
        }
    }

    pub fn refund(&mut self, name: &str, usage: Usage) {
        for ancestor in self.chain(name).map(|tenant| tenant.name.clone()).collect::<Vec<_>>() {
            if let Some(state) = self.tenants.get_mut(&ancestor) {
                state.subtree.sub(usage);
            }
        }
    }

    /// Whether the tenant holds more than its guarantee on some resource: it is borrowing what
    /// others are guaranteed, and gives it back when they need it.
    pub fn is_borrowing(&self, name: &str) -> bool {
        self.tenants.get(name).is_some_and(|state| state.subtree.exceeds(state.tenant.guaranteed))
    }

    /// Whether `request` on top of what the tenant holds stays within its guarantee.
    pub fn within_guarantee(&self, name: &str, request: Usage) -> bool {
        self.tenants.get(name).is_some_and(|state| {
            let mut after = state.subtree;
            after.add(request);
            !after.exceeds(state.tenant.guaranteed)
        })
    }

    /// Dominant share of the tenant against its guarantee: what fair share orders siblings by.
    pub fn share(&self, name: &str) -> f64 {
        self.tenants
            .get(name)
            .map(|state| state.subtree.dominant_share(state.tenant.guaranteed))
            .unwrap_or(0.0)
    }
}

fn index_of(resource: &str) -> usize {
    match resource {
        "cpu" => 0,
        "memory" => 1,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, parent: Option<&str>, max_cpu: u64) -> Tenant {
        Tenant {
            name: name.into(),
            parent: parent.map(Into::into),
            guaranteed: Usage { cpu_milli: max_cpu / 2, ..Usage::default() },
            max: Usage { cpu_milli: max_cpu, ..Usage::UNLIMITED },
            allowed_regions: Vec::new(),
        }
    }

    /// A city with two departments.
    fn wuhu() -> Tenants {
        let mut tenants = Tenants::default();
        tenants.upsert(tenant("wuhu", None, 10_000));
        tenants.upsert(tenant("wuhu-dsj", Some("wuhu"), 8_000));
        tenants.upsert(tenant("wuhu-gaj", Some("wuhu"), 8_000));
        tenants
    }

    fn cpu(milli: u64) -> Usage {
        Usage { cpu_milli: milli, ..Usage::default() }
    }

    #[test]
    fn the_whole_chain_is_held_to_its_max() {
        let mut tenants = wuhu();
        tenants.charge("wuhu-dsj", cpu(6_000));
        assert_eq!(tenants.limit_for("wuhu-dsj", cpu(2_000)), None);
        let limit = tenants.limit_for("wuhu-dsj", cpu(3_000)).expect("over the department's max");
        assert_eq!(limit.to_string(), "tenant wuhu-dsj at max cpu 6/8");
        let limit = tenants.limit_for("wuhu-gaj", cpu(5_000)).expect("over the city's max");
        assert_eq!(limit.to_string(), "tenant wuhu at max cpu 6/10");
        assert!(tenants.is_borrowing("wuhu-dsj"));
        tenants.refund("wuhu-dsj", cpu(6_000));
        assert_eq!(tenants.subtree_usage("wuhu"), Usage::default());
    }

    #[test]
    fn a_removed_tenant_holds_nothing_and_bounds_nothing() {
        let mut tenants = wuhu();
        tenants.charge("wuhu-dsj", cpu(6_000));
        tenants.charge("wuhu-gaj", cpu(1_000));
        tenants.remove("wuhu-dsj");
        assert!(tenants.get("wuhu-dsj").is_none());
        assert_eq!(tenants.subtree_usage("wuhu"), cpu(1_000));
        // Its pods are bounded by no ceiling, and leaving refunds no one.
        assert_eq!(tenants.limit_for("wuhu-dsj", cpu(50_000)), None);
        tenants.refund("wuhu-dsj", cpu(6_000));
        assert_eq!(tenants.subtree_usage("wuhu"), cpu(1_000));
        assert_eq!(tenants.names().collect::<std::collections::BTreeSet<_>>(), ["wuhu", "wuhu-gaj"].into());
    }
}
