//! The agreement rule between the streaming minimizer (`minimize::apply`,
//! `ResponsePlan::release`) and the tree engine kept as its oracle (`minimize::apply_tree`,
//! `ResponsePlan::release_tree`), in one place for `tests/minimize_differential.rs` and the
//! `minimize_stream` fuzz target (which includes this file by path). It lives in a directory so
//! that `cargo test` does not build it as a test crate of its own.
//!
//! The two agree when both refuse with the same reason, or both release with the same withheld
//! paths, count, shadow flag and profile, and bodies that are the same JSON in the same member
//! order (`None` only against `None`). Bytes may differ where JSON allows (whitespace, string
//! escapes): both bodies are parsed and compared as re-serialized text, which keeps member order
//! and, with `arbitrary_precision`, each number's text.
//!
//! One exception: the oracle lets a duplicate object key through (the last value wins), the
//! streaming engine must refuse it (`response_not_json`), since the client's parser may take the
//! other one. It applies when the duplicate is the first problem of a body within the cap; a body
//! that is broken before its first duplicate is refused for that, like the oracle does.
//! A released body must itself be free of duplicate keys.

// Each includer uses a different part of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;

use phi_guard::decision::{DenyReason, Release};
use phi_guard::minimize::Applied;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The first duplicate key of a body, if that is its first problem in document order and the
/// body is within `cap` bytes; `None` when the body has no duplicate key, is too large, or is
/// broken (not JSON, truncated, nested too deep) before its first duplicate. A leading BOM is
/// skipped, as `minimize::body::parse` does.
pub fn first_duplicate_key(body: &[u8], cap: usize) -> Option<String> {
    if body.len() > cap {
        return None;
    }
    let body = body.strip_prefix(BOM).unwrap_or(body);
    match serde_json::from_slice::<NoDuplicates>(body) {
        Err(e) => e.to_string().strip_prefix(DUPLICATE).and_then(|rest| rest.split('`').next()).map(str::to_owned),
        Ok(_) => None,
    }
}

/// Message prefix of the duplicate-key error (the key follows, then a backtick).
const DUPLICATE: &str = "duplicate key `";

/// Deserializes any JSON value and fails on the first object with a repeated key (keys compared
/// after unescaping, as the oracle's parser compares them).
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_unit<E: de::Error>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    // With `arbitrary_precision` a number arrives as a one-member map holding its text.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("{DUPLICATE}{key}`")));
            }
            map.next_value::<NoDuplicates>()?;
            seen.insert(key);
        }
        Ok(NoDuplicates)
    }
}

/// Why the engine and the oracle disagree on one `apply`, or `None` when they agree. `duplicate`
/// is [`first_duplicate_key`] of the input.
pub fn applied_diff(engine: &Result<Applied, DenyReason>, oracle: &Result<Applied, DenyReason>, duplicate: Option<&str>) -> Option<String> {
    if let Some(key) = duplicate {
        return match engine {
            Err(DenyReason::ResponseNotJson) => None,
            other => Some(format!("duplicate key `{key}`: expected response_not_json, engine gave {}", outcome(other))),
        };
    }
    match (engine, oracle) {
        (Err(a), Err(b)) if a == b => None,
        (Ok(a), Ok(b)) => released_diff(a, b),
        (a, b) => Some(format!("engine gave {}, oracle {}", outcome(a), outcome(b))),
    }
}

