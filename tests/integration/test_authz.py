"""Scopes, patient compartments, public and unmatched routes (policy: smart-patient-app)."""

import pytest
from helpers import INSUFFICIENT_SCOPE, ME, OTHER, assert_allowed, assert_denied

SCOPE = "patient/*.rs"


@pytest.fixture
def my_token(tokens):
    return tokens.cli(scope=SCOPE, patient=ME)


# ------------------------------------------------------------------------------ public routes
@pytest.mark.parametrize("path", ["/healthz", "/fhir/metadata", "/.well-known/smart-configuration",
                                  "/fhir/.well-known/smart-configuration"])
def test_public_route_without_token(patient_app, path):
    resp = patient_app.get(path)
    assert_allowed(patient_app, resp)


def test_smart_discovery_is_served_under_the_fhir_base(patient_app):
    """SMART App Launch 2.x: clients GET `[base]/.well-known/smart-configuration`, no token."""
    resp = patient_app.get("/fhir/.well-known/smart-configuration")
    doc = assert_allowed(patient_app, resp)
    for member in ("authorization_endpoint", "token_endpoint", "capabilities"):
        assert doc[member], member
    assert "permission-v2" in doc["capabilities"]
    # Only that document: the rest of `.well-known` under the base, and other methods, are not
    # public.
    assert patient_app.get("/fhir/.well-known/openid-configuration").status in (400, 401)
    assert patient_app.request("POST", "/fhir/.well-known/smart-configuration", body=b"{}").status == 405


# ------------------------------------------------------------------------------ scopes
def test_insufficient_scope(patient_app, tokens):
    token = tokens.cli(scope="patient/Observation.rs", patient=ME)
    resp = patient_app.get(f"/fhir/Patient/{ME}", token=token)
    assert_denied(patient_app, resp, 403, token=token, www_authenticate=INSUFFICIENT_SCOPE,
                  reason="insufficient_scope")


def test_scope_for_type_allows_that_type(patient_app, tokens):
    token = tokens.cli(scope="patient/Observation.rs", patient=ME)
    resp = patient_app.get(f"/fhir/Observation?patient={ME}", token=token)
    bundle = assert_allowed(patient_app, resp)
    assert bundle["type"] == "searchset" and bundle["total"] > 0


def test_non_data_scopes_grant_nothing(patient_app, tokens):
    token = tokens.cli(scope="openid fhirUser launch/patient offline_access", patient=ME)
    resp = patient_app.get(f"/fhir/Patient/{ME}", token=token)
    assert_denied(patient_app, resp, 403, token=token, www_authenticate=INSUFFICIENT_SCOPE,
                  reason="insufficient_scope")


def test_read_scope_does_not_allow_write(patient_app, tokens):
    token = tokens.cli(scope="patient/*.rs", patient=ME)
    resp = patient_app.request("POST", "/fhir/Observation", token=token,
                               headers={"Content-Type": "application/fhir+json"},
                               body=b'{"resourceType":"Observation"}')
    assert resp.status in (403, 405), resp.describe()
    assert patient_app.upstream_requests() == []


# ------------------------------------------------------------------------------ compartment
def test_compartment_search_own_patient(patient_app, my_token):
    resp = patient_app.get(f"/fhir/Patient/{ME}/Observation", token=my_token)
    bundle = assert_allowed(patient_app, resp)
    assert bundle["total"] > 0
    assert all(e["resource"]["subject"]["reference"] == f"Patient/{ME}" for e in bundle["entry"])


def test_search_own_patient(patient_app, my_token):
    resp = patient_app.get(f"/fhir/Observation?patient={ME}", token=my_token)
    assert_allowed(patient_app, resp)


MISMATCH, ESCAPE = "patient_mismatch", "compartment_escape"
LEAKS = {
    # id: (path, acceptable refusal codes)
    "read-other": (f"/fhir/Patient/{OTHER}", MISMATCH),
    "search-other": (f"/fhir/Observation?patient={OTHER}", MISMATCH),
    "search-subject-other": (f"/fhir/Observation?subject=Patient/{OTHER}", MISMATCH),
    "compartment-other": (f"/fhir/Patient/{OTHER}/Observation", MISMATCH),
    "search-without-patient": ("/fhir/Observation", ESCAPE),
    "include": (f"/fhir/Observation?patient={ME}&_include=Observation:subject", ESCAPE),
    "revinclude": (f"/fhir/Patient?_id={ME}&_revinclude=Observation:subject", ESCAPE),
    "has": (f"/fhir/Patient?_id={ME}&_has:Observation:patient:code=1234", ESCAPE),
    "two-patient-params": (f"/fhir/Observation?patient={ME}&patient={OTHER}", {MISMATCH, ESCAPE}),
    "or-list": (f"/fhir/Observation?patient={ME},{OTHER}", {MISMATCH, ESCAPE}),
    "chained": (f"/fhir/Observation?patient={ME}&subject:Patient.name=Kermit", ESCAPE),
}


@pytest.mark.parametrize("case", list(LEAKS))
def test_compartment_leak_is_403(patient_app, my_token, case):
    path, reason = LEAKS[case]
    resp = patient_app.get(path, token=my_token)
    assert_denied(patient_app, resp, 403, token=my_token, reason=reason)


# ------------------------------------------------------------------------------ unmatched routes
def test_unmatched_route_is_404_for_patient_app(patient_app, my_token):
    resp = patient_app.get("/not/a/route", token=my_token)
    assert_denied(patient_app, resp, 404, token=my_token, fhir=False, reason="no_route")


def test_unmatched_route_is_403_for_clinician_policy(clinician, tokens):
    token = tokens.cli(claims={"scp": ["user/*.rs"]})
    resp = clinician.get("/not/a/route", token=token)
    assert_denied(clinician, resp, 403, token=token, fhir=False, reason="no_route")


def test_method_not_in_route_is_refused(patient_app, my_token):
    resp = patient_app.request("DELETE", f"/fhir/Patient/{ME}", token=my_token)
    assert resp.status in (403, 405), resp.describe()
    assert patient_app.upstream_requests() == []
