//! Preemption and the order of the queue. Within a tenant, a pod may evict pods of lower
//! priority; across tenants, a tenant within its guarantee takes back what borrowing tenants
//! hold beyond theirs, whatever the priorities. Victims are the fewest and cheapest that make
//! room on one node, nobody is evicted unless the pod then fits, and evictions are rate-limited.

use std::{cmp::Ordering, collections::BTreeMap};

use crate::{Engine, Explanation, PlacedPod, Placement, engine::usage_of, model::Pod, tenants::Usage};

/// What a preemption does: evict `victims`, then place the pod as `placement`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preemption {
    pub placement: Placement,
    pub victims: Vec<String>,
}

/// How costly evicting a set of victims is, compared lexicographically (smaller is better):
/// how many, their highest priority, then how much work they had done (earlier placed is more).
type VictimCost = (usize, i32, std::cmp::Reverse<u64>);

impl Engine {
    /// Whether `preemptor` may evict `victim`.
    fn may_evict(&self, preemptor: &Pod, victim: &PlacedPod, borrowed: &BTreeMap<String, Usage>) -> bool {
        if !victim.evictable {
            return false;
        }
        if preemptor.tenant == victim.tenant {
            return victim.priority < preemptor.priority;
        }
        let (Some(lender), Some(borrower)) = (&preemptor.tenant, &victim.tenant) else { return false };
        // Reclaim: the pod stays within its tenant's guarantee, and the victim's tenant is
        // still above its own after the victims chosen so far.
        self.tenants.within_guarantee(lender, usage_of(preemptor))
            && borrowed.get(borrower).is_some_and(|usage| {
                self.tenants.get(borrower).is_some_and(|tenant| usage.exceeds(tenant.guaranteed))
            })
    }

