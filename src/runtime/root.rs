//! The root of one VM: turns the plugin configuration into the active policy (inline policy:
//! static config, ECDS, Istio; or pulled, signed policies), routes callout answers, and runs
//! background work on ticks: policy polling, remote JWKS refresh, audit shipping.

use std::rc::Rc;

use super::audit::AuditSink;
use super::host::{header, Buffer, HeaderMap, Host};
use super::jwks::Jwks;
use super::oplog;
use super::pull::Pull;
use super::stream::Stream;
use super::vm::{Active, Vm};
use crate::audit::AuditKey;
use crate::policy::source::{parse_plugin_config, PluginConfig};
use crate::policy::Policy;

/// VM secret for the audit chain and pseudonyms.
const AUDIT_KEY_ENV: &str = crate::audit::KEY_ENV;
/// VM secret for minimization `hash` transforms.
pub const HMAC_KEY_ENV: &str = "PHI_GUARD_HMAC_KEY";

/// Background work runs this often while there is any (pull mode, remote keys, collector), in
/// milliseconds.
pub const TICK_MS: u64 = 200;

/// Make `active` the policy in force on this VM.
pub fn install<H: Host>(vm: &Vm<H>, active: Active, source: &str) {
    // Lines held under the old policy's flush interval are written before anything else.
    if let Some(sink) = vm.audit.borrow_mut().as_mut() {
        sink.flush_log(&vm.host);
    }
    let p = &active.policy;
    oplog::info("policy loaded")
        .field("policy", &p.name)
        .field("revision", &p.revision)
        .field("source", source)
        .field("routes", p.routes.len())
        .field("shadow", p.shadow)
        .emit(&vm.host);
    vm.metrics.policy_loaded(&vm.host, p.revision_number());
    *vm.active.borrow_mut() = Some(active);
    // Refusals learned under the old policy's issuers and claim rules do not carry over.
    vm.introspections.borrow_mut().clear();
}

/// Root context of the plugin.
pub struct Root<H> {
    vm: Rc<Vm<H>>,
    pull: Option<Pull>,
    jwks: Jwks,
}

impl<H: Host> Root<H> {
    /// A root with no policy: until one compiles, every request is refused (503 `no_policy`).
    pub fn new(host: H) -> Self {
        Root { vm: Rc::new(Vm::new(host)), pull: None, jwks: Jwks::default() }
    }

    /// The VM this root and its streams share.
    pub fn vm(&self) -> &Rc<Vm<H>> {
        &self.vm
    }

    /// A new HTTP stream.
    pub fn stream(&self, context_id: u32) -> Stream<H> {
        Stream::new(context_id, Rc::clone(&self.vm))
    }

    fn needs_ticks(&self) -> bool {
        self.pull.is_some()
            || self.vm.active.borrow().as_ref().is_some_and(|a| {
                a.policy.issuers.iter().any(|i| i.remote.is_some() || i.introspection.is_some())
                    || a.policy.audit.collector.is_some()
                    || a.policy.audit.envoy_log_flush_ms > 0
            })
    }

    /// Secrets come from the VM environment (Envoy `vm_config.environment_variables`, Istio
    /// `vmConfig.env`), never from the policy. Without a usable audit key nothing can be
    /// audited, so the configuration is refused: loud, and never serving unaudited.
    fn load_secrets(&self, policy: Option<&Policy>) -> bool {
        let host = &self.vm.host;
        if self.vm.audit.borrow().is_none() {
            let key = host.env_var(AUDIT_KEY_ENV).map(|k| AuditKey::from_secret(k.as_bytes()));
            match key {
                Some(Ok(key)) => {
                    let mut id = [0u8; 16];
                    if host.random(&mut id).is_err() {
                        oplog::error("no randomness for the audit stream id; configuration refused").emit(host);
                        return false;
                    }
                    *self.vm.audit.borrow_mut() = Some(AuditSink::new(key, id));
                }
                Some(Err(e)) => {
                    oplog::error("audit key not usable; configuration refused")
                        .field("variable", AUDIT_KEY_ENV)
                        .field("error", e.to_string())
                        .emit(host);
                    return false;
                }
                None => {
                    oplog::error("audit key not set; configuration refused").field("variable", AUDIT_KEY_ENV).emit(host);
                    return false;
                }
            }
        }
        let hmac = host.env_var(HMAC_KEY_ENV).map(String::into_bytes).filter(|k| crate::minimize::hmac_key_ok(k));
        if policy.is_some_and(Policy::requires_hmac_key) && hmac.is_none() {
            oplog::error("HMAC key missing or too short; configuration refused").field("variable", HMAC_KEY_ENV).emit(host);
            return false;
        }
        *self.vm.hmac_key.borrow_mut() = hmac;
        // Checked here so a policy whose opaque tokens could never be introspected is refused
        // loudly, not answered with 503 on every request.
        for issuer in policy.map_or(&[][..], |p| p.issuers.as_slice()) {
            if let Some(i) = &issuer.introspection {
                if host.env_var(&i.client_secret_env).is_none_or(|s| s.is_empty()) {
                    oplog::error("introspection client secret not set; configuration refused")
                        .field("variable", &i.client_secret_env)
                        .field("issuer", &issuer.issuer)
                        .emit(host);
                    return false;
                }
            }
        }
        true
    }

