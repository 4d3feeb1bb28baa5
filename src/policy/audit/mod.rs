//! The compiled `audit` section of a policy: event format, patient identifiers and the sinks the
//! host feeds. Wire types in [`schema`] (the `schema` leaf's `audit`), checks and defaults in
//! [`compile`].

pub mod compile;
pub use crate::schema::audit as schema;

pub use crate::audit_key::PatientIds;
pub use compile::compile_audit;

/// Line format of emitted events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFormat {
    /// One compact phi-guard JSON object per line.
    Jsonl,
    /// One FHIR R4 `AuditEvent` (IHE BALP patterns) per line.
    Fhir,
}

/// Body format of collector batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorFormat {
    /// Sealed lines separated by `\n` (`application/x-ndjson`).
    Jsonl,
    /// OTLP/HTTP JSON logs (`application/json`), one log record per sealed line.
    Otlp,
}

/// Where and how batches are shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorConfig {
    /// Envoy cluster.
    pub cluster: String,
    /// `:authority` of the callout.
    pub authority: String,
    /// `:path` of the callout.
    pub path: String,
    /// Body format.
    pub format: CollectorFormat,
    /// Most events per POST.
    pub batch_max_events: usize,
    /// Flush period in milliseconds.
    pub flush_interval_ms: u64,
    /// Queue bound per worker; events beyond it are dropped (and counted).
    pub queue_max_events: usize,
    /// Retries of one batch after transient failures before its events are given up; `None`:
    /// retried until delivered (the queue bound then decides what is lost).
    pub max_retries: Option<u32>,
    /// Callout deadline in milliseconds.
    pub timeout_ms: u64,
    /// First retry delay in milliseconds.
    pub backoff_initial_ms: u64,
    /// Longest retry delay in milliseconds.
    pub backoff_max_ms: u64,
    /// OTLP `service.name`.
    pub service_name: String,
}

impl CollectorConfig {
    /// Delay before retry number `attempt` (1-based): `backoffInitialMs * 2^(attempt-1)`, capped
    /// at `backoffMaxMs`. The host may add jitter.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
        self.backoff_initial_ms.saturating_mul(factor).min(self.backoff_max_ms)
    }

    /// `content-type` of a batch body.
    pub fn content_type(&self) -> &'static str {
        match self.format {
            CollectorFormat::Jsonl => "application/x-ndjson",
            CollectorFormat::Otlp => "application/json",
        }
    }
}

/// The compiled `audit` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Line format.
    pub format: AuditFormat,
    /// How patients are named.
    pub patient_ids: PatientIds,
    /// `AuditEvent.source.observer` display.
    pub observer: String,
    /// Write events to Envoy's log.
    pub envoy_log: bool,
    /// Longest a sealed line waits before it is written to Envoy's log, together with the
    /// others held (`audit.envoyLogFlushMs`; 0: each line at once).
    pub envoy_log_flush_ms: u64,
    /// Ship batches to a collector.
    pub collector: Option<CollectorConfig>,
    /// Refuse requests when events cannot be delivered.
    pub audit_required: bool,
    /// Consecutive failed collector deliveries before the collector counts as down.
    pub failure_limit: u32,
}

impl Default for AuditConfig {
    /// What a policy without `audit` gets: JSON lines with pseudonyms to Envoy's log.
    fn default() -> Self {
        AuditConfig {
            format: AuditFormat::Jsonl,
            patient_ids: PatientIds::Pseudonym,
            observer: "phi-guard".to_owned(),
            envoy_log: true,
            envoy_log_flush_ms: 0,
            collector: None,
            audit_required: false,
            failure_limit: compile::DEFAULT_FAILURE_LIMIT,
        }
    }
}
