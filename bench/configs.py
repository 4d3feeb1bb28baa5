"""Envoy configurations for the benchmarks.

* `upstream(...)`: a fixed-response upstream, itself an Envoy answering every path from a file
  with `direct_response`, so the upstream is never the bottleneck (the Python demo upstream
  would be).
* `proxy(...)`: the Envoy under test. Every variant starts from the bootstrap that
  `tests/support/envoy_config.py` renders for the tests and `make run` (same listener, path
  hardening, router and upstream cluster); the native variant adds Envoy's own `jwt_authn` +
  `rbac` filters in front of the router, the phi-guard variants add the wasm filter.
"""

from __future__ import annotations

import json
from pathlib import Path

import envoy_config
from envoy_config import DEFAULT_WASM, q, render, wasm_filter

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The listeners' per_connection_buffer_limit_bytes in every proxy under test (Envoy's stream
# buffer): the size sweep's largest body (4 MiB) must fit in the pipeline's buffer with room for
# one more upstream read, so the pipelines' policies state the same `limits.envoyBufferLimitBytes`
# (run.py). The same limit on every variant keeps the baseline's configuration equal to the
# pipeline's but for the filter. The upstream cluster's limit stays the shipped 32 KiB: it bounds
# one upstream read, which must stay under the policy's 64 KiB headroom.
BUFFER_LIMIT_BYTES = 8 * 1024 * 1024
LISTENER_BUFFER_LIMIT = f"    per_connection_buffer_limit_bytes: {envoy_config.BUFFER_LIMIT_BYTES}\n"


ISSUER = "https://idp.phi-guard.test"
AUDIENCE = "https://fhir.phi-guard.test"
JWKS_FILE = REPO / "tests" / "keys" / "demo-jwks.json"
ROUTER_MARKER = "          - name: envoy.filters.http.router\n"
ROUTE_CONFIG_MARKER = "          route_config:\n"

# The scope the native RBAC rule demands for `GET /fhir/Patient/{id}`: any SMART scope that grants
# read on Patient (patient/ user/ system/ context; Patient or *; v1 read or *; v2 letters with r).
# It runs on the space-separated `scope` claim jwt_authn puts in dynamic metadata.
SCOPE_REGEX = r"^(.* )?(patient|user|system)/(Patient|\*)\.(read|\*|c?r(u?d?s?))( .*)?$"


def native_filters(*, cache: bool, cache_size: int = 1024) -> str:
    """jwt_authn (local JWKS, same issuer/audience/skew as the demo policy) + rbac on the scope."""
    jwks = json.dumps(json.loads(JWKS_FILE.read_text(encoding="utf-8")), separators=(",", ":"))
    cache_cfg = f"""
                  jwt_cache_config: {{jwt_cache_size: {cache_size}}}""" if cache else ""
    return f"""\
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                demo:
                  issuer: {q(ISSUER)}
                  audiences: [{q(AUDIENCE)}]
                  local_jwks: {{inline_string: {q(jwks)}}}
                  clock_skew_seconds: 60
                  max_lifetime: 86400s
                  forward: true
                  payload_in_metadata: jwt_payload{cache_cfg}
              rules:
              - match: {{prefix: "/fhir"}}
                requires: {{provider_name: demo}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  smart-read:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {{name: ":method", string_match: {{exact: GET}}}}
                        - url_path: {{path: {{prefix: "/fhir/"}}}}
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [{{key: jwt_payload}}, {{key: scope}}]
                        value: {{string_match: {{safe_regex: {{regex: {q(SCOPE_REGEX)}}}}}}}
"""


# The fields of phi-guard's audit line that Envoy can log itself, from the request, the response
# and jwt_authn's payload metadata: what a user running jwt_authn + rbac would log per request
# instead of phi-guard's audit event (which also pseudonymizes, names the FHIR interaction and
# seals the line into an HMAC chain, none of which an access log can).
_JWT = "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:jwt_payload:{})%"
AUDIT_LOG_FIELDS: dict[str, str] = {
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%E3SZ)%",
    "requestId": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "route": "%ROUTE_NAME%",
    "status": "%RESPONSE_CODE%",
    "reason": "%RESPONSE_CODE_DETAILS%",
    "issuer": _JWT.format("iss"),
    "clientId": _JWT.format("client_id"),
    "subject": _JWT.format("sub"),
    "tokenId": _JWT.format("jti"),
    "scope": _JWT.format("scope"),
    "contextPatient": _JWT.format("patient"),
    "purposeOfUse": _JWT.format("purpose_of_use"),
    "source": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "destination": "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
    "upstream": "%UPSTREAM_HOST%",
    "bytesSent": "%BYTES_SENT%",
}


