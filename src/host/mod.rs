//! The proxy-wasm shell: the only code that talks to Envoy. It reads values from the host, calls
//! the pure core, and applies the result. Headers, bodies, properties and local replies go
//! through `abi` (bytes, every host status an `Err`); the rest through `proxy_wasm::hostcalls`,
//! whose `Result`s we handle. The SDK's string getters and trait helpers `unwrap` (UTF-8, host
//! errors), and a panic would take the worker's VM down.

mod abi;
mod audit;
mod http;
mod jwks;
mod metrics;
mod pull;
mod root;
mod shared;
mod vm;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::new()) });
}}

/// Milliseconds since the Unix epoch from the host clock (0 if the host cannot tell, which makes
/// every token look expired: fail closed).
fn now_ms() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 32 random bits from the host (WASI `random_get`); 0 if unavailable (only used for jitter).
fn random_u32() -> u32 {
    let mut r = [0u8; 4];
    getrandom::getrandom(&mut r).map_or(0, |()| u32::from_le_bytes(r))
}
