"""The attack suite: one named case per forgery, through a real Envoy. Every forged token is
refused with 401 (never 2xx, never 5xx), nothing reaches the upstream, and key locations in a
token header are never fetched."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import INVALID_REQUEST, INVALID_TOKEN, ME, Api, assert_denied
from tokens import PyMinter, b64url, b64url_json, encode

REPO = Path(__file__).resolve().parents[2]


SCOPE = "patient/Patient.rs patient/Observation.rs"
PATH = f"/fhir/Patient/{ME}"
PY = PyMinter()


def claims() -> dict:
    return PY.claims(scope=SCOPE, patient=ME)


def good() -> str:
    return PY.token(claims())


def with_header(token: str, **changes) -> str:
    """Replace header members, keep payload and signature."""
    _h, p, s = token.split(".")
    header = {"alg": "RS256", "typ": "JWT", "kid": "demo-rs256", **changes}
    header = {k: v for k, v in header.items() if v is not None}
    return f"{b64url_json(header)}.{p}.{s}"


@pytest.fixture(scope="module")
def keyserver():
    """A server the attacker points `jku`/`x5u` at: it must never be contacted."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/support/keyserver.py"), "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(proc.stdout.readline().split()[1])
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=5)


@pytest.fixture(scope="module")
def api(harnesses) -> Api:
    return Api(harnesses.get("patient-app"))


def es256_zero_signature() -> str:
    header = {"alg": "ES256", "typ": "JWT", "kid": "demo-es256"}
    return f"{b64url_json(header)}.{b64url_json(claims())}.{b64url(bytes(64))}"


ATTACKS = {
    "alg-none-lowercase": lambda: encode({"alg": "none", "typ": "JWT"}, claims(), "none", None),
    "alg-none-uppercase": lambda: encode({"alg": "NONE", "typ": "JWT"}, claims(), "none", None),
    "alg-none-mixed-case": lambda: encode({"alg": "nOnE", "typ": "JWT"}, claims(), "none", None),
    "null-signature": lambda: good().rsplit(".", 1)[0] + ".",
    "hs256-keyed-with-rsa-public-key": lambda: PY.hs256_with_rsa_public_key(claims()),
    "embedded-jwk": lambda: PY.embedded_jwk(claims()),
    "attacker-key-with-known-kid": lambda: PY.attacker_key_known_kid(claims()),
    "kid-path-traversal": lambda: PY.token(claims(), kid="../../../../etc/passwd"),
    "kid-sql-injection": lambda: PY.token(claims(), kid="' OR '1'='1"),
    "kid-null-byte": lambda: PY.token(claims(), kid="demo-rs256\u0000"),
    "kid-very-long": lambda: PY.token(claims(), kid="k" * 4000),
    "expired": lambda: PY.token(PY.claims(scope=SCOPE, patient=ME, now=1_600_000_000)),
    "not-yet-valid": lambda: PY.token({**claims(), "nbf": claims()["iat"] + 7200}),
    "wrong-issuer": lambda: PY.token({**claims(), "iss": "https://evil.example"}),
    "wrong-audience": lambda: PY.token({**claims(), "aud": "https://other.example"}),
    "missing-exp": lambda: PY.token({k: v for k, v in claims().items() if k != "exp"}),
    "tampered-payload": lambda: PY.tamper(good(), patient="1f456f0a-acb1-4728-82af-01ca57083c7b"),
    "unknown-crit": lambda: PY.token(claims(), header={"crit": ["exp"], "exp": 1}),
    "two-segments": lambda: ".".join(good().split(".")[:2]),
    "four-segments": lambda: good() + ".AAAA",
    "five-segments-jwe-shape": lambda: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",
    "bad-base64-plus-slash": lambda: good().replace("-", "+").replace("_", "/") + "+/",
    "bad-base64-padding": lambda: good() + "==",
    "non-json-header": lambda: f"{b64url(b'not json')}.{good().split('.', 1)[1]}",
    "ecdsa-r-s-zero": es256_zero_signature,
    "oversize-token": lambda: PY.token({**claims(), "pad": "x" * 12000}),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_forged_token_is_401(api, name):
    token = ATTACKS[name]()
    resp = api.get(PATH, token=token)
    assert resp.status == 401, f"{name}: {resp.describe()}"
    assert_denied(api, resp, 401, token=token, www_authenticate=INVALID_TOKEN)


@pytest.mark.parametrize("member", ["jku", "x5u"])
def test_key_location_in_header_is_never_fetched(api, keyserver, member):
    token = PY.token(claims(), key_file="attacker-rs256.key.pem",
                     header={member: f"{keyserver}/jwks.json"})
    resp = api.get(PATH, token=token)
    assert_denied(api, resp, 401, token=token, www_authenticate=INVALID_TOKEN, reason="embedded_key")
    count = json.loads(urllib.request.urlopen(f"{keyserver}/__count", timeout=5).read())  # noqa: S310
    assert not any(count.values()), f"the filter contacted {member}: {count}"


def test_duplicate_authorization_headers(api):
    host, port = api.host, api.port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.putrequest("GET", PATH, skip_host=True)
        conn.putheader("Host", "fhir.phi-guard.test")
        conn.putheader("Authorization", f"Bearer {good()}")
        conn.putheader("Authorization", f"Bearer {PY.attacker_key_known_kid(claims())}")
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    # Refused (never 2xx/5xx): which header would an upstream believe?
    assert resp.status in (400, 401), (resp.status, body[:200])


def test_token_only_in_query_string(api):
    resp = api.get(f"{PATH}?access_token={good()}")
    assert_denied(api, resp, 400, www_authenticate=INVALID_REQUEST, reason="token_in_query")
