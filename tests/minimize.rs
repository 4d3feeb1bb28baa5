//! Minimization scenarios on real FHIR data (fixtures in `tests/fixtures/minimize`, see its
//! README for origins and licences): the shipped policies through the decision engine, Bundles,
//! contained resources, primitive-extension siblings, the narrative, the `safe-harbor` preset on
//! every Synthea bundle, and the Microsoft anonymizer's redaction pairs as an oracle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use phi_guard::auth::check_claims;
use phi_guard::decision::{decide_with, Decision, DenyReason, Request, ResponsePlan};
use phi_guard::minimize::{self, compile_minimize, Applied, ApplyCtx, Profile};
use phi_guard::policy::{compile, Policy};
use phi_guard::time::UnixSeconds;
use serde_json::{json, Value};

#[path = "subset/mod.rs"]
mod subset;
use subset::{assert_subset, strings};

const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);
const KEY: &[u8] = b"test-only hmac key, 32 bytes...!";

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/minimize/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn fixture(rel: &str) -> Value {
    minimize::body::parse(&fixture_bytes(rel), usize::MAX).unwrap()
}

fn fixtures_in(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("{}/tests/fixtures/minimize/{dir}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    names.sort();
    names
}

fn policy(name: &str) -> Policy {
    compile(&std::fs::read(format!("{}/policies/{name}.json", env!("CARGO_MANIFEST_DIR"))).unwrap()).unwrap()
}

fn profile(v: Value) -> Arc<Profile> {
    let mut v = v;
    if v.get("name").is_none() {
        v["name"] = json!("test");
    }
    let doc = serde_json::from_value(json!({"profiles": [v]})).unwrap();
    compile_minimize(&doc, &phi_guard::schema::ROOT.field("test"), true).unwrap().profiles[0].clone()
}

fn safe_harbor() -> Arc<Profile> {
    profile(json!({"preset": "safe-harbor"}))
}

fn ctx() -> ApplyCtx<'static> {
    ApplyCtx { hmac_key: Some(KEY), now: NOW, pseudonyms: None }
}

/// Minimize a value; returns the released JSON (parsed back from the bytes) and the result.
fn release(p: &Profile, input: &Value) -> (Value, Applied) {
    let bytes = serde_json::to_vec(input).unwrap();
    let applied = minimize::apply(p, &bytes, &ctx(), usize::MAX).unwrap();
    let out = serde_json::from_slice(applied.body.as_deref().unwrap_or(&bytes)).unwrap();
    (out, applied)
}

fn decide_claims(p: &Policy, method: &str, path: &str, claims: Value) -> Decision {
    let auth = ["Bearer claims"];
    decide_with(
        p,
        &Request { method, path, authorization: &auth, ..Default::default() },
        NOW,
        |_| check_claims(&claims, &p.issuers, NOW).map(Rc::new),
        |_| Ok(()),
    )
}

fn patient_app_claims(patient: &str) -> Value {
    json!({"iss": "https://idp.phi-guard.test", "aud": "https://fhir.phi-guard.test", "sub": "u1", "exp": NOW.add_secs(600), "iat": NOW.sub_secs(10),
           "scope": "launch/patient patient/Patient.rs patient/Observation.rs", "patient": patient})
}

fn labelled(v: &Value) -> bool {
    v["meta"]["security"].as_array().is_some_and(|a| {
        a.iter().any(|l| l["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue" && l["code"] == "REDACTED")
    })
}

fn entries<'a>(bundle: &'a Value, ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    bundle["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).filter(move |r| r["resourceType"] == ty)
}

// --- the shipped policies through the decision engine --------------------------------------

#[test]
fn shipped_policies_compile() {
    for entry in std::fs::read_dir(format!("{}/policies", env!("CARGO_MANIFEST_DIR"))).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") && !path.to_string_lossy().ends_with(".schema.json") {
            let p = compile(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // A safe-harbor profile pseudonymizes record keys under the HMAC key.
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(p.requires_hmac_key(), text.contains("\"preset\": \"safe-harbor\""), "{}", path.display());
        }
    }
}

