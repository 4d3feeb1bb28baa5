//! The event as a FHIR R4 `AuditEvent` following IHE BALP: the RESTful read and query patterns
//! for allowed requests (claiming `IHE.BasicAudit.[Patient]Read` / `[Patient]Query` when they
//! succeed) and the security-alert pattern (DICOM 110113) for refusals.
//!
//! phi-guard's own fields ride in `extension` (URLs [`EXT`]`<name>`, each published as a
//! StructureDefinition in `docs/fhir/`), which is always the last member so that the chain can
//! append its `mac` extension to the exact bytes it sealed (see [`super::chain`]).
//!
//! BALP conformance: the `Patient*` profiles are claimed only when the event names exactly one
//! patient (a search for `patient=a,b` claims plain `Query`); withheld paths ride in an
//! extension on the data or query entity (BALP's query entity allows no `detail`); a purpose of
//! use is written in `v3-ActReason` only when it is a `v3-PurposeOfUse` code, else in
//! [`PURPOSE_SYSTEM`].

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::event::{AuditEvent, EventOutcome, Verdict};
use crate::audit_key::PatientIds;
use crate::auth::purpose::{is_emergency, is_purpose_of_use};
use crate::fhir::Interaction;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const SECURITY_ROLE: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const OBSERVATION_VALUE: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
const BALP_ENTITY: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const BALP_USER_AGENT: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes";
const BALP_AUTHZ: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType";
const BALP_PROFILE: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
/// Identifier system of patient pseudonyms.
pub const PSEUDONYM_SYSTEM: &str = "urn:phi-guard:patient-pseudonym";
/// Identifier system of pseudonyms of other resources' ids (the reference's `type` says which).
pub const RESOURCE_PSEUDONYM_SYSTEM: &str = "urn:phi-guard:resource-pseudonym";
/// Identifier system of token subject pseudonyms.
pub const SUBJECT_PSEUDONYM_SYSTEM: &str = "urn:phi-guard:subject-pseudonym";
/// Prefix of token `jti` pseudonyms (an OAuth `jti` URN names the raw value).
pub const JTI_PSEUDONYM_PREFIX: &str = "urn:phi-guard:jti-pseudonym:";
/// Canonical base of phi-guard's FHIR conformance artifacts (StructureDefinitions in `docs/fhir/`).
pub const CANONICAL: &str = "https://phi-guard.dev/fhir/StructureDefinition/";
/// Prefix of every phi-guard extension URL: [`CANONICAL`] + `audit-` + the extension's name.
pub const EXT: &str = "https://phi-guard.dev/fhir/StructureDefinition/audit-";
/// Prefix of the extension URLs of earlier releases, which the verifier still reads.
pub const LEGACY_EXT: &str = "urn:phi-guard:audit:";
/// Code system of a stated purpose of use that is not a `v3-PurposeOfUse` code (the event
/// records it as `invalid`), so that it is never written as a `v3-ActReason` code.
pub const PURPOSE_SYSTEM: &str = "urn:phi-guard:purpose-of-use";
/// Code system of phi-guard reason codes (as in refusal bodies).
pub const REASON_SYSTEM: &str = "urn:phi-guard:reason";

// Borrowed, typed FHIR elements: serialized straight to text, member order as declared.

#[derive(Serialize)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

const fn coding<'a>(system: &'a str, code: &'a str, display: &'a str) -> Coding<'a> {
    Coding { system, code, display: Some(display) }
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: [Coding<'a>; 1],
}

#[derive(Serialize)]
struct Meta {
    profile: [String; 1],
}

#[derive(Serialize)]
struct Identifier<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    value: Cow<'a, str>,
}

#[derive(Serialize, Default)]
struct Reference<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identifier: Option<Identifier<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

#[derive(Serialize)]
struct Network<'a> {
    address: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Agent<'a> {
    #[serde(rename = "type")]
    kind: Concept<'a>,
    who: Reference<'a>,
    requestor: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policy: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purpose_of_use: Vec<Concept<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network<'a>>,
}

#[derive(Serialize)]
struct Source<'a> {
    observer: Reference<'a>,
    #[serde(rename = "type")]
    kind: [Coding<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entity<'a> {
    /// Withheld paths (`withheld-path`): BALP's query entity allows no `detail`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extension: Vec<Extension<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<Reference<'a>>,
    #[serde(rename = "type")]
    kind: Coding<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    security_label: Vec<Coding<'a>>,
}

/// A simple extension: `{"url": EXT + name, "value[x]": ...}`.
struct Extension<'a> {
    name: &'static str,
    value: ExtValue<'a>,
}

