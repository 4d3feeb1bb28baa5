//! Compile a route's `minimize` JSON into [`ProfileSet`]: paths parsed once, resource types
//! checked, conflicts reported with their location
//! (`routes[3].minimize.profiles[0].resources.Patient.allow[5]: ...`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::path::{parse, Dialect};
use super::preset;
use super::profile::{BodyRules, BundleLinks, Condition, FhirRules, OtherResources, Profile, ProfileSet};
use super::rules::{Action, Merge, Mode, RuleSet};
use super::transform::Transform;
use crate::fhir::resource_type;
use crate::policy::schema::{
    BundleLinksDoc, DatesDoc, GeneralizeDoc, KeepRemoveDoc, MinimizeDoc, ModeDoc, OtherResourcesDoc, PresetName, ProfileDoc, RulesDoc,
    TransformKindDoc,
};
use crate::policy::CompileError;

fn err(location: impl Into<String>, message: impl Into<String>) -> CompileError {
    CompileError { location: location.into(), message: message.into() }
}

/// Longest `keepLast` for `mask`.
const MAX_KEEP_LAST: usize = 64;

/// Paths that are always released and may not be named by rules.
const ALWAYS_KEPT: [&str; 4] = ["resourceType", "id", "meta", "meta.security"];

/// Compile the `minimize` object of a route. `fhir` is true on `fhir` routes.
pub fn compile_minimize(doc: &MinimizeDoc, loc: &str, fhir: bool) -> Result<ProfileSet, CompileError> {
    if doc.profiles.is_empty() {
        return Err(err(format!("{loc}.profiles"), "must contain at least one profile"));
    }
    let mut names = HashSet::new();
    let mut profiles = Vec::with_capacity(doc.profiles.len());
    let last = doc.profiles.len() - 1;
    for (i, p) in doc.profiles.iter().enumerate() {
        let ploc = format!("{loc}.profiles[{i}]");
        if !crate::ident::shaped(&p.name, usize::MAX, b"-_") {
            return Err(err(format!("{ploc}.name"), format!("`{}` must be non-empty [A-Za-z0-9_-]", p.name)));
        }
        if !names.insert(p.name.as_str()) {
            return Err(err(format!("{ploc}.name"), format!("duplicate profile name `{}`", p.name)));
        }
        let profile = compile_profile(p, &ploc, fhir)?;
        if profile.when.is_unconditional() && i != last {
            return Err(err(
                ploc,
                format!("profile `{}` has no `whenScopes` or `whenPurpose`, so it matches every caller and the profiles after it are unreachable; move it last", p.name),
            ));
        }
        profiles.push(Arc::new(profile));
    }
    let mut safe_harbor_purposes = Vec::new();
    if let Some(list) = &doc.safe_harbor_purposes {
        let sloc = format!("{loc}.safeHarborPurposes");
        if list.is_empty() {
            return Err(err(sloc, "must list at least one purpose-of-use code"));
        }
        for (i, code) in list.iter().enumerate() {
            if !crate::auth::purpose::is_purpose_of_use(code) {
                return Err(err(format!("{sloc}[{i}]"), format!("`{code}` is not an HL7 v3 PurposeOfUse code")));
            }
        }
        if !profiles.iter().any(|p| p.safe_harbor) {
            return Err(err(sloc, "no profile of the route uses `\"preset\": \"safe-harbor\"`, so these callers could never be served"));
        }
        safe_harbor_purposes.clone_from(list);
    }
    Ok(ProfileSet { profiles, safe_harbor_purposes })
}

