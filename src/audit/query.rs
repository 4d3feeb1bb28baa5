//! What an audit event may say about a request's query string, and which patients the request
//! names.
//!
//! Only closed sets are written as they are. A parameter name is written part by part (parts
//! separated by `:` and `.`): its first part must be a FHIR R4 search parameter code (or a
//! result parameter such as `_count`), else the whole name is `?`; every later part must be a
//! search parameter, a modifier or a resource type, else that part is `?`
//! (`name:123-45-6789` → `name:?`, `ssn:123-45-6789` → `?`). Values are PHI until proven
//! otherwise: a value is kept only for result-shaping parameters, and only in the exact form
//! that parameter takes (`_count` digits, `_summary` codes, `_sort` naming search parameters,
//! `_elements` naming elements, `_include` naming real resource types and search parameters,
//! ...). Patient references (`patient=`, `subject=`, a Patient search's `_id`, ...) are
//! replaced by the patient's audit identifier (a pseudonym by default). Every other value
//! becomes `*`: `name=Smith&birthdate=1970-01-01` is recorded as `name=*&birthdate=*`.

use super::vocab::{is_element, is_modifier, is_search_parameter};
use crate::fhir::compartment::patient_params;
use crate::fhir::request::valid_id;
use crate::fhir::{resource_type, FhirRequest};

/// Most patients one event names; a request naming more is recorded with the first ones.
pub const MAX_PATIENTS: usize = 16;

/// Parameters that name a patient on any resource type (on top of the compartment table).
const ALWAYS_PATIENT_LINKS: [&str; 2] = ["patient", "subject"];

/// The audited form of a query and the patient ids it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditedQuery {
    /// `name=value&...` in request order with values redacted; `None` without parameters.
    pub normalized: Option<String>,
    /// Raw patient ids named by the request path or query, deduplicated, in order.
    pub patients: Vec<String>,
}

/// Audit `req` with its decoded `query`; `identify` turns a raw patient id into what the log
/// may carry (a pseudonym, or the id itself when the policy opts in).
pub fn audit_query(req: &FhirRequest, query: &[(String, String)], identify: &dyn Fn(&str) -> String) -> AuditedQuery {
    let mut out = AuditedQuery::default();
    if req.resource_type == Some("Patient") {
        if let Some(id) = &req.id {
            add_patient(&mut out.patients, id);
        }
    }
    if let Some(p) = &req.compartment_patient {
        add_patient(&mut out.patients, p);
    }
    let links = req.resource_type.map(patient_params).unwrap_or(&[]);
    let mut normalized = String::new();
    for (name, value) in query {
        if !normalized.is_empty() {
            normalized.push('&');
        }
        let known = push_name(&mut normalized, name);
        if !known {
            if !value.is_empty() {
                normalized.push_str("=*");
            }
            continue;
        }
        if value.is_empty() {
            continue;
        }
        normalized.push('=');
        let base = name.split(':').next().unwrap_or(name);
        let is_link =
            links.contains(&base) || ALWAYS_PATIENT_LINKS.contains(&base) || (req.resource_type == Some("Patient") && base == "_id");
        if is_link && !name.contains('.') {
            let mut first = true;
            for part in value.split(',') {
                if !first {
                    normalized.push(',');
                }
                first = false;
                match patient_reference(part) {
                    Some((typed, id)) => {
                        add_patient(&mut out.patients, id);
                        if typed {
                            normalized.push_str("Patient/");
                        }
                        normalized.push_str(&identify(id));
                    }
                    None => normalized.push('*'),
                }
            }
        } else if structural(base, value) {
            normalized.push_str(value);
        } else {
            normalized.push('*');
        }
    }
    if !query.is_empty() {
        out.normalized = Some(normalized);
    }
    out
}

fn add_patient(list: &mut Vec<String>, id: &str) {
    if list.len() < MAX_PATIENTS && !list.iter().any(|p| p == id) {
        list.push(id.to_owned());
    }
}

