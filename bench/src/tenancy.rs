//! `yiyun bench tenancy`: a province-wide tenant tree on a real cluster, timed end to end.
//!
//! 1. Baseline: the same namespaces and objects the controller keeps, written directly by a
//!    plain client with the same concurrency: the apiserver's own limit for this workload. Then
//!    what a root change writes, written directly to stand-ins of the tree's tenants.
//! 2. The tree applied with `yiyun controller` running: time until every tenant is Ready.
//! 3. The root's ceiling lowered, then changed four times more: time until every tenant's
//!    `status.allocated` shows the new split (the expected values come from the same pure plan
//!    the controller uses). The same writes then go directly to the tree's own objects with the
//!    controller stopped; every quota is written again by merge patch and by apply, for the
//!    apiserver's CPU per write of each; and the restarted controller repairs them.
//! 4. Idle: reconciles and writes per minute with nothing changing.
//! 5. The tree deleted: time until every tenant is gone.
//!
//! The controller runs as a separate process so its CPU time and peak RSS are its own.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::{api::core::v1::ResourceQuota, apimachinery::pkg::api::resource::Quantity};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};
use yiyun_crds::{FIELD_MANAGER, TENANT_FINALIZER, Tenant, labels::TENANT};
use yiyun_quota::{Amounts, Level, Milli, Resource, Standing, TenantNode, World};

use crate::{
    Common, Controller, Error, MANAGER, cluster_cpu_seconds, cpu_seconds, idle, install_crds, progress,
    quiet_cluster, wait_until,
};

const PREFIX: &str = "bench";

/// What `yiyun bench tenancy` runs.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Tenants in the tree: 1 province, 16 cities, 100 counties, the rest departments.
    #[arg(long, default_value_t = 1000)]
    pub tenants: usize,
    /// Namespaces per tenant.
    #[arg(long, default_value_t = 2)]
    pub namespaces: usize,
    #[command(flatten)]
    pub common: Common,
}

/// One tenant of the generated tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub parent: Option<String>,
    pub level: Level,
    pub max_cpu: u32,
}

/// The tree: ceilings overcommitted at every level (16 cities × 2000 > 20000), so a change at
/// the root reaches every tenant's allocation.
pub fn tree(tenants: usize) -> Vec<Spec> {
    let cities = 16.min(tenants.saturating_sub(1));
    let counties = 100.min(tenants.saturating_sub(1 + cities));
    let departments = tenants.saturating_sub(1 + cities + counties);
    let root = format!("{PREFIX}-anhui");
    let mut specs = vec![Spec { name: root.clone(), parent: None, level: Level::Province, max_cpu: 20000 }];
    for c in 0..cities {
        specs.push(Spec {
            name: format!("{PREFIX}-c{c}"),
            parent: Some(root.clone()),
            level: Level::City,
            max_cpu: 2000,
        });
    }
    for k in 0..counties {
        let city = format!("{PREFIX}-c{}", k % cities.max(1));
        specs.push(Spec {
            name: format!("{city}-k{k}"),
            parent: Some(city),
            level: Level::County,
            max_cpu: 200,
        });
    }
    let county_names: Vec<String> =
        specs.iter().filter(|s| s.level == Level::County).map(|s| s.name.clone()).collect();
    for d in 0..departments {
        let parent = county_names.get(d % county_names.len().max(1)).cloned().unwrap_or_else(|| root.clone());
        specs.push(Spec {
            name: format!("{parent}-d{d}"),
            parent: Some(parent),
            level: Level::Department,
            max_cpu: 20,
        });
    }
    specs
}

fn namespaces_of(spec: &Spec, per_tenant: usize) -> Vec<String> {
    (0..per_tenant).map(|i| format!("{}-n{i}", spec.name)).collect()
}

fn level_name(level: Level) -> &'static str {
    level.name()
}

