//! The rule engine over JSON objects: decides each key's fate from the active rule cursors,
//! applies transforms and profile-wide value policies, prunes containers it emptied, and hands
//! nested FHIR resources to [`super::fhir`].

use serde_json::{Map, Value};

use super::generalize::{date_year, INSTANT_KEYS};
use super::profile::FhirRules;
use super::rules::{Action, Mode, Node, RuleSet};
use super::transform::{Keys, Transform, Transformed};
use super::withheld::Withheld;
use crate::reason::DenyReason;

/// Deepest nesting walked; serde_json already stops at 128 while parsing.
const MAX_DEPTH: usize = 256;

/// Keys whose values are identifiers or codes, never dates to generalize.
const NOT_DATES: [&str; 8] = ["id", "resourceType", "versionId", "reference", "system", "url", "code", "version"];

/// Where the walk stands in the rules.
#[derive(Debug, Clone)]
pub struct Cursor<'r> {
    /// Rules of the enclosing resource (or body).
    pub rules: &'r RuleSet,
    /// Node of the anchored trie for this object, if any rule reaches here.
    pub anchored: Option<&'r Node>,
    /// Whether unmatched keys are released (deny mode, or inside an allowed subtree).
    pub keep: bool,
    /// `**.` paths matched part-way.
    pub partials: Vec<&'r Node>,
    /// `**.` rules apply here.
    pub anywhere: bool,
    /// Profile-wide value policies (dates, reference display) apply here.
    pub values: bool,
}

impl<'r> Cursor<'r> {
    /// The cursor at a resource root (or plain JSON body root).
    pub fn root(rules: &'r RuleSet) -> Self {
        Cursor { rules, anchored: Some(&rules.root), keep: rules.mode == Mode::Deny, partials: Vec::new(), anywhere: true, values: true }
    }

    /// Whether nothing below can change (plain JSON fast path).
    pub fn is_inert(&self) -> bool {
        self.keep
            && self.anchored.is_none_or(|n| n.children.is_empty())
            && self.partials.is_empty()
            && (!self.anywhere || self.rules.anywhere.children.is_empty())
    }
}

/// The fate of one key (or one extension element).
pub enum Fate<'r> {
    /// Withhold it.
    Remove,
    /// Release a transformed value.
    Transform(Transform),
    /// Release it, walking inside with this cursor.
    Walk(Cursor<'r>),
}

/// Whether a walked value stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Drop it (withheld, or emptied by withholding).
    Drop,
}

/// Decide the fate of `key` (with `url` for an extension element).
/// [`Map::retain`] with a predicate that can fail: after the first error no further entry is
/// visited or removed, and the error is returned (the caller then withholds the whole body).
pub fn try_retain(
    map: &mut Map<String, Value>,
    mut keep: impl FnMut(&String, &mut Value) -> Result<bool, DenyReason>,
) -> Result<(), DenyReason> {
    let mut failure = None;
    map.retain(|k, v| {
        if failure.is_some() {
            return true;
        }
        keep(k, v).unwrap_or_else(|e| {
            failure = Some(e);
            true
        })
    });
    failure.map_or(Ok(()), Err)
}

/// [`try_retain`] for array elements.
pub fn try_retain_items(items: &mut Vec<Value>, mut keep: impl FnMut(&mut Value) -> Result<bool, DenyReason>) -> Result<(), DenyReason> {
    let mut failure = None;
    items.retain_mut(|item| {
        if failure.is_some() {
            return true;
        }
        keep(item).unwrap_or_else(|e| {
            failure = Some(e);
            true
        })
    });
    failure.map_or(Ok(()), Err)
}

pub fn fate<'r>(cur: &Cursor<'r>, key: &str, url: Option<&str>) -> Fate<'r> {
    let mut remove = false;
    let mut transform = None;
    let mut hit: Option<&'r Node> = None;
    let mut partials = Vec::new();
    if let Some(anchored) = cur.anchored {
        for n in anchored.matching(key, url) {
            match n.action {
                Some(Action::Remove) => remove = true,
                Some(Action::Transform(t)) => {
                    transform.get_or_insert(t);
                }
                Some(Action::Keep) | None => {}
            }
            if hit.is_none_or(|h| h.action != Some(Action::Keep)) {
                hit = Some(n);
            }
        }
    }
    let anywhere = cur.anywhere.then_some(&cur.rules.anywhere);
    for root in anywhere.into_iter().chain(cur.partials.iter().copied()) {
        for n in root.matching(key, url) {
            match n.action {
                Some(Action::Remove) => remove = true,
                Some(Action::Transform(t)) => {
                    transform.get_or_insert(t);
                }
                Some(Action::Keep) | None => {}
            }
            if !n.children.is_empty() {
                partials.push(n);
            }
        }
    }
    if remove {
        return Fate::Remove;
    }
    if let Some(t) = transform {
        return Fate::Transform(t);
    }
    let keep_inside = match hit {
        Some(n) => cur.keep || n.action == Some(Action::Keep),
        None if cur.keep => true,
        None => return Fate::Remove,
    };
    Fate::Walk(Cursor {
        rules: cur.rules,
        anchored: hit,
        keep: keep_inside || cur.rules.mode == Mode::Deny,
        partials,
        anywhere: cur.anywhere,
        values: cur.values,
    })
}

