//! JWT access-token verification per RFC 8725: strict parsing, pinned algorithms, keys only from
//! the policy, every time check against the injected `now`.

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::keys::VerifyKey;
use super::principal::Principal;
use super::scope;
use crate::fhir::request::valid_id;
use crate::reason::DenyReason;
use crate::time::UnixSeconds;

/// Claim names an issuer uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    /// Scopes claim: a space-delimited string or an array of strings.
    pub scope: String,
    /// Subject claim.
    pub subject: String,
    /// Client-id claim (falls back to `azp`).
    pub client_id: String,
    /// Patient-in-context claim.
    pub patient: String,
    /// Purpose-of-use claim: a string or an array of strings.
    pub purpose: String,
    /// Break-glass claim (a boolean), when the policy defines break-glass.
    pub break_glass: Option<String>,
    /// Break-glass reason claim (a string), when the policy defines break-glass.
    pub break_glass_reason: Option<String>,
}

/// A trusted issuer, compiled from policy.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Exact `iss`.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Pinned algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Verification keys: the inline JWKS, or the keys last fetched from `remote`.
    pub keys: Vec<VerifyKey>,
    /// Where to fetch the JWKS, for issuers without an inline one.
    pub remote: Option<super::remote::RemoteJwks>,
    /// Clock skew tolerance in seconds.
    pub clock_skew: u64,
    /// Longest accepted lifetime in seconds.
    pub max_lifetime: Option<u64>,
    /// Refuse tokens without a (non-empty) subject: every access must be attributable to a
    /// user or system (HIPAA §164.312(a)(2)(i), unique user identification).
    pub require_subject: bool,
    /// Claim names.
    pub claims: ClaimNames,
    /// Known `acr` values, weakest first: a step-up requirement `acrMin` is met by its own
    /// level or any later one. Empty when the policy defines none.
    pub acr_levels: Vec<String>,
    /// How its tokens may be presented: DPoP required, allowed (default) or not accepted.
    pub dpop: super::sender::DpopMode,
    /// Its introspection endpoint (RFC 7662), for opaque tokens.
    pub introspection: Option<super::introspect::Introspection>,
}

/// Header parameters we understand; anything in `crit` is therefore unsupported.
const KEY_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Verify a compact JWS access token and extract its principal.
pub fn verify(token: &str, issuers: &[IssuerConfig], max_bytes: usize, now: UnixSeconds) -> Result<Principal, DenyReason> {
    verify_with(token, issuers, max_bytes, now, true)
}

/// [`verify`] for a token whose signature another worker of this Envoy verified under the same
/// issuers and keys (the caller holds the proof: an attestation in shared data, MACed and bound
/// to a fingerprint of the key set, see `runtime::tokens`). Every other step runs again: size,
/// structure and header rules, algorithm pinning, issuer, lifetime, audience, claims.
pub fn verify_attested(token: &str, issuers: &[IssuerConfig], max_bytes: usize, now: UnixSeconds) -> Result<Principal, DenyReason> {
    verify_with(token, issuers, max_bytes, now, false)
}

fn verify_with(
    token: &str,
    issuers: &[IssuerConfig],
    max_bytes: usize,
    now: UnixSeconds,
    signature: bool,
) -> Result<Principal, DenyReason> {
    use DenyReason::*;
    if token.len() > max_bytes {
        return Err(TokenTooLarge);
    }
    let jws = parse_jws(token)?;
    // A JWT's payload is its claims: a JSON object (RFC 7519 §7.2).
    let claims = match serde_json::from_slice(&jws.payload) {
        Ok(Value::Object(m)) => m,
        _ => return Err(MalformedToken),
    };
    let iss = claims.get("iss").and_then(Value::as_str).ok_or(UnknownIssuer)?;
    let issuer = issuers.iter().find(|i| i.issuer == iss).ok_or(UnknownIssuer)?;
    if signature {
        match check_signature(&jws, &issuer.keys, &issuer.algorithms) {
            // Remote keys not loaded yet, or dropped as stale: not the token's fault.
            Err(UnknownKey) if issuer.keys.is_empty() && issuer.remote.is_some() => return Err(KeysUnavailable),
            r => r?,
        };
    } else {
        pinned_algorithm(&jws, &issuer.algorithms)?;
    }

    check_times(&claims, issuer, now)?;
    check_audience(&claims, issuer)?;
    principal(&claims, issuer)
}

