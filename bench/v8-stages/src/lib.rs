//! The stages of a cache-warm request, and signature verification per algorithm, as exports that
//! bench/v8_stages.mjs calls in a loop under Node.js's V8. Each `run` returns a value derived from
//! the work so the optimiser cannot drop it. Stage numbers are the order of `STAGES`.
//!
//! The stages named `200 KB read, …` take apart the response pipeline of a patient read of the
//! ~200 KB Observation the body-size sweep serves (`observation-200k.json`, written by
//! bench/fixtures.py: `make v8-stages` writes it and passes its path in `V8_STAGES_OBS_200K`).

use std::cell::RefCell;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phi_guard::audit::{AuditChain, AuditContext, AuditEvent, AuditKey, RequestMeta};
use phi_guard::auth::keys::parse_jwks;
use phi_guard::auth::{TokenCache, VerifyKey};
use phi_guard::decision::{decide, CompartmentCheck, Decision, Request, ResponseCheck, ResponsePlan};
use phi_guard::minimize::{ApplyCtx, Profile};
use phi_guard::policy::Policy;
use phi_guard::time::UnixSeconds;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};

const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);
const PATH: &str = "/fhir/Patient/d78af07c-9cb9-4f31-9b11-c45a28f2eec8";
const PATIENT: &str = "d78af07c-9cb9-4f31-9b11-c45a28f2eec8";
const POLICY: &[u8] = include_bytes!("../../../policies/smart-patient-app.json");
const JWKS: &str = include_str!("../../../tests/keys/demo-jwks.json");
const RS_KEY: &[u8] = include_bytes!("../../../tests/keys/demo-rs256.key.pem");
const ES_KEY: &[u8] = include_bytes!("../../../tests/keys/demo-es256.key.pem");
const ED_KEY: &[u8] = include_bytes!("../../../tests/keys/demo-eddsa.key.pem");
/// The demo patient, as the upstream answers the Patient read (bench/fixtures.py writes the same).
const PATIENT_BODY: &[u8] = include_bytes!("../../../envoy/demo-data/resources/hl7r4_Patient-example.json");
/// The sweep's ~200 KB Observation of the demo patient, the bytes the bench upstream serves.
const OBS_200K: &[u8] = include_bytes!(env!(
    "V8_STAGES_OBS_200K",
    "V8_STAGES_OBS_200K: the absolute path of observation-200k.json from `bench/fixtures.py DIR 200k`; `make v8-stages` sets it"
));
const OBS_200K_PATH: &str = "/fhir/Observation/bench-200k";
/// The first stage on the ~200 KB Observation; [`stages_bytes`] gives their body size.
const FIRST_200K: u32 = 18;

