//! The tenancy controller against the real apiserver: the tree, its rules, quotas that add up,
//! drift repair, deletion, crash safety.

use std::time::Duration;

use k8s_openapi::{
    api::{
        authorization::v1::SubjectAccessReview,
        core::v1::{ConfigMap, LimitRange, Namespace, Pod, ResourceQuota},
        networking::v1::NetworkPolicy,
        rbac::v1::RoleBinding,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use yiyun_crds::Tenant;
use yiyun_e2e::{InProcessController, client, client_as, controller_turn, eventually, install_crds, unique};

const ADMIN: &str = "e2e-admin";
const WAIT: Duration = Duration::from_secs(30);

async fn apply_tenant(client: &Client, name: &str, spec: Value) {
    let tenants: Api<Tenant> = Api::all(client.clone());
    let tenant = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec});
    tenants
        .patch(name, &PatchParams::apply(ADMIN).force(), &Patch::Apply(&tenant))
        .await
        .unwrap_or_else(|err| panic!("apply tenant {name}: {err}"));
}

fn ready(tenant: &Tenant) -> Option<&Condition> {
    tenant.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")
}

/// Waits until the tenant's Ready condition, for its current generation, has `status`.
async fn wait_ready(client: &Client, name: &str, status: &str) -> Tenant {
    let tenants: Api<Tenant> = Api::all(client.clone());
    eventually(WAIT, &format!("tenant {name} Ready={status}"), || async {
        let tenant = tenants.get(name).await.ok()?;
        let condition = ready(&tenant)?;
        let current = condition.observed_generation == tenant.metadata.generation;
        (current && condition.status == status).then_some(tenant)
    })
    .await
}

/// A small tree: root (province) > city > {dept-a with two namespaces, dept-b with one}.
struct Tree {
    root: String,
    city: String,
    dept_a: String,
    dept_b: String,
    ns_a1: String,
    ns_a2: String,
    ns_b: String,
}

impl Tree {
    async fn apply(client: &Client, prefix: &str) -> Tree {
        let p = unique(prefix);
        let tree = Tree {
            root: format!("{p}-root"),
            city: format!("{p}-city"),
            dept_a: format!("{p}-a"),
            dept_b: format!("{p}-b"),
            ns_a1: format!("{p}-a1"),
            ns_a2: format!("{p}-a2"),
            ns_b: format!("{p}-b1"),
        };
        apply_tenant(client, &tree.root, json!({
            "displayName": "测试省", "level": "province",
            "quota": {"guaranteed": {"cpu": 8, "pods": 40}, "max": {"cpu": 16, "memory": "64Gi", "pods": 100}}
        }))
        .await;
        apply_tenant(
            client,
            &tree.city,
            json!({
                "displayName": "测试市", "parent": tree.root, "level": "city",
                "quota": {"guaranteed": {"cpu": 4, "pods": 20}, "max": {"cpu": 8, "pods": 50}}
            }),
        )
        .await;
        apply_tenant(
            client,
            &tree.dept_a,
            json!({
                "displayName": "数据资源管理局", "parent": tree.city, "level": "department",
                "owners": [{"kind": "User", "name": "zhang.wei"}],
                "members": [{"kind": "Group", "name": "data-engineers"}],
                "quota": {"guaranteed": {"cpu": 2, "pods": 10}, "max": {"cpu": 4, "pods": 20}},
                "namespaces": [{"name": tree.ns_a1, "labels": {"workload": "batch"}}, {"name": tree.ns_a2}],
                "securityLevel": 2, "networkIsolation": "strict", "deletionPolicy": "Delete"
            }),
        )
        .await;
        apply_tenant(
            client,
            &tree.dept_b,
            json!({
                "displayName": "教育局", "parent": tree.city, "level": "department",
                "owners": [{"kind": "Group", "name": "edu-admins"}],
                "quota": {"guaranteed": {"cpu": 2}, "max": {"cpu": 4}},
                "namespaces": [{"name": tree.ns_b}],
                "securityLevel": 3, "networkIsolation": "tenant"
            }),
        )
        .await;
        tree
    }

    /// Deletes the tree leaves first, so each deletion's finalizer can finish.
    async fn delete(&self, client: &Client) {
        let tenants: Api<Tenant> = Api::all(client.clone());
        for name in [&self.dept_a, &self.dept_b, &self.city, &self.root] {
            let _ = tenants.delete(name, &DeleteParams::default()).await;
            eventually(WAIT, &format!("tenant {name} gone"), || async {
                tenants.get_opt(name).await.ok()?.is_none().then_some(())
            })
            .await;
        }
    }
}

fn quota_cpu(quota: &ResourceQuota) -> String {
    quota.spec.as_ref().and_then(|s| s.hard.as_ref()).map(|h| h["requests.cpu"].0.clone()).unwrap_or_default()
}

