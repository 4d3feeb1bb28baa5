//! No PHI value used in a request, token or upstream body reaches an audit line, in any format.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::batch::otlp_logs;
use super::chain::tests::chain;
use super::event::tests::{event, key, policy, token};
use super::fhir::render;
use crate::decision::{ApplyCtx, ResponseCheck, ResponsePlan};
use crate::policy::audit::AuditFormat;

const PATIENT: &str = "pat-4711-secret";
const OTHER: &str = "pat-9999-other";
const PHI: [&str; 9] = ["Smith", "John", "123-45-6789", "1970-01-01", "555-0100", "Elm Street", PATIENT, OTHER, "HIV"];

/// An upstream Patient carrying every PHI value above.
fn upstream_patient() -> Value {
    json!({
        "resourceType": "Patient", "id": PATIENT,
        "name": [{"family": "Smith", "given": ["John"]}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"}],
        "birthDate": "1970-01-01", "telecom": [{"system": "phone", "value": "555-0100"}],
        "address": [{"line": ["1 Elm Street"]}],
        "text": {"status": "generated", "div": "<div>John Smith, HIV clinic</div>"}
    })
}

#[test]
fn events_carry_no_phi_values() {
    let body = serde_json::to_vec(&upstream_patient()).unwrap();
    // The body is checked, never handed to audit: only the paths minimization withheld are.
    let plan = ResponsePlan { checks: vec![ResponseCheck::Compartment(crate::decision::CompartmentCheck { patient: PATIENT.into(), shared: vec![], expect: crate::decision::Expected::Resource { resource_type: "Patient", id: PATIENT.into() } })], ..ResponsePlan::default() };
    assert_eq!(plan.apply(&body, &ApplyCtx::default()).map(|_| ()), Ok(()));
    let withheld = vec!["Patient.name".to_owned(), "Patient.identifier".to_owned(), "Patient.text".to_owned()];

    let app = policy("smart-patient-app");
    let clinic = policy("clinician-api");
    let patient_token = token(json!({"patient": PATIENT, "name": "John Smith", "birthdate": "1970-01-01", "purpose_of_use": "TREAT"}));
    let user_token = token(json!({"patient": null, "scp": ["user/Patient.rs", "user/Observation.rs"], "scope": null, "name": "John Smith"}));
    // Break-glass reasons are free text in the token: only a policy code may reach the log.
    let glass_token = token(json!({"patient": null, "scp": ["user/Patient.rs"], "scope": null, "break_glass": true, "break_glass_reason": "John Smith, HIV clinic"}));
    let requests = [
        (&app, format!("/fhir/Patient/{PATIENT}"), Some(&patient_token), true),
        (&app, format!("/fhir/Observation?patient={PATIENT}&code=HIV&date=1970-01-01"), Some(&patient_token), true),
        (&app, format!("/fhir/Patient/{PATIENT}/Observation?value-string=Smith"), Some(&patient_token), true),
        (&app, format!("/fhir/Observation?patient=Patient/{OTHER}"), Some(&patient_token), false),
        (&app, "/fhir/Patient?name=Smith&birthdate=1970-01-01".to_owned(), Some(&patient_token), false),
        (&app, format!("/fhir/Patient/{PATIENT}"), None, false),
        (&clinic, "/fhir/Patient?name=Smith&given=John&birthdate=1970-01-01&identifier=http://hl7.org/fhir/sid/us-ssn%7C123-45-6789&phone=555-0100&address=Elm%20Street".to_owned(), Some(&user_token), true),
        (&clinic, format!("/fhir/Patient?_id={PATIENT},{OTHER}"), Some(&user_token), true),
        (&clinic, "/fhir/Patient/John.Smith-1970-01-01?_format=Smith".to_owned(), Some(&user_token), true),
        (&clinic, format!("/fhir/Patient/{PATIENT}"), Some(&glass_token), false),
    ];
    let mut bytes = String::new();
    for format in [AuditFormat::Jsonl, AuditFormat::Fhir] {
        let mut c = chain(9);
        let mut sealed = Vec::new();
        for (p, path, t, allowed) in &requests {
            let mut p = (*p).clone();
            p.audit.format = format;
            let mut ev = event(&p, "GET", path, t.map(String::as_str));
            assert_eq!(ev.is_complete(), !allowed, "{path}");
            if !ev.is_complete() {
                ev = ev.with_response(200, withheld.clone(), None);
            }
            if format == AuditFormat::Fhir {
                let r: Value = serde_json::from_str(&render(&ev, c.stream(), 0, "phi-guard").unwrap()).unwrap();
                for q in r["entity"].as_array().unwrap().iter().filter_map(|e| e["query"].as_str()) {
                    bytes.push_str(&String::from_utf8(STANDARD.decode(q).unwrap()).unwrap());
                }
            }
            sealed.push(c.seal(&ev, &p.audit));
        }
        for s in &sealed {
            bytes.push_str(&s.line);
            bytes.push('\n');
        }
        bytes.push_str(&otlp_logs(&sealed, c.stream(), "phi-guard"));
    }
    for phi in PHI {
        assert!(!bytes.contains(phi), "`{phi}` leaked into the audit bytes");
    }
    for t in [&patient_token, &user_token, &glass_token] {
        for part in t.split('.') {
            assert!(!bytes.contains(part), "token material leaked");
        }
    }
    // What the log does say: pseudonyms, paths withheld, redacted queries.
    assert!(bytes.contains(&key().pseudonym(PATIENT)) && bytes.contains(&key().pseudonym(OTHER)));
    assert!(bytes.contains("Patient.identifier"));
    assert!(bytes.contains("name=*&given=*&birthdate=*&identifier=*&phone=*&address=*"));
    assert!(bytes.contains("break_glass_invalid"));
}
