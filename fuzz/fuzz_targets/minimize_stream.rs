//! Arbitrary bytes as an upstream response body through the streaming minimizer and the tree
//! engine kept as its oracle: `minimize::apply` against `minimize::apply_tree` with every profile
//! of the `minimize` target (`profiles.rs`), and `ResponsePlan::release` against
//! `ResponsePlan::release_tree` with patient `p1`'s compartment check (a search, a read of
//! `Observation/o1`), with and without a profile and privacy restrictions.
//!
//! Never panics, and the two agree (`tests/differential/mod.rs`, shared with
//! `tests/minimize_differential.rs`): the same refusal, or the same withheld paths, count,
//! shadow flag, profile, restriction hits and the same JSON in the same member order. A body that
//! is not JSON is refused by both with the same reason; a body whose first problem is a
//! duplicate object key is refused by the engine with `response_not_json`, whatever the oracle
//! (which keeps the last value) does.

#![no_main]

mod common;
mod profiles;

#[path = "../../tests/differential/mod.rs"]
mod differential;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use phi_guard::audit_key::PatientIds;
use phi_guard::decision::{CompartmentCheck, Expected, ResponseCheck, ResponsePlan};
use phi_guard::minimize::restrict::{Label, Restriction, Restrictions};
use phi_guard::minimize::{self, ApplyCtx, Profile};
use profiles::{HMAC_KEY, MAX_BODY, NOW};

/// Every profile of the `minimize` target, shipped ones first, and date shifting.
fn profiles() -> &'static [Arc<Profile>] {
    static PROFILES: OnceLock<Vec<Arc<Profile>>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        let mut all = profiles::all(common::example_policies());
        all.extend(profiles::compile_doc(profiles::DEID_SHIFT, true));
        all
    })
}

fn named(name: &str) -> Arc<Profile> {
    profiles().iter().find(|p| p.name == name).cloned().unwrap_or_else(|| panic!("no profile `{name}`"))
}

/// Patient `p1`'s response plans: a search and a read of `Observation/o1`, bare, and with a
/// profile and a restriction of `p1`'s `PSY`-labelled resources (a shadow profile on the read).
fn plans() -> &'static [(&'static str, ResponsePlan)] {
    static PLANS: OnceLock<Vec<(&'static str, ResponsePlan)>> = OnceLock::new();
    PLANS.get_or_init(|| {
        let check = |expect| {
            let shared: Arc<[&'static str]> = vec!["Medication", "Organization", "Practitioner"].into();
            vec![ResponseCheck::Compartment(CompartmentCheck { patient: "p1".into(), shared, expect })]
        };
        let read = || Expected::Resource { resource_type: "Observation", id: "o1".into() };
        let restrictions = Restrictions {
            list: vec![Arc::new(Restriction {
                id: "r-psy".into(),
                patient: "p1".into(),
                labels: vec![Label { system: "http://terminology.hl7.org/CodeSystem/v3-ActCode".into(), code: "PSY".into() }],
                allow_purposes: vec![],
                routes: vec![],
            })],
            patient_ids: PatientIds::Raw,
        };
        let plan = |checks, minimize, restrict| ResponsePlan { checks, minimize, max_body_bytes: MAX_BODY, restrict };
        vec![
            ("search", plan(check(Expected::Searchset), None, None)),
            ("read o1", plan(check(read()), None, None)),
            (
                "search, fuzz-transforms, restricted",
                plan(check(Expected::Searchset), Some(named("fuzz-transforms")), restrictions.plan("fhir", &[], Some("p1"))),
            ),
            ("read o1, fuzz-shadow, restricted", plan(check(read()), Some(named("fuzz-shadow")), restrictions.plan("fhir", &[], None))),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let ctx = ApplyCtx { hmac_key: Some(HMAC_KEY), now: NOW, pseudonyms: None };
    let duplicate = differential::first_duplicate_key(data, MAX_BODY);
    for profile in profiles() {
        let engine = minimize::apply(profile, data, &ctx, MAX_BODY);
        let oracle = minimize::apply_tree(profile, data, &ctx, MAX_BODY);
        if let Some(diff) = differential::applied_diff(&engine, &oracle, duplicate.as_deref()) {
            panic!("apply, {}: {diff}", profile.name);
        }
    }
    for (name, plan) in plans() {
        let engine = plan.release(data, &ctx);
        let oracle = plan.release_tree(data, &ctx);
        if let Some(diff) = differential::release_diff(&engine, &oracle, duplicate.as_deref()) {
            panic!("release, {name}: {diff}");
        }
    }
});
