//! Rules that depend on which pods run where: inter-pod affinity and anti-affinity (the pod's
//! own terms and the symmetric rule of pods already placed), topology spread constraints and
//! host ports, with node names and hostname selectors, which only a node itself can answer.
//!
//! Placed pods are counted per topology domain as they come and go: a term or constraint is a
//! [`Selection`] whose counter is built once (one pass over the placed pods) the first time a
//! pod asks for it and kept up to date on every placement after that. A decision then reads
//! counts per domain, never the pods.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{
    filter::{NodeClass, Reason, names_nodes},
    fxhash::FxHashMap,
    model::{HostPort, LabelSelector, NamespaceScope, Node, Pod, PodAffinityTerm, WhenUnsatisfiable},
};

type Labels = BTreeMap<String, String>;

/// Counters kept at most: the least recently asked for goes first. Each placement updates
/// every counter that selects the pod, so they must not grow without bound.
const COUNTER_LIMIT: usize = 512;

/// kube-scheduler's `hardPodAffinityWeight`: how much an existing pod's required affinity to
/// a new pod draws it to the same domain.
const HARD_AFFINITY_WEIGHT: i64 = 1;

/// Pods selected by `selector` in `namespaces`, counted per domain of `topology_key`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Selection {
    selector: LabelSelector,
    /// With the default (the owner's namespace) already filled in.
    namespaces: NamespaceScope,
    topology_key: String,
}

impl Selection {
    /// What a term of a pod in `namespace` selects; `None` when it selects no pod.
    fn of_term(term: &PodAffinityTerm, namespace: &str) -> Option<Selection> {
        let mut namespaces = term.namespaces.clone();
        if namespaces.names.is_empty() && namespaces.selector.is_none() {
            namespaces.names.push(namespace.to_string());
        }
        Some(Selection {
            selector: term.selector.clone()?,
            namespaces,
            topology_key: term.topology_key.clone(),
        })
    }

    /// What a spread constraint of a pod counts: selected pods of its own namespace.
    fn of_spread(selector: Option<&LabelSelector>, topology_key: &str, namespace: &str) -> Option<Selection> {
        Some(Selection {
            selector: selector?.clone(),
            namespaces: NamespaceScope { names: vec![namespace.to_string()], selector: None },
            topology_key: topology_key.to_string(),
        })
    }

    fn selects(&self, namespace: &str, labels: &Labels, namespace_labels: &HashMap<String, Labels>) -> bool {
        let in_scope = self.namespaces.names.iter().any(|name| name == namespace)
            || self.namespaces.selector.as_ref().is_some_and(|selector| {
                namespace_labels.get(namespace).is_some_and(|labels| selector.matches(labels))
            });
        in_scope && self.selector.matches(labels)
    }
}

/// Selected pods per domain and per class of the node they run on (spread counts only nodes
/// of classes the new pod could use).
#[derive(Debug, Default)]
struct Counter {
    by_domain: HashMap<String, FxHashMap<u32, u32>>,
    /// Selected pods on nodes that have the topology key.
    total: u64,
    /// When a decision last asked for it (see [`COUNTER_LIMIT`]).
    used: u64,
}

impl Counter {
    fn count(&mut self, domain: &str, class: u32, delta: i64) {
        let classes = self.by_domain.entry(domain.to_string()).or_default();
        let count = classes.entry(class).or_insert(0);
        *count = (i64::from(*count) + delta).max(0) as u32;
        if *count == 0 {
            classes.remove(&class);
            if classes.is_empty() {
                self.by_domain.remove(domain);
            }
        }
        self.total = (self.total as i64 + delta).max(0) as u64;
    }

    fn in_domain(&self, domain: &str) -> u32 {
        self.by_domain.get(domain).map_or(0, |classes| classes.values().sum())
    }

