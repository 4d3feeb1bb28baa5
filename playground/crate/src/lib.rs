//! phi-guard in the browser: the core behind a small JSON-in/JSON-out interface for the policy
//! playground (`playground/`).
//!
//! Each export takes text and returns JSON text, so the page gets exactly what the CLI prints:
//! [`explain`] runs [`phi_guard::simulate::simulate`] and returns the same `ExchangeOutcome` JSON as
//! `phi-guard explain --json` for the same inputs. The `#[wasm_bindgen]` functions are one-line
//! wrappers over plain functions ([`compile_value`], [`explain_value`]) that native tests call.
//!
//! This crate is the only code that names `wasm_bindgen`; the filter never depends on it.

use phi_guard::audit::AuditKey;
use phi_guard::policy::{compile, Access, PathMatcher, Policy};
use phi_guard::simulate::{simulate, CredentialInput, Exchange, Sender, Upstream, DEMO_AUDIT_KEY};
use phi_guard::time::UnixSeconds;
use serde::Deserialize;
use serde_json::{json, Value};
use wasm_bindgen::prelude::wasm_bindgen;

/// The content type an upstream body has when none is given (the CLI's default too).
pub const DEFAULT_CONTENT_TYPE: &str = "application/fhir+json";

/// One exchange as the page describes it; every member mirrors a `phi-guard explain` option.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExplainInput {
    /// The policy JSON text (the `POLICY` file).
    pub policy: String,
    /// `--method`.
    #[serde(default = "default_method")]
    pub method: String,
    /// `--path`, with query.
    pub path: String,
    /// `--token`: a compact JWS.
    #[serde(default)]
    pub token: Option<String>,
    /// `--claims`: token claims as JSON text, trusted without a signature.
    #[serde(default)]
    pub claims: Option<String>,
    /// `--authorization`: a whole `Authorization` header value, as a client sends it.
    #[serde(default)]
    pub authorization: Option<String>,
    /// `--jwks`: JWKS JSON text installed as the keys of the token's issuer.
    #[serde(default)]
    pub jwks: Option<String>,
    /// `--upstream-body` and friends; absent to decide the request only.
    #[serde(default)]
    pub upstream: Option<UpstreamInput>,
    /// `--now`: Unix seconds. Required: the core never reads a clock, and neither does this crate.
    pub now: u64,
    /// `--request-id`.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The audit key (`--audit-key-env`'s value); absent: the demo key, as the CLI does.
    #[serde(default)]
    pub audit_key: Option<String>,
    /// The HMAC key of `hash` transforms (`--hmac-key-env`'s value); absent: none.
    #[serde(default)]
    pub hmac_key: Option<String>,
    /// `--introspection-result`: an RFC 7662 answer (JSON text) for an opaque `token`.
    #[serde(default)]
    pub introspection: Option<String>,
    /// `--dpop`: a DPoP proof; the token is then sent with the `DPoP` scheme.
    #[serde(default)]
    pub dpop: Option<String>,
    /// `--origin`: the request's `scheme://host`, which a DPoP proof's `htu` names (default
    /// `https://fhir.phi-guard.test`).
    #[serde(default)]
    pub origin: Option<String>,
    /// `--client-cert-sha256`: the mutual-TLS client certificate's SHA-256 (hex).
    #[serde(default)]
    pub client_cert_sha256: Option<String>,
}

/// The upstream's answer, as `--upstream-body`, `--upstream-status`, `--upstream-content-type`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamInput {
    /// HTTP status (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// `content-type` (default `application/fhir+json`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// The complete body.
    pub body: String,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_status() -> u16 {
    200
}

/// A failure before the exchange runs, with the input it concerns (`policy`, `claims`, `jwks`,
/// `auditKey`, `input`) so the page can point at the right editor.
fn failure(field: &str, error: impl std::fmt::Display) -> Value {
    json!({"ok": false, "field": field, "error": error.to_string()})
}

/// Compile a policy: `{"ok": true, "policy": {name, revision, mode, issuers, routes}}`, or
/// `{"ok": false, "field": "policy", "error": "<location>: <message>", "location": ...}`.
pub fn compile_value(text: &str) -> Value {
    match compile(text.as_bytes()) {
        Ok(p) => json!({"ok": true, "policy": summary(&p)}),
        Err(e) => json!({"ok": false, "field": "policy", "error": e.to_string(), "location": e.location, "message": e.message}),
    }
}

