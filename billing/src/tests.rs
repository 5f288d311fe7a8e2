//! Rating end to end, and its invariants as properties.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use rust_decimal::Decimal;

use crate::{
    bill::roll_up,
    calendar::{DAY, HOUR, Month, Seconds},
    meter::Meter,
    money::Fen,
    prices::{Book, Catalog, Scope},
    rating::{RatingError, TenantInfo, Usage, rate},
};

fn november() -> Month {
    "2026-11".parse().unwrap()
}

fn at(day: i64, hour: i64, minute: i64) -> Seconds {
    november().start() + (day - 1) * DAY + hour * HOUR + minute * 60
}

fn decimal(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn standard(from: Seconds, to: Option<Seconds>, cpu: &str) -> Book {
    Book {
        name: format!("standard-{cpu}"),
        scope: Scope::Everywhere,
        from,
        to,
        prices: BTreeMap::from([
            ((Meter::Cpu, String::new()), decimal(cpu)),
            ((Meter::Memory, String::new()), decimal("0.015")),
            ((Meter::Gpu, "A800".into()), decimal("10")),
            ((Meter::Gpu, "T4".into()), decimal("2.5")),
            ((Meter::Storage, String::new()), decimal("0.30")),
            ((Meter::CrossRegion, String::new()), decimal("0.5")),
        ]),
        discounts: BTreeMap::from([("county".into(), decimal("0.1"))]),
    }
}

fn catalog(books: Vec<Book>) -> Catalog {
    let (catalog, refused) = Catalog::accept(books);
    assert!(refused.is_empty(), "{refused:?}");
    catalog
}

fn usage(tenant: &str, meter: Meter, amount: i64, start: Seconds, end: Seconds) -> Usage {
    Usage {
        tenant: tenant.into(),
        site: "wuhu".into(),
        region_class: "east".into(),
        meter,
        gpu_model: if meter == Meter::Gpu { "A800".into() } else { String::new() },
        amount,
        start,
        end,
    }
}

fn tenant(name: &str, parent: Option<&str>, level: &str, cost_center: Option<&str>) -> (String, TenantInfo) {
    (
        name.to_string(),
        TenantInfo {
            name: name.into(),
            display_name: name.into(),
            parent: parent.map(Into::into),
            level: level.into(),
            cost_center: cost_center.map(Into::into),
        },
    )
}

fn total(rating: &crate::rating::Rating) -> Fen {
    rating.cells.iter().map(|c| c.amount).sum()
}

const GIB: i64 = 1 << 30;

#[test]
fn each_meter_is_priced_in_its_unit() {
    let catalog = catalog(vec![standard(0, None, "0.12")]);
    let tenants = HashMap::new();
    let cases = [
        (usage("t", Meter::Cpu, 2000, at(3, 10, 0), at(3, 11, 30)), Fen(36), "2 vCPU × 1.5 h × 0.12"),
        (usage("t", Meter::Memory, 4 * GIB, at(3, 0, 0), at(4, 0, 0)), Fen(144), "4 GiB × 24 h × 0.015"),
        (usage("t", Meter::Gpu, 500, at(3, 10, 0), at(3, 12, 0)), Fen(1000), "half an A800 × 2 h × 10"),
        (
            usage("t", Meter::Storage, 100 * GIB, at(1, 0, 0), at(31, 0, 0)),
            Fen(3000),
            "100 GiB × a month × 0.30",
        ),
        (usage("t", Meter::CrossRegion, 5_000_000_000, at(3, 10, 0), at(3, 10, 0)), Fen(250), "5 GB × 0.5"),
        (
            usage("t", Meter::CpuOverRequest, 1000, at(3, 10, 0), at(3, 12, 0)),
            Fen(24),
            "1 vCPU used beyond the request × 2 h × the vCPU price 0.12",
        ),
        (
            usage("t", Meter::MemoryOverRequest, 2 * GIB, at(3, 0, 0), at(3, 10, 0)),
            Fen(30),
            "2 GiB used beyond the request × 10 h × the memory price 0.015",
        ),
    ];
    for (usage, expected, what) in cases {
        let rating = rate(november(), [&usage], &catalog, &tenants).unwrap();
        assert_eq!(total(&rating), expected, "{what}");
    }
}

#[test]
fn a_price_change_mid_month_splits_the_line_exactly_at_its_time() {
    let change = at(15, 10, 30);
    let catalog = catalog(vec![standard(0, Some(change), "0.12"), standard(change, None, "0.24")]);
    let pod = usage("t", Meter::Cpu, 1000, at(15, 10, 0), at(15, 11, 0));
    let rating = rate(november(), [&pod], &catalog, &HashMap::new()).unwrap();
    let lines = rating.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0].from, lines[0].to, lines[0].amount),
        (at(15, 10, 0), change, Fen(6)),
        "half an hour at 0.12"
    );
    assert_eq!(
        (lines[1].from, lines[1].to, lines[1].amount),
        (change, at(15, 11, 0), Fen(12)),
        "half an hour at 0.24"
    );
    assert_eq!(rating.prices[lines[0].price].book, "standard-0.12");
    assert_eq!(rating.prices[lines[1].price].book, "standard-0.24");
    let hours = rating.hourly();
    assert_eq!(hours.len(), 1, "the split hour is one hourly row");
    assert_eq!(hours[0].amount, Fen(18));
}

