//! Compile a route's `minimize` JSON into [`ProfileSet`]: paths parsed once, resource types
//! checked, conflicts reported with their location
//! (`routes[3].minimize.profiles[0].resources.Patient.allow[5]: ...`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::deid::{Deid, FreeText};
use super::path::{parse, Dialect};
use super::preset;
use super::profile::{BodyRules, BundleLinks, Condition, FhirRules, OtherResources, Profile, ProfileSet};
use super::rules::{Action, Merge, Mode, RuleSet};
use super::transform::Transform;
use crate::auth::stepup::compile_authentication;
use crate::fhir::resource_type;
use crate::schema::{
    BundleLinksDoc, CompileError, DatesDoc, DeidentifyDoc, FreeTextDoc, GeneralizeDoc, KeepRemoveDoc, Loc, MinimizeDoc, ModeDoc,
    OtherResourcesDoc, PresetName, ProfileDoc, RulesDoc, TransformKindDoc,
};

/// Longest `keepLast` for `mask`.
const MAX_KEEP_LAST: usize = 64;

/// Paths that are always released and may not be named by rules.
const ALWAYS_KEPT: [&str; 4] = ["resourceType", "id", "meta", "meta.security"];

/// Compile the `minimize` object of a route. `fhir` is true on `fhir` routes.
pub fn compile_minimize(doc: &MinimizeDoc, loc: &Loc<'_>, fhir: bool) -> Result<ProfileSet, CompileError> {
    if doc.profiles.is_empty() {
        return Err(loc.field("profiles").error("must contain at least one profile"));
    }
    let mut names = HashSet::new();
    let mut profiles = Vec::with_capacity(doc.profiles.len());
    let last = doc.profiles.len() - 1;
    for (i, p) in doc.profiles.iter().enumerate() {
        let profiles_loc = loc.field("profiles");
        let ploc = profiles_loc.index(i);
        if !crate::ident::shaped(&p.name, usize::MAX, b"-_") {
            return Err(ploc.field("name").error(format!("`{}` must be non-empty [A-Za-z0-9_-]", p.name)));
        }
        if !names.insert(p.name.as_str()) {
            return Err(ploc.field("name").error(format!("duplicate profile name `{}`", p.name)));
        }
        let profile = compile_profile(p, &ploc, fhir)?;
        if profile.when.is_unconditional() && i != last {
            return Err(ploc.error(
                format!("profile `{}` has no `whenScopes` or `whenPurpose`, so it matches every caller and the profiles after it are unreachable; move it last", p.name),
            ));
        }
        profiles.push(Arc::new(profile));
    }
    let mut safe_harbor_purposes = Vec::new();
    if let Some(list) = &doc.safe_harbor_purposes {
        let sloc = loc.field("safeHarborPurposes");
        if list.is_empty() {
            return Err(sloc.error("must list at least one purpose-of-use code"));
        }
        for (i, code) in list.iter().enumerate() {
            if !crate::auth::purpose::is_purpose_of_use(code) {
                return Err(sloc.index(i).error(format!("`{code}` is not an HL7 v3 PurposeOfUse code")));
            }
        }
        if !profiles.iter().any(|p| p.safe_harbor) {
            return Err(sloc.error("no profile of the route uses `\"preset\": \"safe-harbor\"`, so these callers could never be served"));
        }
        safe_harbor_purposes.clone_from(list);
    }
    Ok(ProfileSet { profiles, safe_harbor_purposes })
}

