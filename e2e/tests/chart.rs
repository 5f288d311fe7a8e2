//! The Helm chart, checked with helm itself (built from the Go module proxy) and a real
//! apiserver: `helm lint --strict`; wrong values refused by `values.schema.json` with the field
//! named; every rendered object accepted by the apiserver (`kubectl apply --dry-run=server`) in
//! a namespace that enforces Pod Security `restricted`; and on a cluster of its own
//! (`YIYUN_HELM_CLUSTER`, as `make e2e` starts it): the previous chart version installed, upgraded
//! to this one with every component, the pods created under `restricted`, each component run as
//! a process with its release ServiceAccount's token and working, nothing more granted, and an
//! uninstall that leaves the tenants and their namespaces. Each component's `/metrics` passes
//! `promtool check metrics`.

use std::{path::Path, process::Command, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, api::ListParams};
use serde_json::{Value, json};
use yiyun_crds::Tenant;
use yiyun_e2e::{
    LocalCluster, YiyunProcess,
    api::local_ca,
    apply_yiyun,
    chart::{EVERY_COMPONENT, chart_dir, helm_run},
    create_kwok_node_with, eventually, free_port, http_get, kubectl_apply_in, token_kubeconfig, unique,
    wait_ready,
};

/// The chart as it was before the components' Deployments (CRDs, roles, admission policies).
const PREVIOUS_CHART: &str = "02aa849";
const COMPONENTS: [&str; 5] = ["controller", "scheduler", "billing", "api", "dr"];

/// What lets a pod onto the local cluster's kwok nodes.
fn kwok_toleration() -> Value {
    json!({"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"})
}

fn with_every_component(mut args: Vec<String>) -> Vec<String> {
    for value in EVERY_COMPONENT {
        args.extend(["--set".to_string(), value.to_string()]);
    }
    args
}

fn helm(args: &[String]) -> (bool, String) {
    helm_run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn chart() -> String {
    chart_dir().to_str().expect("a path").to_string()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("helm renders YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[tokio::test]
async fn the_chart_lints_refuses_wrong_values_and_the_apiserver_accepts_it() {
    for args in [
        vec!["lint".to_string(), "--strict".into(), chart()],
        with_every_component(vec!["lint".into(), "--strict".into(), chart()]),
    ] {
        let (ok, out) = helm(&args);
        assert!(ok && out.contains("0 chart(s) failed"), "{out}");
    }

    // Wrong values fail at install, naming the value.
    let refused = |set: &str, expected: &[&str]| {
        let (ok, out) = helm(&["template".into(), "yiyun".into(), chart(), "--set".into(), set.into()]);
        assert!(!ok, "--set {set} is refused: {out}");
        for word in expected {
            assert!(out.contains(word), "--set {set}: the refusal names {word:?}: {out}");
        }
    };
    refused("scheduler.replicas=0", &["scheduler", "replicas", "minimum"]);
    refused("logFormat=xml", &["logFormat", "json", "text"]);
    refused("controler.replicas=2", &["controler"]);
    refused("api.enabled=true", &["api.tlsSecret"]);
    refused("billing.enabled=true", &["billing.database.existingSecret"]);
    refused("otlpEndpoint=collector:4317", &["otlpEndpoint"]);

    // Every workload fit for Pod Security `restricted`, probed, with resources; no wildcard in
    // any role.
    let (ok, rendered) = helm(&with_every_component(vec![
        "template".into(),
        "yiyun".into(),
        chart(),
        "--namespace".into(),
        "yiyun-system".into(),
    ]));
    assert!(ok, "{rendered}");
    let objects = documents(&rendered);
    let deployments: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), COMPONENTS.len(), "a Deployment per component");
    for deployment in &deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert!(container["readinessProbe"]["httpGet"]["path"].is_string(), "{name}");
        assert!(container["resources"]["requests"]["cpu"].is_string(), "{name}");
        assert!(container["resources"]["limits"]["memory"].is_string(), "{name}");
    }
    let scheduler =
        deployments.iter().find(|d| d["metadata"]["name"] == "yiyun-scheduler").expect("the scheduler");
    assert_eq!(scheduler["spec"]["replicas"], 2, "two schedulers, one leading");
    for kind in ["Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"] {
        let count = objects
            .iter()
            .filter(|o| o["kind"] == kind && o["metadata"]["namespace"] == "yiyun-system")
            .count();
        assert_eq!(count, COMPONENTS.len(), "a {kind} per component");
    }
    for role in objects.iter().filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role") {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for key in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !rule[key].as_array().into_iter().flatten().any(|v| v == "*"),
                    "no wildcards: {role}"
                );
            }
        }
    }

    // The alerting rules and the dashboard, as the operator and Grafana's sidecar get them: the
    // very files Prometheus without the operator loads.
    let (ok, rendered) = helm(&with_every_component(vec![
        "template".into(),
        "yiyun".into(),
        chart(),
        "--show-only".into(),
        "templates/monitoring.yaml".into(),
        "--set".into(),
        "prometheusRule.enabled=true".into(),
        "--set".into(),
        "grafanaDashboard.enabled=true".into(),
    ]));
    assert!(ok, "{rendered}");
    let monitoring = documents(&rendered);
    let rule = monitoring.iter().find(|o| o["kind"] == "PrometheusRule").expect("a PrometheusRule");
    let alerts: Value = serde_saphyr::from_str(&yiyun_e2e::repo_file("charts/yiyun/files/alerts.yaml"))
        .expect("the rules parse");
    assert_eq!(rule["spec"], alerts, "the PrometheusRule holds the rule file as it is");
    let dashboard = monitoring.iter().find(|o| o["kind"] == "ConfigMap").expect("the dashboard's ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1", "the sidecar's label");
    let held: Value =
        serde_json::from_str(dashboard["data"]["yiyun.json"].as_str().expect("the dashboard")).expect("JSON");
    let file: Value = serde_json::from_str(&yiyun_e2e::repo_file("charts/yiyun/files/dashboards/yiyun.json"))
        .expect("JSON");
    assert_eq!(held, file);

    // The apiserver accepts everything, and Pod Security `restricted` has nothing to say.
    let cluster = LocalCluster::current();
    let namespace = unique("chart-dry-run");
    let labelled = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, labels: \
         {{pod-security.kubernetes.io/enforce: restricted, pod-security.kubernetes.io/warn: restricted}}}}\n"
    );
    let (ok, out) = kubectl_apply_in(Some(&cluster.kubeconfig()), &labelled);
    assert!(ok, "{out}");
    let (ok, rendered) = helm(&with_every_component(vec![
        "template".into(),
        "yiyun".into(),
        chart(),
        "--namespace".into(),
        namespace.clone(),
    ]));
    assert!(ok, "{rendered}");
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rendered.as_bytes())?;
            child.wait_with_output()
        })
        .expect("kubectl");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the apiserver accepts the chart: {said}");
    assert!(!said.contains("would violate PodSecurity"), "{said}");
    assert!(said.contains("deployment.apps/yiyun-scheduler created (server dry run)"), "{said}");
    let _ = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["delete", "namespace", &namespace, "--wait=false"])
        .output();
}

