//! Arbitrary bytes as a bearer token against the demo issuer. Never panics, never accepts: the
//! only correctly signed tokens are the demo seeds, and they are expired at `NOW`. A refusal that
//! comes after the signature check (a claims error) means the signature verified, which must only
//! ever happen for a signing input the demo keys really signed. The same bytes go through the
//! DPoP proof checks and the reading of an introspection answer.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use phi_guard::auth::{verify, verify_signature};
use phi_guard::decision::DenyReason;
use phi_guard::time::UnixSeconds;

/// Well after the demo seeds expired (exp 1800003600).
const NOW: UnixSeconds = UnixSeconds::new(1_900_000_000);

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let issuer = common::demo_issuer();
    let verdict = verify(&token, std::slice::from_ref(issuer), 8192, NOW);
    use DenyReason::*;
    match verdict {
        Ok(p) => panic!("accepted a token: {p:?}"),
        Err(MissingExpiry | MissingSubject | Expired | NotYetValid | BadIssuedAt | BadAudience | BadClaim) => {
            assert!(common::signed_by_us(&token), "signature verified on a signing input we never signed");
        }
        Err(_) => {}
    }
    if verify_signature(&token, &issuer.keys, &issuer.algorithms).is_ok() {
        assert!(common::signed_by_us(&token), "signature verified on a signing input we never signed");
    }
    // The same bytes as a DPoP proof, and as an introspection answer: never a panic, never a
    // proof accepted (no key ever signed one for this request), never an answer taken as
    // active without `"active": true`.
    let target = phi_guard::auth::dpop::ProofTarget { method: "GET", scheme: "https", authority: "fhir.phi-guard.test", path: "/fhir/Patient/p1" };
    let settings = phi_guard::auth::dpop::DpopSettings::default();
    assert!(phi_guard::auth::dpop::verify_proof(&token, &target, "t", &settings, NOW).is_err(), "accepted a DPoP proof");
    if let Some(phi_guard::auth::introspect::Introspected::Active(claims)) =
        phi_guard::auth::introspect::parse_response(200, data, &issuer.issuer)
    {
        assert_eq!(claims.get("active"), Some(&serde_json::Value::Bool(true)));
        let _ = phi_guard::auth::introspect::principal(&claims, issuer, NOW);
    }
});
