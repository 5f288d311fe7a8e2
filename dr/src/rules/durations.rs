//! Durations as the policy writes them: `30s`, `15m`, `4h`, `7d`, `1h30m`.

/// Seconds of `text`, or what is wrong with it.
pub fn parse(text: &str) -> Result<u64, String> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("{text:?} is not a duration: unknown unit {c:?} (use d, h, m, s)")),
        };
        if digits.is_empty() {
            return Err(format!("{text:?} is not a duration: a number must come before {c:?}"));
        }
        let amount: u64 = digits.parse().map_err(|_| format!("{text:?} is too long a duration"))?;
        total = amount
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        digits.clear();
    }
    if !digits.is_empty() || text.is_empty() {
        return Err(format!("{text:?} is not a duration: end it with a unit (e.g. 30s, 15m, 4h, 7d)"));
    }
    Ok(total)
}

/// `seconds` written the way the policy writes durations, largest units first: `1h30m`, `0s`.
pub fn format(seconds: u64) -> String {
    if seconds == 0 {
        return "0s".into();
    }
    let mut rest = seconds;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("30s"), Ok(30));
        assert_eq!(parse("15m"), Ok(900));
        assert_eq!(parse("1h30m"), Ok(5_400));
        assert_eq!(parse("7d"), Ok(604_800));
        assert_eq!(parse("0s"), Ok(0));
    }

    #[test]
    fn says_what_is_wrong() {
        assert!(parse("30").unwrap_err().contains("end it with a unit"));
        assert!(parse("h").unwrap_err().contains("a number must come before"));
        assert!(parse("3w").unwrap_err().contains("unknown unit"));
        assert!(parse("").is_err());
        assert!(parse("99999999999999999999d").unwrap_err().contains("too long"));
    }

    #[test]
    fn formats_largest_units_first_and_round_trips() {
        assert_eq!(format(0), "0s");
        assert_eq!(format(5_400), "1h30m");
        assert_eq!(format(90_061), "1d1h1m1s");
        for seconds in [1, 59, 60, 3_599, 86_400, 1_000_000] {
            assert_eq!(parse(&format(seconds)), Ok(seconds));
        }
    }
}
