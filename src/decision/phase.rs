//! The response phase of one allowed request, as a state machine without I/O: the host (the
//! Envoy filter) performs the hostcalls it asks for, and `simulate` drives the very same object,
//! so `explain`, the playground and the filter cannot disagree on what a client receives.
//!
//! The host calls, in order: [`ResponsePhase::on_headers`] with the upstream's head (it applies
//! the returned [`HeadEdits`]), [`ResponsePhase::on_body`] on every body callback (and
//! [`ResponsePhase::on_trailers`] if trailers end the stream), [`ResponsePhase::release`] with
//! the whole buffered body when asked for it, and [`ResponsePhase::finish`] on the audit event
//! when the stream ends.

use super::reply::{refusal_reply, upstream_error_body, Reply};
use super::response::{ResponsePlan, Screen, UpstreamHead};
use crate::http::content_digest;
use crate::minimize::restrict::RestrictionHit;
use crate::minimize::ApplyCtx;
use crate::reason::DenyReason;

/// Where the response phase stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the upstream's headers; the body will be checked.
    Headers,
    /// Buffering the body to check it.
    Check,
    /// Streaming through untouched (nothing to check, checked and released, or shadow mode).
    Pass,
    /// An upstream error on a checked route: its body is replaced by a generic one.
    Scrub { sent: bool },
    /// The body is withheld: the first chunk becomes the error body, later ones nothing.
    Replace { reason: DenyReason, sent: bool },
    /// The filter answered with its own reply (an empty success refused): nothing more to do.
    Replied,
}

/// What to do to the upstream's response headers before they leave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadEdits {
    /// Remove `content-length`: the body may change.
    pub drop_content_length: bool,
    /// Remove every header outside [`CHECKED_RESPONSE_HEADERS`] (and, later, every upstream
    /// trailer): they can name another patient's resource or carry PHI, and Envoy sends the
    /// headers before the body is checked.
    pub strip_unlisted: bool,
    /// The body is replaced by the filter's JSON: remove `content-encoding` and set this
    /// `content-type`.
    pub content_type: Option<&'static str>,
    /// Answer with this reply instead of the upstream's (no body follows to carry the error).
    pub reply: Option<Reply>,
}

/// What to do with the body buffered so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStep {
    /// Let it go as it is.
    Continue,
    /// Keep buffering (the host pauses the body).
    Hold,
    /// The body is complete: read it and pass it to [`ResponsePhase::release`].
    Release,
    /// Replace everything buffered so far with these bytes (possibly none), then continue.
    Replace(Vec<u8>),
}

/// What to send once a complete body is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The upstream's bytes, unchanged.
    Unchanged,
    /// These bytes instead of the upstream's (minimized, or the error body of a refusal).
    Body(Vec<u8>),
}

/// Response headers a client may see on a route whose bodies are checked. Everything else is
/// removed when the headers pass: `Location`, `ETag`, `Last-Modified`, `Content-Location`,
/// `Link` and custom headers can name another patient's resource or carry PHI. Hop-by-hop and
/// framing headers are Envoy's (`content-length` is removed separately).
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

/// The response phase of one allowed request whose body must be inspected.
#[derive(Debug, Clone)]
pub struct ResponsePhase {
    plan: ResponsePlan,
    fhir: bool,
    shadow: bool,
    state: State,
    status: u16,
    failure: Option<DenyReason>,
    shadow_refusal: Option<DenyReason>,
    withheld: Vec<String>,
    withheld_count: usize,
    profile: Option<String>,
    restrictions: Vec<RestrictionHit>,
    digest: Option<String>,
}

impl ResponsePhase {
    /// The phase for a grant's plan (`fhir`: error bodies are OperationOutcomes; `shadow`: the
    /// policy is in shadow mode, so nothing is withheld, only recorded).
    pub fn new(plan: ResponsePlan, fhir: bool, shadow: bool) -> Self {
        let state = if plan.inspects_body() { State::Headers } else { State::Pass };
        ResponsePhase {
            plan,
            fhir,
            shadow,
            state,
            status: 0,
            failure: None,
            shadow_refusal: None,
            withheld: Vec::new(),
            withheld_count: 0,
            profile: None,
            restrictions: Vec::new(),
            digest: None,
        }
    }