fn compile_profile(p: &ProfileDoc, loc: &str, fhir: bool) -> Result<Profile, CompileError> {
    let mut when = Condition::default();
    if let Some(s) = &p.when_scopes {
        if s.all_of.is_empty() && s.any_of.is_empty() {
            return Err(err(format!("{loc}.whenScopes"), "must list `allOf` or `anyOf` scopes"));
        }
        for (field, list) in [("allOf", &s.all_of), ("anyOf", &s.any_of)] {
            for (i, sc) in list.iter().enumerate() {
                if sc.is_empty() || sc.contains(char::is_whitespace) {
                    return Err(err(format!("{loc}.whenScopes.{field}[{i}]"), format!("`{sc}` is not a single scope")));
                }
            }
        }
        when.all_of.clone_from(&s.all_of);
        when.any_of.clone_from(&s.any_of);
    }
    if let Some(list) = &p.when_purpose {
        if list.is_empty() {
            return Err(err(format!("{loc}.whenPurpose"), "must list at least one purpose-of-use code"));
        }
        for (i, code) in list.iter().enumerate() {
            if code.is_empty() || code.contains(char::is_whitespace) {
                return Err(err(format!("{loc}.whenPurpose[{i}]"), format!("`{code}` is not a purpose-of-use code")));
            }
        }
        when.purpose.clone_from(list);
    }
    if let Some(a) = &p.authentication {
        when.authentication = Some(crate::policy::compile::compile_authentication(a, &format!("{loc}.authentication"))?);
    }
    let body = match p.preset {
        Some(preset) => {
            let extra = [
                ("mode", p.mode.is_some()),
                ("resources", p.resources.is_some()),
                ("fields", p.fields.is_some()),
                ("otherResources", p.other_resources.is_some()),
                ("referenceDisplay", p.reference_display.is_some()),
                ("dates", p.dates.is_some()),
                ("bundleLinks", p.bundle_links.is_some()),
            ];
            if let Some((field, _)) = extra.iter().find(|(_, set)| *set) {
                return Err(err(format!("{loc}.{field}"), "a `preset` profile takes no rule settings"));
            }
            if !fhir {
                return Err(err(format!("{loc}.preset"), "presets apply to FHIR resources; use them on `fhir` routes"));
            }
            match preset {
                PresetName::SafeHarbor => {
                    let doc =
                        preset::safe_harbor().map_err(|e| err(format!("{loc}.preset"), format!("built-in preset is invalid: {e}")))?;
                    compile_rules(&doc, &format!("{loc}.preset(safe-harbor)"), true)?
                }
            }
        }
        None => compile_rules(p, loc, fhir)?,
    };
    Ok(Profile { name: p.name.clone(), when, shadow: p.shadow, safe_harbor: p.preset == Some(PresetName::SafeHarbor), body })
}

/// The rule part of a profile (everything but name, conditions and shadow).
pub fn compile_rules(p: &ProfileDoc, loc: &str, fhir: bool) -> Result<BodyRules, CompileError> {
    let mode = match p.mode.unwrap_or(ModeDoc::Allow) {
        ModeDoc::Allow => Mode::Allow,
        ModeDoc::Deny => Mode::Deny,
    };
    if !fhir {
        for (field, set) in [
            ("resources", p.resources.is_some()),
            ("otherResources", p.other_resources.is_some()),
            ("referenceDisplay", p.reference_display.is_some()),
            ("dates", p.dates.is_some()),
            ("bundleLinks", p.bundle_links.is_some()),
        ] {
            if set {
                return Err(err(format!("{loc}.{field}"), "FHIR settings need a `fhir` route; plain JSON routes use `fields`"));
            }
        }
        let fields = p.fields.as_ref().ok_or_else(|| err(loc, "a plain JSON route's profile needs `fields`"))?;
        let mut rules = RuleSet::new(mode);
        add_rules(&mut rules, fields, &format!("{loc}.fields"), Dialect::Json, Merge::Strict)?;
        return Ok(BodyRules::Json(rules));
    }
    if p.fields.is_some() {
        return Err(err(format!("{loc}.fields"), "FHIR routes set rules per resource type in `resources`"));
    }
    let docs = p.resources.as_ref().ok_or_else(|| err(loc, "a FHIR route's profile needs `resources` or a `preset`"))?;
    let star = match docs.get("*") {
        Some(d) => {
            let mut r = RuleSet::new(mode);
            add_rules(&mut r, d, &format!("{loc}.resources.*"), Dialect::Fhir, Merge::Strict)?;
            Some(r)
        }
        None => None,
    };
    let mut types = HashMap::new();
    for (name, d) in docs {
        if name == "*" {
            continue;
        }
        let tloc = format!("{loc}.resources.{name}");
        let ty = resource_type(name).ok_or_else(|| err(&tloc, format!("unknown FHIR resource type `{name}`")))?;
        if ty == "Bundle" {
            return Err(err(tloc, "Bundles are unwrapped: rules apply to their entries' resources (see `bundleLinks`)"));
        }
        let mut r = RuleSet::new(mode);
        add_rules(&mut r, d, &tloc, Dialect::Fhir, Merge::Strict)?;
        if let Some(s) = docs.get("*") {
            // Already validated above; merged so the type's own rules win.
            add_rules(&mut r, s, &format!("{loc}.resources.*"), Dialect::Fhir, Merge::Yield)?;
        }
        types.insert(ty, r);
    }
    Ok(BodyRules::Fhir(FhirRules {
        types,
        star,
        other: match p.other_resources.unwrap_or(OtherResourcesDoc::Remove) {
            OtherResourcesDoc::Allow => OtherResources::Allow,
            OtherResourcesDoc::Remove => OtherResources::Remove,
            OtherResourcesDoc::Deny => OtherResources::Deny,
        },
        remove_reference_display: p.reference_display == Some(KeepRemoveDoc::Remove),
        dates_to_year: p.dates == Some(DatesDoc::Year),
        links: match p.bundle_links.unwrap_or(BundleLinksDoc::PagingOnly) {
            BundleLinksDoc::PagingOnly => BundleLinks::PagingOnly,
            BundleLinksDoc::DropQuery => BundleLinks::DropQuery,
            BundleLinksDoc::Drop => BundleLinks::Drop,
            BundleLinksDoc::Keep => BundleLinks::Keep,
        },
        pass: FhirRules::pass_rules(),
    }))
}