/// What the page shows of a compiled policy.
fn summary(p: &Policy) -> Value {
    let routes: Vec<Value> = p
        .routes
        .iter()
        .map(|r| {
            let matcher = match &r.matcher {
                PathMatcher::Prefix(s) => format!("/{}/**", s.join("/")).replace("//", "/"),
                PathMatcher::Template(s) => {
                    format!("/{}", s.iter().map(|seg| seg.as_deref().unwrap_or("{}")).collect::<Vec<_>>().join("/"))
                }
            };
            let access = match &r.access {
                Access::Public => "public",
                Access::Scopes { .. } => "scopes",
                Access::Fhir(_) => "fhir",
            };
            let profiles: Vec<&str> = r.minimize.iter().flat_map(|m| m.profiles.iter().map(|p| p.name.as_str())).collect();
            json!({"id": r.id, "match": matcher, "methods": r.methods, "access": access, "profiles": profiles})
        })
        .collect();
    json!({
        "name": p.name,
        "revision": p.revision,
        "mode": if p.shadow { "shadow" } else { "enforce" },
        "issuers": p.issuers.iter().map(|i| i.issuer.as_str()).collect::<Vec<_>>(),
        "routes": routes,
        "requiresAuditKey": p.requires_audit_key(),
        "requiresHmacKey": p.requires_hmac_key(),
    })
}

/// Run one exchange: `{"ok": true, "outcome": <ExchangeOutcome>}` where `outcome` is what
/// `phi-guard explain --json` prints for the same inputs, or `{"ok": false, "field", "error"}`.
pub fn explain_value(input: &str) -> Value {
    let input: ExplainInput = match serde_json::from_str(input) {
        Ok(i) => i,
        Err(e) => return failure("input", e),
    };
    let mut policy = match compile(input.policy.as_bytes()) {
        Ok(p) => p,
        Err(e) => return failure("policy", e),
    };
    let input_credential = CredentialInput {
        token: input.token.as_deref(),
        claims: input.claims.as_deref(),
        authorization: input.authorization.as_deref(),
        jwks: input.jwks.as_deref(),
        introspection: input.introspection.as_deref(),
    };
    let prepared = match input_credential.prepare(&mut policy) {
        Ok(p) => p,
        Err(e) => return failure(e.field(), e),
    };
    let audit_key = match AuditKey::from_secret(input.audit_key.as_deref().map_or(DEMO_AUDIT_KEY, str::as_bytes)) {
        Ok(k) => k,
        Err(e) => return failure("auditKey", format!("audit key: {e}")),
    };
    let upstream = input.upstream.as_ref().map(|u| Upstream {
        status: u.status,
        content_type: Some(u.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE)),
        content_encoding: None,
        body: u.body.as_bytes(),
    });
    let origin = input.origin.as_deref().unwrap_or("https://fhir.phi-guard.test");
    let Some((scheme, authority)) = origin.split_once("://") else {
        return failure("origin", format!("`{origin}` is not `scheme://host`"));
    };
    let x = Exchange {
        method: &input.method,
        path: &input.path,
        credential: prepared.credential(),
        upstream,
        now: UnixSeconds::new(input.now),
        hmac_key: input.hmac_key.as_deref().map(str::as_bytes),
        audit_key: &audit_key,
        request_id: input.request_id.as_deref(),
        sender: Sender { dpop: input.dpop.as_deref(), scheme, authority, client_certificate_sha256: input.client_cert_sha256.as_deref() },
    };
    match serde_json::to_value(simulate(&policy, &x)) {
        Ok(outcome) => json!({"ok": true, "outcome": outcome}),
        Err(e) => failure("output", e),
    }
}

/// Compile a policy (JSON text in, JSON text out; see [`compile_value`]).
#[wasm_bindgen(js_name = compilePolicy)]
pub fn compile_policy(text: &str) -> String {
    compile_value(text).to_string()
}

/// Run one exchange (JSON text in, JSON text out; see [`explain_value`]).
#[wasm_bindgen]
pub fn explain(input: &str) -> String {
    explain_value(input).to_string()
}

/// The demo audit key the page pre-fills (public; never a real secret).
#[wasm_bindgen(js_name = demoAuditKey)]
pub fn demo_audit_key() -> String {
    String::from_utf8_lossy(DEMO_AUDIT_KEY).into_owned()
}

