//! Local replies for refusals: status, RFC 6750 `WWW-Authenticate`, and a JSON body (a FHIR
//! `OperationOutcome` on FHIR routes). Nothing from the request or token is echoed.

use serde_json::json;

use crate::reason::DenyReason;

/// A complete local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers to set.
    pub headers: Vec<(&'static str, String)>,
    /// Body bytes (JSON).
    pub body: String,
}

/// What a client must present to succeed, carried in `WWW-Authenticate`. Policy text only,
/// never request or token content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    /// `scope` (RFC 6750), on `insufficient_scope`: scopes that would have been enough,
    /// space-separated.
    pub scope: Option<String>,
    /// `acr_values` (RFC 9470), on `insufficient_user_authentication`: acceptable
    /// authentication context classes, space-separated.
    pub acr_values: Option<String>,
    /// `max_age` (RFC 9470), on `insufficient_user_authentication`: the longest acceptable time
    /// in seconds since the user last authenticated.
    pub max_age: Option<u64>,
    /// A `DPoP` challenge beside the `Bearer` one (RFC 9449 §7.1), when the policy accepts DPoP.
    pub dpop: Option<DpopChallenge>,
}

/// The `DPoP` challenge of a 401.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpopChallenge {
    /// `algs`: the proof algorithms accepted, space-separated.
    pub algs: String,
    /// The `error` goes on this challenge rather than on the `Bearer` one: the refusal is
    /// about the proof, or the token came with the DPoP scheme.
    pub error: bool,
}

impl Challenge {
    /// A challenge naming the scopes that would have been enough.
    pub fn scope(scope: Option<&str>) -> Self {
        Challenge { scope: scope.map(str::to_owned), ..Challenge::default() }
    }
}

/// Build the reply for a refusal whose challenge carries at most a scope (response-phase
/// refusals, rate limits, no policy). Prefer [`challenge_reply`] (or
/// [`crate::decision::Refusal::reply`]) for request-phase refusals.
pub fn refusal_reply(reason: DenyReason, status: u16, fhir: bool, required_scope: Option<&str>) -> Reply {
    challenge_reply(reason, status, fhir, &Challenge::scope(required_scope))
}

/// Build the reply for a refusal. The challenge's parameters are written only for the reason
/// they belong to: `scope` on `insufficient_scope`, `acr_values` and `max_age` on
/// `insufficient_user_authentication`.
pub fn challenge_reply(reason: DenyReason, status: u16, fhir: bool, challenge: &Challenge) -> Reply {
    let quoted = |s: &str| s.replace(['"', '\\'], "");
    let mut headers = vec![
        ("content-type", if fhir { "application/fhir+json" } else { "application/json" }.to_owned()),
        ("cache-control", "no-store".to_owned()),
        ("x-content-type-options", "nosniff".to_owned()),
    ];
    let dpop_error = challenge.dpop.as_ref().is_some_and(|d| d.error);
    if reason.status() == 401 || reason.bearer_error().is_some() {
        let mut v = String::from("Bearer realm=\"phi-guard\"");
        if let Some(e) = reason.bearer_error().filter(|_| !dpop_error) {
            v.push_str(&format!(", error=\"{e}\", error_description=\"{}\"", reason.message()));
        }
        match reason {
            DenyReason::InsufficientScope => {
                if let Some(s) = &challenge.scope {
                    v.push_str(&format!(", scope=\"{}\"", quoted(s)));
                }
            }
            DenyReason::InsufficientUserAuthentication => {
                if let Some(a) = &challenge.acr_values {
                    v.push_str(&format!(", acr_values=\"{}\"", quoted(a)));
                }
                if let Some(m) = challenge.max_age {
                    v.push_str(&format!(", max_age=\"{m}\""));
                }
            }
            _ => {}
        }
        // A DPoP proof error is not a Bearer error.
        if !(reason.dpop_proof_error() && challenge.dpop.is_none()) {
            headers.push(("www-authenticate", v));
        }
    }
    if let Some(d) = &challenge.dpop {
        let mut v = format!("DPoP realm=\"phi-guard\", algs=\"{}\"", quoted(&d.algs));
        if let Some(e) = reason.bearer_error().filter(|_| d.error) {
            v.push_str(&format!(", error=\"{e}\", error_description=\"{}\"", reason.message()));
        }
        headers.push(("www-authenticate", v));
    }
    let issue_code = if status == 404 { "not-found" } else { reason.issue_code() };
    let body = if fhir {
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": issue_code,
                "details": {"coding": [{"system": "urn:phi-guard:reason", "code": reason.code()}], "text": reason.message()},
            }]
        })
    } else {
        json!({"error": reason.code(), "message": reason.message()})
    };
    Reply { status, headers, body: body.to_string() }
}

