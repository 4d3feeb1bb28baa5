//! JSON over raw bytes, without a tree: [`validate`] checks a whole body strictly (RFC 8259,
//! the rules of the `serde_json` parser the tree minimizer used, and no duplicate member
//! names), allocating nothing per value; [`Reader`] then walks a validated body value by value,
//! handing out raw spans that callers copy or decode only when they need the value.
//!
//! Every pass over a response body (compartment check, restrictions, minimization) reads the
//! bytes through a [`Reader`] after [`validate`] accepted them; the reader still never panics
//! on bytes it was not meant to see, it returns [`Malformed`].

mod validate;

pub use validate::{validate, Invalid, MAX_DEPTH};

use std::borrow::Cow;
use std::ops::Range;

use crate::reason::DenyReason;

/// The UTF-8 byte order mark, which RFC 8259 §8.1 lets a parser ignore.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The body without a leading byte order mark.
pub fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(BOM).unwrap_or(body)
}

/// A reader met bytes that are not the validated JSON it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl From<Malformed> for DenyReason {
    /// A body that passed validation cannot be read: never released.
    fn from(_: Malformed) -> Self {
        DenyReason::MinimizationFailed
    }
}

impl From<Invalid> for DenyReason {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Truncated => DenyReason::ResponseTruncated,
            Invalid::Syntax => DenyReason::ResponseNotJson,
        }
    }
}

/// What the next value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `{`
    Object,
    /// `[`
    Array,
    /// A string.
    String,
    /// A number, `true`, `false` or `null`.
    Scalar,
}

/// A string as written: the bytes between its quotes, still escaped if `escaped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str<'a> {
    /// The bytes between the quotes.
    pub raw: &'a [u8],
    /// Whether `raw` holds a backslash escape.
    pub escaped: bool,
}

impl<'a> Str<'a> {
    /// The value. Borrowed unless it holds escapes.
    pub fn decode(&self) -> Result<Cow<'a, str>, Malformed> {
        if !self.escaped {
            return std::str::from_utf8(self.raw).map(Cow::Borrowed).map_err(|_| Malformed);
        }
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).map(Cow::Owned).map_err(|_| Malformed)
    }

    /// Whether the value equals `s` (no allocation unless the string holds escapes).
    pub fn is(&self, s: &str) -> bool {
        if !self.escaped {
            return self.raw == s.as_bytes();
        }
        self.decode().is_ok_and(|d| d == s)
    }
}