    /// The plugin configuration (`size` bytes) arrived: accept it (true) or refuse it, which
    /// makes Envoy keep the previous one.
    pub fn on_configure(&mut self, size: usize) -> bool {
        let (host, metrics) = (&self.vm.host, &self.vm.metrics);
        let bytes = match host.buffer(Buffer::PluginConfiguration, 0, size) {
            Ok(Some(b)) => b,
            _ => {
                oplog::error("no plugin configuration; the previous policy stays in force").emit(host);
                metrics.policy_rejected(host);
                return false;
            }
        };
        // The audit key first, whatever the configuration holds: a VM whose first policy does
        // not compile still audits the `no_policy` refusals it answers.
        if !self.load_secrets(None) {
            metrics.policy_rejected(host);
            return false;
        }
        let accepted = match parse_plugin_config(&bytes) {
            Ok(PluginConfig::Inline(policy)) => {
                if !self.load_secrets(Some(&policy)) {
                    metrics.policy_rejected(host);
                    return false;
                }
                self.pull = None;
                install(&self.vm, Active::new(*policy), "plugin configuration");
                true
            }
            Ok(PluginConfig::Pull(config)) => {
                oplog::info("pulling signed policies").field("cluster", &config.cluster).field("path", &config.path).emit(host);
                let mut pull = Pull::new(config);
                pull.adopt_shared(&self.vm);
                self.pull = Some(pull);
                true
            }
            Err(e) => {
                oplog::error("policy rejected; the previous policy stays in force").field("error", e.to_string()).emit(host);
                metrics.policy_rejected(host);
                false
            }
        };
        if accepted && self.needs_ticks() && host.set_tick_period(TICK_MS).is_err() {
            oplog::error("cannot schedule background work").emit(host);
        }
        accepted
    }

    /// The plugin is going away (Envoy's `on_done` for the root context): write the held audit
    /// lines.
    pub fn on_done(&mut self) {
        if let Some(sink) = self.vm.audit.borrow_mut().as_mut() {
            sink.flush_log(&self.vm.host);
        }
    }

    /// Background work: adopt and poll policies, refresh keys and expire waiters, ship audit
    /// batches.
    pub fn on_tick(&mut self) {
        let now = self.vm.host.now_ms();
        if let Some(pull) = self.pull.as_mut() {
            pull.adopt_shared(&self.vm);
            pull.tick(&self.vm, now.to_seconds());
            // A pulled policy may bring remote issuers: the tick keeps running anyway.
        }
        self.vm.dispatch_introspections(now);
        self.vm.dispatch_writes(now);
        let idle = self.vm.introspections.borrow().idle() && self.vm.writes.borrow().idle();
        if idle && self.vm.fast_tick.get() {
            // Back to the usual period, or none if nothing else runs in the background.
            let period = if self.needs_ticks() { TICK_MS } else { 0 };
            if self.vm.host.set_tick_period(period).is_err() {
                oplog::error("cannot schedule background work").emit(&self.vm.host);
            }
            self.vm.fast_tick.set(false);
        }
        self.jwks.tick(&self.vm, now);
        let config = self.vm.active.borrow().as_ref().map(|a| a.policy.audit.clone());
        if let (Some(config), Some(sink)) = (config, self.vm.audit.borrow_mut().as_mut()) {
            sink.tick(&config, now, &self.vm.host, &self.vm.metrics);
        }
    }

