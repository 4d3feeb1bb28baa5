//! Check the `audit` object and fill its defaults. Errors are located under `audit.`.

use super::{AuditConfig, AuditFormat, CollectorConfig, CollectorFormat, PatientIds};
use crate::schema::audit::{AuditDoc, CollectorDoc};
use crate::schema::{CompileError, Loc};

/// Collector failures tolerated before the sink counts as down, when `failureLimit` is absent.
pub const DEFAULT_FAILURE_LIMIT: u32 = 5;

/// Compile the optional `audit` object; absent means [`AuditConfig::default`].
pub fn compile_audit(doc: Option<&AuditDoc>, loc: &Loc<'_>) -> Result<AuditConfig, CompileError> {
    let Some(doc) = doc else {
        return Ok(AuditConfig::default());
    };
    let format = match doc.format.as_deref() {
        None | Some("jsonl") => AuditFormat::Jsonl,
        Some("fhir") => AuditFormat::Fhir,
        Some(f) => return Err(loc.field("format").error(format!("unknown format `{f}`; expected `jsonl` or `fhir`"))),
    };
    let patient_ids = match doc.patient_identifiers.as_deref() {
        None | Some("pseudonym") => PatientIds::Pseudonym,
        Some("raw") => PatientIds::Raw,
        Some(p) => return Err(loc.field("patientIdentifiers").error(format!("unknown value `{p}`; expected `pseudonym` or `raw`"))),
    };
    let observer = doc.observer.clone().unwrap_or_else(|| "phi-guard".to_owned());
    if !token_like(&observer, 128) {
        return Err(loc.field("observer").error(format!("`{observer}` must be 1-128 characters of [A-Za-z0-9._:/-]")));
    }
    let envoy_log = doc.envoy_log.unwrap_or(true);
    // What a crash can lose from Envoy's log: the lines held, at most this long (and at most
    // `ENVOY_LOG_BATCH_EVENTS` of them).
    let envoy_log_flush_ms = loc.field("envoyLogFlushMs").bounded(doc.envoy_log_flush_ms, 0, 0..=10_000)?;
    let collector = doc.collector.as_ref().map(|c| compile_collector(c, &loc.field("collector"))).transpose()?;
    let audit_required = doc.audit_required.unwrap_or(false);
    let failure_limit = loc.field("failureLimit").bounded(doc.failure_limit, DEFAULT_FAILURE_LIMIT, 1..=10_000)?;
    if !envoy_log && collector.is_none() {
        return Err(loc.field("envoyLog").error("every event needs a sink: keep `envoyLog` or configure a `collector`"));
    }
    if audit_required && collector.is_none() {
        return Err(loc.field("auditRequired").error("needs a `collector`: Envoy's log cannot report delivery failures"));
    }
    Ok(AuditConfig { format, patient_ids, observer, envoy_log, envoy_log_flush_ms, collector, audit_required, failure_limit })
}

fn compile_collector(c: &CollectorDoc, loc: &Loc<'_>) -> Result<CollectorConfig, CompileError> {
    if !token_like(&c.cluster, 255) {
        return Err(loc.field("cluster").error(format!("`{}` must be an Envoy cluster name ([A-Za-z0-9._:/-])", c.cluster)));
    }
    if !c.path.starts_with('/') || c.path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(loc.field("path").error(format!("`{}` must be an absolute path", c.path)));
    }
    let authority = c.authority.clone().unwrap_or_else(|| c.cluster.clone());
    if authority.is_empty() || authority.chars().any(|ch| ch.is_whitespace() || ch.is_control() || ch == '/') {
        return Err(loc.field("authority").error(format!("`{authority}` is not a valid authority")));
    }
    let format = match c.format.as_deref() {
        None | Some("jsonl") => CollectorFormat::Jsonl,
        Some("otlp") => CollectorFormat::Otlp,
        Some(f) => return Err(loc.field("format").error(format!("unknown format `{f}`; expected `jsonl` or `otlp`"))),
    };
    let batch_max_events = loc.field("batchMaxEvents").bounded(c.batch_max_events, 100, 1..=10_000)?;
    let flush_interval_ms = loc.field("flushIntervalMs").bounded(c.flush_interval_ms, 1_000, 10..=60_000)?;
    let queue_max_events = loc.field("queueMaxEvents").bounded(c.queue_max_events, 10_000, 1..=1_000_000)?;
    if queue_max_events < batch_max_events {
        return Err(loc
            .field("queueMaxEvents")
            .error(format!("`{queue_max_events}` must be at least `batchMaxEvents` ({batch_max_events})")));
    }
    let max_retries = c.max_retries.map(|_| loc.field("maxRetries").bounded(c.max_retries, 0, 0..=1_000)).transpose()?;
    let timeout_ms = loc.field("timeoutMs").bounded(c.timeout_ms, 5_000, 100..=60_000)?;
    let backoff_initial_ms = loc.field("backoffInitialMs").bounded(c.backoff_initial_ms, 250, 10..=60_000)?;
    let backoff_max_ms = loc.field("backoffMaxMs").bounded(c.backoff_max_ms, 30_000, 10..=600_000)?;
    if backoff_max_ms < backoff_initial_ms {
        return Err(loc
            .field("backoffMaxMs")
            .error(format!("`{backoff_max_ms}` must be at least `backoffInitialMs` ({backoff_initial_ms})")));
    }
    let service_name = c.service_name.clone().unwrap_or_else(|| "phi-guard".to_owned());
    if !token_like(&service_name, 128) {
        return Err(loc.field("serviceName").error(format!("`{service_name}` must be 1-128 characters of [A-Za-z0-9._:/-]")));
    }
    Ok(CollectorConfig {
        cluster: c.cluster.clone(),
        authority,
        path: c.path.clone(),
        format,
        batch_max_events,
        flush_interval_ms,
        queue_max_events,
        max_retries,
        timeout_ms,
        backoff_initial_ms,
        backoff_max_ms,
        service_name,
    })
}

