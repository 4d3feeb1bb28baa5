//! Tamper evidence: every event is sealed into its stream's hash chain.
//!
//! **Stream.** One per worker VM: Envoy runs one VM per worker thread, and a chain shared across
//! workers would need a cross-worker lock (shared-data CAS) on the data path for every request.
//! Each VM picks a random 128-bit stream id when it starts; every event carries `stream` and its
//! `seq` (0, 1, 2, ... within the stream).
//!
//! **MAC.** `mac = HMAC-SHA256(chain key, prev || C)`, where `prev` is the previous event's MAC
//! in the same stream (32 zero bytes for `seq` 0) and `C` is the event's canonical bytes: the
//! exact line as written, without its `mac`. The line is `C` with the MAC spliced in as the last
//! member, so `C` is recovered byte-for-byte by cutting a fixed-length suffix, and nothing is
//! re-serialized to verify:
//!
//! - JSON lines: `C` = `{"v":1,"stream":S,"seq":N,...event fields in struct order...}`; the line
//!   ends `,"mac":"<64 hex>"}`.
//! - FHIR: `C` = the AuditEvent with `extension` as its last member; the line ends
//!   `,{"url":"https://phi-guard.dev/fhir/StructureDefinition/audit-mac","valueString":"<64 hex>"}]}`
//!   (lines of earlier releases end with the extension URL `urn:phi-guard:audit:mac`; the
//!   verifier reads both).
//!
//! Editing any byte breaks that line's MAC; deleting, reordering or duplicating lines breaks
//! the `seq` order; forging a line needs the key.

use serde::Serialize;

use super::event::{AuditEvent, Severity};
use super::fhir;
use crate::audit_key::{parse_hex32, push_hex, AuditKey};
use crate::policy::audit::{AuditConfig, AuditFormat};
use crate::time::UnixMillis;

/// Version of the JSON-lines record layout (`v`).
pub const FORMAT_VERSION: u8 = 1;

/// Prefix of every audit line in Envoy's log.
pub const LOG_PREFIX: &str = "phi-guard-audit: ";

const JSONL_MAC_OPEN: &str = ",\"mac\":\"";
const JSONL_MAC_CLOSE: &str = "\"}";
const FHIR_MAC_OPEN: &str = ",{\"url\":\"https://phi-guard.dev/fhir/StructureDefinition/audit-mac\",\"valueString\":\"";
/// The `mac` extension of earlier releases, whose lines still verify.
const LEGACY_FHIR_MAC_OPEN: &str = ",{\"url\":\"urn:phi-guard:audit:mac\",\"valueString\":\"";
const FHIR_MAC_CLOSE: &str = "\"}]}";

/// A sealed event, ready for every sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The line (no newline, no prefix).
    pub line: String,
    /// Its sequence number in the stream.
    pub seq: u64,
    /// Event time (OTLP `timeUnixNano`).
    pub time_ms: UnixMillis,
    /// Event severity (OTLP `severityNumber`).
    pub severity: Severity,
}

impl Sealed {
    /// The line as written to Envoy's log: [`LOG_PREFIX`] + line.
    pub fn log_line(&self) -> String {
        let mut s = String::with_capacity(LOG_PREFIX.len() + self.line.len());
        s.push_str(LOG_PREFIX);
        s.push_str(&self.line);
        s
    }
}

/// One emitting stream's chain state: stream id, next `seq`, last MAC and the key.
#[derive(Debug, Clone)]
pub struct AuditChain {
    stream: String,
    next_seq: u64,
    last_mac: [u8; 32],
    key: AuditKey,
}

#[derive(Serialize)]
struct Header<'a> {
    v: u8,
    stream: &'a str,
    seq: u64,
}

impl AuditChain {
    /// A new stream. `stream_id` is random, chosen once per VM (e.g. 16 bytes from the host's
    /// `random_get`); it is written as 32 hex digits.
    pub fn new(stream_id: [u8; 16], key: AuditKey) -> Self {
        let mut stream = String::with_capacity(32);
        push_hex(&mut stream, &stream_id);
        AuditChain { stream, next_seq: 0, last_mac: [0; 32], key }
    }

    /// The stream id.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The `seq` the next sealed event gets (= events sealed so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Seal an event in the policy's format and advance the chain.
    pub fn seal(&mut self, event: &AuditEvent, config: &AuditConfig) -> Sealed {
        let seq = self.next_seq;
        let (canonical, layout) = match config.format {
            AuditFormat::Jsonl => (self.jsonl(event, seq), AuditFormat::Jsonl),
            AuditFormat::Fhir => {
                // Serializing these plain structs cannot fail; the fallback keeps the chain
                // intact anyway.
                match fhir::render(event, &self.stream, seq, &config.observer) {
                    Ok(s) => (s, AuditFormat::Fhir),
                    Err(_) => (self.jsonl(event, seq), AuditFormat::Jsonl),
                }
            }
        };
        let mac = self.key.chain_mac(&self.last_mac, canonical.as_bytes());
        let line = frame(canonical, &mac, layout);
        self.last_mac = mac;
        self.next_seq = seq.saturating_add(1);
        Sealed { line, seq, time_ms: event.time_ms, severity: event.severity }
    }