#[test]
fn patient_read_by_a_patient_app() {
    let p = policy("smart-patient-app");
    let Decision::Allow(grant) = decide_claims(&p, "GET", "/fhir/Patient/example", patient_app_claims("example")) else { panic!() };
    let plan = &grant.response;
    assert!(plan.inspects_body() && plan.rewrites_body());
    assert_eq!(plan.minimize.as_ref().unwrap().name, "patient-app");
    let input = fixture("resources/hl7r4_Patient-example.json");
    let applied = plan.apply(&serde_json::to_vec(&input).unwrap(), &ctx()).unwrap();
    let bytes = applied.body.clone().unwrap();
    let out: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(out["identifier"][0]["value"], "***45", "at most half of a masked value is shown");
    assert!(!String::from_utf8_lossy(&bytes).contains("12345"));
    assert!(out.get("text").is_none(), "the narrative repeats the identifier");
    assert!(labelled(&out));
    assert_eq!(out["name"], input["name"]);
    assert_eq!(out["_birthDate"], input["_birthDate"], "untouched elements keep their extensions");
    assert_eq!(out["contact"], input["contact"], "`_family` with a null inside survives untouched");
    assert_eq!(applied.withheld, ["Patient.identifier.value", "Patient.text"]);
    assert_eq!(applied.count, 2);
    assert_eq!(applied.profile.as_deref(), Some("patient-app"));
    assert_subset(&input, &out, "Patient-example");
    // Keys keep the upstream's order, with `meta` placed after `id`.
    let keys: Vec<&str> = out.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..4], ["resourceType", "id", "meta", "identifier"]);

    // A Google Healthcare API Patient: SSN masked, geolocation gone.
    let Decision::Allow(grant) = decide_claims(
        &p,
        "GET",
        "/fhir/Patient/be92a43f-de46-affa-b131-bbf9eea51140",
        patient_app_claims("be92a43f-de46-affa-b131-bbf9eea51140"),
    ) else {
        panic!()
    };
    let applied = grant.response.apply(&fixture_bytes("resources/gateway_test_patient.json"), &ctx()).unwrap();
    let text = String::from_utf8(applied.body.unwrap()).unwrap();
    assert!(!text.contains("999-17-8182") && text.contains("*******8182"));
    assert!(!text.contains("geolocation") && !text.contains("latitude"));
    assert!(applied.withheld.contains(&"Patient.address.extension(http://hl7.org/fhir/StructureDefinition/geolocation)".to_owned()));
}

#[test]
fn patient_binding_is_checked_before_minimization() {
    let p = policy("smart-patient-app");
    let Decision::Allow(grant) = decide_claims(&p, "GET", "/fhir/Observation/o1", patient_app_claims("p1")) else { panic!() };
    let theirs = br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}"#;
    assert_eq!(grant.response.apply(theirs, &ctx()), Err(DenyReason::PatientMismatch));
    let ours = br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#;
    let applied = grant.response.apply(ours, &ctx()).unwrap();
    assert_eq!(applied.count, 0);
    assert_eq!(applied.body.as_deref(), Some(&ours[..]), "always re-serialized from what was inspected");
    for (body, reason) in [
        (&b"<html>oops</html>"[..], DenyReason::ResponseNotJson),
        (b"{\"resourceType\":\"Observation\",\"subject\":", DenyReason::ResponseTruncated),
        (b"", DenyReason::ResponseNotJson),
    ] {
        assert_eq!(grant.response.apply(body, &ctx()), Err(reason));
    }
    let capped = ResponsePlan { max_body_bytes: 16, ..grant.response.clone() };
    assert_eq!(capped.apply(ours, &ctx()), Err(DenyReason::ResponseTooLarge));
}

