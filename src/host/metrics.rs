//! Envoy stats defined through `define_metric`; they appear in `/stats` and `/stats/prometheus`.

use proxy_wasm::hostcalls::{define_metric, increment_metric, record_metric};
use proxy_wasm::types::MetricType;

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
    audit_emitted: Option<u32>,
    audit_sent: Option<u32>,
    audit_retried: Option<u32>,
    audit_dropped: Option<u32>,
    audit_queued: Option<u32>,
    responses_minimized: Option<u32>,
    fields_withheld: Option<u32>,
}

fn counter(name: &str) -> Option<u32> {
    define_metric(MetricType::Counter, name).ok()
}

fn gauge(name: &str) -> Option<u32> {
    define_metric(MetricType::Gauge, name).ok()
}

fn set(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = record_metric(id, value);
    }
}

fn bump(id: Option<u32>, by: u64) {
    if let Some(id) = id {
        let _ = increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}

impl Metrics {
    /// Define every counter.
    pub fn define() -> Self {
        Metrics {
            allowed: counter("phi_guard.requests_allowed"),
            denied: DenyReason::ALL.iter().map(|r| (*r, counter(&format!("phi_guard.requests_denied.{}", r.code())))).collect(),
            cache_hits: counter("phi_guard.token_cache_hits"),
            cache_misses: counter("phi_guard.token_cache_misses"),
            policy_loaded: counter("phi_guard.policy_loaded"),
            policy_rejected: counter("phi_guard.policy_rejected"),
            policy_revision: gauge("phi_guard.policy_revision"),
            policy_fetch_failures: counter("phi_guard.policy_fetch_failures"),
            policy_staleness: gauge("phi_guard.policy_staleness_seconds"),
            response_blocked: counter("phi_guard.responses_blocked"),
            shadow_denied: counter("phi_guard.shadow_denied"),
            jwks_fetches: counter("phi_guard.jwks_fetches"),
            jwks_fetch_failures: counter("phi_guard.jwks_fetch_failures"),
            keys_dropped: counter("phi_guard.jwks_keys_dropped_stale"),
            audit_emitted: counter("phi_guard.audit_events"),
            audit_sent: counter("phi_guard.audit_sent"),
            audit_retried: counter("phi_guard.audit_retried"),
            audit_dropped: counter("phi_guard.audit_dropped"),
            audit_queued: gauge("phi_guard.audit_queued"),
            responses_minimized: counter("phi_guard.responses_minimized"),
            fields_withheld: counter("phi_guard.fields_withheld"),
        }
    }

    /// One allowed request.
    pub fn allowed(&self) {
        bump(self.allowed, 1);
    }

    /// One denied request.
    pub fn denied(&self, reason: DenyReason) {
        bump(self.denied.iter().find(|(r, _)| *r == reason).and_then(|(_, id)| *id), 1);
    }

    /// Token-cache lookups since the last call.
    pub fn cache(&self, hits: u64, misses: u64) {
        bump(self.cache_hits, hits);
        bump(self.cache_misses, misses);
    }

    /// A policy installed; `revision` is its number ([`crate::policy::Policy::revision_number`]).
    pub fn policy_loaded(&self, revision: u64) {
        bump(self.policy_loaded, 1);
        set(self.policy_revision, revision);
    }

    /// A failed policy fetch in pull mode.
    pub fn policy_fetch_failed(&self) {
        bump(self.policy_fetch_failures, 1);
    }

    /// Seconds since the last successful policy fetch in pull mode.
    pub fn policy_staleness(&self, seconds: u64) {
        set(self.policy_staleness, seconds);
    }

    /// A request that would have been refused, let through because the policy is in shadow mode.
    pub fn shadow_denied(&self, reason: DenyReason) {
        bump(self.shadow_denied, 1);
        self.denied(reason);
    }

    /// A policy refused by `on_configure`.
    pub fn policy_rejected(&self) {
        bump(self.policy_rejected, 1);
    }

    /// A response body replaced because its check failed.
    pub fn response_blocked(&self, reason: DenyReason) {
        bump(self.response_blocked, 1);
        self.denied(reason);
    }

    /// A JWKS fetch dispatched.
    pub fn jwks_fetch(&self) {
        bump(self.jwks_fetches, 1);
    }

    /// A JWKS fetch that failed or returned no usable key.
    pub fn jwks_fetch_failed(&self) {
        bump(self.jwks_fetch_failures, 1);
    }

    /// An issuer's keys dropped for staleness.
    pub fn keys_dropped(&self) {
        bump(self.keys_dropped, 1);
    }

    /// A request refused by the rate limit `id` (limits come with policies, so the counter is
    /// defined on use; Envoy returns the same id for the same name).
    pub fn rate_limited(&self, id: &str) {
        bump(counter(&format!("phi_guard.rate_limited.{id}")), 1);
    }

    /// An audit event sealed.
    pub fn audit_emitted(&self) {
        bump(self.audit_emitted, 1);
    }

    /// Events delivered to the collector.
    pub fn audit_sent(&self, n: usize) {
        bump(self.audit_sent, n as u64);
    }

    /// A batch kept for retry.
    pub fn audit_retried(&self) {
        bump(self.audit_retried, 1);
    }

    /// An event not queued because the queue was full.
    pub fn audit_dropped(&self) {
        bump(self.audit_dropped, 1);
    }

    /// Events waiting for the collector (this worker).
    pub fn audit_queued(&self, n: usize) {
        set(self.audit_queued, n as u64);
    }

    /// A response minimized, and how many values were withheld or transformed.
    pub fn minimized(&self, withheld: usize) {
        bump(self.responses_minimized, 1);
        bump(self.fields_withheld, withheld as u64);
    }
}