/// The CPU limit admission enforces: `status.hard`, which kube-controller-manager copies from
/// the spec a moment after it changes.
fn enforced_cpu(quota: &ResourceQuota) -> String {
    let hard = quota.status.as_ref().and_then(|s| s.hard.as_ref());
    hard.and_then(|h| h.get("requests.cpu")).map(|q| q.0.clone()).unwrap_or_default()
}

#[tokio::test]
async fn a_tree_gets_namespaces_quotas_defaults_access_isolation_and_status() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let tree = Tree::apply(&client, "tree").await;

    let dept_a = wait_ready(&client, &tree.dept_a, "True").await;
    let status = dept_a.status.clone().unwrap();
    assert_eq!(status.path, [tree.root.clone(), tree.city.clone(), tree.dept_a.clone()]);
    assert_eq!(status.namespaces, [tree.ns_a1.clone(), tree.ns_a2.clone()]);
    assert_eq!(dept_a.spec.display_name, "数据资源管理局", "Chinese names round-trip");
    wait_ready(&client, &tree.city, "True").await;
    // The tenants are applied one after another: the city may be Ready before the planner has
    // seen its second child, and its status counts both once it has.
    let tenants: Api<Tenant> = Api::all(client.clone());
    eventually(WAIT, "the city's status counts both children", || async {
        let children = tenants.get(&tree.city).await.ok()?.status?.children;
        (children == 2).then_some(())
    })
    .await;
    wait_ready(&client, &tree.dept_b, "True").await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get(&tree.ns_a1).await.unwrap();
    let labels = ns.labels();
    assert_eq!(labels["yiyun.io/tenant"], tree.dept_a);
    for ancestor in [&tree.root, &tree.city, &tree.dept_a] {
        assert_eq!(labels[&format!("tree.yiyun.io/{ancestor}")], "true");
    }
    assert_eq!(labels["yiyun.io/security-level"], "2");
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "baseline");
    assert_eq!(labels["workload"], "batch");
    let ns_b = namespaces.get(&tree.ns_b).await.unwrap();
    assert_eq!(ns_b.labels()["pod-security.kubernetes.io/enforce"], "restricted");

    // dept-a's max of 4 CPUs is shared by its two namespaces; dept-b alone may use its 4.
    let quota = |ns: &str| Api::<ResourceQuota>::namespaced(client.clone(), ns);
    assert_eq!(quota_cpu(&quota(&tree.ns_a1).get("yiyun-quota").await.unwrap()), "2");
    assert_eq!(quota_cpu(&quota(&tree.ns_a2).get("yiyun-quota").await.unwrap()), "2");
    assert_eq!(quota_cpu(&quota(&tree.ns_b).get("yiyun-quota").await.unwrap()), "4");
    let hard = quota(&tree.ns_a1).get("yiyun-quota").await.unwrap().spec.unwrap().hard.unwrap();
    assert_eq!(hard["pods"].0, "10");
    // The province's 64Gi memory ceiling reaches down: city 64, each department 32, each of
    // dept-a's two namespaces 16.
    assert_eq!(hard["requests.memory"].0, "16Gi");

    let limits: Api<LimitRange> = Api::namespaced(client.clone(), &tree.ns_a1);
    let defaults = limits.get("yiyun-defaults").await.unwrap().spec.unwrap().limits[0].clone();
    assert_eq!(defaults.default_request.unwrap()["cpu"].0, "100m");

    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &tree.ns_a1);
    let owners = bindings.get("yiyun-owners").await.unwrap();
    assert_eq!(owners.role_ref.name, "admin");
    assert_eq!(owners.subjects.unwrap()[0].name, "zhang.wei");
    let members = bindings.get("yiyun-members").await.unwrap();
    assert_eq!(members.role_ref.name, "edit");
    assert_eq!(members.subjects.unwrap()[0].kind, "Group");
    let b_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &tree.ns_b);
    assert!(b_bindings.get_opt("yiyun-members").await.unwrap().is_none(), "no members, no binding");
    assert!(bindings.get_opt("yiyun-approvers").await.unwrap().is_none(), "the city has no owners yet");

    // The city's owners decide its departments' quota requests: given owners, they are bound in
    // every department namespace to the chart's approver role.
    apply_tenant(
        &client,
        &tree.city,
        json!({
            "displayName": "测试市", "parent": tree.root, "level": "city",
            "owners": [{"kind": "Group", "name": "city-admins"}],
            "quota": {"guaranteed": {"cpu": 4, "pods": 20}, "max": {"cpu": 8, "pods": 50}}
        }),
    )
    .await;
    for ns in [&tree.ns_a1, &tree.ns_a2, &tree.ns_b] {
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
        let approvers = eventually(WAIT, &format!("the city's owners approve in {ns}"), || async {
            bindings.get_opt("yiyun-approvers").await.ok().flatten()
        })
        .await;
        assert_eq!(approvers.role_ref.name, "yiyun-resourcerequest-approver");
        let subjects = approvers.subjects.unwrap_or_default();
        assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("Group", "city-admins"));
    }

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &tree.ns_a1);
    let strict = policies.get("yiyun-isolation").await.unwrap().spec.unwrap();
    assert_eq!(strict.policy_types.unwrap(), ["Ingress", "Egress"]);
    let b_policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &tree.ns_b);
    let subtree = b_policies.get("yiyun-isolation").await.unwrap().spec.unwrap();
    let peer = subtree.ingress.unwrap()[0].from.clone().unwrap()[0].clone();
    assert_eq!(
        peer.namespace_selector.unwrap().match_labels.unwrap()[&format!("tree.yiyun.io/{}", tree.dept_b)],
        "true"
    );

    // kubectl get tnt shows level, parent, ready and CPU columns.
    let out = yiyun_e2e::kubectl(&["get", "tnt", &tree.dept_a]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("department") && table.contains(&tree.city) && table.contains("True"), "{table}");

    tree.delete(&client).await;
    controller.stop().await;
}

