//! The tenant tree: the rules that span tenants, usage summed up the tree, and the split of every
//! ceiling (`quota.max`) into namespace quotas whose totals can never exceed it.
//!
//! A ceiling applies to a tenant's whole subtree, but the apiserver enforces quota per namespace.
//! So each tenant's budget is split top-down among its own namespaces and its children: each
//! gets what it already uses, and what remains is shared out equally (a child never beyond its
//! own `max`). Whatever the namespaces then admit, every subtree stays within its ceiling. The
//! split follows usage, so a namespace that grows is given more as long as its ancestors have
//! room.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::{Amounts, Milli, Resource};

/// Tier of a tenant; a child's level is always below its parent's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Province,
    City,
    County,
    Department,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Province => "province",
            Level::City => "city",
            Level::County => "county",
            Level::Department => "department",
        }
    }
}

/// What the plan needs of one Tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantNode {
    pub name: String,
    pub parent: Option<String>,
    pub level: Level,
    pub guaranteed: Amounts,
    pub max: Amounts,
    /// Namespaces the tenant claims.
    pub namespaces: Vec<String>,
    /// How established the tenant is: when tenants compete (for a namespace, for a share of
    /// their parent's guarantee), what is established keeps what it holds.
    pub standing: Standing,
    /// Orders tenants that compete on equal footing: the smaller wins. The creation timestamp
    /// in RFC 3339 sorts correctly; it has whole seconds only, so the name breaks ties.
    pub seniority: String,
    /// Regions (or region classes) the tenant's pods may use; empty for whatever its parent
    /// allows.
    pub allowed_regions: Vec<String>,
}

/// How established a tenant is; earlier variants take precedence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Ready with its current spec.
    Ready,
    /// Was ready once; its spec has changed since (an edit, or a mistake being fixed).
    Admitted,
    /// Never ready yet.
    #[default]
    New,
}

impl TenantNode {
    /// Smaller goes first when tenants compete.
    fn precedence(&self) -> (Standing, &str, &str) {
        (self.standing, &self.seniority, &self.name)
    }
}

/// A namespace as it exists in the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedNamespace {
    /// The tenant it belongs to (label `yiyun.io/tenant`), if any.
    pub owner: Option<String>,
    /// Released by a deleted tenant and free to be claimed again.
    pub orphaned: bool,
    /// Requests counted by its yiyun ResourceQuota.
    pub used: Amounts,
    /// Its yiyun ResourceQuota's current limits: every resource once the quota exists (one it
    /// does not list as unlimited, for it limits nothing), none without a quota.
    pub hard: Amounts,
}

/// Everything the plan is computed from.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub tenants: Vec<TenantNode>,
    pub namespaces: BTreeMap<String, ObservedNamespace>,
}

/// Why a tenant cannot be reconciled. Its namespaces are then left as they were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase, for the Ready condition's reason.
    pub reason: &'static str,
    /// Names the objects and numbers involved.
    pub message: String,
}

/// What one tenant should look like.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantPlan {
    pub problem: Option<Problem>,
    /// Names from the root down to the tenant; empty when the chain of parents is broken.
    pub path: Vec<String>,
    /// The non-empty `allowedRegions` lists of the tenant and its ancestors, root first: a pod of
    /// the tenant may use a node whose region or region class is in every one of them.
    pub region_rules: Vec<Vec<String>>,
    /// Direct children, in precedence order.
    pub children: Vec<String>,
    /// Namespaces labelled as the tenant's now, listed in its spec or not.
    pub owned: Vec<String>,
    pub own_usage: Amounts,
    pub subtree_usage: Amounts,
    /// ResourceQuota limits per namespace the tenant owns; a resource absent here has no
    /// ceiling anywhere up the tree. Empty when the tenant has a problem.
    pub namespace_hard: BTreeMap<String, Amounts>,
    /// The resources the tenant's tree names in any guarantee or ceiling: its namespaces'
    /// quotas count these (without a limit where no ceiling applies) and only these, so usage
    /// adds up the same way everywhere in the tree. Counting a resource nobody names would
    /// make every quota write, quota sync and pod admission do more for nothing.
    pub counted: Vec<Resource>,
    /// What the subtree may use now: its `max`, or less where an ancestor's ceiling is shared
    /// among more than it can hold. Absent resources are unlimited. Empty with a problem.
    pub allocated: Amounts,
}