enum ExtValue<'a> {
    String(&'a str),
    Code(&'a str),
    Integer(u16),
    Decimal(u64),
    /// A restriction that applied: complex extension with `id` and `count`.
    Restriction(&'a str, usize),
}

#[derive(Serialize)]
struct SubExtension<'a> {
    url: &'static str,
    #[serde(rename = "valueString", skip_serializing_if = "Option::is_none")]
    string: Option<&'a str>,
    #[serde(rename = "valueUnsignedInt", skip_serializing_if = "Option::is_none")]
    count: Option<usize>,
}

impl Serialize for Extension<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("url", &format_args!("{EXT}{}", self.name))?;
        match self.value {
            ExtValue::String(v) => m.serialize_entry("valueString", v)?,
            ExtValue::Code(v) => m.serialize_entry("valueCode", v)?,
            ExtValue::Integer(v) => m.serialize_entry("valueInteger", &v)?,
            ExtValue::Decimal(v) => m.serialize_entry("valueDecimal", &v)?,
            ExtValue::Restriction(id, count) => m.serialize_entry(
                "extension",
                &[
                    SubExtension { url: "id", string: Some(id), count: None },
                    SubExtension { url: "count", string: None, count: Some(count) },
                ],
            )?,
        }
        m.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Resource<'a> {
    resource_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Meta>,
    #[serde(rename = "type")]
    kind: Coding<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    subtype: Vec<Coding<'a>>,
    action: &'static str,
    recorded: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purpose_of_event: Vec<Concept<'a>>,
    agent: Vec<Agent<'a>>,
    source: Source<'a>,
    /// Absent rather than `[]` (FHIR JSON has no empty arrays) for a request with nothing to name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entity: Vec<Entity<'a>>,
    /// Always last: the chain appends its `mac` extension here.
    extension: Vec<Extension<'a>>,
}

/// How the interaction moves data, which decides the BALP agent roles and the action code.
fn action(ev: &AuditEvent) -> &'static str {
    use Interaction::*;
    match ev.interaction {
        Some(Read | Vread | HistoryInstance | HistoryType | HistorySystem) => "R",
        Some(Create) => "C",
        Some(Update | Patch) => "U",
        Some(Delete) => "D",
        Some(_) => "E",
        None => match ev.method.as_str() {
            "GET" | "HEAD" => "R",
            "POST" => "C",
            "PUT" | "PATCH" => "U",
            "DELETE" => "D",
            _ => "E",
        },
    }
}

fn outcome_code(o: EventOutcome) -> &'static str {
    match o {
        EventOutcome::Success => "0",
        EventOutcome::MinorFailure => "4",
        EventOutcome::SeriousFailure => "8",
        EventOutcome::MajorFailure => "12",
    }
}

/// Whether the event carries raw ids (the policy opted in), not pseudonyms.
fn raw(ev: &AuditEvent) -> bool {
    ev.patient_ids == PatientIds::Raw
}

/// The token's `jti` as a URN: the OAuth one for a raw value, phi-guard's for a pseudonym.
fn jti_urn(ev: &AuditEvent, jti: &str) -> String {
    if raw(ev) {
        format!("urn:ietf:params:oauth:jti:{jti}")
    } else {
        format!("{JTI_PSEUDONYM_PREFIX}{jti}")
    }
}

/// A reference to a patient as the log may name it.
fn patient_ref<'a>(ev: &AuditEvent, id: &'a str) -> Reference<'a> {
    if raw(ev) {
        Reference { reference: Some(format!("Patient/{id}")), ..Reference::default() }
    } else {
        Reference {
            kind: Some("Patient"),
            identifier: Some(Identifier { system: Some(PSEUDONYM_SYSTEM), value: Cow::Borrowed(id) }),
            ..Reference::default()
        }
    }
}

/// Render the event (without the chain's `mac`) as a FHIR R4 AuditEvent in compact JSON, with
/// `extension` as the last member.
pub fn render(ev: &AuditEvent, stream: &str, seq: u64, observer: &str) -> Result<String, serde_json::Error> {
    render_with(ev, Some((stream, seq)), observer)
}

/// [`render`] outside any chain (no `stream`, `seq` or `mac`): what the filter would log for the
/// event, as the simulator shows it.
pub fn render_unchained(ev: &AuditEvent, observer: &str) -> Result<String, serde_json::Error> {
    render_with(ev, None, observer)
}

fn render_with(ev: &AuditEvent, chain: Option<(&str, u64)>, observer: &str) -> Result<String, serde_json::Error> {
    let denied = ev.decision == Verdict::Deny;
    let action = if denied { "E" } else { action(ev) };
    // BALP's Patient* profiles allow exactly one patient entity: with none or several, the plain
    // profile (whose open entity slicing admits the patient entities) is claimed instead.
    let one_patient = patients(ev).count() == 1;
    let profile = match (ev.outcome, ev.interaction, one_patient) {
        (EventOutcome::Success, Some(Interaction::Read | Interaction::Vread), true) => Some("PatientRead"),
        (EventOutcome::Success, Some(Interaction::Read | Interaction::Vread), false) => Some("Read"),
        (EventOutcome::Success, Some(Interaction::SearchType | Interaction::SearchSystem), true) => Some("PatientQuery"),
        (EventOutcome::Success, Some(Interaction::SearchType | Interaction::SearchSystem), false) => Some("Query"),
        _ => None,
    };
    let interaction = ev.interaction.map(|i| coding(RESTFUL, i.name(), i.name()));
    let (kind, subtype) = if denied {
        let mut sub: Vec<Coding<'_>> = interaction.into_iter().collect();
        if ev.status == Some(403) {
            sub.push(coding(BALP_AUTHZ, "AuthZ-Role", "Authorization Decision using only Roles"));
        }
        sub.push(Coding { system: REASON_SYSTEM, code: ev.reason.code(), display: None });
        (coding(DCM, "110113", "Security Alert"), sub)
    } else {
        (coding(EVENT_TYPE, "rest", "Restful Operation"), interaction.into_iter().collect())
    };
    let outcome_desc = match (denied, ev.status) {
        (true, _) => ev.reason.refusal().map(|r| Cow::Borrowed(r.message())),
        _ if ev.outcome == EventOutcome::Success => None,
        (false, Some(s)) => Some(Cow::Owned(format!("the upstream answered {s}"))),
        (false, None) => Some(Cow::Borrowed("the upstream did not answer")),
    };
    let resource = Resource {
        resource_type: "AuditEvent",
        meta: profile.map(|p| Meta { profile: [format!("{BALP_PROFILE}{p}")] }),
        kind,
        subtype,
        action,
        recorded: &ev.time,
        outcome: outcome_code(ev.outcome),
        outcome_desc,
        purpose_of_event: purpose_of_event(ev),
        agent: agents(ev, denied, action, observer),
        source: Source {
            observer: Reference { display: Some(observer), ..Reference::default() },
            kind: [coding(SOURCE_TYPE, "6", "Security Server")],
        },
        entity: entities(ev),
        extension: extensions(ev, chain),
    };
    serde_json::to_string(&resource)
}

