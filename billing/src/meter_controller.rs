//! The metering controller: watches pods, claims, namespaces, nodes, sites, tenants and
//! PriceBooks, and writes what they hold into the ledger.
//!
//! Crash safety: all state that matters is in the ledger. On start (and after every re-list)
//! the pods and claims listed are recorded again (idempotent: keys are the objects' UIDs), and
//! every interval still open whose object is not listed any more is closed at the last
//! checkpoint that saw it held, marked estimated. Checkpoints are written every
//! `--checkpoint-seconds` while the watches are live, so an estimate is never later than the
//! truth and at most one checkpoint earlier.
//!
//! Under the usage basis (`--basis max-request-usage`) the meter also reads every pod's
//! measured usage from `metrics.k8s.io` each `--usage-seconds` and records what went beyond
//! the requests (see [`crate::usage`]).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event as WatchEvent},
    },
};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use yiyun_crds::{ComputeSite, PriceBook, Tenant, labels};

use crate::{
    Error,
    calendar::Seconds,
    costs::CostWriter,
    ledger::{Interval, Ledger, now},
    meter::Meter,
    metering::{NodePlace, Places, Requested, claim_interval, pod_intervals, pod_requested, pod_state},
    pricebook,
    rating::TenantInfo,
    usage::{Basis, over_request, sample},
};

/// Configuration of `yiyun billing run`.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// The ledger: `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DATABASE`.
    #[arg(long, env = "YIYUN_BILLING_DATABASE", default_value = "sqlite://yiyun-billing.db")]
    pub database: String,
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "YIYUN_BILLING_ADMIN_ADDR", default_value = "127.0.0.1:9442")]
    pub admin_addr: SocketAddr,
    /// A kubeconfig to use instead of `KUBECONFIG` or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How often open intervals are marked as still held: the most an interval of an object
    /// deleted while the meter is down can be estimated short by.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub checkpoint_seconds: u64,
    /// Serve bills read-only over HTTP on this address (`GET /v1/bills/{month}`), to callers
    /// whose bearer token the apiserver accepts and whose roles allow `get` on
    /// `billing.yiyun.io`; off when absent.
    #[arg(long, env = "YIYUN_BILLING_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub election: yiyun_kube::leader::Args,
    /// How often each Tenant's `status.cost` (the month so far) and budget condition are
    /// brought up to date; 0 leaves the Tenants alone (one meter per cluster writes them).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub status_seconds: u64,
    /// What vCPU and memory are billed on: `request` (what is allocated), or
    /// `max-request-usage` (the larger of the request and the usage `metrics.k8s.io` measures;
    /// the request alone while that API is not served).
    #[arg(long, value_enum, default_value_t = Basis::Request)]
    pub basis: Basis,
    /// Under `max-request-usage`, how often measured usage is read: at most metrics-server's
    /// `--metric-resolution` (60 s by default), or some of its windows are never read and
    /// are billed at the request.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub usage_seconds: u64,
}

/// The meter's counters.
#[derive(Clone, Default)]
struct Metrics {
    events: Family<Vec<(&'static str, &'static str)>, Counter>,
    open_intervals: Gauge,
    usage_reads: Family<Vec<(&'static str, &'static str)>, Counter>,
    over_request_intervals: Counter,
    /// Until when (Unix seconds) the ledger holds everything the watches showed.
    ledger_current: Gauge,
    tenant_costs: crate::costs::TenantCosts,
}

impl Metrics {
    fn register(registry: &mut prometheus_client::registry::Registry) -> Metrics {
        let metrics = Metrics::default();
        registry.register("watch_events", "Watch events the meter handled, by kind", metrics.events.clone());
        registry.register(
            "open_objects",
            "Pods and claims the meter holds intervals open for",
            metrics.open_intervals.clone(),
        );
        registry.register(
            "usage_reads",
            "Reads of metrics.k8s.io under the usage basis, by result (ok, unavailable)",
            metrics.usage_reads.clone(),
        );
        registry.register(
            "over_request_intervals",
            "Intervals of usage beyond the requests recorded under the usage basis",
            metrics.over_request_intervals.clone(),
        );
        registry.register(
            "ledger_current_timestamp_seconds",
            "Until when the ledger holds everything the watches showed; time() minus this is the billing lag",
            metrics.ledger_current.clone(),
        );
        registry.register(
            "tenant_cost_month_yuan",
            "Each tenant's subtree's cost this month so far, in yuan (as its status.cost says)",
            metrics.tenant_costs.clone(),
        );
        metrics
    }

