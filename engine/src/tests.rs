//! Decisions of the engine through its public API.

use crate::{
    Engine, Policy,
    model::{GpuRequest, Node, Pod, Resources, Taint, TaintEffect},
    tenants::{Tenant, Usage},
};

const GIB: u64 = 1 << 30;

pub(crate) fn node(name: &str, cpu: u64, gpus: u8) -> Node {
    let mut node = Node::new(
        name,
        Resources { cpu_milli: cpu, memory_bytes: 256 * GIB, pods: 110, ..Default::default() },
    );
    node.gpus = gpus;
    node
}

pub(crate) fn pod(key: &str, cpu: u64, gpu: GpuRequest) -> Pod {
    let mut pod = Pod::new(key, Resources::new(cpu, GIB));
    pod.gpu = gpu;
    pod
}

#[test]
fn placing_and_forgetting_keeps_the_books() {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    let a = engine.upsert_node(node("a", 16_000, 2));
    let placement = engine.schedule(&pod("p1", 4_000, GpuRequest::Fraction(500))).expect("fits");
    assert_eq!(placement.node, a);
    assert_eq!(engine.gpu_milli(), (2000, 500));
    let (free, gpus) = engine.free(a).expect("node a");
    assert_eq!(free.cpu_milli, 12_000);
    assert_eq!(gpus.total(), 1500);
    assert!(engine.forget("p1"));
    assert!(!engine.forget("p1"), "a pod is forgotten once");
    assert_eq!(engine.gpu_milli(), (2000, 0));
    assert_eq!(engine.free(a).map(|(free, _)| free.cpu_milli), Some(16_000));
}

#[test]
fn a_node_overcommitted_by_pods_bound_elsewhere_gets_back_exactly_what_leaves() {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    let a = engine.upsert_node(node("a", 8_000, 0));
    let placement = crate::Placement { node: a, gpus: Vec::new() };
    engine.assume(&pod("absurd", 1 << 62, GpuRequest::None), &placement);
    engine.assume(&pod("small", 1_000, GpuRequest::None), &placement);
    assert_eq!(engine.free(a).map(|(free, _)| free.cpu_milli), Some(0));
    engine.forget("absurd");
    assert_eq!(
        engine.free(a).map(|(free, _)| free.cpu_milli),
        Some(7_000),
        "the small pod still holds its CPU"
    );
}

#[test]
fn pods_bound_before_the_engine_started_are_the_workload_it_measures() {
    // A restarted scheduler learns the pods already bound; it never asked about them.
    let mut engine = Engine::new(Policy::Yiyun, 1);
    let a = engine.upsert_node(node("a", 16_000, 2));
    assert_eq!(engine.fragmentation(), 0.0, "nothing measured yet");
    let placement = crate::Placement { node: a, gpus: vec![(0, 1000)] };
    engine.assume(&pod("bound", 14_000, GpuRequest::Whole(1)), &placement);
    // Against pods like the bound one, the GPU left beside 2,000 milli of CPU is stranded.
    assert_eq!(engine.fragmentation(), 1000.0);
}

#[test]
fn absurd_requests_neither_wrap_nor_fit_and_are_explained() {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    engine.upsert_node(node("a", 8_000, 0));
    let mut requests = Resources::new(u64::MAX, u64::MAX);
    requests.add(&Resources::new(u64::MAX, 1));
    assert_eq!((requests.cpu_milli, requests.memory_bytes), (u64::MAX, u64::MAX), "saturated, not wrapped");
    let huge = Pod::new("huge", requests);
    let explanation = engine.schedule(&huge).expect_err("fits nowhere");
    assert_eq!(explanation.to_string(), "0/1 nodes: 1 insufficient cpu");
    assert_eq!(explanation.label(), "insufficient_cpu", "the metric label names the kind, not the amount");
}

