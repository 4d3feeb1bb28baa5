//! phi-guard: a proxy-wasm filter that verifies access tokens, enforces SMART-on-FHIR scopes and
//! patient compartments, minimizes responses to what the caller may see, and answers every
//! refusal in a fail-closed way.
//!
//! Everything outside [`host`] is pure and host-independent: it takes time and randomness as
//! arguments and is tested natively with `cargo test`. `src/host/` is the only code that names
//! `proxy_wasm` and is compiled only for `wasm32`.

pub mod audit;
pub mod auth;
pub mod decision;
pub mod fhir;
pub mod http;
pub mod minimize;
pub mod policy;
pub mod simulate;

#[cfg(target_arch = "wasm32")]
mod host;
