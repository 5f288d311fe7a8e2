//! The tenancy controller: keeps every Tenant's namespaces, quotas, access and isolation in
//! place, and its status current.
//!
//! Rules and quotas span the whole tree, so one pure [`yiyun_quota::Plan`] is computed from the
//! watched Tenants, namespaces and quotas, and recomputed when any of them changes. Tenants whose
//! part of the plan changed are reconciled; the others are left alone.

mod desired;
mod observe;
mod reconcile;

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{LimitRange, Namespace, ResourceQuota},
    networking::v1::NetworkPolicy,
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate, PredicateConfig, WatchStreamExt,
        controller::Config as ControllerConfig,
        predicates,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;
use yiyun_admin::Readiness;
use yiyun_crds::{
    Subject, Tenant,
    labels::{MANAGED_BY, MANAGED_BY_VALUE, TENANT},
};
use yiyun_kube::backoff::Retries;
use yiyun_quota::Plan;

use crate::{Error, metrics::Metrics};

pub(crate) const CONTROLLER: &str = "tenancy";

/// What the watches hold.
#[derive(Clone)]
struct Stores {
    tenants: Store<Tenant>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    quotas: Store<ResourceQuota>,
    limit_ranges: Store<LimitRange>,
    role_bindings: Store<RoleBinding>,
    network_policies: Store<NetworkPolicy>,
    /// One per watch, true once it has listed.
    listed: Vec<watch::Receiver<bool>>,
}

impl Stores {
    async fn wait_until_ready(&self) -> Result<(), Error> {
        if yiyun_kube::watches::all_listed(&self.listed).await { Ok(()) } else { Err(Error::WatchStopped) }
    }
}

/// The plan of the tree. Only the planner task computes it, once the watches' changes pause
/// (see [`PLAN_SETTLE`]); reconciles read the latest. One computation serves every reconcile in
/// between: the planner asks again for any tenant whose part changed.
struct Plans {
    latest: watch::Sender<Option<Arc<Planned>>>,
    changed: Notify,
    /// Set when a planned Tenant's spec changed: an admin's edit, planned without the settle.
    edited: AtomicBool,
}

/// A plan and the generation of every Tenant it was made from.
struct Planned {
    plan: Arc<Plan>,
    generations: HashMap<String, i64>,
}

/// The planner plans once changes have paused this long…
const PLAN_SETTLE: Duration = Duration::from_millis(100);
/// …or this long when the change is an edit of a planned Tenant after a quiet spell of
/// [`PLAN_MAX_WAIT`]: the edit is planned at once, and the burst of echoes it starts is batched.
/// New Tenants always settle: a tree applied in quick succession is planned whole.
const PLAN_SETTLE_AFTER_EDIT: Duration = Duration::from_millis(10);
/// …or, while they keep coming, this long after the first. A change at the root rewrites
/// thousands of quotas and statuses, and their echoes arrive every few milliseconds: planning
/// the whole tree at every short pause would take the CPU the apiserver needs for the writes
/// themselves (`make bench-tenancy` measures it).
const PLAN_MAX_WAIT: Duration = Duration::from_secs(1);

impl Plans {
    fn new() -> Self {
        Plans { latest: watch::channel(None).0, changed: Notify::new(), edited: AtomicBool::new(false) }
    }

    fn mark_stale(&self) {
        self.changed.notify_one();
    }

    /// Marks the plan stale, noting whether `tenant` is an edit of one the latest plan has seen
    /// at an older generation.
    fn mark_tenant_stale(&self, tenant: &Tenant) {
        let generation = tenant.metadata.generation.unwrap_or_default();
        let edited = self.latest.borrow().as_ref().is_some_and(|planned| {
            planned
                .generations
                .get(tenant.metadata.name.as_deref().unwrap_or_default())
                .is_some_and(|g| *g < generation)
        });
        if edited {
            self.edited.store(true, Ordering::Relaxed);
        }
        self.mark_stale();
    }
}

pub(crate) struct Context {
    client: Client,
    stores: Stores,
    plans: Arc<Plans>,
    metrics: Metrics,
    /// Failed reconciles in a row, per tenant.
    retries: Retries<String>,
}

