//! Keyed, repeatable rewrites: pseudonymous record keys and per-patient date shifts.
//!
//! Both are HMAC-SHA256 under the filter's key (`PHI_GUARD_HMAC_KEY`) with a label per use, so
//! the same input always gives the same output (references keep resolving inside a Bundle and
//! across responses) and nobody without the key can reverse or recompute them. The labels keep
//! the two uses, and the `hash` transform, independent of each other.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const PSEUDONYM_LABEL: &[u8] = b"phi-guard/pseudonym/v1\0";
const SHIFT_LABEL: &[u8] = b"phi-guard/date-shift/v1\0";

/// The system of the identifier a pseudonymized conditional reference searches by.
pub const PSEUDONYM_SYSTEM: &str = "urn:phi-guard:pseudonym";

/// The pseudonym of a record key: the first 128 bits of the keyed hash, written as an RFC 9562
/// version-8 (vendor-specific) UUID, which is a valid FHIR `id` and a valid `urn:uuid:`.
pub fn pseudonym(mac: &Hmac<Sha256>, key: &str) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(keyed(mac, PSEUDONYM_LABEL, key).get(..16).unwrap_or(&[0; 16]));
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

const HEX: [u8; 16] = *b"0123456789abcdef";

/// HMAC-SHA256 of `data` under `mac`, for the use `label` names.
fn keyed(mac: &Hmac<Sha256>, label: &[u8], data: &str) -> [u8; 32] {
    let mut m = mac.clone();
    m.update(label);
    m.update(data.as_bytes());
    m.finalize().into_bytes().into()
}

/// The pseudonyms of one response, remembered: a Bundle names the same few records (its
/// patient, encounters) hundreds of times, and each pseudonym is two SHA-256 compressions.
pub struct Pseudonyms {
    mac: Hmac<Sha256>,
    memo: HashMap<String, String>,
    /// Whole references already rewritten (a Bundle repeats `Patient/x` in every entry).
    refs: HashMap<String, Option<String>>,
}

impl Pseudonyms {
    /// Pseudonyms under `mac`.
    pub fn new(mac: Hmac<Sha256>) -> Self {
        Pseudonyms { mac, memo: HashMap::new(), refs: HashMap::new() }
    }

    /// [`pseudonym`] of `key`.
    pub fn of(&mut self, key: &str) -> String {
        if let Some(p) = self.memo.get(key) {
            return p.clone();
        }
        let p = pseudonym(&self.mac, key);
        self.memo.insert(key.to_owned(), p.clone());
        p
    }

    /// A record key's pseudonym when `s` is a valid FHIR id; `None` otherwise (the caller
    /// withholds).
    pub fn id(&mut self, s: &str) -> Option<String> {
        crate::fhir::request::valid_id(s).then(|| self.of(s))
    }
}

/// Rewrite a reference (`Reference.reference`, `Bundle.entry.fullUrl`, `response.location`,
/// `request.url`, a link URL): the id of every `Type/id` in its path, `urn:uuid:x`, `#x` (a
/// contained resource) and the query of a conditional reference (`Type?identifier=...`).
/// `None` when it has no shape this knows: the caller withholds it.
pub fn reference(mac: &Hmac<Sha256>, s: &str) -> Option<String> {
    Pseudonyms::new(mac.clone()).reference(s)
}

/// [`Pseudonyms::link`] with a fresh memo.
pub fn link(mac: &Hmac<Sha256>, s: &str) -> Option<String> {
    Pseudonyms::new(mac.clone()).link(s)
}

/// [`Pseudonyms::conditional`] with a fresh memo.
pub fn conditional(mac: &Hmac<Sha256>, query: &str) -> String {
    Pseudonyms::new(mac.clone()).conditional(query)
}

impl Pseudonyms {
    /// [`reference`], remembering pseudonyms and whole references.
    pub fn reference(&mut self, s: &str) -> Option<String> {
        if let Some(r) = self.refs.get(s) {
            return r.clone();
        }
        let r = self.reference_uncached(s);
        self.refs.insert(s.to_owned(), r.clone());
        r
    }

