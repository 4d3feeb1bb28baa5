//! Runs every scenario in `tests/scenarios/` through the core, and compiles every policy in
//! `policies/`. See `tests/scenarios/README.md` for the format.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::type_complexity)]

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phi_guard::audit::{AuditEvent, AuditKey, Verdict};
use phi_guard::policy::compile;
use phi_guard::simulate::{simulate, CredentialInput, Exchange, Phase, Sender, Upstream};
use phi_guard::time::UnixSeconds;
use serde_json::{json, Value};

const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);
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
                    "+" => Some(NOW.add_secs(n).as_secs()),
                    "-" => Some(NOW.sub_secs(n).as_secs()),
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

/// The origin DPoP scenarios address: the Envoy runner's plain listener, as its proofs name it.
const DPOP_ORIGIN: (&str, &str) = ("http", "fhir.phi-guard.test");

/// A scenario's DPoP proof (`dpop`: client key `ES256`/`EdDSA`; `htm`, `htu`, `iat`, `jti`
/// override the proof's claims) for its request and token.
fn dpop_proof(d: &Value, method: &str, path: &str, token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let (alg, file, x) = match d["key"].as_str().unwrap_or("ES256") {
        "EdDSA" => (Algorithm::EdDSA, "dpop-client-eddsa.key.pem", 1),
        _ => (Algorithm::ES256, "dpop-client-es256.key.pem", 0),
    };
    let jwks: Value = serde_json::from_slice(&std::fs::read(root().join("tests/keys/dpop-client-jwks.json")).unwrap()).unwrap();
    let mut jwk = jwks["keys"][x].clone();
    jwk.as_object_mut().unwrap().remove("kid");
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": format!("{alg:?}"), "jwk": jwk});
    let (scheme, host) = DPOP_ORIGIN;
    let mut claims = serde_json::json!({
        "jti": "scenario-proof", "htm": method, "htu": format!("{scheme}://{host}{}", path.split('?').next().unwrap()),
        "iat": "now-0", "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
    });
    for k in ["htm", "htu", "iat", "jti"] {
        if let Some(v) = d.get(k) {
            claims[k] = v.clone();
        }
    }
    resolve_times(&mut claims);
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let ctor = if alg == Algorithm::EdDSA { EncodingKey::from_ed_pem } else { EncodingKey::from_ec_pem };
    let key = ctor(&std::fs::read(root().join("tests/keys").join(file)).unwrap()).unwrap();
    format!("{input}.{}", jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).unwrap())
}

