//! A month's statement: rated from the ledger while the month is open, read back frozen once
//! it is closed. Closing writes the month's cells and tenant tree in one transaction; nothing
//! changes them afterwards, so a closed month exports the same bytes for ever.

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use sqlx::Row;

use crate::{
    Error,
    bill::{Rollup, roll_up},
    calendar::{Month, Seconds, format_local},
    ledger::{Ledger, LedgerError, tenant_row},
    meter::Meter,
    money::Fen,
    pricebook,
    rating::{AppliedPrice, Cell, LineKey, Rating, RatingError, TenantInfo, rate},
};

/// A month's bills: the rating, the tenant tree it rolls up by, and whether it is final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub rating: Rating,
    pub tenants: HashMap<String, TenantInfo>,
    /// When the month was closed; `None` while it is open (figures to date).
    pub closed_at: Option<Seconds>,
    /// Usage is counted up to this moment.
    pub as_of: Seconds,
}

impl Statement {
    pub fn month(&self) -> Month {
        self.rating.month
    }

    pub fn rollup(&self) -> Rollup {
        roll_up(&self.rating.own_totals(), &self.tenants)
    }

    pub fn total(&self) -> Fen {
        self.rating.cells.iter().map(|c| c.amount).sum()
    }
}

/// The statement of `month` as of `now`: frozen if closed, rated from the ledger if not; of
/// every tenant, or only of `subtree_of` and its descendants (whose usage alone is rated then).
pub async fn statement(
    ledger: &Ledger,
    month: Month,
    now: Seconds,
    subtree_of: Option<&str>,
) -> Result<Statement, Error> {
    if let Some(closed) = frozen(ledger, month).await? {
        return Ok(closed);
    }
    let as_of = now.min(month.end());
    let tenants = ledger.tenants().await?;
    let in_scope =
        subtree_of.map(|root| subtree(&tenants, root).into_iter().map(String::from).collect::<HashSet<_>>());
    let mut rating = rate_open(ledger, month, as_of, &tenants, in_scope.as_ref()).await?;
    adjust(ledger, &mut rating, now, &tenants, in_scope.as_ref()).await?;
    Ok(Statement { rating, tenants, closed_at: None, as_of })
}

/// Rates an open month (or a closed one again) from the ledger, of the tenants in scope.
async fn rate_open(
    ledger: &Ledger,
    month: Month,
    as_of: Seconds,
    tenants: &HashMap<String, TenantInfo>,
    in_scope: Option<&HashSet<String>>,
) -> Result<Rating, Error> {
    let mut usages = ledger.usages(month.start(), month.end(), as_of).await?;
    let guarantees = ledger.guarantees(month.start(), month.end(), as_of).await?;
    usages.extend(crate::reservation::unused_quota(&guarantees, &usages, tenants));
    if let Some(in_scope) = in_scope {
        usages.retain(|u| in_scope.contains(&u.tenant));
    }
    let catalog = catalog(ledger).await?;
    Ok(rate(month, &usages, &catalog, tenants)?)
}

/// Late corrections: for every closed month whose first open month after it is this one, what
/// rating it again now gives beyond what was frozen (and beyond corrections already frozen in
/// later closed months), per line, as adjustment lines pointing at the month they correct.
async fn adjust(
    ledger: &Ledger,
    rating: &mut Rating,
    now: Seconds,
    tenants: &HashMap<String, TenantInfo>,
    in_scope: Option<&HashSet<String>>,
) -> Result<(), Error> {
    let closed: HashSet<String> = closed_months(ledger).await?.into_iter().collect();
    // Oldest first, so that the lines come in the same order every time.
    let mut months: Vec<Month> = closed.iter().filter_map(|m| m.parse().ok()).collect();
    months.sort_unstable();
    for &corrected in &months {
        let mut first_open = corrected.next();
        while closed.contains(&first_open.to_string()) {
            first_open = first_open.next();
        }
        if corrected >= rating.month || first_open != rating.month {
            continue;
        }
        let Some(as_closed) = frozen(ledger, corrected).await? else { continue };
        let again = rate_open(ledger, corrected, now.min(corrected.end()), tenants, in_scope).await?;
        // Per line of the corrected month: (usage, amount) now, minus frozen, minus corrected.
        let mut delta: BTreeMap<LineKey, (i128, i64)> = BTreeMap::new();
        let mut add = |rating: &Rating, sign: i64, only: &dyn Fn(&LineKey) -> bool| {
            for cell in &rating.cells {
                let key = &rating.keys[cell.line];
                if !only(key) {
                    continue;
                }
                let entry = delta.entry(LineKey { corrects: String::new(), ..key.clone() }).or_default();
                entry.0 += i128::from(sign) * cell.usage;
                entry.1 += sign * cell.amount.0;
            }
        };
        let of_scope = |key: &LineKey| in_scope.is_none_or(|s| s.contains(&key.tenant));
        add(&again, 1, &|key| key.corrects.is_empty());
        add(&as_closed.rating, -1, &|key| key.corrects.is_empty() && of_scope(key));
        for &later in months.iter().filter(|m| **m > corrected) {
            if let Some(later) = frozen(ledger, later).await? {
                add(&later.rating, -1, &|key| key.corrects == corrected.to_string() && of_scope(key));
            }
        }
        delta.retain(|_, (usage, amount)| *usage != 0 || *amount != 0);
        if delta.is_empty() {
            continue;
        }
        let price = rating.prices.len();
        rating.prices.push(AppliedPrice {
            per_unit: Decimal::ZERO,
            discount: Decimal::ZERO,
            book: format!("adjustment of {corrected}"),
        });
        for (key, (usage, amount)) in delta {
            let line = rating.keys.len();
            rating.keys.push(LineKey { corrects: corrected.to_string(), ..key });
            let start = rating.month.start();
            rating.cells.push(Cell { line, start, end: start, usage, price, amount: Fen(amount) });
        }
    }
    Ok(())
}

