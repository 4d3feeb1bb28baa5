//! Runs every scenario in `tests/scenarios/` through the core, and compiles every policy in
//! `policies/`. See `tests/scenarios/README.md` for the format.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::type_complexity)]

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phi_guard::audit::{AuditContext, AuditEvent, AuditKey, RequestMeta};
use phi_guard::auth::TokenCache;
use phi_guard::decision::{decide, Applied, ApplyCtx, Decision, Release, Request};
use phi_guard::policy::compile;
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;
/// The demo audit key: the shipped policies name restricted patients by pseudonyms under it.
const AUDIT_KEY: &[u8] = b"phi-guard-demo-audit-key-not-a-secret";
const HMAC_KEY: &[u8] = b"scenario-only hmac key, 32 bytes";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn resolve_times(v: &mut Value) {
    match v {
        Value::String(s) => {
            let rel = s.strip_prefix("now").and_then(|r| {
                let (sign, n) = r.split_at(1.min(r.len()));
                let n: u64 = n.parse().ok()?;
                match sign {
                    "+" => Some(NOW + n),
                    "-" => Some(NOW - n),
                    _ => None,
                }
            });
            if let Some(t) = rel {
                *v = Value::from(t);
            }
        }
        Value::Object(m) => m.values_mut().for_each(resolve_times),
        Value::Array(a) => a.iter_mut().for_each(resolve_times),
        _ => {}
    }
}

fn mint(token: &Value) -> String {
    let alg: Algorithm = token["alg"].as_str().unwrap().parse().unwrap();
    let (file, key): (&str, fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>) = match alg {
        Algorithm::RS256 => ("demo-rs256.key.pem", EncodingKey::from_rsa_pem),
        Algorithm::ES256 => ("demo-es256.key.pem", EncodingKey::from_ec_pem),
        Algorithm::EdDSA => ("demo-eddsa.key.pem", EncodingKey::from_ed_pem),
        a => panic!("no test key for {a:?}"),
    };
    let key = key(&std::fs::read(root().join("tests/keys").join(file)).unwrap()).unwrap();
    let mut header = Header::new(alg);
    header.kid = token["kid"].as_str().map(str::to_owned);
    let mut claims = token["claims"].clone();
    resolve_times(&mut claims);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn run(path: &Path) -> Result<(), String> {
    let s: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).map_err(|e| e.to_string())?;
    let policy = compile(&std::fs::read(root().join(s["policy"].as_str().unwrap())).unwrap()).map_err(|e| e.to_string())?;
    let expect = &s["expect"];
    let req = &s["request"];
    let header = match (req.pointer("/headers/authorization"), &s["token"]) {
        (Some(h), _) => Some(h.as_str().unwrap().to_owned()),
        (None, Value::Null) => None,
        (None, t) => Some(format!("Bearer {}", mint(t))),
    };
    let auth: Vec<&str> = header.iter().map(String::as_str).collect();
    let request = Request { method: req["method"].as_str().unwrap(), path: req["path"].as_str().unwrap(), authorization: &auth, ..Default::default() };
    let decision = decide(&policy, &mut TokenCache::new(8), &request, NOW);
    let want_status = expect["status"].as_u64().unwrap() as u16;
    let want_reason = expect["reason"].as_str();
    let key = AuditKey::from_secret(AUDIT_KEY).unwrap();
    let meta = RequestMeta { request_id: Some("scenario"), source: None, destination: None, method: request.method, path: request.path };
    let mut event = AuditEvent::from_decision(&decision, &meta, &AuditContext::new(&policy, &key, NOW * 1000));
    match &decision {
        Decision::Deny(r) => {
            let reply = r.reply();
            if Some(r.reason.code()) != want_reason || reply.status != want_status {
                return Err(format!("denied {} {}, expected {want_status} {want_reason:?}", reply.status, r.reason.code()));
            }
            if let Some(w) = expect["wwwAuthenticate"].as_str() {
                let got = reply.headers.iter().find(|(k, _)| *k == "www-authenticate").map(|(_, v)| v.as_str()).unwrap_or("");
                if !got.contains(w) {
                    return Err(format!("WWW-Authenticate `{got}` lacks `{w}`"));
                }
            }
            if let Some(route) = expect["route"].as_str() {
                if r.route_id.as_deref() != Some(route) {
                    return Err(format!("route {:?}, expected {route}", r.route_id));
                }
            }
            // Refusals never echo the request's credentials.
            if let Some(h) = &header {
                let token = h.trim_start_matches("Bearer ");
                if reply.body.contains(token) || reply.headers.iter().any(|(_, v)| v.contains(token)) {
                    return Err("reply echoes the token".into());
                }
            }
        }
        Decision::Allow(g) => {
            if let Some(route) = expect["route"].as_str() {
                if g.route_id != route {
                    return Err(format!("route {}, expected {route}", g.route_id));
                }
            }
            let upstream_status = s.pointer("/upstream/status").and_then(Value::as_u64).unwrap_or(200) as u16;
            if upstream_status != want_status {
                return Err(format!("allowed with upstream status {upstream_status}, expected {want_status}"));
            }
            let body = match (s.pointer("/upstream/body"), s.pointer("/upstream/bodyFile").and_then(Value::as_str)) {
                (Some(b), _) => Some(serde_json::to_vec(b).unwrap()),
                (None, Some(f)) => Some(std::fs::read(root().join(f)).map_err(|e| format!("{f}: {e}"))?),
                (None, None) => None,
            };
            let ctx = ApplyCtx { hmac_key: Some(HMAC_KEY), now: NOW, pseudonyms: Some(&key) };
            let release = match &body {
                Some(b) if g.response.inspects_body() => g.response.release(b, &ctx),
                _ => Release { outcome: Ok(Applied::default()), restrictions: Vec::new() },
            };
            let failure = release.outcome.as_ref().err().copied();
            match (&release.outcome, want_reason) {
                (Ok(_), None) => {}
                (Err(r), Some(w)) if r.code() == w && expect["bodyReplaced"] == true => {}
                (o, w) => return Err(format!("response outcome {:?}, expected {w:?}", o.as_ref().map(|_| ()))),
            }
            if let (Ok(applied), Some(b)) = (&release.outcome, &body) {
                let sent: Value = serde_json::from_slice(applied.body.as_deref().unwrap_or(b)).unwrap();
                check_body(expect, &sent, applied)?;
            }
            let withheld = release.outcome.as_ref().map(|a| a.withheld.clone()).unwrap_or_default();
            event = event.with_response(upstream_status, withheld, failure).with_restrictions(release.restrictions);
        }
    }
    check_audit(expect, &event)
}

