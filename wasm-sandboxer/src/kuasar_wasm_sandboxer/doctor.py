"""``kuasar-ctl doctor --type wasm``: the WebAssembly engine the runners import."""
from __future__ import annotations

import os
from importlib import metadata

from kuasar_shared.doctor import Finding, Sandboxer, Status


def checks(sandboxer: Sandboxer) -> list[Finding]:
    try:
        import wasmtime
    except ImportError as err:
        return [Finding(Status.FAIL, "wasmtime", "cannot import the wasmtime module: %s" % err,
                        "pip install wasmtime (the Bytecode Alliance bindings)")]
    try:
        version = "wasmtime " + metadata.version("wasmtime")
    except metadata.PackageNotFoundError:
        version = "wasmtime (version unknown)"
    return [Finding(Status.OK, "wasmtime", "%s (%s)" % (version, os.path.dirname(wasmtime.__file__)))]
