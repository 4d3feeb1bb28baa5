//! One exchange as the filter handles it, without a proxy: the request decision, then the
//! upstream's answer through the response phase (screening, checks, privacy restrictions,
//! minimization), and the audit event. The CLI's `explain` and the browser playground both call
//! [`simulate`], so what they show is what the filter does with the same inputs.
//!
//! What only a running proxy has is left out: rate limits and `auditRequired` (they depend on
//! shared state and the collector), remote key fetches (pass the keys with [`install_jwks`]),
//! request-body checks and the audit chain's `seq`/`mac` (added by the sink).

use std::rc::Rc;

use serde::Serialize;
use serde_json::Value;

use crate::audit::fhir::render_unchained;
use crate::audit::{AuditContext, AuditEvent, AuditKey, RequestMeta, Verdict};
use crate::auth::keys::parse_jwks;
use crate::auth::verify::unverified_issuer;
use crate::auth::{check_claims, TokenCache};
use crate::decision::{decide, decide_with, BodyStep, Decision, DenyReason, Released, ResponsePhase, UpstreamHead};
use crate::minimize::ApplyCtx;
use crate::policy::audit::AuditFormat;
use crate::policy::Policy;
use crate::time::UnixSeconds;

/// The demo audit key. The shipped example policies name restricted patients by pseudonyms
/// under it; never use it outside a demo, a test or the playground.
pub const DEMO_AUDIT_KEY: &[u8] = b"phi-guard-demo-audit-key-not-a-secret";

/// How the request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// No `Authorization` header.
    None,
    /// A compact JWS, sent as `Authorization: Bearer <token>` and verified with the policy's keys.
    Token(&'a str),
    /// A whole `Authorization` header value, as sent (another scheme, a malformed bearer).
    Header(&'a str),
    /// Token claims trusted without a signature, to try a policy before keys exist.
    Claims(&'a Value),
    /// An opaque token and its issuer's introspection answer (RFC 7662).
    Introspected(&'a str, &'a Value),
}

/// The upstream's answer to an allowed request.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// HTTP status.
    pub status: u16,
    /// `content-type` (`None`: not sent).
    pub content_type: Option<&'a str>,
    /// `content-encoding` (`None`: identity).
    pub content_encoding: Option<&'a str>,
    /// The complete body.
    pub body: &'a [u8],
}

/// The inputs of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`, with query.
    pub path: &'a str,
    /// The caller's credential.
    pub credential: Credential<'a>,
    /// The upstream's answer; `None` to decide the request only.
    pub upstream: Option<Upstream<'a>>,
    /// Now (the CLI's `--now`, the playground's `now`: Unix seconds).
    pub now: UnixSeconds,
    /// The key of `hash` transforms (`PHI_GUARD_HMAC_KEY` in the filter).
    pub hmac_key: Option<&'a [u8]>,
    /// The audit key (`PHI_GUARD_AUDIT_KEY`): pseudonyms in events and restrictions.
    pub audit_key: &'a AuditKey,
    /// `x-request-id`, recorded in the audit event.
    pub request_id: Option<&'a str>,
    /// What a sender-constrained token is presented with: a DPoP proof, the URL it names, the
    /// client certificate of a mutual-TLS connection.
    pub sender: Sender<'a>,
}

/// How the caller proves it holds what its token is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// A DPoP proof: the token is then sent as `Authorization: DPoP <token>`.
    pub dpop: Option<&'a str>,
    /// `:scheme` of the request (default `https`).
    pub scheme: &'a str,
    /// `:authority` of the request (default `fhir.phi-guard.test`).
    pub authority: &'a str,
    /// SHA-256 (hex) of the client certificate verified on the connection.
    pub client_certificate_sha256: Option<&'a str>,
}

impl Default for Sender<'_> {
    fn default() -> Self {
        Sender { dpop: None, scheme: "https", authority: "fhir.phi-guard.test", client_certificate_sha256: None }
    }
}

