//! `yiyun bench scheduler --suite scheduler-perf`: kube-scheduler's own benchmark workloads
//! (`test/integration/scheduler_perf` of `k8s.io/kubernetes` at the pinned version, in the Go
//! module cache once the cluster binaries are built), read as they are and run against the
//! local cluster for kube-scheduler and for yiyun-scheduler, one after the other in one run.
//!
//! Each workload's operations run in order: nodes from its node template (with the hostname
//! label and the strategies' labels, as scheduler_perf's node preparer sets them, and kwok's
//! annotation so the local cluster's fake kubelets keep them Ready), namespaces, pods from its
//! templates, churn, barriers and deletions. Two things are adapted at creation, not in the
//! files: each pod gets the contender's `schedulerName`, and a pod template that sets
//! `spec.priority` directly (scheduler_perf's apiserver runs without the Priority admission
//! plugin; ours has it) gets a PriorityClass of that value. The pods of the operations that
//! collect metrics are measured from creation to binding; when the workload is over, the final
//! placement is checked rule by rule ([`crate::placement_check`]).

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams},
    discovery,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};

use crate::{Error, placement_check, progress, wait_until};

/// The workloads run unless `--workloads` names others: every kind the issue asks for, at the
/// sizes this machine carries.
pub const DEFAULT_WORKLOADS: &[&str] = &[
    "SchedulingBasic/500Nodes",
    "SchedulingPodAntiAffinity/500Nodes",
    "SchedulingPodAffinity/500Nodes",
    "SchedulingPreferredPodAffinity/500Nodes",
    "SchedulingPreferredPodAntiAffinity/500Nodes",
    "SchedulingNodeAffinity/500Nodes",
    "TopologySpreading/500Nodes",
    "PreferredTopologySpreading/500Nodes",
    "SchedulingWithNodeInclusionPolicy/500Nodes",
    "PreemptionBasic/1000Nodes",
    "Unschedulable/500Nodes/10Init/1kPods",
    "SchedulingWhileGated/1Node_10GatedPods",
    "SchedulingCSIPVs/500Nodes",
    "SchedulingWithResourceClaimTemplate/5000pods_500nodes",
    "SchedulingWithExtendedResource/500pods_500nodes",
    "SchedulingBasic/5000Nodes_10000Pods",
];

/// How long pods may go without a single binding before a workload is given up as stalled.
const STALLED: Duration = Duration::from_secs(120);

/// Annotation that makes the local cluster's kwok act as the node's kubelet.
const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Label on everything a run creates, to clean up by.
const RUN_LABEL: &str = "bench.yiyun.io/scheduler-perf";

/// One test case of a `performance-config.yaml`.
struct TestCase {
    name: String,
    /// The directory its paths are relative to.
    dir: PathBuf,
    default_pod_template: Option<String>,
    ops: Vec<Value>,
    workloads: Vec<Value>,
}

/// Reads every `<topic>/performance-config.yaml` under the suite directory.
fn load(suite: &Path) -> Result<Vec<TestCase>, Error> {
    let mut cases = Vec::new();
    let mut topics: Vec<PathBuf> = std::fs::read_dir(suite)?.filter_map(|e| Some(e.ok()?.path())).collect();
    topics.sort();
    for dir in topics {
        let file = dir.join("performance-config.yaml");
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let parsed: Value = serde_saphyr::from_str(&text)
            .map_err(|err| Error::Setup(format!("{}: {err}", file.display())))?;
        for case in parsed.as_array().into_iter().flatten() {
            cases.push(TestCase {
                name: case["name"].as_str().unwrap_or_default().to_string(),
                dir: dir.clone(),
                default_pod_template: case["defaultPodTemplatePath"].as_str().map(str::to_string),
                ops: case["workloadTemplate"].as_array().cloned().unwrap_or_default(),
                workloads: case["workloads"].as_array().cloned().unwrap_or_default(),
            });
        }
    }
    Ok(cases)
}

/// Expands the Go template actions scheduler_perf's templates use: `.Index`, `.Count`,
/// `Mod a b` and `DivideInt a b`.
fn expand(text: &str, index: usize, count: usize) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or_else(|| Error::Setup("unclosed {{ in a template".into()))?;
        let action: Vec<&str> = rest[start + 2..start + end].split_whitespace().collect();
        let value = |token: &str| -> Result<i64, Error> {
            match token {
                ".Index" => Ok(index as i64),
                ".Count" => Ok(count as i64),
                number => number.parse().map_err(|_| Error::Setup(format!("template value {number}"))),
            }
        };
        let result = match action.as_slice() {
            [single] => value(single)?,
            ["Mod", a, b] => value(a)?.checked_rem(value(b)?).unwrap_or(0),
            ["DivideInt", a, b] => value(a)?.checked_div(value(b)?).unwrap_or(0),
            other => return Err(Error::Setup(format!("template action {other:?} not supported"))),
        };
        out.push_str(&result.to_string());
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn read_template(dir: &Path, path: &str, index: usize, count: usize) -> Result<Value, Error> {
    let file = dir.join(path);
    let text = std::fs::read_to_string(&file)?;
    serde_saphyr::from_str(&expand(&text, index, count)?)
        .map_err(|err| Error::Setup(format!("{}: {err}", file.display())))
}

