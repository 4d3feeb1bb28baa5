//! Request-target normalisation. Anything an upstream could read differently from us is refused
//! rather than rewritten: we forward the original bytes, so we must agree with the upstream on
//! what they mean.

use percent_encoding::percent_decode_str;
use thiserror::Error;

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The target does not start with `/`.
    #[error("path must start with `/`")]
    NotAbsolute,
    /// A `.` or `..` segment, raw or percent-encoded.
    #[error("dot segment in path")]
    DotSegment,
    /// An empty segment (`//`) or a trailing slash.
    #[error("empty path segment")]
    EmptySegment,
    /// `%2F`, `%5C`, a backslash, NUL or another control character.
    #[error("forbidden character in path")]
    ForbiddenCharacter,
    /// A `%` not followed by two hex digits, or decoded bytes that are not UTF-8.
    #[error("bad percent-encoding")]
    BadEncoding,
    /// A fragment (`#`) in the request target.
    #[error("fragment in request target")]
    Fragment,
}

/// A request target split into decoded path segments and decoded query pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Decoded segments; empty for `/`.
    pub segments: Vec<String>,
    /// Decoded `name=value` pairs in order; a bare `name` has an empty value.
    pub query: Vec<(String, String)>,
}

impl NormalizedPath {
    /// The decoded path joined back with `/`.
    pub fn path(&self) -> String {
        let mut out = String::with_capacity(self.segments.iter().map(|s| s.len() + 1).sum());
        if self.segments.is_empty() {
            out.push('/');
        }
        for s in &self.segments {
            out.push('/');
            out.push_str(s);
        }
        out
    }

    /// Whether any query parameter has this exact name.
    pub fn has_param(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }
}

/// Split and decode a raw `:path` (origin-form request target).
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    if raw.contains('#') {
        return Err(PathError::Fragment);
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments = Vec::new();
    if !rest.is_empty() {
        for raw_seg in rest.split('/') {
            if raw_seg.is_empty() {
                return Err(PathError::EmptySegment);
            }
            let seg = decode_component(raw_seg, false)?;
            if seg == "." || seg == ".." {
                return Err(PathError::DotSegment);
            }
            if seg.contains(['/', '\\', ';']) {
                return Err(PathError::ForbiddenCharacter);
            }
            segments.push(seg);
        }
    }
    let mut pairs = Vec::new();
    if let Some(q) = query {
        for part in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode_component(k, true)?, decode_component(v, true)?));
        }
    }
    Ok(NormalizedPath { segments, query: pairs })
}

/// Percent-decode one component, refusing malformed escapes, non-UTF-8 and control characters.
/// In the query, `+` means a space (as form encoding and FHIR servers read it).
fn decode_component(raw: &str, query: bool) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return Err(PathError::BadEncoding);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let replaced;
    let src = if query && raw.contains('+') {
        replaced = raw.replace('+', " ");
        replaced.as_str()
    } else {
        raw
    };
    let decoded = percent_decode_str(src).decode_utf8().map_err(|_| PathError::BadEncoding)?.into_owned();
    if decoded.chars().any(|c| c.is_control()) || (!query && decoded.contains('\\')) {
        return Err(PathError::ForbiddenCharacter);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        normalize(p).map(|n| n.segments).unwrap_or_default()
    }

    #[test]
    fn splits_and_decodes() {
        let n = normalize("/fhir/Patient/a%2Db?name=J%C3%B6rg+S&_count=5&flag").unwrap();
        assert_eq!(n.segments, ["fhir", "Patient", "a-b"]);
        assert_eq!(n.query, [("name".into(), "Jörg S".into()), ("_count".into(), "5".into()), ("flag".into(), String::new())]);
        assert_eq!(n.path(), "/fhir/Patient/a-b");
        assert_eq!(segs("/"), Vec::<String>::new());
    }

    #[test]
    fn refuses_ambiguous_paths() {
        for (p, e) in [
            ("/fhir/../Patient/1", PathError::DotSegment),
            ("/fhir/%2e%2E/Patient/1", PathError::DotSegment),
            ("/fhir/./Patient", PathError::DotSegment),
            ("/fhir//Patient/1", PathError::EmptySegment),
            ("/fhir/Patient/", PathError::EmptySegment),
            ("/fhir/Patient%2F1", PathError::ForbiddenCharacter),
            ("/fhir/Patient%2f1", PathError::ForbiddenCharacter),
            ("/fhir/Patient%5C1", PathError::ForbiddenCharacter),
            ("/fhir/Patient\\1", PathError::ForbiddenCharacter),
            ("/fhir/Patient/1;x", PathError::ForbiddenCharacter),
            ("/fhir/Patient/%00", PathError::ForbiddenCharacter),
            ("/fhir/Patient/%zz", PathError::BadEncoding),
            ("/fhir/Patient/%c3", PathError::BadEncoding),
            ("/fhir/Patient/1%", PathError::BadEncoding),
            ("fhir/Patient", PathError::NotAbsolute),
            ("/fhir/Patient#x", PathError::Fragment),
            ("/fhir?x=%0a", PathError::ForbiddenCharacter),
        ] {
            assert_eq!(normalize(p), Err(e), "{p}");
        }
    }
}
