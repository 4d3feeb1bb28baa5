//! Verification keys from a JSON Web Key Set, each bound to the algorithm family (and curve) it
//! may verify, so a token can never choose how its own key is interpreted.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use thiserror::Error;

/// Why a JWKS or one of its keys was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The set is not `{"keys": [...]}`.
    #[error("must be a JSON Web Key Set object with a `keys` array")]
    NotAKeySet,
    /// A key could not be parsed.
    #[error("keys[{index}]: {reason}")]
    BadKey {
        /// Position in `keys`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One public key, ready to verify.
#[derive(Clone)]
pub struct VerifyKey {
    /// `kid`, if the JWK has one.
    pub kid: Option<String>,
    /// The JWK's `alg`, if it pins one.
    pub alg: Option<Algorithm>,
    /// The algorithm family the key material belongs to.
    pub family: AlgorithmFamily,
    /// Curve-specific algorithm for EC keys (`ES256` for P-256, `ES384` for P-384).
    pub ec_alg: Option<Algorithm>,
    /// Key material.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.family == alg.family()
            && self.alg.is_none_or(|a| a == alg)
            && self.ec_alg.is_none_or(|a| a == alg)
    }
}

/// Parse a JWKS value into verification keys. Symmetric (`oct`) keys, private keys, keys not
/// meant for signatures, and unsupported key types are errors, not silently skipped.
pub fn parse_jwks(value: &Value) -> Result<Vec<VerifyKey>, KeyError> {
    let keys = value.get("keys").and_then(Value::as_array).ok_or(KeyError::NotAKeySet)?;
    keys.iter().enumerate().map(|(index, k)| parse_jwk(k).map_err(|reason| KeyError::BadKey { index, reason })).collect()
}

/// Parse one public signing JWK (the rules of [`parse_jwks`]); the error says why not.
pub fn parse_jwk(value: &Value) -> Result<VerifyKey, String> {
    let obj = value.as_object().ok_or("must be an object")?;
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        if obj.contains_key(private) {
            return Err(format!("contains private or secret key material `{private}`: publish only public keys"));
        }
    }
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|e| format!("not a valid JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("`use` must be `sig`".into());
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signing_alg(a).ok_or_else(|| format!("`alg` {a:?} is not a supported signature algorithm"))?),
    };
    let (family, ec_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            ref c => return Err(format!("unsupported curve {c:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, None),
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported OKP curve".into()),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (`oct`) keys are not accepted".into()),
        _ => return Err("unsupported key type".into()),
    };
    if let Some(a) = alg {
        if a.family() != family || ec_alg.is_some_and(|e| e != a) {
            return Err(format!("`alg` {a:?} does not match the key type"));
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(VerifyKey { kid: jwk.common.key_id.clone(), alg, family, ec_alg, key })
}

fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn demo() -> Value {
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/demo-jwks.json")).unwrap()).unwrap()
    }

    #[test]
    fn parses_demo_keys() {
        let keys = parse_jwks(&demo()).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys[0].accepts(Algorithm::RS256));
        assert!(!keys[0].accepts(Algorithm::PS256), "alg pinned by the JWK");
        assert!(!keys[0].accepts(Algorithm::HS256));
        assert!(keys[1].accepts(Algorithm::ES256));
        assert!(!keys[1].accepts(Algorithm::ES384));
        assert!(keys[2].accepts(Algorithm::EdDSA));
    }

    #[test]
    fn refuses_dangerous_keys() {
        let oct = json!({"keys":[{"kty":"oct","k":"c2VjcmV0"}]});
        assert!(matches!(parse_jwks(&oct), Err(KeyError::BadKey { index: 0, .. })));
        let mut private = demo();
        private["keys"][0]["d"] = json!("AAAA");
        assert!(parse_jwks(&private).unwrap_err().to_string().contains("private"));
        let mut enc = demo();
        enc["keys"][1]["use"] = json!("enc");
        assert!(matches!(parse_jwks(&enc), Err(KeyError::BadKey { index: 1, .. })));
        let mut mismatch = demo();
        mismatch["keys"][1]["alg"] = json!("RS256");
        assert!(parse_jwks(&mismatch).is_err());
        assert_eq!(parse_jwks(&json!([])).unwrap_err(), KeyError::NotAKeySet);
    }
}
