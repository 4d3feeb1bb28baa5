//! Compile policy JSON into the checked [`Policy`] model. The first error wins and names its
//! location (`routes[2].fhir.interactions[1]: unknown interaction `raed``).

use std::collections::HashSet;
use std::str::FromStr;

use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};
use thiserror::Error;

use std::sync::Arc;

use super::audit::PatientIds;
use super::schema::{
    AuthenticationDoc, BreakGlassDoc, IssuerDoc, JwksUriDoc, PatientSearchDoc, PolicyDoc, PurposeDoc, RateLimitDoc, RestrictionDoc,
    RouteDoc,
};
use super::{Access, FhirRoute, Limits, PathMatcher, PatientReferenceForm, PatientSearch, Policy, Route};
use crate::audit_key::PSEUDONYM_PREFIX;
use crate::auth::keys::parse_jwks;
use crate::auth::purpose::is_purpose_of_use;
use crate::auth::remote::RemoteJwks;
use crate::auth::scope::Context;
use crate::auth::{AuthRequirement, ClaimNames, IssuerConfig, PurposeRule};
use crate::decision::breakglass::BreakGlassPolicy;
use crate::decision::ratelimit::{LimitBy, RateLimit};
use crate::fhir::{resource_type, Interaction};
use crate::http::normalize;
use crate::minimize::compile_minimize;
use crate::minimize::restrict::{Label, Restriction, Restrictions};

/// A policy that cannot be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{location}: {message}")]
pub struct CompileError {
    /// JSON path of the offending value (`routes[2].match`), or `policy` for the whole document.
    pub location: String,
    /// What is wrong, lowercase, quoting user input in backticks.
    pub message: String,
}

fn err(location: impl Into<String>, message: impl Into<String>) -> CompileError {
    CompileError { location: location.into(), message: message.into() }
}

const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
const DEFAULT_MAX_PATH_BYTES: usize = 4 * 1024;
/// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB): the default stream buffer limit.
const DEFAULT_ENVOY_BUFFER_LIMIT_BYTES: usize = 1024 * 1024;
/// Room left in Envoy's stream buffer above `maxResponseBytes` for one more upstream read. The
/// body callback sees what is buffered so far; Envoy appends the next read (and resets the
/// stream if that overflows) before the filter can refuse it. The shipped configurations bound
/// a read with the upstream cluster's `per_connection_buffer_limit_bytes` (32 KiB).
pub const ENVOY_READ_HEADROOM_BYTES: usize = 64 * 1024;
const DEFAULT_CACHE_ENTRIES: usize = 1024;
const MAX_CACHE_ENTRIES: usize = 100_000;
const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Parse and compile policy bytes.
pub fn compile(bytes: &[u8]) -> Result<Policy, CompileError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let doc: PolicyDoc = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let location = if matches!(path.as_str(), "." | "?" | "") { "policy".to_owned() } else { path };
        err(location, e.into_inner().to_string())
    })?;
    let revision = {
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    compile_doc(doc, revision)
}