#[tokio::test]
async fn cross_tenant_rules_set_ready_false_and_leave_downstream_objects_alone() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let tree = Tree::apply(&client, "rules").await;
    wait_ready(&client, &tree.dept_a, "True").await;
    wait_ready(&client, &tree.dept_b, "True").await;

    // Guarantees overcommitted: a third department asks for more than the city has left.
    let p = unique("late");
    apply_tenant(
        &client,
        &p,
        json!({
            "displayName": "迟到局", "parent": tree.city, "level": "department",
            "quota": {"guaranteed": {"cpu": 1}, "max": {"cpu": 1}}
        }),
    )
    .await;
    let late = wait_ready(&client, &p, "False").await;
    let condition = ready(&late).unwrap();
    assert_eq!(condition.reason, "GuaranteeOvercommitted");
    assert!(
        condition
            .message
            .contains(&format!("the children of \"{}\" would be guaranteed cpu 5 in total", tree.city)),
        "{}",
        condition.message
    );
    assert!(
        condition.message.contains(&format!("{} 2 + {} 2 + {p} 1", tree.dept_a, tree.dept_b)),
        "{}",
        condition.message
    );

    // A child's max above its parent's: dept-a becomes not ready, its quotas stay as they were.
    apply_tenant(
        &client,
        &tree.dept_a,
        json!({
            "displayName": "数据资源管理局", "parent": tree.city, "level": "department",
            "quota": {"guaranteed": {"cpu": 2, "pods": 10}, "max": {"cpu": 9, "pods": 20}},
            "namespaces": [{"name": tree.ns_a1}, {"name": tree.ns_a2}], "deletionPolicy": "Delete"
        }),
    )
    .await;
    let dept_a = wait_ready(&client, &tree.dept_a, "False").await;
    assert_eq!(ready(&dept_a).unwrap().reason, "MaxExceedsParent");
    assert_eq!(
        ready(&dept_a).unwrap().message,
        format!("quota.max[cpu] 9 exceeds 8 set by its parent \"{}\"", tree.city)
    );
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &tree.ns_a1);
    assert_eq!(quota_cpu(&quotas.get("yiyun-quota").await.unwrap()), "2", "the last valid quota stays");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &tree.ns_a1);
    assert!(
        bindings.get_opt("yiyun-members").await.unwrap().is_some(),
        "members removed from an invalid spec stay bound"
    );

    // A missing parent, and a cycle.
    let orphan = unique("orphan");
    apply_tenant(
        &client,
        &orphan,
        json!({"displayName": "孤儿", "parent": "no-such-tenant", "level": "county"}),
    )
    .await;
    let t = wait_ready(&client, &orphan, "False").await;
    assert_eq!(ready(&t).unwrap().reason, "ParentNotFound");
    assert_eq!(ready(&t).unwrap().message, "parent tenant \"no-such-tenant\" does not exist");
    let (x, y) = (unique("cycle-x"), unique("cycle-y"));
    apply_tenant(&client, &x, json!({"displayName": "x", "parent": y, "level": "county"})).await;
    apply_tenant(&client, &y, json!({"displayName": "y", "parent": x, "level": "county"})).await;
    let t = wait_ready(&client, &x, "False").await;
    assert_eq!(ready(&t).unwrap().reason, "Cycle");
    assert_eq!(ready(&t).unwrap().message, format!("parents form a cycle: {x} -> {y} -> {x}"));

    // Fixing the spec makes it ready again.
    apply_tenant(
        &client,
        &tree.dept_a,
        json!({
            "displayName": "数据资源管理局", "parent": tree.city, "level": "department",
            "quota": {"guaranteed": {"cpu": 2, "pods": 10}, "max": {"cpu": 4, "pods": 20}},
            "namespaces": [{"name": tree.ns_a1}, {"name": tree.ns_a2}], "deletionPolicy": "Delete"
        }),
    )
    .await;
    wait_ready(&client, &tree.dept_a, "True").await;

    let tenants: Api<Tenant> = Api::all(client.clone());
    for name in [&p, &orphan, &x, &y] {
        tenants.delete(name, &DeleteParams::default()).await.unwrap();
    }
    tree.delete(&client).await;
    controller.stop().await;
}

