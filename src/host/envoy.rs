//! [`Host`] over the proxy-wasm ABI through [`abi`]: bytes, and every host status an `Err`.
//! proxy-wasm 0.2.5's own wrappers `unwrap` UTF-8 and `panic!` on a status they do not expect
//! (log, clock, tick, shared data, resume, effective context, metrics), and a panic would take
//! the worker's VM down. Only `dispatch_http_call` goes through the SDK: it registers the
//! callout's token so the answer reaches the root context.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

use super::abi;
use crate::runtime::{Buffer, HeaderMap, HeaderPair, Host, HostError, Level, MetricKind, UnixMillis};
use crate::shared::{SharedStore, StoreError};

/// Envoy, as seen from inside its wasm VM.
pub struct Envoy;

fn map(m: HeaderMap) -> MapType {
    match m {
        HeaderMap::RequestHeaders => MapType::HttpRequestHeaders,
        HeaderMap::ResponseHeaders => MapType::HttpResponseHeaders,
        HeaderMap::ResponseTrailers => MapType::HttpResponseTrailers,
        HeaderMap::CallResponseHeaders => MapType::HttpCallResponseHeaders,
    }
}

fn buffer(b: Buffer) -> BufferType {
    match b {
        Buffer::RequestBody => BufferType::HttpRequestBody,
        Buffer::ResponseBody => BufferType::HttpResponseBody,
        Buffer::CallResponseBody => BufferType::HttpCallResponseBody,
        Buffer::PluginConfiguration => BufferType::PluginConfiguration,
    }
}

fn err(s: Status) -> HostError {
    HostError(s as u32)
}

fn abi_err(s: abi::HostStatus) -> HostError {
    HostError(s.0)
}

/// `proxy_set_shared_data`'s answer when the version moved on.
const CAS_MISMATCH: u32 = Status::CasMismatch as u32;

impl SharedStore for Envoy {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        abi::shared_data(key).map_err(|_| StoreError::Failed)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match abi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(abi::HostStatus(CAS_MISMATCH)) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}

impl Host for Envoy {
    fn header_pairs(&self, m: HeaderMap) -> Result<Vec<HeaderPair>, HostError> {
        abi::header_pairs(map(m)).map_err(abi_err)
    }

    fn header(&self, m: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        abi::header(map(m), name).map_err(abi_err)
    }

    fn set_header(&self, m: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError> {
        abi::set_header(map(m), name, value).map_err(abi_err)
    }

    fn remove_header(&self, m: HeaderMap, name: &str) -> Result<(), HostError> {
        abi::remove_header(map(m), name).map_err(abi_err)
    }

    fn buffer(&self, kind: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError> {
        abi::buffer(buffer(kind), start, max).map_err(abi_err)
    }

    fn set_buffer(&self, kind: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
        abi::set_buffer(buffer(kind), start, size, value).map_err(abi_err)
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        abi::property(path).map_err(abi_err)
    }

    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
        abi::send_response(u32::from(status), headers, body).map_err(abi_err)
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        abi::set_effective_context(context_id).map_err(abi_err)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        abi::resume_request().map_err(abi_err)
    }

    fn dispatch(&self, cluster: &str, headers: &[(&str, &str)], body: Option<&[u8]>, timeout_ms: u64) -> Result<u32, HostError> {
        // Through the SDK: it registers the token so the answer reaches the root context.
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], Duration::from_millis(timeout_ms)).map_err(err)
    }

    fn set_tick_period(&self, period_ms: u64) -> Result<(), HostError> {
        abi::set_tick_period(u32::try_from(period_ms).unwrap_or(u32::MAX)).map_err(abi_err)
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => abi::LogLevel::Info,
            Level::Warn => abi::LogLevel::Warn,
            Level::Error => abi::LogLevel::Error,
        };
        let _ = abi::log(level, message);
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
        };
        abi::define_metric(kind, name).map_err(abi_err)
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError> {
        abi::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)).map_err(abi_err)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        abi::record_metric(id, value).map_err(abi_err)
    }

    fn now_ms(&self) -> UnixMillis {
        // A clock the host cannot read reads as the epoch rather than a panic.
        UnixMillis::new(abi::now_nanos().map_or(0, |ns| ns / 1_000_000))
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HostError> {
        // WASI `random_get`, which Envoy's V8 host provides.
        getrandom::getrandom(out).map_err(|e| HostError(e.code().get()))
    }

    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}
