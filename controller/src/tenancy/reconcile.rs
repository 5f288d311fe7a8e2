//! One Tenant's reconcile: validate (from the plan), build the desired objects, apply what
//! differs, release what is no longer claimed, write status.

use std::{sync::Arc, time::Duration, time::Instant};

use k8s_openapi::api::{
    core::v1::{LimitRange, Namespace, ResourceQuota},
    networking::v1::NetworkPolicy,
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
        reflector::{ObjectRef, Store},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{Instrument, info, warn};
use yiyun_crds::{DeletionPolicy, TENANT_FINALIZER, Tenant, TenantStatus, TenantUsage, labels::TENANT};
use yiyun_quota::TenantPlan;

use super::{
    CONTROLLER, Context,
    desired::{self, NamespaceObjects},
};
use yiyun_kube::{
    apply::{FIELD_MANAGER, apply, holds},
    tenants::resource_amounts,
};

use crate::Error;

/// A safety net: everything is event-driven, this only repairs what a lost event missed.
const RESYNC: Duration = Duration::from_secs(30 * 60);

pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = tenant.name_any();
    let span = crate::reconcile_span(CONTROLLER, &name, Some(&name));
    reconcile_in_span(tenant, ctx).instrument(span).await
}

async fn reconcile_in_span(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _in_flight = ctx.metrics.started(CONTROLLER);
    let started = Instant::now();
    let name = tenant.name_any();
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let result = finalizer(&api, TENANT_FINALIZER, tenant, |event| async {
        match event {
            Event::Apply(tenant) => reconcile_tenant(&tenant, &ctx).await,
            Event::Cleanup(tenant) => release_tenant(&tenant, &ctx).await,
        }
    })
    .await
    .map_err(|err| Error::Finalizer(Box::new(err)));
    let error = result.as_ref().err().map(Error::label);
    crate::record_outcome(error);
    ctx.metrics.reconciled(CONTROLLER, started.elapsed().as_secs_f64(), error);
    if result.is_ok() {
        ctx.retries.succeeded(&name);
        ctx.metrics.retrying(CONTROLLER, ctx.retries.failing());
    }
    result
}

pub fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_waiting() {
        info!(tenant = %tenant.name_any(), "{error}");
        return Action::requeue(Duration::from_secs(15));
    }
    let delay = ctx.retries.failed(tenant.name_any());
    ctx.metrics.retrying(CONTROLLER, ctx.retries.failing());
    warn!(tenant = %tenant.name_any(), error = %error, retry_in = ?delay, "tenancy reconcile failed; retrying");
    Action::requeue(delay)
}