fn run(path: &Path) -> Result<(), String> {
    let s: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).map_err(|e| e.to_string())?;
    let mut policy = compile(&std::fs::read(root().join(s["policy"].as_str().unwrap())).unwrap()).map_err(|e| e.to_string())?;
    let expect = &s["expect"];
    let req = &s["request"];
    let token = match &s["token"] {
        Value::Null => None,
        t => Some(mint(t)),
    };
    // A scenario's `Authorization` header is sent as written; otherwise the minted token.
    let authorization = req.pointer("/headers/authorization").and_then(Value::as_str);
    let input = CredentialInput { authorization, token: token.as_deref().filter(|_| authorization.is_none()), ..Default::default() };
    let credential = input.prepare(&mut policy).map_err(|e| e.to_string())?;
    let body = match (s.pointer("/upstream/body"), s.pointer("/upstream/bodyFile").and_then(Value::as_str)) {
        (Some(b), _) => Some(serde_json::to_vec(b).unwrap()),
        (None, Some(f)) => Some(std::fs::read(root().join(f)).map_err(|e| format!("{f}: {e}"))?),
        (None, None) => None,
    };
    let upstream_status = s.pointer("/upstream/status").and_then(Value::as_u64).unwrap_or(200) as u16;
    let proof = match (&s["dpop"], &token) {
        (Value::Null, _) | (_, None) => None,
        (d, Some(t)) => Some(dpop_proof(d, req["method"].as_str().unwrap(), req["path"].as_str().unwrap(), t)),
    };
    let key = AuditKey::from_secret(AUDIT_KEY).unwrap();
    let out = simulate(
        &policy,
        &Exchange {
            method: req["method"].as_str().unwrap(),
            path: req["path"].as_str().unwrap(),
            credential: credential.credential(),
            upstream: body.as_deref().map(|b| Upstream {
                status: upstream_status,
                content_type: Some("application/fhir+json"),
                content_encoding: None,
                body: b,
            }),
            now: NOW,
            hmac_key: Some(HMAC_KEY),
            audit_key: &key,
            request_id: Some("scenario"),
            sender: Sender {
                dpop: proof.as_deref(),
                scheme: if proof.is_some() { DPOP_ORIGIN.0 } else { "https" },
                authority: DPOP_ORIGIN.1,
                client_certificate_sha256: None,
            },
        },
    );
    // An allowed request without an upstream answer stands for the upstream's 200.
    let status = out.status.unwrap_or(upstream_status);
    let want_status = expect["status"].as_u64().unwrap() as u16;
    let want_reason = expect["reason"].as_str();
    if status != want_status || out.reason != want_reason {
        return Err(format!("{:?} {status} {:?}, expected {want_status} {want_reason:?}", out.decision, out.reason));
    }
    if let Some(route) = expect["route"].as_str() {
        if out.route.as_deref() != Some(route) {
            return Err(format!("route {:?}, expected {route}", out.route));
        }
    }
    if let Some(w) = expect["wwwAuthenticate"].as_str() {
        let got = out.www_authenticate.as_deref().unwrap_or("");
        if !got.contains(w) {
            return Err(format!("WWW-Authenticate `{got}` lacks `{w}`"));
        }
    }
    // The upstream's body withheld and replaced by an error body: a response-phase refusal, or
    // an upstream error scrubbed on a route whose bodies are rewritten.
    let replaced = out.body_changed && (out.phase == Some(Phase::Response) || !(200..300).contains(&status));
    if replaced != (expect["bodyReplaced"] == true) && body.is_some() {
        return Err(format!("body replaced: {replaced}, expected {}", expect["bodyReplaced"]));
    }
    // Refusals never echo the request's credentials, minted or given as a header.
    let header_secret =
        req.pointer("/headers/authorization").and_then(Value::as_str).map(|h| h.split_once(' ').map_or(h, |(_, c)| c).to_owned());
    if let Some(t) = header_secret.as_ref().or(token.as_ref()) {
        if out.body.as_deref().unwrap_or("").contains(t.as_str()) || out.www_authenticate.as_deref().unwrap_or("").contains(t.as_str()) {
            return Err("reply echoes the token".into());
        }
    }
    if let (Some(sent), true) = (&out.body, body.is_some() && !replaced && out.decision == Verdict::Allow) {
        let sent: Value = serde_json::from_str(sent).map_err(|e| format!("released body: {e}"))?;
        check_body(expect, &sent, out.profile.as_deref())?;
    }
    check_audit(expect, &out.audit)
}

/// `expect.profile`, `expect.entries` (the released Bundle's `Type/id`s, in order),
/// `expect.absent` (top-level members the released body must not have), `expect.notInBody` /
/// `expect.inBody` (text the released JSON must not / must hold) and `expect.resolves` (every
/// reference in the released Bundle names one of its entries).
fn check_body(expect: &Value, sent: &Value, profile: Option<&str>) -> Result<(), String> {
    if let Some(p) = expect.get("profile") {
        if profile != p.as_str() {
            return Err(format!("profile {profile:?}, expected {p}"));
        }
    }
    if let Some(want) = expect.get("entries") {
        let got: Vec<Value> = sent["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                json!(format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap_or("?"), e["resource"]["id"].as_str().unwrap_or("?")))
            })
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
    let text = sent.to_string();
    for s in expect["notInBody"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if text.contains(s) {
            return Err(format!("released body contains `{s}`"));
        }
    }
    for s in expect["inBody"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !text.contains(s) {
            return Err(format!("released body lacks `{s}`"));
        }
    }
    if expect["resolves"] == json!(true) {
        let entries = sent["entry"].as_array().cloned().unwrap_or_default();
        let full: Vec<&str> = entries.iter().filter_map(|e| e["fullUrl"].as_str()).collect();
        for e in &entries {
            let mut refs = Vec::new();
            references(&e["resource"], &mut refs);
            for r in refs {
                if !full.iter().any(|f| f.ends_with(&format!("/{r}")) || *f == r) {
                    return Err(format!("reference `{r}` resolves to no entry"));
                }
            }
        }
    }
    Ok(())
}

/// Every `reference` string in a JSON tree.
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => references(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
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
    let failures: Vec<String> =
        files.iter().filter_map(|f| run(f).err().map(|e| format!("{}: {e}", f.file_name().unwrap().to_string_lossy()))).collect();
    eprintln!("scenarios: {} files, {} failures", files.len(), failures.len());
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn example_policies_compile() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        // Beside the policies: their JSON Schema (tests/policy_schema.rs).
        if path.extension().is_some_and(|e| e == "json") && !path.to_string_lossy().ends_with(".schema.json") {
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
