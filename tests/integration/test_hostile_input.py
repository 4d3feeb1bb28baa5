"""Hostile input through the real Envoy: one bad header byte, a huge or odd upstream answer, a
client that goes away, must never take the filter's VM (or Envoy) down, and never release what
the checks would withhold. The health guard (conftest.py) checks after every test that each
harness is still ready, that no wasm VM restarted and that Envoy logged no panic or crash.

Requests go over raw sockets: `requests` and http.client refuse to send most of these bytes.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import envoy_config
import pytest
from fhir_audit import ext
from harness import http_call, make_harness
from helpers import ME, Api
from tokens import cli_token

REPO = Path(__file__).resolve().parents[2]


HARNESS_KIND = os.environ.get("HARNESS", "local")
AUDIT_PREFIX = "phi-guard-audit: "


@dataclass
class Raw:
    status: int
    headers: list[tuple[str, bytes]]
    body: bytes
    trailers: list[tuple[str, bytes]] = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def names(self) -> set[str]:
        return {k for k, _ in self.headers}

    def trailer(self, name: str) -> bytes | None:
        return next((v for k, v in self.trailers if k == name.lower()), None)

    def reasons(self) -> set[str]:
        try:
            body = json.loads(self.body)
        except ValueError:
            return set()
        codes = {c.get("code") for i in body.get("issue", []) for c in (i.get("details") or {}).get("coding", [])}
        if isinstance(body.get("error"), str):
            codes.add(body["error"])
        return codes


def _fields(block: bytes) -> list[tuple[str, bytes]]:
    out = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name.decode("latin-1").strip().lower(), value.strip()))
    return out


def exchange(base_url: str, request: bytes, timeout: float = 20) -> Raw:
    """Send raw bytes (with `Connection: close`), read one HTTP/1.1 response: chunked bodies are
    de-chunked and their trailers kept."""
    split = urlsplit(base_url)
    with socket.create_connection((split.hostname, split.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, _, header_block = head.partition(b"\r\n")
    status = int(status_line.split()[1])
    headers = _fields(header_block)
    raw = Raw(status, headers, rest)
    if (raw.header("transfer-encoding") or b"").lower() == b"chunked":
        body, pos = b"", 0
        while True:
            end = rest.index(b"\r\n", pos)
            size = int(rest[pos:end].split(b";")[0], 16)
            pos = end + 2
            if size == 0:
                raw.trailers = _fields(rest[pos:].split(b"\r\n\r\n")[0])
                break
            body += rest[pos:pos + size]
            pos += size + 2
        raw.body = body
    return raw


def get(base_url: str, path: bytes, headers: list[tuple[bytes, bytes]] = (), method: bytes = b"GET") -> Raw:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: fhir.phi-guard.test"]
    lines += [k + b": " + v for k, v in headers]
    lines.append(b"Connection: close")
    return exchange(base_url, b"\r\n".join(lines) + b"\r\n\r\n")


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + token.encode())


def patient_token() -> str:
    return cli_token(scope="patient/Patient.rs patient/Observation.rs", patient=ME)


def audit_reasons(harness, request_id: str, timeout: float = 10) -> list[str]:
    """Reason codes of the audit events in Envoy's log that carry `request_id`."""
    deadline = time.monotonic() + timeout
    while True:
        found = [ln.split(AUDIT_PREFIX, 1)[1] for ln in harness.envoy_log_text().splitlines()
                 if AUDIT_PREFIX in ln and request_id in ln]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    out = []
    for line in found:
        ev = json.loads(line)
        out += [e["valueCode"] for e in ev.get("extension", []) if e.get("url") == ext("reason")]
    return out


@pytest.fixture(scope="module")
def patient_app(harnesses) -> Api:
    return Api(harnesses.get("patient-app"))


@pytest.fixture
def upstream(patient_app):
    """The patient-app harness, with the demo upstream's canned answer reset afterwards."""
    h = patient_app.harness
    try:
        yield h
    finally:
        h.upstream_reset()


# ------------------------------------------------------------------ request headers
def test_latin1_header_on_a_public_route_passes(patient_app):
    r = get(patient_app.harness.base_url, b"/healthz", [(b"X-Test", b"caf\xe9")])
    assert r.status == 200, r


def test_latin1_header_beside_a_valid_token_changes_nothing(patient_app):
    r = get(patient_app.harness.base_url, f"/fhir/Patient/{ME}".encode(),
            [bearer(patient_token()), (b"X-Test", b"caf\xe9")])
    assert r.status == 200 and json.loads(r.body)["id"] == ME, r


