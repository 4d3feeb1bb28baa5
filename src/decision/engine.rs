//! Route matching, token verification and scope/compartment enforcement for one request.

use std::rc::Rc;

use super::preflight::Preflight;
use super::reply::{challenge_reply, Challenge, DpopChallenge, Reply};
use super::response::{CompartmentCheck, Expected, ResponseCheck, ResponsePlan};
use crate::auth::dpop::{ProofTarget, VerifiedProof};
use crate::auth::scope::Context;
use crate::auth::sender::{self, DpopMode, Presentation, Scheme};
use crate::auth::BreakGlass;
use crate::auth::{self, AuthRequirement, Principal, TokenCache};
use crate::fhir::compartment::{in_patient_compartment, param_refers_to};
use crate::fhir::request::{parse as parse_fhir, FhirRequestError};
use crate::fhir::resource_type;
use crate::fhir::search_params::{is_param, param_kind, primary_patient_param, ParamKind, RESULT_PARAMS};
use crate::fhir::{FhirRequest, Interaction};
use crate::http::{normalize, NormalizedPath};
use crate::policy::{Access, FhirRoute, Policy, Route};
use crate::reason::DenyReason;
use crate::time::UnixSeconds;

/// What the decision needs to know about a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path` as received (origin form, with query).
    pub path: &'a str,
    /// Every `Authorization` header value, in order.
    pub authorization: &'a [&'a str],
    /// Number of request headers (0 if the host does not count them).
    pub header_count: usize,
    /// Total bytes of header names and values.
    pub header_bytes: usize,
    /// `content-length`, if sent.
    pub content_length: Option<u64>,
    /// `:scheme` (`http` or `https`), for a DPoP proof's `htu`.
    pub scheme: &'a str,
    /// `:authority`, for a DPoP proof's `htu`.
    pub authority: &'a str,
    /// Every `DPoP` header value (RFC 9449 proofs).
    pub dpop: &'a [&'a str],
    /// SHA-256 (hex) of the client certificate Envoy verified on this connection, if any.
    pub peer_certificate_sha256: Option<&'a str>,
}

/// What a request body must satisfy before it is released upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCheck {
    /// Largest accepted body.
    pub max: usize,
    /// FHIR create/update: the body must be JSON of this `resourceType`.
    pub resource_type: Option<&'static str>,
    /// FHIR update: the body's `id` must be this.
    pub id: Option<String>,
    /// Patient-context write: the resource must belong to this patient's compartment.
    pub patient: Option<String>,
    /// Patient-context `PATCH` of this type: the body must be a JSON Patch that leaves the
    /// patient links, identity and contained resources alone.
    pub patch: Option<&'static str>,
}

impl BodyCheck {
    /// Whether the whole body must be buffered and inspected (not just counted).
    pub fn inspects(&self) -> bool {
        self.resource_type.is_some() || self.patient.is_some() || self.patch.is_some()
    }

    /// Check a complete request body.
    pub fn check(&self, body: &[u8]) -> Result<(), DenyReason> {
        if body.len() > self.max {
            return Err(DenyReason::RequestTooLarge);
        }
        if !self.inspects() {
            return Ok(());
        }
        if let Some(ty) = self.patch {
            return super::preflight::check_json_patch(ty, body);
        }
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| DenyReason::InvalidRequestBody)?;
        if let Some(t) = self.resource_type {
            if value.get("resourceType").and_then(serde_json::Value::as_str) != Some(t) {
                return Err(DenyReason::InvalidRequestBody);
            }
        }
        if let Some(id) = &self.id {
            if value.get("id").and_then(serde_json::Value::as_str) != Some(id.as_str()) {
                return Err(DenyReason::InvalidRequestBody);
            }
        }
        if let Some(p) = &self.patient {
            if !crate::fhir::compartment::resource_belongs_to(&value, p) {
                return Err(DenyReason::PatientMismatch);
            }
        }
        Ok(())
    }
}

/// An allowed request.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Matched route id.
    pub route_id: String,
    /// Whether the route is a FHIR base (error bodies are OperationOutcomes).
    pub fhir_route: bool,
    /// The verified principal; `None` on public routes.
    pub principal: Option<Rc<Principal>>,
    /// The modelled FHIR request, on FHIR routes.
    pub fhir: Option<FhirRequest>,
    /// What must happen to the response before it reaches the client.
    pub response: ResponsePlan,
    /// What the request body must satisfy, for methods that carry one.
    pub body: Option<BodyCheck>,
    /// Add no-store/nosniff headers and strip server identification on the response.
    pub security_headers: bool,
    /// Break-glass in force for this request (audit it at high severity with its reason).
    pub break_glass: Option<BreakGlass>,
    /// A patient-context update, patch or delete: the read that must confirm the stored
    /// resource is the patient's before the write goes upstream.
    pub preflight: Option<Box<Preflight>>,
}

/// A refused request, with as much context as was established before the refusal.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Why.
    pub reason: DenyReason,
    /// HTTP status to answer with (the reason's, or the policy's `unmatched.status`).
    pub status: u16,
    /// Matched route id, if any.
    pub route_id: Option<String>,
    /// Whether the matched route is a FHIR base.
    pub fhir_route: bool,
    /// The verified principal, if verification succeeded.
    pub principal: Option<Rc<Principal>>,
    /// The modelled FHIR request, if any.
    pub fhir: Option<FhirRequest>,
    /// What the client must present to succeed (`WWW-Authenticate` parameters): the scopes that
    /// would have been enough, or the step-up authentication required.
    pub challenge: Challenge,
    /// Break-glass that was in force when the request was refused.
    pub break_glass: Option<BreakGlass>,
    /// For a refusal for want of the issuer's keys (`keys_unavailable`, `unknown_key`): the
    /// index in `policy.issuers` of the issuer the token names, whose keys the host may fetch
    /// and wait for.
    pub awaiting_issuer: Option<usize>,
}

impl Refusal {
    /// The local reply: status, `WWW-Authenticate` with the challenge, and the error body.
    pub fn reply(&self) -> Reply {
        challenge_reply(self.reason, self.status, self.fhir_route, &self.challenge)
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone)]
pub enum Decision {
    /// Forward the request.
    Allow(Grant),
    /// Answer locally with the refusal.
    Deny(Refusal),
}

impl Decision {
    /// The refusal reason, if denied.
    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow(_) => None,
            Decision::Deny(r) => Some(r.reason),
        }
    }
}

/// What the decision has established so far: a refusal carries it (for the audit event).
struct Ctx<'p> {
    route: Option<&'p Route>,
    /// The `Authorization` scheme, once read.
    scheme: Option<Scheme>,
    principal: Option<Rc<Principal>>,
    fhir: Option<FhirRequest>,
    break_glass: Option<BreakGlass>,
}

/// Why a stage stopped the decision: the reason, what would have been enough, and (for want
/// of keys) the issuer the host may wait for.
struct Stop {
    reason: DenyReason,
    challenge: Challenge,
    awaiting_issuer: Option<usize>,
}

impl From<DenyReason> for Stop {
    fn from(reason: DenyReason) -> Self {
        Stop { reason, challenge: Challenge::default(), awaiting_issuer: None }
    }
}

impl Stop {
    fn needing_scope(reason: DenyReason, scope: Option<String>) -> Self {
        Stop { reason, challenge: Challenge { scope, ..Challenge::default() }, awaiting_issuer: None }
    }
}

impl Ctx<'_> {
    fn refuse(self, mut stop: Stop, policy: &Policy) -> Decision {
        let status = if stop.reason == DenyReason::NoRoute { policy.unmatched_status } else { stop.reason.status() };
        if status == 401 && policy.accepts_dpop() {
            // RFC 9449 §7.1: offer DPoP beside Bearer; the error goes with the scheme it is about.
            let error_here = stop.reason.dpop_challenge() || self.scheme == Some(Scheme::Dpop);
            stop.challenge.dpop = Some(DpopChallenge { algs: policy.dpop.algs(), error: error_here });
        }
        Decision::Deny(Refusal {
            reason: stop.reason,
            status,
            route_id: self.route.map(|r| r.id.clone()),
            fhir_route: self.route.is_some_and(|r| matches!(r.access, Access::Fhir(_))),
            principal: self.principal,
            fhir: self.fhir,
            challenge: stop.challenge,
            break_glass: self.break_glass,
            awaiting_issuer: stop.awaiting_issuer,
        })
    }
}