    /// Whether the body is inspected at all (the upstream must then answer in identity
    /// encoding: the host strips `accept-encoding` from the request).
    pub fn inspects_body(&self) -> bool {
        self.plan.inspects_body()
    }

    /// The upstream's response head arrived.
    pub fn on_headers(&mut self, head: &UpstreamHead<'_>) -> HeadEdits {
        self.status = head.status;
        if self.state != State::Headers {
            return HeadEdits::default();
        }
        let mut edits = HeadEdits { drop_content_length: true, strip_unlisted: !self.shadow, ..HeadEdits::default() };
        let content_type = if self.fhir { "application/fhir+json" } else { "application/json" };
        match self.plan.screen(head, self.shadow) {
            Screen::Check => self.state = State::Check,
            Screen::Pass => self.state = State::Pass,
            Screen::Scrub => {
                self.state = State::Scrub { sent: false };
                edits.content_type = Some(content_type);
            }
            Screen::Refuse(reason) => {
                self.refuse(reason);
                if let State::Replace { .. } = self.state {
                    if head.end_of_stream {
                        // No body follows to carry the error (an empty success): answer with
                        // the filter's own reply while the upstream's headers are still held.
                        edits.reply = Some(refusal_reply(reason, reason.status(), self.fhir, None));
                        self.state = State::Replied;
                    } else {
                        edits.content_type = Some(content_type);
                    }
                }
            }
        }
        edits
    }

    /// A body callback: `buffered` bytes are held by the host so far; `end`: the stream ends
    /// with them.
    pub fn on_body(&mut self, buffered: usize, end: bool) -> BodyStep {
        match self.state {
            State::Check if buffered > self.plan.max_body_bytes => {
                self.refuse(DenyReason::ResponseTooLarge);
                self.replacement()
            }
            State::Check if end => BodyStep::Release,
            State::Check => BodyStep::Hold,
            State::Headers | State::Pass | State::Replied => BodyStep::Continue,
            State::Scrub { .. } | State::Replace { .. } => self.replacement(),
        }
    }

    /// The upstream's trailers arrived (the body callback will not see the end of the stream):
    /// whether to strip them, and the body step that ends the stream.
    pub fn on_trailers(&mut self, buffered: usize) -> (bool, BodyStep) {
        let strip = match self.state {
            State::Check | State::Headers => !self.shadow,
            State::Scrub { .. } | State::Replace { .. } => true,
            State::Pass | State::Replied => false,
        };
        let step = match self.state {
            State::Check | State::Scrub { .. } | State::Replace { .. } => self.on_body(buffered, true),
            _ => BodyStep::Continue,
        };
        (strip, step)
    }

    /// Release the complete body: run the plan (checks, restrictions, minimization). Returns
    /// what to send; the digest of those bytes is then [`ResponsePhase::content_digest`].
    pub fn release(&mut self, body: &[u8], ctx: &ApplyCtx<'_>) -> Released {
        if self.state != State::Check {
            return Released::Unchanged;
        }
        let release = self.plan.release(body, ctx);
        self.restrictions = release.restrictions;
        match release.outcome {
            Ok(applied) => {
                self.state = State::Pass;
                self.profile = applied.profile;
                self.withheld_count = applied.count;
                self.withheld = applied.withheld;
                // Shadow mode: record what would have been withheld, send the upstream's bytes.
                let out = applied.body.filter(|_| !self.shadow);
                self.digest = Some(content_digest(out.as_deref().unwrap_or(body)));
                out.map_or(Released::Unchanged, Released::Body)
            }
            Err(reason) => {
                self.refuse(reason);
                match self.replacement() {
                    BodyStep::Replace(bytes) => Released::Body(bytes),
                    _ => Released::Unchanged,
                }
            }
        }
    }

    /// The host could not read the complete body (`response_truncated`) or write the released
    /// bytes (`minimization_failed`): nothing of the original may go.
    pub fn fail(&mut self, reason: DenyReason) -> BodyStep {
        self.digest = None;
        self.withheld.clear();
        self.withheld_count = 0;
        self.profile = None;
        self.refuse(reason);
        self.replacement()
    }

