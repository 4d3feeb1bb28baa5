//! Opaque tokens validated by introspection (RFC 7662): the calls to the issuer's endpoint,
//! the answers shared by every worker, and the requests paused while a call runs.
//!
//! - **Warm path.** An active answer becomes a principal in the worker's verified-token cache
//!   (until the earlier of `exp` + skew and `cacheSeconds`), so a known token costs what a known
//!   JWT costs. Inactive answers are remembered for `negativeCacheSeconds`.
//! - **Across workers.** Each answer is also written to a slot of Envoy shared data (chosen by
//!   the token's SHA-256; the token itself is never stored): the hash, until when it holds, a
//!   MAC under a key derived from the audit key, and the answer's claims. Another worker reads
//!   it instead of calling again; a forged or stale slot is ignored.
//! - **One call per token.** Requests with the same unknown token wait for the one call in
//!   flight on their worker; each is resumed or answered when it returns, fails, or at the
//!   call's deadline (`timeoutMs`): never a hang, never an allow on failure (503
//!   `introspection_unavailable`).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::host::Host;
use super::oplog;
use super::tokens::constant_time_eq;
use crate::audit_key::AuditKey;
use crate::auth::introspect::{parse_response, Introspected};
use crate::decision::DenyReason;
use crate::shared::SharedStore;
use crate::time::UnixSeconds;

/// Shared-data key prefix of the introspection slots.
const SLOT_PREFIX: &str = "phi-guard.introspected.";
/// Most inactive answers one worker remembers.
const MAX_NEGATIVE: usize = 4096;
/// How long a failed call's verdict (503) is reused, so a burst with one token does not make
/// a burst of calls to a failing endpoint.
const FAILURE_SECONDS: u64 = 1;

/// One call in flight: its callout token, the token's hash, the issuer index.
struct Call {
    callout: u32,
    hash: [u8; 32],
    issuer: usize,
}

/// Introspection state of one worker.
#[derive(Default)]
pub struct Introspections {
    /// Calls asked for by streams, to be dispatched by the root on its next tick: a call
    /// dispatched from a stream would be answered to that stream, where waking the other
    /// waiters (local replies re-enter the SDK's stream table) is not safe.
    queued: Vec<(usize, [u8; 32], String)>,
    calls: Vec<Call>,
    /// Refusals established by introspection (inactive, failed, or claims refused), by token
    /// hash, until when.
    refused: HashMap<[u8; 32], (DenyReason, UnixSeconds)>,
}

/// An answer read from shared data or a call: active claims (valid until `until`), or a
/// refusal.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The token is active; its claims.
    Active(Map<String, Value>, UnixSeconds),
    /// The token is not active.
    Inactive(UnixSeconds),
}

