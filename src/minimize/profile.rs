//! Compiled minimization profiles and their selection by scopes and purpose of use.

use std::collections::HashMap;
use std::sync::Arc;

use super::rules::{Mode, RuleSet};
use crate::auth::AuthRequirement;

/// The ordered profiles of one route. Selection is deterministic: the first profile whose
/// conditions all hold is applied; a profile without conditions matches every caller (and must
/// be last). When none matches the request is refused (`no_minimization_profile`).
#[derive(Debug, Clone)]
pub struct ProfileSet {
    /// Profiles in selection order.
    pub profiles: Vec<Arc<Profile>>,
    /// Purposes of use (e.g. `HRESCH`, `PUBHLTH`) whose callers may only get a `safe-harbor`
    /// profile: other profiles are skipped for them.
    pub safe_harbor_purposes: Vec<String>,
}

impl ProfileSet {
    /// The profile for a caller with these raw scope strings and purpose-of-use codes whose
    /// authentication is unknown: profiles that require step-up authentication are skipped.
    pub fn select(&self, scopes: &[String], purpose: &[String]) -> Option<Arc<Profile>> {
        self.select_where(scopes, purpose, |_| false)
    }

    /// The profile for a caller: the first whose conditions hold. `authenticated` says whether
    /// the caller's authentication meets a profile's step-up requirement; a profile whose
    /// requirement is not met is skipped (selection falls through to the next one).
    pub fn select_where(
        &self,
        scopes: &[String],
        purpose: &[String],
        authenticated: impl Fn(&AuthRequirement) -> bool,
    ) -> Option<Arc<Profile>> {
        self.profiles.iter().find(|p| self.eligible(p, purpose, &authenticated) && p.when.matches(scopes, purpose)).cloned()
    }

    /// The profile named `name`, if the caller is eligible for it (break-glass chooses a
    /// profile by name, regardless of its `whenScopes` and `whenPurpose`).
    pub fn named(&self, name: &str, purpose: &[String], authenticated: impl Fn(&AuthRequirement) -> bool) -> Option<Arc<Profile>> {
        self.profiles.iter().find(|p| p.name == name && self.eligible(p, purpose, &authenticated)).cloned()
    }

    /// Step-up and safe-harbor binding: what no condition can override.
    fn eligible(&self, p: &Profile, purpose: &[String], authenticated: &impl Fn(&AuthRequirement) -> bool) -> bool {
        let bound = purpose.iter().any(|x| self.safe_harbor_purposes.contains(x));
        (!bound || p.safe_harbor) && p.when.authentication.as_ref().is_none_or(authenticated)
    }

    /// Whether some profile hashes values (the host must supply the HMAC key).
    pub fn requires_hmac_key(&self) -> bool {
        self.profiles.iter().any(|p| p.requires_hmac_key())
    }
}

/// Who a profile is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    /// Every scope required.
    pub all_of: Vec<String>,
    /// At least one scope required (if non-empty).
    pub any_of: Vec<String>,
    /// At least one purpose-of-use code required (if non-empty).
    pub purpose: Vec<String>,
    /// Step-up authentication the caller must meet (checked by the selecting code).
    pub authentication: Option<AuthRequirement>,
}

impl Condition {
    /// Whether the condition holds.
    pub fn matches(&self, scopes: &[String], purpose: &[String]) -> bool {
        let has = |s: &String| scopes.contains(s);
        self.all_of.iter().all(has)
            && (self.any_of.is_empty() || self.any_of.iter().any(has))
            && (self.purpose.is_empty() || self.purpose.iter().any(|p| purpose.contains(p)))
    }

    /// Whether it holds for everyone.
    pub fn is_unconditional(&self) -> bool {
        self.all_of.is_empty() && self.any_of.is_empty() && self.purpose.is_empty() && self.authentication.is_none()
    }
}

/// A compiled profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Name, for audit events and metrics.
    pub name: String,
    /// Selection condition.
    pub when: Condition,
    /// Compute withheld paths but release the body unchanged.
    pub shadow: bool,
    /// The built-in `safe-harbor` preset.
    pub safe_harbor: bool,
    /// The rules.
    pub body: BodyRules,
}

impl Profile {
    /// Whether applying this profile needs the HMAC key.
    pub fn requires_hmac_key(&self) -> bool {
        match &self.body {
            BodyRules::Json(r) => r.needs_key,
            BodyRules::Fhir(f) => {
                f.types.values().chain(f.star.iter()).any(|r| r.needs_key) || f.deid.as_ref().is_some_and(|d| d.needs_key())
            }
        }
    }

    /// Whether the profile expects FHIR resources.
    pub fn is_fhir(&self) -> bool {
        matches!(self.body, BodyRules::Fhir(_))
    }
}

/// Rules by body kind.
#[derive(Debug, Clone)]
pub enum BodyRules {
    /// FHIR resources, Bundles, contained resources.
    Fhir(FhirRules),
    /// A plain JSON object, or an array of objects.
    Json(RuleSet),
}

/// What happens to resource types without rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherResources {
    /// Release with only the profile-wide settings applied.
    Allow,
    /// Reduce to `resourceType`, `id` and `meta`.
    Remove,
    /// Refuse the response.
    Deny,
}

/// How minimized bundles rewrite link and request URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleLinks {
    /// Keep only paging parameters.
    PagingOnly,
    /// Remove the query.
    DropQuery,
    /// Remove `Bundle.link`.
    Drop,
    /// Untouched.
    Keep,
}

/// FHIR-aware rules.
#[derive(Debug, Clone)]
pub struct FhirRules {
    /// Per-type rules, with the `*` rules merged in.
    pub types: HashMap<&'static str, RuleSet>,
    /// `*` rules for types without their own entry.
    pub star: Option<RuleSet>,
    /// Types with neither.
    pub other: OtherResources,
    /// Remove `display` from every Reference.
    pub remove_reference_display: bool,
    /// Generalize every date-shaped value to its year.
    pub dates_to_year: bool,
    /// Link rewriting for minimized bundles.
    pub links: BundleLinks,
    /// An empty deny-mode rule set: for `otherResources: allow` and envelope parts.
    pub pass: RuleSet,
    /// De-identification applied after the rules (`None`: off).
    pub deid: Option<super::deid::Deid>,
}

impl FhirRules {
    /// The rules for a FHIR R4 resource type, if it has any.
    pub fn rules_for(&self, resource_type: &str) -> Option<&RuleSet> {
        self.types.get(resource_type).or(self.star.as_ref())
    }

    /// Empty rule set, deny mode.
    pub fn pass_rules() -> RuleSet {
        RuleSet::new(Mode::Deny)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn conditions() {
        let c = Condition { all_of: s(&["a"]), any_of: s(&["b", "c"]), purpose: s(&["HRESCH"]), authentication: None };
        assert!(c.matches(&s(&["a", "c"]), &s(&["HRESCH"])));
        assert!(!c.matches(&s(&["a", "c"]), &s(&["TREAT"])));
        assert!(!c.matches(&s(&["a"]), &s(&["HRESCH"])));
        assert!(!c.matches(&s(&["c"]), &s(&["HRESCH"])));
        assert!(Condition::default().matches(&[], &[]));
        assert!(Condition::default().is_unconditional());
        assert!(!Condition { authentication: Some(AuthRequirement::default()), ..Condition::default() }.is_unconditional());
    }
}