/// A component as its pod would run it: the release ServiceAccount's token, nothing else.
fn run_as_release(
    cluster: &Path,
    namespace: &str,
    component: &str,
    args: &[&str],
) -> (YiyunProcess, std::net::SocketAddr) {
    let kubeconfig = token_kubeconfig(cluster, namespace, &format!("yiyun-{component}"));
    let admin = format!("127.0.0.1:{}", free_port());
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin-addr", &admin]);
    // The API elects no leader: every replica serves.
    if component != "api" {
        all.extend(["--lease-namespace", namespace]);
    }
    let process = YiyunProcess::spawn(&format!("yiyun-{component}"), &all, Some(&kubeconfig), "info");
    (process, admin.parse().expect("an address"))
}

/// Waits until the component at `addr` is ready, then holds its `/metrics` (Prometheus's text
/// format, as `curl` gets it) to `promtool check metrics`: naming, units, help on every family.
async fn ready(addr: std::net::SocketAddr, what: &str, process: &YiyunProcess) {
    eventually(Duration::from_secs(60), &format!("{what} ready (log {})", process.log.display()), || async {
        http_get(addr, "/readyz").filter(|(code, _)| *code == 200).map(|_| ())
    })
    .await;
    let (_, metrics) = http_get(addr, "/metrics").expect("/metrics answers");
    let mut promtool = Command::new(yiyun_e2e::cached_binary("promtool", "PROMETHEUS_VERSION"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), metrics.as_bytes()).expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    let said =
        format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success(), "promtool check metrics of {what}: {said}\n{metrics}");
}

