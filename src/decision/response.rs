//! What must happen to an allowed request's response before the client sees it: checks on the
//! body (patient binding), patients' privacy restrictions, and minimization by the selected
//! profile.

use std::sync::Arc;

use serde_json::Value;

use super::reason::DenyReason;
use crate::fhir::compartment::resource_belongs_to;
use crate::minimize::restrict::{RestrictPlan, RestrictionHit};
use crate::minimize::{self, Applied, ApplyCtx, Profile};

/// A check on the upstream response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseCheck {
    /// A patient-context read by id: the returned resource must be in this patient's compartment.
    PatientBinding {
        /// The token's patient.
        patient: String,
    },
}

/// The response handling an allowed request needs. Empty means stream it through untouched.
#[derive(Debug, Clone)]
pub struct ResponsePlan {
    /// Checks to run on the whole buffered body.
    pub checks: Vec<ResponseCheck>,
    /// The minimization profile selected for the caller, if the route minimizes.
    pub minimize: Option<Arc<Profile>>,
    /// Largest body buffered; larger bodies are refused (`response_too_large`).
    pub max_body_bytes: usize,
    /// Privacy restrictions binding this caller (FHIR reads, searches and histories).
    pub restrict: Option<RestrictPlan>,
}

impl Default for ResponsePlan {
    fn default() -> Self {
        ResponsePlan { checks: Vec::new(), minimize: None, max_body_bytes: usize::MAX, restrict: None }
    }
}

/// The result of releasing a response: what the client gets, and what the audit event records
/// about restrictions (also when the response is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `Ok`: the bytes to send (`None`: the upstream's, unchanged), withheld paths, profile.
    /// `Err`: the client gets the reason's error body and none of the upstream's bytes.
    pub outcome: Result<Applied, DenyReason>,
    /// Restrictions that withheld resources, with counts (never what they withheld).
    pub restrictions: Vec<RestrictionHit>,
}

impl PartialEq for ResponsePlan {
    fn eq(&self, other: &Self) -> bool {
        self.checks == other.checks
            && self.max_body_bytes == other.max_body_bytes
            && self.restrict == other.restrict
            && match (&self.minimize, &other.minimize) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// What the upstream's response headers say, as far as the response phase cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamHead<'a> {
    /// `:status`.
    pub status: u16,
    /// `content-type`, if sent.
    pub content_type: Option<&'a str>,
    /// `content-encoding`, if sent.
    pub content_encoding: Option<&'a str>,
    /// `content-length`, if sent and numeric.
    pub content_length: Option<usize>,
    /// The headers ended the stream (no body follows).
    pub end_of_stream: bool,
}

/// What the response phase does with an upstream answer, decided from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Send it through untouched.
    Pass,
    /// An error or redirect on a route whose bodies are rewritten: its body could echo PHI, so
    /// it is replaced by [`super::reply::upstream_error_body`].
    Scrub,
    /// The body cannot be checked (encoded, not JSON, too large): withhold it with this reason.
    Refuse(DenyReason),
    /// Buffer the whole body and [`ResponsePlan::release`] it.
    Check,
}

impl ResponsePlan {
    /// Whether the body must be buffered and inspected.
    pub fn inspects_body(&self) -> bool {
        !self.checks.is_empty() || self.minimize.is_some() || self.restrict.is_some()
    }

    /// Whether the released body may differ from the upstream's (the host must then drop
    /// `content-length` in the response-headers phase and strip `accept-encoding` upstream).
    pub fn rewrites_body(&self) -> bool {
        self.minimize.as_ref().is_some_and(|p| !p.shadow) || self.restrict.is_some()
    }

    /// Decide from the upstream's headers how its body is handled (`shadow`: the policy is in
    /// shadow mode, so bodies are never rewritten). Refusals are returned as such even in
    /// shadow mode; the caller records and then ignores them.
    pub fn screen(&self, head: &UpstreamHead<'_>, shadow: bool) -> Screen {
        if !self.inspects_body() {
            return Screen::Pass;
        }
        if head.end_of_stream {
            // No body follows. An empty success has nothing to check (and HEAD answers would
            // release headers the body check might withhold); 204 and non-2xx carry no data.
            let empty_success = (200..300).contains(&head.status) && head.status != 204;
            return if empty_success { Screen::Refuse(DenyReason::ResponseNotJson) } else { Screen::Pass };
        }
        if !(200..300).contains(&head.status) {
            return if self.rewrites_body() && !shadow { Screen::Scrub } else { Screen::Pass };
        }
        let encoded = head.content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let json = head.content_type.is_some_and(|t| {
            let t = t.trim_start().to_ascii_lowercase();
            t.starts_with("application/json") || t.starts_with("application/fhir+json")
        });
        if encoded {
            Screen::Refuse(DenyReason::ResponseEncoded)
        } else if !json {
            Screen::Refuse(DenyReason::ResponseNotJson)
        } else if head.content_length.is_some_and(|l| l > self.max_body_bytes) {
            Screen::Refuse(DenyReason::ResponseTooLarge)
        } else {
            Screen::Check
        }
    }

