"""Minimum-necessary minimization through a real Envoy: what remains, that no withheld value
appears anywhere in the bytes the client receives, and every fail-closed case."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
from harness import make_harness
from helpers import ME, Api
from tokens import cli_token

REPO = Path(__file__).resolve().parents[2]


SYNTHEA = REPO / "envoy" / "demo-data" / "synthea"
CLEMENTE = SYNTHEA / "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
BUNDLE_ID = "synthea-2"  # files load in name order: Bernardo, Clemente, Kermit
REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED"}


def patient_of(bundle_path: Path) -> dict:
    doc = json.loads(bundle_path.read_text())
    return next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")


def phi_values(patient: dict) -> list[str]:
    """Direct identifiers of a Synthea patient, as they appear in the source bytes."""
    out = [i["value"] for i in patient.get("identifier", []) if len(i.get("value", "")) > 4]
    out += [t["value"] for t in patient.get("telecom", [])]
    for a in patient.get("address", []):
        out += a.get("line", [])
        if a.get("postalCode"):
            out.append(a["postalCode"])
    for n in patient.get("name", []):
        out += n.get("given", []) + [n["family"]] if "family" in n else n.get("given", [])
    out.append(patient["birthDate"])
    return [v for v in out if v]


@pytest.fixture(scope="module")
def patient_app(harnesses) -> Api:
    return Api(harnesses.get("patient-app"))


@pytest.fixture(scope="module")
def clinician(harnesses) -> Api:
    return Api(harnesses.get("clinician"))


def patient_token() -> str:
    return cli_token(scope="patient/Patient.rs patient/Observation.rs", patient=ME)


def researcher_token() -> str:
    return cli_token(claims={"scp": ["user/*.rs"], "scope": None, "purpose_of_use": "HRESCH"})


def test_patient_read_is_minimized(patient_app):
    original = patient_of(CLEMENTE)
    r = patient_app.get(f"/fhir/Patient/{ME}", token=patient_token())
    assert r.status == 200, r.describe()
    body = r.json()
    assert body["id"] == ME
    assert any(s.get("code") == "REDACTED" and s.get("system") == REDACTED["system"] for s in body["meta"]["security"])
    for ident in original["identifier"]:
        if len(ident["value"]) > 4:
            assert ident["value"] not in r.text, "identifier value released unmasked"
    assert "geolocation" not in r.text
    assert "text" not in body, "narrative repeats withheld data: dropped"
    assert r.header("content-length") is None or int(r.header("content-length")) == len(r.body)


def test_searchset_bundle_for_research_is_deidentified(clinician):
    original = patient_of(CLEMENTE)
    r = clinician.get(f"/research/fhir/Observation?patient={ME}", token=researcher_token())
    assert r.status == 200, r.describe()
    doc = r.json()
    assert doc["resourceType"] == "Bundle" and doc["entry"]
    for v in phi_values(original):
        assert v not in r.text, f"{v!r} released"


def test_synthea_transaction_bundle_safe_harbor(clinician):
    original = patient_of(CLEMENTE)
    r = clinician.get(f"/research/fhir/Bundle/{BUNDLE_ID}", token=researcher_token())
    assert r.status == 200, r.describe()
    doc = r.json()
    assert doc["type"] == "transaction" and len(doc["entry"]) > 50
    for v in phi_values(original):
        assert v not in r.text, f"{v!r} released"
    pat = next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")
    assert pat.get("birthDate", "")[:4] in ("", original["birthDate"][:4]) and len(pat.get("birthDate", "")) <= 4
    # Record keys are keyed pseudonyms (the demo HMAC key), and references still resolve.
    source = json.loads(CLEMENTE.read_text())
    for e in source["entry"]:
        assert e["resource"]["id"] not in r.text, "a record key was released"
    targets = {e.get("fullUrl") for e in doc["entry"]}
    targets |= {f'{e["resource"]["resourceType"]}/{e["resource"]["id"]}' for e in doc["entry"]}
    targets |= {f'#{c["id"]}' for e in doc["entry"] for c in e["resource"].get("contained", [])}
    source_refs = re.findall(r'"reference":\s*"([^"]+)"', CLEMENTE.read_text())
    refs = re.findall(r'"reference":"([^"]+)"', r.text)
    assert len(refs) == len(source_refs) > 50
    unresolved = [ref for ref in refs if ref not in targets]
    assert unresolved == [], f"references that no longer resolve: {unresolved[:5]}"


def test_research_without_purpose_gets_no_profile(clinician):
    token = cli_token(claims={"scp": ["user/*.rs"], "scope": None})
    r = clinician.get(f"/research/fhir/Observation?patient={ME}", token=token)
    assert r.status == 403, r.describe()
    assert clinician.upstream_requests() == []


@pytest.mark.parametrize("hook,reason", [
    ({"x-test-gzip": "1"}, "response_encoded"),
    ({"x-test-content-type": "text/html"}, "response_not_json"),
])
def test_bad_upstream_answers_fail_closed(patient_app, hook, reason):
    original = patient_of(CLEMENTE)
    r = patient_app.get(f"/fhir/Patient/{ME}", token=patient_token(), headers=hook)
    assert r.json()["issue"][0]["details"]["coding"][0]["code"] == reason, r.describe()
    for v in phi_values(original):
        assert v not in r.text
    assert r.header("content-encoding") is None


def test_truncated_upstream_body_never_released(patient_app):
    original = patient_of(CLEMENTE)
    try:
        r = patient_app.get(f"/fhir/Patient/{ME}", token=patient_token(), headers={"x-test-truncate": "1"})
    except Exception:  # noqa: BLE001 - a reset is a correct outcome too
        return
    for v in phi_values(original):
        assert v not in r.text


def test_oversized_body_fails_closed():
    doc = json.loads((REPO / "policies" / "clinician-api.json").read_text())
    doc = copy.deepcopy(doc)
    doc["name"] = "clinician-small-buffer"
    doc["limits"] = {"maxResponseBytes": 65536}
    workdir = REPO / ".run" / "tests" / "oversized"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policy.json").write_text(json.dumps(doc))
    h = make_harness(os.environ.get("HARNESS", "local"), "oversized", workdir=workdir, policy=workdir / "policy.json")
    try:
        r = Api(h).get(f"/research/fhir/Bundle/{BUNDLE_ID}", token=researcher_token())
        assert r.json()["issue"][0]["details"]["coding"][0]["code"] == "response_too_large", r.describe()
        for v in phi_values(patient_of(CLEMENTE)):
            assert v not in r.text
    finally:
        h.stop()