impl Context {
    /// The latest plan; waits for the first, which the planner makes once every watch has
    /// listed (a plan from half-filled watches would report parents missing that merely are not
    /// listed yet).
    async fn plan(&self) -> Result<Arc<Plan>, Error> {
        self.plan_seeing(|_| true).await
    }

    /// The latest plan once it was made from `tenant`'s spec or a later one. A reconcile
    /// started by a spec change must not judge the new spec by the plan of the old one: it
    /// would report Ready for a spec the plan may yet find wrong.
    async fn plan_for(&self, tenant: &Tenant) -> Result<Arc<Plan>, Error> {
        let name = tenant.name_any();
        let generation = tenant.metadata.generation.unwrap_or_default();
        self.plan_seeing(|planned| planned.generations.get(&name).is_some_and(|g| *g >= generation)).await
    }

    async fn plan_seeing(&self, seen: impl Fn(&Planned) -> bool) -> Result<Arc<Plan>, Error> {
        let mut latest = self.plans.latest.subscribe();
        let wanted = latest.wait_for(|planned| planned.as_ref().is_some_and(|p| seen(p)));
        let planned = tokio::time::timeout(yiyun_kube::watches::SYNC_WAIT, wanted)
            .await
            .map_err(|_| Error::NotSynced)?
            .map_err(|_| Error::WatchStopped)?;
        planned.as_ref().map(|p| p.plan.clone()).ok_or(Error::WatchStopped)
    }
}

