//! The `safe-harbor` preset against each of the 18 HIPAA Safe Harbor identifier categories
//! (45 CFR 164.514(b)(2)(i)(A)-(R)), one test per category, each on FHIR R4 resources that carry
//! that category where FHIR puts it. Every test asserts that the identifying values are gone from
//! the released bytes (or generalized as the rule allows), that what Safe Harbor lets stay is
//! still there, and that the resource carries the REDACTED label.
//!
//! `docs/COMPLIANCE.md` names these tests row by row; `tests/compliance_doc.rs` keeps the two in
//! step. What the preset does *not* cover is listed there, not asserted here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use phi_guard::minimize::{self, compile_minimize, Applied, ApplyCtx, Profile};
use phi_guard::time::UnixSeconds;
use serde_json::{json, Value};

#[path = "subset/mod.rs"]
mod subset;

/// 2027-01-15: a person born in 1937 or earlier is 90 or older.
const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);

fn safe_harbor() -> Arc<Profile> {
    let doc = serde_json::from_value(json!({"profiles": [{"name": "safe-harbor", "preset": "safe-harbor"}]})).unwrap();
    compile_minimize(&doc, &phi_guard::schema::ROOT.field("test"), true).unwrap().profiles[0].clone()
}

/// Release `input` through the preset: the JSON the client would receive, its exact text, and
/// the report. Whatever the category, the output stays within the input.
fn release(input: &Value) -> (Value, String, Applied) {
    let bytes = serde_json::to_vec(input).unwrap();
    let applied =
        minimize::apply(&safe_harbor(), &bytes, &ApplyCtx { hmac_key: Some(KEY), now: NOW, pseudonyms: None }, usize::MAX).unwrap();
    let body = applied.body.clone().expect("the preset rewrites the body");
    let text = String::from_utf8(body).unwrap();
    let out = serde_json::from_str(&text).unwrap();
    subset::assert_subset(input, &out, "safe-harbor");
    (out, text, applied)
}

/// A reference as the preset releases it: the id replaced by its keyed pseudonym.
fn reference(r: &str) -> String {
    let mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(KEY).unwrap();
    minimize::deid::keyed::reference(&mac, r).unwrap()
}

const KEY: &[u8] = b"test-only hmac key, 32 bytes...!";

fn assert_gone(text: &str, values: &[&str]) {
    for v in values {
        assert!(!text.contains(v), "`{v}` was released: {text}");
    }
}

fn labelled(v: &Value) -> bool {
    v["meta"]["security"].as_array().is_some_and(|a| {
        a.iter().any(|l| l["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue" && l["code"] == "REDACTED")
    })
}

fn withheld(applied: &Applied, path: &str) -> bool {
    applied.withheld.iter().any(|p| p == path)
}

fn bundle(resources: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "entry": resources.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()})
}

fn entry<'a>(out: &'a Value, ty: &str) -> &'a Value {
    out["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).find(|r| r["resourceType"] == ty).unwrap()
}

// (A) Names.
#[test]
fn names_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1",
               "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"], "suffix": ["Jr"]}, {"use": "nickname", "text": "Jim"}],
               "contact": [{"relationship": [{"text": "mother"}], "name": {"family": "Chalmers", "given": ["Bénédicte"]}}],
               "generalPractitioner": [{"reference": "Practitioner/pr1", "display": "Dr Adam Careful"}]}),
        json!({"resourceType": "RelatedPerson", "id": "r1", "patient": {"reference": "Patient/p1", "display": "Peter Chalmers"},
               "name": [{"family": "Windsor", "given": ["Marla"]}]}),
        json!({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Careful", "given": ["Adam"], "prefix": ["Dr"]}]}),
        json!({"resourceType": "Person", "id": "pe1", "name": [{"text": "Ines Okonkwo"}]}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
               "subject": {"reference": "Patient/p1", "display": "Peter James Chalmers"}}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["Chalmers", "Peter", "James", "Jim", "Bénédicte", "Careful", "Adam", "Windsor", "Marla", "Ines", "Okonkwo"]);
    // References stay (surrogate keys); their displays go.
    assert_eq!(entry(&out, "Encounter")["subject"], json!({"reference": reference("Patient/p1")}));
    assert_eq!(entry(&out, "RelatedPerson")["patient"], json!({"reference": reference("Patient/p1")}));
    for ty in ["Patient", "RelatedPerson", "Practitioner", "Person", "Encounter"] {
        assert!(labelled(entry(&out, ty)), "{ty} not labelled");
    }
    for path in [
        "Bundle.entry.resource(Patient).name",
        "Bundle.entry.resource(Patient).contact",
        "Bundle.entry.resource(Practitioner).name",
        "Bundle.entry.resource(Encounter).subject.display",
    ] {
        assert!(withheld(&applied, path), "{path} not recorded: {:?}", applied.withheld);
    }
}

