//! The committed JSON Schema of the policy format (`policies/phi-guard-policy.schema.json`) is
//! exactly what the wire types generate, and the example policies point editors at it.
//! Validation of documents against it is `tests/integration/test_schemas.py` (the maintained
//! `jsonschema` validator, with the compiler's verdict beside it).
#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` fns; a failed unwrap fails the test

use std::path::Path;

use phi_guard::schema::json_schema::policy_schema_text;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_schema_is_generated() {
    let path = root().join("policies/phi-guard-policy.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == policy_schema_text(),
        "{} differs from the schema the policy wire types generate: run `make schema` \
         (cargo run --bin phi-guard -- schema > policies/phi-guard-policy.schema.json) and commit it",
        path.display()
    );
}

#[test]
fn example_policies_name_the_local_schema_and_compile() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.ends_with(".schema.json") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["$schema"], "./phi-guard-policy.schema.json", "{name}");
        // The member is the first, so an editor sees it before anything else.
        assert_eq!(doc.as_object().unwrap().keys().next().map(String::as_str), Some("$schema"), "{name}");
        phi_guard::policy::compile(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} example policies");
}

fn demo_with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<phi_guard::policy::Policy, phi_guard::schema::CompileError> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("policies/smart-patient-app.json")).unwrap()).unwrap();
    edit(&mut doc);
    phi_guard::policy::compile(&serde_json::to_vec(&doc).unwrap())
}

#[test]
fn dollar_schema_is_a_top_level_string_and_nothing_else() {
    // Any string, ignored: a URL, a relative path, empty.
    for s in ["https://phi-guard.dev/schemas/phi-guard-policy.schema.json", "./phi-guard-policy.schema.json", ""] {
        assert!(demo_with(|d| d["$schema"] = s.into()).is_ok(), "{s}");
    }
    assert!(demo_with(|d| drop(d.as_object_mut().unwrap().remove("$schema"))).is_ok());
    // Not a string: refused, `null` included.
    for bad in [serde_json::json!(null), serde_json::json!(1), serde_json::json!({"$ref": "x"})] {
        let e = demo_with(|d| d["$schema"] = bad.clone()).unwrap_err();
        assert_eq!(e.location, "$schema", "{bad}: {e}");
    }
    // Only at the top level: everywhere else it is an unknown field like any other.
    let e = demo_with(|d| d["routes"][0]["$schema"] = "x".into()).unwrap_err();
    assert!(e.location == "routes[0].$schema" && e.message.contains("unknown field `$schema`"), "{e}");
    let e = demo_with(|d| d["issuers"][0]["$schema"] = "x".into()).unwrap_err();
    assert!(e.message.contains("unknown field `$schema`"), "{e}");
    // Strictness elsewhere is unchanged.
    let e = demo_with(|d| d["schema"] = "x".into()).unwrap_err();
    assert!(e.location == "schema" && e.message.contains("unknown field `schema`"), "{e}");
    let e = demo_with(|d| d["$id"] = "x".into()).unwrap_err();
    assert!(e.message.contains("unknown field `$id`"), "{e}");
}
