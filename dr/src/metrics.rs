//! Prometheus metrics of replication.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

#[derive(Clone)]
pub struct Metrics {
    /// Writes to standby clusters, by kind and result (applied, deleted, conflict, rejected,
    /// unreachable).
    pub writes: Family<WriteLabels, Counter>,
    /// From a change seen on the primary to its copy on the standby.
    pub lag: Histogram,
    pub achieved_rpo: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    /// The RPO each valid policy asks for.
    pub rpo_target: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    pub pending: Family<PolicyLabels, Gauge>,
    /// Whole namespaces compared with their copies (each a consistent copy once done).
    pub full_comparisons: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            writes: Family::default(),
            lag: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0]),
            achieved_rpo: Family::default(),
            rpo_target: Family::default(),
            pending: Family::default(),
            full_comparisons: Counter::default(),
        };
        registry.register(
            "replication_writes",
            "Writes to standby clusters, by kind and result",
            metrics.writes.clone(),
        );
        registry.register_with_unit(
            "replication_lag",
            "From a change seen on the primary to its copy applied on the standby",
            prometheus_client::registry::Unit::Seconds,
            metrics.lag.clone(),
        );
        registry.register_with_unit(
            "achieved_rpo",
            "What each policy would lose if its primary failed now",
            prometheus_client::registry::Unit::Seconds,
            metrics.achieved_rpo.clone(),
        );
        registry.register_with_unit(
            "rpo_target",
            "The RPO each policy asks for (spec.rpo)",
            prometheus_client::registry::Unit::Seconds,
            metrics.rpo_target.clone(),
        );
        registry.register(
            "replication_pending_changes",
            "Changes seen on the primary and not yet on the standby, by policy",
            metrics.pending.clone(),
        );
        registry.register(
            "full_comparisons",
            "Namespaces compared in full with their copies on the standby",
            metrics.full_comparisons.clone(),
        );
        metrics
    }
}
