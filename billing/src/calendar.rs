//! Billing months, days and hours, in China Standard Time (UTC+8, no daylight saving): a
//! November bill runs from 2026-11-01T00:00+08:00 to 2026-12-01T00:00+08:00.

use std::{fmt, str::FromStr};

use jiff::{
    Timestamp,
    civil::{Date, DateTime},
    tz::{Offset, TimeZone},
};

/// Unix time in whole seconds, the ledger's clock.
pub type Seconds = i64;

pub const HOUR: Seconds = 3600;
pub const DAY: Seconds = 24 * HOUR;

/// The zone billing months are cut in.
pub fn china() -> TimeZone {
    TimeZone::fixed(Offset::constant(8))
}

/// A calendar month of the bills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i16,
    month: i8,
}

/// Why a text is not a billing month.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonthError {
    #[error("{0:?} is not a month: write it as YYYY-MM, e.g. 2026-11")]
    Malformed(String),
    #[error("month {0:?} does not exist: months run from 01 to 12")]
    NoSuchMonth(String),
    #[error("{0:?} is outside the years billing covers (2000 to 2199)")]
    OutOfRange(String),
}

impl Month {
    /// The month of `year` and `month` (1–12), when billing covers it.
    pub fn new(year: i16, month: i8) -> Option<Month> {
        ((2000..2200).contains(&year) && (1..=12).contains(&month)).then_some(Month { year, month })
    }

    /// The month an instant falls in.
    pub fn of(at: Seconds) -> Month {
        let date = local(at).date();
        Month { year: date.year(), month: date.month() }
    }

    fn first_day(self) -> Date {
        // Checked at construction: the year is in range and the month in 1–12.
        Date::new(self.year, self.month, 1).unwrap_or(Date::MIN)
    }

    /// The first second of the month.
    pub fn start(self) -> Seconds {
        start_of(self.first_day())
    }

    /// The first second after the month.
    pub fn end(self) -> Seconds {
        self.next().start()
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month { year: self.year + 1, month: 1 }
        } else {
            Month { month: self.month + 1, ..self }
        }
    }

    pub fn previous(self) -> Month {
        if self.month == 1 {
            Month { year: self.year - 1, month: 12 }
        } else {
            Month { month: self.month - 1, ..self }
        }
    }

    /// Seconds in the month: what one GiB-month of storage is over.
    pub fn seconds(self) -> Seconds {
        self.end() - self.start()
    }

    /// The first second of each of the month's days.
    pub fn days(self) -> impl Iterator<Item = Seconds> {
        (self.start()..self.end()).step_by(DAY as usize)
    }
}

impl FromStr for Month {
    type Err = MonthError;
    fn from_str(text: &str) -> Result<Month, MonthError> {
        let malformed = || MonthError::Malformed(text.to_string());
        let (year, month) = text.trim().split_once('-').ok_or_else(malformed)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(malformed());
        }
        let year: i16 = year.parse().map_err(|_| malformed())?;
        let month: i8 = month.parse().map_err(|_| malformed())?;
        if !(1..=12).contains(&month) {
            return Err(MonthError::NoSuchMonth(text.to_string()));
        }
        Month::new(year, month).ok_or_else(|| MonthError::OutOfRange(text.to_string()))
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

fn start_of(date: Date) -> Seconds {
    // Fixed offsets have no gaps: every local midnight exists.
    china().to_timestamp(date.to_datetime(jiff::civil::Time::midnight())).map_or(0, |t| t.as_second())
}

fn local(at: Seconds) -> DateTime {
    let timestamp = Timestamp::from_second(at).unwrap_or(Timestamp::UNIX_EPOCH);
    china().to_datetime(timestamp)
}

/// `2026-11-03 10:00` in China Standard Time, as the exports write times.
pub fn format_local(at: Seconds) -> String {
    local(at).strftime("%Y-%m-%d %H:%M").to_string()
}

/// `2026-11-03`, the local date of an instant.
pub fn format_date(at: Seconds) -> String {
    local(at).date().to_string()
}

/// RFC 3339 with the +08:00 offset.
pub fn format_rfc3339(at: Seconds) -> String {
    local(at).strftime("%Y-%m-%dT%H:%M:%S+08:00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_cut_at_midnight_china_time() {
        let november: Month = "2026-11".parse().unwrap();
        assert_eq!(november.start(), 1_793_462_400, "2026-11-01T00:00+08:00 is 2026-10-31T16:00Z");
        assert_eq!(november.seconds(), 30 * DAY);
        assert_eq!(november.days().count(), 30);
        assert_eq!(Month::of(november.start()), november);
        assert_eq!(Month::of(november.start() - 1), november.previous());
        assert_eq!(Month::of(november.end()), november.next());
        assert_eq!(november.next().to_string(), "2026-12");
        assert_eq!("2026-12".parse::<Month>().unwrap().next().to_string(), "2027-01");
        assert_eq!("2028-02".parse::<Month>().unwrap().seconds(), 29 * DAY, "a leap February");
        assert_eq!(format_local(november.start()), "2026-11-01 00:00");
        assert_eq!(format_rfc3339(november.start() + 3661), "2026-11-01T01:01:01+08:00");
    }

    #[test]
    fn bad_months_say_what_is_wrong() {
        assert_eq!("2026-13".parse::<Month>(), Err(MonthError::NoSuchMonth("2026-13".into())));
        assert_eq!("2026-00".parse::<Month>(), Err(MonthError::NoSuchMonth("2026-00".into())));
        assert_eq!("november".parse::<Month>(), Err(MonthError::Malformed("november".into())));
        assert_eq!("2026-1".parse::<Month>(), Err(MonthError::Malformed("2026-1".into())));
        assert_eq!("1999-12".parse::<Month>(), Err(MonthError::OutOfRange("1999-12".into())));
        assert!("2026-13".parse::<Month>().unwrap_err().to_string().contains("01 to 12"));
    }
}
