#!/usr/bin/env python3
"""Render the Envoy bootstrap for phi-guard (used by `make run`, the integration tests and the
benchmarks, so all three run the same configuration).

    envoy_config.py [--listen-port 10000] [--admin-port 9901] [--upstream-port 8081]
                    [--policy policies/smart-patient-app.json] [--wasm target/.../phi_guard.wasm]
                    [--filter phi-guard|none] [--no-normalize] [--access-log PATH]
                    [--cluster NAME=PORT|NAME=HOST:PORT ...]
                    [--https-port 10443 --tls-cert server.crt --tls-key server.key]
                    [--compose] > envoy.yaml

`--filter none` renders the same proxy without the wasm filter (harness checks, baseline
benchmarks). `--no-normalize` turns off Envoy's own path hardening so that tests can show the
filter itself rejects path tricks. The output is YAML; every scalar is written as a JSON string,
which YAML reads verbatim, so the policy text can be embedded as-is.

Listeners: plain HTTP on `--listen-port`, and with `--https-port` an HTTPS listener running the
same filter chain behind TLS 1.2+ (NIST SP 800-52r2 cipher suites, see TLS_PARAMS) that adds
`strict-transport-security` to every response. Plain HTTP is meant for loopback only.

`--compose` renders the configuration of envoy/docker-compose.yaml: listeners on 0.0.0.0 inside
the container (the compose file publishes them on the host's loopback), fixed container ports,
the wasm, policy and certificates at their mount points, clusters by service name (DNS), and the
HMAC/audit keys taken from the container's environment instead of the file.
"""

from __future__ import annotations

import argparse
import ipaddress
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
# Test/demo value only: keys the audit chain MACs and patient pseudonyms (>= 32 bytes).
DEMO_AUDIT_KEY = "phi-guard-demo-audit-key-not-a-secret"
# Test/demo value only: phi-guard's client secret at the demo introspection server.
DEMO_INTROSPECTION_SECRET = "phi-guard-introspection-secret"
FILTERS = ("phi-guard", "none")
# Secrets the filter reads from its VM environment. With `env_from_host` they are passed through
# from Envoy's own process environment (`host_env_keys`), so they never appear in the config.
SECRET_ENV_KEYS = ("PHI_GUARD_HMAC_KEY", "PHI_GUARD_AUDIT_KEY", "PHI_GUARD_INTROSPECTION_SECRET")

# TLS for the HTTPS listener (NIST SP 800-52r2, section 3.3): TLS 1.2 minimum; for TLS 1.2 only
# ephemeral ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305); TLS 1.3 keeps
# BoringSSL's defaults (all AEAD: AES-128/256-GCM, ChaCha20-Poly1305), which Envoy does not let
# a config narrow. Curves: X25519 (SP 800-186) and the NIST curves P-256 and P-384.
TLS_MIN_VERSION = "TLSv1_2"
TLS_MAX_VERSION = "TLSv1_3"
TLS12_CIPHER_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
ECDH_CURVES = ("X25519", "P-256", "P-384")
# One year, subdomains included (no `preload`: that is a decision for the domain's owner).
HSTS_VALUE = "max-age=31536000; includeSubDomains"

# Envoy's per-stream buffer limit: the listeners' per_connection_buffer_limit_bytes (written out
# although it is Envoy's default). The policy's `limits.envoyBufferLimitBytes` states the same
# number (default 1048576); `limits.maxResponseBytes` may not exceed it less one upstream read
# (65536), `maxRequestBodyBytes` may not exceed it (checked when the policy compiles): a body
# Envoy will not buffer is reset mid-response. Raise both together, never one alone.
BUFFER_LIMIT_BYTES = 1024 * 1024
# The clusters' per_connection_buffer_limit_bytes bounds one upstream read, i.e. how much body
# Envoy appends to the stream buffer before the filter sees it: it must stay well under the
# 64 KiB headroom the policy keeps (a read may overshoot by one 16 KiB slice).
UPSTREAM_READ_LIMIT_BYTES = 32 * 1024

# Envoy `stats_tags` that turn the suffixes of phi-guard's stat names into Prometheus labels
# (docs/METRICS.md): `wasmcustom.phi_guard.requests_denied_total.reason.missing_token` is shown as
# `phi_guard_requests_denied_total{reason="missing_token"}`. Envoy matches each regex against the
# full stat name, where Wasm metrics carry the `wasmcustom.` namespace (stripped only by
# /stats/prometheus); the first group is cut from the name, the second is the label's value.
# `wasm_plugin` does the same for Envoy's own per-plugin VM reload counters
# (`wasm.<plugin>.vm_reload*`), whose plugin name Istio prefixes with the namespace.
# deploy/istio/stats-bootstrap.yaml carries the same list for Istio sidecars (a test keeps the two
# equal).
STATS_TAGS = (
    ("reason", r"^wasmcustom\.phi_guard\.requests_denied_total(\.reason\.([a-z_]+))$"),
    ("limit", r"^wasmcustom\.phi_guard\.rate_limited_total(\.limit\.([A-Za-z0-9_-]+))$"),
    ("wasm_plugin", r"^wasm\.((.+)\.)vm_reload(?:_backoff|_failure|_success)?$"),
)