fn tenant_object(spec: &Spec, root_max: u32, per_tenant: usize) -> Value {
    let max = if spec.parent.is_none() { root_max } else { spec.max_cpu };
    let namespaces: Vec<Value> =
        namespaces_of(spec, per_tenant).into_iter().map(|n| json!({"name": n})).collect();
    json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": spec.name},
        "spec": {
            "displayName": format!("基准 {}", spec.name), "level": level_name(spec.level), "parent": spec.parent,
            "owners": [{"kind": "Group", "name": format!("{}-admins", spec.name)}],
            "quota": {"max": {"cpu": max}}, "namespaces": namespaces, "deletionPolicy": "Delete"
        }
    })
}

/// `status.allocated.cpu` of every tenant once the controller has caught up with `root_max`.
pub fn expected_allocations(specs: &[Spec], root_max: u32, per_tenant: usize) -> BTreeMap<String, String> {
    let world = World {
        tenants: specs
            .iter()
            .map(|s| TenantNode {
                name: s.name.clone(),
                parent: s.parent.clone(),
                level: s.level,
                guaranteed: Amounts::default(),
                max: [(
                    Resource::Cpu,
                    Milli::units(i64::from(if s.parent.is_none() { root_max } else { s.max_cpu })),
                )]
                .into_iter()
                .collect(),
                namespaces: namespaces_of(s, per_tenant),
                standing: Standing::Ready,
                seniority: String::new(),
                allowed_regions: Vec::new(),
            })
            .collect(),
        namespaces: BTreeMap::new(),
    };
    let plan = yiyun_quota::plan(&world);
    plan.tenants
        .into_iter()
        .map(|(name, p)| (name, p.allocated.amount(Resource::Cpu).format(false)))
        .collect()
}

