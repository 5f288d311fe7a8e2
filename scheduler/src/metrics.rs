//! The scheduler's Prometheus metrics.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Default)]
pub struct Metrics {
    pub bound: Counter,
    pub bind_errors: Counter,
    pub unschedulable: Counter,
    pub preemptions: Counter,
    pub pending: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics::default();
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
