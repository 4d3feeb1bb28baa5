//! Strict validation of a whole JSON text in one pass, with an explicit stack (no recursion)
//! and no allocation per value.
//!
//! It accepts exactly what `serde_json::from_slice::<Value>` accepts (the tree parser the
//! minimizer used, checked by a differential test and fuzz target), except that an object
//! naming a member twice is refused: the tree parser silently kept the last value, so what a
//! check read and what a client reads could differ.

use std::borrow::Cow;
use std::collections::HashSet;

/// Deepest nesting of arrays and objects accepted (`serde_json`'s limit: 128 levels refused).
pub const MAX_DEPTH: usize = 127;

/// Objects with more members than this check duplicates through a hash set.
const LINEAR_KEYS: usize = 24;

/// Why a text is not acceptable JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// It ends before the value does.
    Truncated,
    /// Anything else: a syntax error, invalid UTF-8, a lone surrogate, nesting too deep,
    /// trailing bytes, a duplicate member name, or no value at all.
    Syntax,
}

#[derive(Debug)]
enum Frame<'a> {
    Array,
    /// An object: its member names start at `keys[start]`; past [`LINEAR_KEYS`] they are in `set`.
    Object {
        start: usize,
        set: Option<HashSet<Cow<'a, [u8]>>>,
    },
}

struct Validator<'a> {
    b: &'a [u8],
    i: usize,
    frames: Vec<Frame<'a>>,
    keys: Vec<Cow<'a, [u8]>>,
}

/// Validate `text` (without a byte order mark).
pub fn validate(text: &[u8]) -> Result<(), Invalid> {
    let mut v = Validator { b: text, i: 0, frames: Vec::new(), keys: Vec::new() };
    v.run()
}

