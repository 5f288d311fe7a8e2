//! `yiyun bench billing`: a month of 10,000 pods with churn metered into the ledger (SQLite,
//! and PostgreSQL when given one), rated and exported in all four formats, against reading the
//! month's rows alone in the same run; then, on the local cluster, the meter's CPU per 1,000 pod
//! events against its idle CPU, and its peak RSS.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use yiyun_billing::{
    calendar::{DAY, HOUR, Month, Seconds},
    export::{self, Headers},
    ledger::{Interval, Ledger},
    meter::Meter,
    rating::TenantInfo,
    statement::statement,
};

use crate::{Error, cpu_seconds, peak_rss_mib, progress, wait_until};

/// Configuration of `yiyun bench billing`.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Pods metered over the month.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// The month generated (YYYY-MM).
    #[arg(long, default_value = "2026-10")]
    pub month: String,
    /// A PostgreSQL server to measure as well: `postgres://USER@HOST/DATABASE` (a database of
    /// the benchmark's own is created there).
    #[arg(long, env = "YIYUN_BENCH_POSTGRES")]
    pub postgres: Option<String>,
    /// Pods created and deleted on the cluster of KUBECONFIG for the meter's CPU and memory
    /// (0: no cluster part).
    #[arg(long, default_value_t = 2_000)]
    pub cluster_pods: usize,
    /// Seed of the generated month.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// A small deterministic generator (SplitMix64): the same seed, the same month.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const SITES: [(&str, &str); 4] =
    [("wuhu-a", "east"), ("hefei-a", "east"), ("qingyang", "west"), ("zhongwei", "west")];

/// 1 province, 3 cities, 36 departments.
fn tenants() -> Vec<TenantInfo> {
    let mut tenants = vec![TenantInfo {
        name: "anhui".into(),
        display_name: "安徽省".into(),
        parent: None,
        level: "province".into(),
        cost_center: Some("AH-0000".into()),
    }];
    for city in 0..3 {
        tenants.push(TenantInfo {
            name: format!("city-{city}"),
            display_name: format!("城市{city}"),
            parent: Some("anhui".into()),
            level: "city".into(),
            cost_center: Some(format!("CC-{city}")),
        });
        for department in 0..12 {
            tenants.push(TenantInfo {
                name: format!("dept-{city}-{department}"),
                display_name: format!("部门{city}-{department}"),
                parent: Some(format!("city-{city}")),
                level: "department".into(),
                cost_center: None,
            });
        }
    }
    tenants
}

fn price_books(month: Month) -> Vec<(String, String)> {
    let standard = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "PriceBook",
        "metadata": {"name": "standard", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"effectiveFrom": "2026-01-01T00:00:00+08:00", "prices": {"cpuCoreHour": "0.12", "memoryGiBHour": "0.015",
            "gpuHour": {"A800": "12", "H20": "9.5"}, "storageGiBMonth": "0.3", "crossRegionGB": "0.5"},
            "discounts": {"department": "0.05"}}});
    let change = yiyun_billing::calendar::format_rfc3339(month.start() + 14 * DAY + 12 * HOUR);
    let west = json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "PriceBook",
        "metadata": {"name": "west", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"scope": {"regionClass": "west"}, "effectiveFrom": change, "prices": {"cpuCoreHour": "0.07", "gpuHour": {"A800": "8.4"}}}});
    [("standard", standard), ("west", west)].map(|(n, d)| (n.to_string(), d.to_string())).into()
}

/// One change the meter writes: an object's intervals opening, or closing.
enum Change {
    Open(Vec<Interval>),
    Close(String, Seconds),
}

