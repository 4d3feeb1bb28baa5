//! Verification keys from a JSON Web Key Set, each bound to the algorithm family (and curve) it
//! may verify, so a token can never choose how its own key is interpreted.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse, RSAKeyParameters};
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
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg) && self.ec_alg.is_none_or(|a| a == alg)
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
    // RFC 7517 §4.3: a key restricted by `key_ops` may verify only if `verify` is listed.
    if matches!(jwk.common.key_operations, Some(ref ops) if !ops.contains(&KeyOperations::Verify)) {
        return Err("`key_ops` must include `verify`".into());
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signing_alg(a).ok_or_else(|| format!("`alg` {a:?} is not a supported signature algorithm"))?),
    };
    let (family, ec_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            check_rsa(p)?;
            (AlgorithmFamily::Rsa, None)
        }
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

/// RFC 7518 §3.3/§3.5 require moduli of at least 2048 bits; the exponent must be odd and > 1;
/// moduli with the ROCA fingerprint (CVE-2017-15361) are factorable.
fn check_rsa(p: &RSAKeyParameters) -> Result<(), String> {
    let n = URL_SAFE_NO_PAD.decode(&p.n).map_err(|_| "`n` is not base64url")?;
    let e = URL_SAFE_NO_PAD.decode(&p.e).map_err(|_| "`e` is not base64url")?;
    let n = strip_leading_zeros(&n);
    let bits = n.first().map_or(0, |top| (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize));
    if bits < 2048 {
        return Err(format!("RSA modulus of {bits} bits is too short (2048 at least)"));
    }
    let e = strip_leading_zeros(&e);
    if e.last().is_none_or(|low| low & 1 == 0) || e == [1] {
        return Err("RSA public exponent must be odd and greater than 1".into());
    }
    if roca_fingerprint(n) {
        return Err("RSA modulus has the ROCA fingerprint (CVE-2017-15361): the key is factorable".into());
    }
    Ok(())
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// The ROCA test (Nemec et al., CCS 2017): moduli generated by the vulnerable library are, modulo
/// each small prime below, a power of 65537. A random modulus passes all 38 tests with negligible
/// probability.
fn roca_fingerprint(n_be: &[u8]) -> bool {
    const PRIMES: [u32; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131,
        137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&p| {
        let residue = n_be.iter().fold(0u32, |r, b| (r * 256 + u32::from(*b)) % p);
        let generator = 65_537 % p;
        // Walk the cyclic subgroup generated by 65537 modulo p (its order is below p).
        let mut power = 1u32;
        for _ in 0..p {
            if power == residue {
                return true;
            }
            power = power * generator % p;
        }
        false
    })
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
        crate::testing::demo_jwks()
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

    fn refused(key: Value) -> String {
        parse_jwks(&json!({ "keys": [key] })).unwrap_err().to_string()
    }

    #[test]
    fn refuses_keys_not_for_verification() {
        // Wycheproof json_web_signature tcId 355/356: `key_ops` without `verify`.
        let mut rsa = demo()["keys"][0].clone();
        rsa["key_ops"] = json!(["encrypt"]);
        assert!(refused(rsa.clone()).contains("key_ops"));
        rsa["key_ops"] = json!(["verify"]);
        assert!(parse_jwks(&json!({ "keys": [rsa] })).is_ok());
    }

    #[test]
    fn refuses_weak_rsa_keys() {
        // Wycheproof json_web_key tcId 8: a 1024-bit modulus.
        let short = json!({"kty": "RSA", "alg": "RS256", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128])});
        assert!(refused(short).contains("1024 bits"));
        // Leading zero bytes do not count towards the size.
        let mut padded = vec![0u8; 129];
        padded[1..].fill(0xc5);
        assert!(refused(json!({"kty": "RSA", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode(padded)})).contains("1024 bits"));
        // Wycheproof json_web_key tcId 9: public exponent 1 (the "signature" is the padded digest).
        let mut e1 = demo()["keys"][0].clone();
        e1["e"] = json!("AQ");
        assert!(refused(e1.clone()).contains("exponent"));
        e1["e"] = json!("AQAA");
        assert!(refused(e1).contains("exponent"));
        // Wycheproof json_web_key tcId 7: a 2048-bit modulus from the ROCA-vulnerable generator.
        let roca = json!({"kty": "RSA", "alg": "RS256", "e": "AQAB", "n": concat!(
            "AanFpofbj7KjD4Lf-N2hVMKR7yewSyXhhbirIMTGpfYEhZ_lnt5UoK98DnKIgArXGTu3MaW_HhFw16HGaTDUHqPrId7fe4r11CqRw09yBFuW79V8",
            "sYIwHdzCaWflUI6auImYbVfoN9_nD5n8N8SY9DwXw7mwZM9wREPXoDPgOoIWl6q_MPsp7n0zs3Z5ZaiQWOOzl1S9OhwAfSiiOwz6efnXEaxuTEtP",
            "d7BjSx7NaFka8Dx9U7YqXy2RFj1O9PjyaDGuRh7YXsX3iMUSP_wSyHQg_c_qHRtKUsNSGCT7OZg0hzm2KphtjnayKJvC64vAbROBR4Ubg6Bxg9IQ",
            "VZ-QYyE")});
        assert!(refused(roca).contains("ROCA"));
        assert!(!roca_fingerprint(&URL_SAFE_NO_PAD.decode(demo()["keys"][0]["n"].as_str().unwrap()).unwrap()));
    }
}
