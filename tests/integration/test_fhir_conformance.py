"""FHIR conformance of what phi-guard publishes and emits: the StructureDefinitions of its audit
extensions (docs/fhir/) parse as FHIR R4 with the maintained models, and a clinician's FHIR
AuditEvents through a real Envoy, in Envoy's log and at the OTLP collector, pass the maintained
FHIR R4 models and the IHE BALP checks of `fhir_audit` (one patient per Patient* claim, no query
`detail`, published extensions, purposes of use never mislabelled): a search naming two
patients, withheld paths, known and unknown purposes of use, a refusal."""

from __future__ import annotations

import copy
import json
import time
import uuid
from pathlib import Path

import pytest
from conftest import RUN_DIR
from fhir.resources.R4B.structuredefinition import StructureDefinition as PydanticStructureDefinition
from fhir_audit import ACT_REASON, BALP, CANONICAL, PURPOSE_SYSTEM, SD_DIR, check_audit_event, check_audit_lines, ext, structure_definitions
from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.structuredefinition import StructureDefinition as ClientStructureDefinition
from harness import make_harness
from helpers import ME, OTHER, Api
from pydantic import ValidationError
from tokens import cli_token

REPO = Path(__file__).resolve().parents[2]
PREFIX = "phi-guard-audit: "
CLINICIAN = json.loads((REPO / "policies" / "clinician-api.json").read_text())


def test_structure_definitions_are_fhir_r4():
    files = sorted(SD_DIR.glob("StructureDefinition-*.json"))
    assert len(files) >= 16, files
    for path in files:
        doc = json.loads(path.read_text())
        ClientStructureDefinition(copy.deepcopy(doc), strict=True)
        PydanticStructureDefinition.model_validate(doc)
        assert path.name == f"StructureDefinition-{doc['id']}.json"
        assert doc["url"] == CANONICAL + doc["id"] and doc["url"].startswith("https://")
        assert (doc["kind"], doc["type"], doc["derivation"], doc["fhirVersion"]) == ("complex-type", "Extension", "constraint", "4.0.1")
        assert doc["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Extension"
        assert [c["expression"] for c in doc["context"]] in (["AuditEvent"], ["AuditEvent.entity"]), doc["context"]
        url = next(e for e in doc["differential"]["element"] if e["id"] == "Extension.url")
        assert url["fixedUri"] == doc["url"]
        value = next(e for e in doc["differential"]["element"] if e["id"] == "Extension.value[x]")
        assert value.get("max") == "0" or len(value["type"]) == 1, f"{path.name}: value[x] fixed to one type"
    assert set(structure_definitions()) == {json.loads(p.read_text())["url"] for p in files}


def clinician_fhir_policy() -> dict:
    """clinician-api logging FHIR AuditEvents, with a minimization profile on `/fhir` so that
    searches have withheld paths."""
    doc = copy.deepcopy(CLINICIAN)
    doc["name"] = "clinician-fhir-audit"
    doc["audit"]["format"] = "fhir"
    doc["audit"]["collector"]["flushIntervalMs"] = 200
    route = next(r for r in doc["routes"] if r["id"] == "fhir")
    route["minimize"] = {"profiles": [{"name": "no-issued", "mode": "deny", "otherResources": "allow",
                                       "resources": {"*": {"deny": ["**.issued", "**.telecom"]}}}]}
    return doc


def audit_lines(text: str) -> list[str]:
    return [ln.split(PREFIX, 1)[1] for ln in text.splitlines() if PREFIX in ln]


def wait_for(fn, done, timeout: float = 30):
    deadline = time.monotonic() + timeout
    value = fn()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.3)
        value = fn()
    return value


@pytest.fixture(scope="module")
def clinician_events():
    """Each call's AuditEvent from Envoy's log, by name, and every line the collector received."""
    workdir = RUN_DIR / "clinician-fhir-audit"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policy.json").write_text(json.dumps(clinician_fhir_policy()))
    h = make_harness("local", "clinician-fhir-audit", workdir=workdir, policy=workdir / "policy.json")
    try:
        api = Api(h)
        scopes = ["user/Patient.rs", "user/Observation.rs"]
        treat = cli_token(claims={"scp": scopes, "scope": None, "purpose_of_use": "TREAT"})
        unknown = cli_token(claims={"scp": scopes, "scope": None, "purpose_of_use": ["HPAYMT", "JohnSmith"]})
        no_obs = cli_token(claims={"scp": ["user/Patient.rs"], "scope": None})
        calls = {
            "two-patients": (f"/fhir/Observation?patient={ME},{OTHER}", treat, 200),
            "one-patient": (f"/fhir/Observation?patient={ME}", unknown, 200),
            "read": (f"/fhir/Patient/{ME}", treat, 200),
            "no-patient": ("/fhir/Observation?code=8867-4", treat, 200),
            "refused": (f"/fhir/Observation?patient={ME},{OTHER}", no_obs, 403),
        }
        ids = {}
        for name, (path, token, want) in calls.items():
            ids[name] = str(uuid.uuid4())
            resp = api.get(path, token=token, headers={"x-request-id": ids[name]})
            assert resp.status == want, (name, resp.describe())

        def found():
            lines = audit_lines(h.envoy_log_text())
            return {name: next((ln for ln in lines if rid in ln), None) for name, rid in ids.items()}

        events = wait_for(found, lambda f: all(f.values()))
        assert all(events.values()), f"no audit line for {[n for n, ln in events.items() if ln is None]}"
        collected = wait_for(h.audit_lines, lambda lines: all(any(rid in ln for ln in lines) for rid in ids.values()))
        yield {name: json.loads(ln) for name, ln in events.items()}, collected
    finally:
        h.stop()


