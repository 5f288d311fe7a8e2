//! The East-West cost model: what running a pod at a site costs in energy, in moving its data
//! there and in latency, and whether the site can serve the pod's latency class and deadline at
//! all. "East Data, West Compute": batch work moves to cheap green power in the west; realtime
//! work stays close to its data.

use std::collections::HashMap;

use crate::{
    filter::Reason,
    model::{LatencyClass, Pod},
};

/// A site's price of power.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    pub name: String,
    pub region: String,
    pub east: bool,
    /// CNY per kWh.
    pub power_price: f64,
    /// Facility power over IT power.
    pub pue: f64,
}

/// A network link between two sites (both directions).
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub latency_ms: f64,
    pub bandwidth_gbps: f64,
    /// CNY per GB moved.
    pub price_per_gb: f64,
}

/// What running a pod at one site costs, in CNY.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SiteCost {
    pub energy: f64,
    pub data_movement: f64,
    pub latency_penalty: f64,
    /// Seconds to move the pod's data to the site.
    pub transfer_seconds: f64,
}

impl SiteCost {
    pub fn total(&self) -> f64 {
        self.energy + self.data_movement + self.latency_penalty
    }
}

/// Sites, links and the rates that turn a pod into energy and latency costs.
#[derive(Clone, Debug, PartialEq)]
pub struct CostModel {
    sites: HashMap<String, Site>,
    links: HashMap<(String, String), Link>,
    /// IT power of one busy CPU core, in watts.
    pub watts_per_core: f64,
    /// IT power of one busy GPU, in watts.
    pub watts_per_gpu: f64,
    /// Runtime assumed for a pod that gives none, in seconds.
    pub default_runtime_seconds: u64,
    /// Largest round-trip latency from a realtime pod to its data, in ms.
    pub realtime_limit_ms: f64,
    /// CNY per ms of latency to the data per hour of runtime, for interactive pods (realtime
    /// pods pay ten times as much, so they take the closest site that qualifies).
    pub latency_price: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            sites: HashMap::new(),
            links: HashMap::new(),
            watts_per_core: 12.0,
            watts_per_gpu: 300.0,
            default_runtime_seconds: 3600,
            realtime_limit_ms: 10.0,
            latency_price: 0.05,
        }
    }
}

impl CostModel {
    pub fn add_site(&mut self, site: Site) {
        self.sites.insert(site.name.clone(), site);
    }

