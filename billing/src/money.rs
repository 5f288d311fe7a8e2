//! Money: exact decimal CNY, rounded to the fen once per bill line.
//!
//! The rounding rule: a line (one tenant, site, resource and GPU model) accumulates its exact
//! cost over the month in time order, and what each hour costs is the change of the line's
//! running total rounded to the fen, half to even (GB/T 8170 修约: 四舍六入五成双). So a line's
//! month is its exact cost rounded once (never off by more than half a fen), and every hour,
//! day, line, bill, subtree and cost centre is a sum of whole fen: the parts always add up to
//! the whole. (Rounding each hour on its own would not do: 100 GiB at 0.30 a GiB-month costs
//! 0.0417 an hour, and 720 hours rounded to 0.04 would bill 28.80 for 30.00.)

use std::{fmt, iter::Sum, ops::Add, str::FromStr};

use rust_decimal::{Decimal, RoundingStrategy, prelude::ToPrimitive};
use serde::{Deserialize, Serialize};

/// An amount of CNY in whole fen (0.01 yuan).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fen(pub i64);

impl Fen {
    pub const ZERO: Fen = Fen(0);

    /// Rounds an exact amount of yuan to the fen, half to even; `None` past ±92 trillion yuan.
    pub fn round(yuan: Decimal) -> Option<Fen> {
        let rounded = yuan.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
        rounded.checked_mul(Decimal::ONE_HUNDRED)?.to_i64().map(Fen)
    }

    /// The amount in yuan, exactly.
    pub fn yuan(self) -> Decimal {
        Decimal::new(self.0, 2)
    }
}

impl Add for Fen {
    type Output = Fen;
    fn add(self, other: Fen) -> Fen {
        Fen(self.0 + other.0)
    }
}

impl Sum for Fen {
    fn sum<I: Iterator<Item = Fen>>(iter: I) -> Fen {
        iter.fold(Fen::ZERO, Add::add)
    }
}

/// `1234.50`: yuan with both decimals, as finance writes them.
impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let fen = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", fen / 100, fen % 100)
    }
}

/// A price or a fraction as written in a PriceBook: a plain decimal, never a float.
pub fn parse_decimal(text: &str) -> Result<Decimal, rust_decimal::Error> {
    Decimal::from_str(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(text: &str) -> Fen {
        Fen::round(parse_decimal(text).unwrap()).unwrap()
    }

    #[test]
    fn rounds_half_to_even_at_the_fen() {
        assert_eq!(round("1.005"), Fen(100), "half a fen rounds to the even fen");
        assert_eq!(round("1.015"), Fen(102));
        assert_eq!(round("1.0051"), Fen(101), "more than half rounds up");
        assert_eq!(round("1.0049"), Fen(100));
        assert_eq!(round("0.004999999"), Fen(0));
        assert_eq!(round("1234.5"), Fen(123_450));
        assert_eq!(round("-0.015"), Fen(-2));
    }

    #[test]
    fn displays_yuan_with_two_decimals() {
        assert_eq!(Fen(123_450).to_string(), "1234.50");
        assert_eq!(Fen(7).to_string(), "0.07");
        assert_eq!(Fen(-7).to_string(), "-0.07");
        assert_eq!(Fen(123_450).yuan().to_string(), "1234.50");
    }

    #[test]
    fn absurd_amounts_are_refused_not_wrapped() {
        assert_eq!(Fen::round(Decimal::MAX), None);
    }
}
