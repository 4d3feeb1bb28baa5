//! Audit sinks of one VM: every event is sealed into this VM's chain (one stream per worker, so
//! the data path never waits on another worker), written to Envoy's log, and queued for the
//! collector. Shipping never blocks a request: batches go out from the root context's tick with
//! [`Host::dispatch`], one at a time and in order.
//!
//! A collector's answer is read as OTLP/HTTP defines it ([`crate::audit::delivery`]): a
//! transient failure (429, 502, 503, 504, no answer) is retried with capped exponential backoff
//! and jitter, or after the collector's `Retry-After`, and the batch stays at the front of the
//! queue; anything else is a refusal for good and the queue moves on. An event leaves the queue
//! undelivered only when the queue is full, when the collector refuses it for good, or when its
//! batch has used `maxRetries`; each such event is counted, logged with its chain position
//! (stream and `seq`), and written to Envoy's log if that sink did not already hold it. With
//! `auditRequired`, a full queue or a collector failing past the limit refuses new requests (503
//! `audit_unavailable`) instead of serving them unaudited.

use std::collections::VecDeque;

use super::host::{random_u32, Buffer, Host, Level};
use super::metrics::Metrics;
use super::oplog;
use crate::audit::delivery::{self, Outcome};
use crate::audit::{batch_body, AuditChain, AuditEvent, AuditKey, Sealed};
use crate::policy::audit::{AuditConfig, CollectorFormat};
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

/// The operational line for events the collector will not get (with a `cause`).
const NOT_DELIVERED: &str = "audit batch not delivered";

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
                metrics.audit_dropped(host, 1);
                oplog::error("audit queue full; event not queued for the collector")
                    .field("queueMaxEvents", c.queue_max_events)
                    .field("stream", self.chain.stream())
                    .field("seq", sealed.seq)
                    .field("loggedInstead", !config.envoy_log)
                    .emit(host);
                if !config.envoy_log {
                    host.log(Level::Info, &sealed.log_line());
                }
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
        let body = batch_body(c, &batch, self.chain.stream(), now);
        let headers =
            vec![(":method", "POST"), (":path", c.path.as_str()), (":authority", c.authority.as_str()), ("content-type", c.content_type())];
        self.last_flush = now;
        match host.dispatch(&c.cluster, &headers, Some(body.as_bytes()), c.timeout_ms) {
            Ok(token) => self.in_flight = Some((token, batch)),
            Err(e) => {
                // No connection to make: transient, like a connection failure.
                oplog::warn("audit batch not dispatched").field("cluster", &c.cluster).field("error", e.to_string()).emit(host);
                self.retry(batch, None, config, now, host, metrics);
            }
        }
    }

    /// A transient failure: the batch goes back to the front of the queue for another attempt,
    /// unless it has used `maxRetries`.
    fn retry(
        &mut self,
        batch: Vec<Sealed>,
        retry_after_ms: Option<u64>,
        config: &AuditConfig,
        now: UnixMillis,
        host: &impl Host,
        metrics: &Metrics,
    ) {
        self.failures = self.failures.saturating_add(1);
        let Some(c) = &config.collector else { return };
        if c.max_retries.is_some_and(|max| self.attempt >= max) {
            self.attempt = 0;
            metrics.audit_abandoned(host, batch.len());
            let line = oplog::error(NOT_DELIVERED).field("cause", "retries_exhausted").field("retries", c.max_retries.unwrap_or_default());
            self.give_up(&batch, line, config, host);
            return;
        }
        self.attempt = self.attempt.saturating_add(1);
        metrics.audit_retried(host);
        for s in batch.into_iter().rev() {
            self.queue.push_front(s);
        }
        // ±50 % jitter so workers and proxies do not retry in lockstep; a collector's
        // `Retry-After` is a floor.
        let jitter = u64::from(random_u32(host) % 1024);
        let backoff = c.backoff_ms(self.attempt).saturating_mul(512 + jitter) / 1024;
        self.next_try = now.add_ms(backoff.max(retry_after_ms.unwrap_or(0)));
    }

    /// Events that will not reach the collector: logged (`line`, with its cause) with their
    /// chain positions, and written to Envoy's log when that sink did not already take them.
    fn give_up(&self, batch: &[Sealed], line: oplog::Line, config: &AuditConfig, host: &impl Host) {
        line.field("events", batch.len())
            .field("stream", self.chain.stream())
            .field("seq", seq_ranges(batch))
            .field("loggedInstead", !config.envoy_log)
            .emit(host);
        if !config.envoy_log {
            for s in batch {
                host.log(Level::Info, &s.log_line());
            }
        }
    }

    /// A collector response; false if the call was not ours.
    #[allow(clippy::too_many_arguments)]
    pub fn on_response(
        &mut self,
        token: u32,
        status: Option<u16>,
        retry_after: Option<&str>,
        body_size: usize,
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
        // Only a 2xx OTLP answer has a body worth reading (a partial success).
        let otlp = config.collector.as_ref().is_some_and(|c| c.format == CollectorFormat::Otlp);
        let body = match status {
            Some(200..=299) if otlp && body_size > 0 && body_size <= delivery::ANSWER_READ_MAX => {
                host.buffer(Buffer::CallResponseBody, 0, body_size).ok().flatten()
            }
            _ => None,
        };
        match delivery::classify(status, retry_after, body.as_deref(), now) {
            Outcome::Delivered { rejected, message } => {
                self.attempt = 0;
                self.failures = 0;
                self.next_try = UnixMillis::default();
                // OTLP does not say which records it rejected: the whole batch is named.
                let rejected = usize::try_from(rejected).unwrap_or(usize::MAX).min(batch.len());
                metrics.audit_sent(host, batch.len() - rejected);
                if rejected > 0 {
                    metrics.audit_refused(host, rejected);
                    let line = oplog::error(NOT_DELIVERED)
                        .field("cause", "partial_success")
                        .field("rejected", rejected)
                        .field("error", message.as_str());
                    self.give_up(&batch, line, config, host);
                }
            }
            Outcome::Retry { after_ms } => {
                oplog::warn("audit batch kept for retry")
                    .field_opt("status", status)
                    .field_opt("error", status.is_none().then_some("no answer (timeout or reset)"))
                    .field("events", batch.len())
                    .field_opt("retryAfterMs", after_ms)
                    .emit(host);
                self.retry(batch, after_ms, config, now, host, metrics);
            }
            Outcome::Refused => {
                // Sending the same bytes again cannot succeed, and would hold every later batch.
                // It still counts as a failed delivery for `auditRequired`.
                self.attempt = 0;
                self.failures = self.failures.saturating_add(1);
                self.next_try = UnixMillis::default();
                metrics.audit_refused(host, batch.len());
                let line = oplog::error(NOT_DELIVERED).field("cause", "refused").field("status", status.unwrap_or_default());
                self.give_up(&batch, line, config, host);
            }
        }
        metrics.audit_queued(host, self.queue.len());
        true
    }
}

