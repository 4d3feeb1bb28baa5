//! The audit event: everything an auditor may know about one request, and nothing that is PHI
//! (no field values, bodies or tokens). Built from the decision at request time and finished
//! with the response; a denied request is complete at request time.

use serde::Serialize;

use super::query::audit_query;
use super::time::rfc3339_ms;
use super::vocab::{is_operation, printable};
use crate::audit_key::AuditKey;
use crate::audit_key::PatientIds;
use crate::auth::purpose::{is_emergency, is_purpose_of_use};
use crate::auth::Principal;
use crate::decision::{Decision, DenyReason};
use crate::fhir::request::valid_id;
use crate::fhir::{FhirRequest, Interaction};
use crate::http::normalize;
use crate::minimize::restrict::RestrictionHit;
use crate::policy::Policy;
use crate::time::{UnixMillis, UnixSeconds};

/// FHIR `AuditEvent.outcome` (R4 `audit-event-outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// `0`: allowed and answered without error.
    Success,
    /// `4`: allowed; the upstream answered 4xx.
    MinorFailure,
    /// `8`: refused by phi-guard, at request or response time.
    SeriousFailure,
    /// `12`: not served: the upstream failed (5xx or no response), no policy, or audit down.
    MajorFailure,
}

impl EventOutcome {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            EventOutcome::Success => 0,
            EventOutcome::MinorFailure => 4,
            EventOutcome::SeriousFailure => 8,
            EventOutcome::MajorFailure => 12,
        }
    }
}

impl Serialize for EventOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

/// How urgently a human should look at the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine access.
    Info,
    /// Allowed, but the upstream failed or answered with an error.
    Warning,
    /// A refusal, or emergency access (break-glass, purpose `ETREAT`): every one is a
    /// security-relevant event.
    High,
}

impl Severity {
    /// Event name (as serialized).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::High => "high",
        }
    }

    /// OTLP `severityNumber` and `severityText`.
    pub fn otlp(self) -> (u8, &'static str) {
        match self {
            Severity::Info => (9, "INFO"),
            Severity::Warning => (13, "WARN"),
            Severity::High => (17, "ERROR"),
        }
    }
}

/// The final verdict for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Forwarded and released.
    Allow,
    /// Refused, or the response withheld.
    Deny,
}

/// Why the event ended as it did: `allowed`, or the refusal's [`DenyReason::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded and released.
    Allowed,
    /// Refused at request or response time.
    Refused(DenyReason),
}

impl Reason {
    /// The serialized code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Refused(r) => r.code(),
        }
    }

    /// The refusal, if refused.
    pub fn refusal(self) -> Option<DenyReason> {
        match self {
            Reason::Allowed => None,
            Reason::Refused(r) => Some(r),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// Request facts the host reads from Envoy (the decision does not keep them).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestMeta<'a> {
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// `source.address` (the client's `ip:port`).
    pub source: Option<&'a str>,
    /// `destination.address` (the listener's `ip:port`).
    pub destination: Option<&'a str>,
    /// `:method`.
    pub method: &'a str,
    /// `:path` as received; only its FHIR query is audited, in redacted form.
    pub path: &'a str,
}

/// Per-event context from the active policy, the VM's key and the injected clock.
#[derive(Debug, Clone, Copy)]
pub struct AuditContext<'a> {
    /// Policy name; empty when no policy is loaded.
    pub policy_name: &'a str,
    /// Policy revision; empty when no policy is loaded.
    pub policy_revision: &'a str,
    /// How patients are named.
    pub patient_ids: PatientIds,
    /// The audit key (pseudonyms).
    pub key: &'a AuditKey,
    /// Now, from the injected clock.
    pub now: UnixMillis,
}

impl<'a> AuditContext<'a> {
    /// Context under an active policy.
    pub fn new(policy: &'a Policy, key: &'a AuditKey, now: UnixMillis) -> Self {
        AuditContext { policy_name: &policy.name, policy_revision: &policy.revision, patient_ids: policy.audit.patient_ids, key, now }
    }

