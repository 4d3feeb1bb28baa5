"""The policy format's JSON Schema (policies/phi-guard-policy.schema.json), checked with the
maintained `jsonschema` validator (draft 2020-12, format checking on) against every policy the
project ships or runs: the examples, the WasmPlugin's pluginConfig, the scenarios' policies and
the policies this suite's harnesses generate. Documents the schema must refuse are refused by the
compiler too (`phi-guard validate`), and, mutating every object and every string of the example
policies, the schema never refuses what the compiler accepts and never accepts an unknown member
or a wrongly typed value the compiler refuses. No Envoy: only the CLI (`make cli`).

The committed file is the generated one (tests/policy_schema.rs); `make schema` regenerates it.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import HARNESSES, REPO
from jsonschema import Draft202012Validator
from tokens import CLI

SCHEMA_PATH = REPO / "policies" / "phi-guard-policy.schema.json"
SCHEMA_ID = "https://phi-guard.dev/schemas/phi-guard-policy.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
EXAMPLES = sorted(p for p in (REPO / "policies").glob("*.json") if not p.name.endswith(".schema.json"))
DEMO = REPO / "policies" / "smart-patient-app.json"


def schema_errors(doc) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in VALIDATOR.iter_errors(doc)]


def cli() -> Path:
    if not CLI.exists():
        pytest.fail(f"{CLI} does not exist: run `make cli` first", pytrace=False)
    return CLI


def compile_error(doc, tmp_path: Path) -> str | None:
    """`phi-guard validate` on `doc`: None when it compiles, else its error line."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    res = subprocess.run([str(cli()), "validate", str(path)], capture_output=True, text=True,
                         timeout=30)
    if res.returncode == 0:
        return None
    assert res.stderr.startswith("error: "), res.stderr
    return res.stderr.strip().removeprefix(f"error: {path}: ")


def demo() -> dict:
    return json.loads(DEMO.read_text())


# ------------------------------------------------------------------------------ the schema itself
def test_schema_is_a_draft_2020_12_schema():
    Draft202012Validator.check_schema(SCHEMA)  # against the draft's own meta-schema
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == SCHEMA_ID
    assert SCHEMA["additionalProperties"] is False
    assert set(SCHEMA["required"]) == {"version", "name", "routes"}


# ------------------------------------------------------------------------------ what must pass
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_policy_is_valid_and_names_the_local_schema(path: Path, tmp_path):
    doc = json.loads(path.read_text())
    assert schema_errors(doc) == []
    # Relative, so an editor resolves it beside the file without a network.
    assert doc["$schema"] == "./phi-guard-policy.schema.json"
    assert (path.parent / doc["$schema"]).resolve() == SCHEMA_PATH
    assert compile_error(doc, tmp_path) is None


