//! Properties of the engine over random clusters and random sequences of operations.

use proptest::prelude::*;
use yiyun_engine::{
    Engine, Policy,
    gang::{Gang, Level, Mode},
    model::{GpuRequest, Node, Pod, Resources},
    tenants::{Tenant, Usage},
};

const GIB: u64 = 1 << 30;

#[derive(Clone, Debug)]
enum Op {
    Place { cpu: u64, memory_gib: u64, gpu: GpuRequest, tenant: usize },
    Gang { size: usize, gpus: u8, level: Option<(Level, Mode)>, tenant: usize },
    Finish { pick: usize },
}

fn gpu_request() -> impl Strategy<Value = GpuRequest> {
    prop_oneof![
        Just(GpuRequest::None),
        (1u8..=8).prop_map(GpuRequest::Whole),
        (1u16..=999).prop_map(GpuRequest::Fraction),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (500u64..=32_000, 1u64..=64, gpu_request(), 0usize..4)
            .prop_map(|(cpu, memory_gib, gpu, tenant)| Op::Place { cpu, memory_gib, gpu, tenant }),
        1 => (2usize..=12, 1u8..=4, prop_oneof![
                Just(None),
                Just(Some((Level::Rack, Mode::Required))),
                Just(Some((Level::Site, Mode::Preferred))),
            ], 0usize..4)
            .prop_map(|(size, gpus, level, tenant)| Op::Gang { size, gpus, level, tenant }),
        2 => any::<usize>().prop_map(|pick| Op::Finish { pick }),
    ]
}

/// (cpu milli, memory GiB, GPUs) of each node.
fn cluster() -> impl Strategy<Value = Vec<(u64, u64, u8)>> {
    prop::collection::vec(
        (prop_oneof![Just(8_000u64), Just(32_000), Just(96_000)], 16u64..=512, 0u8..=8),
        1..24,
    )
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::FirstFit),
        Just(Policy::BestFit),
        Just(Policy::Spread),
        Just(Policy::Fgd),
        Just(Policy::Yiyun)
    ]
}

const TENANT_NAMES: [&str; 4] = ["wuhu-dsj", "wuhu-gaj", "hefei-dsj", "hefei-wjw"];

/// Two cities with two departments each, every max well below what the nodes hold.
fn tenants() -> Vec<Tenant> {
    let tenant = |name: &str, parent: Option<&str>, cpu: u64, gpu: u64| Tenant {
        name: name.into(),
        parent: parent.map(Into::into),
        guaranteed: Usage { cpu_milli: cpu / 2, memory_bytes: u64::MAX, gpu_milli: gpu / 2 },
        max: Usage { cpu_milli: cpu, memory_bytes: u64::MAX, gpu_milli: gpu },
        allowed_regions: Vec::new(),
    };
    vec![
        tenant("wuhu", None, 120_000, 16_000),
        tenant("hefei", None, 120_000, 16_000),
        tenant("wuhu-dsj", Some("wuhu"), 80_000, 12_000),
        tenant("wuhu-gaj", Some("wuhu"), 80_000, 12_000),
        tenant("hefei-dsj", Some("hefei"), 80_000, 12_000),
        tenant("hefei-wjw", Some("hefei"), 80_000, 12_000),
    ]
}