fn compile_doc(doc: PolicyDoc, revision: String) -> Result<Policy, CompileError> {
    if doc.version != 1 {
        return Err(err("version", format!("unsupported policy version `{}`; expected 1", doc.version)));
    }
    if doc.name.trim().is_empty() {
        return Err(err("name", "must not be empty"));
    }
    let shadow = match doc.mode.as_deref() {
        None | Some("enforce") => false,
        Some("shadow") => true,
        Some(m) => return Err(err("mode", format!("`{m}` must be `enforce` or `shadow`"))),
    };
    let default_levels = match &doc.acr_levels {
        Some(l) => acr_levels(l, "acrLevels")?,
        None => Vec::new(),
    };
    let mut issuers = doc
        .issuers
        .iter()
        .enumerate()
        .map(|(i, d)| compile_issuer(d, &format!("issuers[{i}]"), &default_levels))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    for (i, iss) in issuers.iter().enumerate() {
        if !seen.insert(iss.issuer.as_str()) {
            return Err(err(format!("issuers[{i}].issuer"), format!("duplicate issuer `{}`", iss.issuer)));
        }
    }
    if doc.routes.is_empty() {
        return Err(err("routes", "must contain at least one route"));
    }
    let mut ids = HashSet::new();
    let mut routes = Vec::with_capacity(doc.routes.len());
    for (i, r) in doc.routes.iter().enumerate() {
        let loc = format!("routes[{i}]");
        if !ids.insert(r.id.as_str()) {
            return Err(err(format!("{loc}.id"), format!("duplicate route id `{}`", r.id)));
        }
        let route = compile_route(r, &loc)?;
        if !matches!(route.access, Access::Public) && issuers.is_empty() {
            return Err(err(loc, "route needs a token but the policy trusts no issuer"));
        }
        routes.push(route);
    }
    let unmatched_status = match doc.unmatched.map(|u| u.status) {
        None => 404,
        Some(s @ (403 | 404)) => s,
        Some(s) => return Err(err("unmatched.status", format!("`{s}` must be 403 or 404"))),
    };
    let limits = doc.limits.as_ref();
    let envoy_buffer_limit_bytes = bounded(
        limits.and_then(|l| l.envoy_buffer_limit_bytes),
        DEFAULT_ENVOY_BUFFER_LIMIT_BYTES,
        2 * ENVOY_READ_HEADROOM_BYTES..=64 * 1024 * 1024,
        "limits.envoyBufferLimitBytes",
    )?;
    // Bodies the filter buffers (and the bodies it writes back) must fit Envoy's buffer: past
    // it Envoy resets a response whose headers are gone, and a larger buffer written from the
    // body callback makes Envoy call back into the filter mid-callback. Responses keep room for
    // one more upstream read (see ENVOY_READ_HEADROOM_BYTES).
    let response_room = envoy_buffer_limit_bytes - ENVOY_READ_HEADROOM_BYTES;
    let within_envoy = |v: usize, room: usize, loc: &str| {
        if v > room {
            Err(err(
                loc,
                format!("`{v}` exceeds {room}: limits.envoyBufferLimitBytes ({envoy_buffer_limit_bytes}, Envoy's per_connection_buffer_limit_bytes){}", if room < envoy_buffer_limit_bytes { " less one upstream read (65536)" } else { "" }),
            ))
        } else {
            Ok(v)
        }
    };
    let max_response_bytes =
        bounded(limits.and_then(|l| l.max_response_bytes), response_room, 1024..=64 * 1024 * 1024, "limits.maxResponseBytes")?;
    let max_request_body_bytes = bounded(
        limits.and_then(|l| l.max_request_body_bytes),
        envoy_buffer_limit_bytes,
        0..=64 * 1024 * 1024,
        "limits.maxRequestBodyBytes",
    )?;
    let limits = Limits {
        max_token_bytes: bounded(limits.and_then(|l| l.max_token_bytes), DEFAULT_MAX_TOKEN_BYTES, 256..=64 * 1024, "limits.maxTokenBytes")?,
        max_path_bytes: bounded(limits.and_then(|l| l.max_path_bytes), DEFAULT_MAX_PATH_BYTES, 64..=64 * 1024, "limits.maxPathBytes")?,
        max_response_bytes: within_envoy(max_response_bytes, response_room, "limits.maxResponseBytes")?,
        max_request_body_bytes: within_envoy(max_request_body_bytes, envoy_buffer_limit_bytes, "limits.maxRequestBodyBytes")?,
        envoy_buffer_limit_bytes,
        max_header_count: bounded(limits.and_then(|l| l.max_header_count), 100, 8..=1000, "limits.maxHeaderCount")?,
        max_header_bytes: bounded(limits.and_then(|l| l.max_header_bytes), 32 * 1024, 1024..=1024 * 1024, "limits.maxHeaderBytes")?,
    };
    let token_cache_entries =
        bounded(doc.token_cache.map(|c| c.max_entries), DEFAULT_CACHE_ENTRIES, 0..=MAX_CACHE_ENTRIES, "tokenCache.maxEntries")?;
    let rate_limits = compile_rate_limits(&doc.rate_limits, &routes)?;
    let audit = super::audit::compile_audit(doc.audit.as_ref())?;
    check_acr_levels(&routes, &issuers)?;
    let break_glass = match &doc.break_glass {
        Some(b) => {
            let bg = compile_break_glass(b, &routes)?;
            for iss in &mut issuers {
                iss.claims.break_glass.clone_from(&bg.claim);
                iss.claims.break_glass_reason = Some(bg.reason_claim.clone());
            }
            Some(bg)
        }
        None => None,
    };
    let restrictions = compile_restrictions(&doc.restrictions, audit.patient_ids, &routes)?;
    Ok(Policy {
        name: doc.name,
        revision,
        shadow,
        issuers,
        routes,
        unmatched_status,
        limits,
        token_cache_entries,
        rate_limits,
        audit,
        break_glass,
        restrictions,
    })
}

/// An `acrLevels` list: distinct, non-empty values, weakest first.
fn acr_levels(list: &[String], loc: &str) -> Result<Vec<String>, CompileError> {
    if list.is_empty() {
        return Err(err(loc, "must list at least one `acr` value, weakest first"));
    }
    let mut seen = HashSet::new();
    for (i, l) in list.iter().enumerate() {
        if l.is_empty() || l.len() > 256 || l.chars().any(|c| c.is_control() || c == '"' || c == '\\' || c == ' ') {
            return Err(err(
                format!("{loc}[{i}]"),
                format!("`{l}` is not an `acr` value (1–256 characters, no spaces, quotes or backslashes)"),
            ));
        }
        if !seen.insert(l.as_str()) {
            return Err(err(format!("{loc}[{i}]"), format!("`{l}` is listed twice")));
        }
    }
    Ok(list.to_vec())
}

/// A step-up requirement (route or profile). Whether `acrMin` is a known level is checked once
/// every issuer is compiled ([`check_acr_levels`]).
pub fn compile_authentication(d: &AuthenticationDoc, loc: &str) -> Result<AuthRequirement, CompileError> {
    if d.acr_min.is_none() && d.amr.is_empty() && d.max_auth_age_seconds.is_none() {
        return Err(err(loc, "must set `acrMin`, `amr` or `maxAuthAgeSeconds`"));
    }
    for (i, m) in d.amr.iter().enumerate() {
        if !crate::ident::code(m, 64) {
            return Err(err(format!("{loc}.amr[{i}]"), format!("`{m}` is not an authentication method reference (e.g. `mfa`, `hwk`)")));
        }
    }
    if let Some(n) = d.max_auth_age_seconds {
        if n > 30 * 86_400 {
            return Err(err(format!("{loc}.maxAuthAgeSeconds"), format!("`{n}` must be between 0 and 2592000")));
        }
    }
    Ok(AuthRequirement { acr_min: d.acr_min.clone(), amr: d.amr.clone(), max_auth_age: d.max_auth_age_seconds })
}

/// Every `acrMin` must be a level of every issuer, so that "at or above" is defined whoever
/// issued the token.
fn check_acr_levels(routes: &[Route], issuers: &[IssuerConfig]) -> Result<(), CompileError> {
    let check = |req: &AuthRequirement, loc: String| -> Result<(), CompileError> {
        let Some(min) = &req.acr_min else {
            return Ok(());
        };
        for iss in issuers {
            if !iss.acr_levels.contains(min) {
                let why = if iss.acr_levels.is_empty() {
                    "defines no `acrLevels` (set them on the issuer or the policy)"
                } else {
                    "has no such level in `acrLevels`"
                };
                return Err(err(format!("{loc}.acrMin"), format!("`{min}`: issuer `{}` {why}", iss.issuer)));
            }
        }
        Ok(())
    };
    for (i, r) in routes.iter().enumerate() {
        if let Some(req) = &r.authentication {
            check(req, format!("routes[{i}].authentication"))?;
        }
        let profiles = r.minimize.iter().flat_map(|m| m.profiles.iter());
        for (j, p) in profiles.enumerate() {
            if let Some(req) = &p.when.authentication {
                check(req, format!("routes[{i}].minimize.profiles[{j}].authentication"))?;
            }
        }
    }
    Ok(())
}

