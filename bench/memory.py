"""Memory readings of a running Envoy from /proc: V8 wasm linear memories and smaps totals.

V8 reserves 8 GiB of address space per wasm memory (32-bit memories, guard region included)
and makes only the current linear memory read-write. In /proc/<pid>/smaps that is one anonymous
rw-p mapping directly followed by the PROT_NONE rest of the reservation: its size is the module's
`memory.size` and its Rss the pages actually touched. With 2 workers Envoy 1.40 keeps 4 VMs per
wasm filter: one per worker thread, and two that serve no requests.
"""

from __future__ import annotations

from procs import smaps

RESERVATION_MIN = 4 << 30  # bytes: smaller rw/--- pairs are not wasm memories


def wasm_memories(pid: int) -> list[dict]:
    """One entry per wasm linear memory: {"rw_kib": size, "rss_kib": resident}."""
    maps = smaps(pid)
    out = []
    for cur, nxt in zip(maps, maps[1:]):
        if (cur["perms"].startswith("rw") and not cur["name"] and nxt["perms"] == "---p"
                and nxt["start"] == cur["end"] and nxt["end"] - cur["start"] >= RESERVATION_MIN):
            out.append({"rw_kib": (cur["end"] - cur["start"]) // 1024, "rss_kib": cur.get("Rss", 0)})
    return out


def rollup(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in KiB (Rss, Pss, Anonymous, ...)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0])
    except OSError:
        pass
    return out


def summary(mems: list[dict]) -> str:
    if not mems:
        return "–"
    return ", ".join(f"{m['rw_kib'] / 1024:.2f} / {m['rss_kib'] / 1024:.2f}" for m in mems)
