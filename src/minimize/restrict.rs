//! Privacy restrictions (a patient's requested restrictions, HIPAA §164.522): when a response
//! concerns a restricted patient, resources carrying one of the restriction's sensitivity labels
//! (in `meta.security`, their own or a contained resource's) are removed from Bundles, and a
//! single read of one is refused (`restricted`), unless the caller's purpose of use is one the
//! restriction allows.
//!
//! A response concerns a patient when the resource belongs to them (a Patient's id, or the
//! compartment's patient-link references) or when they are the token's patient in context.
//! Patients are named as the audit log names them: by pseudonym (which needs the audit key) or
//! by raw id, per the policy's `audit.patientIdentifiers`.
//!
//! Nothing here records what was hidden: only which restriction applied and how many resources
//! it removed. A Bundle that concerns a restricted patient loses `total` and `signature`
//! whether or not anything was removed, so their absence says nothing about the patient's data.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::stream::Cuts;
use super::walk::try_retain_items;
use crate::audit_key::{AuditKey, PatientIds, PSEUDONYM_PREFIX};
use crate::auth::purpose::is_purpose_of_use;
use crate::fhir::compartment::object_patients;
use crate::fhir::request::valid_id;
use crate::json::{Kind, Reader};
use crate::reason::DenyReason;
use crate::schema::{CompileError, Loc, RestrictionDoc, RouteKind, Routes};

/// A sensitivity label (`meta.security` coding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Code system, e.g. `http://terminology.hl7.org/CodeSystem/v3-ActCode`.
    pub system: String,
    /// Code, e.g. `ETH`, `PSY`, `HIV`.
    pub code: String,
}

/// One patient's restriction (compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    /// Identifier recorded in audit events.
    pub id: String,
    /// The patient, as the audit log names patients (pseudonym or raw id).
    pub patient: String,
    /// Labels whose resources are withheld.
    pub labels: Vec<Label>,
    /// Purposes of use for which nothing is withheld.
    pub allow_purposes: Vec<String>,
    /// Route ids it applies to; empty means every FHIR route.
    pub routes: Vec<String>,
}

/// The policy's restrictions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restrictions {
    /// Every restriction, in policy order.
    pub list: Vec<Arc<Restriction>>,
    /// How `patient` is written.
    pub patient_ids: PatientIds,
}

impl Restrictions {
    /// The restrictions that bind a caller of route `route` with these purposes of use (and
    /// this patient in context), or `None` when none does.
    pub fn plan(&self, route: &str, purpose: &[String], context_patient: Option<&str>) -> Option<RestrictPlan> {
        let binding: Vec<Arc<Restriction>> = self
            .list
            .iter()
            .filter(|r| r.routes.is_empty() || r.routes.iter().any(|x| x == route))
            .filter(|r| !r.allow_purposes.iter().any(|p| purpose.contains(p)))
            .cloned()
            .collect();
        (!binding.is_empty()).then(|| RestrictPlan {
            binding,
            patient_ids: self.patient_ids,
            context_patient: context_patient.map(str::to_owned),
        })
    }
}

/// The restrictions binding one response, decided at request time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestrictPlan {
    /// Restrictions the caller's purposes do not lift.
    pub binding: Vec<Arc<Restriction>>,
    /// How restriction patients are written.
    pub patient_ids: PatientIds,
    /// The token's patient in context (raw id).
    pub context_patient: Option<String>,
}

/// That a restriction applied to a response: its id and how many resources it withheld. Never
/// what they were.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestrictionHit {
    /// The restriction's id.
    pub id: String,
    /// Resources withheld.
    pub count: usize,
}

impl RestrictPlan {
    /// Apply to a parsed FHIR body. `Ok(true)` when the body changed; `Err(restricted)` when a
    /// single resource is withheld; other errors when the body cannot be checked (fail closed:
    /// a malformed `meta.security`, no key to name patients by pseudonym). The hits are
    /// returned either way, for the audit event.
    pub fn apply(&self, value: &mut Value, key: Option<&AuditKey>) -> (Result<bool, DenyReason>, Vec<RestrictionHit>) {
        let mut f = Filter { plan: self, key, names: HashMap::new(), hits: Vec::new() };
        let result = f.top(value);
        (result, f.hits)
    }
}