fn compile_purpose(d: &PurposeDoc, loc: &str) -> Result<PurposeRule, CompileError> {
    let allowed = d.allowed.clone().unwrap_or_default();
    if d.allowed.as_ref().is_some_and(Vec::is_empty) {
        return Err(err(format!("{loc}.allowed"), "must list at least one purpose-of-use code (omit it to allow every code)"));
    }
    for (i, code) in allowed.iter().enumerate() {
        if !is_purpose_of_use(code) {
            return Err(err(format!("{loc}.allowed[{i}]"), format!("`{code}` is not an HL7 v3 PurposeOfUse code")));
        }
    }
    if !d.required && allowed.is_empty() {
        return Err(err(loc, "has no effect: set `required: true` or list `allowed` codes"));
    }
    Ok(PurposeRule { required: d.required, allowed })
}

/// Codes that end up in audit events and responses: short and plain.
fn code_shaped(s: &str) -> bool {
    crate::ident::code(s, 64)
}

fn compile_break_glass(d: &BreakGlassDoc, routes: &[Route]) -> Result<BreakGlassPolicy, CompileError> {
    let loc = "breakGlass";
    if d.claim.is_none() && d.purposes.is_empty() {
        return Err(err(loc, "needs a `claim` or `purposes` that invoke it"));
    }
    let reason_claim = d.reason_claim.clone().unwrap_or_else(|| "break_glass_reason".to_owned());
    for (field, c) in [("claim", d.claim.as_deref()), ("reasonClaim", Some(reason_claim.as_str()))] {
        if c.is_some_and(str::is_empty) {
            return Err(err(format!("{loc}.{field}"), "must not be empty"));
        }
    }
    if d.claim.as_deref() == Some(reason_claim.as_str()) {
        return Err(err(format!("{loc}.reasonClaim"), "must differ from `claim`"));
    }
    for (i, p) in d.purposes.iter().enumerate() {
        if !is_purpose_of_use(p) {
            return Err(err(format!("{loc}.purposes[{i}]"), format!("`{p}` is not an HL7 v3 PurposeOfUse code")));
        }
    }
    if d.reasons.is_empty() {
        return Err(err(format!("{loc}.reasons"), "must list at least one reason code: free text could carry PHI into the audit log"));
    }
    let mut seen = HashSet::new();
    for (i, r) in d.reasons.iter().enumerate() {
        if !code_shaped(r) || !seen.insert(r.as_str()) {
            return Err(err(format!("{loc}.reasons[{i}]"), format!("`{r}` must be a distinct code of 1–64 `[A-Za-z0-9._-]`")));
        }
    }
    if !(60..=86_400).contains(&d.max_age_seconds) {
        return Err(err(format!("{loc}.maxAgeSeconds"), format!("`{}` must be between 60 and 86400", d.max_age_seconds)));
    }
    let mut grants = Vec::new();
    for (i, g) in d.grants.iter().enumerate() {
        let parsed = crate::auth::scope::parse(g)
            .ok_or_else(|| err(format!("{loc}.grants[{i}]"), format!("`{g}` is not a SMART resource scope")))?;
        grants.push((g.clone(), parsed));
    }
    if let Some(name) = &d.profile {
        let known = routes.iter().filter_map(|r| r.minimize.as_ref()).any(|m| m.profiles.iter().any(|p| &p.name == name));
        if !known {
            return Err(err(format!("{loc}.profile"), format!("no route has a minimization profile named `{name}`")));
        }
    }
    Ok(BreakGlassPolicy {
        claim: d.claim.clone(),
        purposes: d.purposes.clone(),
        reason_claim,
        reasons: d.reasons.clone(),
        max_age: d.max_age_seconds,
        grants,
        profile: d.profile.clone(),
    })
}

fn compile_restrictions(docs: &[RestrictionDoc], patient_ids: PatientIds, routes: &[Route]) -> Result<Option<Restrictions>, CompileError> {
    if docs.is_empty() {
        return Ok(None);
    }
    let mut ids = HashSet::new();
    let mut list = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        let loc = format!("restrictions[{i}]");
        if !code_shaped(&d.id) || !ids.insert(d.id.as_str()) {
            return Err(err(
                format!("{loc}.id"),
                format!("`{}` must be a unique id of 1–64 `[A-Za-z0-9._-]` (no PHI: it is audited)", d.id),
            ));
        }
        let ok = match patient_ids {
            PatientIds::Pseudonym => d
                .patient
                .strip_prefix(PSEUDONYM_PREFIX)
                .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            // A pseudonym would never match a raw id: refuse it rather than restrict nothing.
            PatientIds::Raw => crate::fhir::request::valid_id(&d.patient) && !d.patient.starts_with(PSEUDONYM_PREFIX),
        };
        if !ok {
            let want = match patient_ids {
                PatientIds::Pseudonym => "a pseudonym (`ps1-` + 32 lowercase hex digits, from `phi-guard audit pseudonym --id ...`)",
                PatientIds::Raw => "a FHIR id, not a pseudonym (`audit.patientIdentifiers` is `raw`)",
            };
            return Err(err(format!("{loc}.patient"), format!("must be {want}")));
        }
        if d.labels.is_empty() {
            return Err(err(format!("{loc}.labels"), "must list at least one security label"));
        }
        let mut labels = Vec::with_capacity(d.labels.len());
        for (j, l) in d.labels.iter().enumerate() {
            if l.system.is_empty() || l.code.is_empty() || l.system.contains(char::is_whitespace) || l.code.contains(char::is_whitespace) {
                return Err(err(format!("{loc}.labels[{j}]"), "needs a non-empty `system` and `code` without spaces"));
            }
            labels.push(Label { system: l.system.clone(), code: l.code.clone() });
        }
        for (j, p) in d.allow_purposes.iter().enumerate() {
            if !is_purpose_of_use(p) {
                return Err(err(format!("{loc}.allowPurposes[{j}]"), format!("`{p}` is not an HL7 v3 PurposeOfUse code")));
            }
        }
        if d.routes.as_ref().is_some_and(Vec::is_empty) {
            return Err(err(format!("{loc}.routes"), "must name at least one route (omit it for every FHIR route)"));
        }
        for (j, r) in d.routes.iter().flatten().enumerate() {
            match routes.iter().find(|x| &x.id == r) {
                Some(x) if matches!(x.access, Access::Fhir(_)) => {}
                Some(_) => return Err(err(format!("{loc}.routes[{j}]"), format!("route `{r}` is not a `fhir` route"))),
                None => return Err(err(format!("{loc}.routes[{j}]"), format!("no route `{r}`"))),
            }
        }
        list.push(Arc::new(Restriction {
            id: d.id.clone(),
            patient: d.patient.clone(),
            labels,
            allow_purposes: d.allow_purposes.clone(),
            routes: d.routes.clone().unwrap_or_default(),
        }));
    }
    Ok(Some(Restrictions { list, patient_ids }))
}

