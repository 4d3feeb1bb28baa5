//! Signature verification with `ring`, for every asymmetric JWS algorithm phi-guard accepts.
//!
//! Why not jsonwebtoken's own backend: its `rust_crypto` provider (RustCrypto `rsa` and `p256`)
//! runs big-integer and P-256 arithmetic in portable Rust, which in V8 costs 1.0-1.3 ms per
//! first-sight RS256/ES256 token. `ring` verifies with the same BoringSSL-derived code Envoy's
//! native `jwt_authn` uses, compiled to wasm with clang, at a fraction of that. jsonwebtoken
//! still parses keys (JWK, PEM) and signs (the CLI, tests); only verification comes here.
//!
//! `ring` is stricter than RustCrypto in ways RFC 7518 asks for: RSA moduli below 2048 bits
//! and public exponents below 3 are refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self, RsaParameters, UnparsedPublicKey, VerificationAlgorithm};

/// The `ring` algorithm of an asymmetric JWS `alg`; `None` for HMAC, which phi-guard never
/// accepts for access tokens or policies.
fn ring_alg(alg: Algorithm) -> Option<Ring> {
    Some(match alg {
        Algorithm::RS256 => Ring::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Ring::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Ring::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Ring::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Ring::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Ring::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => Ring::Other(&signature::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Ring::Other(&signature::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Ring::Other(&signature::ED25519),
        _ => return None,
    })
}

enum Ring {
    Rsa(&'static RsaParameters),
    Other(&'static dyn VerificationAlgorithm),
}

/// Whether `signature` (base64url, unpadded, as in a compact JWS) over `message` verifies under
/// `alg` with `key`. Any malformed input is simply "does not verify".
pub fn verify(signature: &str, message: &[u8], key: &DecodingKey, alg: Algorithm) -> bool {
    let Ok(sig) = URL_SAFE_NO_PAD.decode(signature) else { return false };
    verify_raw(&sig, message, key, alg)
}

/// [`verify`] over raw signature bytes.
pub fn verify_raw(sig: &[u8], message: &[u8], key: &DecodingKey, alg: Algorithm) -> bool {
    let Some(ring_alg) = ring_alg(alg) else { return false };
    match (ring_alg, key.kind()) {
        (Ring::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
            signature::RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(params, message, sig).is_ok()
        }
        // An RSA key from PEM: the PKCS#1 `RSAPublicKey` DER.
        (Ring::Rsa(params), DecodingKeyKind::SecretOrDer(der)) => UnparsedPublicKey::new(params, der).verify(message, sig).is_ok(),
        // EC keys are the uncompressed point, Ed25519 keys the 32 raw bytes.
        (Ring::Other(a), DecodingKeyKind::SecretOrDer(bytes)) => UnparsedPublicKey::new(a, bytes).verify(message, sig).is_ok(),
        (Ring::Other(_), DecodingKeyKind::RsaModulusExponent { .. }) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{claims, demo_jwks, sign};
    use jsonwebtoken::EncodingKey;

    fn key(kid: &str) -> DecodingKey {
        crate::auth::keys::parse_jwks(&demo_jwks()).unwrap().into_iter().find(|k| k.kid.as_deref() == Some(kid)).unwrap().key
    }

    /// `ring` agrees with jsonwebtoken's RustCrypto backend on good and tampered signatures of
    /// every demo key.
    #[test]
    fn agrees_with_the_rust_crypto_backend() {
        for (alg, kid) in [(Algorithm::RS256, "demo-rs256"), (Algorithm::ES256, "demo-es256"), (Algorithm::EdDSA, "demo-eddsa")] {
            let token = sign(alg, Some(kid), &claims());
            let (input, sig) = token.rsplit_once('.').unwrap();
            let k = key(kid);
            assert!(verify(sig, input.as_bytes(), &k, alg), "{alg:?}");
            assert!(jsonwebtoken::crypto::verify(sig, input.as_bytes(), &k, alg).unwrap());
            let mut other = input.as_bytes().to_vec();
            other[3] ^= 1;
            assert!(!verify(sig, &other, &k, alg), "{alg:?} tampered message");
            assert!(!verify(&sig[1..], input.as_bytes(), &k, alg), "{alg:?} truncated signature");
            assert!(!verify("%%%", input.as_bytes(), &k, alg), "{alg:?} not base64url");
        }
    }

    #[test]
    fn wrong_family_hmac_and_pss_mismatch_never_verify() {
        let token = sign(Algorithm::RS256, Some("demo-rs256"), &claims());
        let (input, sig) = token.rsplit_once('.').unwrap();
        // The RSA key under an EC or PSS algorithm, an EC key under RS256, HMAC with any key.
        assert!(!verify(sig, input.as_bytes(), &key("demo-rs256"), Algorithm::ES256));
        assert!(!verify(sig, input.as_bytes(), &key("demo-rs256"), Algorithm::PS256));
        assert!(!verify(sig, input.as_bytes(), &key("demo-es256"), Algorithm::RS256));
        assert!(!verify(sig, input.as_bytes(), &DecodingKey::from_secret(b"k"), Algorithm::HS256));
        // PS256 signatures verify as PS256 only.
        let pem = std::fs::read(crate::testing::key_path("demo-rs256.key.pem")).unwrap();
        let ps = jsonwebtoken::crypto::sign(b"m", &EncodingKey::from_rsa_pem(&pem).unwrap(), Algorithm::PS256).unwrap();
        assert!(verify(&ps, b"m", &key("demo-rs256"), Algorithm::PS256));
        assert!(!verify(&ps, b"m", &key("demo-rs256"), Algorithm::RS256));
    }
}