/// The generic body that replaces an upstream error or redirect on a route whose bodies are
/// rewritten (the upstream's could echo PHI). Keeps the upstream's status.
pub fn upstream_error_body(fhir: bool, status: u16) -> String {
    let text = format!("the upstream reported an error (HTTP {status}); details withheld");
    let v = if fhir {
        json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception", "details": {"text": text}}]})
    } else {
        json!({"error": "upstream_error", "message": text})
    };
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn shapes() {
        let r = refusal_reply(DenyReason::Expired, DenyReason::Expired.status(), true, None);
        assert_eq!(r.status, 401);
        assert!(header(&r, "www-authenticate").unwrap().contains("error=\"invalid_token\""));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["details"]["coding"][0]["code"], "token_expired");
        let r = refusal_reply(DenyReason::MissingToken, DenyReason::MissingToken.status(), false, None);
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"phi-guard\""));
        let r = refusal_reply(DenyReason::InsufficientScope, DenyReason::InsufficientScope.status(), false, Some("patient/Observation.r"));
        assert_eq!(r.status, 403);
        assert!(header(&r, "www-authenticate").unwrap().contains("error=\"insufficient_scope\", error_description=\"the token lacks a scope this request requires\", scope=\"patient/Observation.r\""));
        assert!(header(&refusal_reply(DenyReason::NoRoute, DenyReason::NoRoute.status(), false, None), "www-authenticate").is_none());
        // Another scheme: a challenge, no error; two credentials: invalid_request.
        let other = refusal_reply(DenyReason::UnsupportedAuthScheme, 401, false, None);
        assert_eq!(header(&other, "www-authenticate"), Some("Bearer realm=\"phi-guard\""));
        let twice = refusal_reply(DenyReason::AmbiguousCredentials, 400, true, None);
        assert!(header(&twice, "www-authenticate").unwrap().starts_with("Bearer realm=\"phi-guard\", error=\"invalid_request\""));
    }

    #[test]
    fn step_up_challenge() {
        let c =
            Challenge { scope: Some("ignored".into()), acr_values: Some("urn:x:loa-2 urn:x:loa-3".into()), max_age: Some(300), dpop: None };
        let r = challenge_reply(DenyReason::InsufficientUserAuthentication, 401, true, &c);
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"phi-guard\", error=\"insufficient_user_authentication\", error_description=\"a stronger or more recent user authentication is required\", acr_values=\"urn:x:loa-2 urn:x:loa-3\", max_age=\"300\"")
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["issue"][0]["details"]["coding"][0]["code"], "insufficient_user_authentication");
        // Without the challenge (e.g. an older host) the error code is still right.
        let bare = refusal_reply(DenyReason::InsufficientUserAuthentication, 401, false, None);
        assert!(header(&bare, "www-authenticate").unwrap().ends_with(
            "error=\"insufficient_user_authentication\", error_description=\"a stronger or more recent user authentication is required\""
        ));
        // Parameters only go with their own reason, and quotes cannot break out.
        let r = challenge_reply(
            DenyReason::InsufficientScope,
            403,
            false,
            &Challenge { scope: Some("a\"b".into()), acr_values: Some("x".into()), max_age: Some(1), dpop: None },
        );
        assert!(header(&r, "www-authenticate").unwrap().ends_with("scope=\"ab\""));
        let r = challenge_reply(DenyReason::PurposeRequired, 403, false, &c);
        assert!(header(&r, "www-authenticate").is_none());
    }
}
