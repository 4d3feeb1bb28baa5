//! Minimum-necessary response minimization (HIPAA §164.502(b), §164.514(d)): a pure function
//! from (profile, body bytes, key, now) to the released bytes and the withheld field paths, or
//! a [`DenyReason`] when the body cannot be released safely (fail closed).
//!
//! - [`compile`]: policy JSON → [`ProfileSet`] (paths parsed once, errors located).
//! - [`path`], [`rules`]: field paths and the rule trie.
//! - [`walk`]: the rule engine over JSON objects; [`fhir`]: resources, Bundles, `contained`,
//!   narrative, security label; [`links`]: Bundle link rewriting.
//! - [`transform`], [`generalize`]: mask, keyed hash, Safe Harbor generalization.
//! - [`preset`]: built-in profiles (`safe-harbor`).
//! - [`body`]: parsing and serialization; [`withheld`]: the withheld-path record.
//! - [`restrict`]: patients' privacy restrictions (sensitivity labels withheld per patient) and
//!   the compiler of the policy's `restrictions`.
//! - [`scan`]: strict validation of a body without building a tree.
//!
//! The host calls [`crate::decision::ResponsePlan::apply`], which runs the response checks and
//! then [`apply_value`]; the CLI calls [`apply`]. [`apply_tree`] is the tree-based engine
//! (parse into a `serde_json::Value`, walk, re-serialize), kept by name so the benchmarks can
//! compare it with whatever [`apply`] runs.

pub mod body;
pub mod compile;
pub mod deid;
pub mod fhir;
pub mod generalize;
pub mod links;
pub mod path;
pub mod preset;
pub mod profile;
pub mod restrict;
pub mod rules;
pub mod stream;
pub mod transform;
pub mod walk;
pub mod withheld;

pub use compile::compile_minimize;
pub use profile::{Profile, ProfileSet};
pub use transform::MIN_HMAC_KEY_BYTES;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use self::profile::BodyRules;
use self::transform::Keys;
use self::walk::{Cursor, Walker};
use self::withheld::Withheld;
use crate::reason::DenyReason;

/// What the host supplies per response.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyCtx<'a> {
    /// HMAC key for `hash` transforms (the host reads `PHI_GUARD_HMAC_KEY` from the VM
    /// environment; never from the policy). At least [`MIN_HMAC_KEY_BYTES`] bytes.
    pub hmac_key: Option<&'a [u8]>,
    /// Now (for birth-year age checks).
    pub now: crate::time::UnixSeconds,
    /// The audit key, to recognise patients named by pseudonym in the policy's `restrictions`
    /// (the host passes the key it audits with). Without it, a response that restrictions
    /// must check is withheld (`minimization_failed`).
    pub pseudonyms: Option<&'a crate::audit_key::AuditKey>,
}

/// The result of releasing a response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// Bytes to send instead of the upstream's; `None` means send the upstream body unchanged.
    pub body: Option<Vec<u8>>,
    /// Distinct withheld field paths, sorted (never values).
    pub withheld: Vec<String>,
    /// Values withheld or transformed (each removal or rewrite counts once).
    pub count: usize,
    /// The profile ran in shadow mode: `withheld` is what would have been withheld.
    pub shadow: bool,
    /// Name of the profile applied, if any.
    pub profile: Option<String>,
}

/// What a minimization withheld.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Distinct withheld field paths, sorted.
    pub withheld: Vec<String>,
    /// Values withheld or transformed.
    pub count: usize,
}

/// Whether a key is long enough to be used for `hash` (the host can check at configure time).
pub fn hmac_key_ok(key: &[u8]) -> bool {
    key.len() >= MIN_HMAC_KEY_BYTES
}

