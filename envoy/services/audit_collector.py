#!/usr/bin/env python3
"""Audit collector placeholder for the compose deployment. Standard library only.

    audit_collector.py [--port 8080] [--host 0.0.0.0] [--max-events 10000]

Accepts audit events from the filter (cluster `audit`) and keeps them in memory:

  POST /<any path>      a JSON object, a JSON array of objects, or NDJSON (one object a line);
                        answers 202 with the number of events accepted, 400 if the body is not
                        JSON; each event is also printed to stdout as one JSON line
  GET /__events         every event kept so far, oldest first
  DELETE /__events      forget them
  GET /healthz          200

This is the seam for the real collector (batch format, authentication with PHI_GUARD_AUDIT_KEY,
forwarding to a SIEM): change `Collector.accept` and keep the test hooks.
Prints `LISTENING <port>` first, like demo_upstream.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_BODY = 8 * 1024 * 1024


class Collector:
    def __init__(self, max_events: int) -> None:
        self.events: list = []
        self.max_events = max_events
        self.lock = threading.Lock()

    @staticmethod
    def parse(body: bytes) -> list:
        text = body.decode("utf-8").strip()
        if not text:
            return []
        try:
            doc = json.loads(text)
            return doc if isinstance(doc, list) else [doc]
        except ValueError:
            return [json.loads(line) for line in text.splitlines() if line.strip()]

    def accept(self, events: list) -> int:
        with self.lock:
            room = max(0, self.max_events - len(self.events))
            kept = events[:room]
            self.events.extend(kept)
        for event in kept:
            print(json.dumps(event, separators=(",", ":")), flush=True)
        return len(kept)


class Handler(BaseHTTPRequestHandler):
    collector: Collector
    server_version = "phi-guard-audit-collector"

    def log_message(self, fmt, *args):  # noqa: N802 (stdlib name)
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz" and self.command in ("GET", "HEAD"):
            return self._json(200, {"status": "ok"})
        if path == "/__events":
            if self.command == "GET":
                with self.collector.lock:
                    return self._json(200, list(self.collector.events))
            if self.command == "DELETE":
                with self.collector.lock:
                    self.collector.events.clear()
                return self._json(200, {"cleared": True})
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._json(413, {"error": "body too large"})
            try:
                events = self.collector.parse(self.rfile.read(length))
            except (UnicodeDecodeError, ValueError):
                return self._json(400, {"error": "body is not JSON or NDJSON"})
            return self._json(202, {"accepted": self.collector.accept(events)})
        return self._json(405, {"error": "method not allowed"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="0.0.0.0")  # noqa: S104 (a container's own interface)
    ap.add_argument("--max-events", type=int, default=10_000)
    args = ap.parse_args(argv)
    handler = type("Bound", (Handler,), {"collector": Collector(args.max_events)})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
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