    fn jsonl(&self, event: &AuditEvent, seq: u64) -> String {
        let header = serde_json::to_string(&Header { v: FORMAT_VERSION, stream: &self.stream, seq }).unwrap_or_default();
        let body = serde_json::to_string(event).unwrap_or_default();
        let (Some(head), Some(rest)) = (header.strip_suffix('}'), body.strip_prefix('{')) else {
            return format!("{{\"v\":{FORMAT_VERSION},\"stream\":\"{}\",\"seq\":{seq},\"error\":\"unserializable\"}}", self.stream);
        };
        let mut out = String::with_capacity(head.len() + rest.len() + 1);
        out.push_str(head);
        if rest != "}" {
            out.push(',');
        }
        out.push_str(rest);
        out
    }
}

/// Splice the MAC into the canonical bytes as their last member.
fn frame(mut canonical: String, mac: &[u8; 32], layout: AuditFormat) -> String {
    let (cut, open, close) = match layout {
        AuditFormat::Fhir => (2, FHIR_MAC_OPEN, FHIR_MAC_CLOSE),
        AuditFormat::Jsonl => (1, JSONL_MAC_OPEN, JSONL_MAC_CLOSE),
    };
    canonical.truncate(canonical.len().saturating_sub(cut));
    canonical.reserve(open.len() + 64 + close.len());
    canonical.push_str(open);
    push_hex(&mut canonical, mac);
    canonical.push_str(close);
    canonical
}

