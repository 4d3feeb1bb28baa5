//! Compile the policy's `issuers` (and the policy-wide `acrLevels` they default to) into
//! [`IssuerConfig`]s: algorithms pinned, inline JWKS keys bound to them, remote JWKS settings
//! bounded, claim names filled in.

use std::collections::HashSet;
use std::str::FromStr;

use jsonwebtoken::Algorithm;

use super::discovery::document_path;
use super::dpop::{normalize_origin, DpopSettings};
use super::introspect::Introspection;
use super::keys::parse_jwks;
use super::remote::RemoteJwks;
use super::sender::DpopMode;
use super::{ClaimNames, IssuerConfig};
use crate::schema::{CompileError, DiscoveryDoc, DpopDoc, DpopModeDoc, IntrospectionDoc, IssuerDoc, JwksUriDoc, Loc};

/// Compile `issuers` (at `loc`); issuers without their own `acrLevels` get `default_levels`.
pub fn compile_issuers(docs: &[IssuerDoc], loc: &Loc<'_>, default_levels: &[String]) -> Result<Vec<IssuerConfig>, CompileError> {
    let issuers = docs.iter().enumerate().map(|(i, d)| compile_issuer(d, &loc.index(i), default_levels)).collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    for (i, iss) in issuers.iter().enumerate() {
        if !seen.insert(iss.issuer.as_str()) {
            return Err(loc.index(i).field("issuer").error(format!("duplicate issuer `{}`", iss.issuer)));
        }
    }
    // An opaque token names no issuer: with two introspecting issuers it could not be told
    // which to ask (asking both would send a token to a server that did not issue it).
    if let Some(second) = issuers.iter().enumerate().filter(|(_, i)| i.introspection.is_some()).nth(1).map(|(i, _)| i) {
        return Err(loc
            .index(second)
            .field("introspection")
            .error("only one issuer may introspect: an opaque token does not say whose it is"));
    }
    Ok(issuers)
}

/// An `acrLevels` list: distinct, non-empty values, weakest first.
pub fn compile_acr_levels(list: &[String], loc: &Loc<'_>) -> Result<Vec<String>, CompileError> {
    if list.is_empty() {
        return Err(loc.error("must list at least one `acr` value, weakest first"));
    }
    let mut seen = HashSet::new();
    for (i, l) in list.iter().enumerate() {
        if l.is_empty() || l.len() > 256 || l.chars().any(|c| c.is_control() || c == '"' || c == '\\' || c == ' ') {
            return Err(loc.index(i).error(format!("`{l}` is not an `acr` value (1–256 characters, no spaces, quotes or backslashes)")));
        }
        if !seen.insert(l.as_str()) {
            return Err(loc.index(i).error(format!("`{l}` is listed twice")));
        }
    }
    Ok(list.to_vec())
}

