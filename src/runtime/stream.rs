//! Per-request stream: decide on request headers, answer refusals locally, check request bodies
//! before they are released upstream, and hold back any response whose body must be checked
//! until the whole body has been checked.

use std::cell::RefCell;
use std::rc::Rc;

use super::host::{Action, Buffer, HeaderMap, Host};
use super::oplog;
use super::vm::{Handled, OwnedRequest, StreamState, Vm};
use crate::decision::reply::Challenge;
use crate::decision::{BodyStep, DenyReason, Released, ResponsePhase, UpstreamHead, CHECKED_RESPONSE_HEADERS};
use crate::http::CONTENT_DIGEST;
use crate::minimize::ApplyCtx;

/// An Envoy attribute as text (e.g. `source.address`); `None` if absent or not UTF-8.
fn property(host: &impl Host, path: &[&str]) -> Option<String> {
    host.property(path).ok().flatten().and_then(|b| String::from_utf8(b).ok())
}

/// The response head as read once from the host: every header's name (lowercase) and value
/// bytes. One `header_pairs` hostcall instead of one per header the filter looks at.
struct ResponseHead {
    pairs: Vec<(String, Vec<u8>)>,
}

impl ResponseHead {
    fn read(host: &impl Host) -> Self {
        let pairs = host
            .header_pairs(HeaderMap::ResponseHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v))
            .collect();
        ResponseHead { pairs }
    }

    fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// A header as text; `None` if absent or not UTF-8 (a Latin-1 `content-type` is then
    /// simply "not JSON").
    fn text(&self, name: &str) -> Option<&str> {
        self.bytes(name).and_then(|b| std::str::from_utf8(b).ok())
    }

    fn has(&self, name: &str) -> bool {
        self.bytes(name).is_some()
    }

    /// Names outside [`CHECKED_RESPONSE_HEADERS`] (pseudo-headers aside), once each.
    fn unlisted(&self) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.pairs.iter().map(|(k, _)| k.as_str()).filter(|k| !k.starts_with(':') && !CHECKED_RESPONSE_HEADERS.contains(k)).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

fn remove_response_header(host: &impl Host, name: &str) {
    if host.remove_header(HeaderMap::ResponseHeaders, name).is_err() {
        oplog::error("could not remove a response header").field("header", name).emit(host);
    }
}

/// One HTTP stream. Its callbacks take `&self`: the host may call one from inside another
/// (re-entrant hostcalls), and the state is only ever borrowed between hostcalls.
pub struct Stream<H> {
    context_id: u32,
    vm: Rc<Vm<H>>,
    state: Rc<RefCell<StreamState>>,
}

impl<H: Host> Stream<H> {
    /// A stream on this VM.
    pub fn new(context_id: u32, vm: Rc<Vm<H>>) -> Self {
        Stream { context_id, vm, state: Rc::new(RefCell::new(StreamState::default())) }
    }

    /// Run one step of the response phase with the state borrowed, and count a refusal it
    /// made (the borrow ends before any hostcall: a host that calls back into the filter from
    /// inside one finds the state free).
    fn step<T>(&self, f: impl FnOnce(&mut ResponsePhase) -> T) -> Option<T> {
        let (out, refused) = {
            let mut st = self.state.borrow_mut();
            let phase = st.response.as_mut()?;
            let before = phase.refusal();
            let out = f(phase);
            let after = phase.refusal();
            (out, if after != before { after.map(|r| (r, phase.withheld())) } else { None })
        };
        match refused {
            Some((reason, true)) => {
                oplog::warn("response withheld").field("reason", reason.code()).emit(&self.vm.host);
                self.vm.metrics.response_blocked(&self.vm.host, reason);
            }
            Some((reason, false)) => {
                oplog::warn("shadow mode: response would be withheld").field("reason", reason.code()).emit(&self.vm.host);
                self.vm.metrics.shadow_denied(&self.vm.host, reason);
            }
            None => {}
        }
        Some(out)
    }

    /// Perform a body step on the `body_size` bytes buffered so far.
    fn body_step(&self, step: BodyStep, body_size: usize) -> Action {
        match step {
            BodyStep::Continue => Action::Continue,
            BodyStep::Hold => Action::Pause,
            BodyStep::Replace(bytes) => {
                if self.vm.host.set_buffer(Buffer::ResponseBody, 0, body_size, &bytes).is_err() {
                    // The buffer still holds the upstream's bytes: never let them go. The headers
                    // have left, so a local reply now makes Envoy reset the stream.
                    oplog::error("could not replace a response body; resetting the stream").emit(&self.vm.host);
                    self.state.borrow_mut().replied = true;
                    let _ = self.vm.host.send_response(502, &[], b"");
                    return Action::Pause;
                }
                Action::Continue
            }
            BodyStep::Release => self.release(body_size),
        }
    }

