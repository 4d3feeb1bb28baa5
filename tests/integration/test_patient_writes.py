"""Patient-context writes confined by a pre-flight read, through a real Envoy.

Policy: smart-patient-app with `fhir.patientWrites` (tests/integration/conftest.py): a
patient-context token with write letters may update, patch or delete a resource only after the
filter has read it from the upstream and found it in the token patient's compartment; the
write then goes with `If-Match` set to the version read, so a change in between makes the
upstream refuse it (the demo server answers 412 to a stale If-Match).
"""

from __future__ import annotations

import json

from helpers import ME, assert_operation_outcome, reason_codes

MY_OBS = "2fff439b-abfd-42a4-b17c-07f2cc59fbc9"  # Clemente's Observation
OTHER_OBS = "a0cf0bae-f27f-402a-acd6-22c7bd3ac5d1"  # Kermit's Observation
SCOPE = "launch/patient patient/Observation.cruds patient/Patient.rs"


def writer(tokens) -> str:
    return tokens.cli(scope=SCOPE, patient=ME)


def stored(api, oid: str) -> dict:
    from harness import http_get

    status, body = http_get(f"{api.harness.upstream_url}/fhir/Observation/{oid}")
    assert status == 200
    return json.loads(body)


def assert_refused(api, resp, status: int, reason) -> None:
    """A refused write: its status, reason and OperationOutcome; upstream, at most the read and
    a write whose body never arrived (the headers go ahead; a refused body resets the upstream
    stream, as for every checked request body)."""
    wanted = {reason} if isinstance(reason, str) else set(reason)
    assert resp.status == status and reason_codes(resp) & wanted, resp.describe()
    assert_operation_outcome(resp)
    seen = api.upstream_requests()
    assert all(r["method"] == "GET" or not r["body"] for r in seen), seen


def upstream_writes(api, method: str) -> list[dict]:
    """Writes the upstream received with their body (a refused body never arrives)."""
    return [r for r in api.upstream_requests() if r["method"] == method and (method == "DELETE" or r["body"])]


def test_deleting_my_own_resource_is_read_first_and_pinned(patient_writes, tokens):
    resp = patient_writes.request("DELETE", f"/fhir/Observation/{MY_OBS}", token=writer(tokens))
    assert resp.status == 204, resp.describe()
    reads = [r for r in patient_writes.upstream_requests() if r["method"] == "GET"]
    deletes = upstream_writes(patient_writes, "DELETE")
    assert [r["path"] for r in reads] == [f"/fhir/Observation/{MY_OBS}"], reads
    assert len(deletes) == 1 and deletes[0]["headers"].get("if-match") == 'W/"1"', deletes


def test_updating_my_own_resource_goes_with_if_match(patient_writes, tokens):
    body = stored(patient_writes, MY_OBS)
    body["status"] = "amended"
    resp = patient_writes.request("PUT", f"/fhir/Observation/{MY_OBS}", token=writer(tokens),
                                  headers={"Content-Type": "application/fhir+json"}, body=json.dumps(body).encode())
    assert resp.status == 200, resp.describe()
    puts = upstream_writes(patient_writes, "PUT")
    assert len(puts) == 1 and puts[0]["headers"].get("if-match") == 'W/"1"', puts


def test_another_patients_resource_is_never_changed(patient_writes, tokens):
    for method in ("DELETE", "PATCH", "PUT"):
        body = json.dumps(stored(patient_writes, OTHER_OBS)).encode() if method == "PUT" else b"[]"
        resp = patient_writes.request(method, f"/fhir/Observation/{OTHER_OBS}", token=writer(tokens), body=body,
                                      headers={"Content-Type": "application/json-patch+json"})
        assert_refused(patient_writes, resp, 403, {"patient_mismatch", "invalid_request_body"})
        assert not upstream_writes(patient_writes, method), f"{method} reached the upstream"


def test_a_missing_resource_or_a_stale_client_version_refuses(patient_writes, tokens):
    resp = patient_writes.request("DELETE", "/fhir/Observation/does-not-exist", token=writer(tokens))
    assert_refused(patient_writes, resp, 403, "write_not_verified")
    resp = patient_writes.request("DELETE", f"/fhir/Observation/{MY_OBS}", token=writer(tokens),
                                  headers={"If-Match": 'W/"0"'})
    assert_refused(patient_writes, resp, 412, "precondition_failed")
    assert not upstream_writes(patient_writes, "DELETE")


def test_a_patch_may_not_move_my_resource_to_another_patient(patient_writes, tokens):
    patch = [{"op": "replace", "path": "/subject/reference", "value": "Patient/somebody-else"}]
    resp = patient_writes.request("PATCH", f"/fhir/Observation/{MY_OBS}", token=writer(tokens),
                                  headers={"Content-Type": "application/json-patch+json"}, body=json.dumps(patch).encode())
    assert_refused(patient_writes, resp, 403, "compartment_escape")
    assert not upstream_writes(patient_writes, "PATCH")
    ok = [{"op": "replace", "path": "/status", "value": "amended"}]
    resp = patient_writes.request("PATCH", f"/fhir/Observation/{MY_OBS}", token=writer(tokens),
                                  headers={"Content-Type": "application/json-patch+json"}, body=json.dumps(ok).encode())
    assert resp.status == 200, resp.describe()
    patches = upstream_writes(patient_writes, "PATCH")
    assert len(patches) == 1 and patches[0]["headers"].get("if-match") == 'W/"1"'
