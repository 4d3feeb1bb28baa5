//! The filter's stats, defined through [`Host::define_metric`]; in Envoy they appear in `/stats`
//! and `/stats/prometheus`.

use super::host::{Host, MetricKind};
use crate::decision::DenyReason;

/// Counter ids for this VM. A counter that failed to define is `None` and silently skipped:
/// stats must never fail a request.
pub struct Metrics {
    allowed: Option<u32>,
    denied: Vec<(DenyReason, Option<u32>)>,
    cache_hits: Option<u32>,
    cache_misses: Option<u32>,
    policy_loaded: Option<u32>,
    policy_rejected: Option<u32>,
    policy_revision: Option<u32>,
    policy_fetch_failures: Option<u32>,
    policy_staleness: Option<u32>,
    response_blocked: Option<u32>,
    shadow_denied: Option<u32>,
    jwks_fetches: Option<u32>,
    jwks_fetch_failures: Option<u32>,
    keys_dropped: Option<u32>,
    introspections: Option<u32>,
    introspection_failures: Option<u32>,
    audit_emitted: Option<u32>,
    audit_sent: Option<u32>,
    audit_retried: Option<u32>,
    audit_dropped: Option<u32>,
    audit_refused: Option<u32>,
    audit_abandoned: Option<u32>,
    audit_queued: Option<u32>,
    responses_minimized: Option<u32>,
    fields_withheld: Option<u32>,
    signatures_verified: Option<u32>,
    attestations_used: Option<u32>,
}

fn counter(host: &impl Host, name: &str) -> Option<u32> {
    host.define_metric(MetricKind::Counter, name).ok()
}

fn gauge(host: &impl Host, name: &str) -> Option<u32> {
    host.define_metric(MetricKind::Gauge, name).ok()
}

fn set(host: &impl Host, id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = host.record_metric(id, value);
    }
}

fn bump(host: &impl Host, id: Option<u32>, by: u64) {
    // Adding nothing is still a hostcall: skip it (every request reports cache hits and misses).
    if by == 0 {
        return;
    }
    if let Some(id) = id {
        let _ = host.increment_metric(id, by);
    }
}

impl Metrics {
    /// Define every counter.
    pub fn define(host: &impl Host) -> Self {
        Metrics {
            allowed: counter(host, "phi_guard.requests_allowed"),
            denied: DenyReason::ALL.iter().map(|r| (*r, counter(host, &format!("phi_guard.requests_denied.{}", r.code())))).collect(),
            cache_hits: counter(host, "phi_guard.token_cache_hits"),
            cache_misses: counter(host, "phi_guard.token_cache_misses"),
            signatures_verified: counter(host, "phi_guard.token_signatures_verified"),
            attestations_used: counter(host, "phi_guard.token_attestations_used"),
            policy_loaded: counter(host, "phi_guard.policy_loaded"),
            policy_rejected: counter(host, "phi_guard.policy_rejected"),
            policy_revision: gauge(host, "phi_guard.policy_revision"),
            policy_fetch_failures: counter(host, "phi_guard.policy_fetch_failures"),
            policy_staleness: gauge(host, "phi_guard.policy_staleness_seconds"),
            response_blocked: counter(host, "phi_guard.responses_blocked"),
            shadow_denied: counter(host, "phi_guard.shadow_denied"),
            jwks_fetches: counter(host, "phi_guard.jwks_fetches"),
            jwks_fetch_failures: counter(host, "phi_guard.jwks_fetch_failures"),
            keys_dropped: counter(host, "phi_guard.jwks_keys_dropped_stale"),
            introspections: counter(host, "phi_guard.introspection_calls"),
            introspection_failures: counter(host, "phi_guard.introspection_failures"),
            audit_emitted: counter(host, "phi_guard.audit_events"),
            audit_sent: counter(host, "phi_guard.audit_sent"),
            audit_retried: counter(host, "phi_guard.audit_retried"),
            audit_dropped: counter(host, "phi_guard.audit_dropped"),
            audit_refused: counter(host, "phi_guard.audit_refused"),
            audit_abandoned: counter(host, "phi_guard.audit_abandoned"),
            audit_queued: gauge(host, "phi_guard.audit_queued"),
            responses_minimized: counter(host, "phi_guard.responses_minimized"),
            fields_withheld: counter(host, "phi_guard.fields_withheld"),
        }
    }

    /// One allowed request.
    pub fn allowed(&self, host: &impl Host) {
        bump(host, self.allowed, 1);
    }