    /// The refusal an allowed request's audit event records: the enforced one, or
    /// `response_truncated` when the stream ended while a checked body was still held (it never
    /// reached the client). `audit` turns this into the event (`ResponsePhase::finish`).
    pub fn final_refusal(&self) -> Option<DenyReason> {
        let truncated = matches!(self.state, State::Check | State::Headers) && self.status != 0 && self.plan.inspects_body();
        self.failure.or(truncated.then_some(DenyReason::ResponseTruncated))
    }

    /// Which privacy restrictions withheld resources, and how many.
    pub fn restriction_hits(&self) -> &[RestrictionHit] {
        &self.restrictions
    }

    /// The RFC 9530 `Content-Digest` of the released body, once released.
    pub fn content_digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The refusal that withheld the response (or, in shadow mode, would have).
    pub fn refusal(&self) -> Option<DenyReason> {
        self.failure.or(self.shadow_refusal)
    }

    /// Whether the refusal is enforced (not shadow mode).
    pub fn withheld(&self) -> bool {
        self.failure.is_some()
    }

    /// The minimization profile applied, with the paths and count it withheld.
    pub fn minimized(&self) -> (Option<&str>, &[String], usize) {
        (self.profile.as_deref(), &self.withheld, self.withheld_count)
    }

    /// The upstream status seen.
    pub fn status(&self) -> u16 {
        self.status
    }

    fn refuse(&mut self, reason: DenyReason) {
        if self.shadow {
            self.shadow_refusal = Some(reason);
            self.state = State::Pass;
        } else {
            self.failure = Some(reason);
            self.state = State::Replace { reason, sent: false };
        }
    }

    /// The replacement for the body buffered so far: the error body once, then nothing.
    fn replacement(&mut self) -> BodyStep {
        let status = self.status;
        match &mut self.state {
            State::Replace { reason, sent } => {
                let first = !std::mem::replace(sent, true);
                BodyStep::Replace(if first {
                    refusal_reply(*reason, reason.status(), self.fhir, None).body.into_bytes()
                } else {
                    Vec::new()
                })
            }
            State::Scrub { sent } => {
                let first = !std::mem::replace(sent, true);
                BodyStep::Replace(if first { upstream_error_body(self.fhir, status).into_bytes() } else { Vec::new() })
            }
            _ => BodyStep::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{CompartmentCheck, Expected, ResponseCheck};

    fn plan() -> ResponsePlan {
        let check = CompartmentCheck {
            patient: "p1".into(),
            shared: Vec::new().into(),
            expect: Expected::Resource { resource_type: "Observation", id: "o1".into() },
        };
        ResponsePlan { checks: vec![ResponseCheck::Compartment(check)], max_body_bytes: 1024, ..ResponsePlan::default() }
    }

    fn head(status: u16, end: bool) -> UpstreamHead<'static> {
        UpstreamHead { status, content_type: Some("application/fhir+json"), end_of_stream: end, ..UpstreamHead::default() }
    }

    const MINE: &[u8] = br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#;
    const OTHERS: &[u8] = br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}"#;

    #[test]
    fn checked_body_is_held_then_released_with_its_digest() {
        let mut p = ResponsePhase::new(plan(), true, false);
        let edits = p.on_headers(&head(200, false));
        assert!(edits.drop_content_length && edits.strip_unlisted && edits.content_type.is_none() && edits.reply.is_none());
        assert_eq!(p.on_body(10, false), BodyStep::Hold);
        assert_eq!(p.on_body(MINE.len(), true), BodyStep::Release);
        assert_eq!(p.release(MINE, &ApplyCtx::default()), Released::Unchanged);
        assert_eq!(p.content_digest(), Some(content_digest(MINE).as_str()));
        assert_eq!(p.on_body(0, true), BodyStep::Continue);
        assert_eq!(p.refusal(), None);
    }

