//! What each JSON member of a FHIR R4 type holds, so the streaming walker knows which string
//! values are free text (to be scanned for identifiers) without parsing the resource into a model.

use super::types_table::TYPES;

/// What a member of a FHIR R4 type holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// Free text: a `string`, `markdown` or `xhtml` element that is not one of the excluded kinds below.
    Text,
    /// A value that is not free text (code, id, uri, date, number, boolean, ... or an excluded string).
    Other,
    /// A complex or backbone element of the type at this index of `TYPES`.
    Type(u16),
    /// Any resource (`contained`, `Bundle.entry.resource`, ...).
    Resource,
}

impl Member {
    /// The type of a `Type` member (`None` for the other kinds), to descend into its value.
    pub fn type_id(self) -> Option<TypeId> {
        match self {
            // Checked rather than trusted so that a bad index cannot make `name`/`member` misbehave.
            Member::Type(i) if usize::from(i) < TYPES.len() => Some(TypeId(i)),
            _ => None,
        }
    }
}

/// A FHIR R4 type, by its index in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeId(u16);

impl TypeId {
    /// A member holding an element of this type.
    pub fn as_member(self) -> Member {
        Member::Type(self.0)
    }
}

/// The type with this name: a resource (`Encounter`), datatype (`CodeableConcept`, `Extension`, `Element`) or backbone element (`BundleEntry`).
pub fn type_named(name: &str) -> Option<TypeId> {
    // TYPES is sorted by name (generated so, and checked by a test), so binary search is valid.
    let i = TYPES.binary_search_by(|(n, _)| (*n).cmp(name)).ok()?;
    u16::try_from(i).ok().map(TypeId)
}

/// What the member `name` of `ty` holds; `None` if `ty` has no such member (unknown to FHIR R4).
pub fn member(ty: TypeId, name: &str) -> Option<Member> {
    let (_, members) = TYPES.get(usize::from(ty.0))?;
    // Each type's members are sorted by name length, then name (generated so, and checked by
    // a test): most comparisons are then an integer's, not a string's.
    let i =
        members.binary_search_by(|(n, _)| n.len().cmp(&name.len()).then_with(|| same_length_cmp(n.as_bytes(), name.as_bytes()))).ok()?;
    members.get(i).map(|&(_, m)| m)
}

/// The order of a type's members in the table.
#[cfg(test)]
fn by_length(s: &str) -> (usize, &[u8]) {
    (s.len(), s.as_bytes())
}

/// Byte order of two names of the same length, eight bytes at a time: member names are short,
/// and a library `memcmp` call per probe cost more than the comparison itself.
fn same_length_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.chunks(8), b.chunks(8));
    loop {
        match (x.next(), y.next()) {
            (Some(p), Some(q)) => {
                let word = |c: &[u8]| c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) << (8 * (8 - c.len() as u32));
                let o = word(p).cmp(&word(q));
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            _ => return a.len().cmp(&b.len()),
        }
    }
}

