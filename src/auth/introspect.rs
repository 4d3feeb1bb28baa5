//! Token introspection (RFC 7662) for issuers whose access tokens are opaque: the request the
//! filter sends to the issuer's endpoint, and how its answer becomes a [`Principal`] — with
//! exactly the claim rules of a JWT (lifetime, audience, scopes, subject, client, patient,
//! `acr`/`amr`, purpose, `cnf`), so an introspected token grants nothing a JWT with the same
//! claims would not.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::principal::Principal;
use super::verify::{check_claims, IssuerConfig};
use crate::reason::DenyReason;
use crate::time::UnixSeconds;

/// Largest introspection answer read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// An issuer's introspection endpoint (issuer `introspection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    /// Envoy cluster of the endpoint.
    pub cluster: String,
    /// Request path, e.g. `/oauth2/introspect`.
    pub path: String,
    /// `:authority` sent.
    pub authority: String,
    /// Client id of phi-guard at the authorization server (`client_secret_basic`).
    pub client_id: String,
    /// VM environment variable holding the client secret (never in the policy).
    pub client_secret_env: String,
    /// How long an active answer is reused (never past the token's `exp`), seconds.
    pub cache_seconds: u64,
    /// How long an inactive answer is reused, seconds.
    pub negative_cache_seconds: u64,
    /// Deadline of one introspection call, ms.
    pub timeout_ms: u64,
    /// Refuse an answer without `aud` (default): a token the server issued for another
    /// resource server must not be usable here.
    pub require_audience: bool,
}

impl Introspection {
    /// The callout's headers and body for `token`, authenticated with `client_secret_basic`
    /// (RFC 6749 §2.3.1: id and secret form-encoded, then Basic).
    pub fn request(&self, token: &str, secret: &str) -> (Vec<(&'static str, String)>, Vec<u8>) {
        let basic = STANDARD.encode(format!("{}:{}", form_encode(&self.client_id), form_encode(secret)));
        let headers = vec![
            (":method", "POST".to_owned()),
            (":path", self.path.clone()),
            (":authority", self.authority.clone()),
            ("content-type", "application/x-www-form-urlencoded".to_owned()),
            ("accept", "application/json".to_owned()),
            ("authorization", format!("Basic {basic}")),
        ];
        let body = format!("token={}&token_type_hint=access_token", form_encode(token)).into_bytes();
        (headers, body)
    }
}

/// What an introspection call established.
#[derive(Debug, Clone, PartialEq)]
pub enum Introspected {
    /// `active: true`, with the token's claims (`iss` filled in when the server omits it).
    Active(Map<String, Value>),
    /// `active: false`: revoked, expired or unknown.
    Inactive,
}

/// Read an introspection answer: HTTP 200 with a JSON object whose `active` is a boolean
/// (RFC 7662 §2.2). Anything else — another status, a body too large, not JSON, `active`
/// missing or not a boolean — means the endpoint is not usable now (`None`: 503
/// `introspection_unavailable`, never an allow).
pub fn parse_response(status: u16, body: &[u8], issuer: &str) -> Option<Introspected> {
    if status != 200 || body.len() > MAX_RESPONSE_BYTES {
        return None;
    }
    let Ok(Value::Object(mut claims)) = serde_json::from_slice::<Value>(body) else { return None };
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Some(Introspected::Inactive),
        _ => return None,
    }
    claims.entry("iss").or_insert_with(|| Value::String(issuer.to_owned()));
    Some(Introspected::Active(claims))
}

/// The principal of an active introspection answer for `issuer`: its `iss` must be the issuer,
/// and every claim rule of a JWT applies (`exp` required, `aud` required unless the issuer's
/// introspection says otherwise).
pub fn principal(claims: &Map<String, Value>, issuer: &IssuerConfig, now: UnixSeconds) -> Result<Principal, DenyReason> {
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
        return Err(DenyReason::UnknownIssuer);
    }
    let mut claims = claims.clone();
    // RFC 7662 makes `aud` optional; a server that omits it is trusted only when the policy
    // says so, and then the answer stands for this resource server.
    if !claims.contains_key("aud") && issuer.introspection.as_ref().is_some_and(|i| !i.require_audience) {
        if let Some(aud) = issuer.audiences.first() {
            claims.insert("aud".into(), Value::String(aud.clone()));
        }
    }
    // `check_claims` finds the issuer by `iss`: give it exactly this one.
    check_claims(&Value::Object(claims), std::slice::from_ref(issuer), now)
}

