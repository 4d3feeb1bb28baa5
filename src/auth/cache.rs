//! Per-VM cache of verified tokens. Keyed by the SHA-256 of the token (the token itself is never
//! stored), bounded, and an entry is never used past the token's `exp` (plus the issuer's skew).
//! A new policy builds a new, empty cache.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::principal::Principal;
use crate::time::UnixSeconds;

/// Bounded verified-token cache.
#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Rc<Principal>>,
    order: VecDeque<[u8; 32]>,
    hits: u64,
    misses: u64,
}

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        TokenCache { capacity, entries: HashMap::new(), order: VecDeque::new(), hits: 0, misses: 0 }
    }

    /// The key a token is cached under: its SHA-256 (the token itself is never stored). Also
    /// the name workers share a verification under (`runtime::tokens`).
    pub fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The cached principal for `token`, if it was verified and is still within its lifetime.
    pub fn get(&mut self, token: &str, now: UnixSeconds) -> Option<Rc<Principal>> {
        self.get_by_key(&Self::key(token), now)
    }

    /// [`get`](Self::get) by the token's [`key`](Self::key).
    pub fn get_by_key(&mut self, key: &[u8; 32], now: UnixSeconds) -> Option<Rc<Principal>> {
        let key = *key;
        match self.entries.get(&key) {
            Some(p) if now < p.valid_until => {
                self.hits += 1;
                return Some(Rc::clone(p));
            }
            Some(_) => {
                self.entries.remove(&key);
            }
            None => {}
        }
        self.misses += 1;
        None
    }

    /// Remember a verified principal, evicting expired entries first and then the oldest.
    pub fn insert(&mut self, token: &str, principal: Rc<Principal>, now: UnixSeconds) {
        self.insert_by_key(Self::key(token), principal, now);
    }

    /// [`insert`](Self::insert) by the token's [`key`](Self::key).
    pub fn insert_by_key(&mut self, key: [u8; 32], principal: Rc<Principal>, now: UnixSeconds) {
        if self.capacity == 0 || now >= principal.valid_until {
            return;
        }
        // `get` drops expired entries without touching `order`; sweep here so neither grows
        // past the bound.
        if self.entries.len() >= self.capacity || self.order.len() >= 2 * self.capacity {
            self.entries.retain(|_, p| now < p.valid_until);
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        if self.entries.insert(key, principal).is_none() {
            self.order.push_back(key);
        }
    }

    /// Lookups answered from the cache, and lookups that were not, since creation.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(valid_until: u64) -> Rc<Principal> {
        let valid_until = UnixSeconds::new(valid_until);
        Rc::new(Principal {
            issuer: "i".into(),
            subject: None,
            client_id: None,
            scopes: vec![],
            smart_scopes: vec![],
            patient: None,
            purpose: vec![],
            token_id: None,
            expires_at: valid_until,
            valid_until,
            ..Principal::default()
        })
    }

    #[test]
    fn honours_expiry_and_bound() {
        let mut c = TokenCache::new(2);
        c.insert("a", principal(100), UnixSeconds::new(10));
        assert!(c.get("a", UnixSeconds::new(99)).is_some());
        assert!(c.get("a", UnixSeconds::new(100)).is_none(), "never outlives exp");
        assert!(c.is_empty());
        c.insert("a", principal(100), UnixSeconds::new(10));
        c.insert("b", principal(100), UnixSeconds::new(10));
        c.insert("c", principal(100), UnixSeconds::new(10));
        assert_eq!(c.len(), 2);
        assert!(c.get("a", UnixSeconds::new(11)).is_none(), "oldest evicted");
        assert!(c.get("c", UnixSeconds::new(11)).is_some());
        c.insert("d", principal(5), UnixSeconds::new(10));
        assert!(c.get("d", UnixSeconds::new(10)).is_none(), "expired tokens are not cached");
        let mut off = TokenCache::new(0);
        off.insert("a", principal(100), UnixSeconds::new(10));
        assert!(off.get("a", UnixSeconds::new(11)).is_none());
    }
}
