//! The FHIR REST request model: which interaction on which resource type, derived from the method
//! and the path segments below the FHIR base.

use super::resource_type;

/// A FHIR RESTful interaction (R4 `TypeRestfulInteraction` / `SystemRestfulInteraction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `GET [type]/[id]`
    Read,
    /// `GET [type]/[id]/_history/[vid]`
    Vread,
    /// `PUT [type]/[id]`
    Update,
    /// `PATCH [type]/[id]`
    Patch,
    /// `DELETE [type]/[id]`
    Delete,
    /// `GET [type]/[id]/_history`
    HistoryInstance,
    /// `GET [type]/_history`
    HistoryType,
    /// `POST [type]`
    Create,
    /// `GET [type]?...`, `POST [type]/_search`, or `GET Patient/[id]/[type]` (compartment)
    SearchType,
    /// `GET [base]?...` across all types
    SearchSystem,
    /// `GET [base]/_history`
    HistorySystem,
    /// `POST [base]` (batch or transaction)
    Batch,
    /// `[base]/$op`, `[type]/$op`, `[type]/[id]/$op`
    Operation,
    /// `GET [base]/metadata`
    Capabilities,
}

impl serde::Serialize for Interaction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Interaction {
    /// Policy and audit name of the interaction.
    pub fn name(self) -> &'static str {
        use Interaction::*;
        match self {
            Read => "read",
            Vread => "vread",
            Update => "update",
            Patch => "patch",
            Delete => "delete",
            HistoryInstance => "history-instance",
            HistoryType => "history-type",
            Create => "create",
            SearchType => "search-type",
            SearchSystem => "search-system",
            HistorySystem => "history-system",
            Batch => "batch",
            Operation => "operation",
            Capabilities => "capabilities",
        }
    }

    /// Parse a policy name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Every interaction.
    pub const ALL: [Interaction; 14] = {
        use Interaction::*;
        [
            Read,
            Vread,
            Update,
            Patch,
            Delete,
            HistoryInstance,
            HistoryType,
            Create,
            SearchType,
            SearchSystem,
            HistorySystem,
            Batch,
            Operation,
            Capabilities,
        ]
    };

    /// The SMART v2 permission letter this interaction needs (`c`, `r`, `u`, `d`, `s`), or `None`
    /// when no single resource-type scope can authorize it.
    pub fn permission(self) -> Option<char> {
        use Interaction::*;
        match self {
            Read | Vread | HistoryInstance => Some('r'),
            SearchType | HistoryType | SearchSystem | HistorySystem => Some('s'),
            Create => Some('c'),
            Update | Patch => Some('u'),
            Delete => Some('d'),
            Batch | Operation | Capabilities => None,
        }
    }
}

/// A modelled FHIR request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirRequest {
    /// The interaction.
    pub interaction: Interaction,
    /// The resource type, if the interaction has one (`None` for system-level interactions).
    pub resource_type: Option<&'static str>,
    /// The logical id for instance-level interactions.
    pub id: Option<String>,
    /// For a compartment search `Patient/[id]/[type]`, the patient id.
    pub compartment_patient: Option<String>,
    /// The operation name without `$`, for operations.
    pub operation: Option<String>,
}

/// Why a request below a FHIR base could not be modelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirRequestError {
    /// A segment that should be a resource type is not one (exact case).
    #[error("unknown resource type")]
    UnknownType,
    /// A shape the REST API does not define for this method.
    #[error("unsupported FHIR request shape")]
    Unsupported,
}

