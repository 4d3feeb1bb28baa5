//! Shared test fixtures: the demo issuer and its keys, token claims and signing, the shipped
//! policies, the audit key and events, and the in-memory shared store. One place, so unit tests
//! in every module build the same inputs the same way.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::audit::{AuditChain, AuditContext, AuditEvent, AuditKey, RequestMeta};
use crate::auth::keys::parse_jwks;
use crate::auth::{ClaimNames, IssuerConfig, TokenCache};
use crate::decision::{decide, Request};
use crate::policy::Policy;
use crate::time::UnixSeconds;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::shared::{SharedStore, StoreError};

/// The fixed "now" of the fixtures, Unix seconds (2027-01-15T08:00:00Z).
pub const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);
/// The demo issuer.
pub const ISS: &str = "https://idp.phi-guard.test";
/// The demo audience.
pub const AUD: &str = "https://fhir.phi-guard.test";
/// The audit secret of test events, as text (the VM environment variable's value).
pub const SECRET_TEXT: &str = "test-audit-secret-0123456789abcdef";
/// [`SECRET_TEXT`] as bytes.
pub const SECRET: &[u8] = SECRET_TEXT.as_bytes();
/// The `x-request-id` of test events: a UUID, as Envoy generates them.
pub const REQUEST_ID: &str = "0f3c2a9e-1b7d-4c55-9a0e-3c2f1b7d4c55";

/// A file under the repository root.
pub fn repo_path(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// A file in `tests/keys/`.
pub fn key_path(name: &str) -> String {
    repo_path(&format!("tests/keys/{name}"))
}

/// The demo JWKS (`tests/keys/demo-jwks.json`).
pub fn demo_jwks() -> Value {
    serde_json::from_str(&std::fs::read_to_string(key_path("demo-jwks.json")).unwrap()).unwrap()
}

/// The demo issuer with the demo keys, RS256/ES256/EdDSA, 60 s skew.
pub fn issuer() -> IssuerConfig {
    IssuerConfig {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
        keys: parse_jwks(&demo_jwks()).unwrap(),
        remote: None,
        clock_skew: 60,
        max_lifetime: Some(86_400),
        require_subject: true,
        claims: ClaimNames {
            scope: "scope".into(),
            subject: "sub".into(),
            client_id: "client_id".into(),
            patient: "patient".into(),
            purpose: "purpose_of_use".into(),
            break_glass: Some("break_glass".into()),
            break_glass_reason: Some("break_glass_reason".into()),
        },
        acr_levels: vec!["urn:phi-guard:loa:1".into(), "urn:phi-guard:loa:2".into(), "urn:phi-guard:loa:3".into()],
        dpop: crate::auth::sender::DpopMode::Allowed,
        introspection: None,
    }
}

/// A patient app's claims: patient `p1`, Patient and Observation read/search.
pub fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "u1", "client_id": "app", "exp": NOW.add_secs(600), "iat": NOW.sub_secs(10),
           "scope": "launch/patient patient/Patient.rs patient/Observation.rs", "patient": "p1", "jti": "j1"})
}

type KeyCtor = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

/// Sign `claims` with the demo key of `alg` (RS256/PS256, ES256 or EdDSA).
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let (file, ctor): (&str, KeyCtor) = match alg {
        Algorithm::RS256 | Algorithm::PS256 => ("demo-rs256.key.pem", EncodingKey::from_rsa_pem),
        Algorithm::ES256 => ("demo-es256.key.pem", EncodingKey::from_ec_pem),
        Algorithm::EdDSA => ("demo-eddsa.key.pem", EncodingKey::from_ed_pem),
        _ => unreachable!(),
    };
    let key = ctor(&std::fs::read(key_path(file)).unwrap()).unwrap();
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, &key).unwrap()
}

/// An RS256 token of [`claims`] with `patch` merged in, under the demo key's `kid`.
pub fn token(patch: Value) -> String {
    token_with_kid("demo-rs256", patch)
}

/// [`token`] with the header's `kid` set to `kid`.
pub fn token_with_kid(kid: &str, patch: Value) -> String {
    let mut c = claims();
    for (k, v) in patch.as_object().unwrap() {
        c[k] = v.clone();
    }
    sign(Algorithm::RS256, Some(kid), &c)
}

/// A shipped policy (`policies/<name>.json`) as JSON, to edit before compiling.
pub fn policy_doc(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(repo_path(&format!("policies/{name}.json"))).unwrap()).unwrap()
}

/// A shipped policy, compiled.
pub fn policy(name: &str) -> Policy {
    crate::policy::compile(&std::fs::read(repo_path(&format!("policies/{name}.json"))).unwrap()).unwrap()
}

/// The audit key of test events.
pub fn audit_key() -> AuditKey {
    AuditKey::from_secret(SECRET).unwrap()
}

/// A fresh audit chain with stream id `[id; 16]`.
pub fn chain(id: u8) -> AuditChain {
    AuditChain::new([id; 16], audit_key())
}

/// Decide a request and build its request-time audit event.
pub fn event(p: &Policy, method: &str, path: &str, token: Option<&str>) -> AuditEvent {
    event_with_id(p, method, path, token, REQUEST_ID)
}

