//! State shared by the root context and every stream of one VM (one Envoy worker), and the
//! request handling both of them run: decide, then answer locally, forward, or wait for keys.

use std::cell::RefCell;
use std::rc::Rc;

use super::audit::AuditSink;
use super::host::{HeaderMap, Host};
use super::introspection::{failure_seconds, log_failure, read_answer, Answer, Introspections, SharedAnswers};
use super::metrics::Metrics;
use super::oplog;
use super::preflight::{PendingWrite, PendingWrites};
use super::tokens::{key_set_fingerprint, SharedTokens};
use crate::audit::{AuditContext, AuditEvent, RequestMeta};
use crate::audit_key::AuditKey;
use crate::auth::remote::KeyState;
use crate::auth::{Principal, TokenCache};
use crate::decision::engine::BodyCheck;
use crate::decision::preflight::Preflight;
use crate::decision::reply::{challenge_reply, Challenge};
use crate::decision::{decide_with, Decision, DenyReason, Refusal, Request, ResponsePhase};
use crate::policy::audit::AuditConfig;
use crate::policy::Policy;
use crate::policy::PreflightCredential;
use crate::shared::{claim_lease, remember_once, FirstUse, SharedStore};
use crate::time::{UnixMillis, UnixSeconds};

/// How much longer than a call's own deadline (introspection, pre-flight read) a request waits
/// for it: Envoy's timeout of the call comes first.
const INTROSPECTION_GRACE_MS: u64 = 250;
/// The root's tick period while introspection calls or pre-flight reads are queued.
const INTROSPECTION_TICK_MS: u64 = 5;
/// Shared-data key prefix of the DPoP replay record's slots.
const DPOP_REPLAY_PREFIX: &str = "phi-guard.dpop.";

/// The policy in force on this VM, its verified-token cache, and remote key state.
pub struct Active {
    /// Compiled policy; remote issuers' keys are filled in as they are fetched.
    pub policy: Rc<Policy>,
    /// Verified tokens for this policy and key set (cleared whenever either changes).
    pub cache: TokenCache,
    /// Per issuer (same index as `policy.issuers`): fetched-key state for remote issuers.
    pub keys: Vec<KeyState>,
    /// Per issuer: an unknown `kid` asked for a refetch.
    pub refetch_wanted: Vec<bool>,
    /// Attestations of verified signatures shared with the other workers, for this policy
    /// and key set (`None`: `tokenCache.sharedEntries` is 0).
    pub shared: Option<SharedTokens>,
}

impl Active {
    /// A new active policy with an empty cache and no fetched keys.
    pub fn new(policy: Policy) -> Self {
        let n = policy.issuers.len();
        Active {
            cache: TokenCache::new(policy.token_cache_entries),
            shared: shared_tokens(&policy),
            policy: Rc::new(policy),
            keys: vec![KeyState::default(); n],
            refetch_wanted: vec![false; n],
        }
    }

    /// Install keys for issuer `i` (or drop them with an empty list); the cache is cleared, so a
    /// removed key stops verifying immediately.
    pub fn set_keys(&mut self, i: usize, keys: Vec<crate::auth::VerifyKey>) {
        let policy = Rc::make_mut(&mut self.policy);
        if let Some(issuer) = policy.issuers.get_mut(i) {
            issuer.keys = keys;
        }
        self.cache = TokenCache::new(self.policy.token_cache_entries);
        self.shared = shared_tokens(&self.policy);
    }
}

/// The shared attestation slots of a policy's current key set.
fn shared_tokens(policy: &Policy) -> Option<SharedTokens> {
    SharedTokens::new(policy.token_cache_shared, key_set_fingerprint(&policy.issuers, policy.limits.max_token_bytes))
}

/// Per-stream state the decision sets up for the later phases.
#[derive(Default)]
pub struct StreamState {
    /// The response phase of an allowed request (`None` until allowed, or when answered
    /// locally).
    pub response: Option<ResponsePhase>,
    /// Request-body check still owed before the body is released upstream.
    pub body: Option<BodyCheck>,
    /// Add security headers to the response.
    pub security_headers: bool,
    /// The stream was answered locally: later phases leave it alone.
    pub replied: bool,
    /// The allowed request's audit event, finished and emitted when the stream ends.
    pub audit: Option<AuditEvent>,
    /// Why the request body was refused after the request was allowed.
    pub failure: Option<DenyReason>,
    /// When the request was allowed: the response phase's "now" (ages in minimization), so
    /// the response costs no second clock read.
    pub decided_at: UnixMillis,
    /// The allowed request's route is a FHIR base (refusals after the decision answer with an
    /// `OperationOutcome`).
    pub fhir_route: bool,
}

/// A request's decision inputs, owned so a paused request can be decided again later.
#[derive(Debug, Clone, Default)]
pub struct OwnedRequest {
    /// `:method`.
    pub method: String,
    /// `:path`.
    pub path: String,
    /// Every `Authorization` value.
    pub authorization: Vec<String>,
    /// Number of request headers.
    pub header_count: usize,
    /// Total size of header names and values.
    pub header_bytes: usize,
    /// `content-length`, if sent and numeric.
    pub content_length: Option<u64>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `if-match`.
    pub if_match: Option<String>,
    /// Client address (`source.address`).
    pub source: Option<String>,
    /// Listener address (`destination.address`).
    pub destination: Option<String>,
    /// `:scheme`.
    pub scheme: String,
    /// `:authority`.
    pub authority: String,
    /// Every `DPoP` value.
    pub dpop: Vec<String>,
    /// SHA-256 (hex) of the client certificate verified on this connection
    /// (`connection.sha256_peer_certificate_digest`).
    pub peer_certificate_sha256: Option<String>,
    /// A header the decision reads (or a header name) is not UTF-8, or the headers could not
    /// be read: refused as `invalid_header` (the fields above then hold a lossy reading, for
    /// the audit event only).
    pub invalid_header: bool,
}

