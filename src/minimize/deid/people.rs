//! The identifiers of every person in a response, read from the upstream's body before
//! minimization removes them, and the matcher that finds them in free text.
//!
//! Persons are Patient, RelatedPerson and Person resources wherever they appear (Bundle
//! entries, `contained`, nested Bundles), with their `contact`s. Collected: name parts, the
//! mother's maiden name, identifier values, telecom values, address lines, cities, districts,
//! postal codes and birth dates. A digit-bearing identifier or telecom value (phone, SSN, MRN)
//! is matched by its digits whatever the punctuation and spacing between them.

use std::collections::HashSet;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::json::{Kind, Malformed, Reader, Str};

/// Person resource types whose identifiers are collected.
const PERSON_TYPES: [&str; 3] = ["Patient", "RelatedPerson", "Person"];

/// Words shorter than this are not matched alone (initials would redact every `A`).
const MIN_WORD: usize = 2;

/// Digit identifiers shorter than this are not matched by digits (too many clinical numbers).
const MIN_DIGITS: usize = 6;

/// What a response says about its persons.
#[derive(Debug, Default, Clone)]
pub struct People {
    /// Words and phrases matched case-insensitively between word boundaries (lowercase).
    pub words: Vec<String>,
    /// Digit sequences of phone numbers and identifiers, matched whatever the separators.
    pub digits: Vec<String>,
    /// The ids of the Patient resources in the response (for date shifting).
    pub patients: Vec<String>,
}

impl People {
    /// Collect from a whole (validated) body.
    pub fn collect(text: &[u8]) -> Result<People, Malformed> {
        let mut people = People::default();
        if !may_hold_a_person(text) {
            return Ok(people);
        }
        let mut r = Reader::new(text);
        let mut found = Found::default();
        walk(&mut r, "", "", &mut found, &mut people, 0)?;
        people.words.sort_unstable();
        people.words.dedup();
        people.digits.sort_unstable();
        people.digits.dedup();
        people.patients.sort_unstable();
        people.patients.dedup();
        Ok(people)
    }

    /// The matcher for these persons (`None` when there is nothing to look for).
    pub fn matcher(&self) -> Option<Matcher> {
        let words = if self.words.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new().ascii_case_insensitive(true).match_kind(MatchKind::Standard).build(&self.words).ok()
        };
        if words.is_none() && self.digits.is_empty() {
            return None;
        }
        let mut lengths: Vec<usize> = self.digits.iter().map(String::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        Some(Matcher { words, digits: self.digits.iter().cloned().collect(), lengths })
    }

    fn add_words(&mut self, s: &str) {
        let whole = normalize(s);
        for w in whole.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '"')) {
            let w = w.trim_matches(|c: char| matches!(c, '.' | '\'' | '-'));
            if w.chars().count() >= MIN_WORD {
                self.words.push(w.to_owned());
            }
        }
        if whole.contains(' ') {
            self.words.push(whole);
        }
    }

    fn add_phrase(&mut self, s: &str) {
        let p = normalize(s);
        if p.chars().count() >= MIN_WORD {
            self.words.push(p);
        }
    }

    fn add_value(&mut self, s: &str) {
        let digits: String = s.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= MIN_DIGITS {
            self.digits.push(digits);
        }
        self.add_phrase(s);
    }

    fn add_date(&mut self, s: &str) {
        self.add_phrase(s);
        let (Some(y), Some(m), Some(d)) = (s.get(0..4), s.get(5..7), s.get(8..10)) else {
            return;
        };
        let (mt, dt) = (m.trim_start_matches('0'), d.trim_start_matches('0'));
        let yy = y.get(2..).unwrap_or(y);
        for form in [
            format!("{m}/{d}/{y}"),
            format!("{mt}/{dt}/{y}"),
            format!("{m}-{d}-{y}"),
            format!("{mt}-{dt}-{y}"),
            format!("{m}/{d}/{yy}"),
            format!("{mt}/{dt}/{yy}"),
            format!("{d}.{m}.{y}"),
            format!("{y}{m}{d}"),
        ] {
            self.words.push(form);
        }
    }
}

