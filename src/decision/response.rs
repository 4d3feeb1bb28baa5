//! What must happen to an allowed request's response before the client sees it: checks on the
//! body (patient binding), patients' privacy restrictions, and minimization by the selected
//! profile.

use std::sync::Arc;

use serde_json::Value;

use crate::fhir::compartment::{in_patient_compartment, resource_patients};
use crate::fhir::resource_type;
use crate::minimize::restrict::{RestrictPlan, RestrictionHit};
use crate::minimize::{self, Applied, ApplyCtx, Profile};
use crate::reason::DenyReason;

/// A check on the upstream response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseCheck {
    /// A patient-context request: everything released must be in this patient's compartment.
    Compartment(CompartmentCheck),
}

/// What a patient-context token may receive, whatever the upstream makes of the request: the
/// upstream may ignore or reinterpret search parameters, or answer a different resource than
/// the one asked for. Every resource released (the top-level one, every Bundle entry, every
/// `contained` resource) must be of a known R4 type and, for compartment types, reference the
/// token's patient and no other patient; a `Patient` must be that patient. Types outside the
/// compartment are released only where the route shares them (`patientSharedTypes`) or inside
/// a resource that passed (`contained`). Anything else withholds the whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompartmentCheck {
    /// The token's patient.
    pub patient: String,
    /// Types outside the compartment the route shares with patient-context tokens (sorted).
    pub shared: Arc<[&'static str]>,
    /// The shape the answer to the request must have.
    pub expect: Expected,
}

/// The shape of a 2xx answer to a patient-context read or search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// A read or vread: exactly this resource.
    Resource {
        /// Requested type.
        resource_type: &'static str,
        /// Requested id.
        id: String,
    },
    /// A search: a `searchset` Bundle.
    Searchset,
    /// An instance history: a `history` Bundle of versions of this resource.
    History {
        /// Requested type.
        resource_type: &'static str,
        /// Requested id.
        id: String,
    },
}

