//! JOSE test vectors nobody on the team wrote, run through phi-guard's own verifier
//! (`tests/fixtures/jose`, see its README for sources and licences).
//!
//! # Mapping
//!
//! - **JWS vectors** (Wycheproof `json_web_signature`, `json_web_key`, `json_web_crypto`; RFC 7520
//!   compact outputs): the vector's key (set) goes through [`parse_jwks`], as a policy's inline
//!   JWKS does, and the token through [`verify_signature`]: the JWS layer of `auth::verify`
//!   (structure, header rules, algorithm pinning, key selection, signature) without the claims
//!   checks, since vector payloads are not our claims. The pinned algorithms are every one a
//!   policy can pin, so a verdict never depends on a narrow policy. A key set phi-guard refuses
//!   cannot be put in a policy: the token is then run with no keys and must be refused there too.
//!   Wycheproof groups give a `public` key, or only a `private` one (symmetric keys): a verifier
//!   is handed what the group publishes. RFC 7520 gives private keys: their public members are
//!   used, as an identity provider would publish them.
//! - **Raw signature vectors** (Wycheproof RSA PKCS#1, PSS, ECDSA P1363, Ed25519): a message, a
//!   signature and a key, not a JWS; a JWS signing input is never an arbitrary message, so these
//!   cannot be re-encoded as tokens. The key still goes through [`parse_jwks`] (from the group's
//!   JWK, or its uncompressed EC point) and the message and base64url signature through
//!   [`verify_message`], the step [`verify_signature`] runs on a JWS signing input (key binding
//!   by algorithm, then the jsonwebtoken crypto call). ECDSA P1363 (`r || s`) is the JWS
//!   encoding, so the bytes are exactly what a token would carry.
//! - **Not applicable**: vectors for algorithms phi-guard never accepts (HS* and other
//!   shared-secret keys, `none`, ES512/P-521) are named as such and must be refused. The HMAC
//!   files are checked twice per vector: the key as an `oct` JWK must be refused, and the tag as
//!   an HS* JWS over the message must be refused by the verifier. JWE tokens must be refused.
//! - **Deliberate divergences**: [`DELIBERATE`] lists vectors Wycheproof calls valid that
//!   phi-guard refuses on purpose, with the reason.
//!
//! Every file prints `label: N vectors, A applicable, M mismatches, X not applicable (refused)`;
//! any mismatch, or any accepted non-applicable vector, fails the test.

// Test code: clippy.toml's allow-*-in-tests covers `#[test]` functions, not their helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use phi_guard::auth::keys::parse_jwks;
use phi_guard::auth::{verify_message, verify_signature, VerifyKey};
use phi_guard::decision::DenyReason;
use serde_json::{json, Map, Value};

/// Every algorithm a policy can pin: `policy::compile` refuses HS*, and there is no ES512.
const PINNABLE: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Vectors Wycheproof calls valid that phi-guard refuses on purpose: (file, tcId, why).
const DELIBERATE: [(&str, u64, &str); 2] = [
    (
        "json_web_signature_test.json",
        346,
        "the JWK pins `alg` PS256 and the JWS uses PS384: phi-guard never uses a key with an algorithm other than its `alg` (RFC 7517 §4.4, RFC 8725 §3.1)",
    ),
    (
        "json_web_signature_test.json",
        350,
        "the JWK pins `alg` PS256 and the JWS uses PS384: phi-guard never uses a key with an algorithm other than its `alg` (RFC 7517 §4.4, RFC 8725 §3.1)",
    ),
];

fn fixture(rel: &str) -> Value {
    let path = format!("{}/tests/fixtures/jose/{rel}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn demo_keys() -> Vec<VerifyKey> {
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/demo-jwks.json")).unwrap()).unwrap();
    parse_jwks(&jwks).unwrap()
}

/// What phi-guard did with a vector.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Accept,
    Reject(String),
}

impl Verdict {
    fn of(r: Result<(), DenyReason>) -> Self {
        match r {
            Ok(()) => Verdict::Accept,
            Err(reason) => Verdict::Reject(reason.code().to_owned()),
        }
    }
}

