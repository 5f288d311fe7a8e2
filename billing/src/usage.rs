//! The usage basis, `max(request, usage)` (OpenCost's): where `metrics.k8s.io` is served, the
//! meter reads each pod's measured vCPU and memory, and whatever a pod used beyond its request
//! over a measurement window is metered as its own interval ([`Meter::CpuOverRequest`],
//! [`Meter::MemoryOverRequest`]), priced as the request is. The request's own line stays as it
//! is, so the two lines together bill `max(request, usage)` over time.
//!
//! A measurement covers its window (`timestamp − window` to `timestamp`, as metrics-server
//! reports it), clipped to the pod's run. Nothing is guessed: a window the meter did not read
//! (it was down, or read less often than metrics-server measures) is billed at the request.

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time};
use serde::Deserialize;
use yiyun_quota::Milli;

use crate::{calendar::Seconds, ledger::Interval, meter::Meter, metering::Requested};

/// Which amount of vCPU and memory is billed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Basis {
    /// What pods request (what is allocated): the government cloud's default.
    #[default]
    Request,
    /// The larger of the request and the usage `metrics.k8s.io` measures.
    MaxRequestUsage,
}

/// One pod's measured usage over a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub namespace: String,
    pub pod: String,
    /// The end of the window.
    pub at: Seconds,
    /// Its length, in whole seconds.
    pub window: Seconds,
    pub cpu_milli: i64,
    pub memory_bytes: i64,
}

/// Why a PodMetrics object cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PodMetrics {namespace}/{pod}: {why}")]
pub struct SampleError {
    pub namespace: String,
    pub pod: String,
    pub why: String,
}

#[derive(Deserialize)]
struct PodMetrics {
    #[serde(default)]
    metadata: Metadata,
    timestamp: Time,
    window: String,
    #[serde(default)]
    containers: Vec<ContainerMetrics>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Deserialize)]
struct ContainerMetrics {
    #[serde(default)]
    usage: std::collections::BTreeMap<String, Quantity>,
}

/// A PodMetrics object (`metrics.k8s.io/v1beta1`) as a sample: its containers' usage summed.
pub fn sample(object: serde_json::Value) -> Result<Sample, SampleError> {
    let names = |object: &serde_json::Value, key: &str| {
        object.pointer(&format!("/metadata/{key}")).and_then(|v| v.as_str()).unwrap_or_default().to_string()
    };
    let (namespace, pod) = (names(&object, "namespace"), names(&object, "name"));
    let error = |why: String| SampleError { namespace: namespace.clone(), pod: pod.clone(), why };
    let metrics: PodMetrics = serde_json::from_value(object).map_err(|err| error(err.to_string()))?;
    let window = go_duration_seconds(&metrics.window)
        .ok_or_else(|| error(format!("window {:?} is not a duration", metrics.window)))?;
    let (mut cpu, mut memory) = (0i128, 0i128);
    for container in &metrics.containers {
        for (resource, total) in [("cpu", &mut cpu), ("memory", &mut memory)] {
            if let Some(quantity) = container.usage.get(resource) {
                let used = Milli::parse_measured(&quantity.0)
                    .map_err(|err| error(format!("{resource} usage: {err}")))?;
                *total = total.saturating_add(used.0.max(0));
            }
        }
    }
    let whole = |milli: i128| i64::try_from(milli).unwrap_or(i64::MAX);
    Ok(Sample {
        namespace: metrics.metadata.namespace,
        pod: metrics.metadata.name,
        at: metrics.timestamp.0.as_second(),
        window,
        cpu_milli: whole(cpu),
        memory_bytes: whole(memory / 1000),
    })
}

/// A Go duration (`10.002s`, `1m0s`, `500ms`) in whole seconds, rounded down (a window is never
/// stretched).
fn go_duration_seconds(text: &str) -> Option<Seconds> {
    let mut nanos: i128 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|&end| end > 0)?;
        let (whole, fraction) = rest[..number_end].split_once('.').unwrap_or((&rest[..number_end], ""));
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale: i128 = match &rest[..unit_end] {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        rest = &rest[unit_end..];
        let fraction = &fraction[..fraction.len().min(18)];
        let parse = |digits: &str| if digits.is_empty() { Some(0) } else { digits.parse::<i128>().ok() };
        let fraction_nanos = parse(fraction)?.checked_mul(scale)? / 10i128.pow(fraction.len() as u32);
        nanos = nanos.checked_add(parse(whole)?.checked_mul(scale)?.checked_add(fraction_nanos)?)?;
    }
    Seconds::try_from(nanos / 1_000_000_000).ok()
}

