//! `docs/COMPLIANCE.md` must not drift from the test suite: every test its table names has to
//! exist (and run in `make test`), every row has to name a test or say why none can exist, and
//! every requirement the mapping promises has to keep its row.
//!
//! Reference forms, in the table's test column:
//! - `cargo:<path>::<fn>`: a `#[test]` function (not `#[ignore]`d) in a Rust file under `src/`
//!   or `tests/`;
//! - `pytest:<path>::<test>` or `pytest:<path>::<test>[<param id>]`: a `def test_...(` in a
//!   Python file under `tests/integration/` (a param id must appear in that file);
//! - `scenario:<path>`: a scenario file under `tests/scenarios/` (run by `tests/scenarios.rs`).
//!
//! A row without references must start its test cell with `—` and give the reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

const DOC: &str = "docs/COMPLIANCE.md";

/// Every requirement the mapping covers, as written in bold at the start of its row.
const REQUIRED: &[&str] = &[
    "§164.312(a)(1)",
    "§164.312(a)(2)(i)",
    "§164.312(a)(2)(ii)",
    "§164.312(a)(2)(iii)",
    "§164.312(a)(2)(iv)",
    "§164.312(b)",
    "§164.312(c)(1)",
    "§164.312(c)(2)",
    "§164.312(d)",
    "§164.312(e)(1)",
    "§164.312(e)(2)(i)",
    "§164.312(e)(2)(ii)",
    "§164.502(b), §164.514(d)",
    "§164.514(b)(2)(i)(A)",
    "§164.514(b)(2)(i)(B)",
    "§164.514(b)(2)(i)(C)",
    "§164.514(b)(2)(i)(D)",
    "§164.514(b)(2)(i)(E)",
    "§164.514(b)(2)(i)(F)",
    "§164.514(b)(2)(i)(G)",
    "§164.514(b)(2)(i)(H)",
    "§164.514(b)(2)(i)(I)",
    "§164.514(b)(2)(i)(J)",
    "§164.514(b)(2)(i)(K)",
    "§164.514(b)(2)(i)(L)",
    "§164.514(b)(2)(i)(M)",
    "§164.514(b)(2)(i)(N)",
    "§164.514(b)(2)(i)(O)",
    "§164.514(b)(2)(i)(P)",
    "§164.514(b)(2)(i)(Q)",
    "§164.514(b)(2)(i)(R)",
    "§164.522",
    "API1:2023",
    "API2:2023",
    "API3:2023",
    "API4:2023",
    "API5:2023",
    "API6:2023",
    "API7:2023",
    "API8:2023",
    "API9:2023",
    "API10:2023",
];

const HEADER: [&str; 5] = ["requirement", "phi-guard feature", "policy setting", "out of scope for a proxy filter", "automated tests"];

/// One table row: its line number, requirement key (the leading bold text) and test cell.
#[derive(Debug)]
struct Row {
    line: usize,
    key: String,
    tests: String,
}

