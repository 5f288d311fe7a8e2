//! Kubernetes quantities (`500m`, `4`, `16Gi`, `1.5`, `2e3`) as exact integers of milli-units.

use std::fmt;

/// A quantity in thousandths of its unit: `1` CPU is `1000`, `1Ki` of memory is `1_024_000`.
/// Fractions of a milli-unit round up, as Kubernetes does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub i128);

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity (expected a number with an optional suffix, e.g. 500m, 4, 16Gi)")]
    Malformed(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

impl Milli {
    pub const ZERO: Milli = Milli(0);

    /// Whole units (`4` → `Milli(4000)`).
    pub const fn units(units: i64) -> Milli {
        Milli(units as i128 * 1000)
    }

    /// Parses Kubernetes quantity notation; a fraction of a milli-unit rounds up (what is asked
    /// for is never less than the text says).
    pub fn parse(text: &str) -> Result<Milli, QuantityError> {
        Milli::parse_rounding(text, true)
    }

    /// Parses a measurement (e.g. `1500026320n` of CPU from metrics.k8s.io); a fraction of a
    /// milli-unit rounds down (what is billed as used is never more than was measured).
    pub fn parse_measured(text: &str) -> Result<Milli, QuantityError> {
        Milli::parse_rounding(text, false)
    }

    fn parse_rounding(text: &str, up: bool) -> Result<Milli, QuantityError> {
        let malformed = || QuantityError::Malformed(text.to_string());
        let too_large = || QuantityError::TooLarge(text.to_string());
        let s = text.trim();
        let (negative, s) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, suffix) = s.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || number.len() > 40 {
            return Err(malformed());
        }
        // The number as an integer `mantissa` × 10^(-fraction digits).
        let digits = format!("{whole}{fraction}");
        let mantissa: i128 = digits.parse().map_err(|_| too_large())?;
        let mut exp10: i32 = -(fraction.len() as i32);
        let mut binary_multiplier: i128 = 1;
        match suffix {
            "" => {}
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            "Ki" => binary_multiplier = 1 << 10,
            "Mi" => binary_multiplier = 1 << 20,
            "Gi" => binary_multiplier = 1 << 30,
            "Ti" => binary_multiplier = 1 << 40,
            "Pi" => binary_multiplier = 1 << 50,
            "Ei" => binary_multiplier = 1 << 60,
            exponent if exponent.starts_with(['e', 'E']) => {
                let value: i32 = exponent[1..].parse().map_err(|_| malformed())?;
                if !(-40..=40).contains(&value) {
                    return Err(too_large());
                }
                exp10 += value;
            }
            _ => return Err(malformed()),
        }
        exp10 += 3; // milli-units
        let scaled = mantissa.checked_mul(binary_multiplier).ok_or_else(too_large)?;
        let value = if exp10 >= 0 {
            10i128.checked_pow(exp10 as u32).and_then(|p| scaled.checked_mul(p)).ok_or_else(too_large)?
        } else {
            let divisor = 10i128.checked_pow((-exp10) as u32).ok_or_else(too_large)?;
            scaled / divisor + i128::from(up && scaled % divisor != 0)
        };
        // Kubernetes caps quantities near 2^63 whole units; anything larger is an error here.
        if value > i128::from(i64::MAX) * 1000 {
            return Err(too_large());
        }
        Ok(Milli(if negative { -value } else { value }))
    }

    /// Formats for people and for the apiserver: whole numbers plainly (`4`, `2000`), fractions
    /// in milli-units (`1500m`), and byte amounts with the largest exact binary suffix (`16Gi`).
    pub fn format(self, bytes: bool) -> String {
        let Milli(milli) = self;
        if milli % 1000 != 0 {
            return format!("{milli}m");
        }
        let units = milli / 1000;
        if bytes && units != 0 {
            for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
                let size = 1i128 << shift;
                if units % size == 0 {
                    return format!("{}{suffix}", units / size);
                }
            }
        }
        units.to_string()
    }

    pub fn saturating_sub(self, other: Milli) -> Milli {
        Milli(self.0.saturating_sub(other.0))
    }
}

impl std::ops::Add for Milli {
    type Output = Milli;
    fn add(self, other: Milli) -> Milli {
        Milli(self.0.saturating_add(other.0))
    }
}

impl std::ops::AddAssign for Milli {
    fn add_assign(&mut self, other: Milli) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Milli {
    fn sum<I: Iterator<Item = Milli>>(iter: I) -> Milli {
        iter.fold(Milli::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> i128 {
        Milli::parse(s).unwrap().0
    }

    #[test]
    fn parses_every_kubernetes_notation() {
        assert_eq!(milli("4"), 4000);
        assert_eq!(milli("500m"), 500);
        assert_eq!(milli("1.5"), 1500);
        assert_eq!(milli(".5"), 500);
        assert_eq!(milli("2k"), 2_000_000);
        assert_eq!(milli("1Ki"), 1_024_000);
        assert_eq!(milli("16Gi"), 16 * (1 << 30) * 1000);
        assert_eq!(milli("1.5Gi"), 3 * (1 << 29) * 1000);
        assert_eq!(milli("2e3"), 2_000_000);
        assert_eq!(milli("1E"), 1_000_000_000_000_000_000_000);
        assert_eq!(milli("-1"), -1000);
        assert_eq!(milli(" 3 "), 3000);
    }

    #[test]
    fn fractions_of_a_milli_unit_round_up() {
        assert_eq!(milli("0.0001"), 1);
        assert_eq!(milli("1.0001"), 1001);
        assert_eq!(milli("1500026320n"), 1501);
        assert_eq!(milli("1u"), 1);
    }

    #[test]
    fn fractions_of_a_measured_milli_unit_round_down() {
        assert_eq!(Milli::parse_measured("1500026320n").unwrap(), Milli(1500));
        assert_eq!(Milli::parse_measured("999999u").unwrap(), Milli(999));
        assert_eq!(Milli::parse_measured("3Gi").unwrap(), Milli(3 * (1 << 30) * 1000));
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for bad in ["", "lots", "1.2.3", "4x", "Gi", "1e", "1e99", ".", "--1"] {
            assert!(Milli::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(Milli::parse("99999999999999999999999E"), Err(QuantityError::TooLarge(_))));
    }

    #[test]
    fn formats_round_trip() {
        for (text, bytes) in
            [("4", false), ("1500m", false), ("16Gi", true), ("1000", true), ("3Ti", true), ("0", true)]
        {
            let parsed = Milli::parse(text).unwrap();
            assert_eq!(parsed.format(bytes), text);
            assert_eq!(Milli::parse(&parsed.format(bytes)).unwrap(), parsed);
        }
        assert_eq!(Milli::parse("2048Mi").unwrap().format(true), "2Gi");
        assert_eq!(Milli::parse("2k").unwrap().format(false), "2000");
    }
}
