//! What a collector's answer to a batch means, as the OTLP/HTTP specification defines it
//! (<https://opentelemetry.io/docs/specs/otlp/#failures-1>), for both collector formats:
//!
//! - 2xx: delivered. An OTLP answer may still report a *partial success*: the records it
//!   names as rejected are refused for good (the specification forbids retrying them).
//! - 429, 502, 503, 504, and no answer at all (connection failure, reset, timeout): transient;
//!   retried after the backoff, or after `Retry-After` when the collector sends one.
//! - Anything else (400, 401, 403, 404, 413, 500, ...): refused for good. Retrying the same
//!   bytes cannot succeed, and would block every later batch behind it.
//!
//! Pure functions of the answer; the sink ([`crate::runtime`]'s audit sink) acts on them.

use serde_json::Value;

use crate::time::UnixMillis;

/// The longest `Retry-After` honoured: a collector cannot park delivery for longer.
pub const RETRY_AFTER_MAX_MS: u64 = 300_000;

/// Most bytes of a 2xx answer read for an OTLP partial success.
pub const ANSWER_READ_MAX: usize = 64 * 1024;

/// What to do with a batch after the collector's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered; `rejected` records of it were refused for good (OTLP partial success),
    /// with the collector's message.
    Delivered { rejected: u64, message: String },
    /// Transient failure: retry, no sooner than `after_ms` if the collector said so.
    Retry { after_ms: Option<u64> },
    /// Refused for good: never retried.
    Refused,
}

/// Whether an HTTP status is one the OTLP specification says to retry.
pub const fn retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The outcome of an answer: its status (`None`: no answer), its `retry-after` header, and for
/// a 2xx OTLP answer, its body (`None` for JSON lines, or when unread).
pub fn classify(status: Option<u16>, retry_after: Option<&str>, otlp_body: Option<&[u8]>, now: UnixMillis) -> Outcome {
    match status {
        // No answer, or not an HTTP status: a connection failure.
        None => Outcome::Retry { after_ms: None },
        Some(s) if !(100..=599).contains(&s) => Outcome::Retry { after_ms: None },
        Some(s) if (200..300).contains(&s) => {
            let (rejected, message) = otlp_body.and_then(partial_success).unwrap_or_default();
            Outcome::Delivered { rejected, message }
        }
        Some(s) if retryable(s) => Outcome::Retry { after_ms: retry_after.and_then(|v| retry_after_ms(v, now)) },
        Some(_) => Outcome::Refused,
    }
}

/// `Retry-After` (RFC 9110 §10.2.3) as a delay from `now` in milliseconds, capped at
/// [`RETRY_AFTER_MAX_MS`]: delta-seconds, or an IMF-fixdate (a date in the past is 0). The
/// obsolete date forms and anything else are `None` (the sink's own backoff applies).
pub fn retry_after_ms(value: &str, now: UnixMillis) -> Option<u64> {
    let v = value.trim();
    let ms = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than u64 is "very long": the cap.
        v.parse::<u64>().map_or(RETRY_AFTER_MAX_MS, |s| s.saturating_mul(1000))
    } else {
        imf_fixdate_ms(v)?.saturating_sub(now.as_millis())
    };
    Some(ms.min(RETRY_AFTER_MAX_MS))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) in milliseconds since the epoch.
fn imf_fixdate_ms(v: &str) -> Option<u64> {
    let b = v.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || b[7] != b' ' || b[11] != b' ' || b[16] != b' ' || &b[25..] != b" GMT" {
        return None;
    }
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    if !DAYS.contains(&&b[..3]) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = b.get(r)?;
        if s.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(s).ok()?.parse().ok()
        } else {
            None
        }
    };
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| *m == &b[8..11])? as u64 + 1;
    let year = num(12..16)?;
    if b[19] != b':' || b[22] != b':' {
        return None;
    }
    let (h, m, s) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some((days * 86_400 + h * 3600 + m * 60 + s) * 1000)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm); `None` for a
/// day the month does not have.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day > *month_days.get(usize::try_from(month.checked_sub(1)?).ok()?)? {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// An `ExportLogsServiceResponse` (OTLP/JSON) naming rejected records: their count and the
/// collector's message. `None` for an empty or other body: a 2xx is then a full success.
fn partial_success(body: &[u8]) -> Option<(u64, String)> {
    if body.is_empty() || body.len() > ANSWER_READ_MAX {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let p = v.get("partialSuccess")?;
    // int64 is a decimal string in OTLP/JSON; accept a number too.
    let rejected = match p.get("rejectedLogRecords")? {
        Value::String(s) => s.parse().ok()?,
        Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    if rejected == 0 {
        return None;
    }
    let message: String = p
        .get("errorMessage")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some((rejected, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis::new(784_111_777_000); // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn statuses_follow_the_otlp_specification() {
        for s in [200, 202, 204] {
            assert_eq!(classify(Some(s), None, None, NOW), Outcome::Delivered { rejected: 0, message: String::new() });
        }
        for s in [429, 502, 503, 504] {
            assert_eq!(classify(Some(s), None, None, NOW), Outcome::Retry { after_ms: None }, "{s}");
        }
        assert_eq!(classify(None, None, None, NOW), Outcome::Retry { after_ms: None }, "no answer: connection failure");
        assert_eq!(classify(Some(0), None, None, NOW), Outcome::Retry { after_ms: None }, "not a status");
        for s in [301, 400, 401, 403, 404, 408, 413, 500, 501, 505] {
            assert_eq!(classify(Some(s), Some("1"), None, NOW), Outcome::Refused, "{s}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_is_honoured_and_capped() {
        assert_eq!(classify(Some(503), Some("7"), None, NOW), Outcome::Retry { after_ms: Some(7_000) });
        assert_eq!(retry_after_ms(" 0 ", NOW), Some(0));
        assert_eq!(retry_after_ms("86400", NOW), Some(RETRY_AFTER_MAX_MS));
        assert_eq!(retry_after_ms("99999999999999999999999", NOW), Some(RETRY_AFTER_MAX_MS));
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:49 GMT", NOW), Some(12_000));
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:00 GMT", NOW), Some(0), "in the past");
        assert_eq!(retry_after_ms("Thu, 01 Jan 1970 00:00:00 GMT", UnixMillis::new(0)), Some(0));
        assert_eq!(imf_fixdate_ms("Thu, 29 Feb 2024 00:00:01 GMT"), Some(1_709_164_801_000));
        assert_eq!(imf_fixdate_ms("Fri, 04 Dec 2026 05:19:10 GMT"), Some(1_796_361_550_000));
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sat, 29 Feb 2025 00:00:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
        ] {
            assert_eq!(retry_after_ms(bad, NOW), None, "{bad:?}");
        }
    }

    #[test]
    fn an_otlp_partial_success_names_records_refused_for_good() {
        let body = br#"{"partialSuccess":{"rejectedLogRecords":"2","errorMessage":"too\nlarge"}}"#;
        assert_eq!(classify(Some(200), None, Some(body), NOW), Outcome::Delivered { rejected: 2, message: "too large".into() });
        let number = br#"{"partialSuccess":{"rejectedLogRecords":3}}"#;
        assert_eq!(classify(Some(200), None, Some(number), NOW), Outcome::Delivered { rejected: 3, message: String::new() });
        for full in [&b""[..], b"{}", br#"{"partialSuccess":{}}"#, br#"{"partialSuccess":{"rejectedLogRecords":"0"}}"#, b"not json"] {
            assert_eq!(classify(Some(200), None, Some(full), NOW), Outcome::Delivered { rejected: 0, message: String::new() });
        }
    }
}
