//! De-identification beyond field rules on real data: every Synthea bundle in the fixtures,
//! with free text written the way clinicians write it (the patient's name, phone number, SSN,
//! licence and passport numbers, address, email, birth date, URLs and IP addresses in
//! `reasonCode.text`, `valueString`, `code.text`, questionnaire answers, a `contained`
//! resource, a nested Bundle), through the `safe-harbor` preset. By byte search of the output:
//! no identifier of any person in the response survives; every record key is a pseudonym; and
//! every reference that resolved inside the input Bundle still resolves inside the output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use phi_guard::minimize::{self, compile_minimize, ApplyCtx, Profile};
use phi_guard::time::UnixSeconds;
use serde_json::{json, Value};

#[path = "subset/mod.rs"]
mod subset;

const KEY: &[u8] = b"test-only hmac key, 32 bytes...!";
const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);

fn profile(v: Value) -> std::sync::Arc<Profile> {
    let doc = serde_json::from_value(json!({"profiles": [v]})).unwrap();
    compile_minimize(&doc, &phi_guard::schema::ROOT.field("test"), true).unwrap().profiles[0].clone()
}

fn synthea() -> Vec<(String, Value)> {
    let dir = format!("{}/tests/fixtures/minimize/synthea", env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 3);
    out
}

fn resources_mut<'a>(b: &'a mut Value, ty: &'a str) -> impl Iterator<Item = &'a mut Value> + 'a {
    b["entry"].as_array_mut().unwrap().iter_mut().map(|e| &mut e["resource"]).filter(move |r| r["resourceType"] == ty)
}

/// The identifiers of the bundle's Patient, by kind.
struct Person {
    names: Vec<String>,
    numbers: Vec<(String, String)>,
    phrases: Vec<String>,
    birth: String,
    zip: String,
}

fn person(b: &Value) -> Person {
    let p = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).find(|r| r["resourceType"] == "Patient").unwrap();
    let mut names = Vec::new();
    for n in p["name"].as_array().unwrap() {
        names.push(n["family"].as_str().unwrap().to_owned());
        names.extend(n["given"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_owned()));
    }
    for e in p["extension"].as_array().unwrap() {
        if e["url"] == "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName" {
            names.extend(e["valueString"].as_str().unwrap().split_whitespace().map(str::to_owned));
        }
    }
    let mut numbers = Vec::new();
    for id in p["identifier"].as_array().unwrap() {
        let kind = id["type"]["coding"][0]["code"].as_str().unwrap_or("synthea").to_owned();
        numbers.push((kind, id["value"].as_str().unwrap().to_owned()));
    }
    for t in p["telecom"].as_array().unwrap() {
        numbers.push(("phone".into(), t["value"].as_str().unwrap().to_owned()));
    }
    let a = &p["address"][0];
    let phrases = vec![a["line"][0].as_str().unwrap().to_owned(), a["city"].as_str().unwrap().to_owned()];
    Person {
        names,
        numbers,
        phrases,
        birth: p["birthDate"].as_str().unwrap().to_owned(),
        zip: a["postalCode"].as_str().unwrap_or("02139").to_owned(),
    }
}

