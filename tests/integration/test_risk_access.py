"""Risk-based access through a real Envoy: step-up authentication (RFC 9470), purpose of use,
per-patient privacy restrictions, and response integrity (RFC 9530 Content-Digest matching the
body received and the audit event)."""

from __future__ import annotations

import base64
import hashlib
import socket
import time

import pytest
from helpers import ME, Api
from tokens import cli_token

KERMIT = "1f456f0a-acb1-4728-82af-01ca57083c7b"
PSY_CONDITION = "987b6a59-04dc-497e-8e6a-e0517b01e4b0"
ETH_CONDITION = "0af23cdc-4f30-4447-a19b-5ceee011f8d7"


@pytest.fixture(scope="module")
def clinician(harnesses) -> Api:
    return Api(harnesses.get("clinician"))


@pytest.fixture(scope="module")
def patient_app(harnesses) -> Api:
    return Api(harnesses.get("patient-app"))


def clinical_token(**claims) -> str:
    base = {"scp": ["user/Condition.rs", "user/Patient.rs"], "scope": None, "purpose_of_use": "TREAT",
            "acr": "urn:phi-guard:loa:2", "amr": ["pwd", "mfa"], "auth_time": int(time.time()) - 600}
    base.update(claims)
    return cli_token(claims=base)


def code(resp) -> str:
    return resp.json()["issue"][0]["details"]["coding"][0]["code"]


@pytest.mark.parametrize("case,claims", [
    ("acr-too-low", {"acr": "urn:phi-guard:loa:1"}),
    ("mfa-missing-from-amr", {"amr": ["pwd"]}),
    ("stale-auth-time", {"auth_time": int(time.time()) - 50_000}),
])
def test_step_up_required(clinician, case, claims):
    r = clinician.get(f"/clinical/fhir/Condition?patient={KERMIT}", token=clinical_token(**claims))
    assert r.status == 401, f"{case}: {r.describe()}"
    challenge = r.header("www-authenticate") or ""
    assert 'error="insufficient_user_authentication"' in challenge, challenge
    assert 'acr_values="urn:phi-guard:loa:2' in challenge, challenge  # loa:2 or stronger
    assert 'max_age="43200"' in challenge or "max_age=43200" in challenge, challenge
    assert code(r) == "insufficient_user_authentication"
    assert clinician.upstream_requests() == []


@pytest.mark.parametrize("purpose,status,reason", [
    (None, 403, "purpose_required"),
    ("HRESCH", 403, "purpose_not_allowed"),
    ("TREAT", 200, None),
])
def test_purpose_of_use(clinician, purpose, status, reason):
    r = clinician.get(f"/clinical/fhir/Condition?patient={KERMIT}", token=clinical_token(purpose_of_use=purpose))
    assert r.status == status, r.describe()
    if reason:
        assert code(r) == reason


def test_restricted_resources_removed_from_search(clinician):
    r = clinician.get(f"/clinical/fhir/Condition?patient={KERMIT}", token=clinical_token())
    assert r.status == 200, r.describe()
    ids = [e["resource"]["id"] for e in r.json().get("entry", [])]
    assert ids, "no entries at all"
    assert PSY_CONDITION not in ids and ETH_CONDITION not in ids, ids
    assert PSY_CONDITION not in r.text and ETH_CONDITION not in r.text
    assert "total" not in r.json()


def test_restricted_resource_refused_on_direct_read(clinician):
    r = clinician.get(f"/clinical/fhir/Condition/{PSY_CONDITION}", token=clinical_token())
    assert code(r) == "restricted", r.describe()
    assert PSY_CONDITION not in r.text or "OperationOutcome" in r.text
    assert "PSY" not in r.text


def test_restricted_resource_released_for_emergency_treatment(clinician):
    r = clinician.get(f"/clinical/fhir/Condition/{PSY_CONDITION}", token=clinical_token(purpose_of_use="ETREAT", break_glass_reason="unconscious-patient"))
    assert r.status == 200 and r.json()["id"] == PSY_CONDITION, r.describe()


def raw_get_with_trailers(api: Api, path: str, token: str) -> tuple[int, bytes, dict]:
    """HTTP/1.1 by hand, so the chunked body's trailers are visible."""
    with socket.create_connection((api.host, api.port), timeout=15) as s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: fhir.phi-guard.test\r\nTE: trailers\r\n"
                   f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = {ln.split(b":", 1)[0].strip().lower().decode(): ln.split(b":", 1)[1].strip().decode()
               for ln in head.split(b"\r\n")[1:] if b":" in ln}
    body, trailers = b"", {}
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                for ln in rest.split(b"\r\n"):
                    if b":" in ln:
                        trailers[ln.split(b":", 1)[0].strip().lower().decode()] = ln.split(b":", 1)[1].strip().decode()
                break
            body, rest = body + rest[:size], rest[size + 2:]
    else:
        body = rest
    return status, body, trailers


def test_content_digest_matches_body_and_audit(patient_app):
    token = cli_token(scope="patient/Patient.rs", patient=ME)
    status, body, trailers = raw_get_with_trailers(patient_app, f"/fhir/Patient/{ME}", token)
    assert status == 200
    expected = "sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()).decode() + ":"
    if "content-digest" in trailers:
        assert trailers["content-digest"] == expected, (trailers, expected)
    h = patient_app.harness
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and expected not in h.envoy_log_text():
        time.sleep(0.3)
    assert expected in h.envoy_log_text(), "the audit event does not carry the digest of the body sent"
