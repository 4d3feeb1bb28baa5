//! phi-guard: a proxy-wasm filter that verifies access tokens, enforces SMART-on-FHIR scopes and
//! patient compartments, minimizes responses to what the caller may see, and answers every
//! refusal in a fail-closed way.
//!
//! Everything outside `host` is host-independent and tested natively with `cargo test`: the pure
//! core takes time and randomness as arguments, and `runtime` (the filter's callbacks) gets them
//! from a `runtime::Host`. `src/host/` is the only code that names `proxy_wasm`: it implements
//! `Host` over the ABI and forwards the SDK's callbacks to `runtime`, and is compiled only for the
//! filter's target, `wasm32-wasip1`. The same core
//! also runs natively (the `phi-guard` CLI) and in the browser (`playground/crate`, built for
//! `wasm32-unknown-unknown`, the only code that names `wasm_bindgen`).

pub mod audit;
pub mod audit_key;
pub mod auth;
pub mod decision;
pub mod fhir;
pub mod http;
pub mod ident;
pub mod json;
pub mod minimize;
pub mod policy;
pub mod ratelimit;
pub mod reason;
pub mod runtime;
pub mod schema;
pub mod shared;
pub mod simulate;
#[cfg(test)]
pub(crate) mod testing;
pub mod time;

// Only the filter's target has the proxy-wasm host; the playground's wasm32-unknown-unknown
// build of the core has none.
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod host;
