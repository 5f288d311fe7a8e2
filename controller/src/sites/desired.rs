//! What a node should carry, given the pools that select it. Pure: no I/O.
//!
//! Node taints are an atomic list and labels a map other writers share, so the node is written
//! whole (guarded by its resourceVersion), and yiyun records in two annotations which label keys
//! and taints it set: those are the only ones it ever removes. A node that leaves every pool
//! loses exactly those; a node two pools select is left as it is.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Taint};
use yiyun_crds::{ComputeSite, NodePool, Onboarding, RegionClass, TaintEffect};
use yiyun_kube::disruption::selects;

pub use yiyun_crds::labels::{DEDICATED, NODE_POOL, RACK, REGION, REGION_CLASS, SITE, ZONE};
/// NoSchedule taint of a node a Manual pool has not approved yet.
pub const ONBOARDING: &str = "yiyun.io/onboarding";
/// Label keys yiyun set on the node, comma-separated.
pub const MANAGED_LABELS: &str = "yiyun.io/managed-labels";
/// Taints yiyun set on the node, as `key:Effect`, comma-separated.
pub const MANAGED_TAINTS: &str = "yiyun.io/managed-taints";
/// The maintenance entry yiyun cordoned the node for; only such a cordon is lifted by yiyun.
pub const CORDONED_FOR: &str = "yiyun.io/cordoned-for";

/// The pools whose selector or name list takes `node`.
pub fn pools_selecting<'a>(node: &Node, pools: &'a [&'a NodePool]) -> Vec<&'a NodePool> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    pools
        .iter()
        .copied()
        .filter(|pool| {
            pool.spec.node_names.iter().any(|n| n == name)
                || pool.spec.node_selector.as_ref().is_some_and(|s| selects(s, &labels))
        })
        .collect()
}

/// The rack of `node` in `pool`, if the pool can tell.
pub fn rack_of(pool: &NodePool, node: &Node) -> Option<String> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if let Some(map) = &pool.spec.rack.nodes {
        return map.get(name).cloned();
    }
    let key = pool.spec.rack.label.as_ref()?;
    node.metadata.labels.as_ref()?.get(key).cloned()
}

/// Labels and taints yiyun wants on a node of `pool` in `site`.
pub fn wanted(pool: &NodePool, site: &ComputeSite, node: &Node) -> (BTreeMap<String, String>, Vec<Taint>) {
    let spec = &pool.spec;
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let mut labels = spec.labels.clone();
    labels.insert(REGION.into(), site.spec.region.clone());
    labels.insert(ZONE.into(), spec.site.clone());
    labels.insert(SITE.into(), spec.site.clone());
    let class = match site.spec.region_class {
        RegionClass::East => "east",
        RegionClass::West => "west",
    };
    labels.insert(REGION_CLASS.into(), class.into());
    labels.insert(NODE_POOL.into(), pool_name);
    if let Some(rack) = rack_of(pool, node) {
        labels.insert(RACK.into(), rack);
    }
    let mut taints: Vec<Taint> = spec
        .taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: match t.effect {
                TaintEffect::NoSchedule => "NoSchedule".into(),
                TaintEffect::PreferNoSchedule => "PreferNoSchedule".into(),
                TaintEffect::NoExecute => "NoExecute".into(),
            },
            time_added: None,
        })
        .collect();
    if let Some(tenant) = &spec.dedicated_to {
        labels.insert(DEDICATED.into(), tenant.clone());
        taints.push(Taint {
            key: DEDICATED.into(),
            value: Some(tenant.clone()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
    }
    if is_onboarding(pool, node) {
        taints.push(Taint {
            key: ONBOARDING.into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        });
    }
    (labels, taints)
}

/// The maintenance entry of `pool` that covers `node` (by name or by rack), if any.
pub fn maintenance_of<'a>(pool: &'a NodePool, node: &Node) -> Option<&'a str> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let rack = rack_of(pool, node);
    pool.spec
        .maintenance
        .iter()
        .find(|m| m.nodes.iter().any(|n| n == name) || (m.rack.is_some() && m.rack == rack))
        .map(|m| m.name.as_str())
}

/// Whether `node` still waits for approval in `pool`.
pub fn is_onboarding(pool: &NodePool, node: &Node) -> bool {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    pool.spec.onboarding == Onboarding::Manual && !pool.spec.approved_nodes.iter().any(|n| n == name)
}