#[test]
fn a_fraction_fills_a_partly_used_gpu_before_an_idle_one() {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    engine.upsert_node(node("a", 64_000, 2));
    let first = engine.schedule(&pod("p1", 1_000, GpuRequest::Fraction(500))).expect("fits");
    let second = engine.schedule(&pod("p2", 1_000, GpuRequest::Fraction(500))).expect("fits");
    assert_eq!(first.gpus[0].0, second.gpus[0].0, "both halves share one device");
    // The other device is still whole for a pod that needs a whole GPU.
    assert!(engine.schedule(&pod("p3", 1_000, GpuRequest::Whole(1))).is_ok());
}

#[test]
fn an_unplaceable_pod_is_explained_by_counting_nodes() {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    for index in 0..3 {
        engine.upsert_node(node(&format!("gpu-{index}"), 32_000, 1));
    }
    let mut tainted = node("dedicated", 64_000, 8);
    tainted.taints.push(Taint {
        key: "yiyun.io/dedicated".into(),
        value: "wuhu-dsj".into(),
        effect: TaintEffect::NoSchedule,
    });
    engine.upsert_node(tainted);
    engine.upsert_node(node("small", 2_000, 4));
    let explanation = engine.decide(&pod("big", 8_000, GpuRequest::Whole(4))).expect_err("nowhere to go");
    assert_eq!(
        explanation.to_string(),
        "0/5 nodes: 3 insufficient nvidia.com/gpu, 1 untolerated taint yiyun.io/dedicated, 1 insufficient cpu"
    );
}

#[test]
fn a_tenant_at_its_max_waits_whatever_the_nodes() {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    engine.upsert_node(node("a", 64_000, 0));
    engine.upsert_tenant(Tenant {
        name: "wuhu-dsj".into(),
        parent: None,
        guaranteed: Usage::default(),
        max: Usage { cpu_milli: 64_000, ..Usage::UNLIMITED },
        allowed_regions: Vec::new(),
    });
    let mut first = pod("p1", 60_000, GpuRequest::None);
    first.tenant = Some("wuhu-dsj".into());
    engine.schedule(&first).expect("within max");
    let mut second = pod("p2", 4_000, GpuRequest::None);
    second.tenant = Some("wuhu-dsj".into());
    second.key = "p2".into();
    engine.schedule(&second).expect("exactly at max");
    let mut third = pod("p3", 1_000, GpuRequest::None);
    third.tenant = Some("wuhu-dsj".into());
    let explanation = engine.decide(&third).expect_err("over max");
    assert_eq!(explanation.to_string(), "tenant wuhu-dsj at max cpu 64/64");
    assert_eq!(explanation.label(), "tenant_quota");
    engine.forget("p2");
    assert!(engine.decide(&third).is_ok(), "room again once a pod finished");
}

#[test]
fn first_fit_takes_nodes_in_order_and_best_fit_the_fullest() {
    let mut first_fit = Engine::new(Policy::FirstFit, 1);
    let mut best_fit = Engine::new(Policy::BestFit, 1);
    for engine in [&mut first_fit, &mut best_fit] {
        engine.upsert_node(node("roomy", 64_000, 8));
        engine.upsert_node(node("tight", 8_000, 1));
    }
    let placed = |engine: &mut Engine| {
        let placement = engine.schedule(&pod("p", 4_000, GpuRequest::Whole(1))).expect("fits");
        engine.node(placement.node).map(|node| node.name.clone())
    };
    assert_eq!(placed(&mut first_fit).as_deref(), Some("roomy"));
    assert_eq!(placed(&mut best_fit).as_deref(), Some("tight"));
}

#[test]
fn removing_a_node_forgets_its_pods() {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    engine.upsert_node(node("a", 8_000, 1));
    engine.schedule(&pod("p1", 1_000, GpuRequest::Whole(1))).expect("fits");
    assert_eq!(engine.remove_node("a"), vec!["p1".to_string()]);
    assert_eq!(engine.pod_count(), 0);
    assert_eq!(engine.gpu_milli(), (0, 0));
    let explanation = engine.decide(&pod("p2", 1_000, GpuRequest::None)).expect_err("no nodes");
    assert_eq!(explanation.to_string(), "0/0 nodes");
}

mod gangs {
    use super::*;
    use crate::gang::{Gang, Level, Mode};

