//! Compile policy JSON into the checked [`Policy`] model. The first error wins and names its
//! location (`routes[2].fhir.interactions[1]: unknown interaction `raed``).
//!
//! This is the assembly: the document's own fields, its routes and the cross-section checks
//! are here; each domain compiles its section beside its model (`auth::compile` the issuers,
//! `auth::stepup`, `auth::purpose` and `auth::breakglass` their sections, `minimize` the
//! profiles and restrictions, `ratelimit` the rate limits, `policy::audit` the audit section).
//! Sections that name routes see them through [`Routes`].

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::{
    Access, FhirRoute, Limits, PathMatcher, PatientReferenceForm, PatientSearch, PatientWrites, Policy, PreflightCredential, Route,
};
use crate::auth::breakglass::compile_break_glass;
use crate::auth::compile::{compile_acr_levels, compile_issuers};
use crate::auth::purpose::compile_purpose;
use crate::auth::scope::Context;
use crate::auth::stepup::compile_authentication;
use crate::auth::{AuthRequirement, IssuerConfig};
use crate::fhir::{resource_type, Interaction};
use crate::http::normalize;
use crate::minimize::compile_minimize;
use crate::minimize::restrict::compile_restrictions;
use crate::ratelimit::compile_rate_limits;
use crate::schema::{CompileError, Loc, PatientSearchDoc, PolicyDoc, RouteDoc, RouteKind, Routes, ROOT};

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
/// Slots of the cross-worker record of verified signatures: about 100 bytes each in shared data.
const DEFAULT_SHARED_CACHE_ENTRIES: usize = 4096;
const MAX_SHARED_CACHE_ENTRIES: usize = 65_536;
const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Parse and compile policy bytes.
pub fn compile(bytes: &[u8]) -> Result<Policy, CompileError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let doc: PolicyDoc = serde_path_to_error::deserialize(de).map_err(|e| {
        // serde's own path is already rendered; only the empty one needs the root's name.
        let path = e.path().to_string();
        let location = if matches!(path.as_str(), "." | "?" | "") { ROOT.to_string() } else { path };
        CompileError { location, message: e.into_inner().to_string() }
    })?;
    let revision = {
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    compile_doc(doc, revision)
}

impl Routes for Vec<Route> {
    fn kind(&self, id: &str) -> Option<RouteKind> {
        self.iter().find(|r| r.id == id).map(|r| match r.access {
            Access::Public => RouteKind::Public,
            Access::Scopes { .. } => RouteKind::Scopes,
            Access::Fhir(_) => RouteKind::Fhir,
        })
    }

    fn has_profile(&self, name: &str) -> bool {
        self.iter().filter_map(|r| r.minimize.as_ref()).any(|m| m.profiles.iter().any(|p| p.name == name))
    }
}

