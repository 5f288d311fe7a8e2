//! Metering and billing: a ledger that never counts usage twice, rating against PriceBooks
//! (GB/T 37735 indicators: vCPU-hours, GiB-hours, GPU-hours, storage GiB-months, traffic GB),
//! and exports finance opens cleanly (CSV, XLSX, Parquet).
//!
//! The crate is reserved in the workspace layout; the metering and billing issue fills it in.
