//! Per-request stream: decide on request headers, answer refusals locally, and hold back any
//! response whose body must be checked until the whole body has been checked.

use std::rc::Rc;

use proxy_wasm::hostcalls::{get_buffer, get_map, get_map_value, remove_map_value, send_http_response, set_buffer};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::metrics::Metrics;
use super::now_secs;
use super::root::Shared;
use crate::decision::{decide, refusal_reply, Decision, DenyReason, Request, ResponsePlan};

/// What the response phase must do.
enum ResponseState {
    /// Stream through untouched (public or unchecked routes, our own local replies).
    Pass,
    /// Buffer and check the body against the plan (in shadow mode: report, never withhold).
    Check { plan: ResponsePlan, fhir: bool, max: usize, shadow: bool },
    /// The body is refused: every chunk is replaced (first with the error body, then nothing).
    Replace { reason: DenyReason, fhir: bool, sent: bool },
}

/// One HTTP stream.
pub struct Stream {
    active: Shared,
    metrics: Rc<Metrics>,
    response: ResponseState,
}

impl Stream {
    /// A stream using the VM's active policy.
    pub fn new(active: Shared, metrics: Rc<Metrics>) -> Self {
        Stream { active, metrics, response: ResponseState::Pass }
    }

    fn reply(&self, status: u16, reason: DenyReason, fhir: bool, required: Option<&str>) -> Action {
        let reply = refusal_reply(reason, status, fhir, required);
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if send_http_response(u32::from(reply.status), headers, Some(reply.body.as_bytes())).is_err() {
            log::error!("phi-guard: could not send local reply for `{}`", reason.code());
        }
        self.metrics.denied(reason);
        Action::Pause
    }

    /// Replace the buffered body chunk with the refusal body (first chunk) or nothing.
    fn replace_body(&mut self, body_size: usize) {
        if let ResponseState::Replace { reason, fhir, sent } = &mut self.response {
            let bytes = if *sent { Vec::new() } else { refusal_reply(*reason, reason.status(), *fhir, None).body.into_bytes() };
            *sent = true;
            if set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes).is_err() {
                log::error!("phi-guard: could not replace a refused response body");
            }
        }
    }

    fn refuse_response(&mut self, reason: DenyReason, fhir: bool) {
        if let ResponseState::Check { shadow: true, .. } = self.response {
            log::warn!("phi-guard: shadow mode: response would be withheld: {}", reason.code());
            self.metrics.shadow_denied(reason);
            self.response = ResponseState::Pass;
            return;
        }
        log::warn!("phi-guard: response withheld: {}", reason.code());
        self.metrics.response_blocked(reason);
        self.response = ResponseState::Replace { reason, fhir, sent: false };
    }

    /// Check the complete buffered body; on failure switch to replacement.
    fn finish_check(&mut self, body_size: usize) {
        let ResponseState::Check { plan, fhir, .. } = &self.response else {
            return;
        };
        let fhir = *fhir;
        let body = match get_buffer(BufferType::HttpResponseBody, 0, body_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(_) => {
                self.refuse_response(DenyReason::ResponseUncheckable, fhir);
                return;
            }
        };
        match plan.check_body(&body) {
            Ok(()) => self.response = ResponseState::Pass,
            Err(reason) => self.refuse_response(reason, fhir),
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = match get_map(MapType::HttpRequestHeaders) {
            Ok(h) => h,
            Err(_) => return self.reply(400, DenyReason::InvalidPath, false, None),
        };
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let method = find(":method").unwrap_or("");
        let path = find(":path").unwrap_or("");
        let authorization: Vec<&str> = headers.iter().filter(|(k, _)| k == "authorization").map(|(_, v)| v.as_str()).collect();

        let decision = {
            let mut guard = self.active.borrow_mut();
            let Some(active) = guard.as_mut() else {
                drop(guard);
                return self.reply(503, DenyReason::NoPolicy, false, None);
            };
            let before = active.cache.stats();
            let policy = Rc::clone(&active.policy);
            let d = decide(&policy, &mut active.cache, &Request { method, path, authorization: &authorization }, now_secs());
            let after = active.cache.stats();
            self.metrics.cache(after.0 - before.0, after.1 - before.1);
            (d, policy.limits.max_response_bytes, policy.shadow)
        };
        match decision {
            (Decision::Deny(r), _, true) => {
                log::warn!("phi-guard: shadow mode: would refuse {} {}", r.status, r.reason.code());
                self.metrics.shadow_denied(r.reason);
                Action::Continue
            }
            (Decision::Deny(r), _, false) => self.reply(r.status, r.reason, r.fhir_route, r.required_scope.as_deref()),
            (Decision::Allow(grant), max, shadow) => {
                self.metrics.allowed();
                if grant.response.inspects_body() {
                    // The upstream must answer in a form we can read: identity encoding.
                    let _ = remove_map_value(MapType::HttpRequestHeaders, "accept-encoding");
                    self.response = ResponseState::Check { plan: grant.response, fhir: grant.fhir_route, max, shadow };
                }
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let ResponseState::Check { fhir, max, .. } = &self.response else {
            return Action::Continue;
        };
        let (fhir, max) = (*fhir, *max);
        let header = |name: &str| get_map_value(MapType::HttpResponseHeaders, name).ok().flatten();
        let status = header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        if !(200..300).contains(&status) {
            // Errors and redirects carry no resource to check.
            self.response = ResponseState::Pass;
            return Action::Continue;
        }
        let encoded = header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        let json = header("content-type").is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.starts_with("application/json") || t.starts_with("application/fhir+json")
        });
        let too_big = header("content-length").and_then(|l| l.parse::<usize>().ok()).is_some_and(|l| l > max);
        // The body will change length if refused; the client must not rely on the upstream's.
        let _ = remove_map_value(MapType::HttpResponseHeaders, "content-length");
        if end_of_stream {
            // Headers only: nothing to release.
            self.response = ResponseState::Pass;
        } else if encoded || !json || too_big {
            self.refuse_response(DenyReason::ResponseUncheckable, fhir);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match &self.response {
            ResponseState::Pass => Action::Continue,
            ResponseState::Replace { .. } => {
                self.replace_body(body_size);
                Action::Continue
            }
            ResponseState::Check { max, fhir, .. } => {
                if body_size > *max {
                    let fhir = *fhir;
                    self.refuse_response(DenyReason::ResponseUncheckable, fhir);
                    self.replace_body(body_size);
                    return Action::Continue;
                }
                if !end_of_stream {
                    return Action::Pause;
                }
                self.finish_check(body_size);
                self.replace_body(body_size);
                Action::Continue
            }
        }
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // With trailers the body callback never sees end_of_stream: finish here.
        if let ResponseState::Check { .. } = self.response {
            let size = get_buffer(BufferType::HttpResponseBody, 0, usize::MAX).ok().flatten().map_or(0, |b| b.len());
            self.finish_check(size);
            self.replace_body(size);
        }
        Action::Continue
    }
}

