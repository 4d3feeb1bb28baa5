//! The dependency rule (ARCHITECTURE.md): only `src/host/` names `proxy_wasm`, only the playground
//! crate names `wasm_bindgen`, and the manifests keep each SDK to its own target. A slip would
//! either break the native build and tests or put wasm-bindgen imports into the filter, which
//! Envoy refuses to load (`make wasm-check` catches that too, but only after a wasm build).
//! The host stays a shell over `runtime::Host`, and the core reads no clock, environment,
//! randomness or files of its own: what the filter does is what `cargo test` runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files under `dir` whose code (comments aside) mentions `name`.
fn naming(dir: &Path, name: &str) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files
        .into_iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().lines().any(|l| !l.trim_start().starts_with("//") && l.contains(name)))
        .map(|f| f.strip_prefix(root()).unwrap().display().to_string())
        .collect()
}

#[test]
fn only_the_host_names_proxy_wasm() {
    let offenders: Vec<String> = naming(&root().join("src"), "proxy_wasm").into_iter().filter(|f| !f.starts_with("src/host/")).collect();
    assert!(offenders.is_empty(), "outside src/host/: {offenders:?}");
    assert!(!naming(&root().join("src/host"), "proxy_wasm").is_empty(), "the scan finds the host");
    assert_eq!(naming(&root().join("playground/crate/src"), "proxy_wasm"), Vec::<String>::new());
}

/// The code lines of a file (comments aside) before its `#[cfg(test)]` part.
fn code_lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_host_only_implements_the_runtime_host_and_forwards_callbacks() {
    let mut files = Vec::new();
    rust_files(&root().join("src/host"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        for line in code_lines(&file) {
            for (at, _) in line.match_indices("crate::") {
                let path = &line[at + "crate::".len()..];
                assert!(
                    path.starts_with("runtime") || path.starts_with("shared"),
                    "{}: the host reaches past the runtime into the core: {line}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn the_core_reads_no_clock_environment_randomness_or_files() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let forbidden = ["SystemTime", "Instant::now", "std::env", "env::var", "getrandom", "std::fs", "std::net", "std::process"];
    let mut offenders = Vec::new();
    for file in files {
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        for line in code_lines(&file) {
            if let Some(hit) = forbidden.iter().find(|f| line.contains(*f)) {
                offenders.push(format!("{rel}: {hit}"));
            }
        }
    }
    // The filter's host and the CLI are where the I/O is; the test doubles and fixtures
    // (`#[cfg(test)]` modules) only exist in tests.
    let test_only = ["src/runtime/testing.rs", "src/testing.rs"];
    let (allowed, core): (Vec<String>, Vec<String>) = offenders
        .into_iter()
        .partition(|o| o.starts_with("src/host/") || o.starts_with("src/bin/") || test_only.iter().any(|t| o.starts_with(t)));
    assert!(core.is_empty(), "the core reaches for the world: {core:?}");
    assert!(allowed.iter().any(|o| o.starts_with("src/host/envoy.rs")), "the scan finds the host's clock and environment");
}

#[test]
fn only_the_playground_names_wasm_bindgen() {
    assert_eq!(naming(&root().join("src"), "wasm_bindgen"), Vec::<String>::new());
    assert!(!naming(&root().join("playground/crate/src"), "wasm_bindgen").is_empty(), "the scan finds the playground");
}

/// The section header each dependency line of a manifest sits under.
fn sections(manifest: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in std::fs::read_to_string(root().join(manifest)).unwrap().lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
        } else if let Some((name, _)) = line.split_once('=') {
            out.push((section.clone(), name.trim().to_owned()));
        }
    }
    out
}

#[test]
fn manifests_keep_each_sdk_to_its_target() {
    let filter = sections("Cargo.toml");
    let wasi = r#"[target.'cfg(all(target_arch = "wasm32", target_os = "wasi"))'.dependencies]"#;
    let proxy: Vec<&String> = filter.iter().filter(|(_, n)| n == "proxy-wasm").map(|(s, _)| s).collect();
    assert_eq!(proxy, [wasi], "proxy-wasm only for wasm32-wasip1");
    for (section, name) in &filter {
        assert!(!(name.contains("bindgen") || name.contains("playground")) || !section.contains("dependencies"), "{section} {name}");
    }
    let playground = sections("playground/crate/Cargo.toml");
    assert!(playground.iter().any(|(s, n)| s == "[dependencies]" && n == "wasm-bindgen"));
    assert!(!playground.iter().any(|(_, n)| n == "proxy-wasm"));
    // getrandom's `js` backend imports from JavaScript: only for the browser target.
    let js: Vec<&String> = playground.iter().filter(|(_, n)| n == "getrandom").map(|(s, _)| s).collect();
    assert_eq!(js, [r#"[target.'cfg(all(target_arch = "wasm32", target_os = "unknown"))'.dependencies]"#]);
}