/// The README documents every family the components expose, and the alerting rules and the
/// dashboard read only metrics that exist.
fn every_metric_is_documented_and_every_reference_exists(pages: &[String]) {
    use yiyun_e2e::chart::{exposed_names, families, unknown_metrics};
    let exposed: std::collections::BTreeSet<String> =
        pages.iter().flat_map(|page| exposed_names(page)).collect();
    let readme = yiyun_e2e::repo_file("README.md");
    let undocumented: Vec<String> = pages
        .iter()
        .flat_map(|page| families(page))
        .filter(|family| !readme.contains(&format!("`{family}`")))
        .collect();
    assert!(undocumented.is_empty(), "families the README does not document: {undocumented:?}");
    for file in ["charts/yiyun/files/alerts.yaml", "charts/yiyun/files/dashboards/yiyun.json"] {
        let unknown = unknown_metrics(&yiyun_e2e::repo_file(file), &exposed);
        assert!(unknown.is_empty(), "{file} reads metrics no component exposes: {unknown:?}");
    }
}

fn can_i(cluster: &Path, namespace: &str, account: &str, verb: &str, resource: &str) -> bool {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster)
        .args(["auth", "can-i", verb, resource, "--all-namespaces"])
        .arg(format!("--as=system:serviceaccount:{namespace}:{account}"))
        .output()
        .expect("kubectl");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_on_a_real_apiserver() {
    let cluster = LocalCluster::of_kubeconfig_in("YIYUN_HELM_CLUSTER");
    let kubeconfig = cluster.kubeconfig();
    let kube = kubeconfig.to_str().expect("a path").to_string();
    let client = cluster.client().await;
    // A GPU node of a western site, so the scheduler's per-site figures have a site to show.
    let node = unique("chart-node");
    let site = json!({"yiyun.io/site": "qingyang", "yiyun.io/region-class": "west"});
    let capacity = json!({"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"});
    create_kwok_node_with(&client, &node, site, capacity).await;
    wait_ready(&client, &[node]).await;
    let namespace = "yiyun-system".to_string();

    // The previous chart version, from git, installed as a cloud admin would have.
    let previous = std::env::temp_dir().join(unique("previous-chart"));
    std::fs::create_dir_all(&previous).expect("a directory");
    let archive = Command::new("git")
        .current_dir(yiyun_e2e::repo_path(""))
        .args(["archive", PREVIOUS_CHART, "charts/yiyun"])
        .output()
        .expect("git archive");
    assert!(archive.status.success(), "{}", String::from_utf8_lossy(&archive.stderr));
    let mut untar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&previous)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("tar");
    std::io::Write::write_all(&mut untar.stdin.take().expect("stdin"), &archive.stdout).expect("untar");
    assert!(untar.wait().expect("tar").success());
    let previous_chart = previous.join("charts/yiyun").to_str().expect("a path").to_string();
    let install = [
        "install",
        "yiyun",
        &previous_chart,
        "--namespace",
        &namespace,
        "--create-namespace",
        "--kubeconfig",
        &kube,
    ];
    let (ok, out) = helm(&install.map(String::from));
    assert!(ok, "the previous chart installs: {out}");

    // A tenant, made while the previous version ran.
    let tenant = unique("chart-tenant");
    let object = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"displayName": "升级前的部门", "level": "province", "quota": {"max": {"cpu": "16"}},
            "namespaces": [{"name": format!("{tenant}-apps")}]}});
    apply_yiyun::<Tenant>(&client, &tenant, object).await;

    // The upgrade, into a namespace that enforces Pod Security `restricted`.
    let restricted = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, labels: {{pod-security.kubernetes.io/enforce: restricted}}}}\n"
    );
    let (ok, out) = kubectl_apply_in(Some(&kubeconfig), &restricted);
    assert!(ok, "{out}");
    // The Prometheus Operator's CRDs, as a cluster watched by the operator has them: the
    // release's ServiceMonitors and PrometheusRule are created for real, checked by their schema.
    let operator_crds = yiyun_e2e::cached("prometheus-operator-crds", "PROMETHEUS_OPERATOR_VERSION");
    for kind in ["servicemonitors", "prometheusrules"] {
        let crd = operator_crds.join(format!("{kind}.yaml"));
        let out = Command::new("kubectl")
            .args(["--kubeconfig", &kube, "apply", "--server-side", "-f"])
            .arg(&crd)
            .output()
            .expect("kubectl");
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        let established = format!("crd/{kind}.monitoring.coreos.com");
        let out = Command::new("kubectl")
            .args([
                "--kubeconfig",
                &kube,
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                &established,
            ])
            .output()
            .expect("kubectl");
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // kwok's nodes are tainted: the release's pods tolerate it, as a cloud admin's values would
    // for the nodes set aside for the control plane.
    let tolerations = format!("tolerations=[{}]", kwok_toleration());
    let (ok, out) = helm(&with_every_component(
        [
            "upgrade",
            "yiyun",
            &chart(),
            "--namespace",
            &namespace,
            "--kubeconfig",
            &kube,
            "--set-json",
            &tolerations,
            "--set",
            "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        ]
        .map(String::from)
        .to_vec(),
    ));
    assert!(ok, "the upgrade: {out}");
    let monitoring = |what: &str| {
        let out = Command::new("kubectl")
            .args(["--kubeconfig", &kube, "--namespace", &namespace, "get", what, "-o", "name"])
            .output()
            .expect("kubectl");
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(monitoring("servicemonitors").len(), COMPONENTS.len(), "a ServiceMonitor per component");
    assert_eq!(monitoring("prometheusrules"), ["prometheusrule.monitoring.coreos.com/yiyun"]);
    assert_eq!(monitoring("configmap/yiyun-dashboard"), ["configmap/yiyun-dashboard"]);
    let tenants: Api<Tenant> = Api::all(client.clone());
    assert!(
        tenants.get_opt(&tenant).await.expect("the apiserver").is_some(),
        "the tenant outlives the upgrade"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    for component in COMPONENTS {
        let selector = format!("app.kubernetes.io/component={component}");
        let running = |pod: &Pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        eventually(
            Duration::from_secs(90),
            &format!("{component}'s pods created under restricted, running"),
            || async {
                let listed = pods.list(&ListParams::default().labels(&selector)).await.ok()?;
                (!listed.items.is_empty() && listed.items.iter().all(running)).then_some(())
            },
        )
        .await;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let scheduler = deployments.get("yiyun-scheduler").await.expect("the scheduler's Deployment");
    assert_eq!(scheduler.spec.and_then(|s| s.replicas), Some(2));

    // Each component, run with its release ServiceAccount's token, does its work.
    let mut admins = Vec::new();
    let (controller, addr) = run_as_release(&kubeconfig, &namespace, "controller", &["controller"]);
    ready(addr, "the controller", &controller).await;
    admins.push(addr);
    eventually(Duration::from_secs(60), "the tenant reconciled by the release's controller", || async {
        let found = tenants.get(&tenant).await.ok()?;
        found.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    let (scheduler, addr) = run_as_release(&kubeconfig, &namespace, "scheduler", &["scheduler"]);
    ready(addr, "the scheduler", &scheduler).await;
    admins.push(addr);
    let apps = format!("{tenant}-apps");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "placed"},
        "spec": {"schedulerName": "yiyun-scheduler", "tolerations": [kwok_toleration()],
            "containers": [{"name": "c", "image": "registry.gov.local/app:1",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
    }))
    .expect("a pod");
    let tenant_pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    tenant_pods.create(&Default::default(), &pod).await.expect("create the pod");
    eventually(Duration::from_secs(60), "the pod bound by the release's scheduler", || async {
        tenant_pods.get("placed").await.ok()?.spec?.node_name
    })
    .await;
    let dir = std::env::temp_dir().join(unique("chart-components"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let ledger = format!("sqlite://{}/ledger.db", dir.display());
    let (meter, addr) = run_as_release(
        &kubeconfig,
        &namespace,
        "billing",
        &["billing", "run", "--database", &ledger, "--basis", "max-request-usage", "--usage-seconds", "1"],
    );
    ready(addr, "the meter", &meter).await;
    admins.push(addr);
    local_ca(&dir);
    let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
    let api_addr = format!("127.0.0.1:{}", free_port());
    let api_args = [
        "api",
        "--addr",
        &api_addr,
        "--billing-database",
        &ledger,
        "--tls-cert",
        cert.to_str().expect("a path"),
        "--tls-key",
        key.to_str().expect("a path"),
    ];
    let (api, addr) = run_as_release(&kubeconfig, &namespace, "api", &api_args);
    ready(addr, "the API", &api).await;
    admins.push(addr);
    // One call without credentials: refused, and counted.
    let refused = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{api_addr}/v1/bills/2026-11"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "401", "a call without a token is refused");
    let (dr, addr) = run_as_release(&kubeconfig, &namespace, "dr", &["dr", "run"]);
    ready(addr, "the DR controller", &dr).await;
    // A policy whose standby cannot be reached yet: the DR controller says what it promises and
    // what a failover now would lose, which the RPO alert compares.
    let unreachable = "{apiVersion: v1, kind: Config, current-context: c, \
        clusters: [{name: s, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}], \
        users: [{name: u, user: {token: t}}], contexts: [{name: c, context: {cluster: s, user: u}}]}";
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "standby", "namespace": apps}, "stringData": {"kubeconfig": unreachable}});
    let (applied, said) = yiyun_e2e::kubectl_apply_in(Some(&kubeconfig), &secret.to_string());
    assert!(applied, "the standby's Secret applies: {said}");
    let policy = json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "ReplicationPolicy",
        "metadata": {"name": "records", "namespace": apps},
        "spec": {"level": 4, "rpo": "5m",
            "target": {"kubeconfigSecret": {"name": "standby"}, "site": "west-standby"}}
    });
    let (applied, said) = yiyun_e2e::kubectl_apply_in(Some(&kubeconfig), &policy.to_string());
    assert!(applied, "the ReplicationPolicy applies: {said}");
    eventually(Duration::from_secs(60), "the policy's RPO in the DR controller's metrics", || async {
        let (_, page) = http_get(addr, "/metrics")?;
        (page.contains("yiyun_dr_rpo_target_seconds{") && page.contains("yiyun_dr_achieved_rpo_seconds{"))
            .then_some(())
    })
    .await;
    admins.push(addr);
    // What each has counted by now, having done its work.
    let pages: Vec<String> =
        admins.iter().map(|admin| http_get(*admin, "/metrics").expect("/metrics answers").1).collect();

    // Nothing more than their roles: no component may write pods or read every Secret but DR's
    // (which reads its standbys' kubeconfigs and replicates Secrets).
    for component in COMPONENTS {
        let account = format!("yiyun-{component}");
        assert!(!can_i(&kubeconfig, &namespace, &account, "create", "pods"), "{account} may not create pods");
        assert!(
            !can_i(&kubeconfig, &namespace, &account, "delete", "nodes"),
            "{account} may not delete nodes"
        );
        assert_eq!(
            can_i(&kubeconfig, &namespace, &account, "get", "secrets"),
            component == "dr",
            "{account}: get secrets"
        );
    }
    assert!(
        can_i(&kubeconfig, &namespace, "yiyun-scheduler", "watch", "pods"),
        "the check itself can say yes"
    );
    drop((controller, scheduler, meter, api, dr));
    every_metric_is_documented_and_every_reference_exists(&pages);

    // Uninstalled: the components and their roles go; the CRDs, the tenants and their namespaces
    // stay (helm keeps what crds/ installed; a tenant's namespaces follow its deletionPolicy
    // only when the tenant itself is deleted).
    let (ok, out) =
        helm(&["uninstall", "yiyun", "--namespace", &namespace, "--kubeconfig", &kube].map(String::from));
    assert!(ok, "{out}");
    eventually(Duration::from_secs(60), "the Deployments gone", || async {
        deployments.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    assert!(monitoring("servicemonitors").is_empty(), "the ServiceMonitors go with the release");
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    assert!(
        roles.get_opt("yiyun-scheduler").await.expect("the apiserver").is_none(),
        "the roles go with the release"
    );
    assert!(tenants.get_opt(&tenant).await.expect("the apiserver").is_some(), "the tenant stays");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let kept = namespaces.get_opt(&apps).await.expect("the apiserver");
    assert!(kept.is_some_and(|n| n.metadata.deletion_timestamp.is_none()), "the tenant's namespace stays");
    let _ = std::fs::remove_dir_all(&previous);
}

/// The image cannot be built or pulled here (no registry, no Docker); what can be checked is
/// that its recipe runs the release build and copies the binary that build makes.
#[test]
fn the_image_recipe_copies_what_make_release_builds() {
    let dockerfile = yiyun_e2e::repo_file("Dockerfile");
    let makefile = yiyun_e2e::repo_file("Makefile");
    let release =
        makefile.split("\nrelease:\n").nth(1).expect("a release target").lines().next().unwrap_or_default();
    assert!(
        release.contains("--target x86_64-unknown-linux-musl") && release.contains("-p yiyun"),
        "{release}"
    );
    assert!(
        dockerfile.contains("ENV CARGO_TARGET_DIR=/src/target") && dockerfile.contains("RUN make release")
    );
    assert!(dockerfile.contains(
        "COPY --from=build /src/target/x86_64-unknown-linux-musl/release/yiyun /usr/local/bin/yiyun"
    ));
    let runtime = dockerfile.rsplit("\nFROM ").next().expect("a runtime stage");
    assert!(runtime.starts_with("gcr.io/distroless/static"), "no shell, no libc: {runtime}");
    assert!(runtime.contains("USER 65532:65532"), "non-root, as the chart's runAsUser: {runtime}");
    let values = yiyun_e2e::repo_file("charts/yiyun/values.yaml");
    assert!(values.contains("runAsUser: 65532"), "the chart runs the image's user");
}