/// Decide one request. `cache` is the per-VM verified-token cache belonging to `policy`. DPoP
/// proofs are checked but not remembered: only [`decide_with`] with a replay record refuses a
/// proof used twice.
pub fn decide(policy: &Policy, cache: &mut TokenCache, req: &Request<'_>, now: UnixSeconds) -> Decision {
    let verify = |token: &str| match cache.get(token, now) {
        Some(p) => Ok(p),
        None => {
            let p = Rc::new(auth::verify(token, &policy.issuers, policy.limits.max_token_bytes, now)?);
            cache.insert(token, Rc::clone(&p), now);
            Ok(p)
        }
    };
    decide_with(policy, req, now, verify, |_| Ok(()))
}

/// [`decide`] with the token-to-principal step supplied by the caller (the CLI's `--claims`).
/// `now` is what step-up and break-glass windows are measured against.
///
/// The stages, in order, each of which may refuse: `route_request` (limits, path, route,
/// method), `model_fhir`, `authenticate_request` (public routes stop before it), break-glass
/// and purpose (`who_and_why`), `authorize` (scopes, compartment), step-up and the data view
/// (`plan_response`), and `HEAD` where the answer would be checked.
///
/// `first_use` records a verified DPoP proof and refuses one seen before
/// (`dpop_proof_replayed`), or one it cannot check (`replay_check_unavailable`).
pub fn decide_with(
    policy: &Policy,
    req: &Request<'_>,
    now: UnixSeconds,
    mut authenticate: impl FnMut(&str) -> Result<Rc<Principal>, DenyReason>,
    mut first_use: impl FnMut(&VerifiedProof) -> Result<(), DenyReason>,
) -> Decision {
    let mut ctx = Ctx { route: None, scheme: None, principal: None, fhir: None, break_glass: None };
    match stages(policy, req, now, &mut authenticate, &mut first_use, &mut ctx) {
        Ok(grant) => Decision::Allow(grant),
        Err(stop) => ctx.refuse(stop, policy),
    }
}

fn stages<'p>(
    policy: &'p Policy,
    req: &Request<'_>,
    now: UnixSeconds,
    authenticate: &mut impl FnMut(&str) -> Result<Rc<Principal>, DenyReason>,
    first_use: &mut impl FnMut(&VerifiedProof) -> Result<(), DenyReason>,
    ctx: &mut Ctx<'p>,
) -> Result<Grant, Stop> {
    let (path, route, consumed) = route_request(policy, req, ctx)?;
    // Model the FHIR request before authenticating so refusals carry it for audit.
    ctx.fhir = model_fhir(route, req.method, &path, consumed)?;
    let carries_body = matches!(req.method, "POST" | "PUT" | "PATCH");
    let mut body = carries_body.then_some(BodyCheck {
        max: policy.limits.max_request_body_bytes,
        resource_type: None,
        id: None,
        patient: None,
        patch: None,
    });
    if let Access::Public = route.access {
        return Ok(Grant {
            route_id: route.id.clone(),
            fhir_route: false,
            principal: None,
            fhir: ctx.fhir.take(),
            response: ResponsePlan { max_body_bytes: policy.limits.max_response_bytes, ..ResponsePlan::default() },
            body,
            security_headers: route.security_headers,
            break_glass: None,
            preflight: None,
        });
    }
    let (scheme, token) = credentials(req.authorization)?;
    ctx.scheme = Some(scheme);
    let principal = authenticate_request(policy, token, authenticate)?;
    ctx.principal = Some(Rc::clone(&principal));
    sender_constraint(policy, route, req, scheme, token, &principal, now, first_use)?;
    let (principal, break_glass) = who_and_why(policy, route, principal, now, ctx)?;
    let (checks, preflight) = authorize(route, &principal, ctx.fhir.as_ref(), &path, req.method, body.as_mut())?;
    let response = plan_response(policy, route, &principal, ctx.fhir.as_ref(), break_glass.is_some(), checks, now)?;
    if req.method == "HEAD" && response.inspects_body() {
        // No body comes back to check: the status and headers alone would answer what the
        // check exists to withhold (whether another patient's resource exists).
        return Err(DenyReason::HeadNotCheckable.into());
    }
    Ok(Grant {
        route_id: route.id.clone(),
        fhir_route: matches!(route.access, Access::Fhir(_)),
        principal: Some(principal),
        fhir: ctx.fhir.take(),
        response,
        body,
        security_headers: route.security_headers,
        break_glass,
        preflight,
    })
}

/// Request limits, the normalised path, the first matching route and its methods, no token in
/// the query, the declared body size.
fn route_request<'p>(policy: &'p Policy, req: &Request<'_>, ctx: &mut Ctx<'p>) -> Result<(NormalizedPath, &'p Route, usize), Stop> {
    if req.header_count > policy.limits.max_header_count || req.header_bytes > policy.limits.max_header_bytes {
        return Err(DenyReason::HeadersTooLarge.into());
    }
    if req.path.len() > policy.limits.max_path_bytes {
        return Err(DenyReason::PathTooLong.into());
    }
    let path = normalize(req.path).map_err(|_| DenyReason::InvalidPath)?;
    let (route, consumed) =
        policy.routes.iter().find_map(|r| r.matcher.matches(&path.segments).map(|m| (r, m.consumed))).ok_or(DenyReason::NoRoute)?;
    ctx.route = Some(route);
    if !route.methods.iter().any(|m| m == req.method) {
        return Err(DenyReason::MethodNotAllowed.into());
    }
    if path.has_param("access_token") {
        return Err(DenyReason::TokenInQuery.into());
    }
    if req.content_length.is_some_and(|l| l > policy.limits.max_request_body_bytes as u64) {
        return Err(DenyReason::RequestTooLarge.into());
    }
    Ok((path, route, consumed))
}

/// The FHIR request below the route's base, on FHIR routes.
fn model_fhir(route: &Route, method: &str, path: &NormalizedPath, consumed: usize) -> Result<Option<FhirRequest>, Stop> {
    let Access::Fhir(_) = route.access else { return Ok(None) };
    match parse_fhir(method, path.segments.get(consumed..).unwrap_or(&[])) {
        Ok(f) => Ok(Some(f)),
        Err(FhirRequestError::UnknownType | FhirRequestError::Unsupported) => Err(DenyReason::UnsupportedFhirRequest.into()),
    }
}

/// The bearer token, verified (or from the cache). A refusal for want of keys names the
/// issuer the token claims, so the host can fetch its keys and decide again.
fn authenticate_request(
    policy: &Policy,
    token: &str,
    authenticate: &mut impl FnMut(&str) -> Result<Rc<Principal>, DenyReason>,
) -> Result<Rc<Principal>, Stop> {
    authenticate(token).map_err(|reason| {
        let awaiting_issuer = matches!(reason, DenyReason::KeysUnavailable | DenyReason::UnknownKey)
            .then(|| auth::verify::unverified_issuer(token).and_then(|iss| policy.issuers.iter().position(|i| i.issuer == iss)))
            .flatten();
        Stop { awaiting_issuer, ..reason.into() }
    })
}

/// Proof that the sender holds what the token is bound to (DPoP key, client certificate), the
/// issuer's and route's rules on bound tokens, and a DPoP proof's first use.
#[allow(clippy::too_many_arguments)]
fn sender_constraint(
    policy: &Policy,
    route: &Route,
    req: &Request<'_>,
    scheme: Scheme,
    token: &str,
    principal: &Principal,
    now: UnixSeconds,
    first_use: &mut impl FnMut(&VerifiedProof) -> Result<(), DenyReason>,
) -> Result<(), Stop> {
    let mode = policy.issuers.iter().find(|i| i.issuer == principal.issuer).map_or(DpopMode::Disabled, |i| i.dpop);
    let presented = Presentation {
        scheme,
        token,
        proofs: req.dpop,
        target: ProofTarget { method: req.method, scheme: req.scheme, authority: req.authority, path: req.path },
        peer_certificate_sha256: req.peer_certificate_sha256,
    };
    if let Some(proof) = sender::check(principal, mode, route.sender_constrained, &presented, &policy.dpop, now)? {
        first_use(&proof)?;
    }
    Ok(())
}