    fn event(&self, kind: &'static str) {
        self.events.get_or_create(&vec![("kind", kind)]).inc();
    }
}

/// Every kind the meter watches.
const WATCHED: [&str; 7] = ["namespace", "node", "site", "tenant", "pricebook", "pod", "pvc"];

/// Runs the meter until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let ledger = Ledger::connect(&config.database).await?;
    let client = yiyun_kube::client(config.kubeconfig.as_deref()).await?;
    let mut registry = yiyun_admin::registry("billing", env!("CARGO_PKG_VERSION"));
    let metrics = Metrics::register(&mut registry);
    let leading = yiyun_kube::leader::leader_gauge(&mut registry);
    yiyun_admin::run_with_admin(config.admin_addr, registry, shutdown.clone(), |readiness| async move {
        let price_books: Api<PriceBook> = Api::all(client.clone());
        let one = ListParams::default().limit(1);
        let waiting_for = "the apiserver and the yiyun CRDs (install them: `yiyun crd | kubectl apply -f -`)";
        if !yiyun_admin::wait_for(waiting_for, Duration::from_secs(2), &shutdown, || {
            price_books.list_metadata(&one)
        })
        .await
        {
            return Ok(());
        }
        // Every replica serves bills (they only read); only the leader meters and writes status.
        let endpoint = config.http_addr.map(|addr| {
            tokio::spawn(crate::http::serve(addr, ledger.clone(), client.clone(), shutdown.clone()))
        });
        let election = config.election.election(client.clone(), "yiyun-billing", leading)?;
        let metered = if let Some(election) = &election
            && !election.acquire(&shutdown).await
        {
            Ok(())
        } else {
            let mut meter = Metering::new(client, ledger, metrics, config.basis);
            let every = Every {
                checkpoint: Duration::from_secs(config.checkpoint_seconds),
                status: Duration::from_secs(config.status_seconds),
                usage: Duration::from_secs(config.usage_seconds),
            };
            let work = shutdown.child_token();
            let metering = meter.run(every, readiness, work.clone());
            match &election {
                // Renewal first: a leader resumed past its deadline stops before it writes.
                Some(election) => tokio::select! {
                    biased;
                    () = election.keep(&shutdown) => {
                        work.cancel();
                        if shutdown.is_cancelled() { Ok(()) } else { Err(Error::LostLease) }
                    }
                    metered = metering => metered,
                },
                None => metering.await,
            }
        };
        shutdown.cancel();
        if let Some(endpoint) = endpoint {
            match endpoint.await {
                Ok(served) => served?,
                Err(err) => warn!(%err, "the bill endpoint stopped abnormally"),
            }
        }
        metered
    })
    .await
}

/// One event from any of the watches the meter reads, in the order they arrive (boxed: a pod
/// event is kilobytes, a failure a few words).
enum Change {
    Pod(Box<WatchEvent<Pod>>),
    Claim(Box<WatchEvent<PersistentVolumeClaim>>),
    Namespace(Box<WatchEvent<Namespace>>),
    Node(Box<WatchEvent<Node>>),
    Site(Box<WatchEvent<ComputeSite>>),
    Tenant(Box<WatchEvent<Tenant>>),
    PriceBook(Box<WatchEvent<PriceBook>>),
    Failed(&'static str, watcher::Error),
}

struct Metering {
    client: Client,
    ledger: Ledger,
    metrics: Metrics,
    places: Places,
    tenants: HashMap<String, Tenant>,
    price_books: HashMap<String, PriceBook>,
    /// Pods and claims recorded open, and those recorded ended (so updates do not rewrite them).
    open: HashSet<String>,
    ended: HashSet<String>,
    /// Objects seen in the list in progress, per kind.
    listing: HashMap<&'static str, (HashSet<String>, Vec<Interval>)>,
    /// Kinds whose watch has listed and has not failed since.
    live: HashSet<&'static str>,
    tenants_dirty: bool,
    price_books_dirty: bool,
    costs: CostWriter,
    /// Under the usage basis, what each metered pod requests.
    usage: Option<UsageBasis>,
}

/// What the usage basis keeps between reads of `metrics.k8s.io`.
#[derive(Default)]
struct UsageBasis {
    /// Metered pods by namespace and name (how PodMetrics name them).
    requested: HashMap<(String, String), Requested>,
    /// Whether the last read found the API served (`None` before the first).
    served: Option<bool>,
    /// The end of the last window read per pod UID: metrics-server measures less often than the
    /// meter reads, and a window read before is not sent to the ledger again.
    read_until: HashMap<String, Seconds>,
}

/// How often the meter does each of its periodic writes.
struct Every {
    checkpoint: Duration,
    status: Duration,
    usage: Duration,
}

impl Metering {
    fn new(client: Client, ledger: Ledger, metrics: Metrics, basis: Basis) -> Metering {
        Metering {
            costs: CostWriter::new(client.clone(), metrics.tenant_costs.clone()),
            client,
            ledger,
            metrics,
            places: Places::default(),
            tenants: HashMap::new(),
            price_books: HashMap::new(),
            open: HashSet::new(),
            ended: HashSet::new(),
            listing: HashMap::new(),
            live: HashSet::new(),
            tenants_dirty: false,
            price_books_dirty: false,
            usage: (basis == Basis::MaxRequestUsage).then(UsageBasis::default),
        }
    }