impl RestrictPlan {
    /// [`RestrictPlan::apply`] over a validated text, without a tree: what the restrictions
    /// remove, for [`super::stream`] to leave out, and whether the body changes.
    pub fn scan(&self, text: &[u8], key: Option<&AuditKey>) -> (Result<(Cuts, bool), DenyReason>, Vec<RestrictionHit>) {
        let mut f = Filter { plan: self, key, names: HashMap::new(), hits: Vec::new() };
        let mut cuts = Cuts::default();
        let result = f.scan_top(&Reader::new(text), &mut cuts);
        cuts.entries.sort_unstable();
        cuts.bundles.sort_unstable();
        (result.map(|changed| (cuts, changed)), f.hits)
    }
}

struct Filter<'a> {
    plan: &'a RestrictPlan,
    key: Option<&'a AuditKey>,
    /// Raw id → name as restrictions write it.
    names: HashMap<String, String>,
    hits: Vec<RestrictionHit>,
}

impl Filter<'_> {
    fn top(&mut self, value: &mut Value) -> Result<bool, DenyReason> {
        let Value::Object(map) = value else {
            return Err(DenyReason::ResponseUnexpectedShape);
        };
        match map.get("resourceType") {
            Some(Value::String(t)) if t == "Bundle" => self.bundle(map),
            Some(Value::String(_)) => match self.restricted_by(map)? {
                Some(i) => {
                    self.hit(i);
                    Err(DenyReason::Restricted)
                }
                None => Ok(false),
            },
            _ => Err(DenyReason::ResponseUnexpectedShape),
        }
    }

    fn scan_top(&mut self, r: &Reader<'_>, cuts: &mut Cuts) -> Result<bool, DenyReason> {
        let mut r = r.clone();
        if r.kind()? != Kind::Object {
            return Err(DenyReason::ResponseUnexpectedShape);
        }
        match r.find_kind("resourceType")? {
            Some(Kind::String) => {}
            _ => return Err(DenyReason::ResponseUnexpectedShape),
        }
        let rt = r.find_str("resourceType")?.map(|s| s.decode().map(|t| t.into_owned())).transpose()?;
        if rt.as_deref() == Some("Bundle") {
            return self.scan_bundle(&r, cuts);
        }
        let labels = raw_labels(&r)?;
        if !self.labels_match(&labels) {
            return Ok(false);
        }
        let patients = self.raw_patients_of(&r, rt.as_deref())?;
        match self.withholding_by(&labels, &patients) {
            Some(i) => {
                self.hit(i);
                Err(DenyReason::Restricted)
            }
            None => Ok(false),
        }
    }

    /// A Bundle at `r` (standing at its `{`).
    fn scan_bundle(&mut self, r: &Reader<'_>, cuts: &mut Cuts) -> Result<bool, DenyReason> {
        let at = r.pos;
        let mut changed = false;
        let mut concerns = self.context_is_restricted()?;
        let mut envelope = false;
        let mut m = r.clone();
        m.open()?;
        while let Some(k) = m.next_key()? {
            if k.is("total") || k.is("signature") {
                envelope = true;
            }
            if !k.is("entry") || m.kind()? != Kind::Array {
                m.skip()?;
                continue;
            }
            let mut items = m.clone();
            items.open()?;
            while items.next_item()? {
                if items.kind()? != Kind::Object {
                    items.skip()?;
                    continue;
                }
                let entry_at = items.pos;
                let resource = match items.find("resource")? {
                    Some(span) => items.at(span.start),
                    None => {
                        items.skip()?;
                        continue;
                    }
                };
                let mut resource = resource;
                if resource.kind()? != Kind::Object {
                    items.skip()?;
                    continue;
                }
                let rt = resource.find_str("resourceType")?;
                if rt.is_some_and(|t| t.is("Bundle")) {
                    changed |= self.scan_bundle(&resource, cuts)?;
                } else {
                    let rt = rt.map(|t| t.decode().map(|t| t.into_owned())).transpose()?;
                    let patients = self.raw_patients_of(&resource, rt.as_deref())?;
                    let about = self.plan.binding.iter().any(|r| patients.contains(&r.patient));
                    concerns |= about;
                    if about {
                        let labels = raw_labels(&resource)?;
                        if let Some(i) = self.withholding_by(&labels, &patients) {
                            self.hit(i);
                            changed = true;
                            cuts.entries.push(entry_at);
                        }
                    }
                }
                items.skip()?;
            }
            m.skip()?;
        }
        if concerns {
            cuts.bundles.push(at);
            changed |= envelope;
        }
        Ok(changed)
    }

    /// The patients a raw resource concerns, named as restrictions name them (with the
    /// context patient).
    fn raw_patients_of(&mut self, r: &Reader<'_>, rt: Option<&str>) -> Result<Vec<String>, DenyReason> {
        let mut ids = match rt {
            Some(rt) => crate::fhir::compartment::raw_patients(r, rt)?,
            None => Vec::new(),
        };
        ids.extend(self.plan.context_patient.iter().cloned());
        ids.iter().map(|id| self.name(id)).collect()
    }

    fn labels_match(&self, labels: &[(String, String)]) -> bool {
        self.plan.binding.iter().any(|r| r.labels.iter().any(|l| labels.iter().any(|(s, c)| *s == l.system && *c == l.code)))
    }

    fn withholding_by(&self, labels: &[(String, String)], patients: &[String]) -> Option<usize> {
        self.plan.binding.iter().position(|r| {
            patients.contains(&r.patient) && r.labels.iter().any(|l| labels.iter().any(|(s, c)| *s == l.system && *c == l.code))
        })
    }

    fn bundle(&mut self, map: &mut Map<String, Value>) -> Result<bool, DenyReason> {
        let mut changed = false;
        let mut concerns = self.context_is_restricted()?;
        if let Some(Value::Array(entries)) = map.get_mut("entry") {
            try_retain_items(entries, |entry| {
                let Some(Value::Object(resource)) = entry.get_mut("resource") else {
                    return Ok(true);
                };
                if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                    self.bundle(resource).map(|c| {
                        changed |= c;
                        true
                    })
                } else {
                    self.entry(resource).map(|(about, withheld)| {
                        concerns |= about;
                        match withheld {
                            Some(i) => {
                                self.hit(i);
                                changed = true;
                                false
                            }
                            None => true,
                        }
                    })
                }
            })?;
        }
        if concerns {
            for k in ["total", "signature"] {
                changed |= map.shift_remove(k).is_some();
            }
        }
        Ok(changed)
    }

    /// For one entry's resource: whether it concerns a restricted patient, and the restriction
    /// that withholds it, if any.
    fn entry(&mut self, resource: &Map<String, Value>) -> Result<(bool, Option<usize>), DenyReason> {
        let patients = self.patients(resource)?;
        let about = self.plan.binding.iter().any(|r| patients.contains(&r.patient));
        let withheld = if about { self.withholding(resource, &patients)? } else { None };
        Ok((about, withheld))
    }

    /// The restriction withholding a single resource, if any.
    fn restricted_by(&mut self, resource: &Map<String, Value>) -> Result<Option<usize>, DenyReason> {
        if !self.labelled(resource)? {
            return Ok(None);
        }
        let patients = self.patients(resource)?;
        self.withholding(resource, &patients)
    }

    fn withholding(&self, resource: &Map<String, Value>, patients: &[String]) -> Result<Option<usize>, DenyReason> {
        let labels = labels_of(resource)?;
        Ok(self.plan.binding.iter().position(|r| {
            patients.contains(&r.patient) && r.labels.iter().any(|l| labels.iter().any(|(s, c)| *s == l.system && *c == l.code))
        }))
    }

    /// Whether the resource carries any label some binding restriction names (cheap pre-check
    /// before naming patients).
    fn labelled(&self, resource: &Map<String, Value>) -> Result<bool, DenyReason> {
        let labels = labels_of(resource)?;
        Ok(self.plan.binding.iter().any(|r| r.labels.iter().any(|l| labels.iter().any(|(s, c)| *s == l.system && *c == l.code))))
    }

    fn context_is_restricted(&mut self) -> Result<bool, DenyReason> {
        match self.plan.context_patient.clone() {
            Some(id) => {
                let name = self.name(&id)?;
                Ok(self.plan.binding.iter().any(|r| r.patient == name))
            }
            None => Ok(false),
        }
    }

    /// The patients a resource concerns, named as restrictions name them (with the context
    /// patient).
    fn patients(&mut self, resource: &Map<String, Value>) -> Result<Vec<String>, DenyReason> {
        let mut ids = object_patients(resource);
        ids.extend(self.plan.context_patient.iter().cloned());
        ids.iter().map(|id| self.name(id)).collect()
    }

    fn name(&mut self, id: &str) -> Result<String, DenyReason> {
        if let Some(n) = self.names.get(id) {
            return Ok(n.clone());
        }
        let n = match self.plan.patient_ids {
            PatientIds::Raw => id.to_owned(),
            // Without the key patients cannot be recognised: withhold rather than guess.
            PatientIds::Pseudonym => self.key.ok_or(DenyReason::MinimizationFailed)?.pseudonym(id),
        };
        self.names.insert(id.to_owned(), n.clone());
        Ok(n)
    }

    fn hit(&mut self, index: usize) {
        let Some(r) = self.plan.binding.get(index) else {
            return;
        };
        match self.hits.iter_mut().find(|h| h.id == r.id) {
            Some(h) => h.count += 1,
            None => self.hits.push(RestrictionHit { id: r.id.clone(), count: 1 }),
        }
    }
}

