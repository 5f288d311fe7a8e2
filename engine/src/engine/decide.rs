//! One decision: the verdict on each class of nodes, then the groups of alike nodes read from
//! the rankings or scored one by one, then the nodes of the best groups checked against the
//! pod's inter-pod and spread rules; or why no node can take the pod.

use super::*;

/// The verdict on one class of nodes for the pod being placed.
#[derive(Clone, Copy, Debug)]
enum Verdict<'a> {
    Rejected(&'a Reason),
    Feasible { preference: i64, cost: f64 },
}

/// A node that passed, waiting for the topology scores of all the others: its score, (rank,
/// id), the device a GPU fraction would take, and its raw topology scores.
type Candidate = (Score, (u64, NodeId), Option<u16>, NodeScore);

impl Engine {
    /// [`decide`](Self::decide); a failure is explained only if `explain`, else the explanation
    /// is empty.
    pub(crate) fn decision(&mut self, pod: &Pod, explain: bool) -> Result<Placement, Explanation> {
        self.observe(pod);
        self.measure_pressure();
        if let Some(tenant) = &pod.tenant
            && let Some(limit) = self.tenants.limit_for(tenant, usage_of(pod))
        {
            return Err(Explanation::tenant_limit(self.node_count, limit));
        }
        self.prepare_rules(pod);
        let rules = self.index.rules(pod, &self.classes);
        let verdicts = self.verdicts(pod);
        let verdicts: Vec<Verdict> = verdicts
            .iter()
            .map(|verdict| match verdict {
                Err(reason) => Verdict::Rejected(reason),
                Ok((preference, cost)) => Verdict::Feasible { preference: *preference, cost: *cost },
            })
            .collect();
        let spread = pod.spread_key.as_ref().and_then(|key| self.spread.get(key)).filter(|m| !m.is_empty());
        // Replicas per rack, so spreading prefers another rack before another node.
        let mut rack_replicas: HashMap<&str, u32> = HashMap::new();
        for (node, count) in spread.into_iter().flatten() {
            if let Some(slot) = self.nodes.get(*node as usize).and_then(Option::as_ref) {
                *rack_replicas.entry(slot.node.topology.rack.as_str()).or_insert(0) += count;
            }
        }
        let nodes = &self.nodes;
        let replicas_near = |node: NodeId, on_node: u32| -> f64 {
            let rack = nodes
                .get(node as usize)
                .and_then(Option::as_ref)
                .map(|slot| slot.node.topology.rack.as_str());
            let in_rack = rack.and_then(|rack| rack_replicas.get(rack)).copied().unwrap_or(0);
            f64::from(in_rack) * 1000.0 + f64::from(on_node)
        };
        let (reserved, now) = (&self.reserved, self.now);
        let admitted = |node: NodeId| {
            reserved.get(&node).is_none_or(|hold| hold.admits(pod, now))
                && rules.as_ref().is_none_or(|rules| {
                    nodes.get(node as usize).and_then(Option::as_ref).is_some_and(|slot| {
                        let facts = slot.facts();
                        rules.reject_before_fit(&facts).is_none() && rules.reject_after_fit(&facts).is_none()
                    })
                })
        };
        let mut scored: Vec<Candidate> = Vec::new();

        let mut best: Best = None;
        let shape = Shape::of(pod);
        let allowed = models_allowed(&self.gpu_models, pod);
        let ranked = self.use_rankings
            && spread.is_none()
            && rules.as_ref().is_none_or(|rules| !rules.scores())
            && uniform(&verdicts)
            && self.rankings.keeps(&shape);
        let scoring = Scoring {
            policy: self.policy,
            workload: &self.workload,
            workload_generation: self.workload_generation,
            classes: &self.classes,
            largest_cpu: self.largest_cpu,
            largest_gpu: self.largest_gpu,
            cpu_binds: self.cpu_binds,
        };
        if ranked {
            let (groups, model_pressure, memo) = (&self.groups, &self.model_pressure, &mut self.frag_memo);
            let policy = self.policy;
            // Spread scores memory, the others only need it to fit (checked below, per pod).
            let memory = if policy == Policy::Spread { pod.requests.memory_bytes } else { 0 };
            let score = |index: u32| {
                let group = &groups[index as usize];
                let &(rank, _) = group.members.first()?;
                let takes = group.key.free.cpu_milli >= pod.requests.cpu_milli
                    && group.key.free.memory_bytes >= memory
                    && group.key.gpus.fits(pod.gpu);
                if !takes {
                    return None;
                }
                let (score, device) = score_group(&scoring, pod, group, 0, 0.0, memo);
                Some(Entry { score, model: group.bucket / GPU_BUCKETS, rank, group: index, device })
            };
            let buckets = &self.buckets;
            let groups_of = |model: usize| buckets[model_buckets(model, pod.gpu)].iter().flatten().copied();
            let model_of = |group: u32| groups[group as usize].bucket / GPU_BUCKETS;
            let ask = (pod.requests.cpu_milli, pod.gpu, memory);
            let by_model = self.rankings.ranked(&ask, &allowed, groups_of, model_of, score);
            // A model's groups are all lowered by the same displaced GPUs, so each model's order
            // holds; reading the models by their best lowered score first, each stops below the
            // best so far.
            let mut models: Vec<(Score, usize, f64)> = by_model
                .iter()
                .enumerate()
                .filter(|(model, _)| allowed.get(*model).copied().unwrap_or(false))
                .filter_map(|(model, entries)| {
                    let displaced = displaced_steps(policy, pod, model, model_pressure);
                    let mut score = entries.first()?.score;
                    score[2] -= displaced;
                    Some((score, model, displaced))
                })
                .collect();
            models.sort_by(|a, b| compare(&b.0, &a.0));
            for (_, model, displaced) in models {
                for entry in &by_model[model] {
                    let mut score = entry.score;
                    score[2] -= displaced;
                    // Entries come best first, equal scores by rank: past the best so far, or
                    // level with it but ranked after, none of this model's groups can win.
                    if best.as_ref().is_some_and(|(top, (rank, _), _)| match compare(&score, top) {
                        Ordering::Less => true,
                        Ordering::Equal => entry.rank >= *rank,
                        Ordering::Greater => false,
                    }) {
                        break;
                    }
                    let group = &groups[entry.group as usize];
                    if !matches!(verdicts[group.key.class as usize], Verdict::Feasible { .. })
                        || group.key.free.first_shortage(&pod.requests).is_some()
                    {
                        continue;
                    }
                    if let Some(&member) = group.members.iter().find(|member| admitted(member.1)) {
                        consider(&mut best, score, member, entry.device);
                    }
                }
            }
        }
        let scanned = eligible_buckets(&allowed, pod.gpu).filter(|_| !ranked);
        for &group_index in scanned.flat_map(|bucket| &self.buckets[bucket]) {
            let group = &self.groups[group_index as usize];
            let Verdict::Feasible { preference, cost } = verdicts[group.key.class as usize] else { continue };
            if group.key.free.first_shortage(&pod.requests).is_some() || !group.key.gpus.fits(pod.gpu) {
                continue;
            }
            let (mut score, device) =
                score_group(&scoring, pod, group, preference, cost, &mut self.frag_memo);
            score[2] -= displaced_steps(self.policy, pod, group.bucket / GPU_BUCKETS, &self.model_pressure);
            // Nodes of one group differ only where spreading or the topology rules look.
            let every_member = spread.is_some() || rules.as_ref().is_some_and(Rules::scores);
            for &member in group.members.iter().filter(|member| admitted(member.1)) {
                let mut member_score = score;
                // Spreading tells nodes of one group apart: fewer replicas in the rack, then on
                // the node, first.
                if let Some(replicas) = spread {
                    member_score.rotate_right(1);
                    member_score[0] = -replicas_near(member.1, replicas.get(&member.1).copied().unwrap_or(0));
                }
                match rules.as_ref().filter(|rules| rules.scores()) {
                    Some(rules) => {
                        let facts = nodes[member.1 as usize].as_ref().map(NodeSlot::facts);
                        let node_score = facts.map(|facts| rules.score(&facts)).unwrap_or_default();
                        scored.push((member_score, member, device, node_score));
                    }
                    None => consider(&mut best, member_score, member, device),
                }
                if !every_member {
                    break;
                }
            }
        }
        // Inter-pod and soft spread scores are scaled over every node that passed, as
        // kube-scheduler does, and count with the preferred node affinity.
        let topology = normalised(&scored.iter().map(|(.., node_score)| *node_score).collect::<Vec<_>>());
        let preference_at = usize::from(spread.is_some());
        for ((mut score, member, device, _), topology) in scored.into_iter().zip(topology) {
            score[preference_at] += topology;
            consider(&mut best, score, member, device);
        }
        let unplaced = |engine: &Self| {
            if explain {
                engine.explain_nodes(pod, &verdicts, rules.as_ref())
            } else {
                Explanation::nodes(engine.node_count, BTreeMap::new())
            }
        };
        let Some((_, (_, node), device)) = best else {
            return Err(unplaced(self));
        };
        let fraction_device =
            self.slot(node).and_then(|slot| device.and_then(|free| slot.gpus.device_with(free)));
        match self.slot(node).and_then(|slot| slot.gpus.allocation(pod.gpu, fraction_device)) {
            Some(gpus) => Ok(Placement { node, gpus }),
            None => Err(unplaced(self)),
        }
    }