    async fn run(
        &mut self,
        every: Every,
        readiness: yiyun_admin::Readiness,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let config = watcher::Config::default();
        let client = &self.client;
        let backoff = || yiyun_kube::backoff::WatchBackoff::default();
        // Places first: pods are metered where they run, for whom their namespace says.
        let mut changes = futures::stream::select_all(vec![
            watcher::watcher(Api::<Namespace>::all(client.clone()), config.clone())
                .backoff(backoff())
                .map(change(|e| Change::Namespace(Box::new(e)), "namespace"))
                .boxed(),
            watcher::watcher(Api::<Node>::all(client.clone()), config.clone())
                .backoff(backoff())
                .map(change(|e| Change::Node(Box::new(e)), "node"))
                .boxed(),
            watcher::watcher(Api::<ComputeSite>::all(client.clone()), config.clone())
                .backoff(backoff())
                .map(change(|e| Change::Site(Box::new(e)), "site"))
                .boxed(),
            watcher::watcher(Api::<Tenant>::all(client.clone()), config.clone())
                .backoff(backoff())
                .map(change(|e| Change::Tenant(Box::new(e)), "tenant"))
                .boxed(),
            watcher::watcher(Api::<PriceBook>::all(client.clone()), config.clone())
                .backoff(backoff())
                .map(change(|e| Change::PriceBook(Box::new(e)), "pricebook"))
                .boxed(),
            watcher::watcher(Api::<Pod>::all(client.clone()), config.clone())
                .backoff(backoff())
                .map(change(|e| Change::Pod(Box::new(e)), "pod"))
                .boxed(),
            watcher::watcher(Api::<PersistentVolumeClaim>::all(client.clone()), config)
                .backoff(backoff())
                .map(change(|e| Change::Claim(Box::new(e)), "pvc"))
                .boxed(),
        ]);
        let mut checkpoint = tokio::time::interval(every.checkpoint);
        let mut flush = tokio::time::interval(Duration::from_secs(2));
        let mut costs = tokio::time::interval(every.status.max(Duration::from_secs(1)));
        let mut usage = tokio::time::interval(every.usage);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                change = changes.next() => {
                    let Some(change) = change else { break };
                    self.handle(change).await?;
                    // Written at once the first time, batched later.
                    if self.listed() && !readiness.get() {
                        self.flush().await?;
                    }
                    readiness.set(self.ready());
                }
                _ = checkpoint.tick() => self.checkpoint().await?,
                // A quiet cluster sends no change after the last write: the flush says ready.
                _ = flush.tick() => {
                    self.flush().await?;
                    readiness.set(self.ready());
                    if self.ready() {
                        self.metrics.ledger_current.set(now());
                    }
                }
                _ = costs.tick(), if readiness.get() && !every.status.is_zero() => self.costs.write(&self.ledger, &self.tenants).await?,
                _ = usage.tick(), if self.usage.is_some() && self.live.contains("pod") => self.read_usage().await?,
            }
        }
        self.flush().await?;
        info!("meter stopped");
        Ok(())
    }

    fn listed(&self) -> bool {
        WATCHED.iter().all(|kind| self.live.contains(kind))
    }

    /// Ready once every watch has listed and the tenant tree and the PriceBooks are in the
    /// ledger.
    fn ready(&self) -> bool {
        self.listed() && !self.tenants_dirty && !self.price_books_dirty
    }

    async fn handle(&mut self, change: Change) -> Result<(), Error> {
        match change {
            Change::Failed(kind, error) => {
                warn!(kind, %error, "watch failed; it retries by itself, and checkpoints wait until it lists again");
                self.live.remove(kind);
            }
            Change::Namespace(event) => {
                let event = *event;
                self.metrics.event("namespace");
                self.places_event(event, "namespace", |meter, ns: Namespace, present| {
                    let name = ns.name_any();
                    match ns.labels().get(labels::TENANT).filter(|_| present) {
                        Some(tenant) => meter.places.tenant_of_namespace.insert(name, tenant.clone()),
                        None => meter.places.tenant_of_namespace.remove(&name),
                    };
                });
            }
            Change::Node(event) => {
                let event = *event;
                self.metrics.event("node");
                self.places_event(event, "node", |meter, node: Node, present| {
                    let name = node.name_any();
                    if present {
                        meter.places.nodes.insert(name, NodePlace::from_labels(node.labels()));
                    } else {
                        meter.places.nodes.remove(&name);
                    }
                });
            }
            Change::Site(event) => {
                let event = *event;
                self.places_event(event, "site", |meter, site: ComputeSite, present| {
                    let name = site.name_any();
                    if present {
                        meter.places.site_regions.insert(name, site.spec.region.clone());
                    } else {
                        meter.places.site_regions.remove(&name);
                    }
                });
            }
            Change::Tenant(event) => {
                let event = *event;
                self.tenants_dirty = true;
                self.places_event(event, "tenant", |meter, tenant: Tenant, present| {
                    let name = tenant.name_any();
                    if present {
                        meter.tenants.insert(name, tenant);
                    } else {
                        meter.tenants.remove(&name);
                    }
                });
            }
            Change::PriceBook(event) => {
                let event = *event;
                self.price_books_dirty = true;
                self.places_event(event, "pricebook", |meter, book: PriceBook, present| {
                    let name = book.name_any();
                    if present {
                        meter.price_books.insert(name, book);
                    } else {
                        meter.price_books.remove(&name);
                    }
                });
            }
            Change::Pod(event) => {
                let event = *event;
                self.metrics.event("pod");
                if self.usage.is_some() {
                    self.track_requests(&event).await;
                }
                self.object_event(event, "pod").await?;
            }
            Change::Claim(event) => {
                let event = *event;
                self.metrics.event("pvc");
                self.object_event(event, "pvc").await?;
            }
        }
        Ok(())
    }

    /// Keeps a small map of places up to date from its watch.
    fn places_event<K: kube::Resource>(
        &mut self,
        event: WatchEvent<K>,
        kind: &'static str,
        mut update: impl FnMut(&mut Metering, K, bool),
    ) {
        match event {
            WatchEvent::Init => {}
            WatchEvent::InitApply(object) | WatchEvent::Apply(object) => update(self, object, true),
            WatchEvent::Delete(object) => update(self, object, false),
            WatchEvent::InitDone => {
                self.live.insert(kind);
            }
        }
    }

    /// Records what a pod or claim holds, or that it stopped holding it.
    async fn object_event<K: Metered>(
        &mut self,
        event: WatchEvent<K>,
        kind: &'static str,
    ) -> Result<(), Error> {
        match event {
            WatchEvent::Init => {
                self.listing.insert(kind, (HashSet::new(), Vec::new()));
            }
            WatchEvent::InitApply(object) => {
                let uid = object.uid().unwrap_or_default();
                let intervals = self.intervals(&object, None).await;
                if intervals.iter().any(|i| i.ended_at.is_some()) {
                    self.ended.insert(format!("{}{uid}", kind_prefix(kind)));
                }
                let (seen, batch) = self.listing.entry(kind).or_default();
                seen.insert(uid);
                batch.extend(intervals);
            }
            WatchEvent::InitDone => {
                let (seen, batch) = self.listing.remove(kind).unwrap_or_default();
                // One transaction for the whole list: a meter killed half-way through it
                // records all of it again on restart.
                self.ledger.record(&batch).await?;
                let now_open: HashSet<String> =
                    batch.iter().filter(|i| i.ended_at.is_none()).map(|i| i.source.clone()).collect();
                // Open in the ledger, not in the list: the object went while nobody watched.
                let vanished: Vec<(String, Seconds, bool)> = self
                    .ledger
                    .open_sources(kind)
                    .await?
                    .into_iter()
                    .filter(|(source, _)| !seen.contains(source))
                    .map(|(source, last_seen)| (source, last_seen, true))
                    .collect();
                if !vanished.is_empty() {
                    info!(
                        kind,
                        count = vanished.len(),
                        "closing intervals of objects that went while the meter was away, at their last checkpoint (estimated)"
                    );
                }
                self.ledger.close(&vanished).await?;
                self.open.retain(|uid| !uid.starts_with(kind_prefix(kind)));
                self.open.extend(now_open.into_iter().map(|uid| format!("{}{uid}", kind_prefix(kind))));
                self.ended.retain(|key| {
                    !key.starts_with(kind_prefix(kind)) || seen.contains(&key[kind_prefix(kind).len()..])
                });
                self.live.insert(kind);
                self.metrics.open_intervals.set(self.open.len() as i64);
                // Checkpoint now: what was listed is known held at this moment.
                self.checkpoint().await?;
            }
            WatchEvent::Apply(object) => {
                let uid = object.uid().unwrap_or_default();
                let key = format!("{}{uid}", kind_prefix(kind));
                if self.ended.contains(&key) {
                    return Ok(());
                }
                let intervals = self.intervals(&object, None).await;
                if intervals.is_empty()
                    || (self.open.contains(&key) && intervals.iter().all(|i| i.ended_at.is_none()))
                {
                    return Ok(());
                }
                self.ledger.record(&intervals).await?;
                if intervals.iter().any(|i| i.ended_at.is_some()) {
                    self.open.remove(&key);
                    self.ended.insert(key);
                } else {
                    self.open.insert(key);
                }
                self.metrics.open_intervals.set(self.open.len() as i64);
            }
            WatchEvent::Delete(object) => {
                let uid = object.uid().unwrap_or_default();
                let key = format!("{}{uid}", kind_prefix(kind));
                if !self.ended.remove(&key) {
                    let intervals = self.intervals(&object, Some(now())).await;
                    // Recording ends what is open; an object never metered records it whole.
                    self.ledger.record(&intervals).await?;
                    if self.open.contains(&key) && intervals.is_empty() {
                        self.ledger.close(&[(uid, now(), false)]).await?;
                    }
                }
                self.open.remove(&key);
                self.metrics.open_intervals.set(self.open.len() as i64);
            }
        }
        Ok(())
    }

    /// The intervals of an object (see [`Metering::look_up_places`]).
    async fn intervals<K: Metered>(&mut self, object: &K, gone_at: Option<Seconds>) -> Vec<Interval> {
        self.look_up_places(object).await;
        object.intervals(gone_at, &self.places)
    }

    /// Looks up a namespace or node of `object` the watches have not delivered yet (a pod can
    /// arrive before its new namespace).
    async fn look_up_places<K: Metered>(&mut self, object: &K) {
        let namespace = object.namespace().unwrap_or_default();
        if !self.places.tenant_of_namespace.contains_key(&namespace)
            && let Ok(Some(ns)) = Api::<Namespace>::all(self.client.clone()).get_opt(&namespace).await
            && let Some(tenant) = ns.labels().get(labels::TENANT)
        {
            self.places.tenant_of_namespace.insert(namespace, tenant.clone());
        }
        if let Some(node) = object.node()
            && !self.places.nodes.contains_key(&node)
            && let Ok(Some(found)) = Api::<Node>::all(self.client.clone()).get_opt(&node).await
        {
            self.places.nodes.insert(node, NodePlace::from_labels(found.labels()));
        }
    }

    /// Under the usage basis, keeps what each metered pod requests, by namespace and name.
    async fn track_requests(&mut self, event: &WatchEvent<Pod>) {
        let pod = match event {
            WatchEvent::InitApply(pod) | WatchEvent::Apply(pod) => Some(pod),
            WatchEvent::Delete(pod) => {
                if let Some(usage) = &mut self.usage {
                    usage.requested.remove(&(pod.namespace().unwrap_or_default(), pod.name_any()));
                }
                None
            }
            WatchEvent::Init => {
                if let Some(usage) = &mut self.usage {
                    usage.requested.clear();
                }
                None
            }
            WatchEvent::InitDone => None,
        };
        let Some(pod) = pod else { return };
        self.look_up_places(pod).await;
        let requested = pod_requested(pod, &pod_state(pod, None), &self.places);
        if let Some(usage) = &mut self.usage {
            let key = (pod.namespace().unwrap_or_default(), pod.name_any());
            match requested {
                Some(requested) => usage.requested.insert(key, requested),
                None => usage.requested.remove(&key),
            };
        }
    }

    /// Under the usage basis, reads every pod's measured usage and records what went beyond
    /// its requests. Where `metrics.k8s.io` is not served, the requests alone are billed.
    async fn read_usage(&mut self) -> Result<(), Error> {
        let Some(usage) = &mut self.usage else { return Ok(()) };
        let objects = match yiyun_kube::resource_metrics::pod_metrics(&self.client).await {
            Ok(objects) => objects,
            Err(error) => {
                if usage.served != Some(false) {
                    warn!(%error, "metrics.k8s.io is not served: billing the requests alone until it is");
                }
                usage.served = Some(false);
                self.metrics.usage_reads.get_or_create(&vec![("result", "unavailable")]).inc();
                return Ok(());
            }
        };
        if usage.served != Some(true) {
            info!("metrics.k8s.io is served: billing max(request, usage)");
        }
        usage.served = Some(true);
        self.metrics.usage_reads.get_or_create(&vec![("result", "ok")]).inc();
        let mut over = Vec::new();
        let mut read_until = HashMap::with_capacity(usage.read_until.len());
        for object in objects {
            match sample(object) {
                Ok(sample) => {
                    let Some(pod) = usage.requested.get(&(sample.namespace.clone(), sample.pod.clone()))
                    else {
                        continue;
                    };
                    let uid = &pod.base.source;
                    if usage.read_until.get(uid).is_none_or(|&until| sample.at > until) {
                        over.extend(over_request(pod, &sample));
                    }
                    read_until.insert(uid.clone(), sample.at);
                }
                Err(error) => warn!(%error, "a measurement left out (billed at the request)"),
            }
        }
        // Only pods measured now are kept: a pod gone from the metrics is forgotten.
        usage.read_until = read_until;
        let recorded = self.ledger.record_over_request(&over).await?;
        self.metrics.over_request_intervals.inc_by(recorded);
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), Error> {
        if !(self.live.contains("pod") && self.live.contains("pvc")) {
            return Ok(());
        }
        self.ledger.checkpoint(now()).await?;
        Ok(())
    }

    /// Records each tenant's `quota.guaranteed` as intervals held from the moment the meter sees
    /// it: a changed or removed guarantee closes its interval and opens the new one.
    async fn record_guarantees(&mut self) -> Result<(), Error> {
        let held = self.ledger.open_amounts("guarantee").await?;
        let at = now();
        let mut wanted: HashMap<String, Interval> = HashMap::new();
        for tenant in self.tenants.values() {
            let Some(guaranteed) = &tenant.spec.quota.guaranteed else { continue };
            let name = tenant.name_any();
            let milli = |q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                q.as_ref().and_then(|q| yiyun_quota::Milli::parse(&q.0).ok()).map_or(0, |m| m.0.max(0))
            };
            let amounts = [
                (Meter::ReservedCpu, milli(&guaranteed.cpu)),
                (Meter::ReservedMemory, milli(&guaranteed.memory) / 1000),
                (Meter::ReservedGpu, milli(&guaranteed.gpu)),
            ];
            for (meter, amount) in amounts.into_iter().filter(|(_, amount)| *amount > 0) {
                let source = format!("guarantee/{name}/{}", meter.key());
                wanted.insert(
                    source.clone(),
                    Interval {
                        key: format!("{source}/{at}"),
                        source,
                        kind: "guarantee".into(),
                        tenant: name.clone(),
                        namespace: String::new(),
                        object: name.clone(),
                        node: String::new(),
                        site: String::new(),
                        region_class: String::new(),
                        pool: String::new(),
                        meter,
                        gpu_model: String::new(),
                        amount: i64::try_from(amount).unwrap_or(i64::MAX),
                        started_at: at,
                        ended_at: None,
                        estimated: false,
                    },
                );
            }
        }
        let ended: Vec<(String, Seconds, bool)> = held
            .iter()
            .filter(|(source, amount)| wanted.get(*source).map(|w| w.amount) != Some(**amount))
            .map(|(source, _)| (source.clone(), at, false))
            .collect();
        let opened: Vec<Interval> =
            wanted.into_values().filter(|w| held.get(&w.source) != Some(&w.amount)).collect();
        self.ledger.close(&ended).await?;
        self.ledger.record(&opened).await?;
        Ok(())
    }

    /// Writes the tenant tree and the PriceBooks (and the books' Accepted conditions) when
    /// they changed.
    async fn flush(&mut self) -> Result<(), Error> {
        if self.tenants_dirty && self.live.contains("tenant") {
            let tenants: Vec<TenantInfo> = self.tenants.values().map(tenant_info).collect();
            self.ledger.sync_tenants(&tenants).await?;
            self.record_guarantees().await?;
            self.tenants_dirty = false;
        }
        if self.price_books_dirty && self.live.contains("pricebook") {
            let books: Vec<PriceBook> = self.price_books.values().cloned().collect();
            let (_, refused) = pricebook::catalog(&books);
            let documents = books
                .iter()
                .map(|b| Ok((b.name_any(), serde_json::to_string(&stored_book(b))?)))
                .collect::<Result<Vec<_>, serde_json::Error>>()?;
            self.ledger.sync_price_books(&documents).await?;
            let api: Api<PriceBook> = Api::all(self.client.clone());
            self.price_books_dirty = false;
            for book in &books {
                let refusal = refused.iter().find(|r| r.book == book.name_any());
                let status = pricebook::status(book, refusal);
                match yiyun_kube::conditions::write_status(
                    &api,
                    &book.name_any(),
                    book.status.as_ref(),
                    &status,
                )
                .await
                {
                    Ok(_) => {}
                    // Deleted meanwhile: its deletion is the next event.
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        warn!(book = %book.name_any(), %error, "cannot write the PriceBook's status; retrying");
                        self.price_books_dirty = true;
                    }
                }
            }
        }
        Ok(())
    }
}