/// A compact JWS whose signature verified (see [`verify_signature`]).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedJws {
    /// The algorithm the signature was verified with.
    pub alg: Algorithm,
    /// The protected header.
    pub header: Map<String, Value>,
    /// The decoded payload (for a JWT, the claims JSON; may be empty in a bare JWS).
    pub payload: Vec<u8>,
}

/// The JWS layer of [`verify`] alone: structure, header rules (RFC 8725), algorithm pinning, key
/// selection and the signature, without reading the payload. [`verify`] runs the same two steps,
/// with the issuer lookup between them; this entry point exists so JOSE test vectors, whose
/// payloads are not our claims, exercise exactly that code.
pub fn verify_signature(token: &str, keys: &[VerifyKey], algorithms: &[Algorithm]) -> Result<VerifiedJws, DenyReason> {
    let jws = parse_jws(token)?;
    let alg = check_signature(&jws, keys, algorithms)?;
    Ok(VerifiedJws { alg, header: jws.header, payload: jws.payload })
}

/// The cryptographic step alone: whether `signature` (base64url) over `message` verifies under
/// `alg` with one of `keys` that accepts `alg` and, if `kid` is given, carries that `kid`.
/// Without a `kid` every key of the right type is tried; never any key from outside `keys`.
pub fn verify_message(message: &[u8], signature: &str, alg: Algorithm, kid: Option<&str>, keys: &[VerifyKey]) -> Result<(), DenyReason> {
    let mut candidates = keys.iter().filter(|k| k.accepts(alg) && (kid.is_none() || k.kid.as_deref() == kid)).peekable();
    if candidates.peek().is_none() {
        return Err(DenyReason::UnknownKey);
    }
    if candidates.any(|k| super::crypto::verify(signature, message, &k.key, alg)) {
        Ok(())
    } else {
        Err(DenyReason::BadSignature)
    }
}

/// A compact JWS split and decoded, its header checked; the signature is not verified yet.
struct Jws<'t> {
    header: Map<String, Value>,
    payload: Vec<u8>,
    alg: String,
    kid: Option<String>,
    signing_input: &'t [u8],
    signature: &'t str,
}

fn parse_jws(token: &str) -> Result<Jws<'_>, DenyReason> {
    use DenyReason::*;
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(MalformedToken);
    };
    // A JWS payload may be empty (RFC 7515 §7.1); a JWT's never is, which `verify` enforces.
    if h64.is_empty() || s64.is_empty() || ![h64, p64, s64].iter().all(|p| p.bytes().all(is_b64url)) {
        return Err(MalformedToken);
    }
    let header = decode_object(h64)?;
    let payload = URL_SAFE_NO_PAD.decode(p64).map_err(|_| MalformedToken)?;

    let alg = header.get("alg").and_then(Value::as_str).ok_or(MalformedToken)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(AlgorithmNotAllowed);
    }
    let alg = alg.to_owned();
    if KEY_HEADERS.iter().any(|k| header.contains_key(*k)) {
        return Err(EmbeddedKey);
    }
    if header.contains_key("crit") {
        return Err(UnsupportedCrit);
    }
    if let Some(typ) = header.get("typ") {
        let typ = typ.as_str().ok_or(MalformedToken)?.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        if typ != "jwt" && typ != "at+jwt" {
            return Err(MalformedToken);
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(MalformedToken),
    };
    let signing_input = token.get(..h64.len() + 1 + p64.len()).ok_or(MalformedToken)?.as_bytes();
    Ok(Jws { header, payload, alg, kid, signing_input, signature: s64 })
}