/// A count given as `count` or as `countParam: $name`.
fn count_of(op: &Value, params: &Value, field: &str) -> Option<usize> {
    if let Some(count) = op[field].as_u64() {
        return Some(count as usize);
    }
    let param = op[format!("{field}Param")].as_str()?.trim_start_matches('$');
    params[param].as_u64().map(|count| count as usize)
}

/// Who schedules a run.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Contender {
    KubeScheduler,
    #[value(name = "yiyun-scheduler")]
    Yiyun,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::KubeScheduler => "kube-scheduler",
            Contender::Yiyun => "yiyun-scheduler",
        }
    }

    fn scheduler_name(self) -> &'static str {
        match self {
            Contender::KubeScheduler => "default-scheduler",
            Contender::Yiyun => "yiyun-scheduler",
        }
    }
}

/// What one contender achieved on one workload.
pub struct Outcome {
    pub measured: usize,
    pub pods_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub violations: placement_check::Violations,
}

/// Pods by `namespace/name`: when they were created and when they were first seen bound.
#[derive(Default)]
struct Clock {
    created: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
}

/// One contender's run of one workload.
struct Run<'a> {
    client: Client,
    contender: Contender,
    case: &'a TestCase,
    params: Value,
    nodes: Vec<String>,
    namespaces: BTreeSet<String>,
    /// Cluster-scoped objects made for pods (PersistentVolumes) and nodes (CSINodes), and by
    /// `createAny` and `createResourceDriver` (DeviceClasses, ResourceSlices).
    volumes: Vec<String>,
    csi_nodes: Vec<String>,
    cluster_objects: Vec<(kube::discovery::ApiResource, String)>,
    clock: Arc<Mutex<Clock>>,
    /// Pods whose creation-to-binding is measured.
    measured: Vec<String>,
    background: Vec<tokio::task::JoinHandle<()>>,
    concurrency: usize,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Run<'_> {
    async fn namespace(&mut self, name: &str, template: Option<Value>) -> Result<(), Error> {
        if !self.namespaces.insert(name.to_string()) {
            return Ok(());
        }
        let mut object = template.unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "Namespace"}));
        object["metadata"]["name"] = name.into();
        object["metadata"]["labels"][RUN_LABEL] = "true".into();
        let namespace: Namespace = serde_json::from_value(object)?;
        Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &namespace).await?;
        // Pods can be created once the ServiceAccount controller has given it its default account.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), name);
        wait_until(Duration::from_secs(60), &format!("namespace {name} ready"), || {
            let accounts = accounts.clone();
            async move {
                Ok((accounts.get_opt("default").await?.is_some(), "no default ServiceAccount yet".into()))
            }
        })
        .await
    }

    async fn create_nodes(&mut self, op: &Value) -> Result<(), Error> {
        let count = count_of(op, &self.params, "count").unwrap_or(0);
        let template = op["nodeTemplatePath"].as_str().unwrap_or("../templates/node-default.yaml");
        let round_robin = &op["labelNodePrepareStrategy"];
        let unique = op["uniqueNodeLabelStrategy"]["labelKey"].as_str();
        let mut nodes = Vec::with_capacity(count);
        for index in 0..count {
            let mut node = read_template(&self.case.dir, template, index, count)?;
            let name = match node["metadata"]["name"].as_str() {
                Some(name) => name.to_string(),
                None => format!(
                    "{}{}",
                    node["metadata"]["generateName"].as_str().unwrap_or("scheduler-perf-"),
                    random_suffix()
                ),
            };
            node["metadata"]["name"] = name.clone().into();
            node["metadata"]["labels"]["kubernetes.io/hostname"] = name.clone().into();
            node["metadata"]["labels"][RUN_LABEL] = "true".into();
            node["metadata"]["annotations"][KWOK_ANNOTATION] = "fake".into();
            if let (Some(key), Some(values)) =
                (round_robin["labelKey"].as_str(), round_robin["labelValues"].as_array())
                && !values.is_empty()
            {
                node["metadata"]["labels"][key] = values[index % values.len()].clone();
            }
            if let Some(key) = unique {
                node["metadata"]["labels"][key] = format!("{name}-{}", random_suffix()).into();
            }
            // nodeAllocatableStrategy: allocatable is capacity plus the strategy's entries.
            if let Some(extra) = op["nodeAllocatableStrategy"]["nodeAllocatable"].as_object() {
                let mut allocatable = node["status"]["capacity"].clone();
                for (resource, amount) in extra {
                    allocatable[resource] = amount.clone();
                }
                node["status"]["allocatable"] = allocatable;
            }
            nodes.push((name, serde_json::from_value::<Node>(node)?));
        }
        let api: Api<Node> = Api::all(self.client.clone());
        stream::iter(nodes.iter().map(|(_, node)| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), node).await.map(|_| ()) }
        }))
        .buffer_unordered(self.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
        // ... and a CSINode with each driver's attach limit.
        if let Some(drivers) = op["nodeAllocatableStrategy"]["csiNodeAllocatable"].as_object() {
            use k8s_openapi::api::storage::v1::CSINode;
            let api: Api<CSINode> = Api::all(self.client.clone());
            for (name, _) in &nodes {
                let drivers: Vec<Value> = drivers
                    .iter()
                    .map(|(driver, allocatable)| json!({"name": driver, "nodeID": name, "allocatable": allocatable}))
                    .collect();
                let csi_node: CSINode = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {RUN_LABEL: "true"}}, "spec": {"drivers": drivers}
                }))?;
                api.create(&PostParams::default(), &csi_node).await?;
                self.csi_nodes.push(name.clone());
            }
        }
        let created: BTreeSet<String> = nodes.into_iter().map(|(name, _)| name).collect();
        self.wait_schedulable(&created).await?;
        self.nodes.extend(created);
        Ok(())
    }

    /// Waits until kwok reports the nodes Ready and the node lifecycle controller has lifted
    /// their not-ready taint: scheduler_perf's nodes can take pods from the moment they are
    /// created, and kwok's pace must not be what a workload measures.
    async fn wait_schedulable(&self, names: &BTreeSet<String>) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let params = ListParams::default().labels(&format!("{RUN_LABEL}=true"));
        wait_until(Duration::from_secs(600), "nodes Ready and untainted", || async {
            // Thousands of nodes: a list a second is enough and costs the apiserver little.
            tokio::time::sleep(Duration::from_millis(900)).await;
            let schedulable = api
                .list(&params)
                .await?
                .items
                .iter()
                .filter(|node| names.contains(&node.name_any()) && schedulable(node))
                .count();
            Ok((schedulable == names.len(), format!("{schedulable}/{} nodes schedulable", names.len())))
        })
        .await
    }

    /// A bound claim and volume for pod `index`, as scheduler_perf makes them: claim `pvc-<i>`
    /// from the claim template, volume `<namespace>-vol-<i>` from the volume template, bound to
    /// each other.
    async fn claim_and_volume(
        &mut self,
        op: &Value,
        namespace: &str,
        index: usize,
        count: usize,
    ) -> Result<String, Error> {
        use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
        let (claim_template, volume_template) = (
            op["persistentVolumeClaimTemplatePath"].as_str().unwrap_or_default(),
            op["persistentVolumeTemplatePath"].as_str().unwrap_or_default(),
        );
        let claim_name = format!("pvc-{index}");
        let volume_name = format!("{namespace}-vol-{index}");
        let mut claim = read_template(&self.case.dir, claim_template, index, count)?;
        claim["metadata"]["name"] = claim_name.clone().into();
        claim["spec"]["volumeName"] = volume_name.clone().into();
        let mut volume = read_template(&self.case.dir, volume_template, index, count)?;
        volume["metadata"]["name"] = volume_name.clone().into();
        volume["metadata"]["labels"][RUN_LABEL] = "true".into();
        if volume["spec"]["csi"].is_object() {
            volume["spec"]["csi"]["volumeHandle"] = volume_name.clone().into();
        }
        volume["spec"]["claimRef"] = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": namespace, "name": claim_name});
        // The volume first: a claim naming a volume that does not exist yet is marked Lost by
        // the volume controller (scheduler_perf runs without one). Both are then marked Bound,
        // as scheduler_perf does.
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        volumes.create(&PostParams::default(), &serde_json::from_value(volume)?).await?;
        self.volumes.push(volume_name.clone());
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let created = claims.create(&PostParams::default(), &serde_json::from_value(claim)?).await?;
        // The claim says its binding is complete: the volume controller then checks that the
        // volume names the claim's uid.
        let uid = json!({"spec": {"claimRef": {"uid": created.metadata.uid}}});
        volumes.patch(&volume_name, &PatchParams::default(), &Patch::Merge(&uid)).await?;
        let bound = json!({"status": {"phase": "Bound"}});
        claims.patch_status(&claim_name, &PatchParams::default(), &Patch::Merge(&bound)).await?;
        volumes.patch_status(&volume_name, &PatchParams::default(), &Patch::Merge(&bound)).await?;
        Ok(claim_name)
    }

    /// A pod from a template, for this contender.
    async fn pod_object(&self, template: &str, index: usize, count: usize) -> Result<Pod, Error> {
        let mut pod = read_template(&self.case.dir, template, index, count)?;
        pod["spec"]["schedulerName"] = self.contender.scheduler_name().into();
        pod["metadata"]["labels"][RUN_LABEL] = "true".into();
        if let Some(priority) = pod["spec"]["priority"].as_i64()
            && pod["spec"]["priorityClassName"].is_null()
        {
            pod["spec"]["priorityClassName"] = self.priority_class(priority).await?.into();
            pod["spec"].as_object_mut().map(|spec| spec.remove("priority"));
        }
        Ok(serde_json::from_value(pod)?)
    }

    async fn priority_class(&self, value: i64) -> Result<String, Error> {
        use k8s_openapi::api::scheduling::v1::PriorityClass;
        let name = format!("scheduler-perf-{value}");
        let api: Api<PriorityClass> = Api::all(self.client.clone());
        if api.get_opt(&name).await?.is_none() {
            let class: PriorityClass = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {RUN_LABEL: "true"}}, "value": value
            }))?;
            match api.create(&PostParams::default(), &class).await {
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                other => {
                    other?;
                }
            }
        }
        Ok(name)
    }

    async fn create_pods(&mut self, op: &Value, index: usize) -> Result<Option<&'static str>, Error> {
        if op["steadyState"].as_bool() == Some(true) || op["steadyStateParam"].is_string() {
            return Ok(Some("steadyState"));
        }
        let count = count_of(op, &self.params, "count").unwrap_or(0);
        let namespace = op["namespace"].as_str().map_or_else(|| format!("namespace-{index}"), str::to_string);
        self.namespace(&namespace, None).await?;
        let template = op["podTemplatePath"]
            .as_str()
            .map(str::to_string)
            .or_else(|| self.case.default_pod_template.clone())
            .unwrap_or_else(|| "../templates/pod-default.yaml".into());
        let with_volumes = op["persistentVolumeTemplatePath"].is_string();
        let mut pods = Vec::with_capacity(count);
        for i in 0..count {
            let mut pod = self.pod_object(&template, i, count).await?;
            if with_volumes {
                let claim = self.claim_and_volume(op, &namespace, i, count).await?;
                if let Some(spec) = pod.spec.as_mut() {
                    spec.volumes = Some(vec![serde_json::from_value(
                        json!({"name": "vol", "persistentVolumeClaim": {"claimName": claim}}),
                    )?]);
                }
            }
            pods.push(pod);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let clock = self.clock.clone();
        let names: Vec<String> = stream::iter(pods.into_iter().map(|pod| {
            let (api, clock, namespace) = (api.clone(), clock.clone(), namespace.clone());
            async move {
                let sent = Instant::now();
                let created = api.create(&PostParams::default(), &pod).await?;
                let key = key(&namespace, &created.name_any());
                clock.lock().unwrap_or_else(|p| p.into_inner()).created.insert(key.clone(), sent);
                Ok::<_, Error>(key)
            }
        }))
        .buffer_unordered(self.concurrency)
        .try_collect()
        .await?;
        if op["collectMetrics"].as_bool() == Some(true) {
            self.measured.extend(names.iter().cloned());
        }
        if op["skipWaitToCompletion"].as_bool() != Some(true) {
            self.wait_bound(&names, &format!("{count} pods of op {index} bound")).await?;
        }
        Ok(None)
    }

    /// Waits until the pods are bound; gives up when none more is bound for [`STALLED`].
    async fn wait_bound(&self, names: &[String], what: &str) -> Result<(), Error> {
        let total = names.len();
        let (mut last, mut since) = (0, Instant::now());
        for second in 0u64.. {
            let bound = {
                let clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
                names.iter().filter(|name| clock.bound.contains_key(*name)).count()
            };
            if bound >= total {
                return Ok(());
            }
            if bound > last {
                (last, since) = (bound, Instant::now());
            } else if since.elapsed() >= STALLED {
                return Err(Error::Timeout(format!("{what}: stalled at {bound}/{total} bound")));
            }
            if second % 10 == 0 {
                progress(&format!("  {bound}/{total} bound ({second}s)"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    /// `barrier`: every pod of the namespaces (all of the run's by default) bound, or, with
    /// `stageRequirement: Attempted`, bound or marked by a scheduling attempt.
    async fn barrier(&self, op: &Value) -> Result<(), Error> {
        let namespaces: Vec<String> = op["namespaces"]
            .as_array()
            .map(|list| list.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
            .unwrap_or_else(|| self.namespaces.iter().cloned().collect());
        let attempted = op["stageRequirement"].as_str() == Some("Attempted");
        wait_until(Duration::from_secs(900), "barrier", || {
            let (client, namespaces) = (self.client.clone(), namespaces.clone());
            async move {
                let mut waiting = 0;
                for namespace in &namespaces {
                    for pod in Api::<Pod>::namespaced(client.clone(), namespace)
                        .list(&ListParams::default())
                        .await?
                        .items
                    {
                        let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
                        let tried = pod
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| c.iter().any(|c| c.type_ == "PodScheduled"));
                        if !(bound || (attempted && tried)) {
                            waiting += 1;
                        }
                    }
                }
                Ok((waiting == 0, format!("{waiting} pods waiting")))
            }
        })
        .await
    }

    /// `churn` in `create` mode: a new object from the templates in turn every interval, until
    /// the workload ends (or `number` of them).
    async fn churn(&mut self, op: &Value, index: usize) -> Result<Option<&'static str>, Error> {
        if op["mode"].as_str() != Some("create") {
            return Ok(Some("churn other than create"));
        }
        let namespace = op["namespace"].as_str().map_or_else(|| format!("namespace-{index}"), str::to_string);
        self.namespace(&namespace, None).await?;
        let interval = Duration::from_millis(op["intervalMilliseconds"].as_u64().unwrap_or(500).max(1));
        let number = op["number"].as_u64().unwrap_or(0) as usize;
        let templates: Vec<String> = op["templatePaths"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let mut objects = Vec::new();
        for (i, template) in templates.iter().enumerate() {
            objects.push(self.pod_object(template, i, templates.len()).await?);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        self.background.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            for i in 0.. {
                if number > 0 && i >= number {
                    break;
                }
                ticker.tick().await;
                if let Some(pod) = objects.get(i % objects.len().max(1)) {
                    let _ = api.create(&PostParams::default(), pod).await;
                }
            }
        }));
        Ok(None)
    }

    /// `deletePods`: deletes the namespace's pods (those matching the selector), at the rate
    /// given, in the background unless told to wait.
    async fn delete_pods(&mut self, op: &Value) -> Result<(), Error> {
        let namespace = op["namespace"].as_str().unwrap_or_default().to_string();
        let selector: Vec<String> = op["labelSelector"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let pods = api.list(&ListParams::default().labels(&selector.join(","))).await?.items;
        let per_second = op["deletePodsPerSecond"].as_u64().unwrap_or(0);
        let task = tokio::spawn(async move {
            let mut ticker =
                (per_second > 0).then(|| tokio::time::interval(Duration::from_secs(1) / per_second as u32));
            for pod in pods {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let _ = api.delete(&pod.name_any(), &DeleteParams::default()).await;
            }
        });
        if op["skipWaitToCompletion"].as_bool() == Some(true) {
            self.background.push(task);
        } else {
            let _ = task.await;
        }
        Ok(())
    }

    /// `createAny`: objects of any kind from a template, found by discovery.
    async fn create_any(&mut self, op: &Value) -> Result<(), Error> {
        let path = op["templatePath"].as_str().unwrap_or_default();
        let count = count_of(op, &self.params, "count").unwrap_or(1);
        let namespace = op["namespace"].as_str().filter(|n| !n.is_empty()).map(str::to_string);
        if let Some(namespace) = &namespace {
            self.namespace(namespace, None).await?;
        }
        for index in 0..count {
            let object = read_template(&self.case.dir, path, index, count)?;
            let (group, version) = match object["apiVersion"].as_str().unwrap_or("v1").split_once('/') {
                Some((group, version)) => (group.to_string(), version.to_string()),
                None => (String::new(), object["apiVersion"].as_str().unwrap_or("v1").to_string()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, object["kind"].as_str().unwrap_or_default());
            let (resource, capabilities) = discovery::pinned_kind(&self.client, &gvk).await?;
            let mut object: DynamicObject = serde_json::from_value(object)?;
            object.labels_mut().insert(RUN_LABEL.into(), "true".into());
            let api: Api<DynamicObject> = match (&capabilities.scope, &namespace) {
                (discovery::Scope::Namespaced, Some(namespace)) => {
                    Api::namespaced_with(self.client.clone(), namespace, &resource)
                }
                (discovery::Scope::Namespaced, None) => {
                    Api::default_namespaced_with(self.client.clone(), &resource)
                }
                (discovery::Scope::Cluster, _) => Api::all_with(self.client.clone(), &resource),
            };
            let created = api.create(&PostParams::default(), &object).await?;
            if matches!(capabilities.scope, discovery::Scope::Cluster) {
                self.cluster_objects.push((resource, created.name_any()));
            }
        }
        Ok(())
    }

    /// `createResourceDriver`: a ResourceSlice for every node whose name matches the pattern,
    /// with `maxClaimsPerNode` devices, as scheduler_perf's fake driver publishes them.
    async fn create_resource_driver(&mut self, op: &Value) -> Result<(), Error> {
        use k8s_openapi::api::resource::v1::ResourceSlice;
        let driver = op["driverName"].as_str().unwrap_or_default().to_string();
        let pattern = op["nodes"].as_str().unwrap_or("*");
        let devices = count_of(op, &self.params, "maxClaimsPerNode").unwrap_or(1);
        let prefix = pattern.trim_end_matches('*');
        let nodes: Vec<String> =
            self.nodes
                .iter()
                .filter(|node| {
                    if pattern.ends_with('*') { node.starts_with(prefix) } else { node.as_str() == pattern }
                })
                .cloned()
                .collect();
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        let (resource, _) = discovery::pinned_kind(
            &self.client,
            &GroupVersionKind::gvk("resource.k8s.io", "v1", "ResourceSlice"),
        )
        .await?;
        for node in nodes {
            let devices: Vec<Value> = (0..devices)
                .map(|i| {
                    json!({"name": format!("instance-{i}"), "attributes": {
                        "model": {"string": "A100"}, "family": {"string": "GPU"},
                        "driverVersion": {"version": "1.2.3"}, "dra.example.com/numa": {"int": i}},
                        "capacity": {"memory": {"value": "1Gi"}}})
                })
                .collect();
            let slice: ResourceSlice = serde_json::from_value(json!({
                "metadata": {"name": node, "labels": {RUN_LABEL: "true"}},
                "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "resourceSliceCount": 1}, "devices": devices}
            }))?;
            api.create(&PostParams::default(), &slice).await?;
            self.cluster_objects.push((resource.clone(), node));
        }
        Ok(())
    }

    /// Runs the workload's operations; the first one this runner cannot carry out, if any.
    async fn operations(&mut self) -> Result<Option<String>, Error> {
        for (index, op) in self.case.ops.clone().iter().enumerate() {
            let opcode = op["opcode"].as_str().unwrap_or_default();
            progress(&format!("{} {}: op {index} {opcode}", self.contender.name(), self.case.name));
            let unsupported = match opcode {
                "createNodes" => {
                    self.create_nodes(op).await?;
                    None
                }
                "createNamespaces" => {
                    let prefix = op["prefix"].as_str().unwrap_or("namespace");
                    let template = match op["namespaceTemplatePath"].as_str() {
                        Some(path) => Some(read_template(&self.case.dir, path, 0, 1)?),
                        None => None,
                    };
                    for i in 0..count_of(op, &self.params, "count").unwrap_or(0) {
                        self.namespace(&format!("{prefix}-{i}"), template.clone()).await?;
                    }
                    None
                }
                "createPods" => self.create_pods(op, index).await?,
                "barrier" => {
                    self.barrier(op).await?;
                    None
                }
                "churn" => self.churn(op, index).await?,
                "deletePods" => {
                    self.delete_pods(op).await?;
                    None
                }
                "createAny" => {
                    self.create_any(op).await?;
                    None
                }
                "createResourceDriver" => {
                    self.create_resource_driver(op).await?;
                    None
                }
                "sleep" => {
                    let seconds =
                        op["duration"].as_str().and_then(|d| d.trim_end_matches('s').parse::<u64>().ok());
                    tokio::time::sleep(Duration::from_secs(seconds.unwrap_or(1))).await;
                    None
                }
                _ => Some("this operation"),
            };
            if let Some(what) = unsupported {
                return Ok(Some(format!("{opcode}: {what} not supported by the runner yet")));
            }
        }
        Ok(None)
    }

    fn outcome(&self) -> (usize, f64, Duration, Duration) {
        let clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        let mut latencies: Vec<Duration> = Vec::new();
        let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
        for name in &self.measured {
            let (Some(created), Some(bound)) = (clock.created.get(name), clock.bound.get(name)) else {
                continue;
            };
            latencies.push(bound.saturating_duration_since(*created));
            first = Some(first.map_or(*created, |f| f.min(*created)));
            last = Some(last.map_or(*bound, |l| l.max(*bound)));
        }
        latencies.sort();
        let percentile = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let elapsed = match (first, last) {
            (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64().max(1e-6),
            _ => f64::INFINITY,
        };
        (latencies.len(), latencies.len() as f64 / elapsed, percentile(0.5), percentile(0.99))
    }

    /// Checks the final placement of every pod of the run on its nodes.
    async fn check(&self) -> Result<placement_check::Violations, Error> {
        let mut pods = Vec::new();
        let mut namespace_labels = HashMap::new();
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for namespace in &self.namespaces {
            pods.extend(
                Api::<Pod>::namespaced(self.client.clone(), namespace)
                    .list(&ListParams::default())
                    .await?
                    .items,
            );
            if let Some(ns) = namespaces.get_opt(namespace).await? {
                namespace_labels.insert(namespace.clone(), ns.labels().clone());
            }
        }
        let ours: BTreeSet<&String> = self.nodes.iter().collect();
        let nodes: Vec<Node> = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}=true")))
            .await?
            .items
            .into_iter()
            .filter(|node| ours.contains(&node.name_any()))
            .collect();
        let mut violations = placement_check::check(&pods, &nodes, &namespace_labels);
        use k8s_openapi::api::{
            core::v1::{PersistentVolume, PersistentVolumeClaim},
            storage::v1::CSINode,
        };
        let mut storage = placement_check::Storage::default();
        for namespace in &self.namespaces {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
            storage.claims.extend(claims.list(&ListParams::default()).await?.items);
        }
        storage.volumes =
            Api::<PersistentVolume>::all(self.client.clone()).list(&ListParams::default()).await?.items;
        storage.csi_nodes = Api::<CSINode>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}=true")))
            .await?
            .items;
        for namespace in &self.namespaces {
            let claims: Api<k8s_openapi::api::resource::v1::ResourceClaim> =
                Api::namespaced(self.client.clone(), namespace);
            // A cluster without Dynamic Resource Allocation has no claims to check.
            if let Ok(list) = claims.list(&ListParams::default()).await {
                storage.resource_claims.extend(list.items);
            }
        }
        placement_check::check_volumes(&pods, &nodes, &storage, &mut violations);
        placement_check::check_claims(&pods, &storage, &mut violations);
        Ok(violations)
    }

    /// Deletes what the run created and waits until it is gone.
    async fn clean_up(&mut self) -> Result<(), Error> {
        for task in self.background.drain(..) {
            task.abort();
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        // Pods first, at once: the namespace controller would delete them one by one, with grace.
        let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        for namespace in &self.namespaces {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let _ = pods.delete_collection(&now, &ListParams::default()).await;
            let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        stream::iter(self.nodes.iter().map(|name| {
            let nodes = nodes.clone();
            async move {
                let _ = nodes.delete(name, &DeleteParams::default()).await;
            }
        }))
        .buffer_unordered(self.concurrency)
        .collect::<Vec<_>>()
        .await;
        use k8s_openapi::api::{core::v1::PersistentVolume, storage::v1::CSINode};
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        for name in self.volumes.drain(..) {
            let _ = volumes.delete(&name, &DeleteParams::default()).await;
        }
        let csi_nodes: Api<CSINode> = Api::all(self.client.clone());
        for name in self.csi_nodes.drain(..) {
            let _ = csi_nodes.delete(&name, &DeleteParams::default()).await;
        }
        for (resource, name) in self.cluster_objects.drain(..) {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
        let remaining: Vec<String> = self.namespaces.iter().cloned().collect();
        wait_until(Duration::from_secs(900), "the run's namespaces deleted", || {
            let (namespaces, remaining) = (namespaces.clone(), remaining.clone());
            async move {
                let mut left = 0;
                for name in &remaining {
                    left += usize::from(namespaces.get_opt(name).await?.is_some());
                }
                Ok((left == 0, format!("{left} namespaces left")))
            }
        })
        .await?;
        Ok(())
    }
}

fn random_suffix() -> String {
    // Distinct for the first 27^5 calls of a process: the counter times a multiplier prime to
    // 27, from a start the clock picks. Random suffixes alone collided among 5,000 nodes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    const SPACE: u64 = 27 * 27 * 27 * 27 * 27;
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos % u128::from(SPACE)) as u64
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SPACE;
    let mut value = (start + n * 7_368_787) % SPACE;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(value % 27) as usize] as char;
            value /= 27;
            c
        })
        .collect()
}

/// Records, for every pod of the cluster, when it was first seen bound.
fn record_bindings(client: Client, clock: Arc<Mutex<Clock>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().labels(&format!("{RUN_LABEL}=true"));
        let mut events = std::pin::pin!(watcher(pods, config).applied_objects().default_backoff());
        while let Some(Ok(pod)) = events.next().await {
            if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                let key = key(pod.metadata.namespace.as_deref().unwrap_or_default(), &pod.name_any());
                clock.lock().unwrap_or_else(|p| p.into_inner()).bound.entry(key).or_insert_with(Instant::now);
            }
        }
    })
}

