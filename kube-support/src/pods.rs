//! What a pod holds on its node, counted once for every component: the scheduler places by it,
//! node pools and sites report it, billing meters it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use yiyun_quota::{Milli, QuantityError};

/// The resources a pod reserves on its node, by name, as kube-scheduler counts them: per
/// resource the larger of its containers' sum and any one init container, plus the pod's
/// overhead. The pod slot itself is the caller's to count. A quantity too large to hold counts
/// as the largest there is (so the pod fits nowhere), never as nothing; one the apiserver would
/// not have admitted (unparsable, negative) counts as zero.
pub fn requests(pod: &Pod) -> BTreeMap<String, Milli> {
    let Some(spec) = &pod.spec else { return BTreeMap::new() };
    let mut total: BTreeMap<String, Milli> = BTreeMap::new();
    for container in &spec.containers {
        for (name, amount) in container_requests(container.resources.as_ref()) {
            *total.entry(name).or_default() += amount;
        }
    }
    for init in spec.init_containers.iter().flatten() {
        for (name, amount) in container_requests(init.resources.as_ref()) {
            let have = total.entry(name).or_default();
            *have = (*have).max(amount);
        }
    }
    for (name, quantity) in spec.overhead.iter().flatten() {
        *total.entry(name.clone()).or_default() += amount(&quantity.0);
    }
    total
}

fn container_requests(
    resources: Option<&ResourceRequirements>,
) -> impl Iterator<Item = (String, Milli)> + '_ {
    resources
        .and_then(|r| r.requests.as_ref())
        .into_iter()
        .flatten()
        .map(|(name, quantity)| (name.clone(), amount(&quantity.0)))
}

/// A requested amount: the largest quantity there is when too large, zero when not one.
pub fn amount(text: &str) -> Milli {
    match Milli::parse(text) {
        Ok(milli) if milli > Milli::ZERO => milli,
        Err(QuantityError::TooLarge(_)) => LARGEST,
        _ => Milli::ZERO,
    }
}

/// The largest quantity the apiserver admits, about 2^63 whole units.
pub const LARGEST: Milli = Milli(i64::MAX as i128 * 1000);

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn containers_add_up_an_init_container_counts_alone_and_overhead_comes_on_top() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "4", "memory": "1Gi"}}}],
                "overhead": {"cpu": "100m"}
            }
        }));
        let requests = requests(&pod);
        assert_eq!(requests["cpu"], Milli::parse("4100m").unwrap(), "the init container's 4 outweigh 2.5");
        assert_eq!(requests["memory"], Milli::parse("5Gi").unwrap());
        assert_eq!(requests["nvidia.com/gpu"], Milli::units(1));
    }

    #[test]
    fn absurd_quantities_are_the_largest_never_nothing() {
        assert_eq!(amount("99999999999999999999999E"), LARGEST);
        assert_eq!(amount("lots"), Milli::ZERO);
        assert_eq!(amount("-1"), Milli::ZERO);
        let pod = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"requests": {"memory": "9E"}}},
            {"name": "b", "resources": {"requests": {"memory": "9E"}}}]}}));
        assert_eq!(
            requests(&pod)["memory"],
            Milli(18 * 10i128.pow(21)),
            "18E in milli: Milli holds the sum exactly"
        );
    }
}