fn number(p: &Person, kind: &str) -> String {
    p.numbers.iter().find(|(k, _)| k == kind).unwrap().1.clone()
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The bundle with free text written into it, naming its patient every way this test checks.
fn with_free_text(mut b: Value, variant: usize) -> Value {
    let p = person(&b);
    let (given, family) = (p.names[1].clone(), p.names[0].clone());
    let phone = digits(&number(&p, "phone"));
    let (a, x, l) = (&phone[0..3], &phone[3..6], &phone[6..10]);
    let phones = [format!("({a}) {x}-{l}"), format!("{a}.{x}.{l}"), format!("{a} {x} {l}"), format!("+1 {a} {x} {l}"), phone.clone()];
    let ssn = digits(&number(&p, "SS"));
    let ssns =
        [format!("{}-{}-{}", &ssn[0..3], &ssn[3..5], &ssn[5..9]), format!("{} {} {}", &ssn[0..3], &ssn[3..5], &ssn[5..9]), ssn.clone()];
    let (y, m, d) = (&p.birth[0..4], &p.birth[5..7], &p.birth[8..10]);
    let reason = format!(
        "{}, {given} called from {} re: refill, SSN {}",
        family.to_uppercase(),
        phones[variant % phones.len()],
        ssns[variant % ssns.len()]
    );
    let line = &p.phrases[0];
    let city = &p.phrases[1];
    let obs_text = format!(
        "Pt {given} {family} lives at {line}, {city} MA {}; email {}.{}@example.com; DOB {m}/{d}/{y}",
        p.zip,
        given.to_lowercase(),
        family.to_lowercase()
    );
    let mrn = number(&p, "MR");
    let condition_text =
        format!("Seen by {given} on 2019-03-04, portal https://portal.example.org/patient/{mrn} from 10.20.30.40, MRN {mrn}");
    if let Some(e) = resources_mut(&mut b, "Encounter").next() {
        e["reasonCode"] = json!([{"text": reason}]);
        e["contained"] = json!([{"resourceType": "Observation", "id": "note1", "status": "final", "code": {"text": "note"},
                                  "valueString": format!("{given}'s passport {}", number(&p, "PPN"))}]);
    }
    if let Some(o) = resources_mut(&mut b, "Observation").next() {
        let o = o.as_object_mut().unwrap();
        o.retain(|k, _| !k.starts_with("value"));
        o.insert("valueString".into(), json!(obs_text));
    }
    if let Some(c) = resources_mut(&mut b, "Condition").next() {
        c["code"]["text"] = json!(condition_text);
    }
    let patient_url =
        b["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap()["fullUrl"].clone();
    b["entry"].as_array_mut().unwrap().push(json!({
        "fullUrl": "urn:uuid:7d3a1c52-0f55-4c7e-9a64-2f3c1d9b8e01",
        "resource": {"resourceType": "QuestionnaireResponse", "id": "7d3a1c52-0f55-4c7e-9a64-2f3c1d9b8e01", "status": "completed",
            "subject": {"reference": patient_url},
            "item": [
                {"linkId": "1", "text": format!("Driver's licence {}", number(&p, "DL")), "answer": [{"valueString": family.clone()}]},
                {"linkId": "2", "text": "Best number to reach you?", "answer": [{"valueString": phones[(variant + 2) % phones.len()].clone()}]},
                {"linkId": "3", "text": "Date of birth", "answer": [{"valueString": format!("{}/{}/{y}", m.trim_start_matches('0'), d.trim_start_matches('0'))}]}
            ]},
        "request": {"method": "POST", "url": "QuestionnaireResponse"}
    }));
    b
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c >= 0x80
}

/// Whether `needle` occurs in `hay` as a whole word, ignoring ASCII case.
fn contains_word(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.to_ascii_lowercase(), needle.to_ascii_lowercase());
    let hb = h.as_bytes();
    h.match_indices(&n).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| hb[j]);
        let after = hb.get(i + n.len()).copied();
        !before.is_some_and(is_word_byte) && !after.is_some_and(is_word_byte)
    })
}

fn strings(v: &Value, out: &mut Vec<String>) {
    subset::strings(v, out);
}

