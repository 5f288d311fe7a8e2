//! Bills from a rating: lines per tenant, resource, site and price; totals per tenant, its
//! subtree and its cost centre; days and hours. All sums of whole-fen cells.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use crate::{
    calendar::{DAY, HOUR, Seconds},
    money::Fen,
    rating::{Rating, TenantInfo},
};

/// Usage of one line at one price, over the part of the month the price held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Index into [`Rating::keys`].
    pub key: usize,
    /// Index into [`Rating::prices`].
    pub price: usize,
    pub from: Seconds,
    pub to: Seconds,
    /// Base-unit-seconds.
    pub usage: i128,
    pub amount: Fen,
}

/// Shown quantities carry 6 decimal places; money is computed from exact usage, never from them.
pub const QUANTITY_DECIMALS: u32 = 6;

impl Rating {
    /// The usage of a cell or line in its price's unit (vCPU-hours, GiB-months, …).
    pub fn quantity(&self, key: usize, usage: i128) -> Decimal {
        let per_unit = self.keys[key].meter.per_unit(self.month.seconds());
        match (Decimal::try_from_i128_with_scale(usage, 0), Decimal::try_from_i128_with_scale(per_unit, 0)) {
            (Ok(usage), Ok(per_unit)) => usage.checked_div(per_unit).unwrap_or(Decimal::MAX),
            _ => Decimal::MAX,
        }
        .round_dp(QUANTITY_DECIMALS)
    }

    /// Bill lines: one per line key and price, in key order.
    pub fn lines(&self) -> Vec<Line> {
        let mut lines: Vec<Line> = Vec::new();
        let mut open: HashMap<(usize, usize), usize> = HashMap::new();
        for cell in &self.cells {
            match open.get(&(cell.line, cell.price)) {
                Some(&at) => {
                    let line = &mut lines[at];
                    line.from = line.from.min(cell.start);
                    line.to = line.to.max(cell.end);
                    line.usage += cell.usage;
                    line.amount = line.amount + cell.amount;
                }
                None => {
                    open.insert((cell.line, cell.price), lines.len());
                    lines.push(Line {
                        key: cell.line,
                        price: cell.price,
                        from: cell.start,
                        to: cell.end,
                        usage: cell.usage,
                        amount: cell.amount,
                    });
                }
            }
        }
        lines.sort_by_key(|l| (l.key, l.from, l.price));
        lines
    }

    /// What each tenant's own namespaces cost over the month.
    pub fn own_totals(&self) -> BTreeMap<String, Fen> {
        let mut totals: BTreeMap<String, Fen> = BTreeMap::new();
        for cell in &self.cells {
            let total = totals.entry(self.keys[cell.line].tenant.clone()).or_default();
            *total = *total + cell.amount;
        }
        totals
    }

    /// Each tenant's own cost per day of the month (index 0 is the 1st).
    pub fn daily(&self) -> BTreeMap<String, Vec<Fen>> {
        let days = (self.month.seconds() / DAY) as usize;
        let mut daily: BTreeMap<String, Vec<Fen>> = BTreeMap::new();
        for cell in &self.cells {
            let day = ((cell.start - self.month.start()) / DAY) as usize;
            let totals =
                daily.entry(self.keys[cell.line].tenant.clone()).or_insert_with(|| vec![Fen::ZERO; days]);
            totals[day] = totals[day] + cell.amount;
        }
        daily
    }

    /// One row per line and hour (a price change inside an hour adds its two cells).
    pub fn hourly(&self) -> Vec<HourRow> {
        let mut rows: Vec<HourRow> = Vec::new();
        for cell in &self.cells {
            let hour = cell.start - (cell.start - self.month.start()).rem_euclid(HOUR);
            match rows.last_mut() {
                Some(row) if row.key == cell.line && row.hour == hour => {
                    row.usage += cell.usage;
                    row.amount = row.amount + cell.amount;
                }
                _ => rows.push(HourRow { key: cell.line, hour, usage: cell.usage, amount: cell.amount }),
            }
        }
        rows
    }
}

/// Usage and cost of one line over one hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourRow {
    pub key: usize,
    pub hour: Seconds,
    pub usage: i128,
    pub amount: Fen,
}

/// The tenant tree with each tenant's own and subtree cost, and the cost centres.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollup {
    /// Tenants in tree order (each after its parent, siblings by name), with their depth.
    pub order: Vec<(String, usize)>,
    pub own: BTreeMap<String, Fen>,
    pub subtree: BTreeMap<String, Fen>,
    /// The cost centre each tenant is charged to: its own, else its nearest ancestor's.
    pub cost_center: BTreeMap<String, String>,
    /// Own costs summed per cost centre (`""` for tenants with none).
    pub per_cost_center: BTreeMap<String, Fen>,
}

/// Rolls `own` costs up the tree of `tenants`. A tenant with costs that is no longer in the
/// tree (deleted since) stands as a root of its own.
pub fn roll_up(own: &BTreeMap<String, Fen>, tenants: &HashMap<String, TenantInfo>) -> Rollup {
    let mut names: Vec<&str> =
        tenants.keys().map(String::as_str).chain(own.keys().map(String::as_str)).collect();
    names.sort_unstable();
    names.dedup();
    let parent_of = |name: &str| -> Option<&str> {
        let parent = tenants.get(name)?.parent.as_deref()?;
        // A parent missing from the tree, or a cycle through it, makes the tenant a root.
        (tenants.contains_key(parent) && parent != name).then_some(parent)
    };
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut roots = Vec::new();
    for &name in &names {
        match parent_of(name) {
            Some(parent) => children.entry(parent).or_default().push(name),
            None => roots.push(name),
        }
    }
    let mut rollup = Rollup {
        order: Vec::new(),
        own: BTreeMap::new(),
        subtree: BTreeMap::new(),
        cost_center: BTreeMap::new(),
        per_cost_center: BTreeMap::new(),
    };
    // Depth-first from each root, then from any tenant a cycle kept from the roots (the
    // tenancy controller refuses cycles; a bill never loses a tenant to one). Each tenant is
    // visited once and remembers the parent it was reached from.
    let mut reached_from: Vec<Option<usize>> = Vec::new();
    let mut visited = std::collections::HashSet::new();
    for &start in roots.iter().chain(&names) {
        let mut stack: Vec<(&str, usize, String, Option<usize>)> = vec![(start, 0, String::new(), None)];
        while let Some((name, depth, inherited, parent)) = stack.pop() {
            if !visited.insert(name) {
                continue;
            }
            let center = tenants.get(name).and_then(|t| t.cost_center.clone()).unwrap_or(inherited);
            let at = rollup.order.len();
            rollup.order.push((name.to_string(), depth));
            reached_from.push(parent);
            let cost = own.get(name).copied().unwrap_or_default();
            rollup.own.insert(name.to_string(), cost);
            let per_center = rollup.per_cost_center.entry(center.clone()).or_default();
            *per_center = *per_center + cost;
            rollup.cost_center.insert(name.to_string(), center.clone());
            for &child in children.get(name).into_iter().flatten().rev() {
                stack.push((child, depth + 1, center.clone(), Some(at)));
            }
        }
    }
    // Subtree totals, leaves first: in reverse pre-order every child comes before its parent.
    let mut subtree: Vec<Fen> = rollup.order.iter().map(|(name, _)| rollup.own[name]).collect();
    for at in (0..rollup.order.len()).rev() {
        if let Some(parent) = reached_from[at] {
            subtree[parent] = subtree[parent] + subtree[at];
        }
    }
    rollup.subtree = rollup.order.iter().map(|(name, _)| name.clone()).zip(subtree).collect();
    rollup
}
