//! Token-bucket rate limits per subject or client id. The buckets live in Envoy shared data so
//! every worker draws from the same bucket; this module is the pure arithmetic and key naming,
//! and the compiler of the policy's `rateLimits`. The host takes from the buckets after the
//! decision allowed a request (`shared::take_from_bucket`), so this sits below `policy`, which holds the
//! compiled limits.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::schema::{CompileError, Loc, RateLimitDoc, RouteKind, Routes};
use crate::time::UnixMillis;

/// Whose requests a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBy {
    /// The token's subject.
    Subject,
    /// The token's OAuth client.
    ClientId,
}

/// A compiled rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Id (metrics, shared-data keys).
    pub id: String,
    /// What a bucket is keyed by.
    pub by: LimitBy,
    /// Refill, in milli-tokens per second (requests per minute × 1000 / 60).
    pub refill_milli_per_sec: u64,
    /// Bucket size in requests.
    pub burst: u64,
    /// Routes it applies to; empty = every authenticated route.
    pub routes: Vec<String>,
}

/// Bucket state as stored: milli-tokens left and the time of the last update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Milli-tokens available.
    pub milli_tokens: u64,
    /// Last update.
    pub at: UnixMillis,
}

impl Bucket {
    /// Encode as 16 bytes.
    pub fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.milli_tokens.to_be_bytes());
        b.copy_from_slice(&self.at.to_be_bytes());
        out
    }

    /// Decode 16 bytes; anything else is treated as absent (a full bucket).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let a: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let b: [u8; 8] = bytes.get(8..16)?.try_into().ok()?;
        (bytes.len() == 16).then(|| Bucket { milli_tokens: u64::from_be_bytes(a), at: UnixMillis::from_be_bytes(b) })
    }
}

impl RateLimit {
    /// Whether this limit counts requests on `route_id`.
    pub fn applies_to(&self, route_id: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r == route_id)
    }

    /// The shared-data key of `principal`'s bucket: the value is hashed (with its issuer), so
    /// no identifier is stored in clear.
    pub fn key(&self, principal: &Principal) -> String {
        let value = match self.by {
            LimitBy::Subject => principal.subject.as_deref(),
            LimitBy::ClientId => principal.client_id.as_deref(),
        };
        let mut h = Sha256::new();
        h.update(principal.issuer.as_bytes());
        h.update([0]);
        h.update(value.unwrap_or("").as_bytes());
        let digest = h.finalize();
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        format!("phi-guard/rl/{}/{hex}", self.id)
    }

    /// Take one request from `bucket` (absent = full) at `now`: the new state, or the seconds
    /// to wait before a request would be admitted.
    pub fn take(&self, bucket: Option<Bucket>, now: UnixMillis) -> Result<Bucket, u64> {
        let cap = self.burst.saturating_mul(1000);
        let b = bucket.unwrap_or(Bucket { milli_tokens: cap, at: now });
        let elapsed = now.ms_since(b.at);
        let refill = elapsed.saturating_mul(self.refill_milli_per_sec) / 1000;
        let tokens = b.milli_tokens.saturating_add(refill).min(cap);
        if tokens >= 1000 {
            Ok(Bucket { milli_tokens: tokens - 1000, at: now.max(b.at) })
        } else {
            let missing = 1000 - tokens;
            let wait_ms = missing.saturating_mul(1000).div_ceil(self.refill_milli_per_sec.max(1));
            Err(wait_ms.div_ceil(1000).max(1))
        }
    }
}

/// Compile the policy's `rateLimits`; `routes` answers whether a named route exists and has a
/// caller to limit.
pub fn compile_rate_limits(docs: &[RateLimitDoc], loc: &Loc<'_>, routes: &dyn Routes) -> Result<Vec<RateLimit>, CompileError> {
    let mut ids = HashSet::new();
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            let loc = loc.index(i);
            if !crate::ident::shaped(&d.id, usize::MAX, b"-_") || !ids.insert(d.id.as_str()) {
                return Err(loc.field("id").error(format!("`{}` must be a unique [A-Za-z0-9_-]+ id", d.id)));
            }
            let by = match d.by.as_str() {
                "subject" => LimitBy::Subject,
                "clientId" => LimitBy::ClientId,
                other => return Err(loc.field("by").error(format!("`{other}` must be `subject` or `clientId`"))),
            };
            if !(1..=6_000_000).contains(&d.requests_per_minute) {
                return Err(loc.field("requestsPerMinute").error("must be between 1 and 6000000"));
            }
            let burst = d.burst.unwrap_or(d.requests_per_minute).max(1);
            for (j, r) in d.routes.iter().enumerate() {
                match routes.kind(r) {
                    None => return Err(loc.field("routes").index(j).error(format!("no route `{r}`"))),
                    Some(RouteKind::Public) => {
                        return Err(loc
                            .field("routes")
                            .index(j)
                            .error(format!("route `{r}` is public: there is no subject or client to limit")))
                    }
                    Some(_) => {}
                }
            }
            Ok(RateLimit {
                id: d.id.clone(),
                by,
                refill_milli_per_sec: (d.requests_per_minute * 1000).div_ceil(60),
                burst,
                routes: d.routes.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rpm: u64, burst: u64) -> RateLimit {
        RateLimit { id: "l".into(), by: LimitBy::Subject, refill_milli_per_sec: rpm * 1000 / 60, burst, routes: vec![] }
    }

    #[test]
    fn bucket_drains_and_refills() {
        let l = limit(60, 3); // 1 per second, burst 3
        let mut b = None;
        for _ in 0..3 {
            b = Some(l.take(b, UnixMillis::new(1_000)).unwrap());
        }
        assert_eq!(l.take(b, UnixMillis::new(1_000)), Err(1));
        let b2 = l.take(b, UnixMillis::new(2_000)).unwrap();
        assert_eq!(l.take(Some(b2), UnixMillis::new(2_000)), Err(1));
        // Never above the burst, however long idle.
        let mut b = Some(l.take(Some(b2), UnixMillis::new(1_000_000)).unwrap());
        for _ in 0..2 {
            b = Some(l.take(b, UnixMillis::new(1_000_000)).unwrap());
        }
        assert!(l.take(b, UnixMillis::new(1_000_000)).is_err());
    }

    #[test]
    fn codec_and_keys() {
        let b = Bucket { milli_tokens: 42, at: UnixMillis::new(7) };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(Bucket::decode(&[1, 2]), None);
        let p = Principal {
            issuer: "https://i".into(),
            subject: Some("alice".into()),
            client_id: None,
            scopes: vec![],
            smart_scopes: vec![],
            patient: None,
            token_id: None,
            purpose: vec![],
            ..Principal::default()
        };
        let k = limit(60, 1).key(&p);
        assert!(k.starts_with("phi-guard/rl/l/") && !k.contains("alice"));
        assert!(limit(60, 1).applies_to("anything"));
    }
}
