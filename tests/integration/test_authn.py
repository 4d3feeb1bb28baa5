"""Token verification through a real Envoy (policy: smart-patient-app).

Every refused token is the valid baseline with one thing changed, so a 401 can only come from that
one thing (test_python_minted_baseline_is_accepted proves the Python-minted baseline passes).
"""

import time

import pytest
from helpers import INVALID_REQUEST, INVALID_TOKEN, ME, OTHER, assert_allowed, assert_denied, assert_no_token_echo

READ_ME = f"/fhir/Patient/{ME}"
SCOPE = "patient/*.rs"


def test_valid_token_reads_own_patient(patient_app, tokens):
    token = tokens.cli(scope=SCOPE, patient=ME)
    resp = patient_app.get(READ_ME, token=token)
    body = assert_allowed(patient_app, resp)
    assert body["resourceType"] == "Patient" and body["id"] == ME
    assert_no_token_echo(resp, token)


def test_python_minted_baseline_is_accepted(patient_app, tokens):
    token = tokens.py.token(tokens.py.claims(scope=SCOPE, patient=ME))
    resp = patient_app.get(READ_ME, token=token)
    assert_allowed(patient_app, resp)


@pytest.mark.parametrize("alg,key,kid", [
    ("ES256", "tests/keys/demo-es256.key.pem", "demo-es256"),
    ("EdDSA", "tests/keys/demo-eddsa.key.pem", "demo-eddsa"),
])
def test_other_algorithms_accepted(patient_app, tokens, alg, key, kid):
    token = tokens.cli(alg=alg, key=key, kid=kid, scope=SCOPE, patient=ME)
    resp = patient_app.get(READ_ME, token=token)
    assert_allowed(patient_app, resp)


def test_lowercase_bearer_scheme_accepted(patient_app, tokens):
    token = tokens.cli(scope=SCOPE, patient=ME)
    resp = patient_app.get(READ_ME, token=token, scheme="bearer")
    assert_allowed(patient_app, resp)


def test_missing_token(patient_app):
    resp = patient_app.get(READ_ME)
    # RFC 6750 3.1: with no credentials at all, the challenge may omit the error code.
    assert_denied(patient_app, resp, 401, reason="missing_token")
    challenge = resp.header("www-authenticate") or ""
    assert challenge.lower().startswith("bearer"), f"WWW-Authenticate is {challenge!r}"
    assert "error=" not in challenge or INVALID_TOKEN.search(challenge), challenge


def test_another_scheme_gets_a_challenge_without_an_error(patient_app):
    """RFC 6750 §3.1: a request without bearer credentials (here HTTP Basic) is told how to
    authenticate, not that a token was invalid."""
    resp = patient_app.get(READ_ME, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_denied(patient_app, resp, 401, reason="unsupported_auth_scheme")
    challenges = [c.strip() for c in (resp.header("www-authenticate") or "").split(",") if c.strip()]
    assert challenges and challenges[0] == 'Bearer realm="phi-guard"', resp.header("www-authenticate")
    assert "error=" not in (resp.header("www-authenticate") or ""), resp.header("www-authenticate")


def test_token_in_query_string_only(patient_app, tokens):
    token = tokens.cli(scope=SCOPE, patient=ME)
    resp = patient_app.get(f"{READ_ME}?access_token={token}")
    # RFC 6750 §3.1: a token in the query is an invalid_request (400), not an invalid token.
    assert_denied(patient_app, resp, 400, token=token, www_authenticate=INVALID_REQUEST,
                  reason="token_in_query")


def _past(**extra):
    now = int(time.time())
    return {"iat": now - 7200, "exp": now - 3600, **extra}


# name -> (callable(tokens) returning the bad token, acceptable refusal codes).
# The CLI makes the token where it can express the fault.
BAD_TOKENS = {
    "expired": (lambda t: t.cli(scope=SCOPE, patient=ME, claims=_past()), "token_expired"),
    "not-yet-valid": (lambda t: t.cli(scope=SCOPE, patient=ME,
                                      claims={"nbf": int(time.time()) + 3600}),
                      "token_not_yet_valid"),
    "lifetime-over-policy-max": (lambda t: t.cli(scope=SCOPE, patient=ME, ttl=3 * 86400),
                                 "bad_iat"),
    "wrong-issuer": (lambda t: t.cli(scope=SCOPE, patient=ME, iss="https://evil.example"),
                     "unknown_issuer"),
    "wrong-audience": (lambda t: t.cli(scope=SCOPE, patient=ME, aud="https://other-api.example"),
                       "bad_audience"),
    "unknown-kid": (lambda t: t.cli(scope=SCOPE, patient=ME, kid="no-such-key"), "unknown_key"),
    "attacker-key-known-kid": (lambda t: t.cli(scope=SCOPE, patient=ME,
                                               key="tests/keys/attacker-rs256.key.pem",
                                               kid="demo-rs256"), "bad_signature"),
    "alg-none": (lambda t: t.py.alg_none(t.py.claims(scope=SCOPE, patient=ME)),
                 {"algorithm_not_allowed", "malformed_token"}),
    "hs256-with-rsa-public-key": (lambda t: t.py.hs256_with_rsa_public_key(
        t.py.claims(scope=SCOPE, patient=ME)), "algorithm_not_allowed"),
    "embedded-jwk": (lambda t: t.py.embedded_jwk(t.py.claims(scope=SCOPE, patient=ME)),
                     {"embedded_key", "bad_signature"}),
    "tampered-payload": (lambda t: t.py.tamper(t.cli(scope="patient/Observation.rs", patient=ME),
                                               scope=SCOPE), "bad_signature"),
    "missing-exp": (lambda t: t.py.token({k: v for k, v in t.py.claims(
        scope=SCOPE, patient=ME).items() if k != "exp"}), "missing_exp"),
    "missing-sub": (lambda t: t.py.token({k: v for k, v in t.py.claims(
        scope=SCOPE, patient=ME).items() if k != "sub"}), "missing_sub"),
    "empty-sub": (lambda t: t.cli(scope=SCOPE, patient=ME, sub=""), "missing_sub"),
    "garbage": (lambda t: "not-a-jwt", "malformed_token"),
    "empty-signature": (lambda t: t.cli(scope=SCOPE, patient=ME).rsplit(".", 1)[0] + ".",
                        {"bad_signature", "malformed_token"}),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_invalid_token_is_401(patient_app, tokens, case):
    make, reason = BAD_TOKENS[case]
    token = make(tokens)
    resp = patient_app.get(READ_ME, token=token)
    assert_denied(patient_app, resp, 401, token=token, www_authenticate=INVALID_TOKEN,
                  reason=reason)


def test_tampered_patient_claim_is_401(patient_app, tokens):
    """Swap the patient in a validly signed token: signature no longer matches."""
    token = tokens.py.tamper(tokens.cli(scope=SCOPE, patient=ME), patient=OTHER)
    resp = patient_app.get(f"/fhir/Patient/{OTHER}", token=token)
    assert_denied(patient_app, resp, 401, token=token, www_authenticate=INVALID_TOKEN,
                  reason="bad_signature")
