//! Traces and logs against a real trace backend: Jaeger's all-in-one (built from the Go module
//! proxy, pinned in `e2e/versions.env`) receives the scheduler's and the controller's spans over
//! OTLP. A pod's scheduling cycle and a tenant's reconcile are found there with the object, the
//! tenant and the outcome as attributes, and the components' JSON log lines about them carry
//! the same object, tenant and trace id.

use std::{process::Command, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use yiyun_crds::Tenant;
use yiyun_e2e::{
    YiyunProcess, apply_yiyun, cached_binary, client, create_kwok_node, eventually, free_port, unique,
    wait_ready,
};

/// Jaeger all-in-one with in-memory storage on free ports, killed when dropped.
struct Jaeger {
    child: std::process::Child,
    otlp: String,
    query: String,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Jaeger {
    fn start() -> Jaeger {
        let port = || format!("127.0.0.1:{}", free_port());
        let (otlp, query) = (port(), port());
        let log = std::env::temp_dir().join(format!("{}.log", unique("jaeger")));
        let child = Command::new(cached_binary("jaeger", "JAEGER_VERSION"))
            .arg(format!("--collector.otlp.grpc.host-port={otlp}"))
            .arg(format!("--query.http-server.host-port={query}"))
            .arg(format!("--collector.otlp.http.host-port={}", port()))
            .arg(format!("--collector.grpc-server.host-port={}", port()))
            .arg(format!("--collector.http-server.host-port={}", port()))
            .arg(format!("--query.grpc-server.host-port={}", port()))
            .arg(format!("--admin.http.host-port={}", port()))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log"))
            .spawn()
            .expect("start jaeger");
        Jaeger { child, otlp, query }
    }

    /// The spans named `operation` that `service` sent, with their tags as a map.
    fn spans(&self, service: &str, operation: &str) -> Vec<(String, serde_json::Map<String, Value>)> {
        let url =
            format!("http://{}/api/traces?service={service}&operation={operation}&limit=1000", self.query);
        let Ok(out) = Command::new("curl").args(["-sS", &url]).output() else { return Vec::new() };
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut found = Vec::new();
        for trace in answer["data"].as_array().into_iter().flatten() {
            for span in trace["spans"].as_array().into_iter().flatten() {
                if span["operationName"] != operation {
                    continue;
                }
                let tags = span["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|tag| Some((tag["key"].as_str()?.to_string(), tag["value"].clone())))
                    .collect();
                // Jaeger leaves out leading zeros; so does the comparison.
                let trace = span["traceID"].as_str().unwrap_or_default().trim_start_matches('0').to_string();
                found.push((trace, tags));
            }
        }
        found
    }
}

/// The JSON log lines of `process` whose current span has `field` = `value`.
fn lines_about(process: &YiyunProcess, field: &str, value: &str) -> Vec<Value> {
    process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["span"][field] == value)
        .collect()
}

#[tokio::test]
async fn scheduling_cycles_and_reconciles_reach_jaeger_and_their_log_lines_carry_the_trace() {
    let client = client().await;
    yiyun_e2e::install_crds(&client).await;
    let jaeger = Jaeger::start();
    let node = unique("traces-node");
    create_kwok_node(&client, &node, json!({})).await;
    wait_ready(&client, std::slice::from_ref(&node)).await;

    let endpoint = format!("http://{}", jaeger.otlp);
    let telemetry = ["--log-format", "json", "--otlp-endpoint", &endpoint];
    let free_addr = || format!("127.0.0.1:{}", free_port());
    let controller_admin = free_addr();
    let controller_args = ["controller", "--leader-elect=false", "--admin-addr", &controller_admin];
    let controller = YiyunProcess::spawn(
        "traces-controller",
        &[&controller_args[..], &telemetry].concat(),
        None,
        "info,yiyun_controller=debug",
    );
    let scheduler_name = unique("traces-scheduler");
    let scheduler_admin = free_addr();
    let scheduler_args = [
        "scheduler",
        "--leader-elect=false",
        "--scheduler-name",
        &scheduler_name,
        "--admin-addr",
        &scheduler_admin,
    ];
    let scheduler =
        YiyunProcess::spawn("traces-scheduler", &[&scheduler_args[..], &telemetry].concat(), None, "info");

    // A tenant, reconciled by the controller, and a pod of its namespace, placed by the scheduler.
    let tenant = unique("traced");
    let namespace = format!("{tenant}-apps");
    let object = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"displayName": "可追踪的部门", "level": "province", "namespaces": [{"name": namespace}]}});
    apply_yiyun::<Tenant>(&client, &tenant, object).await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    eventually(Duration::from_secs(60), "the tenant Ready", || async {
        let found = tenants.get(&tenant).await.ok()?;
        found.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "traced"},
        "spec": {"schedulerName": scheduler_name,
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "c", "image": "registry.gov.local/app:1",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
    }))
    .expect("a pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.create(&PostParams::default(), &pod).await.expect("create the pod");
    let bound_to = eventually(Duration::from_secs(60), "the pod bound", || async {
        pods.get("traced").await.ok()?.spec?.node_name
    })
    .await;

    // The scheduling cycle in Jaeger, with the pod, its tenant, the outcome and the node.
    let (cycle_trace, cycle) =
        eventually(Duration::from_secs(60), "the pod's scheduling cycle in Jaeger", || async {
            jaeger.spans("yiyun-scheduler", "scheduling_cycle").into_iter().find(|(_, tags)| {
                tags.get("namespace") == Some(&json!(namespace))
                    && tags.get("object") == Some(&json!("traced"))
            })
        })
        .await;
    assert_eq!(cycle.get("tenant"), Some(&json!(tenant)), "{cycle:?}");
    assert_eq!(cycle.get("outcome"), Some(&json!("scheduled")), "{cycle:?}");
    assert_eq!(cycle.get("node"), Some(&json!(bound_to)), "{cycle:?}");
    assert_eq!(cycle.get("kind"), Some(&json!("pod")), "{cycle:?}");

    // The tenant's reconciles, with their outcome.
    let tenant_reconciles = || {
        jaeger
            .spans("yiyun-controller", "reconcile")
            .into_iter()
            .filter(|(_, tags)| tags.get("tenant") == Some(&json!(tenant)))
            .collect::<Vec<_>>()
    };
    let reconciles = eventually(Duration::from_secs(60), "the tenant's reconciles in Jaeger", || async {
        let found = tenant_reconciles();
        found.iter().any(|(_, tags)| tags.get("outcome") == Some(&json!("ok"))).then_some(found)
    })
    .await;
    for (_, reconcile) in &reconciles {
        assert_eq!(reconcile.get("controller"), Some(&json!("tenancy")), "{reconcile:?}");
        assert_eq!(reconcile.get("object"), Some(&json!(tenant)), "{reconcile:?}");
    }

    // Log lines about them are JSON with the object, the tenant and the trace id of a reconcile
    // Jaeger holds.
    let written = lines_about(&controller, "tenant", &tenant);
    assert!(!written.is_empty(), "the controller logged writes for the tenant:\n{}", controller.logs());
    let trace_of =
        |line: &Value| line["span"]["trace_id"].as_str().map(|t| t.trim_start_matches('0').to_string());
    let line_traces: std::collections::BTreeSet<String> =
        written.iter().map(|line| trace_of(line).unwrap_or_else(|| panic!("a trace id: {line}"))).collect();
    let reconcile_traces = eventually(Duration::from_secs(60), "every logged trace in Jaeger", || async {
        let known: std::collections::BTreeSet<String> =
            tenant_reconciles().into_iter().map(|(trace, _)| trace).collect();
        line_traces.is_subset(&known).then_some(known)
    })
    .await;
    let bound = lines_about(&scheduler, "object", "traced");
    assert!(
        bound.iter().any(|line| line["span"]["namespace"] == namespace.as_str()
            && line["span"]["tenant"] == tenant.as_str()
            && line["span"]["trace_id"].is_string()),
        "the scheduler's lines about the pod carry its namespace, tenant and trace: {bound:#?}\n{}",
        scheduler.logs()
    );
    assert!(!reconcile_traces.contains(&cycle_trace), "each its own trace");
    let _ = tenants.delete(&tenant, &Default::default()).await;
}