/// How to start the contenders on the cluster of `kubeconfig`.
#[derive(Clone, Copy)]
struct Schedulers<'a> {
    kube_scheduler: &'a Path,
    kubeconfig: &'a Path,
}

/// Whether a node is Ready and without the taints of a node not (yet) ready.
fn schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .any(|condition| condition.type_ == "Ready" && condition.status == "True");
    let not_ready = node.spec.iter().flat_map(|spec| spec.taints.iter().flatten()).any(|taint| {
        matches!(taint.key.as_str(), "node.kubernetes.io/not-ready" | "node.kubernetes.io/unreachable")
    });
    ready && !not_ready
}

/// Runs one workload for one contender, from an empty cluster back to one.
async fn run_workload(
    client: &Client,
    case: &TestCase,
    workload: &Value,
    contender: Contender,
    schedulers: Schedulers<'_>,
    concurrency: usize,
) -> Result<Result<Outcome, String>, Error> {
    let process = match contender {
        // Client limits raised as scheduler_perf raises them.
        Contender::KubeScheduler => {
            crate::processes::kube_scheduler(schedulers.kube_scheduler, schedulers.kubeconfig, 5000, 5000)?
        }
        // kube-scheduler does not limit its evictions; the suite measures scheduling, not
        // yiyun's guard against eviction storms (60 a minute by default).
        Contender::Yiyun => {
            let kubeconfig = schedulers.kubeconfig.display().to_string();
            crate::processes::yiyun_scheduler(&[
                "--evictions-per-minute",
                "1000000",
                "--kubeconfig",
                &kubeconfig,
            ])?
        }
    };
    // Let the scheduler list the cluster before the first operation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let clock: Arc<Mutex<Clock>> = Arc::default();
    let recorder = record_bindings(client.clone(), clock.clone());
    let mut run = Run {
        client: client.clone(),
        contender,
        case,
        params: workload["params"].clone(),
        nodes: Vec::new(),
        namespaces: BTreeSet::new(),
        volumes: Vec::new(),
        csi_nodes: Vec::new(),
        cluster_objects: Vec::new(),
        clock,
        measured: Vec::new(),
        background: Vec::new(),
        concurrency,
    };
    let result = run.operations().await;
    let outcome = match result {
        Ok(None) => {
            let violations = run.check().await?;
            let (measured, pods_per_second, p50, p99) = run.outcome();
            Ok(Outcome { measured, pods_per_second, p50, p99, violations })
        }
        Ok(Some(unsupported)) => Err(unsupported),
        Err(err) => Err(format!("failed: {err}")),
    };
    drop(process);
    recorder.abort();
    progress(&format!("{} {}: cleaning up", contender.name(), case.name));
    run.clean_up().await?;
    Ok(outcome)
}

