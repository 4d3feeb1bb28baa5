//! Wire types of the policy JSON. Serde only: every struct rejects unknown fields, nothing here
//! is validated beyond its JSON shape. [`super::compile`] turns these into the checked model.

use serde::Deserialize;

/// A whole policy document, as carried by Envoy's plugin `configuration` or Istio's
/// `pluginConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    /// Format version; only `1` exists.
    pub version: u32,
    /// Human-readable policy name, used in logs.
    pub name: String,
    /// Free text for policy authors.
    #[serde(default)]
    pub description: Option<String>,
    /// `enforce` (default) or `shadow`: decide and record, but do not enforce.
    #[serde(default)]
    pub mode: Option<String>,
    /// Token issuers this policy trusts.
    #[serde(default)]
    pub issuers: Vec<IssuerDoc>,
    /// Ordered routes; the first match wins.
    pub routes: Vec<RouteDoc>,
    /// What an unmatched request gets.
    #[serde(default)]
    pub unmatched: Option<UnmatchedDoc>,
    /// Input size limits.
    #[serde(default)]
    pub limits: Option<LimitsDoc>,
    /// Verified-token cache settings.
    #[serde(default)]
    pub token_cache: Option<TokenCacheDoc>,
    /// Token-bucket rate limits per subject or client.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitDoc>,
    /// Audit event format and sinks.
    #[serde(default)]
    pub audit: Option<super::audit::schema::AuditDoc>,
}

/// A rate limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitDoc {
    /// Identifier.
    pub id: String,
    /// `subject` or `clientId`.
    pub by: String,
    /// Sustained rate.
    pub requests_per_minute: u64,
    /// Bucket size (requests allowed at once); default one minute's worth, at least 1.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Route ids it applies to; default every authenticated route.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// A trusted token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerDoc {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// Pinned signature algorithms (`RS256`, `ES256`, `EdDSA`, ...).
    pub algorithms: Vec<String>,
    /// Inline JSON Web Key Set.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Remote JSON Web Key Set on an Envoy cluster.
    #[serde(default)]
    pub jwks_uri: Option<JwksUriDoc>,
    /// Allowed clock skew in seconds for `exp`, `nbf`, `iat`.
    #[serde(default)]
    pub clock_skew_seconds: Option<u64>,
    /// Longest accepted `exp - iat` (or `exp - now` when there is no `iat`).
    #[serde(default)]
    pub max_token_lifetime_seconds: Option<u64>,
    /// Claim holding the scopes: `scope` (space-delimited string) or `scp` (array).
    #[serde(default)]
    pub scope_claim: Option<String>,
    /// Claim naming the subject.
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// Claim naming the OAuth client.
    #[serde(default)]
    pub client_id_claim: Option<String>,
    /// Claim carrying the patient in context.
    #[serde(default)]
    pub patient_claim: Option<String>,
}

/// A route: which requests it matches and what they need.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDoc {
    /// Stable identifier used in audit events and metrics.
    pub id: String,
    /// Path matcher.
    #[serde(rename = "match")]
    pub matcher: MatchDoc,
    /// Allowed HTTP methods.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Served without a token.
    #[serde(default)]
    pub public: bool,
    /// Literal scopes required.
    #[serde(default)]
    pub scopes: Option<ScopesDoc>,
    /// Treat the matched prefix as a FHIR base and derive SMART scopes from the request.
    #[serde(default)]
    pub fhir: Option<FhirDoc>,
    /// Add no-store/nosniff headers and strip `server`/`x-powered-by` on responses; default
    /// true on routes that need a token.
    #[serde(default)]
    pub security_headers: Option<bool>,
}

/// Path matcher: exactly one of `path` (template) or `prefix`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchDoc {
    /// Template such as `/fhir/Patient/{id}`.
    #[serde(default)]
    pub path: Option<String>,
    /// Segment-aligned prefix such as `/fhir`.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// Literal scope requirement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScopesDoc {
    /// Every one of these is required.
    #[serde(default)]
    pub all_of: Vec<String>,
    /// At least one of these is required.
    #[serde(default)]
    pub any_of: Vec<String>,
}

/// FHIR semantics for a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FhirDoc {
    /// Interactions allowed on this base; default all modelled interactions.
    #[serde(default)]
    pub interactions: Option<Vec<String>>,
    /// Resource types outside the patient compartment (e.g. `Medication`) that patient-context
    /// tokens may read and search when a scope grants them.
    #[serde(default)]
    pub patient_shared_types: Vec<String>,
}

/// Response for unmatched requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UnmatchedDoc {
    /// 403 or 404.
    pub status: u16,
}

/// Input limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsDoc {
    /// Largest accepted bearer token in bytes.
    #[serde(default)]
    pub max_token_bytes: Option<usize>,
    /// Longest accepted request path (with query) in bytes.
    #[serde(default)]
    pub max_path_bytes: Option<usize>,
    /// Largest upstream response body the filter buffers to check or minimize.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// Largest request body (write routes).
    #[serde(default)]
    pub max_request_body_bytes: Option<usize>,
    /// Most request headers.
    #[serde(default)]
    pub max_header_count: Option<usize>,
    /// Largest total size of request header names and values.
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
}

/// Verified-token cache settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenCacheDoc {
    /// Most tokens kept per worker; 0 disables the cache.
    pub max_entries: usize,
}

/// Remote JWKS location and refresh rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwksUriDoc {
    /// Envoy cluster serving the JWKS.
    pub cluster: String,
    /// Request path.
    pub path: String,
    /// `:authority` to send; default the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// Refresh period in seconds.
    #[serde(default)]
    pub refresh_seconds: Option<u64>,
    /// Longest time without a successful fetch before keys are dropped.
    #[serde(default)]
    pub max_staleness_seconds: Option<u64>,
    /// Least seconds between refetches triggered by unknown `kid`s.
    #[serde(default)]
    pub unknown_kid_refetch_seconds: Option<u64>,
    /// How long a request waits for the first keys, in milliseconds.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Deadline of one fetch, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}