/// A JWK or a JWK set, as a set.
fn as_set(key: &Value) -> Value {
    if key.get("keys").is_some() {
        key.clone()
    } else {
        json!({ "keys": [key] })
    }
}

/// The public members of a JWK (what an identity provider publishes). Symmetric keys have none
/// and are returned as they are, for phi-guard to refuse.
fn public_part(key: &Value) -> Value {
    let mut k = key.clone();
    if k["kty"] != "oct" {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            k.as_object_mut().unwrap().remove(private);
        }
    }
    k
}

/// A compact token through phi-guard: the key set as a policy would load it, then the JWS layer
/// of the verifier.
fn jws_verdict(jwks: &Value, token: &str) -> Verdict {
    match parse_jwks(jwks) {
        Ok(keys) => Verdict::of(verify_signature(token, &keys, &PINNABLE).map(drop)),
        Err(e) => match verify_signature(token, &[], &PINNABLE) {
            Ok(_) => Verdict::Accept,
            Err(r) => Verdict::Reject(format!("key set refused ({e}); {}", r.code())),
        },
    }
}

/// The `alg` of a compact token's header, if it has a readable one.
fn token_alg(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    serde_json::from_slice::<Value>(&header).ok()?.get("alg")?.as_str().map(str::to_owned)
}

/// Why a vector needs something phi-guard never accepts, if it does.
fn not_applicable(jwks: &Value, alg: Option<&str>, expect_valid: bool) -> Option<String> {
    for k in jwks["keys"].as_array().into_iter().flatten() {
        if k["kty"] == "oct" {
            return Some(format!("shared-secret `oct` key (alg {}): phi-guard verifies with public keys only", k["alg"]));
        }
        if k["crv"] == "P-521" {
            return Some("P-521 key (ES512): not a supported curve".into());
        }
    }
    if expect_valid {
        match alg {
            Some(a) if a.starts_with("HS") => return Some(format!("shared-secret algorithm {a}")),
            Some(a) if a.eq_ignore_ascii_case("none") => return Some("unsigned (`none`)".into()),
            Some(a) if Algorithm::from_str(a).is_err() => return Some(format!("unsupported algorithm {a}")),
            _ => {}
        }
    }
    None
}

/// Per-file counts; panics at the end on any failure.
#[derive(Default)]
struct Tally {
    label: String,
    total: usize,
    matched: usize,
    acceptable: usize,
    not_applicable: BTreeMap<String, usize>,
    deliberate: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(label: &str) -> Self {
        Tally { label: label.to_owned(), ..Tally::default() }
    }

    /// Record a vector phi-guard should handle like any verifier.
    fn expect(&mut self, id: &str, result: &str, got: Verdict) {
        self.total += 1;
        match (result, &got) {
            ("valid", Verdict::Accept) | ("invalid", Verdict::Reject(_)) => self.matched += 1,
            ("acceptable", _) => self.acceptable += 1,
            _ => self.failures.push(format!("{id}: expected {result}, phi-guard gave {got:?}")),
        }
    }

    /// Record a vector that does not apply to phi-guard: it must be refused.
    fn refuse(&mut self, id: &str, why: &str, got: Verdict) {
        self.total += 1;
        *self.not_applicable.entry(why.to_owned()).or_default() += 1;
        if got == Verdict::Accept {
            self.failures.push(format!("{id}: not applicable ({why}) but ACCEPTED"));
        }
    }

    fn finish(self) {
        let na: usize = self.not_applicable.values().sum();
        let applicable = self.total - na - self.deliberate;
        let mut line = format!(
            "{}: {} vectors, {} applicable, {} mismatches, {} not applicable (refused)",
            self.label,
            self.total,
            applicable,
            self.failures.len(),
            na
        );
        if self.deliberate > 0 {
            line.push_str(&format!(", {} deliberate divergences (refused)", self.deliberate));
        }
        if self.acceptable > 0 {
            line.push_str(&format!(", {} 'acceptable' either way", self.acceptable));
        }
        println!("{line}");
        for (why, n) in &self.not_applicable {
            println!("    not applicable x{n}: {why}");
        }
        // The test harness captures print!/eprint!; write the summary to the real stderr so it
        // shows in a plain `cargo test` run too.
        let _ = writeln!(std::io::stderr(), "{line}");
        assert!(self.failures.is_empty(), "{}:\n{}", self.label, self.failures.join("\n"));
    }
}

