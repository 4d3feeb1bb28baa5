#!/usr/bin/env python3
"""Render the Envoy bootstrap for phi-guard (used by `make run`, the integration tests and the
benchmarks, so all three run the same configuration).

    envoy_config.py [--listen-port 10000] [--admin-port 9901] [--upstream-port 8081]
                    [--policy policies/smart-patient-app.json] [--wasm target/.../phi_guard.wasm]
                    [--filter phi-guard|none] [--no-normalize] [--access-log PATH]
                    [--cluster NAME=PORT ...] > envoy.yaml

`--filter none` renders the same proxy without the wasm filter (harness checks, baseline
benchmarks). `--no-normalize` turns off Envoy's own path hardening so that tests can show the
filter itself rejects path tricks. The output is YAML; every scalar is written as a JSON string,
which YAML reads verbatim, so the policy text can be embedded as-is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "policies" / "smart-patient-app.json"
DEFAULT_WASM = Path(os.environ.get("PHI_GUARD_WASM")
                    or REPO / "target" / "wasm32-wasip1" / "release" / "phi_guard.wasm")
# Test/demo value only: keys the audit pseudonyms. A deployment sets its own secret.
DEMO_HMAC_KEY = "phi-guard-demo-hmac-key-not-a-secret"
FILTERS = ("phi-guard", "none")


def q(value) -> str:
    """A YAML scalar: JSON string/number syntax is valid YAML flow syntax."""
    return json.dumps(value)


def wasm_filter(policy_text: str, wasm_path: Path, hmac_key: str) -> str:
    return f"""\
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: phi-guard
                root_id: phi-guard
                # Never fail open: a crashed VM answers 503 and is restarted.
                failure_policy: FAIL_RELOAD
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {q(policy_text)}
                vm_config:
                  vm_id: phi-guard
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {q(str(wasm_path))}
                  environment_variables:
                    key_values:
                      PHI_GUARD_HMAC_KEY: {q(hmac_key)}
"""


def ecds_filter(ecds_file: Path) -> str:
    """The filter's configuration delivered by ECDS from a watched file (see `phi-guard ecds`):
    editing the policy swaps the filter config in place, open connections included."""
    ecds_file = Path(ecds_file).resolve()
    return f"""\
          - name: phi-guard
            config_discovery:
              config_source:
                resource_api_version: V3
                path_config_source:
                  path: {q(str(ecds_file))}
                  watched_directory:
                    path: {q(str(ecds_file.parent))}
              type_urls:
              - type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
"""


def render(
    *,
    listen_port: int = 10000,
    admin_port: int = 9901,
    upstream_port: int = 8081,
    policy: Path = DEFAULT_POLICY,
    wasm: Path = DEFAULT_WASM,
    filter: str = "phi-guard",  # noqa: A002 (mirrors the CLI flag)
    normalize: bool = True,
    access_log: str | None = None,
    hmac_key: str = DEMO_HMAC_KEY,
    address: str = "127.0.0.1",
    extra_clusters: dict[str, int] | None = None,
    ecds: Path | None = None,
) -> str:
    """The bootstrap YAML. `extra_clusters` maps more cluster names to loopback ports, for the
    filter's own callouts (e.g. a remote JWKS on cluster `idp`)."""
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, not {filter!r}")
    http_filters = ""
    if filter == "phi-guard" and ecds is not None:
        http_filters += ecds_filter(ecds)
    elif filter == "phi-guard":
        http_filters += wasm_filter(Path(policy).read_text(encoding="utf-8"), Path(wasm).resolve(),
                                    hmac_key)
    http_filters += """\
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    if normalize:
        # Envoy's own path hardening (RFC 3986 dot segments, '//' and encoded slashes). The filter
        # must not rely on it (Istio and other hosts may not set it), see --no-normalize.
        path_hardening = """\
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
"""
    else:
        path_hardening = """\
          normalize_path: false
          merge_slashes: false
          path_with_escaped_slashes_action: KEEP_UNCHANGED
"""
    access_logs = ""
    if access_log:
        access_logs = f"""\
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {q(access_log)}
"""
    clusters = ""
    for name, port in {"upstream": upstream_port, **(extra_clusters or {})}.items():
        clusters += f"""\
  - name: {q(name)}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {q(name)}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {q(address)}, port_value: {port}}}
"""
    return f"""\
# Generated by tests/support/envoy_config.py (filter={filter}, normalize={normalize}).
node:
  id: phi-guard-{filter}
  cluster: phi-guard
admin:
  address:
    socket_address: {{address: {q(address)}, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{address: {q(address)}, port_value: {listen_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          generate_request_id: true
          # Envoy must not add its own `server` header back after the filter strips the upstream's.
          server_header_transformation: PASS_THROUGH
{path_hardening}{access_logs}          route_config:
            name: local
            virtual_hosts:
            - name: fhir
              domains: ["*"]
              routes:
              # The demo upstream's test hook is never reachable through the proxy.
              - match: {{prefix: "/__requests"}}
                direct_response: {{status: 404}}
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 15s}}
          http_filters:
{http_filters}  clusters:
{clusters}"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen-port", type=int, default=10000)
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--upstream-port", type=int, default=8081)
    p.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    p.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    p.add_argument("--filter", choices=FILTERS, default="phi-guard")
    p.add_argument("--no-normalize", dest="normalize", action="store_false")
    p.add_argument("--access-log")
    p.add_argument("--cluster", action="append", default=[], metavar="NAME=PORT",
                   help="an extra loopback cluster for the filter's callouts (repeatable)")
    a = p.parse_args(argv)
    extra = {}
    for item in a.cluster:
        name, _, port = item.partition("=")
        if not name or not port.isdigit():
            p.error(f"--cluster wants NAME=PORT, not {item!r}")
        extra[name] = int(port)
    sys.stdout.write(render(listen_port=a.listen_port, admin_port=a.admin_port,
                            upstream_port=a.upstream_port, policy=a.policy, wasm=a.wasm,
                            filter=a.filter, normalize=a.normalize, access_log=a.access_log,
                            extra_clusters=extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
