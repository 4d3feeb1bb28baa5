//! Differential test of the streaming minimizer against the tree engine kept as its oracle:
//! `minimize::apply` vs `minimize::apply_tree`, and `ResponsePlan::release` vs
//! `ResponsePlan::release_tree`, on real FHIR data. The agreement rule (same refusal, or same
//! withheld paths, count, shadow flag, profile and the same JSON in the same member order; a
//! duplicate key must be refused by the engine) is `tests/differential/mod.rs`, shared with the
//! `minimize_stream` fuzz target.
//!
//! Bodies: every `.json` file under `../shared/data/fhir/` (relative to the repository root;
//! `PHI_GUARD_FHIR_DATA` overrides it; skipped with a note when absent) up to 8 MB, and every
//! FHIR resource (`.json` with a string `resourceType`) under `tests/fixtures/{fhir,minimize,
//! restrictions}/`; byte-identical copies run once. Each body also runs as variants that stress a
//! streaming parser: `pretty` (whitespace in every place JSON allows it), `reversed` (every
//! object's members in reverse order: `resourceType` last, `_x` before `x`), `escaped` (the first
//! character of every key and string as a `\uXXXX` escape, `/` as `\/`, everything outside ASCII
//! escaped) and, for Bundles, `contained` (each entry's resource moved into the `contained` of a
//! wrapper Observation); the original bytes also run with a cap one byte short.
//!
//! Profiles: every route profile of `policies/*.json`, the `safe-harbor` preset and the fuzz
//! profiles of `fuzz/fuzz_targets/profiles.rs` (included by path), with a fixed HMAC key and
//! `now`.
//!
//! Response plans: each Synthea bundle made into the searchset a FHIR server would answer
//! (`urn:uuid:` references resolved to `Type/id`, `type` `searchset`, entries the patient's
//! compartment check would refuse left out, some resources labelled `PSY`), checked for its
//! patient, as a search and as reads of one Observation, with and without a profile (shadow
//! included) and privacy restrictions; and refusals: another patient's entry slipped in, another
//! patient's token, a read answered with another id, a released body over the cap.
//!
//! Runtime: 11 to 17 s in a debug build on two cores (`cargo test -j2 --test
//! minimize_differential`), most of it the three Synthea bundles: short enough that every file,
//! variant and plan runs in every build. Each test prints its count of comparisons, its time and
//! what the oracle did (`-- --nocapture`).
//!
//! Each difference is reported on one line (file, variant, profile or plan); the test fails at
//! the end if there is any.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "differential/mod.rs"]
mod differential;

#[path = "../fuzz/fuzz_targets/profiles.rs"]
mod fuzz_profiles;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use phi_guard::audit_key::PatientIds;
use phi_guard::decision::{CompartmentCheck, Expected, ResponseCheck, ResponsePlan};
use phi_guard::minimize::restrict::{Label, RestrictPlan, Restriction, Restrictions};
use phi_guard::minimize::{self, ApplyCtx, Profile};
use phi_guard::time::UnixSeconds;
use serde_json::{json, Value};

use differential::{applied_diff, first_duplicate_key, release_diff};

const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);
const KEY: &[u8] = b"differential-test hmac key, 32b!";
/// Larger than every body and variant: only the `over-cap` run is refused for its size.
const CAP: usize = 64 << 20;
/// Files over this size are left out.
const MAX_FILE: u64 = 8 << 20;
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

fn ctx() -> ApplyCtx<'static> {
    ApplyCtx { hmac_key: Some(KEY), now: NOW, pseudonyms: None }
}

// --- bodies -------------------------------------------------------------------------------------

/// One input file.
struct Source {
    /// Path shown in reports.
    label: String,
    bytes: Vec<u8>,
}

