//! PriceBooks as the catalog reads them: each field checked again (a book stored before a
//! schema change, or written around it, still gets a clear refusal, never a wrong price).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use yiyun_crds::{PriceBook, PriceBookStatus, RegionClass};

use crate::{
    calendar::Seconds,
    meter::Meter,
    money::parse_decimal,
    prices::{Book, Catalog, Refusal, Scope},
};

/// Why a PriceBook cannot be read; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PriceBook {book}: {field}: {why}")]
pub struct PriceBookError {
    pub book: String,
    pub field: String,
    pub why: String,
}

/// The book a PriceBook describes.
pub fn book(price_book: &PriceBook) -> Result<Book, PriceBookError> {
    let name = price_book.metadata.name.clone().unwrap_or_default();
    let error = |field: &str, why: String| PriceBookError { book: name.clone(), field: field.into(), why };
    let spec = &price_book.spec;
    let scope = match (&spec.scope.region_class, &spec.scope.site) {
        (Some(_), Some(_)) => {
            return Err(error("spec.scope", "names a region class or a site, not both".into()));
        }
        (Some(RegionClass::East), None) => Scope::RegionClass("east".into()),
        (Some(RegionClass::West), None) => Scope::RegionClass("west".into()),
        (None, Some(site)) => Scope::Site(site.clone()),
        (None, None) => Scope::Everywhere,
    };
    let from: Seconds = spec.effective_from.0.as_second();
    let to = spec.effective_to.as_ref().map(|t| t.0.as_second());
    if to.is_some_and(|to| to <= from) {
        return Err(error("spec.effectiveTo", "must be later than spec.effectiveFrom".into()));
    }
    let price = |field: &str, text: &str| -> Result<Decimal, PriceBookError> {
        match parse_decimal(text) {
            Ok(price) if price >= Decimal::ZERO => Ok(price),
            _ => Err(error(field, format!("{text:?} is not a price: write a decimal such as \"0.12\""))),
        }
    };
    let mut prices = BTreeMap::new();
    let plain = [
        (Meter::Cpu, "spec.prices.cpuCoreHour", &spec.prices.cpu_core_hour),
        (Meter::Memory, "spec.prices.memoryGiBHour", &spec.prices.memory_gib_hour),
        (Meter::Storage, "spec.prices.storageGiBMonth", &spec.prices.storage_gib_month),
        (Meter::CrossRegion, "spec.prices.crossRegionGB", &spec.prices.cross_region_gb),
    ];
    let reserved = spec.prices.reserved.clone().unwrap_or_default();
    let reserved = [
        (Meter::ReservedCpu, "spec.prices.reserved.cpuCoreHour", &reserved.cpu_core_hour),
        (Meter::ReservedMemory, "spec.prices.reserved.memoryGiBHour", &reserved.memory_gib_hour),
        (Meter::ReservedGpu, "spec.prices.reserved.gpuHour", &reserved.gpu_hour),
    ];
    for (meter, field, text) in plain.into_iter().chain(reserved) {
        if let Some(text) = text {
            prices.insert((meter, String::new()), price(field, text)?);
        }
    }
    for (model, text) in &spec.prices.gpu_hour {
        let field = format!("spec.prices.gpuHour[{model}]");
        if model.is_empty() {
            return Err(error(&field, "a GPU model needs a name, such as A800".into()));
        }
        prices.insert((Meter::Gpu, model.clone()), price(&field, text)?);
    }
    let mut discounts = BTreeMap::new();
    let levels = [
        ("province", &spec.discounts.province),
        ("city", &spec.discounts.city),
        ("county", &spec.discounts.county),
        ("department", &spec.discounts.department),
    ];
    for (level, text) in levels {
        let Some(text) = text else { continue };
        match parse_decimal(text) {
            Ok(fraction) if (Decimal::ZERO..=Decimal::ONE).contains(&fraction) => {
                discounts.insert(level.to_string(), fraction);
            }
            _ => {
                return Err(error(
                    &format!("spec.discounts.{level}"),
                    format!("{text:?} is not a fraction from 0 to 1 (\"0.1\" is 10% off)"),
                ));
            }
        }
    }
    Ok(Book { name, scope, from, to, prices, discounts })
}

