"""Rate limits (shared by every worker), request limits, request-body checks on FHIR writes, and
security headers, through a real Envoy with two workers."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest
from harness import make_harness
from helpers import ME, OTHER, Api
from tokens import cli_token

REPO = Path(__file__).resolve().parents[2]


CLINICIAN = json.loads((REPO / "policies" / "clinician-api.json").read_text())


@pytest.fixture(scope="module")
def api():
    doc = copy.deepcopy(CLINICIAN)
    doc["name"] = "clinician-limits"
    doc["rateLimits"] = [{"id": "per-subject", "by": "subject", "requestsPerMinute": 6, "burst": 3, "routes": ["admin-reports"]}]
    doc["limits"] = {"maxRequestBodyBytes": 4096, "maxHeaderCount": 40}
    workdir = REPO / ".run" / "tests" / "limits"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "policy.json"
    path.write_text(json.dumps(doc, indent=2))
    import os
    h = make_harness(os.environ.get("HARNESS", "local"), "limits", workdir=workdir, policy=path)
    try:
        yield Api(h)
    finally:
        h.stop()


def scp_token(*scopes: str, sub: str = "clinician-1", patient: str | None = None) -> str:
    claims = {"scp": list(scopes), "scope": None, "sub": sub}
    if patient:
        claims["patient"] = patient
    return cli_token(claims=claims)


def worker_connections(api) -> dict[str, int]:
    out = {}
    for line in api.harness.stats_prometheus().splitlines():
        if line.startswith("envoy_listener_worker_downstream_cx_total{") and "127.0.0.1" in line:
            worker = line.split('envoy_worker_id="')[1].split('"')[0] if "envoy_worker_id" in line else line
            out[worker] = out.get(worker, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def test_rate_limit_is_shared_across_workers(api):
    token = scp_token("admin.reports.read", sub=f"burst-{uuid.uuid4()}")
    statuses = []
    for _ in range(10):  # each on a new connection: both workers take some
        r = api.get("/admin/reports/1", token=token)
        statuses.append(r.status)
        if r.status == 429:
            assert int(r.header("retry-after")) >= 1
            assert r.json()["error"] == "rate_limited"
    assert statuses.count(200) == 3, statuses  # one bucket of 3 for the subject, not 3 per worker
    assert statuses[3:] == [429] * 7
    workers = worker_connections(api)
    if workers:
        assert len([w for w, n in workers.items() if n > 0]) == 2, f"one worker took every connection: {workers}"
    # Another subject has its own bucket.
    assert api.get("/admin/reports/1", token=scp_token("admin.reports.read", sub=f"other-{uuid.uuid4()}")).status == 200
    assert 'phi_guard_rate_limited_total{limit="per-subject"}' in api.harness.stats_prometheus()


def test_too_many_headers(api):
    token = scp_token("user/Patient.rs")
    many = {f"x-pad-{i}": "1" for i in range(50)}
    r = api.get(f"/fhir/Patient/{ME}", token=token, headers=many)
    # Refused before any route is matched: a plain JSON error.
    assert (r.status, r.json()["error"]) == (431, "headers_too_large")
    assert api.upstream_requests() == []


def test_request_body_over_limit_never_reaches_upstream(api):
    token = scp_token("user/Observation.cruds")
    body = json.dumps({"resourceType": "Observation", "note": [{"text": "x" * 8000}]}).encode()
    r = api.request("POST", "/fhir/Observation", token=token, body=body,
                    headers={"Content-Type": "application/fhir+json"})
    assert r.status == 413, r.describe()
    assert not [q for q in api.upstream_requests() if q.get("body")], "a refused body reached the upstream"


def test_write_body_must_match_the_path(api):
    token = scp_token("user/Observation.cruds")
    wrong = json.dumps({"resourceType": "Patient", "name": [{"family": "Smith"}]}).encode()
    r = api.request("POST", "/fhir/Observation", token=token, body=wrong, headers={"Content-Type": "application/fhir+json"})
    assert r.status == 400, r.describe()
    assert "Smith" not in r.text
    assert not [q for q in api.upstream_requests() if q.get("body")], "a refused body reached the upstream"
    ok = json.dumps({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}).encode()
    r = api.request("POST", "/fhir/Observation", token=token, body=ok, headers={"Content-Type": "application/fhir+json"})
    assert r.status == 201, r.describe()


def test_patient_token_cannot_write_for_another_patient(api):
    token = scp_token("patient/Observation.cruds", patient=ME)
    other = json.dumps({"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{OTHER}"}}).encode()
    r = api.request("POST", "/fhir/Observation", token=token, body=other, headers={"Content-Type": "application/fhir+json"})
    assert r.status == 403, r.describe()
    assert not [q for q in api.upstream_requests() if q.get("body")], "a refused body reached the upstream"
    mine = json.dumps({"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{ME}"}}).encode()
    r = api.request("POST", "/fhir/Observation", token=token, body=mine, headers={"Content-Type": "application/fhir+json"})
    assert r.status == 201, r.describe()


def test_security_headers_on_protected_responses(api):
    r = api.get(f"/fhir/Patient/{ME}", token=scp_token("user/Patient.rs"))
    assert r.status == 200
    assert r.header("cache-control") == "no-store"
    assert r.header("pragma") == "no-cache"
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("server") is None and r.header("x-powered-by") is None