fn compile_rate_limits(docs: &[RateLimitDoc], routes: &[Route]) -> Result<Vec<RateLimit>, CompileError> {
    let mut ids = HashSet::new();
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            let loc = format!("rateLimits[{i}]");
            if !crate::ident::shaped(&d.id, usize::MAX, b"-_") || !ids.insert(d.id.as_str()) {
                return Err(err(format!("{loc}.id"), format!("`{}` must be a unique [A-Za-z0-9_-]+ id", d.id)));
            }
            let by = match d.by.as_str() {
                "subject" => LimitBy::Subject,
                "clientId" => LimitBy::ClientId,
                other => return Err(err(format!("{loc}.by"), format!("`{other}` must be `subject` or `clientId`"))),
            };
            if !(1..=6_000_000).contains(&d.requests_per_minute) {
                return Err(err(format!("{loc}.requestsPerMinute"), "must be between 1 and 6000000"));
            }
            let burst = d.burst.unwrap_or(d.requests_per_minute).max(1);
            for (j, r) in d.routes.iter().enumerate() {
                match routes.iter().find(|x| &x.id == r) {
                    None => return Err(err(format!("{loc}.routes[{j}]"), format!("no route `{r}`"))),
                    Some(x) if matches!(x.access, Access::Public) => {
                        return Err(err(
                            format!("{loc}.routes[{j}]"),
                            format!("route `{r}` is public: there is no subject or client to limit"),
                        ))
                    }
                    Some(_) => {}
                }
            }
            Ok(RateLimit {
                id: d.id.clone(),
                by,
                refill_milli_per_sec: (d.requests_per_minute * 1000).div_ceil(60),
                burst,
                routes: d.routes.clone(),
            })
        })
        .collect()
}

fn bounded(v: Option<usize>, default: usize, range: std::ops::RangeInclusive<usize>, loc: &str) -> Result<usize, CompileError> {
    let v = v.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(err(loc, format!("`{v}` must be between {} and {}", range.start(), range.end())))
    }
}

fn compile_issuer(d: &IssuerDoc, loc: &str, default_levels: &[String]) -> Result<IssuerConfig, CompileError> {
    if !(d.issuer.starts_with("https://") || d.issuer.starts_with("http://")) {
        return Err(err(format!("{loc}.issuer"), format!("`{}` must be an http(s) URL", d.issuer)));
    }
    if d.audiences.is_empty() || d.audiences.iter().any(|a| a.is_empty()) {
        return Err(err(format!("{loc}.audiences"), "must list at least one non-empty audience"));
    }
    if d.algorithms.is_empty() {
        return Err(err(format!("{loc}.algorithms"), "must pin at least one algorithm"));
    }
    let mut algorithms = Vec::new();
    for (i, a) in d.algorithms.iter().enumerate() {
        let aloc = format!("{loc}.algorithms[{i}]");
        let alg = Algorithm::from_str(a).map_err(|_| err(&aloc, format!("unknown algorithm `{a}`")))?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(err(aloc, format!("`{a}` is not supported: shared-secret algorithms do not belong in a gateway policy")));
        }
        algorithms.push(alg);
    }
    let (keys, remote) = match (&d.jwks, &d.jwks_uri) {
        (Some(jwks), None) => {
            let keys = parse_jwks(jwks).map_err(|e| err(format!("{loc}.jwks"), e.to_string()))?;
            if keys.is_empty() {
                return Err(err(format!("{loc}.jwks.keys"), "must contain at least one key"));
            }
            for (i, k) in keys.iter().enumerate() {
                if !algorithms.iter().any(|a| k.accepts(*a)) {
                    return Err(err(format!("{loc}.jwks.keys[{i}]"), "key matches none of the pinned algorithms"));
                }
            }
            (keys, None)
        }
        (None, Some(u)) => (Vec::new(), Some(compile_jwks_uri(u, &format!("{loc}.jwksUri"))?)),
        _ => return Err(err(loc, "exactly one of `jwks` (inline) or `jwksUri` is required")),
    };
    let scope = d.scope_claim.clone().unwrap_or_else(|| "scope".into());
    if scope != "scope" && scope != "scp" {
        return Err(err(format!("{loc}.scopeClaim"), format!("`{scope}` must be `scope` or `scp`")));
    }
    let claim = |v: &Option<String>, default: &str, field: &str| -> Result<String, CompileError> {
        let c = v.clone().unwrap_or_else(|| default.into());
        if c.is_empty() {
            Err(err(format!("{loc}.{field}"), "must not be empty"))
        } else {
            Ok(c)
        }
    };
    let clock_skew = d.clock_skew_seconds.unwrap_or(60);
    if clock_skew > 300 {
        return Err(err(format!("{loc}.clockSkewSeconds"), format!("`{clock_skew}` exceeds 300 seconds")));
    }
    Ok(IssuerConfig {
        issuer: d.issuer.clone(),
        audiences: d.audiences.clone(),
        algorithms,
        keys,
        remote,
        clock_skew,
        max_lifetime: d.max_token_lifetime_seconds,
        require_subject: d.require_subject.unwrap_or(true),
        claims: ClaimNames {
            scope,
            subject: claim(&d.subject_claim, "sub", "subjectClaim")?,
            client_id: claim(&d.client_id_claim, "client_id", "clientIdClaim")?,
            patient: claim(&d.patient_claim, "patient", "patientClaim")?,
            purpose: claim(&d.purpose_claim, "purpose_of_use", "purposeClaim")?,
            break_glass: None,
            break_glass_reason: None,
        },
        acr_levels: match &d.acr_levels {
            Some(l) => acr_levels(l, &format!("{loc}.acrLevels"))?,
            None => default_levels.to_vec(),
        },
    })
}