fn compile_doc(doc: PolicyDoc, revision: String) -> Result<Policy, CompileError> {
    if doc.version != 1 {
        return Err(ROOT.field("version").error(format!("unsupported policy version `{}`; expected 1", doc.version)));
    }
    if doc.name.trim().is_empty() {
        return Err(ROOT.field("name").error("must not be empty"));
    }
    let shadow = match doc.mode.as_deref() {
        None | Some("enforce") => false,
        Some("shadow") => true,
        Some(m) => return Err(ROOT.field("mode").error(format!("`{m}` must be `enforce` or `shadow`"))),
    };
    let default_levels = match &doc.acr_levels {
        Some(l) => compile_acr_levels(l, &ROOT.field("acrLevels"))?,
        None => Vec::new(),
    };
    let mut issuers = compile_issuers(&doc.issuers, &ROOT.field("issuers"), &default_levels)?;
    let routes_loc = ROOT.field("routes");
    if doc.routes.is_empty() {
        return Err(routes_loc.error("must contain at least one route"));
    }
    let mut ids = HashSet::new();
    let mut routes = Vec::with_capacity(doc.routes.len());
    for (i, r) in doc.routes.iter().enumerate() {
        let loc = routes_loc.index(i);
        if !ids.insert(r.id.as_str()) {
            return Err(loc.field("id").error(format!("duplicate route id `{}`", r.id)));
        }
        let route = compile_route(r, &loc)?;
        if !matches!(route.access, Access::Public) && issuers.is_empty() {
            return Err(loc.error("route needs a token but the policy trusts no issuer"));
        }
        routes.push(route);
    }
    let unmatched_status = match doc.unmatched.map(|u| u.status) {
        None => 404,
        Some(s @ (403 | 404)) => s,
        Some(s) => return Err(ROOT.field("unmatched").field("status").error(format!("`{s}` must be 403 or 404"))),
    };
    let limits = compile_limits(doc.limits.as_ref())?;
    let token_cache_entries = ROOT.field("tokenCache").field("maxEntries").bounded(
        doc.token_cache.as_ref().and_then(|c| c.max_entries),
        DEFAULT_CACHE_ENTRIES,
        0..=MAX_CACHE_ENTRIES,
    )?;
    let token_cache_shared = ROOT.field("tokenCache").field("sharedEntries").bounded(
        doc.token_cache.as_ref().and_then(|c| c.shared_entries),
        DEFAULT_SHARED_CACHE_ENTRIES,
        0..=MAX_SHARED_CACHE_ENTRIES,
    )?;
    let rate_limits = compile_rate_limits(&doc.rate_limits, &ROOT.field("rateLimits"), &routes)?;
    let audit = super::audit::compile_audit(doc.audit.as_ref(), &ROOT.field("audit"))?;
    check_acr_levels(&routes, &issuers)?;
    let break_glass = match &doc.break_glass {
        Some(b) => {
            let bg = compile_break_glass(b, &ROOT.field("breakGlass"), &routes)?;
            // The verifier reads the break-glass claims with the issuer's other claim names.
            for iss in &mut issuers {
                iss.claims.break_glass.clone_from(&bg.claim);
                iss.claims.break_glass_reason = Some(bg.reason_claim.clone());
            }
            Some(bg)
        }
        None => None,
    };
    let restrictions = compile_restrictions(&doc.restrictions, &ROOT.field("restrictions"), audit.patient_ids, &routes)?;
    Ok(Policy {
        name: doc.name,
        revision,
        shadow,
        issuers,
        routes,
        unmatched_status,
        limits,
        token_cache_entries,
        token_cache_shared,
        rate_limits,
        audit,
        break_glass,
        restrictions,
        dpop: crate::auth::compile::compile_dpop(doc.dpop.as_ref(), &ROOT.field("dpop"))?,
    })
}