/// Break-glass first (it decides which principal, scopes and purposes, the rest runs with),
/// then the route's purpose of use.
fn who_and_why(
    policy: &Policy,
    route: &Route,
    principal: Rc<Principal>,
    now: UnixSeconds,
    ctx: &mut Ctx<'_>,
) -> Result<(Rc<Principal>, Option<BreakGlass>), Stop> {
    let (principal, break_glass) = match policy.break_glass.as_ref().map(|bg| (bg, bg.evaluate(&principal, now))) {
        None | Some((_, Ok(None))) => (principal, None),
        Some((bg, Ok(Some(b)))) => (Rc::new(bg.widen(&principal)), Some(b)),
        Some((_, Err(reason))) => return Err(reason.into()),
    };
    ctx.principal = Some(Rc::clone(&principal));
    ctx.break_glass.clone_from(&break_glass);
    if let Some(rule) = &route.purpose {
        rule.check(&principal.purpose)?;
    }
    Ok((principal, break_glass))
}

/// The route's scopes (literal, or SMART for the FHIR interaction and the patient
/// compartment). Returns the response checks; fills in what a write body must be.
fn authorize(
    route: &Route,
    principal: &Principal,
    fhir: Option<&FhirRequest>,
    path: &NormalizedPath,
    method: &str,
    body: Option<&mut BodyCheck>,
) -> Result<(Vec<ResponseCheck>, Option<Box<Preflight>>), Stop> {
    match &route.access {
        Access::Public => Ok((Vec::new(), None)),
        Access::Scopes { all_of, any_of } => {
            let ok = all_of.iter().all(|s| principal.has_scope(s)) && (any_of.is_empty() || any_of.iter().any(|s| principal.has_scope(s)));
            if ok {
                return Ok((Vec::new(), None));
            }
            let mut need = all_of.clone();
            if !any_of.is_empty() {
                need.push(any_of.join(" | "));
            }
            Err(Stop::needing_scope(DenyReason::InsufficientScope, Some(need.join(" "))))
        }
        Access::Fhir(fhir_route) => {
            let fhir = fhir.ok_or(DenyReason::UnsupportedFhirRequest)?;
            let FhirGrant { checks, body_patient, preflight } =
                authorize_fhir(fhir_route, principal, fhir, path, method).map_err(|(reason, need)| Stop::needing_scope(reason, need))?;
            match (body, fhir.interaction) {
                (Some(b), Interaction::Create | Interaction::Update) => {
                    b.resource_type = fhir.resource_type;
                    b.id = fhir.id.clone();
                    b.patient = body_patient;
                }
                (Some(b), Interaction::Patch) if preflight.is_some() => b.patch = fhir.resource_type,
                _ => {}
            }
            Ok((checks, preflight.map(Box::new)))
        }
    }
}

/// Step-up (after the scopes: asking the user to authenticate again only helps a request the
/// token's scopes would allow), then the data view, chosen now so that a caller entitled to
/// none is refused before the upstream is asked (break-glass may name a profile; it still
/// needs that profile's step-up), and the privacy restrictions that bind the caller.
fn plan_response(
    policy: &Policy,
    route: &Route,
    principal: &Principal,
    fhir: Option<&FhirRequest>,
    break_glass: bool,
    checks: Vec<ResponseCheck>,
    now: UnixSeconds,
) -> Result<ResponsePlan, Stop> {
    let levels = policy.acr_levels(&principal.issuer);
    let authenticated = |req: &AuthRequirement| req.met_by(principal, levels, now);
    if let Some(req) = &route.authentication {
        if !authenticated(req) {
            let challenge = Challenge { scope: None, acr_values: req.acr_values(levels), max_age: req.max_auth_age, dpop: None };
            return Err(Stop { reason: DenyReason::InsufficientUserAuthentication, challenge, awaiting_issuer: None });
        }
    }
    let minimize = match &route.minimize {
        None => None,
        Some(set) => {
            let emergency = policy.break_glass.as_ref().filter(|_| break_glass).and_then(|bg| bg.profile.as_deref());
            let chosen = emergency.and_then(|name| set.named(name, &principal.purpose, authenticated));
            let profile = chosen.or_else(|| set.select_where(&principal.scopes, &principal.purpose, authenticated));
            Some(profile.ok_or(DenyReason::NoMinimizationProfile)?)
        }
    };
    let restrict = match (&policy.restrictions, &route.access, fhir) {
        (Some(r), Access::Fhir(_), Some(f)) if returns_resources(f.interaction) => {
            r.plan(&route.id, &principal.purpose, principal.patient.as_deref())
        }
        _ => None,
    };
    Ok(ResponsePlan { checks, minimize, max_body_bytes: policy.limits.max_response_bytes, restrict })
}

/// Interactions whose responses carry stored resources (privacy restrictions apply to them).
fn returns_resources(i: Interaction) -> bool {
    use Interaction::*;
    matches!(i, Read | Vread | SearchType | SearchSystem | HistoryInstance | HistoryType | HistorySystem)
}

/// The scheme and token from exactly one `Authorization` header (`Bearer` or `DPoP`, scheme
/// case-insensitive).
fn credentials<'a>(headers: &[&'a str]) -> Result<(Scheme, &'a str), DenyReason> {
    let value = match headers {
        [] => return Err(DenyReason::MissingToken),
        [one] => one.trim(),
        _ => return Err(DenyReason::AmbiguousCredentials),
    };
    // Envoy joins repeated `Authorization` headers into one value with `,`; a bearer token
    // (RFC 6750 b64token) never contains a comma.
    if value.contains(',') {
        return Err(DenyReason::AmbiguousCredentials);
    }
    let (scheme, token) =
        value.split_once(' ').ok_or(if value.is_empty() { DenyReason::MissingToken } else { DenyReason::UnsupportedAuthScheme })?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(DenyReason::UnsupportedAuthScheme);
    };
    let token = token.trim_start_matches(' ');
    if token.is_empty() {
        return Err(DenyReason::MissingToken);
    }
    if token.contains(char::is_whitespace) {
        return Err(DenyReason::MalformedToken);
    }
    Ok((scheme, token))
}

type FhirDenial = (DenyReason, Option<String>);

/// What an authorized FHIR request still owes: response checks, and for a patient-context
/// create, the patient its body must belong to.
#[derive(Default)]
struct FhirGrant {
    checks: Vec<ResponseCheck>,
    body_patient: Option<String>,
    preflight: Option<Preflight>,
}

/// SMART scope and patient-compartment enforcement for a modelled FHIR request.
fn authorize_fhir(
    route: &FhirRoute,
    principal: &Principal,
    req: &FhirRequest,
    path: &NormalizedPath,
    method: &str,
) -> Result<FhirGrant, FhirDenial> {
    use Interaction::*;
    if !route.interactions.contains(&req.interaction) {
        return Err((DenyReason::InteractionNotAllowed, None));
    }
    if req.interaction == Capabilities {
        return Ok(FhirGrant::default());
    }
    let Some(letter) = req.interaction.permission() else {
        // Batch/transaction and operations cannot be authorized by one resource scope; declare a
        // `scopes` route for the operations you serve, ahead of the FHIR base.
        return Err((DenyReason::UnsupportedFhirRequest, None));
    };
    let ty = req.resource_type;
    let granting = principal.smart_scopes.iter().filter(|s| route.scope_contexts.contains(&s.context) && s.grants(ty, letter, &path.query));
    let (mut patient_grant, mut other_grant) = (false, false);
    for s in granting {
        match s.context {
            Context::Patient => patient_grant = true,
            _ => other_grant = true,
        }
    }
    if other_grant {
        // user/ and system/ scopes: the upstream enforces the user's own access.
        return Ok(FhirGrant::default());
    }
    if !patient_grant {
        let t = ty.unwrap_or("*");
        let contexts = [(Context::Patient, "patient"), (Context::User, "user"), (Context::System, "system")];
        let need: Vec<String> =
            contexts.iter().filter(|(c, _)| route.scope_contexts.contains(c)).map(|(_, n)| format!("{n}/{t}.{letter}")).collect();
        let need = need.join(" ");
        return Err((DenyReason::InsufficientScope, Some(need)));
    }
    let patient = principal.patient.as_deref().ok_or((DenyReason::MissingPatientContext, None))?;
    if method == "POST" && req.interaction == SearchType {
        // Form-encoded search parameters in the body are not seen here: the compartment
        // binding could not be checked.
        return Err((DenyReason::CompartmentEscape, None));
    }
    if req.interaction == Create && in_patient_compartment(req.resource_type.unwrap_or("")) && req.resource_type != Some("Patient") {
        // Allowed if the body proves the new resource belongs to the patient.
        return Ok(FhirGrant { checks: Vec::new(), body_patient: Some(patient.to_owned()), preflight: None });
    }
    if let Some(preflight) = patient_write(route, req, path, patient)? {
        let body_patient = (req.interaction == Update).then(|| patient.to_owned());
        return Ok(FhirGrant { checks: Vec::new(), body_patient, preflight: Some(preflight) });
    }
    patient_compartment(route, req, path, patient).map(|checks| FhirGrant { checks, body_patient: None, preflight: None })
}