/// Runs the operations; returns every pod ever placed, in order, with its node.
fn run(policy: Policy, seed: u64, nodes: &[(u64, u64, u8)], ops: &[Op], check: bool) -> Vec<(String, u32)> {
    let mut engine = Engine::new(policy, seed);
    for (index, &(cpu, memory_gib, gpus)) in nodes.iter().enumerate() {
        let mut node = Node::new(
            format!("n{index}"),
            Resources { cpu_milli: cpu, memory_bytes: memory_gib * GIB, pods: 110, ..Default::default() },
        );
        node.gpus = gpus;
        node.topology.site = format!("site-{}", index % 2);
        node.topology.rack = format!("rack-{}", index % 4);
        engine.upsert_node(node);
    }
    for tenant in tenants() {
        engine.upsert_tenant(tenant);
    }
    let mut placed: Vec<String> = Vec::new();
    let mut history = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Place { cpu, memory_gib, gpu, tenant } => {
                let mut pod = Pod::new(format!("p{step}"), Resources::new(*cpu, memory_gib * GIB));
                pod.gpu = *gpu;
                pod.tenant = Some(TENANT_NAMES[*tenant].into());
                if let Ok(placement) = engine.schedule(&pod) {
                    placed.push(pod.key.clone());
                    history.push((pod.key, placement.node));
                }
            }
            Op::Gang { size, gpus, level, tenant } => {
                let gang = Gang { name: format!("g{step}"), min_member: *size, topology: *level };
                let members: Vec<Pod> = (0..*size)
                    .map(|index| {
                        let mut pod = Pod::new(format!("g{step}-{index}"), Resources::new(2_000, 4 * GIB));
                        pod.gpu = GpuRequest::Whole(*gpus);
                        pod.tenant = Some(TENANT_NAMES[*tenant].into());
                        pod
                    })
                    .collect();
                let result = engine.schedule_gang(&gang, &members);
                let placed_members =
                    members.iter().filter(|pod| engine.placement_of(&pod.key).is_some()).count();
                if check {
                    // All or nothing.
                    match &result {
                        Ok(placements) => {
                            assert_eq!(placements.len(), *size);
                            assert_eq!(placed_members, *size);
                        }
                        Err(_) => assert_eq!(placed_members, 0, "a failed gang holds nothing"),
                    }
                    if let (Ok(placements), Some((level, Mode::Required))) = (&result, level) {
                        let domains: std::collections::BTreeSet<String> = placements
                            .iter()
                            .filter_map(|p| engine.node(p.node))
                            .map(|node| match level {
                                Level::Rack => format!("{}/{}", node.topology.site, node.topology.rack),
                                Level::Site => node.topology.site.clone(),
                                Level::Region => node.topology.region.clone(),
                            })
                            .collect();
                        assert_eq!(domains.len(), 1, "a required gang stays in one {}", level.name());
                    }
                }
                if let Ok(placements) = result {
                    for (pod, placement) in members.iter().zip(placements) {
                        placed.push(pod.key.clone());
                        history.push((pod.key.clone(), placement.node));
                    }
                }
            }
            Op::Finish { pick } => {
                if !placed.is_empty() {
                    let key = placed.swap_remove(pick % placed.len());
                    assert!(engine.forget(&key));
                }
            }
        }
        if check {
            assert_no_node_overcommitted(&engine);
            assert_tenants_within_max(&engine);
        }
    }
    history
}

fn assert_no_node_overcommitted(engine: &Engine) {
    for id in engine.node_ids() {
        let Some(node) = engine.node(id) else { continue };
        let pods = engine.pods_on(id);
        let cpu: u64 = pods.iter().map(|pod| pod.requests.cpu_milli).sum();
        let memory: u64 = pods.iter().map(|pod| pod.requests.memory_bytes).sum();
        assert!(
            cpu <= node.allocatable.cpu_milli,
            "{}: cpu {cpu} of {}",
            node.name,
            node.allocatable.cpu_milli
        );
        assert!(memory <= node.allocatable.memory_bytes, "{}: memory over", node.name);
        assert!(pods.len() as u64 <= node.allocatable.pods);
        let mut devices = vec![0u32; usize::from(node.gpus)];
        for pod in &pods {
            for &(device, milli) in &pod.gpus {
                devices[usize::from(device)] += u32::from(milli);
            }
        }
        assert!(devices.iter().all(|&used| used <= 1000), "{}: GPU devices {devices:?}", node.name);
    }
}

fn assert_tenants_within_max(engine: &Engine) {
    for tenant in tenants() {
        let usage = engine.tenants().subtree_usage(&tenant.name);
        assert!(!usage.exceeds(tenant.max), "{} holds {usage:?}, max {:?}", tenant.name, tenant.max);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn nodes_gangs_and_tenants_keep_their_limits(
        policy in policy(),
        seed in any::<u64>(),
        nodes in cluster(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(policy, seed, &nodes, &ops, true);
    }

    #[test]
    fn the_same_seed_gives_the_same_placements(
        policy in policy(),
        seed in any::<u64>(),
        nodes in cluster(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let first = run(policy, seed, &nodes, &ops, false);
        let second = run(policy, seed, &nodes, &ops, false);
        prop_assert_eq!(first, second);
    }
}