    fn reference_uncached(&mut self, s: &str) -> Option<String> {
        if let Some(local) = s.strip_prefix('#') {
            return Some(format!("#{}", self.id(local)?));
        }
        if let Some(uuid) = s.strip_prefix("urn:uuid:") {
            return Some(format!("urn:uuid:{}", self.of(uuid)));
        }
        if s.starts_with("urn:") {
            // `urn:oid:` and other URNs: the whole name is the key, written as a UUID.
            return Some(format!("urn:uuid:{}", self.of(s)));
        }
        let (path, query) = match s.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (s, None),
        };
        let mut out = self.path_ids(path)?;
        // A path in which no id was found is a bare type (`Observation`, a create's request URL)
        // or a shape this does not know (`123`, an id with no type): that one could be a raw
        // id, so it is withheld.
        if out == path && query.is_none() && !is_type(path) {
            return None;
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(&self.conditional(q));
        }
        Some(out)
    }

    /// Rewrite a Bundle link URL: the ids in its path (`.../Patient/123`); the query is kept (a
    /// profile that pseudonymizes keeps only paging parameters in links, see `bundleLinks`).
    pub fn link(&mut self, s: &str) -> Option<String> {
        let (path, query) = match s.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (s, None),
        };
        let mut out = self.path_ids(path)?;
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }

    /// A path with the segment after each resource type name replaced by its pseudonym.
    fn path_ids(&mut self, path: &str) -> Option<String> {
        let mut out = String::with_capacity(path.len() + 40);
        let mut prev = "";
        for (i, seg) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            if is_type(prev) && !seg.is_empty() && !seg.starts_with('_') && !seg.starts_with('$') {
                out.push_str(&self.id(seg)?);
            } else {
                out.push_str(seg);
            }
            prev = seg;
        }
        Some(out)
    }

    /// A conditional reference's (or `ifNoneExist`'s) query, replaced by a search on the
    /// query's pseudonym, so a conditional reference still matches its target entry's
    /// `ifNoneExist`.
    pub fn conditional(&mut self, query: &str) -> String {
        format!("identifier={PSEUDONYM_SYSTEM}|{}", self.of(query))
    }
}

/// Whether a path segment names a FHIR R4 resource type (so the next segment is an id). Type
/// names start with a capital: most segments (ids, bases) are dismissed by their first byte.
fn is_type(seg: &str) -> bool {
    seg.as_bytes().first().is_some_and(u8::is_ascii_uppercase) && crate::fhir::resource_type(seg).is_some()
}

/// A patient's date offset in days, in `-max..=max`, never 0 (an offset of 0 would release the
/// true dates of one patient in every `2 * max + 1`).
pub fn shift_days(mac: &Hmac<Sha256>, patient: &str, max: u32) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(keyed(mac, SHIFT_LABEL, patient).get(..8).unwrap_or(&[0; 8]));
    let max = i64::from(max.max(1));
    // 2 * max values: -max..=-1 and 1..=max.
    let r = i64::try_from(u64::from_be_bytes(x) % (2 * max as u64)).unwrap_or(0);
    if r < max {
        r - max
    } else {
        r - max + 1
    }
}

