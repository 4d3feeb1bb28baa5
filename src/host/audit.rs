//! Audit sinks of one VM: every event is sealed into this VM's chain (one stream per worker, so
//! the data path never waits on another worker), written to Envoy's log, and queued for the
//! collector. Shipping never blocks a request: batches go out from the root context's tick with
//! `dispatch_http_call`, are retried with capped exponential backoff and jitter, and stay queued
//! until delivered. An event is only ever dropped when the bounded queue is full, and every drop
//! is counted and logged. With `auditRequired`, a full queue or a collector failing past the
//! limit refuses new requests (503 `audit_unavailable`) instead of serving them unaudited.

use std::collections::VecDeque;
use std::time::Duration;

use proxy_wasm::hostcalls::dispatch_http_call;

use super::metrics::Metrics;
use crate::audit::{batch_body, AuditChain, AuditEvent, AuditKey, Sealed};
use crate::policy::audit::AuditConfig;

/// The VM's audit state.
pub struct AuditSink {
    /// Key for the chain and patient pseudonyms.
    pub key: AuditKey,
    chain: AuditChain,
    queue: VecDeque<Sealed>,
    in_flight: Option<(u32, Vec<Sealed>)>,
    attempt: u32,
    /// Consecutive failed deliveries.
    failures: u32,
    next_try_ms: u64,
    last_flush_ms: u64,
}

impl AuditSink {
    /// A new stream with a random id.
    pub fn new(key: AuditKey, stream_id: [u8; 16]) -> Self {
        AuditSink {
            chain: AuditChain::new(stream_id, key.clone()),
            key,
            queue: VecDeque::new(),
            in_flight: None,
            attempt: 0,
            failures: 0,
            next_try_ms: 0,
            last_flush_ms: 0,
        }
    }

    /// Seal and ship one event.
    pub fn emit(&mut self, event: &AuditEvent, config: &AuditConfig, metrics: &Metrics) {
        let sealed = self.chain.seal(event, config);
        if config.envoy_log {
            // One line per event with a stable prefix, at info level so default Envoy logging
            // keeps it.
            log::info!("{}", sealed.log_line());
        }
        metrics.audit_emitted();
        if let Some(c) = &config.collector {
            if self.queue.len() >= c.queue_max_events {
                metrics.audit_dropped();
                log::error!(
                    "phi-guard: audit queue full ({} events): event seq {} of stream {} NOT queued for the collector{}",
                    c.queue_max_events,
                    sealed.seq,
                    self.chain.stream(),
                    if config.envoy_log { " (it is in Envoy's log)" } else { "" }
                );
            } else {
                self.queue.push_back(sealed);
                metrics.audit_queued(self.queue.len());
            }
        }
    }

    /// Whether requests must be refused because their events could not be delivered.
    pub fn unavailable(&self, config: &AuditConfig) -> bool {
        let Some(c) = &config.collector else { return false };
        config.audit_required && (self.queue.len() >= c.queue_max_events || self.failures >= config.failure_limit)
    }

    /// Ship a batch if one is due and none is in flight.
    pub fn tick(&mut self, config: &AuditConfig, now_ms: u64, metrics: &Metrics) {
        let Some(c) = &config.collector else { return };
        if self.in_flight.is_some() || self.queue.is_empty() || now_ms < self.next_try_ms {
            return;
        }
        let full = self.queue.len() >= c.batch_max_events;
        if !full && now_ms.saturating_sub(self.last_flush_ms) < c.flush_interval_ms && self.attempt == 0 {
            return;
        }
        let n = self.queue.len().min(c.batch_max_events);
        let batch: Vec<Sealed> = self.queue.drain(..n).collect();
        let body = batch_body(c, &batch, self.chain.stream());
        let headers =
            vec![(":method", "POST"), (":path", c.path.as_str()), (":authority", c.authority.as_str()), ("content-type", c.content_type())];
        self.last_flush_ms = now_ms;
        match dispatch_http_call(&c.cluster, headers, Some(body.as_bytes()), vec![], Duration::from_millis(c.timeout_ms)) {
            Ok(token) => self.in_flight = Some((token, batch)),
            Err(e) => {
                log::warn!("phi-guard: audit batch could not be dispatched: {e:?}");
                self.requeue(batch, c.backoff_ms(self.attempt + 1), now_ms, metrics);
            }
        }
    }

    fn requeue(&mut self, batch: Vec<Sealed>, delay_ms: u64, now_ms: u64, metrics: &Metrics) {
        self.attempt = self.attempt.saturating_add(1);
        self.failures = self.failures.saturating_add(1);
        metrics.audit_retried();
        for s in batch.into_iter().rev() {
            self.queue.push_front(s);
        }
        // ±50 % jitter so workers and proxies do not retry in lockstep.
        let jitter = u64::from(super::random_u32() % 1024);
        self.next_try_ms = now_ms.saturating_add(delay_ms.saturating_mul(512 + jitter) / 1024);
    }

    /// A collector response; false if the call was not ours.
    pub fn on_response(&mut self, token: u32, status: Option<u16>, config: &AuditConfig, now_ms: u64, metrics: &Metrics) -> bool {
        let Some((t, _)) = &self.in_flight else { return false };
        if *t != token {
            return false;
        }
        let Some((_, batch)) = self.in_flight.take() else { return true };
        match status {
            Some(s) if (200..300).contains(&s) => {
                metrics.audit_sent(batch.len());
                self.attempt = 0;
                self.failures = 0;
                self.next_try_ms = 0;
            }
            other => {
                let delay = config.collector.as_ref().map_or(1000, |c| c.backoff_ms(self.attempt + 1));
                log::warn!(
                    "phi-guard: audit collector answered {}; {} events kept for retry",
                    other.map_or("nothing (timeout or reset)".to_owned(), |s| s.to_string()),
                    batch.len()
                );
                self.requeue(batch, delay, now_ms, metrics);
            }
        }
        metrics.audit_queued(self.queue.len());
        true
    }
}