/// Runs the benchmark and prints its table.
pub async fn run(config: Config) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let timeout = Duration::from_secs(config.common.timeout_seconds);
    let specs = tree(config.tenants);
    let namespaces = specs.len() * config.namespaces;
    progress(&format!(
        "tree: {} tenants ({} namespaces); each phase takes seconds to a few minutes",
        specs.len(),
        namespaces
    ));

    install_crds(&client, timeout).await?;
    // The root's ceiling in CPUs, before phase 3 changes it.
    let root_max = 20000;

    // 1. Baseline: the same objects, written straight.
    quiet_cluster(&client).await?;
    progress("phase 1/5: baseline, writing the same objects directly");
    let started = Instant::now();
    let baseline_names: Vec<String> = (0..namespaces).map(|i| format!("{PREFIX}-base-{i}")).collect();
    stream::iter(baseline_names.iter().map(|ns| write_baseline_namespace(&client, ns)))
        .buffer_unordered(config.common.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let baseline = started.elapsed();

    // The floor of phase 3: what a root change writes (each tenant's quotas, then its status),
    // written directly to stand-ins of the tree's tenants over the baseline's namespaces, as many
    // at once as the controller reconciles. The stand-ins are shaped like the tree's tenants
    // (spec, finalizer, a status written once before) so that the same writes cost the same.
    let tenants: Api<Tenant> = Api::all(client.clone());
    let stand_ins: Vec<StandIn> = specs
        .iter()
        .zip(baseline_names.chunks(config.namespaces.max(1)))
        .enumerate()
        .map(|(i, (spec, namespaces))| StandIn {
            name: format!("{PREFIX}-base-t{i}"),
            path: path_of(spec, &specs),
            namespaces: namespaces.to_vec(),
        })
        .collect();
    stream::iter(specs.iter().zip(&stand_ins).map(|(spec, stand_in)| {
        let mut object = tenant_object(spec, root_max, config.namespaces);
        object["metadata"]["name"] = json!(stand_in.name);
        object["spec"]["namespaces"] = stand_in.namespaces.iter().map(|n| json!({"name": n})).collect();
        let client = &client;
        async move {
            apply(client, object).await?;
            let finalizer = json!({"metadata": {"finalizers": [TENANT_FINALIZER]}});
            Api::<Tenant>::all(client.clone())
                .patch(&stand_in.name, &PatchParams::default(), &Patch::Merge(&finalizer))
                .await?;
            write_root_change_directly(client, stand_in, 20).await
        }
    }))
    .buffer_unordered(config.common.concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    quiet_cluster(&client).await?;
    // Timed like phase 3: until a watch shows every status.
    let watched = WatchedTenants::start(tenants.clone());
    wait_until(timeout, "the stand-ins listed", || async {
        let listed = watched.count(|t| t.name_any().starts_with(&format!("{PREFIX}-base-t")));
        Ok((listed == stand_ins.len(), format!("{listed} stand-ins listed")))
    })
    .await?;
    let floor = timed_direct_writes(
        stand_ins.iter().map(|stand_in| write_root_change_directly(&client, stand_in, 18)),
        &watched,
        "18",
        timeout,
    )
    .await?;
    drop(watched);
    stream::iter(stand_ins.iter().map(|stand_in| async {
        let no_finalizer = json!({"metadata": {"finalizers": null}});
        tenants.patch(&stand_in.name, &PatchParams::default(), &Patch::Merge(&no_finalizer)).await?;
        delete(&tenants, &stand_in.name).await
    }))
    .buffer_unordered(config.common.concurrency)
    .try_collect::<Vec<()>>()
    .await?;

    // 2. The tree, reconciled by the controller, once the cluster is done with the baseline.
    quiet_cluster(&client).await?;
    let mut controller = Controller::start()?;
    controller.wait_ready(timeout).await?;
    progress("phase 2/5: applying the tree");
    let watched = WatchedTenants::start(tenants.clone());
    let cpu_before = controller.cpu_seconds();
    let writes_before = controller.counters()?.writes;
    let started = Instant::now();
    stream::iter(specs.iter().map(|spec| apply(&client, tenant_object(spec, root_max, config.namespaces))))
        .buffer_unordered(config.common.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let applied = started.elapsed();
    wait_until(timeout, "every tenant Ready", || async {
        let ready = watched.count(is_ready);
        Ok((ready == specs.len(), format!("{ready}/{} Ready", specs.len())))
    })
    .await?;
    let to_ready = started.elapsed();
    let cpu_ready = controller.cpu_seconds() - cpu_before;
    let writes_ready = controller.counters()?.writes - writes_before;
    // At least: every managed object once, and one status per tenant.
    let least_writes = namespaces * 5 + specs.len();

    // 3. A lower root ceiling, seen in every subtree's allocation; then more changes of it: a
    // single change varies by ±0.5 s on a small shared machine, the median of several less.
    progress(&format!(
        "phase 3/5: changing the root ceiling {} times: {root_max} → {} CPUs",
        ROOT_CEILINGS.len(),
        ROOT_CEILINGS.map(|c| c.to_string()).join(" → ")
    ));
    let mut changes = Vec::new();
    let mut from = root_max;
    for to in ROOT_CEILINGS {
        changes.push(
            change_root(&client, &controller, &watched, &specs, (from, to), config.namespaces, timeout)
                .await?,
        );
        from = to;
    }
    let first = &changes[0];
    let mut times: Vec<Duration> = changes.iter().map(|c| c.time).collect();
    times.sort();

    // The same writes on the tree's own objects, with the controller stopped: the floor in the
    // cluster as it is now. Then the controller, restarted, finds all of them not as planned.
    let mut peak_rss = controller.peak_rss_mib();
    let mut total_cpu = controller.cpu_seconds();
    controller.stop();
    quiet_cluster(&client).await?;
    let direct = write_tree_change_directly(&client, &watched, timeout).await?;
    let quota_costs = quota_write_costs(&client).await?;
    let started = Instant::now();
    let mut controller = Controller::start()?;
    controller.wait_ready(timeout).await?;
    let expected = expected_allocations(&specs, from, config.namespaces);
    wait_until(timeout, "every allocation restored", || async {
        let right = watched.count(|t| allocated_as_expected(t, &expected));
        Ok((right == specs.len(), format!("{right}/{} allocations restored", specs.len())))
    })
    .await?;
    let restored = started.elapsed();

    // 4. Idle.
    progress("phase 4/5: idle");
    let (idle_reconciles, idle_writes, idle_cpu) = idle(&controller, config.common.idle_seconds).await?;

    // 5. Deletion, leaves first through the finalizers.
    progress("phase 5/5: deleting the tree");
    quiet_cluster(&client).await?;
    let started = Instant::now();
    stream::iter(specs.iter().map(|s| delete(&tenants, &s.name)))
        .buffer_unordered(config.common.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    wait_until(timeout, "every tenant gone", || async {
        let left = watched.count(|_| true);
        Ok((left == 0, format!("{left} tenants left")))
    })
    .await?;
    let to_delete = started.elapsed();
    peak_rss = peak_rss.max(controller.peak_rss_mib());
    total_cpu += controller.cpu_seconds();
    controller.stop();
    let namespaces_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in &baseline_names {
        let _ = namespaces_api.delete(ns, &DeleteParams::background()).await;
    }

    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    println!();
    println!(
        "yiyun bench tenancy: {} tenants, {namespaces} namespaces, concurrency {}",
        specs.len(),
        config.common.concurrency
    );
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| baseline: the same namespaces + 5 objects each, written directly | {} | (apiserver limit) |",
        secs(baseline)
    );
    println!("| tree applied (SSA of {} Tenants) | {} | |", specs.len(), secs(applied));
    println!(
        "| apply → every tenant Ready | {} ({:.2}× baseline) | < 60 s |",
        secs(to_ready),
        to_ready.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("| controller CPU until Ready | {cpu_ready:.1} s | |");
    println!("| controller writes until Ready | {writes_ready:.0} (at least {least_writes}) | |");
    println!(
        "| root ceiling changed {} times, at least {} allocations updated each, all {} checked: median (fastest–slowest) | {} ({}–{}) | < 5 s |",
        changes.len(),
        changes.iter().map(|c| c.changing).min().unwrap_or_default(),
        specs.len(),
        secs(times[times.len() / 2]),
        secs(times[0]),
        secs(times[times.len() - 1])
    );
    let each: Vec<String> =
        changes.iter().map(|c| format!("{}→{}: {}", c.root.0, c.root.1, secs(c.time))).collect();
    println!("| … each change, in order | {} | |", each.join(", "));
    println!(
        "| … the same writes made directly to stand-ins of the same shape (2 quotas then a status per tenant, {RECONCILE_CONCURRENCY} at once), all shown | {} (written in {}) | (apiserver limit) |",
        secs(floor.shown),
        secs(floor.written)
    );
    let cpu_list = |cpu: &[(&str, f64)]| {
        cpu.iter().map(|(name, cpu)| format!("{name} {cpu:.1} s")).collect::<Vec<_>>().join(", ")
    };
    println!("| … CPU of the processes meanwhile | {} | |", cpu_list(&floor.cpu));
    println!(
        "| … the same writes made directly to the tree's own objects after the changes, controller stopped | {} (written in {}) | (apiserver limit) |",
        secs(direct.shown),
        secs(direct.written)
    );
    println!("| … CPU of the processes meanwhile | {} | |", cpu_list(&direct.cpu));
    let quota_costs: Vec<String> = quota_costs.iter().map(|(how, ms)| format!("{how} {ms:.2} ms")).collect();
    println!(
        "| apiserver CPU per quota write ({} quotas, {} at once, the cluster's other work meanwhile included) | {} | |",
        namespaces,
        2 * RECONCILE_CONCURRENCY,
        if quota_costs.is_empty() { "not a local cluster".to_string() } else { quota_costs.join(", ") }
    );
    println!(
        "| controller restarted with all {} of those objects off plan → every allocation restored | {} | |",
        specs.len() * (config.namespaces + 1),
        secs(restored)
    );
    println!("| first change: half of the allocations updated | {} | |", secs(first.halfway));
    println!(
        "| first change: controller's first and last write (polled every 0.1 s) | {}, {} | |",
        first.first_write.map_or_else(|| "none".to_string(), secs),
        secs(first.last_write)
    );
    println!(
        "| first change: controller writes, reconciles, CPU | {:.0}, {:.0}, {:.1} s | |",
        first.writes, first.reconciles, first.cpu
    );
    println!("| first change: CPU of the other processes | {} | |", cpu_list(&first.others_cpu));
    println!("| idle reconciles per minute | {idle_reconciles:.1} | 0 beyond resyncs (every 30 min) |");
    println!("| idle writes per minute | {idle_writes:.1} | 0 |");
    println!("| idle controller CPU over {}s | {idle_cpu:.2} s | |", config.common.idle_seconds);
    println!("| tree deleted (finalizers, Delete policy) | {} | |", secs(to_delete));
    println!("| controller peak RSS | {peak_rss:.0} MiB | |");
    println!("| controller CPU in total | {total_cpu:.1} s | |");
    Ok(())
}

/// What one change of the root's ceiling took.
struct RootChange {
    /// The root's ceiling before and after, in CPUs.
    root: (u32, u32),
    /// Tenants whose allocation changes.
    changing: usize,
    /// Until every tenant's status showed its new allocation.
    time: Duration,
    halfway: Duration,
    /// When the controller's writes began and when the last one was counted.
    first_write: Option<Duration>,
    last_write: Duration,
    writes: f64,
    reconciles: f64,
    cpu: f64,
    /// CPU seconds each other process used meanwhile: the local cluster's, then the benchmark's
    /// own (its watch and polling).
    others_cpu: Vec<(&'static str, f64)>,
}

/// Sets the root's ceiling to `root.1` CPUs and waits until every status shows the new split.
async fn change_root(
    client: &Client,
    controller: &Controller,
    watched: &WatchedTenants,
    specs: &[Spec],
    root: (u32, u32),
    per_tenant: usize,
    timeout: Duration,
) -> Result<RootChange, Error> {
    let expected = expected_allocations(specs, root.1, per_tenant);
    let before = expected_allocations(specs, root.0, per_tenant);
    let changing = expected.iter().filter(|(name, cpu)| before.get(*name) != Some(*cpu)).count();
    // From a quiet cluster, as an admin's change would come: the controller done with what came
    // before, kube-controller-manager done with the new namespaces and quotas.
    quiet_cluster(client).await?;
    let cpu_before = controller.cpu_seconds();
    let others_before = others_cpu_seconds();
    let counted_before = controller.counters()?;
    let writes_before = counted_before.writes;
    let started = Instant::now();
    apply(client, tenant_object(&specs[0], root.1, per_tenant)).await?;
    let halfway = std::cell::Cell::new(None);
    let first_write = std::cell::Cell::new(None);
    let last_write = std::cell::Cell::new((writes_before, Duration::ZERO));
    wait_until(timeout, "every allocation updated", || async {
        let writes = controller.counters()?.writes;
        if writes > last_write.get().0 {
            last_write.set((writes, started.elapsed()));
            if first_write.get().is_none() {
                first_write.set(Some(started.elapsed()));
            }
        }
        let right = watched.count(|t| allocated_as_expected(t, &expected));
        if halfway.get().is_none() && right * 2 >= specs.len() {
            halfway.set(Some(started.elapsed()));
        }
        Ok((right == specs.len(), format!("{right}/{} allocations current", specs.len())))
    })
    .await?;
    let time = started.elapsed();
    Ok(RootChange {
        root,
        changing,
        time,
        halfway: halfway.get().unwrap_or(time),
        first_write: first_write.get(),
        last_write: last_write.get().1,
        writes: controller.counters()?.writes - writes_before,
        reconciles: controller.counters()?.reconciles - counted_before.reconciles,
        cpu: controller.cpu_seconds() - cpu_before,
        others_cpu: cpu_since(others_before),
    })
}

/// CPU seconds each process used since `before` was taken by [`others_cpu_seconds`].
fn cpu_since(before: Vec<(&'static str, f64)>) -> Vec<(&'static str, f64)> {
    others_cpu_seconds()
        .into_iter()
        .zip(before)
        .map(|((name, after), (_, before))| (name, after - before))
        .collect()
}

fn others_cpu_seconds() -> Vec<(&'static str, f64)> {
    let mut cpu = cluster_cpu_seconds();
    cpu.push(("benchmark", cpu_seconds(std::process::id())));
    cpu
}

async fn apply(client: &Client, object: Value) -> Result<(), Error> {
    let tenants: Api<Tenant> = Api::all(client.clone());
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    tenants.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object)).await?;
    Ok(())
}

async fn delete(tenants: &Api<Tenant>, name: &str) -> Result<(), Error> {
    match tenants.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The root's ceiling in CPUs after each change of phase 3; it starts at 20000. Every change
/// moves every tenant's allocation.
const ROOT_CEILINGS: [u32; 5] = [18000, 16000, 18000, 16000, 20000];

/// Tenants the tenancy controller reconciles at once.
const RECONCILE_CONCURRENCY: usize = 64;

/// How long direct writes took and what they cost.
struct DirectWrites {
    written: Duration,
    /// Until a watch showed every status.
    shown: Duration,
    cpu: Vec<(&'static str, f64)>,
}

/// What the controller writes for a root change, made by this client to the tree's own
/// objects: each tenant's quota limits (a merge patch with the controller's field manager), then
/// its status (the current one with another allocation), as many tenants at once as the
/// controller reconciles. The values are not the plan's: only the cost of the writes is wanted.
async fn write_tree_change_directly(
    client: &Client,
    watched: &WatchedTenants,
    timeout: Duration,
) -> Result<DirectWrites, Error> {
    const MARK: &str = "1";
    let mut by_tenant: BTreeMap<String, Vec<ResourceQuota>> = BTreeMap::new();
    for quota in tree_quotas(client).await? {
        if let Some(tenant) = quota.labels().get(TENANT) {
            by_tenant.entry(tenant.clone()).or_default().push(quota);
        }
    }
    let tenants: Vec<Tenant> = watched.store.state().iter().map(|t| (**t).clone()).collect();
    let writes = tenants.iter().map(|tenant| {
        let quotas = by_tenant.get(&tenant.name_any()).cloned().unwrap_or_default();
        async move {
            let writes =
                quotas.iter().map(|quota| write_quota_cpu(client, quota, MARK, QuotaWrite::MergePatch));
            futures::future::try_join_all(writes).await?;
            let mut status = serde_json::to_value(&tenant.status)?;
            status["allocated"]["cpu"] = json!(MARK);
            let body = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "status": status});
            let api: Api<Tenant> = Api::all(client.clone());
            api.patch_status(
                &tenant.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
            Ok::<(), Error>(())
        }
    });
    timed_direct_writes(writes, watched, MARK, timeout).await
}

/// The ResourceQuotas of the tree's namespaces.
async fn tree_quotas(client: &Client) -> Result<Vec<ResourceQuota>, Error> {
    let quotas: Api<ResourceQuota> = Api::all(client.clone());
    Ok(quotas.list(&ListParams::default().labels(TENANT)).await?.items)
}

/// How a quota's limits are written.
#[derive(Clone, Copy)]
enum QuotaWrite {
    /// A JSON merge patch of the limits, as the controller changes them.
    MergePatch,
    /// Server-side apply of the whole quota, labels included, as the controller creates it.
    Apply,
}

/// Sets `quota`'s CPU limit to `cpu` with the controller's field manager.
async fn write_quota_cpu(
    client: &Client,
    quota: &ResourceQuota,
    cpu: &str,
    how: QuotaWrite,
) -> Result<(), Error> {
    let namespace = quota.namespace().unwrap_or_default();
    let mut hard = quota.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    hard.insert("requests.cpu".into(), Quantity(cpu.into()));
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &namespace);
    match how {
        QuotaWrite::MergePatch => {
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            api.patch(&quota.name_any(), &params, &Patch::Merge(&json!({"spec": {"hard": hard}}))).await?;
        }
        QuotaWrite::Apply => {
            let body = json!({
                "apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": quota.name_any(), "namespace": namespace, "labels": quota.labels()},
                "spec": {"hard": hard}
            });
            api.patch(&quota.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
                .await?;
        }
    }
    Ok(())
}

/// The apiserver's CPU per write of every quota of the tree, by merge patch and by apply, twice
/// each in turn, from the first write until the last has returned (kube-controller-manager's
/// status updates, the same either way, partly fall inside). Each round starts on a quiet
/// cluster. Empty against a cluster not started by `e2e/cluster`.
async fn quota_write_costs(client: &Client) -> Result<Vec<(&'static str, f64)>, Error> {
    let apiserver_cpu = || cluster_cpu_seconds().into_iter().find(|(name, _)| *name == "kube-apiserver");
    let mut costs = Vec::new();
    let rounds = [("merge patch", QuotaWrite::MergePatch), ("apply", QuotaWrite::Apply)].repeat(2);
    for (round, (name, how)) in rounds.into_iter().enumerate() {
        let quotas = tree_quotas(client).await?;
        quiet_cluster(client).await?;
        let Some((_, before)) = apiserver_cpu() else { return Ok(Vec::new()) };
        let cpu = (round + 2).to_string();
        let writes = quotas.iter().map(|quota| write_quota_cpu(client, quota, &cpu, how));
        stream::iter(writes).buffer_unordered(2 * RECONCILE_CONCURRENCY).try_collect::<Vec<()>>().await?;
        let Some((_, after)) = apiserver_cpu() else { return Ok(Vec::new()) };
        costs.push((name, (after - before) * 1000.0 / quotas.len().max(1) as f64));
    }
    Ok(costs)
}

/// Runs `writes`, as many at once as the controller reconciles, and waits until the watch
/// shows `allocated` CPUs in the status of every tenant.
async fn timed_direct_writes(
    writes: impl Iterator<Item = impl Future<Output = Result<(), Error>>>,
    watched: &WatchedTenants,
    allocated: &str,
    timeout: Duration,
) -> Result<DirectWrites, Error> {
    let cpu_before = others_cpu_seconds();
    let started = Instant::now();
    stream::iter(writes).buffer_unordered(RECONCILE_CONCURRENCY).try_collect::<Vec<()>>().await?;
    let written = started.elapsed();
    wait_until(timeout, "every direct write shown", || async {
        let tenants = watched.count(|_| true);
        let shown = watched.count(|t| allocated_cpu(t) == Some(allocated));
        Ok((shown == tenants, format!("{shown}/{tenants} statuses shown")))
    })
    .await?;
    Ok(DirectWrites { written, shown: started.elapsed(), cpu: cpu_since(cpu_before) })
}

/// Whether a tenant's status shows the allocation `expected` holds for it.
fn allocated_as_expected(tenant: &Tenant, expected: &BTreeMap<String, String>) -> bool {
    allocated_cpu(tenant).is_some_and(|cpu| expected.get(&tenant.name_any()).is_some_and(|e| e == cpu))
}

/// The CPU a tenant's status shows as allocated.
fn allocated_cpu(tenant: &Tenant) -> Option<&str> {
    Some(tenant.status.as_ref()?.allocated.as_ref()?.cpu.as_ref()?.0.as_str())
}

/// A tenant of the tree's shape over the baseline's namespaces, with no controller.
struct StandIn {
    name: String,
    /// The path of the tree's tenant it stands in for.
    path: Vec<String>,
    namespaces: Vec<String>,
}

/// Names from the root down to `spec`.
fn path_of(spec: &Spec, specs: &[Spec]) -> Vec<String> {
    let by_name: BTreeMap<&str, &Spec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut path = vec![spec.name.clone()];
    let mut parent = spec.parent.as_deref();
    while let Some(name) = parent {
        path.push(name.to_string());
        parent = by_name.get(name).and_then(|s| s.parent.as_deref());
    }
    path.reverse();
    path
}

/// What the controller writes for one tenant when the root's ceiling changes: new quotas in
/// its namespaces (`allocated` split equally, as in the tree), then its status.
async fn write_root_change_directly(
    client: &Client,
    stand_in: &StandIn,
    allocated: u32,
) -> Result<(), Error> {
    let share = allocated / u32::try_from(stand_in.namespaces.len()).unwrap_or(u32::MAX).max(1);
    let quotas = stand_in.namespaces.iter().map(|ns| async move {
        let limits = json!({"spec": {"hard": {"requests.cpu": share.to_string()}}});
        let api: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
        api.patch("q", &params, &Patch::Merge(&limits)).await.map(|_| ())
    });
    futures::future::try_join_all(quotas).await?;
    let status = json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant",
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                "message": "2 namespace(s) in place with quota, defaults, access and isolation",
                "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "path": stand_in.path, "namespaces": stand_in.namespaces,
            "usage": {"own": {"cpu": "0"}, "subtree": {"cpu": "0"}}, "allocated": {"cpu": allocated.to_string()},
            "children": 0
        }
    });
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .patch_status(&stand_in.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&status))
        .await?;
    Ok(())
}

