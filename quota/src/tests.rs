//! Tests of the tenant tree plan.

use std::collections::BTreeMap;

use crate::*;

fn amounts(pairs: &[(Resource, &str)]) -> Amounts {
    pairs.iter().map(|(r, q)| (*r, Milli::parse(q).unwrap())).collect()
}

fn cpu(q: &str) -> Amounts {
    amounts(&[(Resource::Cpu, q)])
}

fn node(
    name: &str,
    parent: Option<&str>,
    level: Level,
    guaranteed: Amounts,
    max: Amounts,
    namespaces: &[&str],
) -> TenantNode {
    TenantNode {
        name: name.into(),
        parent: parent.map(Into::into),
        level,
        guaranteed,
        max,
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        standing: Standing::New,
        seniority: format!("2026-01-01T00:00:{:02}Z", name.len()),
        allowed_regions: Vec::new(),
    }
}

fn owned(owner: &str, used: Amounts) -> ObservedNamespace {
    ObservedNamespace { owner: Some(owner.into()), used, ..ObservedNamespace::default() }
}

/// 安徽省 > 芜湖市 > {数据局, 鸠江区 > {教育局, 卫健委}}
fn anhui() -> World {
    World {
        tenants: vec![
            node("anhui", None, Level::Province, cpu("2000"), cpu("4000"), &[]),
            node("wuhu", Some("anhui"), Level::City, cpu("400"), cpu("800"), &["wuhu-shared"]),
            node("wuhu-data", Some("wuhu"), Level::Department, cpu("100"), cpu("200"), &["data-a", "data-b"]),
            node("jiujiang", Some("wuhu"), Level::County, cpu("100"), cpu("200"), &[]),
            node("jj-edu", Some("jiujiang"), Level::Department, cpu("40"), cpu("80"), &["edu"]),
            node("jj-health", Some("jiujiang"), Level::Department, cpu("40"), cpu("80"), &["health"]),
        ],
        namespaces: BTreeMap::new(),
    }
}

fn problem(plan: &Plan, tenant: &str) -> Option<Problem> {
    plan.get(tenant).unwrap().problem.clone()
}

#[test]
fn a_valid_tree_has_paths_children_and_no_problems() {
    let plan = plan(&anhui());
    for (name, tenant) in &plan.tenants {
        assert_eq!(tenant.problem, None, "{name}");
    }
    assert_eq!(plan.get("jj-edu").unwrap().path, ["anhui", "wuhu", "jiujiang", "jj-edu"]);
    assert_eq!(plan.get("wuhu").unwrap().children, ["jiujiang", "wuhu-data"]);
    assert_eq!(plan.get("anhui").unwrap().children, ["wuhu"]);
}

#[test]
fn region_rules_gather_every_list_down_the_tree_so_a_child_cannot_widen_its_parents() {
    let mut world = anhui();
    let regions = |list: &[&str]| list.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    world.tenants[0].allowed_regions = regions(&["east"]);
    world.tenants[3].allowed_regions = regions(&["anhui", "gansu"]);
    let plan = plan(&world);
    assert_eq!(plan.get("wuhu").unwrap().region_rules, [regions(&["east"])]);
    assert_eq!(plan.get("jj-edu").unwrap().region_rules, [regions(&["east"]), regions(&["anhui", "gansu"])]);
}

#[test]
fn usage_adds_up_the_tree() {
    let mut world = anhui();
    world.namespaces.insert("edu".into(), owned("jj-edu", cpu("10")));
    world.namespaces.insert("health".into(), owned("jj-health", cpu("5")));
    world.namespaces.insert("data-a".into(), owned("wuhu-data", cpu("1500m")));
    world.namespaces.insert("wuhu-shared".into(), owned("wuhu", cpu("2")));
    let plan = plan(&world);
    assert_eq!(plan.get("jiujiang").unwrap().own_usage, Amounts::default());
    assert_eq!(plan.get("jiujiang").unwrap().subtree_usage, cpu("15"));
    assert_eq!(plan.get("wuhu").unwrap().own_usage, cpu("2"));
    assert_eq!(plan.get("wuhu").unwrap().subtree_usage, cpu("18500m"));
    assert_eq!(plan.get("anhui").unwrap().subtree_usage, cpu("18500m"));
}

#[test]
fn each_tenant_knows_the_namespaces_labelled_as_its_own() {
    let mut world = anhui();
    world.namespaces.insert("edu".into(), owned("jj-edu", cpu("10")));
    // No longer in jj-edu's spec, still labelled: the reconcile must release it.
    world.namespaces.insert("edu-old".into(), owned("jj-edu", Amounts::default()));
    world.namespaces.insert("unmanaged".into(), ObservedNamespace::default());
    let plan = plan(&world);
    assert_eq!(plan.get("jj-edu").unwrap().owned, ["edu", "edu-old"]);
    assert!(plan.get("jj-health").unwrap().owned.is_empty());
}