/// [`event`] for a request with this `x-request-id`.
pub fn event_with_id(p: &Policy, method: &str, path: &str, token: Option<&str>, request_id: &str) -> AuditEvent {
    let header = token.map(|t| format!("Bearer {t}"));
    let hs: Vec<&str> = header.iter().map(String::as_str).collect();
    let d = decide(p, &mut TokenCache::new(4), &Request { method, path, authorization: &hs, ..Default::default() }, NOW);
    let k = audit_key();
    let meta = RequestMeta { request_id: Some(request_id), source: Some("10.1.2.3:5555"), destination: Some("[::1]:8080"), method, path };
    AuditEvent::from_decision(&d, &meta, &AuditContext::new(p, &k, NOW.to_millis().add_ms(42)))
}

/// Shared data in memory, with versions like Envoy's. `lose_races` makes that many of the
/// next conditional writes fail as if another worker had written first (and bumps the
/// version, as that write would); `fail` makes every call fail.
#[derive(Default)]
pub struct MemoryStore {
    /// Key, value and version.
    pub data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    /// Conditional writes still to lose.
    pub lose_races: Cell<usize>,
    /// Every call fails.
    pub fail: Cell<bool>,
    /// Writes attempted.
    pub writes: Cell<usize>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        if self.fail.get() {
            return Err(StoreError::Failed);
        }
        Ok(self.data.borrow().get(key).map_or((None, None), |(v, c)| (Some(v.clone()), Some(*c))))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.writes.set(self.writes.get() + 1);
        if self.fail.get() {
            return Err(StoreError::Failed);
        }
        let mut data = self.data.borrow_mut();
        let current = data.get(key).map_or(0, |(_, c)| *c);
        if cas.is_some() && self.lose_races.get() > 0 {
            self.lose_races.set(self.lose_races.get() - 1);
            let (v, _) = data.get(key).cloned().unwrap_or_default();
            data.insert(key.to_owned(), (v, current + 1));
            return Err(StoreError::CasMismatch);
        }
        // Envoy compares `cas` only with a key that exists: a missing key is created.
        if data.contains_key(key) && cas.is_some_and(|c| c != current) {
            return Err(StoreError::CasMismatch);
        }
        data.insert(key.to_owned(), (value.to_vec(), current + 1));
        Ok(())
    }
}

impl MemoryStore {
    /// Every key written so far.
    pub fn keys(&self) -> Vec<String> {
        self.data.borrow().keys().cloned().collect()
    }
}

/// DPoP client keys (`tests/keys/dpop-client-*`) and proofs signed with them.
pub mod dpop {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    use super::key_path;

    /// A client's proof-of-possession key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ProofKey {
        /// P-256.
        Es256,
        /// Ed25519.
        EdDsa,
    }

    fn jwks() -> Value {
        serde_json::from_str(&std::fs::read_to_string(key_path("dpop-client-jwks.json")).unwrap()).unwrap()
    }

    impl ProofKey {
        /// The public JWK (no `kid`).
        pub fn public_jwk(self) -> Value {
            let i = match self {
                ProofKey::Es256 => 0,
                ProofKey::EdDsa => 1,
            };
            let mut k = jwks()["keys"][i].clone();
            k.as_object_mut().unwrap().remove("kid");
            k
        }

        /// The JWK with its private part: what a careless client might send.
        pub fn private_jwk(self) -> Value {
            let mut k = ProofKey::Es256.public_jwk();
            k["d"] = jwks()["es256_private_d"].clone();
            k
        }

        /// RFC 7638 thumbprint: a token's `cnf.jkt` for this key.
        pub fn thumbprint(self) -> String {
            crate::auth::dpop::thumbprint(&self.public_jwk()).unwrap()
        }

        fn alg(self) -> Algorithm {
            match self {
                ProofKey::Es256 => Algorithm::ES256,
                ProofKey::EdDsa => Algorithm::EdDSA,
            }
        }

        fn encoding_key(self) -> EncodingKey {
            match self {
                ProofKey::Es256 => EncodingKey::from_ec_pem(&std::fs::read(key_path("dpop-client-es256.key.pem")).unwrap()).unwrap(),
                ProofKey::EdDsa => EncodingKey::from_ed_pem(&std::fs::read(key_path("dpop-client-eddsa.key.pem")).unwrap()).unwrap(),
            }
        }
    }

    /// A proof signed by `key` with header `{"typ": "dpop+jwt", "alg", "jwk"}` patched by
    /// `header` (a `null` member removes it) and these claims.
    pub fn proof(key: ProofKey, header: &Value, claims: &Value) -> String {
        let mut h = json!({"typ": "dpop+jwt", "alg": format!("{:?}", key.alg()), "jwk": key.public_jwk()});
        for (k, v) in header.as_object().unwrap() {
            if v.is_null() {
                h.as_object_mut().unwrap().remove(k);
            } else {
                h[k] = v.clone();
            }
        }
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let input = format!("{}.{}", b64(&h), b64(claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding_key(), key.alg()).unwrap();
        format!("{input}.{sig}")
    }

    /// A good proof for `method` on `https://fhir.phi-guard.test<path>` with `token`, `iat` `now`.
    pub fn proof_for(key: ProofKey, method: &str, path: &str, token: &str, jti: &str, now: crate::time::UnixSeconds) -> String {
        let htu = format!("https://fhir.phi-guard.test{}", path.split('?').next().unwrap());
        let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
        proof(key, &json!({}), &json!({"jti": jti, "htm": method, "htu": htu, "iat": now.as_secs(), "ath": ath}))
    }
}
