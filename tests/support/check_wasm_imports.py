#!/usr/bin/env python3
"""Check that a proxy-wasm module only imports what Envoy's V8 host provides.

    check_wasm_imports.py target/wasm32-wasip1/release/phi_guard.wasm [--envoy PATH]

Allowed: function imports from `env` whose name starts with `proxy_` (the proxy-wasm ABI), and
the WASI preview1 functions in WASI_PROVIDED. Anything else (a `wasm-bindgen` shim, a
`getrandom` `js` import, an imported memory or table) would make Envoy refuse to load the module.
Standard library only: the import section is parsed here.

With `--envoy PATH`, the allowlist itself is re-checked against that Envoy: a probe module that
imports every WASI function of the list is generated and loaded with `envoy --mode validate`
(Envoy fails with "missing import" for any function it does not link).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

# Linked by Envoy 1.40's proxy-wasm host (checked with --envoy). Several are stubs there
# (path_open, fd_read, ... return an error), but they link, so a module importing them loads.
WASI_PROVIDED = {
    "args_get", "args_sizes_get", "clock_res_get", "clock_time_get", "environ_get",
    "environ_sizes_get", "fd_close", "fd_fdstat_get", "fd_fdstat_set_flags", "fd_filestat_get",
    "fd_prestat_dir_name", "fd_prestat_get", "fd_read", "fd_seek", "fd_write", "path_open",
    "poll_oneoff", "proc_exit", "random_get", "sched_yield",
}
WASI_MODULE = "wasi_snapshot_preview1"
KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


class WasmError(ValueError):
    pass


class Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmError("unexpected end of data")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 35:
                raise WasmError("LEB128 too long")

    def name(self) -> str:
        n = self.u32()
        if self.pos + n > self.end:
            raise WasmError("name past end of section")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8")

    def limits(self) -> None:
        flags = self.byte()
        self.u32()
        if flags & 1:
            self.u32()


def imports(data: bytes) -> list[tuple[str, str, str]]:
    """(module, name, kind) of every import of a wasm binary."""
    if data[:4] != b"\0asm" or data[4:8] != b"\1\0\0\0":
        raise WasmError("not a wasm binary (bad magic or version)")
    r = Reader(data, 8)
    found: list[tuple[str, str, str]] = []
    while r.pos < len(data):
        section_id = r.byte()
        size = r.u32()
        start, end = r.pos, r.pos + size
        if end > len(data):
            raise WasmError(f"section {section_id} runs past the end of the file")
        if section_id == 2:
            s = Reader(data, start, end)
            for _ in range(s.u32()):
                module, name, kind = s.name(), s.name(), s.byte()
                if kind == 0:
                    s.u32()  # type index
                elif kind == 1:
                    s.byte()  # reftype
                    s.limits()
                elif kind == 2:
                    s.limits()
                elif kind == 3:
                    s.byte()
                    s.byte()
                elif kind == 4:
                    s.byte()
                    s.u32()
                else:
                    raise WasmError(f"unknown import kind {kind}")
                found.append((module, name, KINDS[kind]))
        r.pos = end
    return found


def violations(found: list[tuple[str, str, str]]) -> list[str]:
    bad = []
    for module, name, kind in found:
        ok = kind == "func" and (
            (module == "env" and name.startswith("proxy_"))
            or (module == WASI_MODULE and name in WASI_PROVIDED)
        )
        if not ok:
            bad.append(f"{module}.{name} ({kind})")
    return bad


# ------------------------------------------------------------------ allowlist probe (--envoy)
_I32, _I64 = 0x7F, 0x7E
_WASI_SIGS = {
    "args_get": ([_I32] * 2, [_I32]), "args_sizes_get": ([_I32] * 2, [_I32]),
    "clock_res_get": ([_I32] * 2, [_I32]), "clock_time_get": ([_I32, _I64, _I32], [_I32]),
    "environ_get": ([_I32] * 2, [_I32]), "environ_sizes_get": ([_I32] * 2, [_I32]),
    "fd_close": ([_I32], [_I32]), "fd_fdstat_get": ([_I32] * 2, [_I32]),
    "fd_fdstat_set_flags": ([_I32] * 2, [_I32]), "fd_filestat_get": ([_I32] * 2, [_I32]),
    "fd_prestat_dir_name": ([_I32] * 3, [_I32]), "fd_prestat_get": ([_I32] * 2, [_I32]),
    "fd_read": ([_I32] * 4, [_I32]), "fd_seek": ([_I32, _I64, _I32, _I32], [_I32]),
    "fd_write": ([_I32] * 4, [_I32]),
    "path_open": ([_I32] * 5 + [_I64, _I64] + [_I32] * 2, [_I32]),
    "poll_oneoff": ([_I32] * 4, [_I32]), "proc_exit": ([_I32], []),
    "random_get": ([_I32] * 2, [_I32]), "sched_yield": ([], [_I32]),
}


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _leb(len(items)) + b"".join(items)


def _name(s: str) -> bytes:
    return _leb(len(s.encode())) + s.encode()


def _section(i: int, payload: bytes) -> bytes:
    return bytes([i]) + _leb(len(payload)) + payload


def _functype(params, results) -> bytes:
    return b"\x60" + _vec([bytes([p]) for p in params]) + _vec([bytes([r]) for r in results])


def probe_module(wasi: list[str]) -> bytes:
    """A do-nothing proxy-wasm plugin (ABI 0.2.1) that imports the given WASI functions."""
    types = [_functype([], []), _functype([_I32], [_I32]), _functype([_I32, _I32], []),
             _functype([_I32, _I32], [_I32])]
    imps = []
    for fn in wasi:
        params, results = _WASI_SIGS[fn]
        types.append(_functype(params, results))
        imps.append(_name(WASI_MODULE) + _name(fn) + b"\x00" + _leb(len(types) - 1))
    funcs = [0, 0, 1, 2, 3, 3]
    bodies = [b"\x00\x0b", b"\x00\x0b", b"\x00\x41\x80\x08\x0b", b"\x00\x0b", b"\x00\x41\x01\x0b",
              b"\x00\x41\x01\x0b"]
    exports = [("proxy_abi_version_0_2_1", 0), ("_initialize", 1),
               ("proxy_on_memory_allocate", 2), ("proxy_on_context_create", 3),
               ("proxy_on_vm_start", 4), ("proxy_on_configure", 5)]
    out = b"\0asm\1\0\0\0" + _section(1, _vec(types))
    if imps:
        out += _section(2, _vec(imps))
    out += _section(3, _vec([_leb(f) for f in funcs]))
    out += _section(5, _vec([b"\x00" + _leb(2)]))
    out += _section(7, _vec([_name(n) + b"\x00" + _leb(i + len(imps)) for n, i in exports]
                            + [_name("memory") + b"\x02" + _leb(0)]))
    out += _section(10, _vec([_leb(len(b)) + b for b in bodies]))
    return out


def verify_allowlist(envoy: str) -> list[str]:
    """Load a probe importing every allowlisted WASI call into `envoy --mode validate`."""
    from envoy_config import render  # noqa: PLC0415 (only needed for this option)
    from harness import envoy_bin  # noqa: PLC0415

    if envoy == "auto":
        envoy = envoy_bin()

    with tempfile.TemporaryDirectory(prefix="phi-guard-probe-") as tmp:
        wasm = Path(tmp) / "probe.wasm"
        wasm.write_bytes(probe_module(sorted(WASI_PROVIDED)))
        cfg = Path(tmp) / "envoy.yaml"
        cfg.write_text(render(wasm=wasm, listen_port=0, admin_port=0, upstream_port=1))
        proc = subprocess.run([envoy, "--mode", "validate", "-c", str(cfg), "--log-level", "error",
                               "--disable-hot-restart"],
                              capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode == 0:
        return []
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if "missing import" in ln or "critical" in ln]
    return lines or [f"envoy --mode validate exited {proc.returncode}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wasm", type=Path)
    ap.add_argument("--envoy", help="also verify the WASI allowlist against this Envoy binary "
                    "(`auto`: $ENVOY_BIN, else the one in .venv/)")
    args = ap.parse_args(argv)
    try:
        found = imports(args.wasm.read_bytes())
    except (OSError, WasmError, UnicodeDecodeError) as err:
        print(f"wasm import check: {args.wasm}: {err}", file=sys.stderr)
        return 2
    bad = violations(found)
    wasi = sorted(n for m, n, _ in found if m == WASI_MODULE)
    proxy = sum(1 for m, _, _ in found if m == "env")
    print(f"wasm import check: {args.wasm}: {len(found)} imports "
          f"({proxy} env.proxy_*, WASI: {', '.join(wasi) or 'none'})")
    if args.envoy:
        problems = verify_allowlist(args.envoy)
        if problems:
            print("wasm import check: the allowlist no longer matches this Envoy:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"wasm import check: all {len(WASI_PROVIDED)} allowlisted WASI calls link in Envoy")
    if bad:
        print("wasm import check: FAILED, imports Envoy does not provide:", file=sys.stderr)
        for item in bad:
            print(f"  {item}", file=sys.stderr)
        return 1
    print("wasm import check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