// (B) Geographic subdivisions smaller than a state, with the ZIP code rule: the first three
// digits stay unless their area holds 20,000 people or fewer (then `000`).
#[test]
fn geographic_subdivisions_below_state_are_removed_and_zip_codes_cut_to_three_digits() {
    let geolocation = "http://hl7.org/fhir/StructureDefinition/geolocation";
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1",
               "address": [
                   {"use": "home", "text": "534 Erewhon St, Pleasantville, VT 05401", "line": ["534 Erewhon St", "Apt 2"], "city": "Pleasantville",
                    "district": "Rainbow", "state": "VT", "postalCode": "05401-1234", "country": "US",
                    "extension": [{"url": geolocation, "extension": [{"url": "latitude", "valueDecimal": 44.4759}, {"url": "longitude", "valueDecimal": -73.2121}]}]},
                   {"use": "old", "line": ["1 Mill Rd"], "city": "Hanover", "state": "NH", "postalCode": "03601"}
               ],
               "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                              "valueAddress": {"city": "Burlington", "state": "VT", "postalCode": "05402"}}]}),
        json!({"resourceType": "Location", "id": "l1", "alias": ["Erewhon Street clinic"],
               "address": {"line": ["99 Clinic Way"], "city": "Pleasantville", "state": "VT", "postalCode": "05401"},
               "position": {"latitude": 44.4759, "longitude": -73.2121}}),
        json!({"resourceType": "Claim", "id": "c1", "status": "active", "use": "claim",
               "accident": {"date": "2020-01-02", "locationAddress": {"line": ["I-89 exit 14"], "city": "South Burlington", "state": "VT"}}}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "home address"},
               "valueAddress": {"line": ["7 Elm Ct"], "city": "Winooski", "district": "Chittenden", "postalCode": "05404", "state": "VT"}}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(
        &text,
        &[
            "Erewhon",
            "Apt 2",
            "Pleasantville",
            "Rainbow",
            "05401",
            "1234",
            "Mill Rd",
            "Hanover",
            "03601",
            "Burlington",
            "05402",
            "44.4759",
            "73.2121",
            "Clinic Way",
            "I-89",
            "7 Elm Ct",
            "Winooski",
            "Chittenden",
            "05404",
            geolocation,
            "patient-birthPlace",
        ],
    );
    let patient = entry(&out, "Patient");
    // States and countries stay; ZIP codes keep three digits, `000` for a restricted prefix.
    assert_eq!(
        patient["address"],
        json!([
            {"use": "home", "state": "VT", "postalCode": "054", "country": "US"},
            {"use": "old", "state": "NH", "postalCode": "000"}
        ])
    );
    assert_eq!(entry(&out, "Location")["address"], json!({"state": "VT", "postalCode": "054"}));
    assert!(entry(&out, "Location").get("position").is_none());
    assert_eq!(entry(&out, "Observation")["valueAddress"], json!({"postalCode": "054", "state": "VT"}));
    assert!(labelled(patient) && labelled(entry(&out, "Location")));
    assert!(withheld(&applied, "Bundle.entry.resource(Patient).address.extension(http://hl7.org/fhir/StructureDefinition/geolocation)"));
    assert!(withheld(&applied, "Bundle.entry.resource(Patient).address.postalCode"));
}