    /// `racks` racks of `per_rack` 8-GPU nodes at one site.
    fn racked(racks: usize, per_rack: usize) -> Engine {
        let mut engine = Engine::new(Policy::Yiyun, 7);
        for rack in 0..racks {
            for index in 0..per_rack {
                let mut node = node(&format!("r{rack}-n{index}"), 96_000, 8);
                node.topology.site = "qingyang".into();
                node.topology.region = "gansu".into();
                node.topology.rack = format!("r{rack}");
                engine.upsert_node(node);
            }
        }
        engine
    }

    fn members(gang: &str, count: usize, gpus: u8) -> Vec<Pod> {
        (0..count)
            .map(|index| {
                let mut pod = pod(&format!("{gang}-{index}"), 8_000, GpuRequest::Whole(gpus));
                pod.gang = Some(gang.into());
                pod
            })
            .collect()
    }

    fn racks_of(engine: &Engine, pods: &[Pod]) -> std::collections::BTreeSet<String> {
        pods.iter()
            .filter_map(|pod| engine.placement_of(&pod.key))
            .filter_map(|placement| engine.node(placement.node).map(|node| node.topology.rack.clone()))
            .collect()
    }

    #[test]
    fn a_required_gang_lands_in_one_rack() {
        let mut engine = racked(4, 4);
        // Fill half of rack r0 so the gang has to choose.
        for index in 0..2 {
            let mut blocker = pod(&format!("blocker-{index}"), 8_000, GpuRequest::Whole(8));
            blocker.key = format!("blocker-{index}");
            engine.schedule(&blocker).expect("fits");
        }
        let gang =
            Gang { name: "train".into(), min_member: 16, topology: Some((Level::Rack, Mode::Required)) };
        let pods = members("train", 16, 2);
        let placements = engine.schedule_gang(&gang, &pods).expect("32 GPUs in one rack");
        assert_eq!(placements.len(), 16);
        assert_eq!(racks_of(&engine, &pods).len(), 1, "all in one rack");
        let nodes: std::collections::BTreeSet<_> = placements.iter().map(|p| p.node).collect();
        assert_eq!(nodes.len(), 4, "packed four pods to a node");
    }

    #[test]
    fn a_gang_that_fits_no_rack_takes_nothing_and_says_why() {
        let mut engine = racked(2, 2);
        let gang = Gang { name: "big".into(), min_member: 12, topology: Some((Level::Rack, Mode::Required)) };
        let pods = members("big", 12, 2);
        let explanation = engine.schedule_gang(&gang, &pods).expect_err("a rack holds 8");
        assert_eq!(explanation.to_string(), "gang needs 12 in one rack, best rack has 8");
        assert_eq!(engine.pod_count(), 0, "nothing held while waiting");
        assert_eq!(engine.gpu_milli().1, 0);
    }

    #[test]
    fn a_preferred_gang_uses_as_few_racks_as_it_can() {
        let mut engine = racked(3, 2);
        let gang =
            Gang { name: "wide".into(), min_member: 12, topology: Some((Level::Rack, Mode::Preferred)) };
        let pods = members("wide", 12, 2);
        engine.schedule_gang(&gang, &pods).expect("18 GPUs over racks");
        assert_eq!(racks_of(&engine, &pods).len(), 2, "8 + 4 pods");
    }

    #[test]
    fn a_gang_without_topology_is_still_all_or_nothing() {
        let mut engine = racked(1, 1);
        let gang = Gang { name: "nine".into(), min_member: 9, topology: None };
        let explanation = engine.schedule_gang(&gang, &members("nine", 9, 1)).expect_err("8 GPUs only");
        assert_eq!(explanation.to_string(), "gang needs 9 placed together, room for 8");
        assert_eq!(engine.pod_count(), 0);
    }
}

mod preemption {
    use super::*;

    fn tenant(name: &str, guaranteed_cpu: u64) -> Tenant {
        Tenant {
            name: name.into(),
            parent: None,
            guaranteed: Usage { cpu_milli: guaranteed_cpu, ..Usage::UNLIMITED },
            max: Usage::UNLIMITED,
            allowed_regions: Vec::new(),
        }
    }

