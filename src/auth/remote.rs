//! Remote JWKS: configuration and the per-issuer key state machine (pure; the host fetches).
//!
//! Rules: keys are refreshed before they expire; an unknown `kid` triggers a refetch at most
//! once per `refetch_interval`; a fetch failure keeps the last good keys; after `max_staleness`
//! without a successful fetch the keys are dropped and tokens are refused with 503
//! `keys_unavailable` (distinguishable from a bad token) — never accepted, never a hang.

use serde_json::Value;

use super::keys::{parse_jwk, VerifyKey};
use crate::time::UnixSeconds;
use jsonwebtoken::Algorithm;

/// Where and how often to fetch an issuer's JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// Envoy cluster serving the JWKS.
    pub cluster: String,
    /// Request path (`/.well-known/jwks.json`).
    pub path: String,
    /// `:authority` sent.
    pub authority: String,
    /// Keys are refreshed after this many seconds (at 80 %, so before they go stale).
    pub refresh: u64,
    /// Without a successful fetch for this many seconds, keys are dropped (fail closed).
    pub max_staleness: u64,
    /// Least time between refetches triggered by unknown `kid`s, in seconds.
    pub refetch_interval: u64,
    /// How long a request may wait for the first keys, in milliseconds.
    pub wait_ms: u64,
    /// Deadline of one fetch, in milliseconds.
    pub timeout_ms: u64,
    /// With OpenID discovery: the path of the discovery document, read before each JWKS fetch
    /// for the JWKS path (`path` is then unused).
    pub discovery: Option<String>,
}

/// Keys of one remote issuer on one worker.
#[derive(Debug, Clone, Default)]
pub struct KeyState {
    keys: Vec<VerifyKey>,
    /// When the fetch that produced `keys` happened.
    fetched_at: Option<UnixSeconds>,
}

/// Why a fetched JWKS was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JSON Web Key Set")]
    NotAKeySet,
    /// No key in the set can verify any pinned algorithm.
    #[error("no usable signing key for the pinned algorithms")]
    NoUsableKey,
}

/// Parse a fetched JWKS: keys that are not usable signing keys for `algorithms` (encryption
/// keys, other key types, private material) are skipped, as identity providers publish them;
/// a set with no usable key is an error and the previous keys stay.
pub fn parse_remote_jwks(body: &[u8], algorithms: &[Algorithm]) -> Result<Vec<VerifyKey>, JwksError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| JwksError::NotAKeySet)?;
    let list = value.get("keys").and_then(Value::as_array).ok_or(JwksError::NotAKeySet)?;
    let keys: Vec<VerifyKey> = list.iter().filter_map(|k| parse_jwk(k).ok()).filter(|k| algorithms.iter().any(|a| k.accepts(*a))).collect();
    if keys.is_empty() {
        Err(JwksError::NoUsableKey)
    } else {
        Ok(keys)
    }
}

impl KeyState {
    /// Install freshly fetched keys.
    pub fn update(&mut self, keys: Vec<VerifyKey>, fetched_at: UnixSeconds) {
        self.keys = keys;
        self.fetched_at = Some(fetched_at);
    }

    /// When the keys in use were fetched.
    pub fn fetched_at(&self) -> Option<UnixSeconds> {
        self.fetched_at
    }

    /// The keys to verify with, or `None` if never loaded or stale past `max_staleness`.
    pub fn usable(&self, cfg: &RemoteJwks, now: UnixSeconds) -> Option<&[VerifyKey]> {
        let at = self.fetched_at?;
        (now < at.add_secs(cfg.max_staleness) && !self.keys.is_empty()).then_some(self.keys.as_slice())
    }

    /// Whether a scheduled refresh is due (never fetched, or 80 % of `refresh` elapsed).
    pub fn refresh_due(&self, cfg: &RemoteJwks, now: UnixSeconds) -> bool {
        match self.fetched_at {
            None => true,
            Some(at) => now >= at.add_secs(cfg.refresh.saturating_mul(4) / 5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            path: "/jwks".into(),
            authority: "idp".into(),
            refresh: 300,
            max_staleness: 3600,
            refetch_interval: 30,
            wait_ms: 2000,
            timeout_ms: 2000,
            discovery: None,
        }
    }

    fn demo() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/demo-jwks.json")).unwrap()
    }

    #[test]
    fn lenient_parse_skips_foreign_keys() {
        let mut v: Value = serde_json::from_slice(&demo()).unwrap();
        v["keys"].as_array_mut().unwrap().push(serde_json::json!({"kty": "RSA", "use": "enc", "kid": "enc1", "n": "AQAB", "e": "AQAB"}));
        v["keys"].as_array_mut().unwrap().push(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}));
        let keys = parse_remote_jwks(&serde_json::to_vec(&v).unwrap(), &[Algorithm::RS256]).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("demo-rs256"));
        assert_eq!(parse_remote_jwks(&demo(), &[Algorithm::PS512]).unwrap_err(), JwksError::NoUsableKey);
        assert_eq!(parse_remote_jwks(b"[]", &[Algorithm::RS256]).unwrap_err(), JwksError::NotAKeySet);
    }

    #[test]
    fn lifecycle() {
        let c = cfg();
        let mut s = KeyState::default();
        assert!(s.usable(&c, UnixSeconds::new(100)).is_none());
        assert!(s.refresh_due(&c, UnixSeconds::new(100)));
        s.update(parse_remote_jwks(&demo(), &[Algorithm::RS256]).unwrap(), UnixSeconds::new(100));
        assert!(s.usable(&c, UnixSeconds::new(100)).is_some());
        assert!(!s.refresh_due(&c, UnixSeconds::new(339)));
        assert!(s.refresh_due(&c, UnixSeconds::new(340)));
        assert!(s.usable(&c, UnixSeconds::new(3699)).is_some());
        assert!(s.usable(&c, UnixSeconds::new(3700)).is_none(), "stale keys are dropped");
    }
}