/// The published throughput threshold of a workload (pods/s on scheduler_perf's machine).
fn threshold(workload: &Value) -> String {
    match &workload["threshold"] {
        Value::Number(n) => n.to_string(),
        Value::Object(map) => map.values().map(|v| v.to_string()).collect::<Vec<_>>().join("/"),
        _ => "-".into(),
    }
}

/// Runs the selected workloads and prints the table.
pub async fn run(
    kube_scheduler: &Path,
    concurrency: usize,
    suite: &Path,
    selected: &[String],
    contenders: &[Contender],
    cluster_script: Option<&Path>,
) -> Result<(), Error> {
    let cases = load(suite)?;
    // Rows go out as each workload ends, so a run stopped early keeps what it measured.
    println!(
        "| workload | published threshold (pods/s) | scheduler | measured pods | pods/s | p50 (ms) | p99 (ms) | violations |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---|");
    for wanted in selected {
        let Some((case_name, workload_name)) = wanted.split_once('/') else {
            progress(&format!("{wanted}: give workloads as TestCase/Workload"));
            continue;
        };
        let found = cases.iter().find(|case| case.name == case_name).and_then(|case| {
            case.workloads.iter().find(|w| w["name"].as_str() == Some(workload_name)).map(|w| (case, w))
        });
        let Some((case, workload)) = found else {
            progress(&format!("{wanted}: no such workload in {}", suite.display()));
            continue;
        };
        let mut results = Vec::new();
        for &contender in contenders {
            progress(&format!("{wanted}: {}", contender.name()));
            let cluster = cluster_script.map(crate::processes::Cluster::up).transpose()?;
            let kubeconfig = match &cluster {
                Some(cluster) => cluster.kubeconfig.clone(),
                None => crate::processes::kubeconfig()?,
            };
            let client = yiyun_kube::client(Some(&kubeconfig)).await?;
            let schedulers = Schedulers { kube_scheduler, kubeconfig: &kubeconfig };
            let outcome = run_workload(&client, case, workload, contender, schedulers, concurrency).await?;
            results.push((contender, outcome));
        }
        print_rows(wanted, &threshold(workload), &results);
    }
    Ok(())
}