/// The transform inputs for `profile`, or `minimization_failed` when it hashes and no usable
/// key was supplied.
fn keys_for(profile: &Profile, ctx: &ApplyCtx<'_>) -> Result<Keys, DenyReason> {
    let hmac = match ctx.hmac_key {
        Some(k) if hmac_key_ok(k) => Hmac::<Sha256>::new_from_slice(k).ok(),
        _ => None,
    };
    if profile.requires_hmac_key() && hmac.is_none() {
        return Err(DenyReason::MinimizationFailed);
    }
    Ok(Keys { hmac, now_year: generalize::year_of(ctx.now) })
}

/// A whole buffered body checked before any pass reads it: within `max_bytes`, then strictly
/// valid JSON ([`crate::json::validate`]; a leading BOM is ignored). Returns the text to read.
pub fn checked(body: &[u8], max_bytes: usize) -> Result<&[u8], DenyReason> {
    if body.len() > max_bytes {
        return Err(DenyReason::ResponseTooLarge);
    }
    let text = crate::json::strip_bom(body);
    crate::json::validate(text)?;
    Ok(text)
}

/// Minimize a whole body: validate it, then one streaming pass ([`stream`]). Unless the
/// profile is in shadow mode the body is always rewritten, so the client receives exactly what
/// was inspected (compact, no BOM; duplicate member names are refused as not JSON).
pub fn apply(profile: &Profile, body: &[u8], ctx: &ApplyCtx<'_>, max_bytes: usize) -> Result<Applied, DenyReason> {
    let text = checked(body, max_bytes)?;
    release_text(profile, text, ctx, &stream::Cuts::default())
}

/// Minimize a text [`checked`] already accepted, leaving out what `cuts` removes.
pub fn release_text(profile: &Profile, text: &[u8], ctx: &ApplyCtx<'_>, cuts: &stream::Cuts) -> Result<Applied, DenyReason> {
    let keys = keys_for(profile, ctx)?;
    let people = people_of(profile, text)?;
    let mut s = stream::Stream::new(text, None, keys.clone(), cuts);
    match &profile.body {
        BodyRules::Fhir(f) => {
            s.set_fhir(f);
            s.fhir_top()?;
        }
        BodyRules::Json(rules) => s.json_top(rules)?,
    }
    let (out, mut withheld) = s.into_output();
    let out = deidentify(profile, out, &people, &keys, &mut withheld)?;
    let (withheld, count) = withheld.finish();
    let body = if profile.shadow { None } else { Some(out) };
    Ok(Applied { body, withheld, count, shadow: profile.shadow, profile: Some(profile.name.clone()) })
}

/// The persons of an upstream body, when the profile's de-identification needs them (read
/// before minimization removes their names).
fn people_of(profile: &Profile, text: &[u8]) -> Result<deid::People, DenyReason> {
    match &profile.body {
        BodyRules::Fhir(f) if f.deid.as_ref().is_some_and(deid::Deid::needs_people) => Ok(deid::People::collect(text)?),
        _ => Ok(deid::People::default()),
    }
}

/// The profile's de-identification pass over the minimized body (a no-op without one).
fn deidentify(profile: &Profile, out: Vec<u8>, people: &deid::People, keys: &Keys, withheld: &mut Withheld) -> Result<Vec<u8>, DenyReason> {
    match &profile.body {
        BodyRules::Fhir(f) => match &f.deid {
            Some(d) => deid::apply(&out, d, people, keys, withheld),
            None => Ok(out),
        },
        BodyRules::Json(_) => Ok(out),
    }
}

/// Minimize a parsed body in place (the tree walker: the oracle the streaming engine is
/// tested against).
pub fn apply_value(profile: &Profile, value: &mut Value, ctx: &ApplyCtx<'_>) -> Result<Report, DenyReason> {
    let keys = keys_for(profile, ctx)?;
    let mut walker = Walker { fhir: None, keys, withheld: Withheld::default(), depth: 0 };
    match &profile.body {
        BodyRules::Fhir(f) => {
            walker.fhir = Some(f);
            walker.top(value)?;
        }
        BodyRules::Json(rules) => {
            let cur = Cursor::root(rules);
            match value {
                Value::Object(map) => walker.object(map, &cur)?,
                Value::Array(items) => {
                    for item in items {
                        let Value::Object(map) = item else {
                            return Err(DenyReason::ResponseUnexpectedShape);
                        };
                        walker.object(map, &cur)?;
                    }
                }
                _ => return Err(DenyReason::ResponseUnexpectedShape),
            }
        }
    }
    let (withheld, count) = walker.withheld.finish();
    Ok(Report { withheld, count })
}

