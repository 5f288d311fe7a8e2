//! Smoke tests of the foundation against the real local cluster.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use yiyun_crds::Tenant;
use yiyun_e2e::{
    FIELD_MANAGER, TestNamespace, client, create_kwok_node, eventually, free_port, http_get, install_crds,
    kubectl, kubectl_apply, unique, within, yiyun_bin,
};

#[tokio::test]
async fn generated_crds_install_and_are_served() {
    let client = client().await;
    install_crds(&client).await;
    let tenants: Api<Tenant> = Api::all(client);
    tenants.list(&Default::default()).await.expect("the Tenant API is served");
}

#[tokio::test]
async fn kubectl_explain_shows_the_tenant_descriptions() {
    let client = client().await;
    install_crds(&client).await;
    // The apiserver publishes a new CRD's OpenAPI a moment after it is established.
    let explained = eventually(Duration::from_secs(30), "kubectl explain tenant.spec", || async {
        let out = kubectl(&["explain", "tenant.spec"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("displayName")).then_some(text)
    })
    .await;
    assert!(explained.contains("Human-readable name of the unit"), "{explained}");
    assert!(explained.contains("province > city > county > department"), "{explained}");
    let short = kubectl(&["get", "tnt"]);
    assert!(short.status.success(), "the short name tnt works: {}", String::from_utf8_lossy(&short.stderr));
}

/// Creates a Tenant from JSON and returns the apiserver's refusal message.
async fn rejection(tenants: &Api<Tenant>, spec: serde_json::Value) -> String {
    let name = unique("invalid");
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec
    }))
    .expect("the test's Tenant deserializes");
    match tenants
        .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &tenant)
        .await
    {
        Ok(_) => {
            let _ = tenants.delete(&name, &DeleteParams::default()).await;
            panic!("the apiserver accepted an invalid Tenant: {spec}")
        }
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "an invalid object is Unprocessable: {status:?}");
            status.message
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn invalid_tenants_are_rejected_with_readable_messages() {
    let client = client().await;
    install_crds(&client).await;
    let tenants: Api<Tenant> = Api::all(client);

    let msg = rejection(
        &tenants,
        serde_json::json!({
            "displayName": "芜湖市", "parent": "anhui", "level": "city",
            "quota": {"guaranteed": {"cpu": "8"}, "max": {"cpu": 4}}
        }),
    )
    .await;
    assert!(msg.contains("quota.guaranteed[cpu] (8) must not exceed quota.max[cpu] (4)"), "{msg}");

    let msg = rejection(&tenants, serde_json::json!({"displayName": "芜湖市", "level": "city"})).await;
    assert!(msg.contains("spec.parent is required for every level below province"), "{msg}");

    let msg = rejection(
        &tenants,
        serde_json::json!({
            "displayName": "安徽省", "level": "province", "securityLevel": 5
        }),
    )
    .await;
    assert!(msg.contains("spec.securityLevel") && msg.contains("less than or equal to 4"), "{msg}");

    let msg = rejection(
        &tenants,
        serde_json::json!({
            "displayName": "安徽省", "level": "province", "quota": {"max": {"memory": "lots"}}
        }),
    )
    .await;
    assert!(msg.contains("must be a non-negative quantity such as 500m, 4 or 16Gi"), "{msg}");

    // Labels that decide ownership, the tree and Pod Security are yiyun's alone.
    for key in ["yiyun.io/tenant", "tree.yiyun.io/anhui", "pod-security.kubernetes.io/enforce"] {
        let msg = rejection(
            &tenants,
            serde_json::json!({
                "displayName": "安徽省", "level": "province",
                "namespaces": [{"name": "ah-data", "labels": {"workload": "web", key: "privileged"}}]
            }),
        )
        .await;
        assert!(
            msg.contains("are set by yiyun and cannot be given in spec.namespaces[].labels"),
            "{key}: {msg}"
        );
    }
}

#[tokio::test]
async fn level_names_are_checked_by_the_schema() {
    let client = client().await;
    install_crds(&client).await;
    // A level outside the enum cannot even be expressed in the Rust type: post raw JSON.
    let name = unique("badlevel");
    let (ok, out) = kubectl_apply(
        &serde_json::json!({
            "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"displayName": "x", "level": "village", "parent": "p"}
        })
        .to_string(),
    );
    assert!(!ok, "a Tenant of level village was accepted");
    assert!(out.contains("spec.level") && out.contains("Unsupported value: \"village\""), "{out}");
}

