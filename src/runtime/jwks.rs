//! Remote JWKS fetching: one fetch per issuer across all workers (lease in shared data), keys
//! shared through shared data, refresh before expiry, unknown-kid refetch, staleness limit.

use super::host::{header, random_u32, Buffer, Host};
use super::oplog;
use super::vm::Vm;
use crate::auth::discovery::jwks_path;
use crate::auth::remote::{parse_remote_jwks, RemoteJwks};
use crate::policy::source::backoff;
use crate::shared::{claim_lease, set_time};
use crate::time::{UnixMillis, UnixSeconds};

/// What a fetch in flight brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The issuer's OpenID discovery document (then its keys).
    Document,
    /// The keys.
    Keys,
}

/// Fetches in flight on this worker: (call token, issuer index, step).
#[derive(Default)]
pub struct Jwks {
    in_flight: Vec<(u32, usize, Step)>,
    failures: Vec<u32>,
}

fn keys_key(issuer: &str) -> String {
    format!("phi-guard/jwks/{issuer}")
}

fn lease_key(issuer: &str) -> String {
    format!("phi-guard/jwks-lease/{issuer}")
}

impl Jwks {
    /// Adopt newer shared keys, drop stale ones, start due fetches, and expire waiters.
    pub fn tick<H: Host>(&mut self, vm: &Vm<H>, now_ms: UnixMillis) {
        let now = now_ms.to_seconds();
        let mut woke = Vec::new();
        let mut fetch = Vec::new();
        {
            let mut guard = vm.active.borrow_mut();
            let Some(active) = guard.as_mut() else { return };
            let issuers: Vec<_> =
                active.policy.issuers.iter().map(|i| (i.issuer.clone(), i.remote.clone(), i.algorithms.clone())).collect();
            self.failures.resize(issuers.len(), 0);
            for (i, (iss, remote, algs)) in issuers.into_iter().enumerate() {
                let Some(remote) = remote else { continue };
                // Keys another worker fetched: 8-byte fetch time, then the JWKS bytes.
                if let Ok((Some(v), _)) = vm.host.get(&keys_key(&iss)) {
                    let (at, body) = v.split_at(8.min(v.len()));
                    let at = <[u8; 8]>::try_from(at).map_or(UnixSeconds::default(), UnixSeconds::from_be_bytes);
                    let newer = active.keys.get(i).is_none_or(|k| k.fetched_at().is_none_or(|f| at > f));
                    if newer {
                        if let Ok(keys) = parse_remote_jwks(body, &algs) {
                            if let Some(state) = active.keys.get_mut(i) {
                                state.update(keys.clone(), at);
                            }
                            active.set_keys(i, keys);
                            woke.push(i);
                        }
                    }
                }
                let Some(state) = active.keys.get(i) else { continue };
                let usable = state.usable(&remote, now).is_some();
                let refresh_due = state.refresh_due(&remote, now);
                let has_keys = active.policy.issuers.get(i).is_some_and(|x| !x.keys.is_empty());
                if has_keys && !usable {
                    oplog::error("issuer keys stale; refusing its tokens")
                        .field("issuer", &iss)
                        .field("maxStalenessS", remote.max_staleness)
                        .emit(&vm.host);
                    active.set_keys(i, Vec::new());
                    vm.metrics.keys_dropped(&vm.host);
                }
                let wanted = active.refetch_wanted.get(i).copied().unwrap_or(false);
                let due = refresh_due || wanted;
                let busy = self.in_flight.iter().any(|(_, x, _)| *x == i);
                if due && !busy {
                    if let Some(w) = active.refetch_wanted.get_mut(i) {
                        *w = false;
                    }
                    // An unknown-kid refetch may take the lease early; a periodic one waits for it.
                    let period = remote.refetch_interval.min(remote.refresh);
                    if wanted || claim_lease(&vm.host, &lease_key(&iss), now, period) {
                        fetch.push((i, iss, remote));
                    }
                }
            }
        }
        for (i, iss, remote) in fetch {
            // With discovery, every refresh reads the document first: a moved `jwks_uri` is
            // followed like a rotated key.
            let (path, step) = match &remote.discovery {
                Some(document) => (document.as_str(), Step::Document),
                None => (remote.path.as_str(), Step::Keys),
            };
            if !self.dispatch(vm, i, &iss, &remote, path, step, now) {
                woke.push(i);
            }
        }
        for i in woke {
            vm.wake(Some(i), now_ms);
        }
        vm.wake(None, now_ms);
    }