#[test]
fn a_missing_parent_is_named_and_descendants_wait() {
    let mut world = anhui();
    world.tenants.push(node("orphan", Some("hefei"), Level::County, cpu("1"), cpu("1"), &[]));
    world.tenants.push(node("orphan-dept", Some("orphan"), Level::Department, cpu("1"), cpu("1"), &[]));
    let plan = plan(&world);
    let p = problem(&plan, "orphan").unwrap();
    assert_eq!(p.reason, "ParentNotFound");
    assert_eq!(p.message, "parent tenant \"hefei\" does not exist");
    let p = problem(&plan, "orphan-dept").unwrap();
    assert_eq!(p.reason, "ParentNotReady");
    assert!(
        p.message.contains("\"orphan\"") && p.message.contains("\"hefei\" does not exist"),
        "{}",
        p.message
    );
    assert!(plan.get("orphan").unwrap().path.is_empty());
}

#[test]
fn a_cycle_is_reported_with_its_members() {
    let mut world = anhui();
    world.tenants.push(node("a", Some("b"), Level::County, cpu("1"), cpu("1"), &[]));
    world.tenants.push(node("b", Some("a"), Level::County, cpu("1"), cpu("1"), &[]));
    world.tenants.push(node("c", Some("a"), Level::Department, cpu("1"), cpu("1"), &[]));
    let plan = plan(&world);
    assert_eq!(
        problem(&plan, "a").unwrap(),
        Problem { reason: "Cycle", message: "parents form a cycle: a -> b -> a".into() }
    );
    assert_eq!(problem(&plan, "b").unwrap().message, "parents form a cycle: b -> a -> b");
    assert_eq!(problem(&plan, "c").unwrap().reason, "ParentNotReady");
    assert_eq!(problem(&plan, "c").unwrap().message, "ancestors form a cycle: a -> b -> a");
    assert_eq!(problem(&plan, "anhui"), None, "the rest of the tree is unaffected");
}

#[test]
fn a_child_level_must_be_below_its_parent() {
    let mut world = anhui();
    world.tenants.push(node("hefei", Some("jiujiang"), Level::City, cpu("0"), cpu("1"), &[]));
    let p = problem(&plan(&world), "hefei").unwrap();
    assert_eq!(p.reason, "LevelNotBelowParent");
    assert!(p.message.contains("a city cannot be a child of county \"jiujiang\""), "{}", p.message);
}

#[test]
fn a_child_max_may_not_exceed_its_parent_or_an_inherited_ceiling() {
    let mut world = anhui();
    world.tenants.push(node("big", Some("wuhu"), Level::Department, cpu("0"), cpu("900"), &[]));
    let p = problem(&plan(&world), "big").unwrap();
    assert_eq!(p.reason, "MaxExceedsParent");
    assert_eq!(p.message, "quota.max[cpu] 900 exceeds 800 set by its parent \"wuhu\"");

    // jiujiang sets no memory ceiling, wuhu does: the grandchild inherits it.
    let mut world = anhui();
    world.tenants[1].max.set(Resource::Memory, Milli::parse("1Ti").unwrap());
    world.tenants[4].max.set(Resource::Memory, Milli::parse("2Ti").unwrap());
    let p = problem(&plan(&world), "jj-edu").unwrap();
    assert_eq!(
        p.message,
        "quota.max[memory] 2Ti exceeds 1Ti set by ancestor \"wuhu\", which bounds parent \"jiujiang\""
    );
}

#[test]
fn siblings_guarantees_may_not_exceed_the_parents_and_the_oldest_keep_theirs() {
    let mut world = anhui();
    let mut newcomer = node("jj-late", Some("jiujiang"), Level::Department, cpu("30"), cpu("80"), &[]);
    newcomer.seniority = "2026-06-01T00:00:00Z".into();
    world.tenants.push(newcomer);
    let plan = plan(&world);
    let p = problem(&plan, "jj-late").unwrap();
    assert_eq!(p.reason, "GuaranteeOvercommitted");
    assert_eq!(
        p.message,
        "the children of \"jiujiang\" would be guaranteed cpu 110 in total (jj-edu 40 + jj-health 40 + jj-late 30), more than \"jiujiang\"'s own guaranteed 100"
    );
    assert_eq!(problem(&plan, "jj-edu"), None);
    assert_eq!(problem(&plan, "jj-health"), None);
}

