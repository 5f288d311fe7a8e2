//! What finance reads: a month's statement as CSV (UTF-8 with a BOM and Chinese headers, so
//! Excel and WPS open it cleanly), XLSX (a summary and a detail sheet), Parquet (one row per
//! tenant, resource, site and hour, for data platforms), JSON, and the tenant tree as text.

use std::{fmt::Write as _, sync::Arc};

use parquet::{
    errors::ParquetError,
    file::{properties::WriterProperties, writer::SerializedFileWriter},
};
use rust_xlsxwriter::{Format as CellFormat, Workbook, XlsxError};
use serde::Serialize;

use crate::{
    bill::{Line, QUANTITY_DECIMALS},
    calendar::{format_local, format_rfc3339},
    statement::Statement,
};

/// The languages of column headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Headers {
    Chinese,
    English,
}

/// The formats a statement is exported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Xlsx,
    Parquet,
    Json,
}

impl Format {
    /// The format of a name (`csv`, `xlsx`, `parquet`, `json`).
    pub fn from_name(name: &str) -> Option<Format> {
        <Format as clap::ValueEnum>::from_str(name, false).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
            Format::Parquet => "parquet",
            Format::Json => "json",
        }
    }

    /// The media type of the format, for HTTP.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Json => "application/json",
        }
    }
}

/// A statement in `format`, of every tenant or of `subtree_of`'s subtree.
pub fn render(
    statement: &Statement,
    format: Format,
    subtree_of: Option<&str>,
    headers: Headers,
) -> Result<Vec<u8>, crate::Error> {
    Ok(match format {
        Format::Csv => csv(statement, subtree_of, headers)?,
        Format::Xlsx => xlsx(statement, subtree_of, headers)?,
        Format::Parquet => parquet(statement, subtree_of)?,
        Format::Json => json(statement, subtree_of)?,
    })
}

/// One bill line, as every format writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LineRow {
    pub month: String,
    pub cost_center: String,
    pub tenant: String,
    pub tenant_name: String,
    pub parent: String,
    pub site: String,
    pub region_class: String,
    pub resource: String,
    pub gpu_model: String,
    pub from: String,
    pub to: String,
    pub quantity: String,
    pub unit: String,
    pub unit_price: String,
    pub discount: String,
    pub amount: String,
    pub price_book: String,
    /// For an adjustment line, the closed month it corrects.
    pub corrects: String,
}

const CHINESE: [&str; 18] = [
    "账期",
    "成本中心",
    "租户",
    "租户名称",
    "上级租户",
    "站点",
    "区域类别",
    "资源",
    "GPU 型号",
    "计费开始",
    "计费结束",
    "用量",
    "单位",
    "单价(元)",
    "折扣",
    "金额(元)",
    "价格表",
    "更正账期",
];
const ENGLISH: [&str; 18] = [
    "month",
    "cost_center",
    "tenant",
    "tenant_name",
    "parent",
    "site",
    "region_class",
    "resource",
    "gpu_model",
    "from",
    "to",
    "quantity",
    "unit",
    "unit_price_cny",
    "discount",
    "amount_cny",
    "price_book",
    "corrects_month",
];

/// The bill lines of a statement, in tree order, optionally of one tenant's subtree.
pub fn line_rows(statement: &Statement, subtree_of: Option<&str>, headers: Headers) -> Vec<LineRow> {
    let rating = &statement.rating;
    let rollup = statement.rollup();
    let lines = rating.lines();
    let in_scope = scope(statement, subtree_of);
    let mut rows = Vec::with_capacity(lines.len());
    for (tenant, _) in rollup.order.iter().filter(|(name, _)| in_scope.contains(name)) {
        let info = statement.tenants.get(tenant);
        for line in lines.iter().filter(|l| &rating.keys[l.key].tenant == tenant) {
            rows.push(line_row(statement, line, info, &rollup.cost_center[tenant], headers));
        }
    }
    rows
}

/// The tenants in scope: all, or `tenant` and its descendants.
pub fn scope(statement: &Statement, subtree_of: Option<&str>) -> std::collections::HashSet<String> {
    let rollup = statement.rollup();
    let Some(root) = subtree_of else { return rollup.order.into_iter().map(|(name, _)| name).collect() };
    let mut in_scope = std::collections::HashSet::new();
    let mut depth_of_root = None;
    for (name, depth) in rollup.order {
        match depth_of_root {
            None if name == root => {
                depth_of_root = Some(depth);
                in_scope.insert(name);
            }
            Some(root_depth) if depth > root_depth => {
                in_scope.insert(name);
            }
            Some(_) => break,
            None => {}
        }
    }
    in_scope
}