/// Whether a body can name a person resource: some `"resourceType"` member whose value is
/// `"Patient"`, `"RelatedPerson"` or `"Person"` as written, or a `\u` escape anywhere (only an
/// escape can spell those names, or the member's, otherwise). Most responses (an Observation
/// search, a read) hold none and skip the walk; two substring searches cost far less than it.
fn may_hold_a_person(text: &[u8]) -> bool {
    if memchr::memmem::find(text, b"\\u").is_some() {
        return true;
    }
    memchr::memmem::find_iter(text, b"\"resourceType\"").any(|at| {
        let rest = text.get(at + 14..).unwrap_or_default();
        let rest = rest.trim_ascii_start().strip_prefix(b":").unwrap_or_default().trim_ascii_start();
        [&b"\"Patient\""[..], b"\"RelatedPerson\"", b"\"Person\""].iter().any(|p| rest.starts_with(p))
    })
}

/// Lowercase ASCII, whitespace collapsed to one space.
fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase()
}

/// Strings of one object (as written, decoded only when they belong to a person), kept until
/// it is known whether they do.
#[derive(Debug, Default)]
struct Found<'a> {
    words: Vec<Str<'a>>,
    phrases: Vec<Str<'a>>,
    values: Vec<Str<'a>>,
    dates: Vec<Str<'a>>,
    /// A `valueString` of this object (kept if its `url` is the maiden-name extension).
    value_string: Option<Str<'a>>,
    url: Option<Str<'a>>,
}

impl<'a> Found<'a> {
    fn absorb(&mut self, other: Found<'a>) {
        self.words.extend(other.words);
        self.phrases.extend(other.phrases);
        self.values.extend(other.values);
        self.dates.extend(other.dates);
    }

    fn commit(self, people: &mut People) -> Result<(), Malformed> {
        for w in &self.words {
            people.add_words(&w.decode()?);
        }
        for p in &self.phrases {
            people.add_phrase(&p.decode()?);
        }
        for v in &self.values {
            people.add_value(&v.decode()?);
        }
        for d in &self.dates {
            people.add_date(&d.decode()?);
        }
        Ok(())
    }
}

/// Walk a value; `parent` and `key` name where it is (the member holding it and that member's
/// own name). Strings are filed in `found`; a person resource commits its findings.
fn walk<'a>(
    r: &mut Reader<'a>,
    parent: &str,
    key: &str,
    found: &mut Found<'a>,
    people: &mut People,
    depth: usize,
) -> Result<(), Malformed> {
    if depth > crate::json::MAX_DEPTH {
        return Err(Malformed);
    }
    match r.kind()? {
        Kind::Array => {
            r.open()?;
            while r.next_item()? {
                walk(r, parent, key, found, people, depth + 1)?;
            }
        }
        Kind::Object => {
            let mut own = Found::default();
            let mut rt: Option<Str<'a>> = None;
            let mut id: Option<Str<'a>> = None;
            r.open()?;
            while let Some(k) = r.next_key()? {
                let name = k.decode()?;
                match (name.as_ref(), r.kind()?) {
                    ("resourceType", Kind::String) => rt = Some(r.string()?),
                    ("id", Kind::String) => id = Some(r.string()?),
                    ("url", Kind::String) => own.url = Some(r.string()?),
                    (n, Kind::String) => {
                        let s = r.string()?;
                        file(key, n, s, &mut own);
                    }
                    (n, _) => {
                        // `_x` siblings hold extensions only; they are walked under `x`.
                        let n = n.strip_prefix('_').unwrap_or(n);
                        walk(r, key, n, &mut own, people, depth + 1)?;
                    }
                }
            }
            if own.url.map(|u| u.decode()).transpose()?.is_some_and(|u| u.ends_with("/patient-mothersMaidenName")) {
                if let Some(v) = own.value_string.take() {
                    own.words.push(v);
                }
            }
            match rt {
                Some(t) if PERSON_TYPES.iter().any(|p| t.is(p)) => {
                    if t.is("Patient") {
                        if let Some(id) = id {
                            people.patients.push(id.decode()?.into_owned());
                        }
                    }
                    own.commit(people)?;
                }
                // Another resource: its strings are not a person's.
                Some(_) => {}
                None => found.absorb(own),
            }
        }
        Kind::String => {
            let s = r.string()?;
            file(parent, key, s, found);
        }
        Kind::Scalar => {
            r.skip()?;
        }
    }
    Ok(())
}

