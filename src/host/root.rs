//! Root context: turns the plugin configuration into the active policy (inline policy: static
//! config, ECDS, Istio; or pulled, signed policies), and runs background work on ticks: policy
//! polling and remote JWKS refresh.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls::set_tick_period;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::abi;
use super::audit::AuditSink;
use super::http::Stream;
use super::jwks::Jwks;
use super::now_ms;
use super::pull::Pull;
use super::vm::{Active, Vm};
use crate::audit::AuditKey;
use crate::policy::source::{parse_plugin_config, PluginConfig};
use crate::policy::Policy;

/// VM secret for the audit chain and pseudonyms.
const AUDIT_KEY_ENV: &str = crate::audit::KEY_ENV;
/// VM secret for minimization `hash` transforms.
const HMAC_KEY_ENV: &str = "PHI_GUARD_HMAC_KEY";

/// Background work runs this often while there is any (pull mode, remote keys, waiters).
const TICK: Duration = Duration::from_millis(200);

/// Make `active` the policy in force on this VM.
pub fn install(vm: &Vm, active: Active, how: &str) {
    let p = &active.policy;
    log::info!(
        "phi-guard: policy `{}` revision {} loaded from {how} ({} routes{})",
        p.name,
        p.revision,
        p.routes.len(),
        if p.shadow { ", SHADOW mode: not enforced" } else { "" }
    );
    vm.metrics.policy_loaded(p.revision_number());
    *vm.active.borrow_mut() = Some(active);
}

/// Root context of the plugin.
pub struct Root {
    vm: Rc<Vm>,
    pull: Option<Pull>,
    jwks: Jwks,
}

impl Root {
    /// A root with no policy: until one compiles, every request is refused (503 `no_policy`).
    pub fn new() -> Self {
        Root { vm: Rc::new(Vm::new()), pull: None, jwks: Jwks::default() }
    }

    fn needs_ticks(&self) -> bool {
        self.pull.is_some()
            || self
                .vm
                .active
                .borrow()
                .as_ref()
                .is_some_and(|a| a.policy.issuers.iter().any(|i| i.remote.is_some()) || a.policy.audit.collector.is_some())
    }

    /// Secrets come from the VM environment (Envoy `vm_config.environment_variables`, Istio
    /// `vmConfig.env`), never from the policy. Without a usable audit key nothing can be
    /// audited, so the configuration is refused: loud, and never serving unaudited.
    fn load_secrets(&self, policy: Option<&Policy>) -> bool {
        if self.vm.audit.borrow().is_none() {
            let key = std::env::var(AUDIT_KEY_ENV).ok().map(|k| AuditKey::from_secret(k.as_bytes()));
            match key {
                Some(Ok(key)) => {
                    let mut id = [0u8; 16];
                    if getrandom::getrandom(&mut id).is_err() {
                        log::error!("phi-guard: no randomness for the audit stream id; configuration refused");
                        return false;
                    }
                    *self.vm.audit.borrow_mut() = Some(AuditSink::new(key, id));
                }
                Some(Err(e)) => {
                    log::error!("phi-guard: {AUDIT_KEY_ENV} is not usable ({e}); configuration refused");
                    return false;
                }
                None => {
                    log::error!("phi-guard: {AUDIT_KEY_ENV} is not set in the VM environment; configuration refused");
                    return false;
                }
            }
        }
        let hmac = std::env::var(HMAC_KEY_ENV).ok().map(String::into_bytes).filter(|k| crate::minimize::hmac_key_ok(k));
        if policy.is_some_and(Policy::requires_hmac_key) && hmac.is_none() {
            log::error!("phi-guard: the policy hashes fields but {HMAC_KEY_ENV} is missing or too short; configuration refused");
            return false;
        }
        *self.vm.hmac_key.borrow_mut() = hmac;
        true
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        // Callout answers (collector, policy server, JWKS) are untrusted too: read as bytes; a
        // value that is not UTF-8 is read lossily (a mangled signature or status then fails).
        let headers: Vec<(String, String)> = abi::header_pairs(MapType::HttpCallResponseHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let now = now_ms();
        let status = super::shared::header(&headers, ":status").and_then(|s| s.parse::<u16>().ok());
        let config = self.vm.active.borrow().as_ref().map(|a| a.policy.audit.clone()).unwrap_or_default();
        if let Some(sink) = self.vm.audit.borrow_mut().as_mut() {
            if sink.on_response(token_id, status, &config, now, &self.vm.metrics) {
                return;
            }
        }
        if let Some(pull) = self.pull.as_mut() {
            if pull.on_response(&self.vm, token_id, body_size, &headers, now / 1000) {
                return;
            }
        }
        self.jwks.on_response(&self.vm, token_id, body_size, &headers, now);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match abi::buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(b)) => b,
            _ => {
                log::error!("phi-guard: no plugin configuration; the previous policy (if any) stays in force");
                self.vm.metrics.policy_rejected();
                return false;
            }
        };
        let accepted = match parse_plugin_config(&bytes) {
            Ok(PluginConfig::Inline(policy)) => {
                if !self.load_secrets(Some(&policy)) {
                    self.vm.metrics.policy_rejected();
                    return false;
                }
                self.pull = None;
                install(&self.vm, Active::new(*policy), "the plugin configuration");
                true
            }
            Ok(PluginConfig::Pull(_)) if !self.load_secrets(None) => {
                self.vm.metrics.policy_rejected();
                return false;
            }
            Ok(PluginConfig::Pull(config)) => {
                log::info!("phi-guard: pulling signed policies from cluster `{}` path `{}`", config.cluster, config.path);
                let mut pull = Pull::new(config);
                pull.adopt_shared(&self.vm);
                self.pull = Some(pull);
                true
            }
            Err(e) => {
                log::error!("phi-guard: policy rejected: {e}; the previous policy (if any) stays in force");
                self.vm.metrics.policy_rejected();
                false
            }
        };
        if accepted && self.needs_ticks() && set_tick_period(TICK).is_err() {
            log::error!("phi-guard: cannot schedule background work (policy polling, key refresh)");
        }
        accepted
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        if let Some(pull) = self.pull.as_mut() {
            pull.adopt_shared(&self.vm);
            pull.tick(&self.vm, now / 1000);
            // A pulled policy may bring remote issuers: the tick keeps running anyway.
        }
        self.jwks.tick(&self.vm, now);
        let config = self.vm.active.borrow().as_ref().map(|a| a.policy.audit.clone());
        if let (Some(config), Some(sink)) = (config, self.vm.audit.borrow_mut().as_mut()) {
            sink.tick(&config, now, &self.vm.metrics);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(context_id, Rc::clone(&self.vm))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
