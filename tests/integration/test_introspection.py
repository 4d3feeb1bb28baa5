"""Opaque access tokens validated by token introspection (RFC 7662) through a real Envoy.

Policy: policies/introspected-tokens.json — the smart-patient-app routes, with a second issuer
whose opaque tokens are introspected at the harness's introspection server (Authlib's RFC 7662
and RFC 7009 endpoints, tests/support/introspection_server.py) on cluster `introspection`,
answers cached for 2 s. The server can mint tokens with any claims, revoke them, and be made
slow or failing.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from helpers import ME, OTHER, assert_allowed, assert_denied

READ_ME = f"/fhir/Patient/{ME}"
SCOPE = "launch/patient patient/Patient.rs patient/Observation.rs"


@pytest.fixture
def server(introspected):
    harness = introspected.harness
    if not harness.introspection_url:
        pytest.skip("this harness has no introspection server")
    harness.introspection("POST", "/__mode", {})
    harness.introspection("DELETE", "/__count")
    yield harness
    harness.introspection("POST", "/__mode", {})


def issue(server, **extra) -> str:
    claims = {"patient": ME, **extra}
    return server.introspection("POST", "/__issue", {"sub": "demo-user", "scope": SCOPE, "extra": claims})["access_token"]


def calls(server) -> int:
    return server.introspection("GET", "/__count")["introspect"]


def test_an_opaque_token_is_introspected_once_then_cached(introspected, server):
    token = issue(server)
    assert_allowed(introspected, introspected.get(READ_ME, token=token))
    assert calls(server) == 1
    # Cached on every worker (shared data): no second call within the cache period.
    for _ in range(4):
        assert_allowed(introspected, introspected.get(READ_ME, token=token))
    assert calls(server) == 1
    # The answer's patient binds the token like a JWT's claim.
    assert_denied(introspected, introspected.get(f"/fhir/Patient/{OTHER}", token=token), 403, reason="patient_mismatch")


def test_a_revoked_token_is_refused_after_the_cache_period(introspected, server):
    token = issue(server)
    assert_allowed(introspected, introspected.get(READ_ME, token=token))
    server.introspection("POST", "/revoke", form={"token": token}, auth=("demo-app", "demo-app-secret"))
    time.sleep(2.2)  # cacheSeconds: 2
    resp = introspected.get(READ_ME, token=token)
    assert_denied(introspected, resp, 401, token=token, reason="token_inactive")


def test_unknown_tokens_and_wrong_claims_are_refused(introspected, server):
    assert_denied(introspected, introspected.get(READ_ME, token="not-a-token-anyone-issued"), 401, reason="token_inactive")
    wrong_aud = issue(server, aud="https://other.example")
    assert_denied(introspected, introspected.get(READ_ME, token=wrong_aud), 401, reason="bad_audience")
    expired = server.introspection("POST", "/__issue", {"sub": "u", "scope": SCOPE, "expires_in": -5,
                                                        "extra": {"patient": ME}})["access_token"]
    assert_denied(introspected, introspected.get(READ_ME, token=expired), 401, reason="token_inactive")


def test_endpoint_down_or_failing_is_503_never_allow(introspected, server):
    server.introspection("POST", "/__mode", {"status": 500})
    token = issue(server)
    resp = introspected.get(READ_ME, token=token)
    assert_denied(introspected, resp, 503, reason="introspection_unavailable")
    server.introspection("POST", "/__mode", {"status": 200, "body": "<html>not json</html>"})
    time.sleep(1.1)  # a failure's 503 is reused for 1 s
    assert_denied(introspected, introspected.get(READ_ME, token=token), 503, reason="introspection_unavailable")
    # Back up: the same token works.
    server.introspection("POST", "/__mode", {})
    time.sleep(1.1)
    assert_allowed(introspected, introspected.get(READ_ME, token=token))


def test_a_slow_endpoint_is_a_bounded_wait_and_every_paused_request_is_answered(introspected, server):
    server.introspection("POST", "/__mode", {"delay_ms": 3000})  # timeoutMs: 1000
    token = issue(server)
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: introspected.get(READ_ME, token=token, clear=False), range(6)))
    elapsed = time.monotonic() - start
    assert elapsed < 2.9, f"requests waited {elapsed:.1f} s for a 1 s introspection deadline"
    for resp in results:
        assert resp.status == 503, resp.describe()
    # Slow but within the deadline: every paused request is resumed and allowed.
    server.introspection("POST", "/__mode", {"delay_ms": 300})
    fresh = issue(server)
    before = calls(server)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: introspected.get(READ_ME, token=fresh, clear=False), range(6)))
    assert [r.status for r in results] == [200] * 6, [r.describe() for r in results if r.status != 200]
    assert calls(server) - before <= 2, "one call per worker at most for one token (two workers)"


def test_jwts_of_the_keyed_issuer_are_still_verified_locally(introspected, server, tokens):
    token = tokens.cli(scope="patient/*.rs", patient=ME)
    assert_allowed(introspected, introspected.get(READ_ME, token=token))
    assert calls(server) == 0