    pub fn add_link(&mut self, from: &str, to: &str, link: Link) {
        self.links.insert(ordered(from, to), link);
    }

    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.get(name)
    }

    pub fn sites(&self) -> impl Iterator<Item = &Site> {
        self.sites.values()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The link between two sites; a site reaches itself at no latency and no cost.
    pub fn link(&self, from: &str, to: &str) -> Option<Link> {
        if from == to {
            return Some(Link { latency_ms: 0.0, bandwidth_gbps: f64::INFINITY, price_per_gb: 0.0 });
        }
        self.links.get(&ordered(from, to)).cloned()
    }

    /// What `pod` costs at `site`, or why the site cannot serve it. A site the model does not
    /// know costs nothing, so clusters without sites are placed on resources alone.
    pub fn evaluate(&self, pod: &Pod, site: &str) -> Result<SiteCost, Reason> {
        let Some(priced) = self.sites.get(site) else { return Ok(SiteCost::default()) };
        let runtime = pod.expected_runtime_seconds.unwrap_or(self.default_runtime_seconds) as f64;
        let hours = runtime / 3600.0;
        let gpus = pod.gpu.milli() as f64 / 1000.0;
        let watts = pod.requests.cpu_milli as f64 / 1000.0 * self.watts_per_core + gpus * self.watts_per_gpu;
        let energy = watts / 1000.0 * hours * priced.pue * priced.power_price;
        let Some(data) = &pod.data else {
            return Ok(SiteCost { energy, ..SiteCost::default() });
        };
        let Some(link) = self.link(&data.site, site) else {
            return Err(if pod.latency_class == LatencyClass::Realtime {
                Reason::LatencyLimit
            } else {
                Reason::Deadline
            });
        };
        if pod.latency_class == LatencyClass::Realtime && link.latency_ms > self.realtime_limit_ms {
            return Err(Reason::LatencyLimit);
        }
        let transfer_seconds =
            if data.site == site { 0.0 } else { data.gigabytes as f64 * 8.0 / link.bandwidth_gbps };
        if let Some(deadline) = pod.deadline_seconds
            && transfer_seconds + runtime > deadline as f64
        {
            return Err(Reason::Deadline);
        }
        let latency_penalty = match pod.latency_class {
            LatencyClass::Realtime => 10.0 * self.latency_price * link.latency_ms * hours,
            LatencyClass::Interactive => self.latency_price * link.latency_ms * hours,
            LatencyClass::Batch | LatencyClass::Archive => 0.0,
        };
        let data_movement = if data.site == site { 0.0 } else { data.gigabytes as f64 * link.price_per_gb };
        Ok(SiteCost { energy, data_movement, latency_penalty, transfer_seconds })
    }

    /// The east site closest to the pod's data (the data site itself when it is east): where
    /// work runs when nobody moves it west, the baseline of the cost comparison.
    pub fn nearest_east_site(&self, data_site: &str) -> Option<&Site> {
        self.sites
            .values()
            .filter(|site| site.east)
            .filter_map(|site| self.link(data_site, &site.name).map(|link| (link.latency_ms, site)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)))
            .map(|(_, site)| site)
    }
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DataLocality, Resources};

    fn model() -> CostModel {
        let mut model = CostModel::default();
        model.add_site(Site {
            name: "wuhu".into(),
            region: "anhui".into(),
            east: true,
            power_price: 0.62,
            pue: 1.4,
        });
        model.add_site(Site {
            name: "qingyang".into(),
            region: "gansu".into(),
            east: false,
            power_price: 0.28,
            pue: 1.15,
        });
        model.add_link(
            "wuhu",
            "qingyang",
            Link { latency_ms: 28.0, bandwidth_gbps: 100.0, price_per_gb: 0.02 },
        );
        model
    }

    fn pod(class: LatencyClass) -> Pod {
        let mut pod = Pod::new("p", Resources::new(32_000, 0));
        pod.gpu = crate::model::GpuRequest::Whole(4);
        pod.latency_class = class;
        pod.data = Some(DataLocality { site: "wuhu".into(), gigabytes: 500 });
        pod.expected_runtime_seconds = Some(24 * 3600);
        pod
    }

    #[test]
    fn batch_work_is_cheaper_in_the_west() {
        let model = model();
        let east = model.evaluate(&pod(LatencyClass::Batch), "wuhu").expect("east serves batch");
        let west = model.evaluate(&pod(LatencyClass::Batch), "qingyang").expect("west serves batch");
        assert!(west.total() < east.total(), "west {west:?} east {east:?}");
        assert_eq!(west.data_movement, 500.0 * 0.02);
        assert_eq!(west.transfer_seconds, 40.0);
    }

    #[test]
    fn realtime_work_stays_within_its_latency_limit() {
        let model = model();
        assert_eq!(model.evaluate(&pod(LatencyClass::Realtime), "qingyang"), Err(Reason::LatencyLimit));
        assert!(model.evaluate(&pod(LatencyClass::Realtime), "wuhu").is_ok());
    }

    #[test]
    fn a_deadline_too_short_for_the_transfer_rules_the_site_out() {
        let model = model();
        let mut pod = pod(LatencyClass::Batch);
        pod.deadline_seconds = Some(24 * 3600 + 10);
        assert_eq!(model.evaluate(&pod, "qingyang"), Err(Reason::Deadline));
        assert!(model.evaluate(&pod, "wuhu").is_ok());
        assert_eq!(model.nearest_east_site("qingyang").map(|s| s.name.as_str()), Some("wuhu"));
    }
}