    /// One denied request.
    pub fn denied(&self, host: &impl Host, reason: DenyReason) {
        bump(host, self.denied.iter().find(|(r, _)| *r == reason).and_then(|(_, id)| *id), 1);
    }

    /// Token-cache lookups since the last call.
    pub fn cache(&self, host: &impl Host, hits: u64, misses: u64) {
        bump(host, self.cache_hits, hits);
        bump(host, self.cache_misses, misses);
    }

    /// Token signatures verified, and tokens accepted on another worker's attestation.
    pub fn verified(&self, host: &impl Host, signatures: u64, attested: u64) {
        bump(host, self.signatures_verified, signatures);
        bump(host, self.attestations_used, attested);
    }

    /// A policy installed; `revision` is its number ([`crate::policy::Policy::revision_number`]).
    pub fn policy_loaded(&self, host: &impl Host, revision: u64) {
        bump(host, self.policy_loaded, 1);
        set(host, self.policy_revision, revision);
    }

    /// A failed policy fetch in pull mode.
    pub fn policy_fetch_failed(&self, host: &impl Host) {
        bump(host, self.policy_fetch_failures, 1);
    }

    /// Seconds since the last successful policy fetch in pull mode.
    pub fn policy_staleness(&self, host: &impl Host, seconds: u64) {
        set(host, self.policy_staleness, seconds);
    }

    /// A request that would have been refused, let through because the policy is in shadow mode.
    pub fn shadow_denied(&self, host: &impl Host, reason: DenyReason) {
        bump(host, self.shadow_denied, 1);
        self.denied(host, reason);
    }

    /// A policy refused by `on_configure`.
    pub fn policy_rejected(&self, host: &impl Host) {
        bump(host, self.policy_rejected, 1);
    }

    /// A response body replaced because its check failed.
    pub fn response_blocked(&self, host: &impl Host, reason: DenyReason) {
        bump(host, self.response_blocked, 1);
        self.denied(host, reason);
    }

    /// A JWKS fetch dispatched.
    pub fn jwks_fetch(&self, host: &impl Host) {
        bump(host, self.jwks_fetches, 1);
    }

    /// A JWKS fetch that failed or returned no usable key.
    pub fn jwks_fetch_failed(&self, host: &impl Host) {
        bump(host, self.jwks_fetch_failures, 1);
    }

    /// A token introspection call dispatched.
    pub fn introspection(&self, host: &impl Host) {
        bump(host, self.introspections, 1);
    }

    /// A token introspection call that could not be made, timed out or failed.
    pub fn introspection_failed(&self, host: &impl Host) {
        bump(host, self.introspection_failures, 1);
    }

    /// An issuer's keys dropped for staleness.
    pub fn keys_dropped(&self, host: &impl Host) {
        bump(host, self.keys_dropped, 1);
    }

    /// A request refused by the rate limit `id` (limits come with policies, so the counter is
    /// defined on use; Envoy returns the same id for the same name).
    pub fn rate_limited(&self, host: &impl Host, id: &str) {
        bump(host, counter(host, &format!("phi_guard.rate_limited.{id}")), 1);
    }

    /// An audit event sealed.
    pub fn audit_emitted(&self, host: &impl Host) {
        bump(host, self.audit_emitted, 1);
    }

    /// Events delivered to the collector.
    pub fn audit_sent(&self, host: &impl Host, n: usize) {
        bump(host, self.audit_sent, n as u64);
    }

    /// A batch kept for retry.
    pub fn audit_retried(&self, host: &impl Host) {
        bump(host, self.audit_retried, 1);
    }

    /// Events not queued because the queue was full.
    pub fn audit_dropped(&self, host: &impl Host, n: usize) {
        bump(host, self.audit_dropped, n as u64);
    }

    /// Events the collector refused for good (a non-retryable status, or rejected in an OTLP
    /// partial success).
    pub fn audit_refused(&self, host: &impl Host, n: usize) {
        bump(host, self.audit_refused, n as u64);
    }

    /// Events whose batch used `maxRetries` without being delivered.
    pub fn audit_abandoned(&self, host: &impl Host, n: usize) {
        bump(host, self.audit_abandoned, n as u64);
    }

    /// Events waiting for the collector (this worker).
    pub fn audit_queued(&self, host: &impl Host, n: usize) {
        set(host, self.audit_queued, n as u64);
    }

    /// A response minimized, and how many values were withheld or transformed.
    pub fn minimized(&self, host: &impl Host, withheld: usize) {
        bump(host, self.responses_minimized, 1);
        bump(host, self.fields_withheld, withheld as u64);
    }
}