    /// Check and minimize the complete buffered body: release the minimized bytes, or the
    /// error body (not one byte of the original) if anything fails.
    fn release(&self, body_size: usize) -> Action {
        let original = match self.vm.host.buffer(Buffer::ResponseBody, 0, body_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(_) => {
                let step = self.step(|p| p.fail(DenyReason::ResponseTruncated)).unwrap_or(BodyStep::Continue);
                return self.body_step(step, body_size);
            }
        };
        let now = self.state.borrow().decided_at.to_seconds();
        let released = self.step(|phase| {
            let key = self.vm.hmac_key.borrow();
            let audit = self.vm.audit.borrow();
            let ctx = ApplyCtx { hmac_key: key.as_deref(), now, pseudonyms: audit.as_ref().map(|a| &a.key) };
            let released = phase.release(&original, &ctx);
            let (profile, _, count) = phase.minimized();
            (released, profile.is_some().then_some(count), phase.content_digest().map(str::to_owned))
        });
        let Some((released, minimized, digest)) = released else { return Action::Continue };
        // `release` refuses a body over the cap, and the cap is below Envoy's buffer limit
        // (`limits.envoyBufferLimitBytes`): a larger buffer makes Envoy reset the stream from
        // inside `set_buffer` and call back into the filter.
        if let Released::Body(bytes) = &released {
            if self.vm.host.set_buffer(Buffer::ResponseBody, 0, body_size, bytes).is_err() {
                // Could not swap in the released body: release nothing.
                let step = self.step(|p| p.fail(DenyReason::MinimizationFailed)).unwrap_or(BodyStep::Continue);
                return self.body_step(step, body_size);
            }
        }
        if let Some(count) = minimized {
            self.vm.metrics.minimized(&self.vm.host, count);
        }
        // Integrity of what leaves the filter: RFC 9530 digest of the released bytes, as a
        // trailer (the headers are gone) and in the audit event.
        if let Some(digest) = digest {
            if self.vm.host.set_header(HeaderMap::ResponseTrailers, CONTENT_DIGEST, digest.as_bytes()).is_err() {
                oplog::warn("could not add the content-digest trailer").emit(&self.vm.host);
            }
        }
        Action::Continue
    }

    fn refuse_request_body(&self, reason: DenyReason) -> Action {
        let fhir = {
            let mut st = self.state.borrow_mut();
            st.body = None;
            st.failure = Some(reason);
            st.fhir_route
        };
        self.vm.reply(&self.state, reason.status(), reason, fhir, &Challenge::default(), &[]);
        Action::Pause
    }

    /// The stream is gone (`on_done`).
    pub fn on_done(&self) {
        // Normally already done in on_log; never lose the event if the host skips it.
        self.vm.finish(&self.state);
        self.vm.forget(self.context_id);
    }

    /// The request headers: decide, then forward, answer locally, or wait for keys.
    pub fn on_request_headers(&self) -> Action {
        let mut request = match self.vm.host.header_pairs(HeaderMap::RequestHeaders) {
            Ok(headers) => OwnedRequest::from_headers(&headers),
            // Unreadable headers: refused (and audited) like undecodable ones.
            Err(_) => OwnedRequest { invalid_header: true, ..OwnedRequest::default() },
        };
        request.source = property(&self.vm.host, &["source", "address"]);
        request.destination = property(&self.vm.host, &["destination", "address"]);
        let now = self.vm.host.now_ms();
        match self.vm.handle(&request, &self.state, now, true) {
            Handled::Forwarded => Action::Continue,
            Handled::Replied => Action::Pause,
            Handled::Wait(issuer) => {
                self.vm.wait(self.context_id, issuer, None, request, Rc::clone(&self.state), now);
                Action::Pause
            }
            Handled::Preflight(p) => {
                self.vm.queue_write(self.context_id, *p, &request, Rc::clone(&self.state), now);
                Action::Pause
            }
            Handled::Introspecting(issuer, hash) => {
                self.vm.wait(self.context_id, issuer, Some(hash), request, Rc::clone(&self.state), now);
                Action::Pause
            }
        }
    }

