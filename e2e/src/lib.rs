//! Helpers for end-to-end tests against a real cluster (`e2e/cluster up`, then `KUBECONFIG`).
//!
//! Each test gets its own namespace and names, so tests run in parallel against one cluster.

pub mod api;
pub mod chart;
pub mod dr;

use std::{
    future::Future,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::{
    api::core::v1::{Namespace, Node, Pod, ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
};

/// A binary `e2e/build-binaries.sh` cached, at the version `e2e/versions.env` pins.
pub fn cached_binary(name: &str, version_key: &str) -> PathBuf {
    cached(&format!("bin/{name}"), version_key)
}

/// What `e2e/build-binaries.sh` cached as `<path>-<version>` (the version `version_key` pins).
pub fn cached(path: &str, version_key: &str) -> PathBuf {
    let versions = repo_file("e2e/versions.env");
    let version = versions
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{version_key}=")))
        .unwrap_or_else(|| panic!("{version_key} in e2e/versions.env"));
    let cache = std::env::var("YIYUN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/yiyun"));
    let path = cache.join(format!("{path}-{version}"));
    assert!(path.exists(), "{} is missing: run e2e/build-binaries.sh", path.display());
    path
}

/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "yiyun-e2e";

/// A client for the cluster `KUBECONFIG` points at. These tests need a real cluster: run them
/// through `make test` or `make e2e`, which start one.
pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run the e2e tests with `make e2e`, which starts a local cluster"
    );
    Client::try_default().await.expect("a client for KUBECONFIG")
}

/// A client acting as `user` (the admin's kubeconfig may impersonate anyone).
pub async fn client_as(user: &str) -> Client {
    let mut config = kube::Config::infer().await.expect("the kubeconfig");
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).expect("a client")
}

/// A name no other test (or earlier run) uses: `prefix-<time><counter>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{:x}{}", nanos, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Installs (or updates) every yiyun CRD by server-side apply and waits until each is served.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in yiyun_crds::crds() {
        let name = crd.metadata.name.clone().expect("generated CRDs have names");
        crds.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|err| panic!("the apiserver refused CRD {name}: {err}"));
        within(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|| panic!("CRD {name} was not established within 30s"))
        .expect("watching the CRD");
    }
}

/// A namespace of the test's own, with its default ServiceAccount (pods need it). Delete it
/// with [`TestNamespace::delete`] at the end of the test.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        Self::create_within(client, prefix, Duration::from_secs(30)).await
    }

    /// [`create`](Self::create), waiting up to `wait` for kube-controller-manager to give the
    /// namespace its default ServiceAccount (longer just after a fault test restarted a part of
    /// the cluster, while kube-controller-manager's own watches catch up).
    pub async fn create_within(client: &Client, prefix: &str, wait: Duration) -> Self {
        let name = unique(prefix);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"yiyun.io/e2e": "true"}}
        }))
        .expect("a valid namespace");
        namespaces.create(&PostParams::default(), &ns).await.expect("create the test namespace");
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        eventually(wait, "the namespace's default ServiceAccount", || async {
            accounts.get_opt("default").await.ok().flatten()
        })
        .await;
        Self { name, client: client.clone() }
    }

    pub async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client);
        let _ = namespaces.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Creates a fake node kwok acts as the kubelet of (it carries kwok's NoSchedule taint) with
/// `labels`, 32 CPUs, 256Gi and 110 pods.
pub async fn create_kwok_node(client: &Client, name: &str, labels: serde_json::Value) {
    create_kwok_node_with(
        client,
        name,
        labels,
        serde_json::json!({"cpu": "32", "memory": "256Gi", "pods": "110"}),
    )
    .await
}

/// A kwok node with the given capacity (also its allocatable), e.g. with `nvidia.com/gpu`.
pub async fn create_kwok_node_with(
    client: &Client,
    name: &str,
    labels: serde_json::Value,
    capacity: serde_json::Value,
) {
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": labels},
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity}
    }))
    .expect("a valid node");
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|err| panic!("create kwok node {name}: {err}"));
}

/// Waits until kwok has made the nodes Ready and the node lifecycle controller has lifted its
/// `not-ready` taint: before that the nodes are (rightly) filtered out, and a test that expects a
/// particular node would depend on who wins that race.
pub async fn wait_ready(client: &Client, names: &[String]) {
    let api: Api<Node> = Api::all(client.clone());
    for name in names {
        eventually(Duration::from_secs(60), &format!("node {name} Ready and untainted"), || async {
            let node = api.get(name).await.ok()?;
            let ready = node
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            (ready && taints.iter().all(|t| t.key == "kwok.x-k8s.io/node")).then_some(())
        })
        .await;
    }
}

