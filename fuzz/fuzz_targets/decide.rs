//! Arbitrary requests through `decide` with both example policies.
//!
//! Input: UTF-8 lines. Line 1 is the method, line 2 the `:path`, every further line one
//! `Authorization` header value. Never panics; a request reaches a non-public route only with
//! exactly one `Authorization` header carrying a token the demo keys really signed, and a refusal
//! always has a 4xx status.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use phi_guard::auth::TokenCache;
use phi_guard::decision::{decide, Decision, Request};
use phi_guard::time::UnixSeconds;

/// Inside the demo seeds' lifetime (iat 1799999000, exp 1800003600).
const NOW: UnixSeconds = UnixSeconds::new(1_800_000_000);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let authorization: Vec<&str> = lines.collect();
    let req = Request { method, path, authorization: &authorization, ..Default::default() };

    for policy in common::example_policies() {
        let mut cache = TokenCache::new(4);
        match decide(policy, &mut cache, &req, NOW) {
            Decision::Allow(grant) => {
                if !common::is_public(policy, &grant.route_id) {
                    assert!(grant.principal.is_some(), "non-public route `{}` allowed without a principal", grant.route_id);
                    let [header] = authorization.as_slice() else {
                        panic!("allowed with {} Authorization headers", authorization.len());
                    };
                    let token = header.trim().rsplit(' ').next().unwrap_or_default();
                    assert!(common::signed_by_us(token), "allowed `{}` with a token we never signed", grant.route_id);
                }
            }
            Decision::Deny(refusal) => {
                assert!((400..500).contains(&refusal.status), "refusal status {}", refusal.status);
            }
        }
    }
});