/// `limits`: each bounded, and the body caps within Envoy's stream buffer.
fn compile_limits(limits: Option<&crate::schema::LimitsDoc>) -> Result<Limits, CompileError> {
    let loc = ROOT.field("limits");
    let envoy_buffer_limit_bytes = loc.field("envoyBufferLimitBytes").bounded(
        limits.and_then(|l| l.envoy_buffer_limit_bytes),
        DEFAULT_ENVOY_BUFFER_LIMIT_BYTES,
        2 * ENVOY_READ_HEADROOM_BYTES..=64 * 1024 * 1024,
    )?;
    // Bodies the filter buffers (and the bodies it writes back) must fit Envoy's buffer: past
    // it Envoy resets a response whose headers are gone, and a larger buffer written from the
    // body callback makes Envoy call back into the filter mid-callback. Responses keep room for
    // one more upstream read (see ENVOY_READ_HEADROOM_BYTES).
    let response_room = envoy_buffer_limit_bytes - ENVOY_READ_HEADROOM_BYTES;
    let within_envoy = |v: usize, room: usize, loc: &Loc<'_>| {
        if v > room {
            Err(loc.error(format!(
                "`{v}` exceeds {room}: limits.envoyBufferLimitBytes ({envoy_buffer_limit_bytes}, Envoy's per_connection_buffer_limit_bytes){}",
                if room < envoy_buffer_limit_bytes { " less one upstream read (65536)" } else { "" }
            )))
        } else {
            Ok(v)
        }
    };
    let response = loc.field("maxResponseBytes");
    let request_body = loc.field("maxRequestBodyBytes");
    let max_response_bytes = response.bounded(limits.and_then(|l| l.max_response_bytes), response_room, 1024..=64 * 1024 * 1024)?;
    let max_request_body_bytes =
        request_body.bounded(limits.and_then(|l| l.max_request_body_bytes), envoy_buffer_limit_bytes, 0..=64 * 1024 * 1024)?;
    Ok(Limits {
        max_token_bytes: loc.field("maxTokenBytes").bounded(
            limits.and_then(|l| l.max_token_bytes),
            DEFAULT_MAX_TOKEN_BYTES,
            256..=64 * 1024,
        )?,
        max_path_bytes: loc.field("maxPathBytes").bounded(limits.and_then(|l| l.max_path_bytes), DEFAULT_MAX_PATH_BYTES, 64..=64 * 1024)?,
        max_response_bytes: within_envoy(max_response_bytes, response_room, &response)?,
        max_request_body_bytes: within_envoy(max_request_body_bytes, envoy_buffer_limit_bytes, &request_body)?,
        envoy_buffer_limit_bytes,
        max_header_count: loc.field("maxHeaderCount").bounded(limits.and_then(|l| l.max_header_count), 100, 8..=1000)?,
        max_header_bytes: loc.field("maxHeaderBytes").bounded(limits.and_then(|l| l.max_header_bytes), 32 * 1024, 1024..=1024 * 1024)?,
    })
}

/// Every `acrMin` must be a level of every issuer, so that "at or above" is defined whoever
/// issued the token.
fn check_acr_levels(routes: &[Route], issuers: &[IssuerConfig]) -> Result<(), CompileError> {
    let check = |req: &AuthRequirement, loc: &Loc<'_>| -> Result<(), CompileError> {
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
                return Err(loc.field("acrMin").error(format!("`{min}`: issuer `{}` {why}", iss.issuer)));
            }
        }
        Ok(())
    };
    let routes_loc = ROOT.field("routes");
    for (i, r) in routes.iter().enumerate() {
        let loc = routes_loc.index(i);
        if let Some(req) = &r.authentication {
            check(req, &loc.field("authentication"))?;
        }
        let profiles_loc = loc.field("minimize");
        let profiles_loc = profiles_loc.field("profiles");
        let profiles = r.minimize.iter().flat_map(|m| m.profiles.iter());
        for (j, p) in profiles.enumerate() {
            if let Some(req) = &p.when.authentication {
                check(req, &profiles_loc.index(j).field("authentication"))?;
            }
        }
    }
    Ok(())
}

