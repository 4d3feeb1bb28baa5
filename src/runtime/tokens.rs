//! Verified tokens across the workers of one Envoy: a token whose signature one worker verified
//! is not verified again by the others.
//!
//! Each worker keeps its own cache of principals ([`TokenCache`]). On a miss it looks for an
//! *attestation* in Envoy shared data: "the signature of the token with this SHA-256 verified
//! under key set F", MACed with a key derived from the audit secret. With one, the worker runs
//! every check except the signature ([`crate::auth::verify_attested`]: structure, header
//! rules, algorithm pinning, issuer, lifetime, audience, claims); without one it verifies in
//! full and writes the attestation.
//!
//! - **Bounded.** Attestations live in a fixed number of slots (`tokenCache.sharedEntries`),
//!   chosen by the token's hash; a newer token takes the slot. Shared data cannot delete keys,
//!   so the slot count bounds what phi-guard ever stores there (~100 bytes per slot).
//! - **Invalidated with the policy or keys.** F is a SHA-256 over everything the signature step
//!   depends on: each issuer's name, pinned algorithms and keys (kid, algorithm, material) and
//!   the token size limit. A new key set changes F, and older attestations stop matching.
//! - **Never past `exp`.** An attestation vouches for the signature only; lifetime and every
//!   claim are checked again on each use, against the current policy.
//! - **Trust.** Envoy shares this data with every plugin in the same `vm_id`. Another plugin
//!   could read attestations (a hash and a MAC: nothing about the token) but cannot forge one
//!   without the audit secret, which only phi-guard's VMs hold. The shipped configurations give
//!   phi-guard a `vm_id` of its own anyway.

use sha2::{Digest, Sha256};

use crate::audit_key::AuditKey;
use crate::auth::IssuerConfig;
use crate::shared::SharedStore;
use jsonwebtoken::DecodingKeyKind;

/// Shared-data key prefix of the attestation slots.
const SLOT_PREFIX: &str = "phi-guard.verified.";
/// Layout of one slot's value: key-set fingerprint, token hash, MAC.
const ENTRY_BYTES: usize = 96;

/// SHA-256 over what signature verification depends on: the token size limit and, per issuer,
/// its name, pinned algorithms and keys.
pub fn key_set_fingerprint(issuers: &[IssuerConfig], max_token_bytes: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(b"phi-guard key set v1");
    part(&(max_token_bytes as u64).to_be_bytes());
    for issuer in issuers {
        part(issuer.issuer.as_bytes());
        for alg in &issuer.algorithms {
            part(format!("{alg:?}").as_bytes());
        }
        for key in &issuer.keys {
            part(key.kid.as_deref().unwrap_or("").as_bytes());
            part(format!("{:?}/{:?}/{:?}", key.alg, key.family, key.ec_alg).as_bytes());
            match key.key.kind() {
                DecodingKeyKind::SecretOrDer(bytes) => part(bytes),
                DecodingKeyKind::RsaModulusExponent { n, e } => {
                    part(n);
                    part(e);
                }
            }
        }
    }
    h.finalize().into()
}

/// The attestation slots for one policy and key set.
#[derive(Debug, Clone)]
pub struct SharedTokens {
    slots: u64,
    fingerprint: [u8; 32],
}

impl SharedTokens {
    /// Slots for this key set; `None` when `slots` is 0 (sharing disabled).
    pub fn new(slots: usize, fingerprint: [u8; 32]) -> Option<Self> {
        (slots > 0).then_some(SharedTokens { slots: slots as u64, fingerprint })
    }

    fn slot(&self, token_hash: &[u8; 32]) -> String {
        let mut first = [0u8; 8];
        first.copy_from_slice(token_hash.get(..8).unwrap_or(&[0; 8]));
        format!("{SLOT_PREFIX}{}", u64::from_be_bytes(first) % self.slots)
    }

    fn mac(&self, key: &AuditKey, token_hash: &[u8; 32]) -> [u8; 32] {
        key.attestation(&[&self.fingerprint, token_hash])
    }