/// Parse, minimize and re-serialize a whole body with the tree walker: the oracle [`apply`] is
/// tested against (`tests/minimize_differential.rs`, the `minimize_stream` fuzz target).
pub fn apply_tree(profile: &Profile, body: &[u8], ctx: &ApplyCtx<'_>, max_bytes: usize) -> Result<Applied, DenyReason> {
    let mut value = body::parse(body, max_bytes)?;
    release(profile, &mut value, ctx)
}

/// Minimize an already parsed body and build the [`Applied`] result.
pub fn release(profile: &Profile, value: &mut Value, ctx: &ApplyCtx<'_>) -> Result<Applied, DenyReason> {
    let people = match &profile.body {
        BodyRules::Fhir(f) if f.deid.is_some() => people_of(profile, &body::serialize(value)?)?,
        _ => deid::People::default(),
    };
    let mut report = apply_value(profile, value, ctx)?;
    let mut out = body::serialize(value)?;
    if matches!(&profile.body, BodyRules::Fhir(f) if f.deid.is_some()) {
        let mut more = Withheld::default();
        out = deidentify(profile, out, &people, &keys_for(profile, ctx)?, &mut more)?;
        let (paths, count) = more.finish();
        report.withheld.extend(paths);
        report.withheld.sort_unstable();
        report.withheld.dedup();
        report.count += count;
    }
    let body = if profile.shadow { None } else { Some(out) };
    Ok(Applied { body, withheld: report.withheld, count: report.count, shadow: profile.shadow, profile: Some(profile.name.clone()) })
}

/// Helpers for this module's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Compile one profile from its JSON (with `name` defaulted).
    pub fn profile(mut v: Value, fhir: bool) -> Profile {
        if v.get("name").is_none() {
            v["name"] = Value::from("test");
        }
        let doc = serde_json::from_value(serde_json::json!({"profiles": [v]})).unwrap();
        let set = compile_minimize(&doc, &crate::schema::ROOT.field("test"), fhir).unwrap();
        Profile::clone(&set.profiles[0])
    }

    /// Minimize `body` with `profile`; returns the output value and the report. Both engines
    /// run: the streaming one must release the same JSON (member order included), paths and
    /// count as the tree walker, or refuse for the same reason.
    pub fn run(profile: &Profile, body: Value) -> Result<(Value, Report), DenyReason> {
        let bytes = serde_json::to_vec(&body).unwrap();
        let mut body = body;
        let ctx = ApplyCtx {
            hmac_key: Some(b"0123456789abcdef0123456789abcdef"),
            now: crate::time::UnixSeconds::new(1_800_000_000),
            pseudonyms: None,
        };
        let tree = release(profile, &mut body, &ctx);
        let streamed = apply(profile, &bytes, &ctx, usize::MAX);
        match (&tree, &streamed) {
            (Ok(t), Ok(applied)) => {
                assert_eq!((&applied.withheld, applied.count), (&t.withheld, t.count), "withheld");
                let parse = |b: &Option<Vec<u8>>| {
                    b.as_ref().map(|b| {
                        serde_json::from_slice::<Value>(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b))).to_string()
                    })
                };
                assert_eq!(parse(&applied.body), parse(&t.body), "released JSON");
            }
            (Err(a), Err(b)) => assert_eq!(a, b, "refusal"),
            _ => panic!("tree {tree:?} vs stream {streamed:?}"),
        }
        let t = tree?;
        if let Some(out) = &t.body {
            body = serde_json::from_slice(out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)));
        }
        Ok((body, Report { withheld: t.withheld, count: t.count }))
    }
}