/// Algorithm pinning, then [`verify_message`] over the JWS signing input.
fn check_signature(jws: &Jws<'_>, keys: &[VerifyKey], algorithms: &[Algorithm]) -> Result<Algorithm, DenyReason> {
    let alg = pinned_algorithm(jws, algorithms)?;
    verify_message(jws.signing_input, jws.signature, alg, jws.kid.as_deref(), keys)?;
    Ok(alg)
}

/// The header's `alg`, if the issuer accepts it.
fn pinned_algorithm(jws: &Jws<'_>, algorithms: &[Algorithm]) -> Result<Algorithm, DenyReason> {
    let alg = Algorithm::from_str(&jws.alg).map_err(|_| DenyReason::AlgorithmNotAllowed)?;
    if !algorithms.contains(&alg) {
        return Err(DenyReason::AlgorithmNotAllowed);
    }
    Ok(alg)
}

/// Check already-trusted claims (no signature) exactly as [`verify`] would after the signature:
/// issuer, lifetime, audience, claim types. For `phi-guard explain --claims`; never on the data
/// path.
pub fn check_claims(claims: &Value, issuers: &[IssuerConfig], now: UnixSeconds) -> Result<Principal, DenyReason> {
    let claims = claims.as_object().ok_or(DenyReason::MalformedToken)?;
    let iss = claims.get("iss").and_then(Value::as_str).ok_or(DenyReason::UnknownIssuer)?;
    let issuer = issuers.iter().find(|i| i.issuer == iss).ok_or(DenyReason::UnknownIssuer)?;
    check_times(claims, issuer, now)?;
    check_audience(claims, issuer)?;
    principal(claims, issuer)
}

/// The `iss` claim of a token WITHOUT verifying it: only to choose which issuer's keys to
/// refetch. Never use it for an access decision.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims = decode_object(payload).ok()?;
    claims.get("iss").and_then(Value::as_str).map(str::to_owned)
}

pub(super) fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

pub(super) fn decode_object(seg: &str) -> Result<Map<String, Value>, DenyReason> {
    let bytes = URL_SAFE_NO_PAD.decode(seg).map_err(|_| DenyReason::MalformedToken)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(DenyReason::MalformedToken),
    }
}

/// A NumericDate claim: absent, or a non-negative number (fractions truncated).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<UnixSeconds>, DenyReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(UnixSeconds::new(u)))
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1e15).contains(&f) => Ok(Some(UnixSeconds::new(f as u64))),
                    _ => Err(DenyReason::BadClaim),
                }
            }
        }
        Some(_) => Err(DenyReason::BadClaim),
    }
}

fn check_times(claims: &Map<String, Value>, issuer: &IssuerConfig, now: UnixSeconds) -> Result<(), DenyReason> {
    let skew = issuer.clock_skew;
    let exp = numeric_date(claims, "exp")?.ok_or(DenyReason::MissingExpiry)?;
    if now >= exp.add_secs(skew) {
        return Err(DenyReason::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now.add_secs(skew) {
            return Err(DenyReason::NotYetValid);
        }
    }
    let iat = numeric_date(claims, "iat")?;
    if let Some(iat) = iat {
        if iat > now.add_secs(skew) || iat > exp {
            return Err(DenyReason::BadIssuedAt);
        }
    }
    // A user cannot have authenticated in the future.
    if numeric_date(claims, "auth_time")?.is_some_and(|t| t > now.add_secs(skew)) {
        return Err(DenyReason::BadIssuedAt);
    }
    if let Some(max) = issuer.max_lifetime {
        let start = iat.unwrap_or(now);
        if exp.secs_since(start) > max.saturating_add(skew) {
            return Err(DenyReason::BadIssuedAt);
        }
    }
    Ok(())
}

fn check_audience(claims: &Map<String, Value>, issuer: &IssuerConfig) -> Result<(), DenyReason> {
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => issuer.audiences.contains(a),
        Some(Value::Array(list)) => {
            if !list.iter().all(Value::is_string) {
                return Err(DenyReason::BadClaim);
            }
            list.iter().filter_map(Value::as_str).any(|a| issuer.audiences.iter().any(|x| x == a))
        }
        None => false,
        Some(_) => return Err(DenyReason::BadClaim),
    };
    if ok {
        Ok(())
    } else {
        Err(DenyReason::BadAudience)
    }
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, DenyReason> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(DenyReason::BadClaim),
    }
}

