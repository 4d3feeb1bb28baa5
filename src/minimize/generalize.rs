//! HIPAA Safe Harbor generalizations (45 CFR 164.514(b)(2)(i)): dates to years, ZIP codes to
//! three digits, ages over 89 to one "90 or older" bucket. Pure string/number functions.

use crate::time::UnixSeconds;

/// Three-digit ZIP prefixes whose areas hold 20,000 people or fewer (HHS Safe Harbor guidance,
/// 2000 Census); they become `000`.
pub const RESTRICTED_ZIP3: [&str; 17] =
    ["036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878", "879", "884", "890", "893"];

/// Element names whose values are FHIR `instant`s (full precision required): a year-only value
/// would be invalid there, so the date policy removes them instead of generalizing.
pub const INSTANT_KEYS: [&str; 6] = ["issued", "lastUpdated", "recorded", "timestamp", "when", "lastModified"];

/// The year of a FHIR `date`, `dateTime` or `instant` string, and whether the value is more
/// precise than a year. `None` when the string is not date-shaped.
pub fn date_year(s: &str) -> Option<(&str, bool)> {
    let b = s.as_bytes();
    let year = s.get(..4)?;
    if !year.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let rest = b.get(4..)?;
    if rest.is_empty() {
        return Some((year, false));
    }
    // -MM
    let month = rest.get(..3)?;
    if month.first() != Some(&b'-') || !two_digits_in(month.get(1..3)?, 1, 12) {
        return None;
    }
    let rest = rest.get(3..)?;
    if rest.is_empty() {
        return Some((year, true));
    }
    let day = rest.get(..3)?;
    if day.first() != Some(&b'-') || !two_digits_in(day.get(1..3)?, 1, 31) {
        return None;
    }
    let rest = rest.get(3..)?;
    // Time and zone: `THH:MM:SS[.fff](Z|+hh:mm)`; some servers also write a bare `Z` on a date.
    let ok = rest.is_empty()
        || rest == b"Z"
        || (rest.first() == Some(&b'T')
            && rest.len() >= 6
            && rest.iter().skip(1).all(|c| c.is_ascii_digit() || matches!(c, b':' | b'.' | b'+' | b'-' | b'Z')));
    ok.then_some((year, true))
}

fn two_digits_in(d: &[u8], lo: u8, hi: u8) -> bool {
    match d {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => (lo..=hi).contains(&((a - b'0') * 10 + (b - b'0'))),
        _ => false,
    }
}

/// The Gregorian year of an instant.
pub fn year_of(at: UnixSeconds) -> i64 {
    let unix_secs = at.as_secs();
    // Howard Hinnant's civil_from_days.
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(i64::MAX / 2) + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

/// Outcome of a generalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generalized {
    /// Already general enough.
    Unchanged,
    /// Replace the value with this.
    Replace(String),
    /// Cannot be generalized safely: remove the value.
    Remove,
}

/// Date, dateTime or instant to its year.
pub fn to_year(s: &str) -> Generalized {
    match date_year(s) {
        Some((_, false)) => Generalized::Unchanged,
        Some((y, true)) => Generalized::Replace(y.to_owned()),
        None => Generalized::Remove,
    }
}

/// A birth date to its year; removed when the person may be 90 or older in `now_year` (the
/// year alone would then be "an element of a date indicative of such age").
pub fn to_birth_year(s: &str, now_year: i64) -> Generalized {
    match date_year(s) {
        Some((y, precise)) => {
            let born: i64 = y.parse().unwrap_or(0);
            if now_year - born >= 90 {
                Generalized::Remove
            } else if precise {
                Generalized::Replace(y.to_owned())
            } else {
                Generalized::Unchanged
            }
        }
        None => Generalized::Remove,
    }
}