/// `(system, code)` of every `meta.security` label of a resource and of its contained
/// resources. A `meta.security` that is not an array of objects cannot be checked: fail closed.
fn labels_of(resource: &Map<String, Value>) -> Result<Vec<(&str, &str)>, DenyReason> {
    let mut out = Vec::new();
    own_labels(resource, &mut out)?;
    if let Some(Value::Array(contained)) = resource.get("contained") {
        for c in contained.iter().filter_map(Value::as_object) {
            own_labels(c, &mut out)?;
        }
    }
    Ok(out)
}

/// [`labels_of`] over a raw resource object.
fn raw_labels(r: &Reader<'_>) -> Result<Vec<(String, String)>, DenyReason> {
    let mut out = Vec::new();
    raw_own_labels(r, &mut out)?;
    if let Some(span) = r.find("contained")? {
        let mut c = r.at(span.start);
        if c.kind()? == Kind::Array {
            c.open()?;
            while c.next_item()? {
                if c.kind()? == Kind::Object {
                    raw_own_labels(&c, &mut out)?;
                }
                c.skip()?;
            }
        }
    }
    Ok(out)
}

fn raw_own_labels(r: &Reader<'_>, out: &mut Vec<(String, String)>) -> Result<(), DenyReason> {
    let Some(meta) = r.find("meta")? else {
        return Ok(());
    };
    let meta = r.at(meta.start);
    let mut probe = meta.clone();
    if probe.kind()? != Kind::Object {
        return Err(DenyReason::MinimizationFailed);
    }
    let Some(security) = meta.find("security")? else {
        return Ok(());
    };
    let mut s = meta.at(security.start);
    if s.kind()? != Kind::Array {
        return Err(DenyReason::MinimizationFailed);
    }
    s.open()?;
    while s.next_item()? {
        if s.kind()? != Kind::Object {
            return Err(DenyReason::MinimizationFailed);
        }
        if let (Some(system), Some(code)) = (s.find_str("system")?, s.find_str("code")?) {
            out.push((system.decode()?.into_owned(), code.decode()?.into_owned()));
        }
        s.skip()?;
    }
    Ok(())
}

