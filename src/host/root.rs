//! Root context: compiles the plugin configuration into the active policy.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls::get_buffer;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::http::Stream;
use super::metrics::Metrics;
use crate::auth::TokenCache;
use crate::policy::{compile, Policy};

/// The policy in force on this VM and its verified-token cache (cleared with every new policy).
pub struct Active {
    /// Compiled policy.
    pub policy: Rc<Policy>,
    /// Verified tokens for this policy.
    pub cache: TokenCache,
}

/// Shared between the root context and every stream on this VM.
pub type Shared = Rc<RefCell<Option<Active>>>;

/// Root context of the plugin.
pub struct Root {
    active: Shared,
    metrics: Rc<Metrics>,
}

impl Root {
    /// A root with no policy: until one compiles, every request is refused (503 `no_policy`).
    pub fn new() -> Self {
        Root { active: Rc::new(RefCell::new(None)), metrics: Rc::new(Metrics::define()) }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(b)) => b,
            _ => {
                log::error!("phi-guard: no plugin configuration; the previous policy (if any) stays in force");
                self.metrics.policy_rejected();
                return false;
            }
        };
        match compile(&bytes) {
            Ok(policy) => {
                log::info!("phi-guard: policy `{}` revision {} loaded ({} routes)", policy.name, policy.revision, policy.routes.len());
                let cache = TokenCache::new(policy.token_cache_entries);
                *self.active.borrow_mut() = Some(Active { policy: Rc::new(policy), cache });
                self.metrics.policy_loaded();
                true
            }
            Err(e) => {
                log::error!("phi-guard: policy rejected: {e}; the previous policy (if any) stays in force");
                self.metrics.policy_rejected();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(Rc::clone(&self.active), Rc::clone(&self.metrics))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
