//! Gangs: a group of pods placed all or nothing, inside one rack, site or region when required,
//! in as few of them as possible when preferred. A gang that does not fit takes nothing, so a
//! waiting gang never holds resources others could use.

use std::collections::BTreeMap;

use crate::{
    Engine, Explanation, NodeId, Placement,
    engine::NodeView,
    filter::Reason,
    model::{GpuRequest, Pod},
};

/// A level of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    Rack,
    Site,
    Region,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Rack => "rack",
            Level::Site => "site",
            Level::Region => "region",
        }
    }
}

/// Whether a gang must fit in one domain of its level or only should.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Required,
    Preferred,
}

/// A PodGroup as the engine sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gang {
    pub name: String,
    /// Pods that must be placed together; the gang's other pods are placed alone afterwards.
    pub min_member: usize,
    pub topology: Option<(Level, Mode)>,
}

/// A rack, site or region with room for copies of a gang's pod.
#[derive(Default)]
struct Domain {
    /// Copies that fit in all.
    capacity: u64,
    /// (copies that fit, rank, node).
    nodes: Vec<(u64, u64, NodeId)>,
}

/// How many more copies of `pod` fit on a node.
pub(crate) fn copies(view: &NodeView, pod: &Pod) -> u64 {
    let by = |free: u64, need: u64| free.checked_div(need).unwrap_or(u64::MAX);
    let mut count = by(view.free.pods, pod.requests.pods)
        .min(by(view.free.cpu_milli, pod.requests.cpu_milli))
        .min(by(view.free.memory_bytes, pod.requests.memory_bytes));
    for (name, amount) in &pod.requests.extended {
        count = count.min(by(view.free.extended.get(name).copied().unwrap_or(0), *amount));
    }
    let devices = view.gpus.devices();
    let gpu_copies = match pod.gpu {
        GpuRequest::None => u64::MAX,
        GpuRequest::Whole(count) => {
            by(devices.iter().filter(|&&free| free == 1000).count() as u64, u64::from(count))
        }
        GpuRequest::Fraction(milli) => devices.iter().map(|&free| u64::from(free / milli)).sum(),
    };
    count.min(gpu_copies)
}

pub(crate) fn domain_of(view: &NodeView, level: Level) -> String {
    let topology = &view.node.topology;
    match level {
        Level::Rack => format!("{}/{}", topology.site, topology.rack),
        Level::Site => topology.site.clone(),
        Level::Region => topology.region.clone(),
    }
}

impl Engine {
    /// Places the first `gang.min_member` of `pods` together or none of them. On success
    /// returns their placements (in the order of `pods`), already assumed, and releases what was
    /// reserved for the gang.
    pub fn schedule_gang(&mut self, gang: &Gang, pods: &[Pod]) -> Result<Vec<Placement>, Explanation> {
        let placed = self.place_gang(gang, pods)?;
        self.release_reservation(&gang.name);
        Ok(placed)
    }

    fn place_gang(&mut self, gang: &Gang, pods: &[Pod]) -> Result<Vec<Placement>, Explanation> {
        let members = &pods[..gang.min_member.min(pods.len())];
        for member in members {
            self.observe(member);
        }
        let Some(first) = members.first() else { return Ok(Vec::new()) };
        if members.len() < gang.min_member {
            let explanation = Explanation::nodes(self.node_count(), BTreeMap::new());
            return Err(explanation.with_detail(format!(
                "gang {} has {} of its {} pods",
                gang.name,
                members.len(),
                gang.min_member
            )));
        }
        // The tenant must have room for the whole gang.
        if let Some(tenant) = &first.tenant {
            let mut total = crate::tenants::Usage::default();
            for pod in members {
                total.add(crate::engine::usage_of(pod));
            }
            if let Some(limit) = self.tenants.limit_for(tenant, total) {
                return Err(Explanation::tenant_limit(self.node_count(), limit));
            }
        }
        let Some((level, mode)) = gang.topology else {
            return self
                .place_all_or_nothing(members, None)
                .map_err(|()| self.explain_gang(gang, first, None));
        };
        // Capacity of every domain for copies of the first pod, on nodes that pass its filters.
        let verdicts = self.verdicts(first);
        let mut domains: BTreeMap<String, Domain> = BTreeMap::new();
        for view in self.node_views() {
            let held = self.reserved.get(&view.id).is_some_and(|hold| !hold.admits(first, self.now));
            if held || verdicts[view.class as usize].is_err() {
                continue;
            }
            let fit = copies(&view, first);
            if fit == 0 {
                continue;
            }
            let domain = domains.entry(domain_of(&view, level)).or_default();
            domain.capacity = domain.capacity.saturating_add(fit);
            domain.nodes.push((fit, view.rank, view.id));
        }
        let needed = members.len() as u64;
        let best_capacity = domains.values().map(|domain| domain.capacity).max().unwrap_or(0);
        match mode {
            Mode::Required => {
                // The tightest domain that can hold the gang, so large domains stay whole.
                let mut candidates: Vec<&Domain> =
                    domains.values().filter(|d| d.capacity >= needed).collect();
                candidates.sort_by_key(|domain| domain.capacity);
                let candidates: Vec<Vec<NodeId>> =
                    candidates.into_iter().map(|d| fullest_first(&d.nodes)).collect();
                for nodes in candidates {
                    if let Ok(placements) = self.place_all_or_nothing(members, Some(&nodes)) {
                        return Ok(placements);
                    }
                }
                Err(self.explain_gang(gang, first, Some((level, best_capacity))))
            }
            Mode::Preferred => {
                // Largest domains first: the fewest domains that hold the gang.
                let mut ordered: Vec<&Domain> = domains.values().collect();
                ordered.sort_by_key(|domain| std::cmp::Reverse(domain.capacity));
                let nodes: Vec<NodeId> =
                    ordered.into_iter().flat_map(|domain| fullest_first(&domain.nodes)).collect();
                self.place_all_or_nothing(members, Some(&nodes))
                    .map_err(|()| self.explain_gang(gang, first, Some((level, best_capacity))))
            }
        }
    }

