//! The scheduler's Prometheus metrics.

use prometheus_client::{
    metrics::{
        counter::Counter,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub bound: Counter,
    pub bind_errors: Counter,
    pub unschedulable: Counter,
    pub preemptions: Counter,
    pub pending: Gauge,
    /// From sending a binding (with its volumes and device claims) to the apiserver's answer.
    pub bind_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            bound: Counter::default(),
            bind_errors: Counter::default(),
            unschedulable: Counter::default(),
            preemptions: Counter::default(),
            pending: Gauge::default(),
            // 0.5 ms to about 8 s.
            bind_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 15)),
        }
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics::default();
        registry.register_with_unit(
            "bind_duration",
            "From sending a binding to the apiserver's answer",
            prometheus_client::registry::Unit::Seconds,
            metrics.bind_seconds.clone(),
        );
        registry.register("bound", "Pods bound to nodes", metrics.bound.clone());
        registry.register("bind_errors", "Bindings the apiserver refused", metrics.bind_errors.clone());
        registry.register(
            "unschedulable",
            "Scheduling attempts that found no node",
            metrics.unschedulable.clone(),
        );
        registry.register(
            "preemptions",
            "Pods that evicted others to make room",
            metrics.preemptions.clone(),
        );
        registry.register("pending", "Pods waiting for a node", metrics.pending.clone());
        metrics
    }
}
