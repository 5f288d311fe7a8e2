//! Why a pod was not placed, short and exact, e.g. `0/5000 nodes: 3200 insufficient
//! nvidia.com/gpu, 1800 untolerated taint yiyun.io/dedicated`.

use std::{collections::BTreeMap, fmt};

use crate::{filter::Reason, tenants::TenantLimit};

#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// Nodes the engine knows.
    pub nodes: usize,
    /// How many nodes failed for each reason (each node counted once, for its first reason).
    pub reasons: Vec<(Reason, usize)>,
    /// What else stood in the way, e.g. `gang needs 16 in one rack, best rack has 12`.
    pub detail: Option<String>,
    pub tenant: Option<TenantLimit>,
}

impl Explanation {
    pub fn nodes(nodes: usize, reasons: BTreeMap<Reason, usize>) -> Self {
        let mut reasons: Vec<(Reason, usize)> = reasons.into_iter().collect();
        // Most common first; equal counts in the reasons' own order.
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Explanation { nodes, reasons, detail: None, tenant: None }
    }

    pub fn tenant_limit(nodes: usize, limit: TenantLimit) -> Self {
        Explanation { nodes, reasons: Vec::new(), detail: None, tenant: Some(limit) }
    }

    pub fn with_detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }

    /// What kept the pod out, as a metric label: the tenant's quota, else the reason most
    /// nodes failed for, else `other` (a gang's or a preemption's detail alone).
    pub fn label(&self) -> &'static str {
        if self.tenant.is_some() {
            return "tenant_quota";
        }
        self.reasons.first().map_or("other", |(reason, _)| reason.label())
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.reasons.is_empty() || (self.detail.is_none() && self.tenant.is_none()) {
            // With a gang, only nodes that cannot take even one of its pods are counted.
            let mut nodes = format!("0/{} nodes", self.nodes);
            if !self.reasons.is_empty() {
                let counted: Vec<String> =
                    self.reasons.iter().map(|(reason, count)| format!("{count} {reason}")).collect();
                nodes = format!("{nodes}: {}", counted.join(", "));
            }
            parts.push(nodes);
        }
        parts.extend(self.detail.clone());
        parts.extend(self.tenant.as_ref().map(ToString::to_string));
        write!(f, "{}", parts.join("; "))
    }
}