    fn in_domain_of(&self, domain: &str, eligible: &[bool]) -> u32 {
        self.by_domain.get(domain).map_or(0, |classes| {
            classes
                .iter()
                .filter(|(class, _)| eligible.get(**class as usize) == Some(&true))
                .map(|(_, n)| n)
                .sum()
        })
    }
}

/// How a term a placed pod carries weighs on pods that come later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Draws selected pods to its domain with [`HARD_AFFINITY_WEIGHT`].
    RequiredAffinity,
    /// Keeps selected pods out of its domain.
    RequiredAnti,
    /// Draws (positive) or pushes away (negative) selected pods.
    Preferred(i64),
}

/// What a placed pod brings to the rules.
#[derive(Clone, Debug, Default)]
pub(crate) struct PodFacts {
    pub namespace: String,
    pub labels: Labels,
    pub carried: Vec<(Role, Selection)>,
    pub host_ports: Vec<HostPort>,
    pub attachments: Vec<crate::model::Attachment>,
}

impl PodFacts {
    pub(crate) fn of(pod: &Pod) -> PodFacts {
        let namespace = &pod.namespace;
        let mut carried: Vec<(Role, Selection)> = Vec::new();
        let roles = pod
            .affinity
            .iter()
            .map(|term| (Role::RequiredAffinity, term))
            .chain(pod.anti_affinity.iter().map(|term| (Role::RequiredAnti, term)))
            .chain(pod.preferred_affinity.iter().map(|(weight, term)| (Role::Preferred(*weight), term)));
        for (role, term) in roles {
            if let Some(selection) = Selection::of_term(term, namespace) {
                carried.push((role, selection));
            }
        }
        PodFacts {
            namespace: namespace.clone(),
            labels: pod.labels.clone(),
            carried,
            host_ports: pod.host_ports.clone(),
            attachments: pod.attachments.clone(),
        }
    }
}

/// Placed pods counted per topology domain, for every selection a decision asked for and every
/// term a placed pod carries.
#[derive(Debug, Default)]
pub(crate) struct PodIndex {
    namespace_labels: HashMap<String, Labels>,
    counters: HashMap<Selection, Counter>,
    /// Terms placed pods carry: how many pods carry each, per domain.
    carried: HashMap<(Role, Selection), HashMap<String, u32>>,
    /// Nodes per domain and class, for the topology keys spread constraints count by.
    domains: HashMap<String, HashMap<String, FxHashMap<u32, u32>>>,
    decisions: u64,
}

/// A node as the rules read it.
pub(crate) struct NodeFacts<'a> {
    pub node: &'a Node,
    pub ports: &'a [HostPort],
    /// Volumes attached for the node's pods: by CSI driver, the pods using each volume.
    pub attached: &'a BTreeMap<String, HashMap<String, u32>>,
}

impl PodIndex {
    /// Records a namespace's labels; returns whether they changed.
    pub(crate) fn set_namespace(&mut self, name: &str, labels: Option<Labels>) -> bool {
        let changed = match labels {
            Some(labels) => self.namespace_labels.insert(name.to_string(), labels.clone()) != Some(labels),
            None => self.namespace_labels.remove(name).is_some(),
        };
        if changed {
            // Counters match namespaces as pods are placed: those that select by namespace
            // labels are built again when next asked for.
            self.counters.retain(|selection, _| selection.namespaces.selector.is_none());
        }
        changed
    }

    /// Counts a pod placed on (`delta` 1) or leaving (`delta` -1) a node.
    pub(crate) fn count_pod(&mut self, facts: &PodFacts, node: &Node, class: u32, delta: i64) {
        for (selection, counter) in &mut self.counters {
            if let Some(domain) = node.labels.get(&selection.topology_key)
                && selection.selects(&facts.namespace, &facts.labels, &self.namespace_labels)
            {
                counter.count(domain, class, delta);
            }
        }
        for (role, selection) in &facts.carried {
            let Some(domain) = node.labels.get(&selection.topology_key) else { continue };
            let domains = self.carried.entry((*role, selection.clone())).or_default();
            let count = domains.entry(domain.clone()).or_insert(0);
            *count = (i64::from(*count) + delta).max(0) as u32;
            if *count == 0 {
                domains.remove(domain);
                if domains.is_empty() {
                    self.carried.remove(&(*role, selection.clone()));
                }
            }
        }
    }

