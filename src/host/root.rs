//! The SDK's root context: configuration, ticks and callout answers are forwarded to the root
//! of [`crate::runtime`], which also makes each new HTTP stream.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use super::envoy::Envoy;
use super::http::Stream;
use crate::runtime;

/// Root context of the plugin.
pub struct Root(runtime::Root<Envoy>);

impl Root {
    /// A root with no policy: until one compiles, every request is refused (503 `no_policy`).
    pub fn new() -> Self {
        Root(runtime::Root::new(Envoy))
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        self.0.on_http_call_response(token_id, body_size);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done();
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        self.0.on_configure(size)
    }

    fn on_tick(&mut self) {
        self.0.on_tick();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream(self.0.stream(context_id))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