/// The month so far for every tenant that can be rated: a tenant whose usage no book prices is
/// left out (with why), so that one unpriced node does not stop every other tenant's figures.
pub async fn month_so_far(
    ledger: &Ledger,
    now: Seconds,
) -> Result<(Statement, Vec<(String, String)>), Error> {
    let month = Month::of(now);
    let mut usages = ledger.usages(month.start(), month.end(), now).await?;
    let tenants = ledger.tenants().await?;
    let guarantees = ledger.guarantees(month.start(), month.end(), now).await?;
    usages.extend(crate::reservation::unused_quota(&guarantees, &usages, &tenants));
    let catalog = catalog(ledger).await?;
    let mut left_out = Vec::new();
    loop {
        match rate(month, &usages, &catalog, &tenants) {
            Ok(rating) => return Ok((Statement { rating, tenants, closed_at: None, as_of: now }, left_out)),
            Err(RatingError::Unpriced { tenant, what, field, place, at }) => {
                let why =
                    RatingError::Unpriced { tenant: tenant.clone(), what, field, place, at }.to_string();
                usages.retain(|u| u.tenant != tenant);
                left_out.push((tenant, why));
            }
            Err(other) => return Err(other.into()),
        }
    }
}

/// The PriceBooks in the ledger, as rating reads them.
async fn catalog(ledger: &Ledger) -> Result<crate::prices::Catalog, Error> {
    let books = ledger
        .price_books()
        .await?
        .iter()
        .map(|document| serde_json::from_str(document))
        .collect::<Result<Vec<yiyun_crds::PriceBook>, _>>()?;
    Ok(pricebook::catalog(&books).0)
}

/// `root` and every tenant below it.
fn subtree<'a>(
    tenants: &'a HashMap<String, TenantInfo>,
    root: &'a str,
) -> std::collections::HashSet<&'a str> {
    let mut members = std::collections::HashSet::from([root]);
    // Parents before children is not guaranteed: repeat until nothing joins (depth passes).
    loop {
        let before = members.len();
        for t in tenants.values() {
            if t.parent.as_deref().is_some_and(|p| members.contains(p)) {
                members.insert(t.name.as_str());
            }
        }
        if members.len() == before {
            return members;
        }
    }
}

/// Why a month cannot be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    #[error("{month} has not ended yet: it can be closed from {ends} on")]
    NotEnded { month: Month, ends: String },
}