#[test]
fn research_route_chooses_its_profile_by_purpose() {
    let p = policy("clinician-api");
    let claims = |purpose: Option<&str>| {
        let mut c = json!({"iss": "https://idp.phi-guard.test", "aud": "https://fhir.phi-guard.test", "sub": "u1", "exp": NOW.add_secs(600), "scp": ["user/*.rs"]});
        if let Some(x) = purpose {
            c["purpose_of_use"] = json!(x);
        }
        c
    };
    match decide_claims(&p, "GET", "/research/fhir/Patient?gender=male", claims(Some("HRESCH"))) {
        Decision::Allow(g) => assert_eq!(g.response.minimize.unwrap().name, "research-deidentified"),
        d => panic!("{d:?}"),
    }
    match decide_claims(&p, "GET", "/research/fhir/Patient?gender=male", claims(Some("TREAT"))) {
        Decision::Deny(r) => {
            assert_eq!(r.reason, DenyReason::NoMinimizationProfile);
            assert_eq!(r.status, 403);
        }
        d => panic!("{d:?}"),
    }
    assert_eq!(
        decide_claims(&p, "GET", "/research/fhir/Patient?gender=male", claims(None)).reason(),
        Some(DenyReason::NoMinimizationProfile)
    );
    // Routes without `minimize` stream through.
    let Decision::Allow(g) = decide_claims(&p, "GET", "/fhir/Patient/x", claims(None)) else { panic!() };
    assert!(!g.response.inspects_body());
}

#[test]
fn plain_json_admin_reports() {
    let p = policy("clinician-api");
    let c = json!({"iss": "https://idp.phi-guard.test", "aud": "https://fhir.phi-guard.test", "sub": "u1", "exp": NOW.add_secs(600), "scp": ["admin.reports.read"]});
    let Decision::Allow(g) = decide_claims(&p, "GET", "/admin/reports/7", c) else { panic!() };
    let body = br#"{"report":"readmissions","rows":[{"mrn":"MRN00012345","ssn":"999-12-3456","dateOfBirth":"1950-01-01","days":3}]}"#;
    let applied = g.response.apply(body, &ctx()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&applied.body.unwrap()).unwrap(),
        json!({"report": "readmissions", "rows": [{"mrn": "*******2345", "days": 3}]})
    );
    assert_eq!(applied.withheld, ["rows.dateOfBirth", "rows.mrn", "rows.ssn"]);
}

// --- Bundles, contained resources, siblings, narrative --------------------------------------

#[test]
fn searchset_bundle_links_lose_search_values() {
    let p = profile(json!({"resources": {"MedicationRequest": {"allow": ["status", "intent", "medicationReference"]}}}));
    let input = fixture("bundles/hl7r4_Bundle-bundle-example.json");
    let (out, applied) = release(&p, &input);
    assert_eq!(out["link"][0]["url"], "https://example.com/base/MedicationRequest?_count=2");
    assert_eq!(out["link"][1]["url"], "https://example.com/base/MedicationRequest?searchId=ff15fd40-ff71-4b48-b366-09c706bed9d0&page=2");
    let mr = entries(&out, "MedicationRequest").next().unwrap();
    assert!(mr.get("subject").is_none() && mr.get("text").is_none() && labelled(mr));
    let med = entries(&out, "Medication").next().unwrap();
    assert_eq!(
        med.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["resourceType", "id", "meta"],
        "types without rules are reduced to a stub"
    );
    assert!(labelled(&out));
    assert!(!serde_json::to_string(&out).unwrap().contains("347"));
    assert!(applied.withheld.contains(&"Bundle.link.url".to_owned()));
    assert_subset(&input, &out, "bundle-example");

    // Opaque paging tokens survive.
    let input = fixture("bundles/gateway_patient_id_search.json");
    let p = profile(json!({"resources": {"Patient": {"allow": ["gender"]}}}));
    let (out, _) = release(&p, &input);
    assert_eq!(out["link"], input["link"]);

    // A search by identifier: the MRN in the self link goes with the stubbed outcome.
    let input = fixture("bundles/hl7r4_Bundle-bundle-search-warning.json");
    let (out, _) = release(&p, &input);
    assert_eq!(out["link"][0]["url"], "https://example.org/fhir/Observation");
    assert!(!serde_json::to_string(&out).unwrap().contains("123456"));
}

