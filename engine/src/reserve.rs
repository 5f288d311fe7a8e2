//! Reservation and backfill. A large gang that cannot start now gets the nodes of the domain
//! that frees up soonest, judged by the expected end of the pods on them; until the gang
//! starts, those nodes only take pods expected to finish before it (backfill), so small pods
//! neither starve the gang nor leave its nodes idle for nothing.

use std::collections::BTreeMap;

use crate::{
    Engine, NodeId,
    engine::{Hold, NodeView},
    gang::{Gang, Level, copies, domain_of},
    model::Pod,
};

/// Nodes held for a gang and when it is expected to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub gang: String,
    pub starts_at: u64,
    pub nodes: Vec<NodeId>,
}

impl Engine {
    /// Reserves for a gang that [`schedule_gang`](Self::schedule_gang) could not place the
    /// domain where enough room frees up first. None when no domain ever has room from pods
    /// with known runtimes (the gang keeps waiting without holding anything).
    pub fn reserve(&mut self, gang: &Gang, pods: &[Pod]) -> Option<Reservation> {
        self.release_reservation(&gang.name);
        let members = &pods[..gang.min_member.min(pods.len())];
        let first = members.first()?;
        let needed = members.len() as u64;
        let level = gang.topology.map(|(level, _)| level);
        let verdicts = self.verdicts(first);
        // Per domain, per node: what frees up when, as (time, node) events.
        let mut domains: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
        for view in self.node_views() {
            let held = self.reserved.get(&view.id).is_some_and(|hold| hold.gang != gang.name);
            if !held && verdicts[view.class as usize].is_ok() {
                domains.entry(domain_key(&view, level)).or_default().push(view.id);
            }
        }
        let mut best: Option<(u64, Vec<NodeId>)> = None;
        for nodes in domains.into_values() {
            if let Some(starts_at) = self.earliest_room(&nodes, first, needed)
                && best.as_ref().is_none_or(|(at, _)| starts_at < *at)
            {
                best = Some((starts_at, nodes));
            }
        }
        let (starts_at, nodes) = best?;
        for &node in &nodes {
            self.reserved.insert(node, Hold { gang: gang.name.clone(), starts_at });
        }
        Some(Reservation { gang: gang.name.clone(), starts_at, nodes })
    }

    /// Drops what was reserved for a gang (placed, timed out or deleted).
    pub fn release_reservation(&mut self, gang: &str) {
        self.reserved.retain(|_, hold| hold.gang != gang);
    }

    /// The gang a node is held for, and from when.
    pub fn reservation_of(&self, node: NodeId) -> Option<(&str, u64)> {
        self.reserved.get(&node).map(|hold| (hold.gang.as_str(), hold.starts_at))
    }

    /// When `needed` copies of `pod` first fit on `nodes` together, freeing pods in the order
    /// they are expected to end (now, if they already fit).
    fn earliest_room(&self, nodes: &[NodeId], pod: &Pod, needed: u64) -> Option<u64> {
        let mut states: Vec<(crate::model::Resources, crate::gpu::GpuFree)> = Vec::new();
        let mut endings: Vec<(u64, usize, crate::PlacedPod)> = Vec::new();
        let mut room = 0u64;
        for (slot, &id) in nodes.iter().enumerate() {
            let view = self.node_view(id)?;
            room += copies(&view, pod);
            states.push((view.free.clone(), *view.gpus));
            for placed in self.pods_on(id) {
                if let Some(ends_at) = placed.ends_at {
                    endings.push((ends_at, slot, placed));
                }
            }
        }
        if room >= needed {
            return Some(self.now);
        }
        endings.sort_by_key(|(ends_at, slot, _)| (*ends_at, *slot));
        let mut per_node: Vec<u64> =
            nodes.iter().map(|&id| self.node_view(id).map_or(0, |view| copies(&view, pod))).collect();
        for (ends_at, slot, placed) in endings {
            let (free, gpus) = &mut states[slot];
            free.add(&placed.requests);
            gpus.give_back(&placed.gpus);
            let view = self.node_view(nodes[slot])?;
            let after = copies(&NodeView { free, gpus, ..view }, pod);
            room = room - per_node[slot] + after;
            per_node[slot] = after;
            if room >= needed {
                return Some(ends_at.max(self.now));
            }
        }
        None
    }
}

/// The domain a node counts in: its rack, site or region, or the whole cluster.
fn domain_key(view: &NodeView, level: Option<Level>) -> String {
    level.map_or_else(String::new, |level| domain_of(view, level))
}
