//! Wire types of the policy JSON and what every section's compiler shares: where an error is
//! ([`Loc`], [`CompileError`]) and how a section refers to routes ([`Routes`]).
//!
//! Serde only: every struct rejects unknown fields, nothing here is validated beyond its JSON
//! shape. Natively the same types derive the policy's JSON Schema ([`json_schema`],
//! `phi-guard schema`): their doc comments are what an editor shows on hover, and the few
//! `schemars` attributes state in the schema what the compiler checks cheaply (enumerated
//! strings, `version`, at least one route). This module is a leaf: each domain (`auth`,
//! `minimize`, `ratelimit`, `policy::audit`) compiles its own section from these types next to
//! its model, and `policy::compile` assembles the sections into the checked `Policy`.

pub mod audit;
#[cfg(not(target_arch = "wasm32"))]
pub mod json_schema;
mod loc;
mod routes;

pub use loc::{CompileError, Loc, ROOT};
pub use routes::{RouteKind, Routes};

use serde::Deserialize;

/// A whole policy document, as carried by Envoy's plugin `configuration` or Istio's
/// `pluginConfig`.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[cfg_attr(not(target_arch = "wasm32"), schemars(title = "phi-guard policy"))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    /// The JSON Schema this document follows, for editors, e.g.
    /// `./phi-guard-policy.schema.json`. Only here, at the top level; any string is accepted
    /// and the filter ignores it.
    #[serde(rename = "$schema", default, deserialize_with = "present_string")]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(with = "String"))]
    pub schema: Option<String>,
    /// Format version; only `1` exists.
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("const" = 1)))]
    pub version: u32,
    /// Human-readable policy name, used in logs.
    pub name: String,
    /// Free text for policy authors.
    #[serde(default)]
    pub description: Option<String>,
    /// `enforce` (default) or `shadow`: decide and record, but do not enforce.
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("enum" = ["enforce", "shadow", null])))]
    pub mode: Option<String>,
    /// Token issuers this policy trusts.
    #[serde(default)]
    pub issuers: Vec<IssuerDoc>,
    /// Ordered routes; the first match wins. At least one.
    #[cfg_attr(not(target_arch = "wasm32"), schemars(length(min = 1)))]
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
    pub audit: Option<audit::AuditDoc>,
    /// Known `acr` values, weakest first, for issuers that do not list their own.
    #[serde(default)]
    pub acr_levels: Option<Vec<String>>,
    /// Emergency access: when a token may break the glass, and what it then gets.
    #[serde(default)]
    pub break_glass: Option<BreakGlassDoc>,
    /// Patients' privacy restrictions: sensitivity labels withheld per patient.
    #[serde(default)]
    pub restrictions: Vec<RestrictionDoc>,
    /// DPoP proof settings (RFC 9449), for issuers that accept DPoP.
    #[serde(default)]
    pub dpop: Option<DpopDoc>,
}

/// Step-up authentication required by a route or a minimization profile (RFC 9470).
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthenticationDoc {
    /// Weakest acceptable `acr`: a value of the issuer's (or policy's) `acrLevels`.
    #[serde(default)]
    pub acr_min: Option<String>,
    /// `amr` methods that must all be present, e.g. `["mfa"]`.
    #[serde(default)]
    pub amr: Vec<String>,
    /// `auth_time` is required and may be at most this many seconds old.
    #[serde(default)]
    pub max_auth_age_seconds: Option<u64>,
}

/// A route's purpose-of-use requirement.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PurposeDoc {
    /// A request without a purpose of use is refused (`purpose_required`); default false.
    #[serde(default)]
    pub required: bool,
    /// Accepted HL7 v3 PurposeOfUse codes; default every code.
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
}

/// Break-glass (emergency access).
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakGlassDoc {
    /// Boolean claim that invokes break-glass when `true`, e.g. `break_glass`.
    #[serde(default)]
    pub claim: Option<String>,
    /// Purposes of use that invoke break-glass, e.g. `["ETREAT"]`.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Claim carrying the reason code; default `break_glass_reason`.
    #[serde(default)]
    pub reason_claim: Option<String>,
    /// Accepted reason codes, e.g. `["unconscious-patient", "life-threatening"]`.
    pub reasons: Vec<String>,
    /// Seconds after `iat` (and `auth_time`) during which the token may break the glass.
    pub max_age_seconds: u64,
    /// Extra SMART scopes granted while active, e.g. `["user/*.rs"]`.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Minimization profile to use on routes that have one of this name.
    #[serde(default)]
    pub profile: Option<String>,
}

