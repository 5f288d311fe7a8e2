//! `yiyun simulate scenario`: nodes, tenants, gangs and pods written as YAML, placed in order by
//! one policy; every pod's node or the explanation of why it waits.
//!
//! ```yaml
//! nodes:
//!   - {name: wuhu-a1, cpu: "96", memory: 384Gi, gpus: 8, gpuModel: A100, site: wuhu, region: anhui, rack: r1}
//! tenants:
//!   - {name: wuhu-dsj, max: {cpu: "64", gpu: "8"}}
//! gangs:
//!   - {name: train, minMember: 4, level: rack, mode: required}
//! pods:
//!   - {name: train-0, tenant: wuhu-dsj, cpu: "8", memory: 32Gi, gpu: "1", gang: train}
//!   - {name: notebook, cpu: "2", memory: 8Gi, gpu: "0.5"}
//! ```

use std::{collections::BTreeMap, fmt::Write, path::Path};

use serde::Deserialize;
use yiyun_engine::{
    Engine, Policy,
    gang::{Gang, Level, Mode},
    model::{
        GpuRequest, LatencyClass, Node, Pod, Resources, Taint, TaintEffect, Toleration, TolerationOperator,
    },
    tenants::{Tenant, Usage},
};
use yiyun_quota::Milli;

use crate::{Error, read};

