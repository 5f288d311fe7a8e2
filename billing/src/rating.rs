//! Rating: usage over time × the prices in force → cells of money, exact to the fen.
//!
//! A month is cut into slots at every hour and at every instant a PriceBook starts or stops,
//! so that one price holds over each slot and a price change splits usage exactly at its time.
//! Usage is summed per line (tenant, site, meter, GPU model) and slot in exact integer
//! base-unit-seconds; each cell is priced exactly and costs the change of its line's running
//! total rounded to the fen (see [`crate::money`]). Everything the bills show is a sum of cells.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use crate::{
    calendar::{HOUR, Month, Seconds, format_local},
    meter::Meter,
    money::Fen,
    prices::Catalog,
};

/// Usage of one resource by one tenant at one site: `amount` base units (milli-vCPU, bytes,
/// milli-GPU) held from `start` to `end`, or moved at `start` for an instant meter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub tenant: String,
    pub site: String,
    pub region_class: String,
    pub meter: Meter,
    /// The GPU model for [`Meter::Gpu`]; empty otherwise.
    pub gpu_model: String,
    pub amount: i64,
    pub start: Seconds,
    pub end: Seconds,
}

/// What rating needs to know of a tenant: its level (for discounts); the rest is for bills.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantInfo {
    pub name: String,
    pub display_name: String,
    pub parent: Option<String>,
    pub level: String,
    pub cost_center: Option<String>,
}

/// What a line of a bill is of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineKey {
    pub tenant: String,
    pub site: String,
    pub region_class: String,
    pub meter: Meter,
    pub gpu_model: String,
    /// For an adjustment, the closed month it corrects (`YYYY-MM`); empty for the month's own
    /// usage.
    pub corrects: String,
}

/// A price as applied: per unit, the tenant's discount, and the book it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppliedPrice {
    pub per_unit: Decimal,
    pub discount: Decimal,
    pub book: String,
}

/// Usage of one line over one slot, and what it costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Index into [`Rating::keys`].
    pub line: usize,
    pub start: Seconds,
    pub end: Seconds,
    /// Base-unit-seconds (base units for an instant meter).
    pub usage: i128,
    /// Index into [`Rating::prices`].
    pub price: usize,
    pub amount: Fen,
}

/// A month rated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rating {
    pub month: Month,
    pub keys: Vec<LineKey>,
    pub prices: Vec<AppliedPrice>,
    /// Ordered by line, then time.
    pub cells: Vec<Cell>,
}

/// Why a month cannot be rated. Nothing is billed half-way: rating is all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    #[error(
        "no PriceBook in force prices {what} at {place} at {at} (tenant {tenant}): add {field} to a \
         book for that site, its region class or every site"
    )]
    Unpriced { what: String, field: String, place: String, tenant: String, at: String },
    #[error("usage of tenant {tenant} ({meter}) is malformed: {why}")]
    MalformedUsage { tenant: String, meter: &'static str, why: String },
    #[error("the amount of tenant {tenant} ({meter}) at {at} is too large to bill")]
    Overflow { tenant: String, meter: &'static str, at: String },
}

impl RatingError {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RatingError::Unpriced { .. } => "unpriced",
            RatingError::MalformedUsage { .. } => "malformed_usage",
            RatingError::Overflow { .. } => "overflow",
        }
    }
}

/// Per line: changes of the usage rate at slot starts, and usage added to single slots.
#[derive(Default)]
struct Events {
    rate: Vec<(usize, i128)>,
    direct: Vec<(usize, i128)>,
}

