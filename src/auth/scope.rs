//! SMART App Launch scopes (v1 and v2): `context/type.perms[?param=value&...]`.
//!
//! Parsing is strict: anything that is not exactly a SMART resource scope grants no data access
//! (`launch`, `openid`, `fhirUser`, `offline_access`, junk, miscased types, out-of-order or
//! repeated permission letters).

use crate::fhir::resource_type;

/// Whose data a SMART scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// The patient in the token's launch context.
    Patient,
    /// Whatever the signed-in user may see (enforced by the upstream).
    User,
    /// A backend system.
    System,
}

impl Context {
    /// The scope prefix.
    pub fn name(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// A parsed SMART resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartScope {
    /// Context (`patient`, `user`, `system`).
    pub context: Context,
    /// Resource type, or `None` for `*`.
    pub resource_type: Option<&'static str>,
    /// Permissions as a set of v2 letters, in `cruds` order.
    pub permissions: Permissions,
    /// v2 search constraints (`?category=laboratory`), decoded.
    pub constraints: Vec<(String, String)>,
}

/// A set of SMART v2 permission letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u8);

const LETTERS: [char; 5] = ['c', 'r', 'u', 'd', 's'];

impl Permissions {
    /// Every permission.
    pub const ALL: Permissions = Permissions(0b11111);

    /// Whether the set holds `letter`.
    pub fn allows(self, letter: char) -> bool {
        LETTERS.iter().position(|l| *l == letter).is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// Parse a v2 letter string (`rs`, `cruds`); letters must be in `cruds` order, each once.
    fn parse_v2(s: &str) -> Option<Self> {
        let mut bits = 0u8;
        let mut next = 0usize;
        for ch in s.chars() {
            let i = LETTERS.iter().skip(next).position(|l| *l == ch)? + next;
            bits |= 1 << i;
            next = i + 1;
        }
        (bits != 0).then_some(Permissions(bits))
    }
}

/// Parse one scope string; `None` if it is not a SMART resource scope.
pub fn parse(scope: &str) -> Option<SmartScope> {
    let (context, rest) = scope.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (ty, perms) = rest.split_once('.')?;
    let resource_type = match ty {
        "*" => None,
        t => Some(resource_type(t)?),
    };
    let (permissions, v2) = match perms {
        "read" => (Permissions(0b10010), false),
        "write" => (Permissions(0b01101), false),
        "*" => (Permissions::ALL, false),
        p => (Permissions::parse_v2(p)?, true),
    };
    let mut constraints = Vec::new();
    if let Some(q) = query {
        // Constraints are a SMART v2 feature.
        if !v2 || q.is_empty() {
            return None;
        }
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=')?;
            let k = percent_encoding::percent_decode_str(k).decode_utf8().ok()?;
            let v = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
            if k.is_empty() || v.is_empty() {
                return None;
            }
            constraints.push((k.into_owned(), v.into_owned()));
        }
    }
    Some(SmartScope { context, resource_type, permissions, constraints })
}

impl SmartScope {
    /// Whether this scope grants `letter` on `resource_type` (`None` = system-wide, which only
    /// `*` scopes reach), given the request's query parameters.
    pub fn grants(&self, resource_type: Option<&str>, letter: char, query: &[(String, String)]) -> bool {
        let type_ok = match (self.resource_type, resource_type) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => false,
        };
        // A constrained scope only grants searches that carry every constraint verbatim; a read
        // cannot be checked against a constraint before the response, so it is not granted.
        let constraints_ok = self.constraints.is_empty()
            || (letter == 's' && self.constraints.iter().all(|(k, v)| query.iter().any(|(qk, qv)| qk == k && qv == v)));
        type_ok && self.permissions.allows(letter) && constraints_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2() {
        let s = parse("patient/Observation.read").unwrap();
        assert_eq!((s.context, s.resource_type), (Context::Patient, Some("Observation")));
        assert!(s.permissions.allows('r') && s.permissions.allows('s') && !s.permissions.allows('c'));
        let w = parse("user/*.write").unwrap();
        assert!(w.permissions.allows('c') && w.permissions.allows('u') && w.permissions.allows('d'));
        assert!(!w.permissions.allows('r'));
        assert_eq!(parse("system/*.*").unwrap().permissions, Permissions::ALL);
        assert_eq!(parse("patient/*.cruds").unwrap().permissions, Permissions::ALL);
        let c = parse("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory").unwrap();
        assert_eq!(
            c.constraints,
            [("category".to_owned(), "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_owned())]
        );
    }

    #[test]
    fn junk_grants_nothing() {
        for s in [
            "launch",
            "launch/patient",
            "openid",
            "fhirUser",
            "offline_access",
            "online_access",
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "patient/observation.read",
            "patient/Pateint.read",
            "Patient/Observation.read",
            "admin/Observation.read",
            "patient/.read",
            "patient/Observation",
            "patient/Observation.read?category=x",
            "patient/Observation.rs?",
            "patient/Observation.rs?category",
            "patient/Observation.rs?=x",
            "",
            "/",
            "patient/*.READ",
            "patient/Observation.rs ",
            "patient/Observation.crudsx",
        ] {
            assert_eq!(parse(s), None, "{s}");
        }
    }

    #[test]
    fn grants() {
        let q = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        let s = parse("patient/Observation.rs").unwrap();
        assert!(s.grants(Some("Observation"), 'r', &[]));
        assert!(s.grants(Some("Observation"), 's', &[]));
        assert!(!s.grants(Some("Condition"), 'r', &[]));
        assert!(!s.grants(None, 's', &[]));
        assert!(!s.grants(Some("Observation"), 'c', &[]));
        let any = parse("user/*.rs").unwrap();
        assert!(any.grants(Some("Condition"), 'r', &[]));
        assert!(any.grants(None, 's', &[]));
        let c = parse("patient/Observation.rs?category=laboratory").unwrap();
        assert!(c.grants(Some("Observation"), 's', &q("category", "laboratory")));
        assert!(!c.grants(Some("Observation"), 's', &q("category", "vital-signs")));
        assert!(!c.grants(Some("Observation"), 's', &[]));
        assert!(!c.grants(Some("Observation"), 'r', &q("category", "laboratory")));
    }
}