// (C) All elements of dates (except year) directly related to an individual.
#[test]
fn dates_are_cut_to_the_year() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2024-05-06T07:08:09Z"},
               "birthDate": "1974-12-25",
               "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
               "deceasedDateTime": "2021-03-14T09:00:00Z"}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
               "period": {"start": "2019-02-07T13:28:17Z", "end": "2019-02-11"}}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
               "effectiveDateTime": "2019-02-08T08:00:00+01:00", "issued": "2019-02-08T09:30:00.000Z"}),
        json!({"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": {"reference": "Patient/p1"},
               "performedPeriod": {"start": "2019-02-09", "end": "2019-02-09"}}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["12-25", "14:35", "03-14", "02-07", "02-08", "02-09", "02-11", "05-06", "patient-birthTime"]);
    let patient = entry(&out, "Patient");
    assert_eq!((patient["birthDate"].as_str(), patient["deceasedDateTime"].as_str()), (Some("1974"), Some("2021")));
    assert!(patient.get("_birthDate").is_none(), "the birth time extension goes with the birth date");
    assert!(patient["meta"].get("lastUpdated").is_none(), "instants cannot hold a bare year: removed");
    assert_eq!(entry(&out, "Encounter")["period"], json!({"start": "2019", "end": "2019"}));
    let obs = entry(&out, "Observation");
    assert_eq!(obs["effectiveDateTime"], "2019");
    assert!(obs.get("issued").is_none());
    assert_eq!(entry(&out, "Procedure")["performedPeriod"], json!({"start": "2019", "end": "2019"}));
    assert!(labelled(patient) && labelled(obs));
    assert!(withheld(&applied, "Bundle.entry.resource(Patient).birthDate"));
}

// (C) ... and all ages over 89 and all elements of dates (including year) indicative of such
// age, aggregated into a single category of age 90 or older.
#[test]
fn ages_over_89_are_aggregated_into_90_or_older() {
    let input = bundle(vec![
        // Born 1936: 91 in 2027, so even the year goes. Born 1938 (89): the year stays.
        json!({"resourceType": "Patient", "id": "old", "birthDate": "1936-04-01", "gender": "female"}),
        json!({"resourceType": "Patient", "id": "young", "birthDate": "1938-04-01"}),
        json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/old"},
               "onsetAge": {"value": 93, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"},
               "abatementAge": {"value": 45, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}}),
        json!({"resourceType": "FamilyMemberHistory", "id": "f1", "status": "completed", "patient": {"reference": "Patient/old"},
               "relationship": {"text": "mother"}, "ageAge": {"value": 97, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "age"},
               "valueAge": {"value": 1140, "unit": "months", "system": "http://unitsofmeasure.org", "code": "mo"}}),
    ]);
    let (out, text, applied) = release(&input);
    let patients: Vec<&Value> =
        out["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).filter(|r| r["resourceType"] == "Patient").collect();
    assert!(patients[0].get("birthDate").is_none(), "a birth year implying 90+ is removed");
    assert_eq!(patients[0]["gender"], "female");
    assert_eq!(patients[1]["birthDate"], "1938");
    assert_gone(&text, &["1936", "\"value\":93", "\"value\":97", "\"value\":1140", "months"]);
    let ninety_plus = |q: &Value| q["value"].as_f64() == Some(90.0) && q["comparator"] == ">=";
    let condition = entry(&out, "Condition");
    assert!(ninety_plus(&condition["onsetAge"]), "{}", condition["onsetAge"]);
    assert_eq!(condition["abatementAge"]["value"], 45, "ages up to 89 stay");
    assert!(ninety_plus(&entry(&out, "FamilyMemberHistory")["ageAge"]));
    assert!(ninety_plus(&entry(&out, "Observation")["valueAge"]), "95 years in months is over 89 too");
    assert!(labelled(patients[0]) && labelled(condition));
    assert!(withheld(&applied, "Bundle.entry.resource(Condition).onsetAge"));
}