def wasm_plugin_configs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((REPO / "deploy" / "istio").glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == "WasmPlugin":
                out.append((f"{path.name}#{i}", doc["spec"]["pluginConfig"]))
    return out


def test_wasm_plugin_config_is_valid():
    configs = wasm_plugin_configs()
    assert configs, "no WasmPlugin in deploy/istio"
    for where, config in configs:
        if "policySource" in config:  # pull mode: not a policy document
            continue
        assert schema_errors(config) == [], where


def test_scenario_policies_are_valid():
    named: set[str] = set()
    for path in sorted((REPO / "tests" / "scenarios").glob("*.json")):
        policy = json.loads(path.read_text())["policy"]
        if isinstance(policy, dict):  # an embedded policy
            assert schema_errors(policy) == [], path.name
        else:
            named.add(policy)
    assert named
    for name in sorted(named):
        assert schema_errors(json.loads((REPO / name).read_text())) == [], name


@pytest.mark.parametrize("name", sorted(n for n, o in HARNESSES.items() if o.get("policy")))
def test_harness_policy_is_valid(name: str):
    # Includes the ones conftest generates (patient writes, discovery) from the examples.
    assert schema_errors(json.loads(Path(HARNESSES[name]["policy"]).read_text())) == []


# ------------------------------------------------------------------------------ what must fail
def edit(path: str, value):
    """A change to the demo policy: set the member at a dotted path (`routes.0.fhir`)."""
    *parents, last = path.split(".")

    def apply(doc):
        node = doc
        for step in parents:
            node = node[int(step)] if isinstance(node, list) else node[step]
        if value is DELETE:
            del node[last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return apply


DELETE = object()
FHIR_ROUTE = next(i for i, r in enumerate(demo()["routes"]) if "fhir" in r)
# (id, change, where the schema says it, where the compiler says it)
REFUSED = [
    ("unknown-top-level-field", edit("rout", []), "$", "rout: unknown field"),
    ("typo-in-route-field", edit(f"routes.{FHIR_ROUTE}.fihr", {}), f"$.routes[{FHIR_ROUTE}]",
     f"routes[{FHIR_ROUTE}].fihr: unknown field"),
    ("dollar-schema-below-the-top", edit(f"routes.{FHIR_ROUTE}.$schema", "x"),
     f"$.routes[{FHIR_ROUTE}]", f"routes[{FHIR_ROUTE}].$schema: unknown field"),
    ("dollar-schema-not-a-string", edit("$schema", 1), "$['$schema']", "$schema: invalid type"),
    ("dollar-schema-null", edit("$schema", None), "$['$schema']", "$schema: invalid type"),
    ("version-as-a-string", edit("version", "1"), "$.version", "version: invalid type"),
    ("version-2", edit("version", 2), "$.version", "version: unsupported policy version"),
    ("public-not-a-boolean", edit(f"routes.{FHIR_ROUTE}.public", "no"),
     f"$.routes[{FHIR_ROUTE}].public", f"routes[{FHIR_ROUTE}].public: invalid type"),
    ("negative-limit", edit("limits", {"maxTokenBytes": -1}), "$.limits",
     "limits.maxTokenBytes: invalid value"),
    ("mode-not-an-enum-value", edit("mode", "audit-only"), "$.mode", "mode: `audit-only`"),
    ("dpop-not-an-enum-value", edit("issuers.0.dpop", "sometimes"), "$.issuers[0].dpop",
     "issuers[0].dpop: unknown variant"),
    ("lowercase-method", edit(f"routes.{FHIR_ROUTE}.methods", ["get"]),
     f"$.routes[{FHIR_ROUTE}].methods[0]", f"routes[{FHIR_ROUTE}].methods[0]: unknown method"),
    ("unmatched-401", edit("unmatched", {"status": 401}), "$.unmatched",
     "unmatched.status: `401` must be 403 or 404"),
    ("audit-format-xml", edit("audit", {"format": "xml"}), "$.audit", "audit.format: unknown format"),
    ("missing-name", edit("name", DELETE), "$", "policy: missing field `name`"),
    ("no-routes", edit("routes", []), "$.routes", "routes: must contain at least one route"),
    ("route-without-match", edit(f"routes.{FHIR_ROUTE}.match", DELETE), f"$.routes[{FHIR_ROUTE}]",
     f"routes[{FHIR_ROUTE}]: missing field `match`"),
    ("path-and-prefix", edit(f"routes.{FHIR_ROUTE}.match", {"path": "/a", "prefix": "/a"}),
     f"$.routes[{FHIR_ROUTE}].match", f"routes[{FHIR_ROUTE}].match: exactly one of"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_schema_and_compiler_refuse(case, tmp_path):
    _, change, schema_at, compiler_says = case
    doc = demo()
    change(doc)
    errors = schema_errors(doc)
    assert any(e.startswith(f"{schema_at}: ") for e in errors), errors
    error = compile_error(doc, tmp_path)
    assert error is not None and error.startswith(compiler_says), error


def test_invalid_examples_with_a_shape_error_are_refused_by_the_schema():
    """tests/invalid-policies: those the parser refuses (unknown field, wrong type or value) the
    schema refuses too; the others may be schema-valid and still wrong (checked by the compiler:
    tests/scenarios.rs)."""
    shape = ("unknown field", "invalid type", "invalid value", "unknown variant", "missing field")
    seen = 0
    for path in sorted((REPO / "tests" / "invalid-policies").glob("*.json")):
        expected = path.with_suffix(".error").read_text()
        if any(s in expected for s in shape):
            assert schema_errors(json.loads(path.read_text())), path.name
            seen += 1
    assert seen >= 1


# ------------------------------------------------------------------------------ schema vs compiler
def nodes(value, path=()):
    """Every (path, value) in a JSON document, depth first."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from nodes(v, (*path, i))


def at(doc, path):
    for step in path:
        doc = doc[step]
    return doc


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_schema_agrees_with_the_compiler_on_mutations(path: Path, tmp_path):
    """Each object gets an unknown member; each string becomes a number. The schema refusing means
    the compiler refuses; the compiler refusing the shape (unknown field, invalid type) means the
    schema refuses: the schema mirrors the parser, never stricter about what it accepts."""
    original = json.loads(path.read_text())
    disagreements = []
    mutations = 0
    for where, value in list(nodes(original)):
        if isinstance(value, dict):
            doc = copy.deepcopy(original)
            at(doc, where)["unexpectedMember"] = True
        elif isinstance(value, str) and where:
            doc = copy.deepcopy(original)
            at(doc, where[:-1])[where[-1]] = 7
        else:
            continue
        mutations += 1
        refused_by_schema = bool(schema_errors(doc))
        error = compile_error(doc, tmp_path)
        shape_error = error is not None and ("unknown field" in error or "invalid type" in error)
        if (refused_by_schema and error is None) or (shape_error and not refused_by_schema):
            disagreements.append(f"{'.'.join(map(str, where))}: schema refuses={refused_by_schema},"
                                 f" compiler: {error}")
    assert mutations > 50
    assert disagreements == [], "\n".join(disagreements)