/// A claim holding a list: absent, a space-delimited string, or an array of strings.
fn string_list(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, DenyReason> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()),
        Some(Value::Array(list)) => list.iter().map(|v| v.as_str().map(str::to_owned).ok_or(DenyReason::BadClaim)).collect(),
        Some(_) => Err(DenyReason::BadClaim),
    }
}

fn principal(claims: &Map<String, Value>, issuer: &IssuerConfig) -> Result<Principal, DenyReason> {
    let names = &issuer.claims;
    let scopes = string_list(claims, &names.scope)?;
    let smart_scopes = scopes.iter().filter_map(|s| scope::parse(s)).collect();
    // Purpose-of-use codes (HL7 v3 PurposeOfUse, e.g. `TREAT`): a space-delimited string or an
    // array. They select minimization profiles and are audited, so anything that is not
    // code-shaped (free text could carry PHI) makes the claim malformed.
    let code = |s: &str| crate::ident::code(s, 32);
    let purpose = string_list(claims, &names.purpose)?;
    if purpose.len() > 8 || !purpose.iter().all(|p| code(p)) {
        return Err(DenyReason::BadClaim);
    }
    let patient = optional_string(claims, &names.patient)?;
    if patient.as_deref().is_some_and(|p| !valid_id(p)) {
        return Err(DenyReason::BadClaim);
    }
    let client_id = match optional_string(claims, &names.client_id)? {
        Some(c) => Some(c),
        None => optional_string(claims, "azp")?,
    };
    let exp = numeric_date(claims, "exp")?.ok_or(DenyReason::MissingExpiry)?;
    let (acr, amr) = authentication(claims)?;
    let break_glass = match &names.break_glass {
        None => None,
        Some(name) => match claims.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(DenyReason::BadClaim),
        },
    };
    let break_glass_reason = match &names.break_glass_reason {
        None => None,
        Some(name) => optional_string(claims, name)?,
    };
    let subject = optional_string(claims, &names.subject)?.filter(|s| !s.is_empty());
    if subject.is_none() && issuer.require_subject {
        return Err(DenyReason::MissingSubject);
    }
    Ok(Principal {
        issuer: issuer.issuer.clone(),
        subject,
        client_id,
        scopes,
        smart_scopes,
        patient,
        purpose,
        token_id: optional_string(claims, "jti")?,
        acr,
        amr,
        auth_time: numeric_date(claims, "auth_time")?,
        issued_at: numeric_date(claims, "iat")?,
        break_glass,
        break_glass_reason,
        expires_at: exp,
        valid_until: exp.add_secs(issuer.clock_skew),
        confirmation: confirmation(claims)?,
    })
}

/// `cnf` (RFC 7800): `jkt` (RFC 9449) and `x5t#S256` (RFC 8705), each the base64url of a
/// SHA-256. Any other confirmation method (`jwk`, `kid`, `jku`, ...) is one phi-guard cannot
/// check, so the token is refused rather than treated as a bearer token.
fn confirmation(claims: &Map<String, Value>) -> Result<super::principal::Confirmation, DenyReason> {
    let mut c = super::principal::Confirmation::default();
    let cnf = match claims.get("cnf") {
        None | Some(Value::Null) => return Ok(c),
        Some(Value::Object(m)) if !m.is_empty() => m,
        Some(_) => return Err(DenyReason::BadClaim),
    };
    let sha256 = |v: &Value| match v.as_str() {
        Some(s) if s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|b| b.len() == 32) => Ok(s.to_owned()),
        _ => Err(DenyReason::BadClaim),
    };
    for (k, v) in cnf {
        match k.as_str() {
            "jkt" => c.jkt = Some(sha256(v)?),
            "x5t#S256" => c.x5t_s256 = Some(sha256(v)?),
            _ => return Err(DenyReason::BadClaim),
        }
    }
    Ok(c)
}