/// A patient reference as search parameters write it: `id`, `Patient/id`, an absolute URL
/// ending in `/Patient/id`, optionally with `/_history/v`. Returns whether it was typed, and
/// the id.
fn patient_reference(value: &str) -> Option<(bool, &str)> {
    let (typed, tail) = match value.rsplit_once("Patient/") {
        Some((prefix, tail)) if prefix.is_empty() || prefix.ends_with('/') => (true, tail),
        Some(_) => return None,
        None if !value.contains('/') => (false, value),
        None => return None,
    };
    let id = tail.split_once("/_history/").map_or(tail, |(t, _)| t);
    valid_id(id).then_some((typed, id))
}

/// Longest parameter name written part by part; a longer one is `?`.
const MAX_NAME: usize = 256;

/// Write the audited form of a parameter name (see the module docs); whether its first part is
/// a known search parameter (if not, only `?` was written).
fn push_name(out: &mut String, name: &str) -> bool {
    let mut parts = name.split([':', '.']);
    let base = parts.next().unwrap_or("");
    if name.len() > MAX_NAME || !is_search_parameter(base) {
        out.push('?');
        return false;
    }
    out.push_str(base);
    let mut rest = name.get(base.len()..).unwrap_or("");
    for part in parts {
        // `rest` starts with the separator of `part`.
        let sep = rest.chars().next().unwrap_or(':');
        out.push(sep);
        out.push_str(if is_search_parameter(part) || is_modifier(part) { part } else { "?" });
        rest = rest.get(1 + part.len()..).unwrap_or("");
    }
    true
}

/// A search parameter name, optionally `-`-prefixed (sort order).
fn sort_key(v: &str) -> bool {
    is_search_parameter(v.strip_prefix('-').unwrap_or(v))
}