    /// Builds the counts the topology rules of `pod` read, where they are missing.
    pub(crate) fn prepare_rules(&mut self, pod: &Pod) {
        if pod.affinity.is_empty()
            && pod.anti_affinity.is_empty()
            && pod.preferred_affinity.is_empty()
            && pod.spread_constraints.is_empty()
        {
            return;
        }
        let (nodes, pods) = (&self.nodes, &self.pods);
        let slot = |id: NodeId| nodes.get(id as usize).and_then(Option::as_ref);
        self.index.prepare(
            pod,
            || {
                pods.values()
                    .filter_map(|bound| slot(bound.node).map(|slot| (&bound.facts, &slot.node, slot.class)))
                    .collect()
            },
            || nodes.iter().flatten().map(|slot| (&slot.node, slot.class)).collect(),
        );
    }

    /// Whether `pod` may go to node `id` by the rules that look at single nodes (node names,
    /// ports, inter-pod affinity, spread); the reason it may not otherwise.
    pub(crate) fn node_rejects(&self, rules: Option<&Rules>, id: NodeId) -> Option<Reason> {
        let (rules, slot) = (rules?, self.slot(id)?);
        let facts = slot.facts();
        rules.reject_before_fit(&facts).or_else(|| rules.reject_after_fit(&facts))
    }

