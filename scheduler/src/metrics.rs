//! The scheduler's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct Metrics {
    /// Tries to place a pod, by result: `scheduled` (a binding sent), `unschedulable`,
    /// `preempting` (victims being evicted).
    pub attempts: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub bound: Counter,
    pub bind_errors: Counter,
    pub preemptions: Counter,
    /// Times a gang could not be placed as a whole and waits.
    pub gang_waits: Counter,
    /// Pods bound, by the site of their node and its region class (`east`, `west`).
    pub placements: Family<Labels, Counter>,
    /// Pods waiting for a node, by why: `queued` (not tried yet, or being bound), `preempting`,
    /// `bind_retry`, or why the last try found no node.
    pub pending: Family<Vec<(&'static str, &'static str)>, Gauge>,
    /// PodGroups not yet placed as a whole.
    pub gangs_waiting: Gauge,
    /// Pods in the workload measure the engine scores by (recalled ones included).
    pub pods_measured: Gauge,
    /// From sending a binding (with its volumes and device claims) to the apiserver's answer.
    pub bind_seconds: Histogram,
    pub site_gpus: Family<Labels, Gauge<f64, AtomicU64>>,
    pub site_gpus_allocated: Family<Labels, Gauge<f64, AtomicU64>>,
    pub site_gpu_fragmentation: Family<Labels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            attempts: Family::default(),
            bound: Counter::default(),
            bind_errors: Counter::default(),
            preemptions: Counter::default(),
            gang_waits: Counter::default(),
            placements: Family::default(),
            pending: Family::default(),
            gangs_waiting: Gauge::default(),
            pods_measured: Gauge::default(),
            // 0.5 ms to about 8 s.
            bind_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 15)),
            site_gpus: Family::default(),
            site_gpus_allocated: Family::default(),
            site_gpu_fragmentation: Family::default(),
        }
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics::default();
        // Known label values read 0 from the start, so rates and alerts see them before the
        // first event.
        for result in ["scheduled", "unschedulable", "preempting"] {
            let _ = metrics.attempts.get_or_create(&vec![("result", result)]);
        }
        let _ = metrics.pending.get_or_create(&vec![("reason", "queued")]);
        registry.register_with_unit(
            "bind_duration",
            "From sending a binding to the apiserver's answer",
            Unit::Seconds,
            metrics.bind_seconds.clone(),
        );
        registry.register(
            "scheduling_attempts",
            "Tries to place a pod, by result (scheduled, unschedulable, preempting)",
            metrics.attempts.clone(),
        );
        registry.register("bound", "Pods bound to nodes", metrics.bound.clone());
        registry.register("bind_errors", "Bindings the apiserver refused", metrics.bind_errors.clone());
        registry.register(
            "preemptions",
            "Pods that evicted others to make room",
            metrics.preemptions.clone(),
        );
        registry.register(
            "gang_waits",
            "Times a PodGroup could not be placed as a whole and waited",
            metrics.gang_waits.clone(),
        );
        registry.register(
            "placements",
            "Pods bound, by the site of their node and its region class (east, west)",
            metrics.placements.clone(),
        );
        registry.register(
            "pending_pods",
            "Pods waiting for a node, by reason (queued, or why the last try failed)",
            metrics.pending.clone(),
        );
        registry.register(
            "gangs_waiting",
            "PodGroups not yet placed as a whole",
            metrics.gangs_waiting.clone(),
        );
        registry.register(
            "workload_pods_measured",
            "Pods in the workload measure placement scores by, recalled ones included",
            metrics.pods_measured.clone(),
        );
        registry.register("site_gpus", "GPUs of each site's nodes", metrics.site_gpus.clone());
        registry.register(
            "site_gpus_allocated",
            "GPUs pods hold on each site's nodes (fractions count as such)",
            metrics.site_gpus_allocated.clone(),
        );
        registry.register(
            "site_gpu_fragmentation",
            "Free GPUs of each site that the typical pods cannot use (FGD's measure)",
            metrics.site_gpu_fragmentation.clone(),
        );
        metrics
    }

    pub fn attempted(&self, result: &'static str) {
        self.attempts.get_or_create(&vec![("result", result)]).inc();
    }
}
