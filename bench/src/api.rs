//! `yiyun bench api`: the self-service API on loopback under 100 callers of 10 tenants (each a
//! ServiceAccount with `edit` in its tenant's namespace, each with a TLS connection of its own),
//! against the baseline of the same callers asking the apiserver directly in the same run:
//!
//! - submit-job: every caller submits its jobs one after another, all callers at once;
//! - list-jobs: an open-loop load at a fixed rate over all callers (latency counted from when a
//!   call was due, so a slow answer cannot hide the calls queued behind it), at the rate asked
//!   and at twice it.
//!
//! Then the API's token and access review cache hit ratio, its CPU per 1,000 calls and its peak
//! RSS.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    batch::v1::Job,
    core::v1::{Namespace, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::{Error, MANAGER, cpu_seconds, install_crds, peak_rss_mib, progress, wait_until};

/// Configuration of `yiyun bench api`.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Tenants, each with a namespace of its own.
    #[arg(long, default_value_t = 10)]
    pub tenants: usize,
    /// Callers of each tenant, all calling at once.
    #[arg(long, default_value_t = 10)]
    pub callers_per_tenant: usize,
    /// Jobs each caller submits.
    #[arg(long, default_value_t = 5)]
    pub jobs_per_caller: usize,
    /// list-jobs calls a second over all callers (the second list phase runs at twice it).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long each list phase lasts.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Give up on a phase after this long.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

type Https = HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

/// One caller: its tenant's namespace, its token, its own connection to the API and its own
/// client of the apiserver.
struct Caller {
    /// `t<tenant>-c<index>`: its ServiceAccount, and in the names of the jobs it submits.
    id: String,
    namespace: String,
    token: String,
    api: Https,
    apiserver: Client,
}

/// Latencies of one phase, and how long it took.
struct Measured {
    latencies: Vec<Duration>,
    errors: usize,
    wall: Duration,
}

impl Measured {
    fn row(&self, phase: &str) -> String {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let at = |q: f64| {
            sorted
                .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let calls = self.latencies.len() + self.errors;
        format!(
            "| {phase} | {calls} | {:.0} | {:.1} | {:.1} | {:.1} | {} |\n",
            calls as f64 / self.wall.as_secs_f64().max(1e-9),
            at(0.5),
            at(0.99),
            at(1.0),
            self.errors
        )
    }
}

/// `yiyun api` from this very binary, on free ports, killed when dropped.
struct ApiServer {
    child: Child,
    admin: std::net::SocketAddr,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> Result<std::net::SocketAddr, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A CA and a serving certificate for 127.0.0.1 signed by it, in `dir` (by openssl).
fn local_ca(dir: &Path) -> Result<(), Error> {
    std::fs::write(dir.join("api.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")?;
    let ca = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench-ca -keyout ca.key -out ca.crt";
    let request = "req -newkey rsa:2048 -nodes -subj /CN=yiyun-api -keyout api.key -out api.csr";
    let sign = "x509 -req -in api.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile api.ext -out api.crt";
    for step in [ca, request, sign] {
        let args: Vec<&str> = step.split(' ').collect();
        let out = Command::new("openssl").args(&args).current_dir(dir).output()?;
        if !out.status.success() {
            return Err(Error::Setup(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
        }
    }
    Ok(())
}

/// An HTTP/2 client that trusts only the CA of `dir`.
fn https_client(dir: &Path) -> Result<Https, Error> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.crt")).map_err(|e| Error::Setup(e.to_string()))? {
        roots.add(cert.map_err(|e| Error::Setup(e.to_string()))?).map_err(|e| Error::Setup(e.to_string()))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http2().build();
    Ok(HttpClient::builder(TokioExecutor::new()).http2_only(true).build(connector))
}

/// One call of the API: the status and the time it took.
async fn call(
    caller: &Caller,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<u16, Error> {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("https://{addr}{path}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", caller.token))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
    let response = caller.api.request(request).await.map_err(|e| Error::Setup(format!("the API: {e}")))?;
    let status = response.status().as_u16();
    // The whole answer read, as a caller would.
    response.into_body().collect().await.map_err(|e| Error::Setup(format!("the API's answer: {e}")))?;
    Ok(status)
}

/// Runs `each(caller, index)` for every caller at once, `per_caller` times one after another:
/// the latencies and failures.
async fn closed_loop(
    callers: &[Caller],
    per_caller: usize,
    each: impl AsyncFn(&Caller, usize) -> bool,
) -> Measured {
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = stream::iter(callers.iter().map(|caller| {
        let each = &each;
        async move {
            let (mut latencies, mut errors) = (Vec::new(), 0);
            for index in 0..per_caller {
                let begun = Instant::now();
                if each(caller, index).await {
                    latencies.push(begun.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }
    }))
    .buffer_unordered(callers.len())
    .collect()
    .await;
    let wall = started.elapsed();
    let errors = results.iter().map(|(_, e)| e).sum();
    Measured { latencies: results.into_iter().flat_map(|(l, _)| l).collect(), errors, wall }
}

/// `rate` calls a second spread over all callers for `seconds`, each started when it is due
/// whether or not earlier ones have answered; latency counts from when the call was due.
async fn open_loop<F, Fut>(callers: &Arc<Vec<Caller>>, rate: u32, seconds: u64, each: F) -> Measured
where
    F: Fn(Arc<Vec<Caller>>, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let total = rate as u64 * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let results = Arc::new(Mutex::new((Vec::with_capacity(total as usize), 0usize)));
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..total {
        let due = started + interval * index as u32;
        tokio::time::sleep_until(due).await;
        let (results, each, callers) = (results.clone(), each.clone(), callers.clone());
        tasks.spawn(async move {
            let ok = each(callers.clone(), index as usize % callers.len()).await;
            let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
            if ok {
                results.0.push(due.elapsed());
            } else {
                results.1 += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let wall = started.elapsed();
    let (latencies, errors) = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    Measured { latencies, errors, wall }
}

/// What a caller submits: a small batch job, for a scheduler that need not be running.
fn submission(name: &str) -> serde_json::Value {
    json!({"name": name, "image": "registry.gov.local/etl/daily:2.1", "command": ["run", "--day", "today"],
        "cpu": "1", "memory": "2Gi", "latencyClass": "batch"})
}

/// The Job a caller would create itself for the same work: what the API makes of
/// [`submission`], so the Job controller creates the same pods for both.
fn direct_job(name: &str) -> Job {
    let annotations = json!({yiyun_crds::labels::LATENCY_CLASS: "batch"});
    serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"parallelism": 1, "completions": 1, "backoffLimit": 3, "suspend": false,
            "template": {"metadata": {"annotations": annotations}, "spec": {"schedulerName": "yiyun-scheduler", "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "registry.gov.local/etl/daily:2.1", "command": ["run", "--day", "today"],
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]}}}}))
    .expect("a Job")
}

/// Pods of the benchmark's jobs, in its tenants' namespaces.
async fn job_pods(client: &Client, prefix: &str) -> Result<usize, Error> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
    let listed = pods.list_metadata(&ListParams::default().labels("batch.kubernetes.io/job-name")).await?;
    Ok(listed
        .items
        .iter()
        .filter(|p| p.metadata.namespace.as_deref().is_some_and(|n| n.starts_with(prefix)))
        .count())
}

/// The sum of a Prometheus counter over its labels whose line also contains `with`.
fn counter(metrics: &str, name: &str, with: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn run(config: Config) -> Result<(), Error> {
    let timeout = Duration::from_secs(config.timeout_seconds);
    let client = Client::try_default().await?;
    install_crds(&client, timeout).await?;
    let prefix = format!("bench-api-{}", std::process::id());
    let callers_ns = format!("{prefix}-callers");
    progress(&format!(
        "{} tenants × {} callers: namespaces, ServiceAccounts with `edit`, tokens",
        config.tenants, config.callers_per_tenant
    ));
    let apply = PatchParams::apply(MANAGER).force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = |name: &str, tenant: Option<&str>| {
        let labels = tenant.map(|t| json!({yiyun_crds::labels::TENANT: t})).unwrap_or(json!({}));
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    };
    namespaces.patch(&callers_ns, &apply, &Patch::Apply(namespace(&callers_ns, None))).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &callers_ns);
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir)?;
    local_ca(&dir)?;
    let base = kube::Config::infer().await.map_err(|e| Error::Setup(format!("KUBECONFIG: {e}")))?;
    let mut callers = Vec::new();
    for tenant in 0..config.tenants {
        let tenant_ns = format!("{prefix}-t{tenant}");
        namespaces.patch(&tenant_ns, &apply, &Patch::Apply(namespace(&tenant_ns, Some(&tenant_ns)))).await?;
        let mut subjects = Vec::new();
        for index in 0..config.callers_per_tenant {
            let name = format!("t{tenant}-c{index}");
            let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
            accounts.patch(&name, &apply, &Patch::Apply(account)).await?;
            subjects.push(json!({"kind": "ServiceAccount", "name": name, "namespace": callers_ns}));
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            };
            let token = accounts
                .create_token_request(&name, &PostParams::default(), &request)
                .await?
                .status
                .and_then(|s| s.token)
                .ok_or_else(|| Error::Setup(format!("no token for {name}")))?;
            let mut as_caller = base.clone();
            as_caller.auth_info = kube::config::AuthInfo {
                token: Some(token.clone().into()),
                ..kube::config::AuthInfo::default()
            };
            callers.push(Caller {
                id: name.clone(),
                namespace: tenant_ns.clone(),
                token,
                api: https_client(&dir)?,
                apiserver: Client::try_from(as_caller)?,
            });
        }
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "bench-callers", "namespace": tenant_ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": subjects});
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &tenant_ns)
            .patch("bench-callers", &apply, &Patch::Apply(binding))
            .await?;
    }
    let callers = Arc::new(callers);

    let (addr, admin) = (free_addr()?, free_addr()?);
    let log = dir.join("api.log");
    progress(&format!("starting yiyun api on {addr} (log: {})", log.display()));
    let child = Command::new(std::env::current_exe()?)
        .args(["api", "--addr", &addr.to_string(), "--admin-addr", &admin.to_string()])
        .arg("--tls-cert")
        .arg(dir.join("api.crt"))
        .arg("--tls-key")
        .arg(dir.join("api.key"))
        .arg("--billing-database")
        .arg(format!("sqlite://{}", dir.join("ledger.db").display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let server = ApiServer { child, admin };
    wait_until(timeout, "the API ready", || async {
        let ready = yiyun_admin::http_get(server.admin, "/readyz").is_some_and(|(status, _)| status == 200);
        Ok((ready, "not ready".to_string()))
    })
    .await?;
    // Roles reach the apiserver's authorizer through its informers: wait for the first yes.
    wait_until(timeout, "the callers' roles in effect", || async {
        let path = format!("/v1/namespaces/{}/jobs", callers[callers.len() - 1].namespace);
        let status = call(&callers[callers.len() - 1], addr, "GET", &path, None).await?;
        Ok((status == 200, format!("list-jobs answers {status}")))
    })
    .await?;

    let jobs = config.jobs_per_caller;
    progress(&format!(
        "submit-job: {} callers × {jobs} jobs, directly to the apiserver (baseline)",
        callers.len()
    ));
    let direct_submit = closed_loop(&callers, jobs, async |caller: &Caller, index: usize| {
        let api: Api<Job> = Api::namespaced(caller.apiserver.clone(), &caller.namespace);
        let name = format!("direct-{}-{index}", caller.id);
        api.create(&PostParams::default(), &direct_job(&name)).await.is_ok()
    })
    .await;
    let wanted = callers.len() * jobs;
    wait_until(timeout, "the baseline's pods created by the Job controller", || async {
        let made = job_pods(&client, &prefix).await?;
        Ok((made >= wanted, format!("{made} of {wanted} pods")))
    })
    .await?;
    progress("deleting the baseline's jobs and pods");
    for caller in callers.iter().step_by(config.callers_per_tenant.max(1)) {
        let api: Api<Job> = Api::namespaced(client.clone(), &caller.namespace);
        api.delete_collection(&DeleteParams::background(), &ListParams::default()).await?;
    }
    wait_until(timeout, "the baseline's pods gone", || async {
        let left = job_pods(&client, &prefix).await?;
        Ok((left == 0, format!("{left} pods left")))
    })
    .await?;
    crate::quiet_cluster(&client).await?;
    progress(&format!("submit-job: {} callers × {jobs} jobs, through the API", callers.len()));
    let api_submit = closed_loop(&callers, jobs, async |caller: &Caller, index: usize| {
        let body = submission(&format!("job-{}-{index}", caller.id)).to_string();
        let path = format!("/v1/namespaces/{}/jobs", caller.namespace);
        matches!(call(caller, addr, "POST", &path, Some(body)).await, Ok(200))
    })
    .await;
    wait_until(timeout, "the jobs' pods created by the Job controller", || async {
        let made = job_pods(&client, &prefix).await?;
        Ok((made >= wanted, format!("{made} of {wanted} pods")))
    })
    .await?;
    crate::quiet_cluster(&client).await?;

    let rate = config.rate;
    let before = yiyun_admin::http_get(server.admin, "/metrics").map(|(_, m)| m).unwrap_or_default();
    let cpu_before = cpu_seconds(server.child.id());
    let mut list_rows = Vec::new();
    for rate in [rate, rate * 2] {
        progress(&format!("list-jobs: {rate}/s for {}s, through the API", config.seconds));
        let measured = open_loop(&callers, rate, config.seconds, move |callers, index| async move {
            let caller = &callers[index];
            let path = format!("/v1/namespaces/{}/jobs", caller.namespace);
            matches!(call(caller, addr, "GET", &path, None).await, Ok(200))
        })
        .await;
        list_rows.push((rate, measured));
        crate::quiet_cluster(&client).await?;
    }
    let after = yiyun_admin::http_get(server.admin, "/metrics").map(|(_, m)| m).unwrap_or_default();
    let cpu = cpu_seconds(server.child.id()) - cpu_before;
    // The apiserver last: past what it can serve, it is still catching up long after.
    progress(&format!("list-jobs: {rate}/s for {}s, directly from the apiserver (baseline)", config.seconds));
    let direct_list = open_loop(&callers, rate, config.seconds, |callers, index| async move {
        let caller = &callers[index];
        let api: Api<Job> = Api::namespaced(caller.apiserver.clone(), &caller.namespace);
        api.list(&ListParams::default().limit(100)).await.is_ok()
    })
    .await;
    let rss = peak_rss_mib(server.child.id());
    let lookups = |result: &str| {
        counter(&after, "yiyun_api_auth_cache_lookups_total", result)
            - counter(&before, "yiyun_api_auth_cache_lookups_total", result)
    };
    let (hits, misses) = (lookups("result=\"hit\""), lookups("result=\"miss\""));
    let list_calls: usize = list_rows.iter().map(|(_, m)| m.latencies.len() + m.errors).sum();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## yiyun bench api: {} callers of {} tenants on loopback (REST over HTTP/2 and TLS, a connection per caller)\n",
        callers.len(),
        config.tenants
    );
    let _ = writeln!(out, "| phase | calls | calls/s | p50 ms | p99 ms | max ms | errors |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    out.push_str(&direct_submit.row("submit-job, apiserver directly (baseline)"));
    out.push_str(&api_submit.row("submit-job, API"));
    for (rate, measured) in &list_rows {
        out.push_str(&measured.row(&format!("list-jobs at {rate}/s, API")));
    }
    out.push_str(&direct_list.row(&format!("list-jobs at {rate}/s, apiserver directly (baseline)")));
    let _ = writeln!(
        out,
        "\nEach list answers {jobs_in_page} jobs with their pods.",
        jobs_in_page = config.callers_per_tenant * jobs
    );
    let _ = writeln!(
        out,
        "Token and access review cache over the API's list phases: {hits:.0} hits, {misses:.0} misses ({:.2}% hits).",
        100.0 * hits / (hits + misses).max(1.0)
    );
    let _ = writeln!(
        out,
        "API CPU over its list phases: {cpu:.1} s, {:.0} ms per 1,000 calls; peak RSS {rss:.0} MiB.",
        cpu * 1000.0 * 1000.0 / list_calls.max(1) as f64
    );
    print!("{out}");

    progress("cleaning up");
    drop(server);
    for caller in callers.iter().step_by(config.callers_per_tenant.max(1)) {
        let _ = namespaces.delete(&caller.namespace, &DeleteParams::default()).await;
    }
    let _ = namespaces.delete(&callers_ns, &DeleteParams::default()).await;
    let _ = std::fs::remove_dir_all(PathBuf::from(&dir));
    Ok(())
}
