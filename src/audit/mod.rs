//! Audit events: one for every request the filter sees, PHI-free, sealed into a per-VM hash
//! chain, rendered as JSON lines or FHIR R4 AuditEvents (IHE BALP), and verifiable offline.
//!
//! The host's part: build an [`AuditEvent`] from the decision ([`AuditEvent::from_decision`]),
//! finish it with the response ([`AuditEvent::with_response`]) unless it was denied, seal it
//! with the VM's [`AuditChain`], and hand the [`Sealed`] line to the sinks (Envoy's log with
//! [`Sealed::log_line`], collector batches with [`batch_body`]). Nothing here names proxy-wasm
//! or reads a clock: time, the stream id and the key are passed in.

pub mod batch;
pub mod chain;
pub mod delivery;
pub mod event;
pub mod fhir;
mod names;
mod phase;
pub mod query;
pub mod time;
pub mod verify;
pub mod vocab;

#[cfg(test)]
mod phi_free;

pub use crate::audit_key::{AuditKey, KeyError, PatientIds};
pub use batch::{batch_body, jsonl_batch, otlp_logs};
pub use chain::{AuditChain, Sealed, LOG_PREFIX};
pub use event::{AuditContext, AuditEvent, EventOutcome, RequestMeta, Severity, Verdict};
pub use verify::{verify, verify_log, Failure, StreamSummary, Summary, VerifyError};

/// Name of the Envoy VM environment variable holding the audit secret.
pub const KEY_ENV: &str = "PHI_GUARD_AUDIT_KEY";