impl CompartmentCheck {
    /// Check a parsed 2xx body. A read of another patient's resource is `patient_mismatch`;
    /// anything else outside the compartment or of the wrong shape is `compartment_violation`.
    pub fn check(&self, body: &Value) -> Result<(), DenyReason> {
        let violation = Err(DenyReason::CompartmentViolation);
        let rt = body.get("resourceType").and_then(Value::as_str);
        match &self.expect {
            Expected::Resource { resource_type, id } => {
                if rt != Some(*resource_type) || body.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                    return violation;
                }
                self.resource(body, false).map_err(|_| DenyReason::PatientMismatch)
            }
            Expected::Searchset | Expected::History { .. } => {
                let want = if matches!(self.expect, Expected::Searchset) { "searchset" } else { "history" };
                let Some(bundle) = body.as_object().filter(|_| rt == Some("Bundle")) else {
                    return violation;
                };
                if bundle.get("type").and_then(Value::as_str) != Some(want) {
                    return violation;
                }
                for (key, value) in bundle {
                    match (key.as_str(), value) {
                        ("entry", Value::Array(entries)) => entries.iter().try_for_each(|e| self.entry(e))?,
                        ("entry", _) => return violation,
                        _ => self.nested(value)?,
                    }
                }
                Ok(())
            }
        }
    }

    /// One Bundle entry: its `resource` is released as a resource of its own (a search's
    /// `OperationOutcome` only as one of mode `outcome`); anything else in the entry
    /// (`response.outcome`...) is checked like nested content.
    fn entry(&self, entry: &Value) -> Result<(), DenyReason> {
        let Some(entry) = entry.as_object() else {
            return Err(DenyReason::CompartmentViolation);
        };
        for (key, value) in entry {
            if key != "resource" {
                self.nested(value)?;
                continue;
            }
            if let Expected::History { resource_type, id } = &self.expect {
                let same = value.get("resourceType").and_then(Value::as_str) == Some(*resource_type)
                    && value.get("id").and_then(Value::as_str) == Some(id.as_str());
                if !same {
                    return Err(DenyReason::CompartmentViolation);
                }
            }
            let outcome = value.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome")
                && entry.get("search").and_then(|s| s.get("mode")).and_then(Value::as_str) == Some("outcome");
            if outcome {
                self.nested_members(value)?;
            } else {
                self.resource(value, false)?;
            }
        }
        Ok(())
    }

    /// A released resource, and every resource nested anywhere inside it. `nested`: inside a
    /// resource that is checked itself (`contained`, `Parameters.parameter.resource`, ...),
    /// where types outside the compartment travel with their container.
    fn resource(&self, r: &Value, nested: bool) -> Result<(), DenyReason> {
        let Some(rt) = r.get("resourceType").and_then(Value::as_str).and_then(resource_type) else {
            return Err(DenyReason::CompartmentViolation);
        };
        let ok = if rt == "Patient" {
            r.get("id").and_then(Value::as_str) == Some(self.patient.as_str())
        } else if in_patient_compartment(rt) {
            let patients = resource_patients(r);
            !patients.is_empty() && patients.iter().all(|p| *p == self.patient)
        } else {
            nested || self.shared.binary_search(&rt).is_ok()
        };
        if !ok {
            return Err(DenyReason::CompartmentViolation);
        }
        self.nested_members(r)
    }

    /// Every member of an object (or item of an array) other than its `resourceType`.
    fn nested_members(&self, v: &Value) -> Result<(), DenyReason> {
        match v {
            Value::Object(map) => map.iter().filter(|(k, _)| *k != "resourceType").try_for_each(|(_, v)| self.nested(v)),
            Value::Array(items) => items.iter().try_for_each(|v| self.nested(v)),
            _ => Ok(()),
        }
    }

    /// Any value: an object with a `resourceType` is a nested resource; anything else is
    /// searched for them. An upstream may put a resource under any key.
    fn nested(&self, v: &Value) -> Result<(), DenyReason> {
        match v {
            Value::Object(map) if map.contains_key("resourceType") => self.resource(v, true),
            _ => self.nested_members(v),
        }
    }
}

/// The response handling an allowed request needs. Empty means stream it through untouched.
#[derive(Debug, Clone)]
pub struct ResponsePlan {
    /// Checks to run on the whole buffered body.
    pub checks: Vec<ResponseCheck>,
    /// The minimization profile selected for the caller, if the route minimizes.
    pub minimize: Option<Arc<Profile>>,
    /// Largest body buffered; larger bodies are refused (`response_too_large`).
    pub max_body_bytes: usize,
    /// Privacy restrictions binding this caller (FHIR reads, searches and histories).
    pub restrict: Option<RestrictPlan>,
}

impl Default for ResponsePlan {
    fn default() -> Self {
        ResponsePlan { checks: Vec::new(), minimize: None, max_body_bytes: usize::MAX, restrict: None }
    }
}

/// The result of releasing a response: what the client gets, and what the audit event records
/// about restrictions (also when the response is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `Ok`: the bytes to send (`None`: the upstream's, unchanged), withheld paths, profile.
    /// `Err`: the client gets the reason's error body and none of the upstream's bytes.
    pub outcome: Result<Applied, DenyReason>,
    /// Restrictions that withheld resources, with counts (never what they withheld).
    pub restrictions: Vec<RestrictionHit>,
}

