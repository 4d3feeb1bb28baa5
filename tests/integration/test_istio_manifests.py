"""deploy/istio/*.yaml checked the way the Kubernetes API server would check them, against the
real Istio CRDs (tests/fixtures/istio, cut unchanged from istio/api; see its README.md).

Each document's apiVersion/kind picks its CRD and served version; that version's
`openAPIV3Schema` is converted to a draft 2020-12 JSON Schema and checked with `jsonschema`:

- `nullable: true` admits `null`; `x-kubernetes-int-or-string` admits an integer or a string;
- `x-kubernetes-preserve-unknown-fields` keeps unknown members; everywhere else an object
  admits only its `properties` (structural schemas prune the rest: an unknown field is an
  error, as with `kubectl apply --validate=strict`);
- `format` int32/int64 bound the integer, date-time is checked by the format checker; `enum`,
  `oneOf`/`anyOf`/`not`, `required`, lengths and ranges carry over as they are;
- `x-kubernetes-list-type: set|map` (with `x-kubernetes-list-map-keys`): unique items / keys;
- `x-kubernetes-validations` (CEL, which Python cannot run): CEL_RULES below implements each
  rule the three CRDs carry today (20 distinct rules: the WasmPlugin's selector/targetRef
  exclusivity, label-key wildcards, `url` schemes and HOST env without a value; the
  ServiceEntry's resolution/address/endpoint rules, unique port numbers, port ranges and
  `unix://` addresses; every `duration >= 1ms`), each checked on the values a manifest sets. A
  rule not in CEL_RULES (a newer CRD) on a value a manifest sets fails
  `test_cel_rules_reached_are_implemented`, which also prints the rules skipped. Not
  checked: what the API server does beyond the schema (admission webhooks such as Istio's own
  validation, which e.g. parses `url` further).
- `metadata` is Kubernetes' ObjectMeta (not in the CRD schema): the members a manifest may set,
  `name` a DNS-1123 subdomain, `namespace` a DNS-1123 label, labels and annotations strings.

Documents of a kind without a CRD fail, except the core kinds handled below with minimal
structural checks: a ConfigMap, and a Deployment patch (a document with only `spec.template`, as
`kubectl patch --patch-file` takes). kustomization.yaml must list every resource file there is,
and every patch must exist and match a resource. The files are read at run time: whatever
deploy/istio holds is checked. No Envoy.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import REPO
from jsonschema import Draft202012Validator, ValidationError, validators

ISTIO = REPO / "deploy" / "istio"
CRDS = REPO / "tests" / "fixtures" / "istio" / "crds-wasmplugin-serviceentry-destinationrule.yaml"

# ------------------------------------------------------------------------------ CEL rules
DURATION = re.compile(r"^(-?)((\d+(\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns))+$")
DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
PORT_NAME = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")


def duration_seconds(text: str) -> float | None:
    """CEL `duration(text)` in seconds, None when CEL would not parse it."""
    if not isinstance(text, str) or not DURATION.match(text):
        return None
    total = sum(float(n) * UNIT_SECONDS[u] for n, u in DURATION_PART.findall(text))
    return -total if text.startswith("-") else total


def cel_is_url(text: str) -> bool:
    """CEL `isURL`: Go's url.ParseRequestURI succeeds (absolute URL or absolute path)."""
    if not text or any(c.isspace() for c in text):
        return False
    parts = urlsplit(text)
    return bool(parts.scheme) or text.startswith("/")


def wasm_url_scheme_ok(url: str) -> bool:
    schemes = ("", "http", "https", "oci", "file")
    if cel_is_url(url):
        return urlsplit(url).scheme in schemes
    return cel_is_url("http://" + url) and urlsplit("http://" + url).scheme in schemes


def only_one_of(*names):
    return lambda v: sum(n in v for n in names) <= 1


def resolution(v, default):
    return v.get("resolution", default)