// (D) Telephone numbers.
#[test]
fn telephone_numbers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1", "gender": "male",
               "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work"}, {"system": "sms", "value": "+1-802-555-0199"}],
               "contact": [{"telecom": [{"system": "phone", "value": "+1-802-555-0142"}]}]}),
        json!({"resourceType": "PractitionerRole", "id": "pr1", "telecom": [{"system": "phone", "value": "802-555-0100"}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["5555 6473", "555-0199", "555-0142", "555-0100"]);
    assert_eq!(entry(&out, "Patient")["gender"], "male");
    assert!(labelled(entry(&out, "Patient")) && labelled(entry(&out, "PractitionerRole")));
    assert!(withheld(&applied, "Bundle.entry.resource(Patient).telecom"));
}

// (E) Fax numbers.
#[test]
fn fax_numbers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1", "telecom": [{"system": "fax", "value": "+1-802-555-0177"}]}),
        json!({"resourceType": "Practitioner", "id": "pr1", "telecom": [{"system": "fax", "value": "(02) 9555 0123"}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["555-0177", "9555 0123", "fax"]);
    assert!(labelled(entry(&out, "Patient")) && labelled(entry(&out, "Practitioner")));
    assert!(withheld(&applied, "Bundle.entry.resource(Practitioner).telecom"));
}

// (F) Electronic mail addresses.
#[test]
fn email_addresses_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1", "telecom": [{"system": "email", "value": "peter.chalmers@example.org"}]}),
        json!({"resourceType": "RelatedPerson", "id": "r1", "patient": {"reference": "Patient/p1"},
               "telecom": [{"system": "email", "value": "mom@example.net", "use": "home"}]}),
        json!({"resourceType": "Communication", "id": "c1", "status": "completed",
               "payload": [{"contentString": "reply to peter.chalmers@example.org"}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["@example.org", "@example.net"]);
    assert!(labelled(entry(&out, "Patient")) && labelled(entry(&out, "Communication")));
    assert!(withheld(&applied, "Bundle.entry.resource(Patient).telecom"));
    assert!(withheld(&applied, "Bundle.entry.resource(Communication).payload"));
}

// (G) Social Security numbers.
#[test]
fn social_security_numbers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1",
               "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]},
                               "system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-17-8182"}]}),
        // A logical reference by identifier carries the number too.
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
               "subject": {"identifier": {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-64-9098"}}}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["999-17-8182", "8182", "999-64-9098", "us-ssn"]);
    assert!(labelled(entry(&out, "Patient")) && labelled(entry(&out, "Observation")));
    assert!(withheld(&applied, "Bundle.entry.resource(Patient).identifier"));
    assert!(withheld(&applied, "Bundle.entry.resource(Observation).subject.identifier"));
}

// (H) Medical record numbers.
#[test]
fn medical_record_numbers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1",
               "identifier": [{"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                               "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN00012345",
                               "assigner": {"display": "Acme Healthcare", "identifier": {"value": "ACME-HOSP-7"}}}]}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
               "identifier": [{"system": "urn:acme:visit", "value": "VISIT-2019-0042"}],
               "subject": {"reference": "Patient/p1", "identifier": {"value": "MRN00012345"}}}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["MRN00012345", "12345", "ACME-HOSP-7", "VISIT-2019-0042"]);
    assert_eq!(entry(&out, "Encounter")["subject"], json!({"reference": reference("Patient/p1")}));
    assert!(labelled(entry(&out, "Patient")) && labelled(entry(&out, "Encounter")));
    assert!(withheld(&applied, "Bundle.entry.resource(Patient).identifier"));
}