    /// Fetch `path` on the issuer's cluster; `false` (and a recorded failure) if it cannot be
    /// dispatched.
    #[allow(clippy::too_many_arguments)]
    fn dispatch<H: Host>(
        &mut self,
        vm: &Vm<H>,
        i: usize,
        iss: &str,
        remote: &RemoteJwks,
        path: &str,
        step: Step,
        now: UnixSeconds,
    ) -> bool {
        let headers = [(":method", "GET"), (":path", path), (":authority", remote.authority.as_str()), ("accept", "application/json")];
        match vm.host.dispatch(&remote.cluster, &headers, None, remote.timeout_ms) {
            Ok(token) => {
                vm.metrics.jwks_fetch(&vm.host);
                self.in_flight.push((token, i, step));
                true
            }
            Err(e) => {
                oplog::warn("JWKS fetch not dispatched").field("issuer", iss).field("error", e.to_string()).emit(&vm.host);
                self.failed(vm, i, iss, now, remote.refresh);
                false
            }
        }
    }

    fn failed<H: Host>(&mut self, vm: &Vm<H>, i: usize, iss: &str, now: UnixSeconds, max: u64) {
        let n = self.failures.get(i).copied().unwrap_or(0).saturating_add(1);
        if let Some(f) = self.failures.get_mut(i) {
            *f = n;
        }
        let wait = backoff(n, max.min(60), random_u32(&vm.host));
        // The lease now holds the time of the next attempt: the backoff, for every worker.
        set_time(&vm.host, &lease_key(iss), now.add_secs(wait));
        vm.metrics.jwks_fetch_failed(&vm.host);
        oplog::warn("JWKS fetch failed").field("issuer", iss).field("failures", n).field("retryInS", wait).emit(&vm.host);
    }