/// Rates `month`'s part of `usages` against `catalog`; `tenants` give levels for discounts.
pub fn rate<'a>(
    month: Month,
    usages: impl IntoIterator<Item = &'a Usage>,
    catalog: &Catalog,
    tenants: &HashMap<String, TenantInfo>,
) -> Result<Rating, RatingError> {
    let (start, end) = (month.start(), month.end());
    let changes = catalog.changes_within(start, end);
    let mut bounds: Vec<Seconds> = (start..=end).step_by(HOUR as usize).collect();
    bounds.extend(&changes);
    bounds.sort_unstable();
    bounds.dedup();
    let slots = bounds.len() - 1;
    // Slots between the same two catalog changes share their prices.
    let epochs: Vec<usize> = bounds[..slots].iter().map(|&b| changes.partition_point(|&c| c <= b)).collect();
    // The slot holding instant `t` of the month.
    let slot_of = |t: Seconds| bounds.partition_point(|&b| b <= t) - 1;

    let mut lines: BTreeMap<LineKey, Events> = BTreeMap::new();
    for usage in usages {
        check(usage)?;
        let key = LineKey {
            tenant: usage.tenant.clone(),
            site: usage.site.clone(),
            region_class: usage.region_class.clone(),
            meter: usage.meter,
            gpu_model: if usage.meter.has_model() { usage.gpu_model.clone() } else { String::new() },
            corrects: String::new(),
        };
        let amount = i128::from(usage.amount);
        if usage.meter.is_instant() {
            if (start..end).contains(&usage.start) && amount > 0 {
                lines.entry(key).or_default().direct.push((slot_of(usage.start), amount));
            }
            continue;
        }
        let (from, to) = (usage.start.max(start), usage.end.min(end));
        if from >= to || amount == 0 {
            continue;
        }
        let events = lines.entry(key).or_default();
        let (first, last) = (slot_of(from), if to == end { slots } else { slot_of(to) });
        if first == last {
            events.direct.push((first, amount * i128::from(to - from)));
            continue;
        }
        events.direct.push((first, amount * i128::from(bounds[first + 1] - from)));
        events.rate.push((first + 1, amount));
        if last < slots {
            events.rate.push((last, -amount));
            if to > bounds[last] {
                events.direct.push((last, amount * i128::from(to - bounds[last])));
            }
        }
    }

    let mut rating =
        Rating { month, keys: Vec::with_capacity(lines.len()), prices: Vec::new(), cells: Vec::new() };
    let mut price_index: HashMap<AppliedPrice, usize> = HashMap::new();
    for (line, (key, mut events)) in lines.into_iter().enumerate() {
        events.rate.sort_unstable();
        events.direct.sort_unstable();
        let level = tenants.get(&key.tenant).map_or("", |t| t.level.as_str());
        let per_unit = key.meter.per_unit(month.seconds());
        let mut cached: Option<(usize, Option<usize>)> = None;
        let (mut running, mut billed) = (Decimal::ZERO, Fen::ZERO);
        let (mut rate, mut next_rate, mut next_direct) = (0i128, 0, 0);
        let mut slot = 0;
        while slot < slots {
            while next_rate < events.rate.len() && events.rate[next_rate].0 == slot {
                rate += events.rate[next_rate].1;
                next_rate += 1;
            }
            let mut usage = rate * i128::from(bounds[slot + 1] - bounds[slot]);
            while next_direct < events.direct.len() && events.direct[next_direct].0 == slot {
                usage += events.direct[next_direct].1;
                next_direct += 1;
            }
            if usage > 0 {
                let at = bounds[slot];
                // Prices hold between catalog changes: look them up again only past one.
                let price = match cached {
                    Some((epoch, price)) if epoch == epochs[slot] => price,
                    _ => {
                        let price = applied_price(catalog, &key, level, at)?.map(|applied| {
                            let next = rating.prices.len();
                            let price = *price_index.entry(applied.clone()).or_insert(next);
                            if price == next {
                                rating.prices.push(applied);
                            }
                            price
                        });
                        cached = Some((epochs[slot], price));
                        price
                    }
                };
                // Unpriced quota held unused is free: no cell.
                if let Some(price) = price {
                    let overflow = || RatingError::Overflow {
                        tenant: key.tenant.clone(),
                        meter: key.meter.key(),
                        at: format_local(at),
                    };
                    running = cost(usage, &rating.prices[price], per_unit)
                        .and_then(|exact| running.checked_add(exact))
                        .ok_or_else(overflow)?;
                    let total = Fen::round(running).ok_or_else(overflow)?;
                    let amount = Fen(total.0 - billed.0);
                    billed = total;
                    rating.cells.push(Cell { line, start: at, end: bounds[slot + 1], usage, price, amount });
                }
            }
            slot += 1;
            if rate == 0 {
                // Nothing runs until the next event: skip the idle slots.
                let next = [events.rate.get(next_rate), events.direct.get(next_direct)]
                    .into_iter()
                    .flatten()
                    .map(|&(slot, _)| slot)
                    .min();
                match next {
                    Some(next) => slot = slot.max(next),
                    None => break,
                }
            }
        }
        rating.keys.push(key);
    }
    Ok(rating)
}