fn own_labels<'v>(resource: &'v Map<String, Value>, out: &mut Vec<(&'v str, &'v str)>) -> Result<(), DenyReason> {
    let security = match resource.get("meta") {
        None => return Ok(()),
        Some(Value::Object(meta)) => meta.get("security"),
        Some(_) => return Err(DenyReason::MinimizationFailed),
    };
    match security {
        None => Ok(()),
        Some(Value::Array(labels)) => {
            for l in labels {
                let Value::Object(l) = l else {
                    return Err(DenyReason::MinimizationFailed);
                };
                if let (Some(Value::String(s)), Some(Value::String(c))) = (l.get("system"), l.get("code")) {
                    out.push((s.as_str(), c.as_str()));
                }
            }
            Ok(())
        }
        Some(_) => Err(DenyReason::MinimizationFailed),
    }
}

/// Compile the policy's `restrictions`, whose patients are named as `audit.patientIdentifiers`
/// says; `routes` answers whether a named route exists and is a FHIR route.
pub fn compile_restrictions(
    docs: &[RestrictionDoc],
    loc: &Loc<'_>,
    patient_ids: PatientIds,
    routes: &dyn Routes,
) -> Result<Option<Restrictions>, CompileError> {
    if docs.is_empty() {
        return Ok(None);
    }
    let mut ids = HashSet::new();
    let mut list = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        let loc = loc.index(i);
        // The id is audited: short and plain.
        if !crate::ident::code(&d.id, 64) || !ids.insert(d.id.as_str()) {
            return Err(loc.field("id").error(format!("`{}` must be a unique id of 1–64 `[A-Za-z0-9._-]` (no PHI: it is audited)", d.id)));
        }
        let ok = match patient_ids {
            PatientIds::Pseudonym => d
                .patient
                .strip_prefix(PSEUDONYM_PREFIX)
                .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            // A pseudonym would never match a raw id: refuse it rather than restrict nothing.
            PatientIds::Raw => valid_id(&d.patient) && !d.patient.starts_with(PSEUDONYM_PREFIX),
        };
        if !ok {
            let want = match patient_ids {
                PatientIds::Pseudonym => "a pseudonym (`ps1-` + 32 lowercase hex digits, from `phi-guard audit pseudonym --id ...`)",
                PatientIds::Raw => "a FHIR id, not a pseudonym (`audit.patientIdentifiers` is `raw`)",
            };
            return Err(loc.field("patient").error(format!("must be {want}")));
        }
        if d.labels.is_empty() {
            return Err(loc.field("labels").error("must list at least one security label"));
        }
        let mut labels = Vec::with_capacity(d.labels.len());
        for (j, l) in d.labels.iter().enumerate() {
            if l.system.is_empty() || l.code.is_empty() || l.system.contains(char::is_whitespace) || l.code.contains(char::is_whitespace) {
                return Err(loc.field("labels").index(j).error("needs a non-empty `system` and `code` without spaces"));
            }
            labels.push(Label { system: l.system.clone(), code: l.code.clone() });
        }
        for (j, p) in d.allow_purposes.iter().enumerate() {
            if !is_purpose_of_use(p) {
                return Err(loc.field("allowPurposes").index(j).error(format!("`{p}` is not an HL7 v3 PurposeOfUse code")));
            }
        }
        if d.routes.as_ref().is_some_and(Vec::is_empty) {
            return Err(loc.field("routes").error("must name at least one route (omit it for every FHIR route)"));
        }
        for (j, r) in d.routes.iter().flatten().enumerate() {
            match routes.kind(r) {
                Some(RouteKind::Fhir) => {}
                Some(_) => return Err(loc.field("routes").index(j).error(format!("route `{r}` is not a `fhir` route"))),
                None => return Err(loc.field("routes").index(j).error(format!("no route `{r}`"))),
            }
        }
        list.push(Arc::new(Restriction {
            id: d.id.clone(),
            patient: d.patient.clone(),
            labels,
            allow_purposes: d.allow_purposes.clone(),
            routes: d.routes.clone().unwrap_or_default(),
        }));
    }
    Ok(Some(Restrictions { list, patient_ids }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ACT: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

    fn key() -> AuditKey {
        AuditKey::from_secret(b"test-audit-secret-0123456789abcdef").unwrap()
    }

    fn restrictions(ids: PatientIds, patient: &str) -> Restrictions {
        Restrictions {
            list: vec![Arc::new(Restriction {
                id: "r1".into(),
                patient: patient.into(),
                labels: vec![Label { system: ACT.into(), code: "PSY".into() }, Label { system: ACT.into(), code: "ETH".into() }],
                allow_purposes: vec!["ETREAT".into()],
                routes: vec![],
            })],
            patient_ids: ids,
        }
    }

    fn obs(id: &str, patient: &str, label: Option<&str>) -> Value {
        let mut o = json!({"resourceType": "Observation", "id": id, "subject": {"reference": format!("Patient/{patient}")}});
        if let Some(code) = label {
            o["meta"] = json!({"security": [{"system": ACT, "code": code}]});
        }
        o
    }

    fn bundle(entries: Vec<Value>) -> Value {
        json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(),
               "entry": entries.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()})
    }

    #[test]
    fn bundles_lose_restricted_entries_and_total() {
        let k = key();
        let r = restrictions(PatientIds::Pseudonym, &k.pseudonym("p1"));
        let plan = r.plan("fhir", &[], None).unwrap();
        let mut b =
            bundle(vec![obs("a", "p1", None), obs("b", "p1", Some("PSY")), obs("c", "p2", Some("PSY")), obs("d", "p1", Some("ETH"))]);
        let (res, hits) = plan.apply(&mut b, Some(&k));
        assert_eq!(res, Ok(true));
        assert_eq!(hits, [RestrictionHit { id: "r1".into(), count: 2 }]);
        let ids: Vec<&str> = b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "c"], "another patient's labelled resource is not this restriction's business");
        assert!(b.get("total").is_none());
        // Concerning the patient without hiding anything still drops `total`.
        let mut b = bundle(vec![obs("a", "p1", None)]);
        assert_eq!(plan.apply(&mut b, Some(&k)), (Ok(true), vec![]));
        assert!(b.get("total").is_none());
        // Other patients' bundles are untouched.
        let mut b = bundle(vec![obs("c", "p2", Some("PSY"))]);
        assert_eq!(plan.apply(&mut b, Some(&k)), (Ok(false), vec![]));
        assert_eq!(b["total"], 1);
    }

    #[test]
    fn single_reads_are_refused() {
        let r = restrictions(PatientIds::Raw, "p1");
        let plan = r.plan("fhir", &["TREAT".into()], None).unwrap();
        assert_eq!(
            plan.apply(&mut obs("b", "p1", Some("PSY")), None),
            (Err(DenyReason::Restricted), vec![RestrictionHit { id: "r1".into(), count: 1 }])
        );
        assert_eq!(plan.apply(&mut obs("b", "p1", Some("HIV")), None).0, Ok(false));
        assert_eq!(plan.apply(&mut obs("b", "p2", Some("PSY")), None).0, Ok(false));
        let labelled_patient = json!({"resourceType": "Patient", "id": "p1", "meta": {"security": [{"system": ACT, "code": "ETH"}]}});
        assert_eq!(plan.apply(&mut labelled_patient.clone(), None).0, Err(DenyReason::Restricted));
        // A label on a contained resource restricts its container.
        let mut c = obs("x", "p1", None);
        c["contained"] = json!([{"resourceType": "Condition", "id": "c", "meta": {"security": [{"system": ACT, "code": "PSY"}]}}]);
        assert_eq!(plan.apply(&mut c, None).0, Err(DenyReason::Restricted));
        // The token's patient counts even for resources outside the compartment.
        let plan = r.plan("fhir", &[], Some("p1")).unwrap();
        let mut med = json!({"resourceType": "Medication", "id": "m", "meta": {"security": [{"system": ACT, "code": "ETH"}]}});
        assert_eq!(plan.apply(&mut med, None).0, Err(DenyReason::Restricted));
    }

    #[test]
    fn allowed_purposes_lift_and_failures_close() {
        let k = key();
        let r = restrictions(PatientIds::Pseudonym, &k.pseudonym("p1"));
        assert!(r.plan("fhir", &["TREAT".into(), "ETREAT".into()], None).is_none());
        let mut scoped = r.clone();
        Arc::make_mut(&mut scoped.list[0]).routes = vec!["clinical".into()];
        assert!(scoped.plan("fhir", &[], None).is_none() && scoped.plan("clinical", &[], None).is_some());
        let plan = r.plan("fhir", &["TREAT".into()], None).unwrap();
        assert_eq!(plan.apply(&mut obs("b", "p1", Some("PSY")), None).0, Err(DenyReason::MinimizationFailed), "no key, no names");
        let mut bad = obs("b", "p1", None);
        bad["meta"] = json!({"security": {"code": "PSY"}});
        assert_eq!(plan.apply(&mut bad, Some(&k)).0, Err(DenyReason::MinimizationFailed));
        assert_eq!(plan.apply(&mut json!([1]), Some(&k)).0, Err(DenyReason::ResponseUnexpectedShape));
        // Nested bundles (batch responses) are filtered too.
        let mut outer = bundle(vec![bundle(vec![obs("b", "p1", Some("PSY")), obs("a", "p1", None)])]);
        assert_eq!(plan.apply(&mut outer, Some(&k)), (Ok(true), vec![RestrictionHit { id: "r1".into(), count: 1 }]));
        assert_eq!(outer["entry"][0]["resource"]["entry"].as_array().unwrap().len(), 1);
    }
}
