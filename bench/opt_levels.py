#!/usr/bin/env python3
"""`make bench-opt`: what the release profile's `opt-level` does to the filter in Envoy.

    bench/opt_levels.py [--levels 3,s,z] [--seconds 3] [--rounds 3] [--conns 2] [--no-build]

Builds the wasm once per level (`CARGO_PROFILE_RELEASE_OPT_LEVEL`, each in its own
`target/bench-opt-<level>/`, Cargo.toml untouched; the level Cargo.toml sets is `make wasm`'s
build), then runs, side by side in one run and
rotating the order every round: per level one Envoy with a warm token cache, one with a cache
that always misses, and measures the Envoy CPU per request. Cache-miss verify cost per algorithm
= miss − warm. Also the ~200 KB body check and the time from start to /ready (V8 compiles the
module at load). Writes bench/OPT_LEVEL.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import configs
import fixtures
import memory
from procs import BenchError, Envoy, envoy_version, request, wrk
from run import MISS_CACHE_ENTRIES, machine_facts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent



def profile_level() -> str:
    """The opt-level Cargo.toml's release profile sets (its build is `make wasm`'s)."""
    import tomllib

    doc = tomllib.loads((REPO / "Cargo.toml").read_text(encoding="utf-8"))
    return str(doc.get("profile", {}).get("release", {}).get("opt-level", 3)).strip('"')


# Builds beside the plain levels: name -> (opt-level, extra `cargo --config` settings). RSA's big
# integer crate is the hot code of RS256 verification.
MIXED = {
    "3+bigint-z": ("3", ['profile.release.package.num-bigint-dig.opt-level="z"']),
}


def spec(name: str) -> tuple[str, list[str]]:
    return MIXED.get(name, (name, []))


def wasm_path(name: str) -> Path:
    level, extra = spec(name)
    if level == profile_level() and not extra:
        return REPO / "target" / "wasm32-wasip1" / "release" / "phi_guard.wasm"
    return REPO / "target" / f"bench-opt-{name}" / "wasm32-wasip1" / "release" / "phi_guard.wasm"


def build(name: str) -> Path:
    level, extra = spec(name)
    argv = ["cargo", "build", "--release", "--target", "wasm32-wasip1", "--lib"]
    for cfg in extra:
        argv += ["--config", cfg]
    env = dict(os.environ)
    if level != profile_level() or extra:
        env.update(CARGO_PROFILE_RELEASE_OPT_LEVEL=level, CARGO_TARGET_DIR=str(REPO / "target" / f"bench-opt-{name}"))
    subprocess.run(argv, cwd=REPO, env=env, check=True)
    return wasm_path(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="3,s,z," + ",".join(MIXED),
                   help="opt-levels (3, 2, s, z, ...) and mixed builds (" + ", ".join(MIXED) + ")")
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--conns", type=int, default=2)
    p.add_argument("--pool", type=int, default=1024)
    p.add_argument("--no-build", action="store_true", help="use wasm files already built")
    p.add_argument("--out", default=str(REPO / "bench" / "OPT_LEVEL.md"))
    a = p.parse_args(argv)
    levels = [x.strip() for x in a.levels.split(",") if x.strip()]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = REPO / ".run" / "bench" / f"opt-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)

    wasm = {}
    for lvl in levels:
        path = wasm_path(lvl)
        if not a.no_build:
            print(f"building opt-level={lvl}", flush=True)
            path = build(lvl)
        if not path.exists():
            raise SystemExit(f"{path} missing: run without --no-build")
        wasm[lvl] = path

    bodies = fixtures.write_bodies(workdir / "bodies", ["200k"])  # the Patient and the ~200 KB Observation
    tokens, pools = fixtures.write_tokens(workdir / "tokens", a.pool)
    miss = json.loads((REPO / "policies" / "smart-patient-app.json").read_text())
    miss["tokenCache"] = {"maxEntries": MISS_CACHE_ENTRIES}
    miss_policy = workdir / "policy-cache-miss.json"
    miss_policy.write_text(json.dumps(miss))
    default_policy = REPO / "policies" / "smart-patient-app.json"

    envoys: dict[str, Envoy] = {}
    ready: dict[str, list[float]] = {lvl: [] for lvl in levels}
    records: list[dict] = []
    upstream = Envoy("upstream", workdir)
    try:
        upstream.start(lambda lp, ap: configs.upstream(listen_port=lp, admin_port=ap, bodies=bodies), concurrency=1)
        for lvl in levels:
            for kind, policy in (("warm", default_policy), ("miss", miss_policy)):
                name = f"{kind}-{lvl}"
                e = Envoy(name, workdir)
                e.start(lambda lp, ap, policy=policy, lvl=lvl: configs.proxy(
                    "phi-guard", listen_port=lp, admin_port=ap, upstream_port=upstream.listen_port,
                    policy=policy, wasm=wasm[lvl]))
                ready[lvl].append(e.ready_after_s)
                envoys[name] = e
                for alg in fixtures.ALGORITHMS:
                    s, body = request(e.base_url + fixtures.PATIENT_PATH, {"Authorization": f"Bearer {tokens[alg]}"})
                    if s != 200:
                        raise BenchError(f"{name} {alg}: {s} {body[:200]!r}")
                print(f"{name}: ready after {e.ready_after_s * 1000:.0f} ms", flush=True)
        for rnd in range(a.rounds):
            order = levels[rnd % len(levels):] + levels[:rnd % len(levels)]
            for lvl in order:
                cells = []
                for alg in fixtures.ALGORITHMS:
                    cells += [("warm", alg, fixtures.PATIENT_PATH), ("miss", alg, fixtures.PATIENT_PATH)]
                cells += [("warm", "RS256", fixtures.obs_path("200k"))]
                for kind, alg, path in cells:
                    e = envoys[f"{kind}-{lvl}"]
                    c0 = e.cpu_ns()
                    if kind == "miss":
                        r = wrk(e.base_url + path, conns=a.conns, seconds=a.seconds, token_file=pools[alg])
                    else:
                        r = wrk(e.base_url + path, conns=a.conns, seconds=a.seconds, token=tokens[alg])
                    cpu = (e.cpu_ns() - c0) / 1000 / max(r.requests, 1)
                    rec = {"round": rnd, "level": lvl, "kind": kind, "alg": alg, "path": path, "rps": r.rps,
                           "p50_us": r.p50_us, "cpu_us_per_req": cpu, "errors": r.errors, "requests": r.requests}
                    records.append(rec)
                    print(f"  r{rnd} opt-level={lvl:<2} {kind:<5} {alg:<6} {path[-12:]:<12} {r.rps:8.0f} rps  "
                          f"cpu {cpu:7.1f} us/req{'  ERRORS' if r.errors else ''}", flush=True)
        mem = {name: memory.wasm_memories(e.pid) for name, e in envoys.items()}
    finally:
        for e in list(envoys.values()) + [upstream]:
            e.stop()

    (workdir / "results.json").write_text(json.dumps({"records": records, "ready": ready, "memory": mem}, indent=1))
    meta = machine_facts(argparse.Namespace(wasm=wasm[levels[0]], quick=False, seconds=a.seconds, rounds=a.rounds,
                                            conns=[a.conns], soak=0, soak_conns=0, sweep_conns=0, pool=a.pool,
                                            upstream_workers=1))

    def cpu(lvl, kind, alg, path=fixtures.PATIENT_PATH):
        per_round = [r["cpu_us_per_req"] for r in records if (r["level"], r["kind"], r["alg"], r["path"]) == (lvl, kind, alg, path)]
        return statistics.median(per_round) if per_round else None

    def verify_cost(lvl, alg):
        # Per round miss − warm (adjacent runs), then the median.
        diffs = []
        for rnd in range(a.rounds):
            m = [r["cpu_us_per_req"] for r in records if (r["round"], r["level"], r["kind"], r["alg"], r["path"]) == (rnd, lvl, "miss", alg, fixtures.PATIENT_PATH)]
            w = [r["cpu_us_per_req"] for r in records if (r["round"], r["level"], r["kind"], r["alg"], r["path"]) == (rnd, lvl, "warm", alg, fixtures.PATIENT_PATH)]
            if m and w:
                diffs.append(m[0] - w[0])
        return statistics.median(diffs) if diffs else None

    L = ["# Release `opt-level` for the wasm filter", "",
         f"Generated by `make bench-opt` on {meta['date']}: {meta['nproc']} CPUs ({meta['cpu']}), shared; Envoy {envoy_version()}, "
         f"V8. {a.rounds} rounds (order of the levels rotated each round), {a.seconds} s wrk runs with {a.conns} connections; "
         "figures are medians over rounds of the Envoy CPU time per request (all threads of the proxy, from /proc). "
         "Verify cost = CPU/request with a new token on every request (cache of "
         f"{MISS_CACHE_ENTRIES}, pool of {a.pool} tokens) minus CPU/request with the same token. "
         "The rest of the release profile is unchanged (`lto = true`, `codegen-units = 1`, `panic = \"abort\"`, `strip = true`). "
         + " ".join(f"`{k}`: opt-level {v[0]} with " + ", ".join(f"`{c}`" for c in v[1]) + "." for k, v in MIXED.items()),
         "",
         "| build | wasm KiB | start → /ready ms | RS256 verify µs | ES256 verify µs | EdDSA verify µs | cache-hit request µs CPU | ~200 KB body check request µs CPU | linear memory per worker VM MiB |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lvl in levels:
        ws = wasm[lvl].stat().st_size / 1024
        rd = statistics.median(ready[lvl]) * 1000
        v = [verify_cost(lvl, alg) for alg in fixtures.ALGORITHMS]
        warm = statistics.median([x for x in (cpu(lvl, "warm", alg) for alg in fixtures.ALGORITHMS) if x is not None])
        body = cpu(lvl, "warm", "RS256", fixtures.obs_path("200k"))
        lin = max((m["rw_kib"] for m in mem.get(f"miss-{lvl}", [])), default=0) / 1024
        cells = [f"{x:.0f}" if x is not None else "–" for x in [*v, warm, body]]
        L.append(f"| {lvl} | {ws:.0f} | {rd:.0f} | " + " | ".join(cells) + f" | {lin:.2f} |")
    errors = sum(r["errors"] for r in records)
    if errors:
        L += ["", f"**Warning: {errors} failed requests during the runs.**"]
    L.append("")
    Path(a.out).write_text("\n".join(L) + "\n", encoding="utf-8")
    print("\n".join(L))
    print(f"wrote {a.out} (raw: {workdir / 'results.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
