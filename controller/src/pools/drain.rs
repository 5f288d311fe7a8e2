//! Maintenance drains: evict the pods of cordoned nodes through the Eviction API, so
//! PodDisruptionBudgets are honoured; report what is left and which budget blocks it; stop at
//! the timeout and never force-delete.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::{Node, Pod},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{EvictParams, ListParams},
};
use tracing::info;
use yiyun_crds::{BlockedPod, Maintenance, MaintenanceStatus};

use super::desired::selects;
use crate::Error;

/// How long one eviction may take before it counts as refused.
const EVICTION_WAIT: Duration = Duration::from_secs(3);

/// `30s`, `30m`, `2h` as a duration; `None` for anything else (the schema allows no other).
pub fn parse_timeout(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// Pods a drain must move: not DaemonSet pods (they belong on every node), not static mirror
/// pods, not pods that already finished.
pub fn must_move(pod: &Pod) -> bool {
    let daemon = pod.owner_references().iter().any(|o| o.kind == "DaemonSet");
    let mirror = pod.annotations().contains_key("kubernetes.io/config.mirror");
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !(daemon || mirror || finished)
}

/// One pass of the drain of `entry` over `nodes` (already cordoned). Pods being deleted are
/// never evicted again, so a restarted controller resumes without evicting twice.
pub async fn drain_pass(
    client: &Client,
    entry: &Maintenance,
    nodes: &[&Node],
    previous: Option<&MaintenanceStatus>,
) -> Result<(MaintenanceStatus, usize), Error> {
    let started = previous.and_then(|p| p.started.clone()).unwrap_or_else(|| Time(Timestamp::now()));
    let timeout = parse_timeout(&entry.drain_timeout).unwrap_or(Duration::from_secs(30 * 60));
    let elapsed = Timestamp::now().duration_since(started.0);
    let timed_out = elapsed.as_secs() >= 0 && elapsed.unsigned_abs() >= timeout;

    let all_pods: Api<Pod> = Api::all(client.clone());
    let mut left: Vec<Pod> = Vec::new();
    for node in nodes {
        let on_node = ListParams::default().fields(&format!("spec.nodeName={}", node.name_any()));
        left.extend(all_pods.list(&on_node).await?.items.into_iter().filter(must_move));
    }
    let mut budgets: BTreeMap<String, Vec<PodDisruptionBudget>> = BTreeMap::new();
    let mut blocked = Vec::new();
    let mut evicted = 0;
    for pod in left.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let namespace = pod.namespace().unwrap_or_default();
        if !budgets.contains_key(&namespace) {
            let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
            budgets.insert(namespace.clone(), api.list(&ListParams::default()).await?.items);
        }
        let budget = budgets[&namespace].iter().find(|b| {
            b.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| selects(s, pod.labels()))
        });
        // A budget that allows no disruption refuses the eviction anyway; don't ask.
        let exhausted =
            budget.is_some_and(|b| b.status.as_ref().is_some_and(|s| s.disruptions_allowed == Some(0)));
        let refused = timed_out || exhausted || !evict(client, pod, &entry.name).await?;
        if refused {
            let budget = budget.map(|b| b.name_any()).unwrap_or_default();
            blocked.push(BlockedPod { namespace, pod: pod.name_any(), budget });
        } else {
            evicted += 1;
        }
    }
    let pods_left = i32::try_from(left.len()).unwrap_or(i32::MAX);
    let phase = if left.is_empty() {
        "Drained"
    } else if timed_out {
        "TimedOut"
    } else {
        "Draining"
    };
    Ok((
        MaintenanceStatus {
            name: entry.name.clone(),
            phase: phase.into(),
            pods_left,
            blocked,
            started: Some(started),
        },
        evicted,
    ))
}

/// Asks the Eviction API to evict `pod`: `false` when a budget refuses. The client retries a
/// refusal (429) with backoff, so a refusal also shows as no answer within a few seconds.
async fn evict(client: &Client, pod: &Pod, maintenance: &str) -> Result<bool, Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    match tokio::time::timeout(EVICTION_WAIT, pods.evict(&pod.name_any(), &EvictParams::default())).await {
        Ok(Ok(_)) => {
            info!(pod = %pod.name_any(), namespace, maintenance, "evicted");
            Ok(true)
        }
        Ok(Err(kube::Error::Api(status))) if status.code == 429 => Ok(false),
        // Gone already: nothing left to move.
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(true),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_seconds_minutes_and_hours() {
        assert_eq!(parse_timeout("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_timeout("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_timeout("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("soon"), None);
        assert_eq!(parse_timeout(""), None);
        assert_eq!(parse_timeout("99999999999999999999h"), None);
    }

    #[test]
    fn daemon_mirror_and_finished_pods_stay() {
        let pod = |yaml: &str| -> Pod { serde_saphyr::from_str(yaml).unwrap() };
        assert!(must_move(&pod("metadata: {name: web}\n")));
        assert!(!must_move(&pod(
            "metadata: {name: agent, ownerReferences: [{apiVersion: apps/v1, kind: DaemonSet, name: agent, uid: u}]}\n"
        )));
        assert!(!must_move(&pod("metadata: {name: etcd, annotations: {kubernetes.io/config.mirror: x}}\n")));
        assert!(!must_move(&pod("metadata: {name: job}\nstatus: {phase: Succeeded}\n")));
    }
}