fn compile_route(r: &RouteDoc, loc: &Loc<'_>) -> Result<Route, CompileError> {
    if !crate::ident::shaped(&r.id, usize::MAX, b"-_") {
        return Err(loc.field("id").error(format!("`{}` must be non-empty [A-Za-z0-9_-]", r.id)));
    }
    let mloc = loc.field("match");
    let matcher = match (&r.matcher.path, &r.matcher.prefix) {
        (Some(p), None) => PathMatcher::Template(template(p, &mloc.field("path"))?),
        (None, Some(p)) => {
            let segs = literal_segments(p, &mloc.field("prefix"))?;
            PathMatcher::Prefix(segs)
        }
        _ => return Err(mloc.error("exactly one of `path` or `prefix` is required")),
    };
    let methods = match &r.methods {
        None => vec!["GET".to_owned(), "HEAD".to_owned()],
        Some(list) if list.is_empty() => return Err(loc.field("methods").error("must not be empty")),
        Some(list) => {
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                if !KNOWN_METHODS.contains(&m.as_str()) {
                    return Err(loc.field("methods").index(i).error(format!("unknown method `{m}` (uppercase HTTP method expected)")));
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
                return Err(loc.field("scopes").error("must list `allOf` or `anyOf` scopes"));
            }
            for (field, list) in [("allOf", &s.all_of), ("anyOf", &s.any_of)] {
                for (i, sc) in list.iter().enumerate() {
                    if sc.is_empty() || sc.contains(char::is_whitespace) {
                        return Err(loc.field("scopes").field(field).index(i).error(format!("`{sc}` is not a single scope")));
                    }
                }
            }
            Access::Scopes { all_of: s.all_of.clone(), any_of: s.any_of.clone() }
        }
        (false, None, Some(f)) => {
            if !matches!(matcher, PathMatcher::Prefix(_)) {
                return Err(loc.field("match").error("a `fhir` route must match a `prefix` (the FHIR base)"));
            }
            let interactions = match &f.interactions {
                None => Interaction::ALL.into_iter().collect(),
                Some(list) => {
                    let mut set = HashSet::new();
                    for (i, name) in list.iter().enumerate() {
                        let it = Interaction::from_name(name).ok_or_else(|| {
                            loc.field("fhir").field("interactions").index(i).error(format!("unknown interaction `{name}`"))
                        })?;
                        set.insert(it);
                    }
                    set
                }
            };
            let mut shared = Vec::new();
            for (i, t) in f.patient_shared_types.iter().enumerate() {
                let ty = resource_type(t).ok_or_else(|| {
                    loc.field("fhir").field("patientSharedTypes").index(i).error(format!("unknown FHIR resource type `{t}`"))
                })?;
                if crate::fhir::compartment::in_patient_compartment(ty) {
                    return Err(loc
                        .field("fhir")
                        .field("patientSharedTypes")
                        .index(i)
                        .error(format!("`{t}` is in the patient compartment; it cannot be shared")));
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
                                return Err(loc
                                    .field("fhir")
                                    .field("scopeContexts")
                                    .index(i)
                                    .error(format!("unknown scope context `{name}` (patient, user, system)")))
                            }
                        };
                        set.insert(c);
                    }
                    if set.is_empty() {
                        return Err(loc.field("fhir").field("scopeContexts").error("at least one scope context is needed"));
                    }
                    set
                }
            };
            let patient_search = match &f.patient_search {
                None => PatientSearch::default(),
                Some(ps) => compile_patient_search(ps, &loc.field("fhir").field("patientSearch"))?,
            };
            shared.sort_unstable();
            shared.dedup();
            let patient_writes =
                f.patient_writes.as_ref().map(|w| compile_patient_writes(w, &loc.field("fhir").field("patientWrites"))).transpose()?;
            Access::Fhir(FhirRoute { interactions, patient_shared_types: shared.into(), scope_contexts, patient_search, patient_writes })
        }
        (true, _, _) => return Err(loc.error("a `public` route cannot also require `scopes` or `fhir`")),
        (false, None, None) => return Err(loc.error("route needs one of `public`, `scopes` or `fhir`")),
        (false, Some(_), Some(_)) => return Err(loc.error("`scopes` and `fhir` are exclusive")),
    };
    let minimize = match (&r.minimize, &access) {
        (None, _) => None,
        (Some(_), Access::Public) => {
            return Err(loc
                .field("minimize")
                .error("a `public` route has no caller to choose a profile for; minimize `fhir` or `scopes` routes"))
        }
        (Some(m), access) => Some(compile_minimize(m, &loc.field("minimize"), matches!(access, Access::Fhir(_)))?),
    };
    let public = matches!(access, Access::Public);
    for (field, set) in [("authentication", r.authentication.is_some()), ("purpose", r.purpose.is_some())] {
        if public && set {
            return Err(loc.field(field).error("a `public` route has no token to check"));
        }
    }
    let authentication = r.authentication.as_ref().map(|a| compile_authentication(a, &loc.field("authentication"))).transpose()?;
    let purpose = r.purpose.as_ref().map(|p| compile_purpose(p, &loc.field("purpose"))).transpose()?;
    let security_headers = r.security_headers.unwrap_or(!public);
    if public && r.sender_constrained {
        return Err(loc.field("senderConstrained").error("a `public` route has no token"));
    }
    Ok(Route {
        id: r.id.clone(),
        matcher,
        methods,
        access,
        minimize,
        security_headers,
        authentication,
        purpose,
        sender_constrained: r.sender_constrained,
    })
}

