//! Built-in profiles, written in the policy language itself so they compile (and are checked)
//! like any other profile.
//!
//! `safe-harbor` removes or generalizes the 18 HIPAA Safe Harbor identifier categories
//! (45 CFR 164.514(b)(2)(i)) as they appear in FHIR R4:
//!
//! | # | category | FHIR R4 elements |
//! |---|---|---|
//! | A | names | `name` of Patient, Person, RelatedPerson, Practitioner; `**.name.{family,given,text,suffix}`; Account.name; `Patient.contact` |
//! | B | geography below state | `**.address.{line,city,district,text}`, `postalCode` → 3 digits (`000` restricted), `locationAddress`, Location.position, geolocation / birthPlace extensions |
//! | C | dates except year; ages over 89 | every date-shaped value → year (`dates: year`), instants removed, `birthDate` removed when the year implies 90+, Age values over 89 → 90 with comparator `>=` |
//! | D–F | phone, fax, email | `**.telecom`, `**.contact` |
//! | G–K | SSN, MRN, health plan, account, certificate/licence numbers | `**.identifier` (every Identifier, also in references, and the Bundle's own), the Identifier-typed elements with other names (`accessionIdentifier`, `masterIdentifier`, `groupIdentifier`, `preAdmissionIdentifier`, `requisition`), Coverage.subscriberId/class/dependent, `insurance.preAuthRef` |
//! | L–M | vehicle and device identifiers, serial numbers | `**.identifier`, Device.udiCarrier/serialNumber/lotNumber/distinctIdentifier/url, `**.lotNumber`, DICOM UIDs (ImagingStudy `series.uid`, `series.instance.uid`) |
//! | N–O | URLs, IP addresses | `**.telecom` (url contact points), Endpoint.address, AuditEvent.agent.network, attachment URLs (below) |
//! | P–Q | biometric identifiers, full-face photographs | `**.photo`, attachments (`presentedForm`, `valueAttachment`, DocumentReference/Media content, Binary.data) |
//! | R | any other unique identifying code; free text | narrative (always, as something is withheld), `Reference.display` (`referenceDisplay: remove`), `**.note`, `**.comment`, `**.patientInstruction`, Communication(Request).payload, mothersMaidenName extension |
//! | all | in free text; record keys | `deidentify.freeText: scrub` (every free-text value scanned for the response's persons and the Safe Harbor patterns), `pseudonymizeIds` (ids, `fullUrl`s, references as keyed pseudonyms) |
//!
//! Kept: codes, values, states and countries, organization and location names.

use crate::schema::ProfileDoc;

const SAFE_HARBOR: &str = r#"{
  "name": "safe-harbor",
  "mode": "deny",
  "otherResources": "allow",
  "referenceDisplay": "remove",
  "dates": "year",
  "bundleLinks": "paging-only",
  "deidentify": {"freeText": "scrub", "pseudonymizeIds": true},
  "resources": {
    "*": {
      "deny": [
        "**.identifier",
        "**.accessionIdentifier",
        "**.masterIdentifier",
        "**.groupIdentifier",
        "**.preAdmissionIdentifier",
        "**.requisition",
        "**.telecom",
        "**.contact",
        "**.photo",
        "**.note",
        "**.comment",
        "**.patientInstruction",
        "**.presentedForm",
        "**.valueAttachment",
        "**.lotNumber",
        "**.subscriberId",
        "**.preAuthRef",
        "**.locationAddress",
        "**.address.line",
        "**.address.city",
        "**.address.district",
        "**.address.text",
        "**.valueAddress.line",
        "**.valueAddress.city",
        "**.valueAddress.district",
        "**.valueAddress.text",
        "**.name.family",
        "**.name.given",
        "**.name.text",
        "**.name.suffix",
        "**.extension[url=http://hl7.org/fhir/StructureDefinition/geolocation]",
        "**.extension[url=http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName]",
        "**.extension[url=http://hl7.org/fhir/StructureDefinition/patient-birthPlace]"
      ],
      "transform": [
        {"path": "**.address.postalCode", "transform": "generalize", "to": "zip3"},
        {"path": "**.valueAddress.postalCode", "transform": "generalize", "to": "zip3"},
        {"path": "**.onsetAge", "transform": "generalize", "to": "age90"},
        {"path": "**.abatementAge", "transform": "generalize", "to": "age90"},
        {"path": "**.deceasedAge", "transform": "generalize", "to": "age90"},
        {"path": "**.ageAge", "transform": "generalize", "to": "age90"},
        {"path": "**.valueAge", "transform": "generalize", "to": "age90"}
      ]
    },
    "Patient": {
      "deny": ["name"],
      "transform": [{"path": "birthDate", "transform": "generalize", "to": "birth-year"}]
    },
    "Person": {
      "deny": ["name"],
      "transform": [{"path": "birthDate", "transform": "generalize", "to": "birth-year"}]
    },
    "RelatedPerson": {
      "deny": ["name"],
      "transform": [{"path": "birthDate", "transform": "generalize", "to": "birth-year"}]
    },
    "Practitioner": {
      "deny": ["name"],
      "transform": [{"path": "birthDate", "transform": "generalize", "to": "birth-year"}]
    },
    "Account": {"deny": ["name"]},
    "Device": {"deny": ["udiCarrier", "serialNumber", "distinctIdentifier", "url"]},
    "ImagingStudy": {"deny": ["series.uid", "series.instance.uid"]},
    "Location": {"deny": ["position", "alias"]},
    "Endpoint": {"deny": ["address"]},
    "AuditEvent": {"deny": ["agent.network"]},
    "Coverage": {"deny": ["class", "dependent"]},
    "DocumentReference": {"deny": ["content"]},
    "Media": {"deny": ["content"]},
    "Binary": {"deny": ["data"]},
    "Communication": {"deny": ["payload"]},
    "CommunicationRequest": {"deny": ["payload"]}
  }
}"#;

/// The `safe-harbor` preset as a profile document.
pub fn safe_harbor() -> Result<ProfileDoc, String> {
    serde_json::from_str(SAFE_HARBOR).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minimize::compile::compile_rules;
    use crate::minimize::profile::BodyRules;

    #[test]
    fn safe_harbor_compiles() {
        let doc = safe_harbor().unwrap();
        let BodyRules::Fhir(f) = compile_rules(&doc, &crate::schema::ROOT.field("preset"), true).unwrap() else { panic!() };
        assert!(f.dates_to_year && f.remove_reference_display);
        assert!(f.rules_for("Observation").is_some());
        assert!(f.types["Patient"].root.matching("birthDate", None).next().is_some());
        assert!(f.types["Patient"].anywhere.matching("telecom", None).next().is_some());
    }
}