/// The mapping rows of every table whose header is [`HEADER`].
fn rows(doc: &str) -> Result<Vec<Row>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut in_table = false;
    let mut seen_header = false;
    for (i, raw) in doc.lines().enumerate() {
        let line = raw.trim();
        let n = i + 1;
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if !in_table {
            // A table starts: its header row, then the delimiter row.
            in_table = cells == HEADER;
            seen_header |= in_table;
            continue;
        }
        if cells.iter().all(|c| !c.is_empty() && c.bytes().all(|b| matches!(b, b'-' | b':'))) {
            continue;
        }
        if cells.len() != HEADER.len() {
            errors.push(format!("line {n}: {} cells, expected {} (a `|` inside a cell?)", cells.len(), HEADER.len()));
            continue;
        }
        if let Some(empty) = cells.iter().position(|c| c.is_empty()) {
            errors.push(format!("line {n}: the `{}` cell is empty", HEADER[empty]));
        }
        let key = cells[0].strip_prefix("**").and_then(|r| r.split_once("**")).map(|(k, _)| k.trim().to_owned());
        match key {
            Some(key) if !key.is_empty() => out.push(Row { line: n, key, tests: cells[4].to_owned() }),
            _ => errors.push(format!("line {n}: the requirement cell must start with the requirement in bold (`**§164.312(b)** ...`)")),
        }
    }
    if !seen_header {
        errors.push(format!("no table with the header `| {} |`", HEADER.join(" | ")));
    } else if out.is_empty() && errors.is_empty() {
        errors.push("the table has no rows".to_owned());
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The test references in a test cell.
fn references(cell: &str) -> Vec<&str> {
    cell.split(|c: char| c.is_whitespace() || matches!(c, '`' | ',' | ';'))
        .filter(|t| t.starts_with("cargo:") || t.starts_with("pytest:") || t.starts_with("scenario:"))
        .collect()
}

/// Whether `name` is a `#[test]` function in `source` that is not ignored.
fn rust_test(source: &str, name: &str) -> Result<(), String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = false;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub ").or_else(|| t.strip_prefix("pub(crate) ")).unwrap_or(t);
        if !t.starts_with(&format!("fn {name}(")) {
            continue;
        }
        found = true;
        // The attributes and comments right above it.
        let attrs: Vec<&str> =
            lines[..i].iter().rev().map(|l| l.trim()).take_while(|l| l.starts_with("#[") || l.starts_with("//")).collect();
        if attrs.iter().any(|a| a.starts_with("#[ignore")) {
            return Err(format!("`{name}` is #[ignore]d: it does not run in `make test`"));
        }
        if attrs.contains(&"#[test]") {
            return Ok(());
        }
    }
    Err(if found { format!("`{name}` is not a #[test]") } else { format!("no `fn {name}(`") })
}

/// Check one reference against the files under `root`.
fn check_reference(root: &Path, r: &str) -> Result<(), String> {
    let read = |path: &str| std::fs::read_to_string(root.join(path)).map_err(|e| format!("`{path}`: {e}"));
    if let Some(rest) = r.strip_prefix("cargo:") {
        let (path, name) = rest.split_once("::").ok_or("expected `cargo:<path>::<fn>`")?;
        if !(path.starts_with("src/") || path.starts_with("tests/")) || !path.ends_with(".rs") || path.contains("..") {
            return Err(format!("`{path}` is not a Rust file under src/ or tests/"));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`{name}` is not a function name"));
        }
        rust_test(&read(path)?, name).map_err(|e| format!("{path}: {e}"))
    } else if let Some(rest) = r.strip_prefix("pytest:") {
        let (path, test) = rest.split_once("::").ok_or("expected `pytest:<path>::<test>`")?;
        if !path.starts_with("tests/integration/") || !path.ends_with(".py") || path.contains("..") {
            return Err(format!("`{path}` is not a Python file under tests/integration/"));
        }
        let (name, param) = match test.split_once('[') {
            Some((n, p)) => (n, Some(p.strip_suffix(']').ok_or("unclosed `[`")?)),
            None => (test, None),
        };
        if !name.starts_with("test_") || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`{name}` is not a pytest test name"));
        }
        let source = read(path)?;
        if !source.lines().any(|l| l.starts_with(&format!("def {name}(")) || l.starts_with(&format!("async def {name}("))) {
            return Err(format!("{path}: no `def {name}(`"));
        }
        match param {
            Some(p) if p.is_empty() || !source.contains(p) => {
                Err(format!("{path}: param id `{p}` of `{name}` does not appear in the file"))
            }
            _ => Ok(()),
        }
    } else if let Some(path) = r.strip_prefix("scenario:") {
        if !path.starts_with("tests/scenarios/") || !path.ends_with(".json") || path.contains("..") {
            return Err(format!("`{path}` is not a scenario file under tests/scenarios/"));
        }
        let v: serde_json::Value = serde_json::from_str(&read(path)?).map_err(|e| format!("`{path}`: {e}"))?;
        if v.get("expect").is_none() {
            return Err(format!("`{path}` has no `expect`"));
        }
        Ok(())
    } else {
        Err("unknown reference form".to_owned())
    }
}