/// A patient-context update, patch or delete of a compartment resource other than the
/// patient's own `Patient`: allowed only on routes with `patientWrites`, after a pre-flight
/// read (`None`: not such a write).
fn patient_write(route: &FhirRoute, req: &FhirRequest, path: &NormalizedPath, patient: &str) -> Result<Option<Preflight>, FhirDenial> {
    use Interaction::*;
    let (Update | Patch | Delete, Some(ty), Some(id)) = (req.interaction, req.resource_type, &req.id) else { return Ok(None) };
    if ty == "Patient" || !in_patient_compartment(ty) {
        return Ok(None);
    }
    let Some(settings) = &route.patient_writes else { return Err((DenyReason::CompartmentEscape, None)) };
    // A conditional write (`PUT Observation?identifier=...`) or one with parameters is not
    // the one resource the read checks.
    if !path.query.is_empty() {
        return Err((DenyReason::CompartmentEscape, None));
    }
    Ok(Some(Preflight {
        path: format!("/{}", path.segments.join("/")),
        resource_type: ty,
        id: id.clone(),
        patient: patient.to_owned(),
        settings: settings.clone(),
    }))
}

/// A patient-context token may reach only its patient's compartment. The request is checked
/// strictly here, and whatever the upstream answers is checked again on the response
/// ([`CompartmentCheck`]): an upstream may ignore or reinterpret a search parameter.
fn patient_compartment(
    route: &FhirRoute,
    req: &FhirRequest,
    path: &NormalizedPath,
    patient: &str,
) -> Result<Vec<ResponseCheck>, FhirDenial> {
    use Interaction::*;
    let escape = Err((DenyReason::CompartmentEscape, None));
    let mismatch = Err((DenyReason::PatientMismatch, None));
    let Some(ty) = req.resource_type else {
        return escape;
    };
    let check = |expect: Expected| {
        let shared = std::sync::Arc::clone(&route.patient_shared_types);
        Ok(vec![ResponseCheck::Compartment(CompartmentCheck { patient: patient.to_owned(), shared, expect })])
    };
    let resource = |id: &Option<String>| Expected::Resource { resource_type: ty, id: id.clone().unwrap_or_default() };
    if !in_patient_compartment(ty) {
        if !route.shares(ty) {
            return mismatch;
        }
        return match req.interaction {
            Read | Vread => check(resource(&req.id)),
            SearchType if req.compartment_patient.is_none() => {
                search_params(route, ty, path, patient)?;
                check(Expected::Searchset)
            }
            _ => mismatch,
        };
    }
    match (ty, req.interaction) {
        ("Patient", Read | Vread | HistoryInstance | Update | Patch) => {
            if req.id.as_deref() != Some(patient) {
                return mismatch;
            }
            match req.interaction {
                Read | Vread => check(resource(&req.id)),
                HistoryInstance => check(Expected::History { resource_type: ty, id: patient.to_owned() }),
                _ => Ok(Vec::new()),
            }
        }
        (_, SearchType) => {
            if let Some(p) = &req.compartment_patient {
                // `Patient/[id]/[type]`: the path names the patient; the query may not name
                // another one, and needs no patient parameter of its own.
                if p != patient {
                    return mismatch;
                }
                search_params(route, ty, path, patient)?;
            } else if !search_params(route, ty, path, patient)? {
                return escape;
            }
            check(Expected::Searchset)
        }
        (_, Read | Vread) => check(resource(&req.id)),
        (_, HistoryInstance) => check(Expected::History { resource_type: ty, id: req.id.clone().unwrap_or_default() }),
        // Updates, deletes and type history by a patient-context token cannot be proven to stay
        // inside the compartment before they happen (the stored resource is not seen).
        _ => escape,
    }
}

/// The search parameters of a patient-context search of `ty`, each judged on its own; returns
/// whether the search is bound to `patient` by the type's primary patient parameter (`patient`,
/// `subject`, or `_id` for Patient) written in the form the route accepts.
///
/// - Features that reach past the named resources are refused: `_include`, `_revinclude`,
///   `_has`, `_filter`, `_query`, `_contained`, chained parameters.
/// - Only the type's R4 search parameters (or the route's list for the type) and the result
///   parameters may be used; anything else could be ignored or misread by the upstream.
/// - The primary parameter takes no modifier, and names exactly the token's patient.
/// - Any other parameter that can reference a patient takes no modifier but a resource type
///   and names only typed references to other types, or the token's patient.
/// - No value of any parameter may name another patient (`Patient/x`).
fn search_params(route: &FhirRoute, ty: &str, path: &NormalizedPath, patient: &str) -> Result<bool, FhirDenial> {
    let escape = Err((DenyReason::CompartmentEscape, None));
    let mismatch = Err((DenyReason::PatientMismatch, None));
    let primary = primary_patient_param(ty);
    let allowed = route.patient_search.parameters.get(ty);
    let mut bound = false;
    for (k, v) in &path.query {
        let (name, modifier) = k.split_once(':').map_or((k.as_str(), None), |(n, m)| (n, Some(m)));
        let widening = matches!(name, "_include" | "_revinclude" | "_filter" | "_query" | "_contained" | "_containedType")
            || name.starts_with("_has")
            || k.contains('.');
        if widening {
            return escape;
        }
        // A value naming another patient is refused whatever parameter carries it.
        if v.split(',').any(|part| part.contains("Patient/") && !param_refers_to(part, patient)) {
            return mismatch;
        }
        if RESULT_PARAMS.contains(&name) {
            if modifier.is_some() {
                return escape;
            }
            continue;
        }
        let known = match allowed {
            Some(list) => list.contains(name),
            None => is_param(ty, name),
        };
        if !known {
            return Err((DenyReason::SearchParameterNotAllowed, None));
        }
        if Some(name) == primary {
            if modifier.is_some() {
                return escape;
            }
            let named = if name == "_id" { v == patient } else { route.patient_search.reference.names(v, patient) };
            if !named {
                return if param_refers_to(v, patient) { escape } else { mismatch };
            }
            bound = true;
            continue;
        }
        if param_kind(ty, name) == Some(ParamKind::PatientReference) {
            match modifier.map(|m| (m, resource_type(m))) {
                // `performer=Practitioner/1` or the token's patient; a bare id could be anyone.
                None => {
                    if !v.split(',').all(|part| typed_non_patient(part) || param_refers_to(part, patient)) {
                        return mismatch;
                    }
                }
                Some((_, Some("Patient"))) => {
                    if !param_refers_to(v, patient) {
                        return mismatch;
                    }
                }
                // `performer:Practitioner=1`: the values are ids of that type.
                Some((_, Some(_))) => {}
                // `:missing`, `:not`, `:identifier`, `:above`...: select by something other than
                // the reference itself, so they can match other patients.
                Some((_, None)) => return escape,
            }
        }
    }
    Ok(bound)
}

