//! A real Prometheus (built from the Go module proxy, pinned in `e2e/versions.env`) scrapes
//! yiyun-scheduler and the controller, each run with exactly its chart role, while the scheduler
//! binds pods; PromQL over what it scraped answers what an operator asks: are they up, how many
//! pods were bound, and the bind latency p99 over the run. It evaluates yiyun's alerting rules
//! on what it scraped, and promtool checks and unit-tests those rules.

use std::{process::Command, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use yiyun_e2e::{
    TestNamespace, YiyunProcess, cached_binary, client, create_kwok_node, eventually, free_port,
    install_crds, service_account_kubeconfig, unique, wait_ready,
};

const ALERTS: &str = "charts/yiyun/files/alerts.yaml";

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(cached_binary("promtool", "PROMETHEUS_VERSION"))
        .args(args)
        .current_dir(yiyun_e2e::repo_path("."))
        .output()
        .expect("run promtool");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    let (ok, said) = promtool(&["check", "rules", ALERTS]);
    assert!(ok, "promtool check rules: {said}");
    let (ok, said) = promtool(&["test", "rules", "e2e/alerts/alerts_test.yaml"]);
    assert!(ok, "promtool test rules: {said}");
    // Every alert has a test of its own.
    let tests = yiyun_e2e::repo_file("e2e/alerts/alerts_test.yaml");
    for alert in yiyun_e2e::repo_file(ALERTS).lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}\n")), "{alert} has no unit test");
    }
}

/// `prometheus` on a free port, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scraping every `targets` (job name, admin address) and evaluating yiyun's alerting rules
    /// every second.
    fn start(targets: &[(&str, &str)]) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(&dir).expect("a directory");
        let jobs: String = targets
            .iter()
            .map(|(job, addr)| {
                format!("  - job_name: {job}\n    static_configs: [{{targets: ['{addr}']}}]\n")
            })
            .collect();
        let config = dir.join("prometheus.yml");
        let rules = yiyun_e2e::repo_path(ALERTS);
        let global = "global: {scrape_interval: 1s, evaluation_interval: 1s}";
        std::fs::write(
            &config,
            format!("{global}\nrule_files: ['{}']\nscrape_configs:\n{jobs}", rules.display()),
        )
        .expect("write the configuration");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(cached_binary("prometheus", "PROMETHEUS_VERSION"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("a log"))
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr }
    }

    /// The value of an instant PromQL query with one result, if it has one yet.
    fn query(&self, promql: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sS", "--get", "--data-urlencode"])
            .arg(format!("query={promql}"))
            .arg(format!("http://{}/api/v1/query", self.addr))
            .output()
            .ok()?;
        let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
        answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_scheduler_and_the_controller_and_answers_promql() {
    let client = client().await;
    install_crds(&client).await;
    let namespace = TestNamespace::create(&client, "prometheus").await;
    let node = unique("prometheus-node");
    create_kwok_node(&client, &node, json!({})).await;
    wait_ready(&client, std::slice::from_ref(&node)).await;

    let scheduler_name = unique("prometheus-scheduler");
    let scheduler_admin = format!("127.0.0.1:{}", free_port());
    let scheduler_role = service_account_kubeconfig("scheduler-rbac.yaml", "yiyun-scheduler");
    let scheduler_args = ["scheduler", "--scheduler-name", &scheduler_name, "--admin-addr", &scheduler_admin];
    let _scheduler = YiyunProcess::spawn(
        "prometheus-scheduler",
        &[&scheduler_args[..], &["--leader-elect=false"]].concat(),
        Some(&scheduler_role),
        "info",
    );
    let controller_admin = format!("127.0.0.1:{}", free_port());
    let controller_role = service_account_kubeconfig("controller-rbac.yaml", "yiyun-controller");
    let _controller = YiyunProcess::spawn(
        "prometheus-controller",
        &["controller", "--admin-addr", &controller_admin, "--leader-elect=false"],
        Some(&controller_role),
        "info",
    );
    let prometheus =
        Prometheus::start(&[("yiyun-scheduler", &scheduler_admin), ("yiyun-controller", &controller_admin)]);
    eventually(Duration::from_secs(60), "both components up in Prometheus", || async {
        (prometheus.query("sum(up)") == Some(2.0)).then_some(())
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.name);
    const PODS: usize = 20;
    for i in 0..PODS {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{i}")},
            "spec": {"schedulerName": scheduler_name,
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "c", "image": "registry.gov.local/web:1",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
        }))
        .expect("a pod");
        pods.create(&PostParams::default(), &pod).await.expect("create a pod");
    }
    let bound = eventually(Duration::from_secs(90), "every pod bound, as Prometheus saw it", || async {
        let bound = prometheus.query("sum(yiyun_scheduler_bound_total)")?;
        (bound >= PODS as f64).then_some(bound)
    })
    .await;
    let p99 = prometheus
        .query(
            "histogram_quantile(0.99, sum by (le) (rate(yiyun_scheduler_bind_duration_seconds_bucket[5m])))",
        )
        .expect("a bind latency p99");
    println!("Prometheus: {bound} pods bound, bind latency p99 {:.1} ms", p99 * 1000.0);
    assert!(p99 > 0.0 && p99.is_finite(), "a real latency: {p99}");
    let build = prometheus.query("sum(yiyun_controller_build_info)").expect("the controller's build");
    assert_eq!(build, 1.0, "the controller's metrics scraped");

    // A pod no node can hold: counted pending by its reason, and the alert about pods waiting
    // too long starts counting down (pending, before its 10 minutes make it fire).
    let huge: Pod = serde_json::from_value(json!({
        "metadata": {"name": "huge"},
        "spec": {"schedulerName": scheduler_name,
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "c", "image": "registry.gov.local/web:1",
                "resources": {"requests": {"cpu": "5000", "memory": "64Mi"}}}]}
    }))
    .expect("a pod");
    pods.create(&PostParams::default(), &huge).await.expect("create the pod");
    eventually(Duration::from_secs(60), "the huge pod pending for insufficient cpu", || async {
        let waiting = prometheus.query(r#"sum(yiyun_scheduler_pending_pods{reason="insufficient_cpu"})"#)?;
        (waiting == 1.0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(60), "YiyunPodsPendingLong pending for insufficient_cpu", || async {
        let alert =
            r#"ALERTS{alertname="YiyunPodsPendingLong", alertstate="pending", reason="insufficient_cpu"}"#;
        (prometheus.query(alert)? == 1.0).then_some(())
    })
    .await;
    // Every alert waits a minute or more before firing, longer than this run: what can be checked
    // is that the alerts about leaders and scrapes are not even pending while both lead and are up.
    let health = r#"count(ALERTS{alertname=~"YiyunSchedulerWithoutLeader|YiyunComponentWithoutLeader|YiyunComponentDown"})"#;
    assert_eq!(prometheus.query(health), None, "no leader or scrape alert pending: both lead, both up");
    namespace.delete().await;
}