/// The phi-guard core version this build runs.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard::simulate::Credential;

    const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);
    const PATIENT_APP: &str = include_str!("../../../policies/smart-patient-app.json");
    const CLINICIAN: &str = include_str!("../../../policies/clinician-api.json");
    const JWKS: &str = include_str!("../../../tests/keys/demo-jwks.json");
    const PATIENT: &str = include_str!("../../../envoy/demo-data/resources/hl7r4_Patient-example.json");

    fn claims(scope: &str, patient: &str) -> String {
        json!({"iss": "https://idp.phi-guard.test", "aud": "https://fhir.phi-guard.test", "sub": "u1", "client_id": "app",
               "scope": scope, "patient": patient, "iat": NOW.sub_secs(10), "exp": NOW.add_secs(300)})
        .to_string()
    }

    /// The same exchange straight through the core, as the CLI runs it.
    fn direct(policy: &str, path: &str, claims: &str, body: Option<&str>) -> Value {
        let p = compile(policy.as_bytes()).unwrap();
        let c: Value = serde_json::from_str(claims).unwrap();
        let key = AuditKey::from_secret(DEMO_AUDIT_KEY).unwrap();
        let upstream =
            body.map(|b| Upstream { status: 200, content_type: Some(DEFAULT_CONTENT_TYPE), content_encoding: None, body: b.as_bytes() });
        let x = Exchange {
            method: "GET",
            path,
            credential: Credential::Claims(&c),
            upstream,
            now: NOW,
            hmac_key: None,
            audit_key: &key,
            request_id: Some("r1"),
            sender: Sender::default(),
        };
        serde_json::to_value(simulate(&p, &x)).unwrap()
    }

    #[test]
    fn compile_reports_summary_or_located_error() {
        let ok = compile_value(PATIENT_APP);
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["policy"]["name"], "smart-patient-app");
        assert!(ok["policy"]["revision"].as_str().unwrap().starts_with("sha256:"));
        assert!(ok["policy"]["routes"].as_array().unwrap().iter().any(|r| r["id"] == "fhir" && r["access"] == "fhir"));
        let bad = PATIENT_APP.replacen("\"fhir\": {", "\"fhir\": {\"interactions\": [\"read\", \"serach\"],", 1);
        assert_ne!(bad, PATIENT_APP);
        let err = compile_value(&bad);
        assert_eq!(err["ok"], false);
        assert_eq!(err["field"], "policy");
        assert_eq!(err["location"], "routes[4].fhir.interactions[1]");
        assert_eq!(err["error"], "routes[4].fhir.interactions[1]: unknown interaction `serach`");
        let syntax = compile_value("{\"version\": 1,\n \"name\": }");
        assert!(syntax["error"].as_str().unwrap().contains("line 2"), "{syntax}");
    }

    #[test]
    fn explain_returns_what_simulate_returns() {
        let c = claims("patient/Patient.rs", "example");
        let input = json!({"policy": PATIENT_APP, "path": "/fhir/Patient/example", "claims": c, "now": NOW, "requestId": "r1",
                           "upstream": {"body": PATIENT}});
        let got = explain_value(&input.to_string());
        assert_eq!(got["ok"], true, "{got}");
        assert_eq!(got["outcome"], direct(PATIENT_APP, "/fhir/Patient/example", &c, Some(PATIENT)));
        assert_eq!(got["outcome"]["decision"], "allow");
        assert!(!got["outcome"]["withheld"].as_array().unwrap().is_empty(), "the patient-app profile masks identifiers");
        // A refusal: the request alone.
        let c = claims("patient/Observation.rs", "example");
        let input = json!({"policy": PATIENT_APP, "path": "/fhir/Patient/example", "claims": c, "now": NOW, "requestId": "r1"});
        let got = explain_value(&input.to_string());
        assert_eq!(got["outcome"], direct(PATIENT_APP, "/fhir/Patient/example", &c, None));
        assert_eq!((got["outcome"]["reason"].as_str(), got["outcome"]["status"].as_u64()), (Some("insufficient_scope"), Some(403)));
    }

    #[test]
    fn sender_constrained_tokens_show_their_refusals() {
        // Claims of a DPoP-bound token: without a proof (claims go as a bearer token) it is
        // refused as the filter refuses it, and the page shows the DPoP challenge.
        let with_cnf = |cnf: Value| {
            let mut c: Value = serde_json::from_str(&claims("patient/Patient.rs", "example")).unwrap();
            c["cnf"] = cnf;
            c.to_string()
        };
        let c = with_cnf(json!({"jkt": "jLqUvX7EcceLqHOKEHsZZsYvrsTgSZgSPHEbGgh25hY"}));
        let input = json!({"policy": PATIENT_APP, "path": "/fhir/Patient/example", "claims": c, "now": NOW});
        let got = explain_value(&input.to_string());
        assert_eq!(got["outcome"]["reason"], "dpop_required", "{got}");
        assert!(got["outcome"]["wwwAuthenticate"].as_str().unwrap().contains("DPoP realm=\"phi-guard\""), "{got}");
        // Bound to a client certificate: refused without it, allowed with it.
        let cert = "3ab1f1e0d4c7b6a5f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7";
        let c = with_cnf(json!({"x5t#S256": phi_guard::auth::sender::certificate_thumbprint(cert).unwrap()}));
        let input = json!({"policy": PATIENT_APP, "path": "/fhir/Patient/example", "claims": c, "now": NOW});
        assert_eq!(explain_value(&input.to_string())["outcome"]["reason"], "certificate_mismatch");
        let mut with_cert = input.clone();
        with_cert["clientCertSha256"] = json!(cert);
        assert_eq!(explain_value(&with_cert.to_string())["outcome"]["decision"], "allow");
    }

    #[test]
    fn explain_reports_which_input_is_wrong() {
        let base = json!({"policy": CLINICIAN, "path": "/fhir/Patient/1", "now": NOW});
        let with = |k: &str, v: Value| {
            let mut i = base.clone();
            i[k] = v;
            explain_value(&i.to_string())
        };
        assert_eq!(with("policy", json!("{}"))["field"], "policy");
        assert_eq!(with("claims", json!("{not json"))["field"], "claims");
        assert_eq!(with("jwks", json!(JWKS))["field"], "jwks", "a JWKS without a token");
        assert_eq!(with("origin", json!("fhir.example.org"))["field"], "origin", "an origin without a scheme");
        assert_eq!(with("auditKey", json!("short"))["field"], "auditKey");
        assert_eq!(with("surprise", json!(1))["field"], "input");
        assert_eq!(explain_value("{\"policy\": \"\"}")["field"], "input", "path and now are required");
        let mut both = base.clone();
        both["token"] = json!("a.b.c");
        both["claims"] = json!("{}");
        assert_eq!(explain_value(&both.to_string())["field"], "input");
        // A token from an issuer the policy does not trust cannot take the JWKS.
        let token = format!("e30.{}.sig", base64_url(r#"{"iss":"https://evil.example"}"#));
        let mut t = base.clone();
        t["token"] = json!(token);
        t["jwks"] = json!(JWKS);
        let got = explain_value(&t.to_string());
        assert_eq!(got["field"], "jwks");
        assert!(got["error"].as_str().unwrap().contains("evil.example"), "{got}");
    }

    #[test]
    fn no_credential_is_refused_with_a_challenge() {
        let got = explain_value(&json!({"policy": PATIENT_APP, "path": "/fhir/Patient/example", "now": NOW}).to_string());
        assert_eq!(got["outcome"]["status"], 401);
        assert!(got["outcome"]["wwwAuthenticate"].as_str().unwrap().starts_with("Bearer"));
        // A whole header goes as sent: another scheme is not a bearer token.
        let basic = json!({"policy": PATIENT_APP, "path": "/fhir/Patient/example", "now": NOW, "authorization": "Basic dXNlcjpwYXNz"});
        let got = explain_value(&basic.to_string());
        assert_eq!(got["outcome"]["status"], 401);
        assert_ne!(got["outcome"]["reason"], "missing_token", "{got}");
        let mut both = basic.clone();
        both["claims"] = json!("{}");
        assert_eq!(explain_value(&both.to_string())["field"], "input");
    }

    #[test]
    fn fhir_audit_policies_return_the_fhir_record_too() {
        let c = claims("patient/Patient.rs", "example");
        let got = explain_value(&json!({"policy": PATIENT_APP, "path": "/fhir/Patient/pat1", "claims": c, "now": NOW}).to_string());
        assert_eq!(got["outcome"]["auditFhir"]["resourceType"], "AuditEvent", "smart-patient-app logs FHIR AuditEvents");
        let got = explain_value(&json!({"policy": CLINICIAN, "path": "/fhir/Patient/1", "claims": c, "now": NOW}).to_string());
        assert!(got["outcome"].get("auditFhir").is_none());
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
