//! The one character-set test behind every identifier the policy, the tokens and FHIR define
//! (route and profile ids, codes, FHIR ids, search parameter names...): ASCII letters and
//! digits plus a few punctuation bytes, with a bounded length.

/// `s` is 1 to `max` bytes of ASCII letters, digits and bytes from `extra`.
pub fn shaped(s: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Policy ids (routes, profiles, rate limits, restrictions): `[A-Za-z0-9_-]{1,64}`.
pub fn policy_id(s: &str) -> bool {
    shaped(s, 64, b"-_")
}

/// Codes (purpose of use, break-glass reasons, amr values): `[A-Za-z0-9._-]{1,max}`.
pub fn code(s: &str, max: usize) -> bool {
    shaped(s, max, b"-_.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_and_bounds() {
        assert!(policy_id("fhir-read_1"));
        assert!(!policy_id("fhir.read") && !policy_id("") && !policy_id(&"a".repeat(65)) && !policy_id("é"));
        assert!(code("urn.x-y_z", 32));
        assert!(!code("a b", 32) && !code(&"a".repeat(33), 32));
        assert!(shaped("Patient-1.2", 64, b"-.") && !shaped("Patient/1", 64, b"-."));
    }
}