/// Stage names, in export order (bench/v8_stages.mjs reads them through `stages_name_*`).
pub const STAGES: [&str; 40] = [
    "cache key: SHA-256 of the token",
    "path normalisation",
    "decide, cache warm (normalise, route, cache lookup, scopes, FHIR model, compartment plan)",
    "audit event build (decision + response)",
    "audit chain seal (render the JSON line, HMAC)",
    "verify RS256 signature: ring",
    "verify RS256 signature: RustCrypto",
    "verify ES256 signature: ring",
    "verify ES256 signature: RustCrypto",
    "verify EdDSA signature: ring",
    "verify EdDSA signature: RustCrypto (ed25519-dalek)",
    "first-sight RS256 token: decide with an empty cache",
    "first-sight ES256 token: decide with an empty cache",
    "first-sight EdDSA token: decide with an empty cache",
    "token cache lookup, hit",
    "response phase, Patient read 3.3 KiB: compartment check + Content-Digest",
    "Content-Digest alone: SHA-512 of the 3.3 KiB body",
    "JSON validation alone: the 3.3 KiB body (json::validate, strict, no tree)",
    "200 KB read, copy in: allocate a Vec and copy the body (as get_buffer_bytes)",
    "200 KB read, tree: parse into a serde_json Value (and free it)",
    "200 KB read, tree: compartment check on the Value",
    "200 KB read, tree: minimize walk (apply_value, patient-app)",
    "200 KB read, tree: serialize the Value",
    "200 KB read, tree: ResponsePlan::release_tree, whole",
    "200 KB read, new: validate (json::validate, strict, no tree)",
    "200 KB read, new: ResponsePlan::release, whole",
    "200 KB read, digest: SHA-256 of the output",
    "200 KB read, digest: SHA-512 of the output",
    "200 KB read, audit: event build + chain seal",
    "200 KB read, new: compartment check over the raw bytes (CompartmentCheck::scan)",
    "200 KB read, new: minimize stream (minimize::release_text, patient-app)",
    "200 KB read, safe-harbor field rules only (release_text, preset without deidentify)",
    "200 KB read, safe-harbor preset: field rules + free-text scrubbing + pseudonyms (release_text)",
    "200 KB read, de-identification: persons collected from the body (People::collect)",
    "200 KB read, de-identification: the deid pass alone over the field rules' output",
    "DPoP: verify an ES256 proof (structure, jwk, signature, htm/htu/iat/ath, RFC 7638 thumbprint)",
    "DPoP: decide, bound token cache warm, with its proof (replay record not included)",
    "DPoP: decide, first-sight bound RS256 token, with its proof",
    "introspection: an active RFC 7662 answer read into a principal (parse, claim rules)",
    "DPoP: verify an EdDSA proof (as the ES256 one)",
];
/// The first stage after the ~200 KB Observation's.
const FIRST_AFTER_200K: u32 = 35;
const DPOP_KEY: &[u8] = include_bytes!("../../../tests/keys/dpop-client-es256.key.pem");
const DPOP_ED_KEY: &[u8] = include_bytes!("../../../tests/keys/dpop-client-eddsa.key.pem");
const DPOP_JWKS: &str = include_str!("../../../tests/keys/dpop-client-jwks.json");

/// A DPoP-bound token and a proof for the Patient read.
struct Dpop {
    token: String,
    proof: String,
    /// The same request's proof by the EdDSA client key (for a token bound to that key).
    ed_proof: String,
    answer: Vec<u8>,
}

struct State {
    dpop: Dpop,
    policy: Policy,
    tokens: [String; 3],
    keys: Vec<VerifyKey>,
    cache: TokenCache,
    audit_key: AuditKey,
    chain: AuditChain,
    event: AuditEvent,
    grant: Option<phi_guard::decision::Grant>,
    patient_body: Vec<u8>,
    obs: Obs,
}

/// The ~200 KB Observation read: its decision, its body parsed, and what it releases.
struct Obs {
    deid: Deid,
    decision: Decision,
    plan: ResponsePlan,
    check: CompartmentCheck,
    profile: Arc<Profile>,
    body: Vec<u8>,
    tree: Value,
    released: Vec<u8>,
    withheld: Vec<String>,
    digest: String,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn sign(alg: Algorithm, kid: &str, key: EncodingKey) -> String {
    let claims = json!({"iss": "https://idp.phi-guard.test", "aud": "https://fhir.phi-guard.test", "sub": "u1",
        "client_id": "bench", "scope": "launch/patient openid fhirUser patient/*.rs", "patient": PATIENT,
        "iat": NOW.sub_secs(10), "exp": NOW.add_secs(3600), "jti": "5b0f6c8e-2a7d-4c1e-9f3a-6d2e8b7c1a90"});
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims, &key).unwrap_or_default()
}

