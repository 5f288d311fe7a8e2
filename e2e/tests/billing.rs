//! Metering and billing on the real apiserver, with the ledger in SQLite and in PostgreSQL (a
//! throwaway server `make e2e` starts: `e2e/postgres`).
//!
//! The pods here run on a node no kubelet (not even kwok) serves: the test plays the kubelet and
//! writes each pod's container start and finish times itself, so every second the meter should
//! record is known, and the pods can run in the previous month (a month that can be closed).

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use yiyun_billing::{
    calendar::{DAY, HOUR, Month, Seconds, format_local},
    ledger::{Interval, Ledger, now},
    meter::Meter,
};
use yiyun_e2e::{
    apply_yiyun, client, eventually, free_port, http_get, install_crds, kubectl_apply, unique, yiyun_bin,
};

/// `yiyun billing run` as a child process, so that it can be SIGKILLed; killed when dropped.
struct MeterProcess {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl MeterProcess {
    /// A meter of its own: no status writes (the budget test's), no lease to share.
    fn start(database: &str, name: &str) -> MeterProcess {
        // Tenants' status is the budget test's to write: one writer per cluster. Each test's
        // meters keep ledgers of their own: no lease to share.
        MeterProcess::start_with(database, name, &["--status-seconds", "0", "--leader-elect=false"])
    }

    fn start_with(database: &str, name: &str, flags: &[&str]) -> MeterProcess {
        let log = std::env::temp_dir().join(format!("{}-{}.log", unique(name), std::process::id()));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("a log file");
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(yiyun_bin())
            .args([
                "billing",
                "run",
                "--database",
                database,
                "--admin-addr",
                &admin,
                "--checkpoint-seconds",
                "1",
            ])
            .args(flags)
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("start yiyun billing run");
        MeterProcess { child, admin, log }
    }

    /// SIGKILL: no goodbye, as a crash.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn ready(&self) {
        let addr = self.admin.parse().expect("an address");
        eventually(
            Duration::from_secs(60),
            &format!("the meter ready (log {})", self.log.display()),
            || async move { http_get(addr, "/readyz").filter(|(code, _)| *code == 200).map(|_| ()) },
        )
        .await;
    }
}

impl Drop for MeterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh ledger: a SQLite file, or a new database on the test PostgreSQL server.
fn ledger_url(backend: &str, name: &str) -> String {
    let name = unique(name).replace('-', "_");
    match backend {
        "sqlite" => format!("sqlite://{}/{name}.db", std::env::temp_dir().display()),
        _ => {
            let server = std::env::var("YIYUN_TEST_POSTGRES")
                .expect("YIYUN_TEST_POSTGRES names the test PostgreSQL server: run under `make e2e` or `e2e/postgres up`");
            let created = Command::new("psql")
                .args([server.as_str(), "-qc", &format!("CREATE DATABASE {name}")])
                .output()
                .expect("psql on PATH (Debian's postgresql-client)");
            assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
            format!("{}/{name}", server.rsplit_once('/').expect("a database in the URL").0)
        }
    }
}

/// `yiyun billing ARGS`: whether it succeeded, its standard output and its standard error.
fn billing(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(yiyun_bin())
        .arg("billing")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("yiyun billing");
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A tenant of its own with a namespace, a site with its own PriceBooks (the price changes in
/// the middle of `month`), and a node at that site no kubelet serves.
struct Scene {
    client: Client,
    tenant: String,
    namespace: String,
    node: String,
    site: String,
    books: [String; 2],
    change: Seconds,
}

impl Scene {
    async fn new(prefix: &str, month: Month) -> Scene {
        let client = client().await;
        install_crds(&client).await;
        let tenant = unique(prefix);
        let (namespace, node, site) =
            (format!("{tenant}-ns"), format!("{tenant}-node"), format!("{tenant}-site"));
        apply_yiyun::<yiyun_crds::Tenant>(
            &client,
            &tenant,
            yiyun_object(
                "Tenant",
                &tenant,
                json!({"displayName": format!("{prefix} 测试局"), "level": "province", "costCenter": "CC-E2E"}),
            ),
        )
        .await;
        let unit = format!("{tenant}-unit");
        apply_yiyun::<yiyun_crds::Tenant>(
            &client,
            &unit,
            yiyun_object(
                "Tenant",
                &unit,
                json!({"displayName": format!("{prefix} 下属单位"), "level": "city", "parent": tenant}),
            ),
        )
        .await;
        let accounts_ready = |namespace: String| {
            let client = client.clone();
            async move {
                let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                    Api::namespaced(client, &namespace);
                eventually(Duration::from_secs(30), "the namespace's default ServiceAccount", || async {
                    accounts.get_opt("default").await.ok().flatten().map(|_| ())
                })
                .await;
            }
        };
        for (name, owner) in [(&namespace, &tenant), (&format!("{unit}-ns"), &unit)] {
            let ns: Namespace = serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"yiyun.io/tenant": owner}}}),
            )
            .expect("a namespace");
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
                .expect("create the namespace");
            accounts_ready(name.clone()).await;
        }
        let labels = json!({"yiyun.io/site": site, "topology.kubernetes.io/region": "e2e", "yiyun.io/region-class": "west", "yiyun.io/gpu-model": "A800"});
        let node_object: Node =
            serde_json::from_value(json!({"metadata": {"name": node, "labels": labels}})).expect("a node");
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node_object)
            .await
            .expect("create the node");
        let change = month.start() + 14 * DAY + 12 * HOUR;
        let books = [format!("{tenant}-before"), format!("{tenant}-after")];
        let prices =
            |cpu: &str| json!({"cpuCoreHour": cpu, "memoryGiBHour": "0.015", "gpuHour": {"A800": "12"}});
        for (name, from, to, cpu) in
            [(&books[0], month.previous().start(), Some(change), "0.12"), (&books[1], change, None, "0.24")]
        {
            let mut spec =
                json!({"scope": {"site": site}, "effectiveFrom": rfc3339(from), "prices": prices(cpu)});
            if let Some(to) = to {
                spec["effectiveTo"] = json!(rfc3339(to));
            }
            apply_yiyun::<yiyun_crds::PriceBook>(&client, name, yiyun_object("PriceBook", name, spec)).await;
        }
        Scene { client, tenant, namespace, node, site, books, change }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Pods named `unit-…` belong to the scene's child tenant, the others to the tenant.
    fn pods_for(&self, name: &str) -> Api<Pod> {
        if name.starts_with("unit-") {
            Api::namespaced(self.client.clone(), &format!("{}-unit-ns", self.tenant))
        } else {
            self.pods()
        }
    }

    /// A pod on the scene's node (bound at creation): 500m and 1Gi, a quarter GPU when `gpu`.
    async fn create_pod(&self, name: &str, gpu: bool) -> String {
        let annotations = if gpu { json!({"yiyun.io/gpu-milli": "250"}) } else { json!({}) };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "nodeName": self.node,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "c", "image": "registry.local/app:1", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]
            }
        }))
        .expect("a pod");
        let created = self.pods_for(name).create(&PostParams::default(), &pod).await.expect("create a pod");
        created.metadata.uid.expect("a uid")
    }

    /// What a kubelet reports: the container running since `started`.
    async fn run(&self, name: &str, started: Seconds) {
        let state = json!({"running": {"startedAt": rfc3339(started)}});
        self.set_status(name, "Running", state).await;
    }

    /// The container finished at `finished`: the pod Succeeded.
    async fn finish(&self, name: &str, started: Seconds, finished: Seconds) {
        let state = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": rfc3339(started), "finishedAt": rfc3339(finished)}});
        self.set_status(name, "Succeeded", state).await;
    }

    async fn set_status(&self, name: &str, phase: &str, state: serde_json::Value) {
        let status = json!({"status": {"phase": phase, "containerStatuses": [
            {"name": "c", "image": "registry.local/app:1", "imageID": "", "ready": phase == "Running", "restartCount": 0, "state": state}
        ]}});
        self.pods_for(name)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|err| panic!("status of {name}: {err}"));
    }

    async fn clean_up(self) {
        // No kubelet confirms these pods' deletion: gone at once, and before their node, so that
        // no meter started later meets a pod whose node (and so site) is unknown.
        let now_gone = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        for pods in [self.pods(), self.pods_for("unit-")] {
            let _ = pods.delete_collection(&now_gone, &Default::default()).await;
            eventually(Duration::from_secs(30), "the scene's pods gone", || async {
                pods.list_metadata(&Default::default()).await.ok().filter(|l| l.items.is_empty()).map(|_| ())
            })
            .await;
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        let _ = Api::<Node>::all(self.client.clone()).delete(&self.node, &DeleteParams::default()).await;
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&format!("{}-unit-ns", self.tenant), &DeleteParams::default())
            .await;
        for tenant in [format!("{}-unit", self.tenant), self.tenant.clone()] {
            let _ = Api::<yiyun_crds::Tenant>::all(self.client.clone())
                .delete(&tenant, &DeleteParams::default())
                .await;
        }
        // The PriceBooks stay: other tests' meters rate (and close) the same month, this scene's
        // pods included, and a month with unpriced usage cannot be closed.
    }
}

