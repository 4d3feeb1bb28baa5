//! Benchmarks of the pure core, natively (no Envoy, no V8): token verification per algorithm,
//! SMART scope parsing, the decision on a cache hit, and the patient-binding body check per KiB.
//! They make regressions visible without a proxy; absolute figures are native code and run
//! several times faster than the same code in V8 (see bench/RESULTS.md for the in-Envoy cost).
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID` on Linux), not wall time:
//! on a machine shared with other work, wall time mostly measures how often the thread waited.
//!
//!     cargo bench --bench core            # ~1 minute
//!     cargo bench --bench core -- --quick # a few seconds per benchmark

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use phi_guard::auth::{scope, verify, IssuerConfig, TokenCache};
use phi_guard::decision::{decide, ApplyCtx, CompartmentCheck, Expected, Request, ResponseCheck, ResponsePlan};
use phi_guard::time::UnixSeconds;
use serde_json::{json, Value};

/// The injected clock: the core never reads the wall clock.
const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);
const ISS: &str = "https://idp.phi-guard.test";
const AUD: &str = "https://fhir.phi-guard.test";
/// Clemente Kreiger, the demo patient (envoy/demo-data/README.md).
const PATIENT: &str = "d78af07c-9cb9-4f31-9b11-c45a28f2eec8";

fn file(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The demo issuer with the test JWKS (tests/keys/demo-jwks.json), exactly as the demo policy
/// compiles it.
fn issuer() -> IssuerConfig {
    let policy = phi_guard::policy::compile(&file("policies/smart-patient-app.json")).unwrap();
    policy.issuers.into_iter().next().unwrap()
}

/// A token like the demo app's, signed with a test key (tests/keys/, test-only).
fn token(alg: Algorithm) -> String {
    let (pem, kid) = match alg {
        Algorithm::RS256 => ("tests/keys/demo-rs256.key.pem", "demo-rs256"),
        Algorithm::ES256 => ("tests/keys/demo-es256.key.pem", "demo-es256"),
        Algorithm::EdDSA => ("tests/keys/demo-eddsa.key.pem", "demo-eddsa"),
        other => panic!("no test key for {other:?}"),
    };
    let pem = file(pem);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let claims = json!({
        "iss": ISS, "aud": AUD, "sub": "demo-user", "client_id": "demo-app",
        "iat": NOW.sub_secs(10), "exp": NOW.add_secs(3600), "jti": "bench",
        "scope": "launch/patient openid fhirUser patient/*.rs", "patient": PATIENT,
    });
    encode(&header, &claims, &key).unwrap()
}

const ALGORITHMS: [(&str, Algorithm); 3] = [("RS256", Algorithm::RS256), ("ES256", Algorithm::ES256), ("EdDSA", Algorithm::EdDSA)];

fn bench_verify(c: &mut Criterion<ThreadCpu>) {
    let issuers = [issuer()];
    let mut g = c.benchmark_group("verify");
    for (name, alg) in ALGORITHMS {
        let t = token(alg);
        assert!(verify(&t, &issuers, 8192, NOW).is_ok(), "{name} token must verify");
        g.bench_function(name, |b| b.iter(|| verify(black_box(&t), &issuers, 8192, NOW)));
    }
    g.finish();
}

fn bench_scope(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("scope_parse");
    for s in [
        "patient/Observation.rs",
        "user/*.cruds",
        "patient/Observation.read",
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory",
        "launch/patient",
    ] {
        assert_eq!(scope::parse(s).is_some(), s != "launch/patient");
        g.bench_with_input(BenchmarkId::from_parameter(s), s, |b, s| b.iter(|| scope::parse(black_box(s))));
    }
    g.finish();
}

fn bench_decide(c: &mut Criterion<ThreadCpu>) {
    let policy = phi_guard::policy::compile(&file("policies/smart-patient-app.json")).unwrap();
    let header = format!("Bearer {}", token(Algorithm::ES256));
    let headers = [header.as_str()];
    let mut g = c.benchmark_group("decide_cache_hit");
    for (name, path) in [
        ("patient_read", format!("/fhir/Patient/{PATIENT}")),
        ("observation_read", "/fhir/Observation/obs-1".to_owned()),
        ("observation_search", format!("/fhir/Observation?patient={PATIENT}&category=laboratory&_count=50")),
    ] {
        let mut cache = TokenCache::new(1024);
        let req = Request { method: "GET", path: &path, authorization: &headers, ..Default::default() };
        assert!(decide(&policy, &mut cache, &req, NOW).reason().is_none(), "{name} must be allowed");
        g.bench_function(name, |b| b.iter(|| decide(&policy, &mut cache, black_box(&req), NOW)));
    }
    g.finish();
}

/// Every resource of a Synthea record, `urn:uuid:` references left as they are.
fn synthea_resources() -> Vec<Value> {
    let mut out = Vec::new();
    for name in ["Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json", "Kermit_Trantow_f1a650a5-737e-4fd7-828e-03c3348b9524.json"] {
        let bundle: Value = serde_json::from_slice(&file(&format!("envoy/demo-data/synthea/{name}"))).unwrap();
        for e in bundle["entry"].as_array().unwrap() {
            out.push(e["resource"].clone());
        }
    }
    out
}

/// An Observation of the patient carrying Synthea resources as `contained` up to `target` bytes:
/// realistic FHIR JSON of a chosen size that passes the patient-binding check (as in bench/).
/// A searchset Bundle of about `target` bytes: the Synthea Observations, each of `PATIENT`.
fn searchset_body(resources: &[Value], target: usize) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut size = 64;
    for (i, r) in resources.iter().filter(|r| r["resourceType"] == "Observation").cycle().enumerate() {
        let mut obs = r.clone();
        obs["id"] = json!(format!("o{i}"));
        obs["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
        let entry = json!({"resource": obs, "search": {"mode": "match"}});
        size += serde_json::to_vec(&entry).unwrap().len() + 1;
        entries.push(entry);
        if size >= target {
            break;
        }
    }
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "searchset", "entry": entries})).unwrap()
}

fn bench_body_check(c: &mut Criterion<ThreadCpu>) {
    let resources = synthea_resources();
    let check = CompartmentCheck { patient: PATIENT.into(), shared: Vec::new().into(), expect: Expected::Searchset };
    let plan = ResponsePlan { checks: vec![ResponseCheck::Compartment(check)], max_body_bytes: usize::MAX, ..ResponsePlan::default() };
    let mut g = c.benchmark_group("patient_compartment_check");
    for kib in [1usize, 16, 64, 256] {
        let body = searchset_body(&resources, kib * 1024);
        assert_eq!(plan.apply(&body, &ApplyCtx::default()).map(|_| ()), Ok(()));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(format!("{kib}KiB")), &body, |b, body| {
            b.iter(|| plan.apply(black_box(body), &ApplyCtx::default()))
        });
        // The parse alone, to tell the check's own cost from it.
        g.bench_with_input(BenchmarkId::new("parse-only", format!("{kib}KiB")), &body, |b, body| {
            b.iter(|| phi_guard::minimize::body::parse(black_box(body), usize::MAX))
        });
    }
    g.finish();
}

/// CPU time of the calling thread.
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec; x86_64/aarch64 Linux use 64-bit fields.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Elsewhere: wall time since the first call.
#[cfg(not(target_os = "linux"))]
fn thread_cpu() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Criterion measurement: thread CPU time.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Formats nanoseconds of CPU time like criterion's wall-time formatter.
struct CpuFormatter;

impl CpuFormatter {
    fn unit(typical_ns: f64) -> (f64, &'static str) {
        if typical_ns < 1e3 {
            (1.0, "ns")
        } else if typical_ns < 1e6 {
            (1e-3, "µs")
        } else if typical_ns < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        }
    }
}

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = Self::unit(typical);
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, typical: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        // `values` are ns per iteration; report per second of CPU.
        let (per_iter, unit) = match *throughput {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => (b as f64 / (1024.0 * 1024.0), "MiB/s"),
            Throughput::Elements(e) | Throughput::ElementsAndBytes { elements: e, .. } => (e as f64, "elem/s"),
            Throughput::Bits(b) => (b as f64, "bit/s"),
        };
        let _ = typical;
        values.iter_mut().for_each(|v| *v = per_iter * 1e9 / *v);
        unit
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn config() -> Criterion<ThreadCpu> {
    Criterion::default()
        .with_measurement(ThreadCpu)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_verify, bench_scope, bench_decide, bench_body_check
}
criterion_main!(benches);