/// Deletes the nodes a test made; those already gone are no matter.
pub async fn delete_nodes<S: AsRef<str>>(client: &Client, names: &[S]) {
    let api: Api<Node> = Api::all(client.clone());
    for name in names {
        let _ = api.delete(name.as_ref(), &DeleteParams::default()).await;
    }
}
/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `future` with a time limit; `None` when it ran out.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, future).await.ok()
}

/// Runs `kubectl` (from PATH, as `e2e/cluster env` sets it) against `KUBECONFIG`.
pub fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl").args(args).output().expect("kubectl on PATH (see `e2e/cluster env`)")
}

/// `kubectl apply -f -` of `manifest` (YAML or JSON); whether it succeeded, and what it printed
/// on stdout and stderr.
pub fn kubectl_apply(manifest: &str) -> (bool, String) {
    kubectl_apply_in(None, manifest)
}

/// [`kubectl_apply`] on the cluster of `kubeconfig` (`KUBECONFIG`'s when `None`).
///
/// Client-side apply reads, then creates: tests running in parallel that apply the same shared
/// object (the chart's namespace and RBAC) can both find it missing and one then fails with
/// AlreadyExists. Applying again then finds it and patches it, so that case is retried.
pub fn kubectl_apply_in(kubeconfig: Option<&std::path::Path>, manifest: &str) -> (bool, String) {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        let (ok, out) = kubectl_apply_once(kubeconfig, manifest);
        if ok || attempt == ATTEMPTS || !out.contains("(AlreadyExists)") {
            return (ok, out);
        }
        attempt += 1;
    }
}

fn kubectl_apply_once(kubeconfig: Option<&std::path::Path>, manifest: &str) -> (bool, String) {
    use std::io::Write;
    let mut command = Command::new("kubectl");
    if let Some(kubeconfig) = kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    let mut child = command
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (see `e2e/cluster env`)");
    child.stdin.take().expect("stdin").write_all(manifest.as_bytes()).expect("write to kubectl");
    let out = child.wait_with_output().expect("kubectl finishes");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The `yiyun` binary of this build: `$YIYUN_BIN`, or `yiyun` next to the test binary's
/// directory (`cargo build -p yiyun` puts it there; `make e2e` does so first).
pub fn yiyun_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("YIYUN_BIN") {
        return path.into();
    }
    let test_exe = std::env::current_exe().expect("the test binary's path");
    let bin = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("yiyun"))
        .expect("the test binary lives in target/<profile>/deps");
    assert!(bin.exists(), "{} is missing: run `cargo build -p yiyun` first", bin.display());
    bin
}

/// The text of `path`, relative to the repository root of the checkout under test. The root is
/// found at run time: the target directory is shared between checkouts, and a path compiled in
/// would point at whichever checkout built the test first.
pub fn repo_file(path: &str) -> String {
    let file = repo_path(path);
    std::fs::read_to_string(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display()))
}

/// `path` in the checkout under test (see [`repo_file`]).
pub fn repo_path(path: &str) -> std::path::PathBuf {
    let package = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests");
    std::path::Path::new(&package).join("..").join(path)
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

pub use yiyun_admin::http_get;

/// Tests that run the controller take turns: two controllers would fight over the same objects.
/// (An async mutex: the turn is held across awaits, and a failed test does not poison it.)
static CONTROLLER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn to run a controller; the turn lasts as long as the guard.
pub async fn controller_turn() -> tokio::sync::MutexGuard<'static, ()> {
    CONTROLLER_TURN.lock().await
}

/// [`LocalCluster::service_account_kubeconfig`] of the cluster `KUBECONFIG` names.
pub fn service_account_kubeconfig(manifest: &str, account: &str) -> PathBuf {
    LocalCluster::current().service_account_kubeconfig(manifest, account)
}