/// A cursor over a validated JSON text. Objects and arrays are walked with [`Reader::open`]
/// then [`Reader::next_key`] / [`Reader::next_item`] until they return `None` / `false`.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    b: &'a [u8],
    /// Offset of the next byte to read.
    pub pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }

    /// A reader of the same text at `pos`.
    pub fn at(&self, pos: usize) -> Self {
        Reader { b: self.b, pos }
    }

    /// The whole text.
    pub fn bytes(&self) -> &'a [u8] {
        self.b
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.pos += 1;
        }
    }

    /// Skip whitespace and report what the next value is.
    pub fn kind(&mut self) -> Result<Kind, Malformed> {
        self.ws();
        match self.b.get(self.pos) {
            Some(b'{') => Ok(Kind::Object),
            Some(b'[') => Ok(Kind::Array),
            Some(b'"') => Ok(Kind::String),
            Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => Ok(Kind::Scalar),
            _ => Err(Malformed),
        }
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.pos >= self.b.len()
    }

    /// Enter the object or array that starts here.
    pub fn open(&mut self) -> Result<(), Malformed> {
        self.ws();
        match self.b.get(self.pos) {
            Some(b'{' | b'[') => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(Malformed),
        }
    }

    /// The next member name of the object being walked (the reader then stands at its value),
    /// or `None` after the closing brace.
    pub fn next_key(&mut self) -> Result<Option<Str<'a>>, Malformed> {
        self.ws();
        if self.b.get(self.pos) == Some(&b',') {
            self.pos += 1;
            self.ws();
        }
        match self.b.get(self.pos) {
            Some(b'}') => {
                self.pos += 1;
                Ok(None)
            }
            Some(b'"') => {
                let key = self.string()?;
                self.ws();
                if self.b.get(self.pos) != Some(&b':') {
                    return Err(Malformed);
                }
                self.pos += 1;
                Ok(Some(key))
            }
            _ => Err(Malformed),
        }
    }

    /// Whether the array being walked has another item (the reader then stands at it).
    pub fn next_item(&mut self) -> Result<bool, Malformed> {
        self.ws();
        match self.b.get(self.pos) {
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(true),
            None => Err(Malformed),
        }
    }

    /// Read the string that starts here.
    pub fn string(&mut self) -> Result<Str<'a>, Malformed> {
        self.ws();
        if self.b.get(self.pos) != Some(&b'"') {
            return Err(Malformed);
        }
        let start = self.pos + 1;
        let (end, escaped) = string_end(self.b, start).ok_or(Malformed)?;
        self.pos = end + 1;
        let raw = self.b.get(start..end).ok_or(Malformed)?;
        Ok(Str { raw, escaped })
    }

    /// Skip the value that starts here; returns its span.
    pub fn skip(&mut self) -> Result<Range<usize>, Malformed> {
        self.ws();
        let start = self.pos;
        match self.b.get(self.pos) {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{' | b'[') => {
                self.skip_container(|_, _| true)?;
            }
            Some(_) => {
                while let Some(c) = self.b.get(self.pos) {
                    if !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z') {
                        break;
                    }
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(Malformed);
                }
            }
            None => return Err(Malformed),
        }
        Ok(start..self.pos)
    }

    /// Skip the value here like [`Reader::skip`] if it is plain: no string in it (member name
    /// or value) holds an escape (a name could hide behind it), and exactly `expected` of them
    /// start with one of `names` (after one leading `_`). Returns its span, or `None` as soon
    /// as it is not plain (the reader is then somewhere inside it).
    pub fn skip_plain(&mut self, names: &[&[u8]], expected: usize) -> Result<Option<Range<usize>>, Malformed> {
        self.ws();
        let start = self.pos;
        let mut hits = 0usize;
        // First bytes of the names: most strings are dismissed by their first byte.
        let mut first = [0u64; 4];
        for n in names {
            if let Some(&b) = n.first() {
                if let Some(bits) = first.get_mut(usize::from(b >> 6)) {
                    *bits |= 1 << (b & 63);
                }
            }
        }
        let mut plain = true;
        let mut check = |text: &[u8], escaped: bool| {
            // `_x` (a FHIR primitive's extensions) counts as `x`.
            let text = text.strip_prefix(b"_").unwrap_or(text);
            let candidate = text.first().is_some_and(|&b| first.get(usize::from(b >> 6)).is_some_and(|bits| bits & (1 << (b & 63)) != 0));
            if candidate && names.iter().any(|m| text.starts_with(m)) {
                hits += 1;
            }
            plain = !escaped && hits <= expected;
            plain
        };
        match self.b.get(self.pos) {
            Some(b'{' | b'[') => self.skip_container(&mut check)?,
            Some(b'"') => {
                let s = self.string()?;
                check(s.raw, s.escaped);
            }
            _ => {
                self.skip()?;
            }
        }
        Ok((plain && hits == expected).then_some(start..self.pos))
    }

    /// Skip the object or array here, calling `string` with the raw bytes of every string in it
    /// (and whether they hold an escape); stops early, leaving the reader inside, when `string`
    /// returns `false`.
    fn skip_container(&mut self, mut string: impl FnMut(&[u8], bool) -> bool) -> Result<(), Malformed> {
        let mut depth = 0usize;
        loop {
            // Eight bytes at a time past anything that is not a quote or a bracket.
            while let Some(w) = word(self.b, self.pos) {
                if structural(w) != 0 {
                    break;
                }
                self.pos += 8;
            }
            match self.b.get(self.pos) {
                Some(b'{' | b'[') => {
                    depth += 1;
                    self.pos += 1;
                }
                Some(b'}' | b']') => {
                    self.pos += 1;
                    depth = depth.checked_sub(1).ok_or(Malformed)?;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Some(b'"') => {
                    let from = self.pos + 1;
                    let (end, escaped) = string_end(self.b, from).ok_or(Malformed)?;
                    self.pos = end + 1;
                    if !string(self.b.get(from..end).unwrap_or_default(), escaped) {
                        return Ok(());
                    }
                }
                Some(_) => self.pos += 1,
                None => return Err(Malformed),
            }
        }
    }

    /// The raw bytes of `span`.
    pub fn slice(&self, span: Range<usize>) -> &'a [u8] {
        self.b.get(span).unwrap_or_default()
    }

    /// In the object starting here, the value span of member `name` (the reader does not move).
    pub fn find(&self, name: &str) -> Result<Option<Range<usize>>, Malformed> {
        let mut r = self.clone();
        r.open()?;
        while let Some(k) = r.next_key()? {
            let span = r.skip()?;
            if k.is(name) {
                return Ok(Some(span));
            }
        }
        Ok(None)
    }

    /// In the object starting here, the value of member `name` if it is a string.
    pub fn find_str(&self, name: &str) -> Result<Option<Str<'a>>, Malformed> {
        let mut r = self.clone();
        r.open()?;
        // Usually the first member (`resourceType` leads a FHIR resource).
        while let Some(k) = r.next_key()? {
            if k.is(name) {
                return match r.kind()? {
                    Kind::String => r.string().map(Some),
                    _ => Ok(None),
                };
            }
            r.skip()?;
        }
        Ok(None)
    }

    /// In the object starting here, whether member `name` exists and what its value is.
    pub fn find_kind(&self, name: &str) -> Result<Option<Kind>, Malformed> {
        let mut r = self.clone();
        r.open()?;
        while let Some(k) = r.next_key()? {
            if k.is(name) {
                return r.kind().map(Some);
            }
            r.skip()?;
        }
        Ok(None)
    }
}

