//! Field paths of minimization rules, parsed once when the policy compiles.
//!
//! Grammar (arrays are transparent, as in FHIRPath, so `[*]` is optional and only documents
//! that the element repeats):
//!
//! ```text
//! path     = ["**."] segment *("." segment)
//! segment  = name [ "[*]" | "[x]" | "[url=" url "]" ]
//! ```
//!
//! - `**.` (first segment only) anchors the rest of the path at every depth of the resource.
//! - `[x]` marks a FHIR choice element: `deceased[x]` matches `deceasedBoolean`,
//!   `deceasedDateTime`, ...
//! - `[url=...]` selects the elements of an `extension` / `modifierExtension` array by `url`.

use std::fmt;

use thiserror::Error;

/// Why a path string is not a valid field path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// Empty path or empty segment.
    #[error("`{0}`: empty path segment")]
    Empty(String),
    /// A character that cannot appear in a field name.
    #[error("`{0}`: invalid character `{1}` in a field name")]
    BadChar(String, char),
    /// `[0]` and friends.
    #[error("`{0}`: array indexes are not supported; arrays are matched element-wise (use `[*]` or nothing)")]
    Index(String),
    /// `[x]` or `[url=]` on a plain JSON route, or a FHIR name that cannot be an element.
    #[error("`{0}`: {1}")]
    NotAllowed(String, &'static str),
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Field name (without the `[x]` marker).
    pub name: Box<str>,
    /// FHIR choice element: matches `name` followed by a capitalised type suffix.
    pub choice: bool,
    /// Extension selector: only array elements whose `url` equals this.
    pub url: Option<Box<str>>,
}

impl Segment {
    /// Whether this segment names the JSON key `key`.
    pub fn matches_key(&self, key: &str) -> bool {
        if self.choice {
            key.strip_prefix(&*self.name).and_then(|rest| rest.chars().next()).is_some_and(|c| c.is_ascii_uppercase())
        } else {
            key == &*self.name
        }
    }
}

/// A parsed field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    /// Starts with `**.`: matches at any depth.
    pub anywhere: bool,
    /// Steps from the anchor (the resource root, or any object for `anywhere`).
    pub segments: Vec<Segment>,
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.anywhere {
            f.write_str("**.")?;
        }
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(&s.name)?;
            if s.choice {
                f.write_str("[x]")?;
            }
            if let Some(u) = &s.url {
                write!(f, "[url={u}]")?;
            }
        }
        Ok(())
    }
}

/// Which dialect a path is parsed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// FHIR JSON: element names start with a lowercase letter and are alphanumeric; `[x]` and
    /// `[url=...]` are available; primitive-extension siblings (`_x`) cannot be named (they
    /// follow their element).
    Fhir,
    /// Plain JSON: names of `[A-Za-z0-9_$@-]`.
    Json,
}

/// Parse a rule path.
pub fn parse(text: &str, dialect: Dialect) -> Result<FieldPath, PathError> {
    let err_owned = || text.to_owned();
    let (anywhere, rest) = match text.strip_prefix("**.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if rest.is_empty() {
        return Err(PathError::Empty(err_owned()));
    }
    let mut segments = Vec::new();
    for raw in split_segments(rest) {
        segments.push(segment(raw, text, dialect)?);
    }
    Ok(FieldPath { anywhere, segments })
}

/// Split on `.` outside brackets (extension URLs contain dots).
fn split_segments(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                out.push(s.get(start..i).unwrap_or(""));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s.get(start..).unwrap_or(""));
    out
}