    /// Whether another worker (or this one) recorded that the token with this hash verified
    /// under this key set. A store error or a foreign, stale or forged entry is "no".
    pub fn attested(&self, store: &impl SharedStore, key: &AuditKey, token_hash: &[u8; 32]) -> bool {
        let Ok((Some(value), _)) = store.get(&self.slot(token_hash)) else { return false };
        if value.len() != ENTRY_BYTES {
            return false;
        }
        let (fingerprint, rest) = value.split_at(32);
        let (hash, mac) = rest.split_at(32);
        // The MAC covers the fingerprint and the hash; comparing it in constant time keeps a
        // plugin that can write shared data from learning a valid MAC byte by byte.
        fingerprint == self.fingerprint && hash == token_hash && constant_time_eq(mac, &self.mac(key, token_hash))
    }

    /// Record that the token with this hash verified under this key set (last writer wins the
    /// slot; a failed write only costs another worker a verification).
    pub fn record(&self, store: &impl SharedStore, key: &AuditKey, token_hash: &[u8; 32]) {
        let mut value = Vec::with_capacity(ENTRY_BYTES);
        value.extend_from_slice(&self.fingerprint);
        value.extend_from_slice(token_hash);
        value.extend_from_slice(&self.mac(key, token_hash));
        let _ = store.set(&self.slot(token_hash), &value, None);
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{audit_key, issuer, MemoryStore};

    fn hash(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn attestations_are_shared_bound_to_the_key_set_and_unforgeable() {
        let store = MemoryStore::default();
        let key = audit_key();
        let fp = key_set_fingerprint(&[issuer()], 8192);
        let shared = SharedTokens::new(16, fp).unwrap();
        assert!(!shared.attested(&store, &key, &hash(1)));
        shared.record(&store, &key, &hash(1));
        // Another worker, same policy and keys: attested.
        assert!(SharedTokens::new(16, key_set_fingerprint(&[issuer()], 8192)).unwrap().attested(&store, &key, &hash(1)));
        // Another token in the same slot is not.
        let other = {
            let mut h = hash(1);
            h[31] = 9;
            h
        };
        assert!(!shared.attested(&store, &key, &other));
        // A new key set (a key dropped), another size limit or another issuer: not attested.
        let mut rotated = issuer();
        rotated.keys.pop();
        assert_ne!(key_set_fingerprint(&[rotated.clone()], 8192), fp);
        assert!(!SharedTokens::new(16, key_set_fingerprint(&[rotated], 8192)).unwrap().attested(&store, &key, &hash(1)));
        assert!(!SharedTokens::new(16, key_set_fingerprint(&[issuer()], 4096)).unwrap().attested(&store, &key, &hash(1)));
        let mut algs = issuer();
        algs.algorithms.pop();
        assert_ne!(key_set_fingerprint(&[algs], 8192), fp);
        // Without the audit secret, no entry is accepted: a forged MAC, or one under another key.
        let other_key = AuditKey::from_secret(b"another-secret-0123456789abcdefgh").unwrap();
        assert!(!shared.attested(&store, &other_key, &hash(1)));
        let slot = shared.slot(&hash(2));
        let mut forged = fp.to_vec();
        forged.extend_from_slice(&hash(2));
        forged.extend_from_slice(&[0u8; 32]);
        store.set(&slot, &forged, None).unwrap();
        assert!(!shared.attested(&store, &key, &hash(2)));
        // Truncated or oversized values, and a failing store, are "no".
        store.set(&shared.slot(&hash(3)), &forged[..95], None).unwrap();
        assert!(!shared.attested(&store, &key, &hash(3)));
        store.fail.set(true);
        assert!(!shared.attested(&store, &key, &hash(1)));
        assert!(SharedTokens::new(0, fp).is_none(), "0 slots disables sharing");
    }

    #[test]
    fn slots_bound_the_store() {
        let store = MemoryStore::default();
        let key = audit_key();
        let shared = SharedTokens::new(4, [7; 32]).unwrap();
        for n in 0..=255u8 {
            let mut h = [0u8; 32];
            h[7] = n;
            h[31] = n;
            shared.record(&store, &key, &h);
        }
        assert_eq!(store.keys().len(), 4);
    }
}
