//! The FHIR R4 Patient compartment: which resources belong to a patient, found from search
//! parameters (request phase) or from reference elements (response phase).

use serde_json::{Map, Value};

use crate::json::{Kind, Malformed, Reader, Str};

use super::compartment_table::PATIENT_COMPARTMENT;

fn entry(resource_type: &str) -> Option<&'static (&'static str, &'static [&'static str], &'static [&'static str])> {
    PATIENT_COMPARTMENT.binary_search_by(|(t, _, _)| (*t).cmp(resource_type)).ok().and_then(|i| PATIENT_COMPARTMENT.get(i))
}

/// Whether resources of this type can belong to a patient's compartment.
pub fn in_patient_compartment(resource_type: &str) -> bool {
    resource_type == "Patient" || entry(resource_type).is_some()
}

/// Search parameters that link a resource type to the patient (`subject`, `patient`, ...).
pub fn patient_params(resource_type: &str) -> &'static [&'static str] {
    entry(resource_type).map(|e| e.1).unwrap_or(&[])
}

/// Whether a search parameter value refers to the patient `id`: `id`, `Patient/id`, or an
/// absolute URL ending in `/Patient/id`. A comma (OR list) must name only that patient.
pub fn param_refers_to(value: &str, id: &str) -> bool {
    !value.is_empty() && value.split(',').all(|v| reference_is_patient(v, id))
}

fn reference_is_patient(reference: &str, id: &str) -> bool {
    let tail = match reference.rsplit_once("Patient/") {
        Some((prefix, tail)) if prefix.is_empty() || prefix.ends_with('/') => tail,
        Some(_) => return false,
        None if !reference.contains('/') => reference,
        None => return false,
    };
    // `Patient/id/_history/2` is still that patient.
    let tail = tail.split_once("/_history/").map_or(tail, |(t, _)| t);
    tail == id
}

/// Whether a resource body belongs to the patient `id`'s compartment: a Patient with that id, or
/// a compartment resource whose patient-link elements reference that patient.
pub fn resource_belongs_to(resource: &Value, id: &str) -> bool {
    let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    if rt == "Patient" {
        return resource.get("id").and_then(Value::as_str) == Some(id);
    }
    let Some((_, _, paths)) = entry(rt) else {
        return false;
    };
    paths.iter().any(|p| {
        let mut found = false;
        visit_path(resource, &mut p.split('.'), &mut |v| {
            if v.get("reference").and_then(Value::as_str).is_some_and(|r| reference_is_patient(r, id)) {
                found = true;
            }
        });
        found
    })
}

/// The ids of the patients a resource belongs to: a Patient's own id, or the patients its
/// patient-link elements reference (`Patient/id`, `.../Patient/id`, with or without
/// `/_history/n`). Contained (`#x`) and other references are not followed. Sorted, distinct.
pub fn resource_patients(resource: &Value) -> Vec<String> {
    resource.as_object().map(object_patients).unwrap_or_default()
}