#[test]
fn synthea_transaction_bundle() {
    let p = profile(json!({
        "resources": {
            "Patient": {"allow": ["gender", "address.state"]},
            "Observation": {"allow": ["status", "category", "code", "subject", "valueQuantity", "valueCodeableConcept", "component"]}
        },
        "referenceDisplay": "remove"
    }));
    let input = fixture("synthea/Kermit_Trantow_f1a650a5-737e-4fd7-828e-03c3348b9524.json");
    let (out, applied) = release(&p, &input);
    assert_eq!(out["type"], "transaction");
    assert_eq!(out["entry"].as_array().unwrap().len(), input["entry"].as_array().unwrap().len());
    let patient = entries(&out, "Patient").next().unwrap();
    assert_eq!(patient["address"], json!([{"state": "Massachusetts"}]));
    assert!(patient.get("name").is_none() && patient.get("identifier").is_none() && patient.get("text").is_none());
    for obs in entries(&out, "Observation") {
        assert!(obs.get("code").is_some() && obs.get("effectiveDateTime").is_none());
        assert!(obs["subject"].get("reference").is_some());
    }
    for claim in entries(&out, "Claim") {
        assert!(claim.as_object().unwrap().keys().all(|k| ["resourceType", "id", "meta"].contains(&k.as_str())));
    }
    assert!(labelled(&out));
    assert!(applied.withheld.contains(&"Bundle.entry.resource(ExplanationOfBenefit).contained".to_owned()));
    assert!(applied.withheld.contains(&"Bundle.entry.resource(Patient).name".to_owned()));
    let text = serde_json::to_string(&out).unwrap();
    assert!(!text.contains("Trantow") && !text.contains("999-64-9098") && !text.contains("Kermit"));
    assert_subset(&input, &out, "Kermit");
}

#[test]
fn contained_resources_siblings_and_narrative() {
    let p = profile(json!({
        "resources": {
            "Observation": {"allow": ["status", "code", "subject", "contained", "valueQuantity", "component"]},
            "Patient": {"allow": ["gender", "active"]}
        }
    }));
    let input = fixture("resources/hl7r4_Observation-1minute-apgar-score.json");
    let (out, applied) = release(&p, &input);
    let contained = &out["contained"][0];
    assert_eq!(contained["resourceType"], "Patient");
    assert!(contained.get("birthDate").is_none() && contained.get("_birthDate").is_none() && contained.get("name").is_none());
    assert!(contained.get("meta").is_none(), "contained resources are covered by their container's label");
    assert!(labelled(&out));
    assert!(out.get("text").is_none());
    let text = serde_json::to_string(&out).unwrap();
    assert!(!text.contains("Chalmers") && !text.contains("2016-05-18"), "{text}");
    assert!(applied.withheld.contains(&"Observation.contained(Patient).birthDate".to_owned()));
    assert!(applied.withheld.contains(&"Observation.text".to_owned()));
    assert_subset(&input, &out, "apgar");

    // Encounter with a contained Location, in deny mode.
    let p = profile(json!({"mode": "deny", "otherResources": "allow", "resources": {"Location": {"deny": ["description", "address"]}}}));
    let input = fixture("resources/hl7r4_Encounter-home.json");
    let (out, applied) = release(&p, &input);
    assert!(out["contained"][0].get("description").is_none());
    assert!(labelled(&out) && out.get("text").is_none());
    assert_eq!(applied.withheld, ["Encounter.contained(Location).description", "Encounter.text"]);
}

#[test]
fn batch_response_with_nested_bundles() {
    let input = fixture("bundles/hl7r4_Bundle-bundle-response-medsallergies.json");
    let (out, applied) = release(&safe_harbor(), &input);
    let text = serde_json::to_string(&out).unwrap();
    for leak in ["Chalmers", "Peter", "(03) 5555 6473", "534 Erewhon St", "1974-12-25", "12345", "Bénédicte"] {
        assert!(!text.contains(leak), "`{leak}` leaked");
    }
    assert!(applied.withheld.iter().any(|p| p.starts_with("Bundle.entry.resource(Patient).")));
    assert!(out["entry"].as_array().unwrap().iter().all(|e| e.get("response").is_some()));
    assert_subset(&input, &out, "medsallergies");
}

