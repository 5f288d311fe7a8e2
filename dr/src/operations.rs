//! Failover, failback and drills (`yiyun dr failover|failback|drill NAMESPACE/POLICY`).
//!
//! Each step says where it stands on the clusters themselves (the namespaces' role annotation,
//! the workloads' recorded sizes), so every command can be killed at any point and run again:
//! it picks up where the clusters are.

use std::time::{Duration, Instant};

use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tracing::info;
use yiyun_crds::{DrillReport, FailoverRecord, ReplicationPolicy};

use crate::{
    Error,
    replicator::api_resource,
    rules::{
        durations,
        objects::{self, Dormancy, KINDS, Kind, POLICY_LABEL, ROLE},
        policy,
    },
    standby::{self, Unreached},
};

/// The field manager of what failover, failback and drills write.
pub const OPERATIONS_MANAGER: &str = "yiyun-dr-operations";
/// On a namespace: when the failover that made it serve began (for the RTO).
const PROMOTED_AT: &str = "dr.yiyun.io/promoted-at";
/// How long the primary may take to answer before it counts as down.
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a failover, failback or drill acts on.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The policy, as NAMESPACE/NAME.
    pub policy: String,
    /// The primary cluster's kubeconfig (default: `KUBECONFIG`).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The standby cluster's kubeconfig, for when the primary (which holds it in a Secret)
    /// cannot be reached.
    #[arg(long)]
    pub standby_kubeconfig: Option<std::path::PathBuf>,
    /// How long to wait for the workloads to run (default: the policy's RTO target, or 10
    /// minutes when the primary cannot be asked for it).
    #[arg(long)]
    pub timeout_seconds: Option<u64>,
    /// Drills only: keep the drill's namespace for inspection instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

/// Both sides of a policy; the primary only when it answers.
struct Sides {
    namespace: String,
    name: String,
    primary: Option<Client>,
    policy: Option<ReplicationPolicy>,
    standby: Client,
}

async fn sides(args: &Args) -> Result<Sides, Error> {
    let (namespace, name) = args
        .policy
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .ok_or_else(|| Error::Policy(format!("{:?}: give the policy as NAMESPACE/NAME", args.policy)))?;
    let primary = yiyun_kube::client(args.kubeconfig.as_deref()).await?;
    let api: Api<ReplicationPolicy> = Api::namespaced(primary.clone(), namespace);
    let found = tokio::time::timeout(PRIMARY_TIMEOUT, api.get_opt(name)).await;
    let (primary, policy) = match found {
        Ok(Ok(Some(policy))) => (Some(primary), Some(policy)),
        Ok(Ok(None)) => {
            return Err(Error::Policy(format!("ReplicationPolicy {namespace}/{name} does not exist")));
        }
        Ok(Err(kube::Error::Api(status))) if status.code != 503 => {
            return Err(kube::Error::Api(status).into());
        }
        Ok(Err(_)) | Err(_) => (None, None),
    };
    let standby = match (&args.standby_kubeconfig, &primary, &policy) {
        (Some(path), _, _) => yiyun_kube::client(Some(path)).await?,
        (None, Some(primary), Some(policy)) => {
            standby::connect(primary, policy).await.map_err(|why| match why {
                Unreached::Invalid(problem) => Error::Policy(problem.to_string()),
                Unreached::Transient(why) => Error::PrimaryUnreachable(why),
            })?
        }
        _ => {
            return Err(Error::PrimaryUnreachable(
                "the standby's kubeconfig is kept there: pass --standby-kubeconfig".into(),
            ));
        }
    };
    Ok(Sides { namespace: namespace.into(), name: name.into(), primary, policy, standby })
}

/// Every workload of `namespace` (Deployments, StatefulSets, Jobs, CronJobs), optionally only
/// one policy's copies.
async fn workloads(
    client: &Client,
    namespace: &str,
    policy: Option<&str>,
) -> Result<Vec<(Kind, Value)>, Error> {
    let mut found = Vec::new();
    let params = match policy {
        Some(policy) => ListParams::default().labels(&format!("{POLICY_LABEL}={policy}")),
        None => ListParams::default(),
    };
    for kind in KINDS.iter().filter(|k| k.dormancy != Dormancy::None) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource(kind));
        for object in api.list(&params).await?.items {
            let value = serde_json::to_value(&object).map_err(|err| Error::Standby(err.to_string()))?;
            if !objects::cluster_own(kind, &value) {
                found.push((*kind, value));
            }
        }
    }
    Ok(found)
}