impl Introspections {
    /// A refusal remembered for this token, if still current.
    pub fn refused(&mut self, hash: &[u8; 32], now: UnixSeconds) -> Option<DenyReason> {
        match self.refused.get(hash) {
            Some((reason, until)) if now < *until => Some(*reason),
            Some(_) => {
                self.refused.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remember a refusal for `seconds`.
    pub fn refuse(&mut self, hash: [u8; 32], reason: DenyReason, now: UnixSeconds, seconds: u64) {
        if seconds == 0 {
            return;
        }
        if self.refused.len() >= MAX_NEGATIVE {
            self.refused.retain(|_, (_, until)| now < *until);
            if self.refused.len() >= MAX_NEGATIVE {
                self.refused.clear();
            }
        }
        self.refused.insert(hash, (reason, now.add_secs(seconds)));
    }

    /// Whether a call for this token is queued or in flight on this worker.
    pub fn in_flight(&self, hash: &[u8; 32]) -> bool {
        self.calls.iter().any(|c| &c.hash == hash) || self.queued.iter().any(|(_, h, _)| h == hash)
    }

    /// Queue a call for the root to dispatch.
    pub fn queue(&mut self, issuer: usize, hash: [u8; 32], token: String) {
        self.queued.push((issuer, hash, token));
    }

    /// The queued calls, taken.
    pub fn take_queued(&mut self) -> Vec<(usize, [u8; 32], String)> {
        std::mem::take(&mut self.queued)
    }

    /// Whether nothing is queued or in flight.
    pub fn idle(&self) -> bool {
        self.queued.is_empty() && self.calls.is_empty()
    }

    /// Whether `callout` is one of this worker's introspection calls.
    pub fn in_flight_call(&self, callout: u32) -> bool {
        self.calls.iter().any(|c| c.callout == callout)
    }

    /// Record a dispatched call.
    pub fn started(&mut self, callout: u32, hash: [u8; 32], issuer: usize) {
        self.calls.push(Call { callout, hash, issuer });
    }

    /// The call a callout answer belongs to, removed: (token hash, issuer index).
    pub fn finished(&mut self, callout: u32) -> Option<([u8; 32], usize)> {
        let i = self.calls.iter().position(|c| c.callout == callout)?;
        let c = self.calls.swap_remove(i);
        Some((c.hash, c.issuer))
    }

    /// Forget every remembered refusal (a new policy); calls in flight are still answered.
    pub fn clear(&mut self) {
        self.refused.clear();
    }
}

/// The shared-data slots of introspection answers.
pub struct SharedAnswers<'a> {
    /// Number of slots (`tokenCache.sharedEntries`); 0 disables sharing.
    pub slots: usize,
    /// The audit key, whose derived key MACs each slot.
    pub key: &'a AuditKey,
    /// The issuer the answers are for (part of the MAC: an answer never moves to another issuer).
    pub issuer: &'a str,
}

impl SharedAnswers<'_> {
    fn slot(&self, hash: &[u8; 32]) -> String {
        let mut first = [0u8; 8];
        first.copy_from_slice(hash.get(..8).unwrap_or(&[0; 8]));
        format!("{SLOT_PREFIX}{}", u64::from_be_bytes(first) % self.slots.max(1) as u64)
    }

    fn mac(&self, hash: &[u8; 32], until: UnixSeconds, claims: &[u8]) -> [u8; 32] {
        self.key.attestation(&[b"introspection v1", self.issuer.as_bytes(), hash, &until.to_be_bytes(), claims])
    }

    /// The answer another worker (or this one) recorded for this token, if current and
    /// authentic.
    pub fn get(&self, store: &impl SharedStore, hash: &[u8; 32], now: UnixSeconds) -> Option<Answer> {
        if self.slots == 0 {
            return None;
        }
        let (Some(value), _) = store.get(&self.slot(hash)).ok()? else { return None };
        let (stored_hash, rest) = value.split_at_checked(32)?;
        let (until, rest) = rest.split_at_checked(8)?;
        let (mac, claims) = rest.split_at_checked(32)?;
        let until = UnixSeconds::from_be_bytes(until.try_into().ok()?);
        if stored_hash != hash || now >= until || !constant_time_eq(mac, &self.mac(hash, until, claims)) {
            return None;
        }
        if claims.is_empty() {
            return Some(Answer::Inactive(until));
        }
        match serde_json::from_slice(claims) {
            Ok(Value::Object(m)) => Some(Answer::Active(m, until)),
            _ => None,
        }
    }

    /// Record an answer for every worker (last writer wins the slot).
    pub fn put(&self, store: &impl SharedStore, hash: &[u8; 32], answer: &Answer) {
        if self.slots == 0 {
            return;
        }
        let (claims, until) = match answer {
            Answer::Active(m, until) => (serde_json::to_vec(m).unwrap_or_default(), *until),
            Answer::Inactive(until) => (Vec::new(), *until),
        };
        let mut value = Vec::with_capacity(72 + claims.len());
        value.extend_from_slice(hash);
        value.extend_from_slice(&until.to_be_bytes());
        value.extend_from_slice(&self.mac(hash, until, &claims));
        value.extend_from_slice(&claims);
        let _ = store.set(&self.slot(hash), &value, None);
    }
}

/// Read a callout's answer into an [`Answer`] valid from `now`: an active token for
/// `cache_seconds` (never past its `exp`), an inactive one for `negative_seconds`. `None`: the
/// endpoint failed.
pub fn read_answer(
    status: Option<u16>,
    body: &[u8],
    issuer: &str,
    cache_seconds: u64,
    negative_seconds: u64,
    now: UnixSeconds,
) -> Option<Answer> {
    match parse_response(status?, body, issuer)? {
        Introspected::Inactive => Some(Answer::Inactive(now.add_secs(negative_seconds))),
        Introspected::Active(claims) => {
            let exp = claims.get("exp").and_then(Value::as_u64).map(UnixSeconds::new);
            let until = now.add_secs(cache_seconds);
            Some(Answer::Active(claims, exp.map_or(until, |e| e.min(until))))
        }
    }
}

/// Log a failed call (never the token).
pub fn log_failure(host: &impl Host, issuer: &str, status: Option<u16>) {
    oplog::warn("token introspection failed; refusing with 503")
        .field("issuer", issuer)
        .field_opt("status", status)
        .field("error", if status.is_some() { "unexpected status or unreadable body" } else { "no answer (timeout or connection failure)" })
        .emit(host);
}

/// How long a failed call's 503 is reused.
pub const fn failure_seconds() -> u64 {
    FAILURE_SECONDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{audit_key, MemoryStore, ISS, NOW};
    use serde_json::json;

    mod through_the_filter {
        use std::rc::Rc;

        use serde_json::{json, Value};

        use crate::runtime::testing::{policy, MockHost, Worker, NOW_MS};
        use crate::runtime::Action;
        use crate::testing::{MemoryStore, AUD, NOW};

        const OPAQUE: &str = "2YotnFZFEjr1zCsicMWpAA";
        const SECRET_ENV: &str = "PHI_GUARD_INTROSPECTION_SECRET";

        /// The demo policy with a second issuer whose opaque tokens are introspected on cluster
        /// `as`.
        fn config(cache: u64) -> Value {
            policy(|p| {
                p["issuers"].as_array_mut().unwrap().push(json!({
                    "issuer": "https://as.example", "audiences": [AUD],
                    "introspection": {"cluster": "as", "path": "/introspect", "clientId": "phi-guard",
                                      "clientSecretEnv": SECRET_ENV, "cacheSeconds": cache, "negativeCacheSeconds": 5,
                                      "timeoutMs": 500}
                }));
            })
        }

        fn worker(store: &Rc<MemoryStore>, cache: u64) -> Worker {
            let host = MockHost::sharing(Rc::clone(store));
            host.now_ms.set(NOW_MS);
            host.env.borrow_mut().insert(SECRET_ENV.into(), "s3cret".into());
            let mut w = Worker::on(host);
            assert!(w.configure(&config(cache)), "{:?}", w.host().logs.borrow());
            w
        }

        fn active(patch: Value) -> Vec<u8> {
            let mut a = json!({"active": true, "iss": "https://as.example", "aud": AUD, "sub": "u1", "client_id": "app",
                               "scope": "patient/Patient.rs", "patient": "p1", "exp": NOW.add_secs(3600).as_secs()});
            for (k, v) in patch.as_object().unwrap() {
                a[k] = v.clone();
            }
            serde_json::to_vec(&a).unwrap()
        }

        #[test]
        fn an_opaque_token_waits_for_one_call_then_is_served_from_the_cache() {
            let store = Rc::new(MemoryStore::default());
            let mut a = worker(&store, 60);
            let first = a.request("GET", "/fhir/Patient/p1", Some(OPAQUE));
            let second = a.request("GET", "/fhir/Patient/p1", Some(OPAQUE));
            assert_eq!((first.action, second.action), (Action::Pause, Action::Pause));
            assert!(a.calls_to("as").is_empty(), "the root dispatches the call");
            assert_eq!(a.host().tick_period_ms.get(), Some(5), "on its next tick, soon");
            a.tick();
            assert_eq!(a.host().tick_period_ms.get(), Some(5), "while the call runs");
            let calls = a.calls_to("as");
            assert_eq!(calls.len(), 1, "one call for both requests");
            let call = &calls[0];
            assert_eq!(call.header(":method"), Some("POST"));
            assert_eq!(call.header("authorization"), Some("Basic cGhpLWd1YXJkOnMzY3JldA=="));
            assert_eq!(call.body.as_deref(), Some(&b"token=2YotnFZFEjr1zCsicMWpAA&token_type_hint=access_token"[..]));
            assert_eq!(call.timeout_ms, 500);
            a.answer(call.token, 200, &[("content-type", "application/json")], &active(json!({})));
            assert_eq!((a.seen(&first).resumed, a.seen(&second).resumed), (1, 1), "both resumed");
            a.tick();
            assert_eq!(a.host().tick_period_ms.get(), Some(crate::runtime::TICK_MS), "back to the usual period");
            // Cached: no new call, here or on another worker (shared data).
            assert_eq!(a.request("GET", "/fhir/Patient/p1", Some(OPAQUE)).action, Action::Continue);
            let b = worker(&store, 60);
            assert_eq!(b.request("GET", "/fhir/Patient/p1", Some(OPAQUE)).action, Action::Continue);
            assert_eq!(a.calls_to("as").len() + b.calls_to("as").len(), 1);
            assert_eq!(a.host().stat("phi_guard.introspection_calls_total"), 1);
            // The answer's claims bind as a JWT's would: another patient is refused.
            let ex = b.request("GET", "/fhir/Patient/p2", Some(OPAQUE));
            assert_eq!(b.seen(&ex).reply.unwrap().reason().as_deref(), Some("patient_mismatch"));
        }

        #[test]
        fn inactive_failing_slow_or_lying_endpoints_never_allow() {
            let store = Rc::new(MemoryStore::default());
            let mut w = worker(&store, 60);
            let cases: Vec<(u16, Vec<u8>, u16, &str)> = vec![
                (200, br#"{"active": false}"#.to_vec(), 401, "token_inactive"),
                (503, br#"{"active": true}"#.to_vec(), 503, "introspection_unavailable"),
                (200, b"<html>".to_vec(), 503, "introspection_unavailable"),
                (200, active(json!({"aud": "https://other.example"})), 401, "bad_audience"),
                (200, active(json!({"iss": "https://idp.phi-guard.test"})), 401, "unknown_issuer"),
                (200, active(json!({"exp": NOW.sub_secs(1).as_secs()})), 401, "token_expired"),
            ];
            for (n, (status, body, want, reason)) in cases.into_iter().enumerate() {
                let token = format!("opaque-{n}");
                let ex = w.request("GET", "/fhir/Patient/p1", Some(&token));
                assert_eq!(ex.action, Action::Pause);
                w.tick();
                let call = w.calls_to("as").last().cloned().unwrap();
                w.answer(call.token, status, &[], &body);
                let reply = w.seen(&ex).reply.unwrap_or_else(|| panic!("case {n} answered"));
                assert_eq!((reply.status, reply.reason().as_deref()), (want, Some(reason)), "case {n}");
            }
            // No answer at all: the deadline answers 503.
            let ex = w.request("GET", "/fhir/Patient/p1", Some("opaque-slow"));
            assert_eq!(ex.action, Action::Pause);
            w.tick();
            w.advance(800);
            w.tick();
            assert_eq!(w.seen(&ex).reply.unwrap().status, 503);
            assert!(w.host().stat("phi_guard.introspection_failures_total") >= 2);
        }

        #[test]
        fn a_revoked_token_is_refused_once_the_cache_period_ends() {
            let store = Rc::new(MemoryStore::default());
            let mut w = worker(&store, 2);
            let ex = w.request("GET", "/fhir/Patient/p1", Some(OPAQUE));
            w.tick();
            let call = w.calls_to("as")[0].clone();
            w.answer(call.token, 200, &[], &active(json!({})));
            assert_eq!(w.seen(&ex).resumed, 1);
            w.advance(1_000);
            assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(OPAQUE)).action, Action::Continue, "cached");
            w.advance(1_500);
            let ex = w.request("GET", "/fhir/Patient/p1", Some(OPAQUE));
            assert_eq!(ex.action, Action::Pause, "asked again");
            w.tick();
            let call = w.calls_to("as")[1].clone();
            w.answer(call.token, 200, &[], br#"{"active": false}"#);
            assert_eq!(w.seen(&ex).reply.unwrap().reason().as_deref(), Some("token_inactive"));
        }

        #[test]
        fn a_jwt_of_a_keyed_issuer_is_still_verified_locally() {
            let store = Rc::new(MemoryStore::default());
            let w = worker(&store, 60);
            let t = crate::testing::token(json!({}));
            assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&t)).action, Action::Continue);
            assert!(w.calls_to("as").is_empty());
        }