    fn owned(key: &str, tenant: &str, cpu: u64, priority: i32) -> Pod {
        let mut pod = pod(key, cpu, GpuRequest::None);
        pod.tenant = Some(tenant.into());
        pod.priority = priority;
        pod
    }

    fn engine_with(tenants: &[Tenant]) -> Engine {
        let mut engine = Engine::new(Policy::Yiyun, 1);
        engine.upsert_node(node("a", 8_000, 0));
        for tenant in tenants {
            engine.upsert_tenant(tenant.clone());
        }
        engine
    }

    #[test]
    fn a_higher_priority_pod_evicts_the_fewest_lower_ones() {
        let mut engine = engine_with(&[tenant("dsj", 64_000)]);
        for pod in [
            owned("low-big", "dsj", 4_000, 0),
            owned("low-small", "dsj", 2_000, 0),
            owned("mid", "dsj", 2_000, 5),
        ] {
            engine.schedule(&pod).expect("fits");
        }
        let urgent = owned("urgent", "dsj", 4_000, 10);
        assert!(engine.decide(&urgent).is_err(), "the node is full");
        let preemption = engine.preempt(&urgent, 0).expect("room by preemption");
        assert_eq!(preemption.victims, vec!["low-big".to_string()]);
        assert!(engine.placement_of("urgent").is_some());
        assert!(engine.placement_of("low-big").is_none());
        assert!(engine.placement_of("mid").is_some(), "only what was needed");
    }

    #[test]
    fn nobody_is_evicted_for_nothing() {
        let mut engine = engine_with(&[tenant("dsj", 64_000)]);
        engine.schedule(&owned("low", "dsj", 8_000, 0)).expect("fits");
        let mut gpu_pod = owned("gpu", "dsj", 1_000, 10);
        gpu_pod.gpu = GpuRequest::Whole(1);
        assert_eq!(engine.plan_preemption(&gpu_pod), None, "evicting CPU pods frees no GPU");
        assert!(engine.preempt(&gpu_pod, 0).is_err());
        assert!(engine.placement_of("low").is_some());
        // Equal priority within a tenant is never preempted either.
        assert_eq!(engine.plan_preemption(&owned("peer", "dsj", 1_000, 0)), None);
    }

    #[test]
    fn daemon_and_mirror_pods_are_never_victims_and_never_preempting_pods_never_preempt() {
        let mut engine = engine_with(&[tenant("dsj", 64_000)]);
        let mut daemon = owned("daemon", "dsj", 8_000, 0);
        daemon.evictable = false;
        engine.schedule(&daemon).expect("fits");
        assert_eq!(engine.plan_preemption(&owned("urgent", "dsj", 4_000, 10)), None);

        let mut engine = engine_with(&[tenant("dsj", 64_000)]);
        engine.schedule(&owned("low", "dsj", 8_000, 0)).expect("fits");
        let mut polite = owned("polite", "dsj", 4_000, 10);
        polite.preempts = false;
        assert_eq!(engine.plan_preemption(&polite), None);
        let refused = engine.preempt(&polite, 0).expect_err("waits");
        assert!(refused.to_string().contains("preemptionPolicy Never"), "{refused}");
        assert!(engine.placement_of("low").is_some());
    }

    #[test]
    fn another_tenants_pod_is_no_victim_of_priority_alone() {
        let mut engine = engine_with(&[tenant("edu", 64_000), tenant("health", 64_000)]);
        engine.schedule(&owned("theirs", "health", 8_000, 0)).expect("fits");
        assert_eq!(
            engine.plan_preemption(&owned("mine", "edu", 4_000, 1_000)),
            None,
            "health is within its guarantee"
        );
    }

