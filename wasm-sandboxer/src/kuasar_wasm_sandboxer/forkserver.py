"""The fork-server: one process that imported wasmtime once and forks a runner per container process.

Started by the task server as ``python -m kuasar_wasm_sandboxer.forkserver --control FD``. It
imports everything a runner needs, builds the wasmtime engine, then freezes its heap
(``gc.freeze()``: the collector never writes to those objects again) so that its pages stay shared
copy-on-write with every runner: a container costs only what its own module touches, not a
fresh interpreter. What a runner writes is its own (copy-on-write, page by page), so the fork-server
imports only what runners need and nothing with at-fork hooks (no logging, hence no threading: their
after-fork work alone cost each runner ~0.4 MB). It never compiles a module itself (wasmtime's
compile threads must not exist when it forks).

Each request on the control socket is one message carrying one fd (SCM_RIGHTS): the runner's end
of a new control socket (see :mod:`kuasar_wasm_sandboxer.runner_process`). The fork-server forks twice:
the intermediate child starts a new session (signals meant for the task server's session never
reach a module), forks the runner and exits at once, so the runner re-parents to the nearest child
subreaper, the task server, whose reaper collects its exit status exactly as for any child (and if
the task server dies, the sandboxer's subreaper records it, see
:class:`~kuasar_shared.task.exits.ExitRecorder`). The fork-server is therefore nobody's parent for long
and can be killed at any time without touching a running module. It exits when the control socket
closes (its task server is gone).
"""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import sys
from typing import Optional, Sequence

from kuasar_wasm_sandboxer import runner_process
from kuasar_wasm_sandboxer.cache import DEFAULT_MAX_BYTES, ModuleCache, engine_fingerprint
from kuasar_wasm_sandboxer.engines.wasmtime import LoadError, WasmtimeEngine

__all__ = ["main", "NAME", "RUNNER_NAME"]

#: ``comm`` of the fork-server and of each runner
NAME = b"wasm-forkserver"
RUNNER_NAME = b"wasm-runner"
_PR_SET_NAME = 15
#: runner paths walked before freezing (see runner_process.warm_up; 3.11 specialises after a few dozen runs)
WARM_UP_ROUNDS = 30
_prctl = ctypes.CDLL(None).prctl


def _error(message: str) -> None:
    """A line on stderr (the task server's log). Neither logging nor traceback is imported here: their
    at-fork hooks and objects would be written by every runner (see the module docstring)."""
    sys.stderr.write(message + "\n")


def _print_exception() -> None:
    sys.excepthook(*sys.exc_info())  # the interpreter's own printer, written in C


def _set_name(name: bytes) -> None:
    """Name this process for ps/top (``comm``): runners and the fork-server share one command line."""
    _prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def _runner(control: socket.socket, fd: int, engine: WasmtimeEngine) -> None:
    """In the intermediate child: new session, fork the runner, exit (never returns)."""
    status = 0
    try:
        os.setsid()
        control.close()
        if os.fork() == 0:
            status = 1
            try:
                _set_name(RUNNER_NAME)
                status = runner_process.run(socket.socket(fileno=fd), engine)
            except BaseException:  # the runner must end here, never return into the fork-server loop
                _print_exception()
    except BaseException:
        _print_exception()
        status = 1
    finally:
        os._exit(status)


def serve(control: socket.socket, engine: WasmtimeEngine) -> int:
    """Fork a runner per request until ``control`` closes; returns the exit status."""
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(control, len(runner_process.FORK), 1)
        except OSError as err:
            _error(f"fork-server: control socket failed: {err}")
            return 1
        if not message:
            return 0
        for fd in fds:
            try:
                pid = os.fork()
            except OSError as err:  # the task server sees the runner's socket close and fails Create
                _error(f"fork-server: cannot fork a runner: {err}")
            else:
                if pid == 0:
                    _runner(control, fd, engine)
                os.waitpid(pid, 0)
            finally:
                os.close(fd)


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """``--control FD [--cache-dir DIR --cache-size BYTES --cache-fingerprint HEX]`` (what
    :class:`~kuasar_wasm_sandboxer.runner_control.ForkServer` passes; not argparse, which would cost the
    fork-server ~0.4 MB).

    :raise ValueError: an unknown or valueless option, or no ``--control``.
    """
    known = ("--control", "--cache-dir", "--cache-size", "--cache-fingerprint")
    if len(argv) % 2:
        raise ValueError(f"options come in pairs (--name value): {list(argv)}")
    args = dict(zip(argv[::2], argv[1::2]))
    unknown = [name for name in args if name not in known]
    if unknown:
        raise ValueError(f"unknown options {unknown}; expected {list(known)}")
    if "--control" not in args:
        raise ValueError("--control FD is required")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        control = socket.socket(fileno=int(args["--control"]))
        cache_size = int(args.get("--cache-size", DEFAULT_MAX_BYTES))
    except ValueError as err:
        _error(f"kuasar-wasm-forkserver: {err}")
        return 2
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_name(NAME)
    cache = None
    if args.get("--cache-dir"):
        cache = ModuleCache(args["--cache-dir"], args.get("--cache-fingerprint") or engine_fingerprint(), cache_size)
    engine = WasmtimeEngine(cache)
    try:
        runner_process.warm_up(engine, WARM_UP_ROUNDS)
    except (LoadError, OSError) as err:  # runners work without it, they only cost more
        _error(f"fork-server: no warm-up: {err}")
    gc.collect()
    gc.freeze()
    return serve(control, engine)


if __name__ == "__main__":
    os._exit(main())