/// `expect.profile`, `expect.entries` (the released Bundle's `Type/id`s, in order) and
/// `expect.absent` (top-level members the released body must not have).
fn check_body(expect: &Value, sent: &Value, applied: &Applied) -> Result<(), String> {
    if let Some(p) = expect.get("profile") {
        if applied.profile.as_deref() != p.as_str() {
            return Err(format!("profile {:?}, expected {p}", applied.profile));
        }
    }
    if let Some(want) = expect.get("entries") {
        let got: Vec<Value> = sent["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| json!(format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap_or("?"), e["resource"]["id"].as_str().unwrap_or("?"))))
            .collect();
        if &Value::Array(got.clone()) != want {
            return Err(format!("released entries {got:?}, expected {want}"));
        }
    }
    for k in expect["absent"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if sent.get(k).is_some() {
            return Err(format!("released body still has `{k}`"));
        }
    }
    Ok(())
}

/// `expect.audit`: members the audit event (JSON lines form) must have, compared exactly.
fn check_audit(expect: &Value, event: &AuditEvent) -> Result<(), String> {
    let Some(want) = expect.get("audit").and_then(Value::as_object) else {
        return Ok(());
    };
    let got = serde_json::to_value(event).unwrap();
    for (k, v) in want {
        let have = got.get(k).unwrap_or(&Value::Null);
        if have != v {
            return Err(format!("audit `{k}` is {have}, expected {v}"));
        }
    }
    Ok(())
}

#[test]
fn scenarios() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "scenario files missing");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| run(f).err().map(|e| format!("{}: {e}", f.file_name().unwrap().to_string_lossy())))
        .collect();
    eprintln!("scenarios: {} files, {} failures", files.len(), failures.len());
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn example_policies_compile() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            compile(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn invalid_policies_fail_with_their_location() {
    let dir = root().join("tests/invalid-policies");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let want = std::fs::read_to_string(path.with_extension("error")).unwrap();
            let got = compile(&std::fs::read(&path).unwrap()).err().unwrap_or_else(|| panic!("{} compiled", path.display()));
            assert!(got.to_string().starts_with(want.trim()), "{}: got `{got}`, want `{}`", path.display(), want.trim());
            n += 1;
        }
    }
    assert!(n >= 3);
}