impl PartialEq for ResponsePlan {
    fn eq(&self, other: &Self) -> bool {
        self.checks == other.checks
            && self.max_body_bytes == other.max_body_bytes
            && self.restrict == other.restrict
            && match (&self.minimize, &other.minimize) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// What the upstream's response headers say, as far as the response phase cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamHead<'a> {
    /// `:status`.
    pub status: u16,
    /// `content-type`, if sent.
    pub content_type: Option<&'a str>,
    /// `content-encoding`, if sent.
    pub content_encoding: Option<&'a str>,
    /// `content-length`, if sent and numeric.
    pub content_length: Option<usize>,
    /// The headers ended the stream (no body follows).
    pub end_of_stream: bool,
}

/// What the response phase does with an upstream answer, decided from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Send it through untouched.
    Pass,
    /// An error or redirect on a route whose bodies are rewritten: its body could echo PHI, so
    /// it is replaced by [`super::reply::upstream_error_body`].
    Scrub,
    /// The body cannot be checked (encoded, not JSON, too large): withhold it with this reason.
    Refuse(DenyReason),
    /// Buffer the whole body and [`ResponsePlan::release`] it.
    Check,
}

impl ResponsePlan {
    /// Whether the body must be buffered and inspected.
    pub fn inspects_body(&self) -> bool {
        !self.checks.is_empty() || self.minimize.is_some() || self.restrict.is_some()
    }

    /// Whether the released body may differ from the upstream's (the host must then drop
    /// `content-length` in the response-headers phase and strip `accept-encoding` upstream).
    pub fn rewrites_body(&self) -> bool {
        self.minimize.as_ref().is_some_and(|p| !p.shadow) || self.restrict.is_some()
    }

    /// Decide from the upstream's headers how its body is handled (`shadow`: the policy is in
    /// shadow mode, so bodies are never rewritten). Refusals are returned as such even in
    /// shadow mode; the caller records and then ignores them.
    pub fn screen(&self, head: &UpstreamHead<'_>, shadow: bool) -> Screen {
        if !self.inspects_body() {
            return Screen::Pass;
        }
        if head.end_of_stream {
            // No body follows. An empty success has nothing to check (and HEAD answers would
            // release headers the body check might withhold); 204 and non-2xx carry no data.
            let empty_success = (200..300).contains(&head.status) && head.status != 204;
            return if empty_success { Screen::Refuse(DenyReason::ResponseNotJson) } else { Screen::Pass };
        }
        if !(200..300).contains(&head.status) {
            // An error body can echo PHI: on rewritten routes, and wherever the answer is checked
            // against a patient's compartment (an upstream may put another patient's resource in
            // a 4xx body as well as in a 200), it is replaced by a generic one.
            let scrub = self.rewrites_body() || !self.checks.is_empty();
            return if scrub && !shadow { Screen::Scrub } else { Screen::Pass };
        }
        let encoded = head.content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let json = head.content_type.is_some_and(|t| {
            let t = t.trim_start().to_ascii_lowercase();
            t.starts_with("application/json") || t.starts_with("application/fhir+json")
        });
        if encoded {
            Screen::Refuse(DenyReason::ResponseEncoded)
        } else if !json {
            Screen::Refuse(DenyReason::ResponseNotJson)
        } else if head.content_length.is_some_and(|l| l > self.max_body_bytes) {
            Screen::Refuse(DenyReason::ResponseTooLarge)
        } else {
            Screen::Check
        }
    }

    /// Release a complete 2xx body: run the checks, then the privacy restrictions, then the
    /// minimization. See [`Release`]. `ctx.pseudonyms` must carry the audit key when the
    /// policy names restricted patients by pseudonym.
    pub fn release(&self, body: &[u8], ctx: &ApplyCtx<'_>) -> Release {
        self.release_tree(body, ctx)
    }

    /// [`ResponsePlan::release`] through a parsed `serde_json::Value` tree (the body is parsed
    /// once, checked, restricted and minimized in place, then re-serialized).
    pub fn release_tree(&self, body: &[u8], ctx: &ApplyCtx<'_>) -> Release {
        let mut restrictions = Vec::new();
        let outcome = self.release_into(body, ctx, &mut restrictions).and_then(|applied| {
            // The released body is bounded like the upstream's: Envoy refuses a buffer over its
            // limit (and `max_body_bytes` is kept at or below it).
            match &applied.body {
                Some(b) if b.len() > self.max_body_bytes => Err(DenyReason::ResponseTooLarge),
                _ => Ok(applied),
            }
        });
        Release { outcome, restrictions }
    }