def test_undecodable_authorization_is_refused_and_audited(patient_app):
    rid = str(uuid.uuid4())  # a plain id: the audit event carries it as is
    patient_app.harness.clear_upstream_requests()
    r = get(patient_app.harness.base_url, f"/fhir/Patient/{ME}".encode(),
            [(b"Authorization", b"Bearer \xff\xfe"), (b"X-Request-Id", rid.encode())])
    assert (r.status, r.reasons()) == (400, {"invalid_header"}), r
    assert patient_app.upstream_requests() == []
    assert audit_reasons(patient_app.harness, rid) == ["invalid_header"]


def test_undecodable_request_id_is_refused(patient_app):
    r = get(patient_app.harness.base_url, b"/healthz", [(b"X-Request-Id", b"id-\xe9\xff")])
    # Envoy may replace a client's request id; if it passes the client's on, the filter refuses.
    assert r.status in (200, 400), r
    if r.status == 400:
        assert r.reasons() == {"invalid_header"}, r


@pytest.mark.parametrize("path", [b"/fhir/Patient/caf\xe9", b"/healthz?q=\xff\xfe", b"/\xc3\x28"])
def test_undecodable_path_never_crashes(patient_app, path):
    patient_app.harness.clear_upstream_requests()
    r = get(patient_app.harness.base_url, path, [bearer(patient_token())])
    # Envoy's codec may refuse the bytes itself (400); if they reach the filter, it refuses.
    assert r.status == 400, r
    assert patient_app.upstream_requests() == []


def test_two_authorization_headers_are_ambiguous(patient_app):
    token = patient_token()
    r = get(patient_app.harness.base_url, f"/fhir/Patient/{ME}".encode(), [bearer(token), bearer(token)])
    assert (r.status, r.reasons()) == (400, {"ambiguous_credentials"}), r
    # RFC 6750 §3.1: more than one method of sending a token is an invalid_request.
    assert re.search(rb'^Bearer realm="phi-guard", error="invalid_request"', r.header("www-authenticate") or b""), r


def test_oversized_and_numerous_headers(patient_app):
    base = patient_app.harness.base_url
    r = get(base, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token()), (b"X-Big", b"\xe9" * 70_000)])
    assert r.status == 431, r  # Envoy's own 60 KiB header limit
    many = [(f"X-H{i}".encode(), b"v\xe9") for i in range(150)]
    r = get(base, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token()), *many])
    assert r.status == 431, r  # Envoy's max_headers_count or the filter's maxHeaderCount


# ------------------------------------------------------------------ upstream answers
OTHER_HEADERS = [("Location", "/fhir/Patient/OTHER"), ("ETag", 'W/"7"'), ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                 ("Content-Location", "/fhir/Patient/OTHER/_history/7"), ("X-Patient-Name", "Jane Doe"),
                 ("X-Latin1", b"caf\xe9")]
LEAKY = {"location", "etag", "last-modified", "content-location", "x-patient-name", "x-latin1"}


def test_latin1_upstream_content_type_is_not_json(upstream):
    upstream.upstream_respond(200, json.dumps({"resourceType": "Patient", "id": ME}).encode(),
                              content_type=b"application/fhir+json; charset=\xe9", headers=OTHER_HEADERS)
    r = get(upstream.base_url, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token())])
    assert r.reasons() == {"response_not_json"}, r
    assert ME.encode() not in r.body


@pytest.mark.parametrize("second", [b'"subject"', b'"\\u0073ubject"'])
def test_a_member_named_twice_is_never_released(upstream, second):
    """A JSON object that names a member twice can be read two ways: the filter must not check
    one value while the client's parser takes the other. Such a body is not JSON to the filter:
    withheld whole, the other patient's reference included (also when the second name is
    written with an escape)."""
    body = (b'{"resourceType":"Observation","id":"o1","status":"final",'
            b'"subject":{"reference":"Patient/someone-else"},' + second + b':{"reference":"Patient/' + ME.encode() + b'"}}')
    upstream.upstream_respond(200, body, headers=OTHER_HEADERS)
    r = get(upstream.base_url, b"/fhir/Observation/o1", [bearer(patient_token())])
    assert r.reasons() == {"response_not_json"}, r
    assert b"someone-else" not in r.body


def test_withheld_and_released_bodies_carry_no_upstream_headers(upstream):
    """Envoy cannot hold the headers while the body is checked: on checked routes only the
    allowlisted headers reach the client, whether the body is then released or withheld."""
    body = json.dumps({"resourceType": "Patient", "id": ME}).encode()
    upstream.upstream_respond(200, body, headers=OTHER_HEADERS)
    released = get(upstream.base_url, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token())])
    assert released.status == 200 and json.loads(released.body)["id"] == ME, released
    other = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/OTHER"}}
    upstream.upstream_respond(200, json.dumps(other).encode(), headers=OTHER_HEADERS)
    withheld = get(upstream.base_url, b"/fhir/Observation/o1", [bearer(patient_token())])
    assert withheld.reasons() == {"patient_mismatch"}, withheld
    for r in (released, withheld):
        assert not (r.names() & LEAKY), r.headers
        assert b"OTHER" not in b"".join(v for _, v in r.headers)


