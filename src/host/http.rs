//! Per-request stream: decide on request headers, answer refusals locally, and hold back any
//! response whose body must be checked until the whole body has been checked.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls::{get_buffer, get_map, get_map_value, remove_map_value, set_buffer};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::now_ms;
use super::vm::{OwnedRequest, Outcome, ResponseState, Vm, Waiter};
use crate::decision::{refusal_reply, DenyReason};

/// One HTTP stream.
pub struct Stream {
    context_id: u32,
    vm: Rc<Vm>,
    response: Rc<RefCell<ResponseState>>,
}

impl Stream {
    /// A stream on this VM.
    pub fn new(context_id: u32, vm: Rc<Vm>) -> Self {
        Stream { context_id, vm, response: Rc::new(RefCell::new(ResponseState::Pass)) }
    }

    /// Replace the buffered body chunk with the refusal body (first chunk) or nothing.
    fn replace_body(&self, body_size: usize) {
        if let ResponseState::Replace { reason, fhir, sent } = &mut *self.response.borrow_mut() {
            let bytes = if *sent { Vec::new() } else { refusal_reply(*reason, reason.status(), *fhir, None).body.into_bytes() };
            *sent = true;
            if set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes).is_err() {
                log::error!("phi-guard: could not replace a refused response body");
            }
        }
    }

    fn refuse_response(&self, reason: DenyReason) {
        let mut state = self.response.borrow_mut();
        let (fhir, shadow) = match &*state {
            ResponseState::Check { fhir, shadow, .. } => (*fhir, *shadow),
            _ => return,
        };
        if shadow {
            log::warn!("phi-guard: shadow mode: response would be withheld: {}", reason.code());
            self.vm.metrics.shadow_denied(reason);
            *state = ResponseState::Pass;
            return;
        }
        log::warn!("phi-guard: response withheld: {}", reason.code());
        self.vm.metrics.response_blocked(reason);
        *state = ResponseState::Replace { reason, fhir, sent: false };
    }

    /// Check the complete buffered body; on failure switch to replacement.
    fn finish_check(&self, body_size: usize) {
        let result = match &*self.response.borrow() {
            ResponseState::Check { plan, .. } => match get_buffer(BufferType::HttpResponseBody, 0, body_size) {
                Ok(b) => plan.check_body(&b.unwrap_or_default()),
                Err(_) => Err(DenyReason::ResponseUncheckable),
            },
            _ => return,
        };
        match result {
            Ok(()) => *self.response.borrow_mut() = ResponseState::Pass,
            Err(reason) => self.refuse_response(reason),
        }
    }
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        self.vm.forget(self.context_id);
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Ok(headers) = get_map(MapType::HttpRequestHeaders) else {
            self.vm.reply(400, DenyReason::InvalidPath, false, None);
            return Action::Pause;
        };
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let request = OwnedRequest {
            method: find(":method"),
            path: find(":path"),
            authorization: headers.iter().filter(|(k, _)| k == "authorization").map(|(_, v)| v.clone()).collect(),
        };
        let now = now_ms();
        match self.vm.handle(&request, &self.response, now / 1000, true) {
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
                    response: Rc::clone(&self.response),
                });
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let max = match &*self.response.borrow() {
            ResponseState::Check { max, .. } => *max,
            _ => return Action::Continue,
        };
        let header = |name: &str| get_map_value(MapType::HttpResponseHeaders, name).ok().flatten();
        let status = header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        if !(200..300).contains(&status) {
            // Errors and redirects carry no resource to check.
            *self.response.borrow_mut() = ResponseState::Pass;
            return Action::Continue;
        }
        let encoded = header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        let json = header("content-type").is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.starts_with("application/json") || t.starts_with("application/fhir+json")
        });
        let too_big = header("content-length").and_then(|l| l.parse::<usize>().ok()).is_some_and(|l| l > max);
        // The body may change length; the client must not rely on the upstream's.
        let _ = remove_map_value(MapType::HttpResponseHeaders, "content-length");
        if end_of_stream {
            // Headers only: nothing to release.
            *self.response.borrow_mut() = ResponseState::Pass;
        } else if encoded || !json || too_big {
            self.refuse_response(DenyReason::ResponseUncheckable);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let max = match &*self.response.borrow() {
            ResponseState::Pass => return Action::Continue,
            ResponseState::Replace { .. } => None,
            ResponseState::Check { max, .. } => Some(*max),
        };
        match max {
            None => {}
            Some(max) if body_size > max => self.refuse_response(DenyReason::ResponseUncheckable),
            Some(_) if !end_of_stream => return Action::Pause,
            Some(_) => self.finish_check(body_size),
        }
        self.replace_body(body_size);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // With trailers the body callback never sees end_of_stream: finish here.
        if let ResponseState::Check { .. } = &*self.response.borrow() {
        } else {
            return Action::Continue;
        }
        let size = get_buffer(BufferType::HttpResponseBody, 0, usize::MAX).ok().flatten().map_or(0, |b| b.len());
        self.finish_check(size);
        self.replace_body(size);
        Action::Continue
    }
}
