//! Wire types of the policy's top-level `audit` object. Serde only: every struct rejects unknown
//! fields; `policy::audit::compile` checks values and fills defaults.

use serde::Deserialize;

/// `audit`: how every decision is recorded.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditDoc {
    /// Line format: `jsonl` (default) or `fhir` (FHIR R4 AuditEvent, IHE BALP).
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("enum" = ["jsonl", "fhir", null])))]
    pub format: Option<String>,
    /// `pseudonym` (default: keyed HMAC) or `raw` patient ids in events.
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("enum" = ["pseudonym", "raw", null])))]
    pub patient_identifiers: Option<String>,
    /// Name of this audit source (`AuditEvent.source.observer`); default `phi-guard`.
    #[serde(default)]
    pub observer: Option<String>,
    /// Write every event to Envoy's log with the `phi-guard-audit: ` prefix; default `true`.
    #[serde(default)]
    pub envoy_log: Option<bool>,
    /// Hold sealed lines for Envoy's log at most this long and write them together (0, the
    /// default: each line as its event is sealed).
    #[serde(default)]
    pub envoy_log_flush_ms: Option<u64>,
    /// Also ship batches to a collector cluster.
    #[serde(default)]
    pub collector: Option<CollectorDoc>,
    /// Refuse requests (503 `audit_unavailable`) rather than serve them unaudited.
    #[serde(default)]
    pub audit_required: Option<bool>,
    /// Consecutive failed collector deliveries after which the collector counts as down.
    #[serde(default)]
    pub failure_limit: Option<u32>,
}

/// `audit.collector`: batched delivery with `dispatch_http_call`.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CollectorDoc {
    /// Envoy cluster name of the collector.
    pub cluster: String,
    /// Request path, e.g. `/v1/logs` for an OpenTelemetry Collector.
    pub path: String,
    /// `:authority` of the callout; default the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// Body format: `jsonl` (default) or `otlp` (OTLP/HTTP JSON logs).
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("enum" = ["jsonl", "otlp", null])))]
    pub format: Option<String>,
    /// Most events in one POST.
    #[serde(default)]
    pub batch_max_events: Option<usize>,
    /// Longest an event waits before its batch is sent.
    #[serde(default)]
    pub flush_interval_ms: Option<u64>,
    /// Most events held per worker while the collector is slow or down.
    #[serde(default)]
    pub queue_max_events: Option<usize>,
    /// Retries of one batch after transient failures (429, 502, 503, 504, no answer) before
    /// its events are given up, counted and logged; absent: retried until delivered.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Deadline of one callout.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// First retry delay; doubles per attempt.
    #[serde(default)]
    pub backoff_initial_ms: Option<u64>,
    /// Longest retry delay.
    #[serde(default)]
    pub backoff_max_ms: Option<u64>,
    /// OTLP `service.name` resource attribute; default `phi-guard`.
    #[serde(default)]
    pub service_name: Option<String>,
}
