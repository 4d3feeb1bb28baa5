//! Envoy shared data (visible to every worker of the same VM id) behind the core's
//! [`SharedStore`], and the helpers the background jobs use on it.

use proxy_wasm::hostcalls::{get_shared_data, set_shared_data};
use proxy_wasm::types::Status;

use crate::shared::{SharedStore, StoreError};

/// Envoy shared data through the proxy-wasm hostcalls.
pub struct Envoy;

impl SharedStore for Envoy {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        get_shared_data(key).map_err(|_| StoreError::Failed)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}

/// A big-endian u64 stored under `key`.
pub fn get_u64(key: &str) -> Option<u64> {
    crate::shared::get_u64(&Envoy, key)
}

/// Store a big-endian u64 under `key` (last writer wins).
pub fn set_u64(key: &str, value: u64) {
    crate::shared::set_u64(&Envoy, key, value);
}

/// Claim a periodic job across workers ([`crate::shared::claim_lease`]).
pub fn claim_lease(key: &str, now: u64, period: u64) -> bool {
    crate::shared::claim_lease(&Envoy, key, now, period)
}

/// Set the next time a lease may be claimed (after a failure: the backoff).
pub fn release_lease_until(key: &str, at: u64) {
    set_u64(key, at);
}

/// A header value from a list of pairs (case-insensitive name).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}
