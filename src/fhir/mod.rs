//! FHIR R4 knowledge: resource types, the patient compartment, and the REST request model.

pub mod compartment;
pub(crate) mod compartment_table;
pub mod request;
pub mod search_params;
mod search_params_table;

pub use request::{FhirRequest, Interaction};

/// The canonical `&'static str` for a FHIR R4 resource type, if `name` is one (exact case).
pub fn resource_type(name: &str) -> Option<&'static str> {
    compartment_table::RESOURCE_TYPES.binary_search(&name).ok().and_then(|i| compartment_table::RESOURCE_TYPES.get(i).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_are_exact() {
        assert_eq!(resource_type("Patient"), Some("Patient"));
        assert_eq!(resource_type("Observation"), Some("Observation"));
        assert_eq!(resource_type("patient"), None);
        assert_eq!(resource_type("Pateint"), None);
        assert_eq!(resource_type(""), None);
        assert_eq!(compartment_table::RESOURCE_TYPES.len(), 146);
        assert!(compartment_table::RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
    }
}
