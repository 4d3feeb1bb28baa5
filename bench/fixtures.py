"""What the benchmarks send and what the upstream answers: FHIR bodies built from the demo data,
and tokens signed with the test keys (tests/keys/, test-only).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

from tokens import KEY_FILES, PyMinter, encode, load_private_key

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


SYNTHEA = REPO / "envoy" / "demo-data" / "synthea"
# Clemente Kreiger: the demo patient (envoy/demo-data/README.md); his record is the ~200 KB bundle.
PATIENT = "d78af07c-9cb9-4f31-9b11-c45a28f2eec8"
PATIENT_BUNDLE = SYNTHEA / "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
SCOPE = "launch/patient openid fhirUser patient/*.rs"
ALGORITHMS = ("RS256", "ES256", "EdDSA")

PATIENT_PATH = f"/fhir/Patient/{PATIENT}"


def obs_path(size: str) -> str:
    return f"/fhir/Observation/bench-{size}"


def _rewrite_refs(node, urn_map: dict[str, str]) -> None:
    """urn:uuid references -> Type/id, as a FHIR server serving the record would write them."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in urn_map:
            node["reference"] = urn_map[ref]
        for v in node.values():
            _rewrite_refs(v, urn_map)
    elif isinstance(node, list):
        for v in node:
            _rewrite_refs(v, urn_map)


def _resources(path: Path) -> list[dict]:
    bundle = json.loads(path.read_text(encoding="utf-8-sig"))
    urn_map = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
               for e in bundle["entry"] if str(e.get("fullUrl", "")).startswith("urn:uuid:")}
    out = [e["resource"] for e in bundle["entry"]]
    _rewrite_refs(out, urn_map)
    return out


def _dump(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def observation(size: str, target_bytes: int | None, record: list[dict]) -> dict:
    """An Observation of the demo patient (his first Synthea Observation). With `target_bytes`,
    it carries resources of his own record as `contained` (again, with new ids, once they run
    out) until the body is that big: a realistic FHIR JSON body of a chosen size that passes the
    compartment check of a patient-context read (every contained resource his or unshared)."""
    first = next(r for r in record if r["resourceType"] == "Observation")
    obs = json.loads(json.dumps(first))
    obs["id"] = f"bench-{size}"
    obs["subject"] = {"reference": f"Patient/{PATIENT}"}
    if target_bytes is None:
        return obs
    contained: list[dict] = []
    obs["contained"] = contained
    pool = [r for r in record if r["resourceType"] != "Patient"]
    size_now = len(_dump(obs))
    while True:
        for res in pool:
            item = json.loads(json.dumps(res))
            item["id"] = f"c{len(contained)}"
            n = len(_dump(item)) + 1
            if size_now + n > target_bytes and contained:
                return obs
            contained.append(item)
            size_now += n


# Bodies for the body-size sweep: name -> target size (None: the bare Observation, ~1 KB).
# 1m and 4m are over phi-guard's default `limits.maxResponseBytes` and Envoy's default 1 MiB
# stream buffer: the bench raises both for the pipelines (run.py, configs.py).
SIZES: dict[str, int | None] = {"1k": None, "16k": 16 * 1024, "64k": 64 * 1024,
                                "200k": 200 * 1024, "400k": 400 * 1024,
                                "1m": 1024 * 1024, "4m": 4 * 1024 * 1024}


def write_bodies(out: Path, sizes: list[str] | None = None) -> dict[str, Path]:
    """path -> file: the demo patient, and the Observation of each sweep size (`sizes`: those
    of SIZES only)."""
    out.mkdir(parents=True, exist_ok=True)
    record = _resources(PATIENT_BUNDLE)
    bodies: dict[str, Path] = {}
    patient = next(r for r in record if r["resourceType"] == "Patient")
    f = out / "patient.json"
    f.write_bytes(_dump(patient))
    bodies[PATIENT_PATH] = f
    for name, target in SIZES.items():
        if sizes is not None and name not in sizes:
            continue
        f = out / f"observation-{name}.json"
        body = _dump(observation(name, target, record))
        # Rewrite only what changed, so a build that includes the file is not redone for nothing.
        if not f.exists() or f.read_bytes() != body:
            f.write_bytes(body)
        bodies[obs_path(name)] = f
    return bodies


def mint(alg: str, minter: PyMinter, key, now: int, ttl: int) -> str:
    _, kid = KEY_FILES[alg]
    claims = minter.claims(scope=SCOPE, patient=PATIENT, ttl=ttl, now=now)
    claims["jti"] = str(uuid.uuid4())
    return encode({"alg": alg, "typ": "JWT", "kid": kid}, claims, alg, key)


def write_tokens(out: Path, pool: int, ttl: int = 3 * 3600) -> tuple[dict[str, str], dict[str, Path]]:
    """One token per algorithm (cache-warm runs) and a pool of `pool` distinct tokens per
    algorithm, one per line (cache-miss runs)."""
    out.mkdir(parents=True, exist_ok=True)
    minter = PyMinter()
    now = int(time.time())
    single: dict[str, str] = {}
    pools: dict[str, Path] = {}
    for alg in ALGORITHMS:
        key = load_private_key(KEY_FILES[alg][0])
        single[alg] = mint(alg, minter, key, now, ttl)
        f = out / f"pool-{alg}.txt"
        f.write_text("\n".join(mint(alg, minter, key, now, ttl) for _ in range(pool)) + "\n")
        pools[alg] = f
    return single, pools


def main(argv: list[str] | None = None) -> int:
    """`fixtures.py OUT_DIR [SIZE ...]`: write the bodies the upstream serves (bench/v8-stages
    includes observation-200k.json from here; `make v8-stages` writes it)."""
    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("sizes", nargs="*", metavar="SIZE", help=f"of {', '.join(SIZES)} (default all)")
    a = p.parse_args(argv)
    if unknown := [x for x in a.sizes if x not in SIZES]:
        p.error(f"unknown size(s) {', '.join(unknown)}: known {', '.join(SIZES)}")
    for path, f in write_bodies(a.out, a.sizes or None).items():
        print(f"{f.stat().st_size:9d}  {f}  ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