    /// The topology rules of `pod` ([`prepare_rules`](Self::prepare_rules) first).
    pub(crate) fn rules_for<'a>(&'a self, pod: &'a Pod) -> Option<Rules<'a>> {
        self.index.rules(pod, &self.classes)
    }

    /// Filters and site costs of every node class for `pod`.
    pub(crate) fn verdicts(&self, pod: &Pod) -> Vec<Result<(i64, f64), Reason>> {
        let scope = match pod.tenant.as_deref() {
            Some(tenant) => TenantScope {
                region_rules: self.tenants.region_rules(tenant),
                lineage: Some(self.tenants.chain(tenant).map(|t| t.name.as_str()).collect()),
            },
            None => TenantScope::default(),
        };
        self.classes
            .iter()
            .map(|class| {
                if let Some(reason) = class.reject(pod, &scope) {
                    return Err(reason);
                }
                let cost = self.costs.evaluate(pod, &class.site)?;
                Ok((class.preference(pod), cost.total()))
            })
            .collect()
    }

    /// Counts, over all nodes, the first reason each cannot take `pod`, in kube-scheduler's
    /// order: the node's class, its name and ports, its resources, then inter-pod rules.
    fn explain_nodes(&self, pod: &Pod, verdicts: &[Verdict], rules: Option<&Rules>) -> Explanation {
        // Counted per class, and in a short list, before the sorted map: an unplaceable pod
        // looks at every group, and few reasons ever come up.
        let mut rejected = vec![0; verdicts.len()];
        let mut counted: Vec<(Reason, usize)> = Vec::new();
        let mut count =
            |reason: Reason, nodes: usize| match counted.iter_mut().find(|(seen, _)| *seen == reason) {
                Some((_, count)) => *count += nodes,
                None => counted.push((reason, nodes)),
            };
        for &group_index in self.buckets.iter().flatten() {
            let group = &self.groups[group_index as usize];
            if let Verdict::Rejected(_) = verdicts[group.key.class as usize] {
                rejected[group.key.class as usize] += group.members.len();
                continue;
            }
            let shortage = match group.key.free.first_shortage(&pod.requests) {
                Some(shortage) => Some(Reason::Insufficient(shortage)),
                None if !group.key.gpus.fits(pod.gpu) => Some(Reason::InsufficientGpu),
                None => None,
            };
            let Some(rules) = rules else {
                // It fits: what kept it out is a reservation.
                count(shortage.unwrap_or(Reason::Reserved), group.members.len());
                continue;
            };
            for &(_, id) in &group.members {
                let Some(facts) = self.slot(id).map(NodeSlot::facts) else { continue };
                let reason = rules
                    .reject_before_fit(&facts)
                    .or_else(|| shortage.clone())
                    .or_else(|| rules.reject_after_fit(&facts))
                    .unwrap_or(Reason::Reserved);
                count(reason, 1);
            }
        }
        for (verdict, &nodes) in verdicts.iter().zip(&rejected).filter(|(_, nodes)| **nodes > 0) {
            if let Verdict::Rejected(reason) = verdict {
                count((*reason).clone(), nodes);
            }
        }
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        for (reason, nodes) in counted {
            *reasons.entry(reason).or_insert(0) += nodes;
        }
        Explanation::nodes(self.node_count, reasons)
    }
}

/// The best score so far and the first node (by rank) reaching it, with the device (by its free
/// milli) a GPU fraction should take there.
type Best = Option<(Score, (u64, NodeId), Option<u16>)>;

fn consider(best: &mut Best, score: Score, node: (u64, NodeId), device: Option<u16>) {
    let better = match best {
        None => true,
        Some((top, first, _)) => match compare(&score, top) {
            Ordering::Greater => true,
            Ordering::Equal => node < *first,
            Ordering::Less => false,
        },
    };
    if better {
        *best = Some((score, node, device));
    }
}

/// Whether every class that may take the pod prefers it and costs it alike, so groups compare by
/// their own score alone.
fn uniform(verdicts: &[Verdict]) -> bool {
    let mut feasible = verdicts.iter().filter_map(|verdict| match verdict {
        Verdict::Feasible { preference, cost } => Some((*preference, *cost)),
        Verdict::Rejected(_) => None,
    });
    let first = feasible.next();
    feasible.all(|terms| Some(terms) == first)
}