    /// Context before any policy compiled (for `no_policy` refusals): pseudonyms, no policy.
    pub fn without_policy(key: &'a AuditKey, now: UnixMillis) -> Self {
        AuditContext { policy_name: "", policy_revision: "", patient_ids: PatientIds::Pseudonym, key, now }
    }

    /// What the log may carry for a patient id.
    pub fn identify(&self, patient_id: &str) -> String {
        self.identify_resource("Patient", patient_id)
    }

    /// What the log may carry for the logical id of a resource of type `ty`: like a patient's
    /// id (FHIR ids can be MRNs), a pseudonym under the type unless the policy opts in to raw
    /// ids; a raw id must be a FHIR id (`[A-Za-z0-9-.]{1,64}`).
    pub fn identify_resource(&self, ty: &str, id: &str) -> String {
        match self.patient_ids {
            PatientIds::Raw if valid_id(id) => id.to_owned(),
            _ => self.key.pseudonym_of(ty, id),
        }
    }

    /// What the log may carry for a token claim that may name a person (`sub`) or be chosen
    /// freely by the issuer (`jti`): a pseudonym under the claim's name, or, when the policy
    /// opts in to raw ids, the value if it is printable ASCII of at most [`MAX_CLAIM`] bytes
    /// (else `invalid`).
    pub fn identify_claim(&self, claim: &str, value: &str) -> String {
        match self.patient_ids {
            PatientIds::Pseudonym => self.key.pseudonym_of(claim, value),
            PatientIds::Raw => checked(value),
        }
    }
}

/// One audit event. Serialized field order is the struct order; absent fields are omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// When the request was decided (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The same instant (not serialized; OTLP uses it).
    #[serde(skip)]
    pub time_ms: UnixMillis,
    /// `x-request-id` when it is a plain id ([`plain_request_id`]), else its pseudonym.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Policy name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Policy revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<String>,
    /// Matched route id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// HTTP method (`OTHER` when not a plain token).
    pub method: String,
    /// FHIR interaction (`read`, `search-type`, ...), on FHIR routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interaction: Option<Interaction>,
    /// FHIR resource type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<&'static str>,
    /// Logical id, identified like a patient's (pseudonym under its type by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Operation name without `$` when it is a FHIR R4 operation, else its pseudonym.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The redacted query (see [`super::query`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Final verdict.
    pub decision: Verdict,
    /// FHIR AuditEvent outcome code.
    pub outcome: EventOutcome,
    /// `allowed` or the [`DenyReason::code`].
    pub reason: Reason,
    /// Severity.
    pub severity: Severity,
    /// Status the client received (absent until the response for allowed requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Status the upstream answered with, when the request reached it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// OAuth client id (`invalid` unless printable ASCII, at most [`MAX_CLAIM`] bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Token subject, identified like a patient id (pseudonym by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Token issuer (`invalid` unless printable ASCII, at most [`MAX_CLAIM`] bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Token `jti` (never the token), identified like a patient id (pseudonym by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// How the user authenticated: the token's `acr` (`invalid` unless printable ASCII, at most
    /// [`MAX_CLAIM`] bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// The token's `amr` methods (`pwd`, `mfa`, ...), each checked like `acr`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// When the user authenticated (the token's `auth_time`, seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<UnixSeconds>,
    /// Purpose-of-use codes from the token; a value that is not a PurposeOfUse code is `invalid`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purpose_of_use: Vec<String>,
    /// Client network address (without port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Listener network address (without port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// How `patients`, `contextPatient`, `resourceId`, `subject` and `tokenId` are written.
    pub patient_ids: PatientIds,
    /// Patients the request names (path, compartment, patient search parameters).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// The token's patient in context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_patient: Option<String>,
    /// Field paths withheld from the response by minimization (paths only, never values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
    /// Break-glass reason code, when the request broke the glass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// Privacy restrictions that withheld resources from the response: id and count only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restrictions: Vec<RestrictionHit>,
    /// RFC 9530 `Content-Digest` of the body the client received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<String>,
}

