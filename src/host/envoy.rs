//! [`Host`] over the proxy-wasm ABI: headers, buffers, properties and local replies through
//! [`abi`] (bytes, every host status an `Err`), the rest through `proxy_wasm::hostcalls`, whose
//! `Result`s are handled. The SDK's string getters and trait helpers `unwrap` (UTF-8, host
//! errors), and a panic would take the worker's VM down.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

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

impl SharedStore for Envoy {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(|_| StoreError::Failed)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
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
        hostcalls::set_effective_context(context_id).map_err(err)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        hostcalls::resume_http_request().map_err(err)
    }

    fn dispatch(&self, cluster: &str, headers: &[(&str, &str)], body: Option<&[u8]>, timeout_ms: u64) -> Result<u32, HostError> {
        // Through the SDK: it registers the token so the answer reaches the root context.
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], Duration::from_millis(timeout_ms)).map_err(err)
    }

    fn set_tick_period(&self, period_ms: u64) -> Result<(), HostError> {
        hostcalls::set_tick_period(Duration::from_millis(period_ms)).map_err(err)
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hostcalls::define_metric(kind, name).map_err(err)
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError> {
        hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)).map_err(err)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        hostcalls::record_metric(id, value).map_err(err)
    }

    fn now_ms(&self) -> UnixMillis {
        let ms = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        UnixMillis::new(ms)
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HostError> {
        // WASI `random_get`, which Envoy's V8 host provides.
        getrandom::getrandom(out).map_err(|e| HostError(e.code().get()))
    }

    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}