    /// [`ResponsePlan::release`] without the restriction record.
    pub fn apply(&self, body: &[u8], ctx: &ApplyCtx<'_>) -> Result<Applied, DenyReason> {
        self.release(body, ctx).outcome
    }

    fn release_into(&self, body: &[u8], ctx: &ApplyCtx<'_>, hits: &mut Vec<RestrictionHit>) -> Result<Applied, DenyReason> {
        if !self.inspects_body() {
            return Ok(Applied::default());
        }
        let mut value = minimize::body::parse(body, self.max_body_bytes)?;
        self.run_checks(&value)?;
        let mut restricted = false;
        if let Some(plan) = &self.restrict {
            let (result, h) = plan.apply(&mut value, ctx.pseudonyms);
            *hits = h;
            restricted = result?;
        }
        match &self.minimize {
            // A shadow profile releases the body as it was before minimization: after the
            // restrictions, which are never shadowed.
            Some(profile) if profile.shadow && restricted => {
                let bytes = minimize::body::serialize(&value)?;
                let applied = minimize::release(profile, &mut value, ctx)?;
                Ok(Applied { body: Some(bytes), ..applied })
            }
            Some(profile) => minimize::release(profile, &mut value, ctx),
            None if restricted => Ok(Applied { body: Some(minimize::body::serialize(&value)?), ..Applied::default() }),
            None => Ok(Applied::default()),
        }
    }