fn add_rules(r: &mut RuleSet, d: &RulesDoc, loc: &str, dialect: Dialect, merge: Merge) -> Result<(), CompileError> {
    if r.mode == Mode::Deny && !d.allow.is_empty() {
        return Err(err(format!("{loc}.allow"), "`allow` needs `\"mode\": \"allow\"`"));
    }
    let mut entries: Vec<(String, &str, Action)> = Vec::new();
    for (i, p) in d.allow.iter().enumerate() {
        entries.push((format!("{loc}.allow[{i}]"), p, Action::Keep));
    }
    for (i, p) in d.deny.iter().enumerate() {
        entries.push((format!("{loc}.deny[{i}]"), p, Action::Remove));
    }
    for (i, t) in d.transform.iter().enumerate() {
        let tloc = format!("{loc}.transform[{i}]");
        let kind = match (t.transform, t.keep_last, t.to) {
            (TransformKindDoc::Mask, Some(n), None) if (1..=MAX_KEEP_LAST).contains(&n) => Transform::Mask(n),
            (TransformKindDoc::Mask, Some(n), None) => {
                return Err(err(format!("{tloc}.keepLast"), format!("`{n}` must be between 1 and {MAX_KEEP_LAST}")))
            }
            (TransformKindDoc::Mask, None, _) => return Err(err(tloc, "`mask` needs `keepLast`")),
            (TransformKindDoc::Hash, None, None) => Transform::Hash,
            (TransformKindDoc::Generalize, None, Some(to)) => match to {
                GeneralizeDoc::Year => Transform::Year,
                GeneralizeDoc::BirthYear => Transform::BirthYear,
                GeneralizeDoc::Zip3 => Transform::Zip3,
                GeneralizeDoc::Age90 => Transform::Age90,
            },
            (TransformKindDoc::Generalize, None, None) => return Err(err(tloc, "`generalize` needs `to`")),
            (_, Some(_), _) => return Err(err(format!("{tloc}.keepLast"), "only `mask` takes `keepLast`")),
            (_, _, Some(_)) => return Err(err(format!("{tloc}.to"), "only `generalize` takes `to`")),
        };
        entries.push((format!("{tloc}.path"), &t.path, Action::Transform(kind)));
    }
    for (eloc, text, action) in entries {
        let path = parse(text, dialect).map_err(|e| err(&eloc, e.to_string()))?;
        if dialect == Dialect::Fhir && !path.anywhere {
            let shown = path.to_string();
            if ALWAYS_KEPT.contains(&shown.as_str()) {
                return Err(err(eloc, format!("`{shown}` is always released and cannot be named by a rule")));
            }
            if shown.starts_with("meta.security") {
                return Err(err(eloc, "`meta.security` is always released (it carries the REDACTED label)"));
            }
            if shown.starts_with("contained.") || (shown == "contained" && matches!(action, Action::Transform(_))) {
                return Err(err(
                    eloc,
                    "contained resources follow their own type's rules; only `contained` itself can be allowed or denied",
                ));
            }
            if shown.starts_with("text.") {
                return Err(err(eloc, "the narrative is released or removed as a whole: name `text`"));
            }
        }
        r.insert(&path, action, merge).map_err(|m| err(eloc, m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc(v: Value) -> MinimizeDoc {
        serde_json::from_value(v).unwrap()
    }

    fn compile_err(v: Value, fhir: bool) -> String {
        compile_minimize(&doc(v), "routes[3].minimize", fhir).unwrap_err().to_string()
    }

    #[test]
    fn compiles_profiles() {
        let set = compile_minimize(
            &doc(json!({"profiles": [
                {"name": "research", "whenPurpose": ["HRESCH"], "preset": "safe-harbor"},
                {"name": "app", "whenScopes": {"anyOf": ["patient/*.rs"]}, "mode": "allow",
                 "resources": {"Patient": {"allow": ["name", "birthDate"], "transform": [{"path": "identifier[*].value", "transform": "mask", "keepLast": 4}]},
                               "*": {"allow": ["status", "code"]}}},
                {"name": "default", "mode": "deny", "resources": {"*": {"deny": ["**.identifier"]}}}
            ]})),
            "routes[3].minimize",
            true,
        )
        .unwrap();
        assert_eq!(set.profiles.len(), 3);
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(set.select(&s(&["patient/*.rs"]), &[]).unwrap().name, "app");
        assert_eq!(set.select(&s(&["patient/*.rs"]), &s(&["HRESCH"])).unwrap().name, "research");
        assert_eq!(set.select(&[], &[]).unwrap().name, "default");
        assert!(!set.requires_hmac_key());
        let BodyRules::Fhir(f) = &set.profiles[1].body else { panic!() };
        // `*` merged into Patient.
        assert!(f.types["Patient"].root.matching("status", None).next().is_some());
        assert!(f.rules_for("Observation").is_some());
    }

    #[test]
    fn step_up_and_safe_harbor_binding() {
        let set = compile_minimize(
            &doc(json!({"safeHarborPurposes": ["HRESCH", "PUBHLTH"], "profiles": [
                {"name": "full", "authentication": {"amr": ["mfa"]}, "mode": "deny", "resources": {}},
                {"name": "research", "whenPurpose": ["HRESCH"], "preset": "safe-harbor"},
                {"name": "default", "mode": "deny", "resources": {"*": {"deny": ["**.identifier"]}}}
            ]})),
            "routes[3].minimize",
            true,
        )
        .unwrap();
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(set.profiles[0].when.authentication.is_some() && set.profiles[1].safe_harbor);
        // Step-up met: the richer profile; not met (or unknown): falls through.
        assert_eq!(set.select_where(&[], &[], |_| true).unwrap().name, "full");
        assert_eq!(set.select_where(&[], &[], |_| false).unwrap().name, "default");
        assert_eq!(set.select(&[], &[]).unwrap().name, "default");
        // A research caller only ever gets safe-harbor, even with step-up met.
        assert_eq!(set.select_where(&[], &s(&["HRESCH"]), |_| true).unwrap().name, "research");
        assert!(set.select_where(&[], &s(&["PUBHLTH"]), |_| true).is_none(), "no safe-harbor profile matches PUBHLTH here");
        assert_eq!(set.named("full", &[], |_| true).unwrap().name, "full");
        assert!(set.named("full", &s(&["HRESCH"]), |_| true).is_none());
        let errs: Vec<(Value, &str)> = vec![
            (
                json!({"safeHarborPurposes": ["HRESCH"], "profiles": [{"name": "a", "resources": {}}]}),
                "routes[3].minimize.safeHarborPurposes: no profile",
            ),
            (
                json!({"safeHarborPurposes": ["RESEARCH"], "profiles": [{"name": "a", "preset": "safe-harbor"}]}),
                "safeHarborPurposes[0]: `RESEARCH`",
            ),
            (json!({"profiles": [{"name": "a", "authentication": {}, "resources": {}}]}), "profiles[0].authentication: must set"),
            (json!({"profiles": [{"name": "a", "authentication": {"amr": ["mfa"]}, "resources": {}}, {"name": "b", "resources": {}}]}), ""),
        ];
        for (v, want) in errs {
            match compile_minimize(&doc(v.clone()), "routes[3].minimize", true) {
                Ok(_) => assert!(want.is_empty(), "{v} compiled"),
                Err(e) => assert!(!want.is_empty() && e.to_string().contains(want), "{v}: got `{e}`"),
            }
        }
    }

    #[test]
    fn errors_are_located() {
        let cases: Vec<(Value, bool, &str)> = vec![
            (json!({"profiles": []}), true, "routes[3].minimize.profiles: must contain"),
            (
                json!({"profiles": [{"name": "a", "resources": {"Pateint": {}}}]}),
                true,
                "routes[3].minimize.profiles[0].resources.Pateint: unknown FHIR resource type `Pateint`",
            ),
            (
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"allow": ["name", "birthDate", "gender", "address", "telecom", "identifier[0].value"]}}}]}),
                true,
                "routes[3].minimize.profiles[0].resources.Patient.allow[5]: `identifier[0].value`: array indexes",
            ),
            (
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"allow": ["_birthDate"]}}}]}),
                true,
                "routes[3].minimize.profiles[0].resources.Patient.allow[0]: `_birthDate`: primitive-extension",
            ),
            (
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"allow": ["id"]}}}]}),
                true,
                "resources.Patient.allow[0]: `id` is always released",
            ),
            (json!({"profiles": [{"name": "a", "resources": {"Patient": {"deny": ["meta.security"]}}}]}), true, "deny[0]: `meta.security`"),
            (
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"allow": ["contained.name"]}}}]}),
                true,
                "contained resources follow",
            ),
            (json!({"profiles": [{"name": "a", "resources": {"Patient": {"allow": ["text.div"]}}}]}), true, "name `text`"),
            (
                json!({"profiles": [{"name": "a", "mode": "deny", "resources": {"Patient": {"allow": ["name"]}}}]}),
                true,
                "resources.Patient.allow: `allow` needs",
            ),
            (json!({"profiles": [{"name": "a", "resources": {"Bundle": {}}}]}), true, "resources.Bundle: Bundles are unwrapped"),
            (
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"transform": [{"path": "x", "transform": "mask"}]}}}]}),
                true,
                "transform[0]: `mask` needs `keepLast`",
            ),
            (
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"transform": [{"path": "x", "transform": "mask", "keepLast": 0}]}}}]}),
                true,
                "transform[0].keepLast",
            ),
            (
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"transform": [{"path": "x", "transform": "hash", "to": "year"}]}}}]}),
                true,
                "transform[0].to: only `generalize`",
            ),
            (
                json!({"profiles": [{"name": "a", "resources": {"Patient": {"transform": [{"path": "x", "transform": "generalize"}]}}}]}),
                true,
                "`generalize` needs `to`",
            ),
            (
                json!({"profiles": [{"name": "a", "resources": {}}, {"name": "b", "resources": {}}]}),
                true,
                "routes[3].minimize.profiles[0]: profile `a` has no",
            ),
            (
                json!({"profiles": [{"name": "a", "whenScopes": {"anyOf": ["x"]}, "resources": {}}, {"name": "a", "resources": {}}]}),
                true,
                "profiles[1].name: duplicate",
            ),
            (json!({"profiles": [{"name": "a", "preset": "safe-harbor", "mode": "deny"}]}), true, "profiles[0].mode: a `preset` profile"),
            (json!({"profiles": [{"name": "a", "preset": "safe-harbor"}]}), false, "profiles[0].preset: presets apply"),
            (json!({"profiles": [{"name": "a", "resources": {}}]}), false, "profiles[0].resources: FHIR settings"),
            (json!({"profiles": [{"name": "a", "fields": {}}]}), true, "profiles[0].fields: FHIR routes"),
            (json!({"profiles": [{"name": "a"}]}), true, "profiles[0]: a FHIR route's profile needs"),
            (json!({"profiles": [{"name": "a", "whenPurpose": []}]}), true, "profiles[0].whenPurpose"),
            (json!({"profiles": [{"name": "a", "whenScopes": {"anyOf": ["a b"]}}]}), true, "profiles[0].whenScopes.anyOf[0]"),
            (json!({"profiles": [{"name": "a b"}]}), true, "profiles[0].name"),
            (json!({"profiles": [{"name": "a", "fields": {"allow": ["ssn", "ssn"]}}]}), false, "fields.allow[1]: `ssn` is listed twice"),
        ];
        for (v, fhir, want) in cases {
            let got = compile_err(v.clone(), fhir);
            assert!(got.contains(want), "{v}: got `{got}`, want `{want}`");
        }
    }

    #[test]
    fn hash_profiles_need_a_key() {
        let set = compile_minimize(
            &doc(json!({"profiles": [{"name": "a", "mode": "deny", "resources": {"*": {"transform": [{"path": "**.identifier.value", "transform": "hash"}]}}}]})),
            "m",
            true,
        )
        .unwrap();
        assert!(set.requires_hmac_key());
        let set = compile_minimize(
            &doc(json!({"profiles": [{"name": "a", "fields": {"transform": [{"path": "ssn", "transform": "hash"}]}}]})),
            "m",
            false,
        )
        .unwrap();
        assert!(set.requires_hmac_key());
    }
}
