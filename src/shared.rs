//! Data shared by every worker of one Envoy (Envoy shared data) as the core sees it: a key-value
//! store with compare-and-swap. The filter's host implements [`SharedStore`] over the proxy-wasm
//! hostcalls; tests use `testing::MemoryStore`, which can also lose races on purpose. What
//! runs on it here (rate-limit buckets, leases for periodic jobs) is tested natively.

use crate::ratelimit::{Bucket, RateLimit};
use crate::time::{UnixMillis, UnixSeconds};

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker wrote the key since it was read.
    CasMismatch,
    /// The host refused the call.
    Failed,
}

/// Envoy shared data: values with a version (`cas`) that a write can be made conditional on.
pub trait SharedStore {
    /// The value under `key` (if any) and its version.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Write `value` under `key`; with `cas`, only if the key is still at that version.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// How often a compare-and-swap is retried under contention before the caller gives up.
const CAS_ATTEMPTS: usize = 8;

/// Take one request from the shared bucket `key` of `limit` (compare-and-swap, retried under
/// contention). `Err` carries the seconds to wait; persistent contention or a store failure
/// refuses (fail closed).
pub fn take_from_bucket(store: &impl SharedStore, limit: &RateLimit, key: &str, now: UnixMillis) -> Result<(), u64> {
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = store.get(key).map_err(|_| 1u64)?;
        let next = limit.take(value.as_deref().and_then(Bucket::decode), now)?;
        match store.set(key, &next.encode(), cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => return Err(1),
        }
    }
    Err(1)
}

/// The instant stored under `key` (big-endian Unix seconds).
pub fn get_time(store: &impl SharedStore, key: &str) -> Option<UnixSeconds> {
    store.get(key).ok().and_then(|(v, _)| v).and_then(|b| b.try_into().ok()).map(UnixSeconds::from_be_bytes)
}

/// Store an instant under `key` (big-endian Unix seconds; last writer wins).
pub fn set_time(store: &impl SharedStore, key: &str, at: UnixSeconds) {
    let _ = store.set(key, &at.to_be_bytes(), None);
}

/// Claim a periodic job across workers: if the time stored under `key` has come, move it
/// `period` seconds ahead with compare-and-swap; only the worker whose swap succeeds runs the
/// job.
pub fn claim_lease(store: &impl SharedStore, key: &str, now: UnixSeconds, period: u64) -> bool {
    let Ok((value, cas)) = store.get(key) else { return false };
    let next = value.and_then(|b| b.try_into().ok()).map_or(UnixSeconds::default(), UnixSeconds::from_be_bytes);
    now >= next && store.set(key, &now.add_secs(period).to_be_bytes(), cas).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::LimitBy;
    use crate::testing::MemoryStore;

    fn limit(burst: u64) -> RateLimit {
        RateLimit { id: "l".into(), by: LimitBy::Subject, refill_milli_per_sec: 1000, burst, routes: vec![] }
    }

    #[test]
    fn bucket_is_drawn_down_across_callers_then_refused() {
        let store = MemoryStore::default();
        let l = limit(2);
        assert_eq!(take_from_bucket(&store, &l, "k", UnixMillis::new(1_000)), Ok(()));
        assert_eq!(take_from_bucket(&store, &l, "k", UnixMillis::new(1_000)), Ok(()));
        let retry = take_from_bucket(&store, &l, "k", UnixMillis::new(1_000)).unwrap_err();
        assert!(retry >= 1);
        // A second later one token has come back.
        assert_eq!(take_from_bucket(&store, &l, "k", UnixMillis::new(2_000)), Ok(()));
    }

    #[test]
    fn contention_is_retried_then_refused_and_failures_refuse() {
        let store = MemoryStore::default();
        let l = limit(10);
        assert_eq!(take_from_bucket(&store, &l, "k", UnixMillis::new(1_000)), Ok(()));
        store.lose_races.set(3);
        assert_eq!(take_from_bucket(&store, &l, "k", UnixMillis::new(1_000)), Ok(()));
        assert_eq!(store.writes.get(), 5, "the first write, three lost races, then the write");
        // Losing every race: refused (fail closed), never an unlimited pass.
        store.lose_races.set(CAS_ATTEMPTS);
        assert_eq!(take_from_bucket(&store, &l, "k", UnixMillis::new(1_000)), Err(1));
        store.fail.set(true);
        assert_eq!(take_from_bucket(&store, &l, "k", UnixMillis::new(1_000)), Err(1));
    }

    #[test]
    fn a_lease_goes_to_one_worker_per_period() {
        let store = MemoryStore::default();
        assert!(claim_lease(&store, "job", UnixSeconds::new(100), 30));
        assert!(!claim_lease(&store, "job", UnixSeconds::new(110), 30), "claimed until 130");
        assert!(claim_lease(&store, "job", UnixSeconds::new(130), 30));
        // Two workers read the same version: only the first swap wins.
        store.lose_races.set(1);
        assert!(!claim_lease(&store, "job", UnixSeconds::new(200), 30));
        store.fail.set(true);
        assert!(!claim_lease(&store, "job", UnixSeconds::new(300), 30));
        store.fail.set(false);
        set_time(&store, "n", UnixSeconds::new(42));
        assert_eq!(get_time(&store, "n"), Some(UnixSeconds::new(42)));
    }
}