async fn merge_patch(
    client: &Client,
    namespace: &str,
    kind: &Kind,
    name: &str,
    patch: &Value,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource(kind));
    let params = PatchParams { field_manager: Some(OPERATIONS_MANAGER.into()), ..Default::default() };
    api.patch(name, &params, &Patch::Merge(patch)).await?;
    Ok(())
}

/// Wakes every dormant workload to its recorded size.
async fn wake(client: &Client, namespace: &str, policy: Option<&str>) -> Result<usize, Error> {
    patch_workloads(client, namespace, policy, objects::wake_patch).await
}

/// Puts every workload to sleep where it is, recording its size.
async fn sleep(client: &Client, namespace: &str) -> Result<usize, Error> {
    patch_workloads(client, namespace, None, objects::sleep_patch).await
}

/// Patches every workload `patch` has a patch for; how many it patched.
async fn patch_workloads(
    client: &Client,
    namespace: &str,
    policy: Option<&str>,
    patch: fn(&Kind, &Value) -> Option<Value>,
) -> Result<usize, Error> {
    let mut patched = 0;
    for (kind, object) in workloads(client, namespace, policy).await? {
        if let Some(patch) = patch(&kind, &object) {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            merge_patch(client, namespace, &kind, name, &patch).await?;
            patched += 1;
        }
    }
    Ok(patched)
}

async fn set_role(
    client: &Client,
    namespace: &str,
    role: Option<&str>,
    promoted_at: Option<&str>,
) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut annotations = json!({ ROLE: role });
    if let Some(at) = promoted_at {
        annotations[PROMOTED_AT] = at.into();
    }
    let params = PatchParams { field_manager: Some(OPERATIONS_MANAGER.into()), ..Default::default() };
    api.patch(namespace, &params, &Patch::Merge(&json!({"metadata": {"annotations": annotations}}))).await?;
    Ok(())
}

async fn annotations(
    client: &Client,
    namespace: &str,
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let found = api
        .get_opt(namespace)
        .await?
        .ok_or_else(|| Error::Standby(format!("namespace {namespace} does not exist there")))?;
    Ok(found.annotations().clone())
}

/// Whether a workload runs: every replica ready, a Job active or done, a CronJob resumed.
fn running(kind: &Kind, object: &Value) -> bool {
    let status = &object["status"];
    let spec = &object["spec"];
    match kind.kind {
        "Deployment" | "StatefulSet" => {
            let want = spec["replicas"].as_i64().unwrap_or(1);
            status["readyReplicas"].as_i64().unwrap_or(0) >= want
        }
        "Job" => status["active"].as_i64().unwrap_or(0) + status["succeeded"].as_i64().unwrap_or(0) > 0,
        "CronJob" => spec["suspend"] != json!(true),
        _ => true,
    }
}

