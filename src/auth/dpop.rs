//! DPoP proofs (RFC 9449): the proof JWS a client signs for each request with the key its access
//! token is bound to (`cnf.jkt`), checked exactly as §4.3 lists: one well-formed JWS of type
//! `dpop+jwt`, an asymmetric algorithm the policy pins, a public `jwk` header and nothing
//! private, a valid signature by that key, `htm` and `htu` naming this request, a fresh `iat`,
//! a `jti`, and `ath` the hash of the access token it is sent with. Replay (`jti` seen before)
//! is the caller's to check, with the [`VerifiedProof::replay_key`] this returns, across every
//! worker (see `shared::remember_once`).

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::keys::parse_jwk;
use super::verify::{decode_object, is_b64url};
use crate::reason::DenyReason;
use crate::time::UnixSeconds;

/// Largest accepted proof, in bytes (an RSA-4096 `jwk` fits well below).
pub const MAX_PROOF_BYTES: usize = 4096;
/// Longest accepted `jti`.
const MAX_JTI: usize = 256;

/// The policy's DPoP settings (policy `dpop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    /// Algorithms a proof may be signed with (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// How old a proof's `iat` may be, in seconds; the replay cache remembers a `jti` this long
    /// (plus the skew).
    pub proof_lifetime: u64,
    /// Tolerance for a proof's `iat` ahead of our clock, in seconds.
    pub clock_skew: u64,
    /// Origins (`scheme://host[:port]`) a proof's `htu` may name; empty: the request's own
    /// `:scheme` and `:authority`.
    pub origins: Vec<String>,
    /// Slots of the cross-worker replay cache (each holds [`crate::auth::dpop::SLOT_ENTRIES`]
    /// `jti`s).
    pub replay_slots: u64,
}

/// `jti`s one replay-cache slot holds.
pub const SLOT_ENTRIES: usize = 8;

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            algorithms: vec![Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::PS256, Algorithm::RS256],
            proof_lifetime: 60,
            clock_skew: 5,
            origins: Vec::new(),
            replay_slots: 16_384,
        }
    }
}

impl DpopSettings {
    /// The `algs` of a `WWW-Authenticate: DPoP` challenge (RFC 9449 §7.1).
    pub fn algs(&self) -> String {
        self.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" ")
    }
}