fn setup_state() -> Option<State> {
    let policy = phi_guard::policy::compile(POLICY).ok()?;
    let tokens = [
        sign(Algorithm::RS256, "demo-rs256", EncodingKey::from_rsa_pem(RS_KEY).ok()?),
        sign(Algorithm::ES256, "demo-es256", EncodingKey::from_ec_pem(ES_KEY).ok()?),
        sign(Algorithm::EdDSA, "demo-eddsa", EncodingKey::from_ed_pem(ED_KEY).ok()?),
    ];
    let jwks: Value = serde_json::from_str(JWKS).ok()?;
    let keys = parse_jwks(&jwks).ok()?;
    let audit_key = AuditKey::from_secret(b"bench-audit-key-0123456789abcdef").ok()?;
    let mut cache = TokenCache::new(1024);
    let d = decide_once(&policy, &mut cache, &tokens[0]);
    if !matches!(d, Decision::Allow(_)) {
        return None;
    }
    let event = event(&policy, &audit_key, &d);
    let chain = AuditChain::new([7; 16], audit_key.clone());
    let grant = match d {
        Decision::Allow(g) => Some(g),
        Decision::Deny(_) => None,
    };
    // The demo Patient resource, renamed to the token's patient so the compartment check passes.
    let mut patient: Value = serde_json::from_slice(PATIENT_BODY).ok()?;
    patient["id"] = json!(PATIENT);
    let patient_body = serde_json::to_vec(&patient).ok()?;
    let obs = setup_obs(&policy, &mut cache, &tokens[0], &audit_key)?;
    let dpop = setup_dpop(&policy, &mut cache)?;
    Some(State { dpop, policy, tokens, keys, cache, audit_key, chain, event, grant, patient_body, obs })
}

/// A token bound to the ES256 client key, a proof for the Patient read, and an introspection
/// answer with the demo token's claims; `None` unless the bound request is allowed.
fn setup_dpop(policy: &Policy, cache: &mut TokenCache) -> Option<Dpop> {
    let jwks: Value = serde_json::from_str(DPOP_JWKS).ok()?;
    let mut jwk = jwks["keys"][0].clone();
    jwk.as_object_mut()?.remove("kid");
    let jkt = phi_guard::auth::dpop::thumbprint(&jwk)?;
    let claims = json!({"iss": "https://idp.phi-guard.test", "aud": "https://fhir.phi-guard.test", "sub": "u1",
        "client_id": "bench", "scope": "launch/patient openid fhirUser patient/*.rs", "patient": PATIENT,
        "iat": NOW.sub_secs(10), "exp": NOW.add_secs(3600), "jti": "dpop-bench", "cnf": {"jkt": jkt}});
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("demo-rs256".into());
    let token = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_rsa_pem(RS_KEY).ok()?).ok()?;
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap_or_default())
    };
    let ath = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
    };
    let body = json!({"jti": "proof-1", "htm": "GET", "htu": format!("https://fhir.phi-guard.test{PATH}"), "iat": NOW.as_secs(), "ath": ath});
    let make = |alg: Algorithm, jwk: &Value, key: EncodingKey| -> Option<String> {
        let header = json!({"typ": "dpop+jwt", "alg": format!("{alg:?}"), "jwk": jwk});
        let input = format!("{}.{}", b64(&header), b64(&body));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).ok()?;
        Some(format!("{input}.{sig}"))
    };
    let proof = make(Algorithm::ES256, &jwk, EncodingKey::from_ec_pem(DPOP_KEY).ok()?)?;
    let mut ed_jwk = jwks["keys"][1].clone();
    ed_jwk.as_object_mut()?.remove("kid");
    let ed_proof = make(Algorithm::EdDSA, &ed_jwk, EncodingKey::from_ed_pem(DPOP_ED_KEY).ok()?)?;
    let mut answer = claims.clone();
    answer["active"] = json!(true);
    answer.as_object_mut()?.remove("cnf");
    let d = Dpop { token, proof, ed_proof, answer: serde_json::to_vec(&answer).ok()? };
    let issuer = policy.issuers.first()?;
    let introspected = match phi_guard::auth::introspect::parse_response(200, &d.answer, &issuer.issuer)? {
        phi_guard::auth::introspect::Introspected::Active(c) => phi_guard::auth::introspect::principal(&c, issuer, NOW).is_ok(),
        phi_guard::auth::introspect::Introspected::Inactive => false,
    };
    (introspected && matches!(decide_dpop(policy, cache, &d), Decision::Allow(_))).then_some(d)
}