#[test]
fn a_west_site_book_lowers_only_what_it_names_and_levels_get_their_discount() {
    let mut west = standard(0, None, "0.06");
    west.name = "west".into();
    west.scope = Scope::RegionClass("west".into());
    west.prices.retain(|(meter, _), _| *meter == Meter::Cpu);
    west.discounts.clear();
    let catalog = catalog(vec![standard(0, None, "0.12"), west]);
    let tenants: HashMap<_, _> =
        [tenant("county", Some("city"), "county", None), tenant("city", None, "city", None)].into();
    let mut pods = vec![
        usage("city", Meter::Cpu, 1000, at(2, 0, 0), at(2, 10, 0)),
        usage("city", Meter::Memory, 2 * GIB, at(2, 0, 0), at(2, 10, 0)),
        usage("county", Meter::Cpu, 1000, at(2, 0, 0), at(2, 10, 0)),
    ];
    for pod in &mut pods {
        pod.site = "qingyang".into();
        pod.region_class = "west".into();
    }
    let rating = rate(november(), &pods, &catalog, &tenants).unwrap();
    let own = rating.own_totals();
    assert_eq!(
        own["city"],
        Fen(60 + 30),
        "10 vCPU-hours at the west's 0.06, 20 GiB-hours at the standard 0.015"
    );
    assert_eq!(
        own["county"],
        Fen(54),
        "the west book names no discounts: the standard book's 10% for counties…"
    );
    let discounted = rating.prices.iter().find(|p| p.book == "west" && !p.discount.is_zero());
    assert_eq!(discounted.map(|p| p.discount), Some(decimal("0.1")), "…applies");
    assert_eq!(
        rating.cells.iter().filter(|c| rating.keys[c.line].tenant == "county").map(|c| c.amount).sum::<Fen>(),
        Fen(54)
    );
}

#[test]
fn discounts_apply_before_rounding() {
    let catalog = catalog(vec![standard(0, None, "0.12")]);
    let tenants: HashMap<_, _> = [tenant("c", None, "county", None)].into();
    let pod = usage("c", Meter::Cpu, 1000, at(2, 0, 0), at(3, 0, 0));
    let rating = rate(november(), [&pod], &catalog, &tenants).unwrap();
    assert_eq!(total(&rating), Fen(259), "24 vCPU-hours at 0.12 × 0.9 is 2.592");
    let hours: Vec<i64> = rating.cells.iter().map(|c| c.amount.0).collect();
    assert_eq!(
        &hours[..4],
        [11, 11, 10, 11],
        "each hour the change of the running total, rounded: 0.11, 0.22, 0.32, 0.43…"
    );
}