/// Whether some active rule selects elements of `key` by extension url.
fn selects_by_url(cur: &Cursor<'_>, key: &str) -> bool {
    (key == "extension" || key == "modifierExtension")
        && (cur.anchored.is_some_and(|n| n.has_url_edges(key))
            || (cur.anywhere && cur.rules.anywhere.has_url_edges(key))
            || cur.partials.iter().any(|n| n.has_url_edges(key)))
}

/// Whether an object looks like a FHIR Reference (has `reference`, or a `display` that is not
/// a Coding's).
fn is_reference(map: &Map<String, Value>) -> bool {
    map.contains_key("display") && (map.contains_key("reference") || !(map.contains_key("code") || map.contains_key("system")))
}

/// One minimization run over a parsed body.
pub struct Walker<'p> {
    /// FHIR rules, or `None` for a plain JSON body.
    pub fhir: Option<&'p FhirRules>,
    /// Transform inputs.
    pub keys: Keys,
    /// What has been withheld.
    pub withheld: Withheld,
    /// Current nesting depth.
    pub depth: usize,
}

impl<'p> Walker<'p> {
    /// Walk an object's keys with `cur`. `_x` siblings follow `x` (FHIR only).
    pub fn object(&mut self, map: &mut Map<String, Value>, cur: &Cursor<'p>) -> Result<(), DenyReason> {
        self.object_with(map, cur, false)
    }

    /// [`Walker::object`]; at a resource `root`, `resourceType`, `id` and `text` are left for
    /// the caller, `meta` keeps everything but what rules name, and `contained` holds resources.
    pub fn object_with(&mut self, map: &mut Map<String, Value>, cur: &Cursor<'p>, root: bool) -> Result<(), DenyReason> {
        self.enter()?;
        let fhir = self.fhir;
        if let Some(f) = fhir {
            if cur.values && f.remove_reference_display && is_reference(map) {
                if map.shift_remove("display").is_some() {
                    self.withheld.record_at("display");
                }
                map.shift_remove("_display");
            }
        }
        let siblings = fhir.is_some() && map.keys().any(|k| k.starts_with('_'));
        let mut changed: Vec<String> = Vec::new();
        let mut result = try_retain(map, |k, v| {
            if siblings && k.starts_with('_') {
                return Ok(true);
            }
            let before = self.withheld.count();
            let verdict = match (root, k.as_str()) {
                (true, "resourceType" | "id" | "text") => Verdict::Keep,
                (true, "meta") => self.meta(v, cur.rules)?,
                (true, "contained") => self.contained(v, cur)?,
                _ => self.field(k, v, cur)?,
            };
            if siblings && (verdict == Verdict::Drop || self.withheld.count() > before) {
                changed.push(k.clone());
            }
            Ok(verdict == Verdict::Keep)
        });
        if siblings && result.is_ok() {
            result = try_retain(map, |k, v| {
                let Some(base) = k.strip_prefix('_') else {
                    return Ok(true);
                };
                // The element was withheld or rewritten: its extensions (e.g. birthTime on
                // `_birthDate`) would repeat the exact value.
                if changed.iter().any(|c| c == base) {
                    return Ok(false);
                }
                match fate(cur, base, None) {
                    Fate::Remove | Fate::Transform(_) => {
                        self.withheld.record_at(base);
                        Ok(false)
                    }
                    Fate::Walk(c) => Ok(self.value(base, v, &c)? == Verdict::Keep),
                }
            });
        }
        self.depth -= 1;
        result
    }

