//! What must happen to an allowed request's response before the client sees it: checks on the
//! body (patient binding) and minimization by the selected profile.

use std::sync::Arc;

use serde_json::Value;

use super::reason::DenyReason;
use crate::fhir::compartment::resource_belongs_to;
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
}

impl Default for ResponsePlan {
    fn default() -> Self {
        ResponsePlan { checks: Vec::new(), minimize: None, max_body_bytes: usize::MAX }
    }
}

impl PartialEq for ResponsePlan {
    fn eq(&self, other: &Self) -> bool {
        self.checks == other.checks
            && self.max_body_bytes == other.max_body_bytes
            && match (&self.minimize, &other.minimize) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl ResponsePlan {
    /// Whether the body must be buffered and inspected.
    pub fn inspects_body(&self) -> bool {
        !self.checks.is_empty() || self.minimize.is_some()
    }

    /// Whether the released body may differ from the upstream's (the host must then drop
    /// `content-length` in the response-headers phase and strip `accept-encoding` upstream).
    pub fn rewrites_body(&self) -> bool {
        self.minimize.as_ref().is_some_and(|p| !p.shadow)
    }

    /// Release a complete 2xx body: run the checks, then the minimization. `Ok` carries the
    /// bytes to send (`None`: the upstream's, unchanged) and the withheld paths for audit; `Err`
    /// means the client must get a generic error body and none of the upstream's bytes.
    pub fn apply(&self, body: &[u8], ctx: &ApplyCtx<'_>) -> Result<Applied, DenyReason> {
        if !self.inspects_body() {
            return Ok(Applied::default());
        }
        let mut value = minimize::body::parse(body, self.max_body_bytes)?;
        self.run_checks(&value)?;
        match &self.minimize {
            None => Ok(Applied::default()),
            Some(profile) => minimize::release(profile, &mut value, ctx),
        }
    }

    /// Run only the checks on a successful (2xx) JSON body.
    pub fn check_body(&self, body: &[u8]) -> Result<(), DenyReason> {
        if self.checks.is_empty() {
            return Ok(());
        }
        let value = minimize::body::parse(body, self.max_body_bytes)?;
        self.run_checks(&value)
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
        assert_eq!(plan.check_body(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#), Ok(()));
        assert_eq!(plan.check_body(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#), Err(DenyReason::PatientMismatch));
        assert_eq!(plan.check_body(b"{not json"), Err(DenyReason::ResponseNotJson));
        assert_eq!(ResponsePlan::default().check_body(b"anything"), Ok(()));
        let applied = plan.apply(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#, &ApplyCtx::default()).unwrap();
        assert_eq!(applied, Applied::default());
        assert_eq!(plan.apply(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#, &ApplyCtx::default()), Err(DenyReason::PatientMismatch));
        assert_eq!(ResponsePlan::default().apply(b"anything", &ApplyCtx::default()), Ok(Applied::default()));
        let small = ResponsePlan { max_body_bytes: 8, ..plan };
        assert_eq!(small.apply(br#"{"resourceType":"Observation"}"#, &ApplyCtx::default()), Err(DenyReason::ResponseTooLarge));
    }
}