/// Emergency access (break-glass or an emergency purpose): the event's purpose is emergency
/// treatment, so an auditor can find every break-glass event by `purposeOfEvent`.
fn purpose_of_event(ev: &AuditEvent) -> Vec<Concept<'_>> {
    let mut out: Vec<Concept<'_>> = ev
        .purpose_of_use
        .iter()
        .filter(|p| is_emergency(p))
        .map(|p| Concept { coding: [Coding { system: ACT_REASON, code: p, display: (p == "ETREAT").then_some("Emergency Treatment") }] })
        .collect();
    if ev.break_glass.is_some() && !ev.purpose_of_use.iter().any(|p| p == "ETREAT") {
        out.insert(0, Concept { coding: [coding(ACT_REASON, "ETREAT", "Emergency Treatment")] });
    }
    out
}

/// A stated purpose of use: a `v3-PurposeOfUse` code in `v3-ActReason`, anything else (the event
/// writes `invalid`) in [`PURPOSE_SYSTEM`], never mislabelled as an HL7 code.
fn purpose_coding(code: &str) -> Coding<'_> {
    let system = if is_purpose_of_use(code) { ACT_REASON } else { PURPOSE_SYSTEM };
    Coding { system, code, display: None }
}

/// The patients the event names: those requested, then the token's context patient when it is
/// not one of them. One patient entity each.
fn patients(ev: &AuditEvent) -> impl Iterator<Item = &String> {
    let context_only = ev.context_patient.as_ref().filter(|cp| !ev.patients.contains(cp));
    ev.patients.iter().chain(context_only)
}

fn agents<'a>(ev: &'a AuditEvent, denied: bool, action: &str, observer: &'a str) -> Vec<Agent<'a>> {
    // DICOM/BALP name the party the data flows *to* the destination: the client on reads, the
    // server on queries and writes.
    let (client_role, server_role) = if denied {
        (coding(DCM, "110150", "Application"), coding(SECURITY_ROLE, "authserver", "authorization server"))
    } else if action == "R" {
        (coding(DCM, "110152", "Destination Role ID"), coding(DCM, "110153", "Source Role ID"))
    } else {
        (coding(DCM, "110153", "Source Role ID"), coding(DCM, "110152", "Destination Role ID"))
    };
    let has_user = ev.subject.is_some();
    let purpose = || ev.purpose_of_use.iter().map(|p| Concept { coding: [purpose_coding(p)] }).collect();
    let policy = || ev.token_id.iter().map(|j| jti_urn(ev, j)).collect();
    let client = Agent {
        kind: Concept { coding: [client_role] },
        who: match &ev.client_id {
            Some(c) => Reference {
                kind: Some("Device"),
                identifier: Some(Identifier { system: None, value: Cow::Borrowed(c) }),
                ..Reference::default()
            },
            None => Reference { display: Some("unauthenticated client"), ..Reference::default() },
        },
        requestor: !has_user,
        policy: if has_user { Vec::new() } else { policy() },
        purpose_of_use: if has_user { Vec::new() } else { purpose() },
        network: ev.source.as_deref().map(|a| Network { address: a, kind: "2" }),
    };
    let server = Agent {
        kind: Concept { coding: [server_role] },
        who: Reference { display: Some(observer), ..Reference::default() },
        requestor: false,
        policy: Vec::new(),
        purpose_of_use: Vec::new(),
        network: Some(match &ev.destination {
            Some(a) => Network { address: a, kind: "2" },
            None => Network { address: observer, kind: "1" },
        }),
    };
    let mut out = vec![client, server];
    if let Some(sub) = &ev.subject {
        let role = match action {
            "C" | "U" if !denied => coding(PARTICIPATION, "AUT", "author"),
            _ => coding(PARTICIPATION, "IRCP", "information recipient"),
        };
        out.push(Agent {
            kind: Concept { coding: [role] },
            who: Reference {
                identifier: Some(Identifier {
                    system: if raw(ev) { ev.issuer.as_deref() } else { Some(SUBJECT_PSEUDONYM_SYSTEM) },
                    value: Cow::Borrowed(sub),
                }),
                ..Reference::default()
            },
            requestor: true,
            policy: policy(),
            purpose_of_use: purpose(),
            network: None,
        });
    }
    out
}