// (H) and (R): Identifier-typed elements that are not named `identifier`, and the Bundle's own.
#[test]
fn identifiers_under_other_names_are_removed() {
    let mut input = bundle(vec![
        json!({"resourceType": "Specimen", "id": "s1", "accessionIdentifier": {"system": "http://lab.acme.org/specimens", "value": "ACC-2011-0042"},
               "subject": {"reference": "Patient/p1"}, "type": {"text": "Venous blood"}}),
        json!({"resourceType": "DocumentReference", "id": "d1", "status": "current",
               "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.3.6.1.4.1.21367.2005.3.7"}, "subject": {"reference": "Patient/p1"}}),
        json!({"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "intent": "order", "subject": {"reference": "Patient/p1"},
               "requisition": {"system": "http://acme.org/requisitions", "value": "REQ-88-1234"},
               "code": {"text": "Lipid panel"}}),
        json!({"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order", "subject": {"reference": "Patient/p1"},
               "groupIdentifier": {"value": "RX-GROUP-7781"}, "medicationCodeableConcept": {"text": "Amoxicillin"}}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
               "hospitalization": {"preAdmissionIdentifier": {"value": "PREADM-2020-9"}, "dischargeDisposition": {"text": "Home"}}}),
        json!({"resourceType": "ImagingStudy", "id": "is1", "status": "available", "subject": {"reference": "Patient/p1"},
               "series": [{"uid": "2.16.124.113543.6003.2588828330.45298.17418.2723805630", "modality": {"code": "CT"},
                           "instance": [{"uid": "2.16.124.113543.6003.189642796.63084.16748.2599092903", "sopClass": {"code": "1.2.840.10008.5.1.4.1.1.2"}}]}]}),
    ]);
    input["type"] = json!("document");
    input["identifier"] = json!({"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"});
    let (out, text, applied) = release(&input);
    assert_gone(
        &text,
        &[
            "ACC-2011-0042",
            "1.3.6.1.4.1.21367.2005.3.7",
            "REQ-88-1234",
            "RX-GROUP-7781",
            "PREADM-2020-9",
            "2.16.124.113543.6003.2588828330",
            "2.16.124.113543.6003.189642796",
            "0c3151bd-1cbf",
        ],
    );
    // What is not identifying stays: types, codes, the modality and SOP class.
    assert_eq!(entry(&out, "Specimen")["type"]["text"], "Venous blood");
    assert_eq!(entry(&out, "ImagingStudy")["series"][0]["modality"]["code"], "CT");
    assert_eq!(entry(&out, "ImagingStudy")["series"][0]["instance"][0]["sopClass"]["code"], "1.2.840.10008.5.1.4.1.1.2");
    assert_eq!(entry(&out, "Encounter")["hospitalization"]["dischargeDisposition"]["text"], "Home");
    for ty in ["Specimen", "DocumentReference", "ServiceRequest", "MedicationRequest", "Encounter", "ImagingStudy"] {
        assert!(labelled(entry(&out, ty)), "{ty} not labelled");
    }
    for path in [
        "Bundle.identifier",
        "Bundle.entry.resource(Specimen).accessionIdentifier",
        "Bundle.entry.resource(ImagingStudy).series.instance.uid",
    ] {
        assert!(withheld(&applied, path), "{path}: {:?}", applied.withheld);
    }
}

