//! Arbitrary bytes as an upstream response body through `minimize::apply`, with every profile
//! phi-guard ships (both example policies' route profiles and the `safe-harbor` preset) and the
//! fuzz profiles below, which use what the shipped ones do not: `hash`, `mask`, every
//! generalization, extension selectors, choice elements, `otherResources: deny`, shadow mode and
//! the `drop-query` and `drop` link settings.
//!
//! Never panics, and for every profile:
//! - a refusal is one of the reasons the response phase can give, and `response_too_large`
//!   exactly when the body is over the cap;
//! - a release names its profile and shadow flag; its withheld paths are sorted and distinct,
//!   with at least one count each, and none at all exactly when the count is 0;
//! - a rewritten body is JSON within the input (`tests/subset/mod.rs`: every key path, string
//!   and number comes from the input or from a transform of it), and equal to the input when
//!   nothing was withheld (the audit event would otherwise under-report);
//! - a shadow profile releases the upstream body unchanged (`body: None`);
//! - under the `safe-harbor` preset, no resource in the output (any object with a
//!   `resourceType`, whatever the type says) keeps an `identifier` or `telecom` element: the
//!   preset withholds them from every type.

#![no_main]

mod common;

#[path = "../../tests/subset/mod.rs"]
mod subset;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use phi_guard::decision::DenyReason;
use phi_guard::minimize::{self, compile_minimize, ApplyCtx, Profile};
use phi_guard::schema::MinimizeDoc;
use phi_guard::time::UnixSeconds;
use serde_json::Value;

/// Fixed so runs are reproducible (2027-01-15: born 1937 or earlier means 90 or older).
const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);

/// A fixed HMAC key for `hash` (32 bytes, over the 16-byte minimum).
const HMAC_KEY: &[u8] = b"fuzz-only hmac key, 32 bytes ok!";

/// Body cap: the fuzzer's inputs stay far below it unless it grows one on purpose, and then the
/// refusal must be `response_too_large`.
const MAX_BODY: usize = 64 * 1024;

/// FHIR profiles for what the shipped ones leave out. One document per profile: each is
/// unconditional, so it must be the last (only) one of its set.
const FHIR_PROFILES: [&str; 3] = [
    // Deny mode with every transform, year dates, reference displays removed, query dropped.
    r#"{"profiles": [{"name": "fuzz-transforms", "mode": "deny", "otherResources": "allow",
        "referenceDisplay": "remove", "dates": "year", "bundleLinks": "drop-query",
        "resources": {
          "*": {
            "deny": ["**.telecom", "**.note", "deceased[x]",
                     "**.extension[url=http://hl7.org/fhir/StructureDefinition/geolocation]"],
            "transform": [
              {"path": "**.identifier.value", "transform": "hash"},
              {"path": "**.identifier.system", "transform": "mask", "keepLast": 4},
              {"path": "**.address.postalCode", "transform": "generalize", "to": "zip3"},
              {"path": "**.onsetAge", "transform": "generalize", "to": "age90"},
              {"path": "**.valueAge", "transform": "generalize", "to": "age90"},
              {"path": "**.extension[url=http://hl7.org/fhir/StructureDefinition/patient-birthTime]", "transform": "hash"}
            ]
          },
          "Patient": {
            "deny": ["photo", "contact.name"],
            "transform": [
              {"path": "birthDate", "transform": "generalize", "to": "birth-year"},
              {"path": "name[*].family", "transform": "mask", "keepLast": 2},
              {"path": "multipleBirthInteger", "transform": "hash"}
            ]
          },
          "Observation": {
            "transform": [
              {"path": "effective[x]", "transform": "generalize", "to": "year"},
              {"path": "valueString", "transform": "mask", "keepLast": 3},
              {"path": "valueInteger", "transform": "generalize", "to": "age90"}
            ]
          }
        }}]}"#,
    // Allow mode: unlisted types are stubbed, kept elements carry transforms and carve-outs.
    r#"{"profiles": [{"name": "fuzz-allowlist", "mode": "allow", "bundleLinks": "paging-only",
        "resources": {
          "*": {"allow": ["status", "code", "subject", "contained"]},
          "Patient": {
            "allow": ["gender", "address.state", "extension[url=http://hl7.org/fhir/us/core/StructureDefinition/us-core-race]",
                      "identifier.type", "name"],
            "deny": ["name.given"],
            "transform": [
              {"path": "identifier.value", "transform": "mask", "keepLast": 4},
              {"path": "address.postalCode", "transform": "generalize", "to": "zip3"},
              {"path": "birthDate", "transform": "generalize", "to": "year"}
            ]
          },
          "Observation": {
            "allow": ["category", "value[x]", "component.code", "component.value[x]", "effectivePeriod"],
            "transform": [{"path": "effectiveDateTime", "transform": "generalize", "to": "year"}]
          },
          "Condition": {"allow": ["clinicalStatus"], "transform": [{"path": "onsetAge", "transform": "generalize", "to": "age90"}]}
        }}]}"#,
    // Shadow mode, unknown and unlisted types refused, links dropped.
    r#"{"profiles": [{"name": "fuzz-shadow", "shadow": true, "mode": "deny", "otherResources": "deny", "bundleLinks": "drop",
        "resources": {"Patient": {"deny": ["name", "**.identifier"]}, "Observation": {"deny": ["note"]}}}]}"#,
];