/// A kubeconfig holding only a token of ServiceAccount `namespace/account` of the cluster
/// `cluster` (a kubeconfig of its admin) names.
pub fn token_kubeconfig(cluster: &std::path::Path, namespace: &str, account: &str) -> PathBuf {
    let kubectl = |args: &[&str]| {
        Command::new("kubectl").arg("--kubeconfig").arg(cluster).args(args).output().expect("kubectl on PATH")
    };
    let token = kubectl(&["create", "token", account, "-n", namespace, "--duration", "2h"]);
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let view = |path: &str| {
        let out = kubectl(&["config", "view", "--raw", "--minify", "-o", &format!("jsonpath={path}")]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (server, ca) =
        (view("{.clusters[0].cluster.server}"), view("{.clusters[0].cluster.certificate-authority}"));
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", unique(account)));
    // It holds a token: readable by this user only.
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&kubeconfig)
    }
    .expect("create the kubeconfig");
    std::io::Write::write_all(
        &mut file,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}}}]\n\
             users: [{{name: sa, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: sa}}}}]\ncurrent-context: c\n"
        )
        .as_bytes(),
    )
    .expect("write the kubeconfig");
    kubeconfig
}

/// Applies the chart's admission policies (dedicated nodes, allowed regions, network
/// isolation), once per test binary. The apiserver enforces them a moment later.
pub fn install_admission_policies() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let (ok, out) = kubectl_apply(&repo_file("charts/yiyun/templates/admission-policies.yaml"));
        assert!(ok, "the chart's admission policies apply: {out}");
    });
}

/// The kubeconfig of the controller's ServiceAccount with the chart's controller role, made
/// once per test binary.
pub fn controller_kubeconfig() -> PathBuf {
    static KUBECONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KUBECONFIG.get_or_init(|| service_account_kubeconfig("controller-rbac.yaml", "yiyun-controller")).clone()
}

/// `yiyun_controller::run` in this process, as the controller's ServiceAccount with exactly the
/// chart's role and with leader election on its Lease, until `stop` or drop.
pub struct InProcessController {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), yiyun_controller::Error>>,
}

impl InProcessController {
    /// Starts the controller (hold a [`controller_turn`] while it runs).
    pub fn start() -> Self {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let args = ["yiyun-controller", "--admin-addr", "127.0.0.1:0", "--kubeconfig"];
        let kubeconfig = controller_kubeconfig();
        let config = <ControllerArgs as clap::Parser>::parse_from(
            args.iter().copied().chain([kubeconfig.to_str().expect("a UTF-8 path")]),
        )
        .config;
        let task = tokio::spawn(yiyun_controller::run(config, shutdown.clone()));
        Self { shutdown, task }
    }

    /// Stops the controller and reports how it ended.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let ended =
            within(Duration::from_secs(20), self.task).await.expect("the controller stops within 20s");
        ended.expect("the controller task does not panic").expect("the controller ends without error");
    }
}

/// `yiyun controller` as a child process's command: admin server on `admin`, the controller's
/// ServiceAccount and chart role, leader election on its Lease. Hold a [`controller_turn`].
pub fn controller_command(admin: &str) -> Command {
    let mut command = Command::new(yiyun_bin());
    command.args(["controller", "--admin-addr", admin, "--kubeconfig"]).arg(controller_kubeconfig());
    command
}

/// The controller's flags as `yiyun controller` parses them, defaults included.
#[derive(clap::Parser)]
struct ControllerArgs {
    #[command(flatten)]
    config: yiyun_controller::Config,
}

/// A `yiyun` component as a child process (so a test can SIGKILL it), logging to a file in the
/// temporary directory; killed when dropped.
pub struct YiyunProcess {
    child: std::process::Child,
    pub log: PathBuf,
}

/// The scheduler as a child process.
pub type SchedulerProcess = YiyunProcess;

impl YiyunProcess {
    /// Starts a scheduler named `name` on a free admin port with `extra` arguments; its Lease
    /// (and the workload measure kept beside it) is named after it unless `extra` names one, so
    /// schedulers of tests running side by side keep apart what they measure.
    pub fn start(name: &str, extra: &[&str]) -> Self {
        let lease = ["--lease-name", name];
        let lease: &[&str] = if extra.contains(&"--lease-name") { &[] } else { &lease };
        Self::scheduler(name, &[extra, lease].concat(), None)
    }

    /// Like [`start`](Self::start), with the credentials of another kubeconfig.
    pub fn start_as(name: &str, extra: &[&str], kubeconfig: &std::path::Path) -> Self {
        Self::scheduler(name, extra, Some(kubeconfig))
    }