// (I) Health plan beneficiary numbers.
#[test]
fn health_plan_beneficiary_numbers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Coverage", "id": "cov1", "status": "active",
               "identifier": [{"system": "http://benefitsinc.com/certificate", "value": "12345-MEMBER"}],
               "subscriberId": "AB9876543", "dependent": "02", "beneficiary": {"reference": "Patient/p1"},
               "payor": [{"reference": "Organization/o1"}],
               "class": [{"type": {"coding": [{"code": "group"}]}, "value": "CB135", "name": "Corporate Baker's Inc. Local #35"},
                         {"type": {"coding": [{"code": "plan"}]}, "value": "B37FC", "name": "Full Coverage: Medical, Dental, Pharmacy"}]}),
        json!({"resourceType": "Patient", "id": "p1",
               "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}, "value": "MBR-445566"}]}),
        json!({"resourceType": "Claim", "id": "cl1", "status": "active", "use": "claim",
               "insurance": [{"sequence": 1, "focal": true, "coverage": {"reference": "Coverage/cov1"}, "preAuthRef": ["PA-2020-001"]}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["12345-MEMBER", "AB9876543", "CB135", "B37FC", "Local #35", "MBR-445566", "PA-2020-001"]);
    let coverage = entry(&out, "Coverage");
    assert!(coverage.get("dependent").is_none() && coverage.get("class").is_none());
    assert_eq!(coverage["beneficiary"], json!({"reference": reference("Patient/p1")}));
    assert!(labelled(coverage) && labelled(entry(&out, "Claim")));
    for path in [
        "Bundle.entry.resource(Coverage).subscriberId",
        "Bundle.entry.resource(Coverage).class",
        "Bundle.entry.resource(Claim).insurance.preAuthRef",
    ] {
        assert!(withheld(&applied, path), "{path}: {:?}", applied.withheld);
    }
}

// (J) Account numbers.
#[test]
fn account_numbers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Account", "id": "a1", "status": "active",
               "identifier": [{"system": "urn:oid:0.1.2.3.4.5.6.7", "value": "654321"}],
               "name": "HACC Funded Billing for Peter James Chalmers", "subject": [{"reference": "Patient/p1"}]}),
        json!({"resourceType": "Patient", "id": "p1",
               "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "AN"}]}, "value": "ACCT-778899"}]}),
        json!({"resourceType": "Invoice", "id": "i1", "status": "issued",
               "identifier": [{"value": "INV-2020-0099"}], "account": {"reference": "Account/a1", "display": "Account 654321"}}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["654321", "HACC Funded", "Chalmers", "ACCT-778899", "INV-2020-0099"]);
    assert_eq!(entry(&out, "Invoice")["account"], json!({"reference": reference("Account/a1")}));
    assert!(labelled(entry(&out, "Account")) && labelled(entry(&out, "Invoice")));
    assert!(withheld(&applied, "Bundle.entry.resource(Account).name"));
    assert!(withheld(&applied, "Bundle.entry.resource(Account).identifier"));
}

// (K) Certificate/license numbers.
#[test]
fn certificate_and_license_numbers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1",
               "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "DL"}]}, "system": "urn:oid:2.16.840.1.113883.4.3.25", "value": "S99985931"},
                              {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PPN"}]}, "value": "X51417066X"}]}),
        json!({"resourceType": "Practitioner", "id": "pr1", "gender": "female",
               "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
               "qualification": [{"identifier": [{"system": "http://example.org/UniversityIdentifier", "value": "LIC-MD-0042"}],
                                  "code": {"text": "Doctor of Medicine"}}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["S99985931", "X51417066X", "1234567893", "LIC-MD-0042"]);
    let practitioner = entry(&out, "Practitioner");
    assert_eq!(practitioner["qualification"][0]["code"]["text"], "Doctor of Medicine", "the kind of licence is not an identifier");
    assert!(labelled(entry(&out, "Patient")) && labelled(practitioner));
    assert!(withheld(&applied, "Bundle.entry.resource(Practitioner).qualification.identifier"));
}

// (L) Vehicle identifiers and serial numbers, including license plate numbers. FHIR R4 has no
// vehicle element: they travel as Identifiers (of any resource, or inside references).
#[test]
fn vehicle_identifiers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Claim", "id": "cl1", "status": "active", "use": "claim",
               "accident": {"date": "2020-05-01", "type": {"text": "motor vehicle"}},
               "supportingInfo": [{"sequence": 1, "category": {"text": "vehicle"},
                                   "valueReference": {"identifier": {"system": "urn:iso:std:iso:3779", "value": "1HGCM82633A004352"}}}]}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "ambulance"},
               "identifier": [{"system": "urn:example:us-vt-license-plate", "value": "VT-ABC1234"}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["1HGCM82633A004352", "VT-ABC1234"]);
    assert_eq!(entry(&out, "Claim")["accident"]["type"]["text"], "motor vehicle");
    assert!(labelled(entry(&out, "Claim")) && labelled(entry(&out, "Observation")));
    assert!(withheld(&applied, "Bundle.entry.resource(Claim).supportingInfo.valueReference.identifier"));
}

// (M) Device identifiers and serial numbers.
#[test]
fn device_identifiers_and_serial_numbers_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Device", "id": "d1", "status": "active", "type": {"text": "pacemaker"},
               "identifier": [{"system": "http://acme.com/devices", "value": "DEV-A-1001"}],
               "udiCarrier": [{"deviceIdentifier": "09504000059118", "carrierHRF": "(01)09504000059118(17)141120(10)7654321D(21)10987654d321"}],
               "distinctIdentifier": "DI-XYZ-55", "serialNumber": "SN-10987654d321", "lotNumber": "7654321D",
               "url": "http://acme.com/devices/1001", "patient": {"reference": "Patient/p1"}}),
        json!({"resourceType": "Immunization", "id": "im1", "status": "completed", "vaccineCode": {"text": "influenza"},
               "patient": {"reference": "Patient/p1"}, "occurrenceString": "last autumn", "lotNumber": "AAJN11K"}),
        json!({"resourceType": "Medication", "id": "m1", "code": {"text": "amoxicillin"}, "batch": {"lotNumber": "9494788", "expirationDate": "2017-05-22"}}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(
        &text,
        &["DEV-A-1001", "09504000059118", "7654321D", "DI-XYZ-55", "SN-10987654d321", "acme.com/devices/1001", "AAJN11K", "9494788"],
    );
    let device = entry(&out, "Device");
    assert_eq!(device["type"]["text"], "pacemaker", "the kind of device is not an identifier");
    assert!(labelled(device) && labelled(entry(&out, "Immunization")) && labelled(entry(&out, "Medication")));
    for path in [
        "Bundle.entry.resource(Device).udiCarrier",
        "Bundle.entry.resource(Device).serialNumber",
        "Bundle.entry.resource(Immunization).lotNumber",
    ] {
        assert!(withheld(&applied, path), "{path}: {:?}", applied.withheld);
    }
}