    /// `body_size` bytes of the request body are buffered: hold them until the body is complete
    /// and checked.
    pub fn on_request_body(&self, body_size: usize, end_of_stream: bool) -> Action {
        // Hold the body until it is complete and checked: the upstream never sees a byte of a
        // body that is too large, is not the resource the path names, or points to another
        // patient. (The headers have gone ahead: holding them too stops the body callbacks in
        // Envoy. A refused body resets the upstream stream, so no write can complete.)
        let check = match &self.state.borrow().body {
            Some(c) => c.clone(),
            None => return Action::Continue,
        };
        if body_size > check.max {
            return self.refuse_request_body(DenyReason::RequestTooLarge);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if check.inspects() {
            let body = match self.vm.host.buffer(Buffer::RequestBody, 0, body_size) {
                Ok(b) => b.unwrap_or_default(),
                Err(_) => return self.refuse_request_body(DenyReason::InvalidRequestBody),
            };
            if let Err(reason) = check.check(&body) {
                return self.refuse_request_body(reason);
            }
        }
        self.state.borrow_mut().body = None;
        Action::Continue
    }

    /// The response headers: screen them, and edit them as the response phase asks.
    pub fn on_response_headers(&self, end_of_stream: bool) -> Action {
        if self.state.borrow().replied {
            // Our own local reply passing back through: it is already complete.
            return Action::Continue;
        }
        let host = &self.vm.host;
        let head = ResponseHead::read(host);
        let status = head.text(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        let inspects = self.state.borrow().response.as_ref().is_some_and(ResponsePhase::inspects_body);
        let upstream = UpstreamHead {
            status,
            content_type: head.text("content-type").filter(|_| inspects),
            // An undecodable content-encoding is still an encoding we cannot read.
            content_encoding: head.bytes("content-encoding").filter(|_| inspects).map(|b| std::str::from_utf8(b).unwrap_or("undecodable")),
            content_length: head.text("content-length").filter(|_| inspects).and_then(|l| l.trim().parse().ok()),
            end_of_stream,
        };
        let security_headers = self.state.borrow().security_headers;
        let edits = self.step(|phase| phase.on_headers(&upstream));
        if security_headers {
            for (name, value) in [("cache-control", "no-store"), ("pragma", "no-cache"), ("x-content-type-options", "nosniff")] {
                let _ = host.set_header(HeaderMap::ResponseHeaders, name, value.as_bytes());
            }
        }
        // Headers to remove, each once and only if present: the unlisted ones on checked routes
        // (which include `server` and `x-powered-by`), else those two where security headers
        // apply, and the upstream's `content-length` when the body may change.
        let mut remove: Vec<&str> = Vec::new();
        if edits.as_ref().is_some_and(|e| e.strip_unlisted) {
            remove = head.unlisted();
        } else if security_headers {
            remove.extend(["server", "x-powered-by"].into_iter().filter(|n| head.has(n)));
        }
        if edits.as_ref().is_some_and(|e| e.drop_content_length) && head.has("content-length") && !remove.contains(&"content-length") {
            // The body may change length; the client must not rely on the upstream's.
            remove.push("content-length");
        }
        for name in remove {
            remove_response_header(host, name);
        }
        let Some(edits) = edits else { return Action::Continue };
        if let Some(content_type) = edits.content_type {
            // The replacement is our JSON error body, in identity encoding.
            let _ = host.remove_header(HeaderMap::ResponseHeaders, "content-encoding");
            let _ = host.set_header(HeaderMap::ResponseHeaders, "content-type", content_type.as_bytes());
        }
        if let Some(reply) = edits.reply {
            // No body follows to carry the error (an empty success): the upstream's headers
            // have not left yet, so the filter answers with its own reply instead.
            let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.state.borrow_mut().replied = true;
            if host.send_response(reply.status, &headers, reply.body.as_bytes()).is_err() {
                oplog::error("could not replace an empty response").field("status", reply.status).emit(host);
            }
        }
        Action::Continue
    }

    /// `body_size` bytes of the response body are buffered.
    pub fn on_response_body(&self, body_size: usize, end_of_stream: bool) -> Action {
        let step = self.step(|phase| phase.on_body(body_size, end_of_stream)).unwrap_or(BodyStep::Continue);
        self.body_step(step, body_size)
    }

    /// The stream is complete (Envoy's access-log phase): its audit event is finished.
    pub fn on_log(&self) {
        self.vm.finish(&self.state);
    }

    /// The response trailers: the body is complete.
    pub fn on_response_trailers(&self) -> Action {
        // With trailers the body callback never sees end_of_stream: the body ends here.
        let inspects = self.state.borrow().response.as_ref().is_some_and(ResponsePhase::inspects_body);
        let size =
            if inspects { self.vm.host.buffer(Buffer::ResponseBody, 0, usize::MAX).ok().flatten().map_or(0, |b| b.len()) } else { 0 };
        let Some((strip, step)) = self.step(|phase| phase.on_trailers(size)) else { return Action::Continue };
        if strip {
            // The upstream's trailers are its headers' tail: on checked routes they can carry
            // what the header allowlist removes, so none of them reach the client; the
            // filter's own content-digest is added after this.
            let names: Vec<String> = self
                .vm
                .host
                .header_pairs(HeaderMap::ResponseTrailers)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
                .collect();
            for name in &names {
                let _ = self.vm.host.remove_header(HeaderMap::ResponseTrailers, name);
            }
        }
        self.body_step(step, size)
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use serde_json::{json, Value};

    use super::super::testing::{policy, token, Worker, NOW_MS};
    use super::super::Action;

    const PATIENT: &[u8] = br#"{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:mrn","value":"123456789"}]}"#;

    fn header<'a>(pairs: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
        pairs.iter().find(|(k, _)| k.as_slice() == name.as_bytes()).map(|(_, v)| v.as_slice())
    }

    /// The hostcalls of a cache-warm, checked Patient read, from request headers to the end of
    /// the stream: each one is a V8 <-> Envoy crossing (and a copy), the host layer's cost in
    /// `make bench`. A new one shows up here.
    #[test]
    fn a_warm_checked_read_makes_few_hostcalls() {
        let w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        let t = token(json!({}));
        let first = w.request("GET", "/fhir/Patient/p1", Some(&t));
        w.respond(&first, 200, &[("content-type", "application/fhir+json")], PATIENT);
        w.host().take_calls();
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&t));
        let headers = [("content-type", "application/fhir+json"), ("content-length", "93"), ("server", "upstream"), ("etag", "W/\"3\"")];
        w.respond(&ex, 200, &headers, PATIENT);
        let calls = w.host().take_calls();
        let expected: &[(&str, usize)] = &[
            ("header_pairs", 2),     // request head, response head (once each)
            ("property", 2),         // source.address, destination.address (audit event)
            ("now_ms", 1),           // the decision (the response phase reuses its time)
            ("remove_header", 4),    // accept-encoding; server, etag (allowlist), content-length
            ("set_header", 4),       // cache-control, pragma, x-content-type-options; content-digest trailer
            ("buffer", 1),           // the complete body, once
            ("increment_metric", 5), // cache hit, allowed, audit event, responses minimized, fields withheld
            ("log", 1),              // the sealed audit line
            ("set_buffer", 1),       // the minimized body (the demo profile withholds fields)
        ];
        let expected: std::collections::BTreeMap<&str, usize> = expected.iter().copied().collect();
        assert_eq!(calls, expected, "hostcalls of a warm checked read");
    }

