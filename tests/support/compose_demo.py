#!/usr/bin/env python3
"""`make compose-up` / `make compose-down`: the demo under docker compose, on fixed ports.

    compose_demo.py up [--policy FILE] [--filter phi-guard|none]
    compose_demo.py down

`up` picks the images (official ones, else local stand-ins: compose_images.py), makes the test
certificates, renders .run/compose/envoy.yaml for the policy, builds the helper image, starts
compose project `phi-guard` from envoy/docker-compose.yaml, waits until Envoy is ready and prints
how to call it. The ports are those of `make run` (so run one or the other), each overridable by
its variable (HTTPS_PORT, HTTP_PORT, ADMIN_PORT, FHIR_PORT, IDP_PORT, POLICY_PORT, AUDIT_PORT).
PHI_GUARD_TLS_DIR=dir serves your own dir/server.crt and dir/server.key instead of the test CA's;
BIND_ADDR=0.0.0.0 publishes the HTTPS port beyond loopback (nothing else ever is).
`down` stops and removes exactly that project's containers and network.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from harness import COMPOSE_FILE, ComposeHarness, HarnessError, compose_command
from run_demo import usage_hint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


PROJECT = "phi-guard"
WORKDIR = REPO / ".run" / "compose"
DEFAULT_PORTS = {"HTTPS_PORT": 10443, "HTTP_PORT": 10000, "ADMIN_PORT": 9901, "FHIR_PORT": 8081,
                 "IDP_PORT": 8082, "POLICY_PORT": 8083, "AUDIT_PORT": 8084}


def up(policy: Path, filter_: str) -> int:
    ports = {var: int(os.environ.get(var) or default) for var, default in DEFAULT_PORTS.items()}
    tls_dir = Path(os.environ["PHI_GUARD_TLS_DIR"]) if os.environ.get("PHI_GUARD_TLS_DIR") else None
    harness = ComposeHarness("demo", policy=policy, filter=filter_, workdir=WORKDIR,
                             project=PROJECT, ports=ports, detach=True, tls_dir=tls_dir)
    try:
        harness.start()
    except HarnessError as err:
        raise SystemExit(f"compose-up failed: {err}") from err
    rel = policy.relative_to(REPO) if policy.is_relative_to(REPO) else policy
    ca = harness.tls_ca or "your CA"
    if harness.tls_ca and harness.tls_ca.is_relative_to(REPO):
        ca = harness.tls_ca.relative_to(REPO)
    https = f"https://localhost:{ports['HTTPS_PORT']}"
    print(f"""
phi-guard is up under docker compose (project {PROJECT}, policy {rel}, filter {filter_})
  images    {harness.env['ENVOY_IMAGE']}, helpers on {harness.env['PYTHON_IMAGE']}
  https     {https}   Envoy + phi-guard over TLS (trust {ca})
  http      {harness.base_url}   plain HTTP, loopback only
  admin     {harness.admin_url}    /ready, /stats/prometheus
  upstream  {harness.upstream_url}    demo FHIR server (direct, unprotected)
  idp       http://127.0.0.1:{ports['IDP_PORT']}/jwks.json
  policy    http://127.0.0.1:{ports['POLICY_PORT']}/policies/{policy.name}
  audit     http://127.0.0.1:{ports['AUDIT_PORT']}/__events
  logs      {' '.join(harness.compose)} -f {COMPOSE_FILE.relative_to(REPO)} -p {PROJECT} logs -f
{usage_hint(policy)}
  curl -s --cacert {ca} {https}/fhir/metadata         # over TLS (HSTS on every response)

`make compose-down` stops it.
""", flush=True)
    return 0


def down() -> int:
    argv = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", PROJECT, "down", "--volumes",
            "--remove-orphans", "--timeout", "5"]
    return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("up", "down"))
    ap.add_argument("--policy", type=Path, default=REPO / "policies" / "smart-patient-app.json")
    ap.add_argument("--filter", choices=("phi-guard", "none"), default="phi-guard")
    args = ap.parse_args(argv)
    if args.action == "down":
        return down()
    policy = args.policy if args.policy.is_absolute() else Path.cwd() / args.policy
    if not policy.exists():
        raise SystemExit(f"policy {policy} not found")
    return up(policy.resolve(), args.filter)


if __name__ == "__main__":
    sys.exit(main())
