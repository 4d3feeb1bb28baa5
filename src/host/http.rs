//! Per-request stream: decide on request headers, answer refusals locally, check request bodies
//! before they are released upstream, and hold back any response whose body must be checked
//! until the whole body has been checked.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls::{get_buffer, get_map, get_map_value, get_property, remove_map_value, set_buffer, set_map_value};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::now_ms;
use super::vm::{OwnedRequest, Outcome, ResponseState, StreamState, Vm, Waiter};
use crate::decision::reply::Challenge;
use crate::decision::{refusal_reply, upstream_error_body, DenyReason, Screen, UpstreamHead};
use crate::http::{content_digest, CONTENT_DIGEST};
use crate::minimize::ApplyCtx;

/// An Envoy attribute as text (e.g. `source.address`).
fn property(path: &[&str]) -> Option<String> {
    get_property(path.to_vec()).ok().flatten().and_then(|b| String::from_utf8(b).ok())
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
        let mut st = self.state.borrow_mut();
        let status = st.status;
        let bytes = match &mut st.response {
            ResponseState::Replace { reason, fhir, sent } => {
                let first = !std::mem::replace(sent, true);
                if first { refusal_reply(*reason, reason.status(), *fhir, None).body.into_bytes() } else { Vec::new() }
            }
            ResponseState::Scrub { fhir, sent } => {
                let first = !std::mem::replace(sent, true);
                if first { upstream_error_body(*fhir, status).into_bytes() } else { Vec::new() }
            }
            _ => return,
        };
        if set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes).is_err() {
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
        let (result, original, shadow) = {
            let st = self.state.borrow();
            let ResponseState::Check { plan, shadow, .. } = &st.response else { return };
            let shadow = *shadow;
            match get_buffer(BufferType::HttpResponseBody, 0, body_size) {
                Ok(b) => {
                    let body = b.unwrap_or_default();
                    let key = self.vm.hmac_key.borrow();
                    let audit = self.vm.audit.borrow();
                    let ctx = ApplyCtx { hmac_key: key.as_deref(), now: now_ms() / 1000, pseudonyms: audit.as_ref().map(|a| &a.key) };
                    (plan.release(&body, &ctx), body, shadow)
                }
                Err(_) => {
                    drop(st);
                    self.refuse_response(DenyReason::ResponseTruncated);
                    return;
                }
            }
        };
        self.state.borrow_mut().restrictions = result.restrictions;
        match result.outcome {
            Ok(mut applied) => {
                if shadow {
                    // Policy in shadow mode: record what would have been withheld, send the
                    // upstream's bytes unchanged.
                    applied.body = None;
                }
                if let Some(bytes) = &applied.body {
                    if set_buffer(BufferType::HttpResponseBody, 0, body_size, bytes).is_err() {
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
                let _ = set_map_value(MapType::HttpResponseTrailers, CONTENT_DIGEST, Some(&digest));
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
        let Ok(headers) = get_map(MapType::HttpRequestHeaders) else {
            self.vm.reply(&self.state, 400, DenyReason::InvalidPath, false, &Challenge::default(), &[]);
            return Action::Pause;
        };
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let request = OwnedRequest {
            method: find(":method").unwrap_or_default(),
            path: find(":path").unwrap_or_default(),
            authorization: headers.iter().filter(|(k, _)| k == "authorization").map(|(_, v)| v.clone()).collect(),
            header_count: headers.iter().filter(|(k, _)| !k.starts_with(':')).count(),
            header_bytes: headers.iter().map(|(k, v)| k.len() + v.len()).sum(),
            content_length: find("content-length").and_then(|l| l.trim().parse().ok()),
            request_id: find("x-request-id"),
            source: property(&["source", "address"]),
            destination: property(&["destination", "address"]),
        };
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
            let body = match get_buffer(BufferType::HttpRequestBody, 0, body_size) {
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
        let status = get_map_value(MapType::HttpResponseHeaders, ":status").ok().flatten().and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        self.state.borrow_mut().status = status;
        if self.state.borrow().security_headers {
            let _ = set_map_value(MapType::HttpResponseHeaders, "cache-control", Some("no-store"));
            let _ = set_map_value(MapType::HttpResponseHeaders, "pragma", Some("no-cache"));
            let _ = set_map_value(MapType::HttpResponseHeaders, "x-content-type-options", Some("nosniff"));
            let _ = remove_map_value(MapType::HttpResponseHeaders, "server");
            let _ = remove_map_value(MapType::HttpResponseHeaders, "x-powered-by");
        }
        let (screen, fhir) = {
            let st = self.state.borrow();
            let ResponseState::Check { plan, fhir, shadow, .. } = &st.response else { return Action::Continue };
            let header = |name: &str| get_map_value(MapType::HttpResponseHeaders, name).ok().flatten();
            let (content_type, content_encoding) = (header("content-type"), header("content-encoding"));
            let head = UpstreamHead {
                status,
                content_type: content_type.as_deref(),
                content_encoding: content_encoding.as_deref(),
                content_length: header("content-length").and_then(|l| l.trim().parse().ok()),
                end_of_stream,
            };
            (plan.screen(&head, *shadow), *fhir)
        };
        // The body may change length; the client must not rely on the upstream's.
        let _ = remove_map_value(MapType::HttpResponseHeaders, "content-length");
        let json_headers = || {
            // The replacement is our JSON error body, in identity encoding.
            let _ = remove_map_value(MapType::HttpResponseHeaders, "content-encoding");
            let _ = set_map_value(MapType::HttpResponseHeaders, "content-type", Some(if fhir { "application/fhir+json" } else { "application/json" }));
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
                if matches!(self.state.borrow().response, ResponseState::Replace { .. }) {
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
        // With trailers the body callback never sees end_of_stream: finish here.
        if !matches!(self.state.borrow().response, ResponseState::Check { .. }) {
            return Action::Continue;
        }
        let size = get_buffer(BufferType::HttpResponseBody, 0, usize::MAX).ok().flatten().map_or(0, |b| b.len());
        self.finish_check(size);
        self.replace_body(size);
        Action::Continue
    }
}