fn entities(ev: &AuditEvent) -> Vec<Entity<'_>> {
    let entity = |what, kind, role| Entity {
        extension: Vec::new(),
        what,
        kind,
        role,
        name: None,
        description: None,
        query: None,
        security_label: Vec::new(),
    };
    let mut out = Vec::new();
    if let Some(id) = &ev.request_id {
        let what = Reference { identifier: Some(Identifier { system: None, value: Cow::Borrowed(id) }), ..Reference::default() };
        out.push(entity(Some(what), Coding { system: BALP_ENTITY, code: "XrequestId", display: None }, None));
    }
    let context_only = ev.context_patient.as_ref().filter(|cp| !ev.patients.contains(cp));
    for id in ev.patients.iter().chain(context_only) {
        let mut e = entity(Some(patient_ref(ev, id)), coding(ENTITY_TYPE, "1", "Person"), Some(coding(OBJECT_ROLE, "1", "Patient")));
        if context_only == Some(id) {
            e.description = Some(Cow::Borrowed("patient in the token's launch context"));
        }
        out.push(e);
    }
    let search = matches!(ev.interaction, Some(Interaction::SearchType | Interaction::SearchSystem));
    let data = if search {
        let text = format!("{}?{}", ev.resource_type.unwrap_or(""), ev.query.as_deref().unwrap_or(""));
        let mut e = entity(None, coding(ENTITY_TYPE, "2", "System Object"), Some(coding(OBJECT_ROLE, "24", "Query")));
        e.query = Some(STANDARD.encode(text.as_bytes()));
        e.description = Some(Cow::Owned(text));
        Some(e)
    } else {
        ev.resource_type.map(|ty| {
            let what = match (&ev.resource_id, ty) {
                (Some(id), "Patient") => patient_ref(ev, id),
                (Some(id), _) if raw(ev) => Reference { reference: Some(format!("{ty}/{id}")), ..Reference::default() },
                (Some(id), _) => Reference {
                    kind: Some(ty),
                    identifier: Some(Identifier { system: Some(RESOURCE_PSEUDONYM_SYSTEM), value: Cow::Borrowed(id) }),
                    ..Reference::default()
                },
                (None, _) => Reference { kind: Some(ty), ..Reference::default() },
            };
            let mut e = entity(Some(what), coding(ENTITY_TYPE, "2", "System Object"), Some(coding(OBJECT_ROLE, "4", "Domain Resource")));
            e.name = ev.operation.as_ref().map(|op| format!("${op}"));
            e.description = ev.query.as_ref().map(|q| Cow::Owned(format!("{ty}?{q}")));
            e
        })
    };
    if let Some(mut e) = data {
        if !ev.withheld.is_empty() {
            e.security_label = vec![coding(OBSERVATION_VALUE, "REDACTED", "redacted")];
            e.extension = ev.withheld.iter().map(|p| Extension { name: "withheld-path", value: ExtValue::String(p) }).collect();
        }
        out.push(e);
    }
    if let Some(j) = &ev.token_id {
        let what = Reference { identifier: Some(Identifier { system: None, value: Cow::Owned(jti_urn(ev, j)) }), ..Reference::default() };
        out.push(entity(Some(what), Coding { system: BALP_USER_AGENT, code: "UserOauthAgent", display: None }, None));
    }
    out
}

