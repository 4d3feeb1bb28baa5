"""A patient-context token stays in its patient's compartment through a real Envoy, whatever the
search says and whatever the upstream answers (issue 15, section 1).

Request side: every search that named the token's patient in one parameter and somebody else
(or nobody the upstream applies) in another is refused before it reaches the upstream. Response
side: an upstream that ignores or misreads a parameter, or answers a different resource than the
one asked for, gets its whole answer withheld. HEAD, which has no body to check, is refused."""

from __future__ import annotations

import json

import pytest
from helpers import ME, OTHER, Api, assert_denied, reason_codes
from tokens import cli_token

SCOPE = "launch/patient patient/*.rs"


@pytest.fixture(scope="module")
def token() -> str:
    return cli_token(scope=SCOPE, patient=ME)


@pytest.fixture(scope="module")
def other_observation(no_filter: Api) -> str:
    """The id of one of OTHER's Observations, read straight from the upstream."""
    bundle = no_filter.get(f"/fhir/Observation?patient={OTHER}&_count=1").json()
    return bundle["entry"][0]["resource"]["id"]


# (path, reason): the attacks of issue 15 and their neighbours. None of them may reach the
# upstream.
REFUSED = [
    (f"/fhir/Condition?subject=Patient/{OTHER}&asserter=Patient/{ME}", "patient_mismatch"),
    (f"/fhir/Condition?subject=Patient/{OTHER}", "patient_mismatch"),
    (f"/fhir/Encounter?subject=Patient/{OTHER}&patient:Patient={ME}", "patient_mismatch"),
    (f"/fhir/MedicationRequest?patient={OTHER}&subject:Patient={ME}", "patient_mismatch"),
    (f"/fhir/Observation?patient:Patient={ME}&_count=500", "compartment_escape"),
    (f"/fhir/Observation?performer=Patient/{ME}", "compartment_escape"),
    (f"/fhir/RelatedPerson?patient:Patient={ME}", "compartment_escape"),
    (f"/fhir/Observation?patient={ME}&performer={OTHER}", "patient_mismatch"),
    (f"/fhir/Observation?patient={ME}&subject:not=Patient/{ME}", "compartment_escape"),
    (f"/fhir/Observation?patient={ME}&subject:missing=true", "compartment_escape"),
    (f"/fhir/Observation?patient={ME}&subject:identifier=urn:mrn%7C123", "compartment_escape"),
    (f"/fhir/Observation?patient=https://evil.example/fhir/Patient/{ME}", "compartment_escape"),
    (f"/fhir/Observation?patient={ME}&ssn=123-45-6789", "search_parameter_not_allowed"),
    (f"/fhir/Patient/{ME}/Observation?subject=Patient/{OTHER}", "patient_mismatch"),
    (f"/fhir/Patient?_id={ME}&link=Patient/{OTHER}", "patient_mismatch"),
]


@pytest.mark.parametrize("path,reason", REFUSED, ids=[p for p, _ in REFUSED])
def test_search_tricks_are_refused_before_the_upstream(patient_app, token, path, reason):
    resp = patient_app.get(path, token=token)
    assert_denied(patient_app, resp, 403, token=token, reason=reason)


def test_own_searches_still_work_and_hold_only_own_data(patient_app, token):
    for path in (f"/fhir/Observation?patient={ME}&_count=5", f"/fhir/Patient/{ME}/Condition",
                 f"/fhir/Encounter?patient=Patient/{ME}", f"/fhir/Patient?_id={ME}"):
        resp = patient_app.get(path, token=token)
        assert resp.status == 200, resp.describe()
        bundle = resp.json()
        assert bundle["resourceType"] == "Bundle", resp.describe()
        assert OTHER not in resp.text, path


def test_user_and_system_scopes_are_not_accepted_by_the_patient_app(patient_app):
    for scope in ("user/*.rs", "system/*.rs"):
        tok = cli_token(scope=scope, patient=ME)
        resp = patient_app.get(f"/fhir/Observation?patient={OTHER}", token=tok)
        assert_denied(patient_app, resp, 403, token=tok, reason="insufficient_scope")


