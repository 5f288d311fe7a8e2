//! Sites and their node pools: keeps every pool node labelled with its topology and tainted for
//! dedication and onboarding, each NodePool's and ComputeSite's status current, and drains the
//! nodes of a pool's maintenance entries.

mod desired;
mod drain;
mod report;

use std::{sync::Arc, time::Duration, time::Instant};

use futures::StreamExt;
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
    api::PostParams,
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};
use yiyun_crds::{ComputeSite, ComputeSiteStatus, MaintenanceStatus, NodePool, NodePoolStatus};

use yiyun_kube::{apply::FIELD_MANAGER, backoff::Retries, watches};

use crate::{Error, metrics::Metrics};

const CONTROLLER: &str = "pools";
/// How long status writing lets a burst of node changes settle.
const STATUS_SETTLE: Duration = Duration::from_millis(200);

struct Context {
    client: Client,
    nodes: Store<Node>,
    pools: Store<NodePool>,
    sites: Store<ComputeSite>,
    pods: Store<Pod>,
    budgets: Store<PodDisruptionBudget>,
    listed: Vec<watch::Receiver<bool>>,
    /// Poked by every watch event; the status writer waits on it.
    changed: Arc<Notify>,
    metrics: Metrics,
    /// Failed reconciles in a row, per node.
    retries: Retries<String>,
}

/// Runs the node-pool controller until `shutdown`.
pub async fn run(client: Client, metrics: Metrics, shutdown: CancellationToken) -> Result<(), Error> {
    let changed = Arc::new(Notify::new());
    fn poke<K>(changed: &Arc<Notify>) -> impl Fn(&K) + Send + 'static {
        let changed = changed.clone();
        move |_| changed.notify_one()
    }
    let all = watcher::Config::default();
    let (nodes, nodes_listed, node_events) =
        watches::reflect(watcher(Api::<Node>::all(client.clone()), all.clone()), poke(&changed));
    let (pools, pools_listed, pool_events) =
        watches::reflect(watcher(Api::<NodePool>::all(client.clone()), all.clone()), poke(&changed));
    let (sites, sites_listed, site_events) =
        watches::reflect(watcher(Api::<ComputeSite>::all(client.clone()), all), poke(&changed));
    // Bound pods only: what they request is what the pools' and sites' nodes have allocated.
    let bound = watcher::Config::default().fields("spec.nodeName!=");
    let (pods, pods_listed, pod_events) =
        watches::reflect(watcher(Api::<Pod>::all(client.clone()), bound), poke(&changed));
    let (budgets, budgets_listed, budget_events) = watches::reflect(
        watcher(Api::<PodDisruptionBudget>::all(client.clone()), watcher::Config::default()),
        poke(&changed),
    );
    // Nothing else consumes the pod and budget events; polling them keeps the stores current.
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = futures::future::join(pod_events.for_each(|_| async {}), budget_events.for_each(|_| async {})) => {}
                () = shutdown.cancelled() => {}
            }
        }
    });
    let ctx = Arc::new(Context {
        client,
        nodes: nodes.clone(),
        pools,
        sites,
        pods,
        budgets,
        listed: vec![nodes_listed, pools_listed, sites_listed, pods_listed, budgets_listed],
        changed,
        metrics,
        retries: Retries::new(crate::RETRY),
    });
    // Dropped the moment the work stops (the lease lost): no status write or eviction in flight
    // goes on after.
    tokio::spawn({
        let writer = write_pool_statuses(ctx.clone(), shutdown.clone());
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = writer => {}
                () = shutdown.cancelled() => {}
            }
        }
    });

    // A pool or site change may concern any node.
    let every_node = {
        let nodes = nodes.clone();
        move || nodes.state().iter().map(|n| ObjectRef::from_obj(n.as_ref())).collect::<Vec<_>>()
    };
    let every_node_too = every_node.clone();
    info!("node-pool controller starting");
    Controller::for_stream(node_events, nodes)
        .with_config(ControllerConfig::default().concurrency(32).debounce(Duration::from_millis(100)))
        .watches_stream(pool_events, move |_| every_node())
        .watches_stream(site_events, move |_| every_node_too())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile_node, error_policy, ctx)
        .for_each(|result| async move {
            // Watch failures are logged where the watches are reflected.
            if let Err(err) = result {
                tracing::debug!(error = %err, "node-pool reconcile request dropped");
            }
        })
        .await;
    info!("node-pool controller stopped");
    Ok(())
}

