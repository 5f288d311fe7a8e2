//! The resources yiyun accounts for, and amounts of them.

use std::collections::BTreeMap;

use crate::Milli;

/// A resource of the tenant quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Cpu,
    Memory,
    Gpu,
    Storage,
    Pods,
}

impl Resource {
    pub const ALL: [Resource; 5] =
        [Resource::Cpu, Resource::Memory, Resource::Gpu, Resource::Storage, Resource::Pods];

    /// The name in a Tenant's quota (`cpu`, `nvidia.com/gpu`, …).
    pub fn tenant_key(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Gpu => "nvidia.com/gpu",
            Resource::Storage => "requests.storage",
            Resource::Pods => "pods",
        }
    }

    /// The name in a namespace's ResourceQuota: requests, which is what the scheduler reserves.
    pub fn quota_key(self) -> &'static str {
        match self {
            Resource::Cpu => "requests.cpu",
            Resource::Memory => "requests.memory",
            Resource::Gpu => "requests.nvidia.com/gpu",
            Resource::Storage => "requests.storage",
            Resource::Pods => "pods",
        }
    }

    pub fn from_quota_key(key: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.quota_key() == key)
    }

    /// Whether amounts are bytes (formatted with binary suffixes).
    pub fn is_bytes(self) -> bool {
        matches!(self, Resource::Memory | Resource::Storage)
    }

    /// The smallest amount handed out: a milli-CPU, a byte, a whole GPU, a whole pod.
    pub fn granularity(self) -> Milli {
        match self {
            Resource::Cpu => Milli(1),
            Resource::Memory | Resource::Storage => Milli(1000),
            Resource::Gpu | Resource::Pods => Milli(1000),
        }
    }
}

/// Amounts per resource; a resource that is absent is not set (for a ceiling: unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Amounts(pub BTreeMap<Resource, Milli>);

impl Amounts {
    pub fn get(&self, resource: Resource) -> Option<Milli> {
        self.0.get(&resource).copied()
    }

    /// The amount, counting an absent resource as zero.
    pub fn amount(&self, resource: Resource) -> Milli {
        self.get(resource).unwrap_or_default()
    }

    pub fn set(&mut self, resource: Resource, amount: Milli) {
        self.0.insert(resource, amount);
    }

    /// Adds `other` resource by resource.
    pub fn add(&mut self, other: &Amounts) {
        for (&resource, &amount) in &other.0 {
            *self.0.entry(resource).or_default() += amount;
        }
    }
}

impl FromIterator<(Resource, Milli)> for Amounts {
    fn from_iter<I: IntoIterator<Item = (Resource, Milli)>>(iter: I) -> Self {
        Amounts(iter.into_iter().collect())
    }
}