impl OwnedRequest {
    /// The decision inputs from raw request headers (name, value bytes). Values of other
    /// headers are opaque: only counted and measured, so a Latin-1 byte in an unrelated header
    /// changes nothing.
    pub fn from_headers(headers: &[(Vec<u8>, Vec<u8>)]) -> Self {
        let mut req = OwnedRequest::default();
        for (name, value) in headers {
            req.header_bytes = req.header_bytes.saturating_add(name.len()).saturating_add(value.len());
            let Ok(name) = std::str::from_utf8(name) else {
                req.invalid_header = true;
                continue;
            };
            if !name.starts_with(':') {
                req.header_count += 1;
            }
            let read = matches!(
                name,
                ":method" | ":path" | ":scheme" | ":authority" | "authorization" | "dpop" | "x-request-id" | "content-length" | "if-match"
            );
            if !read {
                continue;
            }
            let text = match std::str::from_utf8(value) {
                Ok(t) => t.to_owned(),
                Err(_) => {
                    req.invalid_header = true;
                    String::from_utf8_lossy(value).into_owned()
                }
            };
            match name {
                ":method" => req.method = text,
                ":path" => req.path = text,
                "authorization" => req.authorization.push(text),
                ":scheme" => req.scheme = text,
                ":authority" => req.authority = text,
                "dpop" => req.dpop.push(text),
                "if-match" => req.if_match = Some(text),
                "x-request-id" => req.request_id = Some(text),
                _ => req.content_length = text.trim().parse().ok(),
            }
        }
        req
    }

    fn meta(&self) -> RequestMeta<'_> {
        RequestMeta {
            request_id: self.request_id.as_deref(),
            source: self.source.as_deref(),
            destination: self.destination.as_deref(),
            method: &self.method,
            path: &self.path,
        }
    }
}

/// A request paused until an issuer's keys arrive, or its token's introspection answers.
pub struct Waiter {
    /// The stream's context id.
    pub context_id: u32,
    /// Issuer index it waits for.
    pub issuer: usize,
    /// The SHA-256 of the token whose introspection it waits for (`None`: it waits for keys).
    pub token: Option<[u8; 32]>,
    /// Give up (503 `keys_unavailable`, or the current verdict) at this time, ms.
    pub deadline_ms: UnixMillis,
    /// What to decide again.
    pub request: OwnedRequest,
    /// The stream's state, to arm checks if the request is then allowed.
    pub state: Rc<RefCell<StreamState>>,
}

/// Everything one VM shares, and the host it runs on.
pub struct Vm<H> {
    /// The proxy.
    pub host: H,
    /// Active policy, if any compiled.
    pub active: RefCell<Option<Active>>,
    /// Stats.
    pub metrics: Metrics,
    /// Requests waiting for keys.
    pub waiters: RefCell<Vec<Waiter>>,
    /// Audit chain and sinks (set up by the first accepted configuration).
    pub audit: RefCell<Option<AuditSink>>,
    /// Key for minimization `hash` transforms, from `PHI_GUARD_HMAC_KEY`.
    pub hmac_key: RefCell<Option<Vec<u8>>>,
    /// Token introspection: calls in flight, remembered refusals.
    pub introspections: RefCell<Introspections>,
    /// Patient-context writes waiting for their pre-flight reads.
    pub writes: RefCell<PendingWrites>,
    /// The root's tick runs at the short period while calls are queued or in flight.
    pub fast_tick: std::cell::Cell<bool>,
}

/// How a request phase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Forwarded upstream.
    Forwarded,
    /// Answered locally.
    Replied,
    /// Paused until the issuer's keys arrive.
    Wait(usize),
    /// Paused until the introspection of this token (its SHA-256) at this issuer answers.
    Introspecting(usize, [u8; 32]),
    /// Allowed, to be paused until the pre-flight read of its write answers.
    Preflight(Box<Preflight>),
}

impl<H: Host> Vm<H> {
    /// A VM with no policy on `host`.
    pub fn new(host: H) -> Self {
        Vm {
            active: RefCell::new(None),
            metrics: Metrics::define(&host),
            host,
            waiters: RefCell::new(Vec::new()),
            audit: RefCell::new(None),
            hmac_key: RefCell::new(None),
            introspections: RefCell::new(Introspections::default()),
            writes: RefCell::new(PendingWrites::default()),
            fast_tick: std::cell::Cell::new(false),
        }
    }

    /// Seal and ship an audit event under the active policy's audit settings.
    pub fn emit(&self, event: &AuditEvent) {
        let policy = self.active.borrow().as_ref().map(|a| Rc::clone(&a.policy));
        let default = AuditConfig::default();
        let config = policy.as_ref().map_or(&default, |p| &p.audit);
        if let Some(sink) = self.audit.borrow_mut().as_mut() {
            sink.emit(event, config, &self.host, &self.metrics);
        }
    }

    /// Build the event for a decision (request phase).
    fn event(
        &self,
        decision: &Decision,
        req: &OwnedRequest,
        policy: Option<&crate::policy::Policy>,
        now_ms: UnixMillis,
    ) -> Option<AuditEvent> {
        let audit = self.audit.borrow();
        let key = &audit.as_ref()?.key;
        let ctx = match policy {
            Some(p) => AuditContext::new(p, key, now_ms),
            None => AuditContext::without_policy(key, now_ms),
        };
        Some(AuditEvent::from_decision(decision, &req.meta(), &ctx))
    }

    /// Finish and emit a stream's pending event (at the end of the stream).
    pub fn finish(&self, state: &RefCell<StreamState>) {
        // Envoy may call `on_log` from inside a hostcall of this stream (a reset while a body is
        // replaced): never panic on a busy state; `on_done` finishes the event later.
        let Ok(mut st) = state.try_borrow_mut() else {
            oplog::warn("stream state busy at the end of the stream; audit deferred to on_done").emit(&self.host);
            return;
        };
        let Some(event) = st.audit.take() else { return };
        let event = match (&st.response, st.failure) {
            // The request body was refused: the upstream never answered.
            (phase, Some(failure)) => event.with_response(phase.as_ref().map_or(0, ResponsePhase::status), Vec::new(), Some(failure)),
            (Some(phase), None) => phase.finish(event),
            (None, None) => event.with_response(0, Vec::new(), None),
        };
        drop(st);
        self.emit(&event);
    }

