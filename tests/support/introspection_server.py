#!/usr/bin/env python3
"""An OAuth 2 authorization server for the opaque-token introspection tests (stdlib + Authlib).

    introspection_server.py [PORT]   prints `LISTENING <port>` once ready (0 = any free port);
                                     binds 127.0.0.1, or $INTROSPECTION_BIND (0.0.0.0 in compose)

The OAuth endpoints are Authlib's (rfc6749 AuthorizationServer + ClientCredentialsGrant, rfc7662
IntrospectionEndpoint, rfc7009 RevocationEndpoint), client_secret_basic, tokens held in memory:
POST /token        grant_type=client_credentials (client demo-app/demo-app-secret) -> opaque Bearer
POST /introspect   token=... (client phi-guard/$INTROSPECTION_CLIENT_SECRET) -> RFC 7662 response
POST /revoke       token=... (client demo-app, or phi-guard for any token) -> 200 {}
Test-only controls:
POST /__issue      JSON {"sub", "scope", "client_id", "expires_in", "extra": {claims}} -> token
POST /__mode       JSON {"delay_ms": int, "status": int|null, "body": str|null} for /introspect
                   (replaces the whole mode; `{}` restores normal answers; GET /__mode reads it)
GET /__count, DELETE /__count   requests served per OAuth endpoint
"""

from __future__ import annotations

import hmac
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Payload, OAuth2Request, TokenMixin
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

# Plain HTTP is the point of this test server (Envoy calls it over the loopback or the compose
# network); Authlib refuses non-https request URIs other than loopback ones without this.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

ISSUER = os.environ.get("INTROSPECTION_ISSUER", "https://introspect.phi-guard.test")
AUDIENCE = os.environ.get("INTROSPECTION_AUDIENCE", "https://fhir.phi-guard.test")
TOKEN_LIFETIME = 300  # seconds, for /token and the /__issue default
TOKEN_CHARS = 43  # random [A-Za-z0-9] characters per access token (~256 bits)

MODE_DEFAULT = {"delay_ms": 0, "status": None, "body": None}
MODE = dict(MODE_DEFAULT)
COUNT = {"introspect": 0, "revoke": 0, "token": 0}
LOCK = threading.Lock()


@dataclass
class Client(ClientMixin):
    client_id: str
    secret: str
    endpoints: frozenset[str]  # Authlib endpoint names where client_secret_basic is accepted
    grant_types: frozenset[str] = frozenset()
    any_token: bool = False  # the resource server: may introspect and revoke every token
    default_scope: str = ""

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope if scope else self.default_scope

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(client_secret.encode(), self.secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "client_secret_basic" and endpoint in self.endpoints

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


CLIENTS = {
    c.client_id: c
    for c in (
        Client(
            "phi-guard",
            os.environ.get("INTROSPECTION_CLIENT_SECRET", "phi-guard-introspection-secret"),
            frozenset({"introspection", "revocation"}),
            any_token=True,
        ),
        Client(
            "demo-app",
            "demo-app-secret",
            frozenset({"token", "revocation"}),
            grant_types=frozenset({"client_credentials"}),
            default_scope="system/*.read",
        ),
    )
}


@dataclass
class Token(TokenMixin):
    access_token: str
    client_id: str
    sub: str
    scope: str
    issued_at: int
    expires_in: int
    extra: dict = field(default_factory=dict)
    revoked: bool = False

    @property
    def token_type(self) -> str:
        cnf = self.extra.get("cnf")
        return "DPoP" if isinstance(cnf, dict) and cnf.get("jkt") else "Bearer"

    def check_client(self, client):
        return client.any_token or client.client_id == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return self.issued_at + self.expires_in <= time.time()

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return self.sub

    def get_client(self):
        return CLIENTS.get(self.client_id)


TOKENS: dict[str, Token] = {}


def new_access_token(**_kwargs) -> str:
    return generate_token(TOKEN_CHARS)


def store_token(token: Token) -> None:
    with LOCK:
        TOKENS[token.access_token] = token


class RawRequest(NamedTuple):
    method: str
    uri: str
    headers: object  # http.client.HTTPMessage: case-insensitive .get()
    body: bytes


class FormPayload(OAuth2Payload):
    def __init__(self, lists: dict[str, list[str]]):
        self._datalist = lists
        self._data = {k: v[0] for k, v in lists.items()}

    @property
    def data(self):
        return self._data

    @property
    def datalist(self):
        return self._datalist


class FormRequest(OAuth2Request):
    """An OAuth2Request over an application/x-www-form-urlencoded body."""

    def __init__(self, raw: RawRequest):
        super().__init__(raw.method, raw.uri, headers=raw.headers)
        self.payload = FormPayload(parse_qs(raw.body.decode("utf-8", "replace"), keep_blank_values=True))
        self._form = self.payload.data

    @property
    def args(self):
        return {}

    @property
    def form(self):
        return self._form


class Server(AuthorizationServer):
    def query_client(self, client_id):
        return CLIENTS.get(client_id)

    def save_token(self, token, request):
        store_token(
            Token(
                access_token=token["access_token"],
                client_id=request.client.client_id,
                sub=request.client.client_id,  # client_credentials: the client is the subject
                scope=token.get("scope", ""),
                issued_at=int(time.time()),
                expires_in=token["expires_in"],
            )
        )

    def create_oauth2_request(self, request):
        return request if isinstance(request, OAuth2Request) else FormRequest(request)

    def handle_response(self, status, body, headers):
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return status, data.encode() if isinstance(data, str) else data, list(headers)

    def send_signal(self, name, *args, **kwargs):
        pass


class Introspection(IntrospectionEndpoint):
    def query_token(self, token_string, token_type_hint):
        with LOCK:
            return TOKENS.get(token_string)

    def check_permission(self, token, client, request):
        return token.check_client(client)

    def introspect_token(self, token):
        payload = {
            "active": True,
            "scope": token.scope,
            "client_id": token.client_id,
            "sub": token.sub,
            "token_type": token.token_type,
            "exp": token.issued_at + token.expires_in,
            "iat": token.issued_at,
            "iss": ISSUER,
            "aud": AUDIENCE,
        }
        # extra claims win (so a test can mint a wrong-`aud` or wrong-`iss` token), except `active`
        payload.update(token.extra)
        payload["active"] = True
        return payload


class Revocation(RevocationEndpoint):
    def query_token(self, token_string, token_type_hint):
        with LOCK:
            return TOKENS.get(token_string)

    def revoke_token(self, token, request):
        with LOCK:
            token.revoked = True


SERVER = Server()
SERVER.register_token_generator("default", BearerTokenGenerator(new_access_token, expires_generator=TOKEN_LIFETIME))
SERVER.register_grant(ClientCredentialsGrant)
SERVER.register_endpoint(Introspection)
SERVER.register_endpoint(Revocation)


def issue(spec: dict) -> dict:
    """Mint a token with arbitrary introspection claims (the /__issue body)."""
    sub, scope = spec.get("sub"), spec.get("scope")
    client_id = spec.get("client_id", "demo-app")
    expires_in = spec.get("expires_in", TOKEN_LIFETIME)
    extra = spec.get("extra", {})
    if not (isinstance(sub, str) and isinstance(scope, str) and isinstance(client_id, str)):
        raise ValueError("sub, scope and client_id must be strings")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool):
        raise ValueError("expires_in must be an integer")
    if not isinstance(extra, dict):
        raise ValueError("extra must be an object")
    token = Token(new_access_token(), client_id, sub, scope, int(time.time()), expires_in, dict(extra))
    store_token(token)
    return {"access_token": token.access_token, "token_type": token.token_type, "expires_in": expires_in}