    /// Decide and process one key of an object.
    pub fn field(&mut self, key: &str, v: &mut Value, cur: &Cursor<'p>) -> Result<Verdict, DenyReason> {
        if selects_by_url(cur, key) {
            if let Value::Array(items) = v {
                return self.extensions(key, items, cur);
            }
        }
        match fate(cur, key, None) {
            Fate::Remove => {
                self.withheld.record_at(key);
                Ok(Verdict::Drop)
            }
            Fate::Transform(t) => Ok(self.transform(key, v, t)),
            Fate::Walk(c) => {
                if self.fhir.is_none() && c.is_inert() {
                    return Ok(Verdict::Keep);
                }
                self.value(key, v, &c)
            }
        }
    }

    fn transform(&mut self, key: &str, v: &mut Value, t: Transform) -> Verdict {
        match t.apply(v, &self.keys) {
            Transformed::Unchanged => Verdict::Keep,
            Transformed::Changed => {
                self.withheld.record_at(key);
                Verdict::Keep
            }
            Transformed::Remove => {
                self.withheld.record_at(key);
                Verdict::Drop
            }
        }
    }

    /// Extension elements, each decided by its `url`.
    fn extensions(&mut self, key: &str, items: &mut Vec<Value>, cur: &Cursor<'p>) -> Result<Verdict, DenyReason> {
        let was_empty = items.is_empty();
        try_retain_items(items, |item| {
            let url = item.get("url").and_then(Value::as_str).map(str::to_owned);
            let len = match &url {
                Some(u) => self.withheld.push_qualified(key, u),
                None => self.withheld.push(key),
            };
            let keep = match fate(cur, key, url.as_deref()) {
                Fate::Remove => {
                    self.withheld.record();
                    Ok(false)
                }
                Fate::Transform(t) => Ok(match t.apply(item, &self.keys) {
                    Transformed::Unchanged => true,
                    Transformed::Changed => {
                        self.withheld.record();
                        true
                    }
                    Transformed::Remove => {
                        self.withheld.record();
                        false
                    }
                }),
                Fate::Walk(c) => self.element(item, &c).map(|v| v == Verdict::Keep),
            };
            self.withheld.pop(len);
            keep
        })?;
        Ok(if !was_empty && items.is_empty() { Verdict::Drop } else { Verdict::Keep })
    }

    /// Walk the value of `key` (arrays element-wise, with the path pushed once per element).
    pub fn value(&mut self, key: &str, v: &mut Value, cur: &Cursor<'p>) -> Result<Verdict, DenyReason> {
        match v {
            Value::Array(items) => {
                let was_empty = items.is_empty();
                try_retain_items(items, |item| Ok(self.keyed_element(key, item, cur)? == Verdict::Keep))?;
                Ok(if !was_empty && items.is_empty() { Verdict::Drop } else { Verdict::Keep })
            }
            _ => self.keyed_element(key, v, cur),
        }
    }

    /// One element under `key`: a nested resource gets its own rules and path `key(Type)`.
    fn keyed_element(&mut self, key: &str, v: &mut Value, cur: &Cursor<'p>) -> Result<Verdict, DenyReason> {
        if self.fhir.is_some() {
            if let Value::Object(map) = v {
                if map.contains_key("resourceType") {
                    return self.nested_resource(key, map).map(|()| Verdict::Keep);
                }
            }
        }
        let len = self.withheld.push(key);
        let verdict = match v {
            Value::String(s) if cur.values => Ok(self.date_value(key, s)),
            _ => self.element(v, cur),
        };
        self.withheld.pop(len);
        verdict
    }

    /// Walk one value whose path is already pushed.
    fn element(&mut self, v: &mut Value, cur: &Cursor<'p>) -> Result<Verdict, DenyReason> {
        match v {
            Value::Object(map) => {
                let was_empty = map.is_empty();
                self.object(map, cur)?;
                Ok(if !was_empty && map.is_empty() { Verdict::Drop } else { Verdict::Keep })
            }
            Value::Array(items) => {
                // Arrays of arrays do not occur in FHIR; walk them all the same.
                self.enter()?;
                let was_empty = items.is_empty();
                let result = try_retain_items(items, |item| Ok(self.element(item, cur)? == Verdict::Keep));
                self.depth -= 1;
                result?;
                Ok(if !was_empty && items.is_empty() { Verdict::Drop } else { Verdict::Keep })
            }
            _ => Ok(Verdict::Keep),
        }
    }