fn line_row(
    statement: &Statement,
    line: &Line,
    info: Option<&crate::rating::TenantInfo>,
    cost_center: &str,
    headers: Headers,
) -> LineRow {
    let rating = &statement.rating;
    let key = &rating.keys[line.key];
    let price = &rating.prices[line.price];
    let (resource, unit) = match headers {
        Headers::Chinese => (key.meter.chinese(), key.meter.chinese_unit()),
        Headers::English => (key.meter.key(), key.meter.unit()),
    };
    LineRow {
        month: statement.month().to_string(),
        cost_center: cost_center.to_string(),
        tenant: key.tenant.clone(),
        tenant_name: info.map(|t| t.display_name.clone()).unwrap_or_default(),
        parent: info.and_then(|t| t.parent.clone()).unwrap_or_default(),
        site: key.site.clone(),
        region_class: key.region_class.clone(),
        resource: resource.to_string(),
        gpu_model: key.gpu_model.clone(),
        from: format_local(line.from),
        to: format_local(line.to),
        quantity: format!("{:.*}", QUANTITY_DECIMALS as usize, rating.quantity(line.key, line.usage)),
        unit: unit.to_string(),
        unit_price: price.per_unit.normalize().to_string(),
        discount: price.discount.normalize().to_string(),
        amount: line.amount.to_string(),
        price_book: price.book.clone(),
        corrects: key.corrects.clone(),
    }
}

/// The bill lines as CSV: UTF-8 with a byte-order mark (Excel reads UTF-8 only with one),
/// CRLF line ends, every field quoted where needed.
pub fn csv(statement: &Statement, subtree_of: Option<&str>, headers: Headers) -> Result<Vec<u8>, csv::Error> {
    let mut out = Vec::from("\u{feff}".as_bytes());
    {
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .terminator(csv::Terminator::CRLF)
            .from_writer(&mut out);
        writer.write_record(match headers {
            Headers::Chinese => CHINESE,
            Headers::English => ENGLISH,
        })?;
        for row in line_rows(statement, subtree_of, headers) {
            writer.serialize(row)?;
        }
        writer.flush()?;
    }
    Ok(out)
}

#[derive(Serialize)]
struct JsonStatement {
    month: String,
    currency: &'static str,
    status: &'static str,
    closed_at: Option<String>,
    as_of: String,
    rounding: &'static str,
    total: String,
    cost_centers: Vec<JsonCostCenter>,
    tenants: Vec<JsonTenant>,
}

#[derive(Serialize)]
struct JsonCostCenter {
    cost_center: String,
    amount: String,
}

#[derive(Serialize)]
struct JsonTenant {
    tenant: String,
    tenant_name: String,
    parent: Option<String>,
    level: String,
    cost_center: String,
    own: String,
    subtree: String,
    /// The tenant's own cost on each day of the month, from the 1st.
    days: Vec<String>,
    lines: Vec<LineRow>,
}

/// The rounding rule, as the exports state it.
pub const ROUNDING: &str = "each line's exact running cost rounded to the fen, half to even (GB/T 8170); \
                            every total is a sum of whole fen";

