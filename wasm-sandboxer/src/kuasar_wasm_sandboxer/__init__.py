"""Kuasar's wasm sandboxer: WebAssembly (WASI) pods on wasmtime.

``wasm-sandboxer`` serves the Sandbox API (a pod is a record plus a cgroup); the separate
``wasm-task`` process serves the Task API and runs every container process in its own runner
process, forked by the fork-server (:mod:`.forkserver`, the only place that loads wasmtime).
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