    #[test]
    fn an_allowed_read_is_forwarded_minimized_and_audited_when_the_stream_ends() {
        let w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        assert_eq!(ex.action, Action::Continue);
        let seen = w.seen(&ex);
        assert!(seen.reply.is_none());
        // The body is checked: the upstream must answer in identity encoding.
        assert_eq!(header(seen.request_headers.as_deref().unwrap_or_default(), "accept-encoding"), None);
        assert!(w.host().audit_events().is_empty(), "an allowed request is audited at the end of the stream");

        let headers = [("content-type", "application/fhir+json"), ("content-length", "93"), ("etag", "W/\"3\"")];
        let (head, body) = w.respond(&ex, 200, &headers, PATIENT);
        assert_eq!((head, body), (Action::Continue, Action::Continue));
        let seen = w.seen(&ex);
        assert_eq!(header(&seen.response_headers, "content-length"), None, "the body changes length");
        assert_eq!(header(&seen.response_headers, "etag"), None, "unlisted headers never reach the client");
        let released: Value = serde_json::from_slice(&seen.response_body).unwrap();
        assert_eq!(released["identifier"][0]["value"], "*****6789");
        let digest = String::from_utf8(header(&seen.trailers, "content-digest").unwrap().to_vec()).unwrap();

        let events = w.host().audit_events();
        assert_eq!(events.len(), 1);
        let ev = &events[0];
        assert_eq!((ev["decision"].as_str(), ev["reason"].as_str(), ev["status"].as_u64()), (Some("allow"), Some("allowed"), Some(200)));
        assert_eq!(ev["contentDigest"].as_str(), Some(digest.as_str()));
        assert_eq!(ev["seq"], 0);
        assert_eq!(w.host().stat("phi_guard.requests_allowed_total"), 1);
        assert_eq!(w.host().stat("phi_guard.responses_minimized_total"), 1);
    }

