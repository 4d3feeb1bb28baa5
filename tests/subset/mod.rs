//! The "minimized output ⊆ input" property, in one place for `tests/minimize.rs` and the
//! `minimize` fuzz target (which includes this file by path), so a rule that is loosened or
//! tightened here changes what both check. It lives in a directory so that `cargo test` does not
//! build it as a test crate of its own.
//!
//! Everything in the output must come from the input or from a transform of it:
//!
//! - keys: every key path of the output is one of the input (array positions omitted), apart
//!   from the REDACTED security label a minimized resource gets and the `comparator` of an Age
//!   the `age90` generalization rewrote;
//! - strings: an input string; a prefix of one (a date cut to its year, a ZIP code cut to three
//!   digits, a link without its query); `000` (a restricted ZIP prefix) or `90+`; a mask (`*`
//!   then the end of an input string or number); a 64-digit hex HMAC; a URL whose base starts an
//!   input string and whose every query pair occurs in one (`paging-only` links);
//!   de-identification's additions: the `[REDACTED]` placeholder of scrubbed free text (and the
//!   placeholder narrative of a withheld one) and keyed pseudonyms (version-8 UUIDs, and the
//!   `identifier=urn:phi-guard:pseudonym|` search of a conditional reference), with every other
//!   piece of the string a piece of an input string;
//! - numbers: an input number (same text), or the `90` of a rewritten Age.
//!
//! The label and the rewritten Age parts are recognised by their exact shape and set aside
//! before the rest is compared, so the words they use (`REDACTED`, `years`, `>=`) are not
//! accepted anywhere else.

// Each includer uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ops::Bound;

use serde_json::{Map, Value};

/// `meta.security` system of the REDACTED label (`phi_guard::minimize::fhir::LABEL_SYSTEM`,
/// spelled out so a change there is noticed here).
const LABEL_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// Every string value in a JSON tree.
pub fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The text of every number in a JSON tree (exactly as written: numbers are kept verbatim).
pub fn numbers(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| numbers(x, out)),
        Value::Object(m) => m.values().for_each(|x| numbers(x, out)),
        _ => {}
    }
}

/// Key paths (array positions omitted).
pub fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| key_paths(x, prefix, out)),
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(p.clone());
                key_paths(x, &p, out);
            }
        }
        _ => {}
    }
}

/// What de-identification writes for an identifier in free text.
const PLACEHOLDER: &str = "[REDACTED]";

/// The search a pseudonymized conditional reference (or `ifNoneExist`) makes.
const CONDITIONAL: &str = "identifier=urn:phi-guard:pseudonym|";

/// The parts of the narrative that replaces one with an identifier when free text is withheld.
const WITHHELD_DIV_PARTS: [&str; 2] = [r#"<div xmlns="http://www.w3.org/1999/xhtml">"#, "</div>"];

/// Whether `s` is a pseudonym: an RFC 9562 version-8 UUID in lowercase hex.
fn is_pseudonym(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { matches!(c, b'0'..=b'9' | b'a'..=b'f') })
        && b[14] == b'8'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// `s` split around the pseudonyms in it.
fn split_pseudonyms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut at, mut i) = (0, 0);
    while i + 36 <= s.len() {
        if s.is_char_boundary(i) && s.is_char_boundary(i + 36) && is_pseudonym(&s[i..i + 36]) {
            out.push(s[at..i].to_owned());
            i += 36;
            at = i;
        } else {
            i += 1;
        }
    }
    out.push(s[at..].to_owned());
    out
}

/// Whether `v` is the REDACTED label the minimizer adds.
fn is_label(v: &Value) -> bool {
    v.as_object().is_some_and(|m| {
        m.len() == 3
            && m.get("system").and_then(Value::as_str) == Some(LABEL_SYSTEM)
            && m.get("code").and_then(Value::as_str) == Some("REDACTED")
            && m.get("display").and_then(Value::as_str) == Some("redacted")
    })
}

/// Whether an object is an Age that `age90` rewrote (`value: 90`, `comparator: ">="`).
fn is_rewritten_age(m: &Map<String, Value>) -> bool {
    m.get("comparator").and_then(Value::as_str) == Some(">=") && m.get("value").and_then(Value::as_u64) == Some(90)
}