/// Options of `yiyun simulate scenario`.
#[derive(clap::Args, Clone, Debug)]
pub struct ScenarioArgs {
    /// The scenario file (YAML).
    pub file: String,
    /// Policy: first-fit, best-fit, spread, fgd or yiyun.
    #[arg(long, default_value = "yiyun")]
    pub policy: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[serde(default)]
    nodes: Vec<NodeSpec>,
    #[serde(default)]
    tenants: Vec<TenantSpec>,
    #[serde(default)]
    gangs: Vec<GangSpec>,
    #[serde(default)]
    pods: Vec<PodSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NodeSpec {
    name: String,
    cpu: String,
    memory: String,
    #[serde(default)]
    gpus: u8,
    gpu_model: Option<String>,
    #[serde(default)]
    region: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    rack: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<TaintSpec>,
    #[serde(default)]
    unschedulable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaintSpec {
    key: String,
    #[serde(default)]
    value: String,
    effect: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Amounts {
    cpu: Option<String>,
    memory: Option<String>,
    gpu: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TenantSpec {
    name: String,
    parent: Option<String>,
    #[serde(default)]
    guaranteed: Amounts,
    #[serde(default)]
    max: Amounts,
    #[serde(default)]
    allowed_regions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GangSpec {
    name: String,
    min_member: usize,
    level: Option<String>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodSpec {
    name: String,
    tenant: Option<String>,
    cpu: String,
    memory: String,
    gpu: Option<String>,
    #[serde(default)]
    gpu_models: Vec<String>,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<String>,
    #[serde(default)]
    priority: i32,
    latency_class: Option<String>,
    gang: Option<String>,
    spread_key: Option<String>,
}

fn invalid(path: &str, message: String) -> Error {
    Error::Config(format!("{path}: {message}"))
}

fn milli(path: &str, field: &str, text: &str) -> Result<u64, Error> {
    let value = Milli::parse(text).map_err(|err| invalid(path, format!("{field}: {err}")))?;
    u64::try_from(value.0).map_err(|_| invalid(path, format!("{field}: {text:?} must not be negative")))
}

/// Bytes from a memory quantity (`384Gi`).
fn bytes(path: &str, field: &str, text: &str) -> Result<u64, Error> {
    Ok(milli(path, field, text)?.div_ceil(1000))
}

fn usage(path: &str, amounts: &Amounts, unset: u64) -> Result<Usage, Error> {
    Ok(Usage {
        cpu_milli: amounts.cpu.as_deref().map(|cpu| milli(path, "cpu", cpu)).transpose()?.unwrap_or(unset),
        memory_bytes: amounts
            .memory
            .as_deref()
            .map(|m| bytes(path, "memory", m))
            .transpose()?
            .unwrap_or(unset),
        gpu_milli: amounts.gpu.as_deref().map(|gpu| milli(path, "gpu", gpu)).transpose()?.unwrap_or(unset),
    })
}

fn gpu_request(path: &str, text: Option<&str>) -> Result<GpuRequest, Error> {
    let Some(text) = text else { return Ok(GpuRequest::None) };
    match milli(path, "gpu", text)? {
        0 => Ok(GpuRequest::None),
        fraction @ 1..=999 => Ok(GpuRequest::Fraction(fraction as u16)),
        whole if whole % 1000 == 0 && whole / 1000 <= 16 => Ok(GpuRequest::Whole((whole / 1000) as u8)),
        _ => {
            Err(invalid(path, format!("gpu: {text:?} must be a fraction below 1 or a whole number up to 16")))
        }
    }
}

fn effect(path: &str, text: &str) -> Result<TaintEffect, Error> {
    match text {
        "NoSchedule" => Ok(TaintEffect::NoSchedule),
        "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
        "NoExecute" => Ok(TaintEffect::NoExecute),
        _ => {
            Err(invalid(path, format!("effect: {text:?} must be NoSchedule, PreferNoSchedule or NoExecute")))
        }
    }
}

fn node(spec: &NodeSpec) -> Result<Node, Error> {
    let path = format!("nodes[{}]", spec.name);
    let mut node = Node::new(
        spec.name.clone(),
        Resources {
            cpu_milli: milli(&path, "cpu", &spec.cpu)?,
            memory_bytes: bytes(&path, "memory", &spec.memory)?,
            pods: 110,
            ..Resources::default()
        },
    );
    node.gpus = spec.gpus.min(yiyun_engine::gpu::MAX_GPUS as u8);
    node.gpu_model = spec.gpu_model.clone();
    node.topology.region = spec.region.clone();
    node.topology.site = spec.site.clone();
    node.topology.rack = spec.rack.clone();
    node.labels = spec.labels.clone();
    node.unschedulable = spec.unschedulable;
    for taint in &spec.taints {
        node.taints.push(Taint {
            key: taint.key.clone(),
            value: taint.value.clone(),
            effect: effect(&path, &taint.effect)?,
        });
    }
    Ok(node)
}

fn pod(spec: &PodSpec) -> Result<Pod, Error> {
    let path = format!("pods[{}]", spec.name);
    let mut pod = Pod::new(
        spec.name.clone(),
        Resources::new(milli(&path, "cpu", &spec.cpu)?, bytes(&path, "memory", &spec.memory)?),
    );
    pod.tenant = spec.tenant.clone();
    pod.gpu = gpu_request(&path, spec.gpu.as_deref())?;
    pod.gpu_models = spec.gpu_models.clone();
    pod.node_selector = spec.node_selector.clone();
    pod.priority = spec.priority;
    pod.gang = spec.gang.clone();
    pod.spread_key = spec.spread_key.clone();
    // A toleration is written `key` (any value) or `key=value`.
    pod.tolerations = spec
        .tolerations
        .iter()
        .map(|text| match text.split_once('=') {
            Some((key, value)) => Toleration {
                key: key.into(),
                operator: TolerationOperator::Equal,
                value: value.into(),
                effect: None,
            },
            None => Toleration {
                key: text.clone(),
                operator: TolerationOperator::Exists,
                value: String::new(),
                effect: None,
            },
        })
        .collect();
    pod.latency_class = match spec.latency_class.as_deref() {
        None | Some("interactive") => LatencyClass::Interactive,
        Some("realtime") => LatencyClass::Realtime,
        Some("batch") => LatencyClass::Batch,
        Some("archive") => LatencyClass::Archive,
        Some(other) => {
            return Err(invalid(
                &path,
                format!("latencyClass: {other:?} must be realtime, interactive, batch or archive"),
            ));
        }
    };
    Ok(pod)
}

fn gang(spec: &GangSpec) -> Result<Gang, Error> {
    let path = format!("gangs[{}]", spec.name);
    let level = match spec.level.as_deref() {
        None => None,
        Some("rack") => Some(Level::Rack),
        Some("site") => Some(Level::Site),
        Some("region") => Some(Level::Region),
        Some(other) => return Err(invalid(&path, format!("level: {other:?} must be rack, site or region"))),
    };
    let mode = match spec.mode.as_deref() {
        None | Some("required") => Mode::Required,
        Some("preferred") => Mode::Preferred,
        Some(other) => return Err(invalid(&path, format!("mode: {other:?} must be required or preferred"))),
    };
    if spec.min_member == 0 {
        return Err(invalid(&path, "minMember must be at least 1".into()));
    }
    Ok(Gang {
        name: spec.name.clone(),
        min_member: spec.min_member,
        topology: level.map(|level| (level, mode)),
    })
}

/// Runs a scenario and returns where every pod went.
pub fn run(args: &ScenarioArgs) -> Result<String, Error> {
    let policy = Policy::parse(&args.policy).ok_or_else(|| {
        Error::Config(format!(
            "unknown policy `{}`: expected first-fit, best-fit, spread, fgd or yiyun",
            args.policy
        ))
    })?;
    let text = read(Path::new(&args.file))?;
    let scenario: Scenario =
        serde_saphyr::from_str(&text).map_err(|err| Error::Config(format!("{}: {err}", args.file)))?;
    let mut engine = Engine::new(policy, args.seed);
    for spec in &scenario.nodes {
        engine.upsert_node(node(spec)?);
    }
    for spec in &scenario.tenants {
        let path = format!("tenants[{}]", spec.name);
        engine.upsert_tenant(Tenant {
            name: spec.name.clone(),
            parent: spec.parent.clone(),
            guaranteed: usage(&path, &spec.guaranteed, 0)?,
            max: usage(&path, &spec.max, u64::MAX)?,
            allowed_regions: spec.allowed_regions.clone(),
        });
    }
    let gangs: BTreeMap<String, Gang> = scenario
        .gangs
        .iter()
        .map(|spec| gang(spec).map(|gang| (gang.name.clone(), gang)))
        .collect::<Result<_, _>>()?;
    let pods: Vec<Pod> = scenario.pods.iter().map(pod).collect::<Result<_, _>>()?;
    let mut outcomes: BTreeMap<String, String> = BTreeMap::new();
    let mut waiting: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    let describe = |engine: &Engine, placement: &yiyun_engine::Placement| {
        engine.node(placement.node).map_or_else(String::new, |node| {
            let gpus: Vec<String> =
                placement.gpus.iter().map(|(device, milli)| format!("gpu{device}:{milli}m")).collect();
            format!(
                "{} ({}/{}){}",
                node.name,
                node.topology.site,
                node.topology.rack,
                if gpus.is_empty() { String::new() } else { format!(" {}", gpus.join(",")) }
            )
        })
    };
    for pod in &pods {
        let Some(gang_name) = &pod.gang else {
            let outcome = match engine.schedule(pod) {
                Ok(placement) => describe(&engine, &placement),
                Err(explanation) => format!("pending: {explanation}"),
            };
            outcomes.insert(pod.key.clone(), outcome);
            continue;
        };
        let Some(gang) = gangs.get(gang_name) else {
            return Err(invalid(
                &format!("pods[{}]", pod.key),
                format!("gang: {gang_name:?} is not among the gangs"),
            ));
        };
        let members = waiting.entry(gang_name.clone()).or_default();
        members.push(pod.clone());
        if members.len() < gang.min_member {
            continue;
        }
        let members = waiting.remove(gang_name).unwrap_or_default();
        match engine.schedule_gang(gang, &members) {
            Ok(placements) => {
                for (member, placement) in members.iter().zip(&placements) {
                    outcomes.insert(member.key.clone(), describe(&engine, placement));
                }
            }
            Err(explanation) => {
                for member in &members {
                    outcomes.insert(member.key.clone(), format!("pending: {explanation}"));
                }
            }
        }
    }
    for (gang, members) in waiting {
        let needed = gangs.get(&gang).map_or(0, |gang| gang.min_member);
        for member in members {
            outcomes.insert(member.key, format!("pending: gang {gang} has fewer than its {needed} pods"));
        }
    }
    let mut out = String::new();
    let width = pods.iter().map(|pod| pod.key.len()).max().unwrap_or(3).max(3);
    let _ = writeln!(out, "{:<width$}  placement ({} policy)", "pod", policy.name());
    for pod in &pods {
        let _ = writeln!(out, "{:<width$}  {}", pod.key, outcomes.get(&pod.key).map_or("", String::as_str));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_text(text: &str) -> Result<String, Error> {
        let path =
            std::env::temp_dir().join(format!("yiyun-scenario-{}-{}.yaml", std::process::id(), text.len()));
        std::fs::write(&path, text)
            .map_err(|source| Error::Read { path: path.display().to_string(), source })?;
        let result = run(&ScenarioArgs { file: path.display().to_string(), policy: "yiyun".into(), seed: 1 });
        let _ = std::fs::remove_file(&path);
        result
    }

    #[test]
    fn places_pods_and_explains_the_rest() {
        let out = run_text(
            "nodes:\n  - {name: n1, cpu: \"8\", memory: 32Gi, gpus: 1}\npods:\n  - {name: a, cpu: \"4\", memory: 1Gi, gpu: \"0.5\"}\n  - {name: b, cpu: \"8\", memory: 1Gi}\n",
        )
        .expect("valid scenario");
        assert!(out.contains("a    n1 (/) gpu0:500m"), "{out}");
        assert!(out.contains("b    pending: 0/1 nodes: 1 insufficient cpu"), "{out}");
    }

    #[test]
    fn bad_input_names_the_object_and_field() {
        let err = run_text("nodes:\n  - {name: n1, cpu: lots, memory: 1Gi}\n").expect_err("bad cpu");
        assert!(err.to_string().starts_with("nodes[n1]: cpu: \"lots\" is not a quantity"), "{err}");
        let err =
            run_text("pods:\n  - {name: p, cpu: \"1\", memory: 1Gi, gpu: \"1.5\"}\n").expect_err("bad gpu");
        assert_eq!(
            err.to_string(),
            "pods[p]: gpu: \"1.5\" must be a fraction below 1 or a whole number up to 16"
        );
        let err = run_text("nodes: []\npods:\n  - {name: p, cpu: \"1\", memory: 1Gi, gang: g}\n")
            .expect_err("no gang");
        assert_eq!(err.to_string(), "pods[p]: gang: \"g\" is not among the gangs");
    }
}
