//! The compiled routes as the sections that name them see them: a section that refers to a
//! route (rate limits, restrictions) or to a route's profile (break-glass) checks the reference
//! through [`Routes`], so its compiler sits next to its own model, below the policy model.

/// What a route requires, as far as a reference to it cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// No token: no subject, client or patient.
    Public,
    /// Literal scopes.
    Scopes,
    /// FHIR semantics (interactions, compartments).
    Fhir,
}

/// The routes compiled so far, by id.
pub trait Routes {
    /// The kind of the route with this id, if there is one.
    fn kind(&self, id: &str) -> Option<RouteKind>;
    /// Whether some route has a minimization profile named `name`.
    fn has_profile(&self, name: &str) -> bool;
}
