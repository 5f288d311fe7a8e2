//! Metering and billing: a ledger that never counts usage twice, rating against PriceBooks
//! (GB/T 37735 indicators: vCPU-hours, GiB-hours, GPU-hours, storage GiB-months, traffic GB),
//! and exports finance opens cleanly.
//!
//! The rules are pure and need no cluster or database: [`calendar`] (months in China Standard
//! Time), [`money`] (whole fen and the one rounding rule), [`meter`], [`prices`] (the catalog
//! of PriceBooks), [`rating`] (usage × prices → cells), [`bill`] (lines, totals, the tree) and
//! [`metering`] (what a pod or claim holds, from its lifecycle), [`reservation`] (quota held
//! but unused). The I/O: [`ledger`] (SQLite or
//! PostgreSQL), [`meter_controller`] (`yiyun billing run`), [`statement`] (open and closed
//! months), [`export`] and [`cli`].

pub mod bill;
pub mod calendar;
pub mod cli;
mod costs;
pub mod export;
pub mod http;
pub mod ledger;
pub mod meter;
pub mod meter_controller;
pub mod metering;
pub mod money;
pub mod pricebook;
pub mod prices;
pub mod rating;
pub mod reservation;
pub mod statement;
pub mod usage;

#[cfg(test)]
mod tests;

/// Errors of the billing component, each with a stable label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Admin(#[from] yiyun_admin::Error),
    #[error(transparent)]
    Rating(#[from] rating::RatingError),
    #[error(transparent)]
    Month(#[from] calendar::MonthError),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("cannot write XLSX: {0}")]
    Xlsx(#[from] rust_xlsxwriter::XlsxError),
    #[error("cannot write Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Close(#[from] statement::CloseError),
    #[error(transparent)]
    Input(#[from] cli::InputError),
    #[error("cannot serve bills on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Election(#[from] yiyun_kube::leader::Error),
    #[error("lost the leader lease; stopping so that another meter can take over")]
    LostLease,
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::Ledger(err) => err.label(),
            Error::Kube(_) => "kube",
            Error::Admin(err) => err.label(),
            Error::Rating(err) => err.label(),
            Error::Month(_) => "month",
            Error::Json(_) => "json",
            Error::Csv(_) => "csv",
            Error::Xlsx(_) => "xlsx",
            Error::Parquet(_) => "parquet",
            Error::Close(_) => "close",
            Error::Input(_) => "input",
            Error::Bind { .. } => "bind",
            Error::Election(_) => "election_config",
            Error::LostLease => "lost_lease",
        }
    }
}