#[test]
fn incumbents_keep_their_guarantee_against_an_older_but_edited_sibling() {
    let mut world = anhui();
    // jj-edu was edited to ask for more; jj-health is Ready as it is.
    world.tenants[4].guaranteed = cpu("70");
    world.tenants[4].standing = Standing::Admitted;
    world.tenants[5].standing = Standing::Ready;
    world.tenants[5].seniority = "2030-01-01T00:00:00Z".into();
    let plan = plan(&world);
    assert_eq!(problem(&plan, "jj-health"), None);
    assert_eq!(problem(&plan, "jj-edu").unwrap().reason, "GuaranteeOvercommitted");
}

#[test]
fn a_sibling_fixing_an_unrelated_mistake_keeps_its_guarantee_against_a_newcomer() {
    let mut world = anhui();
    world.tenants[4].standing = Standing::Admitted;
    world.tenants[4].max = cpu("900"); // a typo: over its parent's 200
    world.tenants[5].standing = Standing::Ready;
    let mut newcomer = node("jj-new", Some("jiujiang"), Level::Department, cpu("30"), cpu("80"), &[]);
    newcomer.seniority = "2000-01-01T00:00:00Z".into();
    world.tenants.push(newcomer);
    let plan = plan(&world);
    assert_eq!(problem(&plan, "jj-edu").unwrap().reason, "MaxExceedsParent");
    assert_eq!(problem(&plan, "jj-new").unwrap().reason, "GuaranteeOvercommitted");
}

#[test]
fn a_guarantee_the_parent_does_not_have_is_overcommitted() {
    let mut world = anhui();
    world.tenants[4].guaranteed.set(Resource::Gpu, Milli::units(1));
    let p = problem(&plan(&world), "jj-edu").unwrap();
    assert!(p.message.contains("nvidia.com/gpu 1 in total"), "{}", p.message);
    assert!(p.message.contains("own guaranteed 0"), "{}", p.message);
}

#[test]
fn namespaces_go_to_the_most_senior_claimant_and_foreign_ones_are_refused() {
    let mut world = anhui();
    let mut late = node("jj-late", Some("jiujiang"), Level::Department, cpu("0"), cpu("1"), &["edu"]);
    late.seniority = "2027-01-01T00:00:00Z".into();
    world.tenants.push(late);
    let plan1 = plan(&world);
    assert_eq!(
        problem(&plan1, "jj-late").unwrap().message,
        "namespace \"edu\" is already claimed by tenant \"jj-edu\""
    );

    world.namespaces.insert("kube-system".into(), ObservedNamespace::default());
    world.tenants[5].namespaces.push("kube-system".into());
    let p = problem(&plan(&world), "jj-health").unwrap();
    assert_eq!(p.reason, "NamespaceNotOwned");
    assert!(
        p.message.contains("kubectl label namespace kube-system yiyun.io/tenant=jj-health"),
        "{}",
        p.message
    );

    world.namespaces.insert("kube-system".into(), ObservedNamespace { orphaned: true, ..Default::default() });
    assert_eq!(problem(&plan(&world), "jj-health"), None, "an orphaned namespace may be adopted");
}

#[test]
fn without_overcommit_every_namespace_may_use_its_tenants_whole_max() {
    let plan = plan(&anhui());
    assert_eq!(plan.get("jj-edu").unwrap().namespace_hard["edu"], cpu("80"));
    assert_eq!(plan.get("jj-health").unwrap().namespace_hard["health"], cpu("80"));
    // Two namespaces share their department's ceiling.
    let data = &plan.get("wuhu-data").unwrap().namespace_hard;
    assert_eq!(data["data-a"], cpu("100"));
    assert_eq!(data["data-b"], cpu("100"));
    // The city's own namespace gets what its children cannot take: 800 - 200 - 200.
    assert_eq!(plan.get("wuhu").unwrap().namespace_hard["wuhu-shared"], cpu("400"));
    assert_eq!(plan.get("wuhu-data").unwrap().allocated, cpu("200"));
    assert_eq!(plan.get("anhui").unwrap().allocated, cpu("4000"));
}