/// One patient's privacy restriction.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestrictionDoc {
    /// Identifier recorded in audit events (`[A-Za-z0-9._-]`, no PHI).
    pub id: String,
    /// The patient, as the audit log names patients: a `ps1-` pseudonym, or the raw id with
    /// `audit.patientIdentifiers: raw`.
    pub patient: String,
    /// Sensitivity labels (in `meta.security`) whose resources are withheld.
    pub labels: Vec<LabelDoc>,
    /// Purposes of use for which nothing is withheld, e.g. `["ETREAT"]`.
    #[serde(default)]
    pub allow_purposes: Vec<String>,
    /// Ids of the FHIR routes it applies to; default every FHIR route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
}

/// A security label coding.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelDoc {
    /// Code system.
    pub system: String,
    /// Code.
    pub code: String,
}

/// A rate limit.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitDoc {
    /// Identifier.
    pub id: String,
    /// Whose requests share a bucket: `subject` or `clientId`.
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("enum" = ["subject", "clientId"])))]
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
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerDoc {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// Pinned signature algorithms (`RS256`, `ES256`, `EdDSA`, ...); required unless the issuer
    /// only introspects.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Inline JSON Web Key Set (RFC 7517) of the issuer's public signing keys; private key
    /// members and symmetric (`oct`) keys are refused.
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(schema_with = "json_schema::jwks_schema"))]
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
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("enum" = ["scope", "scp", null])))]
    pub scope_claim: Option<String>,
    /// Claim naming the subject.
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// Refuse tokens without a subject (default true).
    #[serde(default)]
    pub require_subject: Option<bool>,
    /// Claim naming the OAuth client.
    #[serde(default)]
    pub client_id_claim: Option<String>,
    /// Claim carrying the patient in context.
    #[serde(default)]
    pub patient_claim: Option<String>,
    /// Claim carrying the purpose of use (string or array of strings); default `purpose_of_use`.
    #[serde(default)]
    pub purpose_claim: Option<String>,
    /// Known `acr` values of this issuer, weakest first; default the policy's `acrLevels`.
    #[serde(default)]
    pub acr_levels: Option<Vec<String>>,
    /// DPoP (RFC 9449) for this issuer's tokens: `required` (bearer tokens are refused),
    /// `allowed` (default: bearer tokens, and DPoP-bound tokens with a proof) or `disabled`.
    /// A DPoP-bound token (`cnf.jkt`) is never accepted as a bearer token.
    #[serde(default)]
    pub dpop: Option<DpopModeDoc>,
    /// OpenID discovery: the JWKS location is read from the issuer's
    /// `/.well-known/openid-configuration` on this cluster.
    #[serde(default)]
    pub discovery: Option<DiscoveryDoc>,
    /// Token introspection (RFC 7662) for this issuer's opaque tokens.
    #[serde(default)]
    pub introspection: Option<IntrospectionDoc>,
}

/// An issuer's introspection endpoint.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntrospectionDoc {
    /// Envoy cluster of the endpoint.
    pub cluster: String,
    /// Request path.
    pub path: String,
    /// `:authority` sent; default the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// phi-guard's client id at the authorization server.
    pub client_id: String,
    /// VM environment variable holding the client secret (`client_secret_basic`).
    pub client_secret_env: String,
    /// Reuse an active answer this long, never past `exp` (default 60, 0..=3600).
    #[serde(default)]
    pub cache_seconds: Option<u64>,
    /// Reuse an inactive answer this long (default 10, 0..=300).
    #[serde(default)]
    pub negative_cache_seconds: Option<u64>,
    /// Deadline of one call (default 1000, 100..=10000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Refuse answers without `aud` (default true).
    #[serde(default)]
    pub require_audience: Option<bool>,
}

/// `$schema`: present means a string (`null` is refused like any other non-string).
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// How an issuer's tokens may be presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DpopModeDoc {
    /// Only DPoP-bound tokens with a proof.
    Required,
    /// Bearer tokens and DPoP-bound tokens.
    Allowed,
    /// The DPoP scheme is refused.
    Disabled,
}