/// `0x01` in every byte of a word.
pub(crate) const SPREAD: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The eight bytes at `i`, if there are eight.
#[inline]
pub(crate) fn word(b: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Non-zero when some byte of `w` is zero (exact as a yes/no).
#[inline]
fn has_zero(w: u64) -> u64 {
    w.wrapping_sub(SPREAD) & !w & HIGH
}

/// Non-zero when some byte of `w` is `b`.
#[inline]
pub(crate) fn has(w: u64, b: u8) -> u64 {
    has_zero(w ^ (SPREAD * u64::from(b)))
}

/// Non-zero when some byte of `w` is a quote or a bracket (`[` and `{` differ only in bit
/// 0x20, as do `]` and `}`).
#[inline]
fn structural(w: u64) -> u64 {
    let folded = w | (SPREAD * 0x20);
    has(w, b'"') | has(folded, b'{') | has(folded, b'}')
}

/// Non-zero when some byte of `w` is below `n` (`n` ≤ 128) or has its high bit set.
#[inline]
pub(crate) fn has_below_or_high(w: u64, n: u8) -> u64 {
    (w.wrapping_sub(SPREAD * u64::from(n)) | w) & HIGH
}

/// From just after an opening quote: the offset of the closing quote and whether the string
/// holds escapes (`None`: it does not end).
#[inline]
fn string_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        while let Some(w) = word(b, i) {
            if (has(w, b'"') | has(w, b'\\')) != 0 {
                break;
            }
            i += 8;
        }
        match b.get(i)? {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_tests() {
        let w = u64::from_le_bytes(*b"abcdefgh");
        assert_eq!(has(w, b'"'), 0);
        assert_ne!(has(w, b'h'), 0);
        assert_ne!(has(u64::from_le_bytes(*b"a\"cdefgh"), b'"'), 0);
        assert_eq!(has_below_or_high(w, 0x20), 0);
        assert_ne!(has_below_or_high(u64::from_le_bytes(*b"abc\tefgh"), 0x20), 0);
        assert_ne!(has_below_or_high(u64::from_le_bytes([b'a', 0xC3, 0xA9, b'd', b'e', b'f', b'g', b'h']), 0x20), 0);
        for text in [b"abcdefg[", b"]bcdefgh", b"abc{efgh", b"abcd}fgh", b"a\"cdefgh"] {
            assert_ne!(structural(u64::from_le_bytes(*text)), 0);
        }
        assert_eq!(structural(u64::from_le_bytes(*b"abcdefgh")), 0);
        assert_eq!(structural(u64::from_le_bytes(*b"ab;d=f\\h")), 0);
    }

    #[test]
    fn walks_objects_and_arrays() {
        let text = br#" { "a" : [1, "x\"y", {"b": null}], "c\u0041": true } "#;
        validate(text).unwrap();
        let mut r = Reader::new(text);
        assert_eq!(r.kind(), Ok(Kind::Object));
        r.open().unwrap();
        let k = r.next_key().unwrap().unwrap();
        assert!(k.is("a"));
        r.open().unwrap();
        assert!(r.next_item().unwrap());
        {
            let s = r.skip().unwrap();
            assert_eq!(r.slice(s), b"1");
        }
        assert!(r.next_item().unwrap());
        let s = r.string().unwrap();
        assert_eq!(s.decode().unwrap(), "x\"y");
        assert!(r.next_item().unwrap());
        {
            let s = r.skip().unwrap();
            assert_eq!(r.slice(s), br#"{"b": null}"#);
        }
        assert!(!r.next_item().unwrap());
        let k = r.next_key().unwrap().unwrap();
        assert!(k.escaped && k.is("cA"));
        {
            let s = r.skip().unwrap();
            assert_eq!(r.slice(s), b"true");
        }
        assert_eq!(r.next_key(), Ok(None));
        assert!(r.at_end());
        let r = Reader::new(br#"{"x": {"resourceType": 1}, "resourceType": "Patient"}"#);
        assert_eq!(r.find_str("resourceType").unwrap().unwrap().raw, b"Patient");
        assert_eq!(r.find_kind("x"), Ok(Some(Kind::Object)));
        assert_eq!(r.find("nope"), Ok(None));
    }

    #[test]
    fn unexpected_bytes_are_errors_not_panics() {
        for text in [&b""[..], b"{", b"[", b"\"abc", b"{\"a\"", b"{\"a\" 1}", b"}", b"[1,"] {
            let mut r = Reader::new(text);
            let _ = r.skip();
            let mut r = Reader::new(text);
            if r.open().is_ok() {
                let _ = r.next_key();
                let _ = r.next_item();
            }
        }
    }
}
#[cfg(test)]
mod skip_plain_tests {
    use super::*;
    #[test]
    fn counts() {
        let t = br#"{"resourceType":"X","contained":[{"resourceType":"Y"}],"_contained":"a\"b"}"#;
        assert_eq!(Reader::new(t).skip_plain(&[b"resourceType", b"contained"], 4), Ok(None), "an escape");
        let t = br#"{"resourceType":"X","contained":[{"resourceType":"Y"}],"_contained":"ab"}"#;
        let names: [&[u8]; 2] = [b"resourceType", b"contained"];
        assert_eq!(Reader::new(t).skip_plain(&names, 4), Ok(Some(0..t.len())));
        assert_eq!(Reader::new(t).skip_plain(&names, 3), Ok(None));
        assert_eq!(Reader::new(t).skip_plain(&names, 5), Ok(None));
        assert_eq!(Reader::new(b" 12 ").skip_plain(&names, 0), Ok(Some(1..3)));
    }
}