/// A copy of the output without what the minimizer adds by design: the REDACTED label of a
/// resource (and the `meta.security` / `meta` it had to create for it), and the parts of a
/// rewritten Age (`value`, `comparator`, `unit: "years"`, `code: "a"`).
fn without_additions(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(without_additions).collect()),
        Value::Object(m) => {
            let mut out: Map<String, Value> = m.iter().map(|(k, x)| (k.clone(), without_additions(x))).collect();
            if m.contains_key("resourceType") {
                let mut drop_meta = false;
                if let Some(Value::Object(meta)) = out.get_mut("meta") {
                    let mut drop_security = false;
                    if let Some(Value::Array(labels)) = meta.get_mut("security") {
                        labels.retain(|l| !is_label(l));
                        drop_security = labels.is_empty();
                    }
                    if drop_security {
                        meta.shift_remove("security");
                    }
                    drop_meta = meta.is_empty();
                }
                if drop_meta {
                    out.shift_remove("meta");
                }
            }
            if is_rewritten_age(m) {
                out.shift_remove("comparator");
                out.shift_remove("value");
                for (k, word) in [("unit", "years"), ("code", "a")] {
                    if out.get(k).and_then(Value::as_str) == Some(word) {
                        out.shift_remove(k);
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// What the output is compared against, gathered once per input (the fuzz target checks many
/// outputs of one input).
pub struct Input {
    keys: BTreeSet<String>,
    strings: BTreeSet<String>,
    numbers: BTreeSet<String>,
}

impl Input {
    /// Key paths, strings and numbers of `input`.
    pub fn new(input: &Value) -> Self {
        let mut keys = BTreeSet::new();
        key_paths(input, "", &mut keys);
        let (mut strs, mut nums) = (Vec::new(), Vec::new());
        strings(input, &mut strs);
        numbers(input, &mut nums);
        Input { keys, strings: strs.into_iter().collect(), numbers: nums.into_iter().collect() }
    }

    /// Whether some input string starts with `s` (those strings sort right after `s`).
    fn starts_one(&self, s: &str) -> bool {
        self.strings.range::<str, _>((Bound::Included(s), Bound::Unbounded)).next().is_some_and(|i| i.starts_with(s))
    }

    /// Whether `s` can be what a transform made of the input.
    fn derived(&self, s: &str) -> bool {
        self.strings.contains(s)
            || ["000", "90+"].contains(&s)
            || self.starts_one(s)
            || (s.contains('*') && {
                let shown = s.trim_start_matches('*');
                self.strings.iter().chain(&self.numbers).any(|i| i.ends_with(shown))
            })
            || (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            || s.split_once('?')
                .is_some_and(|(base, q)| self.starts_one(base) && q.split('&').all(|pair| self.strings.iter().any(|i| i.contains(pair))))
            || self.pieces_within(s)
    }

    /// Whether `s` holds de-identification markers (placeholders, pseudonyms) and every piece
    /// between them is part of an input string.
    fn pieces_within(&self, s: &str) -> bool {
        let mut pieces = vec![s.to_owned()];
        for marker in [PLACEHOLDER, CONDITIONAL] {
            pieces = pieces.iter().flat_map(|p| p.split(marker).map(str::to_owned).collect::<Vec<_>>()).collect();
        }
        pieces = pieces.iter().flat_map(|p| split_pseudonyms(p)).collect();
        let marked = pieces.len() > 1 || s.contains(PLACEHOLDER) || is_pseudonym(s);
        let within = |p: &str| self.strings.iter().any(|i| i.contains(p));
        marked
            && pieces.iter().filter(|p| !p.is_empty()).all(|p| {
                within(p)
                    || WITHHELD_DIV_PARTS.contains(&p.as_str())
                    // A link's path after a pseudonym, with its query cut to paging parameters.
                    || p.split_once('?').is_some_and(|(path, q)| (path.is_empty() || within(path)) && q.split('&').all(within))
            })
    }

    /// `Ok` when `output` is within this input by the rules above; otherwise the first
    /// offending key path or value.
    pub fn check(&self, output: &Value) -> Result<(), String> {
        let output = without_additions(output);
        let mut keys = BTreeSet::new();
        key_paths(&output, "", &mut keys);
        if let Some(k) = keys.iter().find(|k| !self.keys.contains(*k)) {
            return Err(format!("key `{k}` is not in the input"));
        }
        let (mut strs, mut nums) = (Vec::new(), Vec::new());
        strings(&output, &mut strs);
        numbers(&output, &mut nums);
        if let Some(s) = strs.iter().find(|s| !self.derived(s)) {
            return Err(format!("value `{s}` does not come from the input"));
        }
        if let Some(n) = nums.iter().find(|n| !self.numbers.contains(*n)) {
            return Err(format!("number `{n}` does not come from the input"));
        }
        Ok(())
    }
}

/// `Ok` when `output` is within `input` by the rules above; otherwise the first offending key
/// path or value.
pub fn check_subset(input: &Value, output: &Value) -> Result<(), String> {
    Input::new(input).check(output)
}

/// [`check_subset`], as an assertion naming `what` was minimized.
pub fn assert_subset(input: &Value, output: &Value, what: &str) {
    if let Err(e) = check_subset(input, output) {
        panic!("{what}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "birthDate": "1984-07-02", "multipleBirthInteger": 2,
               "identifier": [{"system": "urn:oid:1.2.36", "value": "999-48-8934"}],
               "address": [{"postalCode": "01887"}],
               "extension": [{"url": "http://x/age", "valueAge": {"value": 93, "unit": "yr", "code": "yr"}}],
               "link": [{"url": "https://h/fhir/Patient?name=Lee&_count=5"}]})
    }

    #[test]
    fn accepts_what_transforms_make() {
        let out = json!({"resourceType": "Patient", "id": "p1",
            "meta": {"security": [{"system": LABEL_SYSTEM, "code": "REDACTED", "display": "redacted"}]},
            "birthDate": "1984", "multipleBirthInteger": 2,
            "identifier": [{"system": "*******1.2.36", "value": "4f6c9bd1d1e47ac0a5b3ad5a1e4e9b0bd2c0c5b7e9a14d2ad6b3e3c1f0e2a9b8"}],
            "address": [{"postalCode": "018"}],
            "extension": [{"url": "http://x/age", "valueAge": {"value": 90, "unit": "years", "code": "a", "comparator": ">="}}],
            "link": [{"url": "https://h/fhir/Patient?_count=5"}]});
        assert_eq!(check_subset(&patient(), &out), Ok(()));
        // A masked number keeps the end of the number's text.
        assert_eq!(check_subset(&json!({"mrn": 12345}), &json!({"mrn": "***45"})), Ok(()));
    }

    #[test]
    fn rejects_an_invented_value() {
        let mut out = patient();
        out["identifier"][0]["value"] = json!("123-45-6789");
        assert_eq!(check_subset(&patient(), &out), Err("value `123-45-6789` does not come from the input".into()));
        let mut out = patient();
        out["multipleBirthInteger"] = json!(3);
        assert_eq!(check_subset(&patient(), &out), Err("number `3` does not come from the input".into()));
        // The label's words are accepted in the label only.
        let mut out = patient();
        out["gender"] = json!("REDACTED");
        assert!(check_subset(&patient(), &out).is_err());
    }

    #[test]
    fn rejects_an_invented_key() {
        let mut out = patient();
        out["address"][0]["city"] = json!("01887");
        assert_eq!(check_subset(&patient(), &out), Err("key `address.city` is not in the input".into()));
        // A label on something that is not a resource is not one the minimizer adds.
        let out = json!({"report": {"meta": {"security": [{"system": LABEL_SYSTEM, "code": "REDACTED", "display": "redacted"}]}}});
        assert_eq!(check_subset(&json!({"report": {}}), &out), Err("key `report.meta` is not in the input".into()));
        // `comparator` only with a rewritten Age.
        let out = json!({"valueAge": {"value": 93, "comparator": ">="}});
        assert!(check_subset(&json!({"valueAge": {"value": 93}}), &out).is_err());
    }
}