/// A plain JSON route's profile with every transform.
const JSON_PROFILE: &str = r#"{"profiles": [{"name": "fuzz-json", "mode": "deny",
    "fields": {
      "deny": ["**.ssn", "address.line"],
      "transform": [
        {"path": "**.mrn", "transform": "mask", "keepLast": 4},
        {"path": "**.memberId", "transform": "hash"},
        {"path": "**.dateOfBirth", "transform": "generalize", "to": "birth-year"},
        {"path": "**.date", "transform": "generalize", "to": "year"},
        {"path": "**.zip", "transform": "generalize", "to": "zip3"},
        {"path": "**.age", "transform": "generalize", "to": "age90"}
      ]
    }}]}"#;

/// The `safe-harbor` preset on its own.
const PRESET: &str = r#"{"profiles": [{"name": "safe-harbor", "preset": "safe-harbor"}]}"#;

fn compile_doc(text: &str, fhir: bool) -> Vec<Arc<Profile>> {
    let doc: MinimizeDoc = serde_json::from_str(text).unwrap_or_else(|e| panic!("fuzz profile does not parse: {e}"));
    compile_minimize(&doc, &phi_guard::schema::ROOT.field("fuzz"), fhir).unwrap_or_else(|e| panic!("fuzz profile does not compile: {e}")).profiles
}

/// Every profile the target runs, shipped ones first.
fn profiles() -> &'static [Arc<Profile>] {
    static PROFILES: OnceLock<Vec<Arc<Profile>>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        let mut all: Vec<Arc<Profile>> = common::example_policies()
            .iter()
            .flat_map(|p| p.routes.iter())
            .filter_map(|r| r.minimize.as_ref())
            .flat_map(|set| set.profiles.iter().cloned())
            .collect();
        // Both example policies' profiles, so a route that stops minimizing is noticed.
        assert!(all.len() >= 6, "expected the example policies' six profiles, found {}", all.len());
        all.extend(compile_doc(PRESET, true));
        for doc in FHIR_PROFILES {
            all.extend(compile_doc(doc, true));
        }
        all.extend(compile_doc(JSON_PROFILE, false));
        assert!(all.iter().any(|p| p.requires_hmac_key()), "no profile hashes");
        all
    })
}

/// The first object with a `resourceType` that still has an element the `safe-harbor` preset
/// withholds from every type, with that element's name.
fn safe_harbor_leak(v: &Value) -> Option<(String, &'static str)> {
    match v {
        Value::Object(m) => {
            if let Some(ty) = m.get("resourceType") {
                if let Some(k) = ["identifier", "telecom"].into_iter().find(|k| m.contains_key(*k)) {
                    return Some((ty.to_string(), k));
                }
            }
            m.values().find_map(safe_harbor_leak)
        }
        Value::Array(a) => a.iter().find_map(safe_harbor_leak),
        _ => None,
    }
}

/// What `apply` may refuse with: the response-phase reasons it can reach.
fn response_phase(reason: DenyReason) -> bool {
    use DenyReason::*;
    matches!(
        reason,
        ResponseNotJson | ResponseTruncated | ResponseTooLarge | ResponseUnexpectedShape | ResponseUnknownResource | MinimizationFailed
    )
}

fuzz_target!(|data: &[u8]| {
    let ctx = ApplyCtx { hmac_key: Some(HMAC_KEY), now: NOW, pseudonyms: None };
    // Parsed once for the subset checks (`apply` parses the same way); its facts are gathered
    // on first use.
    let input: Option<Value> = minimize::body::parse(data, MAX_BODY).ok();
    let mut facts: Option<subset::Input> = None;
    for profile in profiles() {
        let name = &profile.name;
        match minimize::apply(profile, data, &ctx, MAX_BODY) {
            Err(reason) => {
                assert!(response_phase(reason), "{name}: refused with `{}`", reason.code());
                assert_eq!(reason == DenyReason::ResponseTooLarge, data.len() > MAX_BODY, "{name}: `{}` for {} bytes", reason.code(), data.len());
            }
            Ok(applied) => {
                let Some(input) = &input else {
                    panic!("{name}: released a body that does not parse");
                };
                assert_eq!(applied.profile.as_deref(), Some(name.as_str()));
                assert_eq!(applied.shadow, profile.shadow);
                assert!(applied.withheld.windows(2).all(|w| w[0] < w[1]), "{name}: withheld paths not sorted and distinct: {:?}", applied.withheld);
                assert!(applied.count >= applied.withheld.len(), "{name}: count {} for {} paths", applied.count, applied.withheld.len());
                assert_eq!(applied.count == 0, applied.withheld.is_empty(), "{name}: count {} with paths {:?}", applied.count, applied.withheld);
                match &applied.body {
                    None => assert!(profile.shadow, "{name}: no body outside shadow mode"),
                    Some(bytes) => {
                        assert!(!profile.shadow, "{name}: shadow mode rewrote the body");
                        let out: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{name}: released bytes are not JSON: {e}"));
                        let facts = facts.get_or_insert_with(|| subset::Input::new(input));
                        if let Err(e) = facts.check(&out) {
                            panic!("{name}: output not within the input: {e}\ninput:  {input}\noutput: {out}");
                        }
                        if profile.safe_harbor {
                            if let Some((ty, k)) = safe_harbor_leak(&out) {
                                panic!("{name}: resourceType {ty} released `{k}`\ninput:  {input}\noutput: {out}");
                            }
                        }
                        if applied.count == 0 {
                            assert_eq!(&out, input, "{name}: changed the body but reported nothing withheld");
                        }
                    }
                }
            }
        }
    }
});