def set_mode(spec: dict) -> dict:
    mode = {**MODE_DEFAULT, **spec}
    if set(mode) != set(MODE_DEFAULT):
        raise ValueError("unknown member(s): " + ", ".join(sorted(set(mode) - set(MODE_DEFAULT))))
    if not isinstance(mode["delay_ms"], int) or mode["delay_ms"] < 0:
        raise ValueError("delay_ms must be a non-negative integer")
    if mode["status"] is not None and not (isinstance(mode["status"], int) and 200 <= mode["status"] <= 599):
        raise ValueError("status must be null or an HTTP status code")
    if mode["body"] is not None and not isinstance(mode["body"], str):
        raise ValueError("body must be null or a string")
    with LOCK:
        MODE.clear()
        MODE.update(mode)
        return dict(MODE)


JSON = [("content-type", "application/json")]
OAUTH_PATHS = {"/token": "token", "/introspect": "introspect", "/revoke": "revoke"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # noqa: D102
        # Tokens travel in bodies and Authorization headers, never logged; drop query strings too.
        sys.stderr.write("introspection: " + re.sub(r"\?\S*", "?<query>", fmt % args) + "\n")

    def _send(self, status: int, body: bytes = b"", headers: list | None = None) -> None:
        self.send_response(status)
        for k, v in headers or []:
            if k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), JSON)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _dispatch(self) -> None:
        body = self._body()
        path = self.path.split("?")[0]
        try:
            self._route(path, body)
        except Exception as e:  # never echo request data (it may hold a token) into the log
            self.log_message("internal error %s on %s", type(e).__name__, path)
            self._json(500, {"error": "server_error"})

    def _route(self, path: str, body: bytes) -> None:
        method = self.command
        if path in OAUTH_PATHS:
            name = OAUTH_PATHS[path]
            with LOCK:
                COUNT[name] += 1
            if method != "POST":
                return self._json(405, {"error": "invalid_request", "error_description": "POST only"})
            host = self.headers.get("host") or "{}:{}".format(*self.server.server_address[:2])
            raw = RawRequest(method, f"http://{host}{self.path}", self.headers, body)
            if name == "token":
                return self._send(*SERVER.create_token_response(raw))
            if name == "revoke":
                return self._send(*SERVER.create_endpoint_response("revocation", raw))
            with LOCK:
                mode = dict(MODE)
            if mode["delay_ms"]:
                time.sleep(mode["delay_ms"] / 1000)
            if mode["status"] is not None:
                fault = {"error": "temporarily_unavailable", "error_description": "injected fault"}
                data = mode["body"].encode() if mode["body"] is not None else json.dumps(fault).encode()
                return self._send(mode["status"], b"" if mode["status"] in (204, 304) else data, JSON)
            return self._send(*SERVER.create_endpoint_response("introspection", raw))
        if path == "/__count" and method in ("GET", "DELETE"):
            with LOCK:
                if method == "DELETE":
                    for k in COUNT:
                        COUNT[k] = 0
                counts = dict(COUNT)
            return self._json(200, counts)
        if path == "/__mode" and method == "GET":
            with LOCK:
                mode = dict(MODE)
            return self._json(200, mode)
        if path in ("/__issue", "/__mode") and method == "POST":
            try:
                spec = json.loads(body or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("expected a JSON object")
                return self._json(200, issue(spec) if path == "/__issue" else set_mode(spec))
            except ValueError as e:
                return self._json(400, {"error": "invalid_request", "error_description": str(e)})
        self._json(404, {"error": "not_found"})

    do_GET = do_POST = do_DELETE = do_PUT = _dispatch  # noqa: N815


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # Envoy may open many upstream connections at once under load


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    bind = os.environ.get("INTROSPECTION_BIND", "127.0.0.1")
    server = HTTPServer((bind, port), Handler)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