#[test]
fn a_line_is_its_exact_cost_rounded_once() {
    let catalog = catalog(vec![standard(0, None, "0.12")]);
    let storage = usage("t", Meter::Storage, 100 * GIB, at(1, 0, 0), at(31, 0, 0));
    let rating = rate(november(), [&storage], &catalog, &HashMap::new()).unwrap();
    assert_eq!(total(&rating), Fen(3000), "0.0417 an hour, 30.00 in all: not 720 × 0.04");
    assert!(rating.cells.iter().all(|c| c.amount == Fen(4) || c.amount == Fen(5)));
    let daily = &rating.daily()["t"];
    assert_eq!(daily.iter().copied().sum::<Fen>(), Fen(3000));
    assert_eq!(daily[0], Fen(100), "a day of a 30-day month's 30.00");
}

#[test]
fn unpriced_usage_names_the_model_the_site_and_the_field() {
    let catalog = catalog(vec![standard(0, None, "0.12")]);
    let mut pod = usage("anhui-gat", Meter::Gpu, 1000, at(3, 10, 0), at(3, 11, 0));
    pod.gpu_model = "H20".into();
    let err = rate(november(), [&pod], &catalog, &HashMap::new()).unwrap_err();
    assert_eq!(err.label(), "unpriced");
    let message = err.to_string();
    for part in [
        "GPU-hours of model H20",
        "site \"wuhu\"",
        "spec.prices.gpuHour[H20]",
        "anhui-gat",
        "2026-11-03 10:00",
    ] {
        assert!(message.contains(part), "{message} lacks {part}");
    }
    let nothing = Catalog::default();
    let cpu = usage("t", Meter::Cpu, 1000, at(3, 10, 0), at(3, 11, 0));
    let err = rate(november(), [&cpu], &nothing, &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("spec.prices.cpuCoreHour"), "{err}");
}

#[test]
fn quota_held_unused_is_billed_where_a_book_prices_it_and_free_where_none_does() {
    let held = usage("t", Meter::ReservedCpu, 4000, at(2, 0, 0), at(2, 10, 0));
    let unpriced =
        rate(november(), [&held], &catalog(vec![standard(0, None, "0.12")]), &HashMap::new()).unwrap();
    assert!(unpriced.cells.is_empty(), "no book prices holding quota: it is free");
    let mut book = standard(0, None, "0.12");
    book.prices.insert((Meter::ReservedCpu, String::new()), decimal("0.03"));
    let priced = rate(november(), [&held], &catalog(vec![book]), &HashMap::new()).unwrap();
    assert_eq!(total(&priced), Fen(120), "4 vCPU × 10 h × 0.03");
}

#[test]
fn malformed_usage_is_refused() {
    let catalog = catalog(vec![standard(0, None, "0.12")]);
    let backwards = usage("t", Meter::Cpu, 1000, at(3, 11, 0), at(3, 10, 0));
    assert!(matches!(
        rate(november(), [&backwards], &catalog, &HashMap::new()),
        Err(RatingError::MalformedUsage { .. })
    ));
    let negative = usage("t", Meter::Cpu, -1, at(3, 10, 0), at(3, 11, 0));
    assert!(matches!(
        rate(november(), [&negative], &catalog, &HashMap::new()),
        Err(RatingError::MalformedUsage { .. })
    ));
}

#[test]
fn usage_outside_the_month_is_not_billed_in_it() {
    let catalog = catalog(vec![standard(0, None, "0.12")]);
    let spanning = usage("t", Meter::Cpu, 1000, november().start() - 10 * HOUR, november().start() + HOUR);
    let rating = rate(november(), [&spanning], &catalog, &HashMap::new()).unwrap();
    assert_eq!(total(&rating), Fen(12), "only the hour inside November");
    let october = rate(november().previous(), [&spanning], &catalog, &HashMap::new()).unwrap();
    assert_eq!(total(&october), Fen(120), "the ten hours of October");
}

