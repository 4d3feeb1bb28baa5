//! No PHI value used in a request, token or upstream body reaches an audit line, in any format,
//! and no control character does either.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::batch::otlp_logs;
use super::fhir::render;
use crate::decision::{ApplyCtx, ResponseCheck, ResponsePlan};
use crate::policy::audit::AuditFormat;
use crate::testing::{audit_key as key, chain, event_with_id, policy, token, REQUEST_ID};

const PATIENT: &str = "pat-4711-secret";
const OTHER: &str = "pat-9999-other";
const PHI: [&str; 18] = [
    "Smith",
    "smith",
    "John",
    "john",
    "123-45-6789",
    "1970-01-01",
    "555-0100",
    "Elm Street",
    PATIENT,
    OTHER,
    "HIV",
    "Kermit",
    "Trantow",
    "1990-01-01",
    "ssn",
    "MRN-12345",
    "12345",
    "example.org",
];

/// An `x-request-id` that is a name, a birth date and a phone number.
const PHI_REQUEST_ID: &str = "Kermit-Trantow-1990-01-01-555-0100";

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

/// Every string in `v` (keys too) is free of control characters.
fn assert_no_control(v: &Value, context: &str) {
    match v {
        Value::String(s) => assert!(!s.chars().any(char::is_control), "control character in {s:?} ({context})"),
        Value::Array(items) => items.iter().for_each(|i| assert_no_control(i, context)),
        Value::Object(map) => map.iter().for_each(|(k, i)| {
            assert!(!k.chars().any(char::is_control), "control character in key {k:?}");
            assert_no_control(i, context);
        }),
        _ => {}
    }
}

