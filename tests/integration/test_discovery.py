"""An issuer's keys found by OpenID discovery, through a real Envoy (and compose).

Policy: smart-patient-app whose issuer has `discovery` on cluster `idp` instead of keys
(tests/integration/conftest.py); the demo upstream plays the identity provider and serves its
`/.well-known/openid-configuration` and `/jwks.json`. The first request waits for the document
and the keys; later ones do not. A document naming another issuer or host is refused by the
filter (cargo tests: `auth::discovery`, `runtime::jwks`; test_reload.py changes it live).
"""

from __future__ import annotations

from helpers import ME, OTHER, assert_allowed, assert_denied

READ_ME = f"/fhir/Patient/{ME}"


def test_a_token_verifies_with_keys_found_by_discovery(discovery, tokens):
    token = tokens.cli(scope="patient/*.rs", patient=ME)
    first = discovery.get(READ_ME, token=token)
    assert first.status == 200, first.describe()
    # Unless a worker has fetched them already: the document, then the keys it names.
    paths = [r["path"] for r in discovery.upstream_requests()]
    assert paths[-1] == READ_ME and paths[:-1] in ([], ["/.well-known/openid-configuration", "/jwks.json"]), paths
    for alg, key, kid in [("RS256", None, None), ("ES256", "tests/keys/demo-es256.key.pem", "demo-es256")]:
        token = tokens.cli(scope="patient/*.rs", patient=ME, **({"alg": alg, "key": key, "kid": kid} if key else {}))
        assert_allowed(discovery, discovery.get(READ_ME, token=token))
    # The keys are the issuer's own: a token for another patient is still confined, and a forged
    # one is still refused.
    token = tokens.cli(scope="patient/*.rs", patient=ME)
    assert_denied(discovery, discovery.get(f"/fhir/Patient/{OTHER}", token=token), 403, reason="patient_mismatch")
    forged = tokens.py.attacker_key_known_kid(tokens.py.claims(patient=ME))
    assert_denied(discovery, discovery.get(READ_ME, token=forged), 401, token=forged, reason="bad_signature")