fn compile_profile(p: &ProfileDoc, loc: &Loc<'_>, fhir: bool) -> Result<Profile, CompileError> {
    let mut when = Condition::default();
    if let Some(s) = &p.when_scopes {
        if s.all_of.is_empty() && s.any_of.is_empty() {
            return Err(loc.field("whenScopes").error("must list `allOf` or `anyOf` scopes"));
        }
        for (field, list) in [("allOf", &s.all_of), ("anyOf", &s.any_of)] {
            for (i, sc) in list.iter().enumerate() {
                if sc.is_empty() || sc.contains(char::is_whitespace) {
                    return Err(loc.field("whenScopes").field(field).index(i).error(format!("`{sc}` is not a single scope")));
                }
            }
        }
        when.all_of.clone_from(&s.all_of);
        when.any_of.clone_from(&s.any_of);
    }
    if let Some(list) = &p.when_purpose {
        if list.is_empty() {
            return Err(loc.field("whenPurpose").error("must list at least one purpose-of-use code"));
        }
        for (i, code) in list.iter().enumerate() {
            if code.is_empty() || code.contains(char::is_whitespace) {
                return Err(loc.field("whenPurpose").index(i).error(format!("`{code}` is not a purpose-of-use code")));
            }
        }
        when.purpose.clone_from(list);
    }
    if let Some(a) = &p.authentication {
        when.authentication = Some(compile_authentication(a, &loc.field("authentication"))?);
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
                return Err(loc.field(field).error("a `preset` profile takes no rule settings"));
            }
            if !fhir {
                return Err(loc.field("preset").error("presets apply to FHIR resources; use them on `fhir` routes"));
            }
            match preset {
                PresetName::SafeHarbor => {
                    let mut doc =
                        preset::safe_harbor().map_err(|e| loc.field("preset").error(format!("built-in preset is invalid: {e}")))?;
                    if let Some(own) = &p.deidentify {
                        let dloc = loc.field("deidentify");
                        if own.free_text == Some(FreeTextDoc::Keep) {
                            return Err(dloc.field("freeText").error("Safe Harbor needs free text scanned: `scrub` or `withhold`"));
                        }
                        if own.date_shift_days.is_some() {
                            return Err(dloc.field("dateShiftDays").error(
                                "the safe-harbor preset keeps only the year of dates; date shifting is for Expert Determination profiles",
                            ));
                        }
                        let preset_deid = doc.deidentify.get_or_insert_with(Default::default);
                        if own.free_text.is_some() {
                            preset_deid.free_text = own.free_text;
                        }
                        if own.pseudonymize_ids.is_some() {
                            preset_deid.pseudonymize_ids = own.pseudonymize_ids;
                        }
                    }
                    compile_rules(&doc, &loc.field("preset(safe-harbor)"), true)?
                }
            }
        }
        None => compile_rules(p, loc, fhir)?,
    };
    Ok(Profile { name: p.name.clone(), when, shadow: p.shadow, safe_harbor: p.preset == Some(PresetName::SafeHarbor), body })
}

/// The rule part of a profile (everything but name, conditions and shadow).
pub fn compile_rules(p: &ProfileDoc, loc: &Loc<'_>, fhir: bool) -> Result<BodyRules, CompileError> {
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
            ("deidentify", p.deidentify.is_some()),
        ] {
            if set {
                return Err(loc.field(field).error("FHIR settings need a `fhir` route; plain JSON routes use `fields`"));
            }
        }
        let fields = p.fields.as_ref().ok_or_else(|| loc.error("a plain JSON route's profile needs `fields`"))?;
        let mut rules = RuleSet::new(mode);
        add_rules(&mut rules, fields, &loc.field("fields"), Dialect::Json, Merge::Strict)?;
        return Ok(BodyRules::Json(rules));
    }
    if p.fields.is_some() {
        return Err(loc.field("fields").error("FHIR routes set rules per resource type in `resources`"));
    }
    let docs = p.resources.as_ref().ok_or_else(|| loc.error("a FHIR route's profile needs `resources` or a `preset`"))?;
    let resources = loc.field("resources");
    let star_loc = resources.field("*");
    let star = match docs.get("*") {
        Some(d) => {
            let mut r = RuleSet::new(mode);
            add_rules(&mut r, d, &star_loc, Dialect::Fhir, Merge::Strict)?;
            Some(r)
        }
        None => None,
    };
    let mut types = HashMap::new();
    for (name, d) in docs {
        if name == "*" {
            continue;
        }
        let tloc = resources.field(name);
        let ty = resource_type(name).ok_or_else(|| tloc.error(format!("unknown FHIR resource type `{name}`")))?;
        if ty == "Bundle" {
            return Err(tloc.error("Bundles are unwrapped: rules apply to their entries' resources (see `bundleLinks`)"));
        }
        let mut r = RuleSet::new(mode);
        add_rules(&mut r, d, &tloc, Dialect::Fhir, Merge::Strict)?;
        if let Some(s) = docs.get("*") {
            // Already validated above; merged so the type's own rules win.
            add_rules(&mut r, s, &star_loc, Dialect::Fhir, Merge::Yield)?;
        }
        types.insert(ty, r);
    }
    let dates_to_year = p.dates == Some(DatesDoc::Year);
    let links = match p.bundle_links.unwrap_or(BundleLinksDoc::PagingOnly) {
        BundleLinksDoc::PagingOnly => BundleLinks::PagingOnly,
        BundleLinksDoc::DropQuery => BundleLinks::DropQuery,
        BundleLinksDoc::Drop => BundleLinks::Drop,
        BundleLinksDoc::Keep => BundleLinks::Keep,
    };
    let deid = match &p.deidentify {
        Some(d) => compile_deid(d, &loc.field("deidentify"), dates_to_year, links)?,
        None => None,
    };
    Ok(BodyRules::Fhir(FhirRules {
        types,
        star,
        other: match p.other_resources.unwrap_or(OtherResourcesDoc::Remove) {
            OtherResourcesDoc::Allow => OtherResources::Allow,
            OtherResourcesDoc::Remove => OtherResources::Remove,
            OtherResourcesDoc::Deny => OtherResources::Deny,
        },
        remove_reference_display: p.reference_display == Some(KeepRemoveDoc::Remove),
        dates_to_year,
        links,
        pass: FhirRules::pass_rules(),
        deid,
    }))
}