/// Labels and taints one node for the pool that selects it, or releases it from all.
async fn reconcile_node(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _in_flight = ctx.metrics.started(CONTROLLER);
    let started = Instant::now();
    let span = crate::reconcile_span(
        CONTROLLER,
        &node.name_any(),
        node.labels().get(yiyun_crds::labels::DEDICATED).map(String::as_str),
    );
    let result = keep_node(&node, &ctx).instrument(span.clone()).await;
    let error = result.as_ref().err().map(Error::label);
    span.in_scope(|| crate::record_outcome(error));
    ctx.metrics.reconciled(CONTROLLER, started.elapsed().as_secs_f64(), error);
    if result.is_ok() {
        ctx.retries.succeeded(&node.name_any());
        ctx.metrics.retrying(CONTROLLER, ctx.retries.failing());
    }
    result
}

async fn keep_node(node: &Node, ctx: &Context) -> Result<Action, Error> {
    if !watches::listed_soon(&ctx.listed).await {
        return Err(Error::NotSynced);
    }
    let pools = ctx.pools.state();
    let pool_refs: Vec<&NodePool> = pools.iter().map(Arc::as_ref).collect();
    let selecting = desired::pools_selecting(node, &pool_refs);
    let (wanted, cordon_for) = match selecting.as_slice() {
        [] => (None, None),
        [pool] => {
            let Some(site) = ctx.sites.get(&ObjectRef::new(&pool.spec.site)) else {
                // The pool's status says so; the node stays as it is.
                return Ok(Action::await_change());
            };
            (Some(desired::wanted(pool, &site, node)), desired::maintenance_of(pool, node))
        }
        // Two pools claim it: both pools' statuses say so; the node stays as it is.
        _ => return Ok(Action::await_change()),
    };
    if let Some(mut updated) = desired::updated_node(node, wanted, cordon_for) {
        // Written whole, guarded by the resourceVersion it was computed from; managedFields
        // left unset keeps the server's (the store holds none).
        updated.metadata.managed_fields = None;
        let api: Api<Node> = Api::all(ctx.client.clone());
        api.replace(
            &node.name_any(),
            &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
            &updated,
        )
        .await?;
        ctx.metrics.wrote(CONTROLLER, "Node");
    }
    Ok(Action::await_change())
}

fn error_policy(node: Arc<Node>, error: &Error, ctx: Arc<Context>) -> Action {
    // A conflict only means the node changed meanwhile; the retry computes from the new one.
    let delay = ctx.retries.failed(node.name_any());
    ctx.metrics.retrying(CONTROLLER, ctx.retries.failing());
    warn!(node = %node.name_any(), error = %error, retry_in = ?delay, "node-pool reconcile failed; retrying");
    Action::requeue(delay)
}

/// Rewrites the status of every pool whose report changed, after node or pool changes settle,
/// and drives maintenance drains (every 2 s while one is under way). A status that could not be
/// written is tried again after a backoff, not only at the next change.
async fn write_pool_statuses(ctx: Arc<Context>, shutdown: CancellationToken) {
    if !watches::all_listed(&ctx.listed).await {
        return;
    }
    let mut failed_passes = 0u32;
    loop {
        let mut failed = false;
        let pools = ctx.pools.state();
        let pool_refs: Vec<&NodePool> = pools.iter().map(Arc::as_ref).collect();
        let nodes = ctx.nodes.state();
        let node_refs: Vec<&Node> = nodes.iter().map(Arc::as_ref).collect();
        let pods = ctx.pods.state();
        let requested = report::requested_by_node(pods.iter().map(Arc::as_ref));
        let membership = report::Membership::of(&pool_refs, &node_refs);
        let mut draining = false;
        for pool in &pool_refs {
            let site_exists = ctx.sites.get(&ObjectRef::new(&pool.spec.site)).is_some();
            let mut report = report::report(pool, &membership, site_exists, &requested);
            let members: Vec<&Node> = membership.members(pool).collect();
            let maintenance = maintain(pool, &members, &ctx).await;
            report.nodes.draining = maintenance.iter().map(|(_, nodes)| *nodes).sum();
            draining |= maintenance.iter().any(|(m, _)| m.phase == "Draining" || m.phase == "Cordoning");
            let entries = maintenance.into_iter().map(|(m, _)| m).collect();
            if let Err(err) = write_status(pool, report, entries, &ctx).await {
                warn!(pool = %pool.name_any(), error = %err, "cannot write node-pool status");
                failed = true;
            }
        }
        for site in ctx.sites.state() {
            let report = report::site_report(&site.name_any(), &membership, &requested);
            if let Err(err) = write_site_status(&site, report, &ctx).await {
                warn!(site = %site.name_any(), error = %err, "cannot write site status");
                failed = true;
            }
        }
        failed_passes = if failed { failed_passes.saturating_add(1) } else { 0 };
        let tick = match (failed, draining) {
            (true, _) => crate::RETRY.delay(failed_passes),
            (false, true) => Duration::from_secs(2),
            (false, false) => Duration::MAX,
        };
        tokio::select! {
            () = ctx.changed.notified() => {}
            () = tokio::time::sleep(tick) => {}
            () = shutdown.cancelled() => return,
        }
        tokio::time::sleep(STATUS_SETTLE).await;
    }
}