fn extensions<'a>(ev: &'a AuditEvent, chain: Option<(&'a str, u64)>) -> Vec<Extension<'a>> {
    let e = |name, value| Extension { name, value };
    let mut out = Vec::with_capacity(11);
    if let Some(p) = &ev.policy {
        out.push(e("policy", ExtValue::String(p)));
    }
    if let Some(p) = &ev.policy_revision {
        out.push(e("policy-revision", ExtValue::String(p)));
    }
    if let Some(r) = &ev.route {
        out.push(e("route", ExtValue::String(r)));
    }
    out.push(e("method", ExtValue::Code(&ev.method)));
    out.push(e("reason", ExtValue::Code(ev.reason.code())));
    out.push(e("severity", ExtValue::Code(ev.severity.name())));
    if let Some(st) = ev.status {
        out.push(e("status", ExtValue::Integer(st)));
    }
    if let Some(st) = ev.upstream_status {
        out.push(e("upstream-status", ExtValue::Integer(st)));
    }
    out.push(e("patient-identifiers", ExtValue::Code(ev.patient_ids.name())));
    if let Some(reason) = &ev.break_glass {
        out.push(e("break-glass", ExtValue::Code(reason)));
    }
    for r in &ev.restrictions {
        out.push(e("restriction", ExtValue::Restriction(&r.id, r.count)));
    }
    if let Some(d) = &ev.content_digest {
        out.push(e("content-digest", ExtValue::String(d)));
    }
    if let Some((stream, seq)) = chain {
        out.push(e("stream", ExtValue::String(stream)));
        out.push(e("seq", ExtValue::Decimal(seq)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{audit_key as key, event, policy, token};
    use serde_json::{json, Value};

    fn render(ev: &AuditEvent, stream: &str, seq: u64, observer: &str) -> Value {
        serde_json::from_str(&super::render(ev, stream, seq, observer).unwrap()).unwrap()
    }

    fn codes(v: &Value) -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|c| c["code"].as_str().map(str::to_owned)).collect()
    }

    fn entity<'a>(r: &'a Value, role: &str) -> Option<&'a Value> {
        r["entity"].as_array()?.iter().find(|e| e["role"]["code"] == role)
    }

    fn agent<'a>(r: &'a Value, code: &str) -> Option<&'a Value> {
        r["agent"].as_array()?.iter().find(|a| a["type"]["coding"][0]["code"] == code)
    }

    /// The elements GUIDE.md §4 and the BALP Read/Query profiles require.
    fn assert_balp_core(r: &Value) {
        assert_eq!(r["resourceType"], "AuditEvent");
        assert!(r["type"]["system"].is_string() && r["type"]["code"].is_string());
        assert!(!codes(&r["subtype"]).is_empty(), "subtype");
        assert!(["R", "E", "C", "U", "D"].contains(&r["action"].as_str().unwrap()));
        assert!(r["recorded"].as_str().unwrap().ends_with('Z'));
        assert!(r["outcome"].is_string());
        let agents = r["agent"].as_array().unwrap();
        assert!(agents.len() >= 2);
        assert!(agents.iter().all(|a| a["requestor"].is_boolean() && a["who"].is_object() && a["type"]["coding"][0]["code"].is_string()));
        let requestor = agents.iter().find(|a| a["requestor"] == true).expect("a requestor agent");
        assert!(requestor["who"]["identifier"]["value"].is_string());
        assert!(agents.iter().any(|a| a["network"]["address"].is_string() && a["network"]["type"].is_string()), "client network");
        assert!(r["source"]["observer"]["display"].is_string());
        let patient = entity(r, "1").expect("patient entity");
        assert_eq!((patient["type"]["system"].as_str(), patient["type"]["code"].as_str()), (Some(ENTITY_TYPE), Some("1")));
        assert_eq!(patient["what"]["type"], "Patient");
        assert_eq!(patient["what"]["identifier"]["system"], PSEUDONYM_SYSTEM);
        let tx = r["entity"].as_array().unwrap().iter().find(|e| e["type"]["code"] == "XrequestId").expect("transaction");
        assert!(tx["what"]["identifier"]["value"].is_string());
        assert_eq!(r["extension"].as_array().unwrap().last().unwrap()["url"], format!("{EXT}seq"), "extension last, seq last");
    }

    #[test]
    fn balp_patient_read() {
        let p = policy("smart-patient-app");
        let ev =
            event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({"purpose_of_use": ["TREAT"]})))).with_response(200, vec![], None);
        let r = render(&ev, "s1", 7, "phi-guard");
        assert_balp_core(&r);
        assert_eq!(r["meta"]["profile"][0], "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead");
        assert_eq!((r["type"]["code"].as_str(), codes(&r["subtype"])), (Some("rest"), vec!["read".to_owned()]));
        assert_eq!((r["action"].as_str(), r["outcome"].as_str()), (Some("R"), Some("0")));
        let client = agent(&r, "110152").expect("client is the destination on a read");
        assert_eq!(
            (client["who"]["identifier"]["value"].as_str(), client["network"]["address"].as_str(), client["network"]["type"].as_str()),
            (Some("app"), Some("10.1.2.3"), Some("2"))
        );
        let server = agent(&r, "110153").expect("server");
        assert!(server["network"]["address"].is_string());
        let user = agent(&r, "IRCP").expect("user");
        let k = key();
        assert_eq!(
            (user["requestor"].as_bool(), user["who"]["identifier"]["value"].as_str()),
            (Some(true), Some(k.pseudonym_of("sub", "u1").as_str()))
        );
        assert_eq!(user["who"]["identifier"]["system"], SUBJECT_PSEUDONYM_SYSTEM);
        assert_eq!(user["purposeOfUse"][0]["coding"][0]["code"], "TREAT");
        assert_eq!(user["policy"][0], format!("{JTI_PSEUDONYM_PREFIX}{}", k.pseudonym_of("jti", "j1")));
        let data = entity(&r, "4").expect("data entity");
        assert_eq!((data["type"]["code"].as_str(), data["what"]["type"].as_str()), (Some("2"), Some("Observation")));
        assert_eq!(data["what"]["identifier"], json!({"system": RESOURCE_PSEUDONYM_SYSTEM, "value": k.pseudonym_of("Observation", "o1")}));
        assert_eq!(entity(&r, "1").unwrap()["what"]["identifier"]["value"], key().pseudonym("p1"));
    }

    #[test]
    fn balp_patient_query() {
        let p = policy("smart-patient-app");
        let ev = event(&p, "GET", "/fhir/Observation?patient=p1&code=1234-5", Some(&token(json!({})))).with_response(
            200,
            vec!["Observation.note".into()],
            None,
        );
        let r = render(&ev, "s1", 0, "phi-guard");
        assert_balp_core(&r);
        assert_eq!(r["meta"]["profile"][0], "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientQuery");
        assert_eq!((codes(&r["subtype"]), r["action"].as_str()), (vec!["search-type".to_owned()], Some("E")));
        assert!(agent(&r, "110153").is_some_and(|c| c["who"]["identifier"]["value"] == "app"), "client is the source on a query");
        assert!(agent(&r, "110152").is_some());
        let q = entity(&r, "24").expect("query entity");
        assert!(q.get("what").is_none(), "BALP: query entity has no `what`");
        let text = format!("Observation?patient={}&code=*", key().pseudonym("p1"));
        assert_eq!(q["query"].as_str().unwrap(), STANDARD.encode(&text));
        assert_eq!(q["description"], text);
        assert_eq!(q["securityLabel"][0]["code"], "REDACTED");
        assert!(q.get("detail").is_none(), "BALP: query entity has no `detail`");
        assert_eq!(q["extension"], json!([{"url": format!("{EXT}withheld-path"), "valueString": "Observation.note"}]));
    }

    /// BALP's Patient* profiles allow exactly one patient: a search naming several claims `Query`.
    #[test]
    fn several_patients_claim_the_plain_profiles() {
        let p = policy("clinician-api");
        let t = token(json!({"patient": null, "scp": ["user/Observation.rs"], "scope": null, "purpose_of_use": ["TREAT", "JohnSmith"]}));
        let ev = event(&p, "GET", "/fhir/Observation?patient=p1,p2", Some(&t)).with_response(200, vec!["Observation.note".into()], None);
        let r = render(&ev, "s1", 0, "phi-guard");
        assert_eq!(r["meta"]["profile"][0], format!("{BALP_PROFILE}Query"));
        let patients: Vec<&Value> = r["entity"].as_array().unwrap().iter().filter(|e| e["role"]["code"] == "1").collect();
        assert_eq!(patients.len(), 2);
        assert_eq!(entity(&r, "24").unwrap()["extension"][0]["valueString"], "Observation.note");
        let one = event(&p, "GET", "/fhir/Observation?patient=p1", Some(&t)).with_response(200, vec![], None);
        assert_eq!(render(&one, "s1", 1, "o")["meta"]["profile"][0], format!("{BALP_PROFILE}PatientQuery"));
        let none = event(&p, "GET", "/fhir/Observation?code=1", Some(&t)).with_response(200, vec![], None);
        assert_eq!(render(&none, "s1", 2, "o")["meta"]["profile"][0], format!("{BALP_PROFILE}Query"));
        let read = event(&p, "GET", "/fhir/Observation/o1", Some(&t)).with_response(200, vec!["Observation.note".into()], None);
        let r = render(&read, "s1", 3, "o");
        assert_eq!(r["meta"]["profile"][0], format!("{BALP_PROFILE}Read"));
        assert_eq!(entity(&r, "4").unwrap()["extension"][0]["url"], format!("{EXT}withheld-path"));
    }

    /// Purposes of use: `v3-PurposeOfUse` codes in `v3-ActReason`, anything else never so.
    #[test]
    fn unknown_purposes_are_not_hl7_codes() {
        let p = policy("clinician-api");
        let t = token(
            json!({"patient": null, "scp": ["user/Observation.rs"], "scope": null, "purpose_of_use": ["TREAT", "JohnSmith", "treat"]}),
        );
        let r = render(&event(&p, "GET", "/fhir/Observation/o1", Some(&t)).with_response(200, vec![], None), "s", 0, "o");
        let purposes: Vec<(&str, &str)> = agent(&r, "IRCP").unwrap()["purposeOfUse"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["coding"][0]["system"].as_str().unwrap(), c["coding"][0]["code"].as_str().unwrap()))
            .collect();
        assert_eq!(purposes, [(ACT_REASON, "TREAT"), (PURPOSE_SYSTEM, "invalid"), (PURPOSE_SYSTEM, "invalid")]);
        for code in crate::auth::purpose::PURPOSE_OF_USE {
            assert_eq!(purpose_coding(code).system, ACT_REASON);
        }
        assert_eq!(purpose_coding("PurposeOfUse").system, PURPOSE_SYSTEM, "the value set's abstract root");
    }

    /// Every extension URL the renderer and the chain can write (with the value type written) has
    /// its StructureDefinition in `docs/fhir/`, and every file there is one of them.
    #[test]
    fn extensions_are_published() {
        use crate::audit::chain::AuditChain;
        use std::collections::BTreeMap;

        assert!(EXT.starts_with(CANONICAL) && EXT.starts_with("https://"));
        let mut p = policy("smart-patient-app");
        p.audit.format = crate::policy::audit::AuditFormat::Fhir;
        let t = token(json!({"purpose_of_use": ["ETREAT"]}));
        let mut full = event(&p, "GET", "/fhir/Observation?patient=p1", Some(&t))
            .with_response(200, vec!["Observation.note".into()], None)
            .with_restrictions(vec![crate::minimize::restrict::RestrictionHit { id: "r1".into(), count: 2 }])
            .with_content_digest("sha-256=:AAAA:".into());
        full.policy_revision = Some("rev".into());
        full.route = Some("fhir".into());
        full.upstream_status = Some(200);
        full.break_glass = Some("life-threatening".into());
        let mut chain = AuditChain::new([1; 16], key());
        let mut emitted: BTreeMap<String, String> = BTreeMap::new();
        for ev in [full, event(&p, "GET", "/fhir/Patient/p2", Some(&t)), event(&p, "GET", "/fhir/Patient/p1", None)] {
            let line: Value = serde_json::from_str(&chain.seal(&ev, &p.audit).line).unwrap();
            let mut exts: Vec<&Value> = line["extension"].as_array().unwrap().iter().collect();
            exts.extend(line["entity"].as_array().unwrap().iter().flat_map(|e| e["extension"].as_array().into_iter().flatten()));
            for x in exts {
                let url = x["url"].as_str().unwrap().to_owned();
                let kind = x.as_object().unwrap().keys().find_map(|k| k.strip_prefix("value")).unwrap_or("complex").to_owned();
                let parts: Vec<String> = x["extension"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        let k = s.as_object().unwrap().keys().find_map(|k| k.strip_prefix("value")).unwrap();
                        format!("{}:{}", s["url"].as_str().unwrap(), k)
                    })
                    .collect();
                let kind = if parts.is_empty() { kind } else { format!("{kind}({})", parts.join(",")) };
                assert_eq!(emitted.insert(url.clone(), kind.clone()).unwrap_or_else(|| kind.clone()), kind, "{url}: one value type");
            }
        }
        assert_eq!(emitted.len(), 16, "every extension is exercised: {emitted:?}");
        // FHIR type codes are the `value[x]` suffixes with a lower-case first letter.
        let type_code = |k: &str| {
            let mut c = k.chars();
            c.next().map(|f| f.to_ascii_lowercase().to_string() + c.as_str()).unwrap()
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fhir");
        let mut published = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.starts_with("StructureDefinition-") {
                published.push(name);
            }
        }
        published.sort();
        let mut expected: Vec<String> =
            emitted.keys().map(|u| format!("StructureDefinition-{}.json", u.strip_prefix(CANONICAL).unwrap())).collect();
        expected.sort();
        assert_eq!(published, expected, "one StructureDefinition per emitted extension, none stale");
        for (url, kind) in &emitted {
            let id = url.strip_prefix(CANONICAL).unwrap();
            let sd: Value = serde_json::from_slice(&std::fs::read(dir.join(format!("StructureDefinition-{id}.json"))).unwrap()).unwrap();
            assert_eq!(
                (sd["resourceType"].as_str(), sd["id"].as_str(), sd["url"].as_str()),
                (Some("StructureDefinition"), Some(id), Some(url.as_str()))
            );
            assert_eq!(
                (sd["kind"].as_str(), sd["type"].as_str(), sd["derivation"].as_str(), sd["fhirVersion"].as_str()),
                (Some("complex-type"), Some("Extension"), Some("constraint"), Some("4.0.1"))
            );
            assert_eq!(sd["baseDefinition"], "http://hl7.org/fhir/StructureDefinition/Extension");
            let context = if id == "audit-withheld-path" { "AuditEvent.entity" } else { "AuditEvent" };
            assert_eq!(sd["context"], json!([{"type": "element", "expression": context}]), "{id}");
            let elements = sd["differential"]["element"].as_array().unwrap();
            let element = |eid: &str| elements.iter().find(|e| e["id"] == eid).unwrap_or_else(|| panic!("{id}: no {eid}"));
            assert_eq!(element("Extension.url")["fixedUri"], url.as_str());
            match kind.split_once('(') {
                None => assert_eq!(element("Extension.value[x]")["type"], json!([{"code": type_code(kind)}]), "{id}"),
                Some((_, parts)) => {
                    assert_eq!(element("Extension.value[x]")["max"], "0", "{id}: complex");
                    for part in parts.trim_end_matches(')').split(',') {
                        let (sub, k) = part.split_once(':').unwrap();
                        assert_eq!(element(&format!("Extension.extension:{sub}.url"))["fixedUri"], sub);
                        let v = element(&format!("Extension.extension:{sub}.value[x]"));
                        assert_eq!(v["type"], json!([{"code": type_code(k)}]), "{id}: {sub}");
                    }
                }
            }
        }
    }

    #[test]
    fn security_alert_for_denials() {
        let p = policy("smart-patient-app");
        let ev = event(&p, "GET", "/fhir/Observation?patient=p2", Some(&token(json!({}))));
        let r = render(&ev, "s1", 3, "phi-guard");
        assert!(r.get("meta").is_none(), "no success profile is claimed");
        assert_eq!((r["type"]["system"].as_str(), r["type"]["code"].as_str()), (Some(DCM), Some("110113")));
        assert_eq!(codes(&r["subtype"]), ["search-type", "AuthZ-Role", "patient_mismatch"]);
        assert_eq!((r["action"].as_str(), r["outcome"].as_str()), (Some("E"), Some("8")));
        assert_eq!(r["outcomeDesc"], crate::decision::DenyReason::PatientMismatch.message());
        assert!(agent(&r, "110150").is_some() && agent(&r, "authserver").is_some());
        let patients: Vec<&Value> = r["entity"].as_array().unwrap().iter().filter(|e| e["role"]["code"] == "1").collect();
        assert_eq!(patients.len(), 2, "the requested patient and the token's patient");
        assert_eq!(patients[1]["description"], "patient in the token's launch context");

        let anon = render(&event(&p, "GET", "/fhir/Patient/p1", None), "s1", 4, "phi-guard");
        assert_eq!(codes(&anon["subtype"]), ["read", "missing_token"]);
        let client = agent(&anon, "110150").unwrap();
        assert_eq!((client["requestor"].as_bool(), client["who"]["display"].as_str()), (Some(true), Some("unauthenticated client")));
        assert_eq!(entity(&anon, "4").unwrap()["what"]["identifier"]["value"], key().pseudonym("p1"));
    }

    #[test]
    fn emergency_and_restrictions() {
        let p = policy("smart-patient-app");
        let ev = event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({"purpose_of_use": ["ETREAT"]}))))
            .with_response(200, vec![], None)
            .with_restrictions(vec![crate::minimize::restrict::RestrictionHit { id: "r1".into(), count: 3 }])
            .with_content_digest("sha-512=:AAAA:".into());
        let r = render(&ev, "s1", 9, "phi-guard");
        assert_balp_core(&r);
        assert_eq!(r["purposeOfEvent"], json!([{"coding": [{"system": ACT_REASON, "code": "ETREAT", "display": "Emergency Treatment"}]}]));
        let ext = |name: &str| r["extension"].as_array().unwrap().iter().find(|x| x["url"] == format!("{EXT}{name}")).cloned();
        assert_eq!(r["agent"][2]["purposeOfUse"][0]["coding"][0]["system"], ACT_REASON);
        assert_eq!(ext("severity").unwrap()["valueCode"], "high");
        assert_eq!(
            ext("restriction").unwrap()["extension"],
            json!([{"url": "id", "valueString": "r1"}, {"url": "count", "valueUnsignedInt": 3}])
        );
        assert_eq!(ext("content-digest").unwrap()["valueString"], "sha-512=:AAAA:");
        assert!(ext("break-glass").is_none());
        // Break-glass without an emergency purpose still claims emergency treatment.
        let mut bg = ev.clone();
        bg.purpose_of_use.clear();
        bg.break_glass = Some("life-threatening".into());
        let r = render(&bg, "s1", 10, "phi-guard");
        assert_eq!(r["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
        assert_eq!(
            r["extension"].as_array().unwrap().iter().find(|x| x["url"] == format!("{EXT}break-glass")).unwrap()["valueCode"],
            "life-threatening"
        );
        let routine =
            render(&event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({})))).with_response(200, vec![], None), "s", 0, "o");
        assert!(routine.get("purposeOfEvent").is_none());
    }

    #[test]
    fn unchained_is_the_chained_form_without_stream_and_seq() {
        let p = policy("smart-patient-app");
        let ev = event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({})))).with_response(200, vec![], None);
        let mut chained = render(&ev, "s1", 4, "o");
        let unchained: Value = serde_json::from_str(&super::render_unchained(&ev, "o").unwrap()).unwrap();
        let ext = chained["extension"].as_array_mut().unwrap();
        let tail: Vec<Value> = ext.drain(ext.len() - 2..).collect();
        assert_eq!(tail.iter().map(|x| x["url"].as_str().unwrap()).collect::<Vec<_>>(), [format!("{EXT}stream"), format!("{EXT}seq")]);
        assert_eq!(chained, unchained);
    }

    #[test]
    fn no_empty_arrays() {
        let p = policy("smart-patient-app");
        let meta = crate::audit::event::RequestMeta { method: "GET", path: "/nowhere", ..Default::default() };
        let d = crate::decision::decide(
            &p,
            &mut crate::auth::TokenCache::new(1),
            &crate::decision::Request { method: "GET", path: "/nowhere", ..Default::default() },
            crate::time::UnixSeconds::default(),
        );
        let k = key();
        let ev = AuditEvent::from_decision(&d, &meta, &crate::audit::event::AuditContext::new(&p, &k, Default::default()));
        let line = super::render_unchained(&ev, "o").unwrap();
        assert!(!line.contains(":[]"), "{line}");
        assert!(serde_json::from_str::<Value>(&line).unwrap().get("entity").is_none());
    }

    #[test]
    fn raw_patient_references() {
        let mut p = policy("smart-patient-app");
        p.audit.patient_ids = crate::audit_key::PatientIds::Raw;
        let r = render(&event(&p, "GET", "/fhir/Patient/p1", Some(&token(json!({})))), "s", 0, "o");
        assert_eq!(entity(&r, "1").unwrap()["what"]["reference"], "Patient/p1");
        assert_eq!(entity(&r, "4").unwrap()["what"]["reference"], "Patient/p1");
        let r = render(&event(&p, "GET", "/fhir/Observation/o1", Some(&token(json!({})))), "s", 0, "o");
        assert_eq!(entity(&r, "4").unwrap()["what"]["reference"], "Observation/o1");
        assert_eq!(agent(&r, "IRCP").unwrap()["who"]["identifier"], json!({"system": "https://idp.phi-guard.test", "value": "u1"}));
        assert_eq!(agent(&r, "IRCP").unwrap()["policy"][0], "urn:ietf:params:oauth:jti:j1");
    }
}