impl Source {
    fn synthea(&self) -> bool {
        self.label.contains("/synthea/")
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") && path.metadata().unwrap().len() <= MAX_FILE {
            out.push(path);
        }
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn parsed(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(strip_bom(bytes)).ok()
}

/// Every input file, each distinct content once, in a stable order.
fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    let shared = std::env::var_os("PHI_GUARD_FHIR_DATA").map_or_else(|| repo().join("../shared/data/fhir"), PathBuf::from);
    if shared.is_dir() {
        let mut all = Vec::new();
        json_files(&shared, &mut all);
        files.extend(all.into_iter().map(|p| (p, false)));
    } else {
        eprintln!("{}: not found, only tests/fixtures runs", shared.display());
    }
    for dir in ["fhir", "minimize", "restrictions"] {
        let mut all = Vec::new();
        json_files(&repo().join("tests/fixtures").join(dir), &mut all);
        files.extend(all.into_iter().map(|p| (p, true)));
    }
    let mut seen: HashMap<Vec<u8>, String> = HashMap::new();
    let mut out = Vec::new();
    for (path, must_be_resource) in files {
        let bytes = std::fs::read(&path).unwrap();
        if must_be_resource && !parsed(&bytes).is_some_and(|v| v.get("resourceType").is_some_and(Value::is_string)) {
            continue;
        }
        let label = path.strip_prefix(repo()).unwrap_or(&path).display().to_string();
        if seen.contains_key(&bytes) {
            continue;
        }
        seen.insert(bytes.clone(), label.clone());
        out.push(Source { label, bytes });
    }
    assert!(out.len() >= 20, "expected the FHIR fixtures, found {} files", out.len());
    out
}

/// Members in reverse order, at every level.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().rev().map(|(k, x)| (k.clone(), reversed(x))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

