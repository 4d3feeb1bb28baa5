//! Shared by the targets: the demo issuer, the example policies, and the tokens the demo keys
//! really signed.

#![allow(dead_code)]

use std::sync::OnceLock;

use phi_guard::auth::IssuerConfig;
use phi_guard::policy::{compile, Access, Policy};

/// Tokens minted with `phi-guard token` and the demo keys (iat 1799999000, exp 1800003600).
/// They are the only tokens whose signature can verify; see `fuzz/README.md`.
pub const SIGNED: [&str; 5] = [
    include_str!("../tokens/patient-rs256.jwt"),
    include_str!("../tokens/patient-es256.jwt"),
    include_str!("../tokens/patient-eddsa.jwt"),
    include_str!("../tokens/clinician-rs256.jwt"),
    include_str!("../tokens/system-es256.jwt"),
];

/// Whether `token`'s signing input (header and payload) is one the demo keys really signed.
pub fn signed_by_us(token: &str) -> bool {
    let input = token.rsplit_once('.').map(|(i, _)| i);
    input.is_some() && SIGNED.iter().any(|t| t.trim().rsplit_once('.').map(|(i, _)| i) == input)
}

/// The demo issuer: `tests/keys/demo-jwks.json`, every algorithm phi-guard can pin.
pub fn demo_issuer() -> &'static IssuerConfig {
    static ISSUER: OnceLock<IssuerConfig> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let policy = format!(
            r#"{{"version": 1, "name": "fuzz",
                "issuers": [{{"issuer": "https://idp.phi-guard.test", "audiences": ["https://fhir.phi-guard.test"],
                  "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
                  "jwks": {}, "maxTokenLifetimeSeconds": 86400}}],
                "routes": [{{"id": "health", "match": {{"path": "/healthz"}}, "public": true}}]}}"#,
            include_str!("../../tests/keys/demo-jwks.json")
        );
        match compile(policy.as_bytes()) {
            Ok(mut p) if p.issuers.len() == 1 => p.issuers.remove(0),
            other => panic!("demo issuer does not compile: {other:?}"),
        }
    })
}

/// The example policies shipped in `policies/`.
pub fn example_policies() -> &'static [Policy; 2] {
    static POLICIES: OnceLock<[Policy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let load = |bytes: &[u8]| compile(bytes).unwrap_or_else(|e| panic!("example policy: {e}"));
        [
            load(include_bytes!("../../policies/smart-patient-app.json")),
            load(include_bytes!("../../policies/clinician-api.json")),
        ]
    })
}

/// Whether the route with this id lets requests through without a token.
pub fn is_public(policy: &Policy, route_id: &str) -> bool {
    policy.routes.iter().any(|r| r.id == route_id && matches!(r.access, Access::Public))
}
