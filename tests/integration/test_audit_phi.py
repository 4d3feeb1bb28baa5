"""PHI in free-form request parts and token claims never reaches an audit line through a real
Envoy (issue 15, section 3): hostile `x-request-id`s, parameter names, modifiers, chains,
`_elements`/`_sort`/`_include` values, operation names, non-Patient ids, `sub`/`client_id`/`jti`
/`acr` and purpose claims, on allowed, refused and unauthenticated (401) requests. Free-form
values are pseudonymized under the audit key, so each event is found by its request id's
pseudonym, computed here from the demo key as docs/AUDIT.md describes."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

from envoy_config import DEMO_AUDIT_KEY
from fhir_audit import check_audit_lines
from helpers import ME, Api
from tokens import cli_token

REPO = Path(__file__).resolve().parents[2]


PREFIX = "phi-guard-audit: "

# Values that must never appear on an audit line (case-sensitive substrings).
PHI = ["Kermit", "Trantow", "1990-01-01", "555-0100", "123-45-6789", "ssn", "Smith", "smith", "John", "john",
       "MRN-12345", "example.org"]


def pseudonym(namespace: str, value: str) -> str:
    """`AuditKey::pseudonym_of`: HMAC-SHA256 under the key derived from the audit secret."""
    key = hmac.new(DEMO_AUDIT_KEY.strip().encode(), b"phi-guard patient pseudonym v1", hashlib.sha256).digest()
    return "ps1-" + hmac.new(key, f"{namespace}/{value}".encode(), hashlib.sha256).hexdigest()[:32]


def audit_lines(text: str) -> list[str]:
    return [ln.split(PREFIX, 1)[1] for ln in text.splitlines() if PREFIX in ln]


def strings(v):
    """Every string in a JSON value, keys included."""
    if isinstance(v, str):
        yield v
    elif isinstance(v, list):
        for i in v:
            yield from strings(i)
    elif isinstance(v, dict):
        for k, i in v.items():
            yield k
            yield from strings(i)


def events_for(api: Api, calls: list[tuple], timeout: float = 30) -> list[str]:
    """Send each `(path, token, status)` (status `None`: any) with its own hostile request id;
    return the audit line of each, found by the request id's pseudonym."""
    ids = []
    for n, (path, token, want) in enumerate(calls):
        rid = f"Kermit-Trantow-1990-01-01-555-0100-{n}-{uuid.uuid4()}"
        ids.append(pseudonym("x-request-id", rid))
        resp = api.get(path, token=token, headers={"x-request-id": rid})
        assert want is None or resp.status == want, (path, resp.status)
    # Envoy flushes its log file every few seconds: wait for every event.
    deadline = time.monotonic() + timeout
    while True:
        lines = audit_lines(api.harness.envoy_log_text())
        found = [next((ln for ln in lines if p in ln), None) for p in ids]
        if all(found) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    missing = [c[0] for c, ln in zip(calls, found) if ln is None]
    assert not missing, f"no audit line (by request id pseudonym) for {missing}"
    return [ln for ln in found if ln]


def assert_phi_free(lines: list[str]) -> None:
    check_audit_lines(lines)  # the FHIR AuditEvents among them conform (R4 models, BALP)
    for ln in lines:
        assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in ln), ln
        for s in strings(json.loads(ln)):
            assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in s), f"control character in {s!r}"
        for value in PHI:
            assert value not in ln, f"{value!r} in the audit line {ln}"


def test_unauthenticated_requests_audit_no_phi(patient_app):
    calls = [
        ("/fhir/Observation/MRN-12345?ssn:123-45-6789&_sort=Smith", None, 401),
        ("/fhir/Patient/$smith-john?_elements=John&_include=Smith:John", None, 401),
        ("/fhir/Observation?code=1&name:Smith=x&subject.John=x&John=Smith", None, 401),
        ("/fhir/Patient?_has:Smith:John:code=x&_sort=-Smith", None, 401),
    ]
    lines = events_for(patient_app, calls)
    assert_phi_free(lines)
    # Checked as text: the policy may log JSON lines or FHIR AuditEvents.
    assert all("missing_token" in ln for ln in lines)
    assert pseudonym("Observation", "MRN-12345") in lines[0] and "?&_sort=*" in lines[0]
    assert pseudonym("operation", "smith-john") in lines[1] and "_elements=*&_include=*" in lines[1]
    assert "code=*&name:?=*&subject.?=*&?=*" in lines[2]
    assert "_has:?:?:code=*&_sort=*" in lines[3]


def test_hostile_claims_and_queries_audit_no_phi(patient_app, clinician):
    hostile = cli_token(sub="john.smith@example.org", client_id="John Smith",
                        claims={"scp": ["user/Patient.rs", "user/Observation.rs"], "scope": None,
                                "jti": "Kermit\nTrantow 555-0100", "acr": "John\tSmith", "amr": ["pwd", "Smith\n"]})
    purpose = cli_token(claims={"scp": ["user/Observation.rs"], "scope": None, "purpose_of_use": "JohnSmith"})
    calls = [
        ("/fhir/Observation?code=1&ssn:123-45-6789&_elements=John&_sort=Smith&_include=Smith:John", hostile),
        ("/fhir/Observation/MRN-12345", hostile),
        ("/fhir/Patient/$smith-john", hostile),
        ("/fhir/Observation/MRN-12345", purpose),
    ]
    lines = events_for(clinician, [(path, token, None) for path, token in calls])
    patient_token = cli_token(scope="patient/Patient.rs patient/Observation.rs", patient=ME,
                              sub="MRN-12345", claims={"jti": "John Smith"})
    lines += events_for(patient_app, [
        (f"/fhir/Observation?patient={ME}&ssn:123-45-6789&_elements=John&_sort=Smith&_include=Smith:John", patient_token, None),
        (f"/fhir/Observation?patient={ME}&ssn", patient_token, None),
    ])
    assert_phi_free(lines)
    assert pseudonym("sub", "john.smith@example.org") in lines[0]
    assert pseudonym("jti", "Kermit\nTrantow 555-0100") in lines[0]
    assert "code=*&?&_elements=*&_sort=*&_include=*" in lines[0]
    assert pseudonym("Observation", "MRN-12345") in lines[1]
    assert pseudonym("operation", "smith-john") in lines[2]
    assert pseudonym("sub", "MRN-12345") in lines[4] and pseudonym("jti", "John Smith") in lines[4]
    assert "&?&_elements=*&_sort=*&_include=*" in lines[4] and lines[5].count("&?") == 1
    first = json.loads(lines[0])
    if "reason" in first:  # JSON lines: the checked claims
        assert (first["clientId"], first["acr"], first["amr"]) == ("invalid", "invalid", ["pwd", "invalid"])
        assert json.loads(lines[3]).get("purposeOfUse", ["invalid"]) == ["invalid"]