# rule text (exactly as in the CRD) -> check of the value the rule sits on.
CEL_RULES = {
    # WasmPlugin
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        only_one_of("selector", "targetRef", "targetRefs"),
    "self.all(key, !key.contains(\"*\"))": lambda v: all("*" not in k for k in v),
    "self.all(key, key.size() != 0)": lambda v: all(len(k) for k in v),
    "!self.contains(\"*\")": lambda v: "*" not in v,
    "self.size() == 0": lambda v: len(v) == 0,
    "isURL(self) ? (url(self).getScheme() in [\"\", \"http\", \"https\", \"oci\", \"file\"]) : "
    "(isURL(\"http://\" + self) &&\nurl(\"http://\" + self).getScheme() in [\"\", \"http\", \"https\", "
    "\"oci\", \"file\"])": wasm_url_scheme_ok,
    "(has(self.valueFrom) ? self.valueFrom : \"\") != \"HOST\" || !has(self.value)":
        lambda v: v.get("valueFrom", "") != "HOST" or "value" not in v,
    # ServiceEntry
    "!((has(self.addresses) ? self.addresses : []).exists(k, k.contains(\"/\")) && "
    "!((has(self.resolution) ? self.resolution : \"NONE\") in [\"STATIC\", \"NONE\"]))":
        lambda v: not (any("/" in a for a in v.get("addresses", []))
                       and resolution(v, "NONE") not in ("STATIC", "NONE")),
    "((has(self.resolution) ? self.resolution : \"\") == \"DNS_ROUND_ROBIN\") ? "
    "((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true":
        lambda v: resolution(v, "") != "DNS_ROUND_ROBIN" or len(v.get("endpoints", [])) <= 1,
    "((has(self.resolution) ? self.resolution : \"NONE\") == \"NONE\") ? !has(self.endpoints) : true":
        lambda v: resolution(v, "NONE") != "NONE" or "endpoints" not in v,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        only_one_of("workloadSelector", "endpoints"),
    "self != \"*\"": lambda v: v != "*",
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        lambda v: all(sum(p.get("number") == q.get("number") for q in v) == 1 for p in v),
    "0 < self && self <= 65535": lambda v: 0 < v <= 65535,
    "has(self.address) || has(self.network)": lambda v: "address" in v or "network" in v,
    "(has(self.address) ? self.address : \"\").startsWith(\"unix://\") ? !has(self.ports) : true":
        lambda v: not v.get("address", "").startswith("unix://") or "ports" not in v,
    "self.startsWith(\"unix://\") ? !self.endsWith(\"/\") : true":
        lambda v: not v.startswith("unix://") or not v.endswith("/"),
    "self.startsWith(\"unix://\") ? (self.substring(7, 8) == \"/\" || self.substring(7, 8) == \"@\") : true":
        lambda v: not v.startswith("unix://") or v[7:8] in ("/", "@"),
    "self.all(key, size(key) < 63 && key.matches(\"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$\"))":
        lambda v: all(len(k) < 63 and PORT_NAME.match(k) for k in v),
    # DestinationRule (and every duration field)
    "duration(self) >= duration('1ms')":
        lambda v: (s := duration_seconds(v)) is not None and s >= 1e-3,
}
# Rules met on a value some manifest sets but not in CEL_RULES: filled by the validator.
UNIMPLEMENTED: set[str] = set()
CHECKED: set[str] = set()


def check_cel(validator, rules, instance, schema):
    for rule in rules:
        check = CEL_RULES.get(rule["rule"])
        if check is None:
            UNIMPLEMENTED.add(rule["rule"])
            continue
        CHECKED.add(rule["rule"])
        try:
            ok = check(instance)
        except (TypeError, AttributeError, KeyError):
            ok = False  # CEL on a value of the wrong type: the schema reports the type too
        if not ok:
            yield ValidationError(f"{rule.get('message') or 'CEL rule fails'}: {rule['rule']}")


def check_list_map_keys(validator, keys, instance, schema):
    if not isinstance(instance, list):
        return
    seen = set()
    for item in instance:
        key = tuple(item.get(k) for k in keys) if isinstance(item, dict) else (item,)
        if key in seen:
            yield ValidationError(f"duplicate entries for map keys {keys}: {key}")
        seen.add(key)


K8sValidator = validators.extend(Draft202012Validator, {
    "x-kubernetes-validations": check_cel,
    "x-kubernetes-list-map-keys": check_list_map_keys,
})

# ------------------------------------------------------------------------------ OpenAPI -> JSON Schema
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
DNS_SUBDOMAIN = r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "pattern": DNS_LABEL},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "generateName": {"type": "string"},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


