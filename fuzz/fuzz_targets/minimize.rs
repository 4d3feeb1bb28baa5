//! Arbitrary bytes as an upstream response body through `minimize::apply`, with every profile
//! phi-guard ships (both example policies' route profiles and the `safe-harbor` preset) and the
//! fuzz profiles of `profiles.rs`, which use what the shipped ones do not: `hash`, `mask`, every
//! generalization, extension selectors, choice elements, `otherResources: deny`, shadow mode and
//! the `drop-query` and `drop` link settings.
//!
//! Never panics, and for every profile:
//! - a refusal is one of the reasons the response phase can give, and `response_too_large`
//!   exactly when the body is over the cap;
//! - a release names its profile and shadow flag; its withheld paths are sorted and distinct,
//!   with at least one count each, and none at all exactly when the count is 0;
//! - a rewritten body is JSON within the input (`tests/subset/mod.rs`: every key path, string
//!   and number comes from the input or from a transform of it), and equal to the input when
//!   nothing was withheld (the audit event would otherwise under-report);
//! - a shadow profile releases the upstream body unchanged (`body: None`);
//! - under the `safe-harbor` preset, no resource in the output (any object with a
//!   `resourceType`, whatever the type says) keeps an `identifier` or `telecom` element: the
//!   preset withholds them from every type.

#![no_main]

mod common;
mod profiles;

#[path = "../../tests/subset/mod.rs"]
mod subset;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use phi_guard::decision::DenyReason;
use phi_guard::minimize::{self, ApplyCtx, Profile};
use profiles::{HMAC_KEY, MAX_BODY, NOW};
use serde_json::Value;

/// Every profile the target runs, shipped ones first.
fn profiles() -> &'static [Arc<Profile>] {
    static PROFILES: OnceLock<Vec<Arc<Profile>>> = OnceLock::new();
    PROFILES.get_or_init(|| profiles::all(common::example_policies()))
}

/// The first object with a `resourceType` that still has an element the `safe-harbor` preset
/// withholds from every type, with that element's name.
fn safe_harbor_leak(v: &Value) -> Option<(String, &'static str)> {
    match v {
        Value::Object(m) => {
            if let Some(ty) = m.get("resourceType") {
                if let Some(k) = ["identifier", "telecom"].into_iter().find(|k| m.contains_key(*k)) {
                    return Some((ty.to_string(), k));
                }
            }
            m.values().find_map(safe_harbor_leak)
        }
        Value::Array(a) => a.iter().find_map(safe_harbor_leak),
        _ => None,
    }
}

/// What `apply` may refuse with: the response-phase reasons it can reach.
fn response_phase(reason: DenyReason) -> bool {
    use DenyReason::*;
    matches!(
        reason,
        ResponseNotJson | ResponseTruncated | ResponseTooLarge | ResponseUnexpectedShape | ResponseUnknownResource | MinimizationFailed
    )
}

fuzz_target!(|data: &[u8]| {
    let ctx = ApplyCtx { hmac_key: Some(HMAC_KEY), now: NOW, pseudonyms: None };
    // Parsed once for the subset checks (`apply` parses the same way); its facts are gathered
    // on first use.
    let input: Option<Value> = minimize::body::parse(data, MAX_BODY).ok();
    let mut facts: Option<subset::Input> = None;
    for profile in profiles() {
        let name = &profile.name;
        match minimize::apply(profile, data, &ctx, MAX_BODY) {
            Err(reason) => {
                assert!(response_phase(reason), "{name}: refused with `{}`", reason.code());
                assert_eq!(reason == DenyReason::ResponseTooLarge, data.len() > MAX_BODY, "{name}: `{}` for {} bytes", reason.code(), data.len());
            }
            Ok(applied) => {
                let Some(input) = &input else {
                    panic!("{name}: released a body that does not parse");
                };
                assert_eq!(applied.profile.as_deref(), Some(name.as_str()));
                assert_eq!(applied.shadow, profile.shadow);
                assert!(applied.withheld.windows(2).all(|w| w[0] < w[1]), "{name}: withheld paths not sorted and distinct: {:?}", applied.withheld);
                assert!(applied.count >= applied.withheld.len(), "{name}: count {} for {} paths", applied.count, applied.withheld.len());
                assert_eq!(applied.count == 0, applied.withheld.is_empty(), "{name}: count {} with paths {:?}", applied.count, applied.withheld);
                match &applied.body {
                    None => assert!(profile.shadow, "{name}: no body outside shadow mode"),
                    Some(bytes) => {
                        assert!(!profile.shadow, "{name}: shadow mode rewrote the body");
                        let out: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{name}: released bytes are not JSON: {e}"));
                        let facts = facts.get_or_insert_with(|| subset::Input::new(input));
                        if let Err(e) = facts.check(&out) {
                            panic!("{name}: output not within the input: {e}\ninput:  {input}\noutput: {out}");
                        }
                        if profile.safe_harbor {
                            if let Some((ty, k)) = safe_harbor_leak(&out) {
                                panic!("{name}: resourceType {ty} released `{k}`\ninput:  {input}\noutput: {out}");
                            }
                        }
                        if applied.count == 0 {
                            assert_eq!(&out, input, "{name}: changed the body but reported nothing withheld");
                        }
                    }
                }
            }
        }
    }
});