fn decide_dpop(policy: &Policy, cache: &mut TokenCache, d: &Dpop) -> Decision {
    let header = format!("DPoP {}", d.token);
    let auth = [header.as_str()];
    let proofs = [d.proof.as_str()];
    let req = Request {
        method: "GET",
        path: PATH,
        authorization: &auth,
        header_count: 9,
        scheme: "https",
        authority: "fhir.phi-guard.test",
        dpop: &proofs,
        ..Default::default()
    };
    decide(policy, cache, &req, NOW)
}

/// The plan `decide` makes for a patient read of the ~200 KB Observation with the demo token;
/// `None` unless it checks the compartment and minimizes with `patient-app`, and the body
/// passes. The profile withholds nothing from this body, so walking the parsed tree again
/// repeats the same work (checked here).
fn setup_obs(policy: &Policy, cache: &mut TokenCache, token: &str, key: &AuditKey) -> Option<Obs> {
    let decision = decide_path(policy, cache, token, OBS_200K_PATH);
    let Decision::Allow(grant) = &decision else { return None };
    let plan = grant.response.clone();
    let ResponseCheck::Compartment(check) = plan.checks.first()?.clone();
    let profile = plan.minimize.clone().filter(|p| p.name == "patient-app")?;
    let ctx = ApplyCtx { hmac_key: None, now: NOW, pseudonyms: Some(key) };
    let applied = plan.release_tree(OBS_200K, &ctx).outcome.ok()?;
    let released = applied.body.unwrap_or_else(|| OBS_200K.to_vec());
    let mut tree = phi_guard::minimize::body::parse(OBS_200K, usize::MAX).ok()?;
    check.check(&tree).ok()?;
    let report = phi_guard::minimize::apply_value(&profile, &mut tree, &ctx).ok()?;
    if report.count != 0 {
        return None;
    }
    let digest = phi_guard::http::content_digest(&released);
    let deid = setup_deid()?;
    Some(Obs { deid, decision, plan, check, profile, body: OBS_200K.to_vec(), tree, released, withheld: applied.withheld, digest })
}

/// The key the de-identification stages pseudonymize under (as the demo Envoy's).
const HMAC_KEY: &[u8] = b"phi-guard-demo-hmac-key-not-a-secret";

/// The safe-harbor preset with and without its `deidentify` settings, and what the
/// de-identification pass alone reads: the persons of the body and the field rules' output.
struct Deid {
    plain: Profile,
    full: Profile,
    rules: phi_guard::minimize::deid::Deid,
    people: phi_guard::minimize::deid::People,
    minimized: Vec<u8>,
}

fn setup_deid() -> Option<Deid> {
    use phi_guard::minimize::compile::compile_rules;
    use phi_guard::minimize::profile::BodyRules;
    let loc = phi_guard::schema::ROOT.field("bench");
    let mut doc = phi_guard::minimize::preset::safe_harbor().ok()?;
    let with = compile_rules(&doc, &loc, true).ok()?;
    doc.deidentify = None;
    let without = compile_rules(&doc, &loc, true).ok()?;
    let profile = |name: &str, body| Profile { name: name.into(), when: Default::default(), shadow: false, safe_harbor: true, body };
    let rules = match &with {
        BodyRules::Fhir(f) => f.deid.clone()?,
        BodyRules::Json(_) => return None,
    };
    let (plain, full) = (profile("plain", without), profile("safe-harbor", with));
    let ctx = ApplyCtx { hmac_key: Some(HMAC_KEY), now: NOW, pseudonyms: None };
    let minimized = phi_guard::minimize::release_text(&plain, OBS_200K, &ctx, &Default::default()).ok()?.body?;
    let people = phi_guard::minimize::deid::People::collect(OBS_200K).ok()?;
    // The preset changes something in this body (ids at least), or the stage measures nothing.
    let out = phi_guard::minimize::release_text(&full, OBS_200K, &ctx, &Default::default()).ok()?.body?;
    (out != minimized).then_some(Deid { plain, full, rules, people, minimized })
}

