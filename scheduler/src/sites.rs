//! The East-West cost model from the ComputeSite objects.

use yiyun_crds::{ComputeSite, RegionClass};
use yiyun_engine::cost::{CostModel, Link, Site};

/// Every site's power price and PUE, and its links. A price that does not parse counts as
/// zero (the schema admits only decimals, so this does not happen).
pub fn cost_model<'a>(sites: impl IntoIterator<Item = &'a ComputeSite>) -> CostModel {
    let mut model = CostModel::default();
    let mut links = Vec::new();
    for site in sites {
        let name = site.metadata.name.clone().unwrap_or_default();
        model.add_site(Site {
            name: name.clone(),
            region: site.spec.region.clone(),
            east: site.spec.region_class == RegionClass::East,
            power_price: site.spec.power_price_per_k_wh.trim().parse().unwrap_or(0.0),
            pue: site.spec.pue,
        });
        for link in &site.spec.links {
            links.push((
                name.clone(),
                link.to.clone(),
                link.latency_ms,
                link.bandwidth_gbps,
                link.price_per_gb.clone(),
            ));
        }
    }
    for (from, to, latency_ms, bandwidth_gbps, price) in links {
        let link = Link { latency_ms, bandwidth_gbps, price_per_gb: price.trim().parse().unwrap_or(0.0) };
        model.add_link(&from, &to, link);
    }
    model
}