    /// Counts a node in (`delta` 1) or out of (`delta` -1) the domains of the known keys.
    pub(crate) fn count_node(&mut self, node: &Node, class: u32, delta: i64) {
        for (key, domains) in &mut self.domains {
            let Some(domain) = node.labels.get(key) else { continue };
            let classes = domains.entry(domain.clone()).or_default();
            let count = classes.entry(class).or_insert(0);
            *count = (i64::from(*count) + delta).max(0) as u32;
            if *count == 0 {
                classes.remove(&class);
                if classes.is_empty() {
                    domains.remove(domain);
                }
            }
        }
    }

    /// Builds what deciding for `pod` reads and does not have yet: counters for its terms and
    /// constraints (from `placed`, the placed pods with their nodes) and the domains of its
    /// spread keys (from `nodes`).
    pub(crate) fn prepare<'a>(
        &mut self,
        pod: &Pod,
        placed: impl Fn() -> Vec<(&'a PodFacts, &'a Node, u32)>,
        nodes: impl Fn() -> Vec<(&'a Node, u32)>,
    ) {
        self.decisions += 1;
        let mut wanted: Vec<Selection> = Vec::new();
        let terms = pod
            .affinity
            .iter()
            .chain(&pod.anti_affinity)
            .chain(pod.preferred_affinity.iter().map(|(_, t)| t));
        wanted.extend(terms.filter_map(|term| Selection::of_term(term, &pod.namespace)));
        for constraint in &pod.spread_constraints {
            wanted.extend(Selection::of_spread(
                constraint.selector.as_ref(),
                &constraint.topology_key,
                &pod.namespace,
            ));
            if !self.domains.contains_key(&constraint.topology_key) {
                let mut domains: HashMap<String, FxHashMap<u32, u32>> = HashMap::new();
                for (node, class) in nodes() {
                    if let Some(domain) = node.labels.get(&constraint.topology_key) {
                        *domains.entry(domain.clone()).or_default().entry(class).or_insert(0) += 1;
                    }
                }
                self.domains.insert(constraint.topology_key.clone(), domains);
            }
        }
        for selection in wanted {
            if let Some(counter) = self.counters.get_mut(&selection) {
                counter.used = self.decisions;
                continue;
            }
            if self.counters.len() >= COUNTER_LIMIT
                && let Some(oldest) =
                    self.counters.iter().min_by_key(|(_, counter)| counter.used).map(|(s, _)| s.clone())
            {
                self.counters.remove(&oldest);
            }
            let mut counter = Counter { used: self.decisions, ..Counter::default() };
            for (facts, node, class) in placed() {
                if let Some(domain) = node.labels.get(&selection.topology_key)
                    && selection.selects(&facts.namespace, &facts.labels, &self.namespace_labels)
                {
                    counter.count(domain, class, 1);
                }
            }
            self.counters.insert(selection, counter);
        }
    }