    /// Handle an HTTP call response; false if it was not ours.
    pub fn on_response<H: Host>(
        &mut self,
        vm: &Vm<H>,
        token: u32,
        body_size: usize,
        headers: &[(String, String)],
        now_ms: UnixMillis,
    ) -> bool {
        let Some(pos) = self.in_flight.iter().position(|(t, _, _)| *t == token) else { return false };
        let (_, i, step) = self.in_flight.swap_remove(pos);
        let now = now_ms.to_seconds();
        let issuer = vm
            .active
            .borrow()
            .as_ref()
            .and_then(|a| a.policy.issuers.get(i).map(|x| (x.issuer.clone(), x.algorithms.clone(), x.remote.clone())));
        let Some((iss, algs, Some(remote))) = issuer else { return true };
        let body = vm.host.buffer(Buffer::CallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        if step == Step::Document {
            let found = match header(headers, ":status") {
                Some("200") => jwks_path(&body, &iss).map_err(|e| e.to_string()),
                other => Err(format!("status {}", other.unwrap_or("none (timeout or reset)"))),
            };
            match found {
                Ok(path) => {
                    if self.dispatch(vm, i, &iss, &remote, &path, Step::Keys, now) {
                        return true;
                    }
                }
                Err(e) => {
                    oplog::warn("OpenID discovery not usable; keeping the last good keys")
                        .field("issuer", &iss)
                        .field("error", e)
                        .emit(&vm.host);
                    self.failed(vm, i, &iss, now, remote.refresh);
                }
            }
            vm.wake(Some(i), now_ms);
            return true;
        }
        let parsed = match header(headers, ":status") {
            Some("200") => parse_remote_jwks(&body, &algs).map_err(|e| e.to_string()),
            other => Err(format!("status {}", other.unwrap_or("none (timeout or reset)"))),
        };
        match parsed {
            Ok(keys) => {
                if let Some(f) = self.failures.get_mut(i) {
                    *f = 0;
                }
                let mut stored = now.to_be_bytes().to_vec();
                stored.extend_from_slice(&body);
                let _ = vm.host.set(&keys_key(&iss), &stored, None);
                if let Some(active) = vm.active.borrow_mut().as_mut() {
                    if let Some(state) = active.keys.get_mut(i) {
                        state.update(keys.clone(), now);
                    }
                    active.set_keys(i, keys);
                }
                oplog::info("JWKS loaded").field("issuer", &iss).emit(&vm.host);
            }
            Err(e) => {
                oplog::warn("JWKS not usable; keeping the last good keys").field("issuer", &iss).field("error", e).emit(&vm.host);
                self.failed(vm, i, &iss, now, remote.refresh);
            }
        }
        // Keys arrived or the attempt failed: waiters are decided again now, either way.
        vm.wake(Some(i), now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use serde_json::{json, Value};

    use super::super::testing::{demo_jwks, remote_policy, token, token_with_kid, Worker, NOW_MS};
    use super::super::{Action, TICK_MS};
    use crate::shared::SharedStore;
    use crate::testing::MemoryStore;

    const KEYS: &str = "phi-guard/jwks/https://idp.phi-guard.test";

    fn idp(extra: Value) -> Value {
        let mut uri = json!({"cluster": "idp", "path": "/jwks", "waitMs": 1000});
        if let (Some(uri), Some(extra)) = (uri.as_object_mut(), extra.as_object()) {
            uri.extend(extra.clone());
        }
        remote_policy(uri)
    }

    /// Tick, and answer the one JWKS fetch it dispatched.
    fn fetch(w: &mut Worker, status: u16, body: &[u8]) {
        let before = w.calls_to("idp").len();
        w.tick();
        let calls = w.calls_to("idp");
        assert_eq!(calls.len(), before + 1, "one fetch dispatched");
        w.answer(calls[before].token, status, &[], body);
    }

    fn status(w: &Worker, ex: &super::super::testing::Exchange) -> Option<u16> {
        w.seen(ex).reply.map(|r| r.status)
    }

    #[test]
    fn a_request_waits_for_the_first_keys_and_goes_on_when_they_arrive() {
        let mut w = Worker::with_policy(&idp(json!({})), NOW_MS);
        assert_eq!(w.host().tick_period_ms.get(), Some(TICK_MS), "remote keys need ticks");
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        assert_eq!((ex.action, status(&w, &ex)), (Action::Pause, None));
        w.tick();
        let call = w.calls_to("idp").pop().unwrap();
        assert_eq!((call.header(":method"), call.header(":path"), call.header(":authority")), (Some("GET"), Some("/jwks"), Some("idp")));
        assert_eq!(call.timeout_ms, 2000);
        assert_eq!(w.host().stat("phi_guard.jwks_fetches_total"), 1);
        w.answer(call.token, 200, &[], &demo_jwks());
        let seen = w.seen(&ex);
        assert_eq!((seen.resumed, seen.reply), (1, None), "decided again and resumed");
        // The keys are shared with the other workers, stamped with the fetch time.
        let (stored, _) = w.host().store.get(KEYS).unwrap();
        assert_eq!(stored.unwrap().get(..8), Some(&NOW_MS.to_seconds().to_be_bytes()[..]));
        w.respond(&ex, 200, &[("content-type", "application/fhir+json")], br#"{"resourceType":"Patient","id":"p1"}"#);
        assert_eq!(w.host().audit_events()[0]["reason"], "allowed");
        // Later requests do not wait.
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&token(json!({})))).action, Action::Continue);
    }

    fn discovering() -> Value {
        super::super::testing::policy(|p| {
            if let Some(issuer) = p["issuers"][0].as_object_mut() {
                issuer.remove("jwks");
                issuer.insert("discovery".into(), json!({"cluster": "idp", "waitMs": 1000}));
            }
        })
    }

    #[test]
    fn openid_discovery_finds_the_keys_and_is_trusted_only_for_its_issuer() {
        let doc = |issuer: &str, jwks_uri: &str| serde_json::to_vec(&json!({"issuer": issuer, "jwks_uri": jwks_uri})).unwrap();
        let mut w = Worker::with_policy(&discovering(), NOW_MS);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        w.tick();
        let call = w.calls_to("idp").pop().unwrap();
        assert_eq!(
            (call.header(":path"), call.header(":authority")),
            (Some("/.well-known/openid-configuration"), Some("idp.phi-guard.test"))
        );
        w.answer(call.token, 200, &[], &doc("https://idp.phi-guard.test", "https://idp.phi-guard.test/keys?v=1"));
        assert_eq!(w.seen(&ex).resumed, 0, "still waiting for the keys");
        let call = w.calls_to("idp").pop().unwrap();
        assert_eq!(call.header(":path"), Some("/keys?v=1"));
        w.answer(call.token, 200, &[], &demo_jwks());
        assert_eq!(w.seen(&ex).resumed, 1);

        // A document for another issuer, or pointing the keys at another host: not followed,
        // and the request is not served on a guess (503, keys_unavailable).
        for (issuer, uri) in
            [("https://evil.example", "https://idp.phi-guard.test/keys"), ("https://idp.phi-guard.test", "https://evil.example/keys")]
        {
            let mut w = Worker::with_policy(&discovering(), NOW_MS);
            let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
            w.tick();
            let call = w.calls_to("idp").pop().unwrap();
            w.answer(call.token, 200, &[], &doc(issuer, uri));
            assert_eq!(w.calls_to("idp").len(), 1, "no keys fetched for {issuer} {uri}");
            let reply = w.seen(&ex).reply.unwrap();
            assert_eq!((reply.status, reply.reason().as_deref()), (503, Some("keys_unavailable")));
            w.host().assert_log(
                "warn",
                "OpenID discovery not usable; keeping the last good keys",
                json!({"issuer": "https://idp.phi-guard.test"}),
            );
        }
    }

    #[test]
    fn a_waiting_request_is_answered_503_at_its_deadline() {
        let mut w = Worker::with_policy(&idp(json!({})), NOW_MS);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        // A client that gives up while waiting: its stream is forgotten, never answered.
        let gone = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        assert_eq!(w.root.vm().waiters.borrow().len(), 2);
        gone.stream.on_done();
        w.tick();
        assert_eq!(w.calls_to("idp").len(), 1);
        w.advance(999);
        w.tick();
        assert_eq!(status(&w, &ex), None, "still waiting");
        w.advance(1);
        w.tick();
        let reply = w.seen(&ex).reply.unwrap();
        assert_eq!((reply.status, reply.reason().as_deref()), (503, Some("keys_unavailable")));
        assert_eq!(w.seen(&ex).resumed, 0);
        assert_eq!(w.host().audit_events()[0]["reason"], "keys_unavailable");
        assert_eq!(w.calls_to("idp").len(), 1, "the fetch in flight is not repeated");
        assert!(w.root.vm().waiters.borrow().is_empty());
        assert_eq!((status(&w, &gone), w.seen(&gone).resumed), (None, 0));
        assert_eq!(w.host().audit_events().len(), 1);
    }

    #[test]
    fn one_worker_fetches_a_failure_backs_off_for_all_and_fetched_keys_are_shared() {
        let store = Rc::new(MemoryStore::default());
        let mut a = Worker::sharing(&store, &idp(json!({})), NOW_MS);
        let mut b = Worker::sharing(&store, &idp(json!({})), NOW_MS);
        let waiting = a.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        a.tick();
        b.tick();
        let (calls_a, calls_b) = (a.calls_to("idp"), b.calls_to("idp"));
        assert_eq!((calls_a.len(), calls_b.len()), (1, 0), "the lease goes to one worker");
        // The fetch fails: the waiter is answered now, and every worker waits out the backoff.
        a.answer(calls_a[0].token, 500, &[], b"");
        assert_eq!(status(&a, &waiting), Some(503));
        assert_eq!(a.host().stat("phi_guard.jwks_fetch_failures_total"), 1);
        a.host().assert_log(
            "warn",
            "JWKS not usable; keeping the last good keys",
            json!({"issuer": "https://idp.phi-guard.test", "error": "status 500"}),
        );
        a.tick();
        b.tick();
        assert_eq!((a.calls_to("idp").len(), b.calls_to("idp").len()), (1, 0), "backing off");
        b.advance(1000);
        a.advance(1000);
        b.tick();
        a.tick();
        assert_eq!((a.calls_to("idp").len(), b.calls_to("idp").len()), (1, 1), "the retry, by one worker");
        let retry = b.calls_to("idp")[0].token;
        b.answer(retry, 200, &[], &demo_jwks());
        // Worker a adopts what b fetched without fetching.
        a.tick();
        assert_eq!(a.calls_to("idp").len(), 1);
        assert_eq!(a.request("GET", "/fhir/Patient/p1", Some(&token(json!({})))).action, Action::Continue);
    }

    #[test]
    fn an_unknown_kid_refetches_at_once_but_at_most_once_per_interval() {
        let mut w = Worker::with_policy(&idp(json!({})), NOW_MS);
        fetch(&mut w, 200, &demo_jwks());
        // A key the set does not have yet (a rotation): refetch now, outside the refresh period.
        let first = w.request("GET", "/fhir/Patient/p1", Some(&token_with_kid("rotated", json!({}))));
        assert_eq!(first.action, Action::Pause);
        // A second unknown kid within the interval is answered at once: a burst of forged kids
        // costs one fetch.
        let second = w.request("GET", "/fhir/Patient/p1", Some(&token_with_kid("forged", json!({}))));
        assert_eq!(status(&w, &second), Some(401));
        fetch(&mut w, 200, &demo_jwks());
        let reply = w.seen(&first).reply.unwrap();
        assert_eq!((reply.status, reply.reason().as_deref()), (401, Some("unknown_key")), "still unknown after the refetch");
        assert_eq!(w.host().stat("phi_guard.jwks_fetches_total"), 2);
    }

    #[test]
    fn keys_past_their_staleness_limit_are_dropped() {
        let policy = idp(json!({"waitMs": 0, "refreshSeconds": 300, "maxStalenessSeconds": 600}));
        let mut w = Worker::with_policy(&policy, NOW_MS);
        fetch(&mut w, 200, &demo_jwks());
        // Refreshes are due at 80 % of the period; they all fail.
        w.advance(239_000);
        w.tick();
        assert_eq!(w.calls_to("idp").len(), 1, "not yet due");
        w.advance(1_000);
        fetch(&mut w, 503, b"");
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&token(json!({})))).action, Action::Continue, "last good keys kept");
        w.host().now_ms.set(NOW_MS.add_ms(600_000));
        w.tick();
        assert_eq!(w.host().stat("phi_guard.jwks_keys_dropped_stale_total"), 1);
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        assert_eq!(status(&w, &ex), Some(503), "fail closed, without waiting (waitMs 0)");
    }
}
