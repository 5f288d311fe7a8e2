//! Inter-pod affinity, spread, host ports and node names through the engine's public API,
//! and properties that hold whatever the order pods arrive in.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::{
    Engine, Policy,
    model::{
        HOSTNAME, HostPort, LabelSelector, NamespaceScope, Node, Operator, Pod, PodAffinityTerm, Requirement,
        Resources, SpreadConstraint, Term, WhenUnsatisfiable,
    },
};

const GIB: u64 = 1 << 30;
const ZONE: &str = "topology.kubernetes.io/zone";

fn node(name: &str, zone: &str) -> Node {
    let mut node = Node::new(
        name,
        Resources { cpu_milli: 64_000, memory_bytes: 256 * GIB, pods: 110, ..Default::default() },
    );
    node.labels.insert(HOSTNAME.into(), name.into());
    node.labels.insert(ZONE.into(), zone.into());
    node
}

fn labelled(key: &str, app: &str) -> Pod {
    let mut pod = Pod::new(format!("ns/{key}"), Resources::new(100, GIB));
    pod.namespace = "ns".into();
    pod.labels.insert("app".into(), app.into());
    pod
}

fn selecting(app: &str) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        expressions: vec![],
    })
}

fn term(app: &str, topology_key: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        selector: selecting(app),
        namespaces: NamespaceScope::default(),
        topology_key: topology_key.into(),
    }
}

fn spread(app: &str, max_skew: u32, when: WhenUnsatisfiable) -> SpreadConstraint {
    SpreadConstraint {
        max_skew,
        topology_key: ZONE.into(),
        when_unsatisfiable: when,
        selector: selecting(app),
        min_domains: None,
        honor_node_affinity: true,
        honor_node_taints: false,
    }
}

fn cluster(nodes: &[(&str, &str)]) -> Engine {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    for (name, zone) in nodes {
        engine.upsert_node(node(name, zone));
    }
    engine
}

fn node_of(engine: &Engine, key: &str) -> String {
    let placement = engine.placement_of(key).expect("placed");
    engine.node(placement.node).expect("node").name.clone()
}

#[test]
fn required_anti_affinity_keeps_replicas_on_separate_nodes_and_the_third_waits() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "a")]);
    let replica = |i: usize| {
        let mut pod = labelled(&format!("web-{i}"), "web");
        pod.anti_affinity.push(term("web", HOSTNAME));
        pod
    };
    engine.schedule(&replica(0)).expect("first");
    engine.schedule(&replica(1)).expect("second");
    assert_ne!(node_of(&engine, "ns/web-0"), node_of(&engine, "ns/web-1"));
    let waiting = engine.schedule(&replica(2)).expect_err("no third node");
    assert_eq!(waiting.to_string(), "0/2 nodes: 2 didn't match pod anti-affinity rules");
    engine.forget("ns/web-0");
    engine.schedule(&replica(2)).expect("room again once a replica leaves");
}

#[test]
fn an_existing_pods_anti_affinity_keeps_new_pods_away() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "b")]);
    let mut loner = labelled("loner", "loner");
    loner.anti_affinity.push(term("noisy", ZONE));
    engine.schedule(&loner).expect("placed");
    let zone_of_loner = node_of(&engine, "ns/loner");
    engine.schedule(&labelled("noisy", "noisy")).expect("the other zone");
    assert_ne!(node_of(&engine, "ns/noisy"), zone_of_loner);
    engine.schedule(&labelled("noisy-2", "noisy")).expect("the loner only keeps pods out of its own zone");
    assert_ne!(node_of(&engine, "ns/noisy-2"), zone_of_loner);
    let mut engine = engine_with_one_zone_taken();
    let err = engine.schedule(&labelled("noisy", "noisy")).expect_err("one zone, the loner's");
    assert_eq!(err.to_string(), "0/1 nodes: 1 didn't satisfy existing pods anti-affinity rules");
}

fn engine_with_one_zone_taken() -> Engine {
    let mut engine = cluster(&[("n1", "a")]);
    let mut loner = labelled("loner", "loner");
    loner.anti_affinity.push(term("noisy", ZONE));
    engine.schedule(&loner).expect("placed");
    engine
}