#[tokio::test]
async fn edited_or_deleted_managed_objects_are_restored() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let tree = Tree::apply(&client, "drift").await;
    wait_ready(&client, &tree.dept_a, "True").await;
    wait_ready(&client, &tree.dept_b, "True").await;

    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &tree.ns_a1);
    let hack = json!({"spec": {"hard": {"requests.cpu": "1000"}}});
    quotas.patch("yiyun-quota", &PatchParams::default(), &Patch::Merge(&hack)).await.unwrap();
    let a2_quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &tree.ns_a2);
    a2_quotas.delete("yiyun-quota", &DeleteParams::default()).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &tree.ns_a1);
    bindings.delete("yiyun-owners", &DeleteParams::default()).await.unwrap();
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &tree.ns_a1);
    policies.delete("yiyun-isolation", &DeleteParams::default()).await.unwrap();
    // A limit yiyun applied on a resource the tree does not count, as a version that counted
    // every resource did, is taken away.
    let b_quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &tree.ns_b);
    let older = b_quotas.get("yiyun-quota").await.unwrap();
    let mut hard = older.spec.clone().unwrap().hard.unwrap();
    hard.insert("requests.nvidia.com/gpu".into(), Quantity("1E".into()));
    let older = json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "yiyun-quota", "namespace": tree.ns_b, "labels": older.labels()},
        "spec": {"hard": hard}
    });
    let as_yiyun = PatchParams::apply(yiyun_crds::FIELD_MANAGER).force();
    b_quotas.patch("yiyun-quota", &as_yiyun, &Patch::Apply(&older)).await.unwrap();
    // Likewise one set by the merge patch yiyun changes limits with (an update, not an apply).
    let storage = json!({"spec": {"hard": {"requests.storage": "1E"}}});
    let patch_as_yiyun =
        PatchParams { field_manager: Some(yiyun_crds::FIELD_MANAGER.into()), ..Default::default() };
    b_quotas.patch("yiyun-quota", &patch_as_yiyun, &Patch::Merge(&storage)).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let relabel = json!({"metadata": {"labels": {"yiyun.io/security-level": "1"}}});
    namespaces.patch(&tree.ns_a1, &PatchParams::default(), &Patch::Merge(&relabel)).await.unwrap();

    eventually(WAIT, "the quota restored", || async {
        (quota_cpu(&quotas.get("yiyun-quota").await.ok()?) == "2").then_some(())
    })
    .await;
    eventually(WAIT, "the deleted quota restored", || async {
        (quota_cpu(&a2_quotas.get_opt("yiyun-quota").await.ok()??) == "2").then_some(())
    })
    .await;
    eventually(WAIT, "the uncounted resource's limit removed", || async {
        let hard = b_quotas.get("yiyun-quota").await.ok()?.spec?.hard?;
        let keys: Vec<&str> = hard.keys().map(String::as_str).collect();
        (keys == ["pods", "requests.cpu", "requests.memory"]).then_some(())
    })
    .await;
    eventually(WAIT, "the owners' binding restored", || async {
        bindings.get_opt("yiyun-owners").await.ok()?
    })
    .await;
    eventually(WAIT, "the network policy restored", || async {
        policies.get_opt("yiyun-isolation").await.ok()?
    })
    .await;
    eventually(WAIT, "the namespace label restored", || async {
        let ns = namespaces.get(&tree.ns_a1).await.ok()?;
        (ns.labels()["yiyun.io/security-level"] == "2").then_some(())
    })
    .await;

    tree.delete(&client).await;
    controller.stop().await;
}

fn pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1", "resources": {"requests": {"cpu": cpu}}}]}
    }))
    .expect("a valid pod")
}

