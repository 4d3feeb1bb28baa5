//! Step-up authentication (RFC 9470): what a route or minimization profile requires of the
//! user's authentication event, checked against the token's `acr`, `amr` and `auth_time`.

use super::principal::Principal;
use crate::schema::{AuthenticationDoc, CompileError, Loc};
use crate::time::UnixSeconds;

/// What a route or profile requires of the user's authentication. Every part that is set must
/// hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthRequirement {
    /// Weakest acceptable `acr`: this level of the issuer's `acrLevels` or any later one.
    pub acr_min: Option<String>,
    /// `amr` methods that must all be present (e.g. `mfa`, `hwk`).
    pub amr: Vec<String>,
    /// `auth_time` is required and must be at most this many seconds before now.
    pub max_auth_age: Option<u64>,
}

impl AuthRequirement {
    /// Whether the principal's authentication event meets the requirement at `now`. `levels`
    /// are the `acrLevels` of the token's issuer, weakest first. An `acr` outside the levels,
    /// or a level the issuer does not define, fails (closed).
    pub fn met_by(&self, p: &Principal, levels: &[String], now: UnixSeconds) -> bool {
        if let Some(min) = &self.acr_min {
            let rank = |v: &str| levels.iter().position(|l| l == v);
            match (p.acr.as_deref().and_then(rank), rank(min)) {
                (Some(have), Some(need)) if have >= need => {}
                _ => return false,
            }
        }
        if !self.amr.iter().all(|m| p.amr.contains(m)) {
            return false;
        }
        match (self.max_auth_age, p.auth_time) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(max), Some(t)) => now.secs_since(t) <= max,
        }
    }

    /// The `acr_values` to ask the authorization server for: `acr_min` and every stronger
    /// level of the issuer, space-separated, strongest last.
    pub fn acr_values(&self, levels: &[String]) -> Option<String> {
        let min = self.acr_min.as_ref()?;
        let start = levels.iter().position(|l| l == min)?;
        levels.get(start..).map(|l| l.join(" "))
    }
}

/// Compile a step-up requirement (a route's or a profile's `authentication`). Whether `acrMin`
/// is a level of every issuer is checked once the issuers are compiled (`policy::compile`).
pub fn compile_authentication(d: &AuthenticationDoc, loc: &Loc<'_>) -> Result<AuthRequirement, CompileError> {
    if d.acr_min.is_none() && d.amr.is_empty() && d.max_auth_age_seconds.is_none() {
        return Err(loc.error("must set `acrMin`, `amr` or `maxAuthAgeSeconds`"));
    }
    for (i, m) in d.amr.iter().enumerate() {
        if !crate::ident::code(m, 64) {
            return Err(loc.field("amr").index(i).error(format!("`{m}` is not an authentication method reference (e.g. `mfa`, `hwk`)")));
        }
    }
    if let Some(n) = d.max_auth_age_seconds {
        if n > 30 * 86_400 {
            return Err(loc.field("maxAuthAgeSeconds").error(format!("`{n}` must be between 0 and 2592000")));
        }
    }
    Ok(AuthRequirement { acr_min: d.acr_min.clone(), amr: d.amr.clone(), max_auth_age: d.max_auth_age_seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixSeconds = UnixSeconds::new(1_000_000);

    fn levels() -> Vec<String> {
        ["1", "2", "3"].map(str::to_owned).to_vec()
    }

    fn principal(acr: Option<&str>, amr: &[&str], auth_time: Option<UnixSeconds>) -> Principal {
        Principal { acr: acr.map(str::to_owned), amr: amr.iter().map(|m| (*m).to_owned()).collect(), auth_time, ..Principal::default() }
    }

    #[test]
    fn acr_at_or_above() {
        let r = AuthRequirement { acr_min: Some("2".into()), ..AuthRequirement::default() };
        assert!(r.met_by(&principal(Some("2"), &[], None), &levels(), NOW));
        assert!(r.met_by(&principal(Some("3"), &[], None), &levels(), NOW));
        assert!(!r.met_by(&principal(Some("1"), &[], None), &levels(), NOW));
        assert!(!r.met_by(&principal(Some("4"), &[], None), &levels(), NOW), "unknown level");
        assert!(!r.met_by(&principal(None, &[], None), &levels(), NOW));
        assert!(!r.met_by(&principal(Some("3"), &[], None), &[], NOW), "issuer without levels");
        assert_eq!(r.acr_values(&levels()).as_deref(), Some("2 3"));
        assert_eq!(AuthRequirement::default().acr_values(&levels()), None);
    }

    #[test]
    fn amr_and_age() {
        let r = AuthRequirement { amr: vec!["mfa".into(), "hwk".into()], max_auth_age: Some(300), ..AuthRequirement::default() };
        assert!(r.met_by(&principal(None, &["pwd", "hwk", "mfa"], Some(NOW.sub_secs(300))), &[], NOW));
        assert!(!r.met_by(&principal(None, &["pwd", "mfa"], Some(NOW.sub_secs(10))), &[], NOW), "hwk missing");
        assert!(!r.met_by(&principal(None, &["hwk", "mfa"], Some(NOW.sub_secs(301))), &[], NOW), "stale");
        assert!(!r.met_by(&principal(None, &["hwk", "mfa"], None), &[], NOW), "auth_time required");
        assert!(r.met_by(&principal(None, &["hwk", "mfa"], Some(NOW.add_secs(30))), &[], NOW), "within skew");
        assert!(AuthRequirement::default().met_by(&Principal::default(), &[], NOW));
    }
}
