//! `phi-guard audit verify` and `phi-guard audit pseudonym` on a log sealed by the library.
#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` fns; a failed unwrap fails the test

use std::path::PathBuf;
use std::process::{Command, Output};

use phi_guard::audit::{AuditChain, AuditContext, AuditEvent, AuditKey, RequestMeta};
use phi_guard::auth::TokenCache;
use phi_guard::decision::{decide, Request};
use phi_guard::policy::compile;
use phi_guard::time::{UnixMillis, UnixSeconds};

const SECRET: &str = "cli-test-audit-secret-0123456789abcdef";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("phi-guard-audit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Envoy-style log: noise lines around sealed events from two interleaved streams.
fn log_lines() -> Vec<String> {
    let policy = compile(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/smart-patient-app.json")).unwrap()).unwrap();
    let key = AuditKey::from_secret(SECRET.as_bytes()).unwrap();
    let mut chains = [AuditChain::new([1; 16], key.clone()), AuditChain::new([2; 16], key.clone())];
    let mut out = vec!["[info] envoy starting".to_owned()];
    for (i, path) in ["/healthz", "/fhir/Patient/p1", "/fhir/Observation?patient=p1", "/healthz", "/nope"].iter().enumerate() {
        let d = decide(
            &policy,
            &mut TokenCache::new(1),
            &Request { method: "GET", path, authorization: &[], ..Default::default() },
            UnixSeconds::new(1_800_000_000),
        );
        let meta = RequestMeta { request_id: Some("r"), source: Some("10.0.0.1:1234"), destination: None, method: "GET", path };
        let ev = AuditEvent::from_decision(&d, &meta, &AuditContext::new(&policy, &key, UnixMillis::new(1_800_000_000_000 + i as u64)));
        let ev = if ev.is_complete() { ev } else { ev.with_response(200, vec![], None) };
        let sealed = chains[i % 2].seal(&ev, &policy.audit);
        out.push(format!("[info][wasm] wasm log: {}", sealed.log_line()));
    }
    out
}

fn cli(args: &[&str], env_key: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phi-guard"));
    cmd.args(args).env_remove("PHI_GUARD_AUDIT_KEY");
    if let Some(k) = env_key {
        cmd.env("PHI_GUARD_AUDIT_KEY", k);
    }
    let Output { status, stdout, stderr } = cmd.output().unwrap();
    (status.code().unwrap(), format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)))
}

#[test]
fn verify_and_pseudonym() {
    let lines = log_lines();
    let log = scratch("envoy.log");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let key_file = scratch("key");
    std::fs::write(&key_file, format!("{SECRET}\n")).unwrap();
    let log_s = log.to_str().unwrap();

    let (code, out) = cli(&["audit", "verify", log_s, "--key-file", key_file.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 5 events in 2 streams (1 other lines skipped)"), "{out}");
    let (code, out) = cli(&["audit", "verify", log_s], Some(SECRET));
    assert_eq!(code, 0, "{out}");

    let (code, out) = cli(&["audit", "verify", log_s], None);
    assert_eq!(code, 1);
    assert!(out.contains("`PHI_GUARD_AUDIT_KEY` is not set"), "{out}");
    let (code, out) = cli(&["audit", "verify", log_s], Some("another-secret-of-sufficient-length-000"));
    assert_eq!(code, 1);
    assert!(out.contains("line 2: bad mac"), "{out}");

    let mut edited = lines.clone();
    edited[3] = edited[3].replace("\"outcome\":\"8\"", "\"outcome\":\"0\""); // the example policy writes FHIR
    assert_ne!(edited[3], lines[3]);
    std::fs::write(&log, edited.join("\n")).unwrap();
    let (code, out) = cli(&["audit", "verify", log_s], Some(SECRET));
    assert_eq!(code, 1);
    assert!(out.contains("line 4: bad mac"), "{out}");

    let mut deleted = lines.clone();
    deleted.remove(3); // stream 1, seq 1: caught at stream 1's next record
    std::fs::write(&log, deleted.join("\n")).unwrap();
    let (code, out) = cli(&["audit", "verify", log_s], Some(SECRET));
    assert_eq!(code, 1);
    assert!(out.contains("line 5: stream `01010101010101010101010101010101`: expected seq 1, found 2"), "{out}");
    let mut first = lines.clone();
    first.remove(2); // stream 2, seq 0
    std::fs::write(&log, first.join("\n")).unwrap();
    let (code, out) = cli(&["audit", "verify", log_s], Some(SECRET));
    assert_eq!(code, 1);
    assert!(out.contains("line 4: stream `02020202020202020202020202020202` starts at seq 1"), "{out}");

    // Without any prefixed line the file is read as a collector's: every line must be a record.
    std::fs::write(&log, "nothing to see\n").unwrap();
    let (code, out) = cli(&["audit", "verify", log_s], Some(SECRET));
    assert_eq!(code, 1);
    assert!(out.contains("line 1: unparseable record"), "{out}");
    std::fs::write(&log, "\n").unwrap();
    let (code, out) = cli(&["audit", "verify", log_s], Some(SECRET));
    assert_eq!(code, 1);
    assert!(out.contains("no audit records found"), "{out}");

    let (code, out) = cli(&["audit", "pseudonym", "--id", "p1"], Some(SECRET));
    assert_eq!(code, 0);
    let expected = AuditKey::from_secret(SECRET.as_bytes()).unwrap().pseudonym("p1");
    assert_eq!(out.trim(), expected);
    assert!(lines.iter().any(|l| l.contains(&expected)), "an auditor finds the patient's events by pseudonym");
    // Other pseudonymized values: here the request id `r`, which is not a UUID.
    let (code, out) = cli(&["audit", "pseudonym", "--of", "x-request-id", "--id", "r"], Some(SECRET));
    assert_eq!(code, 0);
    let expected = AuditKey::from_secret(SECRET.as_bytes()).unwrap().pseudonym_of("x-request-id", "r");
    assert_eq!(out.trim(), expected);
    assert_eq!(lines.iter().filter(|l| l.contains(&expected)).count(), 5, "every event of request `r`");
    let (code, out) = cli(&["audit", "pseudonym", "--id", "p1"], Some("short"));
    assert_eq!(code, 1);
    assert!(out.contains("at least 32 bytes"), "{out}");
}
