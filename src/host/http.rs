//! Per-request stream: decide on request headers, answer refusals locally, check request bodies
//! before they are released upstream, and hold back any response whose body must be checked
//! until the whole body has been checked.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::abi;
use super::now_ms;
use super::vm::{Outcome, OwnedRequest, ResponseState, StreamState, Vm, Waiter};
use crate::decision::reply::Challenge;
use crate::decision::{refusal_reply, upstream_error_body, DenyReason, Screen, UpstreamHead};
use crate::http::{content_digest, CONTENT_DIGEST};
use crate::minimize::ApplyCtx;

/// An Envoy attribute as text (e.g. `source.address`); `None` if absent or not UTF-8.
fn property(path: &[&str]) -> Option<String> {
    abi::property(path).ok().flatten().and_then(|b| String::from_utf8(b).ok())
}

/// A response header as text; `None` if absent, unreadable or not UTF-8 (a Latin-1
/// `content-type` is then simply "not JSON").
fn response_header(name: &str) -> Option<String> {
    abi::header(MapType::HttpResponseHeaders, name).ok().flatten().and_then(|b| String::from_utf8(b).ok())
}

/// Response headers a client may see on a route whose bodies are checked. Envoy cannot hold
/// the headers while the body is inspected (see ARCHITECTURE.md), so everything else is
/// removed when the headers pass: `Location`, `ETag`, `Last-Modified`, `Content-Location`,
/// `Link` and custom headers can name another patient's resource or carry PHI, and they would
/// otherwise reach the client even when the body is withheld. Hop-by-hop and framing headers
/// are Envoy's (`content-length` is removed separately).
pub const CHECKED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "date",
    "cache-control",
    "pragma",
    "expires",
    "vary",
    "retry-after",
    "x-content-type-options",
    "strict-transport-security",
    "x-request-id",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

/// Remove every response header outside [`CHECKED_RESPONSE_HEADERS`].
fn strip_unlisted_response_headers() {
    let Ok(pairs) = abi::header_pairs(MapType::HttpResponseHeaders) else {
        return;
    };
    let mut names: Vec<String> = pairs
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).to_ascii_lowercase())
        .filter(|k| !k.starts_with(':') && !CHECKED_RESPONSE_HEADERS.contains(&k.as_str()))
        .collect();
    names.dedup();
    for name in names {
        if abi::remove_header(MapType::HttpResponseHeaders, &name).is_err() {
            log::error!("phi-guard: could not remove a response header");
        }
    }
}

/// One HTTP stream.
pub struct Stream {
    context_id: u32,
    vm: Rc<Vm>,
    state: Rc<RefCell<StreamState>>,
}

impl Stream {
    /// A stream on this VM.
    pub fn new(context_id: u32, vm: Rc<Vm>) -> Self {
        Stream { context_id, vm, state: Rc::new(RefCell::new(StreamState::new())) }
    }