/// The whole statement as JSON: totals per cost centre, each tenant's own and subtree cost
/// and its lines, amounts as decimal strings.
pub fn json(statement: &Statement, subtree_of: Option<&str>) -> Result<Vec<u8>, serde_json::Error> {
    let rollup = statement.rollup();
    let in_scope = scope(statement, subtree_of);
    let lines = line_rows(statement, subtree_of, Headers::English);
    let daily = statement.rating.daily();
    let days_in_month = (statement.month().seconds() / crate::calendar::DAY) as usize;
    let tenants: Vec<JsonTenant> = rollup
        .order
        .iter()
        .filter(|(name, _)| in_scope.contains(name))
        .map(|(name, _)| {
            let info = statement.tenants.get(name);
            JsonTenant {
                tenant: name.clone(),
                tenant_name: info.map(|t| t.display_name.clone()).unwrap_or_default(),
                parent: info.and_then(|t| t.parent.clone()),
                level: info.map(|t| t.level.clone()).unwrap_or_default(),
                cost_center: rollup.cost_center[name].clone(),
                own: rollup.own[name].to_string(),
                subtree: rollup.subtree[name].to_string(),
                days: match daily.get(name) {
                    Some(days) => days.iter().map(ToString::to_string).collect(),
                    None => vec![crate::money::Fen::ZERO.to_string(); days_in_month],
                },
                lines: lines.iter().filter(|l| &l.tenant == name).cloned().collect(),
            }
        })
        .collect();
    let total: crate::money::Fen = tenants.iter().map(|t| rollup.own[&t.tenant]).sum();
    let mut centers: std::collections::BTreeMap<String, crate::money::Fen> = Default::default();
    for t in &tenants {
        let center = centers.entry(t.cost_center.clone()).or_default();
        *center = *center + rollup.own[&t.tenant];
    }
    let document = JsonStatement {
        month: statement.month().to_string(),
        currency: "CNY",
        status: if statement.closed_at.is_some() { "closed" } else { "open" },
        closed_at: statement.closed_at.map(format_rfc3339),
        as_of: format_rfc3339(statement.as_of),
        rounding: ROUNDING,
        total: total.to_string(),
        cost_centers: centers
            .into_iter()
            .map(|(cost_center, amount)| JsonCostCenter { cost_center, amount: amount.to_string() })
            .collect(),
        tenants,
    };
    let mut out = serde_json::to_vec_pretty(&document)?;
    out.push(b'\n');
    Ok(out)
}

/// The tenant tree with each tenant's own and subtree cost, for a terminal.
pub fn tree(statement: &Statement, subtree_of: Option<&str>) -> String {
    let rollup = statement.rollup();
    let in_scope = scope(statement, subtree_of);
    let state = match statement.closed_at {
        Some(closed) => format!("closed {}", format_local(closed)),
        None => format!("open, to {}", format_local(statement.as_of)),
    };
    let mut out = format!("{} ({state}), CNY\n", statement.month());
    let _ = writeln!(out, "{:<44} {:>14} {:>14}  cost centre", "tenant", "own", "subtree");
    let mut total = crate::money::Fen::ZERO;
    for (name, depth) in rollup.order.iter().filter(|(name, _)| in_scope.contains(name)) {
        let label = match statement.tenants.get(name) {
            Some(info) if info.display_name != *name => {
                format!("{}{name} {}", "  ".repeat(*depth), info.display_name)
            }
            _ => format!("{}{name}", "  ".repeat(*depth)),
        };
        let center = &rollup.cost_center[name];
        let _ = writeln!(
            out,
            "{:<44} {:>14} {:>14}  {}",
            label,
            rollup.own[name].to_string(),
            rollup.subtree[name].to_string(),
            if center.is_empty() { "-" } else { center }
        );
        total = total + rollup.own[name];
    }
    let _ = writeln!(out, "{:<44} {:>14}", "total", total.to_string());
    out
}