/// File one string by where it is: `parent.key`.
fn file<'a>(parent: &str, key: &str, s: Str<'a>, found: &mut Found<'a>) {
    match (parent, key) {
        ("name", "family" | "given" | "text" | "prefix" | "suffix") => found.words.push(s),
        ("address" | "valueAddress", "line" | "text" | "city" | "district") => found.phrases.push(s),
        ("address" | "valueAddress", "postalCode") | ("identifier" | "telecom", "value") => found.values.push(s),
        (_, "birthDate") => found.dates.push(s),
        (_, "valueString") => found.value_string = Some(s),
        _ => {}
    }
}

/// Finds a response's persons in text.
#[derive(Debug, Clone)]
pub struct Matcher {
    words: Option<AhoCorasick>,
    /// The persons' digit sequences, and their distinct lengths: a digit run is checked by
    /// looking up each of its substrings of those lengths, so a response with thousands of
    /// persons costs no more per run than one with a single person.
    digits: HashSet<String>,
    lengths: Vec<usize>,
}

impl Matcher {
    /// Append the byte ranges of `text` that name a person: words and phrases between word
    /// boundaries, and digit runs (digits with any of ` -.()/+` between them) that hold a
    /// person's phone or identifier digits.
    pub fn find(&self, text: &str, out: &mut Vec<Range<usize>>) {
        let b = text.as_bytes();
        if let Some(ac) = &self.words {
            for m in ac.find_overlapping_iter(text) {
                let (s, e) = (m.start(), m.end());
                let before = s.checked_sub(1).and_then(|i| b.get(i)).copied();
                let after = b.get(e).copied();
                if !before.is_some_and(is_word_byte) && !after.is_some_and(is_word_byte) {
                    out.push(s..e);
                }
            }
        }
        if !self.digits.is_empty() {
            let mut i = 0;
            while i < b.len() {
                if !b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    continue;
                }
                // A leading `+` or `(` belongs to the number.
                let mut start = i;
                while start > 0 && matches!(b.get(start - 1), Some(b'+' | b'(')) {
                    start -= 1;
                }
                let (end, digits) = digit_run(b, i);
                if self.holds_a_person(&digits) {
                    out.push(start..end);
                }
                i = end.max(i + 1);
            }
        }
    }
}

impl Matcher {
    /// Whether a run's digits hold one of the persons' digit sequences.
    fn holds_a_person(&self, digits: &str) -> bool {
        self.lengths
            .iter()
            .any(|&l| (0..=digits.len().saturating_sub(l)).any(|s| digits.get(s..s + l).is_some_and(|d| self.digits.contains(d))))
    }
}

/// A byte that continues a word: ASCII alphanumerics and any non-ASCII byte (a letter with an
/// accent continues a name, so `Ana` does not match inside `Anaïs`).
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c >= 0x80
}