#[tokio::test]
async fn kwok_node_becomes_ready_and_a_pod_bound_to_it_runs() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "smoke").await;
    let node_name = unique("kwok-smoke");
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = serde_json::json!({"type": "kwok", "kubernetes.io/hostname": node_name});
    create_kwok_node(&client, &node_name, labels).await;

    eventually(Duration::from_secs(60), "the kwok node to become Ready", || async {
        let node = nodes.get(&node_name).await.ok()?;
        let ready = node.status?.conditions?.into_iter().any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(())
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bound"},
        "spec": {
            "nodeName": node_name,
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "app", "image": "registry.invalid/fake:1"}]
        }
    }))
    .expect("a valid pod");
    pods.create(&PostParams::default(), &pod).await.expect("create the pod");
    within(Duration::from_secs(60), await_condition(pods.clone(), "bound", conditions::is_pod_running()))
        .await
        .expect("the pod bound to the kwok node runs within 60s")
        .expect("watching the pod");

    ns.delete().await;
    nodes.delete(&node_name, &DeleteParams::default()).await.expect("delete the kwok node");
}

/// Starts a `yiyun` component (`command`, admin server on `addr`), checks its admin endpoints,
/// sends SIGTERM and expects a clean exit.
async fn component_serves_admin_endpoints_and_stops_on_sigterm(
    mut command: Command,
    addr: SocketAddr,
    metric: &str,
) {
    let client = client().await;
    install_crds(&client).await;
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start yiyun");

    let healthz =
        eventually(Duration::from_secs(30), "/healthz", || async { http_get(addr, "/healthz") }).await;
    assert_eq!(healthz, (200, "ok".to_string()));
    eventually(Duration::from_secs(30), "/readyz to answer 200", || async {
        http_get(addr, "/readyz").filter(|(status, _)| *status == 200)
    })
    .await;
    let (status, metrics) = http_get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    assert!(metrics.contains(metric), "{metrics}");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("poll the child") {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("yiyun {command:?} did not stop within 20s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(exit.success(), "yiyun {command:?} exited with {exit} after SIGTERM:\n{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(http_get(addr, "/healthz").is_none(), "the admin port is closed after exit");
}

#[tokio::test]
async fn controller_answers_healthz_and_stops_on_sigterm() {
    let _turn = yiyun_e2e::controller_turn().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let command = yiyun_e2e::controller_command(&addr);
    component_serves_admin_endpoints_and_stops_on_sigterm(
        command,
        addr.parse().expect("an address"),
        "yiyun_controller_build_info",
    )
    .await;
}

#[tokio::test]
async fn scheduler_answers_healthz_and_stops_on_sigterm() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(yiyun_bin());
    command.args(["scheduler", "--leader-elect=false", "--admin-addr", &addr]);
    component_serves_admin_endpoints_and_stops_on_sigterm(
        command,
        addr.parse().expect("an address"),
        "yiyun_scheduler_build_info",
    )
    .await;
}

/// `curl` with `args`: the HTTP status it got, or 0 when no HTTP exchange took place.
fn curl_status(args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .args(args)
        .output();
    out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(0)
}

#[test]
fn the_local_cluster_keeps_its_keys_private_and_refuses_strangers() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = yiyun_e2e::LocalCluster::current();
    let (state, port) = (&cluster.state, |key: &str| cluster.port(key));
    for file in
        ["ca.key", "apiserver.key", "sa.key", "etcd.key", "etcd-client.key", "tokens.csv", "admin.token"]
    {
        let mode = std::fs::metadata(state.join("pki").join(file)).expect(file).permissions().mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others: {mode:o}");
    }
    let mode = std::fs::metadata(state).expect("the state directory").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the state directory is open to others: {mode:o}");

    let pki = |file: &str| cluster.pki(file);
    let api = format!("https://127.0.0.1:{}/api", port("API_PORT"));
    assert_eq!(curl_status(&["--cacert", &pki("ca.crt"), &api]), 401, "anonymous requests are refused");
    let etcd = format!("https://127.0.0.1:{}/health", port("ETCD_PORT"));
    assert_eq!(
        curl_status(&["--cacert", &pki("ca.crt"), &etcd]),
        0,
        "etcd refuses a TLS client without a certificate"
    );
    let plain = format!("http://127.0.0.1:{}/health", port("ETCD_PORT"));
    assert_ne!(curl_status(&[&plain]), 200, "etcd does not serve plain HTTP");
    let with_certificate = [
        "--cacert",
        &pki("ca.crt"),
        "--cert",
        &pki("etcd-client.crt"),
        "--key",
        &pki("etcd-client.key"),
        &etcd,
    ];
    assert_eq!(curl_status(&with_certificate), 200, "the apiserver's client certificate is accepted");
}
