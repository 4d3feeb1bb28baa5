//! The minimization profiles and fixed context of the `minimize` and `minimize_stream` targets,
//! shared with `tests/minimize_differential.rs` (which includes this file by path): every profile
//! phi-guard ships (the example policies' route profiles and the `safe-harbor` preset) and the
//! fuzz profiles below, which use what the shipped ones do not: `hash`, `mask`, every
//! generalization, extension selectors, choice elements, `otherResources: deny`, shadow mode and
//! the `drop-query` and `drop` link settings.

// Each includer uses a different part of it.
#![allow(dead_code)]

use std::sync::Arc;

use phi_guard::minimize::{compile_minimize, Profile};
use phi_guard::policy::Policy;
use phi_guard::schema::MinimizeDoc;
use phi_guard::time::UnixSeconds;

/// Fixed so runs are reproducible (2027-01-15: born 1937 or earlier means 90 or older).
pub const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);

/// A fixed HMAC key for `hash` (32 bytes, over the 16-byte minimum).
pub const HMAC_KEY: &[u8] = b"fuzz-only hmac key, 32 bytes ok!";

/// Body cap: the fuzzer's inputs stay far below it unless it grows one on purpose, and then the
/// refusal must be `response_too_large`.
pub const MAX_BODY: usize = 64 * 1024;

/// FHIR profiles for what the shipped ones leave out. One document per profile: each is
/// unconditional, so it must be the last (only) one of its set.
pub const FHIR_PROFILES: [&str; 3] = [
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
pub const JSON_PROFILE: &str = r#"{"profiles": [{"name": "fuzz-json", "mode": "deny",
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
pub const PRESET: &str = r#"{"profiles": [{"name": "safe-harbor", "preset": "safe-harbor"}]}"#;

/// De-identification beyond the preset's: free text withheld whole, pseudonyms with the
/// links dropped, over an allow-everything rule set (so the pass sees every element).
pub const DEID_WITHHOLD: &str = r#"{"profiles": [{"name": "deid-withhold", "mode": "deny", "otherResources": "allow",
    "resources": {"*": {"deny": []}}, "bundleLinks": "drop",
    "deidentify": {"freeText": "withhold", "pseudonymizeIds": true}}]}"#;

/// Date shifting (its output is not within the input: the `minimize_stream` target only).
pub const DEID_SHIFT: &str = r#"{"profiles": [{"name": "deid-shift", "mode": "deny", "otherResources": "allow",
    "resources": {"*": {"deny": []}}, "deidentify": {"freeText": "scrub", "dateShiftDays": 365}}]}"#;

/// Compile one profile document (`fhir`: for a FHIR route).
pub fn compile_doc(text: &str, fhir: bool) -> Vec<Arc<Profile>> {
    let doc: MinimizeDoc = serde_json::from_str(text).unwrap_or_else(|e| panic!("fuzz profile does not parse: {e}"));
    compile_minimize(&doc, &phi_guard::schema::ROOT.field("fuzz"), fhir)
        .unwrap_or_else(|e| panic!("fuzz profile does not compile: {e}"))
        .profiles
}

/// The route profiles of these policies, in route and selection order.
pub fn shipped<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Vec<Arc<Profile>> {
    policies
        .into_iter()
        .flat_map(|p| p.routes.iter())
        .filter_map(|r| r.minimize.as_ref())
        .flat_map(|set| set.profiles.iter().cloned())
        .collect()
}

/// The profiles that are not route profiles: the `safe-harbor` preset, the fuzz FHIR profiles
/// and the plain JSON one.
pub fn extra() -> Vec<Arc<Profile>> {
    let mut all = compile_doc(PRESET, true);
    all.extend(compile_doc(DEID_WITHHOLD, true));
    for doc in FHIR_PROFILES {
        all.extend(compile_doc(doc, true));
    }
    all.extend(compile_doc(JSON_PROFILE, false));
    all
}

/// Every profile the minimize targets run, shipped ones first.
pub fn all<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Vec<Arc<Profile>> {
    let mut all = shipped(policies);
    // Both example policies' profiles, so a route that stops minimizing is noticed.
    assert!(all.len() >= 6, "expected the example policies' six profiles, found {}", all.len());
    all.extend(extra());
    assert!(all.iter().any(|p| p.requires_hmac_key()), "no profile hashes");
    all
}