/// [`applied_diff`] for `ResponsePlan::release`: also the restriction hits, which are recorded
/// whatever the outcome (except where the engine refuses a duplicate key the oracle accepted).
pub fn release_diff(engine: &Release, oracle: &Release, duplicate: Option<&str>) -> Option<String> {
    let mut diffs = Vec::new();
    if duplicate.is_none() && engine.restrictions != oracle.restrictions {
        diffs.push(format!("restrictions: engine {:?}, oracle {:?}", engine.restrictions, oracle.restrictions));
    }
    diffs.extend(applied_diff(&engine.outcome, &oracle.outcome, duplicate));
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

fn released_diff(a: &Applied, b: &Applied) -> Option<String> {
    let mut diffs = Vec::new();
    if a.withheld != b.withheld {
        diffs.push(format!("withheld: engine {:?}, oracle {:?}", a.withheld, b.withheld));
    }
    if a.count != b.count {
        diffs.push(format!("count: engine {}, oracle {}", a.count, b.count));
    }
    if a.shadow != b.shadow {
        diffs.push(format!("shadow: engine {}, oracle {}", a.shadow, b.shadow));
    }
    if a.profile != b.profile {
        diffs.push(format!("profile: engine {:?}, oracle {:?}", a.profile, b.profile));
    }
    match (&a.body, &b.body) {
        (None, None) => {}
        (Some(x), Some(y)) => diffs.extend(body_diff(x, y)),
        (x, y) => diffs.push(format!("body: engine {}, oracle {}", presence(x), presence(y))),
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

/// Whether two released bodies are the same JSON in the same member order.
fn body_diff(engine: &[u8], oracle: &[u8]) -> Option<String> {
    if let Some(key) = first_duplicate_key(engine, usize::MAX) {
        return Some(format!("body: the engine released a duplicate key `{key}`"));
    }
    if engine == oracle {
        return None;
    }
    let canonical = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).map(|v| v.to_string());
    let (x, y) = match (canonical(engine), canonical(oracle)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) => return Some(format!("body: the engine released bytes that are not JSON: {e}")),
        (_, Err(e)) => return Some(format!("body: the oracle released bytes that are not JSON: {e}")),
    };
    if x == y {
        return None;
    }
    let at = x.bytes().zip(y.bytes()).take_while(|(a, b)| a == b).count();
    Some(format!(
        "body differs at byte {at} of the re-serialized JSON ({} vs {} bytes): engine …{}…, oracle …{}…",
        x.len(),
        y.len(),
        excerpt(&x, at),
        excerpt(&y, at)
    ))
}

/// About 60 characters of `s` around byte `at`.
fn excerpt(s: &str, at: usize) -> &str {
    let mut start = at.saturating_sub(30);
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + 30).min(s.len());
    while !s.is_char_boundary(end) {
        end += 1;
    }
    &s[start..end]
}

fn outcome(r: &Result<Applied, DenyReason>) -> String {
    match r {
        Ok(a) => format!("a release ({} withheld, body {})", a.count, presence(&a.body)),
        Err(reason) => format!("`{}`", reason.code()),
    }
}

fn presence(body: &Option<Vec<u8>>) -> String {
    match body {
        Some(b) => format!("of {} bytes", b.len()),
        None => "unchanged (None)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_in_document_order() {
        let dup = |s: &str| first_duplicate_key(s.as_bytes(), usize::MAX);
        assert_eq!(dup(r#"{"a": 1, "b": {"c": [1, {"d": 2, "d": 3}]}}"#).as_deref(), Some("d"));
        assert_eq!(dup(r#"{"a": 1, "\u0061": 2}"#).as_deref(), Some("a"), "compared unescaped");
        assert_eq!(dup(r#"[{"a": 1}, {"a": 2.50}]"#), None, "distinct objects");
        assert_eq!(dup(r#"{"resourceType": "Patient", "x": 1e400}"#), None);
        assert_eq!(dup("\u{feff}{\"a\": 1, \"a\": 1}").as_deref(), Some("a"), "after a BOM");
        // Broken before the duplicate: the oracle's refusal stands.
        assert_eq!(dup(r#"{"a": 1, , "a": 2}"#), None);
        assert_eq!(dup(r#"{"a": tru, "a": 2}"#), None);
        // Broken after it: the duplicate comes first.
        assert_eq!(dup(r#"{"a": 1, "a": 2, "#).as_deref(), Some("a"));
        assert_eq!(dup(r#"{"a": 1, "a": 2} trailing"#).as_deref(), Some("a"));
        assert_eq!(first_duplicate_key(br#"{"a": 1, "a": 1}"#, 4), None, "over the cap");
    }

    #[test]
    fn bodies_compare_as_json_in_member_order() {
        let ok = |body: &[u8]| Ok(Applied { body: Some(body.to_vec()), ..Applied::default() });
        assert_eq!(applied_diff(&ok(b"{ \"a\" : \"\\u00e9\" }"), &ok("{\"a\":\"é\"}".as_bytes()), None), None);
        assert!(applied_diff(&ok(br#"{"b":1,"a":2}"#), &ok(br#"{"a":2,"b":1}"#), None).is_some(), "member order");
        assert!(applied_diff(&ok(br#"{"a":1.50}"#), &ok(br#"{"a":1.5}"#), None).is_some(), "number text");
        assert!(applied_diff(&ok(br#"{"a":1,"a":1}"#), &ok(br#"{"a":1}"#), None).is_some(), "duplicate in the output");
        assert!(applied_diff(&ok(b"{}"), &Ok(Applied::default()), None).is_some(), "Some vs None");
        let not_json = Err(DenyReason::ResponseNotJson);
        assert_eq!(applied_diff(&not_json, &ok(b"{}"), Some("a")), None);
        assert!(applied_diff(&ok(b"{}"), &ok(b"{}"), Some("a")).is_some());
        assert!(applied_diff(&not_json, &Err(DenyReason::ResponseTruncated), None).is_some());
    }
}