/// Outcome and severity of a refusal.
fn refused(reason: DenyReason) -> (EventOutcome, Severity) {
    match reason {
        DenyReason::NoPolicy | DenyReason::AuditUnavailable => (EventOutcome::MajorFailure, Severity::High),
        _ => (EventOutcome::SeriousFailure, Severity::High),
    }
}

impl AuditEvent {
    /// Build the event for a decision. Allowed requests are finished by
    /// [`AuditEvent::with_response`]; denied ones are complete.
    pub fn from_decision(decision: &Decision, req: &RequestMeta<'_>, ctx: &AuditContext<'_>) -> AuditEvent {
        let (route, principal, fhir, break_glass) = match decision {
            Decision::Allow(g) => (Some(g.route_id.as_str()), g.principal.as_deref(), g.fhir.as_ref(), g.break_glass.as_ref()),
            Decision::Deny(r) => (r.route_id.as_deref(), r.principal.as_deref(), r.fhir.as_ref(), r.break_glass.as_ref()),
        };
        let mut ev = AuditEvent {
            time: rfc3339_ms(ctx.now),
            time_ms: ctx.now,
            request_id: req
                .request_id
                .map(|id| if plain_request_id(id) { id.to_owned() } else { ctx.key.pseudonym_of("x-request-id", id) }),
            policy: non_empty(ctx.policy_name).map(|s| clean(&s)),
            policy_revision: non_empty(ctx.policy_revision).map(|s| clean(&s)),
            route: route.map(clean),
            method: method(req.method),
            interaction: None,
            resource_type: None,
            resource_id: None,
            operation: None,
            query: None,
            decision: Verdict::Allow,
            outcome: EventOutcome::Success,
            reason: Reason::Allowed,
            severity: Severity::Info,
            status: None,
            upstream_status: None,
            client_id: None,
            subject: None,
            issuer: None,
            token_id: None,
            acr: None,
            amr: Vec::new(),
            auth_time: None,
            purpose_of_use: Vec::new(),
            source: req.source.and_then(host_of),
            destination: req.destination.and_then(host_of),
            patient_ids: ctx.patient_ids,
            patients: Vec::new(),
            context_patient: None,
            withheld: Vec::new(),
            break_glass: break_glass.map(|b| clean(&b.reason)),
            restrictions: Vec::new(),
            content_digest: None,
        };
        if let Some(p) = principal {
            ev.add_principal(p, ctx);
        }
        if let Some(f) = fhir {
            ev.add_fhir(f, req.path, ctx);
        }
        if let Decision::Deny(r) = decision {
            let (outcome, severity) = refused(r.reason);
            ev.decision = Verdict::Deny;
            ev.reason = Reason::Refused(r.reason);
            ev.outcome = outcome;
            ev.severity = severity;
            ev.status = Some(r.status);
        }
        ev.escalate();
        ev
    }

    /// Finish an allowed request's event with the response: the upstream `status` (0 when no
    /// response arrived), the field paths minimization withheld, and the reason the response
    /// was refused, if it was. A denied event is returned unchanged.
    #[must_use]
    pub fn with_response(mut self, status: u16, withheld: Vec<String>, failure: Option<DenyReason>) -> AuditEvent {
        if self.decision == Verdict::Deny {
            return self;
        }
        self.upstream_status = (status != 0).then_some(status);
        self.withheld = withheld.iter().map(|p| withheld_path(p)).collect();
        match failure {
            Some(reason) => {
                let (outcome, severity) = refused(reason);
                self.decision = Verdict::Deny;
                self.reason = Reason::Refused(reason);
                self.outcome = outcome;
                self.severity = severity;
                self.status = Some(reason.status());
            }
            None => {
                self.status = (status != 0).then_some(status);
                (self.outcome, self.severity) = match status {
                    0 | 500.. => (EventOutcome::MajorFailure, Severity::Warning),
                    400..=499 => (EventOutcome::MinorFailure, Severity::Warning),
                    _ => (EventOutcome::Success, Severity::Info),
                };
            }
        }
        self.escalate();
        self
    }

    /// Record the privacy restrictions that withheld resources from the response
    /// ([`crate::decision::Release::restrictions`]), also when the response was refused.
    #[must_use]
    pub fn with_restrictions(mut self, hits: Vec<RestrictionHit>) -> AuditEvent {
        self.restrictions = hits;
        self
    }