def to_json_schema(node: dict) -> dict:
    """One OpenAPI v3 (structural, Kubernetes) schema node as JSON Schema 2020-12."""
    out: dict = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)) or key == "not":
            out[key] = to_json_schema(value)
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [to_json_schema(v) for v in value]
        elif key in ("nullable", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
                     "x-kubernetes-list-type", "x-kubernetes-map-type", "description", "format"):
            pass  # handled below, or documentation
        else:
            out[key] = value
    fmt = node.get("format")
    if fmt in INT_RANGES and node.get("type") == "integer":
        out["minimum"] = max(out.get("minimum", INT_RANGES[fmt][0]), INT_RANGES[fmt][0])
        out["maximum"] = min(out.get("maximum", INT_RANGES[fmt][1]), INT_RANGES[fmt][1])
    elif fmt == "date-time":
        out["format"] = fmt
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        int_or_string = [{"type": "integer"}, {"type": "string"}]
        if "anyOf" in out:  # keep both: the type and the node's own anyOf
            out.setdefault("allOf", []).append({"anyOf": int_or_string})
        else:
            out["anyOf"] = int_or_string
    if node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in node:
        out["additionalProperties"] = False  # pruned by the API server: strict apply refuses it
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def load_crds() -> dict[tuple[str, str], tuple[dict, bool]]:
    """(apiVersion, kind) -> (JSON Schema of the whole object, is the storage version)."""
    out = {}
    for crd in yaml.safe_load_all(CRDS.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = to_json_schema(version["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {}).update({
                "apiVersion": {"const": f"{group}/{version['name']}"},
                "kind": {"const": kind},
                "metadata": OBJECT_META,
            })
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            schema["additionalProperties"] = False
            out[(f"{group}/{version['name']}", kind)] = (schema, bool(version.get("storage")))
    return out


CRD_SCHEMAS = load_crds()

# ------------------------------------------------------------------------------ core kinds
ENV_VAR = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "value": {"type": "string"},
        "valueFrom": {
            "type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
            "properties": {
                "secretKeyRef": {"type": "object", "additionalProperties": False, "required": ["key"],
                                 "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                                                "optional": {"type": "boolean"}}},
                "configMapKeyRef": {"type": "object", "additionalProperties": False, "required": ["key"],
                                    "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                                                   "optional": {"type": "boolean"}}},
                "fieldRef": {"type": "object", "required": ["fieldPath"]},
                "resourceFieldRef": {"type": "object", "required": ["resource"]},
            },
        },
    },
    "not": {"required": ["value", "valueFrom"]},
}
CONTAINER = {  # the members a patch here sets are checked; the rest of a Container is not modelled
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": DNS_LABEL}, "image": {"type": "string"},
                   "env": {"type": "array", "items": ENV_VAR}},
}
POD_TEMPLATE_PATCH = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "metadata": {"type": "object", "additionalProperties": False,
                     "properties": {"labels": STRING_MAP, "annotations": STRING_MAP}},
        "spec": {"type": "object", "properties": {
            "containers": {"type": "array", "items": CONTAINER},
            "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        }},
    },
}
DEPLOYMENT_PATCH = {
    "type": "object", "additionalProperties": False, "required": ["spec"],
    "properties": {
        "apiVersion": {"const": "apps/v1"}, "kind": {"const": "Deployment"},
        "metadata": {"type": "object", "additionalProperties": False,
                     "properties": {"name": OBJECT_META["properties"]["name"],
                                    "namespace": OBJECT_META["properties"]["namespace"],
                                    "labels": STRING_MAP, "annotations": STRING_MAP}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["template"],
                 "properties": {"template": POD_TEMPLATE_PATCH}},
    },
}
CONFIG_MAP = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "apiVersion": {"const": "v1"}, "kind": {"const": "ConfigMap"}, "metadata": OBJECT_META,
        "data": STRING_MAP, "binaryData": STRING_MAP, "immutable": {"type": "boolean"},
    },
}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "patchesStrategicMerge",
                        "namespace", "namePrefix", "nameSuffix", "labels", "commonLabels",
                        "commonAnnotations", "configMapGenerator", "secretGenerator",
                        "generatorOptions", "images", "components"}


def schema_for(doc) -> tuple[str, dict] | None:
    """What a document is, and the schema it must meet; None for one that has no schema."""
    if not isinstance(doc, dict):
        return None
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        return f"{key[0]} {key[1]}", CRD_SCHEMAS[key][0]
    if key == ("v1", "ConfigMap"):
        return "v1 ConfigMap", CONFIG_MAP
    if key in ((None, None), ("apps/v1", "Deployment")) and isinstance(doc.get("spec"), dict) \
            and "template" in doc["spec"]:
        return "Deployment patch", DEPLOYMENT_PATCH
    return None