#[tokio::test]
async fn the_apiserver_refuses_a_pod_that_would_push_a_subtree_over_its_max() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let tree = Tree::apply(&client, "admit").await;
    wait_ready(&client, &tree.dept_a, "True").await;
    for ns in [&tree.ns_a1, &tree.ns_a2] {
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
        eventually(WAIT, "default ServiceAccount", || async { accounts.get_opt("default").await.ok()? })
            .await;
    }

    // dept-a may use 4 CPUs across both namespaces, split 2 + 2 while nothing runs. What a
    // namespace uses stays its own; the rest is shared again after every change.
    let pods_a1: Api<Pod> = Api::namespaced(client.clone(), &tree.ns_a1);
    let pods_a2: Api<Pod> = Api::namespaced(client.clone(), &tree.ns_a2);
    let a1_quota = Api::<ResourceQuota>::namespaced(client.clone(), &tree.ns_a1);
    let a2_quota = Api::<ResourceQuota>::namespaced(client.clone(), &tree.ns_a2);
    let cpu_limit = |api: Api<ResourceQuota>, expected: &'static str| async move {
        eventually(WAIT, &format!("requests.cpu limit {expected}, enforced"), || async {
            let quota = api.get("yiyun-quota").await.ok()?;
            (quota_cpu(&quota) == expected && enforced_cpu(&quota) == expected).then_some(())
        })
        .await
    };
    pods_a1.create(&PostParams::default(), &pod("first", "1500m")).await.expect("within a1's share");
    cpu_limit(a1_quota.clone(), "2750m").await; // 1.5 used + half of the 2.5 left
    pods_a1
        .create(&PostParams::default(), &pod("second", "1"))
        .await
        .expect("a1 grows into room a2 does not use");
    cpu_limit(a2_quota.clone(), "750m").await; // half of the 1.5 left
    let refused = pods_a2.create(&PostParams::default(), &pod("too-much", "1600m")).await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(status.message.contains("exceeded quota: yiyun-quota"), "{}", status.message);
        }
        other => {
            panic!("a pod pushing the department to 4.1 CPUs, over its max of 4, was admitted: {other:?}")
        }
    }
    pods_a2.create(&PostParams::default(), &pod("fits", "750m")).await.expect("a2's share fits");

    // The status adds usage up the tree.
    let city = eventually(WAIT, "the city's subtree usage", || async {
        let t = Api::<Tenant>::all(client.clone()).get(&tree.city).await.ok()?;
        let used = t.status.as_ref()?.usage.as_ref()?.subtree.cpu.clone()?;
        (used.0 == "3250m").then_some(t)
    })
    .await;
    assert_eq!(city.status.unwrap().usage.unwrap().own.cpu, None, "the city has no namespaces of its own");

    tree.delete(&client).await;
    controller.stop().await;
}

#[tokio::test]
async fn deletion_waits_for_children_and_follows_the_deletion_policy() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let tree = Tree::apply(&client, "delete").await;
    wait_ready(&client, &tree.dept_a, "True").await;
    wait_ready(&client, &tree.dept_b, "True").await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());

    // A department's own object in its namespace is never touched by yiyun under Retain.
    put_data(&client, &tree.ns_b).await;

    tenants.delete(&tree.city, &DeleteParams::default()).await.unwrap();
    let city = eventually(WAIT, "the city to report its children", || async {
        let t = tenants.get(&tree.city).await.ok()?;
        (ready(&t)?.reason == "HasChildren").then_some(t)
    })
    .await;
    let message = &ready(&city).unwrap().message;
    assert!(message.contains(&tree.dept_a) && message.contains(&tree.dept_b), "{message}");

    // Retain (dept-b): the namespace stays, orphaned, with the department's data.
    tenants.delete(&tree.dept_b, &DeleteParams::default()).await.unwrap();
    let kept = eventually(WAIT, "dept-b's namespace orphaned", || async {
        let ns = namespaces.get(&tree.ns_b).await.ok()?;
        ns.labels().contains_key("yiyun.io/orphaned-from").then_some(ns)
    })
    .await;
    assert_eq!(kept.labels()["yiyun.io/orphaned-from"], tree.dept_b);
    assert!(!kept.labels().contains_key("yiyun.io/tenant"));
    assert!(data_kept(&client, &tree.ns_b).await);

    // Delete (dept-a): its namespaces go.
    tenants.delete(&tree.dept_a, &DeleteParams::default()).await.unwrap();
    for ns in [&tree.ns_a1, &tree.ns_a2] {
        eventually(WAIT, &format!("namespace {ns} deleted"), || async {
            let gone =
                namespaces.get_opt(ns).await.ok()?.is_none_or(|n| n.metadata.deletion_timestamp.is_some());
            gone.then_some(())
        })
        .await;
    }
    // With its children gone, the city's deletion completes.
    eventually(WAIT, "the city deleted", || async {
        tenants.get_opt(&tree.city).await.ok()?.is_none().then_some(())
    })
    .await;

    tree.delete(&client).await;
    namespaces.delete(&tree.ns_b, &DeleteParams::default()).await.unwrap();
    controller.stop().await;
}

