//! Break-glass: a policy-defined emergency access that widens what one request may do, for a
//! bounded time after the token was issued, always with a reason code and always audited at
//! high severity. It never bypasses token verification, the patient compartment of a token
//! with a patient in context, or minimization's fail-closed behaviour.

use std::collections::HashSet;

use super::principal::Principal;
use super::purpose::{is_purpose_of_use, EMERGENCY_TREATMENT};
use super::scope::{parse, Context, SmartScope};
use crate::reason::DenyReason;
use crate::schema::{BreakGlassDoc, CompileError, Loc, Routes};
use crate::time::UnixSeconds;

/// The policy's break-glass definition (compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassPolicy {
    /// Claim that invokes break-glass when it is `true` (read by the verifier).
    pub claim: Option<String>,
    /// Purposes of use that invoke break-glass (e.g. `ETREAT`).
    pub purposes: Vec<String>,
    /// Claim carrying the reason code (read by the verifier).
    pub reason_claim: String,
    /// Accepted reason codes.
    pub reasons: Vec<String>,
    /// Longest time in seconds since `iat` (and `auth_time`, when present) during which the
    /// token may break the glass.
    pub max_age: u64,
    /// Extra SMART scopes granted while active: the raw strings and their parsed form.
    pub grants: Vec<(String, SmartScope)>,
    /// Minimization profile to use on routes that have a profile of this name.
    pub profile: Option<String>,
}

/// An active, valid break-glass on one request: carried by the grant (and by a later refusal)
/// so that the audit event records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// The reason code (one of the policy's `reasons`).
    pub reason: String,
}

impl BreakGlassPolicy {
    /// Whether the token invokes break-glass: the claim is `true`, or a stated purpose is one of
    /// `purposes`.
    pub fn invoked(&self, p: &Principal) -> bool {
        p.break_glass == Some(true) || p.purpose.iter().any(|x| self.purposes.contains(x))
    }

    /// `Ok(None)` when not invoked; `Ok(Some)` when invoked with a known reason code inside the
    /// time window; `Err(break_glass_invalid)` otherwise (a missing or unknown reason, no `iat`
    /// nor `auth_time`, or one of them older than `max_age`).
    pub fn evaluate(&self, p: &Principal, now: UnixSeconds) -> Result<Option<BreakGlass>, DenyReason> {
        if !self.invoked(p) {
            return Ok(None);
        }
        let reason = p.break_glass_reason.as_ref().filter(|r| self.reasons.contains(r)).ok_or(DenyReason::BreakGlassInvalid)?;
        let times: Vec<UnixSeconds> = [p.issued_at, p.auth_time].into_iter().flatten().collect();
        if times.is_empty() || times.iter().any(|t| now.secs_since(*t) > self.max_age) {
            return Err(DenyReason::BreakGlassInvalid);
        }
        Ok(Some(BreakGlass { reason: reason.clone() }))
    }

    /// The principal a request runs with while break-glass is active: the grants added to its
    /// scopes, and `ETREAT` to its purposes of use. For a token with a patient in context the
    /// grants take the `patient/` context, so the compartment still binds.
    pub fn widen(&self, p: &Principal) -> Principal {
        let mut w = p.clone();
        for (raw, scope) in &self.grants {
            let (raw, scope) = match (p.patient.is_some(), raw.split_once('/')) {
                (true, Some((_, rest))) => (format!("patient/{rest}"), SmartScope { context: Context::Patient, ..scope.clone() }),
                _ => (raw.clone(), scope.clone()),
            };
            if !w.scopes.contains(&raw) {
                w.scopes.push(raw);
                w.smart_scopes.push(scope);
            }
        }
        if !w.purpose.iter().any(|x| x == EMERGENCY_TREATMENT) {
            w.purpose.push(EMERGENCY_TREATMENT.to_owned());
        }
        w
    }
}