/// The `seq` numbers of a batch as ranges (`3-7,9`); a batch is in order, with gaps where
/// events were dropped.
fn seq_ranges(batch: &[Sealed]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(first) = batch.get(i) {
        let mut last = first.seq;
        i += 1;
        while let Some(next) = batch.get(i).filter(|s| Some(s.seq) == last.checked_add(1)) {
            last = next.seq;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&first.seq.to_string());
        if last != first.seq {
            out.push('-');
            out.push_str(&last.to_string());
        }
    }
    out
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
        w.host().assert_log("warn", "audit batch kept for retry", json!({"status": 503, "events": 2}));
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

    fn logged_lines(w: &Worker) -> Vec<u64> {
        w.host().audit_events().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    }

    /// The worker's chain stream id, read from its first logged event.
    fn stream_of(w: &Worker) -> String {
        w.host().audit_events()[0]["stream"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_batch_refused_for_good_is_not_retried_and_does_not_hold_the_queue() {
        let mut p = collected(json!({"format": "otlp"}));
        p["audit"]["envoyLog"] = json!(false);
        p["audit"]["auditRequired"] = json!(true);
        p["audit"]["failureLimit"] = json!(2);
        let mut w = Worker::with_policy(&p, NOW_MS);
        for _ in 0..3 {
            refuse(&w);
        }
        w.tick();
        let first = w.calls_to("audit").pop().unwrap();
        assert_eq!(first.header("content-type"), Some("application/json"));
        w.answer(first.token, 400, &[("retry-after", "1")], br#"{"code":3,"message":"bad"}"#);
        assert_eq!((w.host().stat("phi_guard.audit_refused_total"), w.host().stat("phi_guard.audit_retried_total")), (2, 0));
        w.host().assert_log(
            "error",
            "audit batch not delivered",
            json!({"cause": "refused", "status": 400, "events": 2, "stream": stream_of(&w), "seq": "0-1", "loggedInstead": true}),
        );
        assert_eq!(logged_lines(&w), [0, 1], "the refused events are kept in Envoy's log, sealed as they were");
        // The queue moves on: the next batch holds the next event, not the refused ones, with no
        // backoff (only the flush interval, as one event does not fill a batch).
        w.advance(1_000);
        w.tick();
        let next = w.calls_to("audit").pop().unwrap();
        assert_ne!(next.token, first.token);
        let body: Value = serde_json::from_slice(next.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["attributes"][0]["value"]["intValue"], "2");
        // A refusal is still a failed delivery: with auditRequired, the second in a row closes.
        w.answer(next.token, 401, &[], b"");
        let t = token(json!({}));
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&t));
        assert_eq!(w.seen(&ex).reply.map(|r| r.status), Some(503));
        assert_eq!(w.host().stat("phi_guard.audit_refused_total"), 3);
    }

    #[test]
    fn retry_after_is_a_floor_under_the_backoff() {
        let mut w = Worker::with_policy(&collected(json!({})), NOW_MS);
        refuse(&w);
        w.tick();
        let call = w.calls_to("audit").pop().unwrap();
        w.answer(call.token, 429, &[("retry-after", "5")], b"");
        w.host().assert_log("warn", "audit batch kept for retry", json!({"status": 429, "events": 1, "retryAfterMs": 5000}));
        w.advance(4_999);
        w.tick();
        assert_eq!(w.calls_to("audit").len(), 1, "not before the collector's Retry-After");
        w.advance(1);
        w.tick();
        let retry = w.calls_to("audit").pop().unwrap();
        assert_eq!(seqs(retry.body.as_deref().unwrap()), [0]);
        // A date in the past, or a value that is not one, leaves the backoff alone.
        w.answer(retry.token, 503, &[("retry-after", "tomorrow")], b"");
        w.advance(1_000);
        w.tick();
        assert_eq!(w.calls_to("audit").len(), 3);
    }

    #[test]
    fn max_retries_gives_a_batch_up_counted_and_logged_with_its_chain_positions() {
        let mut w = Worker::with_policy(&collected(json!({"maxRetries": 1})), NOW_MS);
        refuse(&w);
        refuse(&w);
        w.tick();
        let first = w.calls_to("audit").pop().unwrap();
        w.answer(first.token, 503, &[], b"");
        w.advance(1_000);
        w.tick();
        let retry = w.calls_to("audit").pop().unwrap();
        assert_eq!(seqs(retry.body.as_deref().unwrap()), [0, 1]);
        w.answer(retry.token, 0, &[], b"");
        assert_eq!((w.host().stat("phi_guard.audit_abandoned_total"), w.host().stat("phi_guard.audit_retried_total")), (2, 1));
        w.host().assert_log(
            "error",
            "audit batch not delivered",
            json!({"cause": "retries_exhausted", "retries": 1, "events": 2, "stream": stream_of(&w), "seq": "0-1", "loggedInstead": false}),
        );
        assert_eq!(logged_lines(&w), [0, 1], "written once: Envoy's log already had them");
        // The next batch starts with a fresh count.
        refuse(&w);
        w.advance(1_000);
        w.tick();
        let next = w.calls_to("audit").pop().unwrap();
        assert_eq!(seqs(next.body.as_deref().unwrap()), [2]);
        w.answer(next.token, 503, &[], b"");
        assert_eq!(w.host().stat("phi_guard.audit_retried_total"), 2, "retried, not given up");
    }

    #[test]
    fn an_otlp_partial_success_counts_the_rejected_records() {
        let mut w = Worker::with_policy(&collected(json!({"format": "otlp"})), NOW_MS);
        refuse(&w);
        refuse(&w);
        w.tick();
        let call = w.calls_to("audit").pop().unwrap();
        w.answer(call.token, 200, &[], br#"{"partialSuccess":{"rejectedLogRecords":"1","errorMessage":"record too old"}}"#);
        assert_eq!((w.host().stat("phi_guard.audit_sent_total"), w.host().stat("phi_guard.audit_refused_total")), (1, 1));
        w.host().assert_log(
            "error",
            "audit batch not delivered",
            json!({"cause": "partial_success", "rejected": 1, "error": "record too old", "events": 2, "seq": "0-1"}),
        );
        assert_eq!(w.host().stat("phi_guard.audit_retried_total"), 0, "rejected records are never retried");
    }

    #[test]
    fn seq_ranges_name_gaps() {
        use super::seq_ranges;
        let sealed = |seq| crate::audit::Sealed {
            line: String::new(),
            seq,
            time_ms: crate::time::UnixMillis::new(0),
            severity: crate::audit::Severity::Info,
        };
        let batch: Vec<_> = [3, 4, 5, 7, 9, 10].into_iter().map(sealed).collect();
        assert_eq!(seq_ranges(&batch), "3-5,7,9-10");
        assert_eq!(seq_ranges(&[]), "");
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
        w.host().assert_log("error", "audit queue full; event not queued for the collector", json!({"queueMaxEvents": 3, "seq": 3}));
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