    /// Record the RFC 9530 `Content-Digest` of the body the client received
    /// ([`crate::http::content_digest`] of the bytes sent, whatever they were).
    #[must_use]
    pub fn with_content_digest(mut self, digest: String) -> AuditEvent {
        self.content_digest = Some(digest);
        self
    }

    /// Whether the request was emergency access: break-glass, or an emergency purpose of use
    /// (`ETREAT`, `BTG`, `ERTREAT`).
    pub fn is_emergency(&self) -> bool {
        self.break_glass.is_some() || self.purpose_of_use.iter().any(|p| is_emergency(p))
    }

    /// Emergency access is always audited at high severity.
    fn escalate(&mut self) {
        if self.is_emergency() {
            self.severity = Severity::High;
        }
    }

    /// Whether nothing more will be learned about this request (it was refused).
    pub fn is_complete(&self) -> bool {
        self.decision == Verdict::Deny
    }

    fn add_principal(&mut self, p: &Principal, ctx: &AuditContext<'_>) {
        self.client_id = p.client_id.as_deref().map(checked);
        self.subject = p.subject.as_deref().map(|s| ctx.identify_claim("sub", s));
        self.issuer = Some(checked(&p.issuer));
        self.token_id = p.token_id.as_deref().map(|j| ctx.identify_claim("jti", j));
        self.acr = p.acr.as_deref().map(checked);
        self.amr = p.amr.iter().map(|m| checked(m)).collect();
        self.auth_time = p.auth_time;
        self.purpose_of_use = p.purpose.iter().map(|c| if is_purpose_of_use(c) { c.clone() } else { "invalid".to_owned() }).collect();
        self.context_patient = p.patient.as_deref().map(|id| ctx.identify(id));
    }

    fn add_fhir(&mut self, f: &FhirRequest, path: &str, ctx: &AuditContext<'_>) {
        self.interaction = Some(f.interaction);
        self.resource_type = f.resource_type;
        self.resource_id = f.id.as_deref().map(|id| ctx.identify_resource(f.resource_type.unwrap_or("Resource"), id));
        self.operation = f.operation.as_deref().map(|o| if is_operation(o) { o.to_owned() } else { ctx.key.pseudonym_of("operation", o) });
        let query = normalize(path).map(|n| n.query).unwrap_or_default();
        let audited = audit_query(f, &query, &|id: &str| ctx.identify(id));
        self.query = audited.normalized;
        self.patients = audited.patients.iter().map(|id| ctx.identify(id)).collect();
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// Longest token claim value (`client_id`, `iss`, `acr`, an `amr` method, a raw `sub`/`jti`)
/// written as is.
pub const MAX_CLAIM: usize = 256;

/// A token claim as logged: as is when it is printable ASCII without spaces of at most
/// [`MAX_CLAIM`] bytes, else `invalid`.
fn checked(s: &str) -> String {
    if printable(s, MAX_CLAIM) {
        s.to_owned()
    } else {
        "invalid".to_owned()
    }
}

/// A value from the policy (its name, revision, route ids, reason codes): as is unless it holds
/// a control character or is over 256 bytes (then `invalid`).
fn clean(s: &str) -> String {
    if s.len() <= 256 && !s.chars().any(char::is_control) {
        s.to_owned()
    } else {
        "invalid".to_owned()
    }
}

/// Whether an `x-request-id` is written as is: a UUID (`8-4-4-4-12` hex digits, any case, as
/// Envoy generates them), or 16 to 64 lowercase hex digits with at least one letter (trace ids;
/// an all-digit string could be a phone number or an MRN). Anything else could carry a name or
/// a birth date, and is pseudonymized.
pub fn plain_request_id(id: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = {
        let groups: Vec<&str> = id.split('-').collect();
        groups.len() == 5 && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g))
    };
    let token = (16..=64).contains(&id.len())
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b.is_ascii_lowercase());
    uuid || token
}