/// One drain pass per maintenance entry of `pool` over its `members`: each entry's status,
/// and how many nodes it holds.
async fn maintain(pool: &NodePool, members: &[&Node], ctx: &Context) -> Vec<(MaintenanceStatus, i32)> {
    let (pods, budgets) = (ctx.pods.state(), ctx.budgets.state());
    let previous = pool.status.as_ref().map(|s| s.maintenance.as_slice()).unwrap_or_default();
    let mut entries = Vec::new();
    for entry in &pool.spec.maintenance {
        let covered: Vec<&Node> = members
            .iter()
            .copied()
            .filter(|n| desired::maintenance_of(pool, n) == Some(entry.name.as_str()))
            .collect();
        let count = i32::try_from(covered.len()).unwrap_or(i32::MAX);
        let before = previous.iter().find(|m| m.name == entry.name);
        // The first sight of the entry starts its clock, cordoned or not.
        let started = before.and_then(|m| m.started.clone()).unwrap_or_else(|| Time(Timestamp::now()));
        // Evict only from nodes whose cordon has landed, or new pods would take their place.
        if covered.iter().any(|n| !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)) {
            let mut waiting = before.cloned().unwrap_or_else(|| MaintenanceStatus {
                name: entry.name.clone(),
                phase: String::new(),
                pods_left: 0,
                blocked: Vec::new(),
                started: None,
            });
            waiting.phase = "Cordoning".into();
            waiting.started = Some(started);
            entries.push((waiting, count));
            continue;
        }
        let (status, evicted) =
            drain::drain_pass(&ctx.client, entry, &covered, &pods, &budgets, &started).await;
        for _ in 0..evicted {
            ctx.metrics.wrote(CONTROLLER, "Eviction");
        }
        let holding = if status.phase == "Drained" { 0 } else { count };
        entries.push((status, holding));
    }
    entries
}

async fn write_status(
    pool: &NodePool,
    report: report::PoolReport,
    maintenance: Vec<MaintenanceStatus>,
    ctx: &Context,
) -> Result<(), Error> {
    let previous = pool.status.as_ref();
    let conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let condition = match &report.problem {
        Some(problem) => yiyun_kube::conditions::ready_condition(
            conditions,
            false,
            problem.reason,
            &problem.message,
            pool.metadata.generation,
        ),
        None => {
            let message = format!("{} node(s) labelled and tainted", report.nodes.total);
            yiyun_kube::conditions::ready_condition(
                conditions,
                true,
                "Reconciled",
                &message,
                pool.metadata.generation,
            )
        }
    };
    let status = NodePoolStatus {
        observed_generation: pool.metadata.generation,
        conditions: vec![condition],
        nodes: report.nodes,
        capacity: Some(report.capacity),
        allocated: Some(report.allocated),
        maintenance,
    };
    let api: Api<NodePool> = Api::all(ctx.client.clone());
    if yiyun_kube::conditions::write_status(&api, &pool.name_any(), previous, &status).await? {
        ctx.metrics.wrote(CONTROLLER, "NodePoolStatus");
    }
    Ok(())
}

async fn write_site_status(
    site: &ComputeSite,
    report: report::SiteReport,
    ctx: &Context,
) -> Result<(), Error> {
    let previous = site.status.as_ref();
    let message = format!("{} node(s) in {} rack(s)", report.nodes, report.racks);
    let conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let condition = yiyun_kube::conditions::ready_condition(
        conditions,
        true,
        "Observed",
        &message,
        site.metadata.generation,
    );
    let status = ComputeSiteStatus {
        observed_generation: site.metadata.generation,
        conditions: vec![condition],
        nodes: report.nodes,
        racks: report.racks,
        capacity: Some(report.capacity),
        allocatable: Some(report.allocatable),
        allocated: Some(report.allocated),
    };
    let api: Api<ComputeSite> = Api::all(ctx.client.clone());
    if yiyun_kube::conditions::write_status(&api, &site.name_any(), previous, &status).await? {
        ctx.metrics.wrote(CONTROLLER, "ComputeSiteStatus");
    }
    Ok(())
}
