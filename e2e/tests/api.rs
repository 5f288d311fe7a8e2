//! The self-service API against the real cluster, called by real clients: `grpcurl` (built from
//! the Go module proxy by `e2e/build-binaries.sh`) and `curl`, over TLS with a certificate of a
//! local CA, the API running with exactly its chart ServiceAccount.

use std::{path::PathBuf, process::Command, time::Duration};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{Api, api::DeleteParams};
use serde_json::{Value, json};
use yiyun_e2e::{
    api::{Answer, ApiProcess, Clients, local_ca, service_account_token},
    apply_yiyun, client, eventually, free_port, install_crds, kubectl, kubectl_apply, unique, yiyun_bin,
};

/// Billing over gRPC and REST, and the whole matrix of callers: finance, a department, a
/// stranger, anonymous, an unknown token and a revoked one, each asking for its own tenant,
/// another's, every tenant, and one that does not exist.
#[tokio::test]
async fn bills_over_grpc_and_rest_answer_each_caller_as_their_roles_say() {
    let client = client().await;
    install_crds(&client).await;
    let prefix = unique("api");
    let (own, other) = (format!("{prefix}-a"), format!("{prefix}-b"));
    for tenant in [&own, &other] {
        let object = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
            "spec": {"displayName": format!("{tenant} 局"), "level": "province", "namespaces": [{"name": format!("{tenant}-ns")}]}});
        apply_yiyun::<yiyun_crds::Tenant>(&client, tenant, object).await;
    }
    // The chart's default roles: owners (bound to `admin` in their namespaces) read bills.
    let (ok, out) = kubectl_apply(&yiyun_e2e::repo_file("charts/yiyun/templates/api-roles.yaml"));
    assert!(ok, "{out}");
    let dir = std::env::temp_dir().join(unique("api-tls"));
    std::fs::create_dir_all(&dir).expect("a directory");
    local_ca(&dir);

    // The tenant tree reaches the ledger through the meter.
    let url = format!("sqlite://{}/ledger.db", dir.display());
    let meter_admin = format!("127.0.0.1:{}", free_port());
    let mut meter = Command::new(yiyun_bin())
        .args(["billing", "run", "--database", &url, "--admin-addr", &meter_admin])
        .args(["--status-seconds", "0", "--leader-elect=false"])
        .stderr(std::fs::File::create(dir.join("meter.log")).expect("a log"))
        .spawn()
        .expect("start the meter");
    let ledger = yiyun_billing::ledger::Ledger::connect(&url).await.expect("the ledger");
    eventually(Duration::from_secs(60), "both tenants in the ledger", || async {
        let tenants = ledger.tenants().await.ok()?;
        (tenants.contains_key(&own) && tenants.contains_key(&other)).then_some(())
    })
    .await;
    let _ = meter.kill();
    let _ = meter.wait();

    let api = ApiProcess::start(&dir, &url, "api", &[]).await;
    let log = api.log.clone();
    let clients = Clients::of(&api, &dir);

    // Reflection and health: grpcurl needs no .proto files.
    let listed = clients.grpcurl(None, None, "list");
    let services = String::from_utf8_lossy(&listed.stdout);
    for service in ["yiyun.api.v1.Billing", "yiyun.api.v1.DisasterRecovery", "grpc.health.v1.Health"] {
        assert!(services.lines().any(|l| l == service), "{service} listed: {services}");
    }
    let (code, health) =
        clients.grpc(None, &json!({"service": "yiyun.api.v1.Billing"}), "grpc.health.v1.Health/Check");
    assert_eq!(code, "OK", "{health}");
    assert!(health.contains("SERVING"), "{health}");

    // Callers: ServiceAccounts with ordinary roles on billing.yiyun.io.
    let ns = format!("{prefix}-callers");
    let rbac = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: finance, namespace: {ns}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: department, namespace: {ns}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: stranger, namespace: {ns}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: revoked, namespace: {ns}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: owner, namespace: {ns}}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: {own}-ns, labels: {{yiyun.io/tenant: {own}}}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: yiyun-owners, namespace: {own}-ns}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}}\n\
         subjects: [{{kind: ServiceAccount, name: owner, namespace: {ns}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {ns}-finance}}\n\
         rules: [{{apiGroups: [yiyun.io], resources: [billing], verbs: [get]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-finance}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-finance}}\n\
         subjects: [{{kind: ServiceAccount, name: finance, namespace: {ns}}}, {{kind: ServiceAccount, name: revoked, namespace: {ns}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {ns}-department}}\n\
         rules: [{{apiGroups: [yiyun.io], resources: [billing], verbs: [get], resourceNames: [{own}]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-department}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-department}}\n\
         subjects: [{{kind: ServiceAccount, name: department, namespace: {ns}}}]\n"
    );
    let (ok, out) = kubectl_apply(&rbac);
    assert!(ok, "{out}");
    let token = |account: &str| service_account_token(&ns, account);
    let (finance, department, stranger, revoked, owner) =
        (token("finance"), token("department"), token("stranger"), token("revoked"), token("owner"));
    let month = yiyun_billing::calendar::Month::of(yiyun_billing::ledger::now()).to_string();
    let get_bill = |tenant: &str| json!({"tenant": tenant, "month": month});
    let rest_bill = |tenant: &str| format!("/v1/bills/{month}?tenant={tenant}");

    // Roles reach the authorizer through its informers: wait for the first yes.
    let body = eventually(Duration::from_secs(30), "finance's first bill", || async {
        let (code, body) = clients.grpc(Some(&finance), &get_bill(&own), "yiyun.api.v1.Billing/GetBill");
        (code == "OK").then_some(body)
    })
    .await;
    let grpc_bill: Value = serde_json::from_str(&body).expect("grpcurl prints JSON");
    eventually(
        Duration::from_secs(30),
        "the owner's first bill (through the aggregated admin role)",
        || async {
            let (code, _) = clients.grpc(Some(&owner), &get_bill(&own), "yiyun.api.v1.Billing/GetBill");
            (code == "OK").then_some(())
        },
    )
    .await;
    let (code, body) = clients.rest(Some(&finance), &rest_bill(&own));
    assert_eq!(code, 200, "{body}");
    let rest_bill_json: Value = serde_json::from_str(&body).expect("JSON");
    for bill in [&grpc_bill, &rest_bill_json] {
        assert_eq!(bill["tenant"], own.as_str(), "{bill}");
        assert_eq!(bill["total"], "0.00", "{bill}");
        assert_eq!(bill["currency"], "CNY", "{bill}");
        assert_eq!(bill["tenants"][0]["tenant"], own.as_str(), "{bill}");
    }
    assert_eq!(grpc_bill["asOf"].as_str().map(|t| t.len()), rest_bill_json["asOf"].as_str().map(|t| t.len()));

    // Finance exports; a department's CSV has Chinese headers behind a BOM.
    let (code, csv) = clients.rest(Some(&department), &format!("/v1/bills/{month}/export?tenant={own}"));
    assert_eq!(code, 200, "{csv}");
    assert!(csv.starts_with('\u{feff}') && csv.contains("账期"), "{csv}");
    let (code, exported) = clients.grpc(
        Some(&finance),
        &json!({"tenant": own, "month": month, "format": "json"}),
        "yiyun.api.v1.Billing/ExportBill",
    );
    assert_eq!(code, "OK", "{exported}");
    assert!(exported.contains("\"contentType\": \"application/json\""), "{exported}");

    let everyone = "";
    let missing = format!("{prefix}-none");
    let matrix: Vec<(&str, Option<&str>, &str, Answer)> = vec![
        ("finance, own tenant", Some(&finance), &own, Answer::Ok),
        ("finance, another tenant", Some(&finance), &other, Answer::Ok),
        ("finance, every tenant", Some(&finance), everyone, Answer::Ok),
        ("finance, a tenant that does not exist", Some(&finance), &missing, Answer::NotFound),
        ("department, its tenant", Some(&department), &own, Answer::Ok),
        ("department, another tenant", Some(&department), &other, Answer::PermissionDenied),
        ("department, every tenant", Some(&department), everyone, Answer::PermissionDenied),
        // Whether the tenant exists is not the department's to learn.
        ("department, a tenant that does not exist", Some(&department), &missing, Answer::PermissionDenied),
        ("an owner, its tenant", Some(&owner), &own, Answer::Ok),
        ("an owner, another tenant", Some(&owner), &other, Answer::PermissionDenied),
        ("an owner, every tenant", Some(&owner), everyone, Answer::PermissionDenied),
        ("an owner, a tenant that does not exist", Some(&owner), &missing, Answer::PermissionDenied),
        ("stranger, a tenant", Some(&stranger), &own, Answer::PermissionDenied),
        ("stranger, a tenant that does not exist", Some(&stranger), &missing, Answer::PermissionDenied),
        ("anonymous", None, &own, Answer::Unauthenticated),
        ("an unknown token", Some("not-a-token"), &own, Answer::Unauthenticated),
        ("a token not yet revoked", Some(&revoked), &own, Answer::Ok),
        ("finance, a malformed tenant name", Some(&finance), "Bad_Name", Answer::InvalidArgument),
    ];
    for (who, token, tenant, answer) in &matrix {
        let (code, body) = clients.grpc(*token, &get_bill(tenant), "yiyun.api.v1.Billing/GetBill");
        assert_eq!(code, answer.grpc(), "gRPC, {who}: {body}");
        let path = if tenant.is_empty() { format!("/v1/bills/{month}") } else { rest_bill(tenant) };
        let (code, body) = clients.rest(*token, &path);
        assert_eq!(code, answer.http(), "REST, {who}: {body}");
        if *answer != Answer::Ok {
            assert!(
                !body.contains(&format!("{prefix}-b\"")),
                "{who}: nothing of the other tenant leaks: {body}"
            );
        }
    }

    // A revoked token stops working once the answer cached for it (1 s here) is stale.
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .delete("revoked", &DeleteParams::default())
        .await
        .expect("delete the ServiceAccount");
    eventually(Duration::from_secs(30), "the revoked token refused", || async {
        let (code, _) = clients.grpc(Some(&revoked), &get_bill(&own), "yiyun.api.v1.Billing/GetBill");
        let (status, _) = clients.rest(Some(&revoked), &rest_bill(&own));
        (code == "Unauthenticated" && status == 401).then_some(())
    })
    .await;

    // Bad input: every wrong field named, in both protocols.
    let (code, body) = clients.grpc(
        Some(&finance),
        &json!({"tenant": "Bad_Name", "month": "2026-13"}),
        "yiyun.api.v1.Billing/GetBill",
    );
    assert_eq!(code, "InvalidArgument", "{body}");
    assert!(
        body.contains("month: month \"2026-13\" does not exist") && body.contains("tenant: \"Bad_Name\""),
        "{body}"
    );
    let (code, body) = clients.rest(Some(&finance), "/v1/bills/2026-13?tenant=Bad_Name");
    assert_eq!(code, 400, "{body}");
    let problem: Value = serde_json::from_str(&body).expect("a problem document");
    let fields: Vec<&str> =
        problem["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(fields, ["month", "tenant"], "{problem}");
    assert_eq!(problem["status"], 400, "{problem}");
    let (code, body) =
        clients.rest(Some(&finance), &format!("/v1/bills/{month}/export?tenant={own}&format=pdf"));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"field\":\"format\""), "{body}");

    // The OpenAPI document, generated from the code, fuzzed by schemathesis as finance: every
    // answer conforms to the document and none is a server error.
    let (code, document) = clients.rest(None, "/openapi.json");
    assert_eq!(code, 200, "{document}");
    let document: Value = serde_json::from_str(&document).expect("an OpenAPI document");
    assert!(document["paths"]["/v1/bills/{month}"]["get"].is_object(), "{document}");
    let python =
        Command::new(yiyun_e2e::repo_path("e2e/python-env")).arg("fuzz").output().expect("e2e/python-env");
    assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));
    let python = PathBuf::from(String::from_utf8_lossy(&python.stdout).trim());
    let schemathesis = python.with_file_name("schemathesis");
    let fuzzed = Command::new(&schemathesis)
        .args(["run", &format!("https://{}/openapi.json", clients.addr), "--checks", "all"])
        .args(["--max-examples", "40", "--seed", "42", "--workers", "1", "--report-dir"])
        .arg(dir.join("schemathesis"))
        .arg("--tls-verify")
        .arg(&clients.ca)
        .args(["-H", &format!("Authorization: Bearer {finance}")])
        .env("NO_COLOR", "1")
        // Its example database and caches go with the test's files, not into the work tree.
        .current_dir(&dir)
        .output()
        .expect("schemathesis");
    let report =
        format!("{}\n{}", String::from_utf8_lossy(&fuzzed.stdout), String::from_utf8_lossy(&fuzzed.stderr));
    assert!(fuzzed.status.success(), "schemathesis found failures:\n{report}");

    // A caller over their rate limit waits, told for how long, in both protocols.
    let limited = ApiProcess::start(
        &dir,
        &url,
        "api-limited",
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "2"],
    )
    .await;
    let limited_clients = Clients::of(&limited, &dir);
    for _ in 0..2 {
        let (code, body) = limited_clients.rest(Some(&finance), &rest_bill(&own));
        assert_eq!(code, 200, "{body}");
    }
    let out = Command::new("curl")
        .args(["-sS", "-i", "--cacert"])
        .arg(&clients.ca)
        .args(["-H", &format!("Authorization: Bearer {finance}")])
        .arg(format!("https://{}{}", limited.addr, rest_bill(&own)))
        .output()
        .expect("curl");
    let response = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(response.starts_with("http/2 429") || response.starts_with("http/1.1 429"), "{response}");
    assert!(response.contains("\nretry-after: 1"), "{response}");
    let (code, body) = limited_clients.grpc(Some(&finance), &get_bill(&own), "yiyun.api.v1.Billing/GetBill");
    assert_eq!(code, "ResourceExhausted", "{body}");
    let (code, body) = limited_clients.rest(Some(&department), &rest_bill(&own));
    assert_eq!(code, 200, "another caller has a bucket of their own: {body}");
    drop(limited);

    // Disaster recovery (its own test below): finance's role is bills only.
    let (code, body) = clients.grpc(
        Some(&finance),
        &json!({"tenant": own, "namespace": format!("{own}-ns")}),
        "yiyun.api.v1.DisasterRecovery/RequestDrill",
    );
    assert_eq!(code, "PermissionDenied", "{body}");
    let (status, body) = clients.rest(None, &format!("/v1/tenants/{own}/protection"));
    assert_eq!(status, 401, "who calls is known before anything else: {body}");

    // Every call left an audit line: who, the operation, the result.
    drop(api);
    let audit = std::fs::read_to_string(&log).expect("the API's log");
    let denied = audit.lines().find(|l| {
        l.contains("api call") && l.contains("permission_denied") && l.contains(&format!("{ns}:stranger"))
    });
    assert!(
        denied.is_some_and(|l| l.contains("GetBill") && l.contains("grpc")),
        "an audit line for the stranger:\n{audit}"
    );
    assert!(
        audit.lines().any(|l| l.contains("api call") && l.contains("rest") && l.contains("ExportBill")),
        "{audit}"
    );

    let _ = kubectl(&["delete", "namespace", &ns, &format!("{own}-ns"), "--wait=false"]);
    let _ = kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        &format!("{ns}-finance"),
        &format!("{ns}-department"),
    ]);
    for tenant in [&own, &other] {
        let _ = Api::<yiyun_crds::Tenant>::all(client.clone()).delete(tenant, &DeleteParams::default()).await;
    }
}

