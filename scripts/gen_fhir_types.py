#!/usr/bin/env python3
"""Generate src/minimize/deid/types_table.rs: every FHIR R4 type and what each of its JSON members holds.

`tests/fixtures/fhir/fhir-r4-element-types.json` maps every FHIR R4 (4.0.1) type (resources,
complex datatypes, backbone elements) to its JSON member names and each member's FHIR type name
(primitives lowercase as in the specification, complex/backbone types by model name, `Resource`
for members that hold any resource). It is extracted from the models of the PyPI package
`fhir.resources==6.4.0` (BSD-3-Clause), which are generated from the HL7 FHIR R4 4.0.1
definitions (CC0).

    python3 -m venv /tmp/pv && /tmp/pv/bin/pip install fhir.resources==6.4.0 "pydantic<2"
    /tmp/pv/bin/python scripts/gen_fhir_types.py --extract   # rewrite the fixture from the models
    python3 scripts/gen_fhir_types.py                        # rewrite src/minimize/deid/types_table.rs from it

(`fhir.resources` 6.4.0 does not cap pydantic, but its models need pydantic v1.) Without
arguments only the fixture is read, so regenerating the table needs no third-party package.
"""
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
fixture = root / "tests/fixtures/fhir/fhir-r4-element-types.json"
target = root / "src/minimize/deid/types_table.rs"

# FHIR primitive types whose values are free text (unless excluded below).
TEXT_PRIMITIVES = {"string", "markdown", "xhtml"}
# Every FHIR R4 primitive type name (anything else is a complex/backbone type or `Resource`).
PRIMITIVES = TEXT_PRIMITIVES | {
    "code", "id", "uri", "url", "canonical", "oid", "uuid", "date", "dateTime", "instant", "time",
    "boolean", "integer", "decimal", "positiveInt", "unsignedInt", "base64Binary",
}

# Free-text-typed (string/markdown/xhtml) members that are NOT free text: identifiers, names,
# addresses and vocabulary, which other de-identification rules handle, or structural strings.
# `*.member` matches that member of every type. Each entry must name at least one text-typed
# member of the fixture (checked below), so a typo or a non-string member cannot slip in.
EXCLUDED = [
    ("*.id", "Element.id (a string in R4) of every datatype/backbone element: a local id, not text"),
    ("*.linkId", "links a questionnaire item to its answer (a local id, and rewriting it breaks the link)"),
    ("BundleEntryResponse.status", "an HTTP status line"),
    ("BundleEntryResponse.etag", "an HTTP ETag"),
    ("Coding.display", "vocabulary display of a code, not patient-authored text"),
    ("Coding.version", "code system version"),
    ("Identifier.value", "an identifier: handled by the identifier rules"),
    ("ContactPoint.value", "phone/email/url: handled by the telecom rules"),
    ("HumanName.text", "a name: handled by the name rules"),
    ("HumanName.family", "a name: handled by the name rules"),
    ("HumanName.given", "a name: handled by the name rules"),
    ("HumanName.prefix", "a name: handled by the name rules"),
    ("HumanName.suffix", "a name: handled by the name rules"),
    ("Address.text", "an address: handled by the address rules"),
    ("Address.line", "an address: handled by the address rules"),
    ("Address.city", "an address: handled by the address rules"),
    ("Address.district", "an address: handled by the address rules"),
    ("Address.state", "an address: handled by the address rules"),
    ("Address.postalCode", "an address: handled by the address rules"),
    ("Address.country", "an address: handled by the address rules"),
    ("Quantity.unit", "a unit of measure"),
    ("Age.unit", "a unit of measure (Quantity profile)"),
    ("Count.unit", "a unit of measure (Quantity profile)"),
    ("Distance.unit", "a unit of measure (Quantity profile)"),
    ("Duration.unit", "a unit of measure (Quantity profile)"),
    ("Reference.reference", "a literal reference (a string in R4): handled by the reference rules"),
    ("ElementDefinition.path", "an element path"),
    ("ElementDefinition.sliceName", "a slice name"),
    ("ElementDefinition.label", "a profile label (definitional, not patient data)"),
    ("ElementDefinition.max", "a cardinality"),
    ("ElementDefinition.isModifierReason", "definitional, not patient data"),
    ("ElementDefinition.defaultValueString", "a profile default value (definitional)"),
    ("ElementDefinition.fixedString", "a profile fixed value (definitional)"),
    ("ElementDefinition.patternString", "a profile pattern value (definitional)"),
]


