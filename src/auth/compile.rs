//! Compile the policy's `issuers` (and the policy-wide `acrLevels` they default to) into
//! [`IssuerConfig`]s: algorithms pinned, inline JWKS keys bound to them, remote JWKS settings
//! bounded, claim names filled in.

use std::collections::HashSet;
use std::str::FromStr;

use jsonwebtoken::Algorithm;

use super::keys::parse_jwks;
use super::remote::RemoteJwks;
use super::{ClaimNames, IssuerConfig};
use crate::schema::{CompileError, IssuerDoc, JwksUriDoc, Loc};

/// Compile `issuers` (at `loc`); issuers without their own `acrLevels` get `default_levels`.
pub fn compile_issuers(docs: &[IssuerDoc], loc: &Loc<'_>, default_levels: &[String]) -> Result<Vec<IssuerConfig>, CompileError> {
    let issuers = docs.iter().enumerate().map(|(i, d)| compile_issuer(d, &loc.index(i), default_levels)).collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    for (i, iss) in issuers.iter().enumerate() {
        if !seen.insert(iss.issuer.as_str()) {
            return Err(loc.index(i).field("issuer").error(format!("duplicate issuer `{}`", iss.issuer)));
        }
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
    if d.algorithms.is_empty() {
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
        _ => return Err(loc.error("exactly one of `jwks` (inline) or `jwksUri` is required")),
    };
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
    })
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
    })
}