def errors_of(doc, where: str) -> list[str]:
    found = schema_for(doc)
    if found is None:
        key = (doc.get("apiVersion"), doc.get("kind")) if isinstance(doc, dict) else type(doc).__name__
        return [f"{where}: no CRD or handled core kind for {key}"]
    _, schema = found
    validator = K8sValidator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{where} {e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def manifests() -> list[tuple[str, object]]:
    docs = []
    for path in sorted(ISTIO.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}#{i}", doc))
    return docs


def wasm_plugin() -> dict:
    plugins = [d for _, d in manifests() if isinstance(d, dict) and d.get("kind") == "WasmPlugin"]
    assert len(plugins) == 1, plugins
    return plugins[0]


# ------------------------------------------------------------------------------ the manifests
def test_crds_give_every_istio_kind_a_schema():
    assert {k for _, k in CRD_SCHEMAS} == {"WasmPlugin", "ServiceEntry", "DestinationRule"}
    for schema, _ in CRD_SCHEMAS.values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("where,doc", manifests(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_is_valid(where, doc):
    errors = errors_of(doc, where)
    assert errors == [], "\n".join(errors)


def test_istio_resources_use_the_storage_version():
    for where, doc in manifests():
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRD_SCHEMAS:
            assert CRD_SCHEMAS[key][1], f"{where}: {key[0]} is served but not the storage version"


def test_cel_rules_reached_are_implemented():
    """Every CEL rule on a value the manifests set is one CEL_RULES implements."""
    UNIMPLEMENTED.clear()
    CHECKED.clear()
    for where, doc in manifests():
        errors_of(doc, where)
    assert UNIMPLEMENTED == set(), f"implement these CEL rules in CEL_RULES: {sorted(UNIMPLEMENTED)}"
    assert CHECKED, "no CEL rule was evaluated: the WasmPlugin has several"
    all_rules = set()

    def collect(node):
        if isinstance(node, dict):
            all_rules.update(r["rule"] for r in node.get("x-kubernetes-validations", []))
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)
    for schema, _ in CRD_SCHEMAS.values():
        collect(schema)
    skipped = sorted(all_rules - set(CEL_RULES))
    print(f"CEL rules: {len(CHECKED)} evaluated on the manifests, {len(CEL_RULES)} implemented, "
          f"{len(skipped)} on fields no manifest sets and not implemented:", *skipped, sep="\n  ")


def test_kustomization_lists_every_resource_and_patch():
    kust = yaml.safe_load((ISTIO / "kustomization.yaml").read_text())
    assert kust.get("apiVersion", "").startswith("kustomize.config.k8s.io/")
    assert kust.get("kind") == "Kustomization"
    assert set(kust) <= KUSTOMIZATION_FIELDS, set(kust) - KUSTOMIZATION_FIELDS
    listed = kust.get("resources", [])
    assert len(listed) == len(set(listed)), listed
    for name in listed:
        assert (ISTIO / name).is_file(), f"kustomization lists {name}, which does not exist"
    # Every file of resources (documents with apiVersion and kind) is listed, none forgotten.
    resource_files = sorted({where.split("#")[0] for where, doc in manifests()
                             if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc})
    patch_files = [p if isinstance(p, str) else p.get("path") for p in
                   kust.get("patchesStrategicMerge", []) + kust.get("patches", [])]
    assert sorted(set(resource_files) - set(patch_files)) == sorted(listed)
    resources = [doc for where, doc in manifests() if where.split("#")[0] in listed]
    for patch in kust.get("patchesStrategicMerge", []) + kust.get("patches", []):
        entry = {"path": patch} if isinstance(patch, str) else patch
        assert entry.get("path") or entry.get("patch"), entry
        if entry.get("path"):
            assert (ISTIO / entry["path"]).is_file(), f"patch {entry['path']} does not exist"
        target = entry.get("target")
        if target is None and entry.get("path"):  # strategic merge: the patch names its target
            body = yaml.safe_load((ISTIO / entry["path"]).read_text())
            target = {"kind": body.get("kind"), "name": body.get("metadata", {}).get("name")}
        matches = [r for r in resources
                   if all(r.get(k) == v for k, v in target.items() if k in ("kind",))
                   and ("name" not in target or re.fullmatch(target["name"], r["metadata"]["name"]))]
        assert matches, f"patch {entry} matches no resource of the kustomization"


def test_destination_rules_match_service_entries():
    """Cross-checks the API server does not do, but Istio needs: every DestinationRule's host
    has a ServiceEntry, and port-level settings name a port that entry declares."""
    docs = [d for _, d in manifests() if isinstance(d, dict)]
    entries = {h: se for se in docs if se.get("kind") == "ServiceEntry" for h in se["spec"]["hosts"]}
    for dr in (d for d in docs if d.get("kind") == "DestinationRule"):
        host = dr["spec"]["host"]
        assert host in entries, f"DestinationRule {dr['metadata']['name']}: no ServiceEntry for {host}"
        ports = {p["number"] for p in entries[host]["spec"].get("ports", [])}
        for setting in dr["spec"].get("trafficPolicy", {}).get("portLevelSettings", []):
            assert setting["port"]["number"] in ports, (dr["metadata"]["name"], setting)
        for address in entries[host]["spec"].get("addresses", []):
            ipaddress.ip_network(address, strict=False)


# ------------------------------------------------------------------------------ it can fail
def broken(change) -> list[str]:
    doc = copy.deepcopy(wasm_plugin())
    change(doc)
    return errors_of(doc, "wasmplugin")


def test_typo_in_a_field_fails():
    errors = broken(lambda d: d["spec"].__setitem__("pluginconfig", d["spec"].pop("pluginConfig")))
    assert any("'pluginconfig' was unexpected" in e for e in errors), errors


def test_wrong_enum_fails():
    errors = broken(lambda d: d["spec"].__setitem__("phase", "AUTHENTICATION"))
    assert any("$.spec.phase" in e and "is not one of" in e for e in errors), errors
    errors = broken(lambda d: d["spec"].__setitem__("failStrategy", "FAIL_CLOSED"))  # Envoy's spelling
    assert any("$.spec.failStrategy" in e for e in errors), errors


def test_missing_required_field_fails():
    errors = broken(lambda d: d["spec"].pop("url"))
    assert any("'url' is a required property" in e for e in errors), errors
    errors = broken(lambda d: d["metadata"].pop("name"))
    assert any("'name' is a required property" in e for e in errors), errors


def test_wrong_types_and_formats_fail():
    errors = broken(lambda d: d["spec"].__setitem__("priority", "10"))
    assert any("$.spec.priority" in e for e in errors), errors
    errors = broken(lambda d: d["spec"].__setitem__("priority", 2**31))  # int32
    assert any("$.spec.priority" in e for e in errors), errors
    errors = broken(lambda d: d["metadata"].__setitem__("name", "Phi_Guard"))
    assert any("$.metadata.name" in e for e in errors), errors
    errors = broken(lambda d: d["metadata"].setdefault("annotations", {}).__setitem__("x/y", True))
    assert any("$.metadata.annotations" in e for e in errors), errors


def test_cel_rules_fail():
    errors = broken(lambda d: d["spec"]["vmConfig"]["env"].append(
        {"name": "X", "valueFrom": "HOST", "value": "inline"}))
    assert any("!has(self.value)" in e for e in errors), errors
    errors = broken(lambda d: d["spec"].__setitem__("targetRefs", [{"kind": "Service", "name": "fhir"}]))
    assert any("selector" in e and "targetRefs" in e for e in errors), errors
    errors = broken(lambda d: d["spec"].__setitem__("url", "ftp://registry.example.com/x"))
    assert any("$.spec.url" in e for e in errors), errors
    se = next(d for _, d in manifests() if isinstance(d, dict) and d.get("kind") == "ServiceEntry")
    bad = copy.deepcopy(se)
    bad["spec"]["ports"].append(dict(bad["spec"]["ports"][0], name="again"))
    assert any("exists_one" in e for e in errors_of(bad, "se")), errors_of(bad, "se")
    bad = copy.deepcopy(se)
    bad["spec"]["ports"][0]["targetPort"] = 70000
    assert any("$.spec.ports[0].targetPort" in e for e in errors_of(bad, "se"))
    dr = next(d for _, d in manifests() if isinstance(d, dict) and d.get("kind") == "DestinationRule")
    bad = copy.deepcopy(dr)
    bad["spec"]["trafficPolicy"]["connectionPool"] = {"tcp": {"connectTimeout": "500us"}}
    assert any("duration" in e for e in errors_of(bad, "dr")), errors_of(bad, "dr")
    bad["spec"]["trafficPolicy"]["connectionPool"] = {"tcp": {"connectTimeout": "1.5s"}}
    assert errors_of(bad, "dr") == []


def test_unknown_kinds_and_bad_patches_fail():
    assert errors_of({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                      "metadata": {"name": "g"}, "spec": {}}, "x")
    assert errors_of({"apiVersion": "networking.istio.io/v1alpha2", "kind": "ServiceEntry",
                      "metadata": {"name": "s"}, "spec": {"hosts": ["a.example"]}}, "x")
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "istio-proxy", "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}]}}}}
    assert any("'key' is a required property" in e for e in errors_of(patch, "p"))
    patch = {"spec": {"template": {"metadata": {"annotations": {"sidecar.istio.io/x": 1}}}}}
    assert any("annotations" in e for e in errors_of(patch, "p"))
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": 1}}
    assert any("$.data.k" in e for e in errors_of(cm, "c"))


@pytest.mark.parametrize("path", sorted(ISTIO.glob("*.yaml")), ids=lambda p: p.name)
def test_files_parse_as_yaml(path: Path):
    list(yaml.safe_load_all(path.read_text()))