/// The catalog of `price_books`, oldest first (by creation, then name): each book that cannot
/// be read or overlaps an older one of the same scope is refused, with the reason.
pub fn catalog(price_books: &[PriceBook]) -> (Catalog, Vec<Refusal>) {
    let mut ordered: Vec<&PriceBook> = price_books.iter().collect();
    ordered.sort_by_key(|b| (b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.metadata.name.clone()));
    let mut refused = Vec::new();
    let books: Vec<Book> = ordered
        .into_iter()
        .filter_map(|b| {
            book(b)
                .map_err(|err| refused.push(Refusal { book: err.book.clone(), message: err.to_string() }))
                .ok()
        })
        .collect();
    let (catalog, overlapping) = Catalog::accept(books);
    refused.extend(overlapping);
    (catalog, refused)
}

/// The status of a PriceBook: `Accepted`, or why not.
pub fn status(book: &PriceBook, refusal: Option<&Refusal>) -> PriceBookStatus {
    let generation = book.metadata.generation;
    let previous = book.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let (accepted, reason, message) = match refusal {
        None => (true, "InForce", "rating uses this book over its effective range"),
        Some(refusal) if refusal.message.contains("overlaps") => {
            (false, "OverlappingRange", refusal.message.as_str())
        }
        Some(refusal) => (false, "Invalid", refusal.message.as_str()),
    };
    let condition =
        yiyun_kube::conditions::condition(previous, "Accepted", accepted, reason, message, generation);
    PriceBookStatus { observed_generation: generation, conditions: vec![condition] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price_book(yaml: &str) -> PriceBook {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn reads_every_price_and_discount() {
        let book = book(&price_book(
            "apiVersion: yiyun.io/v1alpha1\nkind: PriceBook\nmetadata: {name: west-2026}\n\
             spec:\n  scope: {regionClass: west}\n  effectiveFrom: 2026-11-15T12:00:00+08:00\n\
             \x20 prices: {cpuCoreHour: '0.06', memoryGiBHour: '0.01', gpuHour: {A800: '8.5'}, storageGiBMonth: '0.2',\n\
             \x20   crossRegionGB: '0.5', reserved: {cpuCoreHour: '0.02'}}\n  discounts: {county: '0.1'}\n",
        ))
        .unwrap();
        assert_eq!(book.scope, Scope::RegionClass("west".into()));
        assert_eq!(book.from, 1_793_462_400 + 14 * 86_400 + 12 * 3600);
        assert_eq!(book.to, None);
        assert_eq!(book.prices.len(), 6);
        assert_eq!(book.prices[&(Meter::Gpu, "A800".into())], "8.5".parse().unwrap());
        assert_eq!(book.prices[&(Meter::ReservedCpu, String::new())], "0.02".parse().unwrap());
        assert_eq!(book.discounts["county"], "0.1".parse().unwrap());
    }

    #[test]
    fn a_bad_field_is_named() {
        let err = book(&price_book(
            "apiVersion: yiyun.io/v1alpha1\nkind: PriceBook\nmetadata: {name: bad}\n\
             spec: {effectiveFrom: '2026-11-01T00:00:00+08:00', prices: {gpuHour: {A800: '1,5'}}}\n",
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PriceBook bad: spec.prices.gpuHour[A800]: \"1,5\" is not a price: write a decimal such as \"0.12\""
        );
        let err = book(&price_book(
            "apiVersion: yiyun.io/v1alpha1\nkind: PriceBook\nmetadata: {name: bad}\n\
             spec: {effectiveFrom: '2026-11-01T00:00:00+08:00', discounts: {city: '1.5'}}\n",
        ))
        .unwrap_err();
        assert_eq!(err.field, "spec.discounts.city");
    }
}
