"""Run a helper service's HTTP server: the startup line the harnesses wait for, then serve until
interrupted, always closing the socket. Shared by the services in this folder (standard library
only: they run in a minimal image)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> int:
    """Bind `handler` on host:port (0: any free port), print `LISTENING <port>`, serve until
    Ctrl-C or SIGINT."""
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
