#!/usr/bin/env python3
"""`make run`: the demo upstream + Envoy with phi-guard on fixed, documented ports.

Envoy listens on HTTPS (10443, certificate from the local test CA in .run/tls, made by
tls_certs.py) and on plain HTTP (10000); both bind 127.0.0.1 only.

    run_demo.py [--policy FILE] [--filter phi-guard|none] [--detach]
    run_demo.py --stop

Both processes are started fully detached (double fork, own session, output to .run/demo/*.log)
so that nothing but this script stops them: a process started from a script can otherwise be
taken down when the script exits. Their PIDs are kept in .run/demo/pids.json; Ctrl-C (or
`--stop`, `make stop`) stops exactly those.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import tls_certs
from envoy_config import DEFAULT_WASM, render
from harness import CONCURRENCY, VM_ENV, envoy_bin, http_get
from tokens import CLI

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


RUN_DIR = REPO / ".run" / "demo"
PIDS = RUN_DIR / "pids.json"
LISTEN_PORT, ADMIN_PORT, UPSTREAM_PORT, HTTPS_PORT = 10000, 9901, 8081, 10443
AUDIT_PORT = 8084  # the audit collector (cluster `audit`), as in the compose deployment
DEMO_PATIENT = ("d78af07c-9cb9-4f31-9b11-c45a28f2eec8", "Clemente Kreiger")
OTHER_PATIENT = ("1f456f0a-acb1-4728-82af-01ca57083c7b", "Kermit Trantow")


def spawn_detached(argv: list[str], log: Path) -> int:
    """Double-fork `argv` into its own session with stdio on `log`; return its PID."""
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first == 0:  # child: new session, fork again so init adopts the grandchild
        try:
            os.close(read_fd)
            os.setsid()
            second = os.fork()
            if second != 0:
                os.write(write_fd, str(second).encode())
                os._exit(0)
            os.close(write_fd)
            fd_in = os.open(os.devnull, os.O_RDONLY)
            fd_out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd_in, 0)
            os.dup2(fd_out, 1)
            os.dup2(fd_out, 2)
            os.chdir(REPO)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 64):
        data += chunk
    os.close(read_fd)
    os.waitpid(first, 0)
    return int(data)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_recorded() -> int:
    """Stop the processes recorded in pids.json (only if they still run what we started)."""
    if not PIDS.exists():
        return 0
    recorded = json.loads(PIDS.read_text())
    stopped = 0
    for name, info in recorded.items():
        pid, marker = info["pid"], info["marker"]
        if not alive(pid) or marker not in cmdline(pid):
            continue  # gone, or the PID was reused by something else: leave it alone
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})")
        stopped += 1
    PIDS.unlink()
    return stopped


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_for(url: str, ok, timeout: float, pid: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
            raise SystemExit(f"{what} exited during start-up; last lines of {log}:\n{tail}")
        try:
            status, body = http_get(url, timeout=1)
            if ok(status, body):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} not ready after {timeout}s (see {log})")


def usage_hint(policy: Path) -> str:
    me, me_name = DEMO_PATIENT
    other, other_name = OTHER_PATIENT
    base = f"http://127.0.0.1:{LISTEN_PORT}"
    scope_claim = "scope"
    try:
        scope_claim = json.loads(policy.read_text())["issuers"][0].get("scopeClaim", "scope")
    except (OSError, ValueError, KeyError, IndexError):
        pass
    if scope_claim == "scope":
        mint = f"make -s token SCOPE='patient/*.rs' PATIENT={me}"
        who = f"for patient {me_name}"
        other_note = f"{other_name}, another patient: 403"
    else:
        mint = f"make -s token SCOPE= PATIENT= CLAIMS='{{\"{scope_claim}\":[\"user/*.rs\"]}}'"
        who = f"with user/ scopes in `{scope_claim}` (this policy's scope claim)"
        other_note = f"{other_name}: user/ scopes read any patient"
    return f"""
Mint a token {who}:
  {mint}
Try it:
  curl -s -H "Authorization: Bearer $({mint})" {base}/fhir/Patient/{me}
  curl -s -i {base}/fhir/Patient/{me}          # no token: 401
  curl -s -i -H "Authorization: Bearer $({mint})" {base}/fhir/Patient/{other}   # {other_note}
