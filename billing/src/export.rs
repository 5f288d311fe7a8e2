//! What finance reads: a month's statement as CSV (UTF-8 with a BOM and Chinese headers, so
//! Excel and WPS open it cleanly), JSON, and the tenant tree as text.

use std::fmt::Write as _;

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
}

const CHINESE: [&str; 17] = [
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
];
const ENGLISH: [&str; 17] = [
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
fn scope(statement: &Statement, subtree_of: Option<&str>) -> std::collections::HashSet<String> {
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