    /// The cheapest way to make room for `pod` by evicting pods, without doing it. Inter-pod
    /// rules and spread are checked with the victims still counted, so a node is never chosen
    /// that the pod could not take, at the price of missing one where only the eviction of a
    /// matching pod would make it fit.
    pub fn plan_preemption(&mut self, pod: &Pod) -> Option<Preemption> {
        if !pod.preempts {
            return None;
        }
        self.prepare_rules(pod);
        let rules = self.rules_for(pod);
        let verdicts = self.verdicts(pod);
        let mut best: Option<(VictimCost, Preemption)> = None;
        for view in self.node_views() {
            if verdicts[view.class as usize].is_err() || self.node_rejects(rules.as_ref(), view.id).is_some()
            {
                continue;
            }
            let mut candidates = self.pods_on(view.id);
            // Lowest priority first, then the most recently placed (least work lost).
            candidates.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.sequence.cmp(&a.sequence)));
            let mut borrowed: BTreeMap<String, Usage> = BTreeMap::new();
            for tenant in candidates.iter().filter_map(|victim| victim.tenant.as_ref()) {
                borrowed.entry(tenant.clone()).or_insert_with(|| self.tenants.subtree_usage(tenant));
            }
            let mut free = view.free.clone();
            let mut gpus = *view.gpus;
            let mut chosen: Vec<&PlacedPod> = Vec::new();
            for victim in &candidates {
                if fits(&free, &gpus, pod) {
                    break;
                }
                if !self.may_evict(pod, victim, &borrowed) {
                    continue;
                }
                free.add(&victim.requests);
                gpus.give_back(&victim.gpus);
                if let Some(usage) = victim.tenant.as_ref().and_then(|tenant| borrowed.get_mut(tenant)) {
                    usage.cpu_milli = usage.cpu_milli.saturating_sub(victim.requests.cpu_milli);
                    usage.memory_bytes = usage.memory_bytes.saturating_sub(victim.requests.memory_bytes);
                    usage.gpu_milli = usage.gpu_milli.saturating_sub(victim.gpu_milli);
                }
                chosen.push(victim);
            }
            if chosen.is_empty() || !fits(&free, &gpus, pod) {
                continue;
            }
            // Keep only the victims the pod needs gone, newest considered for release first.
            let mut index = chosen.len();
            while index > 0 {
                index -= 1;
                let victim = chosen[index];
                let mut without_free = free.clone();
                without_free.sub(&victim.requests);
                let mut without_gpus = gpus;
                without_gpus.take(&victim.gpus);
                if fits(&without_free, &without_gpus, pod) {
                    free = without_free;
                    gpus = without_gpus;
                    chosen.remove(index);
                }
            }
            let cost: VictimCost = (
                chosen.len(),
                chosen.iter().map(|victim| victim.priority).max().unwrap_or(i32::MIN),
                std::cmp::Reverse(chosen.iter().map(|victim| victim.sequence).min().unwrap_or(0)),
            );
            let better = best.as_ref().is_none_or(|(top, _)| cost.cmp(top) == Ordering::Less);
            if !better {
                continue;
            }
            let Some(allocation) = gpus.tightest_allocation(pod.gpu) else {
                continue;
            };
            best = Some((
                cost,
                Preemption {
                    placement: Placement { node: view.id, gpus: allocation },
                    victims: chosen.iter().map(|victim| victim.key.clone()).collect(),
                },
            ));
        }
        best.map(|(_, preemption)| preemption)
    }

    /// Plans a preemption for `pod` and carries it out in the engine's books: the victims are
    /// forgotten and the pod placed. `now` (seconds, the caller's clock) drives the rate limit.
    pub fn preempt(&mut self, pod: &Pod, now: u64) -> Result<Preemption, Explanation> {
        let preemption = self.preemption_for(pod)?;
        self.commit_preemption(pod, preemption, now)
    }

    /// [`plan_preemption`](Self::plan_preemption), or why there is none.
    pub fn preemption_for(&mut self, pod: &Pod) -> Result<Preemption, Explanation> {
        let Some(preemption) = self.plan_preemption(pod) else {
            let mut explanation = self
                .decide(pod)
                .err()
                .unwrap_or_else(|| Explanation::nodes(self.node_count(), BTreeMap::new()));
            let detail = if pod.preempts {
                "no pod may be preempted to make room"
            } else {
                "preemptionPolicy Never: the pod waits for room"
            };
            explanation.detail = Some(detail.to_string());
            return Err(explanation);
        };
        Ok(preemption)
    }

    /// Carries out a planned preemption in the engine's books, within the eviction rate limit.
    pub fn commit_preemption(
        &mut self,
        pod: &Pod,
        preemption: Preemption,
        now: u64,
    ) -> Result<Preemption, Explanation> {
        while self.evictions.front().is_some_and(|&at| at + 60 <= now) {
            self.evictions.pop_front();
        }
        if self.evictions.len() + preemption.victims.len() > self.evictions_per_minute {
            let mut explanation = Explanation::nodes(self.node_count(), BTreeMap::new());
            explanation.detail = Some(format!(
                "preemption rate-limited: {} pods evicted in the last minute, at most {}",
                self.evictions.len(),
                self.evictions_per_minute
            ));
            return Err(explanation);
        }
        for victim in &preemption.victims {
            self.forget(victim);
            self.evictions.push_back(now);
        }
        self.assume(pod, &preemption.placement);
        Ok(preemption)
    }

    /// Orders pending pods for scheduling: hierarchical dominant-resource fair share (at each
    /// level of the tenant tree the sibling using the smallest share of its guarantee first),
    /// then higher priority, then the order they came in.
    pub fn queue_order(&self, pods: &mut [Pod]) {
        let key = |pod: &Pod| -> Vec<f64> {
            let Some(tenant) = &pod.tenant else { return Vec::new() };
            let mut shares: Vec<f64> =
                self.tenants.chain(tenant).map(|t| self.tenants.share(&t.name)).collect();
            shares.reverse();
            shares
        };
        let mut keyed: Vec<(Vec<f64>, i32, usize)> =
            pods.iter().enumerate().map(|(index, pod)| (key(pod), pod.priority, index)).collect();
        keyed.sort_by(|a, b| {
            let shares = a.0.iter().zip(&b.0).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne());
            shares.unwrap_or(a.0.len().cmp(&b.0.len())).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
        });
        let order: Vec<usize> = keyed.into_iter().map(|(_, _, index)| index).collect();
        let sorted: Vec<Pod> = order.iter().map(|&index| pods[index].clone()).collect();
        pods.clone_from_slice(&sorted);
    }
}

fn fits(free: &crate::model::Resources, gpus: &crate::gpu::GpuFree, pod: &Pod) -> bool {
    free.first_shortage(&pod.requests).is_none() && gpus.fits(pod.gpu)
}