def audit_access_log(path: Path) -> str:
    """A JSON-lines file access log of AUDIT_LOG_FIELDS (for the HCM's `access_log`)."""
    fields = "".join(f"                  {k}: {q(v)}\n" for k, v in AUDIT_LOG_FIELDS.items())
    return f"""\
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {q(str(path))}
              log_format:
                json_format:
{fields}"""


def proxy(kind: str, *, listen_port: int, admin_port: int, upstream_port: int,
          policy: Path | None = None, wasm: Path = DEFAULT_WASM, access_log: Path | None = None) -> str:
    """The Envoy under test. `kind`: none | native | native-cache | native-audit | phi-guard |
    wasm-noop (`wasm` is then the no-op filter, configured exactly like phi-guard but with an
    empty policy). `native-audit` is native-cache plus a JSON access log of the audit fields
    (`access_log`, a file): the native setup that does what phi-guard's warm path does."""
    if kind == "phi-guard":
        return _buffer_limit(render(listen_port=listen_port, admin_port=admin_port, upstream_port=upstream_port,
                                    policy=policy or REPO / "policies" / "smart-patient-app.json", wasm=wasm,
                                    filter="phi-guard"))
    base = _buffer_limit(render(listen_port=listen_port, admin_port=admin_port, upstream_port=upstream_port,
                                filter="none"))
    if kind == "none":
        return base
    if kind == "wasm-noop":
        filters = wasm_filter("", Path(wasm).resolve(), "unused")
    elif kind in ("native", "native-cache", "native-audit"):
        filters = native_filters(cache=kind != "native")
    else:
        raise ValueError(f"unknown proxy kind {kind!r}")
    if base.count(ROUTER_MARKER) != 1:
        raise RuntimeError("tests/support/envoy_config.py changed shape: no single router filter")
    out = base.replace(ROUTER_MARKER, filters + ROUTER_MARKER)
    if kind == "native-audit":
        if access_log is None:
            raise ValueError("native-audit needs an access_log file")
        if out.count(ROUTE_CONFIG_MARKER) != 1:
            raise RuntimeError("tests/support/envoy_config.py changed shape: no single route_config")
        out = out.replace(ROUTE_CONFIG_MARKER, audit_access_log(access_log) + ROUTE_CONFIG_MARKER)
    return out


def _buffer_limit(config: str) -> str:
    """The listener's buffer limit raised to BUFFER_LIMIT_BYTES."""
    if config.count(LISTENER_BUFFER_LIMIT) != 1:
        raise RuntimeError("tests/support/envoy_config.py changed shape: no single listener buffer limit")
    return config.replace(LISTENER_BUFFER_LIMIT, f"    per_connection_buffer_limit_bytes: {BUFFER_LIMIT_BYTES}\n")


def upstream(*, listen_port: int, admin_port: int, bodies: dict[str, Path]) -> str:
    """An Envoy answering `GET path` with 200 and the bytes of `bodies[path]`."""
    routes = ""
    for path, file in bodies.items():
        routes += f"""\
              - match: {{path: {q(path)}}}
                direct_response:
                  status: 200
                  body: {{filename: {q(str(Path(file).resolve()))}}}
"""
    biggest = max((Path(f).stat().st_size for f in bodies.values()), default=0)
    return f"""\
# Generated by bench/configs.py: fixed FHIR bodies for the benchmarks.
node: {{id: bench-upstream, cluster: bench}}
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: upstream
    address:
      socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          route_config:
            name: bodies
            max_direct_response_body_size_bytes: {biggest + 1024}
            response_headers_to_add:
            - header: {{key: content-type, value: application/fhir+json}}
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
            virtual_hosts:
            - name: bodies
              domains: ["*"]
              routes:
{routes}              - match: {{prefix: "/"}}
                direct_response: {{status: 404}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
