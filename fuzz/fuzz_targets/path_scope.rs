//! Arbitrary strings through the request-target and scope parsers. Never panics; normalised
//! segments never contain `/` and are never `.` or `..`; a parsed scope really says what it means;
//! a modelled FHIR request carries only valid ids.

#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_guard::auth::scope;
use phi_guard::fhir::request::{parse as parse_fhir, valid_id};
use phi_guard::http::normalize;

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);

    if let Ok(n) = normalize(&input) {
        for s in &n.segments {
            assert!(!s.is_empty() && !s.contains(['/', '\\']) && s != "." && s != "..", "bad segment {s:?} from {input:?}");
            assert!(!s.chars().any(char::is_control), "control character in segment {s:?}");
        }
        for (k, v) in &n.query {
            assert!(!k.chars().chain(v.chars()).any(char::is_control), "control character in query {k:?}={v:?}");
        }
        // Normalising the decoded path again must not change its segments (no double decoding),
        // unless a segment decoded to characters that are syntax in a raw target.
        if !n.segments.iter().any(|s| s.contains(['%', '?', '#'])) {
            assert_eq!(normalize(&n.path()).map(|m| m.segments).as_ref(), Ok(&n.segments));
        }
        for m in METHODS {
            if let Ok(r) = parse_fhir(m, &n.segments) {
                assert!(r.id.as_deref().is_none_or(valid_id) && r.compartment_patient.as_deref().is_none_or(valid_id));
            }
        }
    }

    for s in input.split(' ') {
        if let Some(sc) = scope::parse(s) {
            assert!(s.starts_with(sc.context.name()), "{s:?} parsed as {sc:?}");
            assert!(sc.permissions != scope::Permissions::default(), "{s:?} grants nothing");
            assert!(sc.constraints.iter().all(|(k, v)| !k.is_empty() && !v.is_empty()));
        }
    }
});