/// [`resource_patients`] of a resource object.
pub fn object_patients(resource: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
        return out;
    };
    if rt == "Patient" {
        out.extend(resource.get("id").and_then(Value::as_str).map(str::to_owned));
        return out;
    }
    let Some((_, _, paths)) = entry(rt) else {
        return out;
    };
    for p in paths.iter() {
        let mut segments = p.split('.');
        let Some(child) = segments.next().and_then(|first| resource.get(first)) else {
            continue;
        };
        visit_path(child, &mut segments, &mut |v| {
            if let Some(id) = v.get("reference").and_then(Value::as_str).and_then(patient_id_of) {
                out.push(id.to_owned());
            }
        });
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// [`object_patients`] of the resource object a reader stands at (the reader does not move):
/// the same patients, read from the raw bytes. `rt` is its `resourceType`.
pub fn raw_patients(r: &Reader<'_>, rt: &str) -> Result<Vec<String>, Malformed> {
    let mut out = Vec::new();
    if rt == "Patient" {
        if let Some(id) = r.find_str("id")? {
            out.push(id.decode()?.into_owned());
        }
        return Ok(out);
    }
    let paths = patient_paths(rt);
    let mut m = r.clone();
    m.open()?;
    while let Some(key) = m.next_key()? {
        member_patients(paths, &key, &m, &mut out)?;
        m.skip()?;
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The patient-link paths of a resource type (`subject`, `participant.individual`, ...).
pub fn patient_paths(rt: &str) -> &'static [&'static str] {
    entry(rt).map(|e| e.2).unwrap_or(&[])
}

/// The Patient ids referenced by one member `key` of a resource whose patient-link paths are
/// `paths` ([`patient_paths`]; `value` stands at the member's value), appended to `out`
/// (unsorted). A walk over a resource's members that calls this for each finds what
/// [`raw_patients`] finds.
pub fn member_patients(paths: &[&str], key: &Str<'_>, value: &Reader<'_>, out: &mut Vec<String>) -> Result<(), Malformed> {
    for p in paths {
        // Most members are on no path: compare the name with the path's start first.
        if !key.escaped && !p.as_bytes().starts_with(key.raw) {
            continue;
        }
        let (first, rest) = p.split_once('.').unwrap_or((p, ""));
        if key.is(first) {
            raw_visit(&mut value.clone(), rest, out)?;
        }
    }
    Ok(())
}

/// [`visit_path`] over raw bytes, collecting the Patient ids of the references at the end.
fn raw_visit(r: &mut Reader<'_>, path: &str, out: &mut Vec<String>) -> Result<(), Malformed> {
    match r.kind()? {
        Kind::Array => {
            r.open()?;
            while r.next_item()? {
                raw_visit(&mut r.clone(), path, out)?;
                r.skip()?;
            }
        }
        Kind::Object => match (!path.is_empty()).then(|| path.split_once('.').unwrap_or((path, ""))) {
            None => {
                if let Some(reference) = r.find_str("reference")? {
                    if let Some(id) = patient_id_of(&reference.decode()?) {
                        out.push(id.to_owned());
                    }
                }
            }
            Some((key, rest)) => {
                if let Some(span) = r.find(key)? {
                    raw_visit(&mut r.at(span.start), rest, out)?;
                }
            }
        },
        Kind::String | Kind::Scalar => {}
    }
    Ok(())
}

/// The patient id a reference names, if it names a Patient.
fn patient_id_of(reference: &str) -> Option<&str> {
    let (prefix, tail) = reference.rsplit_once("Patient/")?;
    if !(prefix.is_empty() || prefix.ends_with('/')) {
        return None;
    }
    let id = tail.split_once("/_history/").map_or(tail, |(t, _)| t);
    crate::fhir::request::valid_id(id).then_some(id)
}

fn visit_path<'a>(v: &Value, path: &mut (impl Iterator<Item = &'a str> + Clone), f: &mut impl FnMut(&Value)) {
    match v {
        Value::Array(items) => {
            for item in items {
                visit_path(item, &mut path.clone(), f);
            }
        }
        Value::Object(map) => match path.next() {
            None => f(v),
            Some(key) => {
                if let Some(child) = map.get(key) {
                    visit_path(child, path, f);
                }
            }
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_and_membership() {
        assert!(patient_params("Observation").contains(&"subject"));
        assert!(patient_params("Observation").contains(&"patient"));
        assert!(in_patient_compartment("Patient"));
        assert!(in_patient_compartment("Encounter"));
        assert!(!in_patient_compartment("Medication"));
        assert!(!in_patient_compartment("Organization"));
        assert!(patient_params("Organization").is_empty());
    }

    #[test]
    fn references() {
        assert!(param_refers_to("123", "123"));
        assert!(param_refers_to("Patient/123", "123"));
        assert!(param_refers_to("https://x.org/fhir/Patient/123", "123"));
        assert!(param_refers_to("Patient/123,123", "123"));
        assert!(!param_refers_to("Patient/123,456", "123"));
        assert!(!param_refers_to("Patient/1234", "123"));
        assert!(!param_refers_to("Group/123", "123"));
        assert!(!param_refers_to("XPatient/123", "123"));
        assert!(!param_refers_to("", "123"));
        assert!(!param_refers_to("a/123", "123"));
    }

    #[test]
    fn resource_binding() {
        let obs = json!({"resourceType":"Observation","subject":{"reference":"Patient/p1"}});
        assert!(resource_belongs_to(&obs, "p1"));
        assert!(!resource_belongs_to(&obs, "p2"));
        let ap = json!({"resourceType":"Appointment","participant":[{"actor":{"reference":"Practitioner/x"}},{"actor":{"reference":"Patient/p1"}}]});
        assert!(resource_belongs_to(&ap, "p1"));
        assert!(resource_belongs_to(&json!({"resourceType":"Patient","id":"p1"}), "p1"));
        assert!(!resource_belongs_to(&json!({"resourceType":"Patient","id":"p2"}), "p1"));
        assert!(!resource_belongs_to(&json!({"resourceType":"Medication","id":"p1"}), "p1"));
        assert!(!resource_belongs_to(&json!({"id":"p1"}), "p1"));
    }

    #[test]
    fn patients_of_a_resource() {
        let ap = json!({"resourceType":"Appointment","participant":[{"actor":{"reference":"Patient/p2"}},{"actor":{"reference":"Practitioner/x"}},
                        {"actor":{"reference":"https://x.org/fhir/Patient/p1/_history/3"}},{"actor":{"reference":"Patient/p2"}}]});
        assert_eq!(resource_patients(&ap), ["p1", "p2"]);
        assert_eq!(resource_patients(&json!({"resourceType":"Patient","id":"p9"})), ["p9"]);
        assert!(resource_patients(&json!({"resourceType":"Observation","subject":{"reference":"#contained"}})).is_empty());
        assert!(resource_patients(&json!({"resourceType":"Observation","subject":{"reference":"Group/g"}})).is_empty());
        assert!(resource_patients(&json!({"resourceType":"Medication","id":"m"})).is_empty());
        assert!(resource_patients(&json!({"resourceType":"Observation","subject":{"reference":"XPatient/p1"}})).is_empty());
        // The same from the raw bytes.
        for r in [
            ap,
            json!({"resourceType":"Patient","id":"p9"}),
            json!({"resourceType":"Encounter","subject":[{"reference":"Patient/a"},[{"reference":"Patient/b"}]],"participant":[{"individual":{"reference":"Patient/c"}}],"x":{"subject":{"reference":"Patient/d"}}}),
        ] {
            let text = serde_json::to_vec(&r).unwrap();
            assert_eq!(raw_patients(&Reader::new(&text), r["resourceType"].as_str().unwrap()).unwrap(), resource_patients(&r), "{r}");
        }
    }

    #[test]
    fn table_matches_fixtures() {
        let root = env!("CARGO_MANIFEST_DIR");
        let cd: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{root}/tests/fixtures/fhir/gateway_CompartmentDefinition-patient.json")).unwrap(),
        )
        .unwrap();
        let with_params: Vec<&str> =
            cd["resource"].as_array().unwrap().iter().filter(|r| r.get("param").is_some()).map(|r| r["code"].as_str().unwrap()).collect();
        assert_eq!(with_params.len(), PATIENT_COMPARTMENT.len());
        for t in with_params {
            assert!(entry(t).is_some(), "{t}");
        }
    }
}