async fn reconcile_tenant(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let plan = ctx.plan_for(tenant).await?;
    let name = tenant.name_any();
    let Some(tenant_plan) = plan.get(&name) else {
        // The watch has not shown this tenant to the plan yet.
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    if let Some(problem) = &tenant_plan.problem {
        // Leave every downstream object as it was; say why.
        write_status(tenant, tenant_plan, ready(false, problem.reason, &problem.message), ctx).await?;
        return Ok(Action::requeue(RESYNC));
    }
    let parent =
        tenant.spec.parent.as_ref().and_then(|parent| ctx.stores.tenants.get(&ObjectRef::new(parent)));
    let parent_owners = parent.map(|parent| parent.spec.owners.clone()).unwrap_or_default();
    let parent_owners = &parent_owners;
    let kept = tenant.spec.namespaces.iter().map(|namespace| {
        let objects = desired::namespace_objects(tenant, tenant_plan, &namespace.name, parent_owners);
        async move { keep_namespace(tenant, &objects, ctx).await }
    });
    futures::future::try_join_all(kept).await?;
    // Namespaces the tenant owned but no longer lists are released like on deletion. The plan
    // knows which it owns: scanning every namespace per reconcile costs more than all the rest.
    for namespace in &tenant_plan.owned {
        if !tenant.spec.namespaces.iter().any(|ns| &ns.name == namespace) {
            release_namespace(namespace, tenant, ctx).await?;
        }
    }
    let count = tenant.spec.namespaces.len();
    let message = format!("{count} namespace(s) in place with quota, defaults, access and isolation");
    write_status(tenant, tenant_plan, ready(true, "Reconciled", &message), ctx).await?;
    Ok(Action::requeue(RESYNC))
}

/// Applies what differs and deletes what must not exist, namespace first. A namespace that does
/// not exist yet is created with the Tenant's UID recorded (see [`desired::release`]).
async fn keep_namespace(tenant: &Tenant, objects: &NamespaceObjects, ctx: &Context) -> Result<(), Error> {
    let namespace = objects.namespace.name_any();
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let current = ctx
        .stores
        .namespaces
        .get(&ObjectRef::new(&namespace))
        .map(|meta| Namespace { metadata: meta.metadata.clone(), ..Namespace::default() });
    if current.is_none() {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        match api.create(&params, &desired::new_namespace(&namespace, tenant)).await {
            Ok(_) => write(ctx, "Namespace", true),
            // It exists after all (the watch had not shown it yet, or someone else made it):
            // not created by yiyun now, so not recorded as such.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    let current =
        current.filter(|c| !desired::carries_dropped_keys(&c.metadata, &objects.namespace.metadata));
    write(ctx, "Namespace", apply(&api, &objects.namespace, current.as_ref()).await?);
    // The namespace first; what lives in it is independent and written at once.
    let stores = &ctx.stores;
    let ns = namespace.as_str();
    futures::try_join!(
        keep_quota(ctx, ns, &objects.quota),
        keep(ctx, "LimitRange", &stores.limit_ranges, desired::LIMIT_RANGE, ns, Some(&objects.limit_range)),
        keep(ctx, "RoleBinding", &stores.role_bindings, desired::OWNERS, ns, objects.owners.as_ref()),
        keep(ctx, "RoleBinding", &stores.role_bindings, desired::MEMBERS, ns, objects.members.as_ref()),
        keep(ctx, "RoleBinding", &stores.role_bindings, desired::APPROVERS, ns, objects.approvers.as_ref()),
        keep(
            ctx,
            "NetworkPolicy",
            &stores.network_policies,
            desired::ISOLATION,
            ns,
            objects.isolation.as_ref()
        ),
    )?;
    Ok(())
}

/// Keeps the namespace's quota: the object is applied when missing or its metadata differs, and
/// its limits are set by a JSON merge patch. A root change rewrites every namespace's limits,
/// and a merge patch of a ResourceQuota costs the apiserver less CPU than an apply (`yiyun bench
/// tenancy` measures both on the tree's quotas; the README gives the figures). The patch
/// also removes limits the tree no longer counts, which an apply would leave in place once a
/// merge patch owns them.
async fn keep_quota(ctx: &Context, namespace: &str, desired: &ResourceQuota) -> Result<(), Error> {
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), namespace);
    let current = ctx.stores.quotas.get(&ObjectRef::new(desired::QUOTA).within(namespace));
    let current = match current {
        Some(current) if holds(&current.metadata, &desired.metadata) => current,
        _ => {
            let applied = api
                .patch(desired::QUOTA, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired))
                .await?;
            write(ctx, "ResourceQuota", true);
            Arc::new(applied)
        }
    };
    let limits = |quota: &ResourceQuota| quota.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    let (current, wanted) = (limits(&current), limits(desired));
    if !desired::same_limits(&current, &wanted) {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        let patch = desired::limits_patch(&current, &wanted);
        api.patch(desired::QUOTA, &params, &Patch::Merge(&patch)).await?;
        write(ctx, "ResourceQuota", true);
    }
    Ok(())
}

/// Makes object `name` in `namespace` hold `desired`, or removes it when `desired` is `None`.
async fn keep<K>(
    ctx: &Context,
    kind: &'static str,
    store: &Store<K>,
    name: &str,
    namespace: &str,
    desired: Option<&K>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let current = store.get(&ObjectRef::new(name).within(namespace));
    match desired {
        Some(desired) => write(ctx, kind, apply(&api, desired, current.as_deref()).await?),
        None if current.is_some() => remove::<K>(ctx, kind, name, namespace).await?,
        None => {}
    }
    Ok(())
}

fn write(ctx: &Context, kind: &'static str, wrote: bool) {
    if wrote {
        ctx.metrics.wrote(CONTROLLER, kind);
        tracing::debug!(kind, "written");
    }
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other,
    }
}

fn owned_namespaces(tenant: &str, ctx: &Context) -> Vec<String> {
    ctx.stores
        .namespaces
        .state()
        .iter()
        .filter(|ns| ns.labels().get(TENANT).is_some_and(|owner| owner == tenant))
        .map(|ns| ns.name_any())
        .collect()
}

/// Gives a namespace up. It is deleted only under `Delete` and only if yiyun created it for this
/// Tenant (by UID, with the namespace's UID as a precondition, so a namespace of the same name
/// made since is safe). Otherwise it stays with everything the department put in it, yiyun's
/// objects in it are removed (so the old owners keep no access through them) and its labels
/// say it is orphaned. A namespace yiyun does not keep (only labelled for the tenant, waiting to
/// be adopted), or released already, is left alone.
async fn release_namespace(namespace: &str, tenant: &Tenant, ctx: &Context) -> Result<(), Error> {
    let Some(current) = ctx.stores.namespaces.get(&ObjectRef::new(namespace)) else { return Ok(()) };
    let name = tenant.name_any();
    if !desired::to_release(&current.metadata, &name) {
        return Ok(());
    }
    let policy = tenant.spec.deletion_policy;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match desired::release(&current.metadata, tenant) {
        desired::Release::Delete { uid } => {
            info!(tenant = %name, namespace, "deleting the namespace yiyun created for the tenant (deletionPolicy Delete)");
            let preconditions = Preconditions { uid: Some(uid), resource_version: None };
            let params = DeleteParams { preconditions: Some(preconditions), ..DeleteParams::background() };
            ignore_not_found(api.delete(namespace, &params).await.map(|_| ()))?;
        }
        desired::Release::Orphan => {
            if policy == DeletionPolicy::Delete {
                info!(tenant = %name, namespace, "releasing, not deleting, a namespace yiyun did not create for the tenant");
            } else {
                info!(tenant = %name, namespace, "keeping released namespace as orphaned (deletionPolicy Retain)");
            }
            // Access first: a crash after this leaves the namespace labelled, released again.
            remove_kept_objects(namespace, ctx).await?;
            // Applying only the orphan label removes every label yiyun set before.
            let orphan = desired::orphaned_namespace(namespace, &name);
            api.patch(namespace, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&orphan)).await?;
        }
    }
    write(ctx, "Namespace", true);
    Ok(())
}