#[test]
fn shadow_mode_releases_the_body_unchanged() {
    let p = profile(json!({"shadow": true, "resources": {"Patient": {"allow": ["gender"]}}}));
    let bytes = fixture_bytes("resources/hl7r4_Patient-example.json");
    let applied = minimize::apply(&p, &bytes, &ctx(), usize::MAX).unwrap();
    assert!(applied.shadow && applied.body.is_none());
    assert!(applied.withheld.contains(&"Patient.name".to_owned()));
}

#[test]
fn a_utf8_bom_is_tolerated_and_dropped() {
    let bytes = fixture_bytes("resources/msfhir_Patient-example-with-BOM.json");
    assert!(bytes.starts_with(b"\xEF\xBB\xBF"));
    let applied = minimize::apply(&safe_harbor(), &bytes, &ctx(), usize::MAX).unwrap();
    let out = applied.body.unwrap();
    assert!(out.starts_with(b"{"));
    assert!(!String::from_utf8(out).unwrap().contains("Chalmers"));
}

// --- Safe Harbor ---------------------------------------------------------------------------

/// What the Safe Harbor test looks for: the Patient's identifying values in a Synthea bundle.
fn synthea_identifiers(bundle: &Value) -> Vec<(String, String)> {
    let patient = entries(bundle, "Patient").next().unwrap();
    let mut found = Vec::new();
    for id in patient["identifier"].as_array().unwrap() {
        let kind = id["type"]["coding"][0]["code"].as_str().unwrap_or("synthea");
        found.push((format!("identifier {kind}"), id["value"].as_str().unwrap().to_owned()));
    }
    for name in patient["name"].as_array().unwrap() {
        found.push(("family".into(), name["family"].as_str().unwrap().to_owned()));
        for g in name["given"].as_array().unwrap() {
            found.push(("given".into(), g.as_str().unwrap().to_owned()));
        }
    }
    for t in patient["telecom"].as_array().unwrap() {
        found.push(("phone".into(), t["value"].as_str().unwrap().to_owned()));
    }
    for a in patient["address"].as_array().unwrap() {
        for l in a["line"].as_array().unwrap() {
            found.push(("line".into(), l.as_str().unwrap().to_owned()));
        }
        found.push(("city".into(), a["city"].as_str().unwrap().to_owned()));
        found.push(("postalCode".into(), a["postalCode"].as_str().unwrap().to_owned()));
    }
    found.push(("birthDate".into(), patient["birthDate"].as_str().unwrap().to_owned()));
    for e in patient["extension"].as_array().unwrap() {
        if e["url"] == "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName" {
            found.push(("mothersMaidenName".into(), e["valueString"].as_str().unwrap().to_owned()));
        }
    }
    found
}

#[test]
fn safe_harbor_on_every_synthea_bundle() {
    let p = safe_harbor();
    let files = fixtures_in("synthea");
    assert_eq!(files.len(), 3);
    for f in files {
        let input = fixture(&f);
        let bytes = fixture_bytes(&f);
        let started = Instant::now();
        let applied = minimize::apply(&p, &bytes, &ctx(), usize::MAX).unwrap();
        let took = started.elapsed();
        let out_bytes = applied.body.clone().unwrap();
        let text = String::from_utf8(out_bytes.clone()).unwrap();
        let wanted = synthea_identifiers(&input);
        assert!(
            wanted.iter().any(|(k, _)| k == "identifier SS")
                && wanted.iter().any(|(k, _)| k == "identifier DL")
                && wanted.iter().any(|(k, _)| k == "identifier PPN")
        );
        for (kind, value) in &wanted {
            assert!(!text.contains(value.as_str()), "{f}: {kind} `{value}` leaked");
        }
        let out: Value = serde_json::from_slice(&out_bytes).unwrap();
        let patient = entries(&out, "Patient").next().unwrap();
        let zip = wanted.iter().find(|(k, _)| k == "postalCode").unwrap().1.clone();
        assert_eq!(patient["address"][0]["postalCode"], zip[..3], "{f}");
        let born = wanted.iter().find(|(k, _)| k == "birthDate").unwrap().1.clone();
        assert_eq!(patient["birthDate"], born[..4], "{f}");
        assert!(labelled(patient) && labelled(&out));
        // No date more precise than a year anywhere.
        let mut all = Vec::new();
        strings(&out, &mut all);
        for s in &all {
            let b = s.as_bytes();
            let date_like =
                b.len() >= 7 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[5].is_ascii_digit() && b[6].is_ascii_digit();
            assert!(!date_like, "{f}: `{s}` is more precise than a year");
        }
        assert_subset(&input, &out, &f);
        eprintln!("{f}: {} bytes, {} values at {} paths withheld in {took:?}", bytes.len(), applied.count, applied.withheld.len());
    }
}

