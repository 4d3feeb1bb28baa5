//! The proxy-wasm shell: the only code that talks to Envoy. [`envoy::Envoy`] implements the
//! core's [`crate::runtime::Host`] over the ABI; the root and HTTP contexts forward the SDK's
//! callbacks to [`crate::runtime`], which holds all the logic. Headers, bodies, properties and
//! local replies go through `abi` (bytes, every host status an `Err`); the rest through
//! `proxy_wasm::hostcalls`, whose `Result`s we handle. The SDK's string getters and trait
//! helpers `unwrap` (UTF-8, host errors), and a panic would take the worker's VM down.

mod abi;
mod envoy;
mod http;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::new()) });
}}