/// Every identifier of `p` is gone from `text` (the released bytes) and from every string of
/// `out`, whatever the separators between the digits of a number.
fn assert_no_identifier(f: &str, p: &Person, text: &str, out: &Value) {
    for n in &p.names {
        assert!(!contains_word(text, n), "{f}: name `{n}` survives");
    }
    for ph in &p.phrases {
        assert!(!contains_word(text, ph), "{f}: `{ph}` survives");
    }
    assert!(!contains_word(text, &p.zip), "{f}: ZIP `{}` survives", p.zip);
    let (y, m, d) = (&p.birth[0..4], &p.birth[5..7], &p.birth[8..10]);
    for b in [p.birth.clone(), format!("{m}/{d}/{y}"), format!("{}/{}/{y}", m.trim_start_matches('0'), d.trim_start_matches('0'))] {
        assert!(!text.contains(&b), "{f}: birth date `{b}` survives");
    }
    assert!(!text.contains("@example.com") && !text.contains("portal.example.org") && !text.contains("10.20.30.40"), "{f}");
    let mut all = Vec::new();
    strings(out, &mut all);
    for (kind, value) in &p.numbers {
        assert!(!text.contains(value.as_str()), "{f}: {kind} `{value}` survives");
        let want = digits(value);
        if want.len() < 6 {
            continue;
        }
        for s in &all {
            // Pseudonyms are hex: their digit runs are not the person's.
            if s.len() >= 36 && s.bytes().filter(|c| *c == b'-').count() >= 4 {
                continue;
            }
            assert!(!digits(s).contains(&want), "{f}: {kind} digits `{want}` survive in `{s}`");
        }
    }
}

/// Every `reference` of a Bundle, with whether it resolves inside it: `urn:uuid:` and absolute
/// references to an entry's `fullUrl`, `Type/id` to an entry's resource, `#id` to a contained
/// resource of the same resource, `Type?query` to an entry created with that `ifNoneExist`.
fn references(b: &Value) -> Vec<(String, bool)> {
    let entries = b["entry"].as_array().unwrap();
    let full: BTreeSet<&str> = entries.iter().filter_map(|e| e["fullUrl"].as_str()).collect();
    let typed: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| Some(format!("{}/{}", e["resource"]["resourceType"].as_str()?, e["resource"]["id"].as_str()?)))
        .collect();
    let conditional: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| Some(format!("{}?{}", e["request"]["url"].as_str()?, e["request"]["ifNoneExist"].as_str()?)))
        .collect();
    let mut out = Vec::new();
    for e in entries {
        let r = &e["resource"];
        let contained: BTreeSet<String> =
            r["contained"].as_array().into_iter().flatten().filter_map(|c| Some(format!("#{}", c["id"].as_str()?))).collect();
        let mut refs = Vec::new();
        collect_refs(r, &mut refs);
        for s in refs {
            let ok = full.contains(s.as_str()) || typed.contains(&s) || contained.contains(&s) || conditional.contains(&s);
            out.push((s, ok));
        }
    }
    out
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn release(p: &Profile, input: &Value) -> (String, Value, minimize::Applied) {
    let bytes = serde_json::to_vec(input).unwrap();
    let applied = minimize::apply(p, &bytes, &ApplyCtx { hmac_key: Some(KEY), now: NOW, pseudonyms: None }, usize::MAX).unwrap();
    let text = String::from_utf8(applied.body.clone().unwrap()).unwrap();
    let out: Value = serde_json::from_str(&text).unwrap();
    // Shifted dates are new values by design; everything else comes from the input.
    if !matches!(&p.body, minimize::profile::BodyRules::Fhir(f) if f.deid.as_ref().is_some_and(|d| d.shift_days.is_some())) {
        subset::assert_subset(input, &out, "de-identified");
    }
    // The tree engine (the oracle) releases the same.
    let tree = minimize::apply_tree(p, &bytes, &ApplyCtx { hmac_key: Some(KEY), now: NOW, pseudonyms: None }, usize::MAX).unwrap();
    let tree_out: Value = serde_json::from_slice(&tree.body.clone().unwrap()).unwrap();
    assert_eq!(tree_out.to_string(), out.to_string());
    assert_eq!((tree.withheld, tree.count), (applied.withheld.clone(), applied.count));
    (text, out, applied)
}