/// Whether `token` looks like a compact JWS (three base64url segments): such a token of an
/// issuer with keys is verified locally; anything else goes to introspection.
pub fn looks_like_jws(token: &str) -> bool {
    let mut n = 0;
    for part in token.split('.') {
        n += 1;
        if part.is_empty() && n != 2 || !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return false;
        }
    }
    n == 3
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{issuer, AUD, ISS, NOW};
    use serde_json::json;

    fn endpoint() -> Introspection {
        Introspection {
            cluster: "idp".into(),
            path: "/introspect".into(),
            authority: "idp.example".into(),
            client_id: "phi guard".into(),
            client_secret_env: "S".into(),
            cache_seconds: 60,
            negative_cache_seconds: 10,
            timeout_ms: 1000,
            require_audience: true,
        }
    }

    fn introspecting() -> IssuerConfig {
        IssuerConfig { introspection: Some(endpoint()), ..issuer() }
    }

    fn active(patch: Value) -> Map<String, Value> {
        let mut c = json!({"active": true, "iss": ISS, "aud": AUD, "sub": "u1", "client_id": "app", "scope": "patient/Patient.rs",
                           "patient": "p1", "exp": NOW.add_secs(300).as_secs(), "iat": NOW.sub_secs(10).as_secs()});
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.as_object().unwrap().clone()
    }

    #[test]
    fn the_request_authenticates_with_client_secret_basic() {
        let (headers, body) = endpoint().request("a+b/c=", "s3cr:t");
        let get = |k: &str| headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get(":method"), Some("POST"));
        assert_eq!(get("content-type"), Some("application/x-www-form-urlencoded"));
        // RFC 6749 §2.3.1: "phi+guard:s3cr%3At", base64.
        assert_eq!(get("authorization"), Some(format!("Basic {}", STANDARD.encode("phi+guard:s3cr%3At")).as_str()));
        assert_eq!(body, b"token=a%2Bb%2Fc%3D&token_type_hint=access_token");
    }

    #[test]
    fn answers_are_read_strictly() {
        let ok = serde_json::to_vec(&active(json!({"iss": null}))).unwrap();
        let Some(Introspected::Active(c)) = parse_response(200, &ok, ISS) else { panic!() };
        assert_eq!(c["iss"], ISS, "a missing iss is the configured issuer");
        assert_eq!(parse_response(200, br#"{"active": false}"#, ISS), Some(Introspected::Inactive));
        for (status, body) in [
            (200, &b"{\"active\": \"true\"}"[..]),
            (200, b"{}"),
            (200, b"[]"),
            (200, b"not json"),
            (500, b"{\"active\": true}"),
            (401, b"{\"error\": \"invalid_client\"}"),
        ] {
            assert_eq!(parse_response(status, body, ISS), None, "{status}");
        }
        let huge = format!("{{\"active\": false, \"x\": \"{}\"}}", "a".repeat(MAX_RESPONSE_BYTES));
        assert_eq!(parse_response(200, huge.as_bytes(), ISS), None);
    }

    #[test]
    fn an_active_answer_meets_every_jwt_claim_rule() {
        let iss = introspecting();
        let p = principal(&active(json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}})), &iss, NOW).unwrap();
        assert_eq!((p.patient.as_deref(), p.subject.as_deref(), p.smart_scopes.len()), (Some("p1"), Some("u1"), 1));
        assert!(p.confirmation.jkt.is_some());
        let cases = [
            (json!({"iss": "https://other.example"}), DenyReason::UnknownIssuer),
            (json!({"exp": null}), DenyReason::MissingExpiry),
            (json!({"exp": NOW.sub_secs(100).as_secs()}), DenyReason::Expired),
            (json!({"aud": "https://other.example"}), DenyReason::BadAudience),
            (json!({"aud": null}), DenyReason::BadAudience),
            (json!({"sub": null}), DenyReason::MissingSubject),
            (json!({"patient": "../Patient/2"}), DenyReason::BadClaim),
            (json!({"cnf": {"jwk": {}}}), DenyReason::BadClaim),
        ];
        for (patch, want) in cases {
            assert_eq!(principal(&active(patch.clone()), &iss, NOW).err(), Some(want), "{patch}");
        }
        // A server that never sends `aud`, trusted by the policy to answer for this service.
        let lenient = IssuerConfig { introspection: Some(Introspection { require_audience: false, ..endpoint() }), ..issuer() };
        assert!(principal(&active(json!({"aud": null})), &lenient, NOW).is_ok());
        assert_eq!(principal(&active(json!({"aud": "https://other.example"})), &lenient, NOW).err(), Some(DenyReason::BadAudience));
    }

    #[test]
    fn which_tokens_look_like_a_jws() {
        assert!(looks_like_jws("eyJh.eyJz.c2ln"));
        assert!(looks_like_jws("eyJh..c2ln"), "a JWS payload may be empty");
        for t in ["opaque-token", "a.b", "a.b.c.d", ".b.c", "a.b.", "a.b.c=", "2YotnFZFEjr1zCsicMWpAA"] {
            assert!(!looks_like_jws(t), "{t}");
        }
    }
}
