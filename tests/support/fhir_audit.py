"""FHIR AuditEvents the filter emits (`audit.format: fhir`), checked against maintained FHIR R4
models and the IHE BALP rules that can be stated exactly:

- `fhirclient.models.auditevent.AuditEvent(json, strict=True)` (SMART Health IT, R4 4.0.1) and
  `fhir.resources.R4B.auditevent.AuditEvent.model_validate(json)` (pydantic; R4B's AuditEvent is
  R4's) both accept it;
- a `PatientRead`/`PatientQuery` claim has exactly one patient entity; a `Query`/`PatientQuery`
  claim has one query entity, a `Read`/`PatientRead` one one data entity;
- a query entity has no `detail` (BALP: `detail 0..0`);
- every extension URL, at any depth, is one of the StructureDefinitions published in docs/fhir/,
  with the value type (or, for a complex one, the sub-extensions) it defines; `mac`, when
  present, is the last extension;
- a purpose of use is either an HL7 `v3-ActReason` code or phi-guard's `invalid` marker, never
  an unknown code in the HL7 system.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from fhir.resources.R4B.auditevent import AuditEvent as PydanticAuditEvent
from fhirclient.models.auditevent import AuditEvent as ClientAuditEvent

REPO = Path(__file__).resolve().parents[2]
SD_DIR = REPO / "docs" / "fhir"
CANONICAL = "https://phi-guard.dev/fhir/StructureDefinition/"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PURPOSE_SYSTEM = "urn:phi-guard:purpose-of-use"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"


@cache
def structure_definitions() -> dict[str, dict]:
    """The published StructureDefinitions by canonical URL."""
    out = {}
    for path in sorted(SD_DIR.glob("StructureDefinition-*.json")):
        sd = json.loads(path.read_text())
        out[sd["url"]] = sd
    return out


def ext(name: str) -> str:
    """The URL of phi-guard's extension `name` (`reason`, `withheld-path`, ...)."""
    return f"{CANONICAL}audit-{name}"


def _element(sd: dict, element_id: str) -> dict:
    return next((e for e in sd["differential"]["element"] if e["id"] == element_id), {})


def _value_key(x: dict) -> str | None:
    keys = [k for k in x if k.startswith("value")]
    assert len(keys) <= 1, f"several values in {x}"
    return keys[0] if keys else None


def _type_key(element: dict) -> str:
    code = element["type"][0]["code"]
    return "value" + code[0].upper() + code[1:]


def _check_extension(x: dict, where: str) -> None:
    url = x.get("url")
    sd = structure_definitions().get(url)
    assert sd is not None, f"{where}: extension {url!r} has no published StructureDefinition (docs/fhir/)"
    context = [c["expression"] for c in sd["context"]]
    assert where in context, f"{url} used on {where}, defined for {context}"
    value = _element(sd, "Extension.value[x]")
    if value.get("max") == "0":  # complex: exactly the defined sub-extensions
        parts = {e["sliceName"]: e for e in sd["differential"]["element"] if e.get("sliceName")}
        got = x.get("extension", [])
        assert _value_key(x) is None, f"{url}: complex, but has a value"
        assert sorted(p["url"] for p in got) == sorted(parts), f"{url}: sub-extensions {got}"
        for part in got:
            want = _type_key(_element(sd, f"Extension.extension:{part['url']}.value[x]"))
            assert _value_key(part) == want, f"{url}#{part['url']}: {part} is not {want}"
    else:
        assert "extension" not in x, f"{url}: simple, but has sub-extensions"
        want = _type_key(value)
        assert _value_key(x) == want, f"{url}: {x} is not {want}"


def _extension_paths(v, path: str = "") -> list[str]:
    """Where `extension` members occur (list indexes dropped), not looking inside extensions."""
    out = []
    if isinstance(v, dict):
        for k, child in v.items():
            if k == "extension":
                out.append(path)
            else:
                out += _extension_paths(child, f"{path}.{k}" if path else k)
    elif isinstance(v, list):
        for child in v:
            out += _extension_paths(child, path)
    return out


def _role(entity: dict) -> str | None:
    role = entity.get("role") or {}
    return role.get("code") if role.get("system") == OBJECT_ROLE else None


def check_audit_event(event: dict | str) -> dict:
    """Validate one emitted FHIR AuditEvent (a dict, or its JSON line); return it as a dict."""
    if isinstance(event, str):
        event = json.loads(event)
    assert event.get("resourceType") == "AuditEvent", event
    assert not re.search(r"urn:phi-guard:audit:", json.dumps(event)), "an unpublished extension URL"
    # The maintained models: types, cardinalities, required elements, no unknown members.
    ClientAuditEvent(json.loads(json.dumps(event)), strict=True)
    PydanticAuditEvent.model_validate(event)

    entities = event.get("entity", [])
    profiles = event.get("meta", {}).get("profile", [])
    assert len(profiles) <= 1, profiles
    profile = profiles[0].removeprefix(BALP) if profiles else None
    assert profile in (None, "Read", "Query", "PatientRead", "PatientQuery"), profiles
    patients = [e for e in entities if _role(e) == "1"]
    queries = [e for e in entities if _role(e) == "24"]
    data = [e for e in entities if _role(e) == "4"]
    for p in patients:
        assert (p["type"]["system"], p["type"]["code"]) == (ENTITY_TYPE, "1"), p
        assert p["what"].get("type") == "Patient" or p["what"].get("reference", "").startswith("Patient/"), p
    if profile in ("PatientRead", "PatientQuery"):
        assert len(patients) == 1, f"{profile} claimed with {len(patients)} patient entities"
    if profile in ("Query", "PatientQuery"):
        assert len(queries) == 1 and queries[0].get("query"), f"{profile} without one query entity"
    if profile in ("Read", "PatientRead"):
        assert len(data) == 1 and data[0].get("what"), f"{profile} without one data entity"
    for q in queries:
        assert "detail" not in q, f"BALP Query: the query entity has no detail: {q}"
        assert "what" not in q, q

    for x in event.get("extension", []):
        _check_extension(x, "AuditEvent")
    for e in entities:
        for x in e.get("extension", []):
            _check_extension(x, "AuditEvent.entity")
    stray = [p for p in _extension_paths(event) if p not in ("", "entity")]
    assert not stray, f"extensions where none is published: {stray}"
    urls = [x["url"] for x in event.get("extension", [])]
    if ext("mac") in urls:
        assert urls[-1] == ext("mac"), "mac is not the last extension"

    for agent in event.get("agent", []):
        for concept in agent.get("purposeOfUse", []):
            (coding,) = concept["coding"]
            assert coding["system"] in (ACT_REASON, PURPOSE_SYSTEM), coding
            if coding["system"] == PURPOSE_SYSTEM:
                assert coding["code"] == "invalid", coding
            else:
                assert re.fullmatch(r"[A-Z]+", coding["code"]), coding
    return event


def check_audit_lines(lines: list[str]) -> list[dict]:
    """`check_audit_event` on every line that is a FHIR AuditEvent (a JSON-lines record is
    skipped); the AuditEvents, in order."""
    out = []
    for line in lines:
        record = json.loads(line)
        if record.get("resourceType") == "AuditEvent":
            out.append(check_audit_event(record))
    return out
