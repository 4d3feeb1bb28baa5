#!/usr/bin/env python3
"""Read-only HTTP file server for the compose deployment: the identity provider's JWKS and the
policy server. Standard library only.

    file_server.py [--port 8080] [--host 0.0.0.0] --root DIR

GET|HEAD /<path> serves DIR/<path> (no directory listings, nothing outside DIR). A file named
`X.sig` beside `X` is sent as the `x-phi-guard-signature` header of `X` (a detached signature from
`phi-guard sign`, for the filter's pull mode). `GET /healthz` answers 200. Test hook, as on the
demo upstream: `GET /__requests` lists the requests served so far, `DELETE /__requests` clears it.

Prints `LISTENING <port>` first, like demo_upstream.py.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

# A sibling module: the services run as scripts, so this folder is on sys.path.
from serving import serve  # noqa: E402

SIGNATURE_HEADER = "x-phi-guard-signature"
MAX_RECORDED = 10_000
TYPES = {".json": "application/json", ".jwks": "application/jwk-set+json"}


class Handler(BaseHTTPRequestHandler):
    root: Path
    recorded: list
    lock: threading.Lock
    server_version = "phi-guard-file-server"

    def log_message(self, fmt, *args):  # noqa: N802 (stdlib name)
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _file(self, path: str) -> Path | None:
        rel = unquote(path).lstrip("/")
        candidate = (self.root / rel).resolve()
        if not rel or not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path == "/__requests":
            return self._requests_hook()
        with self.lock:
            if len(self.recorded) < MAX_RECORDED:
                self.recorded.append({"method": self.command, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.command not in ("GET", "HEAD"):
            return self._json(405, {"error": "read-only"})
        if path == "/healthz":
            return self._json(200, {"status": "ok"})
        found = self._file(path)
        if found is None:
            return self._json(404, {"error": "not found", "path": path})
        extra = {}
        sig = found.with_name(found.name + ".sig")
        if sig.is_file():
            extra[SIGNATURE_HEADER] = sig.read_text().strip()
        ctype = TYPES.get(found.suffix) or mimetypes.guess_type(found.name)[0] or \
            "application/octet-stream"
        return self._send(200, found.read_bytes(), ctype, extra)

    def _requests_hook(self) -> None:
        if self.command == "GET":
            with self.lock:
                return self._json(200, list(self.recorded))
        if self.command == "DELETE":
            with self.lock:
                self.recorded.clear()
            return self._json(200, {"cleared": True})
        return self._json(405, {"error": "method not allowed"})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="0.0.0.0")  # noqa: S104 (a container's own interface)
    ap.add_argument("--root", type=Path, required=True)
    args = ap.parse_args(argv)
    root = args.root.resolve()
    if not root.is_dir():
        raise SystemExit(f"--root {root} is not a directory")
    handler = type("Bound", (Handler,), {"root": root, "recorded": [], "lock": threading.Lock()})
    return serve(args.host, args.port, handler)


if __name__ == "__main__":
    sys.exit(main())