/// Wycheproof files of compact JWS (and JWE) vectors with keys per group.
fn run_jose_file(file: &str, label: &str) {
    let doc = fixture(&format!("wycheproof/{file}"));
    let mut t = Tally::new(label);
    for group in doc["testGroups"].as_array().unwrap() {
        let jwks = as_set(group.get("public").unwrap_or(&group["private"]));
        for test in group["tests"].as_array().unwrap() {
            let id = format!("tcId {} ({})", test["tcId"], test["comment"].as_str().unwrap_or(""));
            let result = test["result"].as_str().unwrap();
            if let Some(jwe) = test.get("jwe") {
                let token = jwe.as_str().map_or_else(|| jwe.to_string(), str::to_owned);
                t.refuse(&id, "JWE: phi-guard accepts only compact JWS", jws_verdict(&jwks, &token));
                continue;
            }
            let jws = &test["jws"];
            // JSON serialization: handed over as the string a client would send.
            let token = jws.as_str().map_or_else(|| jws.to_string(), str::to_owned);
            let got = jws_verdict(&jwks, &token);
            let alg = token_alg(&token);
            if let Some((_, _, why)) = DELIBERATE.iter().find(|(f, tc, _)| *f == file && test["tcId"] == *tc) {
                assert_eq!(result, "valid", "{id}: listed as deliberate but not valid");
                t.total += 1;
                t.deliberate += 1;
                println!("    deliberate {id}: {why}");
                if got == Verdict::Accept {
                    t.failures.push(format!("{id}: deliberate divergence ({why}) but ACCEPTED"));
                }
            } else if let Some(why) = not_applicable(&jwks, alg.as_deref(), result == "valid") {
                t.refuse(&id, &why, got);
            } else {
                t.expect(&id, result, got);
            }
        }
    }
    t.finish();
}

#[test]
fn wycheproof_json_web_signature() {
    run_jose_file("json_web_signature_test.json", "wycheproof JWS");
}

#[test]
fn wycheproof_json_web_key() {
    run_jose_file("json_web_key_test.json", "wycheproof JWK");
}

#[test]
fn wycheproof_json_web_crypto() {
    run_jose_file("json_web_crypto_test.json", "wycheproof JWC");
}

#[test]
fn wycheproof_json_web_encryption() {
    run_jose_file("json_web_encryption_test.json", "wycheproof JWE");
}

/// The group's public key as a JWK: the file's own JWK, or one built from the uncompressed point.
fn group_jwk(group: &Value) -> Value {
    if let Some(jwk) = group.get("publicKeyJwk").or_else(|| group.get("keyJwk")) {
        return jwk.clone();
    }
    let pk = &group["publicKey"];
    let point = hex(pk["uncompressed"].as_str().unwrap());
    assert_eq!(point[0], 4, "uncompressed point");
    let (x, y) = point[1..].split_at((point.len() - 1) / 2);
    let crv = match pk["curve"].as_str().unwrap() {
        "secp256r1" => "P-256",
        "secp384r1" => "P-384",
        "secp521r1" => "P-521",
        c => panic!("curve {c}"),
    };
    json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)})
}

/// Raw (message, signature, key) vectors; `alg` is `None` for an algorithm phi-guard lacks.
fn run_raw_file(file: &str, label: &str, alg: Result<Algorithm, &str>) {
    let doc = fixture(&format!("wycheproof/{file}"));
    let mut t = Tally::new(label);
    for group in doc["testGroups"].as_array().unwrap() {
        let jwks = as_set(&group_jwk(group));
        let keys = parse_jwks(&jwks);
        for test in group["tests"].as_array().unwrap() {
            let id = format!("tcId {} ({})", test["tcId"], test["comment"].as_str().unwrap_or(""));
            let msg = hex(test["msg"].as_str().unwrap());
            let sig = b64(&hex(test["sig"].as_str().unwrap()));
            let got = match (&keys, alg) {
                (Ok(keys), Ok(alg)) => Verdict::of(verify_message(&msg, &sig, alg, None, keys)),
                (Err(e), _) => Verdict::Reject(format!("key refused: {e}")),
                (Ok(_), Err(a)) => panic!("{id}: phi-guard loaded a key for unsupported {a}"),
            };
            match alg {
                Ok(_) => t.expect(&id, test["result"].as_str().unwrap(), got),
                Err(a) => t.refuse(&id, &format!("{a}: not supported"), got),
            }
        }
    }
    t.finish();
}

