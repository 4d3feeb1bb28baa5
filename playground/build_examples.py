#!/usr/bin/env python3
"""Copy the repository's example policies and FHIR data into playground/examples/ for the page.

    build_examples.py [--out playground/examples]

The page is a static site: it can only load files under its own directory, so the examples are
copied (byte for byte) rather than served from the repository, which also keeps tests/keys'
private test keys off the server. Writes `examples/index.json`, the catalogue the page reads.
Standard library only; the output directory is rebuilt from scratch each time (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (source directory, destination under examples/fhir/, group label on the page)
FHIR_SOURCES = [
    ("envoy/demo-data/resources", "resources", "FHIR R4 resources (HL7 examples, fhir-gateway)"),
    ("tests/fixtures/minimize/bundles", "bundles", "Bundles (HL7 examples, fhir-gateway, Microsoft FHIR server)"),
    ("tests/fixtures/restrictions", "restrictions", "Labelled Conditions (restriction fixtures, from Synthea)"),
    ("envoy/demo-data/synthea", "synthea", "Synthea patients (whole transaction Bundles)"),
]
LICENSE_DIRS = ["envoy/demo-data/LICENSES", "tests/fixtures/minimize/LICENSES"]
# JWK members that only private or secret keys have: none may reach the page.
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def label(path: Path, doc: object) -> str:
    if not isinstance(doc, dict):
        return path.stem
    kind = doc.get("resourceType", "?")
    text = f"{kind}/{doc.get('id', '?')}" if doc.get("id") else kind
    if kind == "Bundle":
        text += f" ({doc.get('type', '?')}, {len(doc.get('entry') or [])} entries)"
    if path.parent.name == "synthea":
        text = path.stem.rsplit("_", 1)[0].replace("_", " ") + " — " + text
    return f"{text} · {path.name}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "playground" / "examples")
    out: Path = ap.parse_args().out
    if out.exists():
        shutil.rmtree(out)
    (out / "policies").mkdir(parents=True)
    index: dict[str, object] = {"policies": [], "invalidPolicies": [], "fhir": [], "jwks": "demo-jwks.json"}

    for f in sorted((ROOT / "policies").glob("*.json")):
        shutil.copyfile(f, out / "policies" / f.name)
        if f.name.endswith(".schema.json"):  # the policies' JSON Schema: their `$schema` resolves
            continue
        index["policies"].append({"file": f"policies/{f.name}", "label": f.stem})
    (out / "invalid-policies").mkdir()
    for f in sorted((ROOT / "tests/invalid-policies").glob("*.json")):
        shutil.copyfile(f, out / "invalid-policies" / f.name)
        expected = f.with_suffix(".error").read_text(encoding="utf-8").strip()
        index["invalidPolicies"].append({"file": f"invalid-policies/{f.name}", "label": f"invalid: {f.stem}", "error": expected})

    for src, dest, group in FHIR_SOURCES:
        (out / "fhir" / dest).mkdir(parents=True)
        for f in sorted((ROOT / src).glob("*.json")):
            shutil.copyfile(f, out / "fhir" / dest / f.name)
            doc = json.loads(f.read_text(encoding="utf-8-sig"))
            index["fhir"].append({"file": f"fhir/{dest}/{f.name}", "label": label(out / "fhir" / dest / f.name, doc), "group": group})
    (out / "LICENSES").mkdir()
    for d in LICENSE_DIRS:
        for f in sorted((ROOT / d).iterdir()):
            shutil.copyfile(f, out / "LICENSES" / f.name)

    jwks = json.loads((ROOT / "tests/keys/demo-jwks.json").read_text(encoding="utf-8"))
    for key in jwks.get("keys", []):
        if PRIVATE_MEMBERS & key.keys():
            print(f"tests/keys/demo-jwks.json: key {key.get('kid')!r} has private members", file=sys.stderr)
            return 1
    (out / "demo-jwks.json").write_text(json.dumps(jwks, indent=2) + "\n", encoding="utf-8")

    presets = json.loads((ROOT / "playground/presets.json").read_text(encoding="utf-8"))["presets"]
    files = {e["file"] for e in index["fhir"]} | {e["file"] for e in index["policies"]}
    for p in presets:
        for k in ("policy", "body"):
            if p.get(k) and p[k] not in files:
                print(f"playground/presets.json: preset {p['id']!r}: {k} {p[k]!r} is not an example", file=sys.stderr)
                return 1
    index["presets"] = presets
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    print(f"playground examples: {len(index['policies'])} policies, {len(index['invalidPolicies'])} invalid, "
          f"{len(index['fhir'])} FHIR files, {len(presets)} presets -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
