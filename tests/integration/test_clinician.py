"""Clinician / back-office policy: `scp` claim as an array, user/ and system/ scopes, admin API."""

import pytest
from helpers import INSUFFICIENT_SCOPE, INVALID_TOKEN, ME, OTHER, assert_allowed, assert_denied


def scp(tokens, *scopes, **options):
    return tokens.cli(claims={"scp": list(scopes)}, **options)


@pytest.mark.parametrize("patient", [ME, OTHER])
def test_user_scope_reads_any_patient(clinician, tokens, patient):
    token = scp(tokens, "user/Patient.rs")
    resp = clinician.get(f"/fhir/Patient/{patient}", token=token)
    body = assert_allowed(clinician, resp)
    assert body["id"] == patient


def test_user_scope_searches_without_patient_parameter(clinician, tokens):
    token = scp(tokens, "user/Observation.rs")
    resp = clinician.get("/fhir/Observation?_count=5", token=token)
    assert_allowed(clinician, resp)


def test_user_scope_for_other_type_is_403(clinician, tokens):
    token = scp(tokens, "user/Patient.rs")
    resp = clinician.get(f"/fhir/Observation?patient={ME}", token=token)
    assert_denied(clinician, resp, 403, token=token, www_authenticate=INSUFFICIENT_SCOPE,
                  reason="insufficient_scope")


def test_admin_report_with_literal_scope(clinician, tokens):
    token = scp(tokens, "admin.reports.read")
    resp = clinician.get("/admin/reports/1", token=token)
    body = assert_allowed(clinician, resp)
    assert body["reportId"] == "1"


def test_admin_report_without_literal_scope_is_403(clinician, tokens):
    token = scp(tokens, "user/Patient.rs")
    resp = clinician.get("/admin/reports/1", token=token)
    assert_denied(clinician, resp, 403, token=token, www_authenticate=INSUFFICIENT_SCOPE,
                  fhir=False, reason="insufficient_scope")


@pytest.mark.parametrize("scope", ["admin.export", "system/*.read"])
def test_admin_export_any_of(clinician, tokens, scope):
    token = scp(tokens, scope)
    resp = clinician.get("/admin/export/patients", token=token)
    assert_allowed(clinician, resp)


def test_admin_export_without_scope_is_403(clinician, tokens):
    token = scp(tokens, "admin.reports.read")
    resp = clinician.get("/admin/export", token=token)
    assert_denied(clinician, resp, 403, token=token, www_authenticate=INSUFFICIENT_SCOPE,
                  fhir=False, reason="insufficient_scope")


def test_scope_string_in_wrong_claim_grants_nothing(clinician, tokens):
    """This policy reads `scp`; a `scope` string claim must not count."""
    token = tokens.cli(scope="user/Patient.rs")
    resp = clinician.get(f"/fhir/Patient/{ME}", token=token)
    assert resp.status == 403, resp.describe()
    assert clinician.upstream_requests() == []


def test_algorithm_not_allowed_for_issuer(clinician, tokens):
    """The clinician policy allows RS256 and ES256 only: a valid EdDSA token is refused."""
    token = tokens.cli(alg="EdDSA", key="tests/keys/demo-eddsa.key.pem", kid="demo-eddsa",
                       claims={"scp": ["user/Patient.rs"]})
    resp = clinician.get(f"/fhir/Patient/{ME}", token=token)
    assert_denied(clinician, resp, 401, token=token, www_authenticate=INVALID_TOKEN,
                  reason="algorithm_not_allowed")


def test_missing_token_on_admin_route(clinician):
    resp = clinician.get("/admin/reports/1")
    assert_denied(clinician, resp, 401, fhir=False, reason="missing_token")
    assert (resp.header("www-authenticate") or "").lower().startswith("bearer")
