//! The FHIR R4 search parameters of each resource type, and what their values can name: which
//! parameters a patient-context search may use, and which of them can point at a patient.

use super::compartment::patient_params;
use super::search_params_table::{ALL_CODES, COMMON_PARAMS, TYPE_PARAMS};

/// What a search parameter's value can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A token, string, date, number, quantity, URI, composite or special value.
    Value,
    /// A reference that cannot target a Patient.
    Reference,
    /// A reference that can target a Patient (its targets include `Patient`, or are open).
    PatientReference,
}

/// Result parameters (R4 3.1.1.5): they shape the result, they do not select resources. The
/// ones that widen it (`_include`, `_revinclude`, `_contained`) are not here.
pub const RESULT_PARAMS: [&str; 7] = ["_count", "_elements", "_format", "_pretty", "_sort", "_summary", "_total"];

fn find<'a>(list: &'a [(&'static str, ParamKind)], code: &str) -> Option<&'a (&'static str, ParamKind)> {
    list.binary_search_by(|(c, _)| (*c).cmp(code)).ok().and_then(|i| list.get(i))
}

/// The R4 search parameters defined for `resource_type` alone (not the common ones).
pub fn type_params(resource_type: &str) -> &'static [(&'static str, ParamKind)] {
    TYPE_PARAMS.binary_search_by(|(t, _)| (*t).cmp(resource_type)).ok().and_then(|i| TYPE_PARAMS.get(i)).map_or(&[], |(_, params)| *params)
}

/// The kind of the R4 search parameter `code` on `resource_type` (its own parameters, then the
/// ones every resource has), or `None` if R4 defines no such parameter there.
pub fn param_kind(resource_type: &str, code: &str) -> Option<ParamKind> {
    find(type_params(resource_type), code).or_else(|| find(COMMON_PARAMS, code)).map(|(_, k)| *k)
}

/// Whether `code` is an R4 search parameter code of any resource type.
pub fn is_code(code: &str) -> bool {
    ALL_CODES.binary_search(&code).is_ok()
}

/// Whether R4 defines the search parameter `code` on `resource_type` (or on every resource).
pub fn is_param(resource_type: &str, code: &str) -> bool {
    param_kind(resource_type, code).is_some()
}

/// The parameter a patient-context search of `resource_type` must be bound by: `_id` for
/// Patient; else `patient` when it links the type to the compartment, else `subject`, else the
/// type's first compartment parameter. `None` for types outside the compartment.
pub fn primary_patient_param(resource_type: &str) -> Option<&'static str> {
    if resource_type == "Patient" {
        return Some("_id");
    }
    let links = patient_params(resource_type);
    ["patient", "subject"].into_iter().find_map(|p| links.iter().copied().find(|l| *l == p)).or_else(|| links.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::compartment_table::RESOURCE_TYPES;

    #[test]
    fn kinds_follow_the_r4_definitions() {
        assert_eq!(param_kind("Observation", "subject"), Some(ParamKind::PatientReference));
        assert_eq!(param_kind("Observation", "performer"), Some(ParamKind::PatientReference));
        assert_eq!(param_kind("Observation", "encounter"), Some(ParamKind::Reference));
        assert_eq!(param_kind("Observation", "code"), Some(ParamKind::Value));
        assert_eq!(param_kind("Observation", "_id"), Some(ParamKind::Value));
        assert_eq!(param_kind("Condition", "asserter"), Some(ParamKind::PatientReference));
        assert_eq!(param_kind("Observation", "asserter"), None);
        assert_eq!(param_kind("Observation", "ssn"), None);
        assert_eq!(param_kind("Patient", "link"), Some(ParamKind::PatientReference));
        assert_eq!(param_kind("Nope", "code"), None);
    }

    #[test]
    fn primary_parameters() {
        assert_eq!(primary_patient_param("Observation"), Some("patient"));
        assert_eq!(primary_patient_param("Condition"), Some("patient"));
        assert_eq!(primary_patient_param("Encounter"), Some("patient"));
        assert_eq!(primary_patient_param("Account"), Some("subject"));
        assert_eq!(primary_patient_param("Patient"), Some("_id"));
        assert_eq!(primary_patient_param("Medication"), None);
        // Every compartment type's primary parameter is one of its R4 search parameters.
        for t in RESOURCE_TYPES {
            if let Some(p) = primary_patient_param(t) {
                assert!(is_param(t, p), "{t}.{p}");
            }
        }
    }

    #[test]
    fn tables_are_sorted_and_match_the_fixture() {
        assert!(TYPE_PARAMS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(TYPE_PARAMS.iter().all(|(_, ps)| ps.windows(2).all(|w| w[0].0 < w[1].0)));
        assert!(COMMON_PARAMS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(ALL_CODES.windows(2).all(|w| w[0] < w[1]));
        let root = env!("CARGO_MANIFEST_DIR");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{root}/tests/fixtures/fhir/hl7r4_search-parameters.json")).unwrap())
                .unwrap();
        let params = doc["parameters"].as_array().unwrap();
        assert_eq!(params.len(), 1375);
        for p in params {
            let code = p["code"].as_str().unwrap();
            assert!(is_code(code), "{code}");
            for base in p["base"].as_array().unwrap() {
                let base = base.as_str().unwrap();
                let ty = if matches!(base, "Resource" | "DomainResource") { "Observation" } else { base };
                assert!(is_param(ty, code), "{base}.{code}");
                if p["type"] == "reference" {
                    let to_patient = p.get("target").and_then(|t| t.as_array()).is_none_or(|t| t.iter().any(|x| x == "Patient"));
                    let want = if to_patient { ParamKind::PatientReference } else { ParamKind::Reference };
                    assert_eq!(param_kind(ty, code), Some(want), "{base}.{code}");
                }
            }
        }
    }
}