/// The objects the controller keeps in one namespace, written by a plain client.
async fn write_baseline_namespace(client: &Client, ns: &str) -> Result<(), Error> {
    let objects = [
        ("", "v1", "Namespace", json!({"metadata": {"name": ns, "labels": {"bench": "baseline"}}})),
        (
            "",
            "v1",
            "ResourceQuota",
            json!({"metadata": {"name": "q", "namespace": ns}, "spec": {"hard": {"requests.cpu": "10"}}}),
        ),
        (
            "",
            "v1",
            "LimitRange",
            json!({"metadata": {"name": "l", "namespace": ns}, "spec": {"limits": [{"type": "Container", "defaultRequest": {"cpu": "100m"}}]}}),
        ),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            json!({"metadata": {"name": "r", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "admins"}]}),
        ),
        (
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            json!({"metadata": {"name": "n", "namespace": ns}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        ),
    ];
    for (group, version, kind, mut body) in objects {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        body["apiVersion"] = json!(resource.api_version);
        body["kind"] = json!(kind);
        let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let api: Api<DynamicObject> = if kind == "Namespace" {
            Api::all_with(client.clone(), &resource)
        } else {
            Api::namespaced_with(client.clone(), ns, &resource)
        };
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    }
    Ok(())
}

fn is_ready(tenant: &Tenant) -> bool {
    tenant.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready" && c.status == "True" && c.observed_generation == tenant.metadata.generation
        })
    })
}