/// The statement as an XLSX workbook: a summary sheet (each tenant's own and subtree cost in
/// tree order, then each cost centre, then the total) and a detail sheet of bill lines. Amounts
/// are numbers (the cell holds the exact decimal text) formatted to the fen.
pub fn xlsx(statement: &Statement, subtree_of: Option<&str>, headers: Headers) -> Result<Vec<u8>, XlsxError> {
    let rollup = statement.rollup();
    let in_scope = scope(statement, subtree_of);
    let chinese = headers == Headers::Chinese;
    let mut workbook = Workbook::new();
    let bold = CellFormat::new().set_bold();
    let money = CellFormat::new().set_num_format("#,##0.00");
    let bold_money = CellFormat::new().set_bold().set_num_format("#,##0.00");
    let quantity = CellFormat::new().set_num_format("0.000000");

    let summary = workbook.add_worksheet().set_name(if chinese { "汇总" } else { "Summary" })?;
    let state = match statement.closed_at {
        Some(closed) if chinese => format!("已结账 {}", format_local(closed)),
        Some(closed) => format!("closed {}", format_local(closed)),
        None if chinese => format!("未结账, 截至 {}", format_local(statement.as_of)),
        None => format!("open, to {}", format_local(statement.as_of)),
    };
    let title = if chinese {
        format!("{} 账单 (人民币元) {state}", statement.month())
    } else {
        format!("{} bill (CNY) {state}", statement.month())
    };
    summary.write_string_with_format(0, 0, &title, &bold)?;
    let columns: [&str; 7] = if chinese {
        ["成本中心", "租户", "租户名称", "层级", "上级租户", "本级费用(元)", "含下级费用(元)"]
    } else {
        ["cost_center", "tenant", "tenant_name", "level", "parent", "own_cny", "subtree_cny"]
    };
    for (col, name) in columns.iter().enumerate() {
        summary.write_string_with_format(2, col as u16, *name, &bold)?;
    }
    let mut row = 3;
    let mut total = crate::money::Fen::ZERO;
    let mut centers: std::collections::BTreeMap<&str, crate::money::Fen> = Default::default();
    for (name, depth) in rollup.order.iter().filter(|(name, _)| in_scope.contains(name)) {
        let info = statement.tenants.get(name);
        let center = rollup.cost_center[name].as_str();
        summary.write_string(row, 0, center)?;
        summary.write_string(row, 1, format!("{}{name}", "  ".repeat(*depth)))?;
        summary.write_string(row, 2, info.map_or("", |t| t.display_name.as_str()))?;
        summary.write_string(row, 3, info.map_or("", |t| t.level.as_str()))?;
        summary.write_string(row, 4, info.and_then(|t| t.parent.as_deref()).unwrap_or_default())?;
        summary.write_number_with_format(row, 5, number(rollup.own[name]), &money)?;
        summary.write_number_with_format(row, 6, number(rollup.subtree[name]), &money)?;
        total = total + rollup.own[name];
        let sum = centers.entry(center).or_default();
        *sum = *sum + rollup.own[name];
        row += 1;
    }
    row += 1;
    summary.write_string_with_format(row, 0, if chinese { "按成本中心" } else { "by cost centre" }, &bold)?;
    row += 1;
    for (center, amount) in &centers {
        summary.write_string(row, 0, if center.is_empty() { "-" } else { center })?;
        summary.write_number_with_format(row, 5, number(*amount), &money)?;
        row += 1;
    }
    summary.write_string_with_format(row, 0, if chinese { "合计" } else { "total" }, &bold)?;
    summary.write_number_with_format(row, 5, number(total), &bold_money)?;
    summary.set_column_width(1, 36)?;
    summary.set_column_width(2, 30)?;
    summary.set_column_width(5, 16)?;
    summary.set_column_width(6, 16)?;

    let detail = workbook.add_worksheet().set_name(if chinese { "明细" } else { "Detail" })?;
    let names = if chinese { CHINESE } else { ENGLISH };
    for (col, name) in names.iter().enumerate() {
        detail.write_string_with_format(0, col as u16, *name, &bold)?;
    }
    let rows = line_rows(statement, subtree_of, headers);
    for (i, line) in rows.iter().enumerate() {
        let row = i as u32 + 1;
        let texts = [
            &line.month,
            &line.cost_center,
            &line.tenant,
            &line.tenant_name,
            &line.parent,
            &line.site,
            &line.region_class,
            &line.resource,
            &line.gpu_model,
            &line.from,
            &line.to,
        ];
        for (col, text) in texts.into_iter().enumerate() {
            detail.write_string(row, col as u16, text)?;
        }
        detail.write_number_with_format(row, 11, decimal_number(&line.quantity), &quantity)?;
        detail.write_string(row, 12, &line.unit)?;
        detail.write_number(row, 13, decimal_number(&line.unit_price))?;
        detail.write_number(row, 14, decimal_number(&line.discount))?;
        detail.write_number_with_format(row, 15, decimal_number(&line.amount), &money)?;
        detail.write_string(row, 16, &line.price_book)?;
        detail.write_string(row, 17, &line.corrects)?;
    }
    detail.set_freeze_panes(1, 0)?;
    detail.autofilter(0, 0, rows.len() as u32, names.len() as u16 - 1)?;
    detail.set_column_width(3, 30)?;
    detail.set_column_width(9, 17)?;
    detail.set_column_width(10, 17)?;
    workbook.save_to_buffer()
}

/// A spreadsheet number: the double nearest the exact amount, written back as the same
/// shortest decimal text (spreadsheets hold numbers as doubles; 2 decimals survive exactly).
fn number(amount: crate::money::Fen) -> f64 {
    decimal_number(&amount.to_string())
}