#[test]
fn a_lowered_root_ceiling_shrinks_what_every_subtree_is_allocated() {
    // The province shares 800 between its own namespace and the city (max 800), so the city
    // gets 400, which it shares between its two children (max 400 each).
    let mut world = anhui();
    world.tenants[0].max = cpu("800");
    world.tenants[0].namespaces = vec!["anhui-ns".into()];
    world.tenants[1].namespaces.clear();
    world.tenants[2].max = cpu("400");
    world.tenants[3].max = cpu("400");
    let plan = plan(&world);
    assert_eq!(plan.get("anhui").unwrap().allocated, cpu("800"));
    assert_eq!(plan.get("wuhu").unwrap().allocated, cpu("400"));
    assert_eq!(plan.get("wuhu-data").unwrap().allocated, cpu("200"));
    assert_eq!(plan.get("jiujiang").unwrap().allocated, cpu("200"));
    assert_eq!(plan.get("jj-edu").unwrap().allocated, cpu("80"), "within its own max");
}

#[test]
fn a_namespace_that_grows_gets_more_while_the_others_keep_room() {
    let mut world = anhui();
    world.namespaces.insert("data-a".into(), owned("wuhu-data", cpu("150")));
    let data = plan(&world).get("wuhu-data").unwrap().namespace_hard.clone();
    assert_eq!(data["data-a"], cpu("175"));
    assert_eq!(data["data-b"], cpu("25"));
}

#[test]
fn a_limit_grows_only_once_the_limits_that_make_room_for_it_have_shrunk() {
    // data-a's usage grew to its limit: the split now gives data-a 175 and data-b 25, but
    // data-b's quota still says 100. Raising data-a first would let the department admit 275.
    let mut world = anhui();
    let quota = |owner: &str, used: &str, hard: &str| ObservedNamespace {
        owner: Some(owner.into()),
        used: cpu(used),
        hard: cpu(hard),
        orphaned: false,
    };
    world.namespaces.insert("data-a".into(), quota("wuhu-data", "150", "150"));
    world.namespaces.insert("data-b".into(), quota("wuhu-data", "0", "100"));
    let held = plan(&world).get("wuhu-data").unwrap().namespace_hard.clone();
    assert_eq!(held["data-a"], cpu("150"), "the growth waits");
    assert_eq!(held["data-b"], cpu("25"), "the shrink goes first");

    // Once data-b's lower limit has landed, data-a grows.
    world.namespaces.insert("data-b".into(), quota("wuhu-data", "0", "25"));
    let grown = plan(&world).get("wuhu-data").unwrap().namespace_hard.clone();
    assert_eq!(grown["data-a"], cpu("175"));
    assert_eq!(grown["data-b"], cpu("25"));
}

#[test]
fn usage_beyond_a_lowered_ceiling_freezes_growth() {
    let mut world = anhui();
    world.namespaces.insert("edu".into(), owned("jj-edu", cpu("70")));
    world.tenants[4].max = cpu("50");
    let plan = plan(&world);
    assert_eq!(problem(&plan, "jj-edu"), None);
    assert_eq!(plan.get("jj-edu").unwrap().namespace_hard["edu"], cpu("70"));
}

#[test]
fn resources_without_a_ceiling_anywhere_are_left_unlimited() {
    let plan = plan(&anhui());
    assert_eq!(plan.get("jj-edu").unwrap().namespace_hard["edu"].get(Resource::Memory), None);
}

#[test]
fn the_whole_tree_counts_every_resource_any_of_its_tenants_names() {
    let mut world = anhui();
    // The root guarantees pods, one department bounds GPUs; a second tree names memory only.
    world.tenants[0].guaranteed.set(Resource::Pods, Milli::units(100));
    let health = world.tenants.iter_mut().find(|t| t.name == "jj-health").unwrap();
    health.max.set(Resource::Gpu, Milli::units(2));
    let memory = amounts(&[(Resource::Memory, "64Gi")]);
    world.tenants.push(node("hefei", None, Level::Province, Amounts::default(), memory, &["hf"]));
    let plan = plan(&world);
    for tenant in ["anhui", "wuhu", "wuhu-data", "jj-edu", "jj-health"] {
        assert_eq!(
            plan.get(tenant).unwrap().counted,
            [Resource::Cpu, Resource::Gpu, Resource::Pods],
            "{tenant}"
        );
    }
    assert_eq!(plan.get("hefei").unwrap().counted, [Resource::Memory]);
    // Counted is not bounded: only jj-health's subtree has a GPU ceiling.
    assert_eq!(plan.get("jj-edu").unwrap().namespace_hard["edu"].get(Resource::Gpu), None);
    assert_eq!(
        plan.get("jj-health").unwrap().namespace_hard["health"].get(Resource::Gpu),
        Some(Milli::units(2))
    );
}