# Fixed ports and paths inside the compose Envoy container (envoy/docker-compose.yaml).
COMPOSE_HTTP_PORT, COMPOSE_HTTPS_PORT, COMPOSE_ADMIN_PORT = 10000, 10443, 9901
COMPOSE_WASM = "/etc/phi-guard/phi_guard.wasm"
COMPOSE_TLS_CERT = "/etc/phi-guard/tls/server.crt"
COMPOSE_TLS_KEY = "/etc/phi-guard/tls/server.key"
COMPOSE_TLS_CA = "/etc/phi-guard/tls/ca.crt"
COMPOSE_SERVICE_PORT = 8080  # every helper service listens here inside its container
# Clusters of the compose deployment: Envoy cluster name -> compose service.
COMPOSE_CLUSTERS = {"upstream": "fhir", "idp": "idp", "policy": "policy", "audit": "audit",
                    "introspection": "introspection"}


def q(value) -> str:
    """A YAML scalar: JSON string/number syntax is valid YAML flow syntax."""
    return json.dumps(value)


def stats_config(tags=STATS_TAGS) -> dict:
    """The bootstrap's `stats_config`: the STATS_TAGS as `stats_tags` entries."""
    return {"stats_tags": [{"tag_name": name, "regex": regex} for name, regex in tags]}


def wasm_filter(policy_text: str, wasm_path: Path | str, hmac_key: str | None) -> str:
    """The phi-guard http filter. `hmac_key=None` passes SECRET_ENV_KEYS from Envoy's own
    environment instead of writing a key into the configuration."""
    if hmac_key is None:
        env = "                    host_env_keys: [" + ", ".join(q(k) for k in SECRET_ENV_KEYS) + "]\n"
    else:
        env = f"""\
                    key_values:
                      PHI_GUARD_HMAC_KEY: {q(hmac_key)}
                      PHI_GUARD_AUDIT_KEY: {q(DEMO_AUDIT_KEY)}
                      PHI_GUARD_INTROSPECTION_SECRET: {q(DEMO_INTROSPECTION_SECRET)}
"""
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
{env}"""


def _split_endpoint(target: int | str, default_host: str) -> tuple[str, int]:
    """`8081` -> (default_host, 8081); `"fhir:8080"` -> ("fhir", 8080)."""
    if isinstance(target, int):
        return default_host, target
    host, sep, port = str(target).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"cluster endpoint must be PORT or HOST:PORT, not {target!r}")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _cluster(name: str, host: str, port: int) -> str:
    """A static cluster for an IP address, else a DNS cluster (compose service names)."""
    discovery = "type: STATIC" if _is_ip(host) else "type: STRICT_DNS\n    dns_lookup_family: V4_ONLY"
    return f"""\
  - name: {q(name)}
    {discovery}
    connect_timeout: 1s
    per_connection_buffer_limit_bytes: {UPSTREAM_READ_LIMIT_BYTES}
    load_assignment:
      cluster_name: {q(name)}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {q(host)}, port_value: {port}}}
"""


def _hcm(stat_prefix: str, path_hardening: str, access_logs: str, http_filters: str,
         response_headers: str) -> str:
    """The http_connection_manager both listeners share (same routes, same filter chain)."""
    return f"""\
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {q(stat_prefix)}
          generate_request_id: true
          # Envoy must not add its own `server` header back after the filter strips the upstream's.
          server_header_transformation: PASS_THROUGH
          # HTTP/1.1 clients get the filter's Content-Digest trailer (chunked responses).
          http_protocol_options: {{enable_trailers: true}}
{path_hardening}{access_logs}          route_config:
            name: local
{response_headers}            virtual_hosts:
            - name: fhir
              domains: ["*"]
              routes:
              # The demo upstream's test hooks (/__requests, /__respond) are never reachable
              # through the proxy.
              - match: {{prefix: "/__"}}
                direct_response: {{status: 404}}
              # The clinician policy's de-identified research view of the same FHIR server.
              - match: {{prefix: "/research/fhir/"}}
                route: {{cluster: upstream, timeout: 15s, prefix_rewrite: "/fhir/"}}
              - match: {{prefix: "/clinical/fhir/"}}
                route: {{cluster: upstream, timeout: 15s, prefix_rewrite: "/fhir/"}}
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 15s}}
          http_filters:
{http_filters}"""


def _tls_transport_socket(cert: str, key: str, client_ca: str | None = None) -> str:
    ciphers = "".join(f"                - {q(c)}\n" for c in TLS12_CIPHER_SUITES)
    curves = ", ".join(q(c) for c in ECDH_CURVES)
    # Mutual TLS: a client certificate is asked for and, when sent, must chain to `client_ca`
    # (else the handshake fails). phi-guard compares a certificate-bound token's `cnf.x5t#S256`
    # with the certificate verified here (RFC 8705); clients without one still connect, and
    # only bound tokens need it. Set `require_client_certificate: true` for a listener that
    # admits certificate holders only.
    validation = "" if client_ca is None else f"""\
            validation_context:
              trusted_ca: {{filename: {q(client_ca)}}}