/// Check the whole document: the table, every reference, and that every row names a test or
/// says why not. Returns the rows by requirement key.
fn check(doc: &str, root: &Path) -> Result<BTreeMap<String, usize>, Vec<String>> {
    let rows = rows(doc)?;
    let mut errors = Vec::new();
    let mut keys = BTreeMap::new();
    for row in &rows {
        if keys.insert(row.key.clone(), row.line).is_some() {
            errors.push(format!("line {}: a second row for `{}`", row.line, row.key));
        }
        let refs = references(&row.tests);
        if refs.is_empty() {
            // No test: the cell must say so, and why.
            let reason = row.tests.strip_prefix('—').map(str::trim).unwrap_or("");
            if !row.tests.starts_with('—') || reason.split_whitespace().count() < 3 {
                errors.push(format!("line {} (`{}`): names no test and does not say why (`— <reason>`)", row.line, row.key));
            }
        }
        for r in refs {
            if let Err(e) = check_reference(root, r) {
                errors.push(format!("line {} (`{}`): `{r}`: {e}", row.line, row.key));
            }
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_named_test_exists_and_every_row_names_one_or_says_why_not() {
    let doc = std::fs::read_to_string(root().join(DOC)).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let keys = check(&doc, root()).unwrap_or_else(|errors| panic!("{DOC}:\n  {}", errors.join("\n  ")));
    let missing: Vec<&&str> = REQUIRED.iter().filter(|k| !keys.contains_key(**k)).collect();
    assert!(missing.is_empty(), "{DOC}: no row for {missing:?}");
    let extra: Vec<&String> = keys.keys().filter(|k| !REQUIRED.contains(&k.as_str())).collect();
    assert!(extra.is_empty(), "{DOC}: rows for requirements not in REQUIRED (add them there): {extra:?}");
}

#[test]
fn the_checker_refuses_empty_tables_missing_tests_and_silent_rows() {
    let head = format!("| {} |\n|---|---|---|---|---|\n", HEADER.join(" | "));
    let row = |tests: &str| format!("| **X** req | feature | setting | scope | {tests} |\n");
    let fails = |doc: &str, needle: &str| {
        let errors = check(doc, root()).expect_err(doc);
        assert!(errors.iter().any(|e| e.contains(needle)), "{doc}\n{errors:?}");
    };
    fails("# nothing here\n", "no table");
    fails(&head, "no rows");
    fails(&(head.clone() + "\nafter the table\n"), "no rows");
    fails(&(head.clone() + &row("")), "empty");
    fails(&(head.clone() + &row("later")), "does not say why");
    fails(&(head.clone() + &row("— tbd")), "does not say why");
    fails(&(head.clone() + &row("`cargo:src/decision/engine.rs::no_such_test`")), "no `fn no_such_test(`");
    fails(&(head.clone() + &row("`cargo:src/decision/engine.rs::reason`")), "not a #[test]");
    fails(&(head.clone() + &row("`cargo:tests/minimize.rs::minimization_throughput`")), "#[ignore]d");
    fails(&(head.clone() + &row("`cargo:src/nowhere.rs::patient_app`")), "src/nowhere.rs");
    fails(&(head.clone() + &row("`cargo:engine.rs::patient_app`")), "not a Rust file");
    fails(&(head.clone() + &row("`pytest:tests/integration/test_authn.py::test_nothing`")), "no `def test_nothing(`");
    fails(&(head.clone() + &row("`pytest:tests/integration/test_authn.py::test_invalid_token_is_401[no-such-case]`")), "param id");
    fails(&(head.clone() + &row("`scenario:tests/scenarios/allow-everything.json`")), "allow-everything.json");
    fails(&(head.clone() + &row("`scenario:deny-expired-token.json`")), "not a scenario file");
    fails(&(head.clone() + "| **X** | a | b | c |\n"), "4 cells");
    fails(&(head.clone() + "| X | a | b | c | — no test can exist here |\n"), "in bold");
    fails(&(head.clone() + &row("— no test can exist here") + &row("— no test can exist here")), "a second row");

    let ok = head
        + &row("`cargo:src/decision/engine.rs::patient_app`, `cargo:tests/safe_harbor_categories.rs::names_are_removed`")
        + &row("`pytest:tests/integration/test_authn.py::test_invalid_token_is_401[embedded-jwk]`").replace("**X**", "**Y**")
        + &row("`scenario:tests/scenarios/deny-expired-token.json`").replace("**X**", "**Z**")
        + &row("— a filter cannot do this, and says so").replace("**X**", "**W**");
    let keys = check(&ok, root()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["W", "X", "Y", "Z"]);
}
