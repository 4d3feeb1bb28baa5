//! Runs every scenario in `tests/scenarios/` through the core, and compiles every policy in
//! `policies/`. See `tests/scenarios/README.md` for the format.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::type_complexity)]

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phi_guard::auth::TokenCache;
use phi_guard::decision::{decide, Decision, Request};
use phi_guard::policy::compile;
use serde_json::Value;

const NOW: u64 = 1_800_000_000;

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
    match decision {
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
            let body = s.pointer("/upstream/body").map(|b| serde_json::to_vec(b).unwrap());
            let outcome = match &body {
                Some(b) if g.response.inspects_body() => g.response.check_body(b),
                _ => Ok(()),
            };
            match (outcome, want_reason) {
                (Ok(()), None) => {}
                (Err(r), Some(w)) if r.code() == w && expect["bodyReplaced"] == true => {}
                (o, w) => return Err(format!("response outcome {o:?}, expected {w:?}")),
            }
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