        #[test]
        fn a_policy_without_the_client_secret_is_refused() {
            let host = MockHost::new();
            host.now_ms.set(NOW_MS);
            let mut w = Worker::on(host);
            assert!(!w.configure(&config(60)));
            w.host().assert_log(
                "error",
                "introspection client secret not set; configuration refused",
                json!({"variable": "PHI_GUARD_INTROSPECTION_SECRET", "issuer": "https://as.example"}),
            );
        }
    }

    #[test]
    fn answers_are_shared_authentic_and_bounded_in_time() {
        let store = MemoryStore::default();
        let key = audit_key();
        let shared = SharedAnswers { slots: 8, key: &key, issuer: ISS };
        let claims = json!({"active": true, "sub": "u1"}).as_object().unwrap().clone();
        let hash = [3u8; 32];
        assert_eq!(shared.get(&store, &hash, NOW), None);
        shared.put(&store, &hash, &Answer::Active(claims.clone(), NOW.add_secs(30)));
        assert_eq!(shared.get(&store, &hash, NOW), Some(Answer::Active(claims.clone(), NOW.add_secs(30))));
        assert_eq!(shared.get(&store, &hash, NOW.add_secs(30)), None, "expired");
        assert_eq!(shared.get(&store, &[4u8; 32], NOW), None, "another token");
        // Another issuer's slots, or another audit key: not authentic.
        assert_eq!(SharedAnswers { issuer: "https://other", ..shared }.get(&store, &hash, NOW), None);
        let other = AuditKey::from_secret(b"another-secret-0123456789abcdefgh").unwrap();
        assert_eq!(SharedAnswers { key: &other, ..shared }.get(&store, &hash, NOW), None);
        // A tampered answer (the patient changed) fails its MAC.
        let slot = shared.slot(&hash);
        let (v, _) = store.get(&slot).unwrap();
        let tampered = String::from_utf8_lossy(&v.unwrap()).replace("u1", "u2").into_bytes();
        store.set(&slot, &tampered, None).unwrap();
        assert_eq!(shared.get(&store, &hash, NOW), None);
        shared.put(&store, &hash, &Answer::Inactive(NOW.add_secs(5)));
        assert_eq!(shared.get(&store, &hash, NOW), Some(Answer::Inactive(NOW.add_secs(5))));
    }

    #[test]
    fn an_answer_is_reused_no_longer_than_the_token_lives() {
        let body = |exp: u64| serde_json::to_vec(&json!({"active": true, "exp": exp})).unwrap();
        let read = |b: &[u8]| read_answer(Some(200), b, ISS, 60, 10, NOW);
        assert!(matches!(read(&body(NOW.add_secs(20).as_secs())), Some(Answer::Active(_, u)) if u == NOW.add_secs(20)));
        assert!(matches!(read(&body(NOW.add_secs(600).as_secs())), Some(Answer::Active(_, u)) if u == NOW.add_secs(60)));
        assert_eq!(read(br#"{"active": false}"#), Some(Answer::Inactive(NOW.add_secs(10))));
        assert_eq!(read_answer(None, b"", ISS, 60, 10, NOW), None);
        assert_eq!(read_answer(Some(503), br#"{"active": true}"#, ISS, 60, 10, NOW), None);
    }

    #[test]
    fn remembered_refusals_expire_and_stay_bounded() {
        let mut i = Introspections::default();
        i.refuse([1; 32], DenyReason::TokenInactive, NOW, 10);
        assert_eq!(i.refused(&[1; 32], NOW.add_secs(9)), Some(DenyReason::TokenInactive));
        assert_eq!(i.refused(&[1; 32], NOW.add_secs(10)), None);
        i.refuse([2; 32], DenyReason::TokenInactive, NOW, 0);
        assert_eq!(i.refused(&[2; 32], NOW), None, "0 s: not remembered");
        for n in 0..(MAX_NEGATIVE + 10) {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(n as u64).to_be_bytes());
            i.refuse(h, DenyReason::TokenInactive, NOW, 10);
        }
        assert!(i.refused.len() <= MAX_NEGATIVE);
    }
}