fn kind_prefix(kind: &str) -> &'static str {
    if kind == "pvc" { "pvc/" } else { "pod/" }
}

/// The parts of a PriceBook rating reads: name, creation time (which of two overlapping books
/// came first) and spec.
fn stored_book(book: &PriceBook) -> PriceBook {
    let mut stored = PriceBook::new(&book.name_any(), book.spec.clone());
    stored.metadata.creation_timestamp = book.metadata.creation_timestamp.clone();
    stored
}

/// A Tenant as billing keeps it.
pub fn tenant_info(tenant: &Tenant) -> TenantInfo {
    TenantInfo {
        name: tenant.name_any(),
        display_name: tenant.spec.display_name.clone(),
        parent: tenant.spec.parent.clone(),
        level: serde_json::to_value(tenant.spec.level)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        cost_center: tenant.spec.cost_center.clone(),
    }
}

/// Maps a watch's items to [`Change`]s, keeping its errors apart.
fn change<K>(
    wrap: fn(WatchEvent<K>) -> Change,
    kind: &'static str,
) -> impl FnMut(Result<WatchEvent<K>, watcher::Error>) -> Change {
    move |event| match event {
        Ok(event) => wrap(event),
        Err(error) => Change::Failed(kind, error),
    }
}

/// What the meter records for a kind of object.
trait Metered: kube::Resource<DynamicType = ()> + Clone + Send + 'static {
    fn node(&self) -> Option<String>;
    fn intervals(&self, gone_at: Option<Seconds>, places: &Places) -> Vec<Interval>;
}

impl Metered for Pod {
    fn node(&self) -> Option<String> {
        self.spec.as_ref().and_then(|s| s.node_name.clone())
    }

    fn intervals(&self, gone_at: Option<Seconds>, places: &Places) -> Vec<Interval> {
        pod_intervals(self, &pod_state(self, gone_at), places)
    }
}

impl Metered for PersistentVolumeClaim {
    fn node(&self) -> Option<String> {
        self.annotations().get("volume.kubernetes.io/selected-node").cloned()
    }

    fn intervals(&self, gone_at: Option<Seconds>, places: &Places) -> Vec<Interval> {
        claim_interval(self, gone_at, places).into_iter().collect()
    }
}
