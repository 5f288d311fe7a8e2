//! The workload the engine measured, kept in a ConfigMap beside the scheduler's Lease, so that a
//! restarted scheduler, or a standby taking over, places its first pods knowing the workload
//! instead of measuring it again from nothing (what the first hundreds of pods of a cold start
//! lose is in the README's *Placement quality*).

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use serde::{Deserialize, Serialize};
use yiyun_engine::{
    gpu::{MAX_GPUS, Shape},
    model::{GPU_MILLI, GpuRequest},
};

use crate::{COMPONENT, Error};

/// The ConfigMap's key holding the measure.
pub const DATA_KEY: &str = "measure.json";

/// Format of what is kept; a scheduler ignores (and later overwrites) any other.
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Saved {
    version: u32,
    shapes: Vec<SavedShape>,
}

/// One shape of pod and how many of the measure's pods had it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SavedShape {
    cpu_milli: u64,
    /// Devices asked for: 0 without GPUs, 1 for a fraction.
    gpus: u8,
    /// Milli-GPU on each device: 1000 for whole GPUs, less for a fraction, 0 without GPUs.
    gpu_milli: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    gpu_models: Vec<String>,
    pods: u32,
}

/// The ConfigMap `name` in `namespace` holding `counts` ([`yiyun_engine::Engine::measure`]).
pub fn config_map(namespace: &str, name: &str, counts: &[(Shape, u32)]) -> ConfigMap {
    let shapes = counts
        .iter()
        .map(|(shape, pods)| {
            let (gpus, gpu_milli) = shape.gpu.per_device();
            SavedShape {
                cpu_milli: shape.cpu_milli,
                gpus,
                gpu_milli,
                gpu_models: shape.gpu_models.clone(),
                pods: *pods,
            }
        })
        .collect();
    let saved = Saved { version: VERSION, shapes };
    let json = serde_json::to_string(&saved).unwrap_or_default();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), COMPONENT.into())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(DATA_KEY.to_string(), json)])),
        ..ConfigMap::default()
    }
}

/// The measure kept in `config_map`, or why it cannot be read (the field that is wrong).
pub fn counts(config_map: &ConfigMap) -> Result<Vec<(Shape, u32)>, Error> {
    let invalid = |field: String, message: String| Error::SavedMeasure { field, message };
    let text = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(DATA_KEY))
        .ok_or_else(|| invalid(format!("data.{DATA_KEY}"), "missing".into()))?;
    let saved: Saved = serde_json::from_str(text)
        .map_err(|err| invalid(format!("data.{DATA_KEY}"), format!("not a saved measure: {err}")))?;
    if saved.version != VERSION {
        return Err(invalid(
            "version".into(),
            format!("{} is not {VERSION}, the format this scheduler reads", saved.version),
        ));
    }
    saved
        .shapes
        .into_iter()
        .enumerate()
        .map(|(index, shape)| {
            let field = |name: &str| format!("shapes[{index}].{name}");
            let gpu = match (shape.gpus, u32::from(shape.gpu_milli)) {
                (0, 0) => GpuRequest::None,
                (0, milli) => {
                    return Err(invalid(field("gpuMilli"), format!("{milli} without a GPU (gpus is 0)")));
                }
                (count, GPU_MILLI) if usize::from(count) <= MAX_GPUS => GpuRequest::Whole(count),
                (count, GPU_MILLI) => {
                    return Err(invalid(
                        field("gpus"),
                        format!("{count} is more than a node has ({MAX_GPUS})"),
                    ));
                }
                (1, milli) if milli < GPU_MILLI => GpuRequest::Fraction(shape.gpu_milli),
                (count, milli) if milli < GPU_MILLI => {
                    return Err(invalid(
                        field("gpus"),
                        format!("{count} devices of a fraction ({milli} milli); a fraction takes 1"),
                    ));
                }
                (_, milli) => {
                    return Err(invalid(
                        field("gpuMilli"),
                        format!("{milli} is more than a GPU ({GPU_MILLI})"),
                    ));
                }
            };
            if shape.pods == 0 {
                return Err(invalid(field("pods"), "0: a shape kept has pods".into()));
            }
            let shape_of = Shape { cpu_milli: shape.cpu_milli, gpu, gpu_models: shape.gpu_models };
            Ok((shape_of, shape.pods))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cpu_milli: u64, gpu: GpuRequest, models: &[&str]) -> Shape {
        Shape { cpu_milli, gpu, gpu_models: models.iter().map(|model| model.to_string()).collect() }
    }

    fn with_json(json: serde_json::Value) -> ConfigMap {
        let mut config_map = config_map("yiyun-system", "yiyun-scheduler-workload", &[]);
        config_map.data = Some(BTreeMap::from([(DATA_KEY.to_string(), json.to_string())]));
        config_map
    }

    fn error_of(json: serde_json::Value) -> String {
        counts(&with_json(json)).expect_err("invalid").to_string()
    }

    #[test]
    fn a_kept_measure_reads_back_as_it_was() {
        let measured = vec![
            (shape(4_000, GpuRequest::None, &[]), 120),
            (shape(8_000, GpuRequest::Fraction(250), &[]), 900),
            (shape(88_000, GpuRequest::Whole(8), &["G2", "G3"]), 31),
        ];
        let kept = config_map("yiyun-system", "yiyun-scheduler-workload", &measured);
        assert_eq!(kept.metadata.name.as_deref(), Some("yiyun-scheduler-workload"));
        assert_eq!(counts(&kept).expect("readable"), measured);
        assert_eq!(counts(&config_map("ns", "name", &[])).expect("readable"), vec![]);
    }

    #[test]
    fn a_measure_that_cannot_be_read_names_the_field() {
        assert!(
            counts(&ConfigMap::default())
                .expect_err("no data")
                .to_string()
                .contains("data.measure.json: missing")
        );
        assert!(error_of(serde_json::json!({"version": 1})).contains("not a saved measure"));
        assert!(error_of(serde_json::json!({"version": 2, "shapes": []})).contains("version: 2 is not 1"));
        let one = |shape: serde_json::Value| serde_json::json!({"version": 1, "shapes": [shape]});
        let cases = [
            (
                serde_json::json!({"cpuMilli": 1, "gpus": 0, "gpuMilli": 500, "pods": 1}),
                "shapes[0].gpuMilli: 500 without a GPU",
            ),
            (
                serde_json::json!({"cpuMilli": 1, "gpus": 17, "gpuMilli": 1000, "pods": 1}),
                "shapes[0].gpus: 17 is more than a node has",
            ),
            (
                serde_json::json!({"cpuMilli": 1, "gpus": 2, "gpuMilli": 500, "pods": 1}),
                "shapes[0].gpus: 2 devices of a fraction",
            ),
            (
                serde_json::json!({"cpuMilli": 1, "gpus": 1, "gpuMilli": 1500, "pods": 1}),
                "shapes[0].gpuMilli: 1500 is more than a GPU",
            ),
            (serde_json::json!({"cpuMilli": 1, "gpus": 1, "gpuMilli": 1000, "pods": 0}), "shapes[0].pods: 0"),
            (
                serde_json::json!({"cpuMilli": 1, "gpus": 1, "gpuMilli": 1000, "pods": 1, "extra": 1}),
                "unknown field `extra`",
            ),
        ];
        for (shape, expected) in cases {
            let message = error_of(one(shape));
            assert!(message.contains(expected), "{message} should contain {expected}");
        }
    }
}