#[tokio::test]
async fn concurrent_edits_converge_to_the_last_spec() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let tree = Tree::apply(&client, "race").await;
    wait_ready(&client, &tree.dept_b, "True").await;

    // Two admins edit at once with different field managers: the apiserver serialises them;
    // whatever the interleaving, the quota ends at the final spec.
    let edits = (1..=10).map(|i| {
        let client = client.clone();
        let name = tree.dept_b.clone();
        let city = tree.city.clone();
        let ns = tree.ns_b.clone();
        async move {
            let tenant = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": {
                "displayName": "教育局", "parent": city, "level": "department",
                "quota": {"guaranteed": {"cpu": 2}, "max": {"cpu": 2 + i % 3}},
                "namespaces": [{"name": ns}], "securityLevel": 3, "networkIsolation": "tenant"
            }});
            let manager = format!("admin-{}", i % 2);
            Api::<Tenant>::all(client)
                .patch(&name, &PatchParams::apply(&manager).force(), &Patch::Apply(&tenant))
                .await
                .expect("edit");
        }
    });
    let mut running = tokio::task::JoinSet::new();
    for edit in edits {
        running.spawn(edit);
    }
    while let Some(done) = running.join_next().await {
        done.expect("an edit task");
    }
    let final_max = json!({"displayName": "教育局", "parent": tree.city, "level": "department",
        "quota": {"guaranteed": {"cpu": 2}, "max": {"cpu": 3}},
        "namespaces": [{"name": tree.ns_b}], "securityLevel": 3, "networkIsolation": "tenant"});
    apply_tenant(&client, &tree.dept_b, final_max).await;
    wait_ready(&client, &tree.dept_b, "True").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &tree.ns_b);
    eventually(WAIT, "the quota at the final max", || async {
        (quota_cpu(&quotas.get("yiyun-quota").await.ok()?) == "3").then_some(())
    })
    .await;

    tree.delete(&client).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_controller_killed_mid_reconcile_converges_after_restart() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let p = unique("crash");
    let root = format!("{p}-root");
    apply_tenant(
        &client,
        &root,
        json!({"displayName": "省", "level": "province", "quota": {"max": {"cpu": 100}}}),
    )
    .await;
    let departments: Vec<String> = (0..20).map(|i| format!("{p}-d{i}")).collect();
    for name in &departments {
        apply_tenant(
            &client,
            name,
            json!({
                "displayName": "部门", "parent": root, "level": "department",
                "owners": [{"kind": "User", "name": "owner"}],
                "quota": {"max": {"cpu": 4}}, "namespaces": [{"name": name}]
            }),
        )
        .await;
    }

    // A real process, killed with SIGKILL as soon as it has started writing.
    let mut child = yiyun_e2e::controller_command("127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start yiyun controller");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(WAIT, "the first namespace", || async {
        let listed = namespaces.list(&Default::default()).await.ok()?;
        listed.items.iter().any(|ns| ns.name_any().starts_with(&p)).then_some(())
    })
    .await;
    child.kill().expect("SIGKILL the controller");
    child.wait().expect("reap the controller");

    let controller = InProcessController::start();
    for name in &departments {
        let tenant = wait_ready(&client, name, "True").await;
        assert_eq!(tenant.status.unwrap().namespaces, std::slice::from_ref(name));
        let quota = Api::<ResourceQuota>::namespaced(client.clone(), name).get("yiyun-quota").await.unwrap();
        assert_eq!(quota_cpu(&quota), "4");
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), name);
        assert!(bindings.get_opt("yiyun-owners").await.unwrap().is_some());
    }
    let root_tenant = wait_ready(&client, &root, "True").await;
    assert_eq!(root_tenant.status.unwrap().children, 20);

    let tenants: Api<Tenant> = Api::all(client.clone());
    for name in departments.iter().chain([&root]) {
        tenants.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually(WAIT, "the crash tree deleted", || async {
        let left = tenants.list(&Default::default()).await.ok()?;
        (!left.items.iter().any(|t| t.name_any().starts_with(&p))).then_some(())
    })
    .await;
    for name in &departments {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
    controller.stop().await;
}

/// A namespace made by an admin, not yiyun, with `labels` and a ConfigMap `records` of data.
async fn namespace_with_data(client: &Client, name: &str, labels: Value) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
        .expect("a valid namespace");
    namespaces.create(&PostParams::default(), &ns).await.unwrap_or_else(|err| panic!("create {name}: {err}"));
    put_data(client, name).await;
}

/// A department's data in `namespace`: the ConfigMap `records`.
async fn put_data(client: &Client, namespace: &str) {
    let data: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "records"}, "data": {"k": "v"}}))
            .expect("a ConfigMap");
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &data)
        .await
        .expect("create the ConfigMap");
}

/// Whether the namespace still stands (not deleted, not terminating) with its ConfigMap `records`.
async fn data_kept(client: &Client, name: &str) -> bool {
    let ns = Api::<Namespace>::all(client.clone()).get_opt(name).await.expect("read the namespace");
    let standing = ns.is_some_and(|ns| ns.metadata.deletion_timestamp.is_none());
    standing
        && Api::<ConfigMap>::namespaced(client.clone(), name)
            .get_opt("records")
            .await
            .expect("read the ConfigMap")
            .is_some()
}