fn compile_jwks_uri(u: &JwksUriDoc, loc: &str) -> Result<RemoteJwks, CompileError> {
    if u.cluster.is_empty() {
        return Err(err(format!("{loc}.cluster"), "must not be empty"));
    }
    if !u.path.starts_with('/') {
        return Err(err(format!("{loc}.path"), format!("`{}` must start with `/`", u.path)));
    }
    let refresh = bounded_u64(u.refresh_seconds, 300, 10..=86_400, &format!("{loc}.refreshSeconds"))?;
    let max_staleness = bounded_u64(u.max_staleness_seconds, 24 * 3600, refresh..=30 * 86_400, &format!("{loc}.maxStalenessSeconds"))?;
    Ok(RemoteJwks {
        cluster: u.cluster.clone(),
        path: u.path.clone(),
        authority: u.authority.clone().unwrap_or_else(|| u.cluster.clone()),
        refresh,
        max_staleness,
        refetch_interval: bounded_u64(u.unknown_kid_refetch_seconds, 30, 1..=3600, &format!("{loc}.unknownKidRefetchSeconds"))?,
        wait_ms: bounded_u64(u.wait_ms, 3000, 0..=30_000, &format!("{loc}.waitMs"))?,
        timeout_ms: bounded_u64(u.timeout_ms, 2000, 100..=30_000, &format!("{loc}.timeoutMs"))?,
    })
}

fn bounded_u64(v: Option<u64>, default: u64, range: std::ops::RangeInclusive<u64>, loc: &str) -> Result<u64, CompileError> {
    let v = v.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(err(loc, format!("`{v}` must be between {} and {}", range.start(), range.end())))
    }
}

