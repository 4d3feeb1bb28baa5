//! Value transforms: mask, keyed hash, Safe Harbor generalization. A transform that cannot be
//! applied to a value (wrong type, unrecognised shape) removes it: fail closed.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::generalize::{age_in_years, to_birth_year, to_year, to_zip3, Generalized};

/// Shortest accepted HMAC key in bytes.
pub const MIN_HMAC_KEY_BYTES: usize = 16;

/// A compiled transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Keep the last `n` characters (never more than half), `*` for the rest.
    Mask(usize),
    /// HMAC-SHA256 of the value's text, lowercase hex.
    Hash,
    /// Date to year.
    Year,
    /// Birth date to year, removed for ages of 90 or more.
    BirthYear,
    /// ZIP to three digits.
    Zip3,
    /// Ages over 89 to `90+`.
    Age90,
}

/// What happened to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transformed {
    /// The value was already as general as the transform makes it.
    Unchanged,
    /// The value was rewritten in place.
    Changed,
    /// The value must be removed.
    Remove,
}

/// Inputs a transform may need.
#[derive(Clone)]
pub struct Keys {
    /// HMAC state keyed once per response; cloned per value.
    pub hmac: Option<Hmac<Sha256>>,
    /// Current year (for birth-year age checks).
    pub now_year: i64,
}

impl Transform {
    /// Whether this transform needs the HMAC key.
    pub fn needs_key(self) -> bool {
        self == Transform::Hash
    }

    /// Apply to a value in place. Arrays are transformed element-wise (elements that cannot be
    /// transformed are dropped).
    pub fn apply(self, v: &mut Value, keys: &Keys) -> Transformed {
        if let Value::Array(items) = v {
            let mut changed = false;
            items.retain_mut(|item| match self.apply(item, keys) {
                Transformed::Unchanged => true,
                Transformed::Changed => {
                    changed = true;
                    true
                }
                Transformed::Remove => {
                    changed = true;
                    false
                }
            });
            return match (changed, items.is_empty()) {
                (_, true) => Transformed::Remove,
                (true, false) => Transformed::Changed,
                (false, false) => Transformed::Unchanged,
            };
        }
        match self {
            Transform::Mask(n) => match v {
                Value::String(s) => match mask(s, n) {
                    Some(m) => {
                        *s = m;
                        Transformed::Changed
                    }
                    None => Transformed::Unchanged,
                },
                Value::Number(n2) => {
                    let text = n2.to_string();
                    *v = Value::String(mask(&text, n).unwrap_or(text));
                    Transformed::Changed
                }
                _ => Transformed::Remove,
            },
            Transform::Hash => {
                let Some(mac) = keys.hmac.clone() else {
                    return Transformed::Remove;
                };
                let text = match v {
                    Value::String(s) => std::mem::take(s),
                    Value::Number(n) => n.to_string(),
                    _ => return Transformed::Remove,
                };
                *v = Value::String(hmac_hex(mac, text.as_bytes()));
                Transformed::Changed
            }
            Transform::Year => generalized(v, to_year),
            Transform::BirthYear => generalized(v, |s| to_birth_year(s, keys.now_year)),
            Transform::Zip3 => generalized(v, to_zip3),
            Transform::Age90 => age90(v),
        }
    }
}

fn generalized(v: &mut Value, f: impl Fn(&str) -> Generalized) -> Transformed {
    let Value::String(s) = v else {
        return Transformed::Remove;
    };
    match f(s) {
        Generalized::Unchanged => Transformed::Unchanged,
        Generalized::Replace(new) => {
            *s = new;
            Transformed::Changed
        }
        Generalized::Remove => Transformed::Remove,
    }
}

/// `keep` trailing characters shown (at most half of them), the rest `*`. `None` if nothing
/// would change (empty string).
pub fn mask(s: &str, keep: usize) -> Option<String> {
    let len = s.chars().count();
    if len == 0 {
        return None;
    }
    let shown = keep.min(len / 2);
    let mut out = String::with_capacity(s.len());
    out.extend(std::iter::repeat_n('*', len - shown));
    out.extend(s.chars().skip(len - shown));
    Some(out)
}

/// Keyed HMAC-SHA256 of `data` as lowercase hex.
pub fn hmac_hex(mut mac: Hmac<Sha256>, data: &[u8]) -> String {
    mac.update(data);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: [u8; 16] = *b"0123456789abcdef";

fn age90(v: &mut Value) -> Transformed {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(a) if a > 89.0 => {
                *v = Value::String("90+".into());
                Transformed::Changed
            }
            Some(_) => Transformed::Unchanged,
            None => Transformed::Remove,
        },
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(a) if a > 89.0 => {
                *s = "90+".into();
                Transformed::Changed
            }
            Ok(_) => Transformed::Unchanged,
            Err(_) if s.as_str() == "90+" => Transformed::Unchanged,
            Err(_) => Transformed::Remove,
        },
        Value::Object(q) => age_quantity(q),
        _ => Transformed::Remove,
    }
}