#[test]
fn required_affinity_follows_the_selected_pods_and_the_first_of_a_group_goes_anywhere() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "b"), ("n3", "b")]);
    let mut cache = labelled("cache", "cache");
    cache.affinity.push(term("db", ZONE));
    let waiting = engine.schedule(&cache).expect_err("no db anywhere");
    assert_eq!(waiting.to_string(), "0/3 nodes: 3 didn't match pod affinity rules");
    engine.assume(&labelled("db", "db"), &crate::Placement { node: 1, gpus: vec![] });
    engine.schedule(&cache).expect("beside the db");
    assert!(["n2", "n3"].contains(&node_of(&engine, "ns/cache").as_str()));
    // Pods with affinity to their own kind: the first goes anywhere, the rest follow it.
    let mut first = labelled("team-0", "team");
    first.affinity.push(term("team", ZONE));
    engine.schedule(&first).expect("first of its kind");
    let zone = |engine: &Engine, key: &str| {
        let node = engine.node(engine.placement_of(key).expect("placed").node).expect("node");
        node.labels[ZONE].clone()
    };
    for i in 1..5 {
        let mut next = labelled(&format!("team-{i}"), "team");
        next.affinity.push(term("team", ZONE));
        engine.schedule(&next).expect("follows");
        assert_eq!(zone(&engine, &format!("ns/team-{i}")), zone(&engine, "ns/team-0"));
    }
}

#[test]
fn terms_look_at_the_namespaces_they_name_or_select() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "b")]);
    engine.set_namespace("ns", Some(BTreeMap::from([("dept".to_string(), "health".to_string())])));
    engine.set_namespace("other", Some(BTreeMap::from([("dept".to_string(), "edu".to_string())])));
    let mut elsewhere = labelled("db", "db");
    elsewhere.key = "other/db".into();
    elsewhere.namespace = "other".into();
    engine.assume(&elsewhere, &crate::Placement { node: 0, gpus: vec![] });
    let mut own_namespace = labelled("app", "app");
    own_namespace.affinity.push(term("db", ZONE));
    assert!(engine.schedule(&own_namespace).is_err(), "a term sees its own namespace by default");
    let mut named = own_namespace.clone();
    named.affinity[0].namespaces.names = vec!["other".into()];
    engine.schedule(&named).expect("names the db's namespace");
    assert_eq!(node_of(&engine, "ns/app"), "n1");
    engine.forget("ns/app");
    let mut by_labels = own_namespace.clone();
    by_labels.affinity[0].namespaces.selector = Some(LabelSelector {
        match_labels: BTreeMap::from([("dept".into(), "edu".into())]),
        expressions: vec![],
    });
    engine.schedule(&by_labels).expect("selects the db's namespace");
    // Relabelling the namespace takes it out of the term's reach.
    engine.forget("ns/app");
    engine.set_namespace("other", Some(BTreeMap::from([("dept".to_string(), "finance".to_string())])));
    assert!(engine.schedule(&by_labels).is_err(), "the namespace no longer matches");
}

#[test]
fn spread_do_not_schedule_keeps_zones_within_max_skew() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "b")]);
    let mut zones: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..4 {
        let mut pod = labelled(&format!("s-{i}"), "s");
        pod.spread_constraints.push(spread("s", 1, WhenUnsatisfiable::DoNotSchedule));
        engine.schedule(&pod).expect("fits");
        *zones.entry(node_of(&engine, &pod.key)).or_default() += 1;
    }
    assert_eq!(zones, BTreeMap::from([("n1".into(), 2), ("n2".into(), 2)]));
    // With one zone full, the other may only run one ahead.
    let mut engine = cluster(&[("n1", "a"), ("n2", "b")]);
    let mut blocker = node("n2", "b");
    blocker.unschedulable = true;
    engine.upsert_node(blocker);
    let mut first = labelled("s-0", "s");
    first.spread_constraints.push(spread("s", 1, WhenUnsatisfiable::DoNotSchedule));
    first.tolerations.clear();
    engine.schedule(&first).expect("skew 1 allowed");
    let mut second = first.clone();
    second.key = "ns/s-1".into();
    let err = engine.schedule(&second).expect_err("skew 2 not allowed");
    assert_eq!(err.to_string(), "0/2 nodes: 1 cordoned, 1 didn't match pod topology spread constraints");
}