/// Policy-wide DPoP proof settings.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DpopDoc {
    /// Algorithms a proof may use (asymmetric only); default ES256, ES384, EdDSA, PS256, RS256.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// How old a proof's `iat` may be, in seconds (default 60, 5..=300).
    #[serde(default)]
    pub proof_lifetime_seconds: Option<u64>,
    /// Tolerance for a proof's `iat` ahead of the proxy's clock (default 5, 0..=60).
    #[serde(default)]
    pub clock_skew_seconds: Option<u64>,
    /// The public origins clients address (`https://fhir.example.org`), when Envoy sees
    /// another scheme or host (TLS ended by a load balancer); default: the request's own
    /// `:scheme` and `:authority`.
    #[serde(default)]
    pub origins: Option<Vec<String>>,
    /// Slots of the replay record shared by every worker, each holding 8 proof ids (default
    /// 16384, 64..=1048576).
    #[serde(default)]
    pub replay_cache_slots: Option<u64>,
}

/// A route: which requests it matches and what they need.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDoc {
    /// Stable identifier used in audit events and metrics.
    pub id: String,
    /// Path matcher.
    #[serde(rename = "match")]
    pub matcher: MatchDoc,
    /// Allowed HTTP methods, uppercase; default `["GET", "HEAD"]`.
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("items" = {"enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]})))]
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
    /// Minimum-necessary shaping of successful JSON responses (`fhir` and `scopes` routes).
    #[serde(default)]
    pub minimize: Option<MinimizeDoc>,
    /// Step-up authentication every request on the route must meet.
    #[serde(default)]
    pub authentication: Option<AuthenticationDoc>,
    /// Purpose of use required or allowed on the route.
    #[serde(default)]
    pub purpose: Option<PurposeDoc>,
    /// Only sender-constrained tokens (DPoP-bound, or bound to the client certificate of a
    /// mutual-TLS connection) are accepted; default false.
    #[serde(default)]
    pub sender_constrained: bool,
}

/// Path matcher: exactly one of `path` (template) or `prefix`.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[cfg_attr(
    not(target_arch = "wasm32"),
    schemars(extend("oneOf" = [
        {"required": ["path"], "properties": {"path": {"type": "string"}}},
        {"required": ["prefix"], "properties": {"prefix": {"type": "string"}}},
    ]))
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchDoc {
    /// Template such as `/fhir/Patient/{id}`.
    #[serde(default)]
    pub path: Option<String>,
    /// Segment-aligned prefix such as `/fhir`.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// Response minimization for a route: ordered profiles, the first whose conditions match the
/// caller is applied. No match refuses the request (403 `no_minimization_profile`).
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MinimizeDoc {
    /// Candidate profiles in selection order.
    pub profiles: Vec<ProfileDoc>,
    /// Purposes of use whose callers may only get a `safe-harbor` profile, e.g.
    /// `["HRESCH", "PUBHLTH"]`.
    #[serde(default)]
    pub safe_harbor_purposes: Option<Vec<String>>,
}

/// One view of the data, chosen by the caller's scopes and purpose of use.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileDoc {
    /// Profile name, recorded in audit events (`[A-Za-z0-9_-]`, unique per route).
    pub name: String,
    /// Scopes the token must carry for this profile to apply.
    #[serde(default)]
    pub when_scopes: Option<ScopesDoc>,
    /// Purpose-of-use codes; the profile applies when the token's purpose claim names one.
    #[serde(default)]
    pub when_purpose: Option<Vec<String>>,
    /// Step-up authentication the caller must meet for this profile to apply.
    #[serde(default)]
    pub authentication: Option<AuthenticationDoc>,
    /// Compute what would be withheld but release the body unchanged.
    #[serde(default)]
    pub shadow: bool,
    /// A built-in rule set (`safe-harbor`); exclusive with the rule fields below.
    #[serde(default)]
    pub preset: Option<PresetName>,
    /// `allow` (unlisted fields are removed; default) or `deny` (listed fields are removed).
    #[serde(default)]
    pub mode: Option<ModeDoc>,
    /// FHIR routes: rules per resource type; `*` applies to every type.
    #[serde(default)]
    pub resources: Option<std::collections::BTreeMap<String, RulesDoc>>,
    /// Plain JSON routes: rules for the top-level object (or each element of a top-level array).
    #[serde(default)]
    pub fields: Option<RulesDoc>,
    /// FHIR routes: what happens to resource types with no rules (default `remove`).
    #[serde(default)]
    pub other_resources: Option<OtherResourcesDoc>,
    /// FHIR routes: `keep` (default) or `remove` the `display` of every Reference.
    #[serde(default)]
    pub reference_display: Option<KeepRemoveDoc>,
    /// FHIR routes: `keep` (default) or generalize every date, dateTime and instant to its `year`.
    #[serde(default)]
    pub dates: Option<DatesDoc>,
    /// FHIR routes: how `Bundle.link[].url` and `entry[].request.url` of minimized bundles are
    /// rewritten (default `paging-only`).
    #[serde(default)]
    pub bundle_links: Option<BundleLinksDoc>,
    /// FHIR routes: de-identification beyond the field rules (free-text scrubbing, pseudonymous
    /// record keys, date shifting). On a `safe-harbor` profile it adjusts the preset's own
    /// (`freeText: scrub`, `pseudonymizeIds: true`).
    #[serde(default)]
    pub deidentify: Option<DeidentifyDoc>,
}

/// De-identification settings of a profile.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeidentifyDoc {
    /// Free-text strings: `keep` (default; not scanned), `scrub` (each identifier of a person in
    /// the response, and each Safe Harbor pattern, is replaced by `[REDACTED]`) or `withhold`
    /// (a string holding one is withheld as a whole).
    #[serde(default)]
    pub free_text: Option<FreeTextDoc>,
    /// Replace resource ids, `fullUrl`s and every reference to them with keyed pseudonyms
    /// (HMAC under `PHI_GUARD_HMAC_KEY`; default `false`).
    #[serde(default)]
    pub pseudonymize_ids: Option<bool>,
    /// Shift every date of a patient by a keyed per-patient offset of 1 to this many days,
    /// either way (1..=3650). An Expert Determination tool, not Safe Harbor; exclusive with
    /// `"dates": "year"`.
    #[serde(default)]
    pub date_shift_days: Option<u32>,
}

