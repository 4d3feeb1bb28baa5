//! The audit secret and the two keys derived from it: one seals the event chain, the other
//! pseudonymizes patient ids. One secret (Envoy's VM environment `PHI_GUARD_AUDIT_KEY`) serves
//! both; separate derivations keep a chain MAC from ever equalling a pseudonym.
//!
//! A leaf below `minimize` (restrictions recognise patients by pseudonym), `policy` (the audit
//! section says how patients are named: [`PatientIds`]) and `audit` (which seals with it and
//! re-exports it): the audit events themselves record decisions and sit above all of them.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted secret, in bytes (after trimming surrounding whitespace).
pub const MIN_SECRET_BYTES: usize = 32;

/// Prefix of a version-1 pseudonym: `ps1-` + 32 lowercase hex digits (128 bits of
/// HMAC-SHA256(pseudonym key, `Patient/` + id); other namespaces: `namespace/` + value).
pub const PSEUDONYM_PREFIX: &str = "ps1-";

/// How patients are named in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientIds {
    /// A keyed HMAC-SHA256 pseudonym (`ps1-` + 32 hex digits).
    Pseudonym,
    /// The FHIR logical id as requested (opt-in).
    Raw,
}

impl serde::Serialize for PatientIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl PatientIds {
    /// Policy and event name.
    pub fn name(self) -> &'static str {
        match self {
            PatientIds::Pseudonym => "pseudonym",
            PatientIds::Raw => "raw",
        }
    }
}

/// Why a secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Fewer than [`MIN_SECRET_BYTES`] bytes.
    #[error("the audit key must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -base64 32`); got {0}")]
    TooShort(usize),
}

/// Keys derived from the audit secret. `Debug` never shows them.
#[derive(Clone)]
pub struct AuditKey {
    chain: HmacSha256,
    pseudonym: HmacSha256,
    attestation: HmacSha256,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this never takes the error branch.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| HmacSha256::new(&Default::default()))
}

fn derive(secret: &[u8], label: &[u8]) -> HmacSha256 {
    let mut m = keyed(secret);
    m.update(label);
    keyed(&m.finalize().into_bytes())
}

impl AuditKey {
    /// Derive the keys from the secret's bytes, used as given apart from surrounding ASCII
    /// whitespace (so a key file may end with a newline).
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(AuditKey {
            chain: derive(secret, b"phi-guard audit chain v1"),
            pseudonym: derive(secret, b"phi-guard patient pseudonym v1"),
            attestation: derive(secret, b"phi-guard verified-token attestation v1"),
        })
    }

    /// MAC of a record the workers of one Envoy share (a verified token's attestation): only
    /// holders of the audit secret, i.e. phi-guard's own VMs, can write one another accepts.
    pub fn attestation(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self.attestation.clone();
        for part in parts {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        m.finalize().into_bytes().into()
    }

    /// The pseudonym of a patient id. Stable for a given secret, so an auditor holding the
    /// secret can find one patient's events; without it, ids cannot be recovered or guessed.
    pub fn pseudonym(&self, patient_id: &str) -> String {
        self.pseudonym_of("Patient", patient_id)
    }

    /// The pseudonym of `value` in `namespace`: HMAC over `namespace/value`, so a resource's id
    /// is named under its type (`Observation`, ...; `Patient` gives [`AuditKey::pseudonym`]) and
    /// other values under a lowercase name that no resource type has (`sub`, `jti`,
    /// `x-request-id`, `operation`). The same value in two namespaces has two pseudonyms.
    pub fn pseudonym_of(&self, namespace: &str, value: &str) -> String {
        let mut m = self.pseudonym.clone();
        m.update(namespace.as_bytes());
        m.update(b"/");
        m.update(value.as_bytes());
        let digest = m.finalize().into_bytes();
        let mut out = String::with_capacity(PSEUDONYM_PREFIX.len() + 32);
        out.push_str(PSEUDONYM_PREFIX);
        push_hex(&mut out, digest.get(..16).unwrap_or(&[]));
        out
    }

    /// HMAC-SHA256 of `prev || bytes` under the chain key.
    pub(crate) fn chain_mac(&self, prev: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
        let mut m = self.chain.clone();
        m.update(prev);
        m.update(bytes);
        m.finalize().into_bytes().into()
    }

    /// Constant-time check of a chain MAC.
    pub(crate) fn chain_mac_matches(&self, prev: &[u8; 32], bytes: &[u8], mac: &[u8; 32]) -> bool {
        let mut m = self.chain.clone();
        m.update(prev);
        m.update(bytes);
        m.verify_slice(mac).is_ok()
    }
}

/// Append lowercase hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// Parse exactly 64 lowercase hex digits.
pub(crate) fn parse_hex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [hi, lo] => (nibble(*hi)?, nibble(*lo)?),
            _ => return None,
        };
        *o = (hi << 4) | lo;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SECRET: &[u8] = b"test-audit-secret-0123456789abcdef";

    #[test]
    fn secrets_and_pseudonyms() {
        assert_eq!(AuditKey::from_secret(b"short").unwrap_err(), KeyError::TooShort(5));
        assert!(AuditKey::from_secret(b"   0123456789012345678901234567890   \n").is_err(), "whitespace does not count");
        let k = AuditKey::from_secret(SECRET).unwrap();
        let same = AuditKey::from_secret(&[SECRET, b"\n"].concat()).unwrap();
        let p = k.pseudonym("pat-1");
        assert_eq!(p, same.pseudonym("pat-1"));
        assert!(p.starts_with(PSEUDONYM_PREFIX) && p.len() == 36);
        assert!(p[4..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(p, k.pseudonym("pat-2"));
        let other = AuditKey::from_secret(b"another-secret-0123456789abcdefghij").unwrap();
        assert_ne!(p, other.pseudonym("pat-1"));
        assert_eq!(format!("{k:?}"), "AuditKey(..)");
    }

    #[test]
    fn pseudonyms_are_per_namespace() {
        let k = AuditKey::from_secret(SECRET).unwrap();
        assert_eq!(k.pseudonym_of("Patient", "x1"), k.pseudonym("x1"), "patients keep their pseudonyms");
        let all = [k.pseudonym("x1"), k.pseudonym_of("Observation", "x1"), k.pseudonym_of("sub", "x1"), k.pseudonym_of("jti", "x1")];
        for (i, a) in all.iter().enumerate() {
            assert!(a.starts_with(PSEUDONYM_PREFIX) && a.len() == 36);
            assert!(all.iter().skip(i + 1).all(|b| a != b), "{a} repeats");
        }
    }

    #[test]
    fn chain_key_is_separate_from_pseudonym_key() {
        let k = AuditKey::from_secret(SECRET).unwrap();
        let mac = k.chain_mac(&[0; 32], b"Patient/pat-1");
        let mut hex = String::new();
        push_hex(&mut hex, &mac);
        assert!(!hex.starts_with(&k.pseudonym("pat-1")[4..]));
        assert!(k.chain_mac_matches(&[0; 32], b"Patient/pat-1", &mac));
        assert!(!k.chain_mac_matches(&[1; 32], b"Patient/pat-1", &mac));
        assert_eq!(parse_hex32(hex.as_bytes()), Some(mac));
        assert_eq!(parse_hex32(hex.to_uppercase().as_bytes()), None);
        assert_eq!(parse_hex32(&hex.as_bytes()[1..]), None);
    }
}