/// The apiserver's own answer: may `user` read ConfigMaps in `namespace`?
async fn may_read(client: &Client, user: &str, namespace: &str) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": user, "resourceAttributes": {"namespace": namespace, "verb": "get", "resource": "configmaps"}}
    }))
    .expect("a SubjectAccessReview");
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("a SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

/// Waits until `user`'s access to `namespace` is `allowed` (RBAC follows bindings within moments).
async fn wait_access(client: &Client, user: &str, namespace: &str, allowed: bool) {
    let what = format!("{user} {} read {namespace}", if allowed { "may" } else { "may not" });
    eventually(WAIT, &what, || async { (may_read(client, user, namespace).await == allowed).then_some(()) })
        .await;
}

async fn delete_tenant(client: &Client, name: &str) {
    let tenants: Api<Tenant> = Api::all(client.clone());
    let _ = tenants.delete(name, &DeleteParams::default()).await;
    eventually(WAIT, &format!("tenant {name} gone"), || async {
        tenants.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_adoption_route_under_delete_adopts_and_releases_but_never_deletes() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let t = unique("adopt");
    let (legacy, own) = (format!("{t}-legacy"), format!("{t}-own"));
    let owner = format!("{t}-owner");
    // Step one of the README's adoption route: the admin labels the namespace for the tenant.
    namespace_with_data(&client, &legacy, json!({"yiyun.io/tenant": t})).await;
    let spec = |namespaces: Value| {
        json!({
            "displayName": "档案局", "level": "province", "deletionPolicy": "Delete",
            "owners": [{"kind": "User", "name": owner}], "namespaces": namespaces
        })
    };
    apply_tenant(&client, &t, spec(json!([{"name": own}]))).await;
    wait_ready(&client, &t, "True").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let waiting = namespaces.get(&legacy).await.unwrap();
    assert!(data_kept(&client, &legacy).await, "a namespace waiting to be adopted was deleted");
    assert!(!waiting.labels().contains_key("app.kubernetes.io/managed-by"), "and is not yiyun's yet");

    // Step two: the tenant lists it; yiyun keeps it from now on.
    apply_tenant(&client, &t, spec(json!([{"name": own}, {"name": legacy}]))).await;
    wait_ready(&client, &t, "True").await;
    wait_access(&client, &owner, &legacy, true).await;

    // Deleting the tenant deletes the namespace yiyun created, and only releases the adopted one.
    delete_tenant(&client, &t).await;
    eventually(WAIT, "the tenant's own namespace deleted", || async {
        let ns = namespaces.get_opt(&own).await.ok()?;
        ns.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await;
    assert!(data_kept(&client, &legacy).await, "the adopted namespace or its data was deleted");
    let released = namespaces.get(&legacy).await.unwrap();
    assert_eq!(released.labels().get("yiyun.io/orphaned-from"), Some(&t));
    assert!(!released.labels().contains_key("app.kubernetes.io/managed-by"));
    wait_access(&client, &owner, &legacy, false).await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &legacy);
    assert!(bindings.get_opt("yiyun-owners").await.unwrap().is_none());

    let _ = namespaces.delete(&legacy, &DeleteParams::default()).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_mislabelled_namespace_holding_data_is_released_not_deleted() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let t = unique("mislabel");
    let (system, own) = (format!("{t}-system"), format!("{t}-own"));
    // Labelled as if yiyun kept it for the tenant (copied from another namespace, say), but
    // never created by yiyun for it.
    namespace_with_data(
        &client,
        &system,
        json!({"yiyun.io/tenant": t, "app.kubernetes.io/managed-by": "yiyun"}),
    )
    .await;
    apply_tenant(
        &client,
        &t,
        json!({"displayName": "大数据局", "level": "province", "deletionPolicy": "Delete", "namespaces": [{"name": own}]}),
    )
    .await;
    wait_ready(&client, &t, "True").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(WAIT, "the mislabelled namespace released", || async {
        let ns = namespaces.get(&system).await.ok()?;
        ns.labels().contains_key("yiyun.io/orphaned-from").then_some(())
    })
    .await;
    assert!(data_kept(&client, &system).await, "a namespace yiyun did not create was deleted");

    // The tenant's own namespace, created by yiyun, carries the tenant's UID.
    let tenant = Api::<Tenant>::all(client.clone()).get(&t).await.unwrap();
    let created = namespaces.get(&own).await.unwrap();
    assert_eq!(created.annotations().get("yiyun.io/created-for"), tenant.metadata.uid.as_ref());

    delete_tenant(&client, &t).await;
    assert!(data_kept(&client, &system).await);
    let _ = namespaces.delete(&system, &DeleteParams::default()).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_released_namespace_adopted_by_another_tenant_serves_only_its_new_owners() {
    let client = client().await;
    install_crds(&client).await;
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let p = unique("handover");
    let (a, b, ns) = (format!("{p}-a"), format!("{p}-b"), format!("{p}-data"));
    let (alice, bob) = (format!("{p}-alice"), format!("{p}-bob"));
    let spec = |owner: &str, isolation: &str, namespaces: Value| {
        json!({
            "displayName": "卫健委", "level": "province", "networkIsolation": isolation,
            "owners": [{"kind": "User", "name": owner}], "namespaces": namespaces
        })
    };
    apply_tenant(&client, &a, spec(&alice, "strict", json!([{"name": ns}]))).await;
    wait_ready(&client, &a, "True").await;
    wait_access(&client, &alice, &ns, true).await;
    put_data(&client, &ns).await;

    // Released by A (Retain): the data stays; A's access and isolation go.
    apply_tenant(&client, &a, spec(&alice, "strict", json!([]))).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(WAIT, "the namespace released by A", || async {
        let labels = namespaces.get(&ns).await.ok()?.metadata.labels?;
        (labels.get("yiyun.io/orphaned-from") == Some(&a)).then_some(())
    })
    .await;
    wait_access(&client, &alice, &ns, false).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    assert!(
        policies.get_opt("yiyun-isolation").await.unwrap().is_none(),
        "A's isolation outlived the release"
    );
    assert!(data_kept(&client, &ns).await);

    // Adopted by B: only B's owners have access.
    let label = json!({"metadata": {"labels": {"yiyun.io/tenant": b}}});
    namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    apply_tenant(&client, &b, spec(&bob, "none", json!([{"name": ns}]))).await;
    wait_ready(&client, &b, "True").await;
    wait_access(&client, &bob, &ns, true).await;
    assert!(!may_read(&client, &alice, &ns).await, "A's owner kept access after the handover");
    let owners = Api::<RoleBinding>::namespaced(client.clone(), &ns).get("yiyun-owners").await.unwrap();
    let subjects: Vec<String> = owners.subjects.unwrap_or_default().into_iter().map(|s| s.name).collect();
    assert_eq!(subjects, std::slice::from_ref(&bob));
    assert!(data_kept(&client, &ns).await);

    delete_tenant(&client, &a).await;
    delete_tenant(&client, &b).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    controller.stop().await;
}

fn allow_all(name: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podSelector": {}, "ingress": [{}], "egress": [{}], "policyTypes": ["Ingress", "Egress"]}
    }))
    .expect("a NetworkPolicy")
}

#[tokio::test]
async fn members_cannot_loosen_isolation_and_lifted_rules_leave_the_namespace() {
    let client = client().await;
    install_crds(&client).await;
    yiyun_e2e::install_admission_policies();
    let _turn = controller_turn().await;
    let controller = InProcessController::start();
    let t = unique("isolated");
    let (ns, owner, member) = (format!("{t}-ns"), format!("{t}-owner"), format!("{t}-member"));
    let spec = |isolation: &str, regions: Value| {
        json!({
            "displayName": "公安局", "level": "province", "networkIsolation": isolation, "allowedRegions": regions,
            "owners": [{"kind": "User", "name": owner}], "members": [{"kind": "User", "name": member}],
            "namespaces": [{"name": ns}]
        })
    };
    apply_tenant(&client, &t, spec("strict", json!(["east"]))).await;
    wait_ready(&client, &t, "True").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let meta = namespaces.get(&ns).await.unwrap().metadata;
    assert_eq!(meta.labels.as_ref().unwrap()["yiyun.io/network-isolation"], "strict");
    assert_eq!(meta.labels.as_ref().unwrap()["yiyun.io/region-restricted"], "true");
    assert_eq!(meta.annotations.as_ref().unwrap()["yiyun.io/allowed-regions"], "east");
    wait_access(&client, &owner, &ns, true).await;

    // The owner (admin role) and a member (edit role) may write NetworkPolicies by RBAC, but
    // not under the tenant's isolation: neither an allow-all policy nor deleting yiyun's.
    let as_owner: Api<NetworkPolicy> = Api::namespaced(client_as(&owner).await, &ns);
    let as_member: Api<NetworkPolicy> = Api::namespaced(client_as(&member).await, &ns);
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    let refused = eventually(WAIT, "the isolation policy in force", || async {
        let err = as_owner.create(&dry_run, &allow_all("probe")).await.err()?.to_string();
        err.contains("network isolation").then_some(err)
    })
    .await;
    assert!(refused.contains(&format!("is under strict network isolation of tenant {t}")), "{refused}");
    for api in [&as_owner, &as_member] {
        let refused = api.create(&PostParams::default(), &allow_all("allow-all")).await.unwrap_err();
        assert!(refused.to_string().contains("network isolation"), "{refused}");
    }
    let refused = as_owner.delete("yiyun-isolation", &DeleteParams::default()).await.unwrap_err();
    assert!(refused.to_string().contains("network isolation"), "{refused}");
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    assert!(policies.get_opt("allow-all").await.unwrap().is_none());
    assert!(policies.get_opt("yiyun-isolation").await.unwrap().is_some());

    // Isolation and regions lifted on the Tenant: the namespace loses both marks, and the owner
    // writes NetworkPolicies again.
    apply_tenant(&client, &t, spec("none", json!([]))).await;
    eventually(WAIT, "the lifted marks gone from the namespace", || async {
        let meta = namespaces.get(&ns).await.ok()?.metadata;
        let labels = meta.labels.unwrap_or_default();
        let gone = !labels.contains_key("yiyun.io/network-isolation")
            && !labels.contains_key("yiyun.io/region-restricted")
            && !meta.annotations.unwrap_or_default().contains_key("yiyun.io/allowed-regions");
        gone.then_some(())
    })
    .await;
    eventually(WAIT, "the owner may write NetworkPolicies", || async {
        as_owner.create(&dry_run, &allow_all("allow-all")).await.ok().map(|_| ())
    })
    .await;

    delete_tenant(&client, &t).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    controller.stop().await;
}