/// Deletes every object yiyun keeps in `namespace`. Not judged from the stores: one written a
/// moment ago may not be there yet, and would outlive the release.
async fn remove_kept_objects(namespace: &str, ctx: &Context) -> Result<(), Error> {
    futures::try_join!(
        remove::<ResourceQuota>(ctx, "ResourceQuota", desired::QUOTA, namespace),
        remove::<LimitRange>(ctx, "LimitRange", desired::LIMIT_RANGE, namespace),
        remove::<RoleBinding>(ctx, "RoleBinding", desired::OWNERS, namespace),
        remove::<RoleBinding>(ctx, "RoleBinding", desired::MEMBERS, namespace),
        remove::<NetworkPolicy>(ctx, "NetworkPolicy", desired::ISOLATION, namespace),
    )?;
    Ok(())
}

/// Deletes object `name` in `namespace`, if it is there.
async fn remove<K>(ctx: &Context, kind: &'static str, name: &str, namespace: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => write(ctx, kind, true),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(err) => return Err(err.into()),
    }
    Ok(())
}

/// The finalizer's clean-up: wait for the children, then release every namespace.
async fn release_tenant(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let name = tenant.name_any();
    if !yiyun_kube::watches::listed_soon(&ctx.stores.listed).await {
        return Err(Error::NotSynced);
    }
    let mut children: Vec<String> = ctx
        .stores
        .tenants
        .state()
        .iter()
        .filter(|t| t.spec.parent.as_deref() == Some(name.as_str()))
        .map(|t| t.name_any())
        .collect();
    if !children.is_empty() {
        children.sort();
        let message =
            format!("cannot delete while children exist: {}; delete them first", children.join(", "));
        let plan = ctx.plan().await?;
        let tenant_plan = plan.get(&name).cloned().unwrap_or_default();
        write_status(tenant, &tenant_plan, ready(false, "HasChildren", &message), ctx).await?;
        return Err(Error::HasChildren { tenant: name, children });
    }
    for namespace in owned_namespaces(&name, ctx) {
        release_namespace(&namespace, tenant, ctx).await?;
    }
    Ok(Action::await_change())
}

/// The Ready condition a reconcile ends with.
struct ReadyCondition {
    ready: bool,
    reason: String,
    message: String,
}

fn ready(ok: bool, reason: &str, message: &str) -> ReadyCondition {
    ReadyCondition { ready: ok, reason: reason.into(), message: message.into() }
}

/// Writes the status when it differs from what the object already shows.
async fn write_status(
    tenant: &Tenant,
    plan: &TenantPlan,
    readiness: ReadyCondition,
    ctx: &Context,
) -> Result<(), Error> {
    let previous = tenant.status.as_ref();
    let conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let condition = yiyun_kube::conditions::ready_condition(
        conditions,
        readiness.ready,
        &readiness.reason,
        &readiness.message,
        tenant.metadata.generation,
    );
    let status = TenantStatus {
        observed_generation: tenant.metadata.generation,
        conditions: vec![condition],
        path: plan.path.clone(),
        namespaces: if plan.problem.is_some() {
            previous.map(|s| s.namespaces.clone()).unwrap_or_default()
        } else {
            tenant.spec.namespaces.iter().map(|ns| ns.name.clone()).collect()
        },
        usage: Some(TenantUsage {
            own: resource_amounts(&plan.own_usage),
            subtree: resource_amounts(&plan.subtree_usage),
        }),
        allocated: if plan.problem.is_some() {
            previous.and_then(|s| s.allocated.clone())
        } else {
            Some(resource_amounts(&plan.allocated))
        },
        children: i32::try_from(plan.children.len()).unwrap_or(i32::MAX),
        cost: None,
    };
    // Compared on this controller's fields only: billing writes `cost` and its own conditions
    // beside them (conditions are a map by type, so applying `Ready` leaves the others be).
    let previous_own = previous.map(|p| TenantStatus {
        conditions: p.conditions.iter().filter(|c| c.type_ == "Ready").cloned().collect(),
        cost: None,
        ..p.clone()
    });
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let wrote =
        yiyun_kube::conditions::write_status(&api, &tenant.name_any(), previous_own.as_ref(), &status)
            .await?;
    write(ctx, "TenantStatus", wrote);
    Ok(())
}