#[test]
fn min_domains_takes_the_minimum_as_zero_while_domains_are_missing() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "b")]);
    let with = |i: usize| {
        let mut pod = labelled(&format!("m-{i}"), "m");
        let mut constraint = spread("m", 1, WhenUnsatisfiable::DoNotSchedule);
        constraint.min_domains = Some(3);
        pod.spread_constraints.push(constraint);
        pod
    };
    engine.schedule(&with(0)).expect("one");
    engine.schedule(&with(1)).expect("two");
    // Two domains of the three asked for: the global minimum counts as 0, so each zone holds one.
    let err = engine.schedule(&with(2)).expect_err("a third zone is missing");
    assert!(err.to_string().contains("2 didn't match pod topology spread constraints"), "{err}");
}

#[test]
fn spread_ignores_nodes_outside_the_pods_node_affinity_unless_told_otherwise() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "b")]);
    let mut tagged = node("n1", "a");
    tagged.labels.insert("disk".into(), "ssd".into());
    engine.upsert_node(tagged);
    // Pods of the app in zone b, where the new pod may not go.
    for i in 0..3 {
        engine.assume(&labelled(&format!("old-{i}"), "s"), &crate::Placement { node: 1, gpus: vec![] });
    }
    let mut pod = labelled("new", "s");
    pod.node_selector.insert("disk".into(), "ssd".into());
    pod.spread_constraints.push(spread("s", 1, WhenUnsatisfiable::DoNotSchedule));
    engine.schedule(&pod).expect("zone b does not count: Honor");
    engine.forget("ns/new");
    pod.spread_constraints[0].honor_node_affinity = false;
    assert!(engine.schedule(&pod).is_ok(), "zone a has 0, b has 3: a is the minimum and takes one");
    engine.forget("ns/new");
    let placed = (0..10)
        .take_while(|i| {
            let mut more = pod.clone();
            more.key = format!("ns/more-{i}");
            engine.schedule(&more).is_ok()
        })
        .count();
    assert_eq!(placed, 4, "counting zone b's 3, zone a may hold one more than that");
}

#[test]
fn soft_spread_and_preferred_anti_affinity_spread_replicas_yet_never_block() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "b"), ("n3", "c")]);
    for i in 0..6 {
        let mut pod = labelled(&format!("soft-{i}"), "soft");
        pod.spread_constraints.push(spread("soft", 1, WhenUnsatisfiable::ScheduleAnyway));
        engine.schedule(&pod).expect("never blocked");
    }
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..6 {
        *per_node.entry(node_of(&engine, &format!("ns/soft-{i}"))).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{per_node:?}");
    let mut engine = cluster(&[("n1", "a"), ("n2", "a")]);
    for i in 0..4 {
        let mut pod = labelled(&format!("pref-{i}"), "pref");
        pod.preferred_affinity.push((-100, term("pref", HOSTNAME)));
        engine.schedule(&pod).expect("never blocked");
    }
    let on_n1 = (0..4).filter(|i| node_of(&engine, &format!("ns/pref-{i}")) == "n1").count();
    assert_eq!(on_n1, 2);
}

#[test]
fn host_ports_conflict_by_protocol_port_and_address() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "a")]);
    let with_port = |key: &str, ip: &str, protocol: &str| {
        let mut pod = labelled(key, "dns");
        pod.host_ports.push(HostPort { protocol: protocol.into(), ip: ip.into(), port: 53 });
        pod
    };
    engine.schedule(&with_port("a", "0.0.0.0", "UDP")).expect("first");
    engine.schedule(&with_port("b", "", "UDP")).expect("second");
    let err = engine.schedule(&with_port("c", "10.0.0.1", "UDP")).expect_err("every address taken");
    assert_eq!(err.to_string(), "0/2 nodes: 2 didn't have free ports for the requested pod ports");
    engine.schedule(&with_port("tcp", "0.0.0.0", "TCP")).expect("another protocol");
    engine.forget("ns/a");
    engine.schedule(&with_port("c", "10.0.0.1", "UDP")).expect("the port is free again");
}

