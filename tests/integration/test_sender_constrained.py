"""Sender-constrained tokens through a real Envoy (policy: smart-patient-app).

DPoP (RFC 9449): a token bound to a client key (`cnf.jkt`) is accepted only with a fresh proof
signed by that key for this very request, once. Certificate-bound tokens (RFC 8705): a token
bound to a client certificate (`cnf.x5t#S256`) is accepted only on a connection where Envoy
verified that certificate (the HTTPS listener asks for one, signed by the test CA).

Every refused request is the accepted baseline with one thing changed.
"""

from __future__ import annotations

import http.client
import re
import ssl
import time
from urllib.parse import urlsplit

import pytest
import tls_certs
from helpers import ME, OTHER, Response, assert_allowed, assert_denied, header_dict
from tokens import certificate_thumbprint, dpop_jkt, dpop_proof

READ_ME = f"/fhir/Patient/{ME}"
# The plain listener: Envoy sees `:scheme` http and the Host the client sent.
URL = f"http://fhir.phi-guard.test{READ_ME}"
SCOPE = "patient/*.rs"
DPOP_ERROR = re.compile(r'DPoP realm="phi-guard", algs="[^"]*ES256[^"]*", error="invalid_dpop_proof"')


def bound_token(tokens, alg: str = "ES256") -> str:
    return tokens.py.token(tokens.py.claims(scope=SCOPE, patient=ME, cnf={"jkt": dpop_jkt(alg)}))


def dpop_get(api, path: str, token: str, proof: str | None) -> Response:
    headers = {"DPoP": proof} if proof is not None else {}
    return api.get(path, token=token, scheme="DPoP", headers=headers)


def challenges(resp: Response) -> str:
    return resp.header("www-authenticate") or ""


def test_a_bound_token_with_a_fresh_proof_is_accepted_once(patient_app, tokens):
    token = bound_token(tokens)
    proof = dpop_proof("GET", URL, token)
    assert_allowed(patient_app, dpop_get(patient_app, READ_ME, token, proof))
    # The same proof again (every worker shares the record): a replay.
    again = dpop_get(patient_app, READ_ME, token, proof)
    assert_denied(patient_app, again, 401, reason="dpop_proof_replayed")
    assert DPOP_ERROR.search(challenges(again)), challenges(again)
    # A new proof with the same token is fine; so is another key type.
    assert_allowed(patient_app, dpop_get(patient_app, READ_ME, token, dpop_proof("GET", URL, token)))
    ed = bound_token(tokens, "EdDSA")
    assert_allowed(patient_app, dpop_get(patient_app, READ_ME, ed, dpop_proof("GET", URL, ed, alg="EdDSA")))


@pytest.mark.parametrize("case", [
    "proof for POST", "proof for another URL", "proof for another host", "stale iat",
    "iat in the future", "no ath", "ath of another token", "signed by another key",
    "private key in jwk", "typ JWT", "alg none", "no jti",
])
def test_attacks_on_the_proof_are_refused(patient_app, tokens, case):
    token = bound_token(tokens)
    now = int(time.time())
    proof = {
        "proof for POST": lambda: dpop_proof("POST", URL, token),
        "proof for another URL": lambda: dpop_proof("GET", f"http://fhir.phi-guard.test/fhir/Patient/{OTHER}", token),
        "proof for another host": lambda: dpop_proof("GET", f"http://evil.example{READ_ME}", token),
        "stale iat": lambda: dpop_proof("GET", URL, token, iat=now - 300),
        "iat in the future": lambda: dpop_proof("GET", URL, token, iat=now + 300),
        "no ath": lambda: dpop_proof("GET", URL, None),
        "ath of another token": lambda: dpop_proof("GET", URL, bound_token(tokens)),
        "signed by another key": lambda: dpop_proof("GET", URL, token, sign_with="demo-es256.key.pem"),
        "private key in jwk": lambda: dpop_proof("GET", URL, token, header={"jwk": private_jwk()}),
        "typ JWT": lambda: dpop_proof("GET", URL, token, header={"typ": "JWT"}),
        "alg none": lambda: dpop_proof("GET", URL, token, header={"alg": "none"}),
        "no jti": lambda: dpop_proof("GET", URL, token, claims={"jti": None}),
    }[case]()
    resp = dpop_get(patient_app, READ_ME, token, proof)
    assert_denied(patient_app, resp, 401, reason="invalid_dpop_proof")
    assert DPOP_ERROR.search(challenges(resp)), challenges(resp)


