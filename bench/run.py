#!/usr/bin/env python3
"""`make bench`: phi-guard against Envoy without a filter and against Envoy's native
`jwt_authn` + `rbac`, side by side, in one run on one machine, reported as ratios.

    bench/run.py [--quick] [--out FILE] [--pipeline NAME[=POLICY] ...] [--wasm FILE]
                 [--seconds N] [--rounds N] [--conns 1,2,32] [--soak N]
                 [--sizes 1k,200k,4m] [--sweep-only]

One Envoy per variant (2 workers each), all behind the same fixed-response upstream (an Envoy
answering from files). Each measurement is one wrk run; runs alternate with the no-filter
baseline (B X Y B X Y B ..., order reversed every other round), and every figure is reported
relative to the baselines measured next to it, because absolute numbers drift on a shared
machine. Besides wrk's rps and latency, each run reads the CPU time the Envoy under test used
(/proc/<pid>/task/*/schedstat) and divides it by the requests served: that per-request cost is
what the filter adds, and it is much less sensitive to other load than throughput.

Writes the raw measurements as JSON next to the logs (.run/bench/<stamp>/) and the report
(bench/RESULTS.md; quick runs: .run/bench/RESULTS.quick.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import configs
import fixtures
import memory
import report
from envoy_config import DEMO_AUDIT_KEY, DEMO_HMAC_KEY
from procs import BenchError, Envoy, envoy_version, request, spawn_wrk, wrk

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The full pipelines to measure on Observation reads. Each is a policy file; `--pipeline NAME`
# selects them (`--pipeline NAME=FILE` adds one).
PIPELINES: dict[str, tuple[Path, str]] = {
    "full": (REPO / "policies" / "smart-patient-app.json",
             "auth + scope + compartment, then the body: patient binding, the `patient-app` "
             "minimization profile, Content-Digest, audit event"),
    "safe-harbor": (REPO / "policies" / "smart-patient-app.json",
                    "the `full` pipeline with the route's profiles replaced by the `safe-harbor` preset: its field "
                    "rules, then de-identification (every free-text value scrubbed, record keys pseudonymized)"),
}
# Pipelines measured when none is named.
DEFAULT_PIPELINES = ("full", "safe-harbor")


def safe_harbor_profiles(doc: dict) -> None:
    """Every minimizing route of `doc` serves the `safe-harbor` preset."""
    for route in doc["routes"]:
        if "minimize" in route:
            route["minimize"] = {"profiles": [{"name": "safe-harbor", "preset": "safe-harbor"}]}


# Edits a known pipeline makes to its policy file.
PIPELINE_EDITS = {"safe-harbor": safe_harbor_profiles}
CLI = Path(os.environ.get("PHI_GUARD_CLI") or REPO / "target" / "release" / "phi-guard")
MISS_CACHE_ENTRIES = 16  # phi-guard-miss: a cache far smaller than the token pool
# The Observation sizes of the throughput matrix (besides the Patient read).
MATRIX_SIZES = ("1k", "200k")
# The room a policy keeps above `maxResponseBytes` for one upstream read (src/policy/compile.rs
# ENVOY_READ_HEADROOM_BYTES).
READ_HEADROOM_BYTES = 64 * 1024


def pipeline_policy(policy: Path, out: Path, name: str = "") -> Path:
    """A pipeline's policy with the buffer limits the size sweep needs: Envoy's stream buffer as
    the bench configures it (configs.BUFFER_LIMIT_BYTES) and `maxResponseBytes` at the most that
    leaves room for one upstream read (policies/README.md, Limits), so the largest body is
    buffered and checked rather than refused as `response_too_large`."""
    doc = json.loads(policy.read_text(encoding="utf-8"))
    if name in PIPELINE_EDITS:
        PIPELINE_EDITS[name](doc)
    limits = doc.setdefault("limits", {})
    limits["envoyBufferLimitBytes"] = configs.BUFFER_LIMIT_BYTES
    limits["maxResponseBytes"] = configs.BUFFER_LIMIT_BYTES - READ_HEADROOM_BYTES
    out.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return out


@dataclass(frozen=True)
class Cell:
    """One thing wrk measures: a proxy, a path, a token mode."""

    proxy: str
    path: str
    alg: str | None = "RS256"
    pool: bool = False  # a new token on every request

    @property
    def id(self) -> str:
        return f"{self.proxy}|{self.alg}|{self.path}"


def proxies(pipelines: dict[str, Path], workdir: Path, noop: bool,
            sweep_only: bool = False) -> dict[str, tuple[str, Path | None, str]]:
    """name -> (configs.proxy kind, policy, description). `sweep_only`: the no-filter proxy and
    the pipelines only."""
    # Auth + scope alone: the demo policy without its minimization profiles, so a Patient read
    # streams its body through (the body work is what the pipelines measure).
    auth = json.loads((REPO / "policies" / "smart-patient-app.json").read_text())
    for route in auth["routes"]:
        route.pop("minimize", None)
    auth_policy = workdir / "policy-auth-only.json"
    auth_policy.write_text(json.dumps(auth, indent=2))
    # The miss variant measures verification itself: no cross-worker attestations either.
    miss = {**auth, "tokenCache": {"maxEntries": MISS_CACHE_ENTRIES, "sharedEntries": 0}}
    # Audit lines written to Envoy's log in groups (at most 1 s held), as the anchor's access
    # log is buffered (Envoy flushes it every second).
    batch = json.loads(json.dumps(auth))
    batch["audit"] = {**batch.get("audit", {}), "envoyLogFlushMs": 1000}
    batch_policy = workdir / "policy-auth-batched-log.json"
    batch_policy.write_text(json.dumps(batch, indent=2))
    miss_policy = workdir / "policy-cache-miss.json"
    miss_policy.write_text(json.dumps(miss, indent=2))
    out = {
        "none": ("none", None, "Envoy, no filter (baseline)"),
        "native": ("native", None, "Envoy jwt_authn + rbac, no JWT cache"),
        "native-cache": ("native-cache", None, "Envoy jwt_authn (jwt_cache_config 1024) + rbac"),
        "native-audit": ("native-audit", None, "the fair native anchor: jwt_authn (cache 1024) + rbac + a JSON "
                         "file access log of the audit fields (bench/configs.py AUDIT_LOG_FIELDS)"),
        "phi-guard": ("phi-guard", auth_policy,
                      "phi-guard auth + scope (the demo policy without minimization), verified-token cache warm"),
        "phi-guard-batch": ("phi-guard", batch_policy,
                            "phi-guard auth + scope, cache warm, audit lines written to Envoy's log in groups "
                            "(audit.envoyLogFlushMs 1000, as the anchor's access log is buffered)"),
        "phi-guard-miss": ("phi-guard", miss_policy,
                           f"phi-guard auth + scope, cache miss (cache {MISS_CACHE_ENTRIES}, new token each request)"),
    }
    if noop:
        out["wasm-noop"] = ("wasm-noop", None, "a Rust proxy-wasm filter that does nothing (bench/noop-filter): "
                            "the floor of any wasm filter")
    if sweep_only:
        out = {"none": out["none"]}
    for name, policy in pipelines.items():
        bench_policy = pipeline_policy(policy, workdir / f"policy-pipeline-{name}.json", name)
        out[f"pipeline-{name}"] = ("phi-guard", bench_policy, f"phi-guard full pipeline `{name}`: "
                                   + (PIPELINES[name][1] if name in PIPELINES else str(policy))
                                   + f" (`limits.maxResponseBytes` {bench_policy_limit()})")
    return out


def bench_policy_limit() -> str:
    return f"{(configs.BUFFER_LIMIT_BYTES - READ_HEADROOM_BYTES) // 1024} KiB, Envoy buffer {configs.BUFFER_LIMIT_BYTES // (1 << 20)} MiB"


def groups(pipelines: list[str], noop: bool) -> dict[str, list[list[Cell]]]:
    """Baseline group -> chunks of cells; the group's baseline is `none` on the same path and
    runs before and after every chunk."""
    p = fixtures.PATIENT_PATH
    out: dict[str, list[list[Cell]]] = {"patient": []}
    for alg in fixtures.ALGORITHMS:
        out["patient"].append([Cell("native-cache", p, alg), Cell("native-audit", p, alg), Cell("phi-guard", p, alg),
                               Cell("phi-guard-batch", p, alg)]
                              + ([Cell("wasm-noop", p, alg)] if noop and alg == "RS256" else []))
        out["patient"].append([Cell("native", p, alg), Cell("phi-guard-miss", p, alg, pool=True)])
    for size in MATRIX_SIZES:
        path = fixtures.obs_path(size)
        cells = [Cell("native-cache", path)] + [Cell(f"pipeline-{n}", path) for n in pipelines]
        out[f"obs-{size}"] = [cells[i:i + 2] for i in range(0, len(cells), 2)]
    return out


def sequence(chunks: list[list[Cell]], baseline: Cell, reverse: bool) -> list[Cell]:
    seq = [baseline]
    for chunk in chunks:
        seq += chunk + [baseline]
    return list(reversed(seq)) if reverse else seq


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.workdir = REPO / ".run" / "bench" / stamp
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.envoys: dict[str, Envoy] = {}
        self.upstream: Envoy | None = None
        self.records: list[dict] = []
        self.meta: dict = {}
        self.log_file = open(self.workdir / "bench.log", "a", encoding="utf-8")  # noqa: SIM115

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        a = self.args
        self.bodies = fixtures.write_bodies(self.workdir / "bodies")
        self._released: dict[tuple[Path, str, str], bytes] = {}
        self.log(f"minting tokens ({a.pool} per algorithm for the cache-miss pool)")
        self.tokens, self.pools = fixtures.write_tokens(self.workdir / "tokens", a.pool)
        self.no_scope_token = self._no_scope_token()
        self.upstream = Envoy("upstream", self.workdir)
        self.upstream.start(lambda lp, ap: configs.upstream(listen_port=lp, admin_port=ap, bodies=self.bodies),
                            concurrency=a.upstream_workers)
        self.proxy_defs = proxies(self.pipelines, self.workdir, self.noop, a.sweep_only)
        self.first: dict[str, list[dict]] = {}
        for name in self.proxy_defs:
            self.envoys[name] = self._start_proxy(name, name)
        for name in ("none", "phi-guard") + tuple(f"pipeline-{n}" for n in self.pipelines):
            if name not in self.proxy_defs:
                continue
            for i in range(1, a.first_repeats):
                e = self._start_proxy(name, f"{name}-restart{i}")
                e.stop()
        self.preflight()

    def _no_scope_token(self) -> str:
        from tokens import PyMinter

        m = PyMinter()
        return m.token(m.claims(scope="openid fhirUser", patient=fixtures.PATIENT), alg="RS256")

    def _representative(self, name: str) -> tuple[str, dict[str, str]]:
        path = fixtures.obs_path("1k") if name.startswith("pipeline-") else fixtures.PATIENT_PATH
        return path, {"Authorization": f"Bearer {self.tokens['RS256']}"}

    def _start_proxy(self, name: str, instance: str) -> Envoy:
        kind, policy, _ = self.proxy_defs[name]
        up = self.upstream.listen_port
        wasm = self.args.noop_wasm if kind == "wasm-noop" else self.args.wasm
        env = Envoy(instance, self.workdir)
        access_log = self.workdir / f"{instance}.access.jsonl"
        env.start(lambda lp, ap: configs.proxy(kind, listen_port=lp, admin_port=ap, upstream_port=up,
                                               policy=policy, wasm=wasm, access_log=access_log))
        # First request right after /ready: token verification, VM warm-up, first upstream
        # connection. Then a second one for comparison.
        path, headers = self._representative(name)
        t0 = time.perf_counter()
        s1, _ = request(env.base_url + path, headers)
        first_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        s2, _ = request(env.base_url + path, headers)
        second_ms = (time.perf_counter() - t0) * 1000
        if (s1, s2) != (200, 200):
            raise BenchError(f"{instance}: first requests answered {s1}, {s2}")
        rec = {"ready_s": env.ready_after_s, "first_ms": first_ms, "second_ms": second_ms,
               "status": env.status(), "wasm": memory.wasm_memories(env.pid)}
        self.first.setdefault(name, []).append(rec)
        self.log(f"{instance}: ready after {env.ready_after_s * 1000:.0f} ms, first request "
                 f"{first_ms:.1f} ms, second {second_ms:.1f} ms, RSS {rec['status'].get('VmRSS', 0) / 1024:.1f} MiB")
        return env

    def released(self, policy: Path, path: str, token: str) -> bytes:
        """The body phi-guard releases for this request and the upstream's body, as
        `phi-guard explain` computes it with the same core (minimization may rewrite it)."""
        key = (policy, path, token)
        if key not in self._released:
            argv = [str(CLI), "explain", str(policy), "--path", path, "--token", token,
                    "--upstream-body", str(self.bodies[path]), "--upstream-content-type", "application/fhir+json",
                    "--hmac-key-env", "PHI_GUARD_HMAC_KEY", "--json"]
            env = {**os.environ, "PHI_GUARD_AUDIT_KEY": DEMO_AUDIT_KEY, "PHI_GUARD_HMAC_KEY": DEMO_HMAC_KEY}
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            if proc.returncode != 0:
                raise BenchError(f"explain {path}: exit {proc.returncode}: {proc.stdout[-300:]} {proc.stderr[-300:]}")
            out = json.loads(proc.stdout)
            self._released[key] = out["body"].encode()
        return self._released[key]

    def preflight(self) -> None:
        """Every cell answers 200 with exactly the upstream's body (through phi-guard: exactly the
        body `explain` says the filter releases), and refusals are refusals: a benchmark of a proxy
        answering 401 fast would be worthless."""
        cells = {c.id: c for chunks in self.groups.values() for chunk in chunks for c in chunk}
        for size in self.args.sizes:
            for name in ["none"] + [f"pipeline-{n}" for n in self.pipelines]:
                c = Cell(name, fixtures.obs_path(size))
                cells[c.id] = c
        for c in cells.values():
            token = self.tokens[c.alg] if not c.pool else self.pools[c.alg].read_text().split("\n", 1)[0]
            status, body = request(self.envoys[c.proxy].base_url + c.path, {"Authorization": f"Bearer {token}"})
            kind, policy, _ = self.proxy_defs[c.proxy]
            want = self.released(policy, c.path, token) if kind == "phi-guard" and policy else self.bodies[c.path].read_bytes()
            if status != 200 or body != want:
                raise BenchError(f"preflight {c.id}: {status}, body {'differs' if body != want else 'ok'}: {body[:200]!r}")
        for name in self.proxy_defs:
            if name in ("none", "wasm-noop"):
                continue
            url = self.envoys[name].base_url + fixtures.PATIENT_PATH
            s_none, _ = request(url)
            s_scope, _ = request(url, {"Authorization": f"Bearer {self.no_scope_token}"})
            if s_none != 401 or s_scope != 403:
                raise BenchError(f"preflight {name}: no token -> {s_none}, token without scope -> {s_scope} (want 401, 403)")
        self.log(f"preflight: {len(cells)} cells answer 200 with the upstream body (as phi-guard releases it); "
                 "every filter refuses (401/403)")

    def run_v8_stages(self) -> dict | None:
        """The core's warm-request stages and each signature algorithm timed in V8 by Node.js
        (bench/v8_stages.mjs over bench/v8-stages), after the proxies have stopped."""
        wasm = self.args.v8_stages_wasm
        if wasm is None or not wasm.exists():
            self.log("v8 stages: no bench/v8-stages build, skipped")
            return None
        budget = "100" if self.args.quick else "400"
        proc = subprocess.run(["node", str(HERE / "v8_stages.mjs"), str(wasm), "--json"], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "V8_STAGES_BUDGET_MS": budget})
        if proc.returncode != 0:
            raise BenchError(f"v8 stages: exit {proc.returncode}: {proc.stderr[-500:]}")
        out = json.loads(proc.stdout)
        for r in out["results"]:
            self.log(f"  v8 {r['us']:9.2f} us  {r['stage']}")
        return out

    # ------------------------------------------------------------------ measuring
    def measure(self, cell: Cell, conns: int, seconds: int, **tags) -> dict:
        env = self.envoys[cell.proxy]
        url = env.base_url + cell.path
        hits0 = self._cache_stats(env) if cell.proxy.startswith(("phi-guard", "pipeline")) else None
        cpu0, up0 = env.cpu_ns(), self.upstream.cpu_ns()
        if cell.pool:
            r = wrk(url, conns=conns, seconds=seconds, token_file=self.pools[cell.alg])
        else:
            r = wrk(url, conns=conns, seconds=seconds, token=self.tokens[cell.alg] if cell.alg else None)
        cpu1, up1 = env.cpu_ns(), self.upstream.cpu_ns()
        rec = {"cell": cell.id, "proxy": cell.proxy, "alg": cell.alg, "path": cell.path, "pool": cell.pool,
               "conns": conns, **asdict(r),
               "cpu_us_per_req": (cpu1 - cpu0) / 1000 / max(r.requests, 1),
               "upstream_cpu_us_per_req": (up1 - up0) / 1000 / max(r.requests, 1), **tags}
        if hits0 is not None:
            h1 = self._cache_stats(env)
            rec["cache_hits"] = h1[0] - hits0[0]
            rec["cache_misses"] = h1[1] - hits0[1]
        self.records.append(rec)
        flag = f"  ERRORS {r.errors}" if r.errors else ""
        self.log(f"  c={conns:<3} {cell.proxy:<16} {cell.alg or '-':<6} {cell.path[-16:]:<16} "
                 f"{r.rps:9.0f} rps  p50 {r.p50_us:6d} us  p99 {r.p99_us:6d} us  "
                 f"cpu {rec['cpu_us_per_req']:7.1f} us/req{flag}")
        return rec

    def _cache_stats(self, env: Envoy) -> tuple[int, int]:
        s = env.stats("token_cache")
        hits = sum(v for k, v in s.items() if k.endswith("token_cache_hits"))
        misses = sum(v for k, v in s.items() if k.endswith("token_cache_misses"))
        return hits, misses

    def run_matrix(self) -> None:
        a = self.args
        if not self.groups:
            return
        total = sum(len(sequence(ch, Cell("none", "/"), False)) for ch in self.groups.values())
        self.log(f"matrix: {total} runs x {len(a.conns)} connection counts x {a.rounds} rounds, {a.seconds} s each")
        for rnd in range(a.rounds):
            for conns in a.conns:
                for group, chunks in self.groups.items():
                    path = chunks[0][0].path
                    seq = sequence(chunks, Cell("none", path), reverse=rnd % 2 == 1)
                    for pos, cell in enumerate(seq):
                        self.measure(cell, conns, a.seconds, kind="matrix", round=rnd, group=group, pos=pos)

    def run_sweep(self) -> None:
        """Per pipeline: no filter vs the pipeline at each body size, adjacent, one connection."""
        a = self.args
        for name in self.pipelines:
            for rnd in range(a.rounds):
                seq = []
                for size in a.sizes:
                    path = fixtures.obs_path(size)
                    seq += [Cell("none", path), Cell(f"pipeline-{name}", path)]
                if rnd % 2 == 1:
                    seq.reverse()
                for pos, cell in enumerate(seq):
                    size = next(s for s in a.sizes if fixtures.obs_path(s) == cell.path)
                    self.measure(cell, a.sweep_conns, a.seconds, kind="sweep", round=rnd, pipeline=name,
                                 size=size, body_bytes=self.bodies[cell.path].stat().st_size, pos=pos)

    def sweep_memory(self) -> dict:
        """Each wasm proxy's linear memories right after the sweep (a wasm memory never shrinks:
        the pipelines' have grown to hold the largest body), and that body's size."""
        out = {}
        for name, env in self.envoys.items():
            mems = memory.wasm_memories(env.pid)
            if mems:
                out[name] = {"wasm": mems}
                self.log(f"  after the sweep: {name:<18} wasm {memory.summary(mems)}")
        largest = max((self.bodies[fixtures.obs_path(s)].stat().st_size for s in self.args.sizes), default=0)
        for name in self.pipelines:
            if f"pipeline-{name}" in out:
                out[f"pipeline-{name}"]["largest_body"] = largest
        return out

    def run_soak(self) -> dict:
        """Every proxy under load at once for `--soak` seconds; then RSS and linear memory."""
        a = self.args
        self.log(f"soak: every proxy under load at once for {a.soak} s")
        procs = {}
        for name, env in self.envoys.items():
            path = fixtures.obs_path("200k") if name.startswith("pipeline-") else fixtures.PATIENT_PATH
            if name == "phi-guard-miss":
                procs[name] = spawn_wrk(env.base_url + path, conns=a.soak_conns, seconds=a.soak,
                                        token_file=self.pools["RS256"])
            else:
                procs[name] = spawn_wrk(env.base_url + path, conns=a.soak_conns, seconds=a.soak,
                                        token=self.tokens["RS256"])
        out = {}
        for name, p in procs.items():
            stdout, _ = p.communicate(timeout=a.soak + 60)
            line = next((ln for ln in stdout.splitlines() if ln.startswith("WRKJSON ")), "WRKJSON {}")
            out[name] = {"wrk": json.loads(line[len("WRKJSON "):])}
        time.sleep(2)  # at rest
        for name, env in self.envoys.items():
            out[name]["status"] = env.status()
            out[name]["wasm"] = memory.wasm_memories(env.pid)
            out[name]["smaps_rollup"] = memory.rollup(env.pid)
            w = out[name]["wrk"]
            self.log(f"  {name:<18} {w.get('requests', 0):8d} requests  RSS {out[name]['status'].get('VmRSS', 0) / 1024:.1f} MiB"
                     f"  peak {out[name]['status'].get('VmHWM', 0) / 1024:.1f} MiB  wasm {memory.summary(out[name]['wasm'])}")
        return out

    # ------------------------------------------------------------------ whole run
    def run(self) -> Path:
        a = self.args
        t_start = time.monotonic()
        self.pipelines = {n: p for n, p in a.pipelines}
        self.noop = a.noop_wasm is not None and a.noop_wasm.exists()
        if a.noop_wasm is not None and not self.noop:
            print(f"bench: {a.noop_wasm} does not exist: no wasm-noop variant", file=sys.stderr)
        self.groups = groups(list(self.pipelines), self.noop) if not a.sweep_only else {}
        self.meta = machine_facts(a)
        self.log(f"phi-guard benchmark ({'quick' if a.quick else 'full'}), logs in {self.workdir}")
        try:
            self.setup()
            self.run_matrix()
            # Signature verifications per Envoy: the warm proxy saw one token per algorithm and
            # the no-scope token of the preflight, on both workers and many connections.
            token_stats = {name: self.envoys[name].stats("phi_guard.token_") for name in ("phi-guard", "phi-guard-miss")
                           if name in self.envoys}
            self.run_sweep()
            after_sweep = self.sweep_memory()
            soak = self.run_soak() if not a.sweep_only else {}
            idle = {name: {"status": e.status()} for name, e in self.envoys.items()}
        finally:
            for e in list(self.envoys.values()) + ([self.upstream] if self.upstream else []):
                e.stop()
        stages = self.run_v8_stages()
        self.meta["elapsed_s"] = time.monotonic() - t_start
        results = {"v8_stages": stages, "token_stats": token_stats, "distinct_warm_tokens": len(fixtures.ALGORITHMS) + 1, "meta": self.meta, "proxies": {k: v[2] for k, v in self.proxy_defs.items()},
                   "pipelines": {k: str(v) for k, v in self.pipelines.items()},
                   "bodies": {p: f.stat().st_size for p, f in self.bodies.items()},
                   "first": self.first, "records": self.records, "soak": soak, "after_sweep": after_sweep, "idle": idle}
        raw = self.workdir / "results.json"
        raw.write_text(json.dumps(results, indent=1))
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.render(results), encoding="utf-8")
        self.log(f"done in {self.meta['elapsed_s']:.0f} s: {out} (raw: {raw})")
        return out


def machine_facts(a: argparse.Namespace) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    wasm = Path(a.wasm)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if a.quick else "full",
        "nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(), "envoy": envoy_version(),
        "wrk": " ".join(subprocess.run(["wrk", "--version"], capture_output=True, text=True,
                                       check=False).stdout.split()[:2]),
        "wasm": str(wasm.relative_to(REPO)) if wasm.is_relative_to(REPO) else str(wasm),
        "wasm_bytes": wasm.stat().st_size,
        "wasm_sha256": hashlib.sha256(wasm.read_bytes()).hexdigest()[:16],
        "commit": commit + ("+dirty" if dirty else ""),
        "seconds": a.seconds, "rounds": a.rounds, "conns": a.conns, "soak_s": a.soak,
        "sizes": a.sizes, "sweep_only": a.sweep_only, "buffer_limit_bytes": configs.BUFFER_LIMIT_BYTES,
        "soak_conns": a.soak_conns, "sweep_conns": a.sweep_conns, "pool": a.pool,
        "upstream_workers": a.upstream_workers, "workers": 2,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1",
                   help="about two minutes: 1 s runs, one round, connections 1 and 32, short soak (also BENCH_QUICK=1)")
    p.add_argument("--out", help="report file (default bench/RESULTS.md; quick: .run/bench/RESULTS.quick.md)")
    p.add_argument("--pipeline", action="append", default=[], metavar="NAME[=POLICY]",
                   help=f"full pipeline(s) to measure (known: {', '.join(PIPELINES)}; default check)")
    p.add_argument("--wasm", type=Path, default=Path(os.environ.get("PHI_GUARD_WASM")
                                                      or REPO / "target/wasm32-wasip1/release/phi_guard.wasm"))
    p.add_argument("--noop-wasm", type=Path, help="the no-op proxy-wasm filter (bench/noop-filter) for the "
                   "wasm-noop variant; `make bench` builds it")
    p.add_argument("--v8-stages-wasm", type=Path, help="bench/v8-stages built for wasm32-wasip1: the core's "
                   "stages timed in V8 by Node.js")
    p.add_argument("--seconds", type=int, help="length of one wrk run (full 3, quick 1)")
    p.add_argument("--rounds", type=int, help="rounds of the whole matrix (full 2, quick 1)")
    p.add_argument("--conns", help="wrk connection counts (full 1,2,32; quick 1,32)")
    p.add_argument("--soak", type=int, help="soak seconds (full 60, quick 5)")
    p.add_argument("--soak-conns", type=int, default=4)
    p.add_argument("--sweep-conns", type=int, default=1)
    p.add_argument("--pool", type=int, default=1024, help="distinct tokens per algorithm for the cache-miss runs")
    p.add_argument("--first-repeats", type=int, help="fresh starts for first-request latency (full 3, quick 1)")
    p.add_argument("--upstream-workers", type=int, default=1)
    p.add_argument("--sizes", help=f"body sizes of the size sweep, comma-separated (default all: {','.join(fixtures.SIZES)})")
    p.add_argument("--sweep-only", action="store_true",
                   help="only the body-size sweep: start the no-filter proxy and the pipelines, skip the throughput "
                   "matrix and the soak (the V8 stages still run when --v8-stages-wasm is given)")
    a = p.parse_args(argv)
    a.sizes = [x.strip() for x in (a.sizes or ",".join(fixtures.SIZES)).split(",") if x.strip()]
    if unknown := [x for x in a.sizes if x not in fixtures.SIZES]:
        p.error(f"--sizes: unknown {', '.join(unknown)} (known: {', '.join(fixtures.SIZES)})")
    a.seconds = a.seconds or (1 if a.quick else 3)
    a.rounds = a.rounds or (1 if a.quick else 2)
    a.soak = a.soak or (5 if a.quick else 60)
    a.first_repeats = a.first_repeats or (1 if a.quick else 3)
    a.conns = [int(c) for c in str(a.conns or ("1,32" if a.quick else "1,2,32")).split(",") if c.strip()]
    a.out = a.out or str(REPO / (".run/bench/RESULTS.quick.md" if a.quick else "bench/RESULTS.md"))
    env_pipes = os.environ.get("BENCH_PIPELINES", "").split()
    chosen = []
    for item in (a.pipeline or env_pipes or list(DEFAULT_PIPELINES)):
        name, _, policy = item.partition("=")
        if policy:
            chosen.append((name, Path(policy).resolve()))
        elif name in PIPELINES:
            chosen.append((name, PIPELINES[name][0]))
        else:
            p.error(f"unknown pipeline {name!r}: known {', '.join(PIPELINES)}, or NAME=POLICY")
    a.pipelines = chosen
    if not a.wasm.exists():
        p.error(f"{a.wasm} does not exist: run `make wasm`")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        Bench(args).run()
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