/// The FHIR interaction as modelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FhirSummary {
    /// Interaction name (`read`, `search-type`, ...).
    pub interaction: &'static str,
    /// Resource type, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<&'static str>,
}

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Caller {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `client_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The patient in context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
}

/// What a refused client must present to succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Needs {
    /// Scopes that would have been enough.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Acceptable authentication context classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acr_values: Option<String>,
    /// Longest acceptable time since the user authenticated, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
}

/// Where a refusal happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// On the request, before the upstream was asked.
    Request,
    /// On the upstream's answer, which is withheld.
    Response,
}

/// What the client gets and what is audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeOutcome {
    /// `allow` or `deny` (the request decision).
    pub decision: Verdict,
    /// Whether refusals are enforced (`false`: the policy is in shadow mode, so the request is
    /// forwarded and the body released unchanged; `reason` is what would have been refused).
    pub enforced: bool,
    /// The status the client receives (`None`: allowed, and no upstream answer was given).
    pub status: Option<u16>,
    /// Refusal reason code, request or response phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The reason's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    /// `request` or `response`: where the refusal happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Matched route id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The modelled FHIR request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fhir: Option<FhirSummary>,
    /// The verified caller (`None`: public route, or verification failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
    /// What would have been enough, on a request refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<Needs>,
    /// The `WWW-Authenticate` header of a request refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub www_authenticate: Option<String>,
    /// Break-glass reason in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// Minimization profile applied to the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Withheld (or, in shadow, would-be withheld) field paths, sorted; never values.
    pub withheld: Vec<String>,
    /// Values withheld or transformed.
    pub withheld_count: usize,
    /// The body the client receives (`None`: no upstream answer was given on an allow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body differs from the upstream's.
    pub body_changed: bool,
    /// RFC 9530 `Content-Digest` of a checked body, as sent in the trailer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<String>,
    /// The audit event, as the filter emits it (before the sink adds `seq` and `mac`).
    pub audit: AuditEvent,
    /// The same event as a FHIR R4 `AuditEvent`, when the policy's `audit.format` is `fhir`:
    /// the record the filter logs, without the chain's `stream`, `seq` and `mac`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_fhir: Option<Value>,
}

/// Errors preparing an exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulateError {
    /// The JWKS does not parse or holds no usable key.
    #[error("jwks: {0}")]
    Jwks(String),
    /// The token names no issuer the policy trusts.
    #[error("the token's issuer {0} is not one of the policy's issuers")]
    UnknownIssuer(String),
}

/// A caller's credential as the CLI (`explain`), the playground and the scenario runner take
/// it: at most one of a token, claims (JSON text) or a whole `Authorization` header, and a JWKS
/// (JSON text) for the token's issuer. One builder, so the three cannot read the same inputs
/// differently.
#[derive(Debug, Clone, Copy, Default)]
pub struct CredentialInput<'a> {
    /// A compact JWS, verified with the policy's keys.
    pub token: Option<&'a str>,
    /// Token claims as JSON text, trusted without a signature.
    pub claims: Option<&'a str>,
    /// A whole `Authorization` header value, as a client sends it.
    pub authorization: Option<&'a str>,
    /// JWKS JSON text installed as the keys of the token's issuer.
    pub jwks: Option<&'a str>,
    /// An RFC 7662 introspection answer (JSON text) for an opaque `token`: what its issuer's
    /// endpoint would say.
    pub introspection: Option<&'a str>,
}

/// Why a [`CredentialInput`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// More than one of token, claims and `Authorization` header.
    #[error("give one credential: a token, claims or an Authorization header")]
    Conflict,
    /// The claims are not a JSON object.
    #[error("claims: {0}")]
    Claims(String),
    /// A JWKS was given without a token to verify.
    #[error("a JWKS needs a token to verify")]
    JwksWithoutToken,
    /// The JWKS does not parse, holds no usable key, or the token's issuer is unknown.
    #[error("{0}")]
    Jwks(String),
    /// The introspection answer is not JSON, or comes without a token.
    #[error("introspection: {0}")]
    Introspection(String),
}

impl CredentialError {
    /// The input member the error is about (`input`, `claims`, `jwks`).
    pub fn field(&self) -> &'static str {
        match self {
            CredentialError::Conflict => "input",
            CredentialError::Claims(_) => "claims",
            CredentialError::JwksWithoutToken | CredentialError::Jwks(_) => "jwks",
            CredentialError::Introspection(_) => "introspection",
        }
    }
}

/// A checked credential, ready to be lent to an [`Exchange`].
#[derive(Debug, Clone)]
pub struct PreparedCredential<'a> {
    input: CredentialInput<'a>,
    claims: Option<Value>,
    answer: Option<Value>,
}

impl<'a> CredentialInput<'a> {
    /// Check the input and install the JWKS (if any) into `policy` as the keys of the token's
    /// issuer.
    pub fn prepare(self, policy: &mut Policy) -> Result<PreparedCredential<'a>, CredentialError> {
        let given = [self.token.is_some(), self.claims.is_some(), self.authorization.is_some()];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(CredentialError::Conflict);
        }
        let claims = match self.claims {
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(v) if v.is_object() => Some(v),
                Ok(_) => return Err(CredentialError::Claims("claims must be a JSON object".into())),
                Err(e) => return Err(CredentialError::Claims(e.to_string())),
            },
            None => None,
        };
        match (self.jwks, self.token) {
            (Some(jwks), Some(token)) => {
                let value: Value = serde_json::from_str(jwks).map_err(|e| CredentialError::Jwks(format!("jwks: {e}")))?;
                install_jwks(policy, token, &value).map_err(|e| CredentialError::Jwks(e.to_string()))?;
            }
            // Keys only verify a token.
            (Some(_), None) => return Err(CredentialError::JwksWithoutToken),
            (None, _) => {}
        }
        let answer = match (self.introspection, self.token) {
            (Some(text), Some(_)) => Some(serde_json::from_str::<Value>(text).map_err(|e| CredentialError::Introspection(e.to_string()))?),
            (Some(_), None) => return Err(CredentialError::Introspection("an answer needs the token it is about".into())),
            (None, _) => None,
        };
        Ok(PreparedCredential { input: self, claims, answer })
    }
}

impl PreparedCredential<'_> {
    /// The credential of an [`Exchange`].
    pub fn credential(&self) -> Credential<'_> {
        match (self.input.token, &self.claims, self.input.authorization) {
            (Some(t), _, _) => match &self.answer {
                Some(a) => Credential::Introspected(t, a),
                None => Credential::Token(t),
            },
            (None, Some(c), _) => Credential::Claims(c),
            (None, None, Some(h)) => Credential::Header(h),
            (None, None, None) => Credential::None,
        }
    }
}

/// Install a JWKS as the keys of the token's issuer (what a remote-JWKS issuer would fetch),
/// replacing any it has. The token is not verified here: [`simulate`] does that.
pub fn install_jwks(policy: &mut Policy, token: &str, jwks: &Value) -> Result<(), SimulateError> {
    let keys = parse_jwks(jwks).map_err(|e| SimulateError::Jwks(e.to_string()))?;
    let iss = unverified_issuer(token).unwrap_or_default();
    let issuer = policy.issuers.iter_mut().find(|i| i.issuer == iss).ok_or_else(|| SimulateError::UnknownIssuer(format!("`{iss}`")))?;
    issuer.keys = keys;
    Ok(())
}

/// Run one exchange through the policy as the filter would.
pub fn simulate(policy: &Policy, x: &Exchange<'_>) -> ExchangeOutcome {
    let mut out = exchange(policy, x);
    out.audit_fhir = fhir_record(policy, &out.audit);
    out
}

/// The event in the FHIR form the filter logs it in, if the policy asks for that form. When
/// rendering fails the filter falls back to JSON lines, so there is no FHIR record then either.
fn fhir_record(policy: &Policy, event: &AuditEvent) -> Option<Value> {
    if policy.audit.format != AuditFormat::Fhir {
        return None;
    }
    let text = render_unchained(event, &policy.audit.observer).ok()?;
    serde_json::from_str(&text).ok()
}

fn exchange(policy: &Policy, x: &Exchange<'_>) -> ExchangeOutcome {
    let header = match x.credential {
        Credential::None => None,
        Credential::Token(t) | Credential::Introspected(t, _) if x.sender.dpop.is_some() => Some(format!("DPoP {t}")),
        Credential::Token(t) | Credential::Introspected(t, _) => Some(format!("Bearer {t}")),
        Credential::Header(h) => Some(h.to_owned()),
        // Any bearer value: the claims stand in for its verification.
        Credential::Claims(_) => Some("Bearer claims".to_owned()),
    };
    let auth: Vec<&str> = header.iter().map(String::as_str).collect();
    let proofs: Vec<&str> = x.sender.dpop.into_iter().collect();
    let req = crate::decision::Request {
        method: x.method,
        path: x.path,
        authorization: &auth,
        scheme: x.sender.scheme,
        authority: x.sender.authority,
        dpop: &proofs,
        peer_certificate_sha256: x.sender.client_certificate_sha256,
        ..Default::default()
    };
    let decision = match x.credential {
        Credential::Claims(c) => decide_with(policy, &req, x.now, |_| check_claims(c, &policy.issuers, x.now).map(Rc::new), |_| Ok(())),
        Credential::Introspected(_, answer) => {
            decide_with(policy, &req, x.now, |token| introspected(policy, token, answer, x.now), |_| Ok(()))
        }
        _ => decide(policy, &mut TokenCache::new(0), &req, x.now),
    };
    let meta = RequestMeta { request_id: x.request_id, source: None, destination: None, method: x.method, path: x.path };
    let event = AuditEvent::from_decision(&decision, &meta, &AuditContext::new(policy, x.audit_key, x.now.to_millis()));
    let enforced = !policy.shadow;
    match decision {
        Decision::Deny(r) => {
            let reply = r.reply();
            let challenges: Vec<&str> = reply.headers.iter().filter(|(k, _)| *k == "www-authenticate").map(|(_, v)| v.as_str()).collect();
            let www = (!challenges.is_empty()).then(|| challenges.join(", "));
            let c = &r.challenge;
            let needs = (c.scope.is_some() || c.acr_values.is_some() || c.max_age.is_some()).then(|| Needs {
                scope: c.scope.clone(),
                acr_values: c.acr_values.clone(),
                max_age: c.max_age,
            });
            // In shadow mode the request goes on and the upstream's answer passes unchanged.
            let (status, body) = match (enforced, x.upstream) {
                (true, _) => (Some(reply.status), Some(reply.body)),
                (false, Some(u)) => (Some(u.status), Some(String::from_utf8_lossy(u.body).into_owned())),
                (false, None) => (None, None),
            };
            ExchangeOutcome {
                decision: Verdict::Deny,
                enforced,
                status,
                reason: Some(r.reason.code()),
                message: Some(r.reason.message()),
                phase: Some(Phase::Request),
                route: r.route_id,
                fhir: r.fhir.as_ref().map(|f| FhirSummary { interaction: f.interaction.name(), resource_type: f.resource_type }),
                caller: r.principal.as_deref().map(caller),
                needs,
                www_authenticate: www,
                break_glass: r.break_glass.map(|b| b.reason),
                profile: None,
                withheld: Vec::new(),
                withheld_count: 0,
                body,
                body_changed: enforced && x.upstream.is_some(),
                content_digest: None,
                audit: event,
                audit_fhir: None,
            }
        }
        Decision::Allow(g) => {
            let mut out = ExchangeOutcome {
                decision: Verdict::Allow,
                enforced,
                status: None,
                reason: None,
                message: None,
                phase: None,
                route: Some(g.route_id.clone()),
                fhir: g.fhir.as_ref().map(|f| FhirSummary { interaction: f.interaction.name(), resource_type: f.resource_type }),
                caller: g.principal.as_deref().map(caller),
                needs: None,
                www_authenticate: None,
                break_glass: g.break_glass.as_ref().map(|b| b.reason.clone()),
                profile: None,
                withheld: Vec::new(),
                withheld_count: 0,
                body: None,
                body_changed: false,
                content_digest: None,
                audit: event,
                audit_fhir: None,
            };
            let Some(u) = x.upstream else { return out };
            out.status = Some(u.status);
            let head = UpstreamHead {
                status: u.status,
                content_type: u.content_type,
                content_encoding: u.content_encoding,
                content_length: Some(u.body.len()),
                end_of_stream: u.body.is_empty(),
            };
            // The same response phase the filter runs, driven with the whole answer at once.
            let mut phase = ResponsePhase::new(g.response.clone(), g.fhir_route, !enforced);
            let edits = phase.on_headers(&head);
            let mut body = u.body.to_vec();
            if let Some(reply) = edits.reply {
                // No body follows to carry the error: the filter answers it itself.
                out.status = Some(reply.status);
                body = reply.body.into_bytes();
            } else {
                match phase.on_body(u.body.len(), true) {
                    BodyStep::Continue | BodyStep::Hold => {}
                    BodyStep::Replace(bytes) => body = bytes,
                    BodyStep::Release => {
                        let ctx = ApplyCtx { hmac_key: x.hmac_key, now: x.now, pseudonyms: Some(x.audit_key) };
                        if let Released::Body(bytes) = phase.release(u.body, &ctx) {
                            body = bytes;
                        }
                    }
                }
            }
            out.body_changed = body != u.body;
            out.body = Some(String::from_utf8_lossy(&body).into_owned());
            out.content_digest = phase.content_digest().map(str::to_owned);
            let (profile, withheld, count) = phase.minimized();
            out.profile = profile.map(str::to_owned);
            out.withheld = withheld.to_vec();
            out.withheld_count = count;
            if let Some(reason) = phase.refusal() {
                out.reason = Some(reason.code());
                out.message = Some(reason.message());
                out.phase = Some(Phase::Response);
            }
            out.audit = phase.finish(out.audit.clone());
            out
        }
    }
}

/// The principal the filter would take from this introspection answer for `token`, as if its
/// issuer's endpoint had just given it (HTTP 200).
fn introspected(policy: &Policy, token: &str, answer: &Value, now: UnixSeconds) -> Result<Rc<crate::auth::Principal>, DenyReason> {
    use crate::auth::introspect::{parse_response, principal, Introspected};
    let issuer = policy.introspecting_issuer(token).and_then(|i| policy.issuers.get(i)).ok_or(DenyReason::UnknownIssuer)?;
    let bytes = serde_json::to_vec(answer).map_err(|_| DenyReason::IntrospectionUnavailable)?;
    match parse_response(200, &bytes, &issuer.issuer) {
        Some(Introspected::Active(claims)) => principal(&claims, issuer, now).map(Rc::new),
        Some(Introspected::Inactive) => Err(DenyReason::TokenInactive),
        None => Err(DenyReason::IntrospectionUnavailable),
    }
}

fn caller(p: &crate::auth::Principal) -> Caller {
    Caller {
        issuer: p.issuer.clone(),
        subject: p.subject.clone(),
        client_id: p.client_id.clone(),
        patient: p.patient.clone(),
        scopes: p.scopes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile;
    use serde_json::json;

    use crate::testing::NOW;

    fn policy() -> Policy {
        compile(include_bytes!("../policies/smart-patient-app.json")).unwrap()
    }

    fn key() -> AuditKey {
        AuditKey::from_secret(DEMO_AUDIT_KEY).unwrap()
    }

    fn claims(scope: &str, patient: &str) -> Value {
        let p = policy();
        let issuer = &p.issuers[0];
        json!({"iss": issuer.issuer, "aud": issuer.audiences.first(), "sub": "u1", "scope": scope, "patient": patient, "exp": NOW.add_secs(300), "iat": NOW.sub_secs(10)})
    }

    fn exchange<'a>(path: &'a str, claims: &'a Value, key: &'a AuditKey, upstream: Option<Upstream<'a>>) -> Exchange<'a> {
        Exchange {
            method: "GET",
            path,
            credential: Credential::Claims(claims),
            upstream,
            now: NOW,
            hmac_key: None,
            audit_key: key,
            request_id: Some("t"),
            sender: Sender::default(),
        }
    }

    #[test]
    fn an_opaque_token_is_explained_with_its_introspection_answer() {
        let mut p = compile(&std::fs::read(crate::testing::repo_path("policies/introspected-tokens.json")).unwrap()).unwrap();
        let key = crate::testing::audit_key();
        let answer = json!({"active": true, "iss": "https://introspect.phi-guard.test", "aud": "https://fhir.phi-guard.test",
                            "sub": "u1", "scope": "patient/Patient.rs", "patient": "p1", "exp": NOW.add_secs(300).as_secs()})
        .to_string();
        let run = |p: &mut Policy, answer: &str, path: &str| {
            let input = CredentialInput { token: Some("2YotnFZFEjr1zCsicMWpAA"), introspection: Some(answer), ..Default::default() };
            let prepared = input.prepare(p).unwrap();
            let x = Exchange {
                method: "GET",
                path,
                credential: prepared.credential(),
                upstream: None,
                now: NOW,
                hmac_key: None,
                audit_key: &key,
                request_id: None,
                sender: Sender::default(),
            };
            simulate(p, &x)
        };
        let out = run(&mut p, &answer, "/fhir/Patient/p1");
        assert_eq!(out.reason, None, "{out:?}");
        assert_eq!(out.caller.as_ref().and_then(|c| c.patient.as_deref()), Some("p1"));
        assert_eq!(run(&mut p, &answer, "/fhir/Patient/p2").reason, Some("patient_mismatch"));
        assert_eq!(run(&mut p, r#"{"active": false}"#, "/fhir/Patient/p1").reason, Some("token_inactive"));
        assert_eq!(run(&mut p, r#"{"error": "server_error"}"#, "/fhir/Patient/p1").reason, Some("introspection_unavailable"));
        let bad = CredentialInput { introspection: Some("{}"), ..Default::default() };
        assert_eq!(bad.prepare(&mut p).unwrap_err().field(), "introspection");
    }

    #[test]
    fn refusal_carries_reply_and_event() {
        let (p, k) = (policy(), key());
        let c = claims("patient/Observation.rs", "p1");
        let out = simulate(&p, &exchange("/fhir/Patient/p1", &c, &k, None));
        assert_eq!(
            (out.decision, out.status, out.reason, out.phase),
            (Verdict::Deny, Some(403), Some("insufficient_scope"), Some(Phase::Request))
        );
        assert!(out.www_authenticate.unwrap().contains("insufficient_scope"));
        assert!(out.needs.and_then(|n| n.scope).is_some());
        let ev = serde_json::to_value(&out.audit).unwrap();
        assert_eq!(ev["reason"], "insufficient_scope");
        assert!(!serde_json::to_string(&ev).unwrap().contains("\"p1\""), "no raw patient id in the event");
    }

    #[test]
    fn allowed_bodies_go_through_the_response_phase() {
        let (p, k) = (policy(), key());
        let c = claims("patient/*.rs", "p1");
        let mine = br#"{"resourceType":"Patient","id":"p1"}"#;
        let theirs = br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}"#;
        let up = |body: &'static [u8], ct: Option<&'static str>, status: u16| Upstream {
            status,
            content_type: ct,
            content_encoding: None,
            body,
        };
        let out = simulate(&p, &exchange("/fhir/Patient/p1", &c, &k, Some(up(mine, Some("application/fhir+json"), 200))));
        assert_eq!((out.decision, out.status, out.reason), (Verdict::Allow, Some(200), None));
        assert!(out.content_digest.is_some());
        // The wrong patient's record is withheld (the upstream's status stays).
        let out = simulate(&p, &exchange("/fhir/Observation/o1", &c, &k, Some(up(theirs, Some("application/fhir+json"), 200))));
        assert_eq!((out.status, out.reason, out.phase), (Some(200), Some("patient_mismatch"), Some(Phase::Response)));
        assert!(out.body_changed && !out.body.as_deref().unwrap().contains("p2"));
        assert_eq!(serde_json::to_value(&out.audit).unwrap()["reason"], "patient_mismatch");
        // Not JSON: withheld.
        let out = simulate(&p, &exchange("/fhir/Patient/p1", &c, &k, Some(up(mine, Some("text/html"), 200))));
        assert_eq!(out.reason, Some("response_not_json"));
        // An upstream error on a minimized route could echo PHI: its body is replaced by a
        // generic one, its status kept.
        let echo = br#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"no Observation for Peter Chalmers, MRN 12345"}]}"#;
        let out = simulate(&p, &exchange("/fhir/Observation/o1", &c, &k, Some(up(echo, Some("application/fhir+json"), 404))));
        let body = out.body.unwrap();
        assert_eq!((out.status, out.reason, out.body_changed), (Some(404), None, true));
        assert!(body.contains("details withheld") && !body.contains("Chalmers") && !body.contains("12345"), "{body}");
        assert_eq!(serde_json::to_value(&out.audit).unwrap()["upstreamStatus"], 404);
    }

    #[test]
    fn fhir_audit_policies_get_the_fhir_record() {
        let (p, k) = (policy(), key());
        let c = claims("patient/*.rs", "p1");
        let out = simulate(&p, &exchange("/fhir/Patient/p2", &c, &k, None));
        let record = out.audit_fhir.expect("smart-patient-app logs FHIR AuditEvents");
        assert_eq!(record["resourceType"], "AuditEvent");
        let ext = record["extension"].as_array().unwrap();
        let reason = ext.iter().find(|e| e["url"] == format!("{}reason", crate::audit::fhir::EXT)).unwrap();
        assert_eq!(reason["valueCode"], "patient_mismatch");
        assert!(ext.iter().all(|e| e["url"] != format!("{}seq", crate::audit::fhir::EXT)), "no chain members outside a chain");
        let mut jsonl = p.clone();
        jsonl.audit.format = AuditFormat::Jsonl;
        assert!(simulate(&jsonl, &exchange("/fhir/Patient/p2", &c, &k, None)).audit_fhir.is_none());
    }

    #[test]
    fn jwks_is_installed_for_the_tokens_issuer() {
        let mut p = policy();
        let iss = p.issuers[0].issuer.clone();
        let token = crate::testing::sign(jsonwebtoken::Algorithm::RS256, Some("k"), &json!({"iss": iss}));
        assert!(matches!(install_jwks(&mut p, &token, &json!({})), Err(SimulateError::Jwks(_))));
        let other = crate::testing::sign(jsonwebtoken::Algorithm::RS256, Some("k"), &json!({"iss": "https://elsewhere"}));
        let jwks: Value = serde_json::from_str(include_str!("../tests/keys/demo-jwks.json")).unwrap();
        assert!(matches!(install_jwks(&mut p, &other, &jwks), Err(SimulateError::UnknownIssuer(_))));
        install_jwks(&mut p, &token, &jwks).unwrap();
    }

    #[test]
    fn one_credential_builder_checks_its_inputs() {
        let mut p = policy();
        let one = |input: CredentialInput<'_>, p: &mut Policy| input.prepare(p).map(|c| format!("{:?}", c.credential()));
        let conflict = CredentialInput { token: Some("a.b.c"), claims: Some("{}"), ..Default::default() };
        assert_eq!(one(conflict, &mut p), Err(CredentialError::Conflict));
        let conflict = CredentialInput { claims: Some("{}"), authorization: Some("Bearer x"), ..Default::default() };
        assert_eq!(one(conflict, &mut p).map_err(|e| e.field()), Err("input"));
        for bad in ["{not json", "[1]", "\"sub\""] {
            let got = one(CredentialInput { claims: Some(bad), ..Default::default() }, &mut p);
            assert!(matches!(got, Err(CredentialError::Claims(_))), "{bad}: {got:?}");
        }
        let jwks = include_str!("../tests/keys/demo-jwks.json");
        assert_eq!(one(CredentialInput { jwks: Some(jwks), ..Default::default() }, &mut p), Err(CredentialError::JwksWithoutToken));
        let other = crate::testing::sign(jsonwebtoken::Algorithm::RS256, Some("k"), &json!({"iss": "https://elsewhere"}));
        let got = one(CredentialInput { token: Some(&other), jwks: Some(jwks), ..Default::default() }, &mut p);
        assert!(matches!(&got, Err(CredentialError::Jwks(m)) if m.contains("elsewhere")), "{got:?}");
        assert_eq!(one(CredentialInput::default(), &mut p).unwrap(), "None");
        assert!(one(CredentialInput { claims: Some("{}"), ..Default::default() }, &mut p).unwrap().starts_with("Claims"));
        assert_eq!(one(CredentialInput { authorization: Some("Basic x"), ..Default::default() }, &mut p).unwrap(), "Header(\"Basic x\")");
    }
}
