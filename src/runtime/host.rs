//! The host boundary: every call the filter makes into its proxy, as a trait. The filter's
//! host implements it over the proxy-wasm ABI (`src/host/`); [`super::testing::MockHost`]
//! implements it in memory for native tests.
//!
//! The calls mirror the ABI, minus its traps: header maps and buffers are read as bytes (what
//! an undecodable value means is the caller's decision), every failure is a [`HostError`], and
//! nothing here may panic. Calls act on the current stream, as in proxy-wasm: a callback runs
//! with its own stream current, and background work makes a stream current with
//! [`Host::set_effective_context`] before it answers or resumes it.

use std::fmt;

use crate::shared::SharedStore;
use crate::time::UnixMillis;

/// A header map of the current stream or callout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderMap {
    /// The client's request headers (request phase only).
    RequestHeaders,
    /// The upstream's response headers.
    ResponseHeaders,
    /// The upstream's response trailers.
    ResponseTrailers,
    /// Headers of the answer to a callout ([`Host::dispatch`]), in the root's callback.
    CallResponseHeaders,
}

/// A buffer of the current stream, callout answer or plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buffer {
    /// The request body buffered so far.
    RequestBody,
    /// The response body buffered so far.
    ResponseBody,
    /// The body of a callout's answer.
    CallResponseBody,
    /// The plugin configuration (the policy, or where to pull it from).
    PluginConfiguration,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Normal operation (audit lines, policy loads).
    Info,
    /// Something the operator may want to know (a refused response, a failed fetch).
    Warn,
    /// Something is broken (a hostcall failed, a configuration was refused).
    Error,
}

/// Kind of a stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Only ever incremented.
    Counter,
    /// Set to a value.
    Gauge,
}

/// What a stream callback tells the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the stream go on.
    Continue,
    /// Hold the stream (until a local reply, a resume, or the rest of the body).
    Pause,
}

/// A host call that failed, with the ABI's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host status {}", self.0)
    }
}

/// One header as raw (name, value) bytes.
pub type HeaderPair = (Vec<u8>, Vec<u8>);

/// The proxy as the filter sees it. Shared data (with compare-and-swap) is the
/// [`SharedStore`] supertrait.
///
/// A call marked *re-entrant* may call back into the filter before it returns (Envoy resets a
/// stream from inside `set_buffer`, runs a local reply's callbacks, continues a resumed stream):
/// never hold a `RefCell` borrow across one.
pub trait Host: SharedStore {
    /// Every header of `map`, in order, as bytes. A map that does not exist in this phase is an
    /// `Err`.
    fn header_pairs(&self, map: HeaderMap) -> Result<Vec<HeaderPair>, HostError>;
    /// One header value as bytes (`None` if absent).
    fn header(&self, map: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Replace (or add) a header.
    fn set_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Remove every value of a header.
    fn remove_header(&self, map: HeaderMap, name: &str) -> Result<(), HostError>;
    /// Up to `max` bytes of a buffer from `start` (`None`: no buffer).
    fn buffer(&self, kind: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError>;
    /// Replace `size` bytes of a buffer from `start` with `value`. Re-entrant: a value over
    /// Envoy's buffer limit resets the stream from inside the call.
    fn set_buffer(&self, kind: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError>;
    /// An attribute of the current stream (e.g. `["source", "address"]`) as bytes.
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError>;
    /// Answer the current stream locally. Re-entrant.
    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError>;
    /// Make `context_id` the current stream (background work acting on a paused stream).
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError>;
    /// Let the current stream's paused request go on upstream. Re-entrant.
    fn resume_request(&self) -> Result<(), HostError>;
    /// Send an HTTP request to an Envoy cluster; the answer comes to the root with the returned
    /// token.
    fn dispatch(&self, cluster: &str, headers: &[(&str, &str)], body: Option<&[u8]>, timeout_ms: u64) -> Result<u32, HostError>;
    /// Ask for the root's tick every `period_ms`.
    fn set_tick_period(&self, period_ms: u64) -> Result<(), HostError>;
    /// Write a line to the proxy's log: a sealed audit line, or an operational line built by
    /// [`super::oplog`] (one JSON object); nothing else calls it.
    fn log(&self, level: Level, message: &str);
    /// Define a stat (the proxy returns the same id for the same name).
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    /// Add to a counter.
    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError>;
    /// Set a gauge.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
    /// Now (the epoch if the host cannot tell: every token then looks expired, which fails
    /// closed).
    fn now_ms(&self) -> UnixMillis;
    /// Fill `out` with random bytes.
    fn random(&self, out: &mut [u8]) -> Result<(), HostError>;
    /// A variable of the VM's environment (where secrets come from), if set and text.
    fn env_var(&self, name: &str) -> Option<String>;
}

/// 32 random bits from the host; 0 if it has none (only ever used for jitter).
pub fn random_u32(host: &impl Host) -> u32 {
    let mut r = [0u8; 4];
    host.random(&mut r).map_or(0, |()| u32::from_le_bytes(r))
}

/// A header value from a list of text pairs (case-insensitive name).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}
