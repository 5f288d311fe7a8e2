//! The Tenants' month so far, written by the leading meter: `status.cost`, the `BudgetAlert`
//! condition with a Warning event at 80% and at 100% of `spec.budget.monthly`, and
//! `Billed=False` for a tenant whose usage no PriceBook prices.

use std::{collections::HashMap, sync::atomic::AtomicU64};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use rust_decimal::{Decimal, prelude::ToPrimitive};
use tracing::warn;
use yiyun_crds::{Tenant, TenantCost};

use crate::{
    Error,
    calendar::Month,
    ledger::{Ledger, now},
    money::parse_decimal,
    statement::month_so_far,
};

/// The gauge of each tenant's subtree's month so far, in yuan.
pub(crate) type TenantCosts = Family<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>;

/// Writes the Tenants' costs, remembering the budget alert each was last given.
pub(crate) struct CostWriter {
    client: Client,
    gauge: TenantCosts,
    recorder: Recorder,
    /// The store may not show this writer's last write yet: what it last raised is kept here
    /// (and read from the status after a restart).
    budget_alerts: HashMap<String, String>,
}

impl CostWriter {
    pub(crate) fn new(client: Client, gauge: TenantCosts) -> CostWriter {
        let recorder =
            Recorder::new(client.clone(), Reporter { controller: "yiyun-billing".into(), instance: None });
        CostWriter { client, gauge, recorder, budget_alerts: HashMap::new() }
    }

    /// Writes each Tenant's month so far into `status.cost` and, for a tenant with a budget, its
    /// `BudgetAlert` condition, with a Warning event when the cost crosses 80% or 100% of it.
    /// Only what changed is written (`asOf` alone is not a change).
    pub(crate) async fn write(
        &mut self,
        ledger: &Ledger,
        tenants: &HashMap<String, Tenant>,
    ) -> Result<(), Error> {
        let at = now();
        let month = Month::of(at);
        let (statement, left_out) = month_so_far(ledger, at).await?;
        for (tenant, why) in &left_out {
            warn!(%tenant, %why, "the tenant's usage cannot be rated; its cost waits for a price");
        }
        let rollup = statement.rollup();
        let api: Api<Tenant> = Api::all(self.client.clone());
        // Replaced at once (no scrape sees some tenants missing), tenants gone dropped.
        self.gauge.clear();
        for (tenant, subtree) in tenants.keys().filter_map(|name| rollup.subtree.get(name).map(|s| (name, s)))
        {
            let yuan = subtree.yuan().to_f64().unwrap_or_default();
            self.gauge.get_or_create(&vec![("tenant", tenant.clone())]).set(yuan);
        }
        for tenant in tenants.values() {
            let name = tenant.name_any();
            let own = rollup.own.get(&name).copied().unwrap_or_default();
            let subtree = rollup.subtree.get(&name).copied().unwrap_or_default();
            let budget = tenant
                .spec
                .budget
                .as_ref()
                .and_then(|b| parse_decimal(&b.monthly).ok())
                .filter(|b| *b > Decimal::ZERO);
            let percent = budget.and_then(|b| (subtree.yuan() * Decimal::ONE_HUNDRED / b).floor().to_i64());
            let cost = TenantCost {
                month: month.to_string(),
                own: own.to_string(),
                subtree: subtree.to_string(),
                budget_used_percent: percent,
                as_of: Time(Timestamp::from_second(at).unwrap_or(Timestamp::UNIX_EPOCH)),
            };
            let previous = tenant.status.as_ref();
            let previous_alert =
                previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == "BudgetAlert"));
            let conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
            let alert = budget.zip(percent).map(|(budget, percent)| {
                let (raised, reason) = match percent {
                    100.. => (true, "Exceeded"),
                    80.. => (true, "Reached80Percent"),
                    _ => (false, "Below80Percent"),
                };
                let message = format!(
                    "{month} so far: {subtree} CNY of the monthly budget {budget} ({percent}%), whole subtree"
                );
                let generation = tenant.metadata.generation;
                yiyun_kube::conditions::condition(
                    conditions,
                    "BudgetAlert",
                    raised,
                    reason,
                    &message,
                    generation,
                )
            });
            // A tenant whose usage cannot be rated says so in its status; its cost waits.
            let unpriced = left_out.iter().find(|(t, _)| *t == name).map(|(_, why)| {
                let generation = tenant.metadata.generation;
                yiyun_kube::conditions::condition(
                    conditions,
                    "Billed",
                    false,
                    "UnpricedUsage",
                    why,
                    generation,
                )
            });
            let previous_unpriced = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Billed"));
            if let Some(unpriced) = unpriced {
                if previous_unpriced.is_some_and(|p| p.message == unpriced.message) {
                    continue;
                }
                let patch = serde_json::json!({"apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant",
                    "status": {"conditions": [unpriced]}});
                if let Err(error) = api
                    .patch_status(&name, &PatchParams::apply("yiyun-billing").force(), &Patch::Apply(&patch))
                    .await
                {
                    warn!(tenant = %name, %error, "cannot write the tenant's billing condition");
                }
                continue;
            }
            let unchanged_cost = previous
                .and_then(|s| s.cost.as_ref())
                .is_some_and(|c| TenantCost { as_of: c.as_of.clone(), ..cost.clone() } == *c);
            let unchanged_alert = match (&alert, previous_alert) {
                (Some(a), Some(p)) => a.reason == p.reason && a.message == p.message,
                (None, None) => true,
                _ => false,
            };
            if unchanged_cost && unchanged_alert && previous_unpriced.is_none() {
                continue;
            }
            let patch = serde_json::json!({
                "apiVersion": "yiyun.io/v1alpha1",
                "kind": "Tenant",
                "status": {"cost": cost, "conditions": alert.iter().collect::<Vec<_>>()},
            });
            match api
                .patch_status(&name, &PatchParams::apply("yiyun-billing").force(), &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(error) => {
                    warn!(tenant = %name, %error, "cannot write the tenant's cost; next round retries");
                    continue;
                }
            }
            let last =
                self.budget_alerts.get(&name).cloned().or_else(|| previous_alert.map(|p| p.reason.clone()));
            if let Some(alert) = &alert {
                self.budget_alerts.insert(name.clone(), alert.reason.clone());
            }
            let rose = |reason: &str| {
                alert.as_ref().is_some_and(|a| a.reason == reason)
                    && last.as_deref().is_none_or(|last| last != reason && last != "Exceeded")
            };
            for (reason, event) in
                [("Reached80Percent", "BudgetReached80Percent"), ("Exceeded", "BudgetExceeded")]
            {
                if rose(reason) {
                    let note = alert.as_ref().map(|a| a.message.clone());
                    let event = Event {
                        type_: EventType::Warning,
                        reason: event.into(),
                        note,
                        action: "Metering".into(),
                        secondary: None,
                    };
                    if let Err(error) = self.recorder.publish(&event, &tenant.object_ref(&())).await {
                        warn!(tenant = %name, %error, "cannot publish the budget event");
                    }
                }
            }
        }
        Ok(())
    }
}