#[test]
fn safe_harbor_on_every_other_fixture() {
    let p = safe_harbor();
    for f in fixtures_in("bundles").into_iter().chain(fixtures_in("resources")) {
        let input = fixture(&f);
        let (out, _) = release(&p, &input);
        // Names, phones, street lines and identifier values of people.
        let mut people = Vec::new();
        collect_people(&input, &mut people);
        // Resource ids are released by design (some servers reuse the MRN as the id).
        let ids: Vec<&str> = people.iter().filter_map(|p| p["id"].as_str()).collect();
        let text = serde_json::to_string(&out).unwrap();
        let mut secrets = Vec::new();
        for person in people {
            for name in person["name"].as_array().into_iter().flatten() {
                secrets.extend(name["family"].as_str().map(str::to_owned));
                secrets.extend(name["given"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
            }
            for t in person["telecom"].as_array().into_iter().flatten() {
                secrets.extend(t["value"].as_str().map(str::to_owned));
            }
            for a in person["address"].as_array().into_iter().flatten() {
                secrets.extend(a["line"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
            }
            for i in person["identifier"].as_array().into_iter().flatten() {
                secrets.extend(i["value"].as_str().map(str::to_owned));
            }
        }
        for s in secrets.iter().filter(|s| s.len() > 3 && !ids.contains(&s.as_str())) {
            assert!(!text.contains(&format!("\"{s}\"")), "{f}: `{s}` leaked");
        }
        assert_subset(&input, &out, &f);
    }
}

fn collect_people<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if matches!(m.get("resourceType").and_then(Value::as_str), Some("Patient" | "Person" | "RelatedPerson" | "Practitioner")) {
                out.push(v);
            }
            m.values().for_each(|x| collect_people(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_people(x, out)),
        _ => {}
    }
}

// --- the Microsoft anonymizer's redaction pairs as an oracle -------------------------------

/// Their `redact` rules of `common-config.json`, in our language: Identifier, HumanName (but
/// `use`), Address (but `state`, `country`; ZIP partially), ContactPoint, Annotation,
/// Attachment, Narrative, Patient.generalPractitioner, Patient.link.other.
fn common_config() -> Arc<Profile> {
    profile(json!({
        "mode": "deny",
        "otherResources": "allow",
        "resources": {
            "*": {
                "deny": [
                    "text", "**.note", "**.photo", "**.presentedForm",
                    "**.identifier.use", "**.identifier.type", "**.identifier.system", "**.identifier.value", "**.identifier.assigner",
                    "**.name.family", "**.name.given", "**.name.prefix", "**.name.suffix", "**.name.text",
                    "**.telecom.system", "**.telecom.value", "**.telecom.use", "**.telecom.rank",
                    "**.address.use", "**.address.type", "**.address.text", "**.address.line", "**.address.city", "**.address.district"
                ],
                "transform": [{"path": "**.address.postalCode", "transform": "generalize", "to": "zip3"}]
            },
            "Patient": {"deny": ["generalPractitioner", "link.other"]}
        }
    }))
}

/// `redact-all-config.json` (`Resource: redact`) in our language: an allowlist naming nothing
/// (contained resources are kept, minimized by the same rules).
fn redact_all() -> Arc<Profile> {
    profile(json!({"mode": "allow", "resources": {"*": {"allow": ["contained"]}}}))
}

/// Their dateShift and cryptoHash outputs are specific to their key: blank them out, and drop
/// the resource `id` they hash and we keep.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().filter(|(k, _)| *k != "id").map(|(k, x)| (k.clone(), normalize(x))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::String(s)
            if s.len() >= 4 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit) && (s.len() == 4 || s.as_bytes()[4] == b'-') =>
        {
            json!("<date>")
        }
        other => other.clone(),
    }
}