/// The node as yiyun wants it: `wanted` labels and taints in place of the ones yiyun set before
/// (`None` wanted: release the node), cordoned while `cordon_for` names a maintenance entry and
/// uncordoned when yiyun's cordon ends. Everything other writers set stays. `None` when the
/// node already is as wanted.
pub fn updated_node(
    node: &Node,
    wanted: Option<(BTreeMap<String, String>, Vec<Taint>)>,
    cordon_for: Option<&str>,
) -> Option<Node> {
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    let before_labels: BTreeSet<String> = split(annotations.get(MANAGED_LABELS));
    let before_taints: BTreeSet<String> = split(annotations.get(MANAGED_TAINTS));
    let (want_labels, want_taints) = wanted.unwrap_or_default();

    let mut labels = node.metadata.labels.clone().unwrap_or_default();
    for key in &before_labels {
        if !want_labels.contains_key(key) {
            labels.remove(key);
        }
    }
    labels.extend(want_labels.clone());

    let taint_id = |t: &Taint| format!("{}:{}", t.key, t.effect);
    let wanted_ids: BTreeSet<String> = want_taints.iter().map(taint_id).collect();
    let current_taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let mut taints: Vec<Taint> = current_taints
        .iter()
        .filter(|t| !before_taints.contains(&taint_id(t)) && !wanted_ids.contains(&taint_id(t)))
        .cloned()
        .collect();
    taints.extend(want_taints.iter().cloned());

    let mut annotations = annotations;
    let record = |keys: Vec<String>| (!keys.is_empty()).then(|| keys.join(","));
    match record(want_labels.keys().cloned().collect()) {
        Some(keys) => annotations.insert(MANAGED_LABELS.into(), keys),
        None => annotations.remove(MANAGED_LABELS),
    };
    match record(wanted_ids.into_iter().collect()) {
        Some(ids) => annotations.insert(MANAGED_TAINTS.into(), ids),
        None => annotations.remove(MANAGED_TAINTS),
    };
    let was_unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let unschedulable = match cordon_for {
        Some(entry) => {
            annotations.insert(CORDONED_FOR.into(), entry.into());
            true
        }
        // Lift only a cordon yiyun set; an admin's own cordon stays.
        None => annotations.remove(CORDONED_FOR).map_or(was_unschedulable, |_| false),
    };

    let same_labels =
        Some(&labels) == node.metadata.labels.as_ref() || labels.is_empty() && node.metadata.labels.is_none();
    let same_annotations = Some(&annotations) == node.metadata.annotations.as_ref()
        || annotations.is_empty() && node.metadata.annotations.is_none();
    let same_taints = same_set(&taints, &current_taints);
    if same_labels && same_annotations && same_taints && unschedulable == was_unschedulable {
        return None;
    }
    let mut updated = node.clone();
    updated.metadata.labels = Some(labels);
    updated.metadata.annotations = Some(annotations);
    let spec = updated.spec.get_or_insert_with(Default::default);
    spec.taints = Some(taints);
    spec.unschedulable = Some(unschedulable);
    Some(updated)
}

