"""The HTTPS listener: TLS 1.2 minimum with NIST SP 800-52r2 suites, HSTS on every response, and
the same filter chain as plain HTTP (a protected route still needs a token).

The harness's certificate is signed by the local test CA (tests/support/tls_certs.py); every
client here verifies it against that CA, except the one that checks an unknown CA is refused.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from urllib.parse import urlsplit

import envoy_config
import pytest
import yaml
from helpers import INVALID_TOKEN, ME, Api, Response, assert_denied, assert_forwarded, header_dict

# What Envoy may pick for TLS 1.2 with the test certificate (ECDSA P-256).
STRONG_TLS12 = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305"}
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
# TLS 1.2 suites a client may offer that the listener must refuse: CBC, SHA-1 MACs, static RSA
# key exchange (no forward secrecy).
WEAK_TLS12 = ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA",
              "AES128-GCM-SHA256", "AES256-SHA")
SERVER_NAME = "localhost"  # a SAN of the test certificate


def context(harness, *, version: ssl.TLSVersion | None = None,
            ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(harness.tls_ca))
    if version is not None:
        if version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 only offers TLS < 1.2 at security level 0; this client must really try.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def handshake(harness, ctx: ssl.SSLContext) -> tuple[str, str]:
    """(protocol version, cipher suite) negotiated with the HTTPS listener."""
    split = urlsplit(harness.https_url)
    with socket.create_connection((split.hostname, split.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            return tls.version() or "", tls.cipher()[0]


def https(api: Api, method: str, path: str, *, token: str | None = None,
          ctx: ssl.SSLContext | None = None) -> Response:
    """One HTTPS/1.1 request to the harness's TLS listener (upstream log cleared first)."""
    harness = api.harness
    harness.clear_upstream_requests()
    split = urlsplit(harness.https_url)
    sent = {"Host": "fhir.phi-guard.test", "Accept": "application/fhir+json"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPSConnection(split.hostname, split.port, timeout=15,
                                       context=ctx or context(harness))
    try:
        conn.request(method, path, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, header_dict(resp.getheaders()), data, path,
                        sent)
    finally:
        conn.close()


def assert_hsts(resp: Response) -> None:
    value = resp.header("strict-transport-security") or ""
    directives = {d.strip().split("=")[0].lower(): d.strip() for d in value.split(";") if d.strip()}
    assert "max-age" in directives, f"no HSTS max-age: {resp.describe()}"
    assert int(directives["max-age"].split("=", 1)[1]) >= 31536000, value
    assert "includesubdomains" in directives, value


# ------------------------------------------------------------------------------ handshakes
def test_tls12_negotiates_an_ecdhe_aead_suite(patient_app):
    version, cipher = handshake(patient_app.harness,
                                context(patient_app.harness, version=ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2"
    assert cipher in STRONG_TLS12, cipher


def test_tls13_works(patient_app):
    version, cipher = handshake(patient_app.harness,
                                context(patient_app.harness, version=ssl.TLSVersion.TLSv1_3))
    assert version == "TLSv1.3"
    assert cipher in TLS13_SUITES, cipher


def test_default_client_gets_tls13(patient_app):
    version, _ = handshake(patient_app.harness, context(patient_app.harness))
    assert version == "TLSv1.3"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1],
                         ids=lambda v: v.name)
def test_tls_below_12_is_refused(patient_app, version):
    with pytest.raises(ssl.SSLError) as err:
        handshake(patient_app.harness, context(patient_app.harness, version=version))
    reason = err.value.reason or str(err.value)
    if reason in ("NO_PROTOCOLS_AVAILABLE", "UNSUPPORTED_PROTOCOL"):
        pytest.skip(f"this client's OpenSSL cannot offer {version.name} at all ({reason})")
    # The listener itself said no: a protocol_version alert, not a local client failure.
    assert reason == "TLSV1_ALERT_PROTOCOL_VERSION", str(err.value)


@pytest.mark.parametrize("cipher", WEAK_TLS12)
def test_weak_tls12_suites_are_refused(patient_app, cipher):
    ctx = context(patient_app.harness, version=ssl.TLSVersion.TLSv1_2, ciphers=cipher)
    with pytest.raises(ssl.SSLError) as err:
        handshake(patient_app.harness, ctx)
    assert err.value.reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER"), str(err.value)


def test_certificate_is_checked_against_the_test_ca(patient_app):
    stranger = ssl.create_default_context(cafile=None)
    stranger.load_default_certs()
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(patient_app.harness, stranger)


# ------------------------------------------------------------------------------ HTTP over TLS
def test_public_route_over_tls_has_hsts(patient_app):
    resp = https(patient_app, "GET", "/healthz")
    assert resp.status == 200, resp.describe()
    assert_hsts(resp)
    seen = assert_forwarded(patient_app, resp, "/healthz")
    assert seen["headers"].get("x-forwarded-proto") == "https", seen["headers"]


def test_protected_route_over_tls_still_needs_a_token(patient_app):
    resp = https(patient_app, "GET", f"/fhir/Patient/{ME}")
    assert_denied(patient_app, resp, 401, www_authenticate=re.compile(r"^Bearer\b"),
                  reason="missing_token")
    assert_hsts(resp)  # the filter's own refusals carry HSTS too


def test_bad_token_over_tls_is_refused(patient_app):
    resp = https(patient_app, "GET", f"/fhir/Patient/{ME}", token="not.a.jwt")
    assert_denied(patient_app, resp, 401, token="not.a.jwt", www_authenticate=INVALID_TOKEN)
    assert_hsts(resp)


def test_valid_token_over_tls_is_allowed(patient_app, tokens):
    token = tokens.cli(scope="patient/*.rs", patient=ME)
    resp = https(patient_app, "GET", f"/fhir/Patient/{ME}", token=token)
    assert resp.status == 200, resp.describe()
    assert resp.json()["id"] == ME
    assert_hsts(resp)
    assert_forwarded(patient_app, resp, f"/fhir/Patient/{ME}")


def test_plain_http_listener_has_no_hsts(patient_app):
    # RFC 6797: HSTS is only meaningful (and only honoured) over a secure transport.
    resp = patient_app.get("/healthz")
    assert resp.status == 200
    assert resp.header("strict-transport-security") is None


# ------------------------------------------------------------------------------ shipped configs
def _tls_params(doc: dict) -> dict:
    https_listener = next(ln for ln in doc["static_resources"]["listeners"]
                          if ln["name"] == "ingress_https")
    ctx = https_listener["filter_chains"][0]["transport_socket"]["typed_config"]
    return ctx["common_tls_context"]["tls_params"]


@pytest.mark.parametrize("variant", ["compose", "local"])
def test_rendered_configs_pin_tls_policy(variant):
    if variant == "compose":
        doc = yaml.safe_load(envoy_config.render_compose())
    else:
        doc = yaml.safe_load(envoy_config.render(https_port=10443, tls_cert="c.pem",
                                                 tls_key="k.pem"))
    params = _tls_params(doc)
    assert params["tls_minimum_protocol_version"] == "TLSv1_2"
    assert params["tls_maximum_protocol_version"] == "TLSv1_3"
    suites = params["cipher_suites"]
    assert suites and all(s.startswith("ECDHE-") for s in suites), suites
    assert all(("GCM" in s or "CHACHA20-POLY1305" in s) for s in suites), suites
    listeners = {ln["name"]: ln for ln in doc["static_resources"]["listeners"]}
    plain, secure = listeners["ingress"], listeners["ingress_https"]
    # Same filter chain on both listeners.
    hcm = [ln["filter_chains"][0]["filters"][0]["typed_config"] for ln in (plain, secure)]
    assert hcm[0]["http_filters"] == hcm[1]["http_filters"]
    if variant == "local":
        # Plain HTTP binds loopback only (the compose file publishes it on loopback only).
        assert plain["address"]["socket_address"]["address"] == "127.0.0.1"
