#!/usr/bin/env python3
"""Demo FHIR upstream for phi-guard: a tiny read-only FHIR R4 server over the demo bundles.

Standard library only. Usage:

    demo_upstream.py [PORT] [--host 127.0.0.1] [--data envoy/demo-data]

PORT 0 (the default) lets the kernel choose; the first line printed is always
``LISTENING <port>`` so a harness can read the chosen port.

Serves (``application/fhir+json`` under /fhir):
  GET|HEAD /fhir/metadata                     small CapabilityStatement
  GET|HEAD /fhir/{Type}/{id}                  read
  GET|HEAD /fhir/{Type}?patient=X|subject=Patient/X|_id=X[,Y]   searchset Bundle
  GET|HEAD /fhir/Patient/{id}/{Type}          compartment search
  POST     /fhir/{Type}                       echo as "created" (nothing is stored)
  PUT|PATCH|DELETE /fhir/{Type}/{id}          accepted if it exists and `If-Match`, when sent,
                                              names its version (else 412); nothing is stored
  Reads carry `ETag: W/"<meta.versionId or 1>"`.
  GET /healthz, GET [/fhir]/.well-known/smart-configuration (SMART App Launch discovery, at the
  root and under the FHIR base), GET /jwks.json (the demo keys' JWKS),
  GET /.well-known/openid-configuration (the demo identity provider's, naming /jwks.json)
  GET /admin/reports/{id}, GET|POST /admin/export[...]   small plain JSON
Anything else: 404 OperationOutcome.

Test hooks (only on this port, never routed through Envoy):
  GET /__requests     every request received so far: [{method, path, headers}]
  DELETE /__requests  clear that list
  POST /__respond     {"status": 200, "contentType": "...", "body": "text" | "bodyBase64": "...",
                       "headers": [[name, value] | [name, {"base64": "..."}], ...],
                       "chunked": false, "trailers": [[name, value], ...]}:
                      answer every following request outside these hooks with exactly that
                      (still recorded in /__requests), to replay a fixed upstream response.
                      Header values may be any bytes but CR, LF and NUL (given as base64 for
                      non-UTF-8 bytes such as Latin-1); names must be HTTP tokens. `chunked`
                      sends the body chunked (then `trailers` after it) instead of with a
                      Content-Length. CR/LF in `contentType` is refused (no header injection)
  DELETE /__respond   serve the demo data again
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as _dt
import gzip
import json
import os
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote

FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "envoy" / "demo-data"
# Public halves of the test keys: the demo identity provider's JWKS (for remote-JWKS policies).
DEMO_JWKS = Path(__file__).resolve().parents[2] / "tests" / "keys" / "demo-jwks.json"
# Reference fields that put a resource in a patient's compartment (enough for the demo data).
PATIENT_FIELDS = ("subject", "patient", "beneficiary")
# The demo identity provider (tests/keys), whose discovery document this server also serves.
DEMO_ISSUER = "https://idp.phi-guard.test"
MAX_RECORDED = 10_000


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Store:
    """All resources of the demo data, indexed by (type, id)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], dict] = {}
        self.order: list[tuple[str, str]] = []

    def add(self, resource: dict) -> None:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            return
        key = (rtype, rid)
        if key not in self.by_key:
            self.order.append(key)
        self.by_key[key] = resource

    @classmethod
    def load(cls, data_dir: Path) -> Store:
        store = cls()
        urn_map: dict[str, str] = {}
        for path in sorted(data_dir.rglob("*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8-sig"))
            except (OSError, ValueError) as err:
                print(f"demo_upstream: skipping {path}: {err}", file=sys.stderr)
                continue
            for resource in _flatten(doc, urn_map):
                store.add(resource)
            if isinstance(doc, dict) and doc.get("type") == "transaction" and "id" not in doc:
                # The raw Synthea transaction Bundle, as posted: GET /fhir/Bundle/synthea-<n>
                # (an id that is not the patient's record number, which the file name carries).
                n = sum(1 for k in store.order if k[0] == "Bundle" and k[1].startswith("synthea-")) + 1
                store.add(dict(doc, id=f"synthea-{n}"))
        # Like a server that processed the transaction: urn:uuid references become Type/id.
        for key in store.order:
            _rewrite_refs(store.by_key[key], urn_map)
        return store

    def get(self, rtype: str, rid: str) -> dict | None:
        return self.by_key.get((rtype, rid))

    def of_type(self, rtype: str) -> list[dict]:
        return [self.by_key[k] for k in self.order if k[0] == rtype]

    def patient_ids(self) -> list[str]:
        return [k[1] for k in self.order if k[0] == "Patient"]