fn decide_once(policy: &Policy, cache: &mut TokenCache, token: &str) -> Decision {
    decide_path(policy, cache, token, PATH)
}

fn decide_path(policy: &Policy, cache: &mut TokenCache, token: &str, path: &str) -> Decision {
    let header = format!("Bearer {token}");
    let auth = [header.as_str()];
    decide(policy, cache, &Request { method: "GET", path, authorization: &auth, header_count: 8, ..Default::default() }, NOW)
}

fn meta(path: &str) -> RequestMeta<'_> {
    RequestMeta {
        request_id: Some("0f3c2a9e-1b7d-4c55-9a0e-3c2f1b7d4c55"),
        source: Some("127.0.0.1:40000"),
        destination: Some("127.0.0.1:10000"),
        method: "GET",
        path,
    }
}

fn event(policy: &Policy, key: &AuditKey, d: &Decision) -> AuditEvent {
    AuditEvent::from_decision(d, &meta(PATH), &AuditContext::new(policy, key, NOW.to_millis())).with_response(200, Vec::new(), None)
}

/// Build the fixtures; 0 when ready.
#[no_mangle]
pub extern "C" fn stages_setup() -> u32 {
    let state = setup_state();
    let ok = state.is_some();
    STATE.with(|s| *s.borrow_mut() = state);
    if ok {
        0
    } else {
        1
    }
}

/// Where stage `i`'s name starts in linear memory (UTF-8, [`stages_name_len`] bytes); the
/// harness reads the names from here, so they are written once.
#[no_mangle]
pub extern "C" fn stages_name_ptr(i: u32) -> *const u8 {
    STAGES.get(i as usize).map_or(std::ptr::null(), |s| s.as_ptr())
}

/// The length of stage `i`'s name in bytes.
#[no_mangle]
pub extern "C" fn stages_name_len(i: u32) -> u32 {
    STAGES.get(i as usize).map_or(0, |s| s.len() as u32)
}

/// The size of the body stage `i` works on, in bytes (0: a stage without one).
#[no_mangle]
pub extern "C" fn stages_bytes(i: u32) -> u32 {
    if (FIRST_200K..FIRST_AFTER_200K).contains(&i) {
        OBS_200K.len() as u32
    } else {
        0
    }
}

/// Number of stages.
#[no_mangle]
pub extern "C" fn stages_count() -> u32 {
    STAGES.len() as u32
}

fn verify_sig(token: &str, keys: &[VerifyKey], alg: Algorithm, ring: bool) -> u32 {
    let Some((input, sig)) = token.rsplit_once('.') else { return 0 };
    let Some(k) = keys.iter().find(|k| k.accepts(alg)) else { return 0 };
    let ok = if ring {
        phi_guard::auth::crypto::verify(sig, input.as_bytes(), &k.key, alg)
    } else {
        jsonwebtoken::crypto::verify(sig, input.as_bytes(), &k.key, alg).unwrap_or(false)
    };
    u32::from(ok)
}