/// Model `method` + `segments` (already below the FHIR base).
pub fn parse(method: &str, segments: &[String]) -> Result<FhirRequest, FhirRequestError> {
    use Interaction::*;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let ty = |s: &str| resource_type(s).ok_or(FhirRequestError::UnknownType);
    let op = |s: &str| s.strip_prefix('$').filter(|o| !o.is_empty()).map(str::to_owned);
    let req = |interaction, resource_type, id: Option<&str>| FhirRequest {
        interaction,
        resource_type,
        id: id.map(str::to_owned),
        compartment_patient: None,
        operation: None,
    };
    let m = method;
    let out = match (m, seg.as_slice()) {
        ("GET" | "HEAD", []) => req(SearchSystem, None, None),
        ("POST", []) => req(Batch, None, None),
        ("GET" | "HEAD", ["metadata"]) => req(Capabilities, None, None),
        ("GET" | "HEAD", ["_history"]) => req(HistorySystem, None, None),
        ("POST", ["_search"]) => req(SearchSystem, None, None),
        (_, [o]) if o.starts_with('$') => FhirRequest { operation: op(o), ..req(Operation, None, None) },
        ("GET" | "HEAD", [t]) => req(SearchType, Some(ty(t)?), None),
        ("POST", [t]) => req(Create, Some(ty(t)?), None),
        ("PUT" | "PATCH" | "DELETE", [t]) => {
            // Conditional update/patch/delete: the target is chosen by search, so it needs the
            // search permission too; we do not model it.
            ty(t)?;
            return Err(FhirRequestError::Unsupported);
        }
        ("POST", [t, "_search"]) => req(SearchType, Some(ty(t)?), None),
        ("GET" | "HEAD", [t, "_history"]) => req(HistoryType, Some(ty(t)?), None),
        (_, [t, o]) if o.starts_with('$') => FhirRequest { operation: op(o), ..req(Operation, Some(ty(t)?), None) },
        ("GET" | "HEAD", [t, id]) => req(Read, Some(ty(t)?), Some(id)),
        ("PUT", [t, id]) => req(Update, Some(ty(t)?), Some(id)),
        ("PATCH", [t, id]) => req(Patch, Some(ty(t)?), Some(id)),
        ("DELETE", [t, id]) => req(Delete, Some(ty(t)?), Some(id)),
        ("GET" | "HEAD", [t, id, "_history"]) => req(HistoryInstance, Some(ty(t)?), Some(id)),
        (_, [t, id, o]) if o.starts_with('$') => FhirRequest { operation: op(o), ..req(Operation, Some(ty(t)?), Some(id)) },
        ("GET" | "HEAD", ["Patient", id, t]) => {
            FhirRequest { compartment_patient: Some((*id).to_owned()), ..req(SearchType, Some(ty(t)?), None) }
        }
        ("GET" | "HEAD", [t, id, "_history", _vid]) => req(Vread, Some(ty(t)?), Some(id)),
        _ => return Err(FhirRequestError::Unsupported),
    };
    if let Some(id) = &out.id {
        if !valid_id(id) {
            return Err(FhirRequestError::Unsupported);
        }
    }
    if let Some(id) = &out.compartment_patient {
        if !valid_id(id) {
            return Err(FhirRequestError::Unsupported);
        }
    }
    Ok(out)
}

/// FHIR `id` datatype: `[A-Za-z0-9\-\.]{1,64}`.
pub fn valid_id(id: &str) -> bool {
    crate::ident::shaped(id, 64, b"-.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, path: &str) -> Result<FhirRequest, FhirRequestError> {
        let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
        parse(method, &segs)
    }

    #[test]
    fn models_interactions() {
        let r = p("GET", "Patient/123").unwrap();
        assert_eq!((r.interaction, r.resource_type, r.id.as_deref()), (Interaction::Read, Some("Patient"), Some("123")));
        assert_eq!(p("GET", "Observation").unwrap().interaction, Interaction::SearchType);
        assert_eq!(p("POST", "Observation/_search").unwrap().interaction, Interaction::SearchType);
        assert_eq!(p("POST", "Observation").unwrap().interaction, Interaction::Create);
        assert_eq!(p("PUT", "Observation/1").unwrap().interaction, Interaction::Update);
        assert_eq!(p("DELETE", "Observation/1").unwrap().interaction, Interaction::Delete);
        assert_eq!(p("GET", "Observation/1/_history").unwrap().interaction, Interaction::HistoryInstance);
        assert_eq!(p("GET", "Observation/1/_history/2").unwrap().interaction, Interaction::Vread);
        assert_eq!(p("GET", "metadata").unwrap().interaction, Interaction::Capabilities);
        assert_eq!(p("GET", "").unwrap().interaction, Interaction::SearchSystem);
        let c = p("GET", "Patient/p1/Observation").unwrap();
        assert_eq!(
            (c.interaction, c.resource_type, c.compartment_patient.as_deref()),
            (Interaction::SearchType, Some("Observation"), Some("p1"))
        );
        let o = p("GET", "Patient/p1/$everything").unwrap();
        assert_eq!((o.interaction, o.operation.as_deref()), (Interaction::Operation, Some("everything")));
    }

    #[test]
    fn refuses_unknown_shapes() {
        assert_eq!(p("GET", "Pateint/1"), Err(FhirRequestError::UnknownType));
        assert_eq!(p("GET", "patient/1"), Err(FhirRequestError::UnknownType));
        assert_eq!(p("GET", "Patient/p1/Obsrvation"), Err(FhirRequestError::UnknownType));
        assert_eq!(p("PUT", "Observation"), Err(FhirRequestError::Unsupported));
        assert_eq!(p("GET", "Patient/1/x/y/z"), Err(FhirRequestError::Unsupported));
        assert_eq!(p("GET", "Patient/a b"), Err(FhirRequestError::Unsupported));
        assert_eq!(p("GET", &format!("Patient/{}", "a".repeat(65))), Err(FhirRequestError::Unsupported));
    }
}
