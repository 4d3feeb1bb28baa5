#!/usr/bin/env python3
"""Serve the policy playground (a static directory) on loopback.

    serve.py [--port 8090] [--dir playground]

Standard library only. Binds 127.0.0.1 and nothing else: the page runs entirely in the browser
and needs no server beyond static files. `.wasm` goes out as `application/wasm` (required by
`WebAssembly.instantiateStreaming`), and every answer carries the page's Content-Security-Policy,
which keeps anything the page computes from being sent anywhere (`connect-src 'self'`).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from pathlib import Path

# The same policy as the page's <meta> tag; here it also covers the JS modules and the JSON.
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".json": "application/json",
        ".css": "text/css",
        ".html": "text/html; charset=utf-8",
    }

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        # A rebuilt wasm must not meet a cached JS glue file of another build.
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        sys.stderr.write("playground: " + (format % args) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8090, help="TCP port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent, help="directory to serve")
    args = ap.parse_args()
    if not (args.dir / "pkg").is_dir() or not (args.dir / "examples").is_dir():
        print(f"{args.dir}: no pkg/ or examples/ yet: run `make playground`", file=sys.stderr)
        return 1
    handler = functools.partial(Handler, directory=str(args.dir))
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        host, port = server.server_address[:2]
        # The browser test reads this line to learn the port when it passes --port 0.
        print(f"playground: serving {args.dir} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