    #[test]
    fn a_body_that_cannot_be_replaced_is_never_released() {
        let w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        w.host().fail_set_buffer.set(true);
        let (_, body) = w.respond(&ex, 200, &[("content-type", "application/fhir+json")], PATIENT);
        // Neither the minimized body nor the error body could be written: the stream is reset
        // (a local reply after the headers) and the upstream's bytes are held, not released.
        assert_eq!(body, Action::Pause);
        assert_eq!(w.seen(&ex).reply.map(|r| r.status), Some(502));
        let events = w.host().audit_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["reason"], "minimization_failed", "{}", events[0]);
    }

    #[test]
    fn a_refusal_is_answered_locally_audited_and_counted_and_its_reply_left_alone() {
        let w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        let ex = w.request("GET", "/fhir/Patient/p1", None);
        assert_eq!(ex.action, Action::Pause);
        let reply = w.seen(&ex).reply.unwrap();
        assert_eq!(reply.status, 401);
        assert!(reply.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")));
        let events = w.host().audit_events();
        assert_eq!(events.len(), 1, "audited at request time");
        assert_eq!((events[0]["decision"].as_str(), events[0]["reason"].as_str()), (Some("deny"), Some("missing_token")));
        assert_eq!(w.host().stat("phi_guard.requests_denied_total.reason.missing_token"), 1);
        // The local reply passes back through the response callbacks untouched, and the stream
        // end adds no second event.
        let (head, _) = w.respond(&ex, 401, &[("x-custom", "kept")], b"{}");
        assert_eq!(head, Action::Continue);
        assert_eq!(header(&w.seen(&ex).response_headers, "x-custom"), Some(&b"kept"[..]));
        assert_eq!(w.host().audit_events().len(), 1);
    }

    #[test]
    fn unreadable_or_undecodable_request_headers_answer_400_and_are_audited() {
        let w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        // The host cannot read the headers at all.
        let ex = w.send(None);
        assert_eq!((ex.action, w.seen(&ex).reply.map(|r| r.status)), (Action::Pause, Some(400)));
        // A Latin-1 byte in the Authorization header.
        let headers = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/fhir/Patient/p1".to_vec()),
            (b"authorization".to_vec(), b"Bearer caf\xe9".to_vec()),
        ];
        let ex = w.send(Some(headers));
        assert_eq!(w.seen(&ex).reply.map(|r| (r.status, r.reason())), Some((400, Some("invalid_header".into()))));
        let reasons: Vec<Value> = w.host().audit_events().iter().map(|e| e["reason"].clone()).collect();
        assert_eq!(reasons, [json!("invalid_header"), json!("invalid_header")], "every refusal is audited");
        assert_eq!(w.host().stat("phi_guard.requests_denied_total.reason.invalid_header"), 2);
        // The same byte in a header the decision does not read changes nothing.
        let t = token(json!({}));
        let mut headers = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/fhir/Patient/p1".to_vec()),
            (b"authorization".to_vec(), format!("Bearer {t}").into_bytes()),
        ];
        headers.push((b"x-note".to_vec(), b"caf\xe9".to_vec()));
        assert_eq!(w.send(Some(headers)).action, Action::Continue);
        // The headers DPoP and pre-flight writes read are decided on too: a Latin-1 byte in any
        // of them is refused, never a panic.
        for name in [&b"dpop"[..], b"if-match", b":authority", b":scheme"] {
            let headers = vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b":path".to_vec(), b"/fhir/Patient/p1".to_vec()),
                (b"authorization".to_vec(), format!("DPoP {t}").into_bytes()),
                (name.to_vec(), b"caf\xe9".to_vec()),
            ];
            let ex = w.send(Some(headers));
            assert_eq!(w.seen(&ex).reply.map(|r| r.status), Some(400), "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn without_a_policy_every_request_is_refused() {
        let w = Worker::new();
        let ex = w.request("GET", "/healthz", None);
        assert_eq!((ex.action, w.seen(&ex).reply.map(|r| r.status)), (Action::Pause, Some(503)));
        assert_eq!(w.host().stat("phi_guard.requests_denied_total.reason.no_policy"), 1);
    }

    #[test]
    fn shadow_mode_forwards_what_it_would_refuse_and_counts_it() {
        let w = Worker::with_policy(&policy(|p| p["mode"] = json!("shadow")), NOW_MS);
        let ex = w.request("GET", "/fhir/Patient/p1", None);
        assert_eq!((ex.action, w.seen(&ex).reply), (Action::Continue, None));
        assert_eq!(w.host().stat("phi_guard.shadow_denied_total"), 1);
        w.host().assert_log("warn", "shadow mode: would refuse", json!({"status": 401, "reason": "missing_token"}));
        assert_eq!(w.host().audit_events()[0]["reason"], "missing_token");
    }

    #[test]
    fn a_failed_response_check_replaces_the_body() {
        let w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        // Another patient's record: the compartment check withholds it.
        let other = br#"{"resourceType":"Patient","id":"p2"}"#;
        w.respond(&ex, 200, &[("content-type", "application/fhir+json")], other);
        let body = String::from_utf8(w.seen(&ex).response_body).unwrap();
        assert!(!body.contains("p2"), "{body}");
        assert_eq!(w.host().stat("phi_guard.responses_blocked_total"), 1);
        let ev = &w.host().audit_events()[0];
        assert_eq!((ev["decision"].as_str(), ev["upstreamStatus"].as_u64()), (Some("deny"), Some(200)));
    }

    #[test]
    fn callbacks_re_entered_from_hostcalls_find_the_state_free() {
        // Envoy may run a stream's callbacks from inside `set_buffer` (a reset calls `on_log`)
        // and `send_local_response` (the reply's own response headers).
        let w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        let stream = Rc::clone(&ex.stream);
        *w.host().reenter.borrow_mut() = Some(Box::new(move || stream.on_log()));
        w.respond(&ex, 200, &[("content-type", "application/fhir+json")], PATIENT);
        assert!(
            w.host().log_entry("stream state busy at the end of the stream; audit deferred to on_done").is_none(),
            "{:?}",
            w.host().logs.borrow()
        );
        let events = w.host().audit_events();
        assert_eq!(events.len(), 1);
        assert!(events[0]["contentDigest"].is_string(), "the re-entrant on_log saw the released body");

        // A local reply runs the stream's response callbacks while it is being sent.
        let (id, stream) = w.open(Some(vec![(b":method".to_vec(), b"GET".to_vec()), (b":path".to_vec(), b"/fhir/Patient/p1".to_vec())]));
        let (inner, seen) = (Rc::clone(&stream), Rc::new(std::cell::Cell::new(None)));
        let out = Rc::clone(&seen);
        *w.host().reenter.borrow_mut() = Some(Box::new(move || out.set(Some(inner.on_response_headers(false)))));
        w.host().enter(id);
        assert_eq!(stream.on_request_headers(), Action::Pause);
        assert_eq!(w.host().stream(id).reply.map(|r| r.status), Some(401));
        assert_eq!(seen.get(), Some(Action::Continue), "the reply is left alone");
        *w.host().reenter.borrow_mut() = None;
    }

    #[test]
    fn request_bodies_are_held_until_checked() {
        let p = policy(|p| {
            p["routes"][4]["methods"] = json!(["GET", "POST"]);
            p["routes"][4]["fhir"]["scopeContexts"] = json!(["patient"]);
            p["limits"]["maxRequestBodyBytes"] = json!(64);
        });
        let w = Worker::with_policy(&p, NOW_MS);
        let t = token(json!({"scope": "patient/Observation.c"}));
        let ex = w.request("POST", "/fhir/Observation", Some(&t));
        assert_eq!(ex.action, Action::Continue);
        assert_eq!(ex.stream.on_request_body(10, false), Action::Pause, "held until complete");
        assert_eq!(ex.stream.on_request_body(100, false), Action::Pause);
        let reply = w.seen(&ex).reply.unwrap();
        assert_eq!((reply.status, reply.reason().as_deref()), (413, Some("request_too_large")));
        ex.stream.on_log();
        let ev = &w.host().audit_events()[0];
        assert_eq!(ev["reason"], "request_too_large");
    }
}