/// The FHIR name of `ty` (its model name for backbone elements, e.g. `BundleEntry`).
pub fn name(ty: TypeId) -> &'static str {
    // A TypeId only comes from `type_named` or `Member::type_id`, both checked, so "" is unreachable.
    TYPES.get(usize::from(ty.0)).map_or("", |&(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::super::types_table::EXCLUDED;
    use super::*;

    fn ty(name: &str) -> TypeId {
        type_named(name).unwrap_or_else(|| panic!("no type {name}"))
    }

    fn get(t: &str, m: &str) -> Option<Member> {
        member(ty(t), m)
    }

    fn of_type(t: &str) -> Option<Member> {
        Some(Member::Type(ty(t).0))
    }

    #[test]
    fn members() {
        assert_eq!(get("Encounter", "reasonCode"), of_type("CodeableConcept"));
        assert_eq!(get("Encounter", "diagnosis"), of_type("EncounterDiagnosis"));
        assert_eq!(get("CodeableConcept", "text"), Some(Member::Text));
        assert_eq!(get("Coding", "display"), Some(Member::Other));
        assert_eq!(get("Observation", "valueString"), Some(Member::Text));
        assert_eq!(get("Observation", "status"), Some(Member::Other));
        assert_eq!(get("Extension", "valueString"), Some(Member::Text));
        assert_eq!(get("Extension", "valueAddress"), of_type("Address"));
        assert_eq!(get("Extension", "valueCodeableConcept"), of_type("CodeableConcept"));
        assert_eq!(get("Extension", "url"), Some(Member::Other));
        assert_eq!(get("Element", "id"), Some(Member::Other));
        assert_eq!(get("Element", "extension"), of_type("Extension"));
        assert_eq!(get("Narrative", "div"), Some(Member::Text));
        assert_eq!(get("Narrative", "status"), Some(Member::Other));
        assert_eq!(get("Patient", "contained"), Some(Member::Resource));
        assert_eq!(get("Patient", "text"), of_type("Narrative"));
        assert_eq!(get("Bundle", "entry"), of_type("BundleEntry"));
        assert_eq!(get("BundleEntry", "resource"), Some(Member::Resource));
        assert_eq!(get("BundleEntryResponse", "outcome"), Some(Member::Resource));
        assert_eq!(get("ParametersParameter", "resource"), Some(Member::Resource));
        assert_eq!(get("QuestionnaireResponse", "item"), of_type("QuestionnaireResponseItem"));
        assert_eq!(get("QuestionnaireResponseItem", "answer"), of_type("QuestionnaireResponseItemAnswer"));
        assert_eq!(get("QuestionnaireResponseItemAnswer", "valueString"), Some(Member::Text));
        assert_eq!(get("Reference", "reference"), Some(Member::Other));
        assert_eq!(get("Reference", "display"), Some(Member::Text));
        assert_eq!(get("Identifier", "value"), Some(Member::Other));
        assert_eq!(get("HumanName", "family"), Some(Member::Other));
        assert_eq!(get("Address", "line"), Some(Member::Other));
        assert_eq!(get("Quantity", "unit"), Some(Member::Other));
        assert_eq!(get("Annotation", "text"), Some(Member::Text));
        assert_eq!(get("Account", "id"), Some(Member::Other));
        assert_eq!(get("Encounter", "class"), of_type("Coding"));
    }

    #[test]
    fn unknown() {
        assert_eq!(get("Encounter", "nope"), None);
        assert_eq!(get("Encounter", "_status"), None);
        assert_eq!(get("Encounter", "resourceType"), None);
        assert_eq!(type_named("Nope"), None);
        assert_eq!(type_named(""), None);
        assert_eq!(Member::Type(u16::MAX).type_id(), None);
        assert_eq!(Member::Text.type_id(), None);
    }

    #[test]
    fn descend() {
        let entry = member(ty("Bundle"), "entry").and_then(Member::type_id);
        assert_eq!(entry.map(name), Some("BundleEntry"));
        assert_eq!(name(ty("Encounter")), "Encounter");
    }

    #[test]
    fn sorted() {
        // Binary search needs strictly increasing names, in `str::cmp` (byte) order.
        for w in TYPES.windows(2) {
            assert!(w[0].0 < w[1].0, "{} !< {}", w[0].0, w[1].0);
        }
        for (t, members) in TYPES {
            for w in members.windows(2) {
                assert!(by_length(w[0].0) < by_length(w[1].0), "{t}: {} !< {}", w[0].0, w[1].0);
            }
        }
    }

    /// The same rule as `scripts/gen_fhir_types.py`, re-implemented from the fixture's type names.
    fn expected(t: &str, m: &str, fhir_type: &str) -> Member {
        let excluded = EXCLUDED.contains(&format!("{t}.{m}").as_str()) || EXCLUDED.contains(&format!("*.{m}").as_str());
        match fhir_type {
            "Resource" => Member::Resource,
            "string" | "markdown" | "xhtml" if excluded => Member::Other,
            "string" | "markdown" | "xhtml" => Member::Text,
            // FHIR primitive type names start lowercase, complex and backbone types uppercase.
            p if p.starts_with(|c: char| c.is_ascii_lowercase()) => Member::Other,
            c => Member::Type(ty(c).0),
        }
    }

    #[test]
    fn matches_fixture() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fhir/fhir-r4-element-types.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let types = doc["types"].as_object().unwrap();
        assert_eq!(types.len(), TYPES.len());
        let mut n = 0;
        for (t, members) in types {
            let members = members.as_object().unwrap();
            let id = ty(t);
            assert_eq!(TYPES[usize::from(id.0)].1.len(), members.len(), "{t}");
            for (m, fhir_type) in members {
                let want = expected(t, m, fhir_type.as_str().unwrap());
                assert_eq!(member(id, m), Some(want), "{t}.{m}: {fhir_type}");
                n += 1;
            }
        }
        assert_eq!(n, TYPES.iter().map(|(_, ms)| ms.len()).sum::<usize>());
    }
}