    /// Decide a request and act on it. `may_wait` is false when re-deciding a waiter whose
    /// wait is over.
    pub fn handle(&self, req: &OwnedRequest, state: &RefCell<StreamState>, now_ms: UnixMillis, may_wait: bool) -> Handled {
        let now_secs = now_ms.to_seconds();
        let auth: Vec<&str> = req.authorization.iter().map(String::as_str).collect();
        let dpop: Vec<&str> = req.dpop.iter().map(String::as_str).collect();
        let request = Request {
            method: &req.method,
            path: &req.path,
            authorization: &auth,
            header_count: req.header_count,
            header_bytes: req.header_bytes,
            content_length: req.content_length,
            scheme: &req.scheme,
            authority: &req.authority,
            dpop: &dpop,
            peer_certificate_sha256: req.peer_certificate_sha256.as_deref(),
        };
        // An opaque token no worker knows yet: (issuer, its hash, the token) to introspect.
        let mut introspect: Option<(usize, [u8; 32], String)> = None;
        let (decision, policy, wait_for) = {
            let mut guard = self.active.borrow_mut();
            let Some(active) = guard.as_mut() else {
                drop(guard);
                let refusal = refusal(DenyReason::NoPolicy, 503);
                if let Some(ev) = self.event(&Decision::Deny(refusal), req, None, now_ms) {
                    self.emit(&ev);
                }
                self.reply(state, 503, DenyReason::NoPolicy, false, &Challenge::default(), &[]);
                return Handled::Replied;
            };
            let before = active.cache.stats();
            let policy = Rc::clone(&active.policy);
            let mut verified = (0u64, 0u64);
            let d = if req.invalid_header {
                Decision::Deny(refusal(DenyReason::InvalidHeader, DenyReason::InvalidHeader.status()))
            } else {
                let audit = self.audit.borrow();
                let key = audit.as_ref().map(|a| &a.key);
                let (cache, shared) = (&mut active.cache, active.shared.as_ref());
                let mut introspections = self.introspections.borrow_mut();
                let replay_slots = policy.dpop.replay_slots;
                let mut run = |request: &Request<'_>| {
                    decide_with(
                        &policy,
                        request,
                        now_secs,
                        |token| {
                            let hash = TokenCache::key(token);
                            if let Some(p) = cache.get_by_key(&hash, now_secs) {
                                return Ok(p);
                            }
                            match (policy.introspecting_issuer(token), key) {
                                // An opaque token is bounded like a JWT before it is sent anywhere.
                                (Some(_), _) if token.len() > policy.limits.max_token_bytes => Err(DenyReason::TokenTooLarge),
                                (Some(i), Some(key)) => {
                                    let known = introspected(&self.host, cache, &mut introspections, key, &policy, i, &hash, now_secs);
                                    if known.is_none() {
                                        introspect = Some((i, hash, token.to_owned()));
                                    }
                                    known.unwrap_or(Err(DenyReason::IntrospectionUnavailable))
                                }
                                (Some(_), None) => Err(DenyReason::IntrospectionUnavailable),
                                (None, _) => authenticate(&self.host, cache, shared.zip(key), &policy, token, now_secs, &mut verified),
                            }
                        },
                        |proof| match remember_once(
                            &self.host,
                            DPOP_REPLAY_PREFIX,
                            replay_slots,
                            &proof.replay_key,
                            proof.remember_until,
                            now_secs,
                        ) {
                            FirstUse::First => Ok(()),
                            FirstUse::Seen => Err(DenyReason::DpopProofReplayed),
                            FirstUse::Unknown => Err(DenyReason::ReplayCheckUnavailable),
                        },
                    )
                };
                let d = run(&request);
                // The client certificate is read only for a certificate-bound token (one hostcall
                // fewer on every other request); the binding is checked before any DPoP proof is
                // remembered, so deciding again replays nothing.
                match (&d, request.peer_certificate_sha256) {
                    (Decision::Deny(r), None) if r.reason == DenyReason::CertificateMismatch => {
                        match self.host.property(&["connection", "sha256_peer_certificate_digest"]).ok().flatten() {
                            Some(cert) => {
                                let cert = String::from_utf8_lossy(&cert);
                                run(&Request { peer_certificate_sha256: Some(&cert), ..request })
                            }
                            None => d,
                        }
                    }
                    _ => d,
                }
            };
            let after = active.cache.stats();
            self.metrics.cache(&self.host, after.0.saturating_sub(before.0), after.1.saturating_sub(before.1));
            self.metrics.verified(&self.host, verified.0, verified.1);
            let wait_for = match &d {
                Decision::Deny(Refusal { reason, awaiting_issuer: Some(i), .. }) if may_wait => {
                    remote_issuer_to_wait_for(&self.host, active, *i, *reason, now_secs)
                }
                _ => None,
            };
            (d, policy, wait_for)
        };
        if let Some(i) = wait_for {
            return Handled::Wait(i);
        }
        // An opaque token this worker knows nothing of yet: ask its issuer, and decide again
        // when the answer (or the deadline) comes.
        if let (Some((i, hash, token)), Decision::Deny(r), true) = (introspect, &decision, may_wait) {
            if r.reason == DenyReason::IntrospectionUnavailable && self.start_introspection(i, hash, &token) {
                return Handled::Introspecting(i, hash);
            }
        }
        // With `auditRequired`, a request whose event cannot be delivered is not served.
        let audit_down = self.audit.borrow().as_ref().is_none_or(|a| a.unavailable(&policy.audit));
        let decision = match decision {
            Decision::Allow(g) if audit_down && policy.audit.audit_required => {
                oplog::error("audit sink unavailable and auditRequired: refusing")
                    .field("reason", DenyReason::AuditUnavailable.code())
                    .emit(&self.host);
                Decision::Deny(Refusal {
                    route_id: Some(g.route_id),
                    fhir_route: g.fhir_route,
                    principal: g.principal,
                    fhir: g.fhir,
                    ..refusal(DenyReason::AuditUnavailable, 503)
                })
            }
            d => d,
        };
        let shadow = policy.shadow;
        let refuse = |status: u16, reason: DenyReason, fhir: bool, challenge: &Challenge, extra: &[(&str, String)]| {
            if shadow {
                oplog::warn("shadow mode: would refuse").field("status", status).field("reason", reason.code()).emit(&self.host);
                self.metrics.shadow_denied(&self.host, reason);
                Handled::Forwarded
            } else {
                self.reply(state, status, reason, fhir, challenge, extra);
                Handled::Replied
            }
        };
        let event = self.event(&decision, req, Some(&policy), now_ms);
        let grant = match decision {
            Decision::Deny(r) => {
                if let Some(ev) = &event {
                    self.emit(ev);
                }
                return refuse(r.status, r.reason, r.fhir_route, &r.challenge, &[]);
            }
            Decision::Allow(grant) => grant,
        };
        if let Some(principal) = &grant.principal {
            for limit in policy.rate_limits.iter().filter(|l| l.applies_to(&grant.route_id)) {
                if let Err(retry) = crate::shared::take_from_bucket(&self.host, limit, &limit.key(principal), now_ms) {
                    self.metrics.rate_limited(&self.host, &limit.id);
                    let denied = Decision::Deny(Refusal {
                        route_id: Some(grant.route_id.clone()),
                        fhir_route: grant.fhir_route,
                        principal: grant.principal.clone(),
                        fhir: grant.fhir.clone(),
                        ..refusal(DenyReason::RateLimited, 429)
                    });
                    if let Some(ev) = self.event(&denied, req, Some(&policy), now_ms) {
                        self.emit(&ev);
                    }
                    return refuse(
                        429,
                        DenyReason::RateLimited,
                        grant.fhir_route,
                        &Challenge::default(),
                        &[("retry-after", retry.to_string())],
                    );
                }
            }
        }
        self.metrics.allowed(&self.host);
        let inspects = grant.response.inspects_body();
        let preflight = grant.preflight;
        {
            let mut st = state.borrow_mut();
            st.audit = event;
            st.decided_at = now_ms;
            st.fhir_route = grant.fhir_route;
            st.security_headers = grant.security_headers;
            st.body = grant.body;
            st.response = Some(ResponsePhase::new(grant.response, grant.fhir_route, shadow));
        }
        if inspects {
            // The upstream must answer in a form we can read: identity encoding.
            let _ = self.host.remove_header(HeaderMap::RequestHeaders, "accept-encoding");
        }
        match preflight {
            // Shadow mode changes nothing on the data path: the write goes as it came.
            Some(preflight) if !shadow => Handled::Preflight(preflight),
            _ => Handled::Forwarded,
        }
    }

    /// Queue the pre-flight read of an allowed write; the root dispatches it on its next tick
    /// (made immediate) and the write waits for the answer. `false`: answered now (no
    /// credential for the read, no tick).
    pub fn queue_write(
        &self,
        context_id: u32,
        preflight: Preflight,
        req: &OwnedRequest,
        state: Rc<RefCell<StreamState>>,
        now_ms: UnixMillis,
    ) -> bool {
        let authorization = match &preflight.settings.credential {
            PreflightCredential::Caller => req.authorization.first().cloned(),
            PreflightCredential::ServiceToken(env) => self.host.env_var(env).filter(|t| !t.is_empty()).map(|t| format!("Bearer {t}")),
        };
        let Some(authorization) = authorization else {
            oplog::error("no credential for a pre-flight read; write refused")
                .field_opt(
                    "variable",
                    match &preflight.settings.credential {
                        PreflightCredential::ServiceToken(env) => Some(env.as_str()),
                        PreflightCredential::Caller => None,
                    },
                )
                .emit(&self.host);
            self.refuse_write(&state, DenyReason::WriteCheckUnavailable);
            return false;
        };
        if !self.tick_soon() {
            self.refuse_write(&state, DenyReason::WriteCheckUnavailable);
            return false;
        }
        let deadline_ms = now_ms.add_ms(preflight.settings.timeout_ms + INTROSPECTION_GRACE_MS);
        let authority = preflight.settings.authority.clone().unwrap_or_else(|| req.authority.clone());
        let client_if_match = req.if_match.clone();
        self.writes.borrow_mut().queued.push(PendingWrite {
            context_id,
            preflight,
            authorization,
            authority,
            client_if_match,
            state,
            deadline_ms,
        });
        true
    }

    /// Run the root's tick at the short period (the calls it dispatches are waited for).
    fn tick_soon(&self) -> bool {
        if self.fast_tick.get() {
            return true;
        }
        let ok = self.host.set_tick_period(INTROSPECTION_TICK_MS).is_ok();
        self.fast_tick.set(ok);
        ok
    }

    /// Refuse an allowed write after the decision (its event records the failure).
    fn refuse_write(&self, state: &RefCell<StreamState>, reason: DenyReason) {
        let fhir = {
            let mut st = state.borrow_mut();
            st.failure = Some(reason);
            st.fhir_route
        };
        self.reply(state, reason.status(), reason, fhir, &Challenge::default(), &[]);
    }

    /// Dispatch the queued pre-flight reads (root context), and answer the writes whose read
    /// is past its deadline.
    pub fn dispatch_writes(&self, now_ms: UnixMillis) {
        let queued = std::mem::take(&mut self.writes.borrow_mut().queued);
        for w in queued {
            let p = &w.preflight;
            let headers = [
                (":method", "GET"),
                (":path", p.path.as_str()),
                (":authority", w.authority.as_str()),
                ("accept", "application/fhir+json"),
                ("authorization", w.authorization.as_str()),
            ];
            match self.host.dispatch(&p.settings.cluster, &headers, None, p.settings.timeout_ms) {
                Ok(callout) => self.writes.borrow_mut().calls.push((callout, w)),
                Err(e) => {
                    oplog::warn("pre-flight read not dispatched")
                        .field("cluster", &p.settings.cluster)
                        .field("error", e.to_string())
                        .emit(&self.host);
                    self.conclude_write(w, Err(DenyReason::WriteCheckUnavailable));
                }
            }
        }
        let expired = self.writes.borrow_mut().expired(now_ms);
        for w in expired {
            self.conclude_write(w, Err(DenyReason::WriteCheckUnavailable));
        }
    }

    /// A callout answer, if it is a pre-flight read's: judge it and let the write go (pinned
    /// with `If-Match`) or refuse it. `false`: not a pre-flight read.
    pub fn write_checked(&self, callout: u32, status: Option<u16>, etag: Option<&str>, body: &[u8]) -> bool {
        let Some(w) = self.writes.borrow_mut().finished(callout) else { return false };
        let verdict = w.preflight.judge(status, etag, body, w.client_if_match.as_deref());
        self.conclude_write(w, verdict);
        true
    }

    fn conclude_write(&self, w: PendingWrite, verdict: Result<String, DenyReason>) {
        // Answered meanwhile (its body refused, say): nothing more to do.
        if w.state.borrow().replied || self.host.set_effective_context(w.context_id).is_err() {
            return;
        }
        match verdict {
            Ok(if_match) => {
                if self.host.set_header(HeaderMap::RequestHeaders, "if-match", if_match.as_bytes()).is_err() {
                    self.refuse_write(&w.state, DenyReason::WriteCheckUnavailable);
                    return;
                }
                let _ = self.host.resume_request();
            }
            Err(reason) => {
                oplog::warn("write refused after its pre-flight read").field("reason", reason.code()).emit(&self.host);
                self.refuse_write(&w.state, reason);
            }
        }
    }

    /// Answer the current stream locally.
    pub fn reply(
        &self,
        state: &RefCell<StreamState>,
        status: u16,
        reason: DenyReason,
        fhir: bool,
        challenge: &Challenge,
        extra: &[(&str, String)],
    ) {
        let reply = challenge_reply(reason, status, fhir, challenge);
        let mut headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        state.borrow_mut().replied = true;
        if self.host.send_response(reply.status, &headers, reply.body.as_bytes()).is_err() {
            oplog::error("could not send a local reply").field("status", status).field("reason", reason.code()).emit(&self.host);
        }
        self.metrics.denied(&self.host, reason);
    }

    /// Decide again every waiter of `issuer`'s keys (keys arrived or the fetch failed), or every
    /// waiter past its deadline when `issuer` is `None`.
    pub fn wake(&self, issuer: Option<usize>, now_ms: UnixMillis) {
        self.wake_where(now_ms, |w| issuer.map_or(now_ms >= w.deadline_ms, |i| w.token.is_none() && w.issuer == i));
    }

    /// Decide again every waiter of this token's introspection (it answered or failed).
    pub fn wake_token(&self, hash: &[u8; 32], now_ms: UnixMillis) {
        self.wake_where(now_ms, |w| w.token.as_ref() == Some(hash));
    }

    fn wake_where(&self, now_ms: UnixMillis, ready: impl Fn(&Waiter) -> bool) {
        let ready: Vec<Waiter> = {
            let mut waiters = self.waiters.borrow_mut();
            let (ready, keep): (Vec<Waiter>, Vec<Waiter>) = waiters.drain(..).partition(|w| ready(w));
            *waiters = keep;
            ready
        };
        for w in ready {
            if self.host.set_effective_context(w.context_id).is_err() {
                continue;
            }
            match self.handle(&w.request, &w.state, now_ms, false) {
                Handled::Forwarded => {
                    let _ = self.host.resume_request();
                }
                Handled::Preflight(p) => {
                    self.queue_write(w.context_id, *p, &w.request, Rc::clone(&w.state), now_ms);
                }
                Handled::Replied | Handled::Wait(_) | Handled::Introspecting(..) => {}
            }
        }
    }

    /// Pause a request until the keys of `issuer` arrive, at most the issuer's `waitMs`; or, with
    /// `token`, until that token's introspection answers, at most its `timeoutMs` (and a little
    /// more, so Envoy's own timeout of the call comes first).
    pub fn wait(
        &self,
        context_id: u32,
        issuer: usize,
        token: Option<[u8; 32]>,
        request: OwnedRequest,
        state: Rc<RefCell<StreamState>>,
        now_ms: UnixMillis,
    ) {
        let wait = self
            .active
            .borrow()
            .as_ref()
            .and_then(|a| {
                let i = a.policy.issuers.get(issuer)?;
                match token {
                    Some(_) => i.introspection.as_ref().map(|x| x.timeout_ms + INTROSPECTION_GRACE_MS),
                    None => i.remote.as_ref().map(|r| r.wait_ms),
                }
            })
            .unwrap_or(0);
        self.waiters.borrow_mut().push(Waiter { context_id, issuer, token, deadline_ms: now_ms.add_ms(wait), request, state });
    }

    /// Ask issuer `i` about `token` unless a call for it is already queued or in flight on this
    /// worker. The root dispatches it on its next tick, which is made immediate (a few ms) while
    /// calls are queued.
    fn start_introspection(&self, i: usize, hash: [u8; 32], token: &str) -> bool {
        let mut introspections = self.introspections.borrow_mut();
        if !introspections.in_flight(&hash) {
            introspections.queue(i, hash, token.to_owned());
            drop(introspections);
            if !self.tick_soon() {
                oplog::error("cannot schedule a token introspection").emit(&self.host);
                return false;
            }
        }
        true
    }

    /// Dispatch the queued introspection calls (from the root context, so their answers come
    /// back to it). A call that cannot be made answers its waiters now, with 503.
    pub fn dispatch_introspections(&self, now_ms: UnixMillis) {
        let queued = self.introspections.borrow_mut().take_queued();
        let policy = self.active.borrow().as_ref().map(|a| Rc::clone(&a.policy));
        let now = now_ms.to_seconds();
        for (i, hash, token) in queued {
            let endpoint = policy.as_ref().and_then(|p| p.issuers.get(i)).and_then(|x| x.introspection.as_ref());
            let dispatched = endpoint.is_some_and(|endpoint| {
                let Some(secret) = self.host.env_var(&endpoint.client_secret_env) else {
                    oplog::error("introspection client secret not set; tokens cannot be introspected")
                        .field("variable", &endpoint.client_secret_env)
                        .emit(&self.host);
                    return false;
                };
                let (headers, body) = endpoint.request(&token, &secret);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                match self.host.dispatch(&endpoint.cluster, &headers, Some(&body), endpoint.timeout_ms) {
                    Ok(callout) => {
                        self.metrics.introspection(&self.host);
                        self.introspections.borrow_mut().started(callout, hash, i);
                        true
                    }
                    Err(e) => {
                        oplog::warn("token introspection not dispatched")
                            .field("cluster", &endpoint.cluster)
                            .field("error", e.to_string())
                            .emit(&self.host);
                        false
                    }
                }
            });
            if !dispatched {
                self.metrics.introspection_failed(&self.host);
                self.introspections.borrow_mut().refuse(hash, DenyReason::IntrospectionUnavailable, now, failure_seconds());
                self.wake_token(&hash, now_ms);
            }
        }
    }

    /// A callout answer, if it is an introspection call's: adopt the answer (this worker's
    /// cache and shared data) or remember the failure, then decide again every request waiting
    /// for it. `false`: not an introspection call.
    pub fn introspection_answer(&self, callout: u32, status: Option<u16>, body: &[u8], now_ms: UnixMillis) -> bool {
        let Some((hash, i)) = self.introspections.borrow_mut().finished(callout) else { return false };
        let now = now_ms.to_seconds();
        {
            let mut guard = self.active.borrow_mut();
            let audit = self.audit.borrow();
            if let (Some(active), Some(sink)) = (guard.as_mut(), audit.as_ref()) {
                let policy = Rc::clone(&active.policy);
                // The policy may have changed while the call ran: the issuer must still be the
                // one that was asked.
                if let Some(endpoint) = policy.issuers.get(i).and_then(|x| x.introspection.as_ref().map(|e| (x, e))) {
                    let (issuer, endpoint) = endpoint;
                    let mut introspections = self.introspections.borrow_mut();
                    match read_answer(status, body, &issuer.issuer, endpoint.cache_seconds, endpoint.negative_cache_seconds, now) {
                        Some(answer) => {
                            let shared = SharedAnswers { slots: policy.token_cache_shared, key: &sink.key, issuer: &issuer.issuer };
                            shared.put(&self.host, &hash, &answer);
                            let _ = adopt(&mut active.cache, &mut introspections, &policy, i, &hash, &answer, now);
                        }
                        None => {
                            log_failure(&self.host, &issuer.issuer, status);
                            self.metrics.introspection_failed(&self.host);
                            introspections.refuse(hash, DenyReason::IntrospectionUnavailable, now, failure_seconds());
                        }
                    }
                }
            }
        }
        self.wake_token(&hash, now_ms);
        true
    }

    /// Forget a stream that ended while waiting.
    pub fn forget(&self, context_id: u32) {
        self.writes.borrow_mut().forget(context_id);
        self.waiters.borrow_mut().retain(|w| w.context_id != context_id);
    }
}