/// The bench's tenants as a watch shows them: checking a condition costs the apiserver
/// nothing, where listing 1,000 tenants several times a second would load it.
struct WatchedTenants {
    store: kube::runtime::reflector::Store<Tenant>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchedTenants {
    fn start(tenants: Api<Tenant>) -> Self {
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        let (store, writer) = reflector::store();
        let events = reflector(writer, watcher(tenants, watcher::Config::default())).default_backoff();
        let task = tokio::spawn(events.for_each(|_| async {}));
        WatchedTenants { store, task }
    }

    fn count(&self, predicate: impl Fn(&Tenant) -> bool) -> usize {
        self.store.state().iter().filter(|t| t.name_any().starts_with(PREFIX) && predicate(t)).count()
    }
}

impl Drop for WatchedTenants {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_has_the_shape_of_a_province() {
        let specs = tree(1000);
        assert_eq!(specs.len(), 1000);
        let count = |level| specs.iter().filter(|s| s.level == level).count();
        assert_eq!(
            (count(Level::Province), count(Level::City), count(Level::County), count(Level::Department)),
            (1, 16, 100, 883)
        );
        assert!(
            specs.iter().all(|s| s.name.len() <= 63 && namespaces_of(s, 2).iter().all(|n| n.len() <= 63))
        );
    }

    #[test]
    fn every_root_change_of_the_benchmark_moves_every_allocation() {
        let specs = tree(1000);
        let mut before = expected_allocations(&specs, 20000, 2);
        for ceiling in ROOT_CEILINGS {
            let after = expected_allocations(&specs, ceiling, 2);
            let moved = specs.iter().filter(|s| before[&s.name] != after[&s.name]).count();
            assert_eq!(moved, specs.len(), "the change to {ceiling} CPUs moves only {moved} allocations");
            before = after;
        }
    }

    #[test]
    fn lowering_the_root_ceiling_changes_allocations_all_the_way_down() {
        let specs = tree(1000);
        let before = expected_allocations(&specs, 20000, 2);
        let after = expected_allocations(&specs, 18000, 2);
        let changed = specs.iter().filter(|s| before[&s.name] != after[&s.name]).count();
        assert!(changed > 900, "only {changed} of 1000 allocations change");
        let dept = specs.iter().find(|s| s.level == Level::Department).unwrap();
        assert!(Milli::parse(&after[&dept.name]).unwrap() < Milli::units(20));
    }
}
