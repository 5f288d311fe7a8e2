//! Metering and billing: a ledger that never counts usage twice, rating against PriceBooks
//! (GB/T 37735 indicators: vCPU-hours, GiB-hours, GPU-hours, storage GiB-months, traffic GB),
//! and exports finance opens cleanly.
//!
//! The rules are pure and need no cluster or database: [`calendar`] (months in China Standard
//! Time), [`money`] (whole fen and the one rounding rule), [`meter`], [`prices`] (the catalog
//! of PriceBooks), [`rating`] (usage × prices → cells) and [`bill`] (lines, totals, the tree).

pub mod bill;
pub mod calendar;
pub mod meter;
pub mod money;
pub mod pricebook;
pub mod prices;
pub mod rating;

#[cfg(test)]
mod tests;
