//! Least privilege, checked both ways: every verb the chart grants a component names the code
//! that uses it, and that code is still there. A grant with no use, or a use whose code is gone,
//! fails the test; so does a use the role does not grant. (The e2e tests also run each component
//! with exactly its chart role, which catches a grant that is missing.)

use std::collections::BTreeSet;

use serde_json::Value;
use yiyun_e2e::repo_file;

/// `(apiGroup, resource, verb)` as a role grants it.
type Grant = (String, String, String);

/// One use of the apiserver: what it needs, and a piece of the code that does it (compared with
/// all whitespace removed, so formatting does not matter).
struct Use {
    group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
    file: &'static str,
    code: &'static str,
}

const fn uses(
    group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
    file: &'static str,
    code: &'static str,
) -> Use {
    Use { group, resources, verbs, file, code }
}

const WATCH: &[&str] = &["list", "watch"];
const LEADER: &str = "kube-support/src/leader.rs";

const SCHEDULER: &[Use] = &[
    uses(
        "",
        &["pods"],
        WATCH,
        "scheduler/src/edge.rs",
        r#"watch("Pod",Api::<KubePod>::all(client.clone()),pods,Update::Pod)"#,
    ),
    uses(
        "",
        &["pods/binding"],
        &["create"],
        "scheduler/src/edge.rs",
        r#"create_subresource::<Binding,serde_json::Value>("binding""#,
    ),
    uses(
        "",
        &["pods/eviction"],
        &["create"],
        "scheduler/src/edge.rs",
        "api.evict(&name,&EvictParams::default())",
    ),
    uses("", &["pods/status"], &["patch"], "scheduler/src/report.rs", "pods.patch_status(&name"),
    uses("", &["configmaps"], &["get"], "scheduler/src/edge.rs", "store.api.get_opt(&store.name)"),
    // Server-side apply of an object not there yet is authorized as `create` as well.
    uses(
        "",
        &["configmaps"],
        &["patch", "create"],
        "scheduler/src/edge.rs",
        "api.patch(&name,&params,&Patch::Apply(&kept))",
    ),
    uses(
        "",
        &["events"],
        &["create"],
        "scheduler/src/report.rs",
        "events.create(&PostParams::default(),&event)",
    ),
    uses(
        "",
        &["nodes"],
        WATCH,
        "scheduler/src/edge.rs",
        r#"watch("Node",Api::<KubeNode>::all(client.clone())"#,
    ),
    uses("", &["namespaces"], WATCH, "scheduler/src/edge.rs", "Api::<Namespace>::all(client.clone())"),
    uses("yiyun.io", &["tenants"], WATCH, "scheduler/src/edge.rs", "Api::<Tenant>::all(client.clone())"),
    uses(
        "yiyun.io",
        &["computesites"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<ComputeSite>::all(client.clone())",
    ),
    uses("yiyun.io", &["podgroups"], WATCH, "scheduler/src/edge.rs", "Api::<PodGroup>::all(client.clone())"),
    uses(
        "yiyun.io",
        &["podgroups/status"],
        &["patch"],
        "scheduler/src/edge.rs",
        r#"self.patch_status(api,name,status,"cannot write the PodGroup status")"#,
    ),
    uses(
        "policy",
        &["poddisruptionbudgets"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<PodDisruptionBudget>::all(client.clone())",
    ),
    uses(
        "",
        &["persistentvolumeclaims"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<PersistentVolumeClaim>::all(client.clone())",
    ),
    uses(
        "",
        &["persistentvolumeclaims"],
        &["patch"],
        "scheduler/src/edge.rs",
        "api.patch(&claim,&PatchParams::default(),&Patch::Merge(&patch))",
    ),
    uses(
        "",
        &["persistentvolumes"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<PersistentVolume>::all(client.clone())",
    ),
    uses(
        "",
        &["persistentvolumes"],
        &["get"],
        "scheduler/src/edge.rs",
        "letcurrent=api.get(&volume).await?;",
    ),
    uses(
        "",
        &["persistentvolumes"],
        &["patch"],
        "scheduler/src/edge.rs",
        "api.patch(&volume,&PatchParams::default(),&Patch::Merge(&patch))",
    ),
    uses(
        "storage.k8s.io",
        &["storageclasses"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<StorageClass>::all(client.clone())",
    ),
    uses(
        "storage.k8s.io",
        &["csinodes"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<CSINode>::all(client.clone())",
    ),
    uses(
        "resource.k8s.io",
        &["resourceclaims"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<ResourceClaim>::all(client.clone())",
    ),
    uses(
        "resource.k8s.io",
        &["resourceclaims/status"],
        &["patch"],
        "scheduler/src/edge.rs",
        "api.patch_status(&write.name,&PatchParams::default(),&Patch::Merge(&claim_status(write)))",
    ),
    uses(
        "resource.k8s.io",
        &["resourceslices"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<ResourceSlice>::all(client.clone())",
    ),
    uses(
        "resource.k8s.io",
        &["deviceclasses"],
        WATCH,
        "scheduler/src/edge.rs",
        "Api::<DeviceClass>::all(client.clone())",
    ),
];

/// Both components lead through their own Lease, with the shared election.
const LEASES: &[Use] = &[
    uses(
        "coordination.k8s.io",
        &["leases"],
        &["create"],
        LEADER,
        "self.api.create(&PostParams::default(),&lease)",
    ),
    uses("coordination.k8s.io", &["leases"], &["get"], LEADER, "self.api.get_opt(&self.name)"),
    uses(
        "coordination.k8s.io",
        &["leases"],
        &["update"],
        LEADER,
        "self.api.replace(&self.name,&PostParams::default(),&lease)",
    ),
];

const TENANCY: &str = "controller/src/tenancy/mod.rs";
const RECONCILE: &str = "controller/src/tenancy/reconcile.rs";
const SITES: &str = "controller/src/sites/mod.rs";

const CONTROLLER: &[Use] = &[
    uses("yiyun.io", &["tenants"], WATCH, TENANCY, "watcher(Api::<Tenant>::all(client.clone())"),
    // The finalizer is added and removed by JSON patch.
    uses("yiyun.io", &["tenants"], &["patch"], RECONCILE, "finalizer(&api,TENANT_FINALIZER"),
    uses("yiyun.io", &["tenants/status"], &["patch"], RECONCILE, "write_status(tenant,tenant_plan"),
    uses(
        "",
        &["namespaces"],
        WATCH,
        TENANCY,
        "watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone())",
    ),
    uses(
        "",
        &["namespaces"],
        &["create"],
        RECONCILE,
        "api.create(&params,&desired::new_namespace(&namespace,tenant))",
    ),
    uses("", &["namespaces"], &["patch"], RECONCILE, "apply(&api,&objects.namespace,current.as_ref())"),
    uses("", &["namespaces"], &["delete"], RECONCILE, "api.delete(namespace,&params)"),
    uses("", &["resourcequotas"], WATCH, TENANCY, "watcher(Api::<ResourceQuota>::all(client.clone())"),
    uses("", &["limitranges"], WATCH, TENANCY, "watcher(Api::<LimitRange>::all(client.clone())"),
    uses(
        "rbac.authorization.k8s.io",
        &["rolebindings"],
        WATCH,
        TENANCY,
        "watcher(Api::<RoleBinding>::all(client.clone())",
    ),
    uses(
        "networking.k8s.io",
        &["networkpolicies"],
        WATCH,
        TENANCY,
        "watcher(Api::<NetworkPolicy>::all(client.clone())",
    ),
    // Server-side apply creates what is missing and patches what differs.
    uses("", &["resourcequotas"], &["create", "patch"], RECONCILE, "&Patch::Apply(desired)"),
    uses("", &["limitranges"], &["create", "patch"], RECONCILE, r#"keep(ctx,"LimitRange""#),
    uses(
        "rbac.authorization.k8s.io",
        &["rolebindings"],
        &["create", "patch"],
        RECONCILE,
        r#"keep(ctx,"RoleBinding""#,
    ),
    uses(
        "networking.k8s.io",
        &["networkpolicies"],
        &["create", "patch"],
        RECONCILE,
        r#"keep(ctx,"NetworkPolicy""#,
    ),
    uses("", &["resourcequotas"], &["delete"], RECONCILE, r#"remove::<ResourceQuota>(ctx,"ResourceQuota""#),
    uses("", &["limitranges"], &["delete"], RECONCILE, r#"remove::<LimitRange>(ctx,"LimitRange""#),
    uses(
        "rbac.authorization.k8s.io",
        &["rolebindings"],
        &["delete"],
        RECONCILE,
        r#"remove::<RoleBinding>(ctx,"RoleBinding""#,
    ),
    uses(
        "networking.k8s.io",
        &["networkpolicies"],
        &["delete"],
        RECONCILE,
        r#"remove::<NetworkPolicy>(ctx,"NetworkPolicy""#,
    ),
    // RoleBindings to `admin` and `edit` need `bind` on those two roles.
    uses(
        "rbac.authorization.k8s.io",
        &["clusterroles"],
        &["bind"],
        "controller/src/tenancy/desired.rs",
        r#"role_binding(OWNERS,"admin""#,
    ),
    uses("", &["nodes"], WATCH, SITES, "watcher(Api::<Node>::all(client.clone())"),
    uses("", &["nodes"], &["update"], SITES, "api.replace("),
    uses("yiyun.io", &["nodepools"], WATCH, SITES, "watcher(Api::<NodePool>::all(client.clone())"),
    uses("yiyun.io", &["computesites"], WATCH, SITES, "watcher(Api::<ComputeSite>::all(client.clone())"),
    uses(
        "yiyun.io",
        &["nodepools/status"],
        &["patch"],
        SITES,
        "write_status(&api,&pool.name_any(),previous,&status)",
    ),
    uses(
        "yiyun.io",
        &["computesites/status"],
        &["patch"],
        SITES,
        "write_status(&api,&site.name_any(),previous,&status)",
    ),
    uses("", &["pods"], WATCH, SITES, "watcher(Api::<Pod>::all(client.clone()),bound)"),
    uses(
        "",
        &["pods/eviction"],
        &["create"],
        "controller/src/sites/drain.rs",
        "pods.evict(&pod.name_any(),&EvictParams::default())",
    ),
    uses(
        "policy",
        &["poddisruptionbudgets"],
        WATCH,
        SITES,
        "watcher(Api::<PodDisruptionBudget>::all(client.clone())",
    ),
];

const METER: &str = "billing/src/meter_controller.rs";
/// Token and access reviews, for the bill endpoint (and the self-service API).
const ACCESS: &str = "kube-support/src/access.rs";
const COSTS: &str = "billing/src/costs.rs";

const BILLING: &[Use] = &[
    uses("", &["pods"], WATCH, METER, "watcher::watcher(Api::<Pod>::all(client.clone()),config.clone())"),
    uses(
        "",
        &["persistentvolumeclaims"],
        WATCH,
        METER,
        "watcher::watcher(Api::<PersistentVolumeClaim>::all(client.clone()),config)",
    ),
    uses(
        "",
        &["namespaces"],
        WATCH,
        METER,
        "watcher::watcher(Api::<Namespace>::all(client.clone()),config.clone())",
    ),
    uses("", &["nodes"], WATCH, METER, "watcher::watcher(Api::<Node>::all(client.clone()),config.clone())"),
    // A pod can arrive before its namespace or node does.
    uses(
        "",
        &["namespaces"],
        &["get"],
        METER,
        "Api::<Namespace>::all(self.client.clone()).get_opt(&namespace)",
    ),
    uses("", &["nodes"], &["get"], METER, "Api::<Node>::all(self.client.clone()).get_opt(&node)"),
    uses(
        "yiyun.io",
        &["computesites"],
        WATCH,
        METER,
        "watcher::watcher(Api::<ComputeSite>::all(client.clone()),config.clone())",
    ),
    uses(
        "yiyun.io",
        &["tenants"],
        WATCH,
        METER,
        "watcher::watcher(Api::<Tenant>::all(client.clone()),config.clone())",
    ),
    uses(
        "yiyun.io",
        &["tenants/status"],
        &["patch"],
        COSTS,
        r#".patch_status(&name,&PatchParams::apply("yiyun-billing").force(),&Patch::Apply(&patch))"#,
    ),
    uses(
        "yiyun.io",
        &["pricebooks"],
        WATCH,
        METER,
        "watcher::watcher(Api::<PriceBook>::all(client.clone()),config.clone())",
    ),
    uses("yiyun.io", &["pricebooks/status"], &["patch"], METER, "yiyun_kube::conditions::write_status("),
    // The usage basis: what pods use, as metrics-server measures it.
    uses(
        "metrics.k8s.io",
        &["pods"],
        &["list"],
        METER,
        "yiyun_kube::resource_metrics::pod_metrics(&self.client)",
    ),
    uses(
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
        COSTS,
        "recorder.publish(&event,&tenant.object_ref(&()))",
    ),
];

/// Token and access reviews, for every call of the self-service API.
const REVIEWS: &[Use] = &[
    uses(
        "authentication.k8s.io",
        &["tokenreviews"],
        &["create"],
        ACCESS,
        "Api::<TokenReview>::all(client).create(&PostParams::default(),&review)",
    ),
    uses(
        "authorization.k8s.io",
        &["subjectaccessreviews"],
        &["create"],
        ACCESS,
        "Api::<SubjectAccessReview>::all(client).create(&PostParams::default(),&review)",
    ),
];

fn squeezed(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Every `(group, resource, verb)` the ClusterRoles and Roles of a chart manifest grant.
fn grants(manifest: &str) -> BTreeSet<Grant> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&yiyun_e2e::chart::render(manifest)).expect("the manifest is YAML");
    let mut granted = BTreeSet::new();
    for document in documents.iter().filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role"))) {
        for rule in document["rules"].as_array().into_iter().flatten() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        assert!(verb != "*" && resource != "*" && group != "*", "{manifest}: no wildcards");
                        granted.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    granted
}

fn check(manifest: &str, code_uses: &[&[Use]]) {
    let mut needed = BTreeSet::new();
    for found in code_uses.iter().copied().flatten() {
        assert!(
            squeezed(&repo_file(found.file)).contains(&squeezed(found.code)),
            "{manifest}: {} no longer contains `{}`; drop the grant it justified ({} {:?} {:?}) if it is unused",
            found.file,
            found.code,
            found.group,
            found.resources,
            found.verbs
        );
        for resource in found.resources {
            for verb in found.verbs {
                needed.insert((found.group.to_string(), resource.to_string(), verb.to_string()));
            }
        }
    }
    let granted = grants(manifest);
    let unused: Vec<&Grant> = granted.difference(&needed).collect();
    assert!(unused.is_empty(), "{manifest} grants what no code uses: {unused:?}");
    let missing: Vec<&Grant> = needed.difference(&granted).collect();
    assert!(missing.is_empty(), "{manifest} lacks what the code uses: {missing:?}");
}

#[test]
fn the_scheduler_role_grants_exactly_what_its_code_uses() {
    check("scheduler-rbac.yaml", &[SCHEDULER, LEASES]);
}

#[test]
fn the_controller_role_grants_exactly_what_its_code_uses() {
    check("controller-rbac.yaml", &[CONTROLLER, LEASES]);
}

#[test]
fn the_billing_role_grants_exactly_what_its_code_uses() {
    check("billing-rbac.yaml", &[BILLING, REVIEWS, LEASES]);
}

/// The self-service API beyond the reviews every call makes.
const API: &[Use] = &[
    uses(
        "yiyun.io",
        &["resourcerequests"],
        &["create"],
        REQUESTS,
        "api.create(&PostParams::default(),&object)",
    ),
    uses("yiyun.io", &["resourcerequests"], &["get"], REQUESTS, ".get(&request.name)"),
    uses(
        "yiyun.io",
        &["resourcerequests"],
        &["list"],
        REQUESTS,
        "self.requests(&request.namespace).list(&params)",
    ),
    uses(
        "yiyun.io",
        &["resourcerequests/status"],
        &["patch"],
        REQUESTS,
        "api.patch_status(&name,&PatchParams::default(),&Patch::Merge(&patch))",
    ),
    uses(
        "",
        &["namespaces"],
        &["get"],
        "api/src/shared.rs",
        "Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()).get_opt(namespace)",
    ),
    uses("yiyun.io", &["tenants"], &["list"], REQUESTS, "tenants_api.list(&ListParams::default())"),
    // A tenant's namespaces, where its owners may read its bills.
    uses(
        "yiyun.io",
        &["tenants"],
        &["get"],
        "api/src/billing.rs",
        "kube::Api::<yiyun_crds::Tenant>::all(self.client.clone()).get_opt(tenant)",
    ),
    uses("yiyun.io", &["tenants"], &["patch"], REQUESTS, "tenants_api.patch(tenant,"),
    uses(
        "batch",
        &["jobs"],
        WATCH,
        JOBS,
        "watcher::watcher(Api::<Stored>::all(client.clone()),config.clone())",
    ),
    uses(
        "",
        &["pods"],
        WATCH,
        JOBS,
        "watcher::watcher(Api::<Pod>::all(client.clone()),config.clone().labels(JOB_NAME))",
    ),
    uses("", &["nodes"], WATCH, JOBS, "watcher::watcher(Api::<Node>::all(client.clone()),config.clone())"),
    uses(
        "",
        &["namespaces"],
        WATCH,
        JOBS,
        "watcher::watcher(Api::<Namespace>::all(client.clone()),config.labels(labels::TENANT))",
    ),
    uses("batch", &["jobs"], &["create"], JOBS, "api.create(&PostParams::default(),&job)"),
    uses("batch", &["jobs"], &["get"], JOBS, "self.jobs(namespace).get(name)"),
    uses("batch", &["jobs"], &["patch"], JOBS, r#"&Patch::Merge(json!({"spec":{"suspend":false}}))"#),
    uses("batch", &["jobs"], &["delete"], JOBS, "self.jobs(&request.namespace).delete(name,&delete)"),
    uses(
        "yiyun.io",
        &["podgroups"],
        &["create"],
        JOBS,
        "groups.create(&PostParams::default(),&desired_pod_group(request,&job))",
    ),
    uses("", &["events"], &["list"], JOBS, "events.list(&Default::default())"),
    uses("", &["events"], &["watch"], JOBS, "watcher::watcher(events,watcher::Config::default())"),
    uses(
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
        "api/src/shared.rs",
        "recorder.publish(&event,&reference)",
    ),
    // Disaster recovery: protection read from the policies; drills are Failovers.
    uses(
        "yiyun.io",
        &["replicationpolicies"],
        &["list"],
        DR,
        "self.policies(namespace).list(&ListParams::default())",
    ),
    uses("yiyun.io", &["failovers"], &["create"], DR, "failovers.create(&PostParams::default(),&object)"),
    uses("yiyun.io", &["failovers"], &["get"], DR, "failovers.get_opt(name)"),
    uses("yiyun.io", &["failovers"], &["list"], DR, "failovers.list(&ListParams::default())"),
];

const REQUESTS: &str = "api/src/resource_requests.rs";
const JOBS: &str = "api/src/jobs/mod.rs";
const DR: &str = "api/src/disaster_recovery.rs";

#[test]
fn the_api_role_grants_exactly_what_its_code_uses() {
    check("api-rbac.yaml", &[REVIEWS, API]);
}

const REPLICATOR: &str = "dr/src/replicator.rs";
const OPERATIONS: &str = "dr/src/operations.rs";
/// What `yiyun dr run` copies (`dr/src/rules/objects.rs`, `KINDS`), by API group.
const REPLICATED: &[(&str, &[&str])] = &[
    ("", &["serviceaccounts", "secrets", "configmaps", "persistentvolumeclaims", "services"]),
    ("apps", &["deployments", "statefulsets"]),
    ("batch", &["jobs", "cronjobs"]),
    ("yiyun.io", &["podgroups", "resourcerequests"]),
    ("rbac.authorization.k8s.io", &["roles", "rolebindings"]),
];

/// Disaster recovery on the primary (what it does on a standby, that cluster's kubeconfig allows).
const DR_CONTROLLER: &[Use] = &[
    uses(
        "yiyun.io",
        &["replicationpolicies"],
        WATCH,
        REPLICATOR,
        "yiyun_kube::watches::reflect(watcher::watcher(policies,watcher::Config::default())",
    ),
    uses("yiyun.io", &["replicationpolicies"], &["get"], OPERATIONS, "api.get_opt(name)"),
    uses(
        "yiyun.io",
        &["replicationpolicies/status"],
        &["patch"],
        REPLICATOR,
        ".patch_status(&self.name,&PatchParams::apply(FIELD_MANAGER).force(),&Patch::Apply(&patch))",
    ),
    uses(
        "yiyun.io",
        &["failovers"],
        WATCH,
        "dr/src/failovers.rs",
        "yiyun_kube::watches::reflect(watcher::watcher(api,watcher::Config::default())",
    ),
    uses(
        "yiyun.io",
        &["failovers/status"],
        &["patch"],
        "dr/src/failovers.rs",
        "api.patch_status(name,&PatchParams::apply(FIELD_MANAGER).force(),&Patch::Apply(&patch))",
    ),
    uses("", &["secrets"], &["get"], "dr/src/standby.rs", "secrets.get_opt(&reference.name)"),
    uses("", &["namespaces"], &["get"], OPERATIONS, ".get_opt(namespace)"),
    uses(
        "",
        &["namespaces"],
        &["patch"],
        OPERATIONS,
        r#"api.patch(namespace,&params,&Patch::Merge(&json!({"metadata":{"annotations":annotations}})))"#,
    ),
];

/// Every replicated kind: watched; fenced on failover (a merge patch); on failback written back
/// by server-side apply (create and patch) and deleted where the standby deleted it. Writing
/// Roles and RoleBindings back needs `escalate` and `bind`.
fn replicated_uses() -> Vec<Use> {
    let mut found = Vec::new();
    for &(group, resources) in REPLICATED {
        found.push(uses(group, resources, WATCH, REPLICATOR, "Api::all_with(client,&api_resource(&kind))"));
        found.push(uses(
            group,
            resources,
            &["patch"],
            OPERATIONS,
            "api.patch(name,&params,&Patch::Merge(patch))",
        ));
        let apply = "to.patch(&name,&apply,&Patch::Apply(&objects::dormant(kind,&value)))";
        found.push(uses(group, resources, &["create", "patch"], OPERATIONS, apply));
        found.push(uses(
            group,
            resources,
            &["delete"],
            OPERATIONS,
            "to.delete(&name,&DeleteParams::background())",
        ));
    }
    let apply = "to.patch(&name,&apply,&Patch::Apply(&objects::dormant(kind,&value)))";
    found.push(uses("rbac.authorization.k8s.io", &["roles"], &["escalate"], OPERATIONS, apply));
    found.push(uses("rbac.authorization.k8s.io", &["roles", "clusterroles"], &["bind"], OPERATIONS, apply));
    found
}

#[test]
fn the_dr_role_grants_exactly_what_its_code_uses() {
    check("dr-rbac.yaml", &[DR_CONTROLLER, &replicated_uses(), LEASES]);
}
