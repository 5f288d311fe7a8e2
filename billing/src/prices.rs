//! The price catalog: PriceBooks as plain data, which book prices what where and when, and the
//! refusal of books that overlap another of the same scope.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::{
    calendar::{Seconds, format_rfc3339},
    meter::Meter,
};

/// The sites a book applies to, from the least to the most specific.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Everywhere,
    RegionClass(String),
    Site(String),
}

impl Scope {
    fn covers(&self, site: &str, region_class: &str) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::RegionClass(class) => class == region_class,
            Scope::Site(name) => name == site,
        }
    }

    /// Higher is more specific.
    fn rank(&self) -> u8 {
        match self {
            Scope::Everywhere => 0,
            Scope::RegionClass(_) => 1,
            Scope::Site(_) => 2,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Everywhere => write!(f, "every site"),
            Scope::RegionClass(class) => write!(f, "region class {class}"),
            Scope::Site(site) => write!(f, "site {site}"),
        }
    }
}

/// One PriceBook, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Book {
    pub name: String,
    pub scope: Scope,
    pub from: Seconds,
    /// Exclusive; `None` for open-ended.
    pub to: Option<Seconds>,
    /// Price per unit of each meter; GPU meters are keyed by model, the others by `""`.
    pub prices: BTreeMap<(Meter, String), Decimal>,
    /// Fraction off by tenant level (`province`, `city`, `county`, `department`).
    pub discounts: BTreeMap<String, Decimal>,
}

impl Book {
    fn in_force(&self, at: Seconds) -> bool {
        self.from <= at && self.to.is_none_or(|to| at < to)
    }

    fn overlaps(&self, other: &Book) -> bool {
        self.from < other.to.unwrap_or(Seconds::MAX) && other.from < self.to.unwrap_or(Seconds::MAX)
    }

    fn range(&self) -> String {
        match self.to {
            Some(to) => format!("from {} to {}", format_rfc3339(self.from), format_rfc3339(to)),
            None => format!("from {} on", format_rfc3339(self.from)),
        }
    }
}

/// A book left out of rating, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub book: String,
    pub message: String,
}

/// The books rating uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    books: Vec<Book>,
}

/// What a price was found in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price<'a> {
    pub per_unit: Decimal,
    pub book: &'a str,
}

impl Catalog {
    /// Accepts `books` in the order given (the caller's: oldest first), refusing each one that
    /// overlaps an accepted book of the same scope.
    pub fn accept(books: impl IntoIterator<Item = Book>) -> (Catalog, Vec<Refusal>) {
        let mut catalog = Catalog::default();
        let mut refused = Vec::new();
        for book in books {
            match catalog.books.iter().find(|b| b.scope == book.scope && b.overlaps(&book)) {
                Some(other) => refused.push(Refusal {
                    message: format!(
                        "effective {} overlaps PriceBook {} ({}, {}): two books for {} cannot be in \
                         force at once; end one where the other begins (spec.effectiveTo)",
                        book.range(),
                        other.name,
                        other.scope,
                        other.range(),
                        book.scope
                    ),
                    book: book.name,
                }),
                None => catalog.books.push(book),
            }
        }
        (catalog, refused)
    }

    pub fn books(&self) -> &[Book] {
        &self.books
    }

    /// The books in force at `at` for a site, the most specific first.
    fn in_force(&self, site: &str, region_class: &str, at: Seconds) -> Vec<&Book> {
        let mut books: Vec<&Book> =
            self.books.iter().filter(|b| b.in_force(at) && b.scope.covers(site, region_class)).collect();
        books.sort_by_key(|b| std::cmp::Reverse(b.scope.rank()));
        books
    }

    /// The price of a meter at a site at `at`: from the most specific book in force that names it.
    pub fn price(
        &self,
        site: &str,
        region_class: &str,
        meter: Meter,
        model: &str,
        at: Seconds,
    ) -> Option<Price<'_>> {
        let key = (meter.priced_as(), model.to_string());
        self.in_force(site, region_class, at)
            .into_iter()
            .find_map(|b| b.prices.get(&key).map(|&per_unit| Price { per_unit, book: &b.name }))
    }

    /// The discount of a tenant level at a site at `at`, from the most specific book naming it.
    pub fn discount(&self, site: &str, region_class: &str, level: &str, at: Seconds) -> Decimal {
        self.in_force(site, region_class, at)
            .into_iter()
            .find_map(|b| b.discounts.get(level).copied())
            .unwrap_or_default()
    }

    /// Every instant strictly inside `[start, end)` where some book starts or stops.
    pub fn changes_within(&self, start: Seconds, end: Seconds) -> Vec<Seconds> {
        let mut edges: Vec<Seconds> = self
            .books
            .iter()
            .flat_map(|b| [Some(b.from), b.to])
            .flatten()
            .filter(|&t| start < t && t < end)
            .collect();
        edges.sort_unstable();
        edges.dedup();
        edges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(name: &str, scope: Scope, from: Seconds, to: Option<Seconds>, cpu: &str) -> Book {
        Book {
            name: name.into(),
            scope,
            from,
            to,
            prices: BTreeMap::from([((Meter::Cpu, String::new()), cpu.parse().unwrap())]),
            discounts: BTreeMap::new(),
        }
    }

    #[test]
    fn the_most_specific_book_in_force_prices_each_meter() {
        let mut everywhere = book("standard", Scope::Everywhere, 0, None, "0.20");
        everywhere.prices.insert((Meter::Memory, String::new()), "0.02".parse().unwrap());
        let west = book("west", Scope::RegionClass("west".into()), 0, None, "0.10");
        let site = book("qingyang", Scope::Site("qingyang".into()), 100, Some(200), "0.05");
        let (catalog, refused) = Catalog::accept([everywhere, west, site]);
        assert!(refused.is_empty());
        let cpu =
            |site: &str, class: &str, at| catalog.price(site, class, Meter::Cpu, "", at).map(|p| p.book);
        assert_eq!(cpu("wuhu", "east", 150), Some("standard"));
        assert_eq!(cpu("jiuquan", "west", 150), Some("west"));
        assert_eq!(cpu("qingyang", "west", 150), Some("qingyang"));
        assert_eq!(cpu("qingyang", "west", 200), Some("west"), "the site's book has ended");
        assert_eq!(
            catalog.price("qingyang", "west", Meter::Memory, "", 150).map(|p| p.book),
            Some("standard"),
            "a book that leaves memory out falls back to the less specific one"
        );
        assert_eq!(catalog.price("wuhu", "east", Meter::Gpu, "A800", 150), None);
        assert_eq!(catalog.changes_within(0, 1000), [100, 200]);
    }

    #[test]
    fn an_overlapping_book_of_the_same_scope_is_refused_with_both_ranges() {
        let first = book("standard", Scope::Everywhere, 0, Some(1_000), "0.20");
        let overlapping = book("increase", Scope::Everywhere, 999, None, "0.30");
        let adjacent = book("next", Scope::Everywhere, 1_000, None, "0.30");
        let other_scope = book("west", Scope::RegionClass("west".into()), 0, None, "0.10");
        let (catalog, refused) = Catalog::accept([first, overlapping, adjacent, other_scope]);
        assert_eq!(
            catalog.books().iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["standard", "next", "west"]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].book, "increase");
        assert!(refused[0].message.contains("overlaps PriceBook standard"), "{}", refused[0].message);
        assert!(refused[0].message.contains("1970-01-01T08:16:39+08:00"), "{}", refused[0].message);
    }
}