fn compile_route(r: &RouteDoc, loc: &str) -> Result<Route, CompileError> {
    if !crate::ident::shaped(&r.id, usize::MAX, b"-_") {
        return Err(err(format!("{loc}.id"), format!("`{}` must be non-empty [A-Za-z0-9_-]", r.id)));
    }
    let mloc = format!("{loc}.match");
    let matcher = match (&r.matcher.path, &r.matcher.prefix) {
        (Some(p), None) => PathMatcher::Template(template(p, &format!("{mloc}.path"))?),
        (None, Some(p)) => {
            let segs = literal_segments(p, &format!("{mloc}.prefix"))?;
            PathMatcher::Prefix(segs)
        }
        _ => return Err(err(mloc, "exactly one of `path` or `prefix` is required")),
    };
    let methods = match &r.methods {
        None => vec!["GET".to_owned(), "HEAD".to_owned()],
        Some(list) if list.is_empty() => return Err(err(format!("{loc}.methods"), "must not be empty")),
        Some(list) => {
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                if !KNOWN_METHODS.contains(&m.as_str()) {
                    return Err(err(format!("{loc}.methods[{i}]"), format!("unknown method `{m}` (uppercase HTTP method expected)")));
                }
                out.push(m.clone());
            }
            out
        }
    };
    let access = match (r.public, &r.scopes, &r.fhir) {
        (true, None, None) => Access::Public,
        (false, Some(s), None) => {
            if s.all_of.is_empty() && s.any_of.is_empty() {
                return Err(err(format!("{loc}.scopes"), "must list `allOf` or `anyOf` scopes"));
            }
            for (field, list) in [("allOf", &s.all_of), ("anyOf", &s.any_of)] {
                for (i, sc) in list.iter().enumerate() {
                    if sc.is_empty() || sc.contains(char::is_whitespace) {
                        return Err(err(format!("{loc}.scopes.{field}[{i}]"), format!("`{sc}` is not a single scope")));
                    }
                }
            }
            Access::Scopes { all_of: s.all_of.clone(), any_of: s.any_of.clone() }
        }
        (false, None, Some(f)) => {
            if !matches!(matcher, PathMatcher::Prefix(_)) {
                return Err(err(format!("{loc}.match"), "a `fhir` route must match a `prefix` (the FHIR base)"));
            }
            let interactions = match &f.interactions {
                None => Interaction::ALL.into_iter().collect(),
                Some(list) => {
                    let mut set = HashSet::new();
                    for (i, name) in list.iter().enumerate() {
                        let it = Interaction::from_name(name)
                            .ok_or_else(|| err(format!("{loc}.fhir.interactions[{i}]"), format!("unknown interaction `{name}`")))?;
                        set.insert(it);
                    }
                    set
                }
            };
            let mut shared = Vec::new();
            for (i, t) in f.patient_shared_types.iter().enumerate() {
                let ty = resource_type(t)
                    .ok_or_else(|| err(format!("{loc}.fhir.patientSharedTypes[{i}]"), format!("unknown FHIR resource type `{t}`")))?;
                if crate::fhir::compartment::in_patient_compartment(ty) {
                    return Err(err(
                        format!("{loc}.fhir.patientSharedTypes[{i}]"),
                        format!("`{t}` is in the patient compartment; it cannot be shared"),
                    ));
                }
                shared.push(ty);
            }
            let scope_contexts = match &f.scope_contexts {
                None => [Context::Patient, Context::User, Context::System].into_iter().collect(),
                Some(list) => {
                    let mut set = HashSet::new();
                    for (i, name) in list.iter().enumerate() {
                        let c = match name.as_str() {
                            "patient" => Context::Patient,
                            "user" => Context::User,
                            "system" => Context::System,
                            _ => {
                                return Err(err(
                                    format!("{loc}.fhir.scopeContexts[{i}]"),
                                    format!("unknown scope context `{name}` (patient, user, system)"),
                                ))
                            }
                        };
                        set.insert(c);
                    }
                    if set.is_empty() {
                        return Err(err(format!("{loc}.fhir.scopeContexts"), "at least one scope context is needed"));
                    }
                    set
                }
            };
            let patient_search = match &f.patient_search {
                None => PatientSearch::default(),
                Some(ps) => compile_patient_search(ps, &format!("{loc}.fhir.patientSearch"))?,
            };
            shared.sort_unstable();
            shared.dedup();
            Access::Fhir(FhirRoute { interactions, patient_shared_types: shared.into(), scope_contexts, patient_search })
        }
        (true, _, _) => return Err(err(loc, "a `public` route cannot also require `scopes` or `fhir`")),
        (false, None, None) => return Err(err(loc, "route needs one of `public`, `scopes` or `fhir`")),
        (false, Some(_), Some(_)) => return Err(err(loc, "`scopes` and `fhir` are exclusive")),
    };
    let minimize = match (&r.minimize, &access) {
        (None, _) => None,
        (Some(_), Access::Public) => {
            return Err(err(
                format!("{loc}.minimize"),
                "a `public` route has no caller to choose a profile for; minimize `fhir` or `scopes` routes",
            ))
        }
        (Some(m), access) => Some(compile_minimize(m, &format!("{loc}.minimize"), matches!(access, Access::Fhir(_)))?),
    };
    let public = matches!(access, Access::Public);
    for (field, set) in [("authentication", r.authentication.is_some()), ("purpose", r.purpose.is_some())] {
        if public && set {
            return Err(err(format!("{loc}.{field}"), "a `public` route has no token to check"));
        }
    }
    let authentication = r.authentication.as_ref().map(|a| compile_authentication(a, &format!("{loc}.authentication"))).transpose()?;
    let purpose = r.purpose.as_ref().map(|p| compile_purpose(p, &format!("{loc}.purpose"))).transpose()?;
    let security_headers = r.security_headers.unwrap_or(!public);
    Ok(Route { id: r.id.clone(), matcher, methods, access, minimize, security_headers, authentication, purpose })
}

/// `fhir.patientSearch`: the patient parameter's form and per-type parameter allowlists.
fn compile_patient_search(d: &PatientSearchDoc, loc: &str) -> Result<PatientSearch, CompileError> {
    let reference = match d.patient_reference.as_deref() {
        None | Some("either") => PatientReferenceForm::Either,
        Some("id") => PatientReferenceForm::Id,
        Some("reference") => PatientReferenceForm::Reference,
        Some(other) => return Err(err(format!("{loc}.patientReference"), format!("unknown form `{other}` (id, reference, either)"))),
    };
    let mut parameters = std::collections::HashMap::new();
    for (t, names) in &d.parameters {
        let ploc = format!("{loc}.parameters.{t}");
        let ty = resource_type(t).ok_or_else(|| err(ploc.clone(), format!("unknown FHIR resource type `{t}`")))?;
        let mut set = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            // Names only: modifiers and chains are judged per request, never allowlisted.
            let shaped = crate::ident::policy_id(name);
            if !shaped {
                return Err(err(format!("{ploc}[{i}]"), format!("`{name}` is not a search parameter name")));
            }
            if matches!(name.as_str(), "_include" | "_revinclude" | "_has" | "_filter" | "_query" | "_contained" | "_containedType") {
                return Err(err(format!("{ploc}[{i}]"), format!("`{name}` can reach outside the patient compartment")));
            }
            set.insert(name.clone());
        }
        parameters.insert(ty, set);
    }
    Ok(PatientSearch { reference, parameters })
}

fn literal_segments(p: &str, loc: &str) -> Result<Vec<String>, CompileError> {
    if p == "/" {
        return Ok(Vec::new());
    }
    let n = normalize(p).map_err(|e| err(loc, format!("`{p}`: {e}")))?;
    if p.contains('?') || n.segments.iter().any(|s| s.contains(['{', '}'])) {
        return Err(err(loc, format!("`{p}` must be a plain path")));
    }
    Ok(n.segments)
}