/// Run stage `stage` `n` times.
#[no_mangle]
pub extern "C" fn stages_run(stage: u32, n: u32) -> u32 {
    STATE.with(|s| {
        let mut guard = s.borrow_mut();
        let Some(st) = guard.as_mut() else { return 0 };
        let mut acc = 0u32;
        for _ in 0..n {
            acc = acc.wrapping_add(match stage {
                0 => u32::from(Sha256::digest(st.tokens[0].as_bytes())[0]),
                1 => phi_guard::http::normalize(PATH).map(|p| p.path().len() as u32).unwrap_or(0),
                2 => u32::from(matches!(decide_once(&st.policy, &mut st.cache, &st.tokens[0]), Decision::Allow(_))),
                3 => {
                    let d = decide_once(&st.policy, &mut st.cache, &st.tokens[0]);
                    let e = event(&st.policy, &st.audit_key, &d);
                    e.status.map_or(0, u32::from)
                }
                4 => {
                    let sealed = st.chain.seal(&st.event, &st.policy.audit);
                    sealed.line.len() as u32
                }
                5 => verify_sig(&st.tokens[0], &st.keys, Algorithm::RS256, true),
                6 => verify_sig(&st.tokens[0], &st.keys, Algorithm::RS256, false),
                7 => verify_sig(&st.tokens[1], &st.keys, Algorithm::ES256, true),
                8 => verify_sig(&st.tokens[1], &st.keys, Algorithm::ES256, false),
                9 => verify_sig(&st.tokens[2], &st.keys, Algorithm::EdDSA, true),
                10 => verify_sig(&st.tokens[2], &st.keys, Algorithm::EdDSA, false),
                11..=13 => {
                    let mut cold = TokenCache::new(4);
                    let t = &st.tokens[(stage - 11) as usize];
                    u32::from(matches!(decide_once(&st.policy, &mut cold, t), Decision::Allow(_)))
                }
                14 => u32::from(st.cache.get(&st.tokens[0], NOW).is_some()),
                15 => response_phase(st),
                16 => u32::from(phi_guard::http::content_digest(&st.patient_body).as_bytes()[9]),
                17 => {
                    u32::from(phi_guard::minimize::checked(&st.patient_body, 1 << 20).is_ok())
                }
                35 => {
                    let target = phi_guard::auth::dpop::ProofTarget { method: "GET", scheme: "https", authority: "fhir.phi-guard.test", path: PATH };
                    let settings = &st.policy.dpop;
                    phi_guard::auth::dpop::verify_proof(&st.dpop.proof, &target, &st.dpop.token, settings, NOW).map_or(0, |v| v.jkt.len() as u32)
                }
                36 => u32::from(matches!(decide_dpop(&st.policy, &mut st.cache, &st.dpop), Decision::Allow(_))),
                39 => {
                    let target = phi_guard::auth::dpop::ProofTarget { method: "GET", scheme: "https", authority: "fhir.phi-guard.test", path: PATH };
                    phi_guard::auth::dpop::verify_proof(&st.dpop.ed_proof, &target, &st.dpop.token, &st.policy.dpop, NOW).map_or(0, |v| v.jkt.len() as u32)
                }
                37 => {
                    let mut cold = TokenCache::new(4);
                    u32::from(matches!(decide_dpop(&st.policy, &mut cold, &st.dpop), Decision::Allow(_)))
                }
                38 => {
                    let issuer = st.policy.issuers.first();
                    let read = phi_guard::auth::introspect::parse_response(200, &st.dpop.answer, "https://idp.phi-guard.test");
                    match (read, issuer) {
                        (Some(phi_guard::auth::introspect::Introspected::Active(c)), Some(i)) => {
                            phi_guard::auth::introspect::principal(&c, i, NOW).map_or(0, |p| p.scopes.len() as u32)
                        }
                        _ => 0,
                    }
                }
                _ => obs_stage(st, stage.wrapping_sub(FIRST_200K)),
            });
        }
        acc
    })
}