/// A withheld path as logged. Its segments come from the policy and from the upstream body's
/// keys and extension urls, so each is checked: a field name must be shaped like one
/// (`_?[A-Za-z][A-Za-z0-9_-]*`, at most 64 bytes), a `(qualifier)` must be a resource type or
/// printable ASCII of at most 256 bytes; anything else is `?`.
fn withheld_path(path: &str) -> String {
    let name_ok = |n: &str| {
        let bare = n.strip_prefix('_').unwrap_or(n);
        n.len() <= 64
            && bare.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut out = String::with_capacity(path.len().min(1024));
    let mut rest = path;
    while !rest.is_empty() {
        let end = rest.find(['.', '(']).unwrap_or(rest.len());
        let (name, tail) = rest.split_at(end);
        out.push_str(if name_ok(name) { name } else { "?" });
        rest = tail;
        if let Some(q) = rest.strip_prefix('(') {
            let (qual, tail) = q.split_at(q.find(')').unwrap_or(q.len()));
            out.push('(');
            out.push_str(if printable(qual, 256) { qual } else { "?" });
            out.push(')');
            rest = tail.strip_prefix(')').unwrap_or(tail);
        }
        match rest.strip_prefix('.') {
            Some(t) => {
                out.push('.');
                rest = t;
            }
            None if rest.is_empty() => {}
            None => {
                out.push('?');
                break;
            }
        }
    }
    out
}

/// The HTTP method when it is one of RFC 9110's or `PATCH`, else `OTHER`: a client may send any
/// token as a method (`KERMITSMITH`).
fn method(m: &str) -> String {
    const METHODS: [&str; 9] = ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"];
    if METHODS.contains(&m) {
        m.to_owned()
    } else {
        "OTHER".to_owned()
    }
}

/// The address part of Envoy's `ip:port` / `[v6]:port`; anything else shaped like an address
/// is kept as is, and anything not shaped like one is dropped.
fn host_of(addr: &str) -> Option<String> {
    let host = if let Some(rest) = addr.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else if addr.bytes().filter(|b| *b == b':').count() == 1 {
        addr.split_once(':').map_or(addr, |(h, _)| h)
    } else {
        addr
    };
    let ok = (1..=64).contains(&host.len()) && host.bytes().all(|b| b.is_ascii_hexdigit() || b".:".contains(&b));
    ok.then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TokenCache;
    use crate::decision::{decide, Request};
    use crate::testing::{audit_key as key, event, policy, token, NOW, REQUEST_ID};
    use serde_json::{json, Value};

    fn json_of(ev: &AuditEvent) -> Value {
        serde_json::to_value(ev).unwrap()
    }

    #[test]
    fn allowed_read_then_response() {
        let p = policy("smart-patient-app");
        let ev = event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({"purpose_of_use": "TREAT"}))));
        assert!(!ev.is_complete());
        let v = json_of(&ev);
        assert_eq!(v["time"], "2027-01-15T08:00:00.042Z");
        assert_eq!(v["requestId"], REQUEST_ID);
        let k = key();
        assert_eq!((v["policy"].as_str(), v["route"].as_str()), (Some("smart-patient-app"), Some("fhir")));
        assert_eq!(
            (v["interaction"].as_str(), v["resourceType"].as_str(), v["resourceId"].as_str()),
            (Some("read"), Some("Observation"), Some(k.pseudonym_of("Observation", "o1").as_str()))
        );
        assert_eq!((v["decision"].as_str(), v["outcome"].as_u64(), v["reason"].as_str()), (Some("allow"), Some(0), Some("allowed")));
        assert_eq!(
            (v["clientId"].as_str(), v["subject"].as_str(), v["tokenId"].as_str()),
            (Some("app"), Some(k.pseudonym_of("sub", "u1").as_str()), Some(k.pseudonym_of("jti", "j1").as_str()))
        );
        assert_eq!(v["purposeOfUse"], json!(["TREAT"]));
        assert_eq!((v["source"].as_str(), v["destination"].as_str()), (Some("10.1.2.3"), Some("::1")));
        assert_eq!(v["contextPatient"], key().pseudonym("p1"));
        assert!(v.get("status").is_none() && v.get("patients").is_none());

        let done = ev.clone().with_response(200, vec!["Observation.note".into()], None);
        assert_eq!(
            (done.status, done.upstream_status, done.outcome, done.severity),
            (Some(200), Some(200), EventOutcome::Success, Severity::Info)
        );
        assert_eq!(done.withheld, ["Observation.note"]);
        let nf = ev.clone().with_response(404, vec![], None);
        assert_eq!((nf.outcome, nf.severity), (EventOutcome::MinorFailure, Severity::Warning));
        let down = ev.clone().with_response(0, vec![], None);
        assert_eq!((down.outcome, down.status, down.upstream_status), (EventOutcome::MajorFailure, None, None));
        let blocked = ev.with_response(200, vec![], Some(DenyReason::PatientMismatch));
        assert_eq!(
            (blocked.decision, blocked.outcome, blocked.reason, blocked.status, blocked.upstream_status),
            (Verdict::Deny, EventOutcome::SeriousFailure, Reason::Refused(DenyReason::PatientMismatch), Some(403), Some(200))
        );
        assert_eq!(blocked.severity, Severity::High);
    }

    #[test]
    fn denials_are_complete() {
        let p = policy("smart-patient-app");
        let ev = event(&p, "GET", "/fhir/Observation?patient=p2", Some(&token(json!({}))));
        assert!(ev.is_complete());
        assert_eq!(
            (ev.decision, ev.outcome, ev.reason, ev.status, ev.severity),
            (Verdict::Deny, EventOutcome::SeriousFailure, Reason::Refused(DenyReason::PatientMismatch), Some(403), Severity::High)
        );
        let k = key();
        assert_eq!(ev.patients, [k.pseudonym("p2")]);
        assert_eq!(ev.context_patient, Some(k.pseudonym("p1")));
        assert_eq!(ev.query, Some(format!("patient={}", k.pseudonym("p2"))));
        assert_eq!(ev.clone().with_response(200, vec!["x".into()], None), ev, "a denial is final");

        let ev = event(&p, "GET", "/fhir/Patient/p1", None);
        assert_eq!((ev.reason, ev.status, ev.client_id.as_deref()), (Reason::Refused(DenyReason::MissingToken), Some(401), None));
        assert_eq!(ev.resource_id, Some(k.pseudonym("p1")));
        let ev = event(&p, "GET", "/nowhere/at/all", None);
        assert_eq!((ev.reason, ev.route.as_deref(), ev.interaction), (Reason::Refused(DenyReason::NoRoute), None, None));
    }

    #[test]
    fn raw_ids_when_the_policy_opts_in() {
        let mut p = policy("smart-patient-app");
        p.audit.patient_ids = PatientIds::Raw;
        let ev = event(&p, "GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        assert_eq!(
            (ev.resource_id.as_deref(), ev.patients.as_slice(), ev.context_patient.as_deref(), ev.patient_ids),
            (Some("p1"), &["p1".to_owned()][..], Some("p1"), PatientIds::Raw)
        );
        let ev = event(&p, "GET", "/fhir/Observation/MRN-12345", Some(&token(json!({}))));
        assert_eq!((ev.resource_id.as_deref(), ev.subject.as_deref(), ev.token_id.as_deref()), (Some("MRN-12345"), Some("u1"), Some("j1")));
        // Raw claims are still only printable, bounded ASCII.
        let odd = token(json!({"sub": "John Smith\n", "jti": "x".repeat(300)}));
        let ev = event(&p, "GET", "/fhir/Observation/o1", Some(&odd));
        assert_eq!((ev.subject.as_deref(), ev.token_id.as_deref()), (Some("invalid"), Some("invalid")));
    }

    #[test]
    fn without_policy_and_odd_inputs() {
        let k = key();
        let d = Decision::Deny(crate::decision::Refusal {
            reason: DenyReason::NoPolicy,
            status: 503,
            route_id: None,
            fhir_route: false,
            principal: None,
            fhir: None,
            challenge: crate::decision::Challenge::default(),
            break_glass: None,
            awaiting_issuer: None,
        });
        let meta = RequestMeta {
            request_id: Some("bad id with spaces"),
            source: Some("not an address"),
            destination: None,
            method: "get",
            path: "/x",
        };
        let ev = AuditEvent::from_decision(&d, &meta, &AuditContext::without_policy(&k, UnixMillis::default()));
        let pseudonym = k.pseudonym_of("x-request-id", "bad id with spaces");
        assert_eq!(
            (ev.outcome, ev.policy.as_deref(), ev.request_id.as_deref(), ev.source.as_deref(), ev.method.as_str()),
            (EventOutcome::MajorFailure, None, Some(pseudonym.as_str()), None, "OTHER")
        );
        assert_eq!(host_of("192.168.0.1:80").as_deref(), Some("192.168.0.1"));
        assert_eq!(host_of("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(host_of("2001:db8::1").as_deref(), Some("2001:db8::1"));
    }

    #[test]
    fn request_ids_are_written_only_when_plain() {
        for id in [REQUEST_ID, "0F3C2A9E-1B7D-4C55-9A0E-3C2F1B7D4C55", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"] {
            assert!(plain_request_id(id), "{id}");
        }
        for id in [
            "Kermit-Trantow-1990-01-01-555-0100",
            "req-1",
            "1234567890123456",
            "0f3c2a9e1b7d4c559a0e3c2f1b7d4c55x",
            "0f3c2a9e-1b7d-4c55-9a0e-3c2f1b7d4c5",
            "g0000000-0000-0000-0000-000000000000",
            "",
            "abc",
        ] {
            assert!(!plain_request_id(id), "{id}");
        }
        let p = policy("smart-patient-app");
        let k = key();
        let d = decide(&p, &mut TokenCache::new(4), &Request { method: "GET", path: "/fhir/Patient/p1", ..Default::default() }, NOW);
        let hostile = "Kermit-Trantow-1990-01-01-555-0100";
        let meta = RequestMeta { request_id: Some(hostile), method: "GET", path: "/fhir/Patient/p1", ..Default::default() };
        let ev = AuditEvent::from_decision(&d, &meta, &AuditContext::new(&p, &k, UnixMillis::default()));
        assert_eq!(ev.request_id, Some(k.pseudonym_of("x-request-id", hostile)), "pseudonymized on a 401 too");
    }

    #[test]
    fn claims_are_pseudonymized_or_checked() {
        let p = policy("clinician-api");
        let k = key();
        let t = token(
            json!({"patient": null, "scp": ["user/Observation.rs"], "scope": null, "sub": "john.smith@example.org\nx", "client_id": "John Smith\u{7}", "jti": "MRN 12345\r\n", "purpose_of_use": ["TREAT", "JohnSmith"]}),
        );
        let ev = event(&p, "GET", "/fhir/Observation/o1", Some(&t));
        assert_eq!(ev.subject, Some(k.pseudonym_of("sub", "john.smith@example.org\nx")));
        assert_eq!(ev.token_id, Some(k.pseudonym_of("jti", "MRN 12345\r\n")));
        assert_eq!((ev.client_id.as_deref(), ev.issuer.is_some()), (Some("invalid"), true));
        assert_eq!(ev.purpose_of_use, ["TREAT", "invalid"]);
    }

    #[test]
    fn resource_ids_and_operations() {
        let p = policy("clinician-api");
        let k = key();
        let t = token(json!({"patient": null, "scp": ["user/*.rs"], "scope": null}));
        let ev = event(&p, "GET", "/fhir/Observation/MRN-12345", Some(&t));
        assert_eq!(ev.resource_id, Some(k.pseudonym_of("Observation", "MRN-12345")));
        let ev = event(&p, "GET", "/fhir/Patient/$smith-john", Some(&t));
        assert_eq!(ev.operation, Some(k.pseudonym_of("operation", "smith-john")));
        let ev = event(&p, "GET", "/fhir/Patient/p1/$everything", Some(&t));
        assert_eq!(ev.operation.as_deref(), Some("everything"));
    }

    #[test]
    fn methods_outside_http_are_other() {
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert_eq!(method(m), m);
        }
        for m in ["KERMITSMITH", "JOHN", "get", "G\nT", ""] {
            assert_eq!(method(m), "OTHER", "{m}");
        }
        let p = policy("clinician-api");
        assert_eq!(event(&p, "SMITH", "/fhir/Patient/p1", None).method, "OTHER");
    }

    #[test]
    fn withheld_paths_are_shape_checked() {
        for (path, logged) in [
            ("Patient.name", "Patient.name"),
            ("Patient._birthDate", "Patient._birthDate"),
            ("Bundle.entry.resource(Observation).note", "Bundle.entry.resource(Observation).note"),
            (
                "Patient.extension(http://hl7.org/fhir/StructureDefinition/patient-birthPlace)",
                "Patient.extension(http://hl7.org/fhir/StructureDefinition/patient-birthPlace)",
            ),
            ("patients.John Smith.name", "patients.?.name"),
            ("Patient.extension(John Smith\n).x", "Patient.extension(?).x"),
            ("a\nb", "?"),
        ] {
            assert_eq!(withheld_path(path), logged, "{path}");
        }
    }

    #[test]
    fn emergency_access_is_high_severity() {
        let p = policy("smart-patient-app");
        let ev = event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({"purpose_of_use": "ETREAT"}))));
        assert_eq!((ev.decision, ev.severity), (Verdict::Allow, Severity::High));
        let done = ev.with_response(200, vec![], None);
        assert_eq!((done.outcome, done.severity), (EventOutcome::Success, Severity::High), "stays high after the response");
        assert!(done.is_emergency());
        let routine =
            event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({"purpose_of_use": "TREAT"})))).with_response(200, vec![], None);
        assert_eq!(routine.severity, Severity::Info);
    }

    #[test]
    fn how_the_user_authenticated_is_recorded() {
        let p = policy("smart-patient-app");
        let t = token(json!({"acr": "http://idmanagement.gov/ns/assurance/aal/2", "amr": ["pwd", "otp"], "auth_time": NOW.sub_secs(60)}));
        let ev = serde_json::to_value(event(&p, "GET", "/fhir/Observation/o1", Some(&t))).unwrap();
        assert_eq!(ev["acr"], "http://idmanagement.gov/ns/assurance/aal/2");
        assert_eq!(ev["amr"], json!(["pwd", "otp"]));
        assert_eq!(ev["authTime"], NOW.sub_secs(60).as_secs());
        let odd = token(json!({"acr": "loa 2\n", "amr": ["pwd", "m\u{e9}thode"]}));
        let ev = serde_json::to_value(event(&p, "GET", "/fhir/Observation/o1", Some(&odd))).unwrap();
        assert_eq!((&ev["acr"], &ev["amr"]), (&json!("invalid"), &json!(["pwd", "invalid"])));
        let none = serde_json::to_value(event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({}))))).unwrap();
        assert!(none.get("acr").is_none() && none.get("amr").is_none() && none.get("authTime").is_none());
    }

    #[test]
    fn restrictions_and_digest_are_recorded() {
        let p = policy("smart-patient-app");
        let ev = event(&p, "GET", "/fhir/Observation?patient=p1", Some(&token(json!({}))))
            .with_response(200, vec![], None)
            .with_restrictions(vec![RestrictionHit { id: "r-17".into(), count: 2 }])
            .with_content_digest(
                "sha-512=:z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==:".into(),
            );
        let v = json_of(&ev);
        assert_eq!(v["restrictions"], json!([{"id": "r-17", "count": 2}]));
        assert_eq!(
            v["contentDigest"],
            "sha-512=:z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==:"
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(&keys[keys.len() - 2..], ["restrictions", "contentDigest"], "new fields come last");
        let refused = event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({}))))
            .with_response(200, vec![], Some(DenyReason::Restricted))
            .with_restrictions(vec![RestrictionHit { id: "r-17".into(), count: 1 }]);
        assert_eq!((refused.reason, refused.status, refused.restrictions.len()), (Reason::Refused(DenyReason::Restricted), Some(403), 1));
    }
}