fn decimal_number(text: &str) -> f64 {
    text.parse().unwrap_or(0.0)
}

/// The Parquet schema: one row per tenant, resource, site and hour, amounts as decimals.
const PARQUET_SCHEMA: &str = "message hourly_cost {
    REQUIRED BYTE_ARRAY month (STRING);
    REQUIRED BYTE_ARRAY tenant (STRING);
    REQUIRED BYTE_ARRAY cost_center (STRING);
    REQUIRED BYTE_ARRAY site (STRING);
    REQUIRED BYTE_ARRAY region_class (STRING);
    REQUIRED BYTE_ARRAY resource (STRING);
    REQUIRED BYTE_ARRAY gpu_model (STRING);
    REQUIRED INT64 hour (TIMESTAMP(MILLIS,true));
    REQUIRED INT64 quantity (DECIMAL(18,6));
    REQUIRED BYTE_ARRAY unit (STRING);
    REQUIRED INT64 amount_cny (DECIMAL(18,2));
    REQUIRED BYTE_ARRAY corrects_month (STRING);
}";

/// The statement's hours as Parquet for data platforms: one row per tenant, resource, site and
/// hour (both cells of an hour a price change splits add up in it); a correction of a closed
/// month is a row of its own in the month's first hour, naming the month it corrects.
pub fn parquet(statement: &Statement, subtree_of: Option<&str>) -> Result<Vec<u8>, ParquetError> {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    let rating = &statement.rating;
    let rollup = statement.rollup();
    let in_scope = scope(statement, subtree_of);
    let hours: Vec<_> =
        rating.hourly().into_iter().filter(|h| in_scope.contains(&rating.keys[h.key].tenant)).collect();
    let key = |h: &crate::bill::HourRow| &rating.keys[h.key];
    let month = statement.month().to_string();
    let schema = Arc::new(parquet::schema::parser::parse_message_type(PARQUET_SCHEMA)?);
    let mut out = Vec::new();
    let mut writer =
        SerializedFileWriter::new(&mut out, schema, Arc::new(WriterProperties::builder().build()))?;
    // Row groups of 64Ki rows, each column built just before it is written: a month of
    // thousands of pods is hundreds of thousands of rows, and whole columns of them would take
    // hundreds of MiB.
    for rows in hours.chunks(1 << 16) {
        let text = |f: &dyn Fn(&crate::bill::HourRow) -> String| -> Vec<ByteArray> {
            rows.iter().map(|h| ByteArray::from(f(h).into_bytes())).collect()
        };
        let mut group = writer.next_row_group()?;
        let mut column = 0;
        while let Some(mut writer) = group.next_column()? {
            let strings = match column {
                0 => Some(text(&|_| month.clone())),
                1 => Some(text(&|h| key(h).tenant.clone())),
                2 => Some(text(&|h| rollup.cost_center.get(&key(h).tenant).cloned().unwrap_or_default())),
                3 => Some(text(&|h| key(h).site.clone())),
                4 => Some(text(&|h| key(h).region_class.clone())),
                5 => Some(text(&|h| key(h).meter.key().to_string())),
                6 => Some(text(&|h| key(h).gpu_model.clone())),
                9 => Some(text(&|h| key(h).meter.unit().to_string())),
                11 => Some(text(&|h| key(h).corrects.clone())),
                _ => None,
            };
            match strings {
                Some(strings) => {
                    writer.typed::<ByteArrayType>().write_batch(&strings, None, None)?;
                }
                None => {
                    let numbers: Vec<i64> = match column {
                        7 => rows.iter().map(|h| h.hour * 1000).collect(),
                        8 => rows
                            .iter()
                            .map(|h| {
                                let quantity =
                                    rating.quantity(h.key, h.usage) * rust_decimal::Decimal::from(1_000_000);
                                rust_decimal::prelude::ToPrimitive::to_i64(&quantity).unwrap_or(i64::MAX)
                            })
                            .collect(),
                        _ => rows.iter().map(|h| h.amount.0).collect(),
                    };
                    writer.typed::<Int64Type>().write_batch(&numbers, None, None)?;
                }
            }
            writer.close()?;
            column += 1;
        }
        group.close()?;
    }
    writer.close()?;
    Ok(out)
}