#[test]
fn wycheproof_rsa_pkcs1() {
    run_raw_file("rsa_signature_2048_sha256_test.json", "wycheproof RS256", Ok(Algorithm::RS256));
    run_raw_file("rsa_signature_2048_sha384_test.json", "wycheproof RS384", Ok(Algorithm::RS384));
    run_raw_file("rsa_signature_2048_sha512_test.json", "wycheproof RS512", Ok(Algorithm::RS512));
}

#[test]
fn wycheproof_rsa_pss() {
    run_raw_file("rsa_pss_2048_sha256_mgf1_32_test.json", "wycheproof PS256", Ok(Algorithm::PS256));
    run_raw_file("rsa_pss_2048_sha384_mgf1_48_test.json", "wycheproof PS384", Ok(Algorithm::PS384));
}

#[test]
fn wycheproof_ecdsa_p1363() {
    run_raw_file("ecdsa_secp256r1_sha256_p1363_test.json", "wycheproof ES256", Ok(Algorithm::ES256));
    run_raw_file("ecdsa_secp384r1_sha384_p1363_test.json", "wycheproof ES384", Ok(Algorithm::ES384));
    run_raw_file("ecdsa_secp521r1_sha512_p1363_test.json", "wycheproof ES512", Err("ES512 (P-521)"));
}

#[test]
fn wycheproof_ed25519() {
    run_raw_file("ed25519_test.json", "wycheproof EdDSA", Ok(Algorithm::EdDSA));
}

/// HMAC vectors: phi-guard refuses shared secrets as keys and HS* as algorithms.
fn run_hmac_file(file: &str, label: &str, alg: &str) {
    let doc = fixture(&format!("wycheproof/{file}"));
    let mut t = Tally::new(label);
    let demo = demo_keys();
    for group in doc["testGroups"].as_array().unwrap() {
        for test in group["tests"].as_array().unwrap() {
            let id = format!("tcId {} ({})", test["tcId"], test["comment"].as_str().unwrap_or(""));
            let key = json!({"keys": [{"kty": "oct", "alg": alg, "k": b64(&hex(test["key"].as_str().unwrap()))}]});
            let key_verdict = parse_jwks(&key).map(drop);
            let token = format!(
                "{}.{}.{}",
                b64(json!({"alg": alg}).to_string().as_bytes()),
                b64(&hex(test["msg"].as_str().unwrap())),
                b64(&hex(test["tag"].as_str().unwrap()))
            );
            let token_verdict = verify_signature(&token, &demo, &PINNABLE).map(drop);
            let got = match (key_verdict, token_verdict) {
                (Err(_), Err(r)) => Verdict::Reject(r.code().to_owned()),
                _ => Verdict::Accept,
            };
            t.refuse(&id, &format!("shared-secret algorithm {alg} (key and token both refused)"), got);
        }
    }
    t.finish();
}

#[test]
fn wycheproof_hmac() {
    run_hmac_file("hmac_sha256_test.json", "wycheproof HS256", "HS256");
    run_hmac_file("hmac_sha384_test.json", "wycheproof HS384", "HS384");
    run_hmac_file("hmac_sha512_test.json", "wycheproof HS512", "HS512");
}

/// Flip one bit of one byte of a base64url segment's decoded bytes.
fn flip(segment: &str, at: usize) -> String {
    let mut bytes = URL_SAFE_NO_PAD.decode(segment).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    b64(&bytes)
}

/// A JSON value that may be stored as a string holding JSON (the cookbook does both).
fn json_value(v: &Value) -> Value {
    v.as_str().map_or_else(|| v.clone(), |s| serde_json::from_str(s).unwrap())
}