/// Free-text handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum FreeTextDoc {
    /// Not scanned.
    Keep,
    /// Identifiers replaced by `[REDACTED]`.
    Scrub,
    /// A string holding an identifier is withheld.
    Withhold,
}

/// Built-in profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PresetName {
    /// HIPAA Safe Harbor (45 CFR 164.514(b)(2)) as it applies to FHIR R4 resources.
    SafeHarbor,
}

/// Allowlist or denylist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ModeDoc {
    /// Only listed fields (and transformed ones) are released.
    Allow,
    /// Everything but the listed fields is released.
    Deny,
}

/// Resource types without rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum OtherResourcesDoc {
    /// Released with only the profile-wide settings applied.
    Allow,
    /// Reduced to `resourceType`, `id` and `meta` (with the REDACTED label).
    Remove,
    /// The whole response is refused (502 `response_unknown_resource`).
    Deny,
}

/// Keep or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum KeepRemoveDoc {
    /// Keep.
    Keep,
    /// Remove.
    Remove,
}

/// Profile-wide date handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DatesDoc {
    /// Dates are governed by the field rules only.
    Keep,
    /// Every date-shaped value becomes its year; instants are removed.
    Year,
}

/// Bundle link rewriting for minimized bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum BundleLinksDoc {
    /// Keep only paging parameters (`_getpages`, `_page_token`, `_count`, `ct`, ...).
    PagingOnly,
    /// Remove the whole query.
    DropQuery,
    /// Remove `Bundle.link` entirely.
    Drop,
    /// Leave links untouched.
    Keep,
}

/// Field rules for one resource type (or for a plain JSON body).
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RulesDoc {
    /// Paths released (allow mode only), e.g. `name[*].family`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Paths removed; in allow mode, carve-outs inside allowed paths. `**.x` matches at any depth.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Paths released only after a transform.
    #[serde(default)]
    pub transform: Vec<TransformDoc>,
}

/// A transform applied to every value at a path.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransformDoc {
    /// Field path.
    pub path: String,
    /// What to do with the value.
    pub transform: TransformKindDoc,
    /// `mask`: characters kept at the end (at most half of the value is ever shown).
    #[serde(default)]
    pub keep_last: Option<usize>,
    /// `generalize`: the target.
    #[serde(default)]
    pub to: Option<GeneralizeDoc>,
}