/// JSON with whitespace before and after every token, cycling through every kind.
fn spaced(v: &Value) -> Vec<u8> {
    const WS: [&str; 6] = [" ", "\n", "\t", "\r\n  ", " \t\r\n", "    "];
    fn ws(n: &mut usize, out: &mut String) {
        *n += 1;
        out.push_str(WS[*n % WS.len()]);
    }
    fn write(v: &Value, n: &mut usize, out: &mut String) {
        match v {
            Value::Object(m) => {
                out.push('{');
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(n, out);
                    out.push_str(&Value::from(k.as_str()).to_string());
                    ws(n, out);
                    out.push(':');
                    ws(n, out);
                    write(x, n, out);
                    ws(n, out);
                }
                if m.is_empty() {
                    ws(n, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(n, out);
                    write(x, n, out);
                    ws(n, out);
                }
                if a.is_empty() {
                    ws(n, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut n = 0;
    let mut out = String::new();
    ws(&mut n, &mut out);
    write(v, &mut n, &mut out);
    ws(&mut n, &mut out);
    out.into_bytes()
}

/// Compact JSON whose keys and strings are spelled with escapes: the first character of each as
/// `\uXXXX`, `/` as `\/`, and everything outside ASCII as UTF-16 escapes.
fn escaped(v: &Value) -> Vec<u8> {
    fn string(s: &str, out: &mut String) {
        out.push('"');
        for (i, c) in s.chars().enumerate() {
            match c {
                _ if i == 0 || !c.is_ascii() => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                '/' => out.push_str("\\/"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                out.push('{');
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    string(k, out);
                    out.push(':');
                    write(x, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            Value::String(s) => string(s, out),
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out.into_bytes()
}

/// A Bundle whose every entry resource sits in the `contained` of a wrapper Observation.
fn contained_in_observations(bundle: &Value) -> Option<Value> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return None;
    }
    let mut out = bundle.clone();
    let entries = out.get_mut("entry")?.as_array_mut()?;
    for (i, entry) in entries.iter_mut().enumerate() {
        if let Some(resource) = entry.get_mut("resource") {
            let inner = resource.take();
            *resource = json!({"resourceType": "Observation", "id": format!("wrapper-{i}"), "status": "final",
                               "code": {"text": "wrapper"}, "contained": [inner]});
        }
    }
    Some(out)
}

/// The body as it is, then its variants (none when it is not JSON).
fn variants(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![("original", bytes.to_vec())];
    let Some(v) = parsed(bytes) else {
        return out;
    };
    out.push(("pretty", spaced(&v)));
    out.push(("reversed", serde_json::to_vec(&reversed(&v)).unwrap()));
    out.push(("escaped", escaped(&v)));
    if let Some(c) = contained_in_observations(&v) {
        out.push(("contained", serde_json::to_vec(&c).unwrap()));
    }
    out
}

// --- profiles -----------------------------------------------------------------------------------

/// Every profile with a report name: `policy/route/profile` for route profiles.
fn profiles() -> Vec<(String, Arc<Profile>)> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    json_files(&repo().join("policies"), &mut files);
    // Beside the policies: their JSON Schema.
    files.retain(|p| !p.to_string_lossy().ends_with(".schema.json"));
    for path in files {
        let policy = phi_guard::policy::compile(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        for route in &policy.routes {
            for p in route.minimize.iter().flat_map(|set| set.profiles.iter()) {
                out.push((format!("{stem}/{}/{}", route.id, p.name), p.clone()));
            }
        }
    }
    assert!(out.len() >= 6, "expected the example policies' profiles, found {}", out.len());
    out.extend(fuzz_profiles::extra().into_iter().map(|p| (p.name.clone(), p)));
    out
}

fn profile(all: &[(String, Arc<Profile>)], name: &str) -> Arc<Profile> {
    all.iter().find(|(_, p)| p.name == name).map(|(_, p)| p.clone()).unwrap_or_else(|| panic!("no profile `{name}`"))
}

// --- running ------------------------------------------------------------------------------------

/// Differences, and what the oracle did (for the summary).
#[derive(Default)]
struct Tally {
    diffs: Vec<String>,
    outcomes: BTreeMap<String, usize>,
    runs: usize,
}

impl Tally {
    fn record(&mut self, oracle: &Result<minimize::Applied, phi_guard::decision::DenyReason>, diff: Option<String>, what: String) {
        self.runs += 1;
        let outcome = match oracle {
            Ok(a) if a.body.is_none() => "released unchanged".to_owned(),
            Ok(_) => "released".to_owned(),
            Err(r) => format!("refused {}", r.code()),
        };
        *self.outcomes.entry(outcome).or_default() += 1;
        if let Some(d) = diff {
            self.diffs.push(format!("{what}: {d}"));
        }
    }

    fn finish(self, test: &str, started: Instant) {
        eprintln!("{test}: {} comparisons in {:.1?}; the oracle: {:?}", self.runs, started.elapsed(), self.outcomes);
        for d in &self.diffs {
            eprintln!("DIFF {d}");
        }
        assert!(self.diffs.is_empty(), "{test}: {} of {} comparisons differ (lines above)", self.diffs.len(), self.runs);
    }
}

fn compare_apply(sources: &[&Source], tally: &mut Tally) {
    let profiles = profiles();
    let ctx = ctx();
    for source in sources {
        for (variant, body) in variants(&source.bytes) {
            let duplicate = first_duplicate_key(&body, CAP);
            for (name, p) in &profiles {
                let engine = minimize::apply(p, &body, &ctx, CAP);
                let oracle = minimize::apply_tree(p, &body, &ctx, CAP);
                let diff = applied_diff(&engine, &oracle, duplicate.as_deref());
                tally.record(&oracle, diff, format!("{} [{variant}] {name}", source.label));
            }
        }
        // One byte over the cap.
        let cap = source.bytes.len().saturating_sub(1);
        for (name, p) in &profiles {
            let engine = minimize::apply(p, &source.bytes, &ctx, cap);
            let oracle = minimize::apply_tree(p, &source.bytes, &ctx, cap);
            tally.record(&oracle, applied_diff(&engine, &oracle, None), format!("{} [over-cap] {name}", source.label));
        }
    }
}

#[test]
fn apply_agrees_on_resources_and_bundles() {
    let started = Instant::now();
    let sources = sources();
    let small: Vec<&Source> = sources.iter().filter(|s| !s.synthea()).collect();
    let mut tally = Tally::default();
    compare_apply(&small, &mut tally);
    tally.finish("apply_agrees_on_resources_and_bundles", started);
}

#[test]
fn apply_agrees_on_synthea_bundles() {
    let started = Instant::now();
    let sources = sources();
    let synthea: Vec<&Source> = sources.iter().filter(|s| s.synthea()).collect();
    assert!(!synthea.is_empty(), "no Synthea bundle");
    let mut tally = Tally::default();
    compare_apply(&synthea, &mut tally);
    tally.finish("apply_agrees_on_synthea_bundles", started);
}

// --- response plans -----------------------------------------------------------------------------

/// A Synthea bundle as a FHIR server's search answer for its patient.
struct Search {
    patient: String,
    /// The entries the compartment check releases (`urn:uuid:` references resolved to `Type/id`,
    /// some labelled), `type` `searchset`.
    searchset: Value,
    /// The same with another patient's Observation near the end.
    stranger: Value,
    /// An Observation without a label and one with, each as a read would return it.
    reads: Vec<(&'static str, Value)>,
}

fn shared_types() -> Arc<[&'static str]> {
    vec!["Medication", "Organization", "Practitioner"].into()
}

fn compartment(patient: &str, expect: Expected) -> CompartmentCheck {
    CompartmentCheck { patient: patient.to_owned(), shared: shared_types(), expect }
}

fn label(resource: &mut Value) {
    let meta = resource.as_object_mut().unwrap().entry("meta").or_insert_with(|| json!({}));
    let security = meta.as_object_mut().unwrap().entry("security").or_insert_with(|| json!([]));
    security.as_array_mut().unwrap().push(json!({"system": ACT_CODE, "code": "PSY"}));
}

fn resolve_references(v: &mut Value, urls: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if k == "reference" => {
                        if let Some(r) = urls.get(s.as_str()) {
                            *s = r.clone();
                        }
                    }
                    _ => resolve_references(x, urls),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| resolve_references(x, urls)),
        _ => {}
    }
}

fn search(bundle: &Value) -> Search {
    let entries = bundle["entry"].as_array().unwrap();
    let urls: HashMap<String, String> = entries
        .iter()
        .filter_map(|e| {
            let r = &e["resource"];
            Some((e["fullUrl"].as_str()?.to_owned(), format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?)))
        })
        .collect();
    let mut v = bundle.clone();
    resolve_references(&mut v, &urls);
    v["type"] = json!("searchset");
    let patient =
        entries.iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap()["resource"]["id"].as_str().unwrap().to_owned();
    let mut labelled_contained = false;
    for (i, entry) in v["entry"].as_array_mut().unwrap().iter_mut().enumerate() {
        let e = entry.as_object_mut().unwrap();
        e.shift_remove("request");
        e.insert("search".to_owned(), json!({"mode": "match"}));
        let resource = &mut e["resource"];
        let rt = resource["resourceType"].as_str().unwrap().to_owned();
        if i % 6 == 1 && !["Patient", "Organization", "Practitioner"].contains(&rt.as_str()) {
            label(resource);
        } else if !labelled_contained && resource.get("contained").is_some_and(Value::is_array) {
            // A label on a contained resource withholds its container.
            label(&mut resource["contained"][0]);
            labelled_contained = true;
        }
    }
    let check = compartment(&patient, Expected::Searchset);
    let mut searchset = v;
    searchset["entry"].as_array_mut().unwrap().retain(|e| {
        let one = json!({"resourceType": "Bundle", "type": "searchset", "entry": [e]});
        check.check(&one).is_ok()
    });
    // Another patient's Observation near the end: the check must refuse the whole answer.
    let mut stranger = searchset;
    let entries = stranger["entry"].as_array_mut().unwrap();
    let mut theirs = entries.iter().find(|e| e["resource"]["resourceType"] == "Observation").unwrap().clone();
    theirs["resource"]["id"] = json!("stranger");
    theirs["resource"]["subject"] = json!({"reference": "Patient/someone-else"});
    entries.insert(entries.len() - 1, theirs);
    let searchset = {
        let mut s = stranger.clone();
        s["entry"].as_array_mut().unwrap().retain(|e| e["resource"]["id"] != "stranger");
        s
    };
    let is_labelled = |r: &Value| r["meta"]["security"].as_array().is_some_and(|a| a.iter().any(|l| l["code"] == "PSY"));
    let observations: Vec<&Value> =
        searchset["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).filter(|r| r["resourceType"] == "Observation").collect();
    let plain = observations.iter().find(|r| !is_labelled(r)).map(|r| (*r).clone());
    let marked = observations.iter().find(|r| is_labelled(r)).map(|r| (*r).clone());
    let reads = [("read", plain), ("read-labelled", marked)].into_iter().filter_map(|(n, r)| Some((n, r?))).collect();
    Search { patient, stranger, searchset, reads }
}

fn restrictions(patient: &str, ids: PatientIds) -> Restrictions {
    Restrictions {
        list: vec![Arc::new(Restriction {
            id: "r-psy".into(),
            patient: patient.to_owned(),
            labels: vec![Label { system: ACT_CODE.into(), code: "PSY".into() }],
            allow_purposes: vec![],
            routes: vec![],
        })],
        patient_ids: ids,
    }
}

/// The restriction settings a plan runs with.
fn restrict_plans(patient: &str) -> Vec<(&'static str, Option<RestrictPlan>)> {
    let raw = restrictions(patient, PatientIds::Raw);
    vec![
        ("no restrictions", None),
        ("restricted", raw.plan("fhir", &[], None)),
        ("restricted, patient in context", raw.plan("fhir", &[], Some(patient))),
        // Patients named by pseudonym, and no audit key to recognise them: fail closed.
        (
            "restricted by pseudonym, no key",
            restrictions("ps1-00000000000000000000000000000000", PatientIds::Pseudonym).plan("fhir", &[], None),
        ),
    ]
}

fn plan(check: CompartmentCheck, profile: Option<Arc<Profile>>, restrict: Option<RestrictPlan>) -> ResponsePlan {
    ResponsePlan { checks: vec![ResponseCheck::Compartment(check)], minimize: profile, max_body_bytes: CAP, restrict }
}

fn compare_release(what: String, plan: &ResponsePlan, body: &[u8], tally: &mut Tally) {
    let ctx = ctx();
    let engine = plan.release(body, &ctx);
    let oracle = plan.release_tree(body, &ctx);
    let duplicate = first_duplicate_key(body, plan.max_body_bytes);
    tally.record(&oracle.outcome, release_diff(&engine, &oracle, duplicate.as_deref()), what);
}

#[test]
fn release_agrees_on_synthea_searches_and_reads() {
    let started = Instant::now();
    let sources = sources();
    let all_profiles = profiles();
    let profiles: Vec<(&str, Option<Arc<Profile>>)> = vec![
        ("no profile", None),
        ("patient-app", Some(profile(&all_profiles, "patient-app"))),
        ("safe-harbor", Some(profile(&all_profiles, "safe-harbor"))),
        ("fuzz-transforms", Some(profile(&all_profiles, "fuzz-transforms"))),
        ("fuzz-shadow", Some(profile(&all_profiles, "fuzz-shadow"))),
    ];
    assert!(profiles[4].1.as_ref().unwrap().shadow);
    let mut tally = Tally::default();
    for source in sources.iter().filter(|s| s.synthea()) {
        let s = search(&parsed(&source.bytes).unwrap());
        let file = &source.label;
        let searchset = serde_json::to_vec(&s.searchset).unwrap();
        // The prepared search must be one the oracle releases, or the comparison tests little.
        let baseline = plan(compartment(&s.patient, Expected::Searchset), None, None).release_tree(&searchset, &ctx());
        assert!(baseline.outcome.is_ok(), "{file}: the oracle refuses the prepared searchset: {:?}", baseline.outcome);

        let bodies = [
            ("searchset", searchset.clone()),
            ("searchset reversed", serde_json::to_vec(&reversed(&s.searchset)).unwrap()),
            ("searchset pretty", spaced(&s.searchset)),
            ("searchset escaped", escaped(&s.searchset)),
        ];
        for (variant, body) in &bodies {
            for (pname, p) in &profiles {
                for (rname, r) in restrict_plans(&s.patient) {
                    let plan = plan(compartment(&s.patient, Expected::Searchset), p.clone(), r);
                    compare_release(format!("{file} [{variant}] search, {pname}, {rname}"), &plan, body, &mut tally);
                }
            }
        }
        // Refusals: an entry outside the compartment, another patient's token, a released body
        // over the cap (exactly the size of the upstream's).
        let stranger = serde_json::to_vec(&s.stranger).unwrap();
        for (pname, p) in &profiles {
            let plan = plan(compartment(&s.patient, Expected::Searchset), p.clone(), None);
            compare_release(format!("{file} [searchset with a stranger] search, {pname}"), &plan, &stranger, &mut tally);
            let other = plan.clone();
            let other =
                ResponsePlan { checks: vec![ResponseCheck::Compartment(compartment("someone-else", Expected::Searchset))], ..other };
            compare_release(format!("{file} [searchset] search by another patient, {pname}"), &other, &searchset, &mut tally);
            let tight = ResponsePlan { max_body_bytes: searchset.len(), ..plan };
            compare_release(format!("{file} [searchset] search, {pname}, cap = body size"), &tight, &searchset, &mut tally);
        }
        // Reads of one Observation.
        for (read, resource) in &s.reads {
            let id = resource["id"].as_str().unwrap().to_owned();
            let bodies = [
                ("original", serde_json::to_vec(resource).unwrap()),
                ("reversed", serde_json::to_vec(&reversed(resource)).unwrap()),
                ("pretty", spaced(resource)),
                ("escaped", escaped(resource)),
            ];
            for (variant, body) in &bodies {
                for (pname, p) in &profiles {
                    for (rname, r) in restrict_plans(&s.patient) {
                        let expect = Expected::Resource { resource_type: "Observation", id: id.clone() };
                        let plan = plan(compartment(&s.patient, expect), p.clone(), r);
                        compare_release(format!("{file} [{read} {variant}] {pname}, {rname}"), &plan, body, &mut tally);
                    }
                    let wrong = Expected::Resource { resource_type: "Observation", id: "not-this-one".into() };
                    let plan = plan(compartment(&s.patient, wrong), p.clone(), None);
                    compare_release(format!("{file} [{read} {variant}] read of another id, {pname}"), &plan, body, &mut tally);
                }
            }
        }
    }
    tally.finish("release_agrees_on_synthea_searches_and_reads", started);
}

/// The helpers above make what they claim: a variant is the same JSON (order aside), and the
/// prepared search withholds entries once restricted.
#[test]
fn variants_are_the_same_json() {
    let v = json!({"resourceType": "Patient", "birthDate": "1974-12-25", "_birthDate": {"extension": [{"url": "u/v", "valueDateTime": "x"}]},
                   "name": [{"family": "Bénédicte 😀", "given": []}], "n": 1.50, "o": {}, "t": "a\"b\\c\u{1}"});
    for (variant, bytes) in variants(&serde_json::to_vec(&v).unwrap()) {
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), v, "{variant}");
    }
    let r: Vec<String> = reversed(&v).as_object().unwrap().keys().cloned().collect();
    assert_eq!(r.first().map(String::as_str), Some("t"));
    assert_eq!(r.last().map(String::as_str), Some("resourceType"));
    let text = String::from_utf8(escaped(&v)).unwrap();
    assert!(text.contains(r#""\u0072esourceType":"\u0050atient""#) && text.contains(r"\u00e9") && text.contains(r"\ud83d\ude00"), "{text}");
    assert!(text.is_ascii());
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}]});
    let c = contained_in_observations(&bundle).unwrap();
    assert_eq!(c["entry"][0]["resource"]["contained"][0]["id"], "p");
    assert!(contained_in_observations(&v).is_none());
}

#[test]
fn prepared_searches_exercise_restrictions() {
    let sources = sources();
    let source = sources.iter().filter(|s| s.synthea()).min_by_key(|s| s.bytes.len()).expect("a Synthea bundle");
    let s = search(&parsed(&source.bytes).unwrap());
    let body = serde_json::to_vec(&s.searchset).unwrap();
    let r = restrictions(&s.patient, PatientIds::Raw).plan("fhir", &[], None);
    let released = plan(compartment(&s.patient, Expected::Searchset), None, r).release_tree(&body, &ctx());
    assert!(released.restrictions.first().is_some_and(|h| h.count > 0), "{:?}", released.restrictions);
    let out: Value = serde_json::from_slice(released.outcome.unwrap().body.as_deref().unwrap()).unwrap();
    assert!(out["entry"].as_array().unwrap().len() < s.searchset["entry"].as_array().unwrap().len());
    assert_eq!(s.reads.len(), 2, "a plain and a labelled Observation");
    let stranger = serde_json::to_vec(&s.stranger).unwrap();
    let refused = plan(compartment(&s.patient, Expected::Searchset), None, None).release_tree(&stranger, &ctx());
    assert_eq!(refused.outcome, Err(phi_guard::decision::DenyReason::CompartmentViolation));
}