// (N) Web Universal Resource Locators (URLs).
#[test]
fn urls_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1", "telecom": [{"system": "url", "value": "https://peter-chalmers.example.org/blog"}],
               "photo": [{"contentType": "image/jpeg", "url": "https://photos.example.org/peter.jpg"}]}),
        json!({"resourceType": "Endpoint", "id": "ep1", "status": "active", "connectionType": {"code": "hl7-fhir-rest"},
               "payloadType": [{"text": "any"}], "address": "https://fhir.peter-chalmers.example.org/r4"}),
        json!({"resourceType": "DocumentReference", "id": "dr1", "status": "current",
               "content": [{"attachment": {"contentType": "application/pdf", "url": "https://docs.example.org/chalmers-discharge.pdf"}}]}),
        json!({"resourceType": "Device", "id": "d1", "url": "https://devices.example.org/peter/pump-7"}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["peter-chalmers.example.org", "photos.example.org", "docs.example.org", "devices.example.org"]);
    assert_eq!(entry(&out, "Endpoint")["connectionType"]["code"], "hl7-fhir-rest");
    assert!(labelled(entry(&out, "Patient")) && labelled(entry(&out, "Endpoint")) && labelled(entry(&out, "DocumentReference")));
    assert!(withheld(&applied, "Bundle.entry.resource(Endpoint).address"));
}

// (O) Internet Protocol (IP) addresses.
#[test]
fn ip_addresses_are_removed() {
    let input = json!({"resourceType": "AuditEvent", "id": "ae1", "type": {"code": "rest"}, "recorded": "2020-01-02T03:04:05Z",
        "agent": [{"requestor": true, "who": {"reference": "Patient/p1"}, "network": {"address": "192.168.51.23", "type": "2"}},
                  {"requestor": false, "network": {"address": "2001:db8::7", "type": "2"}}],
        "source": {"observer": {"display": "gateway"}}});
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["192.168.51.23", "2001:db8::7"]);
    assert_eq!(out["agent"][0]["requestor"], true);
    assert!(labelled(&out));
    assert!(withheld(&applied, "AuditEvent.agent.network"));
}

