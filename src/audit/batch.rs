//! Collector request bodies for a batch of sealed lines: JSON lines, or OTLP/HTTP JSON logs
//! (what an OpenTelemetry Collector accepts at `/v1/logs`).

use serde_json::{json, Value};

use super::chain::Sealed;
use crate::policy::audit::{CollectorConfig, CollectorFormat};
use crate::time::UnixMillis;

/// Instrumentation scope name of OTLP log records.
pub const OTLP_SCOPE: &str = "phi-guard.audit";
/// OTLP `eventName` of every record: one access decision, sealed.
pub const OTLP_EVENT_NAME: &str = "phi_guard.audit.decision";

/// The body to POST for `batch` (from the chain whose stream id is `stream`), built at
/// `observed` (OTLP `observedTimeUnixNano`: when the shipper took the events).
pub fn batch_body(config: &CollectorConfig, batch: &[Sealed], stream: &str, observed: UnixMillis) -> String {
    match config.format {
        CollectorFormat::Jsonl => jsonl_batch(batch),
        CollectorFormat::Otlp => otlp_logs(batch, stream, &config.service_name, observed),
    }
}

/// Sealed lines, each followed by `\n`.
pub fn jsonl_batch(batch: &[Sealed]) -> String {
    let mut out = String::with_capacity(batch.iter().map(|s| s.line.len() + 1).sum());
    for s in batch {
        out.push_str(&s.line);
        out.push('\n');
    }
    out
}

/// An OTLP `ExportLogsServiceRequest` in the OTLP/JSON encoding: one resource (this service,
/// its version, and the stream as `service.instance.id`), one scope, one log record per sealed
/// line with the line as its string body and [`OTLP_EVENT_NAME`] as its event name. 64-bit
/// integers are decimal strings, as OTLP/JSON requires.
pub fn otlp_logs(batch: &[Sealed], stream: &str, service_name: &str, observed: UnixMillis) -> String {
    let observed = nanos(observed);
    let records: Vec<Value> = batch
        .iter()
        .map(|s| {
            let (number, text) = s.severity.otlp();
            json!({
                "timeUnixNano": nanos(s.time_ms),
                "observedTimeUnixNano": observed,
                "severityNumber": number,
                "severityText": text,
                "body": {"stringValue": s.line},
                "attributes": [{"key": "phi_guard.audit.seq", "value": {"intValue": s.seq.to_string()}}],
                "eventName": OTLP_EVENT_NAME,
            })
        })
        .collect();
    json!({
        "resourceLogs": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service_name}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
                {"key": "service.instance.id", "value": {"stringValue": stream}},
            ]},
            "scopeLogs": [{
                "scope": {"name": OTLP_SCOPE, "version": env!("CARGO_PKG_VERSION")},
                "logRecords": records,
            }],
        }]
    })
    .to_string()
}

/// Nanoseconds since the epoch as OTLP/JSON writes a `fixed64`: a decimal string.
fn nanos(t: UnixMillis) -> String {
    t.as_millis().saturating_mul(1_000_000).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::audit::CollectorConfig;
    use crate::testing::{chain, event, policy, token};
    use serde_json::json;

    fn sealed() -> (Vec<Sealed>, String) {
        let p = policy("smart-patient-app");
        let mut c = chain(3);
        let ok = c.seal(&event(&p, "GET", "/fhir/Patient/p1", Some(&token(json!({})))), &p.audit);
        let no = c.seal(&event(&p, "GET", "/fhir/Patient/p1", None), &p.audit);
        (vec![ok, no], c.stream().to_owned())
    }

    #[test]
    fn otlp_json_shape() {
        let (batch, stream) = sealed();
        let v: Value = serde_json::from_str(&otlp_logs(&batch, &stream, "phi-guard", UnixMillis::new(1_800_000_000_500))).unwrap();
        let rl = &v["resourceLogs"][0];
        let attrs: Vec<(&str, &str)> = rl["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["key"].as_str().unwrap(), a["value"]["stringValue"].as_str().unwrap()))
            .collect();
        assert_eq!(
            attrs,
            [("service.name", "phi-guard"), ("service.version", env!("CARGO_PKG_VERSION")), ("service.instance.id", stream.as_str())]
        );
        let recs = rl["scopeLogs"][0]["logRecords"].as_array().unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["timeUnixNano"], "1800000000042000000");
        assert_eq!(recs[1]["observedTimeUnixNano"], "1800000000500000000", "when the batch was built");
        assert_eq!((recs[0]["eventName"].as_str(), recs[1]["eventName"].as_str()), (Some(OTLP_EVENT_NAME), Some(OTLP_EVENT_NAME)));
        assert_eq!((recs[0]["severityNumber"].as_u64(), recs[1]["severityNumber"].as_u64()), (Some(9), Some(17)));
        assert_eq!(recs[1]["body"]["stringValue"], batch[1].line.as_str());
        assert_eq!(recs[1]["attributes"][0]["value"]["intValue"], "1");
    }

    #[test]
    fn bodies_by_format() {
        let (batch, stream) = sealed();
        let jsonl = jsonl_batch(&batch);
        assert_eq!(jsonl.lines().collect::<Vec<_>>(), [batch[0].line.as_str(), batch[1].line.as_str()]);
        assert!(jsonl.ends_with('\n'));
        let mut cfg = CollectorConfig {
            cluster: "c".into(),
            authority: "c".into(),
            path: "/v1/logs".into(),
            format: CollectorFormat::Otlp,
            batch_max_events: 10,
            flush_interval_ms: 100,
            queue_max_events: 10,
            max_retries: Some(1),
            timeout_ms: 100,
            backoff_initial_ms: 10,
            backoff_max_ms: 10,
            service_name: "svc".into(),
        };
        assert!(batch_body(&cfg, &batch, &stream, UnixMillis::new(0)).starts_with("{\"resourceLogs\""));
        cfg.format = CollectorFormat::Jsonl;
        assert_eq!(batch_body(&cfg, &batch, &stream, UnixMillis::new(0)), jsonl);
    }
}
