"""HTTP client and assertions shared by the integration tests."""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Synthea patients of envoy/demo-data (see envoy/demo-data/README.md).
ME = "d78af07c-9cb9-4f31-9b11-c45a28f2eec8"  # Clemente Kreiger: the token's patient
OTHER = "1f456f0a-acb1-4728-82af-01ca57083c7b"  # Kermit Trantow: somebody else

INVALID_TOKEN = re.compile(r'^Bearer\b.*\berror="invalid_token"', re.IGNORECASE)
INVALID_REQUEST = re.compile(r'^Bearer\b.*\berror="invalid_request"', re.IGNORECASE)
INSUFFICIENT_SCOPE = re.compile(r'^Bearer\b.*\berror="insufficient_scope"', re.IGNORECASE)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    request_path: str
    sent_headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def describe(self) -> str:
        return (f"{self.status} for {self.request_path}; headers={self.headers}; "
                f"body={self.text[:400]!r}")


def header_dict(pairs) -> dict[str, str]:
    """Response headers by lowercase name; a repeated header's values joined with ", " (as
    RFC 9110 combines them: e.g. a `Bearer` and a `DPoP` challenge)."""
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


class Api:
    """Raw HTTP/1.1 against one harness: paths are sent byte-for-byte (no client normalization)."""

    def __init__(self, harness) -> None:
        self.harness = harness
        split = urlsplit(harness.base_url)
        self.host, self.port = split.hostname, split.port

    def request(self, method: str, path: str, *, token: str | None = None,
                scheme: str = "Bearer", headers: dict[str, str] | None = None,
                body: bytes | None = None, clear: bool = True) -> Response:
        if clear:
            self.harness.clear_upstream_requests()
        sent = {"Host": "fhir.phi-guard.test", "Accept": "application/fhir+json"}
        if token is not None:
            sent["Authorization"] = f"{scheme} {token}"
        sent.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in sent.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, header_dict(resp.getheaders()), data, path, sent)
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def upstream_requests(self) -> list[dict]:
        return self.harness.upstream_requests()


# ---------------------------------------------------------------------------------- assertions
def assert_not_forwarded(api: Api, resp: Response) -> None:
    seen = api.upstream_requests()
    assert seen == [], (f"denied request {resp.request_path} reached the upstream: "
                        f"{[r['path'] for r in seen]}")


def assert_forwarded(api: Api, resp: Response, path: str | None = None) -> dict:
    seen = api.upstream_requests()
    assert len(seen) == 1, f"expected one upstream request for {resp.request_path}, saw {seen}"
    if path is not None:
        assert seen[0]["path"] == path, f"upstream saw {seen[0]['path']!r}, expected {path!r}"
    assert seen[0]["headers"].get("x-request-id"), "upstream request has no x-request-id"
    return seen[0]


def assert_no_token_echo(resp: Response, token: str | None) -> None:
    if not token:
        return
    parts = [p for p in token.split(".") if len(p) >= 16]
    for part in [token, *parts]:
        assert part not in resp.text, f"token (or a part of it) echoed in the body: {resp.text[:300]!r}"
        for value in resp.headers.values():
            assert part not in value, f"token echoed in a response header: {value[:200]!r}"


def assert_operation_outcome(resp: Response) -> dict:
    ctype = resp.header("content-type") or ""
    assert "json" in ctype, f"denial content-type is {ctype!r}: {resp.describe()}"
    try:
        body = resp.json()
    except ValueError as err:
        raise AssertionError(f"denial body is not JSON: {resp.describe()}") from err
    assert body.get("resourceType") == "OperationOutcome", f"not an OperationOutcome: {resp.describe()}"
    issues = body.get("issue")
    assert isinstance(issues, list) and issues, f"OperationOutcome without issue: {resp.describe()}"
    for issue in issues:
        assert issue.get("severity") in ("fatal", "error", "warning", "information"), issue
        assert isinstance(issue.get("code"), str) and issue["code"], issue
    return body


REASON_SYSTEM = "urn:phi-guard:reason"


def reason_codes(resp: Response) -> set[str]:
    """phi-guard's stable refusal codes (DenyReason::code) in an error body: the OperationOutcome
    `issue.details.coding` of FHIR routes, or the `error` member of the plain JSON body."""
    try:
        body = resp.json()
    except ValueError:
        return set()
    if not isinstance(body, dict):
        return set()
    codes = {c.get("code") for i in body.get("issue", []) if isinstance(i, dict)
             for c in (i.get("details") or {}).get("coding", []) if c.get("system") == REASON_SYSTEM}
    if isinstance(body.get("error"), str):
        codes.add(body["error"])
    return codes


def assert_denied(api: Api, resp: Response, status: int, *, token: str | None = None,
                  www_authenticate: re.Pattern | None = None, fhir: bool = True,
                  reason: str | set[str] | None = None) -> None:
    """A refusal: status, challenge, OperationOutcome body, no token echo, nothing upstream,
    and (when given) the refusal code, so a 401 for the wrong reason does not pass."""
    assert resp.status == status, f"expected {status}, got {resp.describe()}"
    if reason is not None:
        wanted = {reason} if isinstance(reason, str) else set(reason)
        assert reason_codes(resp) & wanted, f"expected reason {sorted(wanted)}: {resp.describe()}"
    if www_authenticate is not None:
        challenge = resp.header("www-authenticate") or ""
        assert www_authenticate.search(challenge), (
            f"WWW-Authenticate {challenge!r} does not match {www_authenticate.pattern!r}")
    if fhir:
        assert_operation_outcome(resp)
    else:
        assert resp.body == b"" or "json" in (resp.header("content-type") or ""), resp.describe()
    assert_no_token_echo(resp, token)
    assert_not_forwarded(api, resp)


def assert_allowed(api: Api, resp: Response, *, upstream_path: str | None = None) -> dict:
    assert resp.status == 200, f"expected 200, got {resp.describe()}"
    assert_forwarded(api, resp, upstream_path or resp.request_path)
    return resp.json() if resp.body else {}
