//! The FHIR R4 Patient compartment: which resources belong to a patient, found from search
//! parameters (request phase) or from reference elements (response phase).

use serde_json::Value;

use super::compartment_table::PATIENT_COMPARTMENT;

fn entry(resource_type: &str) -> Option<&'static (&'static str, &'static [&'static str], &'static [&'static str])> {
    PATIENT_COMPARTMENT
        .binary_search_by(|(t, _, _)| (*t).cmp(resource_type))
        .ok()
        .and_then(|i| PATIENT_COMPARTMENT.get(i))
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
    fn table_matches_fixtures() {
        let root = env!("CARGO_MANIFEST_DIR");
        let cd: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{root}/tests/fixtures/fhir/gateway_CompartmentDefinition-patient.json")).unwrap(),
        )
        .unwrap();
        let with_params: Vec<&str> = cd["resource"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r.get("param").is_some())
            .map(|r| r["code"].as_str().unwrap())
            .collect();
        assert_eq!(with_params.len(), PATIENT_COMPARTMENT.len());
        for t in with_params {
            assert!(entry(t).is_some(), "{t}");
        }
    }
}
