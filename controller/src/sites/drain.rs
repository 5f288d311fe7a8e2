//! Maintenance drains: evict the pods of cordoned nodes through the Eviction API, so
//! PodDisruptionBudgets are honoured; report what is left and why each pod stays; stop at the
//! timeout and never force-delete.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::{Node, Pod},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt, api::EvictParams};
use tracing::info;
use yiyun_crds::{BlockedPod, Maintenance, MaintenanceStatus};
use yiyun_kube::disruption::{covers, disruptions_allowed};

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

/// One pass of the drain of `entry` over `nodes` (already cordoned), with the pods and budgets
/// the watches hold. Every pod left says why in `blocked`: a budget that allows no disruption,
/// an eviction the apiserver refused (with its answer), the timeout. Pods being deleted are
/// never evicted again, so a restarted controller resumes without evicting twice. `started`
/// was saved when the entry first appeared, so the timeout is always reached.
pub async fn drain_pass(
    client: &Client,
    entry: &Maintenance,
    nodes: &[&Node],
    pods: &[Arc<Pod>],
    budgets: &[Arc<PodDisruptionBudget>],
    started: &Time,
) -> (MaintenanceStatus, usize) {
    let timeout = parse_timeout(&entry.drain_timeout).unwrap_or(Duration::from_secs(30 * 60));
    let elapsed = Timestamp::now().duration_since(started.0);
    let timed_out = elapsed.as_secs() >= 0 && elapsed.unsigned_abs() >= timeout;

    let names: Vec<String> = nodes.iter().map(|n| n.name_any()).collect();
    let left: Vec<&Pod> = pods
        .iter()
        .map(Arc::as_ref)
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| names.contains(n)))
        .filter(|p| must_move(p))
        .collect();
    let mut blocked = Vec::new();
    let mut evicted = 0;
    for pod in left.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let namespace = pod.namespace().unwrap_or_default();
        let budget = budgets.iter().map(Arc::as_ref).find(|b| covers(b, &namespace, pod.labels()));
        let budget_name = budget.map(|b| b.name_any()).unwrap_or_default();
        let outcome = if timed_out {
            Outcome::Blocked(format!("drain timed out after {}", entry.drain_timeout))
        } else if let Some(budget) = budget.filter(|b| disruptions_allowed(b) == 0) {
            // The Eviction API would refuse it anyway; don't ask.
            Outcome::Blocked(format!("PodDisruptionBudget {} allows no disruption now", budget.name_any()))
        } else {
            evict(client, pod, &entry.name).await
        };
        match outcome {
            Outcome::Evicted => evicted += 1,
            Outcome::Gone => {}
            Outcome::Blocked(reason) => {
                blocked.push(BlockedPod { namespace, pod: pod.name_any(), budget: budget_name, reason })
            }
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
    let status = MaintenanceStatus {
        name: entry.name.clone(),
        phase: phase.into(),
        pods_left,
        blocked,
        started: Some(started.clone()),
    };
    (status, evicted)
}

/// What asking to evict one pod came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Evicted,
    /// Gone already: nothing left to move.
    Gone,
    /// Still there, and why.
    Blocked(String),
}

/// Asks the Eviction API to evict `pod`. The client retries a budget's refusal (429) with
/// backoff, so a refusal also shows as no answer within a few seconds.
async fn evict(client: &Client, pod: &Pod, maintenance: &str) -> Outcome {
    let namespace = pod.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let answer =
        tokio::time::timeout(EVICTION_WAIT, pods.evict(&pod.name_any(), &EvictParams::default())).await;
    let outcome = eviction_outcome(answer.map(|result| result.map(|_| ())));
    if outcome == Outcome::Evicted {
        info!(pod = %pod.name_any(), namespace, maintenance, "evicted");
    }
    outcome
}

/// The outcome of an eviction's answer (`Err(Elapsed)`: none within [`EVICTION_WAIT`]).
fn eviction_outcome(answer: Result<Result<(), kube::Error>, tokio::time::error::Elapsed>) -> Outcome {
    match answer {
        Ok(Ok(())) => Outcome::Evicted,
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Outcome::Gone,
        Ok(Err(kube::Error::Api(status))) if status.code == 429 => {
            Outcome::Blocked(format!("eviction refused by a disruption budget: {}", status.message))
        }
        Ok(Err(kube::Error::Api(status))) => Outcome::Blocked(format!(
            "eviction refused ({} {}): {}",
            status.code, status.reason, status.message
        )),
        Ok(Err(err)) => Outcome::Blocked(format!("eviction failed: {err}")),
        Err(_) => Outcome::Blocked(format!("no answer to the eviction within {}s", EVICTION_WAIT.as_secs())),
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

    fn refusal(
        code: u16,
        reason: &str,
        message: &str,
    ) -> Result<Result<(), kube::Error>, tokio::time::error::Elapsed> {
        let status = kube::core::Status::failure(message, reason).with_code(code);
        Ok(Err(kube::Error::Api(Box::new(status))))
    }

    #[test]
    fn every_refused_eviction_is_recorded_with_the_apiservers_answer() {
        assert_eq!(eviction_outcome(Ok(Ok(()))), Outcome::Evicted);
        assert_eq!(eviction_outcome(refusal(404, "NotFound", "gone")), Outcome::Gone);
        let Outcome::Blocked(reason) = eviction_outcome(refusal(429, "TooManyRequests", "budget web")) else {
            panic!("a budget's refusal blocks")
        };
        assert!(reason.contains("disruption budget: budget web"), "{reason}");
        for (code, reason_text) in [(403, "Forbidden"), (500, "InternalError")] {
            let Outcome::Blocked(reason) = eviction_outcome(refusal(code, reason_text, "no")) else {
                panic!("{code} blocks the pod rather than the drain")
            };
            assert_eq!(reason, format!("eviction refused ({code} {reason_text}): no"));
        }
    }
}