/// A short name safe to copy into every event and header: no spaces, quotes or controls.
fn token_like(s: &str, max: usize) -> bool {
    crate::ident::shaped(s, max, b"._:/-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile;
    use serde_json::{json, Value};

    fn example() -> Value {
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/clinician-api.json")).unwrap())
            .unwrap()
    }

    fn with_audit(audit: Value) -> Result<AuditConfig, CompileError> {
        let mut doc = example();
        doc["audit"] = audit;
        // The example's restriction names its patient by pseudonym; not this test's concern.
        doc.as_object_mut().unwrap().remove("restrictions");
        compile(&serde_json::to_vec(&doc).unwrap()).map(|p| p.audit)
    }

    #[test]
    fn defaults() {
        let mut doc = example();
        doc.as_object_mut().unwrap().remove("audit");
        let p = compile(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(p.audit, AuditConfig::default());
        let a = with_audit(json!({})).unwrap();
        assert_eq!(a, AuditConfig::default());
        let a = with_audit(json!({"collector": {"cluster": "otel", "path": "/v1/logs", "format": "otlp"}})).unwrap();
        let c = a.collector.unwrap();
        assert_eq!((c.authority.as_str(), c.batch_max_events, c.queue_max_events, c.max_retries), ("otel", 100, 10_000, None));
        assert_eq!(c.content_type(), "application/json");
        assert_eq!((c.backoff_ms(1), c.backoff_ms(2), c.backoff_ms(3), c.backoff_ms(40), c.backoff_ms(0)), (250, 500, 1000, 30_000, 250));
    }

    #[test]
    fn errors_name_their_location() {
        let collector = |extra: Value| {
            let mut c = json!({"cluster": "audit", "path": "/ingest"});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            json!({"collector": c})
        };
        let cases = vec![
            (json!({"format": "xml"}), "audit.format: unknown format `xml`"),
            (json!({"bogus": 1}), "audit.bogus: unknown field `bogus`"),
            (json!({"patientIdentifiers": "hashed"}), "audit.patientIdentifiers"),
            (json!({"observer": "has space"}), "audit.observer"),
            (json!({"envoyLog": false}), "audit.envoyLog: every event needs a sink"),
            (json!({"auditRequired": true}), "audit.auditRequired: needs a `collector`"),
            (json!({"failureLimit": 0}), "audit.failureLimit: `0` must be between 1 and 10000"),
            (json!({"collector": {"cluster": "x"}}), "audit.collector: missing field `path`"),
            (collector(json!({"batchMaxEvents": 0})), "audit.collector.batchMaxEvents"),
            (collector(json!({"batchMaxEvents": 500, "queueMaxEvents": 100})), "audit.collector.queueMaxEvents"),
            (collector(json!({"format": "protobuf"})), "audit.collector.format: unknown format `protobuf`"),
            (collector(json!({"path": "v1/logs"})), "audit.collector.path"),
            (collector(json!({"cluster": ""})), "audit.collector.cluster"),
            (collector(json!({"backoffInitialMs": 5000, "backoffMaxMs": 1000})), "audit.collector.backoffMaxMs"),
            (collector(json!({"retries": 3})), "audit.collector.retries: unknown field `retries`"),
        ];
        for (audit, want) in cases {
            let e = with_audit(audit.clone()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{audit}: got `{e}`, want prefix `{want}`");
        }
    }

    #[test]
    fn full_object() {
        let a = with_audit(json!({
            "format": "fhir", "patientIdentifiers": "raw", "observer": "gw-east-1", "envoyLog": false,
            "collector": {"cluster": "audit", "path": "/ingest", "format": "jsonl", "batchMaxEvents": 10, "queueMaxEvents": 10},
            "auditRequired": true, "failureLimit": 3
        }))
        .unwrap();
        assert_eq!(
            (a.format, a.patient_ids, a.observer.as_str(), a.envoy_log, a.audit_required, a.failure_limit),
            (AuditFormat::Fhir, PatientIds::Raw, "gw-east-1", false, true, 3)
        );
        assert_eq!(a.collector.unwrap().content_type(), "application/x-ndjson");
    }
}
