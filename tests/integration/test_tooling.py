"""The test tooling itself: the wasm import check flags what Envoy would refuse to load."""

import check_wasm_imports as cwi


def _module_with(wasi):
    return cwi.probe_module(wasi)


def test_probe_module_imports_are_parsed():
    found = cwi.imports(_module_with(["fd_write", "random_get"]))
    assert found == [("wasi_snapshot_preview1", "fd_write", "func"),
                     ("wasi_snapshot_preview1", "random_get", "func")]
    assert cwi.violations(found) == []


def test_unknown_wasi_and_foreign_modules_are_violations():
    found = [("wasi_snapshot_preview1", "sock_accept", "func"),
             ("__wbindgen_placeholder__", "__wbindgen_describe", "func"),
             ("env", "memory", "memory"),
             ("env", "proxy_log", "func"),
             ("env", "abort", "func")]
    assert cwi.violations(found) == [
        "wasi_snapshot_preview1.sock_accept (func)",
        "__wbindgen_placeholder__.__wbindgen_describe (func)",
        "env.memory (memory)",
        "env.abort (func)",
    ]


def test_not_wasm_is_an_error():
    try:
        cwi.imports(b"\x7fELF....")
    except cwi.WasmError:
        return
    raise AssertionError("a non-wasm file was accepted")