    /// The answer to the callout `token` (collector, policy server or JWKS), with a body of
    /// `body_size` bytes.
    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let host = &self.vm.host;
        // Callout answers (collector, policy server, JWKS) are untrusted too: read as bytes; a
        // value that is not UTF-8 is read lossily (a mangled signature or status then fails).
        let headers: Vec<(String, String)> = host
            .header_pairs(HeaderMap::CallResponseHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let now = host.now_ms();
        let status = header(&headers, ":status").and_then(|s| s.parse::<u16>().ok());
        let config = self.vm.active.borrow().as_ref().map(|a| a.policy.audit.clone()).unwrap_or_default();
        if let Some(sink) = self.vm.audit.borrow_mut().as_mut() {
            let retry_after = header(&headers, "retry-after");
            if sink.on_response(token, status, retry_after, body_size, &config, now, host, &self.vm.metrics) {
                return;
            }
        }
        if let Some(pull) = self.pull.as_mut() {
            if pull.on_response(&self.vm, token, body_size, &headers, now.to_seconds()) {
                return;
            }
        }
        if self.vm.writes.borrow().calls.iter().any(|(c, _)| *c == token) {
            let max = self.vm.active.borrow().as_ref().map_or(0, |a| a.policy.limits.max_response_bytes);
            let body = if body_size > max {
                Vec::new()
            } else {
                host.buffer(Buffer::CallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
            };
            // An answer too large to check is not a resource the write may change.
            let status = if body_size > max { Some(0) } else { status };
            self.vm.write_checked(token, status, header(&headers, "etag"), &body);
            return;
        }
        if self.vm.introspections.borrow().in_flight_call(token) {
            let max = crate::auth::introspect::MAX_RESPONSE_BYTES + 1;
            let body = host.buffer(Buffer::CallResponseBody, 0, body_size.min(max)).ok().flatten().unwrap_or_default();
            // A body larger than read is never taken for a complete answer.
            let status = if body_size > max { Some(0) } else { status };
            self.vm.introspection_answer(token, status, &body, now);
            return;
        }
        self.jwks.on_response(&self.vm, token, body_size, &headers, now);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{policy, token, MockHost, Worker, NOW_MS};
    use super::super::Action;
    use super::HMAC_KEY_ENV;

    fn status(w: &Worker) -> Option<u16> {
        let ex = w.request("GET", "/fhir/Patient/p1", Some(&token(json!({}))));
        w.seen(&ex).reply.map(|r| r.status)
    }

    #[test]
    fn a_configuration_that_cannot_be_audited_is_refused() {
        let host = MockHost::new();
        host.now_ms.set(NOW_MS);
        let mut w = Worker::on(host);
        w.host().env.borrow_mut().clear();
        assert!(!w.configure(&policy(|_| {})));
        w.host().assert_log("error", "audit key not set; configuration refused", json!({"variable": "PHI_GUARD_AUDIT_KEY"}));
        w.host().env.borrow_mut().insert(crate::audit::KEY_ENV.into(), "short".into());
        assert!(!w.configure(&policy(|_| {})));
        assert_eq!(w.host().stat("phi_guard.policy_rejected_total"), 2);
        assert_eq!(status(&w), Some(503), "no policy in force");
        // No randomness for the audit stream id: refused too.
        let mut w = Worker::new();
        w.host().random_byte.set(None);
        assert!(!w.configure(&policy(|_| {})));
        w.host().assert_log("error", "no randomness for the audit stream id; configuration refused", json!({}));
    }

    #[test]
    fn a_policy_that_hashes_needs_the_hmac_key() {
        let hashing = policy(|p| {
            p["routes"][4]["minimize"]["profiles"][0]["resources"]["Patient"]["transform"][0] =
                json!({"path": "identifier[*].value", "transform": "hash"});
        });
        let mut w = Worker::new();
        w.host().now_ms.set(NOW_MS);
        assert!(!w.configure(&hashing));
        w.host().assert_log("error", "HMAC key missing or too short; configuration refused", json!({"variable": "PHI_GUARD_HMAC_KEY"}));
        w.host().env.borrow_mut().insert(HMAC_KEY_ENV.into(), "hmac-key-0123456789abcdef0123456789".into());
        assert!(w.configure(&hashing));
        assert_eq!(status(&w), None);
    }

    #[test]
    fn a_rejected_policy_leaves_the_previous_one_in_force() {
        let mut w = Worker::with_policy(&policy(|_| {}), NOW_MS);
        assert_eq!(w.host().tick_period_ms.get(), None, "nothing to do in the background");
        assert!(!w.configure(&policy(|p| p["routes"][0]["pubilc"] = json!(true))));
        let rejected = w.host().log_entry("policy rejected; the previous policy stays in force").unwrap();
        assert_eq!(rejected["level"], "error");
        assert!(rejected["error"].as_str().unwrap().contains("routes[0].pubilc: unknown field"), "{rejected}");
        assert!(!w.configure(&json!("not a policy")));
        assert_eq!(w.host().stat("phi_guard.policy_rejected_total"), 2);
        assert_eq!(w.host().stat("phi_guard.policy_loaded_total"), 1);
        assert_eq!(w.request("GET", "/fhir/Patient/p1", Some(&token(json!({})))).action, Action::Continue);
    }

    #[test]
    fn a_first_policy_that_does_not_compile_still_audits_its_refusals() {
        let mut w = Worker::new();
        w.host().now_ms.set(NOW_MS);
        assert!(!w.configure(&policy(|p| p["routes"][0]["pubilc"] = json!(true))));
        assert_eq!(status(&w), Some(503), "no policy in force");
        let events = w.host().audit_events();
        assert_eq!(events.len(), 1, "the no_policy refusal is audited");
        assert_eq!(events[0]["reason"], "no_policy");
    }
}
