//! Purpose of use: the HL7 v3 PurposeOfUse codes (`http://terminology.hl7.org/CodeSystem/v3-ActReason`,
//! value set `v3-PurposeOfUse`) and a route's purpose requirement.

use crate::reason::DenyReason;
use crate::schema::{CompileError, Loc, PurposeDoc};

/// Code system of purpose-of-use codes.
pub const SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// Every code of the FHIR R4 `v3-PurposeOfUse` value set except its abstract root, sorted.
pub const PURPOSE_OF_USE: [&str; 59] = [
    "BIORCH",
    "BTG",
    "CAREMGT",
    "CLINTRCH",
    "CLINTRCHNPC",
    "CLINTRCHPC",
    "CLINTRL",
    "CLMATTCH",
    "COC",
    "COVAUTH",
    "COVERAGE",
    "DISASTER",
    "DONAT",
    "DSRCH",
    "ELIGDTRM",
    "ELIGVER",
    "ENROLLM",
    "ERTREAT",
    "ETREAT",
    "FAMRQT",
    "FRAUD",
    "GOV",
    "HACCRED",
    "HCOMPL",
    "HDECD",
    "HDIRECT",
    "HDM",
    "HLEGAL",
    "HMARKT",
    "HOPERAT",
    "HOUTCOMS",
    "HPAYMT",
    "HPRGRP",
    "HQUALIMP",
    "HRESCH",
    "HSYSADMIN",
    "HTEST",
    "LABELING",
    "MEMADMIN",
    "METAMGT",
    "MILCDM",
    "MILDCRG",
    "PATADMIN",
    "PATRQT",
    "PATSFTY",
    "PERFMSR",
    "POARCH",
    "POPHLTH",
    "PRECLINTRCH",
    "PUBHLTH",
    "PWATRNY",
    "RECORDMGT",
    "REMITADV",
    "SUPNWK",
    "SYSDEV",
    "THREAT",
    "TRAIN",
    "TRANSRCH",
    "TREAT",
];

/// Emergency treatment: the purpose break-glass stands for.
pub const EMERGENCY_TREATMENT: &str = "ETREAT";

/// Whether `code` is an HL7 v3 PurposeOfUse code (exact case).
pub fn is_purpose_of_use(code: &str) -> bool {
    PURPOSE_OF_USE.binary_search(&code).is_ok()
}

/// Emergency treatment and its specializations (`BTG` break the glass, `ERTREAT` emergency
/// room treatment): always audited at high severity.
pub fn is_emergency(code: &str) -> bool {
    matches!(code, "ETREAT" | "BTG" | "ERTREAT")
}

/// A route's purpose-of-use requirement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PurposeRule {
    /// A request without a purpose is refused (`purpose_required`).
    pub required: bool,
    /// Accepted codes; empty means every PurposeOfUse code.
    pub allowed: Vec<String>,
}

impl PurposeRule {
    /// Check the purposes a request is made for. Every stated purpose must be a PurposeOfUse
    /// code and allowed: a request made for several purposes is made for each of them.
    pub fn check(&self, purpose: &[String]) -> Result<(), DenyReason> {
        if purpose.is_empty() {
            return if self.required { Err(DenyReason::PurposeRequired) } else { Ok(()) };
        }
        let ok = |p: &String| is_purpose_of_use(p) && (self.allowed.is_empty() || self.allowed.contains(p));
        if purpose.iter().all(ok) {
            Ok(())
        } else {
            Err(DenyReason::PurposeNotAllowed)
        }
    }
}

/// Compile a route's `purpose`.
pub fn compile_purpose(d: &PurposeDoc, loc: &Loc<'_>) -> Result<PurposeRule, CompileError> {
    let allowed = d.allowed.clone().unwrap_or_default();
    if d.allowed.as_ref().is_some_and(Vec::is_empty) {
        return Err(loc.field("allowed").error("must list at least one purpose-of-use code (omit it to allow every code)"));
    }
    for (i, code) in allowed.iter().enumerate() {
        if !is_purpose_of_use(code) {
            return Err(loc.field("allowed").index(i).error(format!("`{code}` is not an HL7 v3 PurposeOfUse code")));
        }
    }
    if !d.required && allowed.is_empty() {
        return Err(loc.error("has no effect: set `required: true` or list `allowed` codes"));
    }
    Ok(PurposeRule { required: d.required, allowed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn codes() {
        assert!(PURPOSE_OF_USE.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        for c in ["TREAT", "ETREAT", "HPAYMT", "HOPERAT", "PUBHLTH", "HRESCH", "BTG"] {
            assert!(is_purpose_of_use(c), "{c}");
        }
        for c in ["treat", "PurposeOfUse", "", "RESEARCH"] {
            assert!(!is_purpose_of_use(c), "{c}");
        }
        assert!(is_emergency("BTG") && is_emergency("ETREAT") && !is_emergency("TREAT"));
    }

    #[test]
    fn rules() {
        let rule = PurposeRule { required: true, allowed: s(&["TREAT", "ETREAT"]) };
        assert_eq!(rule.check(&[]), Err(DenyReason::PurposeRequired));
        assert_eq!(rule.check(&s(&["TREAT"])), Ok(()));
        assert_eq!(rule.check(&s(&["TREAT", "ETREAT"])), Ok(()));
        assert_eq!(rule.check(&s(&["TREAT", "HRESCH"])), Err(DenyReason::PurposeNotAllowed));
        assert_eq!(rule.check(&s(&["SHOPPING"])), Err(DenyReason::PurposeNotAllowed));
        let any = PurposeRule { required: true, allowed: vec![] };
        assert_eq!(any.check(&s(&["HPAYMT"])), Ok(()));
        assert_eq!(any.check(&s(&["NOTACODE"])), Err(DenyReason::PurposeNotAllowed));
        let optional = PurposeRule { required: false, allowed: s(&["TREAT"]) };
        assert_eq!(optional.check(&[]), Ok(()));
        assert_eq!(optional.check(&s(&["HMARKT"])), Err(DenyReason::PurposeNotAllowed));
    }
}
