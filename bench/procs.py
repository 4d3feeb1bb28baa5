"""Processes the benchmarks start (Envoys, wrk) and what they read from /proc.

Every Envoy is a child of the benchmark process (its own session, SIGTERM if the benchmark dies)
and is stopped by PID; nothing is ever stopped by name.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import _die_with_parent, _terminate, envoy_bin, free_port, http_get

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


CONCURRENCY = 2  # Envoy workers per proxy, as in the tests: one VM per worker


class BenchError(RuntimeError):
    pass


@dataclass
class Envoy:
    """One running Envoy: ports, PID, timings of its start."""

    name: str
    workdir: Path
    listen_port: int = 0
    admin_port: int = 0
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_after_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, render, *, concurrency: int = CONCURRENCY, timeout: float = 60.0) -> Envoy:
        """`render(listen_port, admin_port)` -> YAML. Waits for /ready (polled every 5 ms)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        last = ""
        for _attempt in range(3):  # a free port can be taken before Envoy binds it
            self.listen_port, self.admin_port = free_port(), free_port()
            cfg = self.workdir / f"{self.name}.yaml"
            cfg.write_text(render(self.listen_port, self.admin_port), encoding="utf-8")
            log = self.workdir / f"{self.name}.log"
            stderr = open(self.workdir / f"{self.name}.stderr.log", "ab")  # noqa: SIM115
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(  # noqa: S603, PLW1509
                [envoy_bin(), "-c", str(cfg), "--concurrency", str(concurrency),
                 "--disable-hot-restart", "--log-level", "warning", "--log-path", str(log)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                preexec_fn=_die_with_parent)
            stderr.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    status, body = http_get(f"{self.admin_url}/ready", timeout=1)
                    if status == 200 and body.strip() == b"LIVE":
                        self.ready_after_s = time.perf_counter() - self.started_at
                        return self
                except OSError:
                    pass
                time.sleep(0.005)
            last = tail(log) + tail(self.workdir / f"{self.name}.stderr.log")
            self.stop()
            if "in use" not in last.lower():
                break
        raise BenchError(f"envoy {self.name} did not become ready:\n{last}")

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None

    # ------------------------------------------------------------------ /proc readings
    def cpu_ns(self) -> int:
        return process_cpu_ns(self.pid)

    def status(self) -> dict[str, int]:
        """VmRSS / VmHWM / VmSize in KiB."""
        out = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "VmSize"):
                    out[key] = int(rest.split()[0])
        except OSError:
            pass
        return out

    def stats(self, filter_re: str) -> dict[str, int]:
        status, body = http_get(f"{self.admin_url}/stats?format=json&filter={filter_re}")
        if status != 200:
            return {}
        out = {}
        for s in json.loads(body).get("stats", []):
            if "name" in s and isinstance(s.get("value"), int):
                out[s["name"]] = s["value"]
        return out


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    except OSError:
        return ""


def process_cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid`, in ns (schedstat), else from utime+stime ticks."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return 0
    if total:
        return total
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0


# The V8 wasm memory of one VM is a large reservation (guard region included) whose accessible,
# read-write part is the module's current linear memory. We read it from smaps: every rw mapping
# that sits inside a reservation of at least 4 GiB of address space.
_SMAPS_HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)$")


def smaps(pid: int) -> list[dict]:
    out: list[dict] = []
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    cur: dict | None = None
    for line in text.splitlines():
        m = _SMAPS_HEAD.match(line)
        if m:
            cur = {"start": int(m[1], 16), "end": int(m[2], 16), "perms": m[3],
                   "inode": int(m[4]), "name": m[5].strip()}
            out.append(cur)
        elif cur is not None and ":" in line:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                cur[key] = int(parts[0])
    return out


# ------------------------------------------------------------------ requests
def request(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET on a fresh connection."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_us: int
    p90_us: int
    p99_us: int
    mean_us: float
    errors: int
    bytes: int


def wrk(url: str, *, conns: int, seconds: int, token: str | None = None,
        token_file: Path | None = None) -> WrkResult:
    """Run wrk once: a fixed bearer token, or a new one per request from `token_file`."""
    threads = 1 if conns < 2 else 2
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
    if token_file is not None:
        argv += ["-s", str(HERE / "wrk" / "tokens.lua"), url, "--", str(token_file)]
    else:
        argv += ["-s", str(HERE / "wrk" / "report.lua")]
        if token:
            argv += ["-H", f"Authorization: Bearer {token}"]
        argv += [url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)  # noqa: S603
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[:500]} {proc.stdout[-500:]}")
    d = json.loads(line[len("WRKJSON "):])
    dur = d["duration_us"] / 1e6
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    return WrkResult(requests=d["requests"], duration_s=dur, rps=d["requests"] / dur if dur else 0.0,
                     p50_us=d["p50_us"], p90_us=d["p90_us"], p99_us=d["p99_us"],
                     mean_us=d["mean_us"], errors=errors, bytes=d["bytes"])


def spawn_wrk(url: str, *, conns: int, seconds: int, token: str | None = None,
              token_file: Path | None = None) -> subprocess.Popen:
    """wrk in the background (soak): returns the process; its stdout holds the WRKJSON line."""
    threads = 1
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
    if token_file is not None:
        argv += ["-s", str(HERE / "wrk" / "tokens.lua"), url, "--", str(token_file)]
    else:
        argv += ["-s", str(HERE / "wrk" / "report.lua")]
        if token:
            argv += ["-H", f"Authorization: Bearer {token}"]
        argv += [url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,  # noqa: S603
                            preexec_fn=_die_with_parent)  # noqa: PLW1509


def envoy_version() -> str:
    proc = subprocess.run([envoy_bin(), "--version"], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    m = re.search(r"version: (\S+)", proc.stdout + proc.stderr)
    if not m:
        return "unknown"
    parts = m[1].split("/")
    return f"{parts[1]} ({parts[0][:12]}, {'/'.join(parts[2:])})" if len(parts) > 2 else m[1]