/// The desired state of every tenant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub tenants: BTreeMap<String, TenantPlan>,
}

impl Plan {
    pub fn get(&self, tenant: &str) -> Option<&TenantPlan> {
        self.tenants.get(tenant)
    }

    /// Tenants whose plan differs from `previous` (including ones that appeared).
    pub fn changed_since<'a>(&'a self, previous: &'a Plan) -> impl Iterator<Item = &'a str> + 'a {
        self.tenants
            .iter()
            .filter(move |(name, plan)| previous.tenants.get(*name) != Some(*plan))
            .map(|(name, _)| name.as_str())
    }
}

/// Computes the plan of every tenant.
pub fn plan(world: &World) -> Plan {
    let tenants: HashMap<&str, &TenantNode> = world.tenants.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut children: HashMap<&str, Vec<&TenantNode>> = HashMap::new();
    for tenant in &world.tenants {
        if let Some(parent) = tenant.parent.as_deref().filter(|p| tenants.contains_key(p)) {
            children.entry(parent).or_default().push(tenant);
        }
    }
    for siblings in children.values_mut() {
        siblings.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
    }

    let mut plans: HashMap<String, TenantPlan> = world
        .tenants
        .iter()
        .map(|t| {
            let kids = children.get(t.name.as_str()).map(|c| c.iter().map(|c| c.name.clone()).collect());
            (t.name.clone(), TenantPlan { children: kids.unwrap_or_default(), ..TenantPlan::default() })
        })
        .collect();

    // Parents before children, from every root.
    let mut order: Vec<&TenantNode> = Vec::with_capacity(world.tenants.len());
    let mut queue: VecDeque<&TenantNode> = world.tenants.iter().filter(|t| t.parent.is_none()).collect();
    while let Some(tenant) = queue.pop_front() {
        order.push(tenant);
        queue.extend(children.get(tenant.name.as_str()).into_iter().flatten());
    }

    let namespace_winners = namespace_winners(world);
    for tenant in &order {
        let problem = check(tenant, &tenants, &children, &plans, &namespace_winners, world);
        let (mut path, mut region_rules) = match tenant.parent.as_deref() {
            None => (Vec::new(), Vec::new()),
            Some(parent) => (plans[parent].path.clone(), plans[parent].region_rules.clone()),
        };
        path.push(tenant.name.clone());
        if !tenant.allowed_regions.is_empty() {
            region_rules.push(tenant.allowed_regions.clone());
        }
        let plan = plans.get_mut(&tenant.name).expect("every tenant has a plan");
        plan.problem = problem;
        plan.path = path;
        plan.region_rules = region_rules;
    }
    // The resources each tree names, gathered up to its root and handed down again.
    let mut named: HashMap<&str, BTreeSet<Resource>> = world
        .tenants
        .iter()
        .map(|t| (t.name.as_str(), t.guaranteed.0.keys().chain(t.max.0.keys()).copied().collect()))
        .collect();
    for tenant in order.iter().rev() {
        if let Some(parent) = tenant.parent.as_deref() {
            let below = named[tenant.name.as_str()].clone();
            named.get_mut(parent).expect("a reached tenant's parent is a tenant").extend(below);
        }
    }
    for tenant in &order {
        let counted = match tenant.parent.as_deref() {
            Some(parent) => plans[parent].counted.clone(),
            None => named[tenant.name.as_str()].iter().copied().collect(),
        };
        plans.get_mut(&tenant.name).expect("every tenant has a plan").counted = counted;
    }
    // Tenants no root reaches: a missing parent or a cycle somewhere above them.
    let reached: HashSet<&str> = order.iter().map(|t| t.name.as_str()).collect();
    for tenant in world.tenants.iter().filter(|t| !reached.contains(t.name.as_str())) {
        let problem = unreachable_problem(tenant, &tenants);
        plans.get_mut(&tenant.name).expect("every tenant has a plan").problem = Some(problem);
    }

    // Usage, children before parents.
    for (namespace, observed) in &world.namespaces {
        if let Some(plan) = observed.owner.as_ref().and_then(|owner| plans.get_mut(owner)) {
            plan.owned.push(namespace.clone());
            plan.own_usage.add(&observed.used);
        }
    }
    for tenant in order.iter().rev() {
        let mut subtree = plans[&tenant.name].own_usage.clone();
        for child in children.get(tenant.name.as_str()).into_iter().flatten() {
            subtree.add(&plans[&child.name].subtree_usage);
        }
        plans.get_mut(&tenant.name).expect("every tenant has a plan").subtree_usage = subtree;
    }
    for tenant in world.tenants.iter().filter(|t| !reached.contains(t.name.as_str())) {
        let own = plans[&tenant.name].own_usage.clone();
        plans.get_mut(&tenant.name).expect("every tenant has a plan").subtree_usage = own;
    }

    // Split the ceilings, parents before children.
    let mut budgets: HashMap<&str, BTreeMap<Resource, Option<Milli>>> = HashMap::new();
    for tenant in &order {
        if plans[&tenant.name].problem.is_some() {
            continue;
        }
        let budget = budgets
            .remove(tenant.name.as_str())
            .unwrap_or_else(|| Resource::ALL.into_iter().map(|r| (r, tenant.max.get(r))).collect());
        let kids: &[&TenantNode] = children.get(tenant.name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let split = split_budget(tenant, &budget, kids, &plans, world);
        for (child, child_budget) in split.children {
            budgets.insert(child, child_budget);
        }
        let plan = plans.get_mut(&tenant.name).expect("every tenant has a plan");
        plan.namespace_hard = split.namespaces;
        plan.allocated = budget.into_iter().filter_map(|(r, amount)| Some((r, amount?))).collect();
    }

    hold_growth_until_shrinks_land(world, &order, &mut plans);
    Plan { tenants: plans.into_iter().collect() }
}

/// Namespace quotas change by separate writes that land in any order. Raising one limit before
/// another is lowered could let a subtree admit more than its ceiling for a moment, so a limit
/// only grows once, for every ceiling above it, the namespaces below that ceiling could not
/// exceed it even if each kept the larger of its current and its new limit. Until then it keeps
/// its current limit; when the lowered limits land, the plan changes and the growth follows.
fn hold_growth_until_shrinks_land(
    world: &World,
    order: &[&TenantNode],
    plans: &mut HashMap<String, TenantPlan>,
) {
    // Tenants by their place in `order` (parents first), so the passes below index vectors
    // instead of looking names up: this runs on every change of a 1,000-tenant tree.
    let position: HashMap<&str, usize> =
        order.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    let parent: Vec<Option<usize>> =
        order.iter().map(|t| t.parent.as_deref().and_then(|p| position.get(p).copied())).collect();
    // Every namespace each tenant owns now or is planned to: the observed one, and its planned limits.
    type Limits<'a> = (Option<&'a ObservedNamespace>, Option<&'a Amounts>);
    let mut namespaces: Vec<BTreeMap<&str, Limits>> = vec![BTreeMap::new(); order.len()];
    for (name, observed) in &world.namespaces {
        if let Some(&i) = observed.owner.as_deref().and_then(|owner| position.get(owner)) {
            namespaces[i].insert(name.as_str(), (Some(observed), None));
        }
    }
    for (i, tenant) in order.iter().enumerate() {
        for (name, hard) in &plans[&tenant.name].namespace_hard {
            namespaces[i].entry(name.as_str()).or_insert((world.namespaces.get(name), None)).1 = Some(hard);
        }
    }
    let current = |observed: Option<&ObservedNamespace>, resource: Resource| {
        observed.and_then(|o| o.hard.get(resource)).unwrap_or_default()
    };
    let mut holds: Vec<(usize, Resource)> = Vec::new();
    for resource in Resource::ALL {
        // What each subtree's namespaces could admit at most while the writes are in flight.
        let mut exposure: Vec<Milli> = namespaces
            .iter()
            .map(|owned| {
                owned
                    .values()
                    .map(|(observed, desired)| {
                        let desired = desired.and_then(|h| h.get(resource)).unwrap_or_default();
                        current(*observed, resource).max(desired)
                    })
                    .sum()
            })
            .collect();
        for i in (0..order.len()).rev() {
            if let Some(p) = parent[i] {
                let below = exposure[i];
                exposure[p] += below;
            }
        }
        // Over a ceiling of its own or of an ancestor; parents come first in `order`.
        let mut overexposed = vec![false; order.len()];
        for (i, tenant) in order.iter().enumerate() {
            let own = tenant.max.get(resource).is_some_and(|ceiling| exposure[i] > ceiling);
            overexposed[i] = own || parent[i].is_some_and(|p| overexposed[p]);
            if overexposed[i] {
                holds.push((i, resource));
            }
        }
    }
    for (i, resource) in holds {
        let plan = plans.get_mut(&order[i].name).expect("every tenant has a plan");
        for (namespace, hard) in plan.namespace_hard.iter_mut() {
            // Up to its own usage a limit admits nothing new, so that much is always safe.
            let observed = world.namespaces.get(namespace);
            let used = observed.map(|o| o.used.amount(resource)).unwrap_or_default();
            let safe = current(observed, resource).max(used);
            if hard.get(resource).is_some_and(|desired| desired > safe) {
                hard.set(resource, safe);
            }
        }
    }
}

/// For each claimed namespace, the tenant that gets it: the one with precedence.
fn namespace_winners(world: &World) -> HashMap<&str, &str> {
    let mut winners: HashMap<&str, &TenantNode> = HashMap::new();
    for tenant in &world.tenants {
        for namespace in &tenant.namespaces {
            let winner = winners.entry(namespace).or_insert(tenant);
            if tenant.precedence() < winner.precedence() {
                *winner = tenant;
            }
        }
    }
    winners.into_iter().map(|(ns, t)| (ns, t.name.as_str())).collect()
}

/// The rules that span objects, for a tenant whose parents all resolve.
fn check(
    tenant: &TenantNode,
    tenants: &HashMap<&str, &TenantNode>,
    children: &HashMap<&str, Vec<&TenantNode>>,
    plans: &HashMap<String, TenantPlan>,
    namespace_winners: &HashMap<&str, &str>,
    world: &World,
) -> Option<Problem> {
    if let Some(parent_name) = tenant.parent.as_deref() {
        let parent = tenants[parent_name];
        if plans[parent_name].problem.is_some() {
            return Some(Problem {
                reason: "ParentNotReady",
                message: format!("parent tenant {parent_name:?} is not ready; see its Ready condition"),
            });
        }
        if tenant.level <= parent.level {
            return Some(Problem {
                reason: "LevelNotBelowParent",
                message: format!(
                    "a {} cannot be a child of {} {parent_name:?}: a child's level must be below its parent's (province > city > county > department)",
                    tenant.level.name(),
                    parent.level.name()
                ),
            });
        }
        if let Some(problem) = max_exceeds_ceiling(tenant, parent, tenants) {
            return Some(problem);
        }
        if let Some(problem) = guarantee_overcommitted(tenant, parent, &children[parent_name], plans) {
            return Some(problem);
        }
    }
    for namespace in &tenant.namespaces {
        let winner = namespace_winners[namespace.as_str()];
        if winner != tenant.name {
            return Some(Problem {
                reason: "NamespaceConflict",
                message: format!("namespace {namespace:?} is already claimed by tenant {winner:?}"),
            });
        }
        if let Some(observed) = world.namespaces.get(namespace) {
            let ours = observed.owner.as_deref() == Some(tenant.name.as_str());
            let adoptable = observed.owner.is_none() && observed.orphaned;
            if !(ours || adoptable) {
                let message = match &observed.owner {
                    Some(owner) => format!("namespace {namespace:?} belongs to tenant {owner:?}"),
                    None => format!(
                        "namespace {namespace:?} already exists and is not managed by yiyun; to hand it over, label it: kubectl label namespace {namespace} yiyun.io/tenant={}",
                        tenant.name
                    ),
                };
                return Some(Problem { reason: "NamespaceNotOwned", message });
            }
        }
    }
    None
}

/// A tenant's `max` must stay within the ceiling its parent has (its own or inherited).
fn max_exceeds_ceiling(
    tenant: &TenantNode,
    parent: &TenantNode,
    tenants: &HashMap<&str, &TenantNode>,
) -> Option<Problem> {
    for resource in Resource::ALL {
        let Some(max) = tenant.max.get(resource) else {
            continue;
        };
        // The nearest ancestor that sets a ceiling for this resource, and the lowest one above.
        let mut ceiling: Option<(Milli, &str)> = None;
        let mut ancestor = Some(parent);
        let mut steps = 0;
        while let Some(a) = ancestor {
            if let Some(m) = a.max.get(resource)
                && ceiling.is_none_or(|(c, _)| m < c)
            {
                ceiling = Some((m, a.name.as_str()));
            }
            steps += 1;
            ancestor =
                a.parent.as_deref().and_then(|p| tenants.get(p).copied()).filter(|_| steps < tenants.len());
        }
        if let Some((limit, from)) = ceiling
            && max > limit
        {
            let key = resource.tenant_key();
            let whose = if from == parent.name {
                format!("its parent {from:?}")
            } else {
                format!("ancestor {from:?}, which bounds parent {:?}", parent.name)
            };
            return Some(Problem {
                reason: "MaxExceedsParent",
                message: format!(
                    "quota.max[{key}] {} exceeds {} set by {whose}",
                    max.format(resource.is_bytes()),
                    limit.format(resource.is_bytes())
                ),
            });
        }
    }
    None
}

/// Siblings' guarantees must add up to at most their parent's; older siblings keep theirs.
fn guarantee_overcommitted(
    tenant: &TenantNode,
    parent: &TenantNode,
    siblings: &[&TenantNode],
    plans: &HashMap<String, TenantPlan>,
) -> Option<Problem> {
    for resource in Resource::ALL {
        let Some(own) = tenant.guaranteed.get(resource).filter(|g| *g > Milli::ZERO) else {
            continue;
        };
        // Siblings ahead hold their guarantees already, also while fixing an unrelated mistake;
        // only one that does not fit itself holds nothing.
        let older: Vec<&TenantNode> = siblings
            .iter()
            .take_while(|s| s.name != tenant.name)
            .filter(|s| plans[&s.name].problem.as_ref().is_none_or(|p| p.reason != "GuaranteeOvercommitted"))
            .copied()
            .collect();
        let total: Milli = older.iter().map(|s| s.guaranteed.amount(resource)).sum::<Milli>() + own;
        let available = parent.guaranteed.amount(resource);
        if total > available {
            let bytes = resource.is_bytes();
            let parts: Vec<String> = older
                .iter()
                .filter(|s| s.guaranteed.amount(resource) > Milli::ZERO)
                .chain(std::iter::once(&tenant))
                .map(|s| format!("{} {}", s.name, s.guaranteed.amount(resource).format(bytes)))
                .collect();
            return Some(Problem {
                reason: "GuaranteeOvercommitted",
                message: format!(
                    "the children of {:?} would be guaranteed {} {} in total ({}), more than {:?}'s own guaranteed {}",
                    parent.name,
                    resource.tenant_key(),
                    total.format(bytes),
                    parts.join(" + "),
                    parent.name,
                    available.format(bytes)
                ),
            });
        }
    }
    None
}

/// Why a tenant that no root reaches is not ready: its parent is missing, it sits on a cycle,
/// or something above it does.
fn unreachable_problem(tenant: &TenantNode, tenants: &HashMap<&str, &TenantNode>) -> Problem {
    let mut chain: Vec<&str> = vec![tenant.name.as_str()];
    let mut current = tenant;
    loop {
        let Some(parent_name) = current.parent.as_deref() else {
            // Roots are always reached; kept total rather than trusting that.
            return Problem {
                reason: "ParentNotReady",
                message: format!("ancestor {:?} is not ready", current.name),
            };
        };
        let Some(parent) = tenants.get(parent_name) else {
            return if current.name == tenant.name {
                Problem {
                    reason: "ParentNotFound",
                    message: format!("parent tenant {parent_name:?} does not exist"),
                }
            } else {
                Problem {
                    reason: "ParentNotReady",
                    message: format!(
                        "ancestor {:?} has no parent: tenant {parent_name:?} does not exist",
                        current.name
                    ),
                }
            };
        };
        if let Some(start) = chain.iter().position(|n| *n == parent_name) {
            let mut cycle: Vec<&str> = chain[start..].to_vec();
            cycle.push(parent_name);
            return if start == 0 {
                Problem { reason: "Cycle", message: format!("parents form a cycle: {}", cycle.join(" -> ")) }
            } else {
                Problem {
                    reason: "ParentNotReady",
                    message: format!("ancestors form a cycle: {}", cycle.join(" -> ")),
                }
            };
        }
        chain.push(parent_name);
        current = parent;
    }
}

struct Split<'a> {
    namespaces: BTreeMap<String, Amounts>,
    children: Vec<(&'a str, BTreeMap<Resource, Option<Milli>>)>,
}

/// Splits a tenant's budget among its own namespaces and its children.
fn split_budget<'a>(
    tenant: &TenantNode,
    budget: &BTreeMap<Resource, Option<Milli>>,
    children: &[&'a TenantNode],
    plans: &HashMap<String, TenantPlan>,
    world: &World,
) -> Split<'a> {
    // By name: the split must not depend on who came first, or it would shift by a unit
    // whenever precedence changes.
    let mut valid: Vec<&TenantNode> =
        children.iter().copied().filter(|c| plans[&c.name].problem.is_none()).collect();
    valid.sort_by(|a, b| a.name.cmp(&b.name));
    let frozen: Vec<&TenantNode> =
        children.iter().copied().filter(|c| plans[&c.name].problem.is_some()).collect();
    let mut split = Split {
        namespaces: tenant.namespaces.iter().map(|ns| (ns.clone(), Amounts::default())).collect(),
        children: valid
            .iter()
            .map(|c| (c.name.as_str(), Resource::ALL.into_iter().map(|r| (r, c.max.get(r))).collect()))
            .collect(),
    };
    for resource in Resource::ALL {
        let Some(Some(total)) = budget.get(&resource).copied() else {
            continue; // no ceiling above: namespaces unlimited, children bounded by their own max
        };
        // Frozen children keep what their namespaces may already admit.
        let held: Milli = frozen.iter().map(|c| frozen_hold(c, resource, plans, world)).sum();
        let mut used = Vec::new();
        let mut rooms = Vec::new();
        for ns in &tenant.namespaces {
            let u = world.namespaces.get(ns).map(|o| o.used.amount(resource)).unwrap_or_default();
            used.push(u);
            rooms.push(None);
        }
        for child in &valid {
            let u = plans[&child.name].subtree_usage.amount(resource);
            used.push(u);
            rooms.push(child.max.get(resource).map(|m| m.saturating_sub(u)));
        }
        let remaining = total.saturating_sub(held).saturating_sub(used.iter().copied().sum());
        let shares = water_fill(remaining, &rooms, resource.granularity());
        let allocation: Vec<Milli> = used.iter().zip(&shares).map(|(u, s)| *u + *s).collect();
        let (for_namespaces, for_children) = allocation.split_at(tenant.namespaces.len());
        for (ns, amount) in tenant.namespaces.iter().zip(for_namespaces) {
            split.namespaces.get_mut(ns).expect("inserted above").set(resource, *amount);
        }
        for ((_, child_budget), amount) in split.children.iter_mut().zip(for_children) {
            child_budget.insert(resource, Some(*amount));
        }
    }
    split
}