/// The longest date shift a profile may ask for (ten years).
const MAX_SHIFT_DAYS: u32 = 3650;

/// A profile's `deidentify` settings (`None` when they turn nothing on).
fn compile_deid(d: &DeidentifyDoc, loc: &Loc<'_>, dates_to_year: bool, links: BundleLinks) -> Result<Option<Deid>, CompileError> {
    let free_text = match d.free_text.unwrap_or(FreeTextDoc::Keep) {
        FreeTextDoc::Keep => FreeText::Keep,
        FreeTextDoc::Scrub => FreeText::Scrub,
        FreeTextDoc::Withhold => FreeText::Withhold,
    };
    let pseudonyms = d.pseudonymize_ids.unwrap_or(false);
    if let Some(days) = d.date_shift_days {
        if !(1..=MAX_SHIFT_DAYS).contains(&days) {
            return Err(loc.field("dateShiftDays").error(format!("must be 1..={MAX_SHIFT_DAYS} days, not {days}")));
        }
        if dates_to_year {
            return Err(loc.field("dateShiftDays").error("dates are already cut to the year (`\"dates\": \"year\"`): choose one"));
        }
    }
    if pseudonyms && links == BundleLinks::Keep {
        return Err(loc.field("pseudonymizeIds").error(
            "`\"bundleLinks\": \"keep\"` would release ids and search values in link queries: use `paging-only`, `drop-query` or `drop`",
        ));
    }
    if free_text == FreeText::Keep && !pseudonyms && d.date_shift_days.is_none() {
        return Ok(None);
    }
    let recognisers = super::deid::recognisers().map_err(|e| loc.error(format!("built-in recognisers are invalid: {e}")))?;
    Ok(Some(Deid { free_text, pseudonyms, shift_days: d.date_shift_days, recognisers, links }))
}

