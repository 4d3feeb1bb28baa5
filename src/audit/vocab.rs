//! The closed sets an audit event may write as is. Anything outside them is free text a client
//! (or a token issuer) chose, and may be PHI: it is pseudonymized under the audit key, replaced
//! by a placeholder (`?`, `*`) or by `invalid`.

use super::names::ELEMENT_NAMES;
use crate::fhir::resource_type;

/// FHIR R4 search modifiers (R4 search.html 3.1.1.4, plus `iterate` of `_include`/`_revinclude`);
/// a resource type is a modifier too (`subject:Patient`). Sorted.
pub const MODIFIERS: [&str; 13] =
    ["above", "below", "contains", "exact", "identifier", "in", "iterate", "missing", "not", "not-in", "of-type", "text", "type"];

/// FHIR R4 operation names (R4 operationslist.html) and the Bulk Data `$export`, without `$`.
/// Sorted.
pub const OPERATIONS: [&str; 39] = [
    "apply",
    "care-gaps",
    "closure",
    "collect-data",
    "conforms",
    "convert",
    "data-requirements",
    "document",
    "evaluate-measure",
    "everything",
    "expand",
    "export",
    "find",
    "find-matches",
    "graph",
    "graphql",
    "implements",
    "lastn",
    "lookup",
    "match",
    "meta",
    "meta-add",
    "meta-delete",
    "populate",
    "populatehtml",
    "populatelink",
    "preferred-id",
    "process-message",
    "questionnaire",
    "snapshot",
    "stats",
    "submit",
    "submit-data",
    "subset",
    "subsumes",
    "transform",
    "translate",
    "validate",
    "validate-code",
];

/// Search parameters that are not SearchParameter resources (R4 search.html 3.1.1.5 result
/// parameters, `_has`, `_type`, `_list`, paging). Sorted.
pub const SPECIAL_PARAMETERS: [&str; 16] = [
    "_contained",
    "_containedType",
    "_count",
    "_elements",
    "_format",
    "_getpagesoffset",
    "_has",
    "_include",
    "_list",
    "_offset",
    "_pretty",
    "_revinclude",
    "_sort",
    "_summary",
    "_total",
    "_type",
];

/// A FHIR R4 search parameter code or result parameter (`name`, `_lastUpdated`, `_sort`, ...).
pub fn is_search_parameter(s: &str) -> bool {
    crate::fhir::search_params::is_code(s) || SPECIAL_PARAMETERS.binary_search(&s).is_ok()
}

/// A top-level FHIR R4 element name (`id`, `meta`, `subject`, `birthDate`, ...).
pub fn is_element(s: &str) -> bool {
    ELEMENT_NAMES.binary_search(&s).is_ok()
}

/// A search modifier (`exact`, `missing`, ...) or a resource type (`Patient`).
pub fn is_modifier(s: &str) -> bool {
    MODIFIERS.binary_search(&s).is_ok() || resource_type(s).is_some()
}

/// A FHIR R4 operation name, without `$`.
pub fn is_operation(s: &str) -> bool {
    OPERATIONS.binary_search(&s).is_ok()
}

/// A value that is safe on a log line as is: 1..=`max` bytes of printable ASCII, no space and
/// no control character.
pub fn printable(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_closed() {
        for t in [&MODIFIERS[..], &OPERATIONS[..], &SPECIAL_PARAMETERS[..], ELEMENT_NAMES] {
            assert!(t.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        }
        for p in ["_id", "_lastUpdated", "_count", "_has", "_include", "name", "birthdate", "patient", "code-value-quantity"] {
            assert!(is_search_parameter(p), "{p}");
        }
        for p in ["ssn", "Smith", "John", "", "name:exact"] {
            assert!(!is_search_parameter(p), "{p}");
        }
        assert!(is_element("birthDate") && is_element("id") && !is_element("Smith") && !is_element("john"));
        assert!(is_modifier("exact") && is_modifier("Patient") && !is_modifier("123-45-6789") && !is_modifier("patient"));
        assert!(is_operation("everything") && is_operation("validate-code") && !is_operation("smith-john"));
        assert!(printable("app-1", 8) && !printable("a b", 8) && !printable("a\nb", 8) && !printable("", 8) && !printable("abcdefghi", 8));
    }

    #[test]
    fn names_match_the_r4_fixture() {
        // `names.rs` and `fhir::search_params` are generated from this fixture.
        let root = env!("CARGO_MANIFEST_DIR");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{root}/tests/fixtures/fhir/hl7r4_search-parameters.json")).unwrap())
                .unwrap();
        for p in doc["parameters"].as_array().unwrap() {
            let code = p["code"].as_str().unwrap();
            assert!(is_search_parameter(code), "{code}");
            let base = p["base"][0].as_str().unwrap();
            let ty = if matches!(base, "Resource" | "DomainResource") { "Observation" } else { base };
            assert!(crate::fhir::search_params::is_param(ty, code), "{base}.{code}");
        }
    }
}