/// A yiyun object of `kind` for server-side apply.
fn yiyun_object(kind: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "yiyun.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn rfc3339(at: Seconds) -> String {
    yiyun_billing::calendar::format_rfc3339(at)
}

/// The month before this one: its pods can all have ended, and it can be closed.
fn last_month() -> Month {
    Month::of(now()).previous()
}

/// Waits until the ledger holds exactly `expected` for each pod: (started, ended) of its cpu
/// interval, never estimated.
async fn recorded(ledger: &Ledger, expected: &HashMap<String, (Seconds, Option<Seconds>)>, what: &str) {
    eventually(Duration::from_secs(90), what, || async {
        for (uid, (started, ended)) in expected {
            let intervals = ledger.intervals_of(uid).await.ok()?;
            let cpu = intervals.iter().find(|i| i.meter == Meter::Cpu)?;
            if (cpu.started_at, cpu.ended_at, cpu.estimated) != (*started, *ended, false) {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Pods start and finish in the previous month while one meter is SIGKILLed again and again
/// and another runs undisturbed: both ledgers end with every second of every pod, and the
/// month's bills are the same to the byte.
async fn sigkill_at_random_points_changes_no_number(backend: &str) {
    let month = last_month();
    let scene = Scene::new(&format!("kill-{backend}"), month).await;
    let killed_url = ledger_url(backend, "killed");
    let reference_url = ledger_url("sqlite", "reference");
    let mut killed = MeterProcess::start(&killed_url, "meter-killed");
    let reference = MeterProcess::start(&reference_url, "meter-reference");
    killed.ready().await;
    reference.ready().await;

    // Seeded for replay: YIYUN_KILL_SEED=<seed> repeats a run's kill points.
    let seed = std::env::var("YIYUN_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        // Two tests start in the same second: each its own points.
        now() as u64 * 2 + u64::from(backend == "postgres")
    });
    println!("kill points seeded with YIYUN_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    const PODS: usize = 16;
    let mut lifetimes: Vec<(Seconds, Seconds)> = (0..PODS)
        .map(|i| {
            let start = month.start() + (i as i64) * (month.seconds() / PODS as i64) + rng.i64(0..DAY);
            (start, (start + rng.i64(HOUR / 2..3 * DAY)).min(month.end() - 1))
        })
        .collect();
    // One pod runs across the price change.
    lifetimes[0] = (scene.change - 5 * HOUR - 17, scene.change + 7 * HOUR + 3);
    // Each pod is created, runs, and finishes, in an order interleaving the pods.
    let mut events: Vec<(usize, u8)> = Vec::new();
    let mut next_step = [0u8; PODS];
    while events.len() < 3 * PODS {
        let pod = rng.usize(0..PODS);
        if next_step[pod] < 3 {
            events.push((pod, next_step[pod]));
            next_step[pod] += 1;
        }
    }
    // Every other pod belongs to the tenant's child: the bills roll up a real subtree.
    let names: Vec<String> =
        (0..PODS).map(|i| if i % 2 == 1 { format!("unit-pod-{i}") } else { format!("pod-{i}") }).collect();
    let mut uids: HashMap<usize, String> = HashMap::new();
    let mut kills = 0;
    let mut down_until: Option<usize> = None;
    for (at, &(pod, step)) in events.iter().enumerate() {
        let (started, finished) = lifetimes[pod];
        match step {
            0 => {
                uids.insert(pod, scene.create_pod(&names[pod], pod % 3 == 0).await);
            }
            1 => scene.run(&names[pod], started).await,
            _ => scene.finish(&names[pod], started, finished).await,
        }
        match down_until {
            Some(until) if at >= until => {
                killed = MeterProcess::start(&killed_url, "meter-killed");
                down_until = None;
                // Now and then killed again while it lists and catches up.
                if rng.u8(0..4) == 0 {
                    tokio::time::sleep(Duration::from_millis(rng.u64(0..400))).await;
                    killed.kill();
                    kills += 1;
                    killed = MeterProcess::start(&killed_url, "meter-killed");
                }
            }
            None if rng.u8(0..5) == 0 => {
                // A few milliseconds after a change: often while the meter writes it.
                tokio::time::sleep(Duration::from_millis(rng.u64(0..60))).await;
                killed.kill();
                kills += 1;
                down_until = Some(at + 1 + rng.usize(0..4));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(20..120))).await;
    }
    if down_until.is_some() {
        killed = MeterProcess::start(&killed_url, "meter-killed");
    }
    println!("{kills} SIGKILLs over {} changes", events.len());
    assert!(kills >= 3, "the seed gave too few kills to prove anything: {kills}");
    killed.ready().await;

    let expected: HashMap<String, (Seconds, Option<Seconds>)> =
        uids.iter().map(|(pod, uid)| (uid.clone(), (lifetimes[*pod].0, Some(lifetimes[*pod].1)))).collect();
    let killed_ledger = Ledger::connect(&killed_url).await.expect("the killed meter's ledger");
    let reference_ledger = Ledger::connect(&reference_url).await.expect("the reference ledger");
    recorded(&reference_ledger, &expected, "the reference ledger holding every pod's exact run").await;
    recorded(&killed_ledger, &expected, "the killed meter's ledger holding every pod's exact run").await;

    let month_text = month.to_string();
    let export = |url: &str, format: &str| {
        let (ok, out, err) = billing(&[
            "export",
            "--database",
            url,
            "--month",
            &month_text,
            "--tenant",
            &scene.tenant,
            "--format",
            format,
        ]);
        assert!(ok, "{err}");
        out
    };
    let csv = export(&killed_url, "csv");
    assert_eq!(csv, export(&reference_url, "csv"), "the killed meter's bill equals the undisturbed one's");
    for url in [&killed_url, &reference_url] {
        let json: serde_json::Value = serde_json::from_slice(&export(url, "json")).expect("JSON");
        bills_add_up(&json, &scene.tenant);
        let tenants = json["tenants"].as_array().cloned().unwrap_or_default();
        let unit = tenants.iter().find(|t| t["parent"] == scene.tenant.as_str()).expect("the tenant's child");
        assert!(fen(&unit["own"]) > 0, "the child has costs of its own: {unit}");
    }
    let csv = String::from_utf8(csv).expect("UTF-8");
    assert!(csv.starts_with('\u{feff}'), "a byte-order mark for Excel");
    // The cpu lines, by their own arithmetic: 500m for every second of every pod.
    let cpu_seconds: i64 = lifetimes.iter().map(|(s, e)| e - s).sum();
    let quantity: f64 = csv
        .lines()
        .filter(|l| l.contains(",vCPU,"))
        .map(|l| l.split(',').nth(11).expect("quantity").parse::<f64>().expect("a number"))
        .sum();
    let expected_hours = cpu_seconds as f64 * 0.5 / 3600.0;
    assert!((quantity - expected_hours).abs() < 1e-5, "{quantity} vCPU-hours, expected {expected_hours}");
    scene.clean_up().await;
}

/// Whole fen of an amount as the exports write it (`"-12.34"`).
fn fen(amount: &serde_json::Value) -> i64 {
    let text = amount.as_str().unwrap_or_else(|| panic!("an amount: {amount}"));
    let (yuan, fen) = text.trim_start_matches('-').split_once('.').expect("two decimals");
    let value = yuan.parse::<i64>().expect("yuan") * 100 + fen.parse::<i64>().expect("fen");
    if text.starts_with('-') { -value } else { value }
}

/// The invariants of a month's JSON statement: the total is the tenants' own costs, each
/// tenant's own cost is its lines and its days, each subtree is its own cost plus its
/// children's subtrees, and no usage line costs less than nothing.
fn bills_add_up(statement: &serde_json::Value, root: &str) {
    let tenants = statement["tenants"].as_array().expect("tenants");
    assert!(tenants.iter().any(|t| t["tenant"] == root), "{root} in the statement");
    let own_total: i64 = tenants.iter().map(|t| fen(&t["own"])).sum();
    assert_eq!(fen(&statement["total"]), own_total, "the total is the tenants' own costs");
    for tenant in tenants {
        let name = tenant["tenant"].as_str().expect("a name");
        let lines = tenant["lines"].as_array().expect("lines");
        let by_lines: i64 = lines.iter().map(|l| fen(&l["amount"])).sum();
        assert_eq!(fen(&tenant["own"]), by_lines, "{name}: its bill is the sum of its lines");
        let by_days: i64 = tenant["days"].as_array().expect("days").iter().map(fen).sum();
        assert_eq!(fen(&tenant["own"]), by_days, "{name}: its month is the sum of its days");
        for line in lines.iter().filter(|l| l["corrects"] == "") {
            assert!(
                fen(&line["amount"]) >= 0 && !line["quantity"].as_str().unwrap_or("-").starts_with('-'),
                "{name}: {line}"
            );
        }
        let children: i64 = tenants.iter().filter(|t| t["parent"] == name).map(|t| fen(&t["subtree"])).sum();
        assert_eq!(
            fen(&tenant["subtree"]),
            fen(&tenant["own"]) + children,
            "{name}: own plus the children's subtrees"
        );
    }
}

#[tokio::test]
async fn sigkill_at_random_points_changes_no_number_on_sqlite() {
    sigkill_at_random_points_changes_no_number("sqlite").await;
}

#[tokio::test]
async fn sigkill_at_random_points_changes_no_number_on_postgres() {
    sigkill_at_random_points_changes_no_number("postgres").await;
}

/// A price change splits the month's lines at its time; a closed month exports the same bytes
/// after more usage for it arrives and the meter restarts.
async fn closed_month_never_changes(backend: &str) {
    let month = last_month();
    let scene = Scene::new(&format!("close-{backend}"), month).await;
    let url = ledger_url(backend, "close");
    let mut meter = MeterProcess::start(&url, "meter-close");
    meter.ready().await;
    let across = (scene.change - 2 * HOUR, scene.change + HOUR + 1800);
    let uid = scene.create_pod("across", true).await;
    scene.run("across", across.0).await;
    scene.finish("across", across.0, across.1).await;
    let ledger = Ledger::connect(&url).await.expect("the ledger");
    recorded(&ledger, &HashMap::from([(uid, (across.0, Some(across.1)))]), "the pod across the price change")
        .await;

    let month_text = month.to_string();
    let export = |format: &str, tenant: bool| {
        let mut args = vec![
            "export",
            "--database",
            &url,
            "--month",
            &month_text,
            "--format",
            format,
            "--headers",
            "english",
        ];
        if tenant {
            args.extend(["--tenant", &scene.tenant]);
        }
        let (ok, out, err) = billing(&args);
        assert!(ok, "{err}");
        String::from_utf8(out).expect("UTF-8")
    };
    let open = export("csv", true);
    let change = format_local(scene.change);
    let cpu: Vec<&str> = open.lines().filter(|l| l.contains(",cpu,")).collect();
    assert_eq!(cpu.len(), 2, "the cpu line splits in two at the price change:\n{open}");
    assert!(cpu[0].contains(&format!(",{change},")) && cpu[0].contains(&scene.books[0]), "{}", cpu[0]);
    assert!(
        cpu[1].starts_with(&month_text)
            && cpu[1].contains(&format!(",{change},"))
            && cpu[1].contains(&scene.books[1]),
        "{}",
        cpu[1]
    );
    // 2 h at 0.12 and 1.5 h at 0.24 of half a vCPU.
    assert!(cpu[0].ends_with(&format!(",1.000000,vCPU-hour,0.12,0,0.12,{},", scene.books[0])), "{}", cpu[0]);
    assert!(cpu[1].ends_with(&format!(",0.750000,vCPU-hour,0.24,0,0.18,{},", scene.books[1])), "{}", cpu[1]);

    let (ok, closed, err) = billing(&["close", "--database", &url, "--month", &month_text]);
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&closed).contains("closed at"), "{}", String::from_utf8_lossy(&closed));
    let closed_csv = export("csv", false);
    let closed_json = export("json", false);
    assert!(closed_json.contains("\"status\": \"closed\""), "{closed_json}");
    bills_add_up(&serde_json::from_str(&closed_json).expect("JSON"), &scene.tenant);

    // Late usage for the closed month, seen by a restarted meter.
    meter.kill();
    let late = scene.create_pod("late", false).await;
    scene.run("late", month.start() + 3 * DAY).await;
    scene.finish("late", month.start() + 3 * DAY, month.start() + 4 * DAY).await;
    let meter = MeterProcess::start(&url, "meter-close");
    meter.ready().await;
    recorded(
        &ledger,
        &HashMap::from([(late, (month.start() + 3 * DAY, Some(month.start() + 4 * DAY)))]),
        "the late pod",
    )
    .await;
    assert_eq!(export("csv", false), closed_csv, "a closed month's CSV does not change");
    assert_eq!(export("json", false), closed_json, "nor its JSON");
    finance_reads_the_same_total(&url, &month_text, &closed_json);

    // The late usage is billed in the next open month, as adjustments pointing at the closed one:
    // a day of half a vCPU at 0.12 and of 1Gi at 0.015 (the line's running totals, rounded).
    let next = month.next().to_string();
    let (ok, out, err) = billing(&[
        "export",
        "--database",
        &url,
        "--month",
        &next,
        "--tenant",
        &scene.tenant,
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    let lines = json["tenants"][0]["lines"].as_array().cloned().unwrap_or_default();
    let adjustment = |resource: &str| {
        lines
            .iter()
            .find(|l| l["corrects"] == month_text.as_str() && l["resource"] == resource)
            .map(|l| l["amount"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(adjustment("cpu").as_deref(), Some("1.44"), "{lines:?}");
    assert_eq!(adjustment("memory").as_deref(), Some("0.36"), "{lines:?}");
    assert!(
        lines
            .iter()
            .filter(|l| l["corrects"] == month_text.as_str())
            .all(|l| l["price_book"] == format!("adjustment of {month_text}"))
    );

    let (ok, again, _) = billing(&["close", "--database", &url, "--month", &month_text]);
    assert!(ok, "closing again is harmless");
    assert_eq!(again, closed, "and reports the first close");
    drop(meter);
    scene.clean_up().await;
}

/// CSV, XLSX and Parquet of the month, read back by pandas, openpyxl and pyarrow (a virtual
/// environment `e2e/python-env` makes once): each says what the JSON says the month costs.
fn finance_reads_the_same_total(url: &str, month: &str, json: &str) {
    let total = serde_json::from_str::<serde_json::Value>(json).expect("JSON")["total"]
        .as_str()
        .expect("a total")
        .to_string();
    let dir = std::env::temp_dir().join(unique("exports"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let mut files = Vec::new();
    for format in ["csv", "xlsx", "parquet"] {
        let path = dir.join(format!("bill.{format}")).display().to_string();
        let (ok, _, err) =
            billing(&["export", "--database", url, "--month", month, "--format", format, "--out", &path]);
        assert!(ok, "{format}: {err}");
        files.push(path);
    }
    let python = Command::new(yiyun_e2e::repo_path("e2e/python-env")).output().expect("e2e/python-env");
    assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    let out = Command::new(python)
        .arg(yiyun_e2e::repo_path("e2e/finance-check.py"))
        .args(&files)
        .output()
        .expect("the finance checker");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the checker's JSON");
    assert_eq!(read["csv"]["bom"], true, "{read}");
    assert_eq!(read["csv"]["columns"][15], "金额(元)", "{read}");
    assert_eq!(read["xlsx"]["sheets"], json!(["汇总", "明细"]), "{read}");
    assert_eq!(read["parquet"]["schema"]["amount_cny"], "decimal128(18, 2)", "{read}");
    assert_eq!(
        read["parquet"]["rows"], read["parquet"]["unique_rows"],
        "one row per tenant, resource, site and hour"
    );
    for (reader, field) in
        [("csv", "total"), ("xlsx", "summary_total"), ("xlsx", "detail_total"), ("parquet", "total")]
    {
        assert_eq!(read[reader][field], total.as_str(), "{reader} {field}: {read}");
    }
}

#[tokio::test]
async fn closed_month_never_changes_on_sqlite() {
    closed_month_never_changes("sqlite").await;
}

#[tokio::test]
async fn closed_month_never_changes_on_postgres() {
    closed_month_never_changes("postgres").await;
}

/// A pod deleted while the meter is down is gone when it returns: its interval ends at the
/// last checkpoint that saw it running, marked estimated, never later than the deletion.
#[tokio::test]
async fn a_pod_gone_while_the_meter_was_down_ends_at_its_last_checkpoint_marked_estimated() {
    let month = Month::of(now());
    let scene = Scene::new("gone", month).await;
    let url = ledger_url("sqlite", "gone");
    let mut meter = MeterProcess::start(&url, "meter-gone");
    meter.ready().await;
    let started = now() - 60;
    let uid = scene.create_pod("gone", false).await;
    scene.run("gone", started).await;
    let ledger = Ledger::connect(&url).await.expect("the ledger");
    recorded(&ledger, &HashMap::from([(uid.clone(), (started, None))]), "the running pod").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    meter.kill();
    let killed_at = now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    scene
        .pods()
        .delete("gone", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
        .await
        .expect("delete");
    let deleted_at = now();
    let meter = MeterProcess::start(&url, "meter-gone");
    meter.ready().await;
    let ended = eventually(Duration::from_secs(30), "the gone pod's interval closed", || async {
        let intervals = ledger.intervals_of(&uid).await.ok()?;
        let cpu = intervals.iter().find(|i| i.meter == Meter::Cpu)?.clone();
        cpu.ended_at.map(|end| (end, cpu.estimated))
    })
    .await;
    assert!(ended.1, "marked estimated");
    assert!(ended.0 <= deleted_at, "never later than the deletion: {} vs {deleted_at}", ended.0);
    assert!(ended.0 >= killed_at - 2, "at the last checkpoint before the kill ({} vs {killed_at})", ended.0);
    drop(meter);
    scene.clean_up().await;
}

/// Bad input gets a clear error naming what is wrong, and writes nothing.
#[tokio::test]
async fn bad_input_is_refused_with_the_field_or_cause() {
    let month = last_month();
    let scene = Scene::new("bad", month).await;
    // A malformed PriceBook: the apiserver refuses it, naming the fields.
    let (ok, out) = kubectl_apply(&format!(
        "apiVersion: yiyun.io/v1alpha1\nkind: PriceBook\nmetadata: {{name: {}-bad}}\n\
         spec: {{scope: {{site: x, regionClass: west}}, effectiveFrom: '2026-11-01T00:00:00+08:00', \
         effectiveTo: '2026-10-01T00:00:00+08:00', prices: {{cpuCoreHour: '0.1.2'}}}}\n",
        scene.tenant
    ));
    assert!(!ok);
    for part in ["spec.prices.cpuCoreHour", "effectiveTo must be later", "region class or a site, not both"] {
        assert!(out.contains(part), "{out} lacks {part}");
    }
    // An overlapping book of the same scope: accepted by the schema, refused by the meter.
    let url = ledger_url("sqlite", "bad");
    let meter = MeterProcess::start(&url, "meter-bad");
    meter.ready().await;
    let overlapping = format!("{}-overlap", scene.tenant);
    apply_yiyun::<yiyun_crds::PriceBook>(
        &scene.client,
        &overlapping,
        yiyun_object(
            "PriceBook",
            &overlapping,
            json!({"scope": {"site": scene.site}, "effectiveFrom": rfc3339(scene.change + DAY), "prices": {"cpuCoreHour": "1"}}),
        ),
    )
    .await;
    let books: Api<yiyun_crds::PriceBook> = Api::all(scene.client.clone());
    let message = eventually(Duration::from_secs(30), "the overlapping book refused", || async {
        let book = books.get(&overlapping).await.ok()?;
        let condition =
            book.status?.conditions.into_iter().find(|c| c.type_ == "Accepted" && c.status == "False")?;
        Some(format!("{}: {}", condition.reason, condition.message))
    })
    .await;
    assert!(message.starts_with("OverlappingRange") && message.contains(&scene.books[1]), "{message}");
    let _ = books.delete(&overlapping, &DeleteParams::default()).await;

    // A GPU model no book prices.
    let node: Api<Node> = Api::all(scene.client.clone());
    let labels = json!({"metadata": {"labels": {"yiyun.io/gpu-model": "X9000"}}});
    node.patch(&scene.node, &PatchParams::default(), &Patch::Merge(&labels)).await.expect("relabel the node");
    // This month: closing the last one (other tests do) must not meet the unpriced model.
    let started = Month::of(now()).start().max(now() - 2 * HOUR);
    let uid = scene.create_pod("x9000", true).await;
    scene.run("x9000", started).await;
    scene.finish("x9000", started, started + HOUR).await;
    let ledger = Ledger::connect(&url).await.expect("the ledger");
    recorded(
        &ledger,
        &HashMap::from([(uid, (started, Some(started + HOUR)))]),
        "the pod on the unpriced model",
    )
    .await;
    let out_file = std::env::temp_dir().join(format!("{}.csv", scene.tenant));
    let month_text = Month::of(started).to_string();
    let out_path = out_file.to_str().expect("UTF-8").to_string();
    let (ok, _, err) = billing(&[
        "export",
        "--database",
        &url,
        "--month",
        &month_text,
        "--tenant",
        &scene.tenant,
        "--out",
        &out_path,
    ]);
    assert!(!ok);
    for part in ["GPU-hours of model X9000", "spec.prices.gpuHour[X9000]", &scene.site] {
        assert!(err.contains(part), "{err} lacks {part}");
    }
    assert!(!out_file.exists(), "nothing written half-way");
    for (args, part) in [
        (vec!["bill", "--database", &url, "--month", "2026-13"], "months run from 01 to 12"),
        (vec!["bill", "--database", &url, "--month", "last"], "write it as YYYY-MM"),
        (
            vec!["bill", "--database", &url, "--tenant", "no-such-tenant"],
            "tenant \"no-such-tenant\" does not exist",
        ),
        (vec!["bill", "--database", "postgres://yiyun@127.0.0.1:1/none"], "cannot reach the ledger database"),
        (vec!["bill", "--database", "mysql://x"], "is not a ledger URL"),
    ] {
        let (ok, _, err) = billing(&args);
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains(part), "{args:?}: {err} lacks {part}");
    }
    drop(meter);
    scene.clean_up().await;
}

/// A tenant with a monthly budget: the meter writes its month so far into `status.cost`, turns
/// `BudgetAlert` True at 80% and again (reason `Exceeded`) at 100%, with a Warning event each
/// time; the guarantee it holds unused is metered as its own line.
#[tokio::test]
async fn a_budget_raises_its_condition_and_an_event_at_80_and_100_percent() {
    let month = Month::of(now());
    let scene = Scene::new("budget", month).await;
    apply_yiyun::<yiyun_crds::Tenant>(
        &scene.client,
        &scene.tenant,
        yiyun_object(
            "Tenant",
            &scene.tenant,
            json!({"displayName": "预算测试局", "level": "province", "costCenter": "CC-E2E",
                "budget": {"monthly": "36.00"}, "quota": {"guaranteed": {"cpu": 4}}}),
        ),
    )
    .await;
    // Holding quota is priced by a book for every site (the only one in the suite).
    apply_yiyun::<yiyun_crds::PriceBook>(
        &scene.client,
        "e2e-reserved-quota",
        yiyun_object(
            "PriceBook",
            "e2e-reserved-quota",
            json!({"effectiveFrom": "2020-01-01T00:00:00+08:00", "prices": {"reserved": {"cpuCoreHour": "0.01"}}}),
        ),
    )
    .await;
    let url = ledger_url("sqlite", "budget");
    let books: Api<yiyun_crds::PriceBook> = Api::all(scene.client.clone());
    let meter = {
        let log = std::env::temp_dir().join(format!("{}.log", unique("meter-budget")));
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(yiyun_bin())
            .args(["billing", "run", "--database", &url, "--admin-addr", &admin])
            .args(["--checkpoint-seconds", "1", "--status-seconds", "1", "--leader-elect=false"])
            .stderr(std::fs::File::create(&log).expect("a log"))
            .spawn()
            .expect("start the meter");
        MeterProcess { child, admin, log }
    };
    meter.ready().await;
    eventually(Duration::from_secs(30), "the reserved-quota book accepted", || async {
        let status = books.get("e2e-reserved-quota").await.ok()?.status?;
        status.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "True").then_some(())
    })
    .await;
    // Each pod: a quarter A800 for 10 hours (30.00 CNY at 12 a GPU-hour), half a vCPU and 1Gi
    // (under 1.50 more): one is 85–88% of 36.00, two are over it.
    let tenants: Api<yiyun_crds::Tenant> = Api::all(scene.client.clone());
    let alert = |reason: &'static str| {
        let tenants = tenants.clone();
        let name = scene.tenant.clone();
        async move {
            eventually(Duration::from_secs(60), &format!("BudgetAlert {reason}"), || async {
                let tenant = tenants.get(&name).await.ok()?;
                let status = tenant.status?;
                let condition = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "BudgetAlert" && c.reason == reason)?
                    .clone();
                Some((condition, status.cost?))
            })
            .await
        }
    };
    for (i, expected) in ["Reached80Percent", "Exceeded"].into_iter().enumerate() {
        let name = format!("gpu-{i}");
        let start = month.start().max(now() - 12 * HOUR) + i as i64;
        scene.create_pod(&name, true).await;
        // Straight to Succeeded: while Running, a pod started 12 hours ago counts to now, and
        // the month's cost would overshoot, then fall back when it ends at 10 hours.
        scene.finish(&name, start, start + 10 * HOUR).await;
        let (condition, cost) = alert(expected).await;
        assert_eq!(condition.status, "True");
        assert!(condition.message.contains("of the monthly budget 36"), "{}", condition.message);
        let percent = cost.budget_used_percent.expect("a percentage");
        assert!(
            if i == 0 { (80..100).contains(&percent) } else { percent >= 100 },
            "{percent}% after {} pods",
            i + 1
        );
        assert_eq!(cost.month, month.to_string());
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(scene.client.clone(), "default");
    let reasons = eventually(Duration::from_secs(30), "both budget events", || async {
        let list = events.list(&Default::default()).await.ok()?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(scene.tenant.as_str()))
            .filter_map(|e| e.reason.clone())
            .collect();
        (reasons.iter().any(|r| r == "BudgetReached80Percent")
            && reasons.iter().any(|r| r == "BudgetExceeded"))
        .then_some(reasons)
    })
    .await;
    assert_eq!(
        reasons.iter().filter(|r| r.starts_with("Budget")).count(),
        2,
        "one event per threshold: {reasons:?}"
    );

    // The 4 vCPU guaranteed and not requested (the pods have ended) are held unused.
    let reserved = eventually(Duration::from_secs(30), "a line of quota held unused", || async {
        let (ok, out, _) =
            billing(&["export", "--database", &url, "--tenant", &scene.tenant, "--format", "json"]);
        let json: serde_json::Value = serde_json::from_slice(&out).ok().filter(|_| ok)?;
        let lines = json["tenants"][0]["lines"].as_array()?.clone();
        lines
            .into_iter()
            .find(|l| l["resource"] == "reserved-cpu" && l["quantity"].as_str() != Some("0.000000"))
    })
    .await;
    assert_eq!(reserved["price_book"], "e2e-reserved-quota", "{reserved}");
    drop(meter);
    scene.clean_up().await;
}

/// `curl` of the bill endpoint: the status code and the body.
fn get_bill(addr: &str, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let body = std::env::temp_dir().join(unique("bill-body"));
    let mut command = Command::new("curl");
    command.args(["-s", "-o"]).arg(&body).args(["-w", "%{http_code}", &format!("http://{addr}{path}")]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = command.output().expect("curl on PATH");
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (code, std::fs::read(&body).unwrap_or_default())
}

/// Asks until the answer is 200 (roles reach the apiserver's authorizer through its informers),
/// for at most 30 s; then fails with the last answer.
async fn until_ok(addr: &str, path: &str, token: &str) -> (u16, Vec<u8>) {
    let mut last = (0, Vec::new());
    for _ in 0..150 {
        last = get_bill(addr, path, Some(token));
        if last.0 == 200 {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("GET {path} answered {} for 30 s: {}", last.0, String::from_utf8_lossy(&last.1));
}

/// The bill endpoint: finance's ServiceAccount reads every bill, a department's its own tenant's
/// only; anonymous callers, unknown tokens and other tenants are refused.
#[tokio::test]
async fn the_bill_endpoint_serves_finance_and_refuses_everyone_else() {
    // A month no other test meters: the province's bill holds this scene alone (a province bill
    // with anything unpriced in it is refused, rightly, and other tests leave such usage).
    let month = last_month().previous();
    let scene = Scene::new("http", month).await;
    let start = month.start() + 2 * DAY;
    scene.create_pod("worked", false).await;
    scene.run("worked", start).await;
    scene.finish("worked", start, start + HOUR).await;
    let url = ledger_url("sqlite", "http");
    let addr = format!("127.0.0.1:{}", free_port());
    let meter = {
        let log = std::env::temp_dir().join(format!("{}.log", unique("meter-http")));
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(yiyun_bin())
            .args(["billing", "run", "--database", &url, "--admin-addr", &admin, "--http-addr", &addr])
            .args(["--status-seconds", "0", "--leader-elect=false"])
            // Exactly the chart's role: watches, status, events, token and access reviews.
            .arg("--kubeconfig")
            .arg(yiyun_e2e::service_account_kubeconfig("billing-rbac.yaml", "yiyun-billing"))
            .stderr(std::fs::File::create(&log).expect("a log"))
            .spawn()
            .expect("start the meter");
        MeterProcess { child, admin, log }
    };
    meter.ready().await;
    let ns = &scene.namespace.clone();
    let rbac = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: finance, namespace: {ns}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: department, namespace: {ns}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: stranger, namespace: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {ns}-finance}}\n\
         rules: [{{apiGroups: [yiyun.io], resources: [billing], verbs: [get]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-finance}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-finance}}\n\
         subjects: [{{kind: ServiceAccount, name: finance, namespace: {ns}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {ns}-department}}\n\
         rules: [{{apiGroups: [yiyun.io], resources: [billing], verbs: [get], resourceNames: [{tenant}]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-department}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-department}}\n\
         subjects: [{{kind: ServiceAccount, name: department, namespace: {ns}}}]\n",
        tenant = scene.tenant
    );
    let (ok, out) = kubectl_apply(&rbac);
    assert!(ok, "{out}");
    let token = |account: &str| {
        let out = yiyun_e2e::kubectl(&["create", "token", account, "-n", ns]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (finance, department, stranger) = (token("finance"), token("department"), token("stranger"));
    let own = format!("/v1/bills/{month}?tenant={}", scene.tenant);
    let all = format!("/v1/bills/{month}?format=json");

    // Roles reach the authorizer through its informers: wait for the first yes.
    let (code, body) = until_ok(&addr, &all, &finance).await;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert!(
        json["tenants"].as_array().is_some_and(|t| t.iter().any(|t| t["tenant"] == scene.tenant.as_str())),
        "{json}"
    );
    let (code, body) = until_ok(&addr, &own, &department).await;
    assert_eq!(code, 200);
    assert!(body.starts_with("\u{feff}账期".as_bytes()), "CSV with a BOM and Chinese headers");
    assert!(String::from_utf8_lossy(&body).contains(&scene.tenant));
    let (code, body) = get_bill(&addr, &format!("{own}&format=xlsx"), Some(&department));
    assert_eq!((code, &body[..2]), (200, &b"PK"[..]), "an XLSX (zip) workbook");

    for (what, path, token, expected) in [
        ("anonymous", own.clone(), None, 401),
        ("an unknown token", own.clone(), Some("not-a-token"), 401),
        ("a tenant that is not the caller's", own.clone(), Some(stranger.as_str()), 403),
        ("the department asking for every tenant", all.clone(), Some(department.as_str()), 403),
        (
            "a month that does not exist",
            format!("/v1/bills/2026-13?tenant={}", scene.tenant),
            Some(finance.as_str()),
            400,
        ),
        ("a format it does not serve", format!("{own}&format=pdf"), Some(finance.as_str()), 400),
    ] {
        let (code, body) = get_bill(&addr, &path, token);
        assert_eq!(code, expected, "{what}: {}", String::from_utf8_lossy(&body));
    }
    let (_, body) = get_bill(&addr, &own, Some(&stranger));
    assert!(
        String::from_utf8_lossy(&body).contains("may not get the bills of tenant"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    drop(meter);
    scene.clean_up().await;
    let _ = yiyun_e2e::kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        &format!("{ns}-finance"),
        &format!("{ns}-department"),
    ]);
}

/// Two meters on one ledger with leader election: one meters, the other waits; the leader
/// killed, the other takes the Lease and meters what happened meanwhile.
#[tokio::test]
async fn a_standby_meter_takes_over_when_the_leader_dies() {
    let month = last_month();
    let scene = Scene::new("lease", month).await;
    let (ok, out) = kubectl_apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: yiyun-system}\n");
    assert!(ok, "{out}");
    let url = ledger_url("sqlite", "lease");
    let lease = unique("billing-lease");
    let flags = [
        "--status-seconds",
        "0",
        "--lease-name",
        &lease,
        "--lease-duration-seconds",
        "4",
        "--renew-deadline-seconds",
        "3",
        "--retry-period-seconds",
        "1",
    ];
    let first_run = (month.start() + DAY, month.start() + DAY + HOUR);
    let first = scene.create_pod("before", false).await;
    scene.finish("before", first_run.0, first_run.1).await;
    let mut meters = [
        MeterProcess::start_with(&url, "meter-lease", &flags),
        MeterProcess::start_with(&url, "meter-lease", &flags),
    ];
    let ready = |meter: &MeterProcess| {
        let addr = meter.admin.parse().expect("an address");
        http_get(addr, "/readyz").is_some_and(|(code, _)| code == 200)
    };
    let leader =
        eventually(Duration::from_secs(60), "one meter leading", || async { meters.iter().position(&ready) })
            .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!ready(&meters[1 - leader]), "the standby waits for the Lease and meters nothing");
    let ledger = Ledger::connect(&url).await.expect("the ledger");
    recorded(&ledger, &HashMap::from([(first, (first_run.0, Some(first_run.1)))]), "the leader's pod").await;

    meters[leader].kill();
    let second_run = (month.start() + 2 * DAY, month.start() + 2 * DAY + HOUR);
    let second = scene.create_pod("after", false).await;
    scene.finish("after", second_run.0, second_run.1).await;
    meters[1 - leader].ready().await;
    recorded(&ledger, &HashMap::from([(second, (second_run.0, Some(second_run.1)))]), "the new leader's pod")
        .await;
    scene.clean_up().await;
}

/// Usage beyond the requests, recorded straight into each ledger: a measurement window that
/// overlaps one already recorded starts where that one ended, and the same window read again
/// changes nothing.
async fn over_request_windows_never_count_a_second_twice(backend: &str) {
    let ledger = Ledger::connect(&ledger_url(backend, "over")).await.expect("the ledger");
    let window = |at: Seconds, length: Seconds| Interval {
        key: format!("pod/uid-over/cpu-over-request/{at}"),
        source: "uid-over".into(),
        kind: "pod".into(),
        tenant: "dept".into(),
        namespace: "ns".into(),
        object: "p".into(),
        node: "n".into(),
        site: "site".into(),
        region_class: "west".into(),
        pool: String::new(),
        meter: Meter::CpuOverRequest,
        gpu_model: String::new(),
        amount: 1000,
        started_at: at - length,
        ended_at: Some(at),
        estimated: false,
    };
    let record = |windows: Vec<Interval>| {
        let ledger = ledger.clone();
        async move { ledger.record_over_request(&windows).await.expect("recorded") }
    };
    assert_eq!(record(vec![window(130, 30)]).await, 1);
    assert_eq!(record(vec![window(130, 30)]).await, 0, "the same window again");
    assert_eq!(record(vec![window(150, 30), window(145, 5)]).await, 1, "one overlaps, the other is covered");
    let recorded: Vec<(Seconds, Option<Seconds>)> = ledger
        .intervals_of("uid-over")
        .await
        .expect("read")
        .iter()
        .map(|i| (i.started_at, i.ended_at))
        .collect();
    assert_eq!(recorded, [(100, Some(130)), (130, Some(150))]);
}

#[tokio::test]
async fn over_request_windows_never_count_a_second_twice_on_sqlite() {
    over_request_windows_never_count_a_second_twice("sqlite").await;
}

#[tokio::test]
async fn over_request_windows_never_count_a_second_twice_on_postgres() {
    over_request_windows_never_count_a_second_twice("postgres").await;
}

/// Under `--basis max-request-usage` the meter reads metrics.k8s.io (metrics-server scraping
/// the kubelet metrics kwok emulates from each pod's usage annotations): a pod using more than
/// it asked for is billed for the difference over each measured window, at the request's price,
/// through a SIGKILL of the meter; a pod using less is billed its request alone.
#[tokio::test]
async fn the_usage_basis_bills_what_pods_use_beyond_their_requests() {
    let month = Month::of(now());
    let scene = Scene::new("usage", month).await;
    let node = format!("{}-kwok", scene.tenant);
    let node_object: Node = serde_json::from_value(json!({
        "metadata": {
            "name": node,
            "labels": {"yiyun.io/site": scene.site, "topology.kubernetes.io/region": "e2e",
                "yiyun.io/region-class": "west", "yiyun.io/e2e-metrics": "true"},
            "annotations": {"kwok.x-k8s.io/node": "fake",
                "metrics.k8s.io/resource-metrics-path": format!("/metrics/nodes/{node}/metrics/resource")}
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"}}
    }))
    .expect("a node");
    Api::<Node>::all(scene.client.clone())
        .create(&PostParams::default(), &node_object)
        .await
        .expect("the node");
    let pod = |name: &str, cpu: &str, memory: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/usage-cpu": cpu, "kwok.x-k8s.io/usage-memory": memory}},
            "spec": {
                "nodeName": node,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "c", "image": "registry.local/app:1", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]
            }
        }))
        .expect("a pod")
    };
    let mut uids = Vec::new();
    for (name, cpu, memory) in [("burst", "1500m", "3Gi"), ("steady", "200m", "512Mi")] {
        let created =
            scene.pods().create(&PostParams::default(), &pod(name, cpu, memory)).await.expect("a pod");
        uids.push(created.metadata.uid.expect("a uid"));
    }
    let (burst, steady) = (uids[0].clone(), uids[1].clone());

    let url = ledger_url("sqlite", "usage");
    // Exactly the chart's role, which lets the meter read metrics.k8s.io.
    let kubeconfig = yiyun_e2e::service_account_kubeconfig("billing-rbac.yaml", "yiyun-billing");
    let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path");
    let flags = [
        "--status-seconds",
        "0",
        "--leader-elect=false",
        "--basis",
        "max-request-usage",
        "--usage-seconds",
        "2",
        "--kubeconfig",
        kubeconfig,
    ];
    let mut meter = MeterProcess::start_with(&url, "meter-usage", &flags);
    meter.ready().await;
    let ledger = Ledger::connect(&url).await.expect("the ledger");
    let over = |wanted: usize| {
        let ledger = ledger.clone();
        let burst = burst.clone();
        async move {
            let intervals = ledger.intervals_of(&burst).await.ok()?;
            let cpu_over = intervals.iter().filter(|i| i.meter == Meter::CpuOverRequest).count();
            (cpu_over >= wanted).then_some(intervals)
        }
    };
    eventually(Duration::from_secs(90), "two measured windows of the bursting pod", || over(2)).await;
    meter.kill();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let meter = MeterProcess::start_with(&url, "meter-usage", &flags);
    meter.ready().await;
    let intervals =
        eventually(Duration::from_secs(90), "two more windows after the restart", || over(4)).await;
    drop(meter);

    let cpu = intervals.iter().find(|i| i.meter == Meter::Cpu).expect("the request's interval");
    assert_eq!(cpu.amount, 500);
    for meter in [Meter::CpuOverRequest, Meter::MemoryOverRequest] {
        let mut windows: Vec<_> = intervals.iter().filter(|i| i.meter == meter).collect();
        windows.sort_by_key(|i| i.started_at);
        assert!(windows.len() >= 4, "{meter:?}: {windows:?}");
        for pair in windows.windows(2) {
            assert!(pair[0].ended_at.is_some_and(|end| end <= pair[1].started_at), "overlap: {pair:?}");
        }
        for window in &windows {
            assert!(window.started_at >= cpu.started_at, "within the pod's run: {window:?}");
            match meter {
                // kwok's CPU counter is cumulative: a rate over a window varies by a hair.
                Meter::CpuOverRequest => assert!((990..=1010).contains(&window.amount), "{window:?}"),
                _ => assert_eq!(window.amount, 2 << 30, "3Gi used of 1Gi requested"),
            }
        }
    }
    let steady_intervals = ledger.intervals_of(&steady).await.expect("read");
    assert!(
        steady_intervals.iter().all(|i| matches!(i.meter, Meter::Cpu | Meter::Memory)),
        "a pod under its requests pays its requests: {steady_intervals:?}"
    );

    // The bill prices the difference at the request's own price, in lines of their own.
    let (ok, csv, err) = billing(&[
        "export",
        "--database",
        &url,
        "--month",
        &month.to_string(),
        "--format",
        "csv",
        "--headers",
        "english",
        "--tenant",
        &scene.tenant,
    ]);
    assert!(ok, "{err}");
    let csv = String::from_utf8(csv).expect("UTF-8");
    for (meter, unit) in [(Meter::CpuOverRequest, "vCPU-hour"), (Meter::MemoryOverRequest, "GiB-hour")] {
        let per_unit =
            i128::from(if meter == Meter::CpuOverRequest { 1000 * 3600 } else { (1i64 << 30) * 3600 });
        let used: i128 = intervals
            .iter()
            .filter(|i| i.meter == meter)
            .map(|i| i128::from(i.amount) * i128::from(i.ended_at.unwrap_or(i.started_at) - i.started_at))
            .sum();
        let lines: Vec<&str> = csv.lines().filter(|l| l.contains(&format!(",{},", meter.key()))).collect();
        assert_eq!(lines.len(), 1, "one line at one price:\n{csv}");
        // The scene's CPU price changes mid-month: the one in effect while the pod ran.
        let cpu_price = if now() < scene.change { "0.12" } else { "0.24" };
        let price = if meter == Meter::CpuOverRequest { cpu_price } else { "0.015" };
        assert!(lines[0].contains(&format!(",{unit},{price},")), "priced as the request: {}", lines[0]);
        let fields: Vec<&str> = lines[0].split(',').collect();
        let at = fields.iter().position(|f| *f == unit).expect("the unit column");
        let quantity: f64 = fields[at - 1].parse().expect("a quantity");
        let expected = used as f64 / per_unit as f64;
        assert!((quantity - expected).abs() < 1e-6, "{quantity} vs {expected} ({meter:?})");
    }

    let now_gone = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    let _ = scene.pods().delete_collection(&now_gone, &Default::default()).await;
    let _ = Api::<Node>::all(scene.client.clone()).delete(&node, &DeleteParams::default()).await;
    scene.clean_up().await;
}
