//! Check an audit log: every stream's chain, record by record, reporting the first bad one.
//!
//! Two kinds of input:
//! - **Envoy's log**: some line carries [`LOG_PREFIX`]. Records are what follows the prefix
//!   (the text before it is Envoy's own); other lines are skipped and counted, except a line
//!   that still looks sealed (it carries a `mac`) but lost its prefix: that is an edit.
//! - **A collector's file**: no line carries the prefix. Every non-blank line is a record: a
//!   sealed line, or an OTLP/JSON export (`{"resourceLogs":...}`, e.g. an OpenTelemetry
//!   Collector file exporter) whose log-record bodies are checked in order.
//!
//! Streams may interleave; each is checked against its own `seq` and MAC chain.
//!
//! What a chain cannot show by itself: events cut from the *end* of a stream. Compare each
//! stream's last `seq` (in the [`Summary`]) with the sender's counters or a later segment.

use std::collections::HashMap;

use serde_json::Value;
use thiserror::Error;

use super::chain::{unframe, LOG_PREFIX};
use super::fhir::{EXT, LEGACY_EXT};
use crate::audit_key::{push_hex, AuditKey};

/// One stream seen in a verified log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// Stream id.
    pub stream: String,
    /// Events verified (`seq` 0 to `events - 1`).
    pub events: u64,
    /// MAC of the last event (hex), to compare with a later segment or an external anchor.
    pub last_mac: String,
}

/// A log whose every record verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Records verified.
    pub events: u64,
    /// Streams, in order of first appearance.
    pub streams: Vec<StreamSummary>,
    /// Lines that were not audit records (other Envoy log output, blank lines).
    pub skipped_lines: u64,
}

/// Why a record is bad.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Failure {
    /// Not JSON, not UTF-8, or missing `stream`/`seq`: edited or cut off.
    #[error("unparseable record ({0}): edited or truncated")]
    Unparseable(String),
    /// JSON without a phi-guard `mac`.
    #[error("record carries no `mac`: not a sealed phi-guard audit record, or edited")]
    MissingMac,
    /// The MAC does not match the record and its predecessor.
    #[error("bad mac at stream `{stream}` seq {seq}: the record was edited or forged")]
    BadMac {
        /// Stream id.
        stream: String,
        /// Claimed sequence number.
        seq: u64,
    },
    /// A later `seq` than expected.
    #[error("stream `{stream}`: expected seq {expected}, found {found}: records deleted or reordered")]
    Gap {
        /// Stream id.
        stream: String,
        /// Next expected.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// The previous record again.
    #[error("stream `{stream}`: seq {seq} is duplicated")]
    Duplicate {
        /// Stream id.
        stream: String,
        /// Repeated sequence number.
        seq: u64,
    },
    /// An earlier `seq` than expected.
    #[error("stream `{stream}`: expected seq {expected}, found {found}: records replayed or reordered")]
    OutOfOrder {
        /// Stream id.
        stream: String,
        /// Next expected.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// The first record seen of a stream is not its `seq` 0.
    #[error("stream `{stream}` starts at seq {found}, not 0: its first records were deleted")]
    StartsLate {
        /// Stream id.
        stream: String,
        /// First seq seen.
        found: u64,
    },
}

/// The first bad record and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line_no}: {reason}")]
pub struct VerifyError {
    /// 1-based line number in the input.
    pub line_no: usize,
    /// What is wrong.
    pub reason: Failure,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, usize>,
    chains: Vec<(StreamSummary, [u8; 32])>,
    events: u64,
}

/// Verify a whole log (split on `\n`; a trailing `\r` is ignored).
pub fn verify_log(log: &[u8], key: &AuditKey) -> Result<Summary, VerifyError> {
    verify(log.split(|b| *b == b'\n'), key)
}

/// Verify lines in order.
pub fn verify<'a>(lines: impl IntoIterator<Item = &'a [u8]>, key: &AuditKey) -> Result<Summary, VerifyError> {
    let lines: Vec<&[u8]> = lines.into_iter().map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect();
    let envoy_log = lines.iter().any(|l| find(l, LOG_PREFIX.as_bytes()).is_some());
    let mut state = State::default();
    let mut skipped = 0u64;
    for (i, line) in lines.into_iter().enumerate() {
        let line_no = i + 1;
        let fail = |reason| VerifyError { line_no, reason };
        let record = match find(line, LOG_PREFIX.as_bytes()) {
            Some(at) => line.get(at + LOG_PREFIX.len()..).unwrap_or_default(),
            None if line.trim_ascii().is_empty() => continue,
            None if !envoy_log => line.trim_ascii(),
            None if find(line, b"\"mac\":\"").is_some()
                || find(line, b"audit-mac\"").is_some()
                || find(line, b"urn:phi-guard:audit:mac").is_some() =>
            {
                return Err(fail(Failure::Unparseable(format!("sealed record without the `{}` prefix", LOG_PREFIX.trim_end()))));
            }
            None => {
                skipped += 1;
                continue;
            }
        };
        if unframe(record).is_none() {
            if let Some(bodies) = otlp_bodies(record) {
                for body in bodies {
                    state.check(body.as_bytes(), key).map_err(fail)?;
                }
                continue;
            }
        }
        state.check(record, key).map_err(fail)?;
    }
    let State { chains, events, .. } = state;
    Ok(Summary { events, streams: chains.into_iter().map(|(s, _)| s).collect(), skipped_lines: skipped })
}