/// A relative reference to a resource of a type other than Patient: `Practitioner/1`.
fn typed_non_patient(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((t, id)) => t != "Patient" && resource_type(t).is_some() && crate::fhir::request::valid_id(id),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{claims, policy, policy_doc, sign, token, NOW};
    use jsonwebtoken::Algorithm;
    use serde_json::{json, Value};

    fn run(p: &Policy, method: &str, path: &str, auth: Option<&str>) -> Decision {
        let mut cache = TokenCache::new(16);
        let header = auth.map(|t| format!("Bearer {t}"));
        let hs: Vec<&str> = header.iter().map(String::as_str).collect();
        decide(p, &mut cache, &Request { method, path, authorization: &hs, ..Default::default() }, NOW)
    }

    fn reason(p: &Policy, method: &str, path: &str, auth: Option<&str>) -> Option<DenyReason> {
        run(p, method, path, auth).reason()
    }

    #[test]
    fn patient_app() {
        let p = policy("smart-patient-app");
        let t = token(json!({}));
        let t = Some(t.as_str());
        use DenyReason::*;
        assert_eq!(reason(&p, "GET", "/healthz", None), None);
        assert_eq!(reason(&p, "GET", "/fhir/metadata", None), None);
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p1", None), Some(MissingToken));
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p1", t), None);
        assert_eq!(reason(&p, "HEAD", "/fhir/Patient/p1", t), Some(HeadNotCheckable));
        assert_eq!(reason(&p, "HEAD", "/fhir/Observation/o9", t), Some(HeadNotCheckable));
        assert_eq!(reason(&p, "HEAD", "/healthz", None), None);
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p2", t), Some(PatientMismatch));
        assert_eq!(reason(&p, "DELETE", "/fhir/Patient/p1", t), Some(MethodNotAllowed));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1", t), None);
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=Patient/p1&subject=Patient/p1&code=x", t), None);
        // Bound only by the type's primary patient parameter, without modifiers.
        assert_eq!(reason(&p, "GET", "/fhir/Observation?subject=Patient/p1&code=x", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?subject:Patient=p1", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient:Patient=p1", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p2", t), Some(PatientMismatch));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1,p2", t), Some(PatientMismatch));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1&patient=p2", t), Some(PatientMismatch));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?code=x", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient:missing=true", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1&_include=Observation:performer", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1&_revinclude=Provenance:target", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1&_has:Group:member:_id=g", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient.name=Smith", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p1/Observation", t), None);
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p2/Observation", t), Some(PatientMismatch));
        assert_eq!(reason(&p, "GET", "/fhir/Patient?_id=p1", t), None);
        assert_eq!(reason(&p, "GET", "/fhir/Patient?name=Smith", t), Some(CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Condition?patient=p1", t), Some(InsufficientScope));
        assert_eq!(reason(&p, "GET", "/fhir/Organization/o1", t), Some(InsufficientScope));
        assert_eq!(reason(&p, "GET", "/fhir?_type=Observation", t), Some(InsufficientScope));
        assert_eq!(reason(&p, "GET", "/fhir/Pateint/p1", t), Some(UnsupportedFhirRequest));
        assert_eq!(reason(&p, "GET", "/fhir/Patient/../Patient/p2", t), Some(InvalidPath));
        assert_eq!(reason(&p, "GET", "/fhir/Patient%2Fp2", t), Some(InvalidPath));
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p1?access_token=x", t), Some(TokenInQuery));
        assert_eq!(reason(&p, "GET", "/nothing/here", t), Some(NoRoute));
        assert_eq!(reason(&p, "GET", "/fhirx", t), Some(NoRoute));
        match run(&p, "GET", "/fhir/Observation/o1", t) {
            Decision::Allow(g) => assert_eq!(
                g.response.checks,
                [ResponseCheck::Compartment(CompartmentCheck {
                    patient: "p1".into(),
                    shared: Vec::new().into(),
                    expect: Expected::Resource { resource_type: "Observation", id: "o1".into() }
                })]
            ),
            d => panic!("{d:?}"),
        }
        // Reads of the token's own Patient and searches are checked on the response too.
        for path in ["/fhir/Patient/p1", "/fhir/Observation?patient=p1", "/fhir/Patient/p1/Observation", "/fhir/Patient?_id=p1"] {
            match run(&p, "GET", path, t) {
                Decision::Allow(g) => assert!(matches!(g.response.checks.as_slice(), [ResponseCheck::Compartment(_)]), "{path}"),
                d => panic!("{path}: {d:?}"),
            }
        }
    }

    /// Issue 15: searches that named the token's patient in one parameter and another patient,
    /// or nobody the upstream applies, in another.
    #[test]
    fn search_tricks_stay_in_the_compartment() {
        let p = policy("smart-patient-app");
        let t = token(json!({"scope": "launch/patient patient/*.rs", "patient": "me"}));
        let t = Some(t.as_str());
        use DenyReason::*;
        let cases: &[(&str, Option<DenyReason>)] = &[
            ("/fhir/Condition?subject=Patient/other&asserter=Patient/me", Some(PatientMismatch)),
            ("/fhir/Condition?asserter=Patient/me", Some(CompartmentEscape)),
            ("/fhir/Encounter?subject=Patient/other&patient:Patient=me", Some(PatientMismatch)),
            ("/fhir/Encounter?patient=me&subject=other", Some(PatientMismatch)),
            ("/fhir/MedicationRequest?patient=other&subject:Patient=me", Some(PatientMismatch)),
            ("/fhir/Observation?patient:Patient=me&_count=500", Some(CompartmentEscape)),
            ("/fhir/Observation?performer=Patient/me", Some(CompartmentEscape)),
            ("/fhir/RelatedPerson?patient:Patient=me", Some(CompartmentEscape)),
            ("/fhir/RelatedPerson?patient=me", None),
            // Other patients named through any parameter, modifier or form.
            ("/fhir/Observation?patient=me&performer=Patient/other", Some(PatientMismatch)),
            ("/fhir/Observation?patient=me&performer=other", Some(PatientMismatch)),
            ("/fhir/Observation?patient=me&performer:Patient=other", Some(PatientMismatch)),
            ("/fhir/Observation?patient=me&subject:not=Patient/me", Some(CompartmentEscape)),
            ("/fhir/Observation?patient=me&subject:missing=true", Some(CompartmentEscape)),
            ("/fhir/Observation?patient=me&subject:identifier=urn:mrn|123", Some(CompartmentEscape)),
            ("/fhir/Observation?patient=me&code=http://x.org/Patient/other", Some(PatientMismatch)),
            ("/fhir/Observation?patient=https://fhir.example/Patient/me", Some(CompartmentEscape)),
            ("/fhir/Observation?patient=me,me", Some(CompartmentEscape)),
            ("/fhir/Observation?patient=me&patient=other", Some(PatientMismatch)),
            ("/fhir/Observation?patient:not=me", Some(CompartmentEscape)),
            ("/fhir/Patient?_id=me&link=Patient/other", Some(PatientMismatch)),
            ("/fhir/Patient?_id:not=me", Some(CompartmentEscape)),
            ("/fhir/Patient/me/Observation?subject=Patient/other", Some(PatientMismatch)),
            // Parameters R4 does not define for the type, or result parameters with modifiers.
            ("/fhir/Observation?patient=me&ssn=123-45-6789", Some(SearchParameterNotAllowed)),
            ("/fhir/Observation?patient=me&asserter=Patient/me", Some(SearchParameterNotAllowed)),
            ("/fhir/Observation?patient=me&_count:x=5", Some(CompartmentEscape)),
            ("/fhir/Observation?patient=me&_contained=true", Some(CompartmentEscape)),
            // Legitimate searches.
            ("/fhir/Observation?patient=me&performer=Practitioner/p9&code=1234-5&_count=50&_sort=-date", None),
            ("/fhir/Observation?patient=Patient/me&performer:Practitioner=p9&date=ge2020&code:not=x", None),
            ("/fhir/Observation?patient=me&subject=Patient/me", None),
            ("/fhir/Patient/me/Condition?clinical-status=active", None),
        ];
        for (path, want) in cases {
            assert_eq!(reason(&p, "GET", path, t), *want, "{path}");
        }
    }

    #[test]
    fn patient_search_policy_options() {
        let mut doc = policy_doc("smart-patient-app");
        let fhir = doc["routes"].as_array_mut().unwrap().iter_mut().find(|r| r.get("fhir").is_some()).unwrap();
        fhir["fhir"]["patientSearch"] = json!({"patientReference": "reference", "parameters": {"Observation": ["patient", "code"]}});
        let p = crate::policy::compile(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let t = token(json!({"scope": "patient/*.rs", "patient": "me"}));
        let t = Some(t.as_str());
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=Patient/me&code=x", t), None);
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=me", t), Some(DenyReason::CompartmentEscape));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=Patient/me&date=ge2020", t), Some(DenyReason::SearchParameterNotAllowed));
        // Other types keep the R4-derived list.
        assert_eq!(reason(&p, "GET", "/fhir/Condition?patient=Patient/me&clinical-status=active", t), None);
    }

    #[test]
    fn scope_contexts_limit_what_grants() {
        let p = policy("smart-patient-app");
        // The patient-facing policy accepts patient/ scopes only: user/ and system/ scopes
        // would read any patient (their access is the upstream's to enforce).
        for scope in ["user/*.rs", "system/*.rs", "user/Observation.rs patient/Patient.rs"] {
            let t = token(json!({"scope": scope, "patient": "me"}));
            assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=other", Some(&t)), Some(DenyReason::InsufficientScope), "{scope}");
        }
        let clinic = policy("clinician-api");
        let c = clinic
            .routes
            .iter()
            .find_map(|r| match &r.access {
                Access::Fhir(f) => Some(f),
                _ => None,
            })
            .unwrap();
        assert_eq!(c.scope_contexts.len(), 3);
    }

    #[test]
    fn patient_scope_without_patient_claim() {
        let p = policy("smart-patient-app");
        let t = token(json!({"patient": null}));
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p1", Some(&t)), Some(DenyReason::MissingPatientContext));
    }

    #[test]
    fn wildcard_and_constraints() {
        let p = policy("smart-patient-app");
        let t = token(json!({"scope": "patient/*.rs"}));
        assert_eq!(reason(&p, "GET", "/fhir/Condition?patient=p1", Some(&t)), None);
        let t = token(json!({"scope": "patient/Observation.rs?category=laboratory"}));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1&category=laboratory", Some(&t)), None);
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1", Some(&t)), Some(DenyReason::InsufficientScope));
        assert_eq!(reason(&p, "GET", "/fhir/Observation/o1", Some(&t)), Some(DenyReason::InsufficientScope));
        let t = token(json!({"scope": "launch/patient openid fhirUser patient/Observation.sr"}));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1", Some(&t)), Some(DenyReason::InsufficientScope));
    }

    #[test]
    fn clinician_api() {
        let p = policy("clinician-api");
        let scp = |s: Value| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove("scope");
            c.as_object_mut().unwrap().remove("patient");
            c["scp"] = s;
            sign(Algorithm::ES256, Some("demo-es256"), &c)
        };
        let user = scp(json!(["user/Patient.rs", "user/Observation.cruds"]));
        assert_eq!(reason(&p, "GET", "/fhir/Patient/anyone", Some(&user)), None);
        assert_eq!(reason(&p, "GET", "/fhir/Patient?name=Smith", Some(&user)), None);
        assert_eq!(reason(&p, "DELETE", "/fhir/Patient/anyone", Some(&user)), Some(DenyReason::InsufficientScope));
        assert_eq!(reason(&p, "POST", "/fhir/Observation", Some(&user)), None);
        assert_eq!(reason(&p, "POST", "/fhir", Some(&user)), Some(DenyReason::UnsupportedFhirRequest));
        assert_eq!(reason(&p, "GET", "/admin/reports/7", Some(&user)), Some(DenyReason::InsufficientScope));
        assert_eq!(reason(&p, "GET", "/nothing", Some(&user)), Some(DenyReason::NoRoute));
        assert!(matches!(run(&p, "GET", "/nothing", None), Decision::Deny(Refusal { status: 403, .. })));
        assert_eq!(p.unmatched_status, 403);
        let admin = scp(json!(["admin.reports.read"]));
        assert_eq!(reason(&p, "GET", "/admin/reports/7", Some(&admin)), None);
        assert_eq!(reason(&p, "GET", "/admin/reports/7/x", Some(&admin)), Some(DenyReason::NoRoute));
        let sys = scp(json!(["system/*.read"]));
        assert_eq!(reason(&p, "POST", "/admin/export/run", Some(&sys)), None);
        // EdDSA is not pinned for this issuer.
        let mut c = claims();
        c["scp"] = json!(["user/Patient.rs"]);
        let ed = sign(Algorithm::EdDSA, Some("demo-eddsa"), &c);
        assert_eq!(reason(&p, "GET", "/fhir/Patient/x", Some(&ed)), Some(DenyReason::AlgorithmNotAllowed));
    }

    #[test]
    fn authorization_header_forms() {
        let p = policy("smart-patient-app");
        let t = token(json!({}));
        let mut cache = TokenCache::new(4);
        let go = |cache: &mut TokenCache, hs: &[&str]| {
            decide(&p, cache, &Request { method: "GET", path: "/fhir/Patient/p1", authorization: hs, ..Default::default() }, NOW).reason()
        };
        assert_eq!(go(&mut cache, &[&format!("bearer {t}")]), None);
        assert_eq!(go(&mut cache, &[&format!("BEARER   {t}")]), None);
        assert_eq!(go(&mut cache, &[&format!("Basic {t}")]), Some(DenyReason::UnsupportedAuthScheme));
        assert_eq!(go(&mut cache, &["Bearer"]), Some(DenyReason::UnsupportedAuthScheme));
        assert_eq!(go(&mut cache, &["Bearer "]), Some(DenyReason::UnsupportedAuthScheme));
        assert_eq!(go(&mut cache, &[""]), Some(DenyReason::MissingToken));
        assert_eq!(go(&mut cache, &[&format!("Bearer {t}"), &format!("Bearer {t}")]), Some(DenyReason::AmbiguousCredentials));
        // Two headers as Envoy hands them over: joined with a comma.
        assert_eq!(go(&mut cache, &[&format!("Bearer {t},Bearer {t}")]), Some(DenyReason::AmbiguousCredentials));
        assert_eq!(go(&mut cache, &[&format!("Bearer {t}, Basic eDp5")]), Some(DenyReason::AmbiguousCredentials));
        assert_eq!(go(&mut cache, &[&format!("Bearer {t},{t}")]), Some(DenyReason::AmbiguousCredentials));
        assert_eq!(go(&mut cache, &[&format!("Bearer {t} x")]), Some(DenyReason::MalformedToken));
        assert_eq!(cache.len(), 1, "verified once, cached");
    }

    #[test]
    fn remote_keys_not_loaded_is_503_not_401() {
        let mut doc = policy_doc("smart-patient-app");
        let iss = doc["issuers"][0].as_object_mut().unwrap();
        iss.remove("jwks");
        iss.insert("jwksUri".into(), json!({"cluster": "idp", "path": "/jwks.json"}));
        let mut p = crate::policy::compile(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let remote = p.issuers[0].remote.clone().unwrap();
        assert_eq!((remote.refresh, remote.refetch_interval, remote.authority.as_str()), (300, 30, "idp"));
        let t = token(json!({}));
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p1", Some(&t)), Some(DenyReason::KeysUnavailable));
        assert_eq!(DenyReason::KeysUnavailable.status(), 503);
        // The refusal names the issuer whose keys the host may fetch and wait for; other
        // refusals name none.
        assert_eq!(refusal(run(&p, "GET", "/fhir/Patient/p1", Some(&t))).awaiting_issuer, Some(0));
        assert_eq!(refusal(run(&p, "GET", "/fhir/Patient/p1", None)).awaiting_issuer, None);
        // Once the host installs fetched keys, the same token verifies.
        p.issuers[0].keys = crate::auth::remote::parse_remote_jwks(
            &std::fs::read(format!("{}/tests/keys/demo-jwks.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
            &p.issuers[0].algorithms,
        )
        .unwrap();
        assert_eq!(reason(&p, "GET", "/fhir/Patient/p1", Some(&t)), None);
    }

    #[test]
    fn request_limits_and_bodies() {
        let p = policy("clinician-api");
        let mut c = claims();
        c["scp"] = json!(["user/Observation.cruds", "patient/Observation.cruds"]);
        let user = sign(Algorithm::RS256, Some("demo-rs256"), &c);
        let hs = [format!("Bearer {user}")];
        let hs: Vec<&str> = hs.iter().map(String::as_str).collect();
        let go = |method: &'static str, path: &'static str, f: &dyn Fn(&mut Request)| {
            let mut r = Request { method, path, authorization: &hs, ..Default::default() };
            f(&mut r);
            decide(&p, &mut TokenCache::new(4), &r, NOW)
        };
        assert_eq!(go("GET", "/fhir/Patient/x", &|r| r.header_count = 101).reason(), Some(DenyReason::HeadersTooLarge));
        assert_eq!(go("GET", "/fhir/Patient/x", &|r| r.header_bytes = 40_000).reason(), Some(DenyReason::HeadersTooLarge));
        assert_eq!(go("POST", "/fhir/Observation", &|r| r.content_length = Some(2 << 20)).reason(), Some(DenyReason::RequestTooLarge));
        let d = go("PUT", "/fhir/Observation/o1", &|_| {});
        let Decision::Allow(g) = d else { panic!("{d:?}") };
        let b = g.body.unwrap();
        assert_eq!((b.resource_type, b.id.as_deref(), b.patient.as_deref()), (Some("Observation"), Some("o1"), None));
        assert_eq!(b.check(br#"{"resourceType":"Observation","id":"o1"}"#), Ok(()));
        assert_eq!(b.check(br#"{"resourceType":"Observation","id":"o2"}"#), Err(DenyReason::InvalidRequestBody));
        assert_eq!(b.check(br#"{"resourceType":"Patient","id":"o1"}"#), Err(DenyReason::InvalidRequestBody));
        assert_eq!(b.check(b"not json"), Err(DenyReason::InvalidRequestBody));
        assert!(g.security_headers);
        let Decision::Allow(g) = go("GET", "/fhir/Observation/x", &|_| {}) else { panic!() };
        assert!(g.body.is_none());
    }

    #[test]
    fn patient_context_writes() {
        let p = policy("clinician-api");
        let mut c = claims();
        c["scp"] = json!(["patient/Observation.cruds", "patient/Patient.rs"]);
        let t = sign(Algorithm::RS256, Some("demo-rs256"), &c);
        let Decision::Allow(g) = run(&p, "POST", "/fhir/Observation", Some(&t)) else { panic!() };
        let b = g.body.unwrap();
        assert_eq!(b.patient.as_deref(), Some("p1"));
        assert_eq!(b.check(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#), Ok(()));
        assert_eq!(b.check(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#), Err(DenyReason::PatientMismatch));
        assert_eq!(reason(&p, "PUT", "/fhir/Observation/o1", Some(&t)), Some(DenyReason::CompartmentEscape));
        assert_eq!(reason(&p, "DELETE", "/fhir/Observation/o1", Some(&t)), Some(DenyReason::CompartmentEscape));
        assert_eq!(reason(&p, "POST", "/fhir/Observation/_search", Some(&t)), Some(DenyReason::CompartmentEscape));

        // With `patientWrites`, the write is allowed pending its pre-flight read.
        let mut doc = policy_doc("clinician-api");
        doc["routes"][2]["fhir"]["patientWrites"] = json!({"cluster": "upstream"});
        let p = crate::policy::compile(&serde_json::to_vec(&doc).unwrap()).unwrap();
        for method in ["PUT", "PATCH", "DELETE"] {
            let Decision::Allow(g) = run(&p, method, "/fhir/Observation/o1", Some(&t)) else { panic!("{method}") };
            let pf = g.preflight.expect("a pre-flight read");
            assert_eq!(
                (pf.path.as_str(), pf.resource_type, pf.id.as_str(), pf.patient.as_str()),
                ("/fhir/Observation/o1", "Observation", "o1", "p1")
            );
            match method {
                "PUT" => {
                    let body = g.body.unwrap();
                    assert_eq!((body.patient.as_deref(), body.id.as_deref()), (Some("p1"), Some("o1")));
                }
                "PATCH" => assert_eq!(g.body.unwrap().patch, Some("Observation")),
                _ => assert!(g.body.is_none()),
            }
        }
        // A conditional write, or one on the patient's own record, takes no pre-flight read.
        assert_eq!(reason(&p, "PUT", "/fhir/Observation/o1?identifier=x", Some(&t)), Some(DenyReason::CompartmentEscape));
        let Decision::Allow(g) = run(&p, "GET", "/fhir/Observation/o1", Some(&t)) else { panic!() };
        assert!(g.preflight.is_none());
    }

    #[test]
    fn cache_never_outlives_exp() {
        let p = policy("smart-patient-app");
        let t = token(json!({"exp": NOW.add_secs(10)}));
        let mut cache = TokenCache::new(4);
        let hs = [format!("Bearer {t}")];
        let hs: Vec<&str> = hs.iter().map(String::as_str).collect();
        let req = Request { method: "GET", path: "/fhir/Patient/p1", authorization: &hs, ..Default::default() };
        assert!(decide(&p, &mut cache, &req, NOW).reason().is_none());
        assert_eq!(decide(&p, &mut cache, &req, NOW.add_secs(70)).reason(), Some(DenyReason::Expired));
    }

    const KERMIT: &str = "1f456f0a-acb1-4728-82af-01ca57083c7b";

    /// A clinician token for `clinician-api` (ES256, `scp`), patched.
    fn clinician(patch: Value) -> String {
        let mut c = claims();
        let o = c.as_object_mut().unwrap();
        o.remove("scope");
        o.remove("patient");
        c["scp"] = json!(["user/Condition.rs", "user/Patient.rs"]);
        c["purpose_of_use"] = json!("TREAT");
        c["acr"] = json!("urn:phi-guard:loa:2");
        c["amr"] = json!(["pwd", "mfa"]);
        c["auth_time"] = json!(NOW.sub_secs(600));
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(Algorithm::ES256, Some("demo-es256"), &c)
    }

    fn refusal(d: Decision) -> Refusal {
        match d {
            Decision::Deny(r) => r,
            Decision::Allow(g) => panic!("allowed: {g:?}"),
        }
    }

    fn grant(d: Decision) -> Grant {
        match d {
            Decision::Allow(g) => g,
            Decision::Deny(r) => panic!("denied: {r:?}"),
        }
    }

    #[test]
    fn step_up_on_routes_and_profiles() {
        let p = policy("clinician-api");
        let path = format!("/clinical/fhir/Condition?patient={KERMIT}");
        let g = grant(run(&p, "GET", &path, Some(&clinician(json!({})))));
        assert_eq!(g.response.minimize.as_ref().unwrap().name, "standard");
        // Stronger and fresher: the profile that releases more.
        let strong = clinician(json!({"acr": "urn:phi-guard:loa:3", "auth_time": NOW.sub_secs(60)}));
        assert_eq!(grant(run(&p, "GET", &path, Some(&strong))).response.minimize.unwrap().name, "full-record");
        let strong_but_old = clinician(json!({"acr": "urn:phi-guard:loa:3", "auth_time": NOW.sub_secs(901)}));
        assert_eq!(grant(run(&p, "GET", &path, Some(&strong_but_old))).response.minimize.unwrap().name, "standard");
        // The route's own requirement: 401 with an RFC 9470 challenge.
        for (patch, what) in [
            (json!({"acr": "urn:phi-guard:loa:1"}), "acr too low"),
            (json!({"acr": null}), "no acr"),
            (json!({"acr": "urn:other:gold"}), "unknown acr"),
            (json!({"amr": ["pwd"]}), "no mfa"),
            (json!({"auth_time": NOW.sub_secs(43_201)}), "stale"),
            (json!({"auth_time": null}), "no auth_time"),
        ] {
            let r = refusal(run(&p, "GET", &path, Some(&clinician(patch))));
            assert_eq!((r.reason, r.status), (DenyReason::InsufficientUserAuthentication, 401), "{what}");
            assert_eq!(r.challenge.acr_values.as_deref(), Some("urn:phi-guard:loa:2 urn:phi-guard:loa:3"));
            assert_eq!(r.challenge.max_age, Some(43_200));
            let www = r.reply().headers.into_iter().find(|(k, _)| *k == "www-authenticate").unwrap().1;
            assert!(www.contains("error=\"insufficient_user_authentication\"") && www.contains("max_age=\"43200\""), "{www}");
        }
        // Scopes are checked first: stepping up would not help.
        let r = refusal(run(&p, "GET", &format!("/clinical/fhir/Observation?patient={KERMIT}"), Some(&clinician(json!({"amr": ["pwd"]})))));
        assert_eq!(r.reason, DenyReason::InsufficientScope);
    }

    #[test]
    fn purpose_of_use_on_routes() {
        let p = policy("clinician-api");
        let path = format!("/clinical/fhir/Condition?patient={KERMIT}");
        assert_eq!(reason(&p, "GET", &path, Some(&clinician(json!({"purpose_of_use": null})))), Some(DenyReason::PurposeRequired));
        assert_eq!(reason(&p, "GET", &path, Some(&clinician(json!({"purpose_of_use": "HMARKT"})))), Some(DenyReason::PurposeNotAllowed));
        assert_eq!(reason(&p, "GET", &path, Some(&clinician(json!({"purpose_of_use": "SHOPPING"})))), Some(DenyReason::PurposeNotAllowed));
        assert_eq!(
            reason(&p, "GET", &path, Some(&clinician(json!({"purpose_of_use": ["TREAT", "HRESCH"]})))),
            Some(DenyReason::PurposeNotAllowed)
        );
        assert_eq!(reason(&p, "GET", &path, Some(&clinician(json!({"purpose_of_use": "HPAYMT"})))), None);
        // Routes without a purpose rule are unchanged.
        assert_eq!(reason(&p, "GET", "/fhir/Condition?code=x", Some(&clinician(json!({"purpose_of_use": null})))), None);
        // Research callers get only the safe-harbor view.
        let research = clinician(json!({"purpose_of_use": "HRESCH"}));
        assert_eq!(
            grant(run(&p, "GET", "/research/fhir/Condition?code=x", Some(&research))).response.minimize.unwrap().name,
            "research-deidentified"
        );
        assert_eq!(
            reason(&p, "GET", "/research/fhir/Condition?code=x", Some(&clinician(json!({"purpose_of_use": "PUBHLTH"})))),
            Some(DenyReason::NoMinimizationProfile)
        );
    }

    #[test]
    fn break_glass() {
        let p = policy("clinician-api");
        let path = format!("/clinical/fhir/Observation?patient={KERMIT}");
        let bg = |patch: Value| {
            let mut base = json!({"break_glass": true, "break_glass_reason": "unconscious-patient", "iat": NOW.sub_secs(60)});
            for (k, v) in patch.as_object().unwrap() {
                base[k] = v.clone();
            }
            clinician(base)
        };
        // The grant widens the scopes (Observation was not granted), picks the emergency
        // profile, and lifts the ETREAT-allowed restriction.
        assert_eq!(reason(&p, "GET", &path, Some(&clinician(json!({})))), Some(DenyReason::InsufficientScope));
        let g = grant(run(&p, "GET", &path, Some(&bg(json!({})))));
        assert_eq!(g.break_glass, Some(BreakGlass { reason: "unconscious-patient".into() }));
        assert_eq!(g.response.minimize.as_ref().unwrap().name, "emergency");
        assert!(g.response.restrict.is_none());
        assert!(g.principal.as_ref().unwrap().purpose.contains(&"ETREAT".to_owned()));
        // Invoked by purpose alone, same rules.
        let by_purpose = clinician(json!({"purpose_of_use": "ETREAT", "break_glass_reason": "life-threatening"}));
        assert!(grant(run(&p, "GET", &path, Some(&by_purpose))).break_glass.is_some());
        for (patch, what) in [
            (json!({"break_glass_reason": "John Smith collapsed"}), "free-text reason"),
            (json!({"break_glass_reason": null}), "no reason"),
            (json!({"iat": NOW.sub_secs(3601)}), "stale iat"),
            (json!({"auth_time": NOW.sub_secs(4000)}), "stale auth_time"),
        ] {
            let mut patch = patch;
            if patch.get("break_glass_reason").is_some_and(Value::is_null) {
                patch = json!({"break_glass_reason": "", "break_glass": true});
            }
            let r = refusal(run(&p, "GET", &path, Some(&bg(patch))));
            assert_eq!((r.reason, r.status), (DenyReason::BreakGlassInvalid, 403), "{what}");
        }
        assert_eq!(reason(&p, "GET", &path, Some(&clinician(json!({"purpose_of_use": "ETREAT"})))), Some(DenyReason::BreakGlassInvalid));
        // Never past verification, step-up or a patient-context token's compartment.
        assert_eq!(
            reason(&p, "GET", &path, Some(&bg(json!({"exp": NOW.sub_secs(100), "iat": NOW.sub_secs(200)})))),
            Some(DenyReason::Expired)
        );
        assert_eq!(reason(&p, "GET", &path, Some(&bg(json!({"amr": ["pwd"]})))), Some(DenyReason::InsufficientUserAuthentication));
        let mut c = claims();
        c["break_glass"] = json!(true);
        c["break_glass_reason"] = json!("life-threatening");
        c["scp"] = json!(["patient/Patient.rs"]);
        let patient_token = sign(Algorithm::RS256, Some("demo-rs256"), &c);
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p1", Some(&patient_token)), None, "granted inside the compartment");
        assert_eq!(reason(&p, "GET", "/fhir/Observation?patient=p2", Some(&patient_token)), Some(DenyReason::PatientMismatch));
        assert_eq!(reason(&p, "GET", "/fhir/Observation?code=x", Some(&patient_token)), Some(DenyReason::CompartmentEscape));
        let r = refusal(run(&p, "GET", "/fhir/Observation?patient=p2", Some(&patient_token)));
        assert!(r.break_glass.is_some(), "a refusal under break-glass still says so");
    }

    #[test]
    fn restrictions_are_planned_for_reads() {
        let p = policy("clinician-api");
        let t = clinician(json!({"scp": ["user/Condition.cruds", "user/Patient.rs"]}));
        let g = grant(run(&p, "GET", &format!("/clinical/fhir/Condition?patient={KERMIT}"), Some(&t)));
        let plan = g.response.restrict.as_ref().unwrap();
        assert_eq!(plan.binding[0].id, "rst-0001");
        assert!(g.response.inspects_body() && g.response.rewrites_body());
        // Every FHIR route when the restriction names none; reads only.
        let mut doc: Value =
            serde_json::from_slice(&std::fs::read(format!("{}/policies/clinician-api.json", env!("CARGO_MANIFEST_DIR"))).unwrap()).unwrap();
        doc["restrictions"][0].as_object_mut().unwrap().remove("routes");
        let all = crate::policy::compile(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert!(grant(run(&all, "GET", "/fhir/Condition/c1", Some(&t))).response.restrict.is_some());
        assert!(grant(run(&all, "POST", "/fhir/Condition", Some(&t))).response.restrict.is_none(), "writes return what the caller sent");
        assert!(grant(run(&p, "GET", "/fhir/Condition/c1", Some(&t))).response.restrict.is_none(), "the example scopes it to one route");
        assert!(grant(run(&p, "GET", &format!("/clinical/fhir/Condition/{KERMIT}"), Some(&t))).response.restrict.is_some());
        assert!(grant(run(&p, "GET", "/admin/reports/7", Some(&clinician(json!({"scp": ["admin.reports.read"]})))))
            .response
            .restrict
            .is_none());
        assert!(grant(run(
            &p,
            "GET",
            "/clinical/fhir/Condition/c1",
            Some(&clinician(json!({"purpose_of_use": "ETREAT", "break_glass_reason": "life-threatening"})))
        ))
        .response
        .restrict
        .is_none());
    }
}
