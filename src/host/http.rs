//! Per-request stream: decide on request headers, answer refusals locally, check request bodies
//! before they are released upstream, and hold back any response whose body must be checked
//! until the whole body has been checked.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::abi;
use super::now_ms;
use super::vm::{Handled, OwnedRequest, StreamState, Vm, Waiter};
use crate::decision::reply::Challenge;
use crate::decision::{BodyStep, DenyReason, Released, ResponsePhase, UpstreamHead, CHECKED_RESPONSE_HEADERS};
use crate::http::CONTENT_DIGEST;
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
                log::warn!("phi-guard: response withheld: {}", reason.code());
                self.vm.metrics.response_blocked(reason);
            }
            Some((reason, false)) => {
                log::warn!("phi-guard: shadow mode: response would be withheld: {}", reason.code());
                self.vm.metrics.shadow_denied(reason);
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
                if abi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes).is_err() {
                    log::error!("phi-guard: could not replace a response body");
                }
                Action::Continue
            }
            BodyStep::Release => self.release(body_size),
        }
    }

    /// Check and minimize the complete buffered body: release the minimized bytes, or the
    /// error body (not one byte of the original) if anything fails.
    fn release(&self, body_size: usize) -> Action {
        let original = match abi::buffer(BufferType::HttpResponseBody, 0, body_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(_) => {
                let step = self.step(|p| p.fail(DenyReason::ResponseTruncated)).unwrap_or(BodyStep::Continue);
                return self.body_step(step, body_size);
            }
        };
        let released = self.step(|phase| {
            let key = self.vm.hmac_key.borrow();
            let audit = self.vm.audit.borrow();
            let ctx = ApplyCtx { hmac_key: key.as_deref(), now: now_ms() / 1000, pseudonyms: audit.as_ref().map(|a| &a.key) };
            let released = phase.release(&original, &ctx);
            let (profile, _, count) = phase.minimized();
            (released, profile.is_some().then_some(count), phase.content_digest().map(str::to_owned))
        });
        let Some((released, minimized, digest)) = released else { return Action::Continue };
        // `release` refuses a body over the cap, and the cap is below Envoy's buffer limit
        // (`limits.envoyBufferLimitBytes`): a larger buffer makes Envoy reset the stream from
        // inside `set_buffer` and call back into the filter.
        if let Released::Body(bytes) = &released {
            if abi::set_buffer(BufferType::HttpResponseBody, 0, body_size, bytes).is_err() {
                // Could not swap in the released body: release nothing.
                let step = self.step(|p| p.fail(DenyReason::MinimizationFailed)).unwrap_or(BodyStep::Continue);
                return self.body_step(step, body_size);
            }
        }
        if let Some(count) = minimized {
            self.vm.metrics.minimized(count);
        }
        // Integrity of what leaves the filter: RFC 9530 digest of the released bytes, as a
        // trailer (the headers are gone) and in the audit event.
        if let Some(digest) = digest {
            if abi::set_header(MapType::HttpResponseTrailers, CONTENT_DIGEST, digest.as_bytes()).is_err() {
                log::warn!("phi-guard: the content-digest trailer could not be added");
            }
        }
        Action::Continue
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
            Handled::Forwarded => Action::Continue,
            Handled::Replied => Action::Pause,
            Handled::Wait(issuer) => {
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
        if self.state.borrow().security_headers {
            for (name, value) in [("cache-control", "no-store"), ("pragma", "no-cache"), ("x-content-type-options", "nosniff")] {
                let _ = abi::set_header(MapType::HttpResponseHeaders, name, value.as_bytes());
            }
            let _ = abi::remove_header(MapType::HttpResponseHeaders, "server");
            let _ = abi::remove_header(MapType::HttpResponseHeaders, "x-powered-by");
        }
        let inspects = self.state.borrow().response.as_ref().is_some_and(ResponsePhase::inspects_body);
        let (content_type, content_length, content_encoding) = if inspects {
            // An undecodable content-encoding is still an encoding we cannot read.
            let encoding = match abi::header(MapType::HttpResponseHeaders, "content-encoding") {
                Ok(Some(b)) => Some(String::from_utf8(b).unwrap_or_else(|_| "undecodable".to_owned())),
                _ => None,
            };
            (response_header("content-type"), response_header("content-length"), encoding)
        } else {
            (None, None, None)
        };
        let head = UpstreamHead {
            status,
            content_type: content_type.as_deref(),
            content_encoding: content_encoding.as_deref(),
            content_length: content_length.and_then(|l| l.trim().parse().ok()),
            end_of_stream,
        };
        let Some(edits) = self.step(|phase| phase.on_headers(&head)) else { return Action::Continue };
        if edits.strip_unlisted {
            strip_unlisted_response_headers();
        }
        if edits.drop_content_length {
            // The body may change length; the client must not rely on the upstream's.
            let _ = abi::remove_header(MapType::HttpResponseHeaders, "content-length");
        }
        if let Some(content_type) = edits.content_type {
            // The replacement is our JSON error body, in identity encoding.
            let _ = abi::remove_header(MapType::HttpResponseHeaders, "content-encoding");
            let _ = abi::set_header(MapType::HttpResponseHeaders, "content-type", content_type.as_bytes());
        }
        if let Some(reply) = edits.reply {
            // No body follows to carry the error (an empty success): the upstream's headers
            // have not left yet, so the filter answers with its own reply instead.
            let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.state.borrow_mut().replied = true;
            if abi::send_response(u32::from(reply.status), &headers, reply.body.as_bytes()).is_err() {
                log::error!("phi-guard: could not replace an empty response");
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let step = self.step(|phase| phase.on_body(body_size, end_of_stream)).unwrap_or(BodyStep::Continue);
        self.body_step(step, body_size)
    }

    fn on_log(&mut self) {
        self.vm.finish(&self.state);
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // With trailers the body callback never sees end_of_stream: the body ends here.
        let inspects = self.state.borrow().response.as_ref().is_some_and(ResponsePhase::inspects_body);
        let size =
            if inspects { abi::buffer(BufferType::HttpResponseBody, 0, usize::MAX).ok().flatten().map_or(0, |b| b.len()) } else { 0 };
        let Some((strip, step)) = self.step(|phase| phase.on_trailers(size)) else { return Action::Continue };
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
        self.body_step(step, size)
    }
}