    /// The rules `pod` must meet node by node, read from the counts ([`prepare`] first);
    /// `None` when nothing about it depends on the node beyond its class.
    ///
    /// [`prepare`]: Self::prepare
    pub(crate) fn rules<'a>(&'a self, pod: &'a Pod, classes: &[NodeClass]) -> Option<Rules<'a>> {
        let counter = |selection: Option<Selection>| selection.and_then(|s| self.counters.get(&s));
        let mut rules = Rules { pod: Some(pod), ..Rules::default() };
        rules.names_nodes = pod.node_selector.keys().any(|key| key == crate::model::HOSTNAME)
            || pod.required_terms.iter().any(names_nodes)
            || pod.volume_rules.iter().any(|rule| rule.terms.iter().any(names_nodes));
        rules.node_preferences = pod.preferred_terms.iter().filter(|(_, term)| names_nodes(term)).collect();
        for term in &pod.affinity {
            rules.affinity.push((&term.topology_key, counter(Selection::of_term(term, &pod.namespace))));
        }
        // The first of a group of pods with affinity to each other goes anywhere its terms'
        // keys exist (kube-scheduler's rule).
        rules.first_of_its_kind = !pod.affinity.is_empty()
            && rules.affinity.iter().all(|(_, counter)| counter.is_none_or(|c| c.total == 0))
            && pod.affinity.iter().all(|term| {
                Selection::of_term(term, &pod.namespace)
                    .is_some_and(|s| s.selects(&pod.namespace, &pod.labels, &self.namespace_labels))
            });
        for term in &pod.anti_affinity {
            if let Some(counter) = counter(Selection::of_term(term, &pod.namespace)) {
                rules.anti_affinity.push((&term.topology_key, counter));
            }
        }
        for (weight, term) in &pod.preferred_affinity {
            if let Some(counter) = counter(Selection::of_term(term, &pod.namespace)) {
                rules.preferred.push((*weight, &term.topology_key, counter));
            }
        }
        for ((role, selection), domains) in &self.carried {
            if !selection.selects(&pod.namespace, &pod.labels, &self.namespace_labels) {
                continue;
            }
            let key = selection.topology_key.as_str();
            match role {
                Role::RequiredAnti => rules.existing_anti.push((key, domains)),
                Role::RequiredAffinity => {
                    rules.carried_preferences.push((HARD_AFFINITY_WEIGHT, key, domains))
                }
                Role::Preferred(weight) => rules.carried_preferences.push((*weight, key, domains)),
            }
        }
        for constraint in &pod.spread_constraints {
            let selection =
                Selection::of_spread(constraint.selector.as_ref(), &constraint.topology_key, &pod.namespace);
            let counter = counter(selection.clone());
            let eligible: Vec<bool> = classes
                .iter()
                .map(|class| {
                    (!constraint.honor_node_affinity || class.selected_by(pod))
                        && (!constraint.honor_node_taints || class.tolerated_by(pod))
                })
                .collect();
            let domains = self.domains.get(&constraint.topology_key);
            let mut eligible_domains = 0u32;
            let mut minimum: Option<u32> = None;
            for (domain, node_classes) in domains.into_iter().flatten() {
                if !node_classes.keys().any(|class| eligible.get(*class as usize) == Some(&true)) {
                    continue;
                }
                eligible_domains += 1;
                let count = counter.map_or(0, |c| c.in_domain_of(domain, &eligible));
                minimum = Some(minimum.map_or(count, |m: u32| m.min(count)));
            }
            let mut minimum = minimum.unwrap_or(0);
            if constraint.min_domains.is_some_and(|min_domains| eligible_domains < min_domains) {
                minimum = 0;
            }
            let counts_itself =
                selection.is_some_and(|s| s.selects(&pod.namespace, &pod.labels, &self.namespace_labels));
            let rule = SpreadRule {
                key: &constraint.topology_key,
                counter,
                eligible,
                minimum,
                max_skew: constraint.max_skew,
                itself: u32::from(counts_itself),
                weight: f64::from(eligible_domains + 2).ln(),
            };
            match constraint.when_unsatisfiable {
                WhenUnsatisfiable::DoNotSchedule => rules.spread.push(rule),
                WhenUnsatisfiable::ScheduleAnyway => rules.soft_spread.push(rule),
            }
        }
        let empty = !rules.names_nodes
            && rules.node_preferences.is_empty()
            && pod.host_ports.is_empty()
            && pod.attachments.is_empty()
            && pod.device_nodes.is_none()
            && rules.affinity.is_empty()
            && rules.anti_affinity.is_empty()
            && rules.preferred.is_empty()
            && rules.existing_anti.is_empty()
            && rules.carried_preferences.is_empty()
            && rules.spread.is_empty()
            && rules.soft_spread.is_empty();
        (!empty).then_some(rules)
    }
}