def test_public_routes_keep_upstream_headers(upstream):
    upstream.upstream_respond(200, b'{"status":"ok"}', content_type="application/json", headers=OTHER_HEADERS)
    r = get(upstream.base_url, b"/healthz")
    assert r.status == 200 and r.header("x-latin1") == b"caf\xe9" and r.header("etag") == b'W/"7"', r


def test_empty_success_on_a_checked_route_is_refused(upstream):
    upstream.upstream_respond(200, b"")
    r = get(upstream.base_url, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token())])
    assert (r.status, r.reasons()) == (502, {"response_not_json"}), r


def test_head_on_a_checked_route_releases_nothing(patient_app):
    r = get(patient_app.harness.base_url, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token())], method=b"HEAD")
    # Refused before the upstream is asked (405 head_not_checkable; a HEAD answer has no body).
    assert r.status == 405 and r.body == b"", r
    assert not (r.names() & {"etag", "last-modified", "location"}), r.headers


def _digest(body: bytes) -> bytes:
    return b"sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()) + b":"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_content_digest_trailer_on_every_released_body(upstream, chunked):
    """The filter removes content-length on checked routes, so HTTP/1.1 clients always get a
    chunked body, and the digest trailer with it, whatever framing the upstream used."""
    body = json.dumps({"resourceType": "Patient", "id": ME}).encode()
    upstream.upstream_respond(200, body, chunked=chunked)
    r = get(upstream.base_url, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token())])
    assert r.status == 200 and r.header("transfer-encoding") == b"chunked", r
    assert r.trailer("content-digest") == _digest(r.body), r


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (with HTTP/2) as the h2 client")
def test_content_digest_trailer_over_http2(upstream, tmp_path):
    """HTTP/2 clients (the HTTPS listener offers h2) get the digest as a trailer too; curl
    writes trailers to the header dump after the headers."""
    upstream.upstream_respond(200, json.dumps({"resourceType": "Patient", "id": ME}).encode())
    head, body = tmp_path / "head", tmp_path / "body"
    subprocess.run(["curl", "-sSk", "--http2", "-D", str(head), "-o", str(body),
                    "-H", f"Authorization: Bearer {patient_token()}", f"{upstream.https_url}/fhir/Patient/{ME}"],
                   check=True, timeout=30)
    dump = head.read_bytes()
    assert dump.startswith(b"HTTP/2 200"), dump
    released = body.read_bytes()
    assert json.loads(released)["id"] == ME
    trailer = re.search(rb"content-digest: (\S+)", dump.partition(b"\r\n\r\n")[2])
    assert trailer and trailer.group(1) == _digest(released), dump


def test_upstream_trailers_with_latin1_bytes(upstream):
    body = json.dumps({"resourceType": "Patient", "id": ME}).encode()
    trailers = [("X-Upstream-Trailer", b"caf\xe9"), ("X-Patient-Name", "Jane Doe")]
    upstream.upstream_respond(200, body, chunked=True, trailers=trailers)
    r = get(upstream.base_url, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token())])
    assert r.status == 200 and json.loads(r.body)["id"] == ME, r
    assert r.trailer("content-digest") == _digest(r.body), r
    # The upstream's trailers are withheld like its unlisted headers, released body or not.
    assert [k for k, _ in r.trailers] == ["content-digest"], r.trailers
    upstream.upstream_respond(200, b"not json", chunked=True, trailers=trailers)
    r = get(upstream.base_url, f"/fhir/Patient/{ME}".encode(), [bearer(patient_token())])
    assert r.reasons() == {"response_not_json"} and r.trailers == [], r


def test_client_gone_mid_response(patient_app):
    """Clients that close right after sending, or after the first bytes of a checked response."""
    h = patient_app.harness
    split = urlsplit(h.base_url)
    request = (f"GET /fhir/Observation?patient={ME} HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {patient_token()}\r\n\r\n").encode()
    for read in (0, 1, 4096):
        for _ in range(3):
            s = socket.create_connection((split.hostname, split.port), timeout=10)
            s.sendall(request)
            if read:
                s.recv(read)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
    time.sleep(0.5)
    r = get(h.base_url, b"/healthz")
    assert r.status == 200, r


# ------------------------------------------------------------------ body size vs Envoy's buffer
def _grow_policy() -> dict:
    """The patient-app policy with Observation identifiers hashed: each 1-byte value becomes a
    64-character MAC, so the minimized body is several times the upstream's."""
    doc = json.loads((REPO / "policies" / "smart-patient-app.json").read_text())
    doc = copy.deepcopy(doc)
    doc["name"] = "patient-app-growing"
    route = next(r for r in doc["routes"] if r["id"] == "fhir")
    route["minimize"]["profiles"][0]["resources"]["Observation"] = {
        "transform": [{"path": "identifier[*].value", "transform": "hash"}]}
    return doc