"""
    require = "" if client_ca is None else "          require_client_certificate: false\n"
    return f"""\
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
{require}          common_tls_context:
            tls_params:
              tls_minimum_protocol_version: {TLS_MIN_VERSION}
              tls_maximum_protocol_version: {TLS_MAX_VERSION}
              # TLS 1.2 suites; TLS 1.3 suites are BoringSSL's (AEAD only).
              cipher_suites:
{ciphers}              ecdh_curves: [{curves}]
            tls_certificates:
            - certificate_chain: {{filename: {q(cert)}}}
              private_key: {{filename: {q(key)}}}
{validation}            alpn_protocols: ["h2", "http/1.1"]
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
    upstream_port: int | str = 8081,
    policy: Path = DEFAULT_POLICY,
    wasm: Path | str = DEFAULT_WASM,
    filter: str = "phi-guard",  # noqa: A002 (mirrors the CLI flag)
    normalize: bool = True,
    access_log: str | None = None,
    hmac_key: str | None = DEMO_HMAC_KEY,
    address: str = "127.0.0.1",
    extra_clusters: dict[str, int | str] | None = None,
    https_port: int | None = None,
    tls_cert: Path | str | None = None,
    tls_key: Path | str | None = None,
    tls_client_ca: Path | str | None = None,
    https_address: str | None = None,
    resolve_wasm: bool = True,
    ecds: Path | None = None,
    stats: dict | None = None,
) -> str:
    """The bootstrap YAML.

    `address` is where the listeners and the admin interface bind, and the host of clusters given
    by port only. `upstream_port` and the values of `extra_clusters` (more cluster names, for the
    filter's own callouts, e.g. a remote JWKS on cluster `idp`) are a port on `address` or a
    `"host:port"` (a DNS name gives a STRICT_DNS cluster). `https_port` adds the TLS listener
    (needs `tls_cert` and `tls_key`) on `https_address` (default `address`); with `tls_client_ca`
    it asks clients for a certificate signed by that CA (mutual TLS). `hmac_key=None` takes the filter's secrets from Envoy's
    environment (SECRET_ENV_KEYS). `resolve_wasm=False` writes `wasm` as given (a path inside a
    container). `stats` replaces the bootstrap's `stats_config` (default: `stats_config()`)."""
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, not {filter!r}")
    if https_port is not None and not (tls_cert and tls_key):
        raise ValueError("an HTTPS listener needs tls_cert and tls_key")
    http_filters = ""
    if filter == "phi-guard" and ecds is not None:
        http_filters += ecds_filter(ecds)
    elif filter == "phi-guard":
        wasm_path = Path(wasm).resolve() if resolve_wasm else wasm
        http_filters += wasm_filter(Path(policy).read_text(encoding="utf-8"), wasm_path, hmac_key)
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
    listeners = f"""\
  - name: ingress
    address:
      socket_address: {{address: {q(address)}, port_value: {listen_port}}}
    per_connection_buffer_limit_bytes: {BUFFER_LIMIT_BYTES}
    filter_chains:
    - filters:
{_hcm("ingress_http", path_hardening, access_logs, http_filters, "")}"""
    if https_port is not None:
        # HSTS on every response of the TLS listener, the filter's own 401/403 included.
        hsts = f"""\
            response_headers_to_add:
            - header: {{key: "strict-transport-security", value: {q(HSTS_VALUE)}}}
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
"""
        listeners += f"""\
  - name: ingress_https
    address:
      socket_address: {{address: {q(https_address or address)}, port_value: {https_port}}}
    per_connection_buffer_limit_bytes: {BUFFER_LIMIT_BYTES}
    filter_chains:
    - filters:
{_hcm("ingress_https", path_hardening, access_logs, http_filters, hsts)}{_tls_transport_socket(str(tls_cert), str(tls_key), tls_client_ca and str(tls_client_ca))}"""
    clusters = ""
    for name, target in {"upstream": upstream_port, **(extra_clusters or {})}.items():
        clusters += _cluster(name, *_split_endpoint(target, address))
    return f"""\
# Generated by tests/support/envoy_config.py (filter={filter}, normalize={normalize}).
node:
  id: phi-guard-{filter}
  cluster: phi-guard
admin:
  address:
    socket_address: {{address: {q(address)}, port_value: {admin_port}}}
stats_config: {json.dumps(stats_config() if stats is None else stats)}
static_resources:
  listeners:
{listeners}  clusters:
{clusters}"""