/// One spread constraint as a decision reads it.
pub(crate) struct SpreadRule<'a> {
    key: &'a str,
    counter: Option<&'a Counter>,
    /// Which node classes count (node affinity and taint policies).
    eligible: Vec<bool>,
    /// The fewest selected pods in any eligible domain.
    minimum: u32,
    max_skew: u32,
    /// Whether the pod counts towards its own constraint.
    itself: u32,
    /// kube-scheduler's weight of a soft constraint: ln(eligible domains + 2).
    weight: f64,
}

impl SpreadRule<'_> {
    fn count(&self, domain: &str) -> u32 {
        self.counter.map_or(0, |counter| counter.in_domain_of(domain, &self.eligible))
    }
}

/// What a pod must meet node by node, and how nodes score for it beyond their class.
#[derive(Default)]
pub(crate) struct Rules<'a> {
    pod: Option<&'a Pod>,
    names_nodes: bool,
    node_preferences: Vec<&'a (u32, crate::model::Term)>,
    affinity: Vec<(&'a str, Option<&'a Counter>)>,
    first_of_its_kind: bool,
    anti_affinity: Vec<(&'a str, &'a Counter)>,
    preferred: Vec<(i64, &'a str, &'a Counter)>,
    existing_anti: Vec<(&'a str, &'a HashMap<String, u32>)>,
    carried_preferences: Vec<(i64, &'a str, &'a HashMap<String, u32>)>,
    spread: Vec<SpreadRule<'a>>,
    soft_spread: Vec<SpreadRule<'a>>,
}

impl<'a> Rules<'a> {
    /// Whether nodes that pass differ in score, so every one of them must be scored.
    pub(crate) fn scores(&self) -> bool {
        !self.node_preferences.is_empty()
            || !self.preferred.is_empty()
            || !self.carried_preferences.is_empty()
            || !self.soft_spread.is_empty()
    }

    /// What keeps the pod off the node before its resources are looked at (node name, ports).
    pub(crate) fn reject_before_fit(&self, node: &NodeFacts) -> Option<Reason> {
        let pod = self.pod?;
        if self.names_nodes {
            let labels = &node.node.labels;
            let selected = pod.node_selector.iter().all(|(key, value)| labels.get(key) == Some(value))
                && (pod.required_terms.is_empty()
                    || pod.required_terms.iter().any(|term| term.matches_node(labels, &node.node.name)));
            if !selected {
                return Some(Reason::NodeName);
            }
            if let Some(rule) = pod
                .volume_rules
                .iter()
                .find(|rule| !rule.terms.iter().any(|term| term.matches_node(labels, &node.node.name)))
            {
                return Some(Reason::Volume(rule.conflict));
            }
        }
        if pod.host_ports.iter().any(|wanted| node.ports.iter().any(|held| held.conflicts(wanted))) {
            return Some(Reason::HostPort);
        }
        if exceeds_volume_limits(pod, node) {
            return Some(Reason::VolumeLimit);
        }
        None
    }

    /// What keeps the pod off a node it fits on: its resource claims, inter-pod affinity, then
    /// spread.
    pub(crate) fn reject_after_fit(&self, node: &NodeFacts) -> Option<Reason> {
        let labels = &node.node.labels;
        if self.pod?.device_nodes.as_ref().is_some_and(|nodes| !nodes.contains(&node.node.name)) {
            return Some(Reason::Devices);
        }
        let mut affinity_met = true;
        for (key, counter) in &self.affinity {
            let Some(domain) = labels.get(*key) else { return Some(Reason::PodAffinity) };
            if counter.is_none_or(|counter| counter.in_domain(domain) == 0) {
                affinity_met = false;
            }
        }
        if !affinity_met && !self.first_of_its_kind {
            return Some(Reason::PodAffinity);
        }
        for (key, counter) in &self.anti_affinity {
            if labels.get(*key).is_some_and(|domain| counter.in_domain(domain) > 0) {
                return Some(Reason::PodAntiAffinity);
            }
        }
        for (key, domains) in &self.existing_anti {
            if labels.get(*key).is_some_and(|domain| domains.contains_key(domain)) {
                return Some(Reason::ExistingAntiAffinity);
            }
        }
        for rule in &self.spread {
            let Some(domain) = labels.get(rule.key) else { return Some(Reason::TopologySpreadLabel) };
            if (rule.count(domain) + rule.itself).saturating_sub(rule.minimum) > rule.max_skew {
                return Some(Reason::TopologySpread);
            }
        }
        None
    }

