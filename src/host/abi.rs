//! Byte-level hostcalls that never panic.
//!
//! proxy-wasm 0.2.5's getters `unwrap` a UTF-8 conversion (`get_map`, `get_map_value`, and even
//! `get_map_bytes` for header *names*) and `panic!` on any host status they do not expect (e.g.
//! reading a map that does not exist in the current phase). One request with a Latin-1 header
//! byte would take the worker's VM down. These wrappers call the same ABI functions and return
//! bytes and `Err(status)`; what an undecodable value means is decided by the caller.
//!
//! Memory returned by the host is allocated through the SDK's exported
//! `proxy_on_memory_allocate` (a `Vec<u8>` of exactly that capacity), so it is taken back with
//! `Vec::from_raw_parts(ptr, len, len)`, as the SDK itself does.

use std::ptr::{null, null_mut};

use proxy_wasm::types::{BufferType, MapType};

/// Raw bytes from the host.
pub type Bytes = Vec<u8>;

/// A host status other than `Ok` (and other than `NotFound` where that means "absent").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostStatus(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(map_type: u32, key_data: *const u8, key_size: usize, value_data: *const u8, value_size: usize)
        -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, size: usize, buffer_data: *const u8, buffer_size: usize) -> u32;
    fn proxy_get_property(path_data: *const u8, path_size: usize, return_value_data: *mut *mut u8, return_value_size: *mut usize) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key_data: *const u8, key_size: usize, value_data: *const u8, value_size: usize, cas: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// Take ownership of host-allocated bytes (`None` for a null pointer).
fn take(data: *mut u8, size: usize) -> Option<Bytes> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host allocated `size` bytes at `data` through `proxy_on_memory_allocate`,
    // which hands out the buffer of a `Vec<u8>` with capacity `size`, and gave up ownership.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Every header of `map` as raw (name, value) pairs, in order. A map that does not exist in
/// this phase is `Err`, never a panic.
pub fn header_pairs(map: MapType) -> Result<Vec<(Bytes, Bytes)>, HostStatus> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: plain hostcall; the out-pointers are valid for the duration of the call.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    let bytes = take(data, size);
    match status {
        OK => Ok(bytes.map_or_else(Vec::new, |b| deserialize_pairs(&b))),
        NOT_FOUND => Ok(Vec::new()),
        s => Err(HostStatus(s)),
    }
}

/// One header value as raw bytes (`None` if absent).
pub fn header(map: MapType, name: &str) -> Result<Option<Bytes>, HostStatus> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: plain hostcall; `name` outlives the call; the out-pointers are valid.
    let status = unsafe { proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size) };
    let bytes = take(data, size);
    match status {
        OK => Ok(Some(bytes.unwrap_or_default())),
        NOT_FOUND => Ok(None),
        s => Err(HostStatus(s)),
    }
}

fn status(s: u32) -> Result<(), HostStatus> {
    if s == OK {
        Ok(())
    } else {
        Err(HostStatus(s))
    }
}

