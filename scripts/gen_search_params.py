#!/usr/bin/env python3
"""Generate src/fhir/search_params_table.rs from the FHIR R4 search parameters.

`tests/fixtures/fhir/hl7r4_search-parameters.json` holds, for every SearchParameter of the
FHIR R4 (4.0.1) specification's `search-parameters.json` Bundle, its code, base resource types,
type, reference targets and FHIRPath expression (nothing else; `scripts/gen_audit_names.py`
reads it too). `--extract BUNDLE` rewrites that fixture from the
specification's Bundle; without it the table is regenerated from the fixture.
"""
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
fixture = root / "tests/fixtures/fhir/hl7r4_search-parameters.json"

if len(sys.argv) == 3 and sys.argv[1] == "--extract":
    bundle = json.loads(pathlib.Path(sys.argv[2]).read_text())
    params = []
    for e in bundle["entry"]:
        r = e["resource"]
        params.append({k: r[k] for k in ("code", "base", "type", "target", "expression") if k in r})
    params.sort(key=lambda p: (p["code"], p["base"]))
    doc = {"source": "HL7 FHIR R4 4.0.1 search-parameters.json (CC0): code, base, type, target, expression",
           "parameters": params}
    fixture.write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")

doc = json.loads(fixture.read_text())
per_type: dict[str, dict[str, str]] = {}
for p in doc["parameters"]:
    if p["type"] == "reference":
        targets = p.get("target")
        # A reference parameter that can point to a Patient (or to anything) can name a patient.
        kind = "PatientReference" if (not targets or "Patient" in targets) else "Reference"
    else:
        kind = "Value"
    for base in p["base"]:
        per_type.setdefault(base, {})[p["code"]] = kind

all_codes = sorted({p["code"] for p in doc["parameters"]})
common = per_type.pop("Resource", {})
common.update(per_type.pop("DomainResource", {}))
out = [
    "//! Generated from the FHIR R4 search parameters (see `tests/fixtures/fhir/README.md`).",
    "//! Regenerate with `scripts/gen_search_params.py`.",
    "",
    "use super::search_params::ParamKind::{self, *};",
    "",
    "/// Parameters every resource type has (`Resource` and `DomainResource`), sorted by code.",
    "pub const COMMON_PARAMS: &[(&str, ParamKind)] = &[",
]
out += [f'    ("{c}", {k}),' for c, k in sorted(common.items())]
out += [
    "];",
    "",
    "/// Per resource type (sorted), its own search parameters (sorted by code) and their kind.",
    "pub const TYPE_PARAMS: &[(&str, &[(&str, ParamKind)])] = &[",
]
for t in sorted(per_type):
    items = ", ".join(f'("{c}", {k})' for c, k in sorted(per_type[t].items()))
    out.append(f'    ("{t}", &[{items}]),')
out.append("];")
out += [
    "",
    "/// Every R4 search parameter code, of any type, sorted.",
    "pub const ALL_CODES: &[&str] = &[",
]
out += [f'    "{c}",' for c in all_codes]
out.append("];")
target = root / "src/fhir/search_params_table.rs"
target.write_text("\n".join(out) + "\n")
# In the form `make lint` (cargo fmt --check) expects.
subprocess.run(["rustfmt", "--edition", "2021", "--config-path", str(root / "rustfmt.toml"), str(target)], check=True)