/// The month's changes in time order: pods starting every few minutes, running from minutes
/// to days (a fifth with GPUs, some of them fractions; one in twenty moving input data across
/// regions), a claim for every fifth pod, some still running at the month's end.
fn changes(month: Month, pods: usize, seed: u64) -> Vec<(Seconds, Change)> {
    let mut random = Random(seed);
    let tenants: Vec<String> =
        tenants().into_iter().filter(|t| t.level == "department").map(|t| t.name).collect();
    let mut changes = Vec::new();
    let spacing = month.seconds() / pods as i64;
    for pod in 0..pods {
        let start = month.start() + pod as i64 * spacing + random.below(spacing as u64) as i64;
        let runs = 60 + random.below(4 * DAY as u64) as i64;
        let (site, class) = SITES[random.below(4) as usize];
        let tenant = &tenants[random.below(tenants.len() as u64) as usize];
        let uid = format!("bench-pod-{pod}");
        let interval = |meter: Meter, amount: i64, model: &str, kind: &str, key: String| Interval {
            key,
            source: uid.clone(),
            kind: kind.into(),
            tenant: tenant.clone(),
            namespace: format!("{tenant}-ns"),
            object: uid.clone(),
            node: format!("{site}-node-{}", pod % 50),
            site: site.into(),
            region_class: class.into(),
            pool: format!("{site}-pool"),
            meter,
            gpu_model: model.into(),
            amount,
            started_at: start,
            ended_at: meter.is_instant().then_some(start),
            estimated: false,
        };
        let mut opened = vec![
            interval(Meter::Cpu, 250 * (1 + random.below(16) as i64), "", "pod", format!("pod/{uid}/cpu")),
            interval(
                Meter::Memory,
                (1 + random.below(64) as i64) << 30,
                "",
                "pod",
                format!("pod/{uid}/memory"),
            ),
        ];
        if pod % 5 == 0 {
            let milli = if pod % 10 == 0 { 500 } else { 1000 * (1 + random.below(4) as i64) };
            let model = if class == "west" { "A800" } else { "H20" };
            opened.push(interval(Meter::Gpu, milli, model, "pod", format!("pod/{uid}/gpu")));
        }
        if pod % 20 == 0 {
            opened.push(interval(
                Meter::CrossRegion,
                50_000_000_000,
                "",
                "pod",
                format!("pod/{uid}/cross-region"),
            ));
        }
        changes.push((start, Change::Open(opened)));
        if start + runs < month.end() {
            changes.push((start + runs, Change::Close(uid.clone(), start + runs)));
        }
        if pod % 5 == 0 {
            let claim = format!("bench-pvc-{pod}");
            let mut storage = interval(
                Meter::Storage,
                (10 + random.below(500) as i64) << 30,
                "",
                "pvc",
                format!("pvc/{claim}"),
            );
            storage.source = claim.clone();
            changes.push((start, Change::Open(vec![storage])));
            let kept = runs * 3;
            if start + kept < month.end() {
                changes.push((start + kept, Change::Close(claim, start + kept)));
            }
        }
    }
    changes.sort_by_key(|(at, _)| *at);
    changes
}