#[test]
fn the_tree_rolls_up_own_costs_and_cost_centres_are_inherited() {
    let tenants: HashMap<_, _> = [
        tenant("anhui", None, "province", Some("CC-PROV")),
        tenant("wuhu", Some("anhui"), "city", Some("CC-WUHU")),
        tenant("wuhu-gat", Some("wuhu"), "department", None),
        tenant("hefei", Some("anhui"), "city", None),
    ]
    .into();
    let own: BTreeMap<String, Fen> =
        [("anhui", 100), ("wuhu", 20), ("wuhu-gat", 3), ("hefei", 4), ("gone", 7)]
            .map(|(n, f)| (n.to_string(), Fen(f)))
            .into();
    let rollup = roll_up(&own, &tenants);
    assert_eq!(rollup.subtree["wuhu"], Fen(23));
    assert_eq!(rollup.subtree["anhui"], Fen(127));
    assert_eq!(rollup.subtree["gone"], Fen(7), "a deleted tenant's costs stand as a root");
    assert_eq!(rollup.cost_center["wuhu-gat"], "CC-WUHU");
    assert_eq!(rollup.cost_center["hefei"], "CC-PROV");
    assert_eq!(rollup.per_cost_center["CC-WUHU"], Fen(23));
    assert_eq!(rollup.per_cost_center["CC-PROV"], Fen(104));
    assert_eq!(rollup.per_cost_center[""], Fen(7));
    let order: Vec<_> = rollup.order.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    assert_eq!(order, [("anhui", 0), ("hefei", 1), ("wuhu", 1), ("wuhu-gat", 2), ("gone", 0)]);
}

#[test]
fn a_cycle_loses_no_tenant() {
    let tenants: HashMap<_, _> =
        [tenant("a", Some("b"), "city", None), tenant("b", Some("a"), "city", None)].into();
    let own: BTreeMap<String, Fen> = [("a".to_string(), Fen(1)), ("b".to_string(), Fen(2))].into();
    let rollup = roll_up(&own, &tenants);
    assert_eq!(rollup.order.len(), 2);
    assert_eq!(rollup.subtree.values().max(), Some(&Fen(3)));
}

// Property tests: random pods of a few tenants over November.

fn arb_usage() -> impl Strategy<Value = Usage> {
    let meters = prop_oneof![
        Just(Meter::Cpu),
        Just(Meter::Memory),
        Just(Meter::Gpu),
        Just(Meter::Storage),
        Just(Meter::CrossRegion)
    ];
    (0..4usize, 0..2usize, meters, 0..2usize, 1..64_000i64, -2 * DAY..31 * DAY, 0..3 * DAY).prop_map(
        |(tenant, site, meter, model, amount, offset, length)| {
            let start = november().start() + offset;
            let amount =
                if matches!(meter, Meter::Memory | Meter::Storage) { amount * (1 << 20) } else { amount };
            Usage {
                tenant: ["anhui", "wuhu", "wuhu-gat", "hefei"][tenant].into(),
                site: ["wuhu-a", "qingyang"][site].into(),
                region_class: ["east", "west"][site].into(),
                meter,
                gpu_model: if meter == Meter::Gpu { ["A800", "T4"][model].into() } else { String::new() },
                amount,
                start,
                end: if meter.is_instant() { start } else { start + length },
            }
        },
    )
}

fn tree() -> HashMap<String, TenantInfo> {
    [
        tenant("anhui", None, "province", Some("CC-PROV")),
        tenant("wuhu", Some("anhui"), "city", None),
        tenant("wuhu-gat", Some("wuhu"), "county", Some("CC-GAT")),
        tenant("hefei", Some("anhui"), "city", None),
    ]
    .into()
}

