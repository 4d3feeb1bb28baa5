//! Root context: turns the plugin configuration into the active policy (inline policy: static
//! config, ECDS, Istio; or pulled, signed policies), and runs background work on ticks: policy
//! polling and remote JWKS refresh.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls::{get_buffer, get_map, set_tick_period};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::http::Stream;
use super::jwks::Jwks;
use super::pull::Pull;
use super::vm::{Active, Vm};
use super::now_ms;
use crate::policy::source::{parse_plugin_config, PluginConfig};

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
        self.pull.is_some() || self.vm.active.borrow().as_ref().is_some_and(|a| a.policy.issuers.iter().any(|i| i.remote.is_some()))
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let headers = get_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let now = now_ms();
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
        let bytes = match get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(b)) => b,
            _ => {
                log::error!("phi-guard: no plugin configuration; the previous policy (if any) stays in force");
                self.vm.metrics.policy_rejected();
                return false;
            }
        };
        let accepted = match parse_plugin_config(&bytes) {
            Ok(PluginConfig::Inline(policy)) => {
                self.pull = None;
                install(&self.vm, Active::new(*policy), "the plugin configuration");
                true
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
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(context_id, Rc::clone(&self.vm))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