/// Split a sealed record into its canonical bytes and MAC; `None` if it carries no MAC in
/// either layout.
pub(crate) fn unframe(record: &[u8]) -> Option<(Vec<u8>, [u8; 32])> {
    for (open, close, restore) in
        [(JSONL_MAC_OPEN, JSONL_MAC_CLOSE, "}"), (FHIR_MAC_OPEN, FHIR_MAC_CLOSE, "]}"), (LEGACY_FHIR_MAC_OPEN, FHIR_MAC_CLOSE, "]}")]
    {
        let suffix = open.len() + 64 + close.len();
        let Some(start) = record.len().checked_sub(suffix) else {
            continue;
        };
        let (body, tail) = record.split_at(start);
        let (o, rest) = tail.split_at(open.len());
        let (hex, c) = rest.split_at(64);
        if o == open.as_bytes() && c == close.as_bytes() {
            let mac = parse_hex32(hex)?;
            let mut canonical = Vec::with_capacity(body.len() + restore.len());
            canonical.extend_from_slice(body);
            canonical.extend_from_slice(restore.as_bytes());
            return Some((canonical, mac));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{audit_key as key, chain, event, policy, token};
    use serde_json::{json, Value};

    #[test]
    fn jsonl_lines() {
        let mut p = policy("smart-patient-app");
        p.audit.format = AuditFormat::Jsonl;
        let mut c = chain(1);
        assert_eq!(c.stream(), "01010101010101010101010101010101");
        let ev = event(&p, "GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        let a = c.seal(&ev, &p.audit);
        let b = c.seal(&ev, &p.audit);
        assert_eq!((a.seq, b.seq, c.next_seq()), (0, 1, 2));
        assert_ne!(a.line, b.line, "same event, different place in the chain");
        let v: Value = serde_json::from_str(&a.line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(&keys[..5], ["v", "stream", "seq", "time", "requestId"]);
        assert_eq!(keys.last(), Some(&"mac"));
        assert_eq!((v["v"].as_u64(), v["seq"].as_u64(), v["stream"].as_str()), (Some(1), Some(0), Some(c.stream())));
        let (canonical, mac) = unframe(a.line.as_bytes()).unwrap();
        assert!(key().chain_mac_matches(&[0; 32], &canonical, &mac));
        let canonical: Value = serde_json::from_slice(&canonical).unwrap();
        assert!(canonical.get("mac").is_none());
        assert!(a.log_line().starts_with("phi-guard-audit: {\"v\":1,"));
        assert!(!a.line.contains('\n'));
        // An event ending in an array still frames as a JSON line.
        let w = c.seal(&ev.clone().with_response(200, vec!["Patient.name".into()], None), &p.audit);
        assert!(w.line.ends_with("\"}") && w.line.contains("\"withheld\":[\"Patient.name\"],\"mac\":\""));
        let (canonical, _) = unframe(w.line.as_bytes()).unwrap();
        assert!(canonical.ends_with(b"[\"Patient.name\"]}"));
    }

    #[test]
    fn fhir_lines() {
        let mut p = policy("smart-patient-app");
        p.audit.format = AuditFormat::Fhir;
        let mut c = chain(2);
        let s = c.seal(&event(&p, "GET", "/fhir/Observation?patient=p1", Some(&token(json!({})))), &p.audit);
        let v: Value = serde_json::from_str(&s.line).unwrap();
        assert_eq!(v["resourceType"], "AuditEvent");
        let ext = v["extension"].as_array().unwrap();
        let last = ext.last().unwrap();
        assert_eq!(last["url"], "https://phi-guard.dev/fhir/StructureDefinition/audit-mac");
        assert_eq!(last["valueString"].as_str().unwrap().len(), 64);
        assert!(ext.iter().any(|e| e["url"] == format!("{}stream", fhir::EXT) && e["valueString"] == c.stream()));
        let (canonical, mac) = unframe(s.line.as_bytes()).unwrap();
        assert!(key().chain_mac_matches(&[0; 32], &canonical, &mac));
        assert!(serde_json::from_slice::<Value>(&canonical).is_ok());
    }

    #[test]
    fn unframe_rejects_lookalikes() {
        assert!(unframe(b"{}").is_none());
        assert!(unframe(format!("{{\"a\":1,\"mac\":\"{}\"}}", "A".repeat(64)).as_bytes()).is_none());
        assert!(unframe(format!("{{\"a\":1,\"mac\":\"{}\"}} ", "a".repeat(64)).as_bytes()).is_none());
        assert!(unframe(format!("{{\"a\":1,\"mac\":\"{}\"}}", "a".repeat(64)).as_bytes()).is_some());
    }
}

#[cfg(test)]
mod cost {
    use crate::audit::event::{AuditContext, AuditEvent, RequestMeta};
    use crate::auth::TokenCache;
    use crate::decision::{decide, Request};
    use crate::policy::audit::AuditFormat;
    use crate::testing::{chain, policy, token};
    use serde_json::json;

    /// Run optimized, e.g. `CARGO_PROFILE_TEST_OPT_LEVEL=3 CARGO_PROFILE_DEV_OPT_LEVEL=3
    /// CARGO_TARGET_DIR=/tmp/bench cargo test --lib audit::chain::cost -- --ignored --nocapture`
    /// (the release profile aborts on panic, which the test harness cannot use).
    #[test]
    #[ignore = "timing, run by hand in release mode"]
    fn per_event_cost() {
        let mut p = policy("smart-patient-app");
        let t = token(json!({}));
        let path = "/fhir/Observation?patient=p1&code=1234-5&_count=10";
        let hs = [format!("Bearer {t}")];
        let hs: Vec<&str> = hs.iter().map(String::as_str).collect();
        let mut cache = TokenCache::new(4);
        let d = decide(&p, &mut cache, &Request { method: "GET", path, authorization: &hs, ..Default::default() }, crate::testing::NOW);
        let k = crate::testing::audit_key();
        let meta = RequestMeta {
            request_id: Some("0f3c2a9e-1b7d-4c55-9a0e-3c2f1b7d4c55"),
            source: Some("10.0.0.1:5555"),
            destination: None,
            method: "GET",
            path,
        };
        for format in [AuditFormat::Jsonl, AuditFormat::Fhir] {
            p.audit.format = format;
            let mut c = chain(1);
            let n = 20_000u32;
            let start = std::time::Instant::now();
            for i in 0..n {
                let ev = AuditEvent::from_decision(&d, &meta, &AuditContext::new(&p, &k, crate::time::UnixMillis::new(u64::from(i))))
                    .with_response(200, vec![], None);
                std::hint::black_box(c.seal(&ev, &p.audit));
            }
            println!("{format:?}: {:?} per event (build + seal)", start.elapsed() / n);
            let ev = AuditEvent::from_decision(&d, &meta, &AuditContext::new(&p, &k, crate::time::UnixMillis::new(1)));
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(c.seal(&ev, &p.audit));
            }
            println!("{format:?}: {:?} seal only", start.elapsed() / n);
        }
        let start = std::time::Instant::now();
        for i in 0..20_000u32 {
            std::hint::black_box(AuditEvent::from_decision(
                &d,
                &meta,
                &AuditContext::new(&p, &k, crate::time::UnixMillis::new(u64::from(i))),
            ));
        }
        println!("build only: {:?}", start.elapsed() / 20_000);
        let start = std::time::Instant::now();
        for i in 0..20_000u32 {
            std::hint::black_box(k.pseudonym(&i.to_string()));
        }
        println!("pseudonym: {:?}", start.elapsed() / 20_000);
        let ev = AuditEvent::from_decision(&d, &meta, &AuditContext::new(&p, &k, crate::time::UnixMillis::new(1)));
        let start = std::time::Instant::now();
        for _ in 0..20_000u32 {
            std::hint::black_box(crate::audit::fhir::render(&ev, "s", 1, "o").unwrap());
        }
        println!("fhir render: {:?}", start.elapsed() / 20_000);
        let line = crate::audit::fhir::render(&ev, "s", 1, "o").unwrap();
        let start = std::time::Instant::now();
        for _ in 0..20_000u32 {
            std::hint::black_box(k.chain_mac(&[0; 32], line.as_bytes()));
        }
        println!("mac over {} bytes: {:?}", line.len(), start.elapsed() / 20_000);
    }
}
