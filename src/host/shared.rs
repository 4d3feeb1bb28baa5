//! Small helpers over Envoy shared data (visible to every worker of the same VM id).

use proxy_wasm::hostcalls::{get_shared_data, set_shared_data};

/// A big-endian u64 stored under `key`.
pub fn get_u64(key: &str) -> Option<u64> {
    get_shared_data(key).ok().and_then(|(v, _)| v).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// Store a big-endian u64 under `key` (last writer wins).
pub fn set_u64(key: &str, value: u64) {
    let _ = set_shared_data(key, Some(&value.to_be_bytes()), None);
}

/// Claim a periodic job across workers: if the time stored under `key` has come, move it
/// `period` seconds ahead with compare-and-swap; only the worker whose swap succeeds runs the job.
pub fn claim_lease(key: &str, now: u64, period: u64) -> bool {
    let Ok((value, cas)) = get_shared_data(key) else { return false };
    let next = value.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
    now >= next && set_shared_data(key, Some(&now.saturating_add(period).to_be_bytes()), cas).is_ok()
}

/// Set the next time a lease may be claimed (after a failure: the backoff).
pub fn release_lease_until(key: &str, at: u64) {
    set_u64(key, at);
}

/// A header value from a list of pairs (case-insensitive name).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}
