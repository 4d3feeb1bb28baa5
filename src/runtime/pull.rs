//! Pull mode: poll a policy server for signed policies; converge every worker on one revision
//! through shared data.

use super::host::{header, random_u32, Buffer, Host};
use super::oplog;
use super::root::install;
use super::vm::{Active, Vm};
use crate::policy::compile;
use crate::policy::source::{accept_signed, backoff, PullConfig, SIGNATURE_HEADER};
use crate::shared::{claim_lease, get_time, set_time};
use crate::time::UnixSeconds;

const SHARED_POLICY: &str = "phi-guard/pull/policy";
const SHARED_ETAG: &str = "phi-guard/pull/etag";
const SHARED_LAST_OK: &str = "phi-guard/pull/last-ok";
const SHARED_LEASE: &str = "phi-guard/pull/next-fetch";

/// Pull-mode state of this worker.
pub struct Pull {
    config: PullConfig,
    revision: Option<String>,
    failures: u32,
    in_flight: Option<u32>,
}

impl Pull {
    /// Start pulling with `config`.
    pub fn new(config: PullConfig) -> Self {
        Pull { config, revision: None, failures: 0, in_flight: None }
    }

    /// Adopt the verified policy in shared data if it is not the one this worker runs.
    pub fn adopt_shared<H: Host>(&mut self, vm: &Vm<H>) {
        let Ok((Some(bytes), _)) = vm.host.get(SHARED_POLICY) else { return };
        // Shared data only ever holds signature-verified bytes.
        match compile(&bytes) {
            Ok(policy) if self.revision.as_deref() != Some(policy.revision.as_str()) => {
                self.revision = Some(policy.revision.clone());
                install(vm, Active::new(policy), "policy server");
            }
            Ok(_) => {}
            Err(e) => oplog::error("shared policy does not compile").field("error", e.to_string()).emit(&vm.host),
        }
    }

    /// Fetch if due and this worker wins the lease.
    pub fn tick<H: Host>(&mut self, vm: &Vm<H>, now: UnixSeconds) {
        if self.in_flight.is_none() && claim_lease(&vm.host, SHARED_LEASE, now, self.config.poll_interval) {
            let etag = vm.host.get(SHARED_ETAG).ok().and_then(|(v, _)| v).and_then(|b| String::from_utf8(b).ok());
            let mut headers =
                vec![(":method", "GET"), (":path", self.config.path.as_str()), (":authority", self.config.authority.as_str())];
            if let Some(e) = etag.as_deref().filter(|e| !e.is_empty()) {
                headers.push(("if-none-match", e));
            }
            match vm.host.dispatch(&self.config.cluster, &headers, None, self.config.timeout_ms) {
                Ok(token) => self.in_flight = Some(token),
                Err(e) => {
                    oplog::warn("policy fetch not dispatched")
                        .field("cluster", &self.config.cluster)
                        .field("error", e.to_string())
                        .emit(&vm.host);
                    self.failed(vm, now);
                }
            }
        }
        // Never fetched: stale since the epoch.
        let last = get_time(&vm.host, SHARED_LAST_OK).unwrap_or_default();
        vm.metrics.policy_staleness(&vm.host, now.secs_since(last));
    }