def render_compose(*, policy: Path = DEFAULT_POLICY, filter: str = "phi-guard",  # noqa: A002
                   normalize: bool = True, extra_clusters: dict[str, str] | None = None) -> str:
    """The Envoy config of envoy/docker-compose.yaml (see the module docstring). Access logs go
    to the container's stdout (`docker compose logs envoy`)."""
    clusters = {name: f"{svc}:{COMPOSE_SERVICE_PORT}" for name, svc in COMPOSE_CLUSTERS.items()}
    clusters.update(extra_clusters or {})
    upstream = clusters.pop("upstream")
    return render(listen_port=COMPOSE_HTTP_PORT, admin_port=COMPOSE_ADMIN_PORT,
                  upstream_port=upstream, policy=policy, wasm=COMPOSE_WASM, resolve_wasm=False,
                  filter=filter, normalize=normalize, access_log="/dev/stdout", hmac_key=None,
                  address="0.0.0.0", extra_clusters=clusters,  # noqa: S104 (inside the container)
                  https_port=COMPOSE_HTTPS_PORT, tls_cert=COMPOSE_TLS_CERT, tls_key=COMPOSE_TLS_KEY,
                  tls_client_ca=COMPOSE_TLS_CA)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen-port", type=int, default=10000)
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--upstream-port", type=int, default=8081)
    p.add_argument("--upstream", metavar="HOST:PORT",
                   help="the FHIR server, when it is not on loopback (overrides --upstream-port)")
    p.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    p.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    p.add_argument("--filter", choices=FILTERS, default="phi-guard")
    p.add_argument("--no-normalize", dest="normalize", action="store_false")
    p.add_argument("--access-log")
    p.add_argument("--cluster", action="append", default=[], metavar="NAME=PORT",
                   help="an extra cluster for the filter's callouts: NAME=PORT (loopback) or "
                        "NAME=HOST:PORT (repeatable)")
    p.add_argument("--https-port", type=int, help="add the HTTPS listener on this port")
    p.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path,
                   help="ask HTTPS clients for a certificate signed by this CA (mutual TLS)")
    p.add_argument("--https-address", default=None,
                   help="where the HTTPS listener binds (default 127.0.0.1, like plain HTTP "
                        "and admin, which always stay on loopback)")
    p.add_argument("--secrets-from-env", action="store_true",
                   help="pass PHI_GUARD_HMAC_KEY/PHI_GUARD_AUDIT_KEY from Envoy's environment "
                        "instead of writing the demo key into the config")
    p.add_argument("--compose", action="store_true",
                   help="the config of envoy/docker-compose.yaml (ignores ports, paths, --cluster)")
    a = p.parse_args(argv)
    extra: dict[str, int | str] = {}
    for item in a.cluster:
        name, _, target = item.partition("=")
        value: int | str = int(target) if target.isdigit() else target
        try:
            _split_endpoint(value, "127.0.0.1")
        except ValueError:
            name = ""
        if not name:
            p.error(f"--cluster wants NAME=PORT or NAME=HOST:PORT, not {item!r}")
        extra[name] = value
    if a.compose:
        sys.stdout.write(render_compose(policy=a.policy, filter=a.filter, normalize=a.normalize))
        return 0
    if a.https_port is not None and not (a.tls_cert and a.tls_key):
        p.error("--https-port needs --tls-cert and --tls-key (`make certs` makes a test pair)")
    upstream: int | str = a.upstream_port
    if a.upstream:
        try:
            _split_endpoint(a.upstream, "127.0.0.1")
        except ValueError:
            p.error(f"--upstream wants HOST:PORT, not {a.upstream!r}")
        upstream = a.upstream
    sys.stdout.write(render(listen_port=a.listen_port, admin_port=a.admin_port,
                            upstream_port=upstream, policy=a.policy, wasm=a.wasm,
                            filter=a.filter, normalize=a.normalize, access_log=a.access_log,
                            extra_clusters=extra, https_port=a.https_port,
                            tls_cert=a.tls_cert and a.tls_cert.resolve(),
                            tls_key=a.tls_key and a.tls_key.resolve(),
                            tls_client_ca=a.tls_client_ca and a.tls_client_ca.resolve(),
                            https_address=a.https_address,
                            hmac_key=None if a.secrets_from_env else DEMO_HMAC_KEY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