/// `text` with every run of at least `min` lowercase hex digits replaced by `#`.
fn mask_hex_runs(text: &str, min: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() || ('a'..='f').contains(&c) {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() >= min { "#" } else { &run });
        run.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

#[test]
fn hex_runs_are_masked_and_nothing_else() {
    assert_eq!(mask_hex_runs("mac:0123453a3f5806a34feaacaf06 id:12345 x", 16), "mac:# id:12345 x");
    assert_eq!(mask_hex_runs("\"12345\",\"MRN-12345\"", 16), "\"12345\",\"MRN-12345\"");
}

#[test]
fn events_carry_no_phi_values() {
    let body = serde_json::to_vec(&upstream_patient()).unwrap();
    // The body is checked, never handed to audit: only the paths minimization withheld are.
    let plan = ResponsePlan {
        checks: vec![ResponseCheck::Compartment(crate::decision::CompartmentCheck {
            patient: PATIENT.into(),
            shared: Vec::new().into(),
            expect: crate::decision::Expected::Resource { resource_type: "Patient", id: PATIENT.into() },
        })],
        ..ResponsePlan::default()
    };
    assert_eq!(plan.apply(&body, &ApplyCtx::default()).map(|_| ()), Ok(()));
    let withheld = vec![
        "Patient.name".to_owned(),
        "Patient.identifier".to_owned(),
        "Patient.text".to_owned(),
        "patients.John Smith\n.name".to_owned(),
    ];

    let app = policy("smart-patient-app");
    let clinic = policy("clinician-api");
    let patient_token = token(json!({"patient": PATIENT, "name": "John Smith", "birthdate": "1970-01-01", "purpose_of_use": "TREAT"}));
    let user_token =
        token(json!({"patient": null, "scp": ["user/Patient.rs", "user/Observation.rs"], "scope": null, "name": "John Smith"}));
    // Break-glass reasons are free text in the token: only a policy code may reach the log.
    let glass_token = token(
        json!({"patient": null, "scp": ["user/Patient.rs"], "scope": null, "break_glass": true, "break_glass_reason": "John Smith, HIV clinic"}),
    );
    // Claims an issuer lets users or clients choose: names, e-mail addresses, MRNs, newlines.
    let hostile_token = token(json!({
        "patient": null, "scp": ["user/Patient.rs", "user/Observation.rs"], "scope": null,
        "sub": "john.smith@example.org\nSmith", "client_id": "Smith\r\nJohn", "jti": "John\nSmith 555-0100",
        "purpose_of_use": ["TREAT", "JohnSmith"], "acr": "John Smith\n", "amr": ["pwd", "Smith\u{1b}[31m"],
    }));
    // Free text: the verifier splits it like `TREAT ETREAT` into two code-shaped words.
    let free_text_purpose = token(json!({"patient": null, "scp": ["user/Observation.rs"], "scope": null, "purpose_of_use": "John Smith"}));
    let hostile_patient_token =
        token(json!({"patient": PATIENT, "sub": "MRN-12345", "jti": "Kermit\u{0}Trantow", "client_id": "app\tJohn"}));
    let requests: Vec<(&crate::policy::Policy, String, Option<&String>, Option<bool>)> = vec![
        (&app, format!("/fhir/Patient/{PATIENT}"), Some(&patient_token), Some(true)),
        (&app, format!("/fhir/Observation?patient={PATIENT}&code=HIV&date=1970-01-01"), Some(&patient_token), Some(true)),
        (&app, format!("/fhir/Patient/{PATIENT}/Observation?value-string=Smith"), Some(&patient_token), Some(true)),
        (&app, format!("/fhir/Observation?patient=Patient/{OTHER}"), Some(&patient_token), Some(false)),
        (&app, "/fhir/Patient?name=Smith&birthdate=1970-01-01".to_owned(), Some(&patient_token), Some(false)),
        (&app, format!("/fhir/Patient/{PATIENT}"), None, Some(false)),
        (&clinic, "/fhir/Patient?name=Smith&given=John&birthdate=1970-01-01&identifier=http://hl7.org/fhir/sid/us-ssn%7C123-45-6789&phone=555-0100&address=Elm%20Street".to_owned(), Some(&user_token), Some(true)),
        (&clinic, format!("/fhir/Patient?_id={PATIENT},{OTHER}"), Some(&user_token), Some(true)),
        (&clinic, "/fhir/Patient/John.Smith-1970-01-01?_format=Smith".to_owned(), Some(&user_token), Some(true)),
        (&clinic, format!("/fhir/Patient/{PATIENT}"), Some(&glass_token), Some(false)),
        // Free text in parameter names, modifiers, chains and result parameters.
        (&clinic, "/fhir/Observation?code=1&ssn:123-45-6789&name:Smith=x&subject.John=x&John=1&_elements=John&_sort=Smith&_include=Smith:John&_revinclude=Observation:John".to_owned(), Some(&user_token), None),
        (&clinic, "/fhir/Observation?John%0ASmith=1&code:John%0D%0A=1".to_owned(), Some(&user_token), None),
        (&clinic, "/fhir/Patient?_has:Smith:John:code=x&_sort=-Smith,name&_elements=id,John&_include:Smith=Patient:organization&_summary=John".to_owned(), Some(&user_token), None),
        (&app, format!("/fhir/Observation?patient={PATIENT}&ssn:123-45-6789&_elements=John&_sort=Smith&_include=Smith:John"), Some(&patient_token), None),
        // Operation names and non-Patient ids.
        (&clinic, "/fhir/Patient/$smith-john".to_owned(), Some(&user_token), None),
        (&clinic, "/fhir/$John-Smith-1970-01-01".to_owned(), Some(&user_token), None),
        (&clinic, "/fhir/Observation/MRN-12345".to_owned(), Some(&user_token), None),
        (&clinic, "/fhir/Observation/MRN-12345/$Smith".to_owned(), Some(&user_token), None),
        // Hostile claims, allowed and refused.
        (&clinic, "/fhir/Observation/MRN-12345".to_owned(), Some(&hostile_token), None),
        (&clinic, "/fhir/Patient?name=Smith".to_owned(), Some(&hostile_token), None),
        (&app, format!("/fhir/Observation?patient={PATIENT}"), Some(&hostile_patient_token), None),
        (&clinic, "/fhir/Observation/MRN-12345".to_owned(), Some(&free_text_purpose), Some(true)),
        // Without a token (401): everything above is still redacted.
        (&app, "/fhir/Observation/MRN-12345?ssn:123-45-6789&_sort=Smith".to_owned(), None, Some(false)),
        (&clinic, "/fhir/Patient/$smith-john?John=Smith".to_owned(), None, Some(false)),
        (&clinic, "/fhir/Patient?_elements=John&_include=Smith:John".to_owned(), None, Some(false)),
    ];
    let request_ids = [REQUEST_ID, PHI_REQUEST_ID, "John\nSmith", "123-45-6789"];
    let mut bytes = String::new();
    let mut pseudonymized_request_id = false;
    for format in [AuditFormat::Jsonl, AuditFormat::Fhir] {
        let mut c = chain(9);
        let mut sealed = Vec::new();
        for (i, (p, path, t, allowed)) in requests.iter().enumerate() {
            let mut p = (*p).clone();
            p.audit.format = format;
            let request_id = request_ids[i % request_ids.len()];
            let mut ev = event_with_id(&p, "GET", path, t.map(String::as_str), request_id);
            if let Some(allowed) = allowed {
                assert_eq!(ev.is_complete(), !allowed, "{path}");
            }
            if request_id == PHI_REQUEST_ID {
                pseudonymized_request_id |= ev.request_id == Some(key().pseudonym_of("x-request-id", PHI_REQUEST_ID));
            }
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
            assert!(!s.line.chars().any(char::is_control), "raw control character on a line");
            assert_no_control(&serde_json::from_str(&s.line).unwrap(), &s.line);
            bytes.push_str(&s.line);
            bytes.push('\n');
        }
        let otlp = otlp_logs(&sealed, c.stream(), "phi-guard", crate::time::UnixMillis::new(0));
        assert!(!otlp.chars().any(char::is_control));
        assert_no_control(&serde_json::from_str(&otlp).unwrap(), "otlp");
        bytes.push_str(&otlp);
    }
    // MACs, digests and revisions are lowercase hex: a PHI value made of hex digits only
    // (`12345`) turns up in one by chance whenever the policy bytes change, and that is no leak.
    let digests_masked = mask_hex_runs(&bytes, 16);
    for phi in PHI {
        let haystack = if phi.bytes().all(|b| b.is_ascii_hexdigit()) { &digests_masked } else { &bytes };
        assert!(!haystack.contains(phi), "`{phi}` leaked into the audit bytes");
    }
    for t in [&patient_token, &user_token, &glass_token, &hostile_token, &hostile_patient_token, &free_text_purpose] {
        for part in t.split('.') {
            assert!(!bytes.contains(part), "token material leaked");
        }
    }
    // What the log does say: pseudonyms, paths withheld, redacted queries.
    assert!(pseudonymized_request_id);
    assert!(bytes.contains(&key().pseudonym(PATIENT)) && bytes.contains(&key().pseudonym(OTHER)));
    assert!(bytes.contains(&key().pseudonym_of("Observation", "MRN-12345")));
    assert!(bytes.contains(&key().pseudonym_of("operation", "smith-john")));
    assert!(bytes.contains(&key().pseudonym_of("sub", "john.smith@example.org\nSmith")));
    assert!(bytes.contains("Patient.identifier") && bytes.contains("patients.?.name"));
    assert!(bytes.contains("name=*&given=*&birthdate=*&identifier=*&phone=*&address=*"));
    assert!(bytes.contains("code=*&?&name:?=*&subject.?=*&?=*&_elements=*&_sort=*&_include=*&_revinclude=*"));
    assert!(bytes.contains("break_glass_invalid"));
}
