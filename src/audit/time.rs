//! RFC 3339 timestamps from an injected clock (UTC, milliseconds).

use crate::time::UnixMillis;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`. Years past 9999 are clamped to the last representable instant.
pub fn rfc3339_ms(at: UnixMillis) -> String {
    const MAX_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = at.as_millis().min(MAX_MS);
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `civil_from_days`,
/// restricted to non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339_ms(UnixMillis::new(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(UnixMillis::new(951_782_400_000)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(UnixMillis::new(1_800_000_000_123)), "2027-01-15T08:00:00.123Z");
        assert_eq!(rfc3339_ms(UnixMillis::new(1_709_251_199_999)), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(UnixMillis::new(4_102_444_800_000)), "2100-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(UnixMillis::new(u64::MAX)), "9999-12-31T23:59:59.999Z");
    }
}
