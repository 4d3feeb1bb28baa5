#!/usr/bin/env python3
"""A controllable JWKS + policy server for the reload and key-rotation tests (stdlib only).

    keyserver.py [PORT]      prints `LISTENING <port>` once ready

GET /jwks.json, GET /policy.json,  serve what was last set
GET /.well-known/openid-configuration (policy: ETag + If-None-Match -> 304,
                                   detached signature in `x-phi-guard-signature`)
POST /__set/<jwks|policy|discovery> JSON {"body": str, "status": int, "signature": str, "delay": s}
GET /__count, DELETE /__count      requests served per resource
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {
    "jwks": {"body": '{"keys": []}', "status": 200, "signature": None, "delay": 0},
    "discovery": {"body": "{}", "status": 404, "signature": None, "delay": 0},
    "policy": {"body": "{}", "status": 404, "signature": None, "delay": 0},
}
COUNT = {"jwks": 0, "policy": 0, "discovery": 0}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # noqa: D102
        sys.stderr.write("keyserver: " + fmt % args + "\n")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        name = {"/jwks.json": "jwks", "/policy.json": "policy",
                "/.well-known/openid-configuration": "discovery"}.get(self.path.split("?")[0])
        if self.path == "/__count":
            with LOCK:
                return self._send(200, json.dumps(COUNT).encode(), {"content-type": "application/json"})
        if name is None:
            return self._send(404)
        with LOCK:
            COUNT[name] += 1
            st = dict(STATE[name])
        if st["delay"]:
            time.sleep(st["delay"])
        body = st["body"].encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if st["status"] != 200:
            return self._send(st["status"], b"unavailable")
        if name == "policy" and self.headers.get("if-none-match") == etag:
            return self._send(304, b"", {"etag": etag})
        headers = {"content-type": "application/json", "etag": etag}
        if st["signature"]:
            headers["x-phi-guard-signature"] = st["signature"]
        self._send(200, body, headers)

    def do_POST(self):  # noqa: N802
        name = self.path.removeprefix("/__set/")
        if name not in STATE:
            return self._send(404)
        update = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        with LOCK:
            STATE[name].update(update)
        self._send(204)

    def do_DELETE(self):  # noqa: N802
        with LOCK:
            for k in COUNT:
                COUNT[k] = 0
        self._send(204)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
