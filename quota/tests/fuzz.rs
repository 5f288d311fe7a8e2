//! Fuzzing by property: quantity parsing and the tenant planner take any input without a panic
//! or an overflow. `make fuzz` runs these with many more cases (PROPTEST_CASES).

use std::collections::BTreeMap;

use proptest::prelude::*;
use yiyun_quota::{Amounts, Level, Milli, ObservedNamespace, Resource, Standing, TenantNode, World, plan};

/// Kubernetes caps quantities near 2^63 whole units; the parser refuses anything beyond.
const CAP: i128 = i64::MAX as i128 * 1000;

/// Text shaped like a quantity, with every suffix and exponents in and out of range.
fn quantity_like() -> impl Strategy<Value = String> {
    "[-+]?[0-9]{0,25}(\\.[0-9]{0,12})?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE]-?[0-9]{1,3}|x)?"
}

proptest! {
    #[test]
    fn any_text_parses_or_is_refused_without_panic(text in ".{0,60}") {
        if let Ok(Milli(value)) = Milli::parse(&text) {
            prop_assert!((-CAP..=CAP).contains(&value));
        }
    }

    #[test]
    fn quantity_shaped_text_stays_within_the_cap(text in quantity_like()) {
        if let Ok(Milli(value)) = Milli::parse(&text) {
            prop_assert!((-CAP..=CAP).contains(&value), "{text} gave {value}");
        }
    }

    #[test]
    fn every_quantity_in_range_formats_and_parses_back(value in -CAP..=CAP, bytes: bool) {
        let text = Milli(value).format(bytes);
        prop_assert_eq!(Milli::parse(&text), Ok(Milli(value)), "{}", text);
    }
}

fn amounts() -> impl Strategy<Value = Amounts> {
    let amount = prop_oneof![0i128..=100_000_000, Just(CAP), Just(0), (0i128..=CAP),];
    proptest::collection::vec((0usize..5, amount), 0..4)
        .prop_map(|pairs| pairs.into_iter().map(|(r, a)| (Resource::ALL[r], Milli(a))).collect())
}

/// Trees as a cloud admin could write them by mistake: parents missing or in a cycle, levels
/// out of order, namespaces claimed twice, absurd amounts.
fn world() -> impl Strategy<Value = World> {
    let tenant = (
        proptest::option::of(0usize..24),
        0usize..4,
        amounts(),
        amounts(),
        proptest::collection::vec(0usize..12, 0..3),
        0usize..3,
    );
    let used = proptest::collection::vec((0usize..12, proptest::option::of(0usize..24), amounts()), 0..12);
    (proptest::collection::vec(tenant, 1..24), used).prop_map(|(tenants, used)| {
        let levels = [Level::Province, Level::City, Level::County, Level::Department];
        let standings = [Standing::Ready, Standing::Admitted, Standing::New];
        let count = tenants.len();
        World {
            tenants: tenants
                .into_iter()
                .enumerate()
                .map(|(i, (parent, level, guaranteed, max, namespaces, standing))| TenantNode {
                    name: format!("t{i}"),
                    // Index past the end: a parent that does not exist.
                    parent: parent.map(|p| format!("t{}", p % (count + 2))),
                    level: levels[level],
                    guaranteed,
                    max,
                    namespaces: namespaces.into_iter().map(|n| format!("ns{n}")).collect(),
                    standing: standings[standing],
                    seniority: format!("{:04}", (i * 7) % 13),
                    allowed_regions: Vec::new(),
                })
                .collect(),
            namespaces: used
                .into_iter()
                .map(|(n, owner, used)| {
                    let namespace = ObservedNamespace {
                        owner: owner.map(|o| format!("t{o}")),
                        used,
                        ..ObservedNamespace::default()
                    };
                    (format!("ns{n}"), namespace)
                })
                .collect::<BTreeMap<_, _>>(),
        }
    })
}

proptest! {
    #[test]
    fn the_planner_takes_any_tree_without_panic_and_plans_every_tenant(world in world()) {
        let planned = plan(&world);
        for tenant in &world.tenants {
            prop_assert!(planned.get(&tenant.name).is_some(), "{} has no plan", tenant.name);
        }
        // A tenant without a problem never gets more than its own max, unless its subtree
        // already uses more (a max lowered below usage): then it keeps what it uses, which
        // admits nothing new.
        for tenant in &world.tenants {
            let tenant_plan = planned.get(&tenant.name).expect("planned");
            if tenant_plan.problem.is_none() {
                for (&resource, &max) in &tenant.max.0 {
                    let allocated = tenant_plan.allocated.amount(resource);
                    let ceiling = max.max(tenant_plan.subtree_usage.amount(resource));
                    prop_assert!(allocated <= ceiling, "{} {resource:?}: {allocated} > {ceiling}", tenant.name);
                }
            }
        }
    }
}
