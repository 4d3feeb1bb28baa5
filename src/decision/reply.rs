//! Local replies for refusals: status, RFC 6750 `WWW-Authenticate`, and a JSON body (a FHIR
//! `OperationOutcome` on FHIR routes). Nothing from the request or token is echoed.

use serde_json::json;

use super::reason::DenyReason;

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

/// Build the reply for a refusal. `required_scope` is policy text (never token content).
pub fn refusal_reply(reason: DenyReason, status: u16, fhir: bool, required_scope: Option<&str>) -> Reply {
    let mut headers = vec![
        ("content-type", if fhir { "application/fhir+json" } else { "application/json" }.to_owned()),
        ("cache-control", "no-store".to_owned()),
        ("x-content-type-options", "nosniff".to_owned()),
    ];
    if reason.status() == 401 || reason.bearer_error().is_some() {
        let mut v = String::from("Bearer realm=\"phi-guard\"");
        if let Some(e) = reason.bearer_error() {
            v.push_str(&format!(", error=\"{e}\", error_description=\"{}\"", reason.message()));
        }
        if let (DenyReason::InsufficientScope, Some(s)) = (reason, required_scope) {
            v.push_str(&format!(", scope=\"{}\"", s.replace(['"', '\\'], "")));
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
    }
}