    #[test]
    fn a_lender_takes_back_its_guarantee_from_a_borrower() {
        let mut engine = engine_with(&[tenant("lender", 4_000), tenant("borrower", 2_000)]);
        engine.schedule(&owned("borrowed-1", "borrower", 4_000, 100)).expect("idle capacity");
        engine.schedule(&owned("borrowed-2", "borrower", 4_000, 100)).expect("idle capacity");
        let preemption = engine.preempt(&owned("mine", "lender", 4_000, 0), 0).expect("reclaim");
        assert_eq!(preemption.victims.len(), 1, "one borrowed pod frees enough");
        // The borrower is now at 4 of its 2 guaranteed: still borrowing, but the lender is at its
        // guarantee, so a further pod of the lender reclaims nothing.
        assert_eq!(engine.plan_preemption(&owned("more", "lender", 4_000, 0)), None);
    }

    #[test]
    fn evictions_are_rate_limited() {
        let mut engine = engine_with(&[tenant("dsj", 64_000)]);
        engine.set_evictions_per_minute(1);
        engine.schedule(&owned("low-1", "dsj", 4_000, 0)).expect("fits");
        engine.schedule(&owned("low-2", "dsj", 4_000, 0)).expect("fits");
        let first = engine.preempt(&owned("high-1", "dsj", 4_000, 10), 100).expect("first eviction");
        assert_eq!(first.victims, vec!["low-2".to_string()], "the latest placed has lost the least work");
        let refused =
            engine.preempt(&owned("high-2", "dsj", 4_000, 10), 130).expect_err("second within a minute");
        assert_eq!(
            refused.to_string(),
            "preemption rate-limited: 1 pods evicted in the last minute, at most 1"
        );
        assert!(engine.placement_of("low-1").is_some());
        engine.preempt(&owned("high-2", "dsj", 4_000, 10), 161).expect("a minute later");
    }

    #[test]
    fn the_queue_serves_the_tenant_furthest_below_its_share_first() {
        let mut engine = engine_with(&[tenant("busy", 4_000), tenant("idle", 4_000)]);
        engine.schedule(&owned("running", "busy", 2_000, 0)).expect("fits");
        let mut queue = vec![owned("busy-next", "busy", 1_000, 5), owned("idle-next", "idle", 1_000, 0)];
        engine.queue_order(&mut queue);
        let keys: Vec<&str> = queue.iter().map(|pod| pod.key.as_str()).collect();
        assert_eq!(keys, vec!["idle-next", "busy-next"], "share before priority across tenants");
    }
}

mod reservations {
    use super::*;
    use crate::gang::{Gang, Level, Mode};

    fn timed(key: &str, gpus: u8, runtime: Option<u64>) -> Pod {
        let mut pod = pod(key, 4_000, GpuRequest::Whole(gpus));
        pod.expected_runtime_seconds = runtime;
        pod
    }

    #[test]
    fn a_blocked_gang_reserves_and_only_shorter_pods_backfill() {
        let mut engine = Engine::new(Policy::Yiyun, 1);
        for name in ["a", "b"] {
            let mut node = node(name, 96_000, 8);
            node.topology.site = "qingyang".into();
            engine.upsert_node(node);
        }
        engine.set_now(0);
        engine.schedule(&timed("running", 8, Some(100))).expect("one node busy until t=100");
        let gang =
            Gang { name: "train".into(), min_member: 16, topology: Some((Level::Site, Mode::Required)) };
        let members: Vec<Pod> = (0..16)
            .map(|index| {
                let mut pod = timed(&format!("train-{index}"), 1, Some(3600));
                pod.gang = Some("train".into());
                pod
            })
            .collect();
        assert!(engine.schedule_gang(&gang, &members).is_err(), "only 8 GPUs free now");
        let reservation = engine.reserve(&gang, &members).expect("room at t=100");
        assert_eq!(reservation.starts_at, 100);
        assert_eq!(reservation.nodes.len(), 2);

        engine.set_now(10);
        let long = timed("long", 2, Some(500));
        let explanation = engine.decide(&long).expect_err("would still run when the gang starts");
        assert_eq!(
            explanation.to_string(),
            "0/2 nodes: 1 insufficient nvidia.com/gpu, 1 reserved for a gang"
        );
        assert!(engine.decide(&timed("unknown-runtime", 2, None)).is_err(), "no runtime, no backfill");
        engine.schedule(&timed("short", 2, Some(80))).expect("ends at 90, before the gang");

        engine.set_now(100);
        engine.forget("running");
        engine.forget("short");
        engine.schedule_gang(&gang, &members).expect("the gang starts");
        assert_eq!(engine.reservation_of(0), None, "released once placed");
        assert!(engine.decide(&long).is_err(), "the cluster is the gang's now");
    }