/// Whether `value` is a result-shaping value of parameter `base`, in that parameter's own form.
fn structural(base: &str, value: &str) -> bool {
    let list = |ok: &dyn Fn(&str) -> bool| value.len() <= 256 && value.split(',').all(ok);
    let is_type = |t: &str| resource_type(t).is_some();
    match base {
        "_count" | "_offset" | "_getpagesoffset" => (1..=9).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit()),
        "_summary" => matches!(value, "true" | "false" | "text" | "data" | "count"),
        "_total" => matches!(value, "none" | "estimate" | "accurate"),
        "_pretty" => matches!(value, "true" | "false"),
        "_contained" => matches!(value, "true" | "false" | "both"),
        "_containedType" => matches!(value, "container" | "contained"),
        // `+` in a query decodes to a space.
        "_format" => matches!(
            value,
            "json"
                | "xml"
                | "ttl"
                | "html"
                | "application/json"
                | "application/xml"
                | "application/fhir+json"
                | "application/fhir json"
                | "application/fhir+xml"
                | "application/fhir xml"
                | "text/xml"
                | "text/html"
                | "text/turtle"
        ),
        "_sort" => list(&sort_key),
        "_elements" => list(&is_element),
        "_type" => list(&is_type),
        "_include" | "_revinclude" => {
            value == "*"
                || match value.split(':').collect::<Vec<_>>().as_slice() {
                    [t, p] => is_type(t) && (*p == "*" || is_search_parameter(p)),
                    [t, p, target] => is_type(t) && is_search_parameter(p) && is_type(target),
                    _ => false,
                }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::request::parse;
    use crate::http::normalize;

    fn run(method: &str, path: &str) -> AuditedQuery {
        let n = normalize(path).unwrap();
        let segs = n.segments.get(1..).unwrap().to_vec();
        let req = parse(method, &segs).unwrap();
        audit_query(&req, &n.query, &|id: &str| format!("<{id}>"))
    }

    #[test]
    fn values_are_redacted_unless_structural() {
        let q = run("GET", "/fhir/Patient?name=Smith&birthdate=1970-01-01&identifier=123-45-6789&_count=10&_sort=-date&_elements=id,meta");
        assert_eq!(q.normalized.as_deref(), Some("name=*&birthdate=*&identifier=*&_count=10&_sort=-date&_elements=id,meta"));
        assert!(q.patients.is_empty());
        let q = run("GET", "/fhir/Observation?code=http://loinc.org|1234-5&_include=Observation:patient&_format=application/fhir%2Bjson&_count=Smith%20John&_summary=John+Smith");
        assert_eq!(q.normalized.as_deref(), Some("code=*&_include=Observation:patient&_format=application/fhir+json&_count=*&_summary=*"));
        let q = run("GET", "/fhir/Observation?_format=Smith&_include=Smith:name&_include:iterate=Observation:subject:Patient&_revinclude=*&_type=Patient,Smith&_sort=-date,Smith&_elements=subject,code&_summary=count&_total=accurate");
        assert_eq!(q.normalized.as_deref(), Some("_format=*&_include=*&_include:iterate=Observation:subject:Patient&_revinclude=*&_type=*&_sort=*&_elements=subject,code&_summary=count&_total=accurate"));
        let q = run("GET", "/fhir/Observation?Smith=1&_Smith=x&name:exact=y");
        assert_eq!(q.normalized.as_deref(), Some("?=*&?=*&name:exact=*"));
    }

    #[test]
    fn patient_references_are_identified() {
        let q = run(
            "GET",
            "/fhir/Observation?patient=p1&subject=Patient/p2,https://x.test/fhir/Patient/p3/_history/4&performer=Practitioner/d1",
        );
        assert_eq!(q.normalized.as_deref(), Some("patient=<p1>&subject=Patient/<p2>,Patient/<p3>&performer=*"));
        assert_eq!(q.patients, ["p1", "p2", "p3"]);
        let q = run("GET", "/fhir/Observation?subject:Patient=p1&subject.name=Smith&patient=Group/g1&patient=p1");
        assert_eq!(q.normalized.as_deref(), Some("subject:Patient=<p1>&subject.name=*&patient=*&patient=<p1>"));
        assert_eq!(q.patients, ["p1"]);
        let q = run("GET", "/fhir/Patient?_id=p9");
        assert_eq!((q.normalized.as_deref(), q.patients.as_slice()), (Some("_id=<p9>"), &["p9".to_owned()][..]));
        let q = run("GET", "/fhir/Observation?_id=o1");
        assert_eq!(q.normalized.as_deref(), Some("_id=*"));
    }

    #[test]
    fn only_known_names_modifiers_and_chains_are_written() {
        let q = run(
            "GET",
            "/fhir/Observation?code=1&ssn:123-45-6789&John=1&code:123-45-6789=x&code:Smith&subject.John=1&subject:Patient.name:exact=x",
        );
        assert_eq!(q.normalized.as_deref(), Some("code=*&?&?=*&code:?=*&code:?&subject.?=*&subject:Patient.name:exact=*"));
        let q = run("GET", "/fhir/Patient?_has:Observation:patient:code=1234&_has:Smith:John:x=1&_lastUpdated=gt2020&flag&_include:iterate=Observation:patient");
        assert_eq!(
            q.normalized.as_deref(),
            Some("_has:Observation:patient:code=*&_has:?:?:?=*&_lastUpdated=*&?&_include:iterate=Observation:patient")
        );
        let long = format!("name:{}", "exact".repeat(60));
        assert_eq!(run("GET", &format!("/fhir/Patient?{long}=x")).normalized.as_deref(), Some("?=*"));
    }

    #[test]
    fn result_parameters_name_only_known_names() {
        let q = run("GET", "/fhir/Patient?_elements=John&_elements=id,birthDate&_sort=Smith&_sort=-birthdate,name&_include=Smith:John&_include=Patient:John&_include=Patient:general-practitioner:Practitioner&_revinclude=Observation:subject");
        assert_eq!(
            q.normalized.as_deref(),
            Some("_elements=*&_elements=id,birthDate&_sort=*&_sort=-birthdate,name&_include=*&_include=*&_include=Patient:general-practitioner:Practitioner&_revinclude=Observation:subject")
        );
    }

    #[test]
    fn path_patients_and_odd_names() {
        let q = run("GET", "/fhir/Patient/p7");
        assert_eq!((q.normalized, q.patients), (None, vec!["p7".to_owned()]));
        let q = run("GET", "/fhir/Patient/p7/Observation?category=vital-signs");
        assert_eq!((q.normalized.as_deref(), q.patients.as_slice()), (Some("category=*"), &["p7".to_owned()][..]));
        let q = run("GET", "/fhir/Observation?John%20Smith=1&flag&a%3Db=c");
        assert_eq!(q.normalized.as_deref(), Some("?=*&?&?=*"));
        let many: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        let q = run("GET", &format!("/fhir/Observation?patient={}", many.join(",")));
        assert_eq!(q.patients.len(), MAX_PATIENTS);
    }
}