/// Transform kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum TransformKindDoc {
    /// Replace all but the last `keepLast` characters with `*`.
    Mask,
    /// HMAC-SHA256 with the key from the VM environment (`PHI_GUARD_HMAC_KEY`), lowercase hex.
    Hash,
    /// Safe Harbor generalization (`to`).
    Generalize,
}

/// Generalization targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum GeneralizeDoc {
    /// Date, dateTime or instant to its year.
    Year,
    /// Like `year`, but removed when the year implies an age of 90 or more.
    BirthYear,
    /// US ZIP code to its first three digits (`000` for restricted prefixes).
    Zip3,
    /// Ages over 89 become `90+` (Age quantities: value 90 with comparator `>=`).
    Age90,
}

/// Literal scope requirement.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
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
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FhirDoc {
    /// Interactions allowed on this base; default all modelled interactions.
    #[serde(default)]
    pub interactions: Option<Vec<String>>,
    /// Resource types outside the patient compartment (e.g. `Medication`) that patient-context
    /// tokens may read and search when a scope grants them.
    #[serde(default)]
    pub patient_shared_types: Vec<String>,
    /// SMART scope contexts (`patient`, `user`, `system`) whose scopes may grant access on this
    /// base; default all three. A patient-facing API says `["patient"]`.
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("items" = {"enum": ["patient", "user", "system"]})))]
    pub scope_contexts: Option<Vec<String>>,
    /// How patient-context searches must be written.
    #[serde(default)]
    pub patient_search: Option<PatientSearchDoc>,
    /// Patient-context updates, patches and deletes, confined by a pre-flight read.
    #[serde(default)]
    pub patient_writes: Option<PatientWritesDoc>,
}

/// The pre-flight read of patient-context writes.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatientWritesDoc {
    /// Envoy cluster of the FHIR upstream.
    pub cluster: String,
    /// `:authority` of the read; default the request's.
    #[serde(default)]
    pub authority: Option<String>,
    /// Deadline of the read in ms (default 2000, 100..=10000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// VM environment variable with a service token for the read; default the caller's own
    /// `Authorization`.
    #[serde(default)]
    pub service_token_env: Option<String>,
}

/// How patient-context searches must be written.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatientSearchDoc {
    /// The form of the patient parameter's value the upstream supports: `id` (`patient=123`),
    /// `reference` (`patient=Patient/123`) or `either` (default).
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("enum" = ["id", "reference", "either", null])))]
    pub patient_reference: Option<String>,
    /// Per resource type, the search parameters patient-context tokens may use, replacing the
    /// R4-derived default for that type (`{"Observation": ["patient", "code", "date"]}`).
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, Vec<String>>,
}

/// Response for unmatched requests.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UnmatchedDoc {
    /// `403` or `404`.
    #[cfg_attr(not(target_arch = "wasm32"), schemars(extend("enum" = [403, 404])))]
    pub status: u16,
}

/// Input limits.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
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
    /// Envoy's buffer limit for the stream (the listener's `per_connection_buffer_limit_bytes`,
    /// 1 MiB unless the deployment changes it): `maxResponseBytes` and `maxRequestBodyBytes`
    /// may not exceed it, because a body Envoy will not buffer is reset mid-response.
    #[serde(default)]
    pub envoy_buffer_limit_bytes: Option<usize>,
}

/// Verified-token cache settings.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenCacheDoc {
    /// Most tokens kept per worker (default 1024); 0 disables the cache.
    #[serde(default)]
    pub max_entries: Option<usize>,
    /// Slots of the cross-worker record of verified signatures in Envoy shared data (default
    /// 4096); 0: every worker verifies each token itself.
    #[serde(default)]
    pub shared_entries: Option<usize>,
}

/// OpenID discovery of an issuer's JWKS, and its refresh rules.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiscoveryDoc {
    /// Envoy cluster serving the issuer's host.
    pub cluster: String,
    /// `:authority` to send; default the issuer's host.
    #[serde(default)]
    pub authority: Option<String>,
    /// Refresh period in seconds (document and keys).
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

/// Remote JWKS location and refresh rules.
#[derive(Debug, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
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