/// From a digit at `i`: the end of the run of digits joined by up to two separators, and its
/// digits.
fn digit_run(b: &[u8], i: usize) -> (usize, String) {
    let mut digits = String::new();
    let mut end = i;
    let mut j = i;
    while j < b.len() {
        match b.get(j) {
            Some(c) if c.is_ascii_digit() => {
                digits.push(char::from(*c));
                j += 1;
                end = j;
            }
            Some(b' ' | b'-' | b'.' | b'(' | b')' | b'/') => {
                let mut k = j;
                while k < b.len() && k - j < 3 && matches!(b.get(k), Some(b' ' | b'-' | b'.' | b'(' | b')' | b'/')) {
                    k += 1;
                }
                if b.get(k).is_some_and(u8::is_ascii_digit) {
                    j = k;
                } else {
                    break;
                }
            }
            _ => break,
        }
    }
    (end, digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(m: &Matcher, text: &str) -> String {
        let mut ranges = Vec::new();
        m.find(text, &mut ranges);
        super::super::replace(text, &mut ranges, "[X]")
    }

    #[test]
    fn persons_are_collected_from_every_place_they_appear() {
        let body = br#"{"resourceType":"Bundle","entry":[
          {"resource":{"resourceType":"Patient","id":"p1","name":[{"family":"Koepp521","given":["Abdul218","Jo"]}],
            "telecom":[{"system":"phone","value":"555-123-4567"}],"identifier":[{"value":"999-12-3456"}],
            "birthDate":"1970-01-02","address":[{"line":["426 Pacocha Neck"],"city":"Boston","postalCode":"02139"}],
            "extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName","valueString":"Lakisha29 Kuhn96"},
                         {"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race","valueString":"White"}],
            "contact":[{"name":{"family":"Contactfam"}}]}},
          {"resource":{"resourceType":"Observation","valueString":"Kept Wordy","subject":{"reference":"Patient/p1"}}},
          {"resource":{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"RelatedPerson","name":[{"text":"Mary Major"}]}}]}},
          {"resource":{"resourceType":"Encounter","contained":[{"resourceType":"Person","name":[{"family":"Hidden"}]}]}}
        ]}"#;
        let p = People::collect(body).unwrap();
        for w in [
            "koepp521",
            "abdul218",
            "jo",
            "lakisha29",
            "kuhn96",
            "426 pacocha neck",
            "boston",
            "contactfam",
            "mary",
            "major",
            "mary major",
            "hidden",
            "1970-01-02",
            "01/02/1970",
            "1/2/1970",
        ] {
            assert!(p.words.iter().any(|x| x == w), "{w} in {:?}", p.words);
        }
        assert!(!p.words.iter().any(|x| x == "white" || x == "kept"));
        assert_eq!(p.digits, ["5551234567", "999123456"]);
        assert_eq!(p.patients, ["p1"]);
    }

    #[test]
    fn a_person_written_with_escapes_is_still_collected() {
        // The quick check for person resources must not be fooled by a `\u` escape.
        let body = br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Pati\u0065nt","id":"p9","name":[{"family":"Escap\u0065d"}]}}]}"#;
        let p = People::collect(body).unwrap();
        assert_eq!((p.words.as_slice(), p.patients.as_slice()), (&["escaped".to_owned()][..], &["p9".to_owned()][..]));
        assert!(People::collect(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p9"}}"#).unwrap().words.is_empty());
        assert!(may_hold_a_person(br#"{"resourceType": "Person"}"#) && !may_hold_a_person(br#"{"resourceType":"Observation"}"#));
        assert!(may_hold_a_person(b"{\"resourceType\" :\n \"RelatedPerson\"}"));
        assert!(!may_hold_a_person(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p9","type":"Patient"}}"#));
        assert!(may_hold_a_person(br#"{"resource\u0054ype":"Patient"}"#));
    }

    #[test]
    fn names_match_as_words_in_any_case_and_numbers_whatever_the_separators() {
        let p = People {
            words: vec!["koepp521".into(), "abdul218".into(), "ana".into()],
            digits: vec!["5551234567".into(), "999123456".into()],
            patients: vec![],
        };
        let m = p.matcher().unwrap();
        assert_eq!(scrubbed(&m, "KOEPP521, Abdul218 called"), "[X], [X] called");
        assert_eq!(scrubbed(&m, "Koepp521's note"), "[X]'s note");
        assert_eq!(scrubbed(&m, "Anaïs and anagram and Ana."), "Anaïs and anagram and [X].");
        for phone in ["555-123-4567", "(555) 123-4567", "555.123.4567", "555 123 4567", "+1 555 123 4567", "1-555-123-4567", "5551234567"] {
            let out = scrubbed(&m, &format!("call {phone} now"));
            assert!(!out.contains("4567"), "{phone}: {out}");
        }
        assert_eq!(scrubbed(&m, "SSN 999 12 3456."), "SSN [X].");
        assert_eq!(scrubbed(&m, "BP 120/80, 5 mg"), "BP 120/80, 5 mg");
    }
}
