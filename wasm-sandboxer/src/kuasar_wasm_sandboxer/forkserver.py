"""The fork-server: ``python -m kuasar_wasm_sandboxer.forkserver --control FD``, whose whole work is
native (``native/runner.c``, built into the ``_native`` library next to this file and loaded with ctypes,
never imported).

Python only finds the two libraries and calls ``kuasar_wasm_serve``, which never runs Python again: it
opens wasmtime's C API from the wasmtime wheel's own library, builds the engine and the WASI linker,
and forks one runner per request on the control socket. Each request is one message carrying one fd
(SCM_RIGHTS): the runner's end of a new control socket (see :mod:`kuasar_wasm_sandboxer.protocol`). A
runner is a copy of this process that runs C only, so it copies almost none of the interpreter's pages
(a forked interpreter writes the refcount of every object it touches: ~2 MB per container).

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

import ctypes
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec
from typing import Optional, Sequence

__all__ = ["main", "parse_args", "native_library", "wasmtime_library"]


def _error(message: str) -> None:
    sys.stderr.write(message + "\n")


def native_library() -> str:
    """The path of the ``_native`` library built from ``native/runner.c``.

    :raise FileNotFoundError: it was not built (the package was installed without its C part).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in EXTENSION_SUFFIXES:
        path = os.path.join(here, "_native" + suffix)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no _native library in {here} (reinstall kuasar-wasm-sandboxer to build it)")


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


def parse_args(argv: Sequence[str]) -> int:
    """The control fd of ``--control FD`` (what :class:`~kuasar_wasm_sandboxer.runner_control.ForkServer`
    passes). :raise ValueError: anything else, or a control that is not an fd number."""
    if len(argv) != 2 or argv[0] != "--control":
        raise ValueError(f"expected --control FD, got {list(argv)}")
    try:
        return int(argv[1])
    except ValueError:
        raise ValueError(f"--control takes an fd number, not {argv[1]!r}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        control = parse_args(sys.argv[1:] if argv is None else argv)
        native, library = native_library(), wasmtime_library()
    except (ValueError, FileNotFoundError) as err:
        _error(f"kuasar-wasm-forkserver: {err}")
        return 2
    serve = ctypes.CDLL(native).kuasar_wasm_serve
    serve.argtypes = [ctypes.c_int, ctypes.c_char_p]
    serve.restype = ctypes.c_int
    return int(serve(control, os.fsencode(library)))


if __name__ == "__main__":
    os._exit(main())