def patient_entities(event: dict) -> list[dict]:
    return [e for e in event["entity"] if e.get("role", {}).get("code") == "1"]


def query_entity(event: dict) -> dict:
    return next(e for e in event["entity"] if e.get("role", {}).get("code") == "24")


def purposes(event: dict) -> list[tuple[str, str]]:
    user = next(a for a in event["agent"] if a["requestor"] and a.get("purposeOfUse"))
    return [(c["coding"][0]["system"], c["coding"][0]["code"]) for c in user["purposeOfUse"]]


def test_clinician_audit_events_conform(clinician_events):
    events, collected = clinician_events
    for event in events.values():
        check_audit_event(event)
    # The collector received the same sealed lines (OTLP bodies): every one conforms.
    shipped = check_audit_lines(collected)
    assert len(shipped) >= len(events)
    lines = {json.dumps(e, separators=(",", ":")) for e in shipped}
    assert all(json.dumps(e, separators=(",", ":")) in lines for e in events.values())

    two = events["two-patients"]
    assert two["meta"]["profile"] == [BALP + "Query"], "two patients: the plain Query profile"
    assert len(patient_entities(two)) == 2
    q = query_entity(two)
    assert "detail" not in q and q["securityLabel"][0]["code"] == "REDACTED"
    withheld = [x["valueString"] for x in q["extension"] if x["url"] == ext("withheld-path")]
    assert "Bundle.entry.resource(Observation).issued" in withheld, withheld
    assert purposes(two) == [(ACT_REASON, "TREAT")]

    one = events["one-patient"]
    assert one["meta"]["profile"] == [BALP + "PatientQuery"]
    assert len(patient_entities(one)) == 1
    assert purposes(one) == [(ACT_REASON, "HPAYMT"), (PURPOSE_SYSTEM, "invalid")], "an unknown purpose is not an HL7 code"

    assert events["no-patient"]["meta"]["profile"] == [BALP + "Query"]
    read = events["read"]
    assert read["meta"]["profile"][0].startswith(BALP)
    data = next(e for e in read["entity"] if e.get("role", {}).get("code") == "4")
    assert "Patient.telecom" in [x["valueString"] for x in data["extension"]], data
    refused = events["refused"]
    assert "meta" not in refused and refused["type"]["code"] == "110113"
    assert refused["extension"][-1]["url"] == ext("mac")


def test_balp_checks_bite(clinician_events):
    """The checks fail on the non-conformant forms they exist for."""
    events, _ = clinician_events
    two, one = events["two-patients"], events["one-patient"]

    def broken(event: dict, edit) -> dict:
        event = copy.deepcopy(event)
        edit(event)
        return event

    def claim_patient_query(e):
        e["meta"]["profile"] = [BALP + "PatientQuery"]

    def query_detail(e):
        query_entity(e)["detail"] = [{"type": "withheld", "valueString": "Observation.issued"}]

    def unpublished(e):
        e["extension"][0]["url"] = "urn:phi-guard:audit:policy"

    def wrong_type(e):
        x = query_entity(e)["extension"][0]
        x["valueCode"] = x.pop("valueString")

    def extension_elsewhere(e):
        e["agent"][0]["extension"] = [{"url": ext("policy"), "valueString": "x"}]

    def mac_not_last(e):
        e["extension"].insert(0, e["extension"].pop())

    def mislabelled_purpose(e):
        for a in e["agent"]:
            for c in a.get("purposeOfUse", []):
                c["coding"][0]["system"] = ACT_REASON

    def unknown_member(e):
        e["entity"][0]["withheld"] = ["Observation.issued"]

    def wrong_fhir_type(e):
        e["action"] = 1

    for event, edit in [(two, claim_patient_query), (two, query_detail), (two, unpublished), (two, wrong_type),
                        (two, extension_elsewhere), (two, mac_not_last), (one, mislabelled_purpose),
                        (two, unknown_member), (two, wrong_fhir_type)]:
        with pytest.raises((AssertionError, FHIRValidationError, ValidationError)):
            check_audit_event(broken(event, edit))