    /// The node's raw scores beyond its class: inter-pod preferences (higher is better) and
    /// soft spread (lower counts are better, so negated), and the node-naming preferred terms.
    pub(crate) fn score(&self, node: &NodeFacts) -> NodeScore {
        let labels = &node.node.labels;
        let domain_count = |key: &str, counter: &Counter| labels.get(key).map_or(0, |d| counter.in_domain(d));
        let mut affinity: i64 = 0;
        for (weight, key, counter) in &self.preferred {
            affinity += weight * i64::from(domain_count(key, counter));
        }
        for (weight, key, domains) in &self.carried_preferences {
            let count = labels.get(*key).and_then(|domain| domains.get(domain)).copied().unwrap_or(0);
            affinity += weight * i64::from(count);
        }
        let mut spread = 0.0;
        for rule in &self.soft_spread {
            // Nodes without the key score as if their domain were the fullest, kube-scheduler's
            // way of keeping pods where the constraint can count them.
            let count = labels.get(rule.key).map_or(u32::MAX / 2, |domain| rule.count(domain));
            spread -= (f64::from(count) + f64::from(rule.max_skew) - 1.0) * rule.weight;
        }
        let preference = self
            .node_preferences
            .iter()
            .filter(|(_, term)| term.matches_node(labels, &node.node.name))
            .map(|(weight, _)| i64::from(*weight))
            .sum();
        NodeScore { affinity: affinity as f64, spread, preference }
    }
}

/// Whether attaching the pod's volumes the node does not have yet passes a driver's limit.
fn exceeds_volume_limits(pod: &Pod, node: &NodeFacts) -> bool {
    let mut new: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for attachment in &pod.attachments {
        let held = node
            .attached
            .get(&attachment.driver)
            .is_some_and(|volumes| volumes.contains_key(&attachment.volume));
        if !held {
            new.entry(&attachment.driver).or_default().insert(&attachment.volume);
        }
    }
    new.iter().any(|(driver, volumes)| {
        node.node.volume_limits.get(*driver).is_some_and(|&limit| {
            let attached = node.attached.get(*driver).map_or(0, HashMap::len);
            attached + volumes.len() > limit as usize
        })
    })
}

/// A node's scores from [`Rules::score`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NodeScore {
    pub affinity: f64,
    pub spread: f64,
    pub preference: i64,
}

/// Scales each node's raw inter-pod and spread scores to 0–100 over the nodes that pass, as
/// kube-scheduler normalises its plugins' scores, and adds them up with the node preference.
pub(crate) fn normalised(scores: &[NodeScore]) -> Vec<f64> {
    let range = |value: fn(&NodeScore) -> f64| {
        let low = scores.iter().map(value).fold(f64::INFINITY, f64::min);
        let high = scores.iter().map(value).fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    };
    let scale = |value: f64, (low, high): (f64, f64)| {
        if high > low { 100.0 * (value - low) / (high - low) } else { 0.0 }
    };
    let (affinity, spread) = (range(|s| s.affinity), range(|s| s.spread));
    scores
        .iter()
        .map(|s| (scale(s.affinity, affinity) + scale(s.spread, spread)).trunc() + s.preference as f64)
        .collect()
}