/// A refusal with no context yet (the caller fills in what it knows).
fn refusal(reason: DenyReason, status: u16) -> Refusal {
    Refusal {
        reason,
        status,
        route_id: None,
        fhir_route: false,
        principal: None,
        fhir: None,
        challenge: Challenge::default(),
        break_glass: None,
        awaiting_issuer: None,
    }
}

/// For a refusal caused by missing or unknown remote keys: the issuer to wait for, if a fetch
/// will be attempted (first load, or an unknown `kid` within the refetch rate limit).
fn remote_issuer_to_wait_for(
    store: &impl SharedStore,
    active: &mut Active,
    i: usize,
    reason: DenyReason,
    now: UnixSeconds,
) -> Option<usize> {
    let issuer = active.policy.issuers.get(i)?;
    let (iss, remote) = (issuer.issuer.clone(), issuer.remote.clone()?);
    if remote.wait_ms == 0 {
        return None;
    }
    match reason {
        DenyReason::KeysUnavailable => Some(i),
        DenyReason::UnknownKey => {
            // Rate-limited across every worker, so a burst of forged kids costs at most one
            // fetch per interval.
            if claim_lease(store, &format!("phi-guard/jwks-kid/{iss}"), now, remote.refetch_interval) {
                if let Some(w) = active.refetch_wanted.get_mut(i) {
                    *w = true;
                }
                Some(i)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// What this worker or another already learned of an opaque token by introspection: a refusal
/// it remembers, or an answer in shared data (adopted into the token cache). `None`: nothing
/// yet, a call is needed.
#[allow(clippy::too_many_arguments)]
fn introspected(
    store: &impl SharedStore,
    cache: &mut TokenCache,
    introspections: &mut Introspections,
    key: &AuditKey,
    policy: &Policy,
    i: usize,
    hash: &[u8; 32],
    now: UnixSeconds,
) -> Option<Result<Rc<Principal>, DenyReason>> {
    if let Some(reason) = introspections.refused(hash, now) {
        return Some(Err(reason));
    }
    let issuer = policy.issuers.get(i)?;
    let shared = SharedAnswers { slots: policy.token_cache_shared, key, issuer: &issuer.issuer };
    let answer = shared.get(store, hash, now)?;
    Some(adopt(cache, introspections, policy, i, hash, &answer, now))
}

/// Turn an introspection answer into the token's principal (cached until the answer expires)
/// or a refusal (remembered as long).
pub fn adopt(
    cache: &mut TokenCache,
    introspections: &mut Introspections,
    policy: &Policy,
    i: usize,
    hash: &[u8; 32],
    answer: &Answer,
    now: UnixSeconds,
) -> Result<Rc<Principal>, DenyReason> {
    let Some(issuer) = policy.issuers.get(i) else { return Err(DenyReason::IntrospectionUnavailable) };
    // A refusal is remembered at least as long as the requests waiting for this answer need to
    // find it when they are decided again.
    let keep = |until: &UnixSeconds| until.secs_since(now).max(failure_seconds());
    match answer {
        Answer::Inactive(until) => {
            introspections.refuse(*hash, DenyReason::TokenInactive, now, keep(until));
            Err(DenyReason::TokenInactive)
        }
        Answer::Active(claims, until) => match crate::auth::introspect::principal(claims, issuer, now) {
            // The answer holds no longer than the token's own `exp`, skew or not.
            Ok(_) if *until <= now => {
                introspections.refuse(*hash, DenyReason::Expired, now, failure_seconds());
                Err(DenyReason::Expired)
            }
            Ok(mut p) => {
                p.valid_until = p.valid_until.min(*until);
                let p = Rc::new(p);
                cache.insert_by_key(*hash, Rc::clone(&p), now);
                Ok(p)
            }
            Err(reason) => {
                introspections.refuse(*hash, reason, now, keep(until));
                Err(reason)
            }
        },
    }
}

/// The principal of a JWT the worker has not cached: if another worker
/// attested its signature under this key set, every check but the signature; else verified in
/// full (and attested for the others). `counts` gets (signatures verified, attestations used).
fn authenticate(
    store: &impl SharedStore,
    cache: &mut TokenCache,
    shared: Option<(&SharedTokens, &AuditKey)>,
    policy: &Policy,
    token: &str,
    now: UnixSeconds,
    counts: &mut (u64, u64),
) -> Result<Rc<Principal>, DenyReason> {
    // (The caller looked in this worker's cache already.)
    let hash = TokenCache::key(token);
    let max = policy.limits.max_token_bytes;
    let principal = match shared {
        Some((s, key)) if s.attested(store, key, &hash) => {
            counts.1 += 1;
            crate::auth::verify_attested(token, &policy.issuers, max, now)?
        }
        _ => {
            counts.0 += 1;
            let p = crate::auth::verify(token, &policy.issuers, max, now)?;
            if let Some((s, key)) = shared {
                s.record(store, key, &hash);
            }
            p
        }
    };
    let principal = Rc::new(principal);
    cache.insert_by_key(hash, Rc::clone(&principal), now);
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{policy, token, Worker, NOW_MS};
    use super::super::Action;

    fn headers(method: &str, path: &str, auth: &str, dpop: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut h = vec![
            (b":method".to_vec(), method.as_bytes().to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
            (b":scheme".to_vec(), b"https".to_vec()),
            (b":authority".to_vec(), b"fhir.phi-guard.test".to_vec()),
            (b"authorization".to_vec(), auth.as_bytes().to_vec()),
        ];
        if let Some(p) = dpop {
            h.push((b"dpop".to_vec(), p.as_bytes().to_vec()));
        }
        h
    }

    #[test]
    fn a_dpop_proof_is_accepted_once_across_every_worker() {
        use crate::testing::dpop::{proof_for, ProofKey};
        let store = std::rc::Rc::new(crate::testing::MemoryStore::default());
        let a = Worker::sharing(&store, &policy(|_| {}), NOW_MS);
        let b = Worker::sharing(&store, &policy(|_| {}), NOW_MS);
        let t = token(json!({"cnf": {"jkt": ProofKey::Es256.thumbprint()}}));
        let auth = format!("DPoP {t}");
        let now = NOW_MS.to_seconds();
        let p1 = proof_for(ProofKey::Es256, "GET", "/fhir/Patient/p1", &t, "jti-1", now);
        assert_eq!(a.send(Some(headers("GET", "/fhir/Patient/p1", &auth, Some(&p1)))).action, Action::Continue);
        // The same proof again, on this worker or another: refused as a replay.
        for w in [&a, &b] {
            let ex = w.send(Some(headers("GET", "/fhir/Patient/p1", &auth, Some(&p1))));
            let reply = w.seen(&ex).reply.unwrap();
            assert_eq!((reply.status, reply.reason().as_deref()), (401, Some("dpop_proof_replayed")));
            let dpop_challenge = reply.headers.iter().find(|(k, v)| k == "www-authenticate" && v.starts_with("DPoP")).unwrap();
            assert!(dpop_challenge.1.contains("error=\"invalid_dpop_proof\""), "{dpop_challenge:?}");
        }
        // A fresh proof is fine on the other worker; the bound token as a bearer token is not.
        let p2 = proof_for(ProofKey::Es256, "GET", "/fhir/Patient/p1", &t, "jti-2", now);
        assert_eq!(b.send(Some(headers("GET", "/fhir/Patient/p1", &auth, Some(&p2)))).action, Action::Continue);
        let ex = b.send(Some(headers("GET", "/fhir/Patient/p1", &format!("Bearer {t}"), None)));
        assert_eq!(b.seen(&ex).reply.unwrap().reason().as_deref(), Some("dpop_required"));
        // The replay record failing: refused, never skipped.
        store.fail.set(true);
        let p3 = proof_for(ProofKey::Es256, "GET", "/fhir/Patient/p1", &t, "jti-3", now);
        let ex = a.send(Some(headers("GET", "/fhir/Patient/p1", &auth, Some(&p3))));
        assert_eq!(a.seen(&ex).reply.unwrap().status, 503);
    }

    #[test]
    fn a_certificate_bound_token_needs_the_connections_certificate() {
        use crate::auth::sender::certificate_thumbprint;
        let cert = "3ab1f1e0d4c7b6a5f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7";
        let w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        let t = token(json!({"cnf": {"x5t#S256": certificate_thumbprint(cert).unwrap()}}));
        let auth = format!("Bearer {t}");
        // No client certificate on the connection.
        let ex = w.send(Some(headers("GET", "/fhir/Patient/p1", &auth, None)));
        assert_eq!(w.seen(&ex).reply.unwrap().reason().as_deref(), Some("certificate_mismatch"));
        // With it (Envoy's connection attribute); another certificate is refused.
        for (digest, allowed) in [(cert.to_owned(), true), (cert.replace('3', "4"), false)] {
            let (id, stream) = w.open(Some(headers("GET", "/fhir/Patient/p1", &auth, None)));
            w.host().edit(id, |s| {
                s.properties.insert("connection\0sha256_peer_certificate_digest".into(), digest.clone().into_bytes());
            });
            w.host().enter(id);
            let action = stream.on_request_headers();
            assert_eq!(action == Action::Continue, allowed, "{digest}");
        }
    }

    #[test]
    fn a_token_verified_by_one_worker_is_not_verified_again_by_the_others() {
        let store = std::rc::Rc::new(crate::testing::MemoryStore::default());
        let a = Worker::sharing(&store, &policy(|_| {}), NOW_MS);
        let b = Worker::sharing(&store, &policy(|_| {}), NOW_MS);
        let t = token(json!({}));
        for w in [&a, &a, &b, &b] {
            assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&t)).action, Action::Continue);
        }
        let counts = |w: &Worker| {
            (w.host().stat("phi_guard.token_signatures_verified_total"), w.host().stat("phi_guard.token_attestations_used_total"))
        };
        assert_eq!((counts(&a), counts(&b)), ((1, 0), (0, 1)), "one signature verification for the Envoy");
        // The attestation vouches for the signature only: an expired token is refused on b too.
        let old = token(json!({"exp": crate::testing::NOW.sub_secs(120).as_secs(), "jti": "old"}));
        assert_ne!(a.request("GET", "/fhir/Patient/p1", Some(&old)).action, Action::Continue);
        let ex = b.request("GET", "/fhir/Patient/p1", Some(&old));
        assert_eq!((ex.action, b.seen(&ex).reply.map(|r| r.status)), (Action::Pause, Some(401)));
        // A tampered token (another patient, the same signature) shares no attestation.
        let (head, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged_claims = serde_json::to_vec(&json!({"iss": crate::testing::ISS, "patient": "p2"})).unwrap();
        use base64::Engine as _;
        let forged = format!("{head}.{}.{sig}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged_claims));
        let ex = b.request("GET", "/fhir/Patient/p2", Some(&forged));
        assert_eq!(b.seen(&ex).reply.map(|r| r.status), Some(401));
        assert_eq!(counts(&b).0, 2, "b verified the forged token itself (and refused it)");
        // With sharedEntries 0 each worker verifies for itself.
        let alone = std::rc::Rc::new(crate::testing::MemoryStore::default());
        let off = policy(|p| p["tokenCache"] = json!({"sharedEntries": 0}));
        let (c, d) = (Worker::sharing(&alone, &off, NOW_MS), Worker::sharing(&alone, &off, NOW_MS));
        c.request("GET", "/fhir/Patient/p1", Some(&t));
        d.request("GET", "/fhir/Patient/p1", Some(&t));
        assert_eq!((counts(&c), counts(&d)), ((1, 0), (1, 0)));
        assert!(alone.keys().iter().all(|k| !k.starts_with("phi-guard.verified.")));
    }

    fn limited(burst: u64) -> serde_json::Value {
        policy(|p| p["rateLimits"] = json!([{"id": "per-subject", "by": "subject", "requestsPerMinute": 60, "burst": burst}]))
    }

    #[test]
    fn rate_limits_draw_from_shared_buckets_and_survive_lost_races() {
        let w = Worker::with_policy(&limited(2), NOW_MS);
        let t = token(json!({}));
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&t)).action, Action::Continue);
        // Another worker wrote the bucket three times between our read and our write: retried.
        w.host().store.lose_races.set(3);
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&t)).action, Action::Continue);
        assert_eq!(w.host().store.lose_races.get(), 0);
        // The bucket is empty: 429 with Retry-After, audited and counted.
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&t));
        let reply = w.seen(&ex).reply.unwrap();
        assert_eq!((ex.action, reply.status, reply.header("retry-after")), (Action::Pause, 429, Some("1")));
        assert_eq!(w.host().stat("phi_guard.rate_limited_total.limit.per-subject"), 1);
        assert_eq!(w.host().stat("phi_guard.requests_denied_total.reason.rate_limited"), 1);
        let events = w.host().audit_events();
        assert_eq!((events.len(), events[0]["reason"].as_str()), (1, Some("rate_limited")), "only the refusal so far");
        // A second later a token is back; other callers (public routes) never touch a bucket.
        w.host().now_ms.set(NOW_MS.add_ms(1000));
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&t)).action, Action::Continue);
        assert_eq!(w.request("GET", "/healthz", None).action, Action::Continue);
    }

    #[test]
    fn persistent_contention_or_a_failing_store_refuses() {
        let w = Worker::with_policy(&limited(100), NOW_MS);
        let t = token(json!({}));
        // The first request creates the bucket (an unconditional write: a missing key has no
        // version to compare); later writes are conditional.
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&t)).action, Action::Continue);
        w.host().store.lose_races.set(1000);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&t));
        assert_eq!(w.seen(&ex).reply.map(|r| r.status), Some(429), "never an unlimited pass");
        w.host().store.lose_races.set(0);
        w.host().store.fail.set(true);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&t));
        assert_eq!(w.seen(&ex).reply.map(|r| r.status), Some(429));
    }
}