fn check(usage: &Usage) -> Result<(), RatingError> {
    let malformed = |why: String| RatingError::MalformedUsage {
        tenant: usage.tenant.clone(),
        meter: usage.meter.key(),
        why,
    };
    if usage.amount < 0 {
        return Err(malformed(format!("negative amount {}", usage.amount)));
    }
    if usage.end < usage.start {
        return Err(malformed(format!(
            "ends at {} before it starts at {}",
            format_local(usage.end),
            format_local(usage.start)
        )));
    }
    if usage.meter.has_model() && usage.gpu_model.is_empty() {
        return Err(malformed("GPU usage without a GPU model".into()));
    }
    Ok(())
}

/// The price of a line at `at`; `None` for quota held unused that no book prices (holding quota
/// is free unless a book says otherwise), an error for any other unpriced usage.
fn applied_price(
    catalog: &Catalog,
    key: &LineKey,
    level: &str,
    at: Seconds,
) -> Result<Option<AppliedPrice>, RatingError> {
    let found = catalog.price(&key.site, &key.region_class, key.meter, &key.gpu_model, at);
    if found.is_none() && matches!(key.meter, Meter::ReservedCpu | Meter::ReservedMemory | Meter::ReservedGpu)
    {
        return Ok(None);
    }
    let price = found.ok_or_else(|| {
        let (what, field) = match key.meter {
            Meter::Gpu => (
                format!("GPU-hours of model {}", key.gpu_model),
                format!("spec.prices.gpuHour[{}]", key.gpu_model),
            ),
            meter => (format!("{} ({})", meter.key(), meter.unit()), price_field(meter).to_string()),
        };
        RatingError::Unpriced {
            what,
            field,
            place: format!("site {:?} (region class {:?})", key.site, key.region_class),
            tenant: key.tenant.clone(),
            at: format_local(at),
        }
    })?;
    Ok(Some(AppliedPrice {
        per_unit: price.per_unit,
        discount: catalog.discount(&key.site, &key.region_class, level, at),
        book: price.book.to_string(),
    }))
}

/// The PriceBook field of a meter's price.
pub fn price_field(meter: Meter) -> &'static str {
    match meter {
        Meter::Cpu | Meter::CpuOverRequest => "spec.prices.cpuCoreHour",
        Meter::Memory | Meter::MemoryOverRequest => "spec.prices.memoryGiBHour",
        Meter::Gpu => "spec.prices.gpuHour",
        Meter::Storage => "spec.prices.storageGiBMonth",
        Meter::CrossRegion => "spec.prices.crossRegionGB",
        Meter::ReservedCpu => "spec.prices.reserved.cpuCoreHour",
        Meter::ReservedMemory => "spec.prices.reserved.memoryGiBHour",
        Meter::ReservedGpu => "spec.prices.reserved.gpuHour",
    }
}

/// usage × price × (1 − discount) ÷ base-unit-seconds per unit, in yuan, unrounded (28
/// significant digits).
fn cost(usage: i128, price: &AppliedPrice, per_unit: i128) -> Option<Decimal> {
    let usage = Decimal::try_from_i128_with_scale(usage, 0).ok()?;
    let per_unit = Decimal::try_from_i128_with_scale(per_unit, 0).ok()?;
    let gross = usage.checked_mul(price.per_unit)?.checked_mul(Decimal::ONE.checked_sub(price.discount)?)?;
    gross.checked_div(per_unit)
}