impl<'a> Validator<'a> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The byte here, or `Truncated` at the end.
    fn need(&self) -> Result<u8, Invalid> {
        self.peek().ok_or(Invalid::Truncated)
    }

    fn run(&mut self) -> Result<(), Invalid> {
        self.ws();
        if self.peek().is_none() {
            // No value at all: not a truncated one.
            return Err(Invalid::Syntax);
        }
        let mut want_value = true;
        loop {
            if want_value {
                want_value = self.value()?;
                continue;
            }
            self.ws();
            match self.frames.last() {
                None => {
                    return if self.i == self.b.len() { Ok(()) } else { Err(Invalid::Syntax) };
                }
                Some(Frame::Array) => match self.need()? {
                    b',' => {
                        self.i += 1;
                        self.ws();
                        if self.need()? == b']' {
                            return Err(Invalid::Syntax);
                        }
                        want_value = true;
                    }
                    b']' => {
                        self.i += 1;
                        self.frames.pop();
                    }
                    _ => return Err(Invalid::Syntax),
                },
                Some(Frame::Object { .. }) => match self.need()? {
                    b',' => {
                        self.i += 1;
                        self.ws();
                        match self.need()? {
                            b'"' => self.key()?,
                            _ => return Err(Invalid::Syntax),
                        }
                        want_value = true;
                    }
                    b'}' => {
                        self.i += 1;
                        self.close_object();
                    }
                    _ => return Err(Invalid::Syntax),
                },
            }
        }
    }

    /// One value starting here. Returns whether another value is wanted at once (the first
    /// item of an array or member of an object just opened).
    fn value(&mut self) -> Result<bool, Invalid> {
        self.ws();
        match self.need()? {
            b'{' => {
                self.open()?;
                self.frames.push(Frame::Object { start: self.keys.len(), set: None });
                self.ws();
                match self.need()? {
                    b'}' => {
                        self.i += 1;
                        self.close_object();
                        Ok(false)
                    }
                    b'"' => {
                        self.key()?;
                        Ok(true)
                    }
                    _ => Err(Invalid::Syntax),
                }
            }
            b'[' => {
                self.open()?;
                self.frames.push(Frame::Array);
                self.ws();
                if self.need()? == b']' {
                    self.i += 1;
                    self.frames.pop();
                    return Ok(false);
                }
                Ok(true)
            }
            b'"' => self.string().map(|_| false),
            b'-' | b'0'..=b'9' => self.number().map(|()| false),
            b't' => self.literal(b"true").map(|()| false),
            b'f' => self.literal(b"false").map(|()| false),
            b'n' => self.literal(b"null").map(|()| false),
            _ => Err(Invalid::Syntax),
        }
    }

    fn open(&mut self) -> Result<(), Invalid> {
        if self.frames.len() >= MAX_DEPTH {
            return Err(Invalid::Syntax);
        }
        self.i += 1;
        Ok(())
    }

    fn close_object(&mut self) {
        if let Some(Frame::Object { start, .. }) = self.frames.pop() {
            self.keys.truncate(start);
        }
    }

    /// A member name (the reader is at its quote) and the colon after it.
    fn key(&mut self) -> Result<(), Invalid> {
        let (start, end, escaped) = self.string()?;
        let raw = self.b.get(start..end).ok_or(Invalid::Syntax)?;
        let name: Cow<'a, [u8]> = if escaped {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            let s: String = serde_json::from_slice(&quoted).map_err(|_| Invalid::Syntax)?;
            Cow::Owned(s.into_bytes())
        } else {
            Cow::Borrowed(raw)
        };
        let Some(Frame::Object { start: first, set }) = self.frames.last_mut() else {
            return Err(Invalid::Syntax);
        };
        match set {
            Some(set) => {
                if !set.insert(name) {
                    return Err(Invalid::Syntax);
                }
            }
            None => {
                let names = self.keys.get(*first..).unwrap_or_default();
                if names.contains(&name) {
                    return Err(Invalid::Syntax);
                }
                if names.len() >= LINEAR_KEYS {
                    let mut all: HashSet<Cow<'a, [u8]>> = self.keys.drain(*first..).collect();
                    all.insert(name);
                    *set = Some(all);
                } else {
                    self.keys.push(name);
                }
            }
        }
        self.ws();
        match self.need()? {
            b':' => {
                self.i += 1;
                Ok(())
            }
            _ => Err(Invalid::Syntax),
        }
    }

    /// A string (the reader is at its quote): returns the span between the quotes and whether
    /// it holds escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), Invalid> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        let mut ascii = true;
        loop {
            // Eight bytes at a time past plain ASCII text.
            while let Some(w) = super::word(self.b, self.i) {
                if (super::has(w, b'"') | super::has(w, b'\\') | super::has_below_or_high(w, 0x20)) != 0 {
                    break;
                }
                self.i += 8;
            }
            let c = self.need()?;
            match c {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.need()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            self.i += 1;
                            let unit = self.hex4()?;
                            match unit {
                                0xD800..=0xDBFF => {
                                    // A leading surrogate must be followed by an escaped
                                    // trailing one.
                                    if self.need()? != b'\\' {
                                        return Err(Invalid::Syntax);
                                    }
                                    self.i += 1;
                                    if self.need()? != b'u' {
                                        return Err(Invalid::Syntax);
                                    }
                                    self.i += 1;
                                    if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                                        return Err(Invalid::Syntax);
                                    }
                                }
                                0xDC00..=0xDFFF => return Err(Invalid::Syntax),
                                _ => {}
                            }
                        }
                        _ => return Err(Invalid::Syntax),
                    }
                }
                0x00..=0x1F => return Err(Invalid::Syntax),
                0x80..=0xFF => {
                    ascii = false;
                    self.i += 1;
                }
                _ => self.i += 1,
            }
        }
        let end = self.i;
        self.i += 1;
        if !ascii {
            let raw = self.b.get(start..end).ok_or(Invalid::Syntax)?;
            std::str::from_utf8(raw).map_err(|_| Invalid::Syntax)?;
        }
        Ok((start, end, escaped))
    }

    fn hex4(&mut self) -> Result<u16, Invalid> {
        // Four bytes are read before any is looked at (as serde_json does).
        if self.b.len() < self.i + 4 {
            return Err(Invalid::Truncated);
        }
        let mut n: u16 = 0;
        for _ in 0..4 {
            let c = self.need()?;
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(Invalid::Syntax),
            };
            n = (n << 4) | u16::from(d);
            self.i += 1;
        }
        Ok(n)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), Invalid> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.need()? {
            b'0' => {
                self.i += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return Err(Invalid::Syntax);
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return Err(Invalid::Syntax),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.need()?.is_ascii_digit() {
                return Err(Invalid::Syntax);
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.need()?, b'+' | b'-') {
                self.i += 1;
            }
            if !self.need()?.is_ascii_digit() {
                return Err(Invalid::Syntax);
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
        for &w in word {
            let c = self.need()?;
            if c != w {
                return Err(Invalid::Syntax);
            }
            self.i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the tree parser says, as an [`Invalid`].
    fn serde(text: &[u8]) -> Result<(), Invalid> {
        serde_json::from_slice::<serde_json::Value>(text).map(|_| ()).map_err(|e| match e.classify() {
            serde_json::error::Category::Eof => Invalid::Truncated,
            _ => Invalid::Syntax,
        })
    }

    #[test]
    fn agrees_with_serde_json() {
        let deep_ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        let deep_bad = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        let deep_obj = "{\"a\":".repeat(MAX_DEPTH) + "1" + &"}".repeat(MAX_DEPTH);
        let cases: Vec<&[u8]> = vec![
            b"{}",
            b"[]",
            b"1",
            b"-0",
            b"-0.5e-3",
            b"1E+2",
            b"12345678901234567890123456789",
            b"1e999999",
            b"01",
            b"-",
            b"1.",
            b"1.e3",
            b".5",
            b"1e",
            b"1e+",
            b"+1",
            b"[1,]",
            b"[,1]",
            b"{\"a\":1,}",
            b"{,}",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{1:2}",
            b"[1 2]",
            b"tru",
            b"trux",
            b"nul",
            b"null ",
            b"null x",
            b"{} {}",
            b"\"\\ud800\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\ud800\\udc00\"",
            b"\"\\udc00\"",
            b"\"\\ud800",
            b"\"\\ud800\\",
            b"\"\\u12\"",
            b"\"\\u12",
            b"\"\\x\"",
            b"\"a\tb\"",
            b"\"\x7f\"",
            b"\"\xc3\xa9\"",
            b"\"\xff\"",
            b"\"\xed\xa0\x80\"",
            b"\"\xc3\"",
            b"\xc3\xa9",
            b"[\"a\"",
            b"{\"a\":[1,2",
            b"{\"a\"",
            b"{\"a\":",
            b"{",
            b"[",
            b" \n\t\r[ 1 , { \"b\" : null } ] \n",
            b"\x0c[]",
            deep_ok.as_bytes(),
            deep_bad.as_bytes(),
            deep_obj.as_bytes(),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|t| validate(t) != serde(t))
            .map(|t| format!("{}: {:?} vs {:?}", String::from_utf8_lossy(t), validate(t), serde(t)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Nothing at all is not a truncated value.
        assert_eq!(validate(b""), Err(Invalid::Syntax));
        assert_eq!(validate(b"  "), Err(Invalid::Syntax));
    }

    #[test]
    fn duplicate_member_names_are_refused() {
        assert_eq!(validate(br#"{"a":1,"a":2}"#), Err(Invalid::Syntax));
        assert_eq!(validate(br#"{"a":1,"\u0061":2}"#), Err(Invalid::Syntax), "the same name escaped");
        assert_eq!(validate(br#"{"a":{"a":1},"b":{"a":2}}"#), Ok(()), "the same name in different objects");
        assert_eq!(validate(br#"[{"a":1},{"a":1}]"#), Ok(()));
        // Past the linear limit the names move to a set.
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        let text = format!("{{{}}}", many.join(","));
        assert_eq!(validate(text.as_bytes()), Ok(()));
        let text = format!("{{{},\"k7\":0}}", many.join(","));
        assert_eq!(validate(text.as_bytes()), Err(Invalid::Syntax));
        let nested = format!("{{\"x\":{{{}}},\"k7\":0}}", many.join(","));
        assert_eq!(validate(nested.as_bytes()), Ok(()), "inner names do not leak outwards");
    }
}