/// Runs the tenancy controller until `shutdown`. Ready once every watch has listed.
pub async fn run(
    client: Client,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let plans = Arc::new(Plans::new());
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let all = watcher::Config::default();
    let (owners_tx, owners_rx) = mpsc::unbounded_channel();
    let (tenants, tenants_listed, tenant_events) =
        yiyun_kube::watches::reflect(watcher(Api::<Tenant>::all(client.clone()), all.clone()), {
            let plans = plans.clone();
            move |tenant: &Tenant| {
                plans.mark_tenant_stale(tenant);
                // Ends only with the controller, which stops the watch first.
                let _ = owners_tx.send((tenant.name_any(), tenant.spec.owners.clone()));
            }
        });
    let (namespaces, namespaces_listed, namespace_events) =
        reflect_marking(watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), all), &plans);
    let (quotas, quotas_listed, quota_events) =
        reflect_marking(watcher(Api::<ResourceQuota>::all(client.clone()), managed.clone()), &plans);
    let (limit_ranges, limit_ranges_listed, limit_range_events) =
        reflect_marking(watcher(Api::<LimitRange>::all(client.clone()), managed.clone()), &plans);
    let (role_bindings, role_bindings_listed, role_binding_events) =
        reflect_marking(watcher(Api::<RoleBinding>::all(client.clone()), managed.clone()), &plans);
    let (network_policies, network_policies_listed, network_policy_events) =
        reflect_marking(watcher(Api::<NetworkPolicy>::all(client.clone()), managed), &plans);

    let stores = Stores {
        tenants: tenants.clone(),
        namespaces,
        quotas,
        limit_ranges,
        role_bindings,
        network_policies,
        listed: vec![
            tenants_listed,
            namespaces_listed,
            quotas_listed,
            limit_ranges_listed,
            role_bindings_listed,
            network_policies_listed,
        ],
    };
    let ctx = Arc::new(Context { client, stores, plans, metrics, retries: Retries::new(crate::RETRY) });

    let (changed_tx, changed_rx) = mpsc::channel(1024);
    let stop_on_planner_panic = shutdown.child_token();
    let planner = plan_tree(ctx.clone(), changed_tx, readiness.clone(), shutdown.clone());
    tokio::spawn({
        let ctx = ctx.clone();
        async move {
            if ctx.stores.wait_until_ready().await.is_ok() {
                info!(tenants = ctx.stores.tenants.state().len(), "tenancy watches synced: ready");
                readiness.set(true);
            }
        }
    });

    info!("tenancy controller starting");
    // A Tenant's own status writes need no reconcile (the planner follows what they change);
    // its spec (generation, which deletion bumps too) and finalizers do.
    let tenant_events = tenant_events
        .predicate_filter(predicates::generation.combine(predicates::finalizers), PredicateConfig::default());
    // The planner batches bursts already; the debounce only merges a tenant's own events with the
    // planner's request for it, which follow within milliseconds.
    let controller = Controller::for_stream(tenant_events, tenants)
        .with_config(ControllerConfig::default().concurrency(64).debounce(Duration::from_millis(10)))
        .watches_stream(namespace_events, |ns| tenant_of(&ns))
        .watches_stream(quota_events, {
            // Most quota events are status updates (usage counted by kube-controller-manager)
            // or the echo of yiyun's own write; the planner follows usage already. Only a quota
            // whose limits differ from the plan needs its tenant reconciled.
            let plans = ctx.plans.clone();
            let quotas = ctx.stores.quotas.clone();
            move |quota: ResourceQuota| {
                let tenant = tenant_of(&quota)?;
                // Gone from the store: deleted, and to be restored.
                if quotas.get(&ObjectRef::from_obj(&quota)).is_none() {
                    return Some(tenant);
                }
                let latest = plans.latest.borrow().as_ref().map(|p| p.plan.clone());
                let planned = latest.as_ref().and_then(|plan| plan.get(&tenant.name));
                let hard = quota.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
                let namespace = quota.metadata.namespace.clone().unwrap_or_default();
                let as_planned = planned
                    .is_some_and(|p| p.problem.is_some() || desired::quota_as_planned(p, &namespace, &hard));
                (!as_planned).then_some(tenant)
            }
        })
        .watches_stream(limit_range_events, |o| tenant_of(&o))
        .watches_stream(role_binding_events, |o| tenant_of(&o))
        .watches_stream(network_policy_events, |o| tenant_of(&o))
        .reconcile_on(receiver_stream(changed_rx))
        .reconcile_on(children_of_new_owners(owners_rx, ctx.stores.tenants.clone()))
        .graceful_shutdown_on(stop_on_planner_panic.clone().cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            // Watch failures are logged where the watches are reflected; what is left here is
            // a request for an object the store does not hold (any more).
            if let Err(err) = result {
                tracing::debug!(error = %err, "tenancy reconcile request dropped");
            }
        });
    // The planner ends only with the controller, or with a panic that must end it.
    let (planned, ()) = tokio::join!(
        async {
            let result = planner.await;
            if result.is_err() {
                stop_on_planner_panic.cancel();
            }
            result
        },
        controller
    );
    info!("tenancy controller stopped");
    planned
}

/// What a panic said, for the log and the error.
fn panic_message(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string()),
        Err(err) => err.to_string(),
    }
}

/// Reflects watch `events` into a store; every event marks the plan stale.
fn reflect_marking<K>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    plans: &Arc<Plans>,
) -> (Store<K>, watch::Receiver<bool>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let plans = plans.clone();
    yiyun_kube::watches::reflect(events, move |_: &K| plans.mark_stale())
}

/// The Tenant an object belongs to, by its `yiyun.io/tenant` label.
fn tenant_of<K: Resource>(object: &K) -> Option<ObjectRef<Tenant>> {
    object.meta().labels.as_ref()?.get(TENANT).map(|name| ObjectRef::new(name))
}

fn receiver_stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The children of each tenant whose owners changed (a tenant's owners and their changes come
/// from `owners`): the parent's owners decide the children's quota requests, through a binding
/// in each child namespace. A tenant seen for the first time changes nobody's binding.
fn children_of_new_owners(
    owners: mpsc::UnboundedReceiver<(String, Vec<Subject>)>,
    tenants: Store<Tenant>,
) -> impl Stream<Item = ObjectRef<Tenant>> + Send + 'static {
    let seen: HashMap<String, Vec<Subject>> = HashMap::new();
    futures::stream::unfold((owners, seen), |(mut owners, mut seen)| async move {
        let (parent, now) = owners.recv().await?;
        let changed = seen.insert(parent.clone(), now.clone()).is_some_and(|before| before != now);
        Some(((parent, changed), (owners, seen)))
    })
    .flat_map(move |(parent, changed)| {
        let children: Vec<ObjectRef<Tenant>> = if changed {
            let state = tenants.state();
            state
                .iter()
                .filter(|t| t.spec.parent.as_ref() == Some(&parent))
                .map(|t| ObjectRef::from_obj(&**t))
                .collect()
        } else {
            Vec::new()
        };
        futures::stream::iter(children)
    })
}