    /// Replace the buffered body chunk with the refusal (or scrubbed) body on the first chunk,
    /// nothing on later ones.
    fn replace_body(&self, body_size: usize) {
        let bytes = {
            let mut st = self.state.borrow_mut();
            let status = st.status;
            match &mut st.response {
                ResponseState::Replace { reason, fhir, sent } => {
                    let first = !std::mem::replace(sent, true);
                    if first {
                        refusal_reply(*reason, reason.status(), *fhir, None).body.into_bytes()
                    } else {
                        Vec::new()
                    }
                }
                ResponseState::Scrub { fhir, sent } => {
                    let first = !std::mem::replace(sent, true);
                    if first {
                        upstream_error_body(*fhir, status).into_bytes()
                    } else {
                        Vec::new()
                    }
                }
                _ => return,
            }
        };
        // No borrow is held across the hostcall: a host that calls back into the filter from
        // inside it (a stream reset runs `on_log`) finds the state free.
        if abi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes).is_err() {
            log::error!("phi-guard: could not replace a response body");
        }
    }

    fn refuse_response(&self, reason: DenyReason) {
        let mut state = self.state.borrow_mut();
        let (fhir, shadow) = match &state.response {
            ResponseState::Check { fhir, shadow, .. } => (*fhir, *shadow),
            _ => return,
        };
        if shadow {
            log::warn!("phi-guard: shadow mode: response would be withheld: {}", reason.code());
            self.vm.metrics.shadow_denied(reason);
            state.response = ResponseState::Pass;
            return;
        }
        log::warn!("phi-guard: response withheld: {}", reason.code());
        self.vm.metrics.response_blocked(reason);
        state.failure = Some(reason);
        state.response = ResponseState::Replace { reason, fhir, sent: false };
    }

    /// Check and minimize the complete buffered body: release the minimized bytes, or switch to
    /// replacement (not one byte of the original) if anything fails.
    fn finish_check(&self, body_size: usize) {
        let (plan, shadow) = {
            let st = self.state.borrow();
            let ResponseState::Check { plan, shadow, .. } = &st.response else { return };
            (plan.clone(), *shadow)
        };
        let original = match abi::buffer(BufferType::HttpResponseBody, 0, body_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(_) => {
                self.refuse_response(DenyReason::ResponseTruncated);
                return;
            }
        };
        let result = {
            let key = self.vm.hmac_key.borrow();
            let audit = self.vm.audit.borrow();
            let ctx = ApplyCtx { hmac_key: key.as_deref(), now: now_ms() / 1000, pseudonyms: audit.as_ref().map(|a| &a.key) };
            plan.release(&original, &ctx)
        };
        self.state.borrow_mut().restrictions = result.restrictions;
        match result.outcome {
            Ok(mut applied) => {
                if shadow {
                    // Policy in shadow mode: record what would have been withheld, send the
                    // upstream's bytes unchanged.
                    applied.body = None;
                }
                // `release` refuses a body over the cap, and the cap is at most Envoy's buffer
                // limit (`limits.envoyBufferLimitBytes`): a larger buffer makes Envoy reset the
                // stream from inside `set_buffer` and call back into the filter.
                if let Some(bytes) = &applied.body {
                    if abi::set_buffer(BufferType::HttpResponseBody, 0, body_size, bytes).is_err() {
                        // Could not swap in the minimized body: release nothing.
                        self.refuse_response(DenyReason::MinimizationFailed);
                        return;
                    }
                }
                if applied.profile.is_some() {
                    self.vm.metrics.minimized(applied.count);
                }
                // Integrity of what leaves the filter: RFC 9530 digest of the released bytes, as
                // a trailer (the headers are gone) and in the audit event.
                let digest = content_digest(applied.body.as_deref().unwrap_or(&original));
                if abi::set_header(MapType::HttpResponseTrailers, CONTENT_DIGEST, digest.as_bytes()).is_err() {
                    log::warn!("phi-guard: the content-digest trailer could not be added");
                }
                let mut st = self.state.borrow_mut();
                st.withheld = applied.withheld;
                st.content_digest = Some(digest);
                st.response = ResponseState::Pass;
            }
            Err(reason) => self.refuse_response(reason),
        }
    }

    fn refuse_request_body(&self, reason: DenyReason) -> Action {
        {
            let mut st = self.state.borrow_mut();
            st.body = None;
            st.failure = Some(reason);
        }
        self.vm.reply(&self.state, reason.status(), reason, false, &Challenge::default(), &[]);
        Action::Pause
    }
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        // Normally already done in on_log; never lose the event if the host skips it.
        self.vm.finish(&self.state);
        self.vm.forget(self.context_id);
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut request = match abi::header_pairs(MapType::HttpRequestHeaders) {
            Ok(headers) => OwnedRequest::from_headers(&headers),
            // Unreadable headers: refused (and audited) like undecodable ones.
            Err(_) => OwnedRequest { invalid_header: true, ..OwnedRequest::default() },
        };
        request.source = property(&["source", "address"]);
        request.destination = property(&["destination", "address"]);
        let now = now_ms();
        match self.vm.handle(&request, &self.state, now, true) {
            Outcome::Forwarded => Action::Continue,
            Outcome::Replied => Action::Pause,
            Outcome::Wait(issuer) => {
                let wait = self
                    .vm
                    .active
                    .borrow()
                    .as_ref()
                    .and_then(|a| a.policy.issuers.get(issuer).and_then(|i| i.remote.as_ref().map(|r| r.wait_ms)))
                    .unwrap_or(0);
                self.vm.waiters.borrow_mut().push(Waiter {
                    context_id: self.context_id,
                    issuer,
                    deadline_ms: now.saturating_add(wait),
                    request,
                    state: Rc::clone(&self.state),
                });
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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
            let body = match abi::buffer(BufferType::HttpRequestBody, 0, body_size) {
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

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.state.borrow().replied {
            // Our own local reply passing back through: it is already complete.
            return Action::Continue;
        }
        let status = response_header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        self.state.borrow_mut().status = status;
        if self.state.borrow().security_headers {
            for (name, value) in [("cache-control", "no-store"), ("pragma", "no-cache"), ("x-content-type-options", "nosniff")] {
                let _ = abi::set_header(MapType::HttpResponseHeaders, name, value.as_bytes());
            }
            let _ = abi::remove_header(MapType::HttpResponseHeaders, "server");
            let _ = abi::remove_header(MapType::HttpResponseHeaders, "x-powered-by");
        }
        let (plan, fhir, shadow) = {
            let st = self.state.borrow();
            let ResponseState::Check { plan, fhir, shadow, .. } = &st.response else { return Action::Continue };
            (plan.clone(), *fhir, *shadow)
        };
        let (content_type, content_length) = (response_header("content-type"), response_header("content-length"));
        // An undecodable content-encoding is still an encoding we cannot read.
        let content_encoding = match abi::header(MapType::HttpResponseHeaders, "content-encoding") {
            Ok(Some(b)) => Some(String::from_utf8(b).unwrap_or_else(|_| "undecodable".to_owned())),
            _ => None,
        };
        let head = UpstreamHead {
            status,
            content_type: content_type.as_deref(),
            content_encoding: content_encoding.as_deref(),
            content_length: content_length.and_then(|l| l.trim().parse().ok()),
            end_of_stream,
        };
        let screen = plan.screen(&head, shadow);
        if !shadow {
            strip_unlisted_response_headers();
        }
        // The body may change length; the client must not rely on the upstream's.
        let _ = abi::remove_header(MapType::HttpResponseHeaders, "content-length");
        let json_headers = || {
            // The replacement is our JSON error body, in identity encoding.
            let _ = abi::remove_header(MapType::HttpResponseHeaders, "content-encoding");
            let content_type = if fhir { "application/fhir+json" } else { "application/json" };
            let _ = abi::set_header(MapType::HttpResponseHeaders, "content-type", content_type.as_bytes());
        };
        match screen {
            Screen::Check => {}
            Screen::Pass => self.state.borrow_mut().response = ResponseState::Pass,
            Screen::Scrub => {
                self.state.borrow_mut().response = ResponseState::Scrub { fhir, sent: false };
                json_headers();
            }
            Screen::Refuse(reason) => {
                self.refuse_response(reason);
                let replaced = matches!(self.state.borrow().response, ResponseState::Replace { .. });
                if replaced && end_of_stream {
                    // No body follows to carry the error (an empty success, a HEAD answer). The
                    // upstream's headers have not left yet: answer with our own reply instead.
                    let reply = refusal_reply(reason, reason.status(), fhir, None);
                    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    self.state.borrow_mut().replied = true;
                    if abi::send_response(u32::from(reply.status), &headers, reply.body.as_bytes()).is_err() {
                        log::error!("phi-guard: could not replace an empty response");
                    }
                } else if replaced {
                    json_headers();
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let max = match &self.state.borrow().response {
            ResponseState::Pass => return Action::Continue,
            ResponseState::Replace { .. } | ResponseState::Scrub { .. } => None,
            ResponseState::Check { max, .. } => Some(*max),
        };
        match max {
            None => {}
            Some(max) if body_size > max => self.refuse_response(DenyReason::ResponseTooLarge),
            Some(_) if !end_of_stream => return Action::Pause,
            Some(_) => self.finish_check(body_size),
        }
        self.replace_body(body_size);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.vm.finish(&self.state);
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // (still checking the body, strip the upstream's trailers)
        let (checking, strip) = match &self.state.borrow().response {
            ResponseState::Check { shadow, .. } => (true, !*shadow),
            ResponseState::Replace { .. } | ResponseState::Scrub { .. } => (false, true),
            ResponseState::Pass => (false, false),
        };
        if strip {
            // The upstream's trailers are its headers' tail: on checked routes they can carry
            // what the header allowlist removes, so none of them reach the client; the
            // filter's own content-digest is added after this.
            let names: Vec<String> = abi::header_pairs(MapType::HttpResponseTrailers)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
                .collect();
            for name in &names {
                let _ = abi::remove_header(MapType::HttpResponseTrailers, name);
            }
        }
        // With trailers the body callback never sees end_of_stream: finish here.
        if !checking {
            return Action::Continue;
        }
        let size = abi::buffer(BufferType::HttpResponseBody, 0, usize::MAX).ok().flatten().map_or(0, |b| b.len());
        self.finish_check(size);
        self.replace_body(size);
        Action::Continue
    }
}