#[test]
fn a_frozen_child_keeps_what_its_namespaces_admit() {
    let mut world = anhui();
    world.namespaces.insert(
        "edu".into(),
        ObservedNamespace { owner: Some("jj-edu".into()), used: cpu("10"), hard: cpu("80"), orphaned: false },
    );
    // jj-edu becomes invalid: its level is now equal to its parent's.
    world.tenants[4].level = Level::County;
    let plan = plan(&world);
    assert_eq!(problem(&plan, "jj-edu").unwrap().reason, "LevelNotBelowParent");
    assert!(plan.get("jj-edu").unwrap().namespace_hard.is_empty());
    // jiujiang's 200 minus the 80 edu may still admit leaves 120, of which health may take 80.
    assert_eq!(plan.get("jj-health").unwrap().namespace_hard["health"], cpu("80"));
}

#[test]
fn the_split_does_not_depend_on_which_sibling_came_first() {
    let mut world = anhui();
    world.tenants[1].namespaces.clear();
    // An odd milli-CPU to share: one sibling gets one more than the other.
    world.tenants[0].max = cpu("800.002");
    world.tenants[0].namespaces = vec!["anhui-ns".into()];
    world.tenants[2].max = cpu("400");
    world.tenants[3].max = cpu("400");
    let before = plan(&world);
    world.tenants[2].standing = Standing::Ready; // wuhu-data now goes first among the siblings
    let after = plan(&world);
    for name in ["wuhu-data", "jiujiang"] {
        assert_eq!(before.get(name).unwrap().allocated, after.get(name).unwrap().allocated, "{name}");
    }
}

#[test]
fn water_fill_shares_equally_within_rooms() {
    let m = |v: i128| Milli(v);
    assert_eq!(water_fill(m(100), &[None, None], m(1)), [m(50), m(50)]);
    assert_eq!(water_fill(m(100), &[Some(m(10)), None, None], m(1)), [m(10), m(45), m(45)]);
    assert_eq!(water_fill(m(10), &[Some(m(2)), Some(m(3))], m(1)), [m(2), m(3)]);
    assert_eq!(water_fill(m(7), &[None, None], m(1)), [m(4), m(3)]);
    assert_eq!(water_fill(m(2500), &[None, None], m(1000)), [m(1000), m(1000)]);
    assert_eq!(water_fill(m(-5), &[None], m(1)), [m(0)]);
    assert!(water_fill(m(5), &[], m(1)).is_empty());
}

/// A small deterministic generator, so the property test needs no dependency.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound.max(1)
    }
}

#[test]
fn no_subtree_can_ever_be_admitted_beyond_its_ceiling() {
    for seed in 0..200 {
        let mut rng = Lcg(seed);
        let mut world = World::default();
        let levels = [Level::Province, Level::City, Level::County, Level::Department];
        for i in 0..30usize {
            let depth = if i == 0 { 0 } else { 1 + rng.next(3) as usize };
            let parent = (i > 0).then(|| {
                let candidates: Vec<&TenantNode> =
                    world.tenants.iter().filter(|t| t.level < levels[depth]).collect();
                candidates[rng.next(candidates.len() as u64) as usize].name.clone()
            });
            let max =
                if rng.next(4) == 0 { Amounts::default() } else { cpu(&(10 + rng.next(200)).to_string()) };
            let namespaces: Vec<String> = (0..rng.next(3)).map(|n| format!("t{i}-ns{n}")).collect();
            for ns in &namespaces {
                world.namespaces.insert(ns.clone(), owned(&format!("t{i}"), cpu(&rng.next(30).to_string())));
            }
            world.tenants.push(TenantNode {
                name: format!("t{i}"),
                parent,
                level: levels[depth],
                guaranteed: Amounts::default(),
                max,
                namespaces,
                standing: Standing::New,
                seniority: format!("{i:04}"),
                allowed_regions: Vec::new(),
            });
        }
        let plan = plan(&world);
        for tenant in &world.tenants {
            let tp = plan.get(&tenant.name).unwrap();
            let Some(max) = tenant.max.get(Resource::Cpu) else {
                continue;
            };
            if tp.problem.is_some() || tp.subtree_usage.amount(Resource::Cpu) > max {
                continue;
            }
            // Every namespace below the tenant, at its limit, must still fit the ceiling.
            let mut total = Milli::ZERO;
            let mut stack = vec![tenant.name.clone()];
            while let Some(t) = stack.pop() {
                let p = plan.get(&t).unwrap();
                for (ns, hard) in &p.namespace_hard {
                    total += hard
                        .get(Resource::Cpu)
                        .unwrap_or_else(|| panic!("seed {seed}: {ns} unlimited below {}", tenant.name));
                }
                stack.extend(p.children.iter().cloned());
            }
            assert!(
                total <= max,
                "seed {seed}: namespaces below {} may admit {total} > max {max}",
                tenant.name
            );
        }
    }
}