/// The request a proof must name.
#[derive(Debug, Clone, Copy)]
pub struct ProofTarget<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:scheme` (`http` or `https`).
    pub scheme: &'a str,
    /// `:authority`.
    pub authority: &'a str,
    /// `:path` (its query is ignored).
    pub path: &'a str,
}

/// A proof that passed every check but replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof key (base64url), to compare with `cnf.jkt`.
    pub jkt: String,
    /// SHA-256 of the thumbprint and `jti`: what the replay cache remembers (nothing of the
    /// `jti` itself).
    pub replay_key: [u8; 32],
    /// Until when the replay cache must remember it: past this the proof is stale anyway.
    pub remember_until: UnixSeconds,
}

/// Verify one DPoP proof for `target` and the access token it accompanies (§4.3 checks 1–11 but
/// the key binding, which [`crate::auth::sender`] compares, and replay).
pub fn verify_proof(
    proof: &str,
    target: &ProofTarget<'_>,
    access_token: &str,
    settings: &DpopSettings,
    now: UnixSeconds,
) -> Result<VerifiedProof, DenyReason> {
    let bad = DenyReason::InvalidDpopProof;
    if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
        return Err(bad);
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad);
    };
    if [h64, p64, s64].iter().any(|p| p.is_empty() || !p.bytes().all(is_b64url)) {
        return Err(bad);
    }
    // The JWT parser's segment decoding; its errors are proof errors here.
    let header = decode_object(h64).map_err(|_| bad)?;
    let claims = decode_object(p64).map_err(|_| bad)?;

    // Header: typ, alg, jwk; nothing that points at keys elsewhere; no critical extensions.
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(bad);
    }
    if ["jku", "x5u", "x5c", "crit"].iter().any(|k| header.contains_key(*k)) {
        return Err(bad);
    }
    let alg = header.get("alg").and_then(Value::as_str).and_then(|a| Algorithm::from_str(a).ok()).ok_or(bad)?;
    if !settings.algorithms.contains(&alg) {
        return Err(bad);
    }
    let jwk = header.get("jwk").ok_or(bad)?;
    // `parse_jwk` refuses private and symmetric key material and keys not for signatures.
    let key = parse_jwk(jwk).map_err(|_| bad)?;
    if !key.accepts(alg) {
        return Err(bad);
    }
    let signing_input = proof.get(..h64.len() + 1 + p64.len()).ok_or(bad)?.as_bytes();
    if !super::crypto::verify(s64, signing_input, &key.key, alg) {
        return Err(bad);
    }
    let jkt = thumbprint(jwk).ok_or(bad)?;

    // Claims.
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let jti = text("jti").filter(|j| !j.is_empty() && j.len() <= MAX_JTI).ok_or(bad)?;
    if text("htm") != Some(target.method) {
        return Err(bad);
    }
    let htu = text("htu").and_then(normalize_uri).ok_or(bad)?;
    if !names_target(&htu, target, &settings.origins) {
        return Err(bad);
    }
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().filter(|f| (0.0..1e15).contains(f)).map(|f| f as u64)),
        _ => None,
    }
    .map(UnixSeconds::new)
    .ok_or(bad)?;
    if iat > now.add_secs(settings.clock_skew) || now.secs_since(iat) > settings.proof_lifetime {
        return Err(bad);
    }
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()));
    if text("ath") != Some(ath.as_str()) {
        return Err(bad);
    }
    let mut h = Sha256::new();
    h.update(b"phi-guard dpop jti v1\0");
    h.update(jkt.as_bytes());
    h.update([0]);
    h.update(jti.as_bytes());
    let remember_until = iat.max(now).add_secs(settings.proof_lifetime + settings.clock_skew + 1);
    Ok(VerifiedProof { jkt, replay_key: h.finalize().into(), remember_until })
}

/// RFC 7638 JWK SHA-256 thumbprint (base64url) of a public key: the required members only, in
/// lexicographic order, no whitespace. `None` for key types phi-guard does not accept.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    let canonical = match s("kty")? {
        "EC" => serde_json::to_string(&serde_json::json!({"crv": s("crv")?, "kty": "EC", "x": s("x")?, "y": s("y")?})),
        "RSA" => serde_json::to_string(&serde_json::json!({"e": s("e")?, "kty": "RSA", "n": s("n")?})),
        "OKP" => serde_json::to_string(&serde_json::json!({"crv": s("crv")?, "kty": "OKP", "x": s("x")?})),
        _ => return None,
    }
    .ok()?;
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// A URI normalized for comparison (RFC 3986 §6.2.2 and §6.2.3, as RFC 9449 §4.3 asks): scheme
/// and host lowercased, the default port dropped, percent-encodings of unreserved characters
/// decoded and the others uppercased, an empty path as `/`, query and fragment removed. `None`
/// for anything but an absolute `http(s)` URI with an authority.
pub fn normalize_uri(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Some(format!("{}{}", origin(&scheme, authority)?, normalize_path(path)?))
}

/// `scheme://host[:port]`, normalized; `None` if the authority has userinfo or is malformed.
fn origin(scheme: &str, authority: &str) -> Option<String> {
    if authority.is_empty() || authority.contains('@') || authority.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default).unwrap_or(&authority);
    let authority = authority.strip_suffix(':').unwrap_or(authority);
    Some(format!("{scheme}://{authority}"))
}

fn normalize_path(path: &str) -> Option<String> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return Some("/".into());
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(v));
            } else {
                out.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else {
            out.push(char::from(b));
            i += 1;
        }
    }
    out.is_ascii().then_some(out)
}

/// Whether the normalized `htu` names the request: its path, at the request's own origin or
/// one the policy lists.
fn names_target(htu: &str, target: &ProofTarget<'_>, origins: &[String]) -> bool {
    let Some(path) = normalize_path(target.path) else { return false };
    let Some(at_origin) = htu.strip_suffix(path.as_str()) else { return false };
    if origins.is_empty() {
        origin(&target.scheme.to_ascii_lowercase(), target.authority).is_some_and(|o| o == at_origin)
    } else {
        origins.iter().any(|o| o == at_origin)
    }
}

