//! Audit sinks of one VM: every event is sealed into this VM's chain (one stream per worker, so
//! the data path never waits on another worker), written to Envoy's log, and queued for the
//! collector. Shipping never blocks a request: batches go out from the root context's tick with
//! [`Host::dispatch`], are retried with capped exponential backoff and jitter, and stay queued
//! until delivered. An event is only ever dropped when the bounded queue is full, and every drop
//! is counted and logged. With `auditRequired`, a full queue or a collector failing past the
//! limit refuses new requests (503 `audit_unavailable`) instead of serving them unaudited.

use std::collections::VecDeque;

use super::host::{random_u32, Host, Level};
use super::metrics::Metrics;
use crate::audit::{batch_body, AuditChain, AuditEvent, AuditKey, Sealed};
use crate::policy::audit::AuditConfig;
use crate::time::UnixMillis;

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
    next_try: UnixMillis,
    last_flush: UnixMillis,
    /// Sealed lines held for Envoy's log (`audit.envoyLogFlushMs`), newline-separated.
    log_held: String,
    log_held_events: usize,
    /// When the oldest held line was sealed.
    log_held_since: UnixMillis,
}

/// Most lines held for Envoy's log before they are written, whatever the flush interval.
pub const ENVOY_LOG_BATCH_EVENTS: usize = 64;
/// Most bytes held for Envoy's log before they are written.
const ENVOY_LOG_BATCH_BYTES: usize = 64 * 1024;

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
            next_try: UnixMillis::default(),
            last_flush: UnixMillis::default(),
            log_held: String::new(),
            log_held_events: 0,
            log_held_since: UnixMillis::default(),
        }
    }

    /// Seal and ship one event.
    pub fn emit(&mut self, event: &AuditEvent, config: &AuditConfig, host: &impl Host, metrics: &Metrics) {
        let sealed = self.chain.seal(event, config);
        if config.envoy_log {
            // One line per event with a stable prefix, at info level so default Envoy logging
            // keeps it. With a flush interval, lines are held and written together, in order,
            // one line each (the verifier finds every prefix).
            if config.envoy_log_flush_ms == 0 {
                host.log(Level::Info, &sealed.log_line());
            } else {
                if self.log_held_events == 0 {
                    self.log_held_since = event.time_ms;
                } else {
                    self.log_held.push('\n');
                }
                self.log_held.push_str(crate::audit::LOG_PREFIX);
                self.log_held.push_str(&sealed.line);
                self.log_held_events += 1;
                if self.log_held_events >= ENVOY_LOG_BATCH_EVENTS || self.log_held.len() >= ENVOY_LOG_BATCH_BYTES {
                    self.flush_log(host);
                }
            }
        }
        metrics.audit_emitted(host);
        if let Some(c) = &config.collector {
            if self.queue.len() >= c.queue_max_events {
                metrics.audit_dropped(host);
                host.log(
                    Level::Error,
                    &format!(
                        "phi-guard: audit queue full ({} events): event seq {} of stream {} NOT queued for the collector{}",
                        c.queue_max_events,
                        sealed.seq,
                        self.chain.stream(),
                        if config.envoy_log { " (it is in Envoy's log)" } else { "" }
                    ),
                );
            } else {
                self.queue.push_back(sealed);
                metrics.audit_queued(host, self.queue.len());
            }
        }
    }

    /// Whether requests must be refused because their events could not be delivered.
    pub fn unavailable(&self, config: &AuditConfig) -> bool {
        let Some(c) = &config.collector else { return false };
        config.audit_required && (self.queue.len() >= c.queue_max_events || self.failures >= config.failure_limit)
    }

    /// Write the lines held for Envoy's log (a new policy, the end of the VM, or their time).
    pub fn flush_log(&mut self, host: &impl Host) {
        if self.log_held_events > 0 {
            host.log(Level::Info, &self.log_held);
            self.log_held.clear();
            self.log_held_events = 0;
        }
    }

    /// Write held log lines that are due, and ship a batch if one is due and none is in flight.
    pub fn tick(&mut self, config: &AuditConfig, now: UnixMillis, host: &impl Host, metrics: &Metrics) {
        if self.log_held_events > 0 && now.ms_since(self.log_held_since) >= config.envoy_log_flush_ms {
            self.flush_log(host);
        }
        let Some(c) = &config.collector else { return };
        if self.in_flight.is_some() || self.queue.is_empty() || now < self.next_try {
            return;
        }
        let full = self.queue.len() >= c.batch_max_events;
        if !full && now.ms_since(self.last_flush) < c.flush_interval_ms && self.attempt == 0 {
            return;
        }
        let n = self.queue.len().min(c.batch_max_events);
        let batch: Vec<Sealed> = self.queue.drain(..n).collect();
        let body = batch_body(c, &batch, self.chain.stream());
        let headers =
            vec![(":method", "POST"), (":path", c.path.as_str()), (":authority", c.authority.as_str()), ("content-type", c.content_type())];
        self.last_flush = now;
        match host.dispatch(&c.cluster, &headers, Some(body.as_bytes()), c.timeout_ms) {
            Ok(token) => self.in_flight = Some((token, batch)),
            Err(e) => {
                host.log(Level::Warn, &format!("phi-guard: audit batch could not be dispatched: {e}"));
                self.requeue(batch, c.backoff_ms(self.attempt + 1), now, host, metrics);
            }
        }
    }

    fn requeue(&mut self, batch: Vec<Sealed>, delay_ms: u64, now: UnixMillis, host: &impl Host, metrics: &Metrics) {
        self.attempt = self.attempt.saturating_add(1);
        self.failures = self.failures.saturating_add(1);
        metrics.audit_retried(host);
        for s in batch.into_iter().rev() {
            self.queue.push_front(s);
        }
        // ±50 % jitter so workers and proxies do not retry in lockstep.
        let jitter = u64::from(random_u32(host) % 1024);
        self.next_try = now.add_ms(delay_ms.saturating_mul(512 + jitter) / 1024);
    }

    /// A collector response; false if the call was not ours.
    pub fn on_response(
        &mut self,
        token: u32,
        status: Option<u16>,
        config: &AuditConfig,
        now: UnixMillis,
        host: &impl Host,
        metrics: &Metrics,
    ) -> bool {
        let Some((t, _)) = &self.in_flight else { return false };
        if *t != token {
            return false;
        }
        let Some((_, batch)) = self.in_flight.take() else { return true };
        match status {
            Some(s) if (200..300).contains(&s) => {
                metrics.audit_sent(host, batch.len());
                self.attempt = 0;
                self.failures = 0;
                self.next_try = UnixMillis::default();
            }
            other => {
                let delay = config.collector.as_ref().map_or(1000, |c| c.backoff_ms(self.attempt + 1));
                host.log(
                    Level::Warn,
                    &format!(
                        "phi-guard: audit collector answered {}; {} events kept for retry",
                        other.map_or("nothing (timeout or reset)".to_owned(), |s| s.to_string()),
                        batch.len()
                    ),
                );
                self.requeue(batch, delay, now, host, metrics);
            }
        }
        metrics.audit_queued(host, self.queue.len());
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::testing::{policy, token, Worker, NOW_MS};
    use super::super::{Action, TICK_MS};
    use super::ENVOY_LOG_BATCH_EVENTS;
    use crate::audit::LOG_PREFIX;

    fn collected(extra: Value) -> Value {
        let mut collector = json!({"cluster": "audit", "path": "/v1/logs", "batchMaxEvents": 2, "flushIntervalMs": 1000,
                                   "queueMaxEvents": 3, "backoffInitialMs": 100});
        if let (Some(c), Some(extra)) = (collector.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        policy(|p| p["audit"] = json!({"format": "jsonl", "collector": collector}))
    }

    /// A refused request: its event is emitted at once.
    fn refuse(w: &Worker) {
        let ex = w.request("GET", "/fhir/Patient/p1", None);
        assert_eq!(w.seen(&ex).reply.map(|r| r.status), Some(401));
    }

    fn seqs(body: &[u8]) -> Vec<u64> {
        String::from_utf8_lossy(body).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap()).collect()
    }

    #[test]
    fn batches_are_shipped_when_full_or_due_and_retried_with_backoff_until_delivered() {
        let mut w = Worker::with_policy(&collected(json!({})), NOW_MS);
        assert_eq!(w.host().tick_period_ms.get(), Some(TICK_MS));
        refuse(&w);
        w.tick();
        let first = w.calls_to("audit").pop().unwrap();
        assert_eq!(
            (first.header(":method"), first.header(":path"), first.header("content-type")),
            (Some("POST"), Some("/v1/logs"), Some("application/x-ndjson"))
        );
        assert_eq!(seqs(first.body.as_deref().unwrap()), [0], "nothing was flushed yet: due at once");
        w.answer(first.token, 200, &[], b"");
        refuse(&w);
        w.tick();
        assert_eq!(w.calls_to("audit").len(), 1, "one event waits for the flush interval");
        refuse(&w);
        w.tick();
        let batch = w.calls_to("audit").pop().unwrap();
        assert_eq!(seqs(batch.body.as_deref().unwrap()), [1, 2], "a full batch goes at once");
        // The collector fails: the batch is kept, and retried after the backoff (100 ms with
        // this host's jitter: 62 ms), not before, and only one batch is in flight at a time.
        w.answer(batch.token, 503, &[], b"");
        assert_eq!(w.host().stat("phi_guard.audit_retried_total"), 1);
        assert!(w.host().logged("audit collector answered 503; 2 events kept for retry"));
        w.advance(61);
        w.tick();
        assert_eq!(w.calls_to("audit").len(), 2);
        w.advance(1);
        w.tick();
        let retry = w.calls_to("audit").pop().unwrap();
        assert_eq!(seqs(retry.body.as_deref().unwrap()), [1, 2], "the same events, in order");
        refuse(&w);
        w.advance(1_000);
        w.tick();
        assert_eq!(w.calls_to("audit").len(), 3, "one batch in flight at a time");
        // A callout that never comes back (timeout: no status) is a failure like any other.
        w.answer(retry.token, 0, &[], b"");
        assert_eq!(w.host().stat("phi_guard.audit_retried_total"), 2);
        w.advance(1_000);
        w.tick();
        let again = w.calls_to("audit").pop().unwrap();
        assert_eq!(seqs(again.body.as_deref().unwrap()), [1, 2]);
        w.answer(again.token, 200, &[], b"");
        assert_eq!(w.host().stat("phi_guard.audit_sent_total"), 3);
        assert_eq!(w.host().stat("phi_guard.audit_queued"), 1);
        // Delivered: the rest goes at the next flush, with no backoff left.
        w.tick();
        assert_eq!(w.calls_to("audit").len(), 4);
        w.advance(1_000);
        w.tick();
        let last = w.calls_to("audit").pop().unwrap();
        assert_eq!(seqs(last.body.as_deref().unwrap()), [3]);
    }

    #[test]
    fn held_log_lines_are_written_together_in_order_when_due_full_or_replaced() {
        let mut w = Worker::with_policy(&policy(|p| p["audit"] = json!({"format": "jsonl", "envoyLogFlushMs": 500})), NOW_MS);
        assert_eq!(w.host().tick_period_ms.get(), Some(TICK_MS), "the tick writes held lines");
        let audit_logs = |w: &Worker| w.host().logs.borrow().iter().filter(|(_, l)| l.starts_with(LOG_PREFIX)).count();
        for _ in 0..3 {
            refuse(&w);
        }
        assert_eq!((audit_logs(&w), w.host().audit_events().len()), (0, 0), "held");
        w.advance(400);
        w.tick();
        assert_eq!(audit_logs(&w), 0, "not due yet");
        w.advance(200);
        w.tick();
        assert_eq!(audit_logs(&w), 1, "one write for the three lines");
        let seqs: Vec<u64> = w.host().audit_events().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [0, 1, 2]);
        // The whole log still verifies as a chain: every line carries the prefix.
        let log: String = w.host().logs.borrow().iter().map(|(_, l)| format!("[info] wasm log: {l}\n")).collect();
        let key = crate::audit::AuditKey::from_secret(crate::testing::SECRET).unwrap();
        let summary = crate::audit::verify_log(log.as_bytes(), &key).unwrap();
        assert_eq!(summary.events, 3);
        // A full batch is written at once, without waiting for the tick.
        for _ in 0..ENVOY_LOG_BATCH_EVENTS {
            refuse(&w);
        }
        assert_eq!((audit_logs(&w), w.host().audit_events().len()), (2, 3 + ENVOY_LOG_BATCH_EVENTS));
        // A new policy first writes what the old one held.
        refuse(&w);
        assert!(w.configure(&policy(|_| {})));
        assert_eq!(w.host().audit_events().len(), 4 + ENVOY_LOG_BATCH_EVENTS);
        // So does the end of the plugin.
        assert!(w.configure(&policy(|p| p["audit"] = json!({"envoyLogFlushMs": 10_000}))));
        refuse(&w);
        w.root.on_done();
        assert_eq!(w.host().audit_events().len(), 5 + ENVOY_LOG_BATCH_EVENTS);
    }

    #[test]
    fn a_full_queue_drops_and_counts_but_the_log_line_is_written() {
        let w = Worker::with_policy(&collected(json!({})), NOW_MS);
        for _ in 0..4 {
            refuse(&w);
        }
        assert_eq!(w.host().stat("phi_guard.audit_dropped_total"), 1);
        assert_eq!(w.host().stat("phi_guard.audit_queued"), 3);
        assert!(w.host().logged("audit queue full (3 events): event seq 3"));
        assert_eq!(w.host().audit_events().len(), 4, "every event is in Envoy's log");
    }

    #[test]
    fn with_audit_required_a_failing_collector_refuses_requests() {
        let mut w = Worker::with_policy(&collected(json!({})), NOW_MS);
        let mut p = collected(json!({}));
        p["audit"]["auditRequired"] = json!(true);
        p["audit"]["failureLimit"] = json!(1);
        assert!(w.configure(&p));
        let t = token(json!({}));
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&t)).action, Action::Continue);
        refuse(&w);
        w.tick();
        let call = w.calls_to("audit").pop().unwrap();
        w.answer(call.token, 500, &[], b"");
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&t));
        let reply = w.seen(&ex).reply.unwrap();
        assert_eq!((reply.status, reply.reason().as_deref()), (503, Some("audit_unavailable")));
        assert!(w.host().audit_events().iter().any(|e| e["reason"] == "audit_unavailable"), "the refusal is itself audited");
        // Delivered again: requests are served again.
        w.advance(1_000);
        w.tick();
        let retry = w.calls_to("audit").pop().unwrap();
        w.answer(retry.token, 204, &[], b"");
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&t)).action, Action::Continue);
    }
}