fn add_rules(r: &mut RuleSet, d: &RulesDoc, loc: &Loc<'_>, dialect: Dialect, merge: Merge) -> Result<(), CompileError> {
    if r.mode == Mode::Deny && !d.allow.is_empty() {
        return Err(loc.field("allow").error("`allow` needs `\"mode\": \"allow\"`"));
    }
    // Every entry's action is known before any path is parsed, so a bad transform is reported
    // before a bad path in an earlier list. An entry's location: list, index, sub-field.
    let mut entries: Vec<(&str, usize, Option<&str>, &str, Action)> = Vec::new();
    for (i, p) in d.allow.iter().enumerate() {
        entries.push(("allow", i, None, p, Action::Keep));
    }
    for (i, p) in d.deny.iter().enumerate() {
        entries.push(("deny", i, None, p, Action::Remove));
    }
    let transforms = loc.field("transform");
    for (i, t) in d.transform.iter().enumerate() {
        let tloc = transforms.index(i);
        let kind = match (t.transform, t.keep_last, t.to) {
            (TransformKindDoc::Mask, Some(n), None) if (1..=MAX_KEEP_LAST).contains(&n) => Transform::Mask(n),
            (TransformKindDoc::Mask, Some(n), None) => {
                return Err(tloc.field("keepLast").error(format!("`{n}` must be between 1 and {MAX_KEEP_LAST}")))
            }
            (TransformKindDoc::Mask, None, _) => return Err(tloc.error("`mask` needs `keepLast`")),
            (TransformKindDoc::Hash, None, None) => Transform::Hash,
            (TransformKindDoc::Generalize, None, Some(to)) => match to {
                GeneralizeDoc::Year => Transform::Year,
                GeneralizeDoc::BirthYear => Transform::BirthYear,
                GeneralizeDoc::Zip3 => Transform::Zip3,
                GeneralizeDoc::Age90 => Transform::Age90,
            },
            (TransformKindDoc::Generalize, None, None) => return Err(tloc.error("`generalize` needs `to`")),
            (_, Some(_), _) => return Err(tloc.field("keepLast").error("only `mask` takes `keepLast`")),
            (_, _, Some(_)) => return Err(tloc.field("to").error("only `generalize` takes `to`")),
        };
        entries.push(("transform", i, Some("path"), &t.path, Action::Transform(kind)));
    }
    for (list, i, sub, text, action) in entries {
        let list = loc.field(list);
        let entry = list.index(i);
        match sub {
            Some(sub) => add_rule(r, &entry.field(sub), text, action, dialect, merge)?,
            None => add_rule(r, &entry, text, action, dialect, merge)?,
        }
    }
    Ok(())
}

/// One `allow`, `deny` or `transform` path: parsed, checked against what rules may name, and
/// inserted.
fn add_rule(r: &mut RuleSet, loc: &Loc<'_>, text: &str, action: Action, dialect: Dialect, merge: Merge) -> Result<(), CompileError> {
    let path = parse(text, dialect).map_err(|e| loc.error(e.to_string()))?;
    if dialect == Dialect::Fhir && !path.anywhere {
        let shown = path.to_string();
        if ALWAYS_KEPT.contains(&shown.as_str()) {
            return Err(loc.error(format!("`{shown}` is always released and cannot be named by a rule")));
        }
        if shown.starts_with("meta.security") {
            return Err(loc.error("`meta.security` is always released (it carries the REDACTED label)"));
        }
        if shown.starts_with("contained.") || (shown == "contained" && matches!(action, Action::Transform(_))) {
            return Err(loc.error("contained resources follow their own type's rules; only `contained` itself can be allowed or denied"));
        }
        if shown.starts_with("text.") {
            return Err(loc.error("the narrative is released or removed as a whole: name `text`"));
        }
    }
    r.insert(&path, action, merge).map_err(|m| loc.error(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc(v: Value) -> MinimizeDoc {
        serde_json::from_value(v).unwrap()
    }

    static ROUTES: Loc<'static> = crate::schema::ROOT.field("routes");
    static ROUTE: Loc<'static> = ROUTES.index(3);
    static MINIMIZE: Loc<'static> = ROUTE.field("minimize");

    /// `routes[3].minimize`.
    fn route3() -> &'static Loc<'static> {
        &MINIMIZE
    }

    fn compile_err(v: Value, fhir: bool) -> String {
        compile_minimize(&doc(v), route3(), fhir).unwrap_err().to_string()
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
            route3(),
            true,
        )
        .unwrap();
        assert_eq!(set.profiles.len(), 3);
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(set.select(&s(&["patient/*.rs"]), &[]).unwrap().name, "app");
        assert_eq!(set.select(&s(&["patient/*.rs"]), &s(&["HRESCH"])).unwrap().name, "research");
        assert_eq!(set.select(&[], &[]).unwrap().name, "default");
        // The safe-harbor preset pseudonymizes record keys under the HMAC key.
        assert!(set.requires_hmac_key());
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
            route3(),
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
            match compile_minimize(&doc(v.clone()), route3(), true) {
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
            &crate::schema::ROOT.field("m"),
            true,
        )
        .unwrap();
        assert!(set.requires_hmac_key());
        let set = compile_minimize(
            &doc(json!({"profiles": [{"name": "a", "fields": {"transform": [{"path": "ssn", "transform": "hash"}]}}]})),
            &crate::schema::ROOT.field("m"),
            false,
        )
        .unwrap();
        assert!(set.requires_hmac_key());
    }
}