    /// Places every pod, on the first of `nodes` it fits on in that order (or where the policy
    /// says, without a list); if one fails, forgets the others.
    fn place_all_or_nothing(&mut self, pods: &[Pod], nodes: Option<&[NodeId]>) -> Result<Vec<Placement>, ()> {
        let mut placed: Vec<Placement> = Vec::with_capacity(pods.len());
        let mut cursor = 0;
        for pod in pods {
            let placement = match nodes {
                None => self.decision(pod, false).ok(),
                Some(nodes) => {
                    self.prepare_rules(pod);
                    self.first_fitting(pod, nodes, &mut cursor)
                }
            };
            match placement {
                Some(placement) => {
                    self.assume(pod, &placement);
                    placed.push(placement);
                }
                None => {
                    for pod in &pods[..placed.len()] {
                        self.forget(&pod.key);
                    }
                    return Err(());
                }
            }
        }
        Ok(placed)
    }

    /// The first node from `cursor` on that takes `pod`; the cursor stays there, so a gang fills
    /// one node before the next.
    fn first_fitting(&self, pod: &Pod, nodes: &[NodeId], cursor: &mut usize) -> Option<Placement> {
        let verdicts = self.verdicts(pod);
        let rules = self.rules_for(pod);
        while let Some(&id) = nodes.get(*cursor) {
            let view = self.node_view(id)?;
            let held = self.reserved.get(&id).is_some_and(|hold| !hold.admits(pod, self.now));
            if !held
                && verdicts[view.class as usize].is_ok()
                && copies(&view, pod) > 0
                && self.node_rejects(rules.as_ref(), id).is_none()
                && let Some(gpus) = view.gpus.tightest_allocation(pod.gpu)
            {
                return Some(Placement { node: id, gpus });
            }
            *cursor += 1;
        }
        None
    }

    /// The nodes that cannot take even one of the gang's pods, by reason, and what the gang
    /// lacked as a whole.
    fn explain_gang(&self, gang: &Gang, first: &Pod, topology: Option<(Level, u64)>) -> Explanation {
        let verdicts = self.verdicts(first);
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let mut room: u64 = 0;
        for view in self.node_views() {
            let fit = copies(&view, first);
            let reason = match &verdicts[view.class as usize] {
                Err(reason) => reason.clone(),
                Ok(_) if fit > 0 => {
                    room = room.saturating_add(fit);
                    continue;
                }
                Ok(_) => match view.free.first_shortage(&first.requests) {
                    Some(shortage) => Reason::Insufficient(shortage),
                    None => Reason::InsufficientGpu,
                },
            };
            *reasons.entry(reason).or_insert(0) += 1;
        }
        let needed = gang.min_member;
        let lacking = match topology {
            Some((level, best)) => {
                format!("gang needs {needed} in one {}, best {} has {best}", level.name(), level.name())
            }
            None => format!("gang needs {needed} placed together, room for {room}"),
        };
        Explanation::nodes(self.node_count(), reasons).with_detail(lacking)
    }
}

/// Nodes of a domain, those taking the most copies first, then by rank.
fn fullest_first(nodes: &[(u64, u64, NodeId)]) -> Vec<NodeId> {
    let mut sorted = nodes.to_vec();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    sorted.into_iter().map(|(_, _, id)| id).collect()
}