Other demo patients: envoy/demo-data/README.md"""


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, default=REPO / "policies" / "smart-patient-app.json")
    ap.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    ap.add_argument("--filter", choices=("phi-guard", "none"), default="phi-guard")
    ap.add_argument("--detach", action="store_true", help="start and return; stop with --stop")
    ap.add_argument("--stop", action="store_true", help="stop a demo started earlier")
    args = ap.parse_args(argv)

    if args.stop:
        if not stop_recorded():
            print("no running demo recorded in .run/demo/pids.json")
        return 0

    stop_recorded()  # a demo left from an earlier run
    busy = [p for p in (LISTEN_PORT, ADMIN_PORT, UPSTREAM_PORT, HTTPS_PORT, AUDIT_PORT) if not port_free(p)]
    if busy:
        raise SystemExit(f"port(s) {busy} already in use on 127.0.0.1: stop what uses them first")
    policy = args.policy if args.policy.is_absolute() else (Path.cwd() / args.policy)
    if not policy.exists():
        raise SystemExit(f"policy {policy} not found")
    if args.filter == "phi-guard" and not args.wasm.exists():
        raise SystemExit(f"{args.wasm} not found: run `make wasm`")

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tls = tls_certs.ensure()
    cfg = RUN_DIR / "envoy.yaml"
    # The policy reaches the filter by ECDS from a watched file: `phi-guard ecds --watch` rewrites
    # it when the policy file changes, so edits apply in about a second without a restart.
    ecds = RUN_DIR / "ecds" / "phi-guard.json"
    ecds.parent.mkdir(parents=True, exist_ok=True)
    ecds_argv = [str(CLI), "ecds", str(policy), "--wasm", str(args.wasm.resolve()), "--out", str(ecds)]
    if args.filter == "phi-guard":
        subprocess.run(ecds_argv, check=True, stdout=subprocess.DEVNULL)
    cfg.write_text(render(listen_port=LISTEN_PORT, admin_port=ADMIN_PORT,
                          upstream_port=UPSTREAM_PORT, policy=policy, wasm=args.wasm,
                          filter=args.filter, access_log=str(RUN_DIR / "access.log"),
                          https_port=HTTPS_PORT, tls_cert=tls.cert, tls_key=tls.key,
                          extra_clusters={"audit": AUDIT_PORT},
                          ecds=ecds if args.filter == "phi-guard" else None))
    # Demo secrets for the VM (Envoy passes them through host_env_keys); real ones win.
    for key, value in VM_ENV.items():
        os.environ.setdefault(key, value)
    up_log, envoy_log = RUN_DIR / "upstream.log", RUN_DIR / "envoy.log"
    audit_log, watch_log = RUN_DIR / "audit.log", RUN_DIR / "ecds-watch.log"
    for log in (up_log, envoy_log, audit_log, watch_log):
        log.write_text("")
    pids: dict[str, dict] = {}

    def record() -> None:
        PIDS.write_text(json.dumps(pids, indent=2))

    try:
        up = spawn_detached([sys.executable, str(HERE / "demo_upstream.py"), str(UPSTREAM_PORT)],
                            up_log)
        pids["upstream"] = {"pid": up, "marker": "demo_upstream.py"}
        record()
        wait_for(f"http://127.0.0.1:{UPSTREAM_PORT}/healthz", lambda s, b: s == 200, 20, up,
                 "demo upstream", up_log)
        collector = spawn_detached([sys.executable, str(REPO / "envoy/services/audit_collector.py"),
                                    "--port", str(AUDIT_PORT), "--host", "127.0.0.1"], audit_log)
        pids["collector"] = {"pid": collector, "marker": "audit_collector.py"}
        if args.filter == "phi-guard":
            watcher = spawn_detached(ecds_argv + ["--watch"], watch_log)
            pids["ecds-watch"] = {"pid": watcher, "marker": "ecds"}
        record()
        envoy = spawn_detached([envoy_bin(), "-c", str(cfg), "--concurrency", str(CONCURRENCY),
                                "--disable-hot-restart", "--log-level", "info"], envoy_log)
        pids["envoy"] = {"pid": envoy, "marker": str(cfg)}
        record()
        wait_for(f"http://127.0.0.1:{ADMIN_PORT}/ready",
                 lambda s, b: s == 200 and b.strip() == b"LIVE", 60, envoy, "envoy", envoy_log)
    except BaseException:
        stop_recorded()
        raise

    rel = policy.relative_to(REPO) if policy.is_relative_to(REPO) else policy
    print(f"""
phi-guard demo is up (policy {rel}, filter {args.filter}, {CONCURRENCY} Envoy workers)
  https     https://localhost:{HTTPS_PORT}  Envoy + phi-guard over TLS (trust {tls.ca.relative_to(REPO)})
  listener  http://127.0.0.1:{LISTEN_PORT}   Envoy + phi-guard, plain HTTP (loopback only)
  admin     http://127.0.0.1:{ADMIN_PORT}    /ready, /stats/prometheus
  upstream  http://127.0.0.1:{UPSTREAM_PORT}    demo FHIR server (direct, unprotected)
  audit     http://127.0.0.1:{AUDIT_PORT}/__events  events the collector received (and `phi-guard-audit:` lines in envoy.log)
  logs      {RUN_DIR.relative_to(REPO)}/{{envoy,access,upstream,audit,ecds-watch}}.log
  policy    edit {rel} and it applies within about a second (ECDS; a bad edit is refused and logged)
{usage_hint(policy)}
  curl -s --cacert {tls.ca.relative_to(REPO)} https://localhost:{HTTPS_PORT}/fhir/metadata   # TLS
""", flush=True)
    if args.detach:
        print("Running detached: `make stop` stops it.")
        return 0
    print("Ctrl-C stops the demo.", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while all(alive(info["pid"]) for info in pids.values()):
            time.sleep(0.5)
        print("a demo process exited on its own; see the logs", file=sys.stderr)
    except KeyboardInterrupt:
        print()
    finally:
        stop_recorded()
    return 0


if __name__ == "__main__":
    sys.exit(main())