def _flatten(doc, urn_map: dict[str, str]):
    """Yield every resource in a document, descending into Bundle entries."""
    if not isinstance(doc, dict) or "resourceType" not in doc:
        return
    if doc["resourceType"] == "Bundle":
        if doc.get("type") not in ("transaction", "batch"):
            yield doc
        for entry in doc.get("entry") or []:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict):
                continue
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and full_url.startswith("urn:uuid:") and "id" in res:
                urn_map[full_url] = f"{res['resourceType']}/{res['id']}"
            yield from _flatten(res, urn_map)
    else:
        yield doc


def _rewrite_refs(node, urn_map: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in urn_map:
            node["reference"] = urn_map[ref]
        for value in node.values():
            _rewrite_refs(value, urn_map)
    elif isinstance(node, list):
        for value in node:
            _rewrite_refs(value, urn_map)


def _patient_refs(resource: dict) -> set[str]:
    """Patient ids this resource points at through its compartment fields."""
    if resource.get("resourceType") == "Patient":
        return {resource.get("id", "")}
    out: set[str] = set()
    for field in PATIENT_FIELDS:
        values = resource.get(field)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, dict) and isinstance(value.get("reference"), str):
                ref = value["reference"]
                if ref.startswith("Patient/"):
                    out.add(ref[len("Patient/"):])
    return out


def version_etag(resource: dict) -> str:
    """The weak ETag of a resource's version (`meta.versionId`, else 1)."""
    version = (resource.get("meta") or {}).get("versionId") or "1"
    return f'W/"{version}"'


def _ref_id(value: str) -> str:
    """`Patient/X`, a full URL ending in Patient/X, or a bare X -> X."""
    if "Patient/" in value:
        return value.rsplit("Patient/", 1)[1]
    return value


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def capability_statement() -> dict:
    types = ["Patient", "Observation", "Condition", "Encounter", "MedicationRequest",
             "Immunization", "Procedure", "DiagnosticReport", "AllergyIntolerance", "CarePlan",
             "Claim", "ExplanationOfBenefit", "Coverage", "ServiceRequest", "RelatedPerson",
             "Practitioner", "Organization"]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": "phi-guard demo upstream", "version": "0.1.0"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"}]}],
            },
            "resource": [
                {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [{"name": "patient", "type": "reference"},
                                 {"name": "subject", "type": "reference"},
                                 {"name": "_id", "type": "token"}]}
                for t in types
            ],
        }],
    }


SMART_CONFIGURATION = {
    "issuer": "https://idp.phi-guard.test",
    "authorization_endpoint": "https://idp.phi-guard.test/authorize",
    "token_endpoint": "https://idp.phi-guard.test/token",
    "jwks_uri": "https://idp.phi-guard.test/jwks.json",  # served here as /jwks.json
    "grant_types_supported": ["authorization_code", "client_credentials"],
    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access",
                         "patient/*.rs", "user/*.rs", "system/*.rs"],
    "response_types_supported": ["code"],
    "code_challenge_methods_supported": ["S256"],
    "capabilities": ["launch-standalone", "client-public", "client-confidential-asymmetric",
                     "context-standalone-patient", "permission-patient", "permission-v2"],
}


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_value(value) -> bytes:
    """A canned header value: text (UTF-8) or {"base64": ...} for arbitrary bytes. CR, LF and
    NUL are refused: the hook must not be a way to inject headers into its own answers."""
    raw = base64.b64decode(value["base64"], validate=True) if isinstance(value, dict) else str(value).encode()
    if any(b in raw for b in (b"\r", b"\n", b"\0")):
        raise ValueError("header values may not contain CR, LF or NUL")
    return raw