/// Compile the policy's `breakGlass`; `routes` answers whether a named profile exists.
pub fn compile_break_glass(d: &BreakGlassDoc, loc: &Loc<'_>, routes: &dyn Routes) -> Result<BreakGlassPolicy, CompileError> {
    if d.claim.is_none() && d.purposes.is_empty() {
        return Err(loc.error("needs a `claim` or `purposes` that invoke it"));
    }
    let reason_claim = d.reason_claim.clone().unwrap_or_else(|| "break_glass_reason".to_owned());
    for (field, c) in [("claim", d.claim.as_deref()), ("reasonClaim", Some(reason_claim.as_str()))] {
        if c.is_some_and(str::is_empty) {
            return Err(loc.field(field).error("must not be empty"));
        }
    }
    if d.claim.as_deref() == Some(reason_claim.as_str()) {
        return Err(loc.field("reasonClaim").error("must differ from `claim`"));
    }
    for (i, p) in d.purposes.iter().enumerate() {
        if !is_purpose_of_use(p) {
            return Err(loc.field("purposes").index(i).error(format!("`{p}` is not an HL7 v3 PurposeOfUse code")));
        }
    }
    if d.reasons.is_empty() {
        return Err(loc.field("reasons").error("must list at least one reason code: free text could carry PHI into the audit log"));
    }
    let mut seen = HashSet::new();
    for (i, r) in d.reasons.iter().enumerate() {
        // Reason codes end up in audit events and responses: short and plain.
        if !crate::ident::code(r, 64) || !seen.insert(r.as_str()) {
            return Err(loc.field("reasons").index(i).error(format!("`{r}` must be a distinct code of 1–64 `[A-Za-z0-9._-]`")));
        }
    }
    if !(60..=86_400).contains(&d.max_age_seconds) {
        return Err(loc.field("maxAgeSeconds").error(format!("`{}` must be between 60 and 86400", d.max_age_seconds)));
    }
    let mut grants = Vec::new();
    for (i, g) in d.grants.iter().enumerate() {
        let parsed = parse(g).ok_or_else(|| loc.field("grants").index(i).error(format!("`{g}` is not a SMART resource scope")))?;
        grants.push((g.clone(), parsed));
    }
    if let Some(name) = &d.profile {
        if !routes.has_profile(name) {
            return Err(loc.field("profile").error(format!("no route has a minimization profile named `{name}`")));
        }
    }
    Ok(BreakGlassPolicy {
        claim: d.claim.clone(),
        purposes: d.purposes.clone(),
        reason_claim,
        reasons: d.reasons.clone(),
        max_age: d.max_age_seconds,
        grants,
        profile: d.profile.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::parse;

    const NOW: UnixSeconds = UnixSeconds::new(1_000_000);

    fn policy() -> BreakGlassPolicy {
        BreakGlassPolicy {
            claim: Some("break_glass".into()),
            purposes: vec!["ETREAT".into()],
            reason_claim: "break_glass_reason".into(),
            reasons: vec!["unconscious-patient".into(), "life-threatening".into()],
            max_age: 3600,
            grants: vec![("user/*.rs".into(), parse("user/*.rs").unwrap())],
            profile: None,
        }
    }

    fn principal(
        claim: Option<bool>,
        purpose: &[&str],
        reason: Option<&str>,
        iat: Option<UnixSeconds>,
        auth_time: Option<UnixSeconds>,
    ) -> Principal {
        Principal {
            break_glass: claim,
            purpose: purpose.iter().map(|p| (*p).to_owned()).collect(),
            break_glass_reason: reason.map(str::to_owned),
            issued_at: iat,
            auth_time,
            ..Principal::default()
        }
    }

    #[test]
    fn invocation_and_validity() {
        let bg = policy();
        let ok = Ok(Some(BreakGlass { reason: "life-threatening".into() }));
        assert_eq!(bg.evaluate(&principal(None, &["TREAT"], Some("life-threatening"), Some(NOW), None), NOW), Ok(None), "not invoked");
        assert_eq!(bg.evaluate(&principal(Some(false), &[], None, Some(NOW), None), NOW), Ok(None));
        assert_eq!(bg.evaluate(&principal(Some(true), &[], Some("life-threatening"), Some(NOW.sub_secs(3600)), None), NOW), ok);
        assert_eq!(
            bg.evaluate(&principal(None, &["ETREAT"], Some("life-threatening"), Some(NOW.sub_secs(10)), Some(NOW.sub_secs(20))), NOW),
            ok
        );
        let invalid = Err(DenyReason::BreakGlassInvalid);
        assert_eq!(bg.evaluate(&principal(Some(true), &[], None, Some(NOW), None), NOW), invalid, "no reason");
        assert_eq!(bg.evaluate(&principal(Some(true), &[], Some("Patient John Smith fell"), Some(NOW), None), NOW), invalid, "free text");
        assert_eq!(
            bg.evaluate(&principal(Some(true), &[], Some("life-threatening"), Some(NOW.sub_secs(3601)), None), NOW),
            invalid,
            "stale iat"
        );
        assert_eq!(
            bg.evaluate(&principal(Some(true), &[], Some("life-threatening"), Some(NOW), Some(NOW.sub_secs(7200))), NOW),
            invalid,
            "stale auth_time"
        );
        assert_eq!(bg.evaluate(&principal(Some(true), &[], Some("life-threatening"), None, None), NOW), invalid, "unbounded");
        assert_eq!(bg.evaluate(&principal(None, &["ETREAT"], None, Some(NOW), None), NOW), invalid, "ETREAT needs a reason too");
    }

    #[test]
    fn widening_keeps_the_compartment() {
        let bg = policy();
        let user = principal(Some(true), &["TREAT"], Some("life-threatening"), Some(NOW), None);
        let w = bg.widen(&user);
        assert_eq!(w.scopes, ["user/*.rs"]);
        assert_eq!(w.smart_scopes[0].context, Context::User);
        assert_eq!(w.purpose, ["TREAT", "ETREAT"]);
        let patient = Principal { patient: Some("p1".into()), scopes: vec!["patient/Patient.rs".into()], ..user };
        let w = bg.widen(&patient);
        assert_eq!(w.scopes, ["patient/Patient.rs", "patient/*.rs"]);
        assert_eq!(w.smart_scopes.last().unwrap().context, Context::Patient);
        assert_eq!(bg.widen(&w).scopes.len(), 2, "idempotent");
    }
}
