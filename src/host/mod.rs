//! The proxy-wasm shell: the only code that talks to Envoy. It reads values from the host, calls
//! the pure core, and applies the result. Every hostcall goes through `proxy_wasm::hostcalls`,
//! whose `Result`s we handle: the trait helpers `unwrap` host errors, and a panic would take the
//! worker's VM down.

mod http;
mod metrics;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::new()) });
}}

/// Seconds since the Unix epoch from the host clock (0 if the host cannot tell, which makes
/// every token look expired: fail closed).
fn now_secs() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}