fn segment(raw: &str, whole: &str, dialect: Dialect) -> Result<Segment, PathError> {
    let (name, suffix) = match raw.find('[') {
        Some(i) => (raw.get(..i).unwrap_or(""), raw.get(i..)),
        None => (raw, None),
    };
    if name.is_empty() {
        return Err(PathError::Empty(whole.to_owned()));
    }
    if name == "**" {
        return Err(PathError::NotAllowed(whole.to_owned(), "`**` may only start a path"));
    }
    check_name(name, whole, dialect)?;
    let mut seg = Segment { name: name.into(), choice: false, url: None };
    match suffix {
        None | Some("[*]") => {}
        Some("[x]") => {
            if dialect == Dialect::Json {
                return Err(PathError::NotAllowed(whole.to_owned(), "choice elements `[x]` exist only on FHIR routes"));
            }
            seg.choice = true;
        }
        Some(s) => {
            let inner = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or("");
            if let Some(url) = inner.strip_prefix("url=") {
                if dialect == Dialect::Json {
                    return Err(PathError::NotAllowed(whole.to_owned(), "extension selectors exist only on FHIR routes"));
                }
                if name != "extension" && name != "modifierExtension" {
                    return Err(PathError::NotAllowed(
                        whole.to_owned(),
                        "`[url=...]` selects elements of `extension` or `modifierExtension` only",
                    ));
                }
                if url.is_empty() || url.contains(|c: char| c.is_whitespace() || c == '[' || c == ']') {
                    return Err(PathError::NotAllowed(whole.to_owned(), "the extension url must be non-empty, without spaces or brackets"));
                }
                seg.url = Some(url.into());
            } else if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PathError::Index(whole.to_owned()));
            } else {
                return Err(PathError::NotAllowed(whole.to_owned(), "unknown selector; expected `[*]`, `[x]` or `[url=...]`"));
            }
        }
    }
    Ok(seg)
}

fn check_name(name: &str, whole: &str, dialect: Dialect) -> Result<(), PathError> {
    match dialect {
        Dialect::Fhir => {
            if name.starts_with('_') {
                return Err(PathError::NotAllowed(
                    whole.to_owned(),
                    "primitive-extension siblings follow their element; name the element without `_`",
                ));
            }
            if let Some(c) = name.chars().find(|c| !c.is_ascii_alphanumeric()) {
                return Err(PathError::BadChar(whole.to_owned(), c));
            }
            if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                return Err(PathError::NotAllowed(whole.to_owned(), "FHIR element names start with a lowercase letter"));
            }
        }
        Dialect::Json => {
            if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '@' | '-'))) {
                return Err(PathError::BadChar(whole.to_owned(), c));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fhir(s: &str) -> Result<FieldPath, PathError> {
        parse(s, Dialect::Fhir)
    }

    #[test]
    fn parses_and_round_trips() {
        let p = fhir("identifier[*].value").unwrap();
        assert!(!p.anywhere);
        assert_eq!(p.segments.len(), 2);
        assert_eq!(&*p.segments[0].name, "identifier");
        assert_eq!(p.to_string(), "identifier.value");
        let p = fhir("**.extension[url=http://hl7.org/fhir/StructureDefinition/geolocation]").unwrap();
        assert!(p.anywhere);
        assert_eq!(p.segments[0].url.as_deref(), Some("http://hl7.org/fhir/StructureDefinition/geolocation"));
        assert_eq!(p.to_string(), "**.extension[url=http://hl7.org/fhir/StructureDefinition/geolocation]");
        let p = fhir("deceased[x]").unwrap();
        assert!(p.segments[0].choice);
        assert_eq!(p.to_string(), "deceased[x]");
        assert_eq!(fhir("name[*].given").unwrap(), fhir("name.given").unwrap());
    }

    #[test]
    fn choice_matching() {
        let s = &fhir("deceased[x]").unwrap().segments[0];
        assert!(s.matches_key("deceasedDateTime"));
        assert!(s.matches_key("deceasedBoolean"));
        assert!(!s.matches_key("deceased"));
        assert!(!s.matches_key("deceasedx"));
        let s = &fhir("birthDate").unwrap().segments[0];
        assert!(s.matches_key("birthDate"));
        assert!(!s.matches_key("birthDateX"));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "**.",
            "a..b",
            ".a",
            "a.",
            "identifier[0].value",
            "a[y]",
            "_birthDate",
            "Name",
            "na-me",
            "a.**.b",
            "**",
            "name[url=x]",
            "extension[url=]",
            "extension[url=a b]",
            "a[*",
        ] {
            assert!(fhir(bad).is_err(), "{bad}");
        }
        assert!(matches!(fhir("identifier[0]"), Err(PathError::Index(_))));
        assert!(parse("first-name.$ref", Dialect::Json).is_ok());
        assert!(parse("_id", Dialect::Json).is_ok());
        assert!(parse("a[x]", Dialect::Json).is_err());
        assert!(parse("extension[url=u]", Dialect::Json).is_err());
        assert!(parse("a b", Dialect::Json).is_err());
        assert_eq!(
            fhir("identifier[0].value").unwrap_err().to_string(),
            "`identifier[0].value`: array indexes are not supported; arrays are matched element-wise (use `[*]` or nothing)"
        );
    }
}
