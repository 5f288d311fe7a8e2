//! Jobs through the self-service API against the real cluster, a real yiyun-scheduler and kwok
//! nodes, called by `grpcurl` and `curl`: a department submits a gang and sees where each pod
//! runs (node, rack, site), a job that cannot fit shows the scheduler's explanation, events are
//! listed and followed, jobs come in pages, an idempotency key submits once, a cancel deletes the
//! job and its pods; and every operation answers each caller of the matrix (the department, a
//! second department, the city admin, finance, anonymous, an unknown and a revoked token) as
//! their roles say.

use std::{process::Command, time::Duration};

use k8s_openapi::api::{batch::v1::Job, core::v1::ServiceAccount};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use yiyun_e2e::{
    SchedulerProcess,
    api::{Answer, ApiProcess, Clients, local_ca, service_account_token},
    apply_yiyun, client, delete_nodes, eventually, install_crds, kubectl, kubectl_apply, unique, wait_ready,
};

const CELL: &str = "yiyun.io/e2e-cell";
const WAIT: Duration = Duration::from_secs(60);
const JOBS: &str = "yiyun.api.v1.Jobs";

#[tokio::test]
async fn departments_submit_follow_and_cancel_jobs_and_see_only_their_own() {
    let client = client().await;
    install_crds(&client).await;
    let (ok, out) = kubectl_apply(&yiyun_e2e::repo_file("charts/yiyun/templates/api-roles.yaml"));
    assert!(ok, "{out}");
    let prefix = unique("jobs");
    let (city, dept, other) = (format!("{prefix}-city"), format!("{prefix}-dept"), format!("{prefix}-other"));
    for (name, parent) in [(&city, None), (&dept, Some(&city)), (&other, Some(&city))] {
        let object = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"displayName": name, "level": if parent.is_some() { "department" } else { "province" }, "parent": parent}});
        apply_yiyun::<yiyun_crds::Tenant>(&client, name, object).await;
    }
    let (dept_ns, other_ns, callers) =
        (format!("{dept}-ns"), format!("{other}-ns"), format!("{prefix}-callers"));
    let account = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {callers}}}\n---\n"
        )
    };
    let bind = |ns: &str, binding: &str, role: &str, accounts: &[&str]| {
        let subjects: Vec<String> = accounts
            .iter()
            .map(|a| format!("{{kind: ServiceAccount, name: {a}, namespace: {callers}}}"))
            .collect();
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {binding}, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\n\
             subjects: [{}]\n---\n",
            subjects.join(", ")
        )
    };
    let manifest = [
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {dept_ns}, labels: {{yiyun.io/tenant: {dept}}}}}\n---\n"),
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {other_ns}, labels: {{yiyun.io/tenant: {other}}}}}\n---\n"),
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {callers}}}\n---\n"),
        account("member"),
        account("neighbour"),
        account("city-admin"),
        account("finance"),
        account("revoked"),
        // Owners and members get `admin` and `edit` from the tenancy controller; the city admin
        // decides the department's quota requests, finance reads every bill.
        bind(&dept_ns, "yiyun-members", "edit", &["member", "revoked"]),
        bind(&other_ns, "yiyun-members", "edit", &["neighbour"]),
        bind(&dept_ns, "parent-approvers", "yiyun-resourcerequest-approver", &["city-admin"]),
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {prefix}-finance}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: yiyun-billing-viewer}}\n\
             subjects: [{{kind: ServiceAccount, name: finance, namespace: {callers}}}]\n"
        ),
    ]
    .concat();
    let (ok, out) = kubectl_apply(&manifest);
    assert!(ok, "{out}");
    let token = |account: &str| service_account_token(&callers, account);
    let (member, neighbour, city_admin, finance, revoked) =
        (token("member"), token("neighbour"), token("city-admin"), token("finance"), token("revoked"));

    // Four kwok nodes, two to a rack, at one site: untainted, so the API's ordinary pods fit.
    let cell = prefix.clone();
    let nodes: Vec<String> = (0..4).map(|index| format!("{cell}-n{index}")).collect();
    for (index, name) in nodes.iter().enumerate() {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": {
                CELL: cell, "yiyun.io/site": "qingyang", "topology.kubernetes.io/region": "gansu",
                "yiyun.io/rack": format!("rack-{}", index / 2)}},
            "status": {"capacity": {"cpu": "8", "memory": "64Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "64Gi", "pods": "110"}}
        }))
        .expect("a node");
        Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create a kwok node");
    }
    wait_ready(&client, &nodes).await;
    let scheduler = unique("yiyun-e2e");
    let _scheduler = SchedulerProcess::start(&scheduler, &["--leader-elect=false"]);

    let dir = std::env::temp_dir().join(unique("jobs-tls"));
    std::fs::create_dir_all(&dir).expect("a directory");
    local_ca(&dir);
    let ledger = format!("sqlite://{}/ledger.db", dir.display());
    let api = ApiProcess::start(&dir, &ledger, "api", &["--scheduler-name", &scheduler]).await;
    let clients = Clients::of(&api, &dir);
    let method = |name: &str| format!("{JOBS}/{name}");
    let submission = |name: &str, cpu: &str, replicas: i32, gang: bool, key: &str| {
        json!({"namespace": dept_ns, "name": name, "idempotencyKey": key, "image": "registry.gov.local/ai/train:1.4",
            "command": ["python", "train.py"], "cpu": cpu, "memory": "1Gi", "replicas": replicas, "gang": gang,
            "gangTopology": if gang { "rack" } else { "" }, "latencyClass": "batch", "dataSite": "qingyang",
            "dataGigabytes": 20, "nodeSelector": {CELL: cell}})
    };

    // A gang of two, submitted by the member (whose `edit` includes the chart's PodGroup role;
    // roles reach the authorizer through informers: wait for the first yes).
    let gang = submission("train", "2", 2, true, "train-2027-01");
    let body = eventually(WAIT, "the member's first job", || async {
        let (code, body) = clients.grpc(Some(&member), &gang, &method("SubmitJob"));
        (code == "OK").then_some(body)
    })
    .await;
    let submitted: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (submitted["name"].as_str(), submitted["tenant"].as_str()),
        (Some("train"), Some(dept.as_str()))
    );
    assert!(submitted["submittedBy"].as_str().is_some_and(|by| by.ends_with(":member")), "{submitted}");
    let (code, again) = clients.grpc(Some(&member), &gang, &method("SubmitJob"));
    assert_eq!(code, "OK", "the same key submits once: {again}");
    let (code, body) = clients.grpc(
        Some(&member),
        &submission("train", "3", 2, true, "train-2027-01"),
        &method("SubmitJob"),
    );
    assert_eq!(code, "AlreadyExists", "the key with another job: {body}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &dept_ns);
    let stored = jobs.get("train").await.expect("the Job");
    let template = stored.spec.clone().expect("a spec").template;
    assert_eq!(template.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()), Some(scheduler.as_str()));
    assert_eq!(stored.spec.as_ref().and_then(|s| s.suspend), Some(false), "let go once its PodGroup exists");
    let group = Api::<yiyun_crds::PodGroup>::namespaced(client.clone(), &dept_ns)
        .get("train")
        .await
        .expect("the PodGroup");
    assert_eq!(group.spec.min_member, 2);

    // Where each pod runs: placed together in one rack of the site.
    let placed = eventually(WAIT, "the gang placed, as the API shows it", || async {
        let (code, body) =
            clients.grpc(Some(&member), &json!({"namespace": dept_ns, "name": "train"}), &method("GetJob"));
        let job: Value = serde_json::from_str(&body).ok().filter(|_| code == "OK")?;
        let pods = job["pods"].as_array()?.clone();
        (pods.len() == 2 && pods.iter().all(|p| p["node"].as_str().is_some_and(|n| !n.is_empty())))
            .then_some(pods)
    })
    .await;
    for pod in &placed {
        assert_eq!(pod["site"], "qingyang", "{pod}");
        assert_eq!(pod["region"], "gansu", "{pod}");
        assert!(nodes.iter().any(|n| pod["node"] == n.as_str()), "{pod}");
    }
    assert_eq!(placed[0]["rack"], placed[1]["rack"], "a gang kept to one rack: {placed:?}");

    // A job no node can hold waits, and says why in the scheduler's words (REST, by curl).
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(&clients.ca)
        .args(["-H", &format!("Authorization: Bearer {member}"), "-H", "Content-Type: application/json"])
        .args(["-d", &submission("huge", "100", 1, false, "").to_string()])
        .arg(format!("https://{}/v1/namespaces/{dept_ns}/jobs", clients.addr))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n200"), "{text}");
    let waiting = eventually(WAIT, "the huge job's explanation", || async {
        let (status, body) = clients.rest(Some(&member), &format!("/v1/namespaces/{dept_ns}/jobs/huge"));
        let job: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        let reason = job["pods"][0]["waitingReason"].as_str()?.to_string();
        (reason.contains("cpu")).then_some((job["phase"].clone(), reason))
    })
    .await;
    assert_eq!(waiting.0, "Pending", "{waiting:?}");

    // Pages of one, by name.
    let (status, body) = clients.rest(Some(&member), &format!("/v1/namespaces/{dept_ns}/jobs?pageSize=1"));
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(page["items"][0]["name"], "huge", "{page}");
    assert_eq!(page["items"][0]["tenant"], dept.as_str(), "{page}");
    let next = page["nextPageToken"].as_str().expect("a next page").to_string();
    let (code, body) = clients.grpc(
        Some(&member),
        &json!({"namespace": dept_ns, "pageSize": 1, "pageToken": next}),
        &method("ListJobs"),
    );
    assert_eq!(code, "OK", "{body}");
    let second: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(second["items"][0]["name"], "train", "{second}");
    assert!(second.get("nextPageToken").is_none_or(|t| t == ""), "the last page: {second}");

    // Events: the Job controller's, the scheduler's on the waiting pod; followed over gRPC.
    let (status, body) = clients.rest(Some(&member), &format!("/v1/namespaces/{dept_ns}/jobs/huge/events"));
    assert_eq!(status, 200, "{body}");
    let events: Value = serde_json::from_str(&body).expect("JSON");
    let items = events["items"].as_array().expect("items");
    assert!(items.iter().any(|e| e["object"] == "Job/huge" && e["reason"] == "SuccessfulCreate"), "{events}");
    assert!(
        items.iter().any(|e| e["object"] == "Job/huge"
            && e["reason"] == "Submitted"
            && e["source"] == "yiyun-api"
            && e["message"].as_str().is_some_and(|m| m.contains(":member submitted it"))),
        "the submission is told on the Job, naming who: {events}"
    );
    let failed_scheduling = eventually(WAIT, "the scheduler's event on the waiting pod", || async {
        let (_, body) = clients.rest(Some(&member), &format!("/v1/namespaces/{dept_ns}/jobs/huge/events"));
        body.contains("FailedScheduling").then_some(body)
    })
    .await;
    assert!(failed_scheduling.contains("\"object\":\"Pod/huge-"), "{failed_scheduling}");
    let followed = Command::new(&clients.grpcurl)
        .arg("-cacert")
        .arg(&clients.ca)
        .args(["-H", &format!("authorization: Bearer {member}"), "-max-time", "5"])
        .args(["-d", &json!({"namespace": dept_ns, "name": "huge", "follow": true}).to_string()])
        .args([clients.addr.as_str(), &method("WatchJobEvents")])
        .output()
        .expect("grpcurl");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&followed.stdout), String::from_utf8_lossy(&followed.stderr));
    assert!(stdout.contains("SuccessfulCreate") && stdout.contains("FailedScheduling"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("DeadlineExceeded") || stderr.contains("deadline exceeded"),
        "a followed stream stays open until the caller leaves: {stderr}"
    );

    // The matrix: every operation, every caller; a refusal never tells whether the job exists.
    let job = json!({"namespace": dept_ns, "name": "huge"});
    let missing = json!({"namespace": dept_ns, "name": "no-such-job"});
    let list = json!({"namespace": dept_ns});
    let submit = submission("", "1", 1, false, "");
    let denied = Answer::PermissionDenied;
    let callers_and_answers: [(&str, Option<&str>, Answer, Answer); 7] = [
        ("the member", Some(&member), Answer::Ok, Answer::NotFound),
        ("the other department", Some(&neighbour), denied, denied),
        ("the city admin", Some(&city_admin), denied, denied),
        ("finance", Some(&finance), denied, denied),
        ("anonymous", None, Answer::Unauthenticated, Answer::Unauthenticated),
        ("an unknown token", Some("not-a-token"), Answer::Unauthenticated, Answer::Unauthenticated),
        ("a token not yet revoked", Some(&revoked), Answer::Ok, Answer::NotFound),
    ];
    let events_of = |request: &Value| json!({"namespace": request["namespace"], "name": request["name"]});
    for (who, token, answer, answer_missing) in callers_and_answers {
        for (operation, request, expected) in [
            ("GetJob", &job, answer),
            ("GetJob", &missing, answer_missing),
            ("ListJobs", &list, answer),
            ("WatchJobEvents", &events_of(&job), answer),
            ("SubmitJob", &submit, answer),
        ] {
            let (code, body) = clients.grpc(token, request, &method(operation));
            assert_eq!(code, expected.grpc(), "gRPC {operation} {request}, {who}: {body}");
        }
        for (path, expected) in [
            (format!("/v1/namespaces/{dept_ns}/jobs/huge"), answer),
            (format!("/v1/namespaces/{dept_ns}/jobs/no-such-job"), answer_missing),
            (format!("/v1/namespaces/{dept_ns}/jobs"), answer),
            (format!("/v1/namespaces/{dept_ns}/jobs/huge/events"), answer),
        ] {
            let (status, body) = clients.rest(token, &path);
            assert_eq!(status, expected.http(), "REST {path}, {who}: {body}");
            if expected != Answer::Ok {
                assert!(!body.contains("train"), "{who}: nothing of the department's jobs leaks: {body}");
            }
        }
        if answer != Answer::Ok {
            let (code, body) = clients.grpc(token, &job, &method("CancelJob"));
            assert_eq!(code, answer.grpc(), "gRPC CancelJob, {who}: {body}");
        }
    }
    // The neighbour sees its own namespace, and none of the department's jobs there.
    let (code, body) = clients.grpc(Some(&neighbour), &json!({"namespace": other_ns}), &method("ListJobs"));
    assert_eq!(code, "OK", "{body}");
    assert!(!body.contains("train") && !body.contains("huge"), "{body}");

    // A revoked token stops working once its cached review is stale (1 s here).
    Api::<ServiceAccount>::namespaced(client.clone(), &callers)
        .delete("revoked", &DeleteParams::default())
        .await
        .expect("delete the ServiceAccount");
    eventually(WAIT, "the revoked token refused", || async {
        let (code, _) = clients.grpc(Some(&revoked), &list, &method("ListJobs"));
        (code == "Unauthenticated").then_some(())
    })
    .await;

    // Bad input names every field; nothing is created.
    let bad = json!({"namespace": dept_ns, "name": "Bad_Name", "image": "", "cpu": "lots", "memory": "1Gi",
        "gpus": 1, "gpuMilli": 500, "gangTopology": "planet"});
    let (code, body) = clients.grpc(Some(&member), &bad, &method("SubmitJob"));
    assert_eq!(code, "InvalidArgument", "{body}");
    for field in ["name", "image", "cpu", "gpu_milli", "gang_topology"] {
        assert!(body.contains(&format!("{field}: ")), "{field} named: {body}");
    }

    // Cancelled: the Job goes, its pods with it.
    let out = Command::new("curl")
        .args(["-sS", "-X", "DELETE", "-w", "\n%{http_code}", "--cacert"])
        .arg(&clients.ca)
        .args(["-H", &format!("Authorization: Bearer {member}")])
        .arg(format!("https://{}/v1/namespaces/{dept_ns}/jobs/train", clients.addr))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n200") && text.contains("\"phase\":\"Cancelled\""), "{text}");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &dept_ns);
    eventually(WAIT, "the cancelled job's pods gone", || async {
        let left = pods
            .list(&kube::api::ListParams::default().labels("batch.kubernetes.io/job-name=train"))
            .await
            .ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
    let (code, body) =
        clients.grpc(Some(&member), &json!({"namespace": dept_ns, "name": "train"}), &method("GetJob"));
    assert_eq!(code, "NotFound", "{body}");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &dept_ns);
    eventually(WAIT, "the cancel told on the Job, naming who", || async {
        let told = events.list(&Default::default()).await.ok()?;
        told.items
            .iter()
            .any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("train")
                    && e.reason.as_deref() == Some("Cancelled")
                    && e.note.as_deref().is_some_and(|n| n.contains(":member cancelled it"))
            })
            .then_some(())
    })
    .await;

    // Every call left an audit line.
    drop(api);
    let audit = std::fs::read_to_string(dir.join("api.log")).expect("the API's log");
    assert!(
        audit.lines().any(|l| l.contains("api call") && l.contains("SubmitJob") && l.contains(":member")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("CancelJob") && l.contains("permission_denied") && l.contains(":neighbour")),
        "{audit}"
    );

    for ns in [&dept_ns, &other_ns, &callers] {
        let _ = kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
    let _ = kubectl(&["delete", "clusterrolebinding", &format!("{prefix}-finance")]);
    for tenant in [&dept, &other, &city] {
        let _ = Api::<yiyun_crds::Tenant>::all(client.clone()).delete(tenant, &DeleteParams::default()).await;
    }
    delete_nodes(&client, &nodes).await;
}