/// Replace (or add) a header.
pub fn set_header(map: MapType, name: &str, value: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: plain hostcall over borrowed slices that outlive it.
    status(unsafe { proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Remove every value of a header.
pub fn remove_header(map: MapType, name: &str) -> Result<(), HostStatus> {
    // SAFETY: plain hostcall over a borrowed slice that outlives it.
    status(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Up to `max` bytes of a buffer from `start` (`None`: no buffer).
pub fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Option<Bytes>, HostStatus> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: plain hostcall; the out-pointers are valid for the duration of the call.
    let status = unsafe { proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    let bytes = take(data, size);
    match status {
        OK => Ok(bytes),
        NOT_FOUND => Ok(None),
        s => Err(HostStatus(s)),
    }
}

/// Replace `size` bytes of a buffer from `start` with `value`. The caller keeps `value` below
/// Envoy's buffer limit: a larger buffer makes Envoy reset the stream from inside this call.
pub fn set_buffer(kind: BufferType, start: usize, size: usize, value: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: plain hostcall over a borrowed slice that outlives it.
    status(unsafe { proxy_set_buffer_bytes(kind as u32, start, size, value.as_ptr(), value.len()) })
}

/// An Envoy attribute (e.g. `["source", "address"]`) as raw bytes.
pub fn property(path: &[&str]) -> Result<Option<Bytes>, HostStatus> {
    let mut serialized = Vec::new();
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            serialized.push(0);
        }
        serialized.extend_from_slice(part.as_bytes());
    }
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: plain hostcall; `serialized` outlives it; the out-pointers are valid.
    let status = unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    let bytes = take(data, size);
    match status {
        OK => Ok(bytes),
        NOT_FOUND => Ok(None),
        s => Err(HostStatus(s)),
    }
}

/// Answer the current stream locally. Envoy runs the reply after the current callback returns.
pub fn send_response(code: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostStatus> {
    let map = serialize_pairs(headers);
    // SAFETY: plain hostcall over borrowed buffers that outlive it.
    status(unsafe { proxy_send_local_response(code, null(), 0, body.as_ptr(), body.len(), map.as_ptr(), map.len(), -1) })
}

/// The ABI's map encoding: count, (name size, value size) per pair, then each name and value
/// followed by a NUL.
fn serialize_pairs(pairs: &[(&str, &str)]) -> Bytes {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Decode the ABI's map encoding without trusting it: a malformed map yields the pairs read so
/// far, never a panic.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Vec<(Bytes, Bytes)> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]) as usize)
    };
    let Some(count) = u32_at(0) else { return Vec::new() };
    let mut out = Vec::new();
    let Some(mut p) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else { return out };
    for n in 0..count {
        let s = 4 + n * 8;
        let (Some(klen), Some(vlen)) = (u32_at(s), u32_at(s + 4)) else { break };
        let Some(key) = p.checked_add(klen).and_then(|end| bytes.get(p..end)) else { break };
        p += klen + 1;
        let Some(value) = p.checked_add(vlen).and_then(|end| bytes.get(p..end)) else { break };
        p += vlen + 1;
        out.push((key.to_vec(), value.to_vec()));
    }
    out
}

/// Log levels of `proxy_log` (the ABI's numbering).
#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    /// 2.
    Info = 2,
    /// 3.
    Warn = 3,
    /// 4.
    Error = 4,
}

/// Write a line to Envoy's log.
pub fn log(level: LogLevel, message: &str) -> Result<(), HostStatus> {
    // SAFETY: the message outlives the call.
    status(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// Envoy's clock, nanoseconds since the Unix epoch.
pub fn now_nanos() -> Result<u64, HostStatus> {
    let mut t = 0u64;
    // SAFETY: `t` is a valid place for the host to write the time.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

/// Ask for `on_tick` every `period_ms` (0 stops it).
pub fn set_tick_period(period_ms: u32) -> Result<(), HostStatus> {
    // SAFETY: plain value.
    status(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

/// A shared-data value and its version (`NotFound`: none).
pub fn shared_data(key: &str) -> Result<(Option<Bytes>, Option<u32>), HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    // SAFETY: the out-pointers are valid; returned memory comes from our allocator (`take`).
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) } {
        OK => Ok((take(data, size), (cas != 0).then_some(cas))),
        NOT_FOUND => Ok((None, None)),
        s => Err(HostStatus(s)),
    }
}

/// Write a shared-data value; with `cas`, only if the version still matches (`CasMismatch`
/// otherwise, status 8).
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostStatus> {
    // SAFETY: key and value outlive the call.
    status(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0)) })
}

/// Resume the current stream's paused request.
pub fn resume_request() -> Result<(), HostStatus> {
    // SAFETY: plain value (stream type 0: the HTTP request).
    status(unsafe { proxy_continue_stream(0) })
}

/// Make `context_id` the stream later hostcalls act on.
pub fn set_effective_context(context_id: u32) -> Result<(), HostStatus> {
    // SAFETY: plain value.
    status(unsafe { proxy_set_effective_context(context_id) })
}

/// Define a metric (type 0: counter, 1: gauge) and return its id.
pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, HostStatus> {
    let mut id = 0u32;
    // SAFETY: the name outlives the call; `id` is a valid place to write to.
    status(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Add to a counter.
pub fn increment_metric(id: u32, by: i64) -> Result<(), HostStatus> {
    // SAFETY: plain values.
    status(unsafe { proxy_increment_metric(id, by) })
}

/// Set a gauge.
pub fn record_metric(id: u32, value: u64) -> Result<(), HostStatus> {
    // SAFETY: plain values.
    status(unsafe { proxy_record_metric(id, value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_malformed_maps_never_panic() {
        let map = serialize_pairs(&[(":path", "/x"), ("x-test", "caf")]);
        assert_eq!(deserialize_pairs(&map), vec![(b":path".to_vec(), b"/x".to_vec()), (b"x-test".to_vec(), b"caf".to_vec())]);
        for cut in 0..map.len() {
            let _ = deserialize_pairs(&map[..cut]);
        }
        assert!(deserialize_pairs(&[0xff, 0xff, 0xff, 0xff]).is_empty());
    }
}