fn split(list: Option<&String>) -> BTreeSet<String> {
    list.map(|l| l.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default()
}

/// Same taints regardless of order (timeAdded ignored: the apiserver sets it for NoExecute).
fn same_set(a: &[Taint], b: &[Taint]) -> bool {
    let id = |t: &Taint| (t.key.clone(), t.value.clone(), t.effect.clone());
    let a: BTreeSet<_> = a.iter().map(id).collect();
    let b: BTreeSet<_> = b.iter().map(id).collect();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_saphyr::from_str(text).unwrap()
    }

    fn site() -> ComputeSite {
        yaml(
            "apiVersion: yiyun.io/v1alpha1\nkind: ComputeSite\nmetadata: {name: qingyang}\nspec: {region: gansu, regionClass: west, hub: Gansu, city: 庆阳, powerPricePerKWh: \"0.32\", pue: 1.18, carbonIntensity: 420}\n",
        )
    }

    fn pool(extra: &str) -> NodePool {
        yaml(&format!(
            "apiVersion: yiyun.io/v1alpha1\nkind: NodePool\nmetadata: {{name: gpu}}\nspec: {{site: qingyang, nodeSelector: {{matchLabels: {{pool: gpu}}}}, rack: {{label: rack}}{extra}}}\n"
        ))
    }

    fn node(labels: &str) -> Node {
        yaml(&format!(
            "metadata: {{name: n1, labels: {{{labels}}}}}\nspec: {{taints: [{{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}}]}}\n"
        ))
    }

    fn taint_keys(node: &Node) -> Vec<String> {
        node.spec.as_ref().unwrap().taints.iter().flatten().map(|t| t.key.clone()).collect()
    }

    #[test]
    fn a_pool_node_gets_topology_labels_and_keeps_other_taints() {
        let p = pool(
            ", labels: {class: gpu}, taints: [{key: nvidia.com/gpu, value: present, effect: NoSchedule}], onboarding: Automatic",
        );
        let n = node("pool: gpu, rack: r07");
        let updated = updated_node(&n, Some(wanted(&p, &site(), &n)), None).unwrap();
        let labels = updated.metadata.labels.clone().unwrap();
        assert_eq!(labels[REGION], "gansu");
        assert_eq!(labels[ZONE], "qingyang");
        assert_eq!(labels[SITE], "qingyang");
        assert_eq!(labels[RACK], "r07");
        assert_eq!(labels[REGION_CLASS], "west");
        assert_eq!(labels[NODE_POOL], "gpu");
        assert_eq!(labels["class"], "gpu");
        assert_eq!(taint_keys(&updated), ["kwok.x-k8s.io/node", "nvidia.com/gpu"]);
        assert_eq!(
            updated_node(&updated, Some(wanted(&p, &site(), &updated)), None),
            None,
            "applying twice changes nothing"
        );
    }

    #[test]
    fn manual_onboarding_taints_until_approved() {
        let n = node("pool: gpu, rack: r07");
        let waiting = pool("");
        let updated = updated_node(&n, Some(wanted(&waiting, &site(), &n)), None).unwrap();
        assert!(taint_keys(&updated).contains(&ONBOARDING.to_string()));
        let approved = pool(", approvedNodes: [n1]");
        let joined = updated_node(&updated, Some(wanted(&approved, &site(), &updated)), None).unwrap();
        assert!(!taint_keys(&joined).contains(&ONBOARDING.to_string()));
    }

    #[test]
    fn a_dedicated_pool_labels_and_taints_for_its_tenant() {
        let p = pool(", dedicatedTo: jj-health, onboarding: Automatic");
        let n = node("pool: gpu");
        let updated = updated_node(&n, Some(wanted(&p, &site(), &n)), None).unwrap();
        assert_eq!(updated.metadata.labels.as_ref().unwrap()[DEDICATED], "jj-health");
        let taint = updated.spec.unwrap().taints.unwrap().into_iter().find(|t| t.key == DEDICATED).unwrap();
        assert_eq!((taint.value.as_deref(), taint.effect.as_str()), (Some("jj-health"), "NoSchedule"));
        assert!(
            !updated.metadata.labels.unwrap().contains_key(RACK),
            "no rack label when the rack is unknown"
        );
    }

    #[test]
    fn a_node_leaving_its_pool_loses_exactly_what_yiyun_set() {
        let p = pool(", labels: {class: gpu}, dedicatedTo: t");
        let n = node("pool: gpu, rack: r07, owner: admin");
        let managed = updated_node(&n, Some(wanted(&p, &site(), &n)), None).unwrap();
        let released = updated_node(&managed, None, None).unwrap();
        let labels = released.metadata.labels.clone().unwrap();
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["owner", "pool", "rack"]);
        assert_eq!(taint_keys(&released), ["kwok.x-k8s.io/node"]);
        assert!(!released.metadata.annotations.unwrap().contains_key(MANAGED_LABELS));
    }

    #[test]
    fn a_node_moved_to_another_pool_drops_the_old_pools_labels() {
        let old = pool(", labels: {class: gpu}, onboarding: Automatic");
        let n = node("pool: gpu");
        let in_old = updated_node(&n, Some(wanted(&old, &site(), &n)), None).unwrap();
        let mut new: NodePool = pool(", labels: {tier: batch}, onboarding: Automatic");
        new.metadata.name = Some("batch".into());
        let in_new = updated_node(&in_old, Some(wanted(&new, &site(), &in_old)), None).unwrap();
        let labels = in_new.metadata.labels.unwrap();
        assert!(!labels.contains_key("class"));
        assert_eq!(labels["tier"], "batch");
        assert_eq!(labels[NODE_POOL], "batch");
    }

    #[test]
    fn maintenance_cordons_and_lifts_only_its_own_cordon() {
        let p = pool(", onboarding: Automatic, maintenance: [{name: power, rack: r07, reason: UPS swap}]");
        let n = node("pool: gpu, rack: r07");
        assert_eq!(maintenance_of(&p, &n), Some("power"));
        let cordoned = updated_node(&n, Some(wanted(&p, &site(), &n)), maintenance_of(&p, &n)).unwrap();
        assert_eq!(cordoned.spec.as_ref().unwrap().unschedulable, Some(true));
        let lifted = updated_node(&cordoned, Some(wanted(&p, &site(), &cordoned)), None).unwrap();
        assert_eq!(lifted.spec.as_ref().unwrap().unschedulable, Some(false));
        // An admin's own cordon is not yiyun's to lift.
        let mut admins: Node = n.clone();
        admins.spec.as_mut().unwrap().unschedulable = Some(true);
        let kept = updated_node(&admins, Some(wanted(&p, &site(), &admins)), None).unwrap();
        assert_eq!(kept.spec.unwrap().unschedulable, Some(true));
    }

    #[test]
    fn two_pools_may_select_one_node() {
        let a = pool("");
        let mut b = pool("");
        b.metadata.name = Some("other".into());
        b.spec.node_selector = None;
        b.spec.node_names = vec!["n1".into()];
        let n = node("pool: gpu");
        let pools = [&a, &b];
        assert_eq!(pools_selecting(&n, &pools).len(), 2);
    }
}
