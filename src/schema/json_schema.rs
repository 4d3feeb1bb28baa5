//! The policy format as a JSON Schema (draft 2020-12), derived from the wire types so it cannot
//! drift from what the parser accepts: editors validate and complete policy files with it, and
//! `policies/phi-guard-policy.schema.json` is this output (a test keeps the two equal).
//!
//! Native only (the derives are `cfg_attr(not(target_arch = "wasm32"))`): the filter never
//! needs it. The schema checks shape (names, types, enumerated values, required members,
//! unknown members); what needs the whole document (route ids that exist, scopes that parse,
//! ranges) is the compiler's, so a schema-valid policy can still be refused by `validate`.

use schemars::generate::SchemaSettings;
use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::{Map, Value};

use super::PolicyDoc;

/// Where the schema is published; policy files may name it, or the local copy, in `$schema`.
pub const SCHEMA_ID: &str = "https://phi-guard.dev/schemas/phi-guard-policy.schema.json";

/// The policy document's JSON Schema.
pub fn policy_schema() -> Value {
    let schema = SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<PolicyDoc>().to_value();
    let Value::Object(members) = schema else {
        return schema;
    };
    // `$schema` and `$id` first, as a reader expects them.
    let mut root = Map::new();
    if let Some(meta) = members.get("$schema") {
        root.insert("$schema".to_owned(), meta.clone());
    }
    root.insert("$id".to_owned(), Value::String(SCHEMA_ID.to_owned()));
    root.extend(members.into_iter().filter(|(k, _)| k != "$schema"));
    // `$schema` has no default: absent is absent (schemars adds the field's `null`).
    if let Some(Value::Object(member)) = root.get_mut("properties").and_then(|p| p.get_mut("$schema")) {
        member.remove("default");
    }
    let mut schema = Value::Object(root);
    unwrap_doc_lines(&mut schema);
    schema
}

/// Doc comments are wrapped at 100 columns; editors show a description as flowing text, so a
/// single line break becomes a space (a blank line, a paragraph break, stays).
fn unwrap_doc_lines(v: &mut Value) {
    match v {
        Value::Object(members) => {
            for (k, member) in members.iter_mut() {
                match member {
                    Value::String(text) if k == "description" || k == "title" => {
                        *text = text
                            .split("\n\n")
                            .map(|para| para.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_doc_lines(member),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_doc_lines),
        _ => {}
    }
}

/// `issuers[].jwks`: free JSON to serde (`auth::keys::parse_jwks` reads it), so its schema is
/// written here: a JWK Set of public signing keys, with the types of the members every key
/// type shares (the JWK parser reads those whatever the `kty`; the key's own parameters depend
/// on it and are left to the compiler). A member the parser ignores is allowed; private key
/// material and `oct` keys are refused, as the compiler refuses them.
pub fn jwks_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["object", "null"],
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kty"],
                    "properties": {
                        "kty": {"enum": ["RSA", "EC", "OKP"], "description": "Key type; `oct` (symmetric) keys are refused."},
                        "use": {"const": "sig", "description": "Only signing keys."},
                        "key_ops": {"type": "array", "items": {"type": "string"}, "contains": {"const": "verify"}},
                        "alg": {"type": "string"},
                        "kid": {"type": "string"},
                        "x5u": {"type": "string"},
                        "x5c": {"type": "array", "items": {"type": "string"}},
                        "x5t": {"type": "string"},
                        "x5t#S256": {"type": "string"}
                    },
                    "not": {
                        "description": "Private or secret key material.",
                        "anyOf": [
                            {"required": ["d"]}, {"required": ["p"]}, {"required": ["q"]}, {"required": ["dp"]},
                            {"required": ["dq"]}, {"required": ["qi"]}, {"required": ["k"]}
                        ]
                    }
                }
            }
        }
    })
}

/// [`policy_schema`] as the committed file holds it: two-space indented, with a final newline.
pub fn policy_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&policy_schema()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_the_parser() {
        let s = policy_schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["$id"], SCHEMA_ID);
        // deny_unknown_fields everywhere, camelCase names, serde defaults are optional.
        assert_eq!(s["additionalProperties"], false);
        let required: Vec<&str> = s["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(required, ["version", "name", "routes"]);
        assert_eq!(
            s["properties"]["$schema"],
            serde_json::json!({"type": "string", "description": s["properties"]["$schema"]["description"]})
        );
        // Hover text flows: no line breaks inside a paragraph.
        assert!(!s["$defs"]["IssuerDoc"]["properties"]["dpop"]["description"].as_str().unwrap().contains('\n'));
        assert!(s["properties"]["tokenCache"].is_object());
        let defs = s["$defs"].as_object().unwrap();
        assert!(defs.values().filter(|d| d["type"] == "object").all(|d| d["additionalProperties"] == false));
        assert!(defs["RouteDoc"]["properties"]["match"].is_object());
        assert_eq!(defs["RouteDoc"]["properties"]["match"]["$ref"], "#/$defs/MatchDoc");
    }
}
