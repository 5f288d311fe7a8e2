//! Server-side apply that skips the write when the object already holds what we would apply.

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use yiyun_quota::Milli;

pub use yiyun_crds::FIELD_MANAGER;

/// Applies `desired` unless `current` already contains every field of it. Returns whether it
/// wrote. Skipping matters: a controller that rewrites unchanged objects loads the apiserver
/// at every resync.
pub async fn apply<K>(api: &Api<K>, desired: &K, current: Option<&K>) -> Result<bool, kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    if current.is_some_and(|current| holds(current, desired)) {
        return Ok(false);
    }
    let name = desired.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await?;
    Ok(true)
}

/// Whether `current` contains every field `desired` sets, with equal values.
pub fn holds<K: Serialize>(current: &K, desired: &K) -> bool {
    match (serde_json::to_value(current), serde_json::to_value(desired)) {
        (Ok(current), Ok(desired)) => contains(&current, &desired),
        _ => false,
    }
}

fn contains(current: &Value, desired: &Value) -> bool {
    match (current, desired) {
        (Value::Object(current), Value::Object(desired)) => {
            desired.iter().all(|(key, value)| current.get(key).is_some_and(|c| contains(c, value)))
        }
        (Value::Array(current), Value::Array(desired)) => {
            current.len() == desired.len() && current.iter().zip(desired).all(|(c, d)| contains(c, d))
        }
        // The apiserver rewrites quantities in canonical form ("2000" becomes "2k").
        (Value::String(current), Value::String(desired)) => {
            current == desired
                || matches!((Milli::parse(current), Milli::parse(desired)), (Ok(c), Ok(d)) if c == d)
        }
        (current, desired) => current == desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extra_fields_on_the_server_do_not_count_as_drift() {
        let current = json!({"metadata": {"name": "a", "uid": "x", "labels": {"a": "1", "b": "2"}}, "spec": {"hard": {"pods": "10"}}});
        let desired =
            json!({"metadata": {"name": "a", "labels": {"a": "1"}}, "spec": {"hard": {"pods": "10"}}});
        assert!(contains(&current, &desired));
    }

    #[test]
    fn a_changed_or_missing_field_is_drift() {
        let current = json!({"spec": {"hard": {"pods": "9"}}, "list": [1, 2]});
        assert!(!contains(&current, &json!({"spec": {"hard": {"pods": "10"}}})));
        assert!(!contains(&current, &json!({"spec": {"hard": {"cpu": "1"}}})));
        assert!(!contains(&current, &json!({"list": [1]})));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(contains(&json!({"cpu": "2k"}), &json!({"cpu": "2000"})));
        assert!(contains(&json!({"memory": "1Gi"}), &json!({"memory": "1024Mi"})));
        assert!(!contains(&json!({"cpu": "2k"}), &json!({"cpu": "2001"})));
    }
}
