"""``kuasar-ctl doctor --type wasm``: the WebAssembly engine's C library and the native runner that uses it."""
from __future__ import annotations

from importlib import metadata

from kuasar_shared.doctor import Finding, Sandboxer, Status

from kuasar_wasm_sandboxer.forkserver import executable, wasmtime_library


def checks(sandboxer: Sandboxer) -> list[Finding]:
    try:
        library = wasmtime_library()
    except FileNotFoundError as err:
        return [Finding(Status.FAIL, "wasmtime", str(err), "pip install wasmtime (the Bytecode Alliance bindings)")]
    try:
        version = "wasmtime " + metadata.version("wasmtime")
    except metadata.PackageNotFoundError:
        version = "wasmtime (version unknown)"
    findings = [Finding(Status.OK, "wasmtime", "%s (%s)" % (version, library))]
    try:
        findings.append(Finding(Status.OK, "native runner", executable()))
    except FileNotFoundError as err:
        findings.append(Finding(Status.FAIL, "native runner", str(err),
                                "reinstall kuasar-wasm-sandboxer with a C compiler (it builds native/runner.c)"))
    return findings