proptest! {
    #[test]
    fn totals_add_up_at_every_level(usages in prop::collection::vec(arb_usage(), 0..40)) {
        let catalog = catalog(vec![standard(0, None, "0.12")]);
        let tenants = tree();
        let rating = rate(november(), &usages, &catalog, &tenants).unwrap();
        prop_assert!(rating.cells.iter().all(|c| c.amount >= Fen::ZERO && c.usage > 0), "costs never negative");
        let total = total(&rating);
        let lines: Fen = rating.lines().iter().map(|l| l.amount).sum();
        prop_assert_eq!(lines, total, "a bill's total is the sum of its lines");
        let days: Fen = rating.daily().values().flatten().copied().sum();
        prop_assert_eq!(days, total, "the month is the sum of its days");
        let hours: Fen = rating.hourly().iter().map(|h| h.amount).sum();
        prop_assert_eq!(hours, total, "and of its hours");
        let rollup = roll_up(&rating.own_totals(), &tenants);
        for (name, info) in &tenants {
            let children: Fen = tenants.values().filter(|t| t.parent.as_deref() == Some(name)).map(|t| rollup.subtree[&t.name]).sum();
            prop_assert_eq!(rollup.subtree[name], rollup.own[name] + children, "{}: own plus the children's subtrees", &info.name);
        }
        prop_assert_eq!(rollup.subtree["anhui"], total);
        prop_assert_eq!(rollup.per_cost_center.values().copied().sum::<Fen>(), total);
    }

    #[test]
    fn usage_metered_in_pieces_rates_as_the_whole(usages in prop::collection::vec(arb_usage(), 1..20), cuts in prop::collection::vec(0..3 * DAY, 20)) {
        // A restarted meter may record an interval as several adjoining pieces.
        let catalog = catalog(vec![standard(0, None, "0.12")]);
        let tenants = tree();
        let whole = rate(november(), &usages, &catalog, &tenants).unwrap();
        let pieces: Vec<Usage> = usages.iter().zip(cuts).flat_map(|(u, cut)| {
            let mid = (u.start + cut).min(u.end);
            if u.meter.is_instant() || mid == u.start { vec![u.clone()] } else {
                vec![Usage { end: mid, ..u.clone() }, Usage { start: mid, ..u.clone() }]
            }
        }).collect();
        let pieced = rate(november(), &pieces, &catalog, &tenants).unwrap();
        prop_assert_eq!(pieced, whole);
    }

    #[test]
    fn a_price_change_splits_exactly_at_its_time(usages in prop::collection::vec(arb_usage(), 1..20), change in 1..30 * DAY) {
        let change = november().start() + change;
        let before = standard(0, Some(change), "0.12");
        let after = standard(change, None, "0.31");
        let tenants = tree();
        let both = rate(november(), &usages, &catalog(vec![before.clone(), after.clone()]), &tenants).unwrap();
        let clip = |from: Seconds, to: Seconds| -> Vec<Usage> {
            usages.iter().filter_map(|u| {
                if u.meter.is_instant() {
                    return (from..to).contains(&u.start).then(|| u.clone());
                }
                let (start, end) = (u.start.max(from), u.end.min(to));
                (start < end).then(|| Usage { start, end, ..u.clone() })
            }).collect()
        };
        let early = rate(november(), &clip(Seconds::MIN, change), &catalog(vec![Book { to: None, ..before }]), &tenants).unwrap();
        let late = rate(november(), &clip(change, Seconds::MAX), &catalog(vec![Book { from: 0, ..after }]), &tenants).unwrap();
        prop_assert!(both.cells.iter().all(|c| c.end <= change || c.start >= change), "no cell straddles the change");
        for cell in &both.cells {
            let book = &both.prices[cell.price].book;
            prop_assert_eq!(book == "standard-0.12", cell.end <= change, "{} priced from {}", crate::calendar::format_local(cell.start), book);
        }
        let before_change = |r: &crate::rating::Rating| -> Vec<(String, Seconds, i128, Fen)> {
            r.cells.iter().filter(|c| c.start < change).map(|c| (r.keys[c.line].tenant.clone(), c.start, c.usage, c.amount)).collect()
        };
        prop_assert_eq!(before_change(&both), before_change(&early), "up to the change, the old prices alone");
        // After it, each line's running total goes on from where it stood: within a fen of the
        // new prices alone.
        let (both, early, late) = (total(&both).0, total(&early).0, total(&late).0);
        prop_assert!((both - early - late).abs() <= 32, "{both} vs {early} + {late}");
    }

    #[test]
    fn more_usage_never_costs_less(usages in prop::collection::vec(arb_usage(), 1..20), extra in arb_usage()) {
        let catalog = catalog(vec![standard(0, None, "0.12")]);
        let tenants = tree();
        let base = rate(november(), &usages, &catalog, &tenants).unwrap();
        let mut more = usages.clone();
        more.push(extra);
        let more = rate(november(), &more, &catalog, &tenants).unwrap();
        let (base, more) = (base.own_totals(), more.own_totals());
        for (tenant, cost) in base {
            prop_assert!(more[&tenant] >= cost);
        }
    }
}
