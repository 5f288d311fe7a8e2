//! Quota held but unused: the part of each tenant's `quota.guaranteed` its subtree's pods do not
//! request, metered over time as its own line (a PriceBook may price it, or not).
//!
//! A tenant's subtree holds `max(0, guaranteed − requested by the whole subtree)` unused; the
//! tenant's own line is what its subtree holds beyond what its children's subtrees hold, so
//! that the lines of a subtree add up to what its root holds unused.

use std::collections::{BTreeMap, HashMap};

use crate::{calendar::Seconds, meter::Meter, rating::TenantInfo, rating::Usage};

/// The reserved meter of a requested one, and its index among the three.
fn resource(meter: Meter) -> Option<(usize, Meter)> {
    match meter {
        Meter::Cpu | Meter::ReservedCpu => Some((0, Meter::ReservedCpu)),
        Meter::Memory | Meter::ReservedMemory => Some((1, Meter::ReservedMemory)),
        Meter::Gpu | Meter::ReservedGpu => Some((2, Meter::ReservedGpu)),
        _ => None,
    }
}

const RESERVED: [Meter; 3] = [Meter::ReservedCpu, Meter::ReservedMemory, Meter::ReservedGpu];

/// The unused-quota usage of every tenant with a guarantee, from the guarantees held over time
/// (`guarantees`: reserved meters, amounts in base units) and the pods' requests (`usages`).
pub fn unused_quota(
    guarantees: &[Usage],
    usages: &[Usage],
    tenants: &HashMap<String, TenantInfo>,
) -> Vec<Usage> {
    // Each tenant with its ancestors, itself first; a cycle stops the walk.
    let chain = |tenant: &str| -> Vec<String> {
        let mut chain = vec![tenant.to_string()];
        let mut at = tenant;
        while let Some(parent) = tenants.get(at).and_then(|t| t.parent.as_deref()) {
            if chain.iter().any(|c| c == parent) || !tenants.contains_key(parent) {
                break;
            }
            chain.push(parent.to_string());
            at = parent;
        }
        chain
    };
    let guaranteed: Vec<&str> = {
        let mut names: Vec<&str> = guarantees.iter().map(|g| g.tenant.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    };
    if guaranteed.is_empty() {
        return Vec::new();
    }
    let index: HashMap<&str, usize> = guaranteed.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // Children among the guaranteed tenants: the nearest guaranteed ancestor of each.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); guaranteed.len()];
    for (i, name) in guaranteed.iter().enumerate() {
        if let Some(parent) = chain(name).iter().skip(1).find_map(|a| index.get(a.as_str())) {
            children[*parent].push(i);
        }
    }
    // Changes over time: (time, tenant, resource, change of guarantee, change of request).
    let mut changes: BTreeMap<Seconds, Vec<(usize, usize, i128, i128)>> = BTreeMap::new();
    for g in guarantees {
        let (Some(&t), Some((r, _))) = (index.get(g.tenant.as_str()), resource(g.meter)) else { continue };
        changes.entry(g.start).or_default().push((t, r, i128::from(g.amount), 0));
        changes.entry(g.end).or_default().push((t, r, -i128::from(g.amount), 0));
    }
    let mut ancestors_cache: HashMap<&str, Vec<usize>> = HashMap::new();
    for u in usages.iter().filter(|u| !u.meter.is_instant()) {
        let Some((r, _)) = resource(u.meter).filter(|_| !RESERVED.contains(&u.meter)) else { continue };
        let holders = ancestors_cache.entry(u.tenant.as_str()).or_insert_with(|| {
            chain(&u.tenant).iter().filter_map(|a| index.get(a.as_str()).copied()).collect()
        });
        for &t in holders.iter() {
            changes.entry(u.start).or_default().push((t, r, 0, i128::from(u.amount)));
            changes.entry(u.end).or_default().push((t, r, 0, -i128::from(u.amount)));
        }
    }
    let n = guaranteed.len();
    let (mut held, mut requested) = (vec![[0i128; 3]; n], vec![[0i128; 3]; n]);
    // The open segment of each tenant and resource: (since, amount).
    let mut open: Vec<[(Seconds, i128); 3]> = vec![[(0, 0); 3]; n];
    let mut out = Vec::new();
    for (&at, batch) in &changes {
        for &(t, r, guarantee, request) in batch {
            held[t][r] += guarantee;
            requested[t][r] += request;
        }
        let unused: Vec<[i128; 3]> =
            (0..n).map(|t| std::array::from_fn(|r| (held[t][r] - requested[t][r]).max(0))).collect();
        for t in 0..n {
            for r in 0..3 {
                let beyond_children: i128 = children[t].iter().map(|&c| unused[c][r]).sum();
                let own = (unused[t][r] - beyond_children).max(0);
                let (since, amount) = open[t][r];
                if own != amount {
                    if amount > 0 && at > since {
                        out.push(Usage {
                            tenant: guaranteed[t].to_string(),
                            site: String::new(),
                            region_class: String::new(),
                            meter: RESERVED[r],
                            gpu_model: String::new(),
                            amount: i64::try_from(amount).unwrap_or(i64::MAX),
                            start: since,
                            end: at,
                        });
                    }
                    open[t][r] = (at, own);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(tenant: &str, meter: Meter, amount: i64, start: Seconds, end: Seconds) -> Usage {
        Usage {
            tenant: tenant.into(),
            site: "s".into(),
            region_class: "east".into(),
            meter,
            gpu_model: if meter == Meter::Gpu { "A800".into() } else { String::new() },
            amount,
            start,
            end,
        }
    }

    fn tree() -> HashMap<String, TenantInfo> {
        [("city", None), ("dept", Some("city")), ("other", Some("city"))]
            .into_iter()
            .map(|(name, parent): (&str, Option<&str>)| {
                (
                    name.to_string(),
                    TenantInfo { name: name.into(), parent: parent.map(Into::into), ..TenantInfo::default() },
                )
            })
            .collect()
    }

    #[test]
    fn the_unused_part_of_a_guarantee_is_metered_until_pods_take_it() {
        // The department holds 4 vCPU from 0 to 100; a 3-vCPU pod runs from 40 to 60.
        let guarantees = [usage("dept", Meter::ReservedCpu, 4000, 0, 100)];
        let pods = [usage("dept", Meter::Cpu, 3000, 40, 60)];
        let unused = unused_quota(&guarantees, &pods, &tree());
        let segments: Vec<_> = unused.iter().map(|u| (u.start, u.end, u.amount)).collect();
        assert_eq!(segments, [(0, 40, 4000), (40, 60, 1000), (60, 100, 4000)]);
        assert!(unused.iter().all(|u| u.meter == Meter::ReservedCpu && u.site.is_empty()));
    }

    #[test]
    fn a_parent_pays_only_for_what_it_holds_beyond_its_children() {
        // The city holds 10 vCPU over its subtree, the department 4 of them; a 6-vCPU pod of
        // the other department (no guarantee of its own) uses the city's.
        let guarantees = [
            usage("city", Meter::ReservedCpu, 10_000, 0, 10),
            usage("dept", Meter::ReservedCpu, 4000, 0, 10),
        ];
        let pods = [usage("other", Meter::Cpu, 6000, 0, 10)];
        let unused = unused_quota(&guarantees, &pods, &tree());
        let of = |tenant: &str| unused.iter().filter(|u| u.tenant == tenant).map(|u| u.amount).sum::<i64>();
        assert_eq!(of("dept"), 4000, "the department's 4 vCPU lie unused");
        assert_eq!(of("city"), 0, "the city's subtree holds 10 − 6 = 4 unused, all of it the department's");
        // Both lines of the subtree add up to what the city's subtree holds unused.
        assert_eq!(of("dept") + of("city"), 10_000 - 6000);
    }

    #[test]
    fn pods_beyond_the_guarantee_leave_nothing_unused_and_never_a_negative() {
        let guarantees = [usage("dept", Meter::ReservedMemory, 1 << 30, 0, 10)];
        let pods = [usage("dept", Meter::Memory, 4 << 30, 0, 10)];
        assert!(unused_quota(&guarantees, &pods, &tree()).is_empty());
    }
}