    /// Release a complete 2xx body: run the checks, then the privacy restrictions, then the
    /// minimization. See [`Release`]. `ctx.pseudonyms` must carry the audit key when the
    /// policy names restricted patients by pseudonym.
    pub fn release(&self, body: &[u8], ctx: &ApplyCtx<'_>) -> Release {
        let mut restrictions = Vec::new();
        let outcome = self.release_into(body, ctx, &mut restrictions).and_then(|applied| {
            // The released body is bounded like the upstream's: Envoy refuses a buffer over its
            // limit (and `max_body_bytes` is kept at or below it).
            match &applied.body {
                Some(b) if b.len() > self.max_body_bytes => Err(DenyReason::ResponseTooLarge),
                _ => Ok(applied),
            }
        });
        Release { outcome, restrictions }
    }

    /// [`ResponsePlan::release`] without the restriction record.
    pub fn apply(&self, body: &[u8], ctx: &ApplyCtx<'_>) -> Result<Applied, DenyReason> {
        self.release(body, ctx).outcome
    }

    fn release_into(&self, body: &[u8], ctx: &ApplyCtx<'_>, hits: &mut Vec<RestrictionHit>) -> Result<Applied, DenyReason> {
        if !self.inspects_body() {
            return Ok(Applied::default());
        }
        let mut value = minimize::body::parse(body, self.max_body_bytes)?;
        self.run_checks(&value)?;
        let mut restricted = false;
        if let Some(plan) = &self.restrict {
            let (result, h) = plan.apply(&mut value, ctx.pseudonyms);
            *hits = h;
            restricted = result?;
        }
        match &self.minimize {
            // A shadow profile releases the body as it was before minimization: after the
            // restrictions, which are never shadowed.
            Some(profile) if profile.shadow && restricted => {
                let bytes = minimize::body::serialize(&value)?;
                let applied = minimize::release(profile, &mut value, ctx)?;
                Ok(Applied { body: Some(bytes), ..applied })
            }
            Some(profile) => minimize::release(profile, &mut value, ctx),
            None if restricted => Ok(Applied { body: Some(minimize::body::serialize(&value)?), ..Applied::default() }),
            None => Ok(Applied::default()),
        }
    }