/// Quota requests end to end: a department member files one (its rights come from `edit`, into
/// which the chart's role aggregates), the same idempotency key files it once, a stranger and
/// the member cannot decide, the parent tenant's approver approves and the Tenant's quota
/// changes; a request over the parent's max fails with the tenant tree's own message and
/// changes nothing; a rejected request says who rejected it; lists come in pages; and every
/// operation answers each caller (the member, another department, the city admin, finance,
/// anonymous, an unknown token) as its roles say.
#[tokio::test]
async fn quota_requests_are_filed_decided_and_applied_only_within_the_tree() {
    let client = client().await;
    install_crds(&client).await;
    let (ok, out) = kubectl_apply(&yiyun_e2e::repo_file("charts/yiyun/templates/api-roles.yaml"));
    assert!(ok, "{out}");
    let prefix = unique("rr");
    let (city, dept, other) = (format!("{prefix}-city"), format!("{prefix}-dept"), format!("{prefix}-other"));
    let tenants: [(&str, Option<&str>, &str, &str, &str); 3] = [
        (&city, None, "province", "20", "40"),
        (&dept, Some(&city), "department", "10", "20"),
        (&other, Some(&city), "department", "5", "10"),
    ];
    for (name, parent, level, guaranteed, max) in tenants {
        let object = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"displayName": name, "level": level, "parent": parent,
                "quota": {"guaranteed": {"cpu": guaranteed}, "max": {"cpu": max}}}});
        apply_yiyun::<yiyun_crds::Tenant>(&client, name, object).await;
    }
    let (dept_ns, other_ns, callers) =
        (format!("{dept}-ns"), format!("{other}-ns"), format!("{prefix}-callers"));
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {dept_ns}, labels: {{yiyun.io/tenant: {dept}}}}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: {other_ns}, labels: {{yiyun.io/tenant: {other}}}}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: {callers}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: clerk, namespace: {callers}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: approver, namespace: {callers}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: stranger, namespace: {callers}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: members, namespace: {dept_ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}\n\
         subjects: [{{kind: ServiceAccount, name: clerk, namespace: {callers}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: members, namespace: {other_ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}\n\
         subjects: [{{kind: ServiceAccount, name: stranger, namespace: {callers}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: parent-approvers, namespace: {dept_ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: yiyun-resourcerequest-approver}}\n\
         subjects: [{{kind: ServiceAccount, name: approver, namespace: {callers}}}]\n"
    );
    let (ok, out) = kubectl_apply(&manifest);
    assert!(ok, "{out}");
    let token = |account: &str| service_account_token(&callers, account);
    let (clerk, approver, stranger) = (token("clerk"), token("approver"), token("stranger"));

    let dir = std::env::temp_dir().join(unique("rr-tls"));
    std::fs::create_dir_all(&dir).expect("a directory");
    local_ca(&dir);
    let api = ApiProcess::start(&dir, &format!("sqlite://{}/ledger.db", dir.display()), "api", &[]).await;
    let clients = Clients::of(&api, &dir);
    let create = "yiyun.api.v1.ResourceRequests/CreateResourceRequest";
    let decide = "yiyun.api.v1.ResourceRequests/DecideResourceRequest";
    let ask = |guaranteed: Value, max: Value, key: &str| json!({"namespace": dept_ns, "quota": {"guaranteed": guaranteed, "max": max}, "reason": "2027 年预算", "idempotencyKey": key});

    // Filed by a member, whose `edit` now includes the chart's role (roles reach the authorizer
    // and the aggregation through informers: wait for the first yes).
    let first = ask(json!({"cpu": "15"}), json!({}), "budget-2027");
    let body = eventually(Duration::from_secs(30), "the clerk's first request", || async {
        let (code, body) = clients.grpc(Some(&clerk), &first, create);
        (code == "OK").then_some(body)
    })
    .await;
    let filed: Value = serde_json::from_str(&body).expect("JSON");
    let name = filed["name"].as_str().expect("a name").to_string();
    assert_eq!(
        (filed["tenant"].as_str(), filed["phase"].as_str()),
        (Some(dept.as_str()), Some("Pending")),
        "{filed}"
    );
    assert!(filed["requestedBy"].as_str().is_some_and(|by| by.ends_with(":clerk")), "{filed}");
    let (code, again) = clients.grpc(Some(&clerk), &first, create);
    assert_eq!(code, "OK", "{again}");
    assert_eq!(
        serde_json::from_str::<Value>(&again).expect("JSON")["name"],
        name.as_str(),
        "the same key files once"
    );
    let (code, body) =
        clients.grpc(Some(&clerk), &ask(json!({"cpu": "16"}), json!({}), "budget-2027"), create);
    assert_eq!(code, "AlreadyExists", "the key with another quota: {body}");

    // Nobody else files, reads or decides it; the member cannot decide its own.
    let (code, body) = clients.grpc(Some(&stranger), &ask(json!({"cpu": "1"}), json!({}), ""), create);
    assert_eq!(code, "PermissionDenied", "{body}");
    let (status, body) =
        clients.rest(Some(&stranger), &format!("/v1/namespaces/{dept_ns}/resourcerequests/{name}"));
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        clients.rest(Some(&stranger), &format!("/v1/namespaces/{dept_ns}/resourcerequests/no-such"));
    assert_eq!(status, 403, "whether it exists is not the stranger's to learn: {body}");
    let (code, body) =
        clients.grpc(Some(&clerk), &json!({"namespace": dept_ns, "name": name, "approve": true}), decide);
    assert_eq!(code, "PermissionDenied", "{body}");

    // A second request, then pages of one.
    let (code, body) = clients.grpc(Some(&clerk), &ask(json!({}), json!({"cpu": "50"}), "burst"), create);
    assert_eq!(code, "OK", "{body}");
    let over_max =
        serde_json::from_str::<Value>(&body).expect("JSON")["name"].as_str().expect("a name").to_string();
    let (status, body) =
        clients.rest(Some(&clerk), &format!("/v1/namespaces/{dept_ns}/resourcerequests?pageSize=1"));
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    let next = page["nextPageToken"].as_str().expect("a next page").to_string();
    assert!(!next.is_empty(), "{page}");
    let (status, body) = clients.rest(
        Some(&clerk),
        &format!("/v1/namespaces/{dept_ns}/resourcerequests?pageSize=1&pageToken={next}"),
    );
    assert_eq!(status, 200, "{body}");
    let second: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(second["items"].as_array().map(Vec::len), Some(1), "{second}");
    assert_ne!(second["items"][0]["name"], page["items"][0]["name"]);

    // The parent's approver approves: applied to the Tenant.
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(&clients.ca)
        .args(["-H", &format!("Authorization: Bearer {approver}"), "-H", "Content-Type: application/json"])
        .args(["-d", r#"{"approve": true, "message": "同意"}"#])
        .arg(format!("https://{}/v1/namespaces/{dept_ns}/resourcerequests/{name}/decision", clients.addr))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n200"), "{text}");
    let applied: Value = serde_json::from_str(text.rsplit_once('\n').map_or("", |(b, _)| b)).expect("JSON");
    assert_eq!(applied["phase"], "Applied", "{applied}");
    assert!(applied["decidedBy"].as_str().is_some_and(|by| by.ends_with(":approver")), "{applied}");
    let tenants_api: Api<yiyun_crds::Tenant> = Api::all(client.clone());
    let quota = tenants_api.get(&dept).await.expect("the tenant").spec.quota;
    assert_eq!(quota.guaranteed.and_then(|g| g.cpu).map(|q| q.0).as_deref(), Some("15"));
    assert_eq!(
        quota.max.and_then(|m| m.cpu).map(|q| q.0).as_deref(),
        Some("20"),
        "what was not asked for stays"
    );
    let (code, body) =
        clients.grpc(Some(&approver), &json!({"namespace": dept_ns, "name": name, "approve": true}), decide);
    assert_eq!(code, "FailedPrecondition", "decided once: {body}");
    assert!(body.contains("Applied already"), "{body}");

    // Over the parent's max: refused with the tree's own message, nothing changed.
    let (code, body) = clients.grpc(
        Some(&approver),
        &json!({"namespace": dept_ns, "name": over_max, "approve": true}),
        decide,
    );
    assert_eq!(code, "FailedPrecondition", "{body}");
    assert!(
        body.contains(&format!("quota.max[cpu] 50 exceeds 40 set by its parent \\\"{city}\\\""))
            || body.contains(&format!("quota.max[cpu] 50 exceeds 40 set by its parent \"{city}\"")),
        "{body}"
    );
    let (status, body) =
        clients.rest(Some(&clerk), &format!("/v1/namespaces/{dept_ns}/resourcerequests/{over_max}"));
    assert_eq!(status, 200, "{body}");
    let failed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(failed["phase"], "Failed", "{failed}");
    assert!(failed["message"].as_str().is_some_and(|m| m.contains("exceeds 40")), "{failed}");
    let quota = tenants_api.get(&dept).await.expect("the tenant").spec.quota;
    assert_eq!(quota.max.and_then(|m| m.cpu).map(|q| q.0).as_deref(), Some("20"), "nothing applied");

    // The story of each request is told in Events on it, naming who did what.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &dept_ns);
    let told = |name: String| {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            let reasons: Vec<(String, String, String)> = list
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
                .map(|e| {
                    (e.reason.unwrap_or_default(), e.type_.unwrap_or_default(), e.note.unwrap_or_default())
                })
                .collect();
            (reasons.len() >= 2).then_some(reasons)
        }
    };
    let applied_story =
        eventually(Duration::from_secs(30), "the applied request's events", || told(name.clone())).await;
    assert!(
        applied_story.iter().any(|(reason, _, note)| reason == "Filed" && note.contains(":clerk asked")),
        "{applied_story:?}"
    );
    assert!(
        applied_story
            .iter()
            .any(|(reason, _, note)| reason == "Applied" && note.contains(":approver approved")),
        "{applied_story:?}"
    );
    let failed_story =
        eventually(Duration::from_secs(30), "the failed request's events", || told(over_max.clone())).await;
    assert!(
        failed_story.iter().any(|(reason, kind, note)| reason == "Failed"
            && kind == "Warning"
            && note.contains("exceeds 40")),
        "{failed_story:?}"
    );

    // The matrix: every operation, every caller; a refusal never tells whether a request exists.
    let (ok, out) = kubectl_apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: finance, namespace: {callers}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {prefix}-finance}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: yiyun-billing-viewer}}\n\
         subjects: [{{kind: ServiceAccount, name: finance, namespace: {callers}}}]\n"
    ));
    assert!(ok, "{out}");
    let finance = token("finance");
    let (denied, anonymous) = (Answer::PermissionDenied, Answer::Unauthenticated);
    /// Who, their token, and what they get when they file, read, read a missing one, decide.
    type Row<'a> = (&'a str, Option<&'a str>, Answer, Answer, Answer, Answer);
    let matrix: [Row; 6] = [
        ("the member", Some(&clerk), Answer::Ok, Answer::Ok, Answer::NotFound, denied),
        ("another department", Some(&stranger), denied, denied, denied, denied),
        ("the city admin", Some(&approver), denied, Answer::Ok, Answer::NotFound, Answer::Ok),
        ("finance", Some(&finance), denied, denied, denied, denied),
        ("anonymous", None, anonymous, anonymous, anonymous, anonymous),
        ("an unknown token", Some("not-a-token"), anonymous, anonymous, anonymous, anonymous),
    ];
    let get = "yiyun.api.v1.ResourceRequests/GetResourceRequest";
    let list = "yiyun.api.v1.ResourceRequests/ListResourceRequests";
    for (who, token, file, read, read_missing, may_decide) in matrix {
        let asked = ask(json!({"cpu": "1"}), json!({}), "");
        let (code, body) = clients.grpc(token, &asked, create);
        assert_eq!(code, file.grpc(), "file, {who}: {body}");
        for (request, method, expected) in [
            (json!({"namespace": dept_ns, "name": name}), get, read),
            (json!({"namespace": dept_ns, "name": "rr-none"}), get, read_missing),
            (json!({"namespace": dept_ns}), list, read),
        ] {
            let (code, body) = clients.grpc(token, &request, method);
            assert_eq!(code, expected.grpc(), "{method} {request}, {who}: {body}");
        }
        for (path, expected) in [
            (format!("/v1/namespaces/{dept_ns}/resourcerequests/{name}"), read),
            (format!("/v1/namespaces/{dept_ns}/resourcerequests/rr-none"), read_missing),
            (format!("/v1/namespaces/{dept_ns}/resourcerequests"), read),
        ] {
            let (status, body) = clients.rest(token, &path);
            assert_eq!(status, expected.http(), "REST {path}, {who}: {body}");
        }
        // Deciding one decided already: who may decide hears that it is, the others only no.
        let (code, body) =
            clients.grpc(token, &json!({"namespace": dept_ns, "name": name, "approve": true}), decide);
        let expected = if may_decide == Answer::Ok { "FailedPrecondition" } else { may_decide.grpc() };
        assert_eq!(code, expected, "decide, {who}: {body}");
    }

    // Rejected, with who and why.
    let (code, body) = clients.grpc(Some(&clerk), &ask(json!({"cpu": "12"}), json!({}), ""), create);
    assert_eq!(code, "OK", "{body}");
    let third =
        serde_json::from_str::<Value>(&body).expect("JSON")["name"].as_str().expect("a name").to_string();
    let (code, body) = clients.grpc(
        Some(&approver),
        &json!({"namespace": dept_ns, "name": third, "approve": false, "message": "明年再议"}),
        decide,
    );
    assert_eq!(code, "OK", "{body}");
    let rejected: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (rejected["phase"].as_str(), rejected["message"].as_str()),
        (Some("Rejected"), Some("明年再议")),
        "{rejected}"
    );

    // Bad input names every field.
    let bad = json!({"namespace": dept_ns, "quota": {"guaranteed": {"cpu": "lots"}}, "reason": ""});
    let (code, body) = clients.grpc(Some(&clerk), &bad, create);
    assert_eq!(code, "InvalidArgument", "{body}");
    assert!(body.contains("quota.guaranteed.cpu") && body.contains("reason"), "{body}");

    drop(api);
    for ns in [&dept_ns, &other_ns, &callers] {
        let _ = kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
    let _ = kubectl(&["delete", "clusterrolebinding", &format!("{prefix}-finance")]);
    for tenant in [&dept, &other, &city] {
        let _ = tenants_api.delete(tenant, &DeleteParams::default()).await;
    }
}