// (P) Biometric identifiers, including finger and voice prints: in FHIR R4 they are binary
// content (attachments, Media, Binary), never coded values.
#[test]
fn biometric_identifiers_are_removed() {
    let print = "Rk1SACAyMAAAAAFiAAABQAHgAMUAxQEAAAAoQ2Fw";
    let input = bundle(vec![
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "fingerprint"},
               "valueAttachment": {"contentType": "application/octet-stream", "data": print}}),
        json!({"resourceType": "Media", "id": "m1", "status": "completed", "modality": {"text": "voice print"},
               "content": {"contentType": "audio/wav", "data": "UklGRiQAAABXQVZFZm10IBAAAAAB"}}),
        json!({"resourceType": "Binary", "id": "b1", "contentType": "application/octet-stream", "data": "SVJJUy1URU1QTEFURS0wMDE="}),
        json!({"resourceType": "DiagnosticReport", "id": "dr1", "status": "final", "code": {"text": "retina scan"},
               "presentedForm": [{"contentType": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg=="}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &[print, "UklGRiQAAABXQVZFZm10IBAAAAAB", "SVJJUy1URU1QTEFURS0wMDE=", "iVBORw0KGgoAAAANSUhEUg=="]);
    assert_eq!(entry(&out, "Observation")["code"]["text"], "fingerprint");
    assert!(labelled(entry(&out, "Observation")) && labelled(entry(&out, "Binary")));
    for path in
        ["Bundle.entry.resource(Observation).valueAttachment", "Bundle.entry.resource(Media).content", "Bundle.entry.resource(Binary).data"]
    {
        assert!(withheld(&applied, path), "{path}: {:?}", applied.withheld);
    }
}

// (Q) Full-face photographs and any comparable images.
#[test]
fn full_face_photographs_are_removed() {
    let face = "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAAEBAQEBAQEBAQEBAQ";
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1", "gender": "male", "photo": [{"contentType": "image/jpeg", "data": face, "title": "Peter, 2019"}]}),
        json!({"resourceType": "Practitioner", "id": "pr1", "photo": [{"url": "https://staff.example.org/careful.jpg"}]}),
        json!({"resourceType": "RelatedPerson", "id": "r1", "patient": {"reference": "Patient/p1"}, "photo": [{"data": face}]}),
        json!({"resourceType": "Media", "id": "m1", "status": "completed", "view": {"text": "full face"},
               "subject": {"reference": "Patient/p1"}, "content": {"contentType": "image/jpeg", "data": face}}),
        json!({"resourceType": "DocumentReference", "id": "d1", "status": "current",
               "content": [{"attachment": {"contentType": "image/jpeg", "data": face, "title": "ID badge photo"}}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &[face, "Peter, 2019", "careful.jpg", "ID badge photo"]);
    assert_eq!(entry(&out, "Patient")["gender"], "male");
    assert!(labelled(entry(&out, "Patient")) && labelled(entry(&out, "Media")));
    assert!(withheld(&applied, "Bundle.entry.resource(Patient).photo"));
    assert!(withheld(&applied, "Bundle.entry.resource(DocumentReference).content"));
}

// (R) Any other unique identifying number, characteristic, or code: identifiers of every
// resource, and the free-text elements that repeat or describe them.
#[test]
fn other_unique_identifying_numbers_and_free_text_are_removed() {
    let input = bundle(vec![
        json!({"resourceType": "Patient", "id": "p1",
               "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter Chalmers, badge 4471</div>"},
               "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Windsor"}],
               "identifier": [{"system": "urn:acme:badge", "value": "BADGE-4471"}]}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
               "note": [{"authorString": "Nurse Jo", "text": "patient is the tattooed twin of room 12"}],
               "performer": [{"reference": "Practitioner/pr1", "display": "Dr Adam Careful"}]}),
        json!({"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order", "medicationCodeableConcept": {"text": "x"},
               "subject": {"reference": "Patient/p1"}, "dosageInstruction": [{"patientInstruction": "take with Peter's lunch at Erewhon St"}]}),
        json!({"resourceType": "Flag", "id": "f1", "status": "active", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"},
               "identifier": [{"value": "FLAG-1234567"}]}),
        json!({"resourceType": "Immunization", "id": "im1", "status": "completed", "vaccineCode": {"text": "x"}, "patient": {"reference": "Patient/p1"},
               "occurrenceString": "x", "reaction": [{"detail": {"reference": "Observation/o1", "display": "rash on Peter"}}]}),
        json!({"resourceType": "Communication", "id": "c1", "status": "completed", "payload": [{"contentString": "Peter's badge is 4471"}]}),
    ]);
    let (out, text, applied) = release(&input);
    assert_gone(&text, &["4471", "Windsor", "tattooed twin", "Nurse Jo", "Careful", "Erewhon", "FLAG-1234567", "rash on Peter", "Peter"]);
    assert!(entry(&out, "Patient").get("text").is_none(), "the narrative repeats the data");
    assert!(labelled(entry(&out, "Patient")) && labelled(entry(&out, "Observation")) && labelled(entry(&out, "Flag")));
    for path in [
        "Bundle.entry.resource(Patient).text",
        "Bundle.entry.resource(Observation).note",
        "Bundle.entry.resource(Observation).performer.display",
        "Bundle.entry.resource(MedicationRequest).dosageInstruction.patientInstruction",
        "Bundle.entry.resource(Flag).identifier",
    ] {
        assert!(withheld(&applied, path), "{path}: {:?}", applied.withheld);
    }
}