#[test]
fn no_identifier_of_any_person_survives_in_free_text() {
    let sh = profile(json!({"name": "sh", "preset": "safe-harbor"}));
    for (variant, (f, bundle)) in synthea().into_iter().enumerate() {
        let p = person(&bundle);
        for v in [variant, variant + 3] {
            let input = with_free_text(bundle.clone(), v);
            let (text, out, applied) = release(&sh, &input);
            assert_no_identifier(&f, &p, &text, &out);
            for path in [
                "Bundle.entry.resource(Encounter).reasonCode.text",
                "Bundle.entry.resource(Encounter).contained(Observation).valueString",
                "Bundle.entry.resource(Observation).valueString",
                "Bundle.entry.resource(Condition).code.text",
                "Bundle.entry.resource(QuestionnaireResponse).item.text",
                "Bundle.entry.resource(QuestionnaireResponse).item.answer.valueString",
            ] {
                assert!(applied.withheld.iter().any(|w| w == path), "{f}: {path} not recorded: {:?}", applied.withheld);
            }
            // What is not an identifier stays readable.
            assert!(text.contains("called from [REDACTED] re: refill"), "{f}");
            assert!(text.contains("Best number to reach you?"), "{f}");
            // Nested in a batch response, the same holds.
            let nested = json!({"resourceType": "Bundle", "type": "batch-response",
                "entry": [{"resource": input.clone(), "response": {"status": "200 OK"}}]});
            let (text, out, _) = release(&sh, &nested);
            assert_no_identifier(&f, &p, &text, &out);
        }
    }
}

#[test]
fn record_keys_are_pseudonymized_and_references_still_resolve() {
    let sh = profile(json!({"name": "sh", "preset": "safe-harbor"}));
    for (f, bundle) in synthea() {
        let input = with_free_text(bundle, 0);
        let (text, out, _) = release(&sh, &input);
        let before = references(&input);
        let after = references(&out);
        assert_eq!(before.len(), after.len(), "{f}: references kept");
        assert!(before.iter().filter(|(_, ok)| *ok).count() > 50, "{f}: the fixture's references resolve");
        for ((b, ok_before), (a, ok_after)) in before.iter().zip(&after) {
            assert_eq!(ok_before, ok_after, "{f}: `{b}` → `{a}`");
            assert_ne!(b, a, "{f}: `{b}` kept");
        }
        for e in input["entry"].as_array().unwrap() {
            let id = e["resource"]["id"].as_str().unwrap();
            assert!(!text.contains(id), "{f}: id `{id}` survives");
        }
        // The same record gets the same pseudonym in another response.
        let patient = input["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap();
        let (_, alone, _) = release(&sh, &patient["resource"]);
        let in_bundle = out["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap();
        assert_eq!(alone["id"], in_bundle["resource"]["id"], "{f}");
    }
}

#[test]
fn date_shifting_keeps_intervals_within_a_patient() {
    let shift = profile(json!({"name": "intervals", "mode": "deny", "otherResources": "allow",
        "resources": {"*": {"deny": ["**.identifier", "**.name", "**.telecom", "**.address", "text"]}},
        "referenceDisplay": "remove", "deidentify": {"freeText": "scrub", "pseudonymizeIds": true, "dateShiftDays": 180}}));
    for (f, bundle) in synthea() {
        let (_, out, _) = release(&shift, &bundle);
        let dates = |b: &Value| -> Vec<(String, String)> {
            b["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| {
                    Some((e["resource"]["resourceType"].as_str()?.to_owned(), e["resource"]["effectiveDateTime"].as_str()?.to_owned()))
                })
                .collect()
        };
        let (a, b) = (dates(&bundle), dates(&out));
        assert_eq!(a.len(), b.len(), "{f}");
        assert!(a.len() > 10);
        let day = |s: &str| {
            let (y, m, d): (i64, i64, i64) = (s[0..4].parse().unwrap(), s[5..7].parse().unwrap(), s[8..10].parse().unwrap());
            // Days from civil (any consistent count works for differences).
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y.rem_euclid(400);
            let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
            era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy
        };
        let offset = day(&b[0].1) - day(&a[0].1);
        assert!(offset != 0 && offset.abs() <= 180, "{f}: {offset}");
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(day(y) - day(x), offset, "{f}: every date of the patient moves by the same offset");
            assert_eq!(x[10..], y[10..], "{f}: time and zone kept");
        }
    }
}