/// Closes `month`: rates it and freezes the result, in one transaction. Closing a closed month
/// again changes nothing and says when it was closed.
pub async fn close(ledger: &Ledger, month: Month, now: Seconds) -> Result<Statement, Error> {
    if now < month.end() {
        return Err(Error::Close(CloseError::NotEnded { month, ends: format_local(month.end()) }));
    }
    if let Some(closed) = frozen(ledger, month).await? {
        return Ok(closed);
    }
    let mut statement = statement(ledger, month, now, None).await?;
    statement.closed_at = Some(now);
    let key = month.to_string();
    let mut tx = ledger.pool().begin().await.map_err(LedgerError::from)?;
    // A concurrent close of the same month fails on the primary key and writes nothing.
    sqlx::query("INSERT INTO closed_months (month, closed_at, total_fen) VALUES ($1, $2, $3)")
        .bind(&key)
        .bind(now)
        .bind(statement.total().0)
        .execute(&mut *tx)
        .await
        .map_err(LedgerError::from)?;
    for (seq, cell) in statement.rating.cells.iter().enumerate() {
        let line = &statement.rating.keys[cell.line];
        let price = &statement.rating.prices[cell.price];
        sqlx::query(
            "INSERT INTO closed_cells (month, seq, tenant, site, region_class, meter, gpu_model, corrects, \
             slot_start, slot_end, usage, unit_price, discount, book, amount_fen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&key)
        .bind(seq as i64)
        .bind(&line.tenant)
        .bind(&line.site)
        .bind(&line.region_class)
        .bind(line.meter.key())
        .bind(&line.gpu_model)
        .bind(&line.corrects)
        .bind(cell.start)
        .bind(cell.end)
        .bind(cell.usage.to_string())
        .bind(price.per_unit.to_string())
        .bind(price.discount.to_string())
        .bind(&price.book)
        .bind(cell.amount.0)
        .execute(&mut *tx)
        .await
        .map_err(LedgerError::from)?;
    }
    let mut tenants: Vec<&TenantInfo> = statement.tenants.values().collect();
    tenants.sort_by(|a, b| a.name.cmp(&b.name));
    for t in tenants {
        sqlx::query(
            "INSERT INTO closed_tenants (month, name, display_name, parent, level, cost_center) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key)
        .bind(&t.name)
        .bind(&t.display_name)
        .bind(t.parent.as_deref())
        .bind(&t.level)
        .bind(t.cost_center.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(LedgerError::from)?;
    }
    tx.commit().await.map_err(LedgerError::from)?;
    Ok(statement)
}

/// The frozen statement of a closed month.
async fn frozen(ledger: &Ledger, month: Month) -> Result<Option<Statement>, Error> {
    let key = month.to_string();
    let Some(closed) = sqlx::query("SELECT closed_at FROM closed_months WHERE month = $1")
        .bind(&key)
        .fetch_optional(ledger.pool())
        .await
        .map_err(LedgerError::from)?
    else {
        return Ok(None);
    };
    let closed_at: i64 = closed.try_get(0).map_err(LedgerError::from)?;
    let rows = sqlx::query(
        "SELECT tenant, site, region_class, meter, gpu_model, slot_start, slot_end, usage, unit_price, discount, \
         book, amount_fen, corrects FROM closed_cells WHERE month = $1 ORDER BY seq",
    )
    .bind(&key)
    .fetch_all(ledger.pool())
    .await
    .map_err(LedgerError::from)?;
    let mut rating =
        Rating { month, keys: Vec::new(), prices: Vec::new(), cells: Vec::with_capacity(rows.len()) };
    let mut keys: HashMap<LineKey, usize> = HashMap::new();
    let mut prices: HashMap<AppliedPrice, usize> = HashMap::new();
    let corrupt =
        |what: &str, value: &str| LedgerError::Corrupt(format!("closed month {key}: {what} {value:?}"));
    for row in &rows {
        let get = |i: usize| -> Result<String, LedgerError> { Ok(row.try_get::<String, _>(i)?) };
        let meter = get(3)?;
        let line = LineKey {
            tenant: get(0)?,
            site: get(1)?,
            region_class: get(2)?,
            meter: Meter::from_key(&meter).ok_or_else(|| corrupt("meter", &meter))?,
            gpu_model: get(4)?,
            corrects: get(12)?,
        };
        let decimal = |i: usize, what: &str| -> Result<Decimal, LedgerError> {
            let text = get(i)?;
            text.parse().map_err(|_| corrupt(what, &text))
        };
        let price = AppliedPrice {
            per_unit: decimal(8, "unit price")?,
            discount: decimal(9, "discount")?,
            book: get(10)?,
        };
        let usage_text = get(7)?;
        let next_line = keys.len();
        let line = *keys.entry(line.clone()).or_insert_with(|| {
            rating.keys.push(line);
            next_line
        });
        let next_price = prices.len();
        let price = *prices.entry(price.clone()).or_insert_with(|| {
            rating.prices.push(price);
            next_price
        });
        rating.cells.push(Cell {
            line,
            start: row.try_get(5).map_err(LedgerError::from)?,
            end: row.try_get(6).map_err(LedgerError::from)?,
            usage: usage_text.parse().map_err(|_| corrupt("usage", &usage_text))?,
            price,
            amount: Fen(row.try_get(11).map_err(LedgerError::from)?),
        });
    }
    let tenants = sqlx::query(
        "SELECT name, display_name, parent, level, cost_center FROM closed_tenants WHERE month = $1",
    )
    .bind(&key)
    .fetch_all(ledger.pool())
    .await
    .map_err(LedgerError::from)?
    .iter()
    .map(|row| tenant_row(row).map(|t| (t.name.clone(), t)))
    .collect::<Result<HashMap<_, _>, _>>()?;
    Ok(Some(Statement { rating, tenants, closed_at: Some(closed_at), as_of: closed_at.min(month.end()) }))
}

/// The months closed so far, oldest first.
pub async fn closed_months(ledger: &Ledger) -> Result<Vec<String>, Error> {
    let rows = sqlx::query("SELECT month FROM closed_months ORDER BY month")
        .fetch_all(ledger.pool())
        .await
        .map_err(LedgerError::from)?;
    Ok(rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>().map_err(LedgerError::from)?)
}