    fn run_checks(&self, value: &Value) -> Result<(), DenyReason> {
        for check in &self.checks {
            match check {
                ResponseCheck::Compartment(c) => c.check(value)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compartment(expect: Expected) -> ResponsePlan {
        let check = CompartmentCheck { patient: "p1".into(), shared: vec!["Medication"].into(), expect };
        ResponsePlan { checks: vec![ResponseCheck::Compartment(check)], ..ResponsePlan::default() }
    }

    fn read(t: &'static str, id: &str) -> ResponsePlan {
        compartment(Expected::Resource { resource_type: t, id: id.into() })
    }

    fn released(plan: &ResponsePlan, body: Value) -> Result<(), DenyReason> {
        plan.apply(&serde_json::to_vec(&body).unwrap(), &ApplyCtx::default()).map(|_| ())
    }

    #[test]
    fn binding() {
        let plan = read("Observation", "o1");
        assert!(plan.inspects_body());
        assert!(!plan.rewrites_body());
        assert_eq!(plan.apply(b"{not json", &ApplyCtx::default()), Err(DenyReason::ResponseNotJson));
        let applied =
            plan.apply(br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#, &ApplyCtx::default()).unwrap();
        assert_eq!(applied, Applied::default());
        assert_eq!(
            plan.apply(br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}"#, &ApplyCtx::default()),
            Err(DenyReason::PatientMismatch)
        );
        assert_eq!(ResponsePlan::default().apply(b"anything", &ApplyCtx::default()), Ok(Applied::default()));
        let small = ResponsePlan { max_body_bytes: 8, ..plan };
        assert_eq!(small.apply(br#"{"resourceType":"Observation"}"#, &ApplyCtx::default()), Err(DenyReason::ResponseTooLarge));
    }

    #[test]
    fn error_bodies_of_checked_answers_are_scrubbed() {
        // A 404 or 400 from the upstream could carry another patient's resource, or echo what
        // it looked for: not released to a patient-context token.
        let plan = read("Observation", "o1");
        for status in [302, 400, 404, 500] {
            let head = UpstreamHead { status, content_type: Some("application/fhir+json"), ..UpstreamHead::default() };
            assert_eq!(plan.screen(&head, false), Screen::Scrub, "{status}");
            assert_eq!(plan.screen(&head, true), Screen::Pass, "{status} in shadow mode");
        }
        let head = UpstreamHead { status: 404, content_type: Some("application/fhir+json"), ..UpstreamHead::default() };
        assert_eq!(ResponsePlan::default().screen(&head, false), Screen::Pass);
    }

    #[test]
    fn reads_release_only_the_resource_asked_for() {
        use serde_json::json;
        let obs = read("Observation", "o1");
        let mine = json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}});
        assert_eq!(released(&obs, mine.clone()), Ok(()));
        // Another id, another type, a Bundle instead of the resource: the upstream answered
        // something else than what was asked.
        let v = Err(DenyReason::CompartmentViolation);
        assert_eq!(released(&obs, json!({"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p1"}})), v);
        assert_eq!(released(&obs, json!({"resourceType": "Condition", "id": "o1", "subject": {"reference": "Patient/p1"}})), v);
        assert_eq!(released(&obs, json!({"resourceType": "Bundle", "id": "o1", "type": "searchset"})), v);
        // Both patients referenced: not only the token's patient's.
        let both = json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p2"}, "performer": [{"reference": "Patient/p1"}]});
        assert_eq!(released(&obs, both), Err(DenyReason::PatientMismatch));
        // No patient reference at all (a Group subject): not in the compartment.
        let group = json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Group/g"}});
        assert_eq!(released(&obs, group), Err(DenyReason::PatientMismatch));
        // Patient reads: only the token's patient.
        assert_eq!(released(&read("Patient", "p1"), json!({"resourceType": "Patient", "id": "p1"})), Ok(()));
        assert_eq!(released(&read("Patient", "p1"), json!({"resourceType": "Patient", "id": "p2"})), v);
        // Contained: other patients' data inside a resource of the token's patient.
        let mut c = mine.clone();
        c["contained"] = json!([{"resourceType": "Patient", "id": "p2"}]);
        assert_eq!(released(&obs, c.clone()), Err(DenyReason::PatientMismatch));
        c["contained"] = json!([{"resourceType": "Observation", "id": "x", "subject": {"reference": "Patient/p2"}}]);
        assert_eq!(released(&obs, c.clone()), Err(DenyReason::PatientMismatch));
        // Resources under any other key are checked the same way.
        let mut n = mine.clone();
        n["note"] = json!([{"text": "x", "extension": [{"url": "u", "valueReference": {"resourceType": "Patient", "id": "p2"}}]}]);
        assert_eq!(released(&obs, n), Err(DenyReason::PatientMismatch));
        let mut n = mine.clone();
        n["leak"] = json!({"resourceType": 7});
        assert_eq!(released(&obs, n), Err(DenyReason::PatientMismatch));
        // A contained type outside the compartment travels with its container.
        c["contained"] = json!([{"resourceType": "Practitioner", "id": "x"}]);
        assert_eq!(released(&obs, c.clone()), Ok(()));
        c["contained"] = json!([{"resourceType": "NotAType", "id": "x"}]);
        assert_eq!(released(&obs, c), Err(DenyReason::PatientMismatch));
        // Shared types by id.
        assert_eq!(released(&read("Medication", "m"), json!({"resourceType": "Medication", "id": "m"})), Ok(()));
    }

    #[test]
    fn searches_release_only_the_compartment() {
        use serde_json::json;
        let search = compartment(Expected::Searchset);
        let bundle = |entries: Value| json!({"resourceType": "Bundle", "type": "searchset", "entry": entries});
        let obs = |p: &str| json!({"resource": {"resourceType": "Observation", "id": "o", "subject": {"reference": format!("Patient/{p}")}}, "search": {"mode": "match"}});
        let v = Err(DenyReason::CompartmentViolation);
        assert_eq!(released(&search, bundle(json!([obs("p1"), obs("p1")]))), Ok(()));
        assert_eq!(released(&search, json!({"resourceType": "Bundle", "type": "searchset", "total": 0})), Ok(()));
        // One entry of another patient withholds the whole answer.
        assert_eq!(released(&search, bundle(json!([obs("p1"), obs("p2")]))), v);
        // Includes are checked like matches.
        let inc = json!({"resource": {"resourceType": "Patient", "id": "p2"}, "search": {"mode": "include"}});
        assert_eq!(released(&search, bundle(json!([obs("p1"), inc]))), v);
        let me = json!({"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "include"}});
        assert_eq!(released(&search, bundle(json!([obs("p1"), me]))), Ok(()));
        // Types outside the compartment: only the route's shared ones.
        let med = json!({"resource": {"resourceType": "Medication", "id": "m"}});
        let org = json!({"resource": {"resourceType": "Organization", "id": "o"}});
        assert_eq!(released(&search, bundle(json!([med]))), Ok(()));
        assert_eq!(released(&search, bundle(json!([org]))), v);
        // Unknown types are never released, nor nested Bundles.
        assert_eq!(released(&search, bundle(json!([{"resource": {"resourceType": "Foo", "id": "x"}}]))), v);
        assert_eq!(released(&search, bundle(json!([{"resource": {"resourceType": "Bundle", "type": "searchset"}}]))), v);
        // A search's OperationOutcome is fine where it is one; as a match it is not shared.
        let outcome = json!({"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}});
        assert_eq!(released(&search, bundle(json!([obs("p1"), outcome]))), Ok(()));
        let as_match = json!({"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "match"}});
        assert_eq!(released(&search, bundle(json!([as_match]))), v);
        // Not a searchset, or a bare resource instead of a Bundle.
        assert_eq!(released(&search, json!({"resourceType": "Bundle", "type": "collection", "entry": [obs("p1")]})), v);
        assert_eq!(released(&search, obs("p1")["resource"].clone()), v);
        assert_eq!(released(&search, json!({"resourceType": "Bundle", "type": "searchset", "entry": {"x": 1}})), v);
        // Entries that are not objects; resources outside `entry.resource`.
        assert_eq!(released(&search, bundle(json!([obs("p1"), "Kermit Trantow"]))), v);
        let mut b = bundle(json!([obs("p1")]));
        b["link"] = json!([{"relation": "next", "url": "x", "extra": {"resourceType": "Patient", "id": "p2"}}]);
        assert_eq!(released(&search, b), v);
        let mut e = obs("p1");
        e["response"] =
            json!({"status": "200", "outcome": {"resourceType": "Observation", "id": "z", "subject": {"reference": "Patient/p2"}}});
        assert_eq!(released(&search, bundle(json!([e]))), v);
        let mut e = obs("p1");
        e["response"] = json!({"status": "200", "outcome": {"resourceType": "OperationOutcome", "issue": []}});
        assert_eq!(released(&search, bundle(json!([e]))), Ok(()));
        // Instance history: versions of the one resource only.
        let history = compartment(Expected::History { resource_type: "Observation", id: "o".into() });
        let hist = |entries: Value| json!({"resourceType": "Bundle", "type": "history", "entry": entries});
        assert_eq!(released(&history, hist(json!([obs("p1"), {"request": {"method": "DELETE"}}]))), Ok(()));
        let other = json!({"resource": {"resourceType": "Observation", "id": "z", "subject": {"reference": "Patient/p1"}}});
        assert_eq!(released(&history, hist(json!([obs("p1"), other]))), v);
    }

    #[test]
    fn empty_success_on_a_checked_route_is_not_json() {
        let plan = read("Observation", "o1");
        let head =
            |status| UpstreamHead { status, content_type: Some("application/fhir+json"), end_of_stream: true, ..UpstreamHead::default() };
        assert_eq!(plan.screen(&head(200), false), Screen::Refuse(DenyReason::ResponseNotJson));
        assert_eq!(plan.screen(&head(204), false), Screen::Pass);
        assert_eq!(plan.screen(&head(304), false), Screen::Pass);
        assert_eq!(ResponsePlan::default().screen(&head(200), false), Screen::Pass);
    }

    #[test]
    fn a_released_body_over_the_cap_is_refused() {
        // Minimization can grow a body (the `REDACTED` label, hashes): the released bytes are
        // held to the same cap as the upstream's, so the host never writes a buffer Envoy refuses.
        let profile = crate::minimize::testing::profile(serde_json::json!({"mode": "deny", "resources": {"*": {"deny": ["note"]}}}), true);
        let body = br#"{"resourceType":"Condition","id":"z","note":[{"text":"x"}]}"#;
        let plan = ResponsePlan { minimize: Some(Arc::new(profile)), max_body_bytes: 4096, ..ResponsePlan::default() };
        let out = plan.apply(body, &ApplyCtx::default()).unwrap();
        let released = out.body.unwrap();
        assert!(released.len() > body.len(), "the label makes it grow");
        let tight = ResponsePlan { max_body_bytes: body.len(), ..plan };
        assert_eq!(tight.apply(body, &ApplyCtx::default()), Err(DenyReason::ResponseTooLarge));
    }

    #[test]
    fn restrictions_run_before_minimization_and_are_never_shadowed() {
        use crate::audit_key::PatientIds;
        use crate::minimize::restrict::{Label, Restriction, Restrictions};
        let act = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
        let r = Restrictions {
            list: vec![Arc::new(Restriction {
                id: "r1".into(),
                patient: "p1".into(),
                labels: vec![Label { system: act.into(), code: "PSY".into() }],
                allow_purposes: vec![],
                routes: vec![],
            })],
            patient_ids: PatientIds::Raw,
        };
        let body = serde_json::json!({"resourceType": "Bundle", "type": "searchset", "total": 2, "entry": [
            {"resource": {"resourceType": "Condition", "id": "a", "subject": {"reference": "Patient/p1"}, "note": [{"text": "x"}]}},
            {"resource": {"resourceType": "Condition", "id": "b", "subject": {"reference": "Patient/p1"}, "meta": {"security": [{"system": act, "code": "PSY"}]}}}
        ]});
        let bytes = serde_json::to_vec(&body).unwrap();
        let shadow = crate::minimize::testing::profile(
            serde_json::json!({"mode": "deny", "shadow": true, "resources": {"*": {"deny": ["note"]}}}),
            true,
        );
        let plan = ResponsePlan { minimize: Some(Arc::new(shadow)), restrict: r.plan("fhir", &[], None), ..ResponsePlan::default() };
        assert!(plan.rewrites_body());
        let released = plan.release(&bytes, &ApplyCtx::default());
        assert_eq!(released.restrictions, [RestrictionHit { id: "r1".into(), count: 1 }]);
        let applied = released.outcome.unwrap();
        assert!(applied.shadow && applied.withheld.contains(&"Bundle.entry.resource(Condition).note".to_owned()));
        let out: Value = serde_json::from_slice(applied.body.as_deref().unwrap()).unwrap();
        assert_eq!(out["entry"].as_array().unwrap().len(), 1, "restricted entry gone");
        assert_eq!(out["entry"][0]["resource"]["note"][0]["text"], "x", "shadow minimization changed nothing");
        assert!(out.get("total").is_none());
        // Without a profile the restricted body is still re-serialized; untouched bodies are not.
        let plan = ResponsePlan { restrict: r.plan("fhir", &[], None), ..ResponsePlan::default() };
        assert!(plan.apply(&bytes, &ApplyCtx::default()).unwrap().body.is_some());
        let other = br#"{"resourceType":"Condition","id":"z","subject":{"reference":"Patient/p2"}}"#;
        assert_eq!(plan.apply(other, &ApplyCtx::default()), Ok(Applied::default()));
        let read = br#"{"resourceType":"Condition","id":"b","subject":{"reference":"Patient/p1"},"meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]}}"#;
        let refused = plan.release(read, &ApplyCtx::default());
        assert_eq!((refused.outcome, refused.restrictions.len()), (Err(DenyReason::Restricted), 1));
    }
}
