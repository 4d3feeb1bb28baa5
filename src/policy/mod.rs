//! Policies: the model the decision engine runs on, assembled by [`compile`] from the sections
//! each domain compiles beside its own model (issuers in `auth`, profiles and restrictions in
//! `minimize`, rate limits in `ratelimit`, the audit section in [`audit`]), out of the wire
//! types of the [`schema`] leaf.

pub mod audit;
pub mod compile;
pub mod route;
pub mod source;

pub use crate::schema;
pub use crate::schema::CompileError;
pub use compile::compile;
pub use route::{PathMatcher, RouteMatch};

use std::collections::HashSet;

use crate::auth::{AuthRequirement, BreakGlassPolicy, IssuerConfig, PurposeRule};
use crate::fhir::Interaction;
use crate::minimize::restrict::Restrictions;
use crate::minimize::ProfileSet;
use crate::ratelimit::RateLimit;

/// A compiled, internally consistent policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// `sha256:` + first 16 hex digits of the SHA-256 of the policy bytes.
    pub revision: String,
    /// Shadow mode: decisions are computed, counted and logged but not enforced.
    pub shadow: bool,
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
    /// Slots of the cross-worker record of verified signatures (`tokenCache.sharedEntries`);
    /// 0 disables it.
    pub token_cache_shared: usize,
    /// Rate limits.
    pub rate_limits: Vec<RateLimit>,
    /// Audit event format and sinks.
    pub audit: audit::AuditConfig,
    /// Emergency access, if the policy defines it.
    pub break_glass: Option<BreakGlassPolicy>,
    /// Patients' privacy restrictions, if any.
    pub restrictions: Option<Restrictions>,
    /// DPoP proof settings.
    pub dpop: crate::auth::dpop::DpopSettings,
}

impl FhirRoute {
    /// Whether patient-context tokens may read and search `resource_type` here although it is
    /// outside the compartment.
    pub fn shares(&self, resource_type: &str) -> bool {
        self.patient_shared_types.binary_search(&resource_type).is_ok()
    }
}

impl Policy {
    /// Whether responses need the audit key (`ApplyCtx::pseudonyms`): restrictions name their
    /// patients by pseudonym. The host should refuse such a policy without a valid
    /// `PHI_GUARD_AUDIT_KEY` (responses would otherwise be withheld, fail closed).
    pub fn requires_audit_key(&self) -> bool {
        self.restrictions.as_ref().is_some_and(|r| r.patient_ids == audit::PatientIds::Pseudonym)
    }

    /// The issuer to introspect `token` at (RFC 7662), if any: the policy's introspecting
    /// issuer, unless the token is a compact JWS whose `iss` names an issuer with keys (then it
    /// is verified locally).
    pub fn introspecting_issuer(&self, token: &str) -> Option<usize> {
        let i = self.issuers.iter().position(|x| x.introspection.is_some())?;
        if crate::auth::introspect::looks_like_jws(token) {
            let iss = crate::auth::verify::unverified_issuer(token);
            let local = self.issuers.iter().any(|x| Some(&x.issuer) == iss.as_ref() && (!x.keys.is_empty() || x.remote.is_some()));
            if local {
                return None;
            }
        }
        Some(i)
    }

    /// Whether some issuer accepts DPoP: 401 replies then offer the `DPoP` challenge too.
    pub fn accepts_dpop(&self) -> bool {
        self.issuers.iter().any(|i| i.dpop != crate::auth::sender::DpopMode::Disabled)
    }

    /// The `acrLevels` that apply to tokens of `issuer` (empty when none are defined).
    pub fn acr_levels(&self, issuer: &str) -> &[String] {
        self.issuers.iter().find(|i| i.issuer == issuer).map_or(&[], |i| i.acr_levels.as_slice())
    }

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
    /// Largest request body accepted (and buffered for checks on FHIR writes).
    pub max_request_body_bytes: usize,
    /// Most request headers.
    pub max_header_count: usize,
    /// Largest total request header size.
    pub max_header_bytes: usize,
    /// Envoy's stream buffer limit the deployment declares; the two body caps are at most this.
    pub envoy_buffer_limit_bytes: usize,
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
    /// Add no-store/nosniff response headers and strip `server`/`x-powered-by`.
    pub security_headers: bool,
    /// Response minimization profiles, if the route minimizes.
    pub minimize: Option<ProfileSet>,
    /// Step-up authentication every request must meet.
    pub authentication: Option<AuthRequirement>,
    /// Purpose-of-use requirement.
    pub purpose: Option<PurposeRule>,
    /// Only sender-constrained tokens (DPoP or certificate-bound) are accepted.
    pub sender_constrained: bool,
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
    /// Non-compartment types patient-context tokens may read/search, sorted (each response
    /// check of a patient-context request shares this list).
    pub patient_shared_types: std::sync::Arc<[&'static str]>,
    /// SMART scope contexts whose scopes may grant access here.
    pub scope_contexts: HashSet<crate::auth::scope::Context>,
    /// How patient-context searches must be written.
    pub patient_search: PatientSearch,
    /// Patient-context updates, patches and deletes, confined by a pre-flight read (`None`:
    /// refused).
    pub patient_writes: Option<PatientWrites>,
}

/// How the pre-flight read is authorized at the upstream (`fhir.patientWrites`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreflightCredential {
    /// The caller's own `Authorization` header, as sent.
    Caller,
    /// `Bearer <token>` with a service token from this VM environment variable.
    ServiceToken(String),
}

/// The route's pre-flight settings (`fhir.patientWrites`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientWrites {
    /// Envoy cluster of the FHIR upstream.
    pub cluster: String,
    /// `:authority` of the read; `None`: the request's own.
    pub authority: Option<String>,
    /// Deadline of the read, ms.
    pub timeout_ms: u64,
    /// Its credential.
    pub credential: PreflightCredential,
}

/// How patient-context searches must be written (`fhir.patientSearch`).
#[derive(Debug, Clone, Default)]
pub struct PatientSearch {
    /// Accepted form of the patient parameter's value.
    pub reference: PatientReferenceForm,
    /// Per resource type, the parameters allowed instead of the R4-derived default.
    pub parameters: std::collections::HashMap<&'static str, HashSet<String>>,
}

/// The form of a patient-context search's patient parameter value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatientReferenceForm {
    /// `patient=123` or `patient=Patient/123`.
    #[default]
    Either,
    /// Only `patient=123`.
    Id,
    /// Only `patient=Patient/123`.
    Reference,
}

impl PatientReferenceForm {
    /// Whether `value` names exactly `patient` in this form (one value, no URL, no list).
    pub fn names(self, value: &str, patient: &str) -> bool {
        let typed = value.strip_prefix("Patient/") == Some(patient);
        match self {
            PatientReferenceForm::Either => value == patient || typed,
            PatientReferenceForm::Id => value == patient,
            PatientReferenceForm::Reference => typed,
        }
    }
}

impl Policy {
    /// The revision as a number (its first 48 bits), for a gauge stat.
    pub fn revision_number(&self) -> u64 {
        self.revision.strip_prefix("sha256:").and_then(|h| h.get(..12)).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
    }
}
