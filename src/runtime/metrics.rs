//! The filter's stats, defined through [`Host::define_metric`]; in Envoy they appear in `/stats`
//! and `/stats/prometheus`.
//!
//! Names are chosen for Prometheus: Envoy adds no `_total`, so every counter's name ends in it and
//! no gauge's does. A refusal reason or a rate-limit id rides in the stat name as a
//! `.reason.<code>` / `.limit.<id>` suffix, which the `stats_tags` of the shipped Envoy
//! configurations (`STATS_TAGS` in tests/support/envoy_config.py) turn into a label:
//! `/stats/prometheus` shows `phi_guard_requests_denied_total{reason="missing_token"}`, `/stats`
//! keeps the readable dotted name. Envoy matches those regexes against the full stat name, which carries the `wasmcustom.`
//! namespace it gives Wasm metrics (and strips for Prometheus). See docs/METRICS.md.

use super::host::{Host, MetricKind};
use crate::decision::DenyReason;

/// Counter of refused requests; one stat per reason: `<DENIED>.reason.<code>`.
const DENIED: &str = "phi_guard.requests_denied_total";
/// Counter of requests refused by a rate limit; one stat per limit: `<RATE_LIMITED>.limit.<id>`.
const RATE_LIMITED: &str = "phi_guard.rate_limited_total";

/// The stat name of the refusal counter for `reason`.
fn denied_stat(reason: DenyReason) -> String {
    format!("{DENIED}.reason.{}", reason.code())
}

/// The stat name of the counter of limit `id`.
fn rate_limited_stat(id: &str) -> String {
    format!("{RATE_LIMITED}.limit.{id}")
}

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
            allowed: counter(host, "phi_guard.requests_allowed_total"),
            denied: DenyReason::ALL.iter().map(|r| (*r, counter(host, &denied_stat(*r)))).collect(),
            cache_hits: counter(host, "phi_guard.token_cache_hits_total"),
            cache_misses: counter(host, "phi_guard.token_cache_misses_total"),
            signatures_verified: counter(host, "phi_guard.token_signatures_verified_total"),
            attestations_used: counter(host, "phi_guard.token_attestations_used_total"),
            policy_loaded: counter(host, "phi_guard.policy_loaded_total"),
            policy_rejected: counter(host, "phi_guard.policy_rejected_total"),
            policy_revision: gauge(host, "phi_guard.policy_revision"),
            policy_fetch_failures: counter(host, "phi_guard.policy_fetch_failures_total"),
            policy_staleness: gauge(host, "phi_guard.policy_staleness_seconds"),
            response_blocked: counter(host, "phi_guard.responses_blocked_total"),
            shadow_denied: counter(host, "phi_guard.shadow_denied_total"),
            jwks_fetches: counter(host, "phi_guard.jwks_fetches_total"),
            jwks_fetch_failures: counter(host, "phi_guard.jwks_fetch_failures_total"),
            keys_dropped: counter(host, "phi_guard.jwks_keys_dropped_stale_total"),
            introspections: counter(host, "phi_guard.introspection_calls_total"),
            introspection_failures: counter(host, "phi_guard.introspection_failures_total"),
            audit_emitted: counter(host, "phi_guard.audit_events_total"),
            audit_sent: counter(host, "phi_guard.audit_sent_total"),
            audit_retried: counter(host, "phi_guard.audit_retried_total"),
            audit_dropped: counter(host, "phi_guard.audit_dropped_total"),
            audit_refused: counter(host, "phi_guard.audit_refused_total"),
            audit_abandoned: counter(host, "phi_guard.audit_abandoned_total"),
            audit_queued: gauge(host, "phi_guard.audit_queued"),
            responses_minimized: counter(host, "phi_guard.responses_minimized_total"),
            fields_withheld: counter(host, "phi_guard.fields_withheld_total"),
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
        bump(host, counter(host, &rate_limited_stat(id)), 1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::MockHost;

    const GAUGES: [&str; 3] = ["phi_guard.policy_revision", "phi_guard.policy_staleness_seconds", "phi_guard.audit_queued"];

    fn defined() -> Vec<(String, MetricKind)> {
        let host = MockHost::new();
        let m = Metrics::define(&host);
        m.rate_limited(&host, "per-subject");
        host.defined_stats()
    }

    /// The Prometheus family of a stat once the shipped `stats_tags` cut its label suffix.
    fn family(name: &str) -> String {
        let base = [".reason.", ".limit."].iter().find_map(|t| name.split_once(t).map(|(b, _)| b)).unwrap_or(name);
        base.replace('.', "_")
    }

    #[test]
    fn counters_end_in_total_and_gauges_do_not() {
        for (name, kind) in defined() {
            let family = family(&name);
            assert!(family.starts_with("phi_guard_"), "{name}");
            assert!(family.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
            match kind {
                MetricKind::Counter => assert!(family.ends_with("_total"), "{name}"),
                MetricKind::Gauge => {
                    assert!(!family.ends_with("_total"), "{name}");
                    assert!(GAUGES.contains(&name.as_str()), "{name}");
                }
            }
        }
    }

    #[test]
    fn a_reason_is_only_ever_a_label() {
        let stats = defined();
        let families: std::collections::BTreeSet<_> = stats.iter().map(|(n, _)| family(n)).collect();
        for r in DenyReason::ALL {
            let want = format!("phi_guard.requests_denied_total.reason.{}", r.code());
            assert!(stats.iter().any(|(n, _)| *n == want), "{want}");
            // `rate_limited` is both a reason and the name of the per-limit counter.
            for f in families.iter().filter(|f| *f != "phi_guard_rate_limited_total") {
                assert!(!f.contains(r.code()), "{f} names the reason {}", r.code());
            }
        }
        // One family per metric, whatever the number of reasons: cardinality stays in labels.
        assert_eq!(families.len(), stats.len() - DenyReason::ALL.len() + 1);
    }

    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../docs/METRICS.md");
        for (name, _) in defined() {
            let family = family(&name);
            assert!(doc.contains(&format!("`{family}`")), "docs/METRICS.md does not list `{family}`");
        }
    }
}
