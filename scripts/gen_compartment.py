#!/usr/bin/env python3
"""Generate src/fhir/compartment_table.rs from the FHIR reference fixtures."""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
fx = root / "tests/fixtures/fhir"
cd = json.loads((fx / "gateway_CompartmentDefinition-patient.json").read_text())
paths = json.loads((fx / "gateway_patient_paths.json").read_text())
# The CompartmentDefinition lists every R4 resource type but Parameters (never stored, but
# returned by operations).
types = sorted([r["code"] for r in cd["resource"]] + ["Parameters"])
out = [
    "//! Generated from the FHIR R4 Patient CompartmentDefinition and the compartment element paths",
    "//! (see `tests/fixtures/fhir/README.md`). Regenerate with `scripts/gen_compartment.py`.",
    "",
    "/// Every FHIR R4 resource type, sorted (binary-searchable).",
    "pub const RESOURCE_TYPES: &[&str] = &[",
]
out += [f'    "{t}",' for t in types]
out += [
    "];",
    "",
    "/// Patient-compartment membership: resource type, search parameters that link it to the patient,",
    "/// and the element paths (dot-separated) that hold the patient reference. Sorted by type.",
    "pub const PATIENT_COMPARTMENT: &[(&str, &[&str], &[&str])] = &[",
]
for r in sorted(cd["resource"], key=lambda r: r["code"]):
    if r.get("param"):
        ps = ", ".join(f'"{p}"' for p in r["param"])
        el = ", ".join(f'"{p}"' for p in paths.get(r["code"], []))
        out.append(f'    ("{r["code"]}", &[{ps}], &[{el}]),')
out.append("];")
(root / "src/fhir/compartment_table.rs").write_text("\n".join(out) + "\n")