    #[test]
    fn no_reservation_without_known_runtimes() {
        let mut engine = Engine::new(Policy::Yiyun, 1);
        engine.upsert_node(node("a", 96_000, 8));
        engine.schedule(&timed("forever", 8, None)).expect("fits");
        let gang = Gang { name: "g".into(), min_member: 2, topology: None };
        let members = vec![timed("g-0", 4, Some(10)), timed("g-1", 4, Some(10))];
        assert_eq!(engine.reserve(&gang, &members), None);
        assert_eq!(engine.reservation_of(0), None, "nothing held");
    }
}

#[test]
fn replicas_spread_over_racks_then_nodes() {
    let mut engine = Engine::new(Policy::Yiyun, 1);
    for (name, rack) in [("r1-a", "r1"), ("r1-b", "r1"), ("r2-a", "r2")] {
        let mut node = node(name, 32_000, 0);
        node.topology.rack = rack.into();
        engine.upsert_node(node);
    }
    let replica = |index: usize| {
        let mut pod = pod(&format!("web-{index}"), 1_000, GpuRequest::None);
        pod.spread_key = Some("zwfw/web".into());
        pod
    };
    let mut nodes = Vec::new();
    for index in 0..3 {
        let placement = engine.schedule(&replica(index)).expect("fits");
        nodes.push(engine.node(placement.node).map(|node| node.name.clone()).unwrap_or_default());
    }
    assert_eq!(
        nodes[..2].iter().filter(|name| name.starts_with("r1")).count(),
        1,
        "one per rack first: {nodes:?}"
    );
    let distinct: std::collections::BTreeSet<_> = nodes.iter().collect();
    assert_eq!(distinct.len(), 3, "then one per node: {nodes:?}");
}

#[test]
fn gpus_by_site_add_up_to_the_cluster_and_show_where_fragments_lie() {
    use crate::gpu::{Shape, Workload};
    let mut engine = Engine::new(Policy::Yiyun, 1);
    let whole_gpu = Shape { cpu_milli: 1_000, gpu: GpuRequest::Whole(1), gpu_models: Vec::new() };
    engine.set_workload(Workload::from_counts([(whole_gpu, 1.0)], 1.0));
    for (name, site, gpus) in
        [("a1", "qingyang", 8), ("a2", "qingyang", 8), ("b1", "guiyang", 4), ("c1", "hangzhou", 0)]
    {
        let mut node = node(name, 64_000, gpus);
        node.topology.site = site.into();
        engine.upsert_node(node);
    }
    let half = pod("half", 1_000, GpuRequest::Fraction(500));
    let placement = engine.schedule(&half).expect("fits");
    let site_of_half = engine.node(placement.node).map(|node| node.topology.site.clone()).expect("placed");

    let sites = engine.gpus_by_site();
    assert_eq!(sites.keys().collect::<Vec<_>>(), ["guiyang", "qingyang"], "a site without GPUs is left out");
    assert_eq!(sites["qingyang"].capacity_milli, 16_000);
    assert_eq!(sites["guiyang"].capacity_milli, 4_000);
    let allocated: u64 = sites.values().map(|site| site.allocated_milli).sum();
    assert_eq!(allocated, 500);
    assert_eq!(sites[&site_of_half].allocated_milli, 500);
    // The half GPU left on the shared device fits no whole-GPU pod: that site holds the fragment.
    assert_eq!(sites[&site_of_half].fragmentation_milli, 500.0);
    let total: f64 = sites.values().map(|site| site.fragmentation_milli).sum();
    assert_eq!(total, engine.fragmentation());
}