    #[test]
    fn a_failed_check_replaces_the_body_once() {
        let mut p = ResponsePhase::new(plan(), true, false);
        p.on_headers(&head(200, false));
        let Released::Body(bytes) = p.release(OTHERS, &ApplyCtx::default()) else { panic!("released") };
        assert!(String::from_utf8(bytes).unwrap().contains("patient_mismatch"));
        assert_eq!(p.on_body(0, true), BodyStep::Replace(Vec::new()));
        assert_eq!((p.refusal(), p.withheld(), p.content_digest()), (Some(DenyReason::PatientMismatch), true, None));
    }

    #[test]
    fn too_large_error_and_empty_answers() {
        let mut p = ResponsePhase::new(plan(), true, false);
        p.on_headers(&head(200, false));
        let BodyStep::Replace(b) = p.on_body(2048, false) else { panic!("not replaced") };
        assert!(String::from_utf8(b).unwrap().contains("response_too_large"));
        assert_eq!(p.on_body(4096, true), BodyStep::Replace(Vec::new()));
        // An error: scrubbed, the status kept.
        let mut p = ResponsePhase::new(plan(), true, false);
        assert_eq!(p.on_headers(&head(404, false)).content_type, Some("application/fhir+json"));
        assert!(matches!(p.on_body(3, true), BodyStep::Replace(b) if !b.is_empty()));
        assert_eq!(p.refusal(), None);
        // An empty success: the filter's own reply.
        let mut p = ResponsePhase::new(plan(), true, false);
        let edits = p.on_headers(&head(200, true));
        assert_eq!(edits.reply.map(|r| r.status), Some(502));
        assert_eq!(p.refusal(), Some(DenyReason::ResponseNotJson));
    }

    #[test]
    fn a_body_the_host_cannot_read_or_write_is_withheld() {
        for reason in [DenyReason::ResponseTruncated, DenyReason::MinimizationFailed] {
            let mut p = ResponsePhase::new(plan(), true, false);
            p.on_headers(&head(200, false));
            assert_eq!(p.on_body(MINE.len(), true), BodyStep::Release);
            if reason == DenyReason::MinimizationFailed {
                p.release(MINE, &ApplyCtx::default());
            }
            assert!(matches!(p.fail(reason), BodyStep::Replace(b) if !b.is_empty()));
            assert_eq!((p.refusal(), p.content_digest()), (Some(reason), None));
        }
    }

    #[test]
    fn shadow_mode_records_and_releases() {
        let mut p = ResponsePhase::new(plan(), true, true);
        assert!(!p.on_headers(&head(200, false)).strip_unlisted);
        assert_eq!(p.release(OTHERS, &ApplyCtx::default()), Released::Unchanged);
        assert_eq!((p.refusal(), p.withheld()), (Some(DenyReason::PatientMismatch), false));
    }

    #[test]
    fn trailers_end_the_check_and_are_stripped() {
        let mut p = ResponsePhase::new(plan(), true, false);
        p.on_headers(&head(200, false));
        assert_eq!(p.on_body(10, false), BodyStep::Hold);
        assert_eq!(p.on_trailers(MINE.len()), (true, BodyStep::Release));
        let unchecked = ResponsePhase::new(ResponsePlan::default(), false, false);
        assert_eq!(unchecked.clone().on_trailers(3), (false, BodyStep::Continue));
    }

    #[test]
    fn a_stream_that_ends_while_checking_is_audited_as_truncated() {
        use crate::testing::{event, policy, token};
        let p = policy("smart-patient-app");
        let t = token(serde_json::json!({"patient": "p1"}));
        let ev = event(&p, "GET", "/fhir/Observation/o1", Some(&t));
        assert_eq!(ev.reason.code(), "allowed");
        let mut phase = ResponsePhase::new(plan(), true, false);
        phase.on_headers(&head(200, false));
        assert_eq!(phase.on_body(10, false), BodyStep::Hold);
        let done = phase.finish(ev.clone());
        assert_eq!((done.reason.code(), done.upstream_status), ("response_truncated", Some(200)));
        // Released: the digest is recorded.
        phase.on_body(MINE.len(), true);
        phase.release(MINE, &ApplyCtx::default());
        let done = phase.finish(ev);
        assert_eq!((done.reason.code(), done.content_digest.as_deref()), ("allowed", phase.content_digest()));
    }
}