#[test]
fn deid_pairs_redact_all() {
    let p = redact_all();
    let (out, _) = release(&p, &fixture("deid-pairs/patient-basic.json"));
    assert_eq!(normalize(&out), normalize(&fixture("deid-pairs/patient-redact-all-target.json")));
    for (input, target) in [("bundle-basic", "bundle-redact-all-target"), ("contained-in-bundle", "contained-in-bundle-redact-all-target")]
    {
        let (out, _) = release(&p, &fixture(&format!("deid-pairs/{input}.json")));
        let target = fixture(&format!("deid-pairs/{target}.json"));
        let ours: Vec<Value> = out["entry"].as_array().unwrap().iter().map(|e| normalize(&e["resource"])).collect();
        let theirs: Vec<Value> = target["entry"].as_array().unwrap().iter().map(|e| normalize(&e["resource"])).collect();
        assert_eq!(ours, theirs, "{input}");
        assert!(labelled(&out));
    }
}

#[test]
fn deid_pairs_common_config_redactions() {
    let p = common_config();
    // patient-basic: every redacted element matches theirs; ZIPs are generalized to 3 digits
    // where they pad with zeros ("12300").
    let (out, _) = release(&p, &fixture("deid-pairs/patient-basic.json"));
    let target = fixture("deid-pairs/patient-basic-target.json");
    for field in ["name", "telecom", "identifier", "active", "gender", "deceasedBoolean", "managingOrganization"] {
        assert_eq!(normalize(&out[field]), normalize(&target[field]), "patient-basic {field}");
    }
    assert!(out.get("text").is_none() && target.get("text").is_none());
    assert!(labelled(&out) && labelled(&target));
    let zip_matches = |ours: &Value, theirs: &Value| {
        let (o, t) = (ours.as_str().unwrap(), theirs.as_str().unwrap());
        assert_eq!(o.len(), 3);
        assert!(t.starts_with(o) && t[3..].bytes().all(|b| b == b'0'), "{o} vs {t}");
    };
    let without_zip = |v: &Value| {
        let mut v = normalize(v);
        v.as_object_mut().unwrap().remove("postalCode");
        v
    };
    // Their second address is kept by a `where(city='KeepTest')` rule we do not model.
    assert_eq!(without_zip(&out["address"][0]), without_zip(&target["address"][0]));
    zip_matches(&out["address"][0]["postalCode"], &target["address"][0]["postalCode"]);
    let (oc, tc) = (&out["contact"][0], &target["contact"][0]);
    assert_eq!(oc.as_object().unwrap().keys().collect::<Vec<_>>(), tc.as_object().unwrap().keys().collect::<Vec<_>>());
    assert_eq!(without_zip(&oc["address"]), without_zip(&tc["address"]));
    zip_matches(&oc["address"]["postalCode"], &tc["address"]["postalCode"]);
    assert_eq!(normalize(&oc["relationship"]), normalize(&tc["relationship"]));

    // patient-special-content: non-ASCII names and a BOM; all telecom entries go.
    let (out, _) = release(&p, &fixture("deid-pairs/patient-special-content.json"));
    let target = fixture("deid-pairs/patient-special-content-target.json");
    for field in ["name", "identifier", "telecom", "active", "gender"] {
        assert_eq!(normalize(&out[field]), normalize(&target[field]), "special-content {field}");
    }
    assert_eq!(out["address"].as_array().unwrap().len(), target["address"].as_array().unwrap().len());

    // Bundles: the entries' redacted elements match (their ids and references are hashed).
    let (out, _) = release(&p, &fixture("deid-pairs/bundle-basic.json"));
    let target = fixture("deid-pairs/bundle-basic-target.json");
    for i in 0..3 {
        let (o, t) = (&out["entry"][i]["resource"], &target["entry"][i]["resource"]);
        for field in ["name", "identifier", "text", "status", "code", "resourceType"] {
            assert_eq!(normalize(&o[field]), normalize(&t[field]), "bundle-basic entry {i} {field}");
        }
        assert_eq!(labelled(o), labelled(t), "bundle-basic entry {i} label");
    }
    let (out, _) = release(&p, &fixture("deid-pairs/contained-in-bundle.json"));
    let target = fixture("deid-pairs/contained-in-bundle-target.json");
    assert_eq!(out["entry"][0]["resource"], target["entry"][0]["resource"], "contained Practitioner's name redacted, container labelled");
}