/// A normalized origin from policy text (`https://fhir.example.org`), for [`DpopSettings::origins`].
/// `None` for anything with a path, query or fragment.
pub fn normalize_origin(text: &str) -> Option<String> {
    if text.contains(['?', '#']) {
        return None;
    }
    let n = normalize_uri(text)?;
    let o = n.strip_suffix('/')?;
    // `scheme://authority` only: the two slashes of the scheme and none after.
    (o.matches('/').count() == 2).then(|| o.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::dpop::{proof, ProofKey};
    use crate::testing::NOW;
    use serde_json::json;

    const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.e30.sig";

    fn target() -> ProofTarget<'static> {
        ProofTarget { method: "GET", scheme: "https", authority: "fhir.example.org", path: "/fhir/Patient/p1?_elements=name" }
    }

    fn claims() -> Value {
        json!({
            "jti": "e1j3V_bKic8-LAEB", "htm": "GET", "htu": "https://fhir.example.org/fhir/Patient/p1",
            "iat": NOW.as_secs(), "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(TOKEN)),
        })
    }

    fn check(p: &str) -> Result<VerifiedProof, DenyReason> {
        verify_proof(p, &target(), TOKEN, &DpopSettings::default(), NOW)
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 §3.1.
        let jwk = json!({"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        assert_eq!(thumbprint(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn a_good_proof_verifies_and_yields_its_key_thumbprint() {
        for key in [ProofKey::Es256, ProofKey::EdDsa] {
            let v = check(&proof(key, &json!({}), &claims())).unwrap();
            assert_eq!(v.jkt, key.thumbprint());
            assert_eq!(v.remember_until, NOW.add_secs(66));
        }
        // Default ports, case and unreserved percent-encodings are normalized away.
        for htu in ["HTTPS://FHIR.example.org:443/fhir/Patient/p1", "https://fhir.example.org/fhir/%50atient/p1#x"] {
            let mut c = claims();
            c["htu"] = json!(htu);
            assert!(check(&proof(ProofKey::Es256, &json!({}), &c)).is_ok(), "{htu}");
        }
    }

    #[test]
    fn every_rfc9449_check_refuses() {
        let bad = DenyReason::InvalidDpopProof;
        let patched = |k: &str, v: Value| {
            let mut c = claims();
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v;
            }
            proof(ProofKey::Es256, &json!({}), &c)
        };
        let cases = vec![
            ("another method", patched("htm", json!("POST"))),
            ("lowercase method", patched("htm", json!("get"))),
            ("another URL", patched("htu", json!("https://fhir.example.org/fhir/Patient/p2"))),
            ("another host", patched("htu", json!("https://evil.example/fhir/Patient/p1"))),
            ("http for https", patched("htu", json!("http://fhir.example.org/fhir/Patient/p1"))),
            ("a prefix of the path", patched("htu", json!("https://fhir.example.org/fhir/Patient"))),
            ("userinfo", patched("htu", json!("https://a@fhir.example.org/fhir/Patient/p1"))),
            ("stale iat", patched("iat", json!(NOW.sub_secs(61).as_secs()))),
            ("future iat", patched("iat", json!(NOW.add_secs(6).as_secs()))),
            ("iat as text", patched("iat", json!("now"))),
            ("no iat", patched("iat", Value::Null)),
            ("no jti", patched("jti", Value::Null)),
            ("empty jti", patched("jti", json!(""))),
            ("long jti", patched("jti", json!("j".repeat(257)))),
            ("no ath", patched("ath", Value::Null)),
            ("ath of another token", patched("ath", json!(URL_SAFE_NO_PAD.encode(Sha256::digest("other"))))),
            ("typ jwt", proof(ProofKey::Es256, &json!({"typ": "JWT"}), &claims())),
            ("no typ", proof(ProofKey::Es256, &json!({"typ": null}), &claims())),
            ("jku", proof(ProofKey::Es256, &json!({"jku": "https://evil"}), &claims())),
            ("x5c", proof(ProofKey::Es256, &json!({"x5c": ["AA"]}), &claims())),
            ("crit", proof(ProofKey::Es256, &json!({"crit": ["x"]}), &claims())),
            ("no jwk", proof(ProofKey::Es256, &json!({"jwk": null}), &claims())),
            ("private key in jwk", proof(ProofKey::Es256, &json!({"jwk": ProofKey::Es256.private_jwk()}), &claims())),
            ("jwk of another key", proof(ProofKey::Es256, &json!({"jwk": ProofKey::EdDsa.public_jwk()}), &claims())),
            ("symmetric jwk", proof(ProofKey::Es256, &json!({"jwk": {"kty": "oct", "k": "AAAA"}}), &claims())),
            ("alg none", proof(ProofKey::Es256, &json!({"alg": "none"}), &claims())),
            ("alg HS256", proof(ProofKey::Es256, &json!({"alg": "HS256"}), &claims())),
            ("alg of another family", proof(ProofKey::Es256, &json!({"alg": "RS256"}), &claims())),
        ];
        for (what, p) in cases {
            assert_eq!(check(&p).err(), Some(bad), "{what}");
        }
        let good = proof(ProofKey::Es256, &json!({}), &claims());
        let (hp, s) = good.rsplit_once('.').unwrap();
        for p in [format!("{hp}.AAAA{s}"), format!("{good}.x"), hp.to_owned(), String::new(), "x".repeat(MAX_PROOF_BYTES + 1)] {
            assert_eq!(check(&p).err(), Some(bad), "{p}");
        }
        // A pinned list without the proof's algorithm.
        let es_only = DpopSettings { algorithms: vec![Algorithm::EdDSA], ..DpopSettings::default() };
        assert_eq!(verify_proof(&good, &target(), TOKEN, &es_only, NOW).err(), Some(bad));
        // Another access token than the one the proof was made for.
        assert_eq!(verify_proof(&good, &target(), "other", &DpopSettings::default(), NOW).err(), Some(bad));
        // Another method on the same URL.
        let post = ProofTarget { method: "POST", ..target() };
        assert_eq!(verify_proof(&good, &post, TOKEN, &DpopSettings::default(), NOW).err(), Some(bad));
    }

    #[test]
    fn origins_from_the_policy_replace_the_requests_own() {
        let good = proof(ProofKey::Es256, &json!({}), &claims());
        // Behind a TLS-terminating load balancer Envoy sees `http` and an internal host.
        let inside = ProofTarget { scheme: "http", authority: "fhir-internal:8080", ..target() };
        assert!(verify_proof(&good, &inside, TOKEN, &DpopSettings::default(), NOW).is_err());
        let listed = DpopSettings { origins: vec![normalize_origin("https://FHIR.example.org/").unwrap()], ..DpopSettings::default() };
        assert!(verify_proof(&good, &inside, TOKEN, &listed, NOW).is_ok());
        let other = DpopSettings { origins: vec!["https://other.example".into()], ..DpopSettings::default() };
        assert!(verify_proof(&good, &target(), TOKEN, &other, NOW).is_err());
    }

    #[test]
    fn uri_normalization() {
        let n = |u: &str| normalize_uri(u);
        assert_eq!(n("HTTPS://Example.COM:443").as_deref(), Some("https://example.com/"));
        assert_eq!(n("http://example.com:80/a%2fb%7e?q#f").as_deref(), Some("http://example.com/a%2Fb~"));
        assert_eq!(n("https://example.com:8443/x").as_deref(), Some("https://example.com:8443/x"));
        for bad in ["ftp://x/", "https:///x", "https://u@x/", "/relative", "https://x/%zz", "https://x/%4"] {
            assert_eq!(n(bad), None, "{bad}");
        }
        assert_eq!(normalize_origin("https://Example.com:443").as_deref(), Some("https://example.com"));
        assert_eq!(normalize_origin("https://example.com/").as_deref(), Some("https://example.com"));
        for bad in ["https://example.com/fhir", "https://example.com?x", "https://example.com#f", "example.com"] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_replay_key_depends_on_key_and_jti_only() {
        let a = check(&proof(ProofKey::Es256, &json!({}), &claims())).unwrap();
        let mut c = claims();
        c["iat"] = json!(NOW.sub_secs(5).as_secs());
        let b = check(&proof(ProofKey::Es256, &json!({}), &c)).unwrap();
        assert_eq!(a.replay_key, b.replay_key);
        c["jti"] = json!("another");
        assert_ne!(check(&proof(ProofKey::Es256, &json!({}), &c)).unwrap().replay_key, a.replay_key);
        assert_ne!(check(&proof(ProofKey::EdDsa, &json!({}), &claims())).unwrap().replay_key, a.replay_key);
    }
}
