//! Prometheus metrics of the controllers.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use yiyun_quota::{Plan, Resource};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
    resource: &'static str,
}

/// What every reconciler reports to, and the tenant tree's use of its quotas.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ReconcileLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    writes: Family<WriteLabels, Counter>,
    duration: Histogram,
    in_flight: Family<ControllerLabel, Gauge>,
    retrying: Family<ControllerLabel, Gauge>,
    plans: Counter,
    tenant_usage: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    tenant_quota: Family<TenantLabels, Gauge<f64, AtomicU64>>,
}

/// A reconcile running: counted in flight until dropped (finished, or cancelled with the
/// controller).
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            writes: Family::default(),
            duration: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            in_flight: Family::default(),
            retrying: Family::default(),
            plans: Counter::default(),
            tenant_usage: Family::default(),
            tenant_quota: Family::default(),
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
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, by controller",
            metrics.in_flight.clone(),
        );
        registry.register(
            "objects_retrying",
            "Objects whose last reconcile failed, waiting for their retry, by controller",
            metrics.retrying.clone(),
        );
        registry.register("tenant_plans", "Times the tenant tree plan was recomputed", metrics.plans.clone());
        registry.register(
            "tenant_usage",
            "What each tenant's subtree uses, by resource (cores, bytes, GPUs, pods)",
            metrics.tenant_usage.clone(),
        );
        registry.register(
            "tenant_quota",
            "What each tenant's subtree may use now, by resource; absent where unlimited",
            metrics.tenant_quota.clone(),
        );
        metrics
    }

    pub fn started(&self, controller: &'static str) -> InFlight {
        let gauge = self.in_flight.get_or_create(&ControllerLabel { controller }).clone();
        gauge.inc();
        InFlight(gauge)
    }

    pub fn retrying(&self, controller: &'static str, objects: usize) {
        self.retrying.get_or_create(&ControllerLabel { controller }).set(objects as i64);
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

    /// A new plan of the tenant tree after `previous`: the usage and quotas of the tenants whose
    /// part changed are set again, those of tenants gone dropped (the rest stand: a change
    /// touches few tenants, and setting ten thousand takes a tenth of a second).
    pub fn planned(&self, plan: &Plan, previous: &Plan) {
        self.plans.inc();
        let labels = |tenant: &str, resource: Resource| TenantLabels {
            tenant: tenant.to_string(),
            resource: resource.tenant_key(),
        };
        for gone in previous.tenants.keys().filter(|name| !plan.tenants.contains_key(*name)) {
            for resource in Resource::ALL {
                self.tenant_usage.remove(&labels(gone, resource));
                self.tenant_quota.remove(&labels(gone, resource));
            }
        }
        for tenant in plan.changed_since(previous) {
            let Some(planned) = plan.tenants.get(tenant) else { continue };
            for resource in Resource::ALL {
                let labels = labels(tenant, resource);
                let usage = planned.subtree_usage.amount(resource);
                self.tenant_usage.get_or_create(&labels).set(usage.0 as f64 / 1000.0);
                match planned.allocated.get(resource) {
                    Some(quota) => {
                        self.tenant_quota.get_or_create(&labels).set(quota.0 as f64 / 1000.0);
                    }
                    None => {
                        self.tenant_quota.remove(&labels);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use yiyun_quota::{Milli, Plan, Resource, TenantPlan};

    use super::*;

    fn plan(tenants: &[(&str, i128, Option<i128>)]) -> Plan {
        let mut plan = Plan::default();
        for (name, cpu_used, cpu_max) in tenants {
            let mut planned = TenantPlan::default();
            planned.subtree_usage.set(Resource::Cpu, Milli(*cpu_used));
            if let Some(max) = cpu_max {
                planned.allocated.set(Resource::Cpu, Milli(*max));
            }
            plan.tenants.insert(name.to_string(), planned);
        }
        plan
    }

    #[test]
    fn tenant_gauges_follow_the_changed_tenants_and_drop_those_gone() {
        let metrics = Metrics::register(&mut Registry::default());
        let cpu = |tenant: &str| TenantLabels { tenant: tenant.into(), resource: "cpu" };
        let first = plan(&[("province", 4000, Some(16_000)), ("city", 1000, None)]);
        metrics.planned(&first, &Plan::default());
        assert_eq!(metrics.tenant_usage.get_or_create(&cpu("province")).get(), 4.0, "cores");
        assert_eq!(metrics.tenant_quota.get_or_create(&cpu("province")).get(), 16.0);
        assert!(!metrics.tenant_quota.remove(&cpu("city")), "no ceiling, no quota series");

        let second = plan(&[("province", 6000, None)]);
        metrics.planned(&second, &first);
        assert_eq!(metrics.tenant_usage.get_or_create(&cpu("province")).get(), 6.0);
        assert!(!metrics.tenant_quota.remove(&cpu("province")), "the ceiling lifted, its series gone");
        assert!(!metrics.tenant_usage.remove(&cpu("city")), "a tenant gone leaves no series");
    }
}
