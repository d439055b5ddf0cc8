"""Where the native fork-server and wasmtime's C library are (neither is imported or loaded here).

The fork-server is the program ``wasm-forkserver`` built from ``native/runner.c`` into this package, run
by the task server as ``wasm-forkserver --control FD --wasmtime LIBRARY`` (see
:class:`~kuasar_wasm_sandboxer.runner_control.ForkServer`). It opens wasmtime's C API from LIBRARY, the
wasmtime wheel's own ``_libwasmtime.so``, and forks one runner per request on the control socket: each
request is one message carrying one fd (SCM_RIGHTS), the runner's end of a new control socket (see
:mod:`kuasar_wasm_sandboxer.protocol`). No Python runs in either: a runner forked from an interpreter
writes the refcount of every object it touches and copies those pages (~2 MB per container).

The fork-server forks twice: the intermediate child starts a new session (signals meant for the task
server's session never reach a module), forks the runner and exits at once, so the runner re-parents
to the nearest child subreaper, the task server, whose reaper collects its exit status exactly as for
any child (and if the task server dies, the sandboxer's subreaper records it, see
:class:`~kuasar_shared.task.exits.ExitRecorder`). The fork-server is therefore nobody's parent for long
and can be killed at any time without touching a running module. It exits when the control socket
closes (its task server is gone). It never compiles a module (compile threads must not exist when it
forks); a runner compiles on a cache miss, after the fork.
"""
from __future__ import annotations

import os
from importlib.util import find_spec

from kuasar_shared.native import program

__all__ = ["executable", "wasmtime_library", "NAME"]

#: the program's file name and ``comm``
NAME = "wasm-forkserver"


def executable() -> str:
    """The path of ``wasm-forkserver``.

    :raise FileNotFoundError: it was not built (the package was installed without its C part).
    """
    return program(__file__, NAME, "kuasar-wasm-sandboxer", "native/runner.c")


def wasmtime_library() -> str:
    """The wasmtime wheel's C API library, found without importing the wasmtime package.

    :raise FileNotFoundError: wasmtime is not installed, or ships no library for this platform.
    """
    spec = find_spec("wasmtime")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the wasmtime package is not installed")
    package = list(spec.submodule_search_locations)[0]
    for folder, _dirs, files in sorted(os.walk(package)):
        if "_libwasmtime.so" in files:
            return os.path.join(folder, "_libwasmtime.so")
    raise FileNotFoundError(f"no _libwasmtime.so under {package}")