/// What one backend measured.
struct Measured {
    backend: &'static str,
    changes: usize,
    meter_seconds: f64,
    read_seconds: f64,
    rate_seconds: f64,
    exports: Vec<(&'static str, f64, usize)>,
    ledger_bytes: i64,
    total: String,
    lines: usize,
}

async fn measure(backend: &'static str, url: &str, config: &Config, month: Month) -> Result<Measured, Error> {
    let failed = |err: yiyun_billing::Error| Error::Setup(format!("{backend}: {err}"));
    let ledger = Ledger::connect(url).await.map_err(|e| failed(e.into()))?;
    ledger.sync_tenants(&tenants()).await.map_err(|e| failed(e.into()))?;
    ledger.sync_price_books(&price_books(month)).await.map_err(|e| failed(e.into()))?;
    let changes = changes(month, config.pods, config.seed);
    progress(&format!(
        "{backend}: metering {} changes of {} pods, one transaction each",
        changes.len(),
        config.pods
    ));
    let started = Instant::now();
    for (_, change) in &changes {
        match change {
            Change::Open(intervals) => ledger.record(intervals).await,
            Change::Close(source, at) => ledger.close(&[(source.clone(), *at, false)]).await,
        }
        .map_err(|e| failed(e.into()))?;
    }
    // Every open interval seen at the month's end, as the meter's checkpoints would have.
    ledger.checkpoint(month.end()).await.map_err(|e| failed(e.into()))?;
    let meter_seconds = started.elapsed().as_secs_f64();

    progress(&format!("{backend}: reading the month's rows, rating, exporting"));
    let started = Instant::now();
    let rows = ledger.usages(month.start(), month.end(), month.end()).await.map_err(|e| failed(e.into()))?;
    let read_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let statement = statement(&ledger, month, month.end() + 1, None).await.map_err(failed)?;
    let rate_seconds = started.elapsed().as_secs_f64();
    let mut exports = Vec::new();
    for format in ["csv", "xlsx", "parquet", "json"] {
        let started = Instant::now();
        let bytes = match format {
            "csv" => export::csv(&statement, None, Headers::Chinese).map_err(|e| failed(e.into()))?,
            "xlsx" => export::xlsx(&statement, None, Headers::Chinese).map_err(|e| failed(e.into()))?,
            "parquet" => export::parquet(&statement, None).map_err(|e| failed(e.into()))?,
            _ => export::json(&statement, None).map_err(|e| failed(e.into()))?,
        };
        exports.push((format, started.elapsed().as_secs_f64(), bytes.len()));
    }
    progress(&format!("{backend}: {} rows read, {} bill lines", rows.len(), statement.rating.lines().len()));
    Ok(Measured {
        backend,
        changes: changes.len(),
        meter_seconds,
        read_seconds,
        rate_seconds,
        exports,
        ledger_bytes: ledger.size_bytes().await.map_err(|e| failed(e.into()))?,
        total: statement.total().to_string(),
        lines: statement.rating.lines().len(),
    })
}

/// Runs the benchmark and prints its tables.
pub async fn run(config: Config) -> Result<(), Error> {
    let month: Month = config.month.parse().map_err(|e| Error::Setup(format!("--month: {e}")))?;
    let dir = std::env::temp_dir().join(format!("yiyun-bench-billing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut measured =
        vec![measure("SQLite", &format!("sqlite://{}/ledger.db", dir.display()), &config, month).await?];
    if let Some(server) = &config.postgres {
        let database = format!("yiyun_bench_{}", std::process::id());
        let created = Command::new("psql")
            .args([server.as_str(), "-qc", &format!("CREATE DATABASE {database}")])
            .output()?;
        if !created.status.success() {
            return Err(Error::Setup(format!(
                "cannot create a database on {server}: {}",
                String::from_utf8_lossy(&created.stderr)
            )));
        }
        let (base, _) =
            server.rsplit_once('/').ok_or_else(|| Error::Setup(format!("{server} names no database")))?;
        measured.push(measure("PostgreSQL", &format!("{base}/{database}"), &config, month).await?);
    }
    let rss = peak_rss_mib(std::process::id());

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n# Billing: {} pods over {month} ({} ledger changes)\n",
        config.pods, measured[0].changes
    );
    let _ = writeln!(out, "| | {} |", measured.iter().map(|m| m.backend).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(measured.len()));
    let row = |label: &str, f: &dyn Fn(&Measured) -> String| {
        format!("| {label} | {} |\n", measured.iter().map(f).collect::<Vec<_>>().join(" | "))
    };
    out += &row("meter: every change its own transaction", &|m| {
        format!("{:.2} s ({:.0}/s)", m.meter_seconds, m.changes as f64 / m.meter_seconds)
    });
    out += &row("baseline: read the month's rows alone", &|m| format!("{:.3} s", m.read_seconds));
    out += &row("rate the month (read included)", &|m| format!("{:.3} s", m.rate_seconds));
    for (i, format) in ["CSV", "XLSX", "Parquet", "JSON"].iter().enumerate() {
        out += &row(&format!("export {format}"), &|m| {
            format!("{:.3} s ({} KiB)", m.exports[i].1, m.exports[i].2 / 1024)
        });
    }
    out += &row("**rate + four exports**", &|m| {
        format!("**{:.3} s**", m.rate_seconds + m.exports.iter().map(|e| e.1).sum::<f64>())
    });
    out += &row("ledger on disk", &|m| format!("{:.1} MiB", m.ledger_bytes as f64 / 1_048_576.0));
    out += &row("bill lines / month total (CNY)", &|m| format!("{} / {}", m.lines, m.total));
    let _ = writeln!(out, "\nPeak RSS of this process (generation, metering, rating, exports): {rss:.0} MiB");
    let _ = writeln!(out, "Target: rating and the four exports under 10 s on SQLite.");
    print!("{out}");

    if config.cluster_pods > 0 {
        print!("{}", on_cluster(&config, &dir).await?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The meter on the local cluster: idle, then `cluster_pods` kwok pods created, run and deleted.
async fn on_cluster(config: &Config, dir: &std::path::Path) -> Result<String, Error> {
    let client = Client::try_default().await?;
    let timeout = Duration::from_secs(600);
    crate::install_crds(&client, timeout).await?;
    let namespace = "bench-billing";
    let ns: Namespace = serde_json::from_value(
        json!({"metadata": {"name": namespace, "labels": {"yiyun.io/tenant": "bench-billing"}}}),
    )?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.create(&PostParams::default(), &ns).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node_names: Vec<String> = (0..10).map(|i| format!("bench-billing-node-{i}")).collect();
    for name in &node_names {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"yiyun.io/site": "qingyang", "yiyun.io/region-class": "west", "topology.kubernetes.io/region": "gansu"}},
            "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "1000", "memory": "4Ti", "pods": "1000"}, "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "1000"}}
        }))?;
        let _ = nodes.create(&PostParams::default(), &node).await;
    }
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), namespace);
    wait_until(timeout, "the namespace's default ServiceAccount", || async {
        Ok((accounts.get_opt("default").await?.is_some(), "waiting".into()))
    })
    .await?;

    let admin = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let log = dir.join("meter.log");
    progress(&format!("starting yiyun billing run (log: {})", log.display()));
    let mut meter = Command::new(std::env::current_exe()?)
        .args([
            "billing",
            "run",
            "--leader-elect=false",
            "--database",
            &format!("sqlite://{}/cluster.db", dir.display()),
            "--admin-addr",
            &admin,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let admin_addr = admin.parse().map_err(|e| Error::Setup(format!("{admin}: {e}")))?;
    wait_until(timeout, "the meter ready", || async move {
        Ok((yiyun_admin::http_get(admin_addr, "/readyz").is_some_and(|(s, _)| s == 200), "not ready".into()))
    })
    .await?;
    let pod_events = || -> f64 {
        yiyun_admin::http_get(admin_addr, "/metrics")
            .map(|(_, m)| {
                m.lines()
                    .filter(|l| l.starts_with("yiyun_billing_watch_events_total{kind=\"pod\"}"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    };
    let pid = meter.id();
    progress("meter idle for 20 s");
    let idle_before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let idle_cpu = cpu_seconds(pid) - idle_before;

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let (cpu_before, events_before) = (cpu_seconds(pid), pod_events());
    let started = Instant::now();
    progress(&format!("creating {} pods on kwok nodes, then deleting them", config.cluster_pods));
    stream::iter((0..config.cluster_pods).map(|i| {
        let pods = pods.clone();
        let node = node_names[i % node_names.len()].clone();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("bench-{i}")},
                "spec": {"nodeName": node, "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "c", "image": "registry.local/app:1", "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}]}
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
            Ok::<(), Error>(())
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<()>>()
    .await?;
    wait_until(timeout, "every pod running", || async {
        let list = pods.list(&ListParams::default()).await?;
        let running = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        Ok((running == config.cluster_pods, format!("{running} running")))
    })
    .await?;
    pods.delete_collection(
        &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() },
        &ListParams::default(),
    )
    .await?;
    wait_until(timeout, "every pod gone", || async {
        let left = pods.list_metadata(&ListParams::default()).await?.items.len();
        Ok((left == 0, format!("{left} left")))
    })
    .await?;
    // The meter's share: until it has handled the last event for 3 s.
    let mut last = pod_events();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = pod_events();
        if now == last {
            break;
        }
        last = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let busy_cpu = cpu_seconds(pid) - cpu_before;
    let events = pod_events() - events_before;
    let rss = peak_rss_mib(pid);
    let _ = meter.kill();
    let _ = meter.wait();
    for name in &node_names {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }
    let _ = namespaces.delete(namespace, &DeleteParams::default()).await;

    let idle_rate = idle_cpu / 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n# The meter on the local cluster: {} pods created, run by kwok and deleted\n",
        config.cluster_pods
    );
    let _ = writeln!(out, "| | value |\n|---|---:|");
    let _ = writeln!(out, "| pod watch events handled | {events:.0} |");
    let _ = writeln!(out, "| meter CPU over the {elapsed:.0} s | {busy_cpu:.2} s |");
    let _ = writeln!(out, "| baseline: idle meter CPU over as long | {:.2} s |", idle_rate * elapsed);
    let _ = writeln!(
        out,
        "| **meter CPU per 1,000 pod events** (idle subtracted) | **{:.3} s** |",
        (busy_cpu - idle_rate * elapsed).max(0.0) * 1000.0 / events.max(1.0)
    );
    let _ = writeln!(out, "| meter peak RSS | {rss:.1} MiB |");
    let _ = writeln!(out, "\nTarget: the metering controller under 50 MiB RSS.");
    Ok(out)
}
