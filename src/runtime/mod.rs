//! The filter as it runs inside a proxy, over a [`Host`]: what one VM (one Envoy worker) does
//! with each stream's callbacks (decide, answer locally, forward, wait for keys, the response
//! phase, request-body checks), with callout answers and with ticks (policy polling, remote
//! JWKS, audit shipping with retries).
//!
//! Every hostcall goes through [`Host`]. `src/host/` implements it over the proxy-wasm ABI and
//! forwards the SDK's callbacks here; [`testing::MockHost`] implements it in memory, so request
//! handling, rate limits, key waiting, background jobs and the audit sink run in `cargo test`.
//! Nothing here depends on the proxy-wasm SDK.

mod audit;
mod host;
mod introspection;
mod jwks;
mod metrics;
pub mod oplog;
mod preflight;
mod pull;
mod root;
mod stream;
pub mod tokens;
mod vm;

#[cfg(test)]
pub mod testing;

/// The clock's unit: [`Host::now_ms`] returns it (re-exported for `src/host/`).
pub use crate::time::UnixMillis;
pub use audit::AuditSink;
pub use host::{header, random_u32, Action, Buffer, HeaderMap, HeaderPair, Host, HostError, Level, MetricKind};
pub use metrics::Metrics;
pub use root::{install, Root, HMAC_KEY_ENV, TICK_MS};
pub use stream::Stream;
pub use vm::{Active, Handled, OwnedRequest, StreamState, Vm, Waiter};