def _header_pair(pair) -> tuple[bytes, bytes]:
    name, value = pair
    name = str(name).encode()
    if not name or any(c not in _TOKEN for c in name):
        raise ValueError(f"header name {name!r} is not an HTTP token")
    return name, _header_value(value)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's connection pool expects
    server_version = "phi-guard-demo-upstream/0.1"
    store: Store
    recorded: list[dict]
    # The canned answer set by POST /__respond (a one-element list so that every handler thread
    # sees the same slot), or [None] to serve the demo data.
    canned: list
    lock: threading.Lock
    quiet = True

    # ---------------------------------------------------------------- plumbing
    def log_message(self, fmt, *args):  # noqa: N802 (stdlib name)
        if not self.quiet:
            super().log_message(fmt, *args)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body, content_type: str = FHIR_JSON, extra=None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        # Test hooks (request headers), to show the proxy fails closed on bad upstream answers:
        # x-test-gzip: gzip the body whatever the client accepts; x-test-content-type: lie about
        # the type; x-test-truncate: promise more bytes than are sent, then close.
        encoding = None
        if self.headers.get("x-test-gzip"):
            data, encoding = gzip.compress(data), "gzip"
        content_type = self.headers.get("x-test-content-type") or content_type
        truncate = bool(self.headers.get("x-test-truncate"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) + (1000 if truncate else 0)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data[: len(data) // 2] if truncate else data)
        if truncate:
            self.close_connection = True

    def _send_canned(self, canned: dict) -> None:
        """Write a canned answer byte for byte (raw header bytes, optional chunking/trailers)."""
        head = [f"HTTP/1.1 {canned['status']} Canned".encode(),
                b"Content-Type: " + canned["contentType"],
                b"Date: " + self.date_time_string().encode()]
        head += [name + b": " + value for name, value in canned["headers"]]
        data = canned["body"] if self.command != "HEAD" else b""
        if canned["chunked"]:
            head.append(b"Transfer-Encoding: chunked")
            payload = b""
            if data:
                payload += f"{len(data):x}\r\n".encode() + data + b"\r\n"
            payload += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in canned["trailers"]) + b"\r\n"
        else:
            head.append(f"Content-Length: {len(canned['body'])}".encode())
            payload = data
        self.wfile.write(b"\r\n".join(head) + b"\r\n\r\n" + payload)
        self.wfile.flush()

    def _not_found(self, what: str = "") -> None:
        self._send(404, operation_outcome("not-found", what or f"no route for {self.path}"))

    def _record(self, body: bytes | None) -> None:
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            # None: the body never arrived complete (the proxy refused it and reset the stream).
            "body": None if body is None else body.decode("utf-8", "replace"),
        }
        with self.lock:
            if len(self.recorded) < MAX_RECORDED:
                self.recorded.append(entry)

    def _base(self) -> str:
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        proto = self.headers.get("X-Forwarded-Proto") or "http"
        return f"{proto}://{host}/fhir"

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self) -> None:
        raw_path, _, query = self.path.partition("?")
        if raw_path == "/__requests":
            return self._requests_hook()
        if raw_path == "/__respond":
            return self._respond_hook()
        try:
            body = self._read_body()
        except (OSError, ValueError):
            body = None
        self._record(body)
        if body is None:
            self.close_connection = True
            return None
        with self.lock:
            canned = self.canned[0]
        if canned is not None:
            return self._send_canned(canned)
        method = self.command
        if raw_path == "/healthz" and method in ("GET", "HEAD"):
            return self._send(200, {"status": "ok"}, PLAIN_JSON)
        if raw_path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration") \
                and method in ("GET", "HEAD"):
            return self._send(200, SMART_CONFIGURATION, PLAIN_JSON)
        if raw_path == "/.well-known/openid-configuration" and method in ("GET", "HEAD"):
            # The demo identity provider's OpenID discovery document (for discovery policies).
            return self._send(200, {"issuer": DEMO_ISSUER, "jwks_uri": f"{DEMO_ISSUER}/jwks.json",
                                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"]}, PLAIN_JSON)
        if raw_path == "/jwks.json" and method in ("GET", "HEAD"):
            return self._send(200, DEMO_JWKS.read_bytes(), "application/jwk-set+json")
        if raw_path.startswith("/admin/"):
            return self._admin(method, raw_path, query)
        if raw_path == "/fhir" or raw_path.startswith("/fhir/"):
            return self._fhir(method, raw_path[len("/fhir"):], query, body)
        return self._not_found()

    def _requests_hook(self) -> None:
        if self.command == "GET":
            with self.lock:
                data = list(self.recorded)
            return self._send(200, data, PLAIN_JSON)
        if self.command == "DELETE":
            self._read_body()
            with self.lock:
                self.recorded.clear()
            return self._send(200, {"cleared": True}, PLAIN_JSON)
        return self._send(405, {"error": "method not allowed"}, PLAIN_JSON)

    def _respond_hook(self) -> None:
        if self.command == "DELETE":
            self._read_body()
            with self.lock:
                self.canned[0] = None
            return self._send(200, {"canned": False}, PLAIN_JSON)
        if self.command != "POST":
            return self._send(405, {"error": "method not allowed"}, PLAIN_JSON)
        try:
            spec = json.loads(self._read_body() or b"{}")
            status = int(spec.get("status", 200))
            content_type = _header_value(str(spec.get("contentType", FHIR_JSON)))
            if "bodyBase64" in spec:
                data = base64.b64decode(spec["bodyBase64"], validate=True)
            else:
                data = str(spec.get("body", "")).encode()
            headers = [_header_pair(h) for h in spec.get("headers", [])]
            trailers = [_header_pair(h) for h in spec.get("trailers", [])]
            chunked = bool(spec.get("chunked", False))
        except (AttributeError, TypeError, ValueError, binascii.Error) as err:
            return self._send(400, {"error": f"bad canned response: {err}"}, PLAIN_JSON)
        if not 100 <= status <= 599:
            return self._send(400, {"error": f"bad status {status}"}, PLAIN_JSON)
        if trailers and not chunked:
            return self._send(400, {"error": "trailers need a chunked body"}, PLAIN_JSON)
        with self.lock:
            self.canned[0] = {"status": status, "contentType": content_type, "body": data,
                              "headers": headers, "trailers": trailers, "chunked": chunked}
        return self._send(200, {"canned": True, "status": status, "bytes": len(data)}, PLAIN_JSON)

    def _admin(self, method: str, path: str, query: str) -> None:
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[1] == "reports" and parts[2] and method in ("GET", "HEAD"):
            report_id = unquote(parts[2])
            return self._send(200, {"reportId": report_id, "title": f"Demo report {report_id}",
                                    "rows": 3, "generated": _now()}, PLAIN_JSON)
        if parts[:2] == ["admin", "export"] and method in ("GET", "HEAD", "POST"):
            return self._send(200 if method != "POST" else 202,
                              {"export": "/".join(parts[2:]) or "all", "status": "accepted",
                               "query": query, "requested": _now()}, PLAIN_JSON)
        return self._not_found()

    def _fhir(self, method: str, sub: str, query: str, body: bytes) -> None:
        # Segments are split on the raw '/', then percent-decoded: an encoded %2F stays inside
        # its segment (and so never finds a resource), exactly as a strict server would.
        segments = [unquote(s) for s in sub.split("/")[1:]] if sub else []
        params = parse_qsl(query, keep_blank_values=True)
        if segments == ["metadata"] and method in ("GET", "HEAD"):
            return self._send(200, capability_statement())
        if any(s == "" for s in segments) or not segments:
            return self._not_found()
        if method in ("GET", "HEAD"):
            if len(segments) == 1:
                return self._search(segments[0], params, query)
            if len(segments) == 2:
                return self._read(segments[0], segments[1])
            if len(segments) == 3 and segments[0] == "Patient":
                return self._search(segments[2], params + [("patient", segments[1])], query,
                                    compartment=segments[1])
            return self._not_found()
        if method == "POST" and len(segments) == 1:
            try:
                resource = json.loads(body or b"{}")
            except ValueError:
                return self._send(400, operation_outcome("invalid", "body is not JSON"))
            if not isinstance(resource, dict):
                resource = {}
            resource = dict(resource, resourceType=segments[0], id=str(uuid.uuid4()))
            return self._send(201, resource, extra={
                "Location": f"{self._base()}/{segments[0]}/{resource['id']}/_history/1"})
        if method in ("PUT", "PATCH", "DELETE") and len(segments) == 2:
            current = self.store.get(segments[0], segments[1])
            if current is None:
                return self._not_found(f"{segments[0]}/{segments[1]} not found")
            # Versioned writes (FHIR "version aware" updates): If-Match must name the current
            # version. Nothing is stored: the demo data stays as it is.
            sent = self.headers.get("if-match")
            if sent is not None and sent.strip() != version_etag(current):
                return self._send(412, operation_outcome("conflict", "version conflict"))
            if method == "DELETE":
                return self._send(204, b"")
            return self._send(200, current, extra={"ETag": version_etag(current)})
        return self._send(405, operation_outcome("not-supported", f"{method} not supported"))

    def _read(self, rtype: str, rid: str) -> None:
        resource = self.store.get(rtype, rid)
        if resource is None:
            return self._not_found(f"{rtype}/{rid} not found")
        return self._send(200, resource, extra={"ETag": version_etag(resource)})

    def _search(self, rtype: str, params, query: str, compartment: str | None = None) -> None:
        if not rtype[:1].isupper():
            return self._not_found()
        results = self.store.of_type(rtype)
        count = None
        for name, value in params:
            if name in ("patient", "subject"):
                wanted = {_ref_id(v) for v in value.split(",")}
                results = [r for r in results if _patient_refs(r) & wanted]
            elif name == "_id":
                wanted = set(value.split(","))
                results = [r for r in results if r.get("id") in wanted]
            elif name == "_count":
                try:
                    count = max(0, int(value))
                except ValueError:
                    return self._send(400, operation_outcome("invalid", "_count must be an integer"))
            # Other parameters (_include, _elements, ...) are ignored by this demo server.
        total = len(results)
        if count is not None:
            results = results[:count]
        base = self._base()
        path = f"Patient/{compartment}/{rtype}" if compartment else rtype
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": _now()},
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": f"{base}/{path}" + (f"?{query}" if query else "")}],
            "entry": [
                {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                 "search": {"mode": "match"}}
                for r in results
            ],
        }
        return self._send(200, bundle)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


def make_server(host: str, port: int, data_dir: Path, quiet: bool = True,
                extra: list[Path] | None = None) -> ThreadingHTTPServer:
    store = Store.load(data_dir)
    for more in extra or []:
        # Later data replaces resources with the same type and id (e.g. labelled copies).
        for key in (extra_store := Store.load(more)).order:
            store.add(extra_store.by_key[key])
    handler = type("BoundHandler", (Handler,), {
        "store": store, "recorded": [], "canned": [None], "lock": threading.Lock(), "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=int, default=int(os.environ.get("PORT", "0")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--extra-data", type=Path, action="append", default=[],
                        help="more resources, replacing same type/id (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.data, quiet=not args.verbose, extra=args.extra_data)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