impl State {
    fn check(&mut self, record: &[u8], key: &AuditKey) -> Result<(), Failure> {
        let Some((canonical, mac)) = unframe(record) else {
            return Err(match serde_json::from_slice::<Value>(record) {
                Ok(_) => Failure::MissingMac,
                Err(e) => Failure::Unparseable(e.to_string()),
            });
        };
        let value: Value = serde_json::from_slice(&canonical).map_err(|e| Failure::Unparseable(e.to_string()))?;
        let (stream, seq) = position(&value).ok_or_else(|| Failure::Unparseable("no `stream` and `seq`".to_owned()))?;
        match self.streams.get(stream).and_then(|i| self.chains.get_mut(*i)) {
            None => {
                if seq != 0 {
                    return Err(Failure::StartsLate { stream: stream.to_owned(), found: seq });
                }
                if !key.chain_mac_matches(&[0; 32], &canonical, &mac) {
                    return Err(Failure::BadMac { stream: stream.to_owned(), seq });
                }
                self.streams.insert(stream.to_owned(), self.chains.len());
                self.chains.push((StreamSummary { stream: stream.to_owned(), events: 1, last_mac: hex(&mac) }, mac));
            }
            Some((summary, last)) => {
                let expected = summary.events;
                let stream = stream.to_owned();
                if seq > expected {
                    return Err(Failure::Gap { stream, expected, found: seq });
                }
                if seq < expected {
                    return Err(if seq + 1 == expected && mac == *last {
                        Failure::Duplicate { stream, seq }
                    } else {
                        Failure::OutOfOrder { stream, expected, found: seq }
                    });
                }
                if !key.chain_mac_matches(last, &canonical, &mac) {
                    return Err(Failure::BadMac { stream, seq });
                }
                summary.events += 1;
                summary.last_mac = hex(&mac);
                *last = mac;
            }
        }
        self.events += 1;
        Ok(())
    }
}

/// `stream` and `seq` of a JSON-lines record or a FHIR AuditEvent.
fn position(v: &Value) -> Option<(&str, u64)> {
    if v.get("resourceType").and_then(Value::as_str) == Some("AuditEvent") {
        let ext = v.get("extension")?.as_array()?;
        let find = |name: &str, kind: &str| {
            ext.iter()
                .find(|e| {
                    let url = e.get("url").and_then(Value::as_str);
                    url.and_then(|u| u.strip_prefix(EXT).or_else(|| u.strip_prefix(LEGACY_EXT))) == Some(name)
                })
                .and_then(|e| e.get(kind))
        };
        Some((find("stream", "valueString")?.as_str()?, find("seq", "valueDecimal")?.as_u64()?))
    } else {
        Some((v.get("stream")?.as_str()?, v.get("seq")?.as_u64()?))
    }
}