/// `fhir.patientWrites`: where and how the pre-flight read goes.
fn compile_patient_writes(d: &crate::schema::PatientWritesDoc, loc: &Loc<'_>) -> Result<PatientWrites, CompileError> {
    if d.cluster.is_empty() {
        return Err(loc.field("cluster").error("must not be empty"));
    }
    let credential = match &d.service_token_env {
        None => PreflightCredential::Caller,
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            PreflightCredential::ServiceToken(v.clone())
        }
        Some(_) => return Err(loc.field("serviceTokenEnv").error("must name an environment variable (`[A-Za-z0-9_]+`)")),
    };
    Ok(PatientWrites {
        cluster: d.cluster.clone(),
        authority: d.authority.clone(),
        timeout_ms: loc.field("timeoutMs").bounded(d.timeout_ms, 2000, 100..=10_000)?,
        credential,
    })
}

/// `fhir.patientSearch`: the patient parameter's form and per-type parameter allowlists.
fn compile_patient_search(d: &PatientSearchDoc, loc: &Loc<'_>) -> Result<PatientSearch, CompileError> {
    let reference = match d.patient_reference.as_deref() {
        None | Some("either") => PatientReferenceForm::Either,
        Some("id") => PatientReferenceForm::Id,
        Some("reference") => PatientReferenceForm::Reference,
        Some(other) => return Err(loc.field("patientReference").error(format!("unknown form `{other}` (id, reference, either)"))),
    };
    let mut parameters = std::collections::HashMap::new();
    let params = loc.field("parameters");
    for (t, names) in &d.parameters {
        let ploc = params.field(t);
        let ty = resource_type(t).ok_or_else(|| ploc.error(format!("unknown FHIR resource type `{t}`")))?;
        let mut set = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            // Names only: modifiers and chains are judged per request, never allowlisted.
            let shaped = crate::ident::policy_id(name);
            if !shaped {
                return Err(ploc.index(i).error(format!("`{name}` is not a search parameter name")));
            }
            if matches!(name.as_str(), "_include" | "_revinclude" | "_has" | "_filter" | "_query" | "_contained" | "_containedType") {
                return Err(ploc.index(i).error(format!("`{name}` can reach outside the patient compartment")));
            }
            set.insert(name.clone());
        }
        parameters.insert(ty, set);
    }
    Ok(PatientSearch { reference, parameters })
}

fn literal_segments(p: &str, loc: &Loc<'_>) -> Result<Vec<String>, CompileError> {
    if p == "/" {
        return Ok(Vec::new());
    }
    let n = normalize(p).map_err(|e| loc.error(format!("`{p}`: {e}")))?;
    if p.contains('?') || n.segments.iter().any(|s| s.contains(['{', '}'])) {
        return Err(loc.error(format!("`{p}` must be a plain path")));
    }
    Ok(n.segments)
}

fn template(p: &str, loc: &Loc<'_>) -> Result<Vec<Option<String>>, CompileError> {
    let segs = if p == "/" { Vec::new() } else { normalize(p).map_err(|e| loc.error(format!("`{p}`: {e}")))?.segments };
    if p.contains('?') {
        return Err(loc.error(format!("`{p}` must not contain a query")));
    }
    segs.into_iter()
        .map(|s| {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(loc.error(format!("`{p}` has an empty or nested placeholder")));
                }
                Ok(None)
            } else if s.contains(['{', '}']) {
                Err(loc.error(format!("`{p}`: placeholders must fill a whole segment")))
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