/// What a frozen (not ready) child's namespaces may admit: their current limits, or their usage
/// where they have none.
fn frozen_hold(
    child: &TenantNode,
    resource: Resource,
    plans: &HashMap<String, TenantPlan>,
    world: &World,
) -> Milli {
    let usage = plans[&child.name].subtree_usage.amount(resource);
    let mut subtree = vec![child.name.as_str()];
    let mut i = 0;
    while i < subtree.len() {
        subtree.extend(plans[subtree[i]].children.iter().map(String::as_str));
        i += 1;
    }
    let hard: Milli = world
        .namespaces
        .values()
        .filter(|ns| ns.owner.as_deref().is_some_and(|o| subtree.contains(&o)))
        .map(|ns| ns.hard.get(resource).unwrap_or_else(|| ns.used.amount(resource)))
        .sum();
    hard.max(usage)
}

/// Shares `total` equally among candidates, none beyond its room (`None`: no limit), in whole
/// multiples of `granularity`. What is left over when every room is full stays unallocated.
pub fn water_fill(total: Milli, rooms: &[Option<Milli>], granularity: Milli) -> Vec<Milli> {
    let unit = granularity.0.max(1);
    let mut remaining = total.0.max(0) / unit;
    let room_units: Vec<Option<i128>> = rooms.iter().map(|r| r.map(|r| r.0.max(0) / unit)).collect();
    let mut order: Vec<usize> = (0..rooms.len()).collect();
    // Smallest rooms first, so what they cannot take passes on to the others.
    order.sort_by_key(|&i| (room_units[i].is_none(), room_units[i].unwrap_or(0)));
    let mut shares = vec![0i128; rooms.len()];
    for (k, &i) in order.iter().enumerate() {
        // Rounding up hands the remainder of the division to the earlier candidates.
        let left = (order.len() - k) as i128;
        let fair = (remaining + left - 1) / left;
        let give = room_units[i].map_or(fair, |room| room.min(fair));
        shares[i] = give;
        remaining -= give;
    }
    shares.into_iter().map(|s| Milli(s * unit)).collect()
}