/// One workload's rows of the table: each contender, and their ratio.
fn print_rows(workload: &str, threshold: &str, results: &[(Contender, Result<Outcome, String>)]) {
    for (contender, result) in results {
        match result {
            Ok(o) => {
                let violations = if o.violations.total() == 0 {
                    "0".to_string()
                } else {
                    o.violations
                        .by_rule
                        .iter()
                        .map(|(rule, (count, example))| format!("{count} {rule} (e.g. {example})"))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                println!(
                    "| {workload} | {threshold} | {} | {} | {:.0} | {:.0} | {:.0} | {violations} |",
                    contender.name(),
                    o.measured,
                    o.pods_per_second,
                    o.p50.as_secs_f64() * 1000.0,
                    o.p99.as_secs_f64() * 1000.0
                );
            }
            Err(why) => {
                println!(
                    "| {workload} | {threshold} | {} | - | - | - | - | not run: {why} |",
                    contender.name()
                )
            }
        }
    }
    let rate = |who: Contender| {
        results.iter().find(|(c, _)| *c == who).and_then(|(_, r)| r.as_ref().ok()).map(|o| o.pods_per_second)
    };
    if let (Some(yiyun), Some(kube)) = (rate(Contender::Yiyun), rate(Contender::KubeScheduler)) {
        println!("| {workload} | | yiyun / kube-scheduler | | {:.2}x | | | |", yiyun / kube.max(1e-9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_do_not_repeat_among_fifty_thousand_nodes() {
        let suffixes: BTreeSet<String> = (0..50_000).map(|_| random_suffix()).collect();
        assert_eq!(suffixes.len(), 50_000);
    }

    #[test]
    fn template_actions_expand_as_go_templates_do() {
        let text = "name: claim-{{.Index}}\nshare: {{ DivideInt 30000 .Count }}\nslot: {{Mod .Index 25}}\n";
        assert_eq!(expand(text, 27, 100).expect("expands"), "name: claim-27\nshare: 300\nslot: 2\n");
        assert!(expand("{{ range .Items }}", 0, 1).is_err(), "what is not supported says so");
    }

    #[test]
    fn counts_come_from_the_op_or_its_parameter() {
        let params = json!({"initNodes": 500});
        assert_eq!(count_of(&json!({"countParam": "$initNodes"}), &params, "count"), Some(500));
        assert_eq!(count_of(&json!({"count": 3}), &params, "count"), Some(3));
        assert_eq!(count_of(&json!({"countParam": "$missing"}), &params, "count"), None);
    }
}