#[test]
fn node_names_and_hostname_selectors_are_checked_node_by_node() {
    let mut engine = cluster(&[("n1", "a"), ("n2", "a"), ("n3", "a")]);
    assert_eq!(engine.schedule(&labelled("warm", "x")).map(|p| p.node), Ok(0), "all nodes are one class");
    let mut daemon = labelled("daemon", "d");
    daemon.required_terms.push(Term {
        requirements: vec![],
        name_requirements: vec![Requirement {
            key: "metadata.name".into(),
            operator: Operator::In,
            values: vec!["n3".into()],
        }],
    });
    engine.schedule(&daemon).expect("its node");
    assert_eq!(node_of(&engine, "ns/daemon"), "n3");
    let mut pinned = labelled("pinned", "p");
    pinned.node_selector.insert(HOSTNAME.into(), "n2".into());
    engine.schedule(&pinned).expect("its node");
    assert_eq!(node_of(&engine, "ns/pinned"), "n2");
    let mut nowhere = labelled("nowhere", "p");
    nowhere.node_selector.insert(HOSTNAME.into(), "n9".into());
    let err = engine.schedule(&nowhere).expect_err("no such node");
    assert_eq!(err.to_string(), "0/3 nodes: 3 didn't match the requested node name");
}

/// A pod of a random app with the rules under test.
fn arrival(i: usize, app: u8, anti: bool, skew: Option<u32>) -> Pod {
    let mut pod = labelled(&format!("p-{i}"), &format!("app-{app}"));
    if anti {
        pod.anti_affinity.push(term(&format!("app-{app}"), HOSTNAME));
    }
    if let Some(max_skew) = skew {
        pod.spread_constraints.push(spread(
            &format!("app-{app}"),
            max_skew,
            WhenUnsatisfiable::DoNotSchedule,
        ));
    }
    pod
}

proptest! {
    /// Whatever the order of arrivals and departures: no two pods of an app with required
    /// anti-affinity share a node, and no DoNotSchedule constraint is broken by a pod placed.
    #[test]
    fn required_anti_affinity_and_spread_are_never_violated(
        zones in proptest::collection::vec(0u8..3, 1..8),
        arrivals in proptest::collection::vec((0u8..3, any::<bool>(), proptest::option::of(1u32..3), any::<bool>()), 1..60),
    ) {
        let mut engine = Engine::new(Policy::Yiyun, 7);
        for (i, zone) in zones.iter().enumerate() {
            engine.upsert_node(node(&format!("n{i}"), &format!("z{zone}")));
        }
        let mut placed: Vec<Pod> = Vec::new();
        for (i, (app, anti, skew, leave)) in arrivals.into_iter().enumerate() {
            // Rules are per app, so that pods of an app agree on them.
            let (anti, skew) = (anti && app != 0, if app == 2 { skew.or(Some(1)) } else { None });
            let pod = arrival(i, app, anti, skew);
            let counts_before = zone_counts(&engine, &placed, &pod);
            if engine.schedule(&pod).is_ok() {
                let node = node_of(&engine, &pod.key);
                if anti {
                    for other in placed.iter().filter(|o| o.labels == pod.labels) {
                        prop_assert_ne!(node_of(&engine, &other.key), node.clone(), "anti-affinity broken");
                    }
                }
                if let Some(max_skew) = skew {
                    let zone = engine.node(engine.node_id(&node).expect("id")).expect("node").labels[ZONE].clone();
                    let min = counts_before.values().min().copied().unwrap_or(0);
                    prop_assert!(counts_before[&zone] + 1 - min <= max_skew, "skew broken: {counts_before:?} + {zone}");
                }
                placed.push(pod);
            }
            if leave && !placed.is_empty() {
                let gone = placed.remove(i % placed.len());
                engine.forget(&gone.key);
            }
        }
    }
}

/// Pods of `pod`'s app per zone (every zone that has a node, with zero where none run).
fn zone_counts(engine: &Engine, placed: &[Pod], pod: &Pod) -> BTreeMap<String, u32> {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for id in engine.node_ids() {
        counts.entry(engine.node(id).expect("node").labels[ZONE].clone()).or_insert(0);
    }
    for other in placed.iter().filter(|o| o.labels == pod.labels) {
        let node = engine.node(engine.placement_of(&other.key).expect("placed").node).expect("node");
        *counts.entry(node.labels[ZONE].clone()).or_default() += 1;
    }
    counts
}