def _bundle(identifiers: int) -> bytes:
    obs = {"resourceType": "Observation", "id": "big", "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"Patient/{ME}"},
           "identifier": [{"value": str(i % 10)} for i in range(identifiers)]}
    return json.dumps({"resourceType": "Bundle", "type": "searchset",
                       "entry": [{"fullUrl": "urn:uuid:big", "resource": obs}]}, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def growing():
    workdir = REPO / ".run" / "tests" / "hostile-grow"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policy.json").write_text(json.dumps(_grow_policy()))
    h = make_harness(HARNESS_KIND, "hostile-grow", workdir=workdir, policy=workdir / "policy.json")
    try:
        yield h
    finally:
        h.upstream_reset()
        h.stop()


def _search(h) -> Raw:
    return get(h.base_url, f"/fhir/Observation?patient={ME}".encode(), [bearer(patient_token())])


def test_minimized_output_over_envoy_buffer_is_refused_not_crashed(growing):
    """~420 KB upstream body whose minimized form is over 2 MB: writing it back would exceed
    Envoy's 1 MiB buffer (Envoy resets the stream from inside set_buffer and crashed)."""
    body = _bundle(30_000)
    assert 400_000 < len(body) < envoy_config.BUFFER_LIMIT_BYTES
    growing.upstream_respond(200, body)
    r = _search(growing)
    assert r.reasons() == {"response_too_large"}, r
    assert b"identifier" not in r.body
    # The same worker keeps serving.
    for _ in range(4):
        assert get(growing.base_url, b"/healthz").status == 200


def test_minimized_output_just_under_the_limit_is_released(growing):
    body = _bundle(11_000)
    growing.upstream_respond(200, body)
    r = _search(growing)
    assert r.status == 200, r
    out = json.loads(r.body)
    assert len(r.body) > len(body) * 3 and len(r.body) <= envoy_config.BUFFER_LIMIT_BYTES
    assert all(len(i["value"]) > 16 for i in out["entry"][0]["resource"]["identifier"])
    assert r.trailer("content-digest") == _digest(r.body)


def test_upstream_body_over_the_limit_is_refused(growing):
    body = _bundle(90_000)  # ~1.2 MB: over Envoy's buffer and the policy's cap
    assert len(body) > envoy_config.BUFFER_LIMIT_BYTES
    growing.upstream_respond(200, body, chunked=True)
    r = _search(growing)
    assert r.reasons() == {"response_too_large"}, r
    assert b"identifier" not in r.body


def test_shipped_buffer_limit_matches_the_policies():
    """Envoy's stream buffer limit in the shipped configuration is what every shipped policy
    assumes (`limits.envoyBufferLimitBytes`, default 1 MiB), and one upstream read stays within
    the 64 KiB headroom the policy keeps above `maxResponseBytes`."""
    for compose in (False, True):
        text = envoy_config.render_compose() if compose else envoy_config.render(https_port=1, tls_cert="c", tls_key="k")
        listeners = re.findall(r"\n    per_connection_buffer_limit_bytes: (\d+)\n    load_assignment", text)
        assert listeners and {int(v) for v in listeners} == {envoy_config.UPSTREAM_READ_LIMIT_BYTES}
        streams = re.findall(r"port_value: \d+\}\n    per_connection_buffer_limit_bytes: (\d+)", text)
        assert streams and {int(v) for v in streams} == {envoy_config.BUFFER_LIMIT_BYTES}
    assert envoy_config.UPSTREAM_READ_LIMIT_BYTES + 16 * 1024 < 64 * 1024
    for path in (REPO / "policies").glob("*.json"):
        if path.name.endswith(".schema.json"):  # their JSON Schema, beside them
            continue
        limits = json.loads(path.read_text()).get("limits", {})
        assert limits.get("envoyBufferLimitBytes", 1024 * 1024) == envoy_config.BUFFER_LIMIT_BYTES, path


# ------------------------------------------------------------------ the demo upstream's hook
@pytest.mark.parametrize("bad", [{"contentType": "application/json\r\nSet-Cookie: x=1"},
                                 {"contentType": "text/plain\nX: y"},
                                 {"headers": [["X-A", "v\r\nX-B: w"]]},
                                 {"headers": [["X A", "v"]]}])
def test_respond_hook_refuses_header_injection(patient_app, bad):
    status, _ = http_call("POST", f"{patient_app.harness.upstream_url}/__respond",
                          data=json.dumps({"status": 200, "body": "{}", **bad}).encode())
    assert status == 400
