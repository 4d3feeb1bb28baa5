//! Arbitrary bytes as a policy: compiling never panics, an error always names a location, and a
//! compiled policy keeps the invariants the decision engine relies on.

#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_guard::policy::{compile, Access};

fuzz_target!(|data: &[u8]| {
    match compile(data) {
        Err(e) => assert!(!e.location.is_empty() && !e.message.is_empty(), "error without location: {e:?}"),
        Ok(p) => {
            assert!(!p.routes.is_empty());
            assert!(p.unmatched_status == 403 || p.unmatched_status == 404);
            for r in &p.routes {
                assert!(!r.methods.is_empty(), "route `{}` allows no method", r.id);
                if !matches!(r.access, Access::Public) {
                    assert!(!p.issuers.is_empty(), "route `{}` needs a token but no issuer is trusted", r.id);
                }
            }
            for i in &p.issuers {
                assert!(!i.algorithms.is_empty() && !i.keys.is_empty() && !i.audiences.is_empty());
                assert!(i.keys.iter().all(|k| i.algorithms.iter().any(|a| k.accepts(*a))));
            }
        }
    }
});
