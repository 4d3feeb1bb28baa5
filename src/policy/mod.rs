//! Policies: JSON wire format ([`schema`]), compilation into a checked model ([`compile`]), and
//! the model the decision engine runs on.

pub mod compile;
pub mod route;
pub mod schema;

pub use compile::{compile, CompileError};
pub use route::{PathMatcher, RouteMatch};

use std::collections::HashSet;

use crate::auth::IssuerConfig;
use crate::fhir::Interaction;
use crate::minimize::ProfileSet;

/// A compiled, internally consistent policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// `sha256:` + first 16 hex digits of the SHA-256 of the policy bytes.
    pub revision: String,
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Status for unmatched requests (403 or 404).
    pub unmatched_status: u16,
    /// Input limits.
    pub limits: Limits,
    /// Verified-token cache capacity per worker.
    pub token_cache_entries: usize,
}

impl Policy {
    /// Whether some profile hashes values: the host must then have a valid HMAC key
    /// (`PHI_GUARD_HMAC_KEY`) or refuse the configuration.
    pub fn requires_hmac_key(&self) -> bool {
        self.routes.iter().filter_map(|r| r.minimize.as_ref()).any(ProfileSet::requires_hmac_key)
    }
}

/// Input limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bearer token in bytes.
    pub max_token_bytes: usize,
    /// Longest `:path` in bytes.
    pub max_path_bytes: usize,
    /// Largest response body buffered for checks; larger bodies are refused (fail closed).
    pub max_response_bytes: usize,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route id.
    pub id: String,
    /// Path matcher.
    pub matcher: PathMatcher,
    /// Allowed methods (uppercase).
    pub methods: Vec<String>,
    /// What the route requires.
    pub access: Access,
    /// Response minimization profiles, if the route minimizes.
    pub minimize: Option<ProfileSet>,
}

/// What a route requires of a request.
#[derive(Debug, Clone)]
pub enum Access {
    /// No token needed.
    Public,
    /// A verified token with these literal scopes.
    Scopes {
        /// All required.
        all_of: Vec<String>,
        /// At least one required (if non-empty).
        any_of: Vec<String>,
    },
    /// A verified token whose SMART scopes grant the modelled FHIR interaction.
    Fhir(FhirRoute),
}

/// FHIR semantics of a route whose matched prefix is a FHIR base.
#[derive(Debug, Clone)]
pub struct FhirRoute {
    /// Interactions allowed on this base.
    pub interactions: HashSet<Interaction>,
    /// Non-compartment types patient-context tokens may read/search.
    pub patient_shared_types: HashSet<&'static str>,
}
