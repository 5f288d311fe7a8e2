//! Label selectors and PodDisruptionBudgets, as drains and preemption both read them.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{api::policy::v1::PodDisruptionBudget, apimachinery::pkg::apis::meta::v1::LabelSelector};
use kube::ResourceExt;

/// Label selector semantics: every matchLabels pair and every expression must hold (so an
/// empty selector takes everything). An expression with an unknown operator selects nothing.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

/// Whether `budget` covers a pod of `namespace` with `labels`. A budget without a selector
/// covers nothing; an empty one covers its whole namespace (policy/v1).
pub fn covers(budget: &PodDisruptionBudget, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    budget.namespace().as_deref() == Some(namespace)
        && budget.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| selects(s, labels))
}

/// How many more of its pods `budget` lets go now. A budget whose status the disruption
/// controller has not written yet allows none, as the Eviction API judges it.
pub fn disruptions_allowed(budget: &PodDisruptionBudget) -> i32 {
    budget.status.as_ref().and_then(|s| s.disruptions_allowed).unwrap_or(0)
}

/// A budget that evicting every one of `victims` (namespace and labels) at once would break,
/// with how many of them it covers: all of them may go, or none should.
pub fn first_broken<'a>(
    budgets: impl IntoIterator<Item = &'a PodDisruptionBudget>,
    victims: &[(&str, &BTreeMap<String, String>)],
) -> Option<(&'a PodDisruptionBudget, i32)> {
    let mut covered: HashMap<(String, String), (&'a PodDisruptionBudget, i32)> = HashMap::new();
    let budgets: Vec<&PodDisruptionBudget> = budgets.into_iter().collect();
    for (namespace, labels) in victims {
        for budget in budgets.iter().copied().filter(|b| covers(b, namespace, labels)) {
            let key = (budget.namespace().unwrap_or_default(), budget.name_any());
            covered.entry(key).or_insert((budget, 0)).1 += 1;
        }
    }
    let mut broken: Vec<_> =
        covered.into_values().filter(|(budget, count)| *count > disruptions_allowed(budget)).collect();
    broken.sort_by_key(|(budget, _)| (budget.namespace(), budget.name_any()));
    broken.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_json::from_str(text).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels = labels(&[("pool", "gpu")]);
        let s = |text: &str| -> LabelSelector { json(text) };
        assert!(selects(&s(r#"{"matchLabels": {"pool": "gpu"}}"#), &labels));
        assert!(!selects(&s(r#"{"matchLabels": {"pool": "cpu"}}"#), &labels));
        let expression = |rest: &str| s(&format!(r#"{{"matchExpressions": [{{{rest}}}]}}"#));
        assert!(selects(&expression(r#""key": "pool", "operator": "In", "values": ["gpu", "x"]"#), &labels));
        assert!(selects(&expression(r#""key": "zone", "operator": "DoesNotExist""#), &labels));
        assert!(!selects(&expression(r#""key": "pool", "operator": "NotIn", "values": ["gpu"]"#), &labels));
        assert!(!selects(&expression(r#""key": "pool", "operator": "Bogus""#), &labels));
        assert!(selects(&s("{}"), &labels), "an empty selector takes everything");
    }

    fn budget(name: &str, selector: &str, allowed: Option<i32>) -> PodDisruptionBudget {
        let status = allowed.map_or(String::new(), |n| {
            format!(r#", "status": {{"disruptionsAllowed": {n}, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}}"#)
        });
        json(&format!(
            r#"{{"metadata": {{"name": "{name}", "namespace": "web"}}, "spec": {{"selector": {selector}}}{status}}}"#
        ))
    }

    #[test]
    fn all_victims_of_a_budget_must_fit_its_allowance() {
        let budgets = [budget("portal", r#"{"matchLabels": {"app": "portal"}}"#, Some(1))];
        let portal = labels(&[("app", "portal")]);
        let other = labels(&[("app", "batch")]);
        assert!(first_broken(&budgets, &[("web", &portal)]).is_none(), "one of one allowed");
        let (broken, count) = first_broken(&budgets, &[("web", &portal), ("web", &portal)]).unwrap();
        assert_eq!((broken.name_any().as_str(), count), ("portal", 2));
        assert!(first_broken(&budgets, &[("web", &portal), ("web", &other)]).is_none());
        assert!(first_broken(&budgets, &[("elsewhere", &portal), ("elsewhere", &portal)]).is_none());
    }

    #[test]
    fn a_budget_without_status_allows_nothing_and_without_selector_covers_nothing() {
        let pending = [budget("new", "{}", None)];
        let any = labels(&[]);
        assert_eq!(first_broken(&pending, &[("web", &any)]).map(|(_, n)| n), Some(1));
        let unselecting: PodDisruptionBudget =
            json(r#"{"metadata": {"name": "none", "namespace": "web"}, "spec": {}}"#);
        assert!(!covers(&unselecting, "web", &any));
    }
}