#[test]
fn rfc7520_jws_examples() {
    let mut t = Tally::new("RFC 7520 JWS");
    for file in [
        "jws/4_1.rsa_v15_signature.json",
        "jws/4_2.rsa-pss_signature.json",
        "jws/4_3.ecdsa_signature.json",
        "jws/4_4.hmac-sha2_integrity_protection.json",
        "jws/4_5.signature_with_detached_content.json",
        "jws/4_6.protecting_specific_header_fields.json",
        "jws/4_7.protecting_content_only.json",
        "jws/4_8.multiple_signatures.json",
        "curve25519/jws.json",
    ] {
        let doc = fixture(&format!("rfc7520/{file}"));
        let keys = match json_value(&doc["input"]["key"]) {
            Value::Array(list) => list,
            key => vec![key],
        };
        let algs: Vec<String> = match &doc["input"]["alg"] {
            Value::Array(list) => list.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
            a => vec![a.as_str().unwrap().to_owned()],
        };
        let signings = match &doc["signing"] {
            Value::Array(list) => list.clone(),
            s => vec![s.clone()],
        };
        assert_eq!((keys.len(), algs.len()), (signings.len(), signings.len()), "{file}");

        // Every signature as a compact JWS: the cookbook's own compact output where it has one,
        // otherwise (JSON-only examples) the signing input and the signature.
        for ((key, alg), signing) in keys.iter().zip(&algs).zip(&signings) {
            let jwks = as_set(&public_part(key));
            let rebuilt = format!("{}.{}", signing["sig-input"].as_str().unwrap(), signing["sig"].as_str().unwrap());
            let mut tokens = vec![("signing input + signature".to_owned(), rebuilt.clone())];
            if let Some(compact) = doc["output"]["compact"].as_str() {
                if compact != rebuilt {
                    // Only the detached-content example differs: its payload segment is empty.
                    assert_eq!(file, "jws/4_5.signature_with_detached_content.json", "{file}: compact output differs");
                    tokens.push(("compact (detached payload)".to_owned(), compact.to_owned()));
                }
            }
            let supported = Algorithm::from_str(alg).is_ok_and(|a| PINNABLE.contains(&a));
            for (what, token) in tokens {
                let id = format!("{file} {alg} {what}");
                let got = jws_verdict(&jwks, &token);
                if !supported {
                    t.refuse(&id, &format!("{alg}: not supported"), got);
                } else {
                    t.expect(&id, "valid", got);
                    // Tampered copies must fail the signature, whatever byte changed.
                    let parts: Vec<&str> = token.split('.').collect();
                    let (h, p, s) = (parts[0], parts[1], parts[2]);
                    let mut header: Map<String, Value> = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
                    header.insert("tampered".into(), json!(true));
                    let extra = b64(serde_json::to_string(&header).unwrap().as_bytes());
                    for (how, bad) in [
                        ("payload byte flipped", format!("{h}.{}.{s}", flip(p, p.len() / 3))),
                        ("first payload byte flipped", format!("{h}.{}.{s}", flip(p, 0))),
                        ("signature byte flipped", format!("{h}.{p}.{}", flip(s, s.len() / 3))),
                        ("last signature byte flipped", format!("{h}.{p}.{}", flip(s, usize::MAX))),
                        ("header member added", format!("{extra}.{p}.{s}")),
                    ] {
                        let bad_verdict = jws_verdict(&jwks, &bad);
                        t.expect(&format!("{id} tampered: {how}"), "invalid", bad_verdict.clone());
                        assert_eq!(bad_verdict, Verdict::Reject("bad_signature".into()), "{id} tampered: {how}");
                    }
                }
            }
        }
        // JSON serializations: phi-guard takes compact bearer tokens only.
        for form in ["json", "json_flat"] {
            if let Some(v) = doc["output"].get(form) {
                let jwks = as_set(&public_part(&keys[0]));
                t.refuse(&format!("{file} {form}"), "JSON serialization: compact JWT only", jws_verdict(&jwks, &v.to_string()));
            }
        }
    }
    t.finish();
}