fn compile_issuer(d: &IssuerDoc, loc: &Loc<'_>, default_levels: &[String]) -> Result<IssuerConfig, CompileError> {
    if !(d.issuer.starts_with("https://") || d.issuer.starts_with("http://")) {
        return Err(loc.field("issuer").error(format!("`{}` must be an http(s) URL", d.issuer)));
    }
    if d.audiences.is_empty() || d.audiences.iter().any(|a| a.is_empty()) {
        return Err(loc.field("audiences").error("must list at least one non-empty audience"));
    }
    let opaque_only = d.jwks.is_none() && d.jwks_uri.is_none() && d.discovery.is_none() && d.introspection.is_some();
    if d.algorithms.is_empty() && !opaque_only {
        return Err(loc.field("algorithms").error("must pin at least one algorithm"));
    }
    let mut algorithms = Vec::new();
    for (i, a) in d.algorithms.iter().enumerate() {
        let aloc = loc.field("algorithms");
        let aloc = aloc.index(i);
        let alg = Algorithm::from_str(a).map_err(|_| aloc.error(format!("unknown algorithm `{a}`")))?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(aloc.error(format!("`{a}` is not supported: shared-secret algorithms do not belong in a gateway policy")));
        }
        algorithms.push(alg);
    }
    let (keys, remote) = match (&d.jwks, &d.jwks_uri) {
        (None, None) if d.discovery.is_some() => {
            (Vec::new(), d.discovery.as_ref().map(|x| compile_discovery(x, &d.issuer, &loc.field("discovery"))).transpose()?)
        }
        _ if d.discovery.is_some() => return Err(loc.field("discovery").error("give one of `jwks`, `jwksUri` or `discovery`")),
        (Some(jwks), None) => {
            let jloc = loc.field("jwks");
            let keys = parse_jwks(jwks).map_err(|e| jloc.error(e.to_string()))?;
            if keys.is_empty() {
                return Err(jloc.field("keys").error("must contain at least one key"));
            }
            for (i, k) in keys.iter().enumerate() {
                if !algorithms.iter().any(|a| k.accepts(*a)) {
                    return Err(jloc.field("keys").index(i).error("key matches none of the pinned algorithms"));
                }
            }
            (keys, None)
        }
        (None, Some(u)) => (Vec::new(), Some(compile_jwks_uri(u, &loc.field("jwksUri"))?)),
        // Opaque tokens only: every token of this issuer is introspected.
        (None, None) if d.introspection.is_some() => (Vec::new(), None),
        _ => {
            return Err(loc.error(
                "exactly one of `jwks` (inline), `jwksUri` or `discovery` is required (or only `introspection`, for opaque tokens)",
            ))
        }
    };
    let introspection = d.introspection.as_ref().map(|i| compile_introspection(i, &loc.field("introspection"))).transpose()?;
    let scope = d.scope_claim.clone().unwrap_or_else(|| "scope".into());
    if scope != "scope" && scope != "scp" {
        return Err(loc.field("scopeClaim").error(format!("`{scope}` must be `scope` or `scp`")));
    }
    let claim = |v: &Option<String>, default: &str, field: &str| -> Result<String, CompileError> {
        let c = v.clone().unwrap_or_else(|| default.into());
        if c.is_empty() {
            Err(loc.field(field).error("must not be empty"))
        } else {
            Ok(c)
        }
    };
    let clock_skew = d.clock_skew_seconds.unwrap_or(60);
    if clock_skew > 300 {
        return Err(loc.field("clockSkewSeconds").error(format!("`{clock_skew}` exceeds 300 seconds")));
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
            Some(l) => compile_acr_levels(l, &loc.field("acrLevels"))?,
            None => default_levels.to_vec(),
        },
        dpop: match d.dpop {
            None | Some(DpopModeDoc::Allowed) => DpopMode::Allowed,
            Some(DpopModeDoc::Required) => DpopMode::Required,
            Some(DpopModeDoc::Disabled) => DpopMode::Disabled,
        },
        introspection,
    })
}

