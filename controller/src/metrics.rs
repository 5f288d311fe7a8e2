//! Prometheus metrics of the controllers.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum Outcome {
    Ok,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    controller: &'static str,
    kind: &'static str,
}

/// Counters every reconciler reports to.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ReconcileLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    writes: Family<WriteLabels, Counter>,
    duration: Histogram,
    plans: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            writes: Family::default(),
            duration: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            plans: Counter::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles run, by controller and result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by controller and error",
            metrics.errors.clone(),
        );
        registry.register(
            "writes",
            "Objects written to the apiserver (applies, deletes, status), by controller and kind",
            metrics.writes.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            metrics.duration.clone(),
        );
        registry.register("tenant_plans", "Times the tenant tree plan was recomputed", metrics.plans.clone());
        metrics
    }

    pub fn reconciled(&self, controller: &'static str, seconds: f64, error: Option<&'static str>) {
        self.duration.observe(seconds);
        let result = if error.is_some() { Outcome::Error } else { Outcome::Ok };
        self.reconciles.get_or_create(&ReconcileLabels { controller, result }).inc();
        if let Some(error) = error {
            self.errors.get_or_create(&ErrorLabels { controller, error }).inc();
        }
    }

    pub fn wrote(&self, controller: &'static str, kind: &'static str) {
        self.writes.get_or_create(&WriteLabels { controller, kind }).inc();
    }

    pub fn planned(&self) {
        self.plans.inc();
    }
}