/// Plans the tree whenever the watches saw a change (once changes settle), publishes the plan,
/// and asks for a reconcile of every tenant whose part of it changed: relatives of a changed
/// tenant included, unrelated tenants not. Runs until `shutdown`; a panic turns `/readyz` red
/// and ends tenancy (and with it the process) with [`Error::PlannerPanicked`].
async fn plan_tree(
    ctx: Arc<Context>,
    changed: mpsc::Sender<ObjectRef<Tenant>>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if ctx.stores.wait_until_ready().await.is_err() {
        return Ok(());
    }
    let mut last = Arc::new(Plan::default());
    let mut observer = observe::Observer::default();
    loop {
        // Edits seen from here on are in this plan or wake the next one.
        ctx.plans.edited.store(false, Ordering::Relaxed);
        let started = Instant::now();
        let stores = &ctx.stores;
        let tenants = stores.tenants.state();
        let (namespaces, quotas) = (stores.namespaces.state(), stores.quotas.state());
        // Planning is the controller's one stretch of CPU; off the runtime's thread, the
        // reconciles' I/O goes on meanwhile.
        let planning = tokio::task::spawn_blocking({
            let (tenants, metrics, previous) = (tenants.clone(), ctx.metrics.clone(), last.clone());
            move || {
                let world = observer.world(&tenants, &namespaces, &quotas);
                let observed = started.elapsed();
                let plan = yiyun_quota::plan(&world);
                metrics.planned(&plan, &previous);
                (plan, observed, observer)
            }
        });
        let (plan, observed, returned) = match planning.await {
            Ok(planned) => planned,
            Err(err) => {
                readiness.set(false);
                let message = panic_message(err);
                tracing::error!(error = %message, "planning the tenant tree panicked; stopping");
                return Err(Error::PlannerPanicked(message));
            }
        };
        observer = returned;
        let plan = Arc::new(plan);
        let generations =
            tenants.iter().map(|t| (t.name_any(), t.metadata.generation.unwrap_or_default())).collect();
        ctx.plans.latest.send_replace(Some(Arc::new(Planned { plan: plan.clone(), generations })));
        let names: Vec<String> = plan.changed_since(&last).map(String::from).collect();
        tracing::debug!(
            changed = names.len(),
            observe_micros = observed.as_micros() as u64,
            micros = started.elapsed().as_micros() as u64,
            "tenant tree planned"
        );
        for name in names {
            if changed.send(ObjectRef::new(&name)).await.is_err() {
                return Ok(());
            }
        }
        last = plan;
        let planned_at = Instant::now();
        tokio::select! {
            () = ctx.plans.changed.notified() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        let quiet = planned_at.elapsed() >= PLAN_MAX_WAIT;
        let settle = if quiet && ctx.plans.edited.load(Ordering::Relaxed) {
            PLAN_SETTLE_AFTER_EDIT
        } else {
            PLAN_SETTLE
        };
        let deadline = tokio::time::Instant::now() + PLAN_MAX_WAIT;
        loop {
            tokio::select! {
                () = ctx.plans.changed.notified() => {}
                () = tokio::time::sleep(settle) => break,
                () = tokio::time::sleep_until(deadline) => break,
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_reported_with_what_it_said() {
        let text = tokio::task::spawn_blocking(|| panic!("tenant t3 has no plan")).await.unwrap_err();
        assert_eq!(panic_message(text), "tenant t3 has no plan");
        let formatted = tokio::task::spawn_blocking(|| panic!("{} tenants", 3)).await.unwrap_err();
        assert_eq!(panic_message(formatted), "3 tenants");
    }
}