/// The policy's `dpop` section (defaults without one).
pub fn compile_dpop(doc: Option<&DpopDoc>, loc: &Loc<'_>) -> Result<DpopSettings, CompileError> {
    let default = DpopSettings::default();
    let Some(d) = doc else { return Ok(default) };
    let algorithms = match &d.algorithms {
        None => default.algorithms,
        Some(list) if list.is_empty() => return Err(loc.field("algorithms").error("must list at least one algorithm")),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let aloc = loc.field("algorithms");
                let aloc = aloc.index(i);
                match Algorithm::from_str(a) {
                    Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                        Err(aloc.error(format!("`{a}` is not supported: a DPoP proof is signed with the client's private key")))
                    }
                    Ok(alg) => Ok(alg),
                    Err(_) => Err(aloc.error(format!("unknown algorithm `{a}`"))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let origins = match &d.origins {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, o)| {
                normalize_origin(o).ok_or_else(|| {
                    loc.field("origins").index(i).error(format!("`{o}` must be an http(s) origin such as `https://fhir.example.org`"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(DpopSettings {
        algorithms,
        proof_lifetime: loc.field("proofLifetimeSeconds").bounded(d.proof_lifetime_seconds, default.proof_lifetime, 5..=300)?,
        clock_skew: loc.field("clockSkewSeconds").bounded(d.clock_skew_seconds, default.clock_skew, 0..=60)?,
        origins,
        replay_slots: loc.field("replayCacheSlots").bounded(d.replay_cache_slots, default.replay_slots, 64..=1 << 20)?,
    })
}

fn compile_introspection(d: &IntrospectionDoc, loc: &Loc<'_>) -> Result<Introspection, CompileError> {
    if d.cluster.is_empty() {
        return Err(loc.field("cluster").error("must not be empty"));
    }
    if !d.path.starts_with('/') {
        return Err(loc.field("path").error(format!("`{}` must start with `/`", d.path)));
    }
    if d.client_id.is_empty() {
        return Err(loc.field("clientId").error("must not be empty"));
    }
    if d.client_secret_env.is_empty() || !d.client_secret_env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(loc.field("clientSecretEnv").error("must name an environment variable (`[A-Za-z0-9_]+`)"));
    }
    Ok(Introspection {
        cluster: d.cluster.clone(),
        path: d.path.clone(),
        authority: d.authority.clone().unwrap_or_else(|| d.cluster.clone()),
        client_id: d.client_id.clone(),
        client_secret_env: d.client_secret_env.clone(),
        cache_seconds: loc.field("cacheSeconds").bounded(d.cache_seconds, 60, 0..=3600)?,
        negative_cache_seconds: loc.field("negativeCacheSeconds").bounded(d.negative_cache_seconds, 10, 0..=300)?,
        timeout_ms: loc.field("timeoutMs").bounded(d.timeout_ms, 1000, 100..=10_000)?,
        require_audience: d.require_audience.unwrap_or(true),
    })
}

fn compile_discovery(d: &DiscoveryDoc, issuer: &str, loc: &Loc<'_>) -> Result<RemoteJwks, CompileError> {
    let document = document_path(issuer).ok_or_else(|| loc.error(format!("`{issuer}` is not a URL discovery can start from")))?;
    let host = issuer.split("://").nth(1).and_then(|r| r.split(['/', '?', '#']).next()).unwrap_or_default();
    let uri = JwksUriDoc {
        cluster: d.cluster.clone(),
        path: document.clone(),
        authority: Some(d.authority.clone().unwrap_or_else(|| host.to_owned())),
        refresh_seconds: d.refresh_seconds,
        max_staleness_seconds: d.max_staleness_seconds,
        unknown_kid_refetch_seconds: d.unknown_kid_refetch_seconds,
        wait_ms: d.wait_ms,
        timeout_ms: d.timeout_ms,
    };
    Ok(RemoteJwks { discovery: Some(document), ..compile_jwks_uri(&uri, loc)? })
}

fn compile_jwks_uri(u: &JwksUriDoc, loc: &Loc<'_>) -> Result<RemoteJwks, CompileError> {
    if u.cluster.is_empty() {
        return Err(loc.field("cluster").error("must not be empty"));
    }
    if !u.path.starts_with('/') {
        return Err(loc.field("path").error(format!("`{}` must start with `/`", u.path)));
    }
    let refresh = loc.field("refreshSeconds").bounded(u.refresh_seconds, 300, 10..=86_400)?;
    let max_staleness = loc.field("maxStalenessSeconds").bounded(u.max_staleness_seconds, 24 * 3600, refresh..=30 * 86_400)?;
    Ok(RemoteJwks {
        cluster: u.cluster.clone(),
        path: u.path.clone(),
        authority: u.authority.clone().unwrap_or_else(|| u.cluster.clone()),
        refresh,
        max_staleness,
        refetch_interval: loc.field("unknownKidRefetchSeconds").bounded(u.unknown_kid_refetch_seconds, 30, 1..=3600)?,
        wait_ms: loc.field("waitMs").bounded(u.wait_ms, 3000, 0..=30_000)?,
        timeout_ms: loc.field("timeoutMs").bounded(u.timeout_ms, 2000, 100..=30_000)?,
        discovery: None,
    })
}