/// What `pod` used beyond its requests over `sample`'s window, clipped to the pod's run: an
/// interval per resource it exceeded, keyed by the pod and the window's end, so that the same
/// measurement read twice is recorded once. The ledger also clips each to start where the
/// pod's last recorded one ended, so that overlapping windows never count a second twice.
pub fn over_request(pod: &Requested, sample: &Sample) -> Vec<Interval> {
    let start = (sample.at - sample.window).max(pod.base.started_at);
    let end = pod.base.ended_at.map_or(sample.at, |ended| sample.at.min(ended));
    if end <= start {
        return Vec::new();
    }
    [
        (Meter::CpuOverRequest, sample.cpu_milli, pod.cpu_milli),
        (Meter::MemoryOverRequest, sample.memory_bytes, pod.memory_bytes),
    ]
    .into_iter()
    .filter(|(_, used, requested)| used > requested)
    .map(|(meter, used, requested)| Interval {
        key: format!("pod/{}/{}/{}", pod.base.source, meter.key(), sample.at),
        meter,
        amount: used - requested,
        started_at: start,
        ended_at: Some(end),
        ..pod.base.clone()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn requested(started: Seconds, ended: Option<Seconds>) -> Requested {
        Requested {
            base: Interval {
                key: String::new(),
                source: "uid-1".into(),
                kind: "pod".into(),
                tenant: "dept".into(),
                namespace: "ns".into(),
                object: "p".into(),
                node: "n".into(),
                site: "qingyang".into(),
                region_class: "west".into(),
                pool: String::new(),
                meter: Meter::Cpu,
                gpu_model: String::new(),
                amount: 0,
                started_at: started,
                ended_at: ended,
                estimated: false,
            },
            cpu_milli: 500,
            memory_bytes: 1 << 30,
        }
    }

    #[test]
    fn reads_pod_metrics_as_metrics_server_serves_them() {
        let object = json!({
            "metadata": {"name": "p", "namespace": "ns", "creationTimestamp": "2026-11-30T12:57:07Z"},
            "timestamp": "2026-11-30T12:57:05Z",
            "window": "10.002s",
            "containers": [
                {"name": "a", "usage": {"cpu": "1500026320n", "memory": "3Gi"}},
                {"name": "b", "usage": {"cpu": "250m", "memory": "512Ki"}}
            ]
        });
        let sample = sample(object).unwrap();
        assert_eq!(sample.namespace, "ns");
        assert_eq!(sample.pod, "p");
        assert_eq!(sample.window, 10);
        assert_eq!(sample.cpu_milli, 1750, "measured CPU rounds down to the milli-vCPU");
        assert_eq!(sample.memory_bytes, 3 * (1 << 30) + 512 * 1024);
        assert_eq!(sample.at, 1_796_043_425);
    }

    #[test]
    fn a_malformed_measurement_names_the_pod_and_the_cause() {
        let bad = json!({"metadata": {"name": "p", "namespace": "ns"}, "timestamp": "2026-11-30T12:57:05Z",
            "window": "soon", "containers": []});
        let err = sample(bad).unwrap_err();
        assert_eq!(err.to_string(), "PodMetrics ns/p: window \"soon\" is not a duration");
        let bad = json!({"metadata": {"name": "p", "namespace": "ns"}, "timestamp": "2026-11-30T12:57:05Z",
            "window": "30s", "containers": [{"usage": {"cpu": "lots"}}]});
        assert!(sample(bad).unwrap_err().why.starts_with("cpu usage"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_seconds("10.002s"), Some(10));
        assert_eq!(go_duration_seconds("1m0s"), Some(60));
        assert_eq!(go_duration_seconds("1h2m3.5s"), Some(3723));
        assert_eq!(go_duration_seconds("999ms"), Some(0));
        assert_eq!(go_duration_seconds(""), None);
        assert_eq!(go_duration_seconds("10x"), None);
        assert_eq!(go_duration_seconds("s"), None);
        assert_eq!(go_duration_seconds("1.2.3s"), None);
    }

    #[test]
    fn usage_beyond_the_request_is_metered_over_the_window_and_only_then() {
        let pod = requested(1_000, None);
        let over = Sample {
            namespace: "ns".into(),
            pod: "p".into(),
            at: 2_000,
            window: 30,
            cpu_milli: 1_500,
            memory_bytes: 1 << 29,
        };
        let intervals = over_request(&pod, &over);
        assert_eq!(intervals.len(), 1, "memory used is under the request");
        let cpu = &intervals[0];
        assert_eq!(cpu.meter, Meter::CpuOverRequest);
        assert_eq!((cpu.amount, cpu.started_at, cpu.ended_at), (1_000, 1_970, Some(2_000)));
        assert_eq!(cpu.key, "pod/uid-1/cpu-over-request/2000");
        assert_eq!((cpu.tenant.as_str(), cpu.site.as_str()), ("dept", "qingyang"));
        let under = Sample { cpu_milli: 500, ..over.clone() };
        assert!(over_request(&pod, &under).is_empty(), "using exactly the request costs the request");
    }

    #[test]
    fn a_window_is_clipped_to_the_pods_run() {
        let sample = Sample {
            namespace: "ns".into(),
            pod: "p".into(),
            at: 2_000,
            window: 60,
            cpu_milli: 800,
            memory_bytes: 2 << 30,
        };
        let started_late = over_request(&requested(1_990, None), &sample);
        assert!(started_late.iter().all(|i| (i.started_at, i.ended_at) == (1_990, Some(2_000))));
        let ended_early = over_request(&requested(1_000, Some(1_950)), &sample);
        assert!(ended_early.iter().all(|i| (i.started_at, i.ended_at) == (1_940, Some(1_950))));
        assert!(over_request(&requested(1_000, Some(1_900)), &sample).is_empty(), "ended before the window");
    }
}