fn response_phase(st: &State) -> u32 {
    use phi_guard::decision::{BodyStep, Released, ResponsePhase, UpstreamHead};
    let Some(g) = &st.grant else { return 0 };
    let mut phase = ResponsePhase::new(g.response.clone(), g.fhir_route, false);
    let body = &st.patient_body;
    let head = UpstreamHead {
        status: 200,
        content_type: Some("application/fhir+json"),
        content_encoding: None,
        content_length: Some(body.len()),
        end_of_stream: false,
    };
    let _ = phase.on_headers(&head);
    let ctx = phi_guard::minimize::ApplyCtx { hmac_key: None, now: NOW, pseudonyms: Some(&st.audit_key) };
    match phase.on_body(body.len(), true) {
        BodyStep::Release => match phase.release(body, &ctx) {
            Released::Body(b) => b.len() as u32,
            Released::Unchanged => u32::from(phase.content_digest().is_some()) + 1,
        },
        _ => 0,
    }
}

/// The stages on the ~200 KB Observation, from [`FIRST_200K`].
fn obs_stage(st: &mut State, i: u32) -> u32 {
    use std::hint::black_box;
    let ctx = ApplyCtx { hmac_key: None, now: NOW, pseudonyms: Some(&st.audit_key) };
    let o = &mut st.obs;
    match i {
        0 => {
            let copy = black_box(o.body.as_slice()).to_vec();
            u32::from(black_box(copy)[7])
        }
        1 => phi_guard::minimize::body::parse(&o.body, usize::MAX).map_or(0, |v| v.as_object().map_or(1, |m| m.len() as u32)),
        2 => u32::from(o.check.check(black_box(&o.tree)).is_ok()),
        3 => phi_guard::minimize::apply_value(&o.profile, black_box(&mut o.tree), &ctx).map_or(0, |r| r.count as u32 + 1),
        4 => phi_guard::minimize::body::serialize(black_box(&o.tree)).map_or(0, |b| b.len() as u32),
        5 => released_len(&o.plan.release_tree(black_box(&o.body), &ctx)),
        6 => u32::from(phi_guard::minimize::checked(black_box(&o.body), usize::MAX).is_ok()),
        7 => released_len(&o.plan.release(black_box(&o.body), &ctx)),
        8 => u32::from(Sha256::digest(black_box(&o.released))[0]),
        9 => u32::from(Sha512::digest(black_box(&o.released))[0]),
        10 => {
            // The digest is computed by the digest stages; the event records its text.
            let e = AuditEvent::from_decision(
                &o.decision,
                &meta(OBS_200K_PATH),
                &AuditContext::new(&st.policy, &st.audit_key, NOW.to_millis()),
            )
            .with_response(200, o.withheld.clone(), None)
            .with_content_digest(o.digest.clone());
            st.chain.seal(&e, &st.policy.audit).line.len() as u32
        }
        11 => u32::from(o.check.scan(black_box(&o.body)).is_ok()),
        12 => phi_guard::minimize::release_text(&o.profile, black_box(&o.body), &ctx, &Default::default())
            .map_or(0, |a| a.body.map_or(1, |b| b.len() as u32)),
        13 | 14 => {
            let ctx = ApplyCtx { hmac_key: Some(HMAC_KEY), now: NOW, pseudonyms: None };
            let p = if i == 13 { &o.deid.plain } else { &o.deid.full };
            phi_guard::minimize::release_text(p, black_box(&o.body), &ctx, &Default::default()).map_or(0, |a| a.body.map_or(1, |b| b.len() as u32))
        }
        15 => phi_guard::minimize::deid::People::collect(black_box(&o.body)).map_or(0, |p| p.words.len() as u32 + 1),
        16 => {
            use hmac::Mac;
            let keys = phi_guard::minimize::transform::Keys { hmac: hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC_KEY).ok(), now_year: 2027 };
            let mut w = phi_guard::minimize::withheld::Withheld::default();
            phi_guard::minimize::deid::apply(black_box(&o.deid.minimized), &o.deid.rules, &o.deid.people, &keys, &mut w).map_or(0, |b| b.len() as u32)
        }
        _ => 0,
    }
}

fn released_len(r: &phi_guard::decision::Release) -> u32 {
    match &r.outcome {
        Ok(a) => a.body.as_ref().map_or(1, |b| b.len() as u32),
        Err(_) => 0,
    }
}