/// Most `amr` entries accepted.
const MAX_AMR: usize = 16;

/// `acr` (a string) and `amr` (an array of method strings, RFC 8176). Both are compared with
/// policy values only; a wrong type rejects the token rather than weakening a step-up check.
fn authentication(claims: &Map<String, Value>) -> Result<(Option<String>, Vec<String>), DenyReason> {
    let acr = optional_string(claims, "acr")?;
    if acr.as_deref().is_some_and(|a| a.is_empty() || a.len() > 256) {
        return Err(DenyReason::BadClaim);
    }
    let amr = match claims.get("amr") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.len() <= MAX_AMR => list
            .iter()
            .map(|v| match v.as_str() {
                Some(m) if (1..=64).contains(&m.len()) => Ok(m.to_owned()),
                _ => Err(DenyReason::BadClaim),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(DenyReason::BadClaim),
    };
    Ok((acr, amr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{claims, issuer, key_path, sign, AUD, ISS, NOW};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn check(token: &str) -> Result<Principal, DenyReason> {
        verify(token, &[issuer()], 8192, NOW)
    }

    #[test]
    fn accepts_each_algorithm() {
        for (alg, kid) in [(Algorithm::RS256, "demo-rs256"), (Algorithm::ES256, "demo-es256"), (Algorithm::EdDSA, "demo-eddsa")] {
            let p = check(&sign(alg, Some(kid), &claims())).unwrap();
            assert_eq!(p.patient.as_deref(), Some("p1"));
            assert_eq!(p.client_id.as_deref(), Some("app"));
            assert_eq!(p.smart_scopes.len(), 2);
            assert_eq!(p.valid_until, NOW.add_secs(660));
        }
        // No kid: the issuer's keys of the right type are tried.
        assert!(check(&sign(Algorithm::ES256, None, &claims())).is_ok());
    }

    #[test]
    fn rejects_bad_claims() {
        let cases: Vec<(Value, DenyReason)> = vec![
            (json!({"exp": NOW.sub_secs(61)}), DenyReason::Expired),
            (json!({"exp": NOW.sub_secs(60)}), DenyReason::Expired),
            (json!({"exp": "soon"}), DenyReason::BadClaim),
            (json!({"exp": null}), DenyReason::BadClaim),
            (json!({"nbf": NOW.add_secs(61)}), DenyReason::NotYetValid),
            (json!({"iat": NOW.add_secs(61)}), DenyReason::BadIssuedAt),
            (json!({"exp": NOW.add_secs(200_000)}), DenyReason::BadIssuedAt),
            (json!({"iss": "https://evil.test"}), DenyReason::UnknownIssuer),
            (json!({"iss": 5}), DenyReason::UnknownIssuer),
            (json!({"aud": "https://other.test"}), DenyReason::BadAudience),
            (json!({"aud": ["https://other.test", AUD]}), DenyReason::Expired), // placeholder replaced below
            (json!({"aud": [1]}), DenyReason::BadClaim),
            (json!({"scope": 5}), DenyReason::BadClaim),
            (json!({"patient": "../Patient/2"}), DenyReason::BadClaim),
        ];
        for (patch, want) in cases {
            let mut c = claims();
            for (k, v) in patch.as_object().unwrap() {
                c[k] = v.clone();
            }
            let got = check(&sign(Algorithm::RS256, Some("demo-rs256"), &c));
            if patch.get("aud").is_some_and(Value::is_array) && want == DenyReason::Expired {
                assert!(got.is_ok(), "audience list containing ours is accepted");
            } else {
                assert_eq!(got.err(), Some(want), "{patch}");
            }
        }
        let mut no_exp = claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &no_exp)).err(), Some(DenyReason::MissingExpiry));
        let mut no_aud = claims();
        no_aud.as_object_mut().unwrap().remove("aud");
        assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &no_aud)).err(), Some(DenyReason::BadAudience));
    }

    #[test]
    fn subject_is_required_unless_the_issuer_waives_it() {
        for sub in [None, Some(json!("")), Some(Value::Null)] {
            let mut c = claims();
            match &sub {
                Some(v) => c["sub"] = v.clone(),
                None => {
                    c.as_object_mut().unwrap().remove("sub");
                }
            }
            let token = sign(Algorithm::RS256, Some("demo-rs256"), &c);
            assert_eq!(check(&token).err(), Some(DenyReason::MissingSubject), "{sub:?}");
            let lenient = IssuerConfig { require_subject: false, ..issuer() };
            assert_eq!(verify(&token, &[lenient], 8192, NOW).unwrap().subject, None);
        }
        let mut c = claims();
        c["sub"] = json!(7);
        assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).err(), Some(DenyReason::BadClaim));
    }

    #[test]
    fn rejects_forgeries() {
        let good = sign(Algorithm::RS256, Some("demo-rs256"), &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let body = b64(&claims());
        let hdr = |h: Value| b64(&h);
        let cases: Vec<(String, DenyReason)> = vec![
            (format!("{}.{}.", hdr(json!({"alg":"none"})), body), DenyReason::MalformedToken),
            (format!("{}.{}.AAAA", hdr(json!({"alg":"none"})), body), DenyReason::AlgorithmNotAllowed),
            (format!("{}.{}.AAAA", hdr(json!({"alg":"NoNe"})), body), DenyReason::AlgorithmNotAllowed),
            (format!("{}.{}.{}", parts[0], parts[1], ""), DenyReason::MalformedToken),
            (
                format!("{}.{}.{}", parts[0], b64(&json!({"iss": ISS, "aud": AUD, "exp": NOW.add_secs(600), "patient": "p2"})), parts[2]),
                DenyReason::BadSignature,
            ),
            (format!("{}.{}.{}", hdr(json!({"alg":"RS256","kid":"nope"})), parts[1], parts[2]), DenyReason::UnknownKey),
            (format!("{}.{}.{}", hdr(json!({"alg":"RS256","kid":"demo-es256"})), parts[1], parts[2]), DenyReason::UnknownKey),
            (format!("{}.{}.{}", hdr(json!({"alg":"HS256","kid":"demo-rs256"})), parts[1], parts[2]), DenyReason::AlgorithmNotAllowed),
            (format!("{}.{}.{}", hdr(json!({"alg":"PS256","kid":"demo-rs256"})), parts[1], parts[2]), DenyReason::AlgorithmNotAllowed),
            (format!("{}.{}.{}", hdr(json!({"alg":"RS256","jwk":{"kty":"RSA"}})), parts[1], parts[2]), DenyReason::EmbeddedKey),
            (format!("{}.{}.{}", hdr(json!({"alg":"RS256","jku":"https://evil"})), parts[1], parts[2]), DenyReason::EmbeddedKey),
            (format!("{}.{}.{}", hdr(json!({"alg":"RS256","x5u":"https://evil"})), parts[1], parts[2]), DenyReason::EmbeddedKey),
            (format!("{}.{}.{}", hdr(json!({"alg":"RS256","crit":["exp"],"exp":1})), parts[1], parts[2]), DenyReason::UnsupportedCrit),
            (format!("{}.{}.{}", hdr(json!({"alg":"RS256","typ":"JWE"})), parts[1], parts[2]), DenyReason::MalformedToken),
            (format!("{}.{}.{}", hdr(json!({"alg":"RS256","kid":7})), parts[1], parts[2]), DenyReason::MalformedToken),
            (format!("{}.{}", parts[0], parts[1]), DenyReason::MalformedToken),
            (format!("{good}.x"), DenyReason::MalformedToken),
            (format!("{}.{}.{}=", parts[0], parts[1], parts[2]), DenyReason::MalformedToken),
            (format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(b"not json"), parts[1], parts[2]), DenyReason::MalformedToken),
            (format!("{}.{}.{}", hdr(json!(["alg"])), parts[1], parts[2]), DenyReason::MalformedToken),
            ("x".repeat(9000), DenyReason::TokenTooLarge),
        ];
        for (t, want) in cases {
            assert_eq!(check(&t).err(), Some(want), "{t}");
        }
    }

    #[test]
    fn rejects_hs256_keyed_with_rsa_public_key() {
        // The classic confusion: sign HS256 with the RSA public key bytes as the HMAC secret.
        let pem = std::fs::read(key_path("demo-rs256.key.pem")).unwrap();
        let secret = EncodingKey::from_secret(&pem);
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("demo-rs256".into());
        let t = encode(&h, &claims(), &secret).unwrap();
        assert_eq!(check(&t).err(), Some(DenyReason::AlgorithmNotAllowed));
        let mut iss = issuer();
        iss.algorithms.push(Algorithm::HS256);
        // Even if a policy pinned HS256, no RSA key accepts an HMAC algorithm.
        assert_eq!(verify(&t, &[iss], 8192, NOW).err(), Some(DenyReason::UnknownKey));
    }

    #[test]
    fn rejects_attacker_key_with_known_kid() {
        let key = EncodingKey::from_rsa_pem(&std::fs::read(key_path("attacker-rs256.key.pem")).unwrap()).unwrap();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("demo-rs256".into());
        let t = encode(&h, &claims(), &key).unwrap();
        assert_eq!(check(&t).err(), Some(DenyReason::BadSignature));
    }

    #[test]
    fn signature_layer_alone() {
        let keys = issuer().keys;
        let good = sign(Algorithm::RS256, Some("demo-rs256"), &claims());
        let v = verify_signature(&good, &keys, &[Algorithm::RS256]).unwrap();
        assert_eq!((v.alg, v.header["kid"].as_str()), (Algorithm::RS256, Some("demo-rs256")));
        assert_eq!(serde_json::from_slice::<Value>(&v.payload).unwrap(), claims());
        assert_eq!(verify_signature(&good, &keys, &[Algorithm::ES256]).err(), Some(DenyReason::AlgorithmNotAllowed));
        assert_eq!(verify_signature(&good, &[], &[Algorithm::RS256]).err(), Some(DenyReason::UnknownKey));

        // A JWS may have an empty payload; a JWT may not.
        let key = EncodingKey::from_rsa_pem(&std::fs::read(key_path("demo-rs256.key.pem")).unwrap()).unwrap();
        let input = format!("{}.", b64(&json!({"alg": "RS256", "kid": "demo-rs256"})));
        let empty = format!("{input}.{}", jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::RS256).unwrap());
        assert_eq!(verify_signature(&empty, &keys, &[Algorithm::RS256]).unwrap().payload, b"");
        assert_eq!(check(&empty).err(), Some(DenyReason::MalformedToken));
    }

    #[test]
    fn confirmation_claims_bind_or_refuse() {
        let sha = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut c = claims();
        assert!(!check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).unwrap().confirmation.bound());
        c["cnf"] = json!({"jkt": sha, "x5t#S256": sha});
        let p = check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).unwrap();
        assert_eq!((p.confirmation.jkt.as_deref(), p.confirmation.x5t_s256.as_deref()), (Some(sha.as_str()), Some(sha.as_str())));
        // A confirmation method phi-guard cannot check, or a malformed one: refused, never
        // treated as an unbound bearer token.
        for cnf in [
            json!({"jwk": {"kty": "EC"}}),
            json!({"kid": "k1"}),
            json!({"jkt": sha, "jku": "https://x"}),
            json!({}),
            json!("jkt"),
            json!({"jkt": "short"}),
            json!({"jkt": URL_SAFE_NO_PAD.encode([7u8; 31])}),
            json!({"x5t#S256": 5}),
        ] {
            c["cnf"] = cnf.clone();
            assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).err(), Some(DenyReason::BadClaim), "{cnf}");
        }
    }

    #[test]
    fn scp_arrays() {
        let mut iss = issuer();
        iss.claims.scope = "scp".into();
        let mut c = claims();
        c["scp"] = json!(["user/Patient.rs", "openid"]);
        let p = verify(&sign(Algorithm::RS256, Some("demo-rs256"), &c), &[iss.clone()], 8192, NOW).unwrap();
        assert_eq!(p.scopes, ["user/Patient.rs", "openid"]);
        assert_eq!(p.smart_scopes.len(), 1);
        c["scp"] = json!([1]);
        assert_eq!(verify(&sign(Algorithm::RS256, Some("demo-rs256"), &c), &[iss], 8192, NOW).err(), Some(DenyReason::BadClaim));
    }

    #[test]
    fn purpose_of_use() {
        let mut c = claims();
        assert!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).unwrap().purpose.is_empty());
        c["purpose_of_use"] = json!("HRESCH");
        assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).unwrap().purpose, ["HRESCH"]);
        c["purpose_of_use"] = json!(["TREAT", "HPAYMT"]);
        assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).unwrap().purpose, ["TREAT", "HPAYMT"]);
        c["purpose_of_use"] = json!("TREAT ETREAT");
        assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).unwrap().purpose, ["TREAT", "ETREAT"]);
        // Free text is not a purpose code: refused rather than carried into decisions and audit.
        c["purpose_of_use"] = json!(["HPAYMT", "John Smith"]);
        assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).err(), Some(DenyReason::BadClaim));
        c["purpose_of_use"] = json!({"code": "TREAT"});
        assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).err(), Some(DenyReason::BadClaim));
    }

    #[test]
    fn authentication_claims_are_strictly_typed() {
        let mut c = claims();
        let p = check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).unwrap();
        assert_eq!((p.acr, p.amr.len(), p.auth_time, p.issued_at, p.break_glass), (None, 0, None, Some(NOW.sub_secs(10)), None));
        c["acr"] = json!("urn:phi-guard:loa:2");
        c["amr"] = json!(["pwd", "mfa"]);
        c["auth_time"] = json!(NOW.sub_secs(100));
        c["break_glass"] = json!(true);
        c["break_glass_reason"] = json!("life-threatening");
        let p = check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).unwrap();
        assert_eq!(p.acr.as_deref(), Some("urn:phi-guard:loa:2"));
        assert_eq!(p.amr, ["pwd", "mfa"]);
        assert_eq!(p.auth_time, Some(NOW.sub_secs(100)));
        assert_eq!((p.break_glass, p.break_glass_reason.as_deref()), (Some(true), Some("life-threatening")));
        let bad: Vec<(&str, Value, DenyReason)> = vec![
            ("acr", json!(2), DenyReason::BadClaim),
            ("acr", json!(""), DenyReason::BadClaim),
            ("amr", json!("mfa"), DenyReason::BadClaim),
            ("amr", json!(["mfa", 1]), DenyReason::BadClaim),
            ("amr", json!(vec!["otp"; 17]), DenyReason::BadClaim),
            ("auth_time", json!("yesterday"), DenyReason::BadClaim),
            ("auth_time", json!(NOW.add_secs(61)), DenyReason::BadIssuedAt),
            ("break_glass", json!("true"), DenyReason::BadClaim),
            ("break_glass_reason", json!(["life-threatening"]), DenyReason::BadClaim),
        ];
        for (k, v, want) in bad {
            let mut c = c.clone();
            c[k] = v;
            assert_eq!(check(&sign(Algorithm::RS256, Some("demo-rs256"), &c)).err(), Some(want), "{k}");
        }
        // Without break-glass in the policy the claim is not read at all.
        let mut iss = issuer();
        iss.claims.break_glass = None;
        c["break_glass"] = json!("not even a boolean");
        assert_eq!(verify(&sign(Algorithm::RS256, Some("demo-rs256"), &c), &[iss], 8192, NOW).unwrap().break_glass, None);
    }
}