/// Disaster recovery through the API, with `yiyun dr run` protecting a tenant's namespace of the
/// main cluster towards the DR standby: everyone of the tenant sees the protection of the
/// namespaces they work in (an unprotected one says so); owners ask for drills, which the DR
/// controller carries out and the API reports; members and strangers may not; an idempotency
/// key asks once; bad input names the field.
#[tokio::test]
async fn departments_follow_their_protection_and_ask_for_drills() {
    let clusters = yiyun_e2e::dr::DrClusters::beside(yiyun_e2e::LocalCluster::current()).await;
    let client = clusters.p.clone();
    let _controller = clusters.start_controller();
    let tenant = unique("api-dr");
    let protected = clusters.namespace(&format!("{tenant}-records"), None).await;
    let unprotected = format!("{tenant}-scratch");
    let callers = format!("{tenant}-callers");
    let binding = |namespace: &str, role: &str, account: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {account}, namespace: {namespace}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\n\
             subjects: [{{kind: ServiceAccount, name: {account}, namespace: {callers}}}]\n---\n"
        )
    };
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {unprotected}, labels: {{yiyun.io/tenant: {tenant}}}}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: {protected}, labels: {{yiyun.io/tenant: {tenant}}}}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: {callers}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: owner, namespace: {callers}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: member, namespace: {callers}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: stranger, namespace: {callers}}}\n---\n{}{}{}",
        binding(&protected, "admin", "owner"),
        binding(&unprotected, "admin", "owner"),
        binding(&protected, "edit", "member"),
    );
    let (ok, out) = kubectl_apply(&manifest);
    assert!(ok, "{out}");
    let (ok, out) = kubectl_apply(&yiyun_e2e::repo_file("charts/yiyun/templates/api-roles.yaml"));
    assert!(ok, "{out}");
    let object = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"displayName": "档案局", "level": "province",
            "namespaces": [{"name": protected}, {"name": unprotected}]}});
    apply_yiyun::<yiyun_crds::Tenant>(&client, &tenant, object).await;
    yiyun_e2e::dr::DrClusters::apply(&client, &protected, yiyun_e2e::dr::deployment("archive", 1)).await;
    clusters.protect(&protected, "records", json!({"level": 5})).await;
    clusters.condition(&protected, "records", "Protected", "True", Duration::from_secs(60)).await;

    let dir = std::env::temp_dir().join(unique("api-dr-tls"));
    std::fs::create_dir_all(&dir).expect("a directory");
    local_ca(&dir);
    let api = ApiProcess::start(&dir, &format!("sqlite://{}/ledger.db", dir.display()), "api", &[]).await;
    let clients = Clients::of(&api, &dir);
    let token = |account: &str| service_account_token(&callers, account);
    let (owner, member, stranger) = (token("owner"), token("member"), token("stranger"));
    let method = |name: &str| format!("yiyun.api.v1.DisasterRecovery/{name}");

    // The owner sees both namespaces, over gRPC and REST alike.
    let listed = eventually(Duration::from_secs(30), "the owner's protection (aggregated roles)", || async {
        let (code, body) = clients.grpc(Some(&owner), &json!({"tenant": tenant}), &method("ListProtection"));
        (code == "OK").then_some(body)
    })
    .await;
    let (status, body) = clients.rest(Some(&owner), &format!("/v1/tenants/{tenant}/protection"));
    assert_eq!(status, 200, "{body}");
    for answer in [&listed, &body] {
        let answer: Value = serde_json::from_str(answer).expect("JSON");
        let protections = answer["protections"].as_array().expect("protections");
        assert_eq!(protections.len(), 2, "{answer}");
        let of = |namespace: &str| protections.iter().find(|p| p["namespace"] == namespace).expect("listed");
        let records = of(&protected);
        assert_eq!(
            (&records["policy"], &records["level"], &records["state"], &records["targetSite"]),
            (&json!("records"), &json!(5), &json!("Protected"), &json!("west-standby")),
            "{records}"
        );
        assert_eq!(
            (&records["rpoTarget"], &records["role"]),
            (&json!("30m"), &json!("primary")),
            "{records}"
        );
        assert!(records["achievedRpo"].as_str().is_some_and(|r| !r.is_empty()), "{records}");
        assert_eq!(of(&unprotected)["state"], "Unprotected", "{answer}");
    }
    // A member sees only the namespace they work in; a stranger nothing.
    let (code, body) = clients.grpc(Some(&member), &json!({"tenant": tenant}), &method("ListProtection"));
    assert_eq!(code, "OK", "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["protections"].as_array().map(Vec::len), Some(1), "{answer}");
    let (status, body) = clients.rest(Some(&stranger), &format!("/v1/tenants/{tenant}/protection"));
    assert_eq!(status, 403, "{body}");

    // Drills: members may not ask; the owner may, once per idempotency key.
    let ask = json!({"tenant": tenant, "namespace": protected, "idempotencyKey": "audit-2026-q4"});
    let (code, body) = clients.grpc(Some(&member), &ask, &method("RequestDrill"));
    assert_eq!(code, "PermissionDenied", "{body}");
    let (code, body) = clients.grpc(Some(&owner), &ask, &method("RequestDrill"));
    assert_eq!(code, "OK", "{body}");
    let asked: Value = serde_json::from_str(&body).expect("JSON");
    let name = asked["name"].as_str().expect("the drill's name").to_string();
    assert_eq!((&asked["namespace"], &asked["policy"]), (&json!(protected), &json!("records")), "{asked}");
    assert!(asked["requestedBy"].as_str().is_some_and(|by| by.ends_with(":owner")), "{asked}");
    let (status, body) = clients.rest_post(
        Some(&owner),
        &format!("/v1/tenants/{tenant}/drills"),
        &json!({"namespace": protected, "idempotencyKey": "audit-2026-q4"}),
    );
    assert_eq!(status, 200, "{body}");
    let again: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(again["name"], name.as_str(), "the same key asks once: {again}");
    // Another drill of the same policy waits until this one has finished.
    let (code, body) = clients.grpc(
        Some(&owner),
        &json!({"tenant": tenant, "namespace": protected}),
        &method("RequestDrill"),
    );
    assert!(
        code == "FailedPrecondition" && body.contains(&name) || code == "OK",
        "refused while {name} runs, or accepted because it has finished: {code} {body}"
    );

    // The DR controller carries it out; the API reports it.
    let done = eventually(Duration::from_secs(120), "the drill reported", || async {
        let (status, body) = clients.rest(Some(&member), &format!("/v1/tenants/{tenant}/drills/{name}"));
        let drill: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && (drill["phase"] == "Succeeded" || drill["phase"] == "Failed")).then_some(drill)
    })
    .await;
    assert_eq!(done["phase"], "Succeeded", "{done}");
    let report = &done["report"];
    assert_eq!(
        (&report["passed"], &report["workloadsRunning"], &report["workloads"]),
        (&json!(true), &json!(1), &json!(1)),
        "{done}"
    );
    let (status, body) = clients.rest(Some(&stranger), &format!("/v1/tenants/{tenant}/drills/{name}"));
    assert_eq!(status, 403, "{body}");
    let (status, body) = clients.rest(Some(&owner), &format!("/v1/tenants/other-tenant/drills/{name}"));
    assert_eq!(status, 404, "a drill of another tenant is not found under this one: {body}");
    eventually(Duration::from_secs(30), "the drill in the protection's last drill", || async {
        let (_, body) = clients.rest(Some(&owner), &format!("/v1/tenants/{tenant}/protection"));
        body.contains("\"lastDrill\":{").then_some(())
    })
    .await;

    // What cannot be drilled says why, naming the field where one is wrong.
    let (status, body) = clients.rest_post(
        Some(&owner),
        &format!("/v1/tenants/{tenant}/drills"),
        &json!({"namespace": unprotected}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no ReplicationPolicy protects namespace"), "{body}");
    let (status, body) = clients.rest_post(
        Some(&owner),
        &format!("/v1/tenants/{tenant}/drills"),
        &json!({"namespace": protected, "policy": "remote"}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"policy\""), "{body}");
    let (code, body) = clients.grpc(
        Some(&owner),
        &json!({"tenant": tenant, "namespace": "Not A Namespace"}),
        &method("RequestDrill"),
    );
    assert_eq!(code, "InvalidArgument", "{body}");
    assert!(body.contains("namespace: "), "{body}");

    drop(api);
    let _ = kubectl(&["delete", "namespace", &protected, &unprotected, &callers, "--wait=false"]);
    let _ = Api::<yiyun_crds::Tenant>::all(client.clone()).delete(&tenant, &DeleteParams::default()).await;
}