    fn run_checks(&self, value: &Value) -> Result<(), DenyReason> {
        for check in &self.checks {
            match check {
                ResponseCheck::PatientBinding { patient } => {
                    if !resource_belongs_to(value, patient) {
                        return Err(DenyReason::PatientMismatch);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding() {
        let plan = ResponsePlan { checks: vec![ResponseCheck::PatientBinding { patient: "p1".into() }], ..ResponsePlan::default() };
        assert!(plan.inspects_body());
        assert!(!plan.rewrites_body());
        assert_eq!(plan.apply(b"{not json", &ApplyCtx::default()), Err(DenyReason::ResponseNotJson));
        let applied = plan.apply(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#, &ApplyCtx::default()).unwrap();
        assert_eq!(applied, Applied::default());
        assert_eq!(plan.apply(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#, &ApplyCtx::default()), Err(DenyReason::PatientMismatch));
        assert_eq!(ResponsePlan::default().apply(b"anything", &ApplyCtx::default()), Ok(Applied::default()));
        let small = ResponsePlan { max_body_bytes: 8, ..plan };
        assert_eq!(small.apply(br#"{"resourceType":"Observation"}"#, &ApplyCtx::default()), Err(DenyReason::ResponseTooLarge));
    }

    #[test]
    fn empty_success_on_a_checked_route_is_not_json() {
        let plan = ResponsePlan { checks: vec![ResponseCheck::PatientBinding { patient: "p1".into() }], ..ResponsePlan::default() };
        let head = |status| UpstreamHead { status, content_type: Some("application/fhir+json"), end_of_stream: true, ..UpstreamHead::default() };
        assert_eq!(plan.screen(&head(200), false), Screen::Refuse(DenyReason::ResponseNotJson));
        assert_eq!(plan.screen(&head(204), false), Screen::Pass);
        assert_eq!(plan.screen(&head(304), false), Screen::Pass);
        assert_eq!(ResponsePlan::default().screen(&head(200), false), Screen::Pass);
    }

    #[test]
    fn a_released_body_over_the_cap_is_refused() {
        // Minimization can grow a body (the `REDACTED` label, hashes): the released bytes are
        // held to the same cap as the upstream's, so the host never writes a buffer Envoy refuses.
        let profile = crate::minimize::testing::profile(serde_json::json!({"mode": "deny", "resources": {"*": {"deny": ["note"]}}}), true);
        let body = br#"{"resourceType":"Condition","id":"z","note":[{"text":"x"}]}"#;
        let plan = ResponsePlan { minimize: Some(Arc::new(profile)), max_body_bytes: 4096, ..ResponsePlan::default() };
        let out = plan.apply(body, &ApplyCtx::default()).unwrap();
        let released = out.body.unwrap();
        assert!(released.len() > body.len(), "the label makes it grow");
        let tight = ResponsePlan { max_body_bytes: body.len(), ..plan };
        assert_eq!(tight.apply(body, &ApplyCtx::default()), Err(DenyReason::ResponseTooLarge));
    }

    #[test]
    fn restrictions_run_before_minimization_and_are_never_shadowed() {
        use crate::minimize::restrict::{Label, Restriction, Restrictions};
        use crate::policy::audit::PatientIds;
        let act = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
        let r = Restrictions {
            list: vec![Arc::new(Restriction {
                id: "r1".into(),
                patient: "p1".into(),
                labels: vec![Label { system: act.into(), code: "PSY".into() }],
                allow_purposes: vec![],
                routes: vec![],
            })],
            patient_ids: PatientIds::Raw,
        };
        let body = serde_json::json!({"resourceType": "Bundle", "type": "searchset", "total": 2, "entry": [
            {"resource": {"resourceType": "Condition", "id": "a", "subject": {"reference": "Patient/p1"}, "note": [{"text": "x"}]}},
            {"resource": {"resourceType": "Condition", "id": "b", "subject": {"reference": "Patient/p1"}, "meta": {"security": [{"system": act, "code": "PSY"}]}}}
        ]});
        let bytes = serde_json::to_vec(&body).unwrap();
        let shadow = crate::minimize::testing::profile(serde_json::json!({"mode": "deny", "shadow": true, "resources": {"*": {"deny": ["note"]}}}), true);
        let plan = ResponsePlan { minimize: Some(Arc::new(shadow)), restrict: r.plan("fhir", &[], None), ..ResponsePlan::default() };
        assert!(plan.rewrites_body());
        let released = plan.release(&bytes, &ApplyCtx::default());
        assert_eq!(released.restrictions, [RestrictionHit { id: "r1".into(), count: 1 }]);
        let applied = released.outcome.unwrap();
        assert!(applied.shadow && applied.withheld.contains(&"Bundle.entry.resource(Condition).note".to_owned()));
        let out: Value = serde_json::from_slice(applied.body.as_deref().unwrap()).unwrap();
        assert_eq!(out["entry"].as_array().unwrap().len(), 1, "restricted entry gone");
        assert_eq!(out["entry"][0]["resource"]["note"][0]["text"], "x", "shadow minimization changed nothing");
        assert!(out.get("total").is_none());
        // Without a profile the restricted body is still re-serialized; untouched bodies are not.
        let plan = ResponsePlan { restrict: r.plan("fhir", &[], None), ..ResponsePlan::default() };
        assert!(plan.apply(&bytes, &ApplyCtx::default()).unwrap().body.is_some());
        let other = br#"{"resourceType":"Condition","id":"z","subject":{"reference":"Patient/p2"}}"#;
        assert_eq!(plan.apply(other, &ApplyCtx::default()), Ok(Applied::default()));
        let read = br#"{"resourceType":"Condition","id":"b","subject":{"reference":"Patient/p1"},"meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]}}"#;
        let refused = plan.release(read, &ApplyCtx::default());
        assert_eq!((refused.outcome, refused.restrictions.len()), (Err(DenyReason::Restricted), 1));
    }
}