def extract():
    """Write the fixture from the fhir.resources 6.4.0 (FHIR 4.0.1) pydantic v1 models."""
    import typing

    import fhir.resources
    from fhir.resources import fhirtypes
    from fhir.resources.fhirtypesvalidators import MODEL_CLASSES, get_fhir_model_class

    assert fhir.resources.__version__ == "6.4.0", fhir.resources.__version__
    assert fhir.resources.__fhir_version__ == "4.0.1", fhir.resources.__fhir_version__

    def type_name(t):
        # `List[Optional[String]]` (e.g. Address.line) carries the Optional in `type_`.
        if typing.get_origin(t) is typing.Union:
            (t,) = [a for a in typing.get_args(t) if a is not type(None)]
        if t is bool:  # the models annotate boolean members with the builtin bool
            return "boolean"
        if t is fhirtypes.ResourceType:
            return "Resource"
        if issubclass(t, fhirtypes.AbstractType):
            return t.__resource_type__
        if issubclass(t, fhirtypes.Primitive):
            return t.fhir_type_name()
        raise TypeError(t)

    types = {}
    # FHIRPrimitiveExtension is the package's model of the `_x` siblings, not a FHIR type.
    for name in sorted(n for n in MODEL_CLASSES if n != "FHIRPrimitiveExtension"):
        members = {}
        for f in get_fhir_model_class(name).__fields__.values():
            # Only FHIR elements: skips `resource_type`, `fhir_comments` and the `_x` siblings.
            if f.field_info.extra.get("element_property") is not True:
                continue
            assert not f.alias.startswith("_"), (name, f.alias)
            members[f.alias] = type_name(f.type_)
        types[name] = members
    for name, members in types.items():
        for m, t in members.items():
            assert t in PRIMITIVES or t in types, (name, m, t)
    lines = [json.dumps(k) + ":" + json.dumps(v, sort_keys=True, separators=(",", ":")) for k, v in types.items()]
    source = "fhir.resources 6.4.0 (BSD-3-Clause) models = HL7 FHIR R4 4.0.1 definitions (CC0)"
    fixture.write_text('{"source":' + json.dumps(source) + ',"types":{\n' + ",\n".join(lines) + "\n}}\n")


if len(sys.argv) == 2 and sys.argv[1] == "--extract":
    extract()
elif len(sys.argv) != 1:
    sys.exit(__doc__)

types = json.loads(fixture.read_text())["types"]
names = sorted(types)
index = {n: i for i, n in enumerate(names)}
assert len(names) < 2**16


def excluded(ty, member):
    return f"{ty}.{member}" in excl or f"*.{member}" in excl


excl = {e for e, _ in EXCLUDED}
for e in excl:
    ty, member = e.split(".")
    hits = [t for t in names if (ty in ("*", t)) and types[t].get(member) in TEXT_PRIMITIVES]
    assert hits, f"exclusion {e} matches no string/markdown/xhtml member"


def member_kind(ty, member, t):
    if t == "Resource":
        return "Resource"
    if t in TEXT_PRIMITIVES:
        return "Other" if excluded(ty, member) else "Text"
    if t in PRIMITIVES:
        return "Other"
    return f"Type({index[t]})"


out = [
    "//! Generated from the FHIR R4 element types (see tests/fixtures/fhir/README.md). "
    "Regenerate with `scripts/gen_fhir_types.py`.",
    "use super::types::Member::{self, *};",
    "",
    "/// Every FHIR R4 type (sorted by name) and its members (sorted by the length of their JSON",
    "/// name, then by name: a lookup compares lengths before bytes).",
    "pub const TYPES: &[(&str, &[(&str, Member)])] = &[",
]
for n in names:
    ms = ", ".join(f'("{m}", {member_kind(n, m, t)})' for m, t in sorted(types[n].items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())))
    out.append(f'    ("{n}", &[{ms}]),')
out += [
    "];",
    "",
    '/// Text-typed members that are not free text ("Type.member"; "*.member" = of every type):',
    "/// the test that checks the table against the fixture applies the same rule.",
    "#[cfg(test)]",
    "pub const EXCLUDED: &[&str] = &[",
]
out += [f'    "{e}", // {why}' for e, why in EXCLUDED]
out.append("];")
target.write_text("\n".join(out) + "\n")
cfg = root / "rustfmt.toml"
subprocess.run(["rustfmt", "--edition", "2021"] + (["--config-path", str(cfg)] if cfg.exists() else []) + [str(target)],
               check=True)