/// Shift a FHIR `date`, `dateTime` or `instant` by `days`, keeping its precision, time and
/// zone. A year (or year-month) is shifted from the middle of its year (or month), so a shift
/// moves it only when it is large enough to. `None` when it is not date-shaped or leaves
/// years 1..=9999.
pub fn shift_date(s: &str, days: i64) -> Option<String> {
    super::super::generalize::date_year(s)?;
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let year = num(0..4)?;
    let (month, day, precision) = match s.len() {
        4 => (7, 2, 0),
        7 => (num(5..7)?, 15, 1),
        _ => (num(5..7)?, num(8..10)?, 2),
    };
    if day > days_in_month(year, month) {
        return None;
    }
    let (y, m, d) = civil_from_days(days_from_civil(year, month, day) + days);
    if !(1..=9999).contains(&y) {
        return None;
    }
    Some(match precision {
        0 => format!("{y:04}"),
        1 => format!("{y:04}-{m:02}"),
        _ => format!("{y:04}-{m:02}-{d:02}{}", s.get(10..).unwrap_or("")),
    })
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian, day 0 = 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn pseudonyms_are_uuids_and_repeatable() {
        let p = pseudonym(&mac(), "123");
        assert_eq!(p.len(), 36);
        assert_eq!(p.as_bytes()[14], b'8');
        assert!(matches!(p.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert_eq!(p, pseudonym(&mac(), "123"));
        assert_ne!(p, pseudonym(&mac(), "124"));
        let other = Hmac::<Sha256>::new_from_slice(b"another key, also thirty-two byte").unwrap();
        assert_ne!(p, pseudonym(&other, "123"));
        assert!(crate::fhir::request::valid_id(&p));
    }

    #[test]
    fn references_keep_their_shape() {
        let m = mac();
        let p = |s: &str| pseudonym(&m, s);
        assert_eq!(reference(&m, "Patient/123").unwrap(), format!("Patient/{}", p("123")));
        assert_eq!(reference(&m, "Patient/123/_history/2").unwrap(), format!("Patient/{}/_history/2", p("123")));
        assert_eq!(
            reference(&m, "https://ehr.example/fhir/Observation/o1").unwrap(),
            format!("https://ehr.example/fhir/Observation/{}", p("o1"))
        );
        assert_eq!(reference(&m, "urn:uuid:abc").unwrap(), format!("urn:uuid:{}", p("abc")));
        assert_eq!(reference(&m, "urn:oid:1.2.3").unwrap(), format!("urn:uuid:{}", p("urn:oid:1.2.3")));
        assert_eq!(reference(&m, "#med1").unwrap(), format!("#{}", p("med1")));
        let q = "identifier=http://hl7.org/fhir/sid/us-npi|9999967597";
        assert_eq!(reference(&m, &format!("Practitioner?{q}")).unwrap(), format!("Practitioner?identifier={PSEUDONYM_SYSTEM}|{}", p(q)));
        assert_eq!(reference(&m, "Patient").unwrap(), "Patient");
        assert_eq!(
            link(&m, "https://ehr.example/fhir/Patient/7?_getpages=x").unwrap(),
            format!("https://ehr.example/fhir/Patient/{}?_getpages=x", p("7"))
        );
        assert!(reference(&m, "Patient/not an id").is_none());
        // No type before it: it could be a raw id.
        assert!(reference(&m, "123").is_none());
        assert!(reference(&m, "https://ehr.example/fhir/metadata").is_none());
        assert!(reference(&m, "#").is_none());
    }

    #[test]
    fn shifts_are_per_patient_bounded_and_never_zero() {
        let m = mac();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..2000 {
            let d = shift_days(&m, &format!("p{i}"), 30);
            assert!((-30..=30).contains(&d) && d != 0, "{d}");
            seen.insert(d);
        }
        assert_eq!(seen.len(), 60);
        assert_eq!(shift_days(&m, "p1", 30), shift_days(&m, "p1", 30));
    }

    #[test]
    fn dates_shift_keeping_precision_time_and_zone() {
        assert_eq!(shift_date("2020-02-28", 2).unwrap(), "2020-03-01");
        assert_eq!(shift_date("2021-02-28", 1).unwrap(), "2021-03-01");
        assert_eq!(shift_date("2020-01-01T10:30:00+02:00", -1).unwrap(), "2019-12-31T10:30:00+02:00");
        assert_eq!(shift_date("2020-01-01T10:30:00.123Z", 366).unwrap(), "2021-01-01T10:30:00.123Z");
        assert_eq!(shift_date("2020-05", 10).unwrap(), "2020-05");
        assert_eq!(shift_date("2020-05", 20).unwrap(), "2020-06");
        assert_eq!(shift_date("2020", 100).unwrap(), "2020");
        assert_eq!(shift_date("2020", -200).unwrap(), "2019");
        assert!(shift_date("2021-02-30", 1).is_none());
        assert!(shift_date("0001-01-01", -1).is_none());
        assert!(shift_date("not a date", 1).is_none());
        for z in [-800_000, -1, 0, 1, 18_000, 2_900_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