    fn scheduler(name: &str, extra: &[&str], kubeconfig: Option<&std::path::Path>) -> Self {
        let admin = format!("127.0.0.1:{}", free_port());
        let args = ["scheduler", "--scheduler-name", name, "--admin-addr", &admin];
        Self::spawn(name, &[&args, extra].concat(), kubeconfig, "info,yiyun_scheduler=debug")
    }

    /// Starts `yiyun ARGS...` against the cluster of `kubeconfig` (default `KUBECONFIG`),
    /// logging at `log_filter`; `name` names its log file.
    pub fn spawn(name: &str, args: &[&str], kubeconfig: Option<&std::path::Path>, log_filter: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}-{}.log", unique(name), std::process::id()));
        let file = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new(yiyun_bin());
        if let Some(kubeconfig) = kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        let child = command
            .args(args)
            .env("RUST_LOG", log_filter)
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("start yiyun {}: {err}", args.join(" ")));
        YiyunProcess { child, log }
    }

    /// SIGKILL: no goodbye, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process: SIGSTOP pauses it as a long GC pause or
    /// a frozen VM would.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill on PATH");
        assert!(status.success(), "kill -{signal}");
    }

    /// Whether the process still runs (it has not exited on its own).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for YiyunProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The local cluster `KUBECONFIG` points at, as `e2e/cluster` made it: its name, state
/// directory (keys, ports) and the means to stop and start its parts.
pub struct LocalCluster {
    pub name: String,
    pub state: PathBuf,
}

impl LocalCluster {
    /// The cluster of `KUBECONFIG` (`e2e/cluster` keeps the kubeconfig in its state directory).
    pub fn current() -> Self {
        Self::of_kubeconfig_in("KUBECONFIG")
    }