    /// The profile-wide date policy on a string value at `key` (path pushed).
    fn date_value(&mut self, key: &str, s: &mut String) -> Verdict {
        let Some(f) = self.fhir else {
            return Verdict::Keep;
        };
        if !f.dates_to_year || NOT_DATES.contains(&key) {
            return Verdict::Keep;
        }
        match date_year(s) {
            Some((_, true)) if INSTANT_KEYS.contains(&key) => {
                self.withheld.record();
                Verdict::Drop
            }
            Some((year, true)) => {
                let year = year.to_owned();
                *s = year;
                self.withheld.record();
                Verdict::Keep
            }
            _ => Verdict::Keep,
        }
    }

    /// Count one level of nesting; refuse absurd depths rather than risk the stack.
    pub fn enter(&mut self) -> Result<(), DenyReason> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(DenyReason::MinimizationFailed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::minimize::testing::{profile, run};
    use crate::reason::DenyReason;
    use serde_json::{json, Value};

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn allowlist_keeps_only_listed_fields_in_order() {
        let p = profile(json!({"mode": "allow", "fields": {"allow": ["name.given", "zip", "visits"], "deny": ["visits.notes"]}}), false);
        let (out, r) = run(
            &p,
            json!({"id": 7, "name": {"given": "Ann", "family": "Lee"}, "ssn": "999-00-1234", "zip": "01887",
                                      "visits": [{"date": "2020", "notes": "x"}, {"notes": "y"}]}),
        )
        .unwrap();
        assert_eq!(out, json!({"name": {"given": "Ann"}, "zip": "01887", "visits": [{"date": "2020"}]}));
        assert_eq!(keys(&out), ["name", "zip", "visits"]);
        assert_eq!(r.withheld, ["id", "name.family", "ssn", "visits.notes"]);
        assert_eq!(r.count, 5);
    }

    #[test]
    fn denylist_and_anywhere_rules() {
        let p = profile(
            json!({"mode": "deny", "fields": {"deny": ["**.ssn", "a.b"], "transform": [{"path": "**.mrn", "transform": "mask", "keepLast": 2}]}}),
            false,
        );
        let (out, r) = run(&p, json!([{"ssn": 1, "a": {"b": 1, "c": 2}, "x": [{"y": {"ssn": 2, "mrn": "12345"}}]}, {"_id": 3}])).unwrap();
        assert_eq!(out, json!([{"a": {"c": 2}, "x": [{"y": {"mrn": "***45"}}]}, {"_id": 3}]));
        assert_eq!(r.withheld, ["a.b", "ssn", "x.y.mrn", "x.y.ssn"]);
    }

    #[test]
    fn plain_json_shapes() {
        let p = profile(json!({"fields": {"allow": ["a"]}}), false);
        assert_eq!(run(&p, json!("x")).unwrap_err(), DenyReason::ResponseUnexpectedShape);
        assert_eq!(run(&p, json!([{"a": 1}, 2])).unwrap_err(), DenyReason::ResponseUnexpectedShape);
        assert_eq!(run(&p, json!([])).unwrap().0, json!([]));
    }

    #[test]
    fn emptied_containers_are_pruned() {
        let p = profile(
            json!({"mode": "deny", "resources": {"Patient": {"deny": ["telecom.value", "telecom.system", "telecom.use"]}}, "otherResources": "allow"}),
            true,
        );
        let (out, r) = run(&p, json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "555"}, {"use": "old", "period": {"end": "2014"}}], "other": {}}))
            .unwrap();
        assert_eq!(out["telecom"], json!([{"period": {"end": "2014"}}]));
        assert_eq!(out["other"], json!({}), "pre-existing empties are not ours to remove");
        assert_eq!(r.count, 3);
        let (out, _) = run(&p, json!({"resourceType": "Patient", "telecom": [{"value": "555"}]})).unwrap();
        assert!(out.get("telecom").is_none());
    }

    #[test]
    fn primitive_extension_siblings_follow_their_element() {
        let birth_time = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "2000-01-01T01:01:01-01:00"}]});
        let patient = json!({"resourceType": "Patient", "birthDate": "2000-01-01", "_birthDate": birth_time, "gender": "male", "_gender": {"id": "g"}});
        // Allowed: the sibling stays.
        let p = profile(json!({"resources": {"Patient": {"allow": ["birthDate"]}}}), true);
        let (out, r) = run(&p, patient.clone()).unwrap();
        assert_eq!(out["_birthDate"], birth_time);
        assert!(out.get("_gender").is_none() && out.get("gender").is_none());
        assert_eq!(r.withheld, ["Patient.gender"]);
        // Removed: the sibling goes too.
        let p = profile(json!({"mode": "deny", "resources": {"Patient": {"deny": ["birthDate"]}}}), true);
        let (out, r) = run(&p, patient.clone()).unwrap();
        assert!(out.get("_birthDate").is_none() && out.get("birthDate").is_none());
        assert_eq!(r.withheld, ["Patient.birthDate"]);
        assert_eq!(r.count, 1);
        // Transformed: the exact time in the extension goes.
        let p = profile(
            json!({"mode": "deny", "resources": {"Patient": {"transform": [{"path": "birthDate", "transform": "generalize", "to": "year"}]}}}),
            true,
        );
        let (out, _) = run(&p, patient.clone()).unwrap();
        assert_eq!(out["birthDate"], "2000");
        assert!(out.get("_birthDate").is_none());
        // A sibling without its element follows the element's rule.
        let p = profile(json!({"mode": "deny", "resources": {"Patient": {"deny": ["birthDate"]}}}), true);
        let (out, r) = run(&p, json!({"resourceType": "Patient", "_birthDate": birth_time})).unwrap();
        assert!(out.get("_birthDate").is_none());
        assert_eq!(r.withheld, ["Patient.birthDate"]);
        // Array siblings (`_given`) inside a kept element are walked with it.
        let p = profile(json!({"resources": {"Patient": {"allow": ["name.family"]}}}), true);
        let (out, _) = run(
            &p,
            json!({"resourceType": "Patient", "name": [{"family": "F", "_family": {"id": "f"}, "given": ["G"], "_given": [null]}]}),
        )
        .unwrap();
        assert_eq!(out["name"], json!([{"family": "F", "_family": {"id": "f"}}]));
    }

    #[test]
    fn choice_elements_and_extension_selectors() {
        let p = profile(json!({"mode": "deny", "resources": {"Patient": {"deny": ["deceased[x]", "extension[url=http://x/b]"]}}}), true);
        let (out, r) = run(&p, json!({"resourceType": "Patient", "deceasedDateTime": "2001", "deceased": 1,
                                     "extension": [{"url": "http://x/a", "valueString": "keep"}, {"url": "http://x/b", "valueString": "drop"}]}))
        .unwrap();
        assert_eq!(
            out,
            json!({"resourceType": "Patient", "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED", "display": "redacted"}]},
                               "deceased": 1, "extension": [{"url": "http://x/a", "valueString": "keep"}]})
        );
        assert_eq!(r.withheld, ["Patient.deceasedDateTime", "Patient.extension(http://x/b)"]);
        let p = profile(json!({"resources": {"Patient": {"allow": ["extension[url=http://x/a]", "gender"]}}}), true);
        let (out, _) = run(
            &p,
            json!({"resourceType": "Patient", "extension": [{"url": "http://x/a"}, {"url": "http://x/b"}, {"valueString": "no url"}]}),
        )
        .unwrap();
        assert_eq!(out["extension"], json!([{"url": "http://x/a"}]));
    }

    #[test]
    fn profile_wide_value_policies() {
        let p = profile(
            json!({"mode": "deny", "otherResources": "allow", "dates": "year", "referenceDisplay": "remove", "resources": {}}),
            true,
        );
        let (out, r) = run(
            &p,
            json!({"resourceType": "Observation", "id": "2019-01-01", "meta": {"versionId": "1", "lastUpdated": "2019-01-01T00:00:00Z"},
            "effectivePeriod": {"start": "2019-03-04T10:00:00+01:00", "end": "2019"}, "issued": "2019-03-04T10:00:00Z",
            "subject": {"reference": "Patient/1", "display": "Ann Lee"}, "performer": [{"display": "Dr X"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8", "display": "Glucose"}]}, "valueString": "2019-03-04"}),
        )
        .unwrap();
        assert_eq!(out["id"], "2019-01-01");
        assert_eq!(out["meta"], json!({"versionId": "1", "security": out["meta"]["security"].clone()}));
        assert_eq!(out["effectivePeriod"], json!({"start": "2019", "end": "2019"}));
        assert!(out.get("issued").is_none());
        assert_eq!(out["subject"], json!({"reference": "Patient/1"}));
        assert!(out.get("performer").is_none());
        assert_eq!(out["code"]["coding"][0]["display"], "Glucose");
        assert_eq!(out["valueString"], "2019");
        assert_eq!(
            r.withheld,
            [
                "Observation.effectivePeriod.start",
                "Observation.issued",
                "Observation.meta.lastUpdated",
                "Observation.performer.display",
                "Observation.subject.display",
                "Observation.valueString"
            ]
        );
    }
}
