//! `Failover` objects: each carries out its operation (failover, failback or drill) once, and
//! its status says how it went. One interrupted by a restart of the controller runs again from
//! where the clusters are: the operations are resumable.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::watcher,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use yiyun_crds::{Failover, FailoverAction, FailoverPhase, FailoverStatus};

use crate::{Error, FIELD_MANAGER, operations};

pub async fn run(
    client: Client,
    kubeconfig: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let api: Api<Failover> = Api::all(client.clone());
    let (store, mut listed, touched) =
        yiyun_kube::watches::reflect(watcher::watcher(api, watcher::Config::default()), |_| {});
    let mut touched = std::pin::pin!(touched);
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let candidates: Vec<Arc<Failover>> = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = listed.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                store.state()
            }
            failover = touched.next() => match failover {
                Some(Ok(failover)) if *listed.borrow() => store.get(&kube::runtime::reflector::ObjectRef::from_obj(&failover)).into_iter().collect(),
                Some(_) => continue,
                None => return Ok(()),
            },
        };
        for failover in candidates {
            let phase = failover.status.as_ref().map(|s| s.phase).unwrap_or_default();
            let name = failover.name_any();
            if matches!(phase, FailoverPhase::Succeeded | FailoverPhase::Failed)
                || !running.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone())
            {
                continue;
            }
            let (client, kubeconfig, running, shutdown) =
                (client.clone(), kubeconfig.clone(), running.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = carry_out(&client, kubeconfig, &failover) => {}
                }
                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
            });
        }
    }
}

async fn carry_out(client: &Client, kubeconfig: Option<PathBuf>, failover: &Failover) {
    let name = failover.name_any();
    let spec = &failover.spec;
    let started = failover.status.as_ref().and_then(|s| s.started.clone()).unwrap_or(Time(Timestamp::now()));
    let mut status =
        FailoverStatus { phase: FailoverPhase::Running, started: Some(started), ..Default::default() };
    write(client, &name, &status).await;
    info!(failover = name, action = ?spec.action, policy = %format!("{}/{}", spec.policy.namespace, spec.policy.name), "carrying out");
    let args = operations::Args {
        policy: format!("{}/{}", spec.policy.namespace, spec.policy.name),
        kubeconfig,
        standby_kubeconfig: None,
        timeout_seconds: None,
        keep: false,
    };
    let outcome = match spec.action {
        FailoverAction::Failover => {
            operations::failover(&args).await.map(|r| (r.completed.is_some(), r.rto_seconds, r.message, None))
        }
        FailoverAction::Failback => {
            operations::failback(&args).await.map(|r| (r.completed.is_some(), r.rto_seconds, r.message, None))
        }
        FailoverAction::Drill => {
            operations::drill(&args).await.map(|r| (r.passed, r.rto_seconds, r.message.clone(), Some(r)))
        }
    };
    match outcome {
        Ok((done, rto, message, drill)) => {
            status.phase = if done { FailoverPhase::Succeeded } else { FailoverPhase::Failed };
            status.rto_seconds = rto;
            status.message = Some(message);
            status.drill = drill;
        }
        Err(err) => {
            status.phase = FailoverPhase::Failed;
            status.message = Some(err.to_string());
        }
    }
    status.completed = Some(Time(Timestamp::now()));
    write(client, &name, &status).await;
}

async fn write(client: &Client, name: &str, status: &FailoverStatus) {
    let api: Api<Failover> = Api::all(client.clone());
    let patch =
        json!({"apiVersion": Failover::api_version(&()), "kind": Failover::kind(&()), "status": status});
    if let Err(err) =
        api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await
    {
        warn!(failover = name, error = %err, "cannot write the Failover's status");
    }
}