// --- properties and the CLI ----------------------------------------------------------------

#[test]
fn output_is_valid_json_within_the_input_for_every_fixture_and_profile() {
    let profiles = [
        safe_harbor(),
        redact_all(),
        common_config(),
        profile(json!({"mode": "deny", "otherResources": "allow", "dates": "year", "referenceDisplay": "remove", "resources": {}})),
    ];
    let files: Vec<String> = ["synthea", "bundles", "resources", "deid-pairs"]
        .iter()
        .flat_map(|d| fixtures_in(d))
        .filter(|f| !f.ends_with("config.json"))
        .collect();
    for f in &files {
        let bytes = fixture_bytes(f);
        let input = fixture(f);
        for p in &profiles {
            let applied = minimize::apply(p, &bytes, &ctx(), usize::MAX).unwrap_or_else(|e| panic!("{f}: {}", e.code()));
            let out: Value = serde_json::from_slice(applied.body.as_deref().unwrap()).unwrap();
            assert_subset(&input, &out, f);
            assert_eq!(applied.withheld.len(), applied.withheld.iter().collect::<BTreeSet<_>>().len());
            assert!(applied.count >= applied.withheld.len());
        }
    }
}

#[test]
fn cli_minimize() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_phi-guard"))
            .args(args)
            .env("TEST_HMAC_KEY", std::str::from_utf8(KEY).unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let body = fixture_bytes("synthea/Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json");
    let research = ["minimize", "policies/clinician-api.json", "--route", "research-fhir", "--purpose", "HRESCH", "--now", "1800000000"];
    // The safe-harbor preset pseudonymizes record keys: no key, no output.
    let (code, stdout, stderr) = run(&research, &body);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty() && stderr.contains("--hmac-key-env"), "{stderr}");
    let (code, stdout, stderr) = run(&[&research[..], &["--hmac-key-env", "TEST_HMAC_KEY"]].concat(), &body);
    assert_eq!(code, Some(0), "{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["resourceType"], "Bundle");
    assert!(!stdout.contains("999-48-8934"));
    assert!(stderr.contains("profile:  research-deidentified"));
    assert!(stderr.contains("  Bundle.entry.resource(Patient).identifier\n"));
    let (code, stdout, stderr) = run(&["minimize", "policies/clinician-api.json", "--route", "research-fhir"], &body);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no_minimization_profile"));
    assert!(stdout.contains("OperationOutcome") && !stdout.contains("999-48-8934"));
    let (code, stdout, _) = run(
        &["minimize", "policies/clinician-api.json", "--route", "research-fhir", "--purpose", "HRESCH", "--hmac-key-env", "TEST_HMAC_KEY"],
        b"{\"resourceType\":",
    );
    assert_eq!(code, Some(2));
    assert!(stdout.contains("response_truncated"));
    let (code, _, stderr) = run(&["minimize", "policies/clinician-api.json", "--route", "health"], b"{}");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("does not minimize"));
}

/// Throughput on the Synthea bundles (`cargo test --release --test minimize -- --ignored
/// --nocapture`): best of 20 runs of parse + minimize + serialize.
#[test]
#[ignore = "timing; run in release"]
fn minimization_throughput() {
    let p = safe_harbor();
    for f in fixtures_in("synthea") {
        let bytes = fixture_bytes(&f);
        let mut best = std::time::Duration::MAX;
        for _ in 0..20 {
            let started = Instant::now();
            let applied = minimize::apply(&p, &bytes, &ctx(), usize::MAX).unwrap();
            best = best.min(started.elapsed());
            assert!(applied.body.is_some());
        }
        let mb_s = bytes.len() as f64 / best.as_secs_f64() / 1e6;
        eprintln!("{f}: {} KB in {best:?} ({mb_s:.0} MB/s)", bytes.len() / 1024);
    }
}