    /// The cluster whose kubeconfig environment variable `var` names (as `e2e/with-named-cluster`
    /// sets it).
    pub fn of_kubeconfig_in(var: &str) -> Self {
        let kubeconfig = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: run the e2e tests with `make e2e`, which starts the clusters")
        });
        let state = PathBuf::from(kubeconfig).parent().expect("a local cluster's kubeconfig").to_path_buf();
        let name = state.file_name().expect("a named state directory").to_string_lossy().into_owned();
        LocalCluster { name, state }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }

    /// Applies the chart's RBAC manifest `manifest` (under `charts/yiyun/templates/`, rendered
    /// by helm into `yiyun-system`) to this cluster and writes a kubeconfig holding only a token
    /// of ServiceAccount `yiyun-system/<account>`: a component run with it has exactly the
    /// rights the chart gives it.
    pub fn service_account_kubeconfig(&self, manifest: &str, account: &str) -> PathBuf {
        let kubeconfig = self.kubeconfig();
        let namespace =
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n", chart::NAMESPACE);
        let (ok, out) = kubectl_apply_in(Some(&kubeconfig), &namespace);
        assert!(ok, "{out}");
        let (ok, out) = kubectl_apply_in(Some(&kubeconfig), &chart::render(manifest));
        assert!(ok, "the chart's {manifest} applies: {out}");
        token_kubeconfig(&kubeconfig, chart::NAMESPACE, account)
    }

    /// A client of this cluster's admin.
    pub async fn client(&self) -> Client {
        yiyun_kube::client(Some(&self.kubeconfig())).await.expect("a client for the cluster's kubeconfig")
    }

    /// The value etcd holds under `key`, read from etcd itself (not through the apiserver).
    pub fn etcd_value(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let body = format!(r#"{{"key": "{}"}}"#, engine.encode(key));
        let read = self.etcd("/v3/kv/range", &body);
        let value = read["kvs"][0]["value"].as_str()?;
        Some(engine.decode(value).expect("etcd answers base64"))
    }

    fn etcd(&self, path: &str, body: &str) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-fsS", "--cacert", &self.pki("ca.crt"), "--cert", &self.pki("etcd-client.crt")])
            .args(["--key", &self.pki("etcd-client.key"), "-X", "POST", "-d", body])
            .arg(format!("https://127.0.0.1:{}{path}", self.port("ETCD_PORT")))
            .output()
            .expect("curl on PATH");
        assert!(out.status.success(), "etcd {path}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("etcd answers JSON")
    }

    /// A port of `ports.env`, e.g. `API_PORT`.
    pub fn port(&self, key: &str) -> String {
        let ports =
            std::fs::read_to_string(self.state.join("ports.env")).expect("ports.env of a local cluster");
        ports.lines().find_map(|line| line.strip_prefix(&format!("{key}="))).expect("the port").to_string()
    }

    /// A kubeconfig of the cluster's admin acting as `user` in `system:masters`: requests are
    /// the same, but the audit log tells them apart by the impersonated user.
    pub fn kubeconfig_as(&self, user: &str) -> PathBuf {
        let token = std::fs::read_to_string(self.state.join("pki/admin.token")).expect("the admin token");
        let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique(user)));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: \"{ca}\"}}}}]\n\
             users: [{{name: u, user: {{token: \"{token}\", as: \"{user}\", as-groups: [\"system:masters\"]}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n",
            port = self.port("API_PORT"),
            ca = self.pki("ca.crt"),
            token = token.trim(),
        );
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)
        }
        .expect("create the kubeconfig");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write the kubeconfig");
        path
    }

    /// The bindings the audit log recorded in `namespace`, in order: pod name, the
    /// (impersonated) user that posted it, and the HTTP code it got.
    pub fn audited_bindings(&self, namespace: &str) -> Vec<(String, String, u64)> {
        let log = std::fs::read_to_string(self.state.join("audit.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| {
                let object = &event["objectRef"];
                event["stage"] == "ResponseComplete"
                    && object["subresource"] == "binding"
                    && object["namespace"] == namespace
            })
            .map(|event| {
                let user =
                    event["impersonatedUser"]["username"].as_str().or(event["user"]["username"].as_str());
                (
                    event["objectRef"]["name"].as_str().unwrap_or_default().to_string(),
                    user.unwrap_or_default().to_string(),
                    event["responseStatus"]["code"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// A file of the cluster's PKI, e.g. `ca.crt`.
    pub fn pki(&self, file: &str) -> String {
        self.state.join("pki").join(file).to_string_lossy().into_owned()
    }

    /// `e2e/cluster stop|start NAME COMPONENT` (etcd or kube-apiserver).
    pub fn control(&self, action: &str, component: &str) {
        let status = Command::new(repo_path("e2e/cluster"))
            .args([action, &self.name, component])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run e2e/cluster");
        assert!(status.success(), "e2e/cluster {action} {} {component}", self.name);
    }

    /// Compacts etcd's history up to now, so a watch resuming from an older resourceVersion
    /// is answered 410 Gone and must relist.
    pub fn compact_etcd(&self) {
        // Any read tells the current revision.
        let read = self.etcd("/v3/kv/range", r#"{"key": "L3JlZ2lzdHJ5", "limit": 1}"#);
        let revision = read["header"]["revision"].as_str().expect("a revision").to_string();
        self.etcd("/v3/kv/compaction", &format!(r#"{{"revision": "{revision}", "physical": true}}"#));
    }
}

/// Applies a cluster-scoped object under the tests' field manager.
pub async fn apply_yiyun<K>(client: &Client, name: &str, object: serde_json::Value)
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::all(client.clone())
        .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|err| panic!("apply {name}: {err}"));
}

/// A new root tenant whose subtree may use at most `cpu`.
pub async fn tenant_with_max_cpu(client: &Client, cpu: &str) -> String {
    let tenant = unique("dept");
    let object = serde_json::json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"displayName": "测试部门", "level": "province", "quota": {"max": {"cpu": cpu}}}
    });
    apply_yiyun::<yiyun_crds::Tenant>(client, &tenant, object).await;
    tenant
}

/// Labels `namespace` as `tenant`'s.
pub async fn join_tenant(client: &Client, namespace: &str, tenant: &str) {
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {"yiyun.io/tenant": tenant}}
    });
    apply_yiyun::<Namespace>(client, namespace, object).await;
}

/// The node a pod is bound to, once it is.
pub async fn node_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get_opt(name).await.ok().flatten().and_then(|pod| pod.spec.and_then(|spec| spec.node_name))
}

/// The PodScheduled=False message of a pod, once the scheduler has written it.
pub async fn unschedulable_message(pods: &Api<Pod>, name: &str) -> Option<String> {
    let pod = pods.get_opt(name).await.ok().flatten()?;
    let conditions = pod.status?.conditions?;
    let condition = conditions.into_iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    (condition.reason.as_deref() == Some("Unschedulable")).then(|| condition.message.unwrap_or_default())
}