fn template(p: &str, loc: &str) -> Result<Vec<Option<String>>, CompileError> {
    let segs = if p == "/" { Vec::new() } else { normalize(p).map_err(|e| err(loc, format!("`{p}`: {e}")))?.segments };
    if p.contains('?') {
        return Err(err(loc, format!("`{p}` must not contain a query")));
    }
    segs.into_iter()
        .map(|s| {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(err(loc, format!("`{p}` has an empty or nested placeholder")));
                }
                Ok(None)
            } else if s.contains(['{', '}']) {
                Err(err(loc, format!("`{p}`: placeholders must fill a whole segment")))
            } else {
                Ok(Some(s))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn example() -> Value {
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/clinician-api.json")).unwrap())
            .unwrap()
    }

    fn compile_value(v: &Value) -> Result<Policy, CompileError> {
        compile(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn example_compiles() {
        let p = compile_value(&example()).unwrap();
        assert!(p.revision.starts_with("sha256:") && p.revision.len() == 23);
        assert_eq!(p.unmatched_status, 403);
    }

    #[test]
    fn errors_name_their_location() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/routes/2/bogus", json!(1), "routes[2].bogus: unknown field `bogus`"),
            ("/routes/2/fhir/interactions", json!(["read", "raed"]), "routes[2].fhir.interactions[1]: unknown interaction `raed`"),
            (
                "/routes/2/fhir/patientSharedTypes",
                json!(["Pateint"]),
                "routes[2].fhir.patientSharedTypes[0]: unknown FHIR resource type `Pateint`",
            ),
            ("/routes/3/methods", json!(["get"]), "routes[3].methods[0]"),
            ("/issuers/0/algorithms", json!(["RS256", "HS256"]), "issuers[0].algorithms[1]"),
            ("/issuers/0/algorithms", json!(["none"]), "issuers[0].algorithms[0]: unknown algorithm `none`"),
            ("/issuers/0/scopeClaim", json!("scopes"), "issuers[0].scopeClaim"),
            ("/issuers/0/jwks", json!({"keys": [{"kty": "oct", "k": "AAAA"}]}), "issuers[0].jwks: keys[0]"),
            ("/issuers/0/jwksUri", json!({"cluster": "idp", "path": "/jwks"}), "issuers[0]: exactly one of `jwks`"),
            ("/issuers/0/jwksUri", json!({"cluster": "idp", "path": "jwks"}), "issuers[0]"),
            ("/routes/3/match", json!({"path": "/a/{x", "prefix": "/a"}), "routes[3].match: exactly one"),
            ("/routes/3/match", json!({"path": "/a/x{y}"}), "routes[3].match.path"),
            ("/routes/3/match", json!({"prefix": "/a/../b"}), "routes[3].match.prefix"),
            ("/routes/1/id", json!("health"), "routes[1].id: duplicate route id `health`"),
            ("/unmatched", json!({"status": 200}), "unmatched.status"),
            ("/rateLimits", json!([{"id": "a", "by": "user", "requestsPerMinute": 5}]), "rateLimits[0].by: `user`"),
            (
                "/rateLimits",
                json!([{"id": "a", "by": "subject", "requestsPerMinute": 5, "routes": ["health"]}]),
                "rateLimits[0].routes[0]: route `health` is public",
            ),
            (
                "/rateLimits",
                json!([{"id": "a", "by": "subject", "requestsPerMinute": 5, "routes": ["nope"]}]),
                "rateLimits[0].routes[0]: no route `nope`",
            ),
            ("/limits", json!({"maxHeaderCount": 2}), "limits.maxHeaderCount"),
            ("/version", json!(2), "version"),
            ("/mode", json!("audit"), "mode: `audit` must be `enforce` or `shadow`"),
            ("/tokenCache", json!({"maxEntries": 10_000_000}), "tokenCache.maxEntries"),
            ("/issuers/0/purposeClaim", json!(""), "issuers[0].purposeClaim: must not be empty"),
            ("/routes/0/minimize", json!({"profiles": [{"name": "a", "fields": {}}]}), "routes[0].minimize: a `public` route"),
            (
                "/routes/2/minimize",
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"allow": ["name", "Name"]}}}]}),
                "routes[2].minimize.profiles[0].resources.Patient.allow[1]: `Name`: FHIR element names start with a lowercase letter",
            ),
            (
                "/routes/2/minimize",
                json!({"profiles": [{"name": "a", "mode": "alow", "resources": {}}]}),
                "routes[2].minimize.profiles[0].mode: unknown variant `alow`",
            ),
            (
                "/routes/2/minimize",
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"alow": []}}}]}),
                "routes[2].minimize.profiles[0].resources.Patient.alow: unknown field",
            ),
            (
                "/routes/3/minimize",
                json!({"profiles": [{"name": "a", "fields": {"deny": ["a..b"]}}]}),
                "routes[3].minimize.profiles[0].fields.deny[0]: `a..b`: empty path segment",
            ),
            (
                "/routes/6/authentication",
                json!({"acrMin": "urn:x:gold"}),
                "routes[6].authentication.acrMin: `urn:x:gold`: issuer `https://idp.phi-guard.test` has no such level",
            ),
            ("/routes/6/authentication", json!({}), "routes[6].authentication: must set `acrMin`, `amr` or `maxAuthAgeSeconds`"),
            ("/routes/6/authentication", json!({"amr": ["m f a"]}), "routes[6].authentication.amr[0]"),
            ("/routes/6/authentication", json!({"maxAuthAgeSeconds": 99_999_999}), "routes[6].authentication.maxAuthAgeSeconds"),
            ("/routes/6/authentication", json!({"acr": "x"}), "routes[6].authentication.acr: unknown field"),
            (
                "/routes/6/purpose",
                json!({"required": true, "allowed": ["TREAT", "RESEARCH"]}),
                "routes[6].purpose.allowed[1]: `RESEARCH` is not an HL7 v3 PurposeOfUse code",
            ),
            ("/routes/6/purpose", json!({"required": false}), "routes[6].purpose: has no effect"),
            ("/routes/6/purpose", json!({"required": true, "allowed": []}), "routes[6].purpose.allowed: must list"),
            ("/routes/0/purpose", json!({"required": true}), "routes[0].purpose: a `public` route has no token"),
            ("/routes/0/authentication", json!({"amr": ["mfa"]}), "routes[0].authentication: a `public` route"),
            (
                "/routes/6/minimize/profiles/1/authentication",
                json!({"acrMin": "loa-9"}),
                "routes[6].minimize.profiles[1].authentication.acrMin: `loa-9`",
            ),
            ("/routes/5/minimize/safeHarborPurposes", json!(["RESEARCH"]), "routes[5].minimize.safeHarborPurposes[0]"),
            ("/issuers/0/acrLevels", json!([]), "issuers[0].acrLevels: must list"),
            ("/issuers/0/acrLevels", json!(["a", "a"]), "issuers[0].acrLevels[1]: `a` is listed twice"),
            ("/breakGlass/reasons", json!(["ok", "free text"]), "breakGlass.reasons[1]"),
            ("/breakGlass/reasons", json!([]), "breakGlass.reasons: must list at least one reason code"),
            ("/breakGlass/maxAgeSeconds", json!(999_999), "breakGlass.maxAgeSeconds: `999999` must be between 60 and 86400"),
            ("/breakGlass/grants", json!(["user/*.rs", "everything"]), "breakGlass.grants[1]: `everything` is not a SMART resource scope"),
            ("/breakGlass/profile", json!("nope"), "breakGlass.profile: no route has a minimization profile named `nope`"),
            ("/breakGlass/purposes", json!(["EMERGENCY"]), "breakGlass.purposes[0]"),
            ("/breakGlass/reasonClaim", json!("break_glass"), "breakGlass.reasonClaim: must differ from `claim`"),
            ("/breakGlass/bogus", json!(1), "breakGlass.bogus: unknown field"),
            ("/restrictions/0/patient", json!("1f456f0a-acb1-4728-82af-01ca57083c7b"), "restrictions[0].patient: must be a pseudonym"),
            ("/restrictions/0/patient", json!("ps1-79BEEB80AA5492395B3E9B98CD193F3D"), "restrictions[0].patient: must be a pseudonym"),
            ("/restrictions/0/labels", json!([]), "restrictions[0].labels: must list"),
            ("/restrictions/0/labels", json!([{"system": "", "code": "PSY"}]), "restrictions[0].labels[0]"),
            ("/restrictions/0/allowPurposes", json!(["EMERGENCY"]), "restrictions[0].allowPurposes[0]"),
            ("/restrictions/0/id", json!("Kermit Trantow"), "restrictions[0].id"),
            ("/restrictions/0/routes", json!(["admin-reports"]), "restrictions[0].routes[0]: route `admin-reports` is not a `fhir` route"),
            ("/restrictions/0/routes", json!(["nope"]), "restrictions[0].routes[0]: no route `nope`"),
            ("/restrictions/0/routes", json!([]), "restrictions[0].routes: must name"),
        ];
        for (ptr, value, want) in cases {
            let mut doc = example();
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            doc.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(key.to_owned(), value);
            let e = compile_value(&doc).unwrap_err().to_string();
            assert!(e.starts_with(want), "{ptr}: got `{e}`, want prefix `{want}`");
        }
    }

    #[test]
    fn structural_errors() {
        let mut doc = example();
        doc["issuers"] = json!([]);
        assert!(compile_value(&doc).unwrap_err().to_string().contains("trusts no issuer"));
        let mut doc = example();
        doc["routes"][2]["match"] = json!({"path": "/fhir/{x}"});
        assert!(compile_value(&doc).unwrap_err().to_string().starts_with("routes[2].match: a `fhir` route"));
        let mut doc = example();
        doc["routes"][0]["scopes"] = json!({"allOf": ["x"]});
        assert!(compile_value(&doc).unwrap_err().to_string().starts_with("routes[0]: a `public` route"));
        assert!(compile(b"{").unwrap_err().location == "policy");
        assert!(compile(b"[]").is_err());
    }

    #[test]
    fn acr_levels_default_to_the_policy() {
        let mut doc = example();
        let levels = doc["issuers"][0].as_object_mut().unwrap().remove("acrLevels").unwrap();
        let e = compile_value(&doc).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "routes[6].authentication.acrMin: `urn:phi-guard:loa:2`: issuer `https://idp.phi-guard.test` defines no `acrLevels`"
            ),
            "{e}"
        );
        doc["acrLevels"] = levels;
        let p = compile_value(&doc).unwrap();
        assert_eq!(p.acr_levels("https://idp.phi-guard.test").len(), 3);
        assert!(p.acr_levels("https://other.test").is_empty());
        // Issuer levels win over the policy's.
        doc["issuers"][0]["acrLevels"] = json!(["urn:phi-guard:loa:2", "urn:phi-guard:loa:3"]);
        assert_eq!(compile_value(&doc).unwrap().acr_levels("https://idp.phi-guard.test")[0], "urn:phi-guard:loa:2");
    }

    #[test]
    fn break_glass_and_restrictions_compile() {
        let p = compile_value(&example()).unwrap();
        let bg = p.break_glass.as_ref().unwrap();
        assert_eq!((bg.max_age, bg.grants.len(), bg.profile.as_deref()), (3600, 1, Some("emergency")));
        let names = &p.issuers[0].claims;
        assert_eq!((names.break_glass.as_deref(), names.break_glass_reason.as_deref()), (Some("break_glass"), Some("break_glass_reason")));
        assert_eq!(p.restrictions.as_ref().unwrap().list[0].labels.len(), 3);
        assert!(p.requires_audit_key());
        let mut doc = example();
        doc["breakGlass"].as_object_mut().unwrap().remove("claim");
        doc["breakGlass"]["purposes"] = json!([]);
        assert!(compile_value(&doc).unwrap_err().to_string().starts_with("breakGlass: needs a `claim` or `purposes`"));
        // Raw patient identifiers: restrictions name raw ids.
        let mut doc = example();
        doc["audit"]["patientIdentifiers"] = json!("raw");
        assert!(compile_value(&doc).unwrap_err().to_string().starts_with("restrictions[0].patient: must be a FHIR id"));
        doc["restrictions"][0]["patient"] = json!("1f456f0a-acb1-4728-82af-01ca57083c7b");
        assert!(!compile_value(&doc).unwrap().requires_audit_key());
        let mut doc = example();
        let copy = doc["restrictions"][0].clone();
        doc["restrictions"].as_array_mut().unwrap().push(copy);
        assert!(compile_value(&doc).unwrap_err().to_string().starts_with("restrictions[1].id"));
    }
}