def private_jwk() -> dict:
    from cryptography.hazmat.primitives.asymmetric import ec
    from tokens import DPOP_KEYS, b64url, load_private_key, public_jwk

    key = load_private_key(DPOP_KEYS["ES256"])
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    jwk = public_jwk(DPOP_KEYS["ES256"])
    jwk["d"] = b64url(key.private_numbers().private_value.to_bytes(32, "big"))
    return jwk


def test_a_token_bound_to_another_key_or_sent_without_proof_is_refused(patient_app, tokens):
    token = bound_token(tokens, "EdDSA")
    # A proof by a key the token is not bound to.
    resp = dpop_get(patient_app, READ_ME, token, dpop_proof("GET", URL, token))
    assert_denied(patient_app, resp, 401, reason="dpop_key_mismatch")
    # No proof at all.
    assert_denied(patient_app, dpop_get(patient_app, READ_ME, token, None), 401, reason="invalid_dpop_proof")
    # Two proofs.
    two = patient_app.get(READ_ME, token=token, scheme="DPoP",
                          headers={"DPoP": dpop_proof("GET", URL, token, alg="EdDSA") + ","
                                   + dpop_proof("GET", URL, token, alg="EdDSA")})
    assert_denied(patient_app, two, 401, reason="invalid_dpop_proof")
    # The bound token stolen and sent as a plain bearer token.
    bearer = patient_app.get(READ_ME, token=token)
    assert_denied(patient_app, bearer, 401, reason="dpop_required")
    assert 'DPoP realm="phi-guard"' in challenges(bearer) and 'error="invalid_token"' in challenges(bearer)
    # An unbound token under the DPoP scheme, with a good proof.
    plain = tokens.py.token(tokens.py.claims(scope=SCOPE, patient=ME))
    resp = dpop_get(patient_app, READ_ME, plain, dpop_proof("GET", URL, plain))
    assert_denied(patient_app, resp, 401, reason="dpop_key_mismatch")


def test_a_401_offers_both_schemes(patient_app):
    resp = patient_app.get(READ_ME)
    assert resp.status == 401
    assert challenges(resp).startswith('Bearer realm="phi-guard"'), challenges(resp)
    assert 'DPoP realm="phi-guard", algs="' in challenges(resp)


# ---- certificate-bound tokens (mutual TLS)

def https_get(api, path: str, token: str, client: str | None) -> Response:
    harness = api.harness
    if not harness.https_url or harness.tls_ca is None:
        pytest.skip("this harness has no HTTPS listener")
    harness.clear_upstream_requests()
    ctx = ssl.create_default_context(cafile=str(harness.tls_ca))
    if client is not None:
        cert, key = tls_certs.client_files(client, harness.tls_ca.parent)
        ctx.load_cert_chain(str(cert), str(key))
    split = urlsplit(harness.https_url)
    conn = http.client.HTTPSConnection(split.hostname, split.port, context=ctx, timeout=15)
    try:
        sent = {"Host": "fhir.phi-guard.test", "Accept": "application/fhir+json",
                "Authorization": f"Bearer {token}"}
        conn.request("GET", path, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, header_dict(resp.getheaders()), data, path, sent)
    finally:
        conn.close()


def test_a_certificate_bound_token_needs_its_certificate_on_the_connection(patient_app, tokens):
    harness = patient_app.harness
    if harness.tls_ca is None:
        pytest.skip("this harness has no HTTPS listener")
    cert, _ = tls_certs.client_files("client", harness.tls_ca.parent)
    token = tokens.py.token(tokens.py.claims(scope=SCOPE, patient=ME,
                                             cnf={"x5t#S256": certificate_thumbprint(cert)}))
    assert_allowed(patient_app, https_get(patient_app, READ_ME, token, "client"))
    # Without a client certificate, with another one, or over plain HTTP: refused.
    assert_denied(patient_app, https_get(patient_app, READ_ME, token, None), 401, reason="certificate_mismatch")
    assert_denied(patient_app, https_get(patient_app, READ_ME, token, "client2"), 401, reason="certificate_mismatch")
    assert_denied(patient_app, patient_app.get(READ_ME, token=token), 401, reason="certificate_mismatch")
    # An unbound token is unaffected by the client certificate.
    plain = tokens.py.token(tokens.py.claims(scope=SCOPE, patient=ME))
    assert_allowed(patient_app, https_get(patient_app, READ_ME, plain, "client2"))
