//! What must happen to an allowed request's response before the client sees it.

use serde_json::Value;

use super::reason::DenyReason;
use crate::fhir::compartment::resource_belongs_to;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponsePlan {
    /// Checks to run on the whole buffered body.
    pub checks: Vec<ResponseCheck>,
}

impl ResponsePlan {
    /// Whether the body must be buffered and inspected.
    pub fn inspects_body(&self) -> bool {
        !self.checks.is_empty()
    }

    /// Run the checks on a successful (2xx) JSON body.
    pub fn check_body(&self, body: &[u8]) -> Result<(), DenyReason> {
        if self.checks.is_empty() {
            return Ok(());
        }
        let value: Value = serde_json::from_slice(body).map_err(|_| DenyReason::ResponseUncheckable)?;
        for check in &self.checks {
            match check {
                ResponseCheck::PatientBinding { patient } => {
                    if !resource_belongs_to(&value, patient) {
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
        let plan = ResponsePlan { checks: vec![ResponseCheck::PatientBinding { patient: "p1".into() }] };
        assert!(plan.inspects_body());
        assert_eq!(plan.check_body(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#), Ok(()));
        assert_eq!(plan.check_body(br#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#), Err(DenyReason::PatientMismatch));
        assert_eq!(plan.check_body(b"{not json"), Err(DenyReason::ResponseUncheckable));
        assert_eq!(ResponsePlan::default().check_body(b"anything"), Ok(()));
    }
}