def test_head_is_not_an_existence_oracle(patient_app, token, other_observation):
    for path in (f"/fhir/Observation/{other_observation}", "/fhir/Observation/does-not-exist",
                 f"/fhir/Observation?patient={ME}"):
        resp = patient_app.request("HEAD", path, token=token)
        assert resp.status == 405, resp.describe()
        assert not patient_app.upstream_requests(), f"HEAD {path} reached the upstream"


def bundle(*resources: dict) -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(resources),
                       "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}).encode()


def obs(rid: str, patient: str, **extra) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"text": "Heart rate"}, "subject": {"reference": f"Patient/{patient}"}, **extra}


# (description, request path, upstream body): answers an upstream could give to an allowed
# request that hold data of somebody else, or not what was asked.
WITHHELD = [
    ("search answered with another patient's entry", f"/fhir/Observation?patient={ME}",
     bundle(obs("a", ME), obs("b", OTHER, valueString="Kermit Trantow"))),
    ("search answered with another patient as an include", f"/fhir/Observation?patient={ME}",
     bundle(obs("a", ME), {"resourceType": "Patient", "id": OTHER, "name": [{"family": "Trantow"}]})),
    ("search answered with an unknown resource type", f"/fhir/Observation?patient={ME}",
     bundle(obs("a", ME), {"resourceType": "Trantow", "id": "x"})),
    ("search answered with an unshared type", f"/fhir/Observation?patient={ME}",
     bundle({"resourceType": "Organization", "id": "o", "name": "Trantow Clinic"})),
    ("read answered with another patient's resource", "/fhir/Observation/a",
     json.dumps(obs("a", OTHER, valueString="Kermit Trantow")).encode()),
    ("read answered with another resource", "/fhir/Observation/a",
     json.dumps(obs("b", ME, valueString="Kermit Trantow")).encode()),
    ("read answered with a Bundle", "/fhir/Observation/a", bundle(obs("a", OTHER, valueString="Kermit Trantow"))),
    ("own Patient read answered with another Patient", f"/fhir/Patient/{ME}",
     json.dumps({"resourceType": "Patient", "id": OTHER, "name": [{"family": "Trantow"}]}).encode()),
    ("contained patient of somebody else", "/fhir/Observation/a",
     json.dumps(obs("a", ME, contained=[{"resourceType": "Patient", "id": OTHER,
                                          "name": [{"family": "Trantow"}]}])).encode()),
]


@pytest.mark.parametrize("what,path,body", WITHHELD, ids=[w for w, _, _ in WITHHELD])
def test_upstream_answers_outside_the_compartment_are_withheld(patient_app, token, what, path, body):
    h = patient_app.harness
    h.upstream_respond(200, body)
    try:
        resp = patient_app.get(path, token=token)
    finally:
        h.upstream_reset()
    assert "Trantow" not in resp.text and OTHER not in resp.text, f"{what}: {resp.describe()}"
    assert reason_codes(resp) & {"compartment_violation", "patient_mismatch"}, f"{what}: {resp.describe()}"


def test_upstream_answer_inside_the_compartment_is_released(patient_app, token):
    h = patient_app.harness
    h.upstream_respond(200, bundle(obs("a", ME), obs("b", ME)))
    try:
        resp = patient_app.get(f"/fhir/Observation?patient={ME}", token=token)
    finally:
        h.upstream_reset()
    assert resp.status == 200, resp.describe()
    assert [e["resource"]["id"] for e in resp.json()["entry"]] == ["a", "b"]


def test_error_answers_are_scrubbed_for_patient_tokens(patient_app, token):
    """An upstream error body may hold what it found or looked for: the status stays, the body
    is a generic one."""
    h = patient_app.harness
    h.upstream_respond(404, json.dumps(obs("a", OTHER, valueString="Kermit Trantow")).encode())
    try:
        resp = patient_app.get("/fhir/Observation/a", token=token)
    finally:
        h.upstream_reset()
    assert resp.status == 404, resp.describe()
    assert "Trantow" not in resp.text and OTHER not in resp.text, resp.describe()
    assert resp.json()["resourceType"] == "OperationOutcome", resp.describe()
