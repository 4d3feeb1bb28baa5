//! Strict validation of a response body without building a tree.

use crate::reason::DenyReason;

/// Whether `body` is one strict JSON document (a leading UTF-8 BOM allowed), with the refusal
/// [`super::body::parse`] would give otherwise. No size cap: the caller bounds the body.
pub fn validate(body: &[u8]) -> Result<(), DenyReason> {
    super::body::parse(body, usize::MAX).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_parse_refuses() {
        assert_eq!(validate(br#"{"a":[1,2]}"#), Ok(()));
        assert_eq!(validate(b"\xEF\xBB\xBF{}"), Ok(()));
        assert_eq!(validate(b""), Err(DenyReason::ResponseNotJson));
        assert_eq!(validate(br#"{"a": [1, 2"#), Err(DenyReason::ResponseTruncated));
        assert_eq!(validate(br#"{"a": 1} x"#), Err(DenyReason::ResponseNotJson));
    }
}
