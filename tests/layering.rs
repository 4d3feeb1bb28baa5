//! The dependency rule (ARCHITECTURE.md): only `src/host/` names `proxy_wasm`, only the playground
//! crate names `wasm_bindgen`, and the manifests keep each SDK to its own target. A slip would
//! either break the native build and tests or put wasm-bindgen imports into the filter, which
//! Envoy refuses to load (`make wasm-check` catches that too, but only after a wasm build).
//! The host stays a shell over `runtime::Host`, and the core reads no clock, environment,
//! randomness or files of its own: what the filter does is what `cargo test` runs.
//!
//! And the modules form the DAG that ARCHITECTURE.md's "Module dependencies" table draws: the
//! `crate::` paths each top-level module names outside its tests are exactly its row.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
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

/// The top-level modules of the library: `src/<name>.rs` or `src/<name>/` (not the CLI).
fn top_level_modules() -> BTreeSet<String> {
    std::fs::read_dir(root().join("src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            match name.strip_suffix(".rs") {
                Some("lib") => None,
                Some(stem) => Some(stem.to_owned()),
                None if name != "bin" && p.is_dir() => Some(name),
                None => None,
            }
        })
        .collect()
}

/// A file's code without comments and `#[cfg(test)]` items, and the names of the test-only
/// child modules it declares (`#[cfg(test)] mod x;`). Relies on rustfmt: a test item's
/// attribute starts a line, and a block item ends with a `}` alone at the start of a line.
fn production_code(text: &str) -> (String, Vec<String>) {
    let mut code = String::new();
    let mut test_children = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "#[cfg(test)]" {
            let item = lines.next().unwrap_or("");
            if let Some(name) = item.strip_suffix(';').and_then(|i| i.split_whitespace().last()) {
                test_children.push(name.to_owned());
            } else if item.trim_end().ends_with('{') {
                for inner in lines.by_ref() {
                    if inner == "}" {
                        break;
                    }
                }
            }
            continue;
        }
        if !line.trim_start().starts_with("//") {
            code.push_str(line);
            code.push('\n');
        }
    }
    (code, test_children)
}

/// The top-level modules each module names (`crate::<module>`) outside its tests.
fn code_edges(modules: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for module in modules {
        let dir = root().join("src").join(module);
        let mut files = Vec::new();
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(root().join("src").join(format!("{module}.rs")));
        }
        let mut texts: BTreeMap<PathBuf, (String, Vec<String>)> =
            files.iter().map(|f| (f.clone(), production_code(&std::fs::read_to_string(f).unwrap()))).collect();
        // Files of test-only modules (`#[cfg(test)] mod phi_free;`) are tests too.
        let test_files: Vec<PathBuf> = texts
            .iter()
            .flat_map(|(f, (_, children))| {
                let parent =
                    if f.file_name().is_some_and(|n| n == "mod.rs") { f.parent().unwrap().to_owned() } else { f.with_extension("") };
                children.iter().flat_map(move |c| [parent.join(format!("{c}.rs")), parent.join(c).join("mod.rs")])
            })
            .collect();
        texts.retain(|f, _| !test_files.contains(f));
        let mut uses = BTreeSet::new();
        for (code, _) in texts.values() {
            for (at, _) in code.match_indices("crate::") {
                let name: String = code[at + "crate::".len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                assert!(!code[..at].ends_with('$'), "macros naming `$crate::` are not scanned");
                if &name != module && modules.contains(&name) {
                    uses.insert(name);
                }
            }
        }
        edges.insert(module.clone(), uses);
    }
    edges
}

/// What a row of the table allows.
#[derive(Debug)]
enum Uses {
    /// Exactly these modules.
    Exactly(BTreeSet<String>),
    /// Any module but these (an upper bound: `host`, or a module still to come).
    AnyBut(BTreeSet<String>),
}

/// The "Module dependencies" table of ARCHITECTURE.md, by module.
fn documented_edges() -> BTreeMap<String, Uses> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = doc.split("\n## Module dependencies\n").nth(1).expect("ARCHITECTURE.md has a `## Module dependencies` section");
    let section = section.split("\n## ").next().unwrap();
    let ticked = |cell: &str| -> BTreeSet<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [modules, uses] = cells.as_slice() else { panic!("a row has two cells: {line}") };
        for module in ticked(modules) {
            let allowed = if uses.starts_with("any module") { Uses::AnyBut(ticked(uses)) } else { Uses::Exactly(ticked(uses)) };
            assert!(rows.insert(module.clone(), allowed).is_none(), "`{module}` has two rows");
        }
    }
    rows
}

#[test]
fn module_dependencies_are_the_documented_dag() {
    let modules = top_level_modules();
    let code = code_edges(&modules);
    assert!(code["decision"].contains("policy") && code["policy"].contains("auth"), "the scan finds the edges: {code:?}");
    let doc = documented_edges();
    let mut everything: BTreeSet<String> = modules.clone();
    everything.extend(doc.keys().cloned());
    // The documented graph, with "any module" rows spelt out.
    let allowed: BTreeMap<&str, BTreeSet<&str>> = doc
        .iter()
        .map(|(m, uses)| {
            let set = match uses {
                Uses::Exactly(set) => set.iter().map(String::as_str).collect(),
                Uses::AnyBut(not) => everything.iter().filter(|o| *o != m && !not.contains(*o)).map(String::as_str).collect(),
            };
            (m.as_str(), set)
        })
        .collect();
    for (module, uses) in &code {
        let row = doc.get(module).unwrap_or_else(|| panic!("`{module}` has no row in ARCHITECTURE.md's module dependencies"));
        let beyond: Vec<&String> = uses.iter().filter(|u| !allowed[module.as_str()].contains(u.as_str())).collect();
        assert!(beyond.is_empty(), "`{module}` uses {beyond:?}, which its row does not allow");
        if let Uses::Exactly(listed) = row {
            assert_eq!(listed, uses, "`{module}`: its row must list exactly what it uses");
        }
    }
    for (module, uses) in &allowed {
        for u in uses {
            assert!(everything.contains(*u), "`{module}` lists `{u}`, which is no module");
        }
    }
    // Acyclic: peel off modules whose every dependency is already peeled (Kahn).
    let mut left: BTreeMap<&str, &BTreeSet<&str>> = allowed.iter().map(|(m, u)| (*m, u)).collect();
    while !left.is_empty() {
        let ready: Vec<&str> = left.iter().filter(|(_, uses)| uses.iter().all(|u| !left.contains_key(u))).map(|(m, _)| *m).collect();
        assert!(!ready.is_empty(), "the module dependencies have a cycle among {:?}", left.keys().collect::<Vec<_>>());
        for m in ready {
            left.remove(m);
        }
    }
}

#[test]
fn the_scan_skips_tests_and_comments() {
    let (code, children) = production_code(
        "use crate::a;\n// crate::b\n#[cfg(test)]\nmod phi_free;\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\nfn f() { crate::d::g() }\n",
    );
    assert_eq!(code, "use crate::a;\nfn f() { crate::d::g() }\n");
    assert_eq!(children, ["phi_free"]);
}