/// Log-record string bodies of an OTLP/JSON logs export, in order; `None` if not one.
fn otlp_bodies(record: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(record).ok()?;
    let mut out = Vec::new();
    for rl in v.get("resourceLogs")?.as_array()? {
        for sl in rl.get("scopeLogs").and_then(Value::as_array).into_iter().flatten() {
            for lr in sl.get("logRecords").and_then(Value::as_array).into_iter().flatten() {
                if let Some(body) = lr.get("body").and_then(|b| b.get("stringValue")).and_then(Value::as_str) {
                    out.push(body.to_owned());
                }
            }
        }
    }
    Some(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn hex(mac: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    push_hex(&mut s, mac);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::batch::otlp_logs;
    use crate::audit::chain::Sealed;
    use crate::policy::audit::AuditFormat;
    use crate::testing::chain;
    use crate::testing::{audit_key as key, event, policy, token};
    use serde_json::json;

    /// `n` sealed lines from one stream, alternating allowed and denied requests.
    fn lines(id: u8, n: usize, format: AuditFormat) -> Vec<String> {
        sealed(id, n, format).into_iter().map(|s| s.line).collect()
    }

    fn sealed(id: u8, n: usize, format: AuditFormat) -> Vec<Sealed> {
        let mut p = policy("smart-patient-app");
        p.audit.format = format;
        let t = token(json!({}));
        let mut c = chain(id);
        (0..n)
            .map(|i| {
                let ev = if i % 2 == 0 {
                    event(&p, "GET", "/fhir/Patient/p1", Some(&t))
                } else {
                    event(&p, "GET", "/fhir/Observation?patient=p2", Some(&t))
                };
                c.seal(&ev, &p.audit)
            })
            .collect()
    }

    fn run(lines: &[String]) -> Result<Summary, VerifyError> {
        verify(lines.iter().map(|l| l.as_bytes()), &key())
    }

    fn bad_line(lines: &[String]) -> (usize, Failure) {
        let e = run(lines).unwrap_err();
        (e.line_no, e.reason)
    }

    #[test]
    fn clean_logs_verify() {
        for format in [AuditFormat::Jsonl, AuditFormat::Fhir] {
            let l = lines(1, 6, format);
            let s = run(&l).unwrap();
            assert_eq!((s.events, s.streams.len(), s.streams[0].events, s.skipped_lines), (6, 1, 6, 0));
        }
        assert_eq!(run(&[]).unwrap(), Summary::default());
    }

    /// Lines of earlier releases (extension URLs `urn:phi-guard:audit:*`) still verify.
    #[test]
    fn legacy_fhir_lines_verify() {
        let k = key();
        let mut prev = [0u8; 32];
        let legacy: Vec<String> = lines(1, 4, AuditFormat::Fhir)
            .iter()
            .map(|l| {
                let (canonical, _) = unframe(l.as_bytes()).unwrap();
                let old = String::from_utf8(canonical).unwrap().replace(EXT, LEGACY_EXT);
                assert!(!old.contains("phi-guard.dev"));
                let mac = k.chain_mac(&prev, old.as_bytes());
                prev = mac;
                let mut hex = String::new();
                push_hex(&mut hex, &mac);
                format!("{},{{\"url\":\"urn:phi-guard:audit:mac\",\"valueString\":\"{hex}\"}}]}}", &old[..old.len() - 2])
            })
            .collect();
        assert_eq!(run(&legacy).unwrap().events, 4);
        let mut edited = legacy.clone();
        edited[2] = edited[2].replacen("\"action\":\"", "\"action\":\"X", 1);
        assert!(matches!(bad_line(&edited), (3, Failure::BadMac { .. })));
    }

    #[test]
    fn edits_are_reported_at_their_line() {
        let l = lines(1, 5, AuditFormat::Jsonl);
        // Flip one byte in many places of line 3: every edit is caught there.
        let target = &l[2];
        for at in (0..target.len()).step_by(7) {
            let mut edited = l.clone();
            let mut bytes = edited[2].clone().into_bytes();
            bytes[at] ^= 0x01;
            let e = verify(edited.iter().enumerate().map(|(i, s)| if i == 2 { &bytes[..] } else { s.as_bytes() }), &key()).unwrap_err();
            assert_eq!(e.line_no, 3, "byte {at}: {e}");
            edited[2] = String::from_utf8_lossy(&bytes).into_owned();
        }
        let mut edited = l.clone();
        // Line 3 records an allowed read; rewrite it as a refusal.
        edited[2] = edited[2].replace("\"decision\":\"allow\",\"outcome\":0", "\"decision\":\"deny\",\"outcome\":8");
        assert_ne!(edited[2], l[2]);
        assert!(matches!(bad_line(&edited), (3, Failure::BadMac { seq: 2, .. })));
        // Same edit in the FHIR layout.
        let f = lines(1, 3, AuditFormat::Fhir);
        let mut edited = f.clone();
        edited[1] = edited[1].replacen("\"outcome\":\"8\"", "\"outcome\":\"0\"", 1);
        assert_ne!(edited[1], f[1]);
        assert!(matches!(bad_line(&edited), (2, Failure::BadMac { seq: 1, .. })));
    }

    #[test]
    fn deletion_reorder_duplication_truncation() {
        let l = lines(1, 5, AuditFormat::Jsonl);
        let mut deleted = l.clone();
        deleted.remove(2);
        assert!(matches!(bad_line(&deleted), (3, Failure::Gap { expected: 2, found: 3, .. })));
        let mut first_deleted = l.clone();
        first_deleted.remove(0);
        assert!(matches!(bad_line(&first_deleted), (1, Failure::StartsLate { found: 1, .. })));
        let mut swapped = l.clone();
        swapped.swap(1, 2);
        assert!(matches!(bad_line(&swapped), (2, Failure::Gap { expected: 1, found: 2, .. })));
        let mut duplicated = l.clone();
        duplicated.insert(3, l[2].clone());
        assert!(matches!(bad_line(&duplicated), (4, Failure::Duplicate { seq: 2, .. })));
        let mut replayed = l.clone();
        replayed.push(l[1].clone());
        assert!(matches!(bad_line(&replayed), (6, Failure::OutOfOrder { expected: 5, found: 1, .. })));
        let mut truncated = l.clone();
        let cut = truncated[4].len() / 2;
        truncated[4].truncate(cut);
        assert!(matches!(bad_line(&truncated), (5, Failure::Unparseable(_))));
        let mut no_mac = l.clone();
        no_mac[3] = r#"{"v":1,"stream":"x","seq":3}"#.to_owned();
        assert!(matches!(bad_line(&no_mac), (4, Failure::MissingMac)));
        let other_key = AuditKey::from_secret(b"another-secret-0123456789abcdefghij").unwrap();
        let e = verify(l.iter().map(|s| s.as_bytes()), &other_key).unwrap_err();
        assert!(matches!((e.line_no, e.reason), (1, Failure::BadMac { seq: 0, .. })));
    }

    #[test]
    fn interleaved_streams_and_envoy_log_lines() {
        let a = lines(1, 4, AuditFormat::Jsonl);
        let b = lines(2, 3, AuditFormat::Fhir);
        let mut log = vec!["[2027-01-15 08:00:00.000][12][info][main] starting".to_owned()];
        let (mut ia, mut ib) = (a.iter(), b.iter());
        for i in 0..7 {
            let next = if i % 2 == 0 { ia.next().or_else(|| ib.next()) } else { ib.next().or_else(|| ia.next()) };
            log.push(format!("[2027-01-15 08:00:00.{i:03}][1{i}][info][wasm] wasm log phi-guard: {LOG_PREFIX}{}", next.unwrap()));
        }
        log.push(String::new());
        let s = verify_log(log.join("\r\n").as_bytes(), &key()).unwrap();
        assert_eq!((s.events, s.streams.len(), s.skipped_lines), (7, 2, 1));
        assert_eq!((s.streams[0].events, s.streams[1].events), (4, 3));
        // Each stream is still checked on its own: swapping b's records is caught.
        let pos = |log: &[String], needle: &String| log.iter().position(|l| l.ends_with(needle.as_str())).unwrap();
        let (i1, i2) = (pos(&log, &b[1]), pos(&log, &b[2]));
        log.swap(i1, i2);
        let e = verify_log(log.join("\n").as_bytes(), &key()).unwrap_err();
        assert_eq!(e.line_no, i1 + 1);
        assert!(matches!(e.reason, Failure::Gap { expected: 1, found: 2, .. }));
        log.swap(i1, i2);
        // A record whose prefix was edited away is reported, not skipped.
        let i = pos(&log, &a[2]);
        log[i] = log[i].replace("phi-guard-audit:", "phi-guard-audlt:");
        let e = verify_log(log.join("\n").as_bytes(), &key()).unwrap_err();
        assert_eq!(e.line_no, i + 1);
        assert!(matches!(e.reason, Failure::Unparseable(_)));
    }

    #[test]
    fn otlp_exports_verify() {
        let s = sealed(5, 5, AuditFormat::Jsonl);
        let stream = "05".repeat(16);
        let export = [
            otlp_logs(&s[..2], &stream, "phi-guard", crate::time::UnixMillis::new(0)),
            otlp_logs(&s[2..], &stream, "phi-guard", crate::time::UnixMillis::new(0)),
        ];
        assert_eq!(verify(export.iter().map(|l| l.as_bytes()), &key()).unwrap().events, 5);
        let broken = [
            otlp_logs(&s[..2], &stream, "phi-guard", crate::time::UnixMillis::new(0)),
            otlp_logs(&s[3..], &stream, "phi-guard", crate::time::UnixMillis::new(0)),
        ];
        let e = verify(broken.iter().map(|l| l.as_bytes()), &key()).unwrap_err();
        assert!(matches!((e.line_no, e.reason), (2, Failure::Gap { expected: 2, found: 3, .. })));
    }
}