    fn failed<H: Host>(&mut self, vm: &Vm<H>, now: UnixSeconds) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures, self.config.max_backoff, random_u32(&vm.host));
        // The lease now holds the time of the next attempt: the backoff, for every worker.
        set_time(&vm.host, SHARED_LEASE, now.add_secs(wait));
        vm.metrics.policy_fetch_failed(&vm.host);
        oplog::warn("policy fetch failed; keeping the last good policy")
            .field("failures", self.failures)
            .field("retryInS", wait)
            .emit(&vm.host);
    }

    /// Handle an HTTP call response; false if it was not ours.
    pub fn on_response<H: Host>(
        &mut self,
        vm: &Vm<H>,
        token: u32,
        body_size: usize,
        headers: &[(String, String)],
        now: UnixSeconds,
    ) -> bool {
        if self.in_flight != Some(token) {
            return false;
        }
        self.in_flight = None;
        match header(headers, ":status") {
            Some("304") => {
                self.failures = 0;
                set_time(&vm.host, SHARED_LAST_OK, now);
            }
            Some("200") => {
                let body = vm.host.buffer(Buffer::CallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
                match accept_signed(&body, header(headers, SIGNATURE_HEADER), &self.config) {
                    Ok(policy) => {
                        let _ = vm.host.set(SHARED_POLICY, &body, None);
                        let _ = vm.host.set(SHARED_ETAG, header(headers, "etag").unwrap_or("").as_bytes(), None);
                        set_time(&vm.host, SHARED_LAST_OK, now);
                        self.failures = 0;
                        self.revision = Some(policy.revision.clone());
                        install(vm, Active::new(policy), "policy server");
                    }
                    Err(e) => {
                        oplog::error("pulled policy rejected; the last good policy stays in force")
                            .field("error", e.to_string())
                            .emit(&vm.host);
                        vm.metrics.policy_rejected(&vm.host);
                        self.failed(vm, now);
                    }
                }
            }
            other => {
                oplog::warn("policy server answer not usable")
                    .field_opt("status", other.and_then(|s| s.parse::<u16>().ok()))
                    .field_opt("error", other.is_none().then_some("no answer (timeout or reset)"))
                    .emit(&vm.host);
                self.failed(vm, now);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::{json, Value};

    use super::super::testing::{demo_jwks, policy, token, Worker, NOW_MS};
    use super::super::Action;
    use crate::policy::source::SIGNATURE_HEADER;
    use crate::testing::MemoryStore;

    fn pull_config() -> Value {
        let jwks: Value = serde_json::from_slice(&demo_jwks()).unwrap();
        json!({"policySource": {"cluster": "policy_server", "path": "/policy.json", "publicKey": jwks["keys"][2]}})
    }

    fn sign(bytes: &[u8]) -> String {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/demo-eddsa.key.pem")).unwrap();
        jsonwebtoken::crypto::sign(bytes, &EncodingKey::from_ed_pem(&pem).unwrap(), Algorithm::EdDSA).unwrap()
    }

    /// Tick, and answer the one policy fetch it dispatched.
    fn poll(w: &mut Worker, status: u16, headers: &[(&str, &str)], body: &[u8]) -> super::super::testing::Dispatched {
        let before = w.calls_to("policy_server").len();
        w.tick();
        let calls = w.calls_to("policy_server");
        assert_eq!(calls.len(), before + 1, "one fetch dispatched");
        let call = calls[before].clone();
        w.answer(call.token, status, headers, body);
        call
    }

    fn refused(w: &Worker) -> Option<u16> {
        let ex = w.request("GET", "/fhir/Patient/p1", None);
        w.seen(&ex).reply.map(|r| r.status)
    }

    #[test]
    fn a_signed_policy_is_installed_and_every_worker_adopts_it() {
        let store = Rc::new(MemoryStore::default());
        let mut a = Worker::sharing(&store, &pull_config(), NOW_MS);
        let mut b = Worker::sharing(&store, &pull_config(), NOW_MS);
        assert_eq!(refused(&a), Some(503), "no policy until one is pulled");
        let body = serde_json::to_vec(&policy(|_| {})).unwrap();
        let sig = sign(&body);
        let call = poll(&mut a, 200, &[(SIGNATURE_HEADER, &sig), ("etag", "\"r1\"")], &body);
        assert_eq!(
            (call.header(":path"), call.header(":authority"), call.header("if-none-match")),
            (Some("/policy.json"), Some("policy_server"), None)
        );
        a.host().assert_log("info", "policy loaded", json!({"source": "policy server"}));
        assert_eq!(a.host().stat("phi_guard.policy_loaded_total"), 1);
        assert_eq!(a.request("GET", "/fhir/Patient/p1", Some(&token(json!({})))).action, Action::Continue);
        // The other worker did not fetch (the lease), but runs the same revision after a tick.
        b.tick();
        assert!(b.calls_to("policy_server").is_empty());
        assert_eq!(b.request("GET", "/fhir/Patient/p1", Some(&token(json!({})))).action, Action::Continue);
        // The next poll is conditional; 304 keeps the policy and counts as a success.
        b.advance(30_000);
        b.tick();
        let next = b.calls_to("policy_server").pop().unwrap();
        assert_eq!(next.header("if-none-match"), Some("\"r1\""));
        b.answer(next.token, 304, &[], b"");
        assert_eq!(refused(&b), Some(401));
        assert_eq!(b.host().stat("phi_guard.policy_fetch_failures_total"), 0);
    }

    #[test]
    fn a_bad_signature_keeps_the_last_good_policy_and_backs_off() {
        let mut w = Worker::sharing(&Rc::new(MemoryStore::default()), &pull_config(), NOW_MS);
        let good = serde_json::to_vec(&policy(|_| {})).unwrap();
        poll(&mut w, 200, &[(SIGNATURE_HEADER, &sign(&good))], &good);
        // A shadow-mode policy signed by someone else.
        let forged = serde_json::to_vec(&policy(|p| p["mode"] = json!("shadow"))).unwrap();
        w.advance(30_000);
        poll(&mut w, 200, &[(SIGNATURE_HEADER, &sign(&good))], &forged);
        let rejected = w.host().log_entry("pulled policy rejected; the last good policy stays in force").unwrap();
        assert!(rejected["error"].as_str().unwrap().contains("the policy signature does not verify"), "{rejected}");
        assert_eq!(w.host().stat("phi_guard.policy_rejected_total"), 1);
        assert_eq!(refused(&w), Some(401), "still enforcing the last good policy");
        // Retried after the backoff (1 s after one failure, with this host's jitter), not before.
        w.tick();
        assert_eq!(w.calls_to("policy_server").len(), 2);
        w.advance(1_000);
        poll(&mut w, 200, &[], &forged);
        let rejected = w.host().log_entry("pulled policy rejected; the last good policy stays in force").unwrap();
        assert!(rejected["error"].as_str().unwrap().contains("carries no `x-phi-guard-signature`"), "{rejected}");
        assert_eq!(w.host().stat("phi_guard.policy_fetch_failures_total"), 2);
        // Whatever is in shared data is the verified policy.
        let fresh = Worker::sharing(&w.host().store, &pull_config(), NOW_MS);
        assert_eq!(refused(&fresh), Some(401));
    }
}
