//! `yiyun billing bill|close|export`: the month's figures from the ledger, for finance.

use std::path::PathBuf;

use crate::{
    Error,
    calendar::Month,
    export::{self, Format, Headers},
    ledger::{Ledger, now},
    statement::{close, statement},
};

/// The ledger and month every command reads.
#[derive(clap::Args, Clone, Debug)]
pub struct MonthArgs {
    /// The ledger: `sqlite://PATH` or `postgres://USER@HOST/DATABASE`.
    #[arg(long, env = "YIYUN_BILLING_DATABASE", default_value = "sqlite://yiyun-billing.db")]
    pub database: String,
    /// The month, YYYY-MM (China Standard Time); the current month when absent.
    #[arg(long)]
    pub month: Option<String>,
}

impl MonthArgs {
    fn month(&self) -> Result<Month, Error> {
        match &self.month {
            Some(text) => Ok(text.parse()?),
            None => Ok(Month::of(now())),
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct BillArgs {
    #[command(flatten)]
    pub month: MonthArgs,
    /// Only this tenant and its subtree.
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub month: MonthArgs,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// Only this tenant and its subtree.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Column headers and sheet names of CSV and XLSX: Chinese (the default) or English.
    #[arg(long, value_enum, default_value = "chinese")]
    pub headers: Headers,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Errors of the commands that are about their input, not the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("tenant {0:?} does not exist in the ledger (`yiyun billing bill` lists the tenants)")]
    NoSuchTenant(String),
    #[error("cannot write {path}: {why}")]
    Output { path: String, why: String },
}

async fn checked_tenant(ledger: &Ledger, tenant: Option<&str>) -> Result<(), Error> {
    if let Some(tenant) = tenant
        && !ledger.tenants().await?.contains_key(tenant)
    {
        return Err(Error::Input(InputError::NoSuchTenant(tenant.to_string())));
    }
    Ok(())
}

/// `yiyun billing bill`: the tenant tree's bill for the month.
pub async fn bill(args: BillArgs) -> Result<String, Error> {
    let month = args.month.month()?;
    let ledger = Ledger::connect(&args.month.database).await?;
    checked_tenant(&ledger, args.tenant.as_deref()).await?;
    let statement = statement(&ledger, month, now(), args.tenant.as_deref()).await?;
    Ok(export::tree(&statement, args.tenant.as_deref()))
}

/// `yiyun billing close`: freezes the month.
pub async fn close_month(args: MonthArgs) -> Result<String, Error> {
    let month = args.month()?;
    let ledger = Ledger::connect(&args.database).await?;
    let statement = close(&ledger, month, now()).await?;
    Ok(format!(
        "{month} closed at {}: {} CNY over {} lines; its figures no longer change\n",
        crate::calendar::format_local(statement.closed_at.unwrap_or_default()),
        statement.total(),
        statement.rating.lines().len()
    ))
}

/// `yiyun billing export`: the month in a format finance reads; the file is written whole or
/// not at all.
pub async fn export_month(args: ExportArgs) -> Result<Option<Vec<u8>>, Error> {
    let month = args.month.month()?;
    let ledger = Ledger::connect(&args.month.database).await?;
    checked_tenant(&ledger, args.tenant.as_deref()).await?;
    let statement = statement(&ledger, month, now(), args.tenant.as_deref()).await?;
    let bytes = export::render(&statement, args.format, args.tenant.as_deref(), args.headers)?;
    match args.out {
        None => Ok(Some(bytes)),
        Some(path) => {
            write_whole(&path, &bytes)?;
            Ok(None)
        }
    }
}

/// Writes beside the target and renames: a reader never sees half a file.
fn write_whole(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    let failed = |err: std::io::Error| {
        Error::Input(InputError::Output { path: path.display().to_string(), why: err.to_string() })
    };
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}
