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

/// Whether a one-time value (a DPoP proof) was seen before, as [`remember_once`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    /// Not seen before; now remembered.
    First,
    /// Already remembered and not yet expired: a replay.
    Seen,
    /// The record could not be read or written, or its slot is full of live entries: the
    /// caller must refuse (a replay cannot be ruled out).
    Unknown,
}

/// Live entries one replay slot holds.
pub const REPLAY_SLOT_ENTRIES: usize = 8;
/// One entry: the first 16 bytes of the key, then the expiry (big-endian Unix seconds).
const REPLAY_ENTRY_BYTES: usize = 24;
/// The `cas` used to create a slot that was absent: Envoy creates a missing key whatever the
/// `cas`, but compares it with a key another worker created in the meantime, which then fails
/// (its version is never this value in practice) and the slot is read again.
const CREATE_ONLY: u32 = u32::MAX;

/// Remember `key` until `until` in the replay record under `prefix` (`slots` slots of
/// [`REPLAY_SLOT_ENTRIES`] entries, the slot chosen by the key), atomically across workers:
/// exactly one caller gets [`FirstUse::First`] for a key however many race for it. Expired
/// entries are dropped as the slot is rewritten, so the record never grows past its slots.
pub fn remember_once(store: &impl SharedStore, prefix: &str, slots: u64, key: &[u8; 32], until: UnixSeconds, now: UnixSeconds) -> FirstUse {
    let mut first = [0u8; 8];
    first.copy_from_slice(key.get(..8).unwrap_or(&[0; 8]));
    let slot = format!("{prefix}{}", u64::from_be_bytes(first) % slots.max(1));
    let id = key.get(..16).unwrap_or(&[]);
    for _ in 0..CAS_ATTEMPTS {
        let Ok((value, cas)) = store.get(&slot) else { return FirstUse::Unknown };
        let value = value.unwrap_or_default();
        let mut next = Vec::with_capacity(value.len() + REPLAY_ENTRY_BYTES);
        for entry in value.chunks_exact(REPLAY_ENTRY_BYTES) {
            let (entry_id, expiry) = entry.split_at(16);
            let expiry = expiry.try_into().map(UnixSeconds::from_be_bytes).unwrap_or_default();
            if expiry <= now {
                continue;
            }
            if entry_id == id {
                return FirstUse::Seen;
            }
            next.extend_from_slice(entry);
        }
        if next.len() >= REPLAY_SLOT_ENTRIES * REPLAY_ENTRY_BYTES {
            return FirstUse::Unknown;
        }
        next.extend_from_slice(id);
        next.extend_from_slice(&until.to_be_bytes());
        match store.set(&slot, &next, Some(cas.unwrap_or(CREATE_ONLY))) {
            Ok(()) => return FirstUse::First,
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => return FirstUse::Unknown,
        }
    }
    FirstUse::Unknown
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
    fn a_one_time_value_is_first_used_once_across_workers() {
        let store = MemoryStore::default();
        let (now, until) = (UnixSeconds::new(1_000), UnixSeconds::new(1_066));
        let key = |n: u8| {
            let mut k = [n; 32];
            k[..8].copy_from_slice(&[0; 8]); // every key in slot 0
            k
        };
        assert_eq!(remember_once(&store, "r.", 4, &key(1), until, now), FirstUse::First);
        assert_eq!(remember_once(&store, "r.", 4, &key(1), until, now), FirstUse::Seen);
        assert_eq!(remember_once(&store, "r.", 4, &key(1), until, UnixSeconds::new(1_065)), FirstUse::Seen);
        // Expired: forgotten (the proof itself is stale by then).
        assert_eq!(remember_once(&store, "r.", 4, &key(1), UnixSeconds::new(2_000), until), FirstUse::First);
        // A slot full of live entries refuses rather than forgetting one.
        for n in 2..=8 {
            assert_eq!(remember_once(&store, "r.", 4, &key(n), until, now), FirstUse::First, "{n}");
        }
        assert_eq!(remember_once(&store, "r.", 4, &key(9), until, now), FirstUse::Unknown);
        // ... until its entries expire.
        assert_eq!(remember_once(&store, "r.", 4, &key(9), UnixSeconds::new(3_000), UnixSeconds::new(2_500)), FirstUse::First);
        assert_eq!(store.keys(), ["r.0"]);
        // Lost races are retried and see the winner's entry; failures are "unknown".
        store.lose_races.set(2);
        assert_eq!(remember_once(&store, "r.", 4, &key(10), UnixSeconds::new(3_000), UnixSeconds::new(2_500)), FirstUse::First);
        store.lose_races.set(CAS_ATTEMPTS);
        assert_eq!(remember_once(&store, "r.", 4, &key(11), UnixSeconds::new(3_000), UnixSeconds::new(2_500)), FirstUse::Unknown);
        store.fail.set(true);
        assert_eq!(remember_once(&store, "r.", 4, &key(12), UnixSeconds::new(3_000), UnixSeconds::new(2_500)), FirstUse::Unknown);
    }

    #[test]
    fn a_slot_created_by_another_worker_meanwhile_is_read_again() {
        let store = MemoryStore::default();
        let key = [7u8; 32];
        let (now, until) = (UnixSeconds::new(1_000), UnixSeconds::new(1_066));
        // Another worker created the slot with this very key after our read: our create-only
        // write must fail and the retry must see it.
        assert_eq!(remember_once(&store, "r.", 1, &key, until, now), FirstUse::First);
        let (v, _) = store.get("r.0").unwrap();
        store.data.borrow_mut().clear();
        store.data.borrow_mut().insert("r.0".into(), (v.unwrap(), 41));
        assert_eq!(remember_once(&store, "r.", 1, &key, until, now), FirstUse::Seen);
        assert!(store.set("r.0", b"", Some(CREATE_ONLY)).is_err(), "an existing slot is not overwritten by a create");
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