/// A US ZIP (or ZIP+4) code to its first three digits, `000` for restricted prefixes. Values
/// that are not ZIP-shaped are removed.
pub fn to_zip3(s: &str) -> Generalized {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let zip_shaped = s.bytes().all(|c| c.is_ascii_digit() || c == b'-' || c == b' ')
        && s.bytes().take(3).all(|c| c.is_ascii_digit())
        && (3..=9).contains(&digits);
    if !zip_shaped {
        return Generalized::Remove;
    }
    let prefix = s.get(..3).unwrap_or("000");
    let out = if RESTRICTED_ZIP3.contains(&prefix) { "000" } else { prefix };
    if s == out {
        Generalized::Unchanged
    } else {
        Generalized::Replace(out.to_owned())
    }
}

/// Years represented by an Age quantity `value` in UCUM `unit`/`code` (`a`, `mo`, `wk`, `d`,
/// `h`, `min`); unknown units are taken as years.
pub fn age_in_years(value: f64, unit: Option<&str>) -> f64 {
    match unit.map(str::trim) {
        Some("mo" | "month" | "months") => value / 12.0,
        Some("wk" | "week" | "weeks") => value / 52.0,
        Some("d" | "day" | "days") => value / 365.0,
        Some("h" | "hour" | "hours") => value / 8766.0,
        Some("min" | "minute" | "minutes") => value / 525_960.0,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Generalized::*;

    #[test]
    fn dates() {
        assert_eq!(date_year("1984"), Some(("1984", false)));
        assert_eq!(date_year("1984-07"), Some(("1984", true)));
        assert_eq!(date_year("1984-07-02"), Some(("1984", true)));
        assert_eq!(date_year("2001-01-01Z"), Some(("2001", true)));
        assert_eq!(date_year("2015-02-07T13:28:17.239+02:00"), Some(("2015", true)));
        assert_eq!(date_year("2015-02-07T13:28:17Z"), Some(("2015", true)));
        for no in [
            "",
            "198",
            "19a4",
            "1984-13",
            "1984-00-01",
            "1984-01-32",
            "1984-1-1",
            "1984-07-02 x",
            "1984-07-02Tabc",
            "Patient/1984",
            "12345",
        ] {
            assert_eq!(date_year(no), None, "{no}");
        }
        assert_eq!(to_year("1957-06-29"), Replace("1957".into()));
        assert_eq!(to_year("1957"), Unchanged);
        assert_eq!(to_year("yesterday"), Remove);
    }

    #[test]
    fn birth_years() {
        assert_eq!(to_birth_year("1984-07-02", 2027), Replace("1984".into()));
        assert_eq!(to_birth_year("1937-07-02", 2027), Remove);
        assert_eq!(to_birth_year("1938", 2027), Unchanged);
        assert_eq!(to_birth_year("soon", 2027), Remove);
    }

    #[test]
    fn zips() {
        assert_eq!(to_zip3("01887"), Replace("018".into()));
        assert_eq!(to_zip3("02108-1234"), Replace("021".into()));
        assert_eq!(to_zip3("123456789"), Replace("123".into()));
        assert_eq!(to_zip3("03601"), Replace("000".into()));
        assert_eq!(to_zip3("89301"), Replace("000".into()));
        assert_eq!(to_zip3("790"), Replace("000".into()));
        assert_eq!(to_zip3("018"), Unchanged);
        assert_eq!(to_zip3("000"), Unchanged);
        assert_eq!(to_zip3("SW1A 1AA"), Remove);
        assert_eq!(to_zip3("12"), Remove);
        assert_eq!(to_zip3("1234567890"), Remove);
        for r in RESTRICTED_ZIP3 {
            assert_eq!(to_zip3(&format!("{r}45")), Replace("000".into()));
        }
    }

    #[test]
    fn years_and_ages() {
        assert_eq!(year_of(UnixSeconds::new(0)), 1970);
        assert_eq!(year_of(UnixSeconds::new(1_800_000_000)), 2027);
        assert_eq!(year_of(UnixSeconds::new(951_782_400)), 2000); // 2000-02-29
        assert_eq!(year_of(UnixSeconds::new(946_684_799)), 1999);
        assert!((age_in_years(1200.0, Some("mo")) - 100.0).abs() < 1e-9);
        assert!((age_in_years(93.0, None) - 93.0).abs() < 1e-9);
    }
}
