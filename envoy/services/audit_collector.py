#!/usr/bin/env python3
"""Audit collector placeholder for the compose deployment. Standard library only.

    audit_collector.py [--port 8080] [--host 0.0.0.0] [--max-events 10000]

Accepts audit events from the filter (cluster `audit`) and keeps them in memory:

  POST /<any path>      a JSON object, a JSON array of objects, or NDJSON (one object a line);
                        answers 202 with the number of events accepted, 400 if the body is not
                        JSON; each event is also printed to stdout as one JSON line
  GET /__events         every event kept so far, oldest first
  GET /__lines          the sealed lines as received (for `phi-guard audit verify`)
  DELETE /__events      forget them
  GET /__bodies         every POST body as received, with its content-type (for tests that
                        parse the batches with the OTLP protobuf definitions)
  POST /__status        {"status": 503}: answer every POST with that status and keep nothing
                        (an outage, for tests); {"status": 202} restores. "retryAfter": "5"
                        adds a Retry-After header to those answers
  GET /__attempts       how many POSTs were answered with a test status
  GET /healthz          200

OTLP/HTTP JSON log batches (`resourceLogs`) are unpacked: each log record's body is one sealed
event line.

This is the seam for the real collector (batch format, authentication with PHI_GUARD_AUDIT_KEY,
forwarding to a SIEM): change `Collector.accept` and keep the test hooks.
Prints `LISTENING <port>` first, like demo_upstream.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

# A sibling module: the services run as scripts, so this folder is on sys.path.
from serving import serve  # noqa: E402

MAX_BODY = 8 * 1024 * 1024


class Collector:
    def __init__(self, max_events: int) -> None:
        self.events: list = []
        self.lines: list[str] = []
        self.max_events = max_events
        self.status = 202
        self.retry_after: str | None = None
        self.attempts = 0
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    @staticmethod
    def parse(body: bytes) -> list[str]:
        """The event lines of a body: NDJSON, a JSON object/array, or an OTLP logs batch."""
        text = body.decode("utf-8").strip()
        if not text:
            return []
        try:
            doc = json.loads(text)
        except ValueError:
            lines = [line for line in text.splitlines() if line.strip()]
            for line in lines:
                json.loads(line)  # each must be JSON
            return lines
        if isinstance(doc, dict) and "resourceLogs" in doc:
            return [rec["body"]["stringValue"]
                    for rl in doc["resourceLogs"] for sl in rl.get("scopeLogs", [])
                    for rec in sl.get("logRecords", [])]
        items = doc if isinstance(doc, list) else [doc]
        return [json.dumps(item, separators=(",", ":")) for item in items]

    def accept(self, lines: list[str]) -> int:
        with self.lock:
            room = max(0, self.max_events - len(self.events))
            kept = lines[:room]
            self.lines.extend(kept)
            self.events.extend(json.loads(line) for line in kept)
        for line in kept:
            print(line, flush=True)
        return len(kept)


class Handler(BaseHTTPRequestHandler):
    collector: Collector
    server_version = "phi-guard-audit-collector"

    def log_message(self, fmt, *args):  # noqa: N802 (stdlib name)
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz" and self.command in ("GET", "HEAD"):
            return self._json(200, {"status": "ok"})
        if path == "/__lines" and self.command == "GET":
            with self.collector.lock:
                return self._json(200, list(self.collector.lines))
        if path == "/__bodies" and self.command == "GET":
            with self.collector.lock:
                return self._json(200, list(self.collector.bodies))
        if path == "/__attempts" and self.command == "GET":
            with self.collector.lock:
                return self._json(200, {"attempts": self.collector.attempts})
        if path == "/__status" and self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            ask = json.loads(self.rfile.read(length) or b"{}")
            status = int(ask.get("status", 202))
            with self.collector.lock:
                self.collector.status = status
                self.collector.retry_after = ask.get("retryAfter")
                self.collector.attempts = 0
            return self._json(200, {"status": status})
        if path == "/__events":
            if self.command == "GET":
                with self.collector.lock:
                    return self._json(200, list(self.collector.events))
            if self.command == "DELETE":
                with self.collector.lock:
                    self.collector.events.clear()
                    self.collector.lines.clear()
                    self.collector.bodies.clear()
                return self._json(200, {"cleared": True})
        if self.command == "POST":
            with self.collector.lock:
                outage, retry_after = self.collector.status, self.collector.retry_after
                if outage >= 300:
                    self.collector.attempts += 1
            if outage >= 300:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                extra = {"Retry-After": retry_after} if retry_after else None
                return self._json(outage, {"error": "collector unavailable (test outage)"}, extra)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._json(413, {"error": "body too large"})
            raw = self.rfile.read(length)
            try:
                events = self.collector.parse(raw)
            except (UnicodeDecodeError, ValueError):
                return self._json(400, {"error": "body is not JSON or NDJSON"})
            with self.collector.lock:
                if len(self.collector.bodies) < self.collector.max_events:
                    self.collector.bodies.append({"contentType": self.headers.get("Content-Type", ""),
                                                  "body": raw.decode("utf-8")})
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
    return serve(args.host, args.port, handler)


if __name__ == "__main__":
    sys.exit(main())