/// A FHIR Age (Quantity): over 89 years becomes `value: 90, comparator: ">="` in years.
fn age_quantity(q: &mut Map<String, Value>) -> Transformed {
    let Some(value) = q.get("value").and_then(Value::as_f64) else {
        return Transformed::Remove;
    };
    let unit = q.get("code").or_else(|| q.get("unit")).and_then(Value::as_str);
    if age_in_years(value, unit) <= 89.0 {
        return Transformed::Unchanged;
    }
    q.insert("value".into(), Value::from(90));
    q.insert("comparator".into(), Value::String(">=".into()));
    for (k, text) in [("unit", "years"), ("code", "a")] {
        if q.contains_key(k) {
            q.insert(k.into(), Value::String(text.into()));
        }
    }
    // Extensions on the exact value would repeat it.
    q.shift_remove("_value");
    Transformed::Changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> Keys {
        Keys { hmac: Some(Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap()), now_year: 2027 }
    }

    fn run(t: Transform, v: Value) -> (Transformed, Value) {
        let mut v = v;
        let o = t.apply(&mut v, &keys());
        (o, v)
    }

    #[test]
    fn masks() {
        assert_eq!(mask("999-48-8934", 4).as_deref(), Some("*******8934"));
        assert_eq!(mask("1234", 4).as_deref(), Some("**34"));
        assert_eq!(mask("Ordóñez", 2).as_deref(), Some("*****ez"));
        assert_eq!(mask("x", 4).as_deref(), Some("*"));
        assert_eq!(mask("", 4), None);
        assert_eq!(run(Transform::Mask(2), json!(12345)), (Transformed::Changed, json!("***45")));
        assert_eq!(run(Transform::Mask(2), json!(["abcd", "efgh"])), (Transformed::Changed, json!(["**cd", "**gh"])));
        assert_eq!(run(Transform::Mask(2), json!({"a": 1})).0, Transformed::Remove);
    }

    #[test]
    fn hashes_are_keyed_and_stable() {
        let (o, a) = run(Transform::Hash, json!("999-48-8934"));
        assert_eq!(o, Transformed::Changed);
        let (_, b) = run(Transform::Hash, json!("999-48-8934"));
        assert_eq!(a, b);
        assert_eq!(a.as_str().unwrap().len(), 64);
        assert_ne!(a, json!("999-48-8934"));
        let other = Keys { hmac: Some(Hmac::<Sha256>::new_from_slice(b"another key 16 b").unwrap()), now_year: 2027 };
        let mut c = json!("999-48-8934");
        Transform::Hash.apply(&mut c, &other);
        assert_ne!(a, c);
        // RFC 4231 test case 2.
        let mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        assert_eq!(hmac_hex(mac, b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let mut v = json!("x");
        assert_eq!(Transform::Hash.apply(&mut v, &Keys { hmac: None, now_year: 2027 }), Transformed::Remove);
    }

    #[test]
    fn generalizations() {
        assert_eq!(run(Transform::Year, json!("2015-02-07T13:28:17Z")), (Transformed::Changed, json!("2015")));
        assert_eq!(run(Transform::Year, json!(5)).0, Transformed::Remove);
        assert_eq!(run(Transform::BirthYear, json!("1930-01-01")).0, Transformed::Remove);
        assert_eq!(run(Transform::Zip3, json!("01887")), (Transformed::Changed, json!("018")));
        assert_eq!(run(Transform::Zip3, json!(["01887", "oops"])), (Transformed::Changed, json!(["018"])));
        assert_eq!(run(Transform::Age90, json!(93)), (Transformed::Changed, json!("90+")));
        assert_eq!(run(Transform::Age90, json!(89)), (Transformed::Unchanged, json!(89)));
        assert_eq!(run(Transform::Age90, json!("95")), (Transformed::Changed, json!("90+")));
        assert_eq!(
            run(Transform::Age90, json!({"value": 1200, "unit": "months", "system": "http://unitsofmeasure.org", "code": "mo"})),
            (
                Transformed::Changed,
                json!({"value": 90, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a", "comparator": ">="})
            )
        );
        assert_eq!(run(Transform::Age90, json!({"value": 40, "code": "a"})).0, Transformed::Unchanged);
        assert_eq!(run(Transform::Age90, json!(true)).0, Transformed::Remove);
    }
}