/// Waits until every workload of the namespace runs; how many run of how many.
async fn wait_running(client: &Client, namespace: &str, timeout: Duration) -> Result<(usize, usize), Error> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let found = workloads(client, namespace, None).await?;
        let up = found.iter().filter(|(kind, object)| running(kind, object)).count();
        if up == found.len() || Instant::now() >= deadline {
            return Ok((up, found.len()));
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            info!(namespace, running = up, workloads = found.len(), "waiting for the workloads to run");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn targets(policy: Option<&ReplicationPolicy>) -> Option<policy::Targets> {
    policy.and_then(|p| policy::validate(&p.spec).ok())
}

fn timeout(args: &Args, policy: Option<&ReplicationPolicy>) -> Duration {
    let seconds = args.timeout_seconds.or_else(|| targets(policy).map(|t| t.rto_seconds)).unwrap_or(600);
    Duration::from_secs(seconds)
}

/// Writes `record` as the policy's last failover (when the primary answers).
async fn record_failover(sides: &Sides, record: &FailoverRecord) -> Result<(), Error> {
    let Some(primary) = &sides.primary else { return Ok(()) };
    let api: Api<ReplicationPolicy> = Api::namespaced(primary.clone(), &sides.namespace);
    let patch = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "ReplicationPolicy", "status": {"failover": record}});
    api.patch_status(&sides.name, &PatchParams::apply(OPERATIONS_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Promotes the standby: its namespace serves, its workloads wake to their recorded sizes;
/// the primary, when it answers, is fenced (its workloads put to sleep). Run again once the
/// primary is back to fence it.
pub async fn failover(args: &Args) -> Result<FailoverRecord, Error> {
    let sides = sides(args).await?;
    let (namespace, standby) = (&sides.namespace, &sides.standby);
    let now = Timestamp::now();
    let previous = annotations(standby, namespace).await?;
    // A failover resumed after a crash keeps its start, so the RTO counts from the first try.
    let started = previous
        .get(PROMOTED_AT)
        .filter(|_| previous.get(ROLE).is_some_and(|role| role == "active"))
        .and_then(|at| at.parse::<Timestamp>().ok())
        .unwrap_or(now);
    set_role(standby, namespace, Some("active"), Some(&started.to_string())).await?;
    let woken = wake(standby, namespace, Some(&sides.name)).await?;
    info!(namespace, woken, "standby workloads woken to their recorded sizes");
    let fenced = match &sides.primary {
        Some(primary) => {
            let slept = sleep(primary, namespace).await?;
            set_role(primary, namespace, Some("fenced"), None).await?;
            info!(namespace, slept, "primary fenced: its workloads are asleep");
            true
        }
        None => false,
    };
    let (up, total) = wait_running(standby, namespace, timeout(args, sides.policy.as_ref())).await?;
    let rto = Timestamp::now().duration_since(started).as_secs_f64();
    let mut message = format!("{up} of {total} workloads run on the standby");
    if !fenced {
        message.push_str(
            "; the primary did not answer and is NOT fenced: run the failover again once it is back, before anything reaches it",
        );
    }
    let record = FailoverRecord {
        action: "failover".into(),
        started: Time(started),
        completed: (up == total).then(|| Time(Timestamp::now())),
        fenced,
        rto_seconds: (up == total).then_some(round(rto)),
        message,
    };
    record_failover(&sides, &record).await?;
    Ok(record)
}

/// Hands the namespace back to the primary: what changed on the standby while it served is
/// copied back (objects it deleted are deleted), the standby is put to sleep, the primary's
/// workloads wake, and replication resumes.
pub async fn failback(args: &Args) -> Result<FailoverRecord, Error> {
    let sides = sides(args).await?;
    let Some(primary) = sides.primary.clone() else {
        return Err(Error::PrimaryUnreachable("a failback needs the primary".into()));
    };
    let (namespace, standby) = (&sides.namespace, &sides.standby);
    let role = annotations(standby, namespace).await?.get(ROLE).cloned().unwrap_or_default();
    if role != "active" && role != "failing-back" {
        return Err(Error::Policy(format!(
            "namespace {namespace} on the standby is not serving (role {role:?}): there is nothing to fail back"
        )));
    }
    let started = Timestamp::now();
    set_role(standby, namespace, Some("failing-back"), None).await?;
    let credentials = sides.policy.as_ref().map(|p| p.spec.target.kubeconfig_secret.name.clone());
    let copied = copy_back(standby, &primary, namespace, credentials.as_deref()).await?;
    info!(namespace, copied, "the standby's objects copied back to the primary");
    sleep(standby, namespace).await?;
    let woken = wake(&primary, namespace, None).await?;
    info!(namespace, woken, "primary workloads woken");
    set_role(&primary, namespace, None, None).await?;
    let (up, total) = wait_running(&primary, namespace, timeout(args, sides.policy.as_ref())).await?;
    set_role(standby, namespace, Some("standby"), None).await?;
    let record = FailoverRecord {
        action: "failback".into(),
        started: Time(started),
        completed: (up == total).then(|| Time(Timestamp::now())),
        fenced: true,
        rto_seconds: (up == total).then(|| round(Timestamp::now().duration_since(started).as_secs_f64())),
        message: format!("{copied} objects copied back; {up} of {total} workloads run on the primary"),
    };
    record_failover(&sides, &record).await?;
    Ok(record)
}

/// Makes the primary's namespace hold what the standby's holds: every object applied (dormant,
/// with its size recorded), and what the standby no longer has deleted.
async fn copy_back(
    standby: &Client,
    primary: &Client,
    namespace: &str,
    credentials: Option<&str>,
) -> Result<usize, Error> {
    let mut copied = 0;
    let apply = PatchParams::apply(OPERATIONS_MANAGER).force();
    for kind in &KINDS {
        let resource = api_resource(kind);
        let from: Api<DynamicObject> = Api::namespaced_with(standby.clone(), namespace, &resource);
        let to: Api<DynamicObject> = Api::namespaced_with(primary.clone(), namespace, &resource);
        let mut names = std::collections::BTreeSet::new();
        for object in from.list(&ListParams::default()).await?.items {
            let value = serde_json::to_value(&object).map_err(|err| Error::Standby(err.to_string()))?;
            if objects::cluster_own(kind, &value) {
                continue;
            }
            let name = object.name_any();
            to.patch(&name, &apply, &Patch::Apply(&objects::dormant(kind, &value))).await?;
            names.insert(name);
            copied += 1;
        }
        for object in to.list(&ListParams::default()).await?.items {
            let value = serde_json::to_value(&object).map_err(|err| Error::Standby(err.to_string()))?;
            let name = object.name_any();
            let keep = names.contains(&name)
                || objects::cluster_own(kind, &value)
                || (kind.kind == "Secret" && Some(name.as_str()) == credentials);
            if !keep {
                to.delete(&name, &DeleteParams::background()).await?;
            }
        }
    }
    Ok(copied)
}

/// Restores the standby's copy into an isolated namespace there, checks that every object is
/// back and every workload runs, measures RPO and RTO against the targets, cleans up, and
/// records the drill in the policy's status.
pub async fn drill(args: &Args) -> Result<DrillReport, Error> {
    let sides = sides(args).await?;
    let (Some(primary), Some(policy)) = (&sides.primary, &sides.policy) else {
        return Err(Error::PrimaryUnreachable("a drill reads the policy from the primary".into()));
    };
    let targets = policy::validate(&policy.spec).map_err(|problems| {
        Error::Policy(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })?;
    let status = policy.status.clone().unwrap_or_default();
    let started = Timestamp::now();
    let clock = Instant::now();
    let rpo = status
        .last_consistent_copy_time
        .as_ref()
        .map(|at| started.duration_since(at.0).as_secs_f64().max(0.0))
        .ok_or_else(|| Error::Drill("the policy has no consistent copy yet: wait for Protected".into()))?;
    let (namespace, standby) = (&sides.namespace, &sides.standby);
    let stamp = started.strftime("%Y%m%d%H%M%S").to_string();
    let mut drill_namespace = format!("{namespace}-drill-{stamp}");
    drill_namespace.truncate(63);
    let drill_namespace = drill_namespace.trim_end_matches('-').to_string();
    let outcome = restore_and_check(standby, namespace, &drill_namespace, &sides.name, &targets, args).await;
    if !args.keep {
        let api: Api<Namespace> = Api::all(standby.clone());
        let _ = api.delete(&drill_namespace, &DeleteParams::background()).await;
    }
    let Restored { copies: objects, restored, failures, running: up, workloads: total } = outcome?;
    let rto = clock.elapsed().as_secs_f64();
    let all_back = restored == objects;
    let all_up = up == total;
    let passed = all_back && all_up && rpo <= targets.rpo_seconds as f64 && rto <= targets.rto_seconds as f64;
    let message = format!(
        "{restored} of {objects} objects restored, {up} of {total} workloads running in {drill_namespace}; \
         RPO {} (target {}), RTO {} (target {}){}",
        durations::format(rpo.ceil() as u64),
        durations::format(targets.rpo_seconds),
        if all_up { durations::format(rto.ceil() as u64) } else { "not reached".into() },
        durations::format(targets.rto_seconds),
        if args.keep { "; the namespace is kept" } else { "; cleaned up" },
    );
    let message = match failures.first() {
        Some(first) => {
            format!("{message}; not restored: {first}{}", if failures.len() > 1 { " (and more)" } else { "" })
        }
        None => message,
    };
    let report = DrillReport {
        started: Time(started),
        passed,
        rpo_seconds: round(rpo),
        rto_seconds: all_up.then_some(round(rto)),
        objects: objects as i64,
        workloads_running: up as i64,
        workloads: total as i64,
        message,
    };
    let mut drills = status.drills;
    drills.insert(0, report.clone());
    drills.truncate(targets.drills_kept);
    let api: Api<ReplicationPolicy> = Api::namespaced(primary.clone(), namespace);
    let patch =
        json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "ReplicationPolicy", "status": {"drills": drills}});
    api.patch_status(&sides.name, &PatchParams::apply(OPERATIONS_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(report)
}

/// Copies the policy's copies into `drill_namespace` (deny-all network policy first), wakes
/// them and waits for them to run.
async fn restore_and_check(
    standby: &Client,
    namespace: &str,
    drill_namespace: &str,
    policy: &str,
    targets: &policy::Targets,
    args: &Args,
) -> Result<Restored, Error> {
    let namespaces: Api<Namespace> = Api::all(standby.clone());
    let created: Namespace = serde_json::from_value(json!({
        "metadata": {"name": drill_namespace, "labels": {"dr.yiyun.io/drill-of": namespace}}
    }))
    .map_err(|err| Error::Drill(err.to_string()))?;
    namespaces.create(&PostParams::default(), &created).await?;
    let isolation = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "drill-isolation", "namespace": drill_namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    });
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(standby.clone(), drill_namespace);
    let isolation = serde_json::from_value(isolation).map_err(|err| Error::Drill(err.to_string()))?;
    policies.create(&PostParams::default(), &isolation).await?;
    let params = ListParams::default().labels(&format!("{POLICY_LABEL}={policy}"));
    let (mut copies, mut restored, mut failures) = (0, 0, Vec::new());
    let apply = PatchParams::apply(OPERATIONS_MANAGER).force();
    for kind in &KINDS {
        let resource = api_resource(kind);
        let from: Api<DynamicObject> = Api::namespaced_with(standby.clone(), namespace, &resource);
        let to: Api<DynamicObject> = Api::namespaced_with(standby.clone(), drill_namespace, &resource);
        for object in from.list(&params).await?.items {
            copies += 1;
            let value = serde_json::to_value(&object).map_err(|err| Error::Drill(err.to_string()))?;
            let mut restore = objects::portable(kind, &value);
            restore["metadata"]["namespace"] = drill_namespace.into();
            if let Some(wake) = objects::wake_patch(kind, &value) {
                restore["spec"].as_object_mut().into_iter().for_each(|spec| {
                    spec.extend(wake["spec"].as_object().cloned().unwrap_or_default());
                });
            }
            retarget_subjects(&mut restore, namespace, drill_namespace);
            let name = object.name_any();
            match to.patch(&name, &apply, &Patch::Apply(&restore)).await {
                Ok(_) => restored += 1,
                Err(err) => failures.push(format!("{}/{name}: {err}", kind.kind)),
            }
        }
    }
    let timeout = Duration::from_secs(args.timeout_seconds.unwrap_or(targets.rto_seconds));
    let (up, total) = wait_running(standby, drill_namespace, timeout).await?;
    Ok(Restored { copies, restored, failures, running: up, workloads: total })
}

/// What a drill restored and how it ran.
struct Restored {
    copies: usize,
    restored: usize,
    /// Why objects could not be restored.
    failures: Vec<String>,
    running: usize,
    workloads: usize,
}

/// A RoleBinding's subjects in the original namespace point at the drill's.
fn retarget_subjects(object: &mut Value, from: &str, to: &str) {
    let subjects = object.get_mut("subjects").and_then(Value::as_array_mut);
    for subject in subjects.into_iter().flatten() {
        if subject["namespace"] == from {
            subject["namespace"] = to.into();
        }
    }
}

fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// A failover record or drill report as an admin reads it.
pub fn describe_failover(record: &FailoverRecord) -> String {
    let rto = record.rto_seconds.map_or("not reached".into(), |s| format!("{s:.1}s"));
    format!(
        "{}: started {}, RTO {rto}, primary fenced: {}\n{}\n",
        record.action,
        record.started.0,
        if record.fenced { "yes" } else { "NO" },
        record.message
    )
}

pub fn describe_drill(report: &DrillReport) -> String {
    let rto = report.rto_seconds.map_or("not reached".into(), |s| format!("{s:.1}s"));
    format!(
        "drill {}: {}\n  RPO {:.1}s, RTO {rto}, objects {}, workloads running {}/{}\n  {}\n",
        report.started.0,
        if report.passed { "PASSED" } else { "FAILED" },
        report.rpo_seconds,
        report.objects,
        report.workloads_running,
        report.workloads,
        report.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_runs_when_every_replica_is_ready() {
        let deployment = objects::kind("Deployment").unwrap();
        assert!(running(&deployment, &json!({"spec": {"replicas": 2}, "status": {"readyReplicas": 2}})));
        assert!(!running(&deployment, &json!({"spec": {"replicas": 2}, "status": {"readyReplicas": 1}})));
        assert!(running(&deployment, &json!({"spec": {"replicas": 0}, "status": {}})));
        let job = objects::kind("Job").unwrap();
        assert!(!running(&job, &json!({"spec": {}, "status": {}})));
        assert!(running(&job, &json!({"spec": {}, "status": {"succeeded": 1}})));
        let cronjob = objects::kind("CronJob").unwrap();
        assert!(!running(&cronjob, &json!({"spec": {"suspend": true}})));
    }

    #[test]
    fn a_drill_binds_the_subjects_of_its_own_namespace() {
        let mut binding = json!({"subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "wuhu"},
                                              {"kind": "ServiceAccount", "name": "ops", "namespace": "other"}]});
        retarget_subjects(&mut binding, "wuhu", "wuhu-drill-1");
        assert_eq!(binding["subjects"][0]["namespace"], "wuhu-drill-1");
        assert_eq!(binding["subjects"][1]["namespace"], "other");
        let mut config_map = json!({"data": {}});
        retarget_subjects(&mut config_map, "wuhu", "wuhu-drill-1");
        assert_eq!(config_map, json!({"data": {}}), "nothing added where there are no subjects");
    }
}
