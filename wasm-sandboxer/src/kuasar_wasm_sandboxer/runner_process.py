"""The runner: one forked process per wasm container process (see :mod:`kuasar_wasm_sandboxer.forkserver`).

A runner starts life as a copy of the fork-server (wasmtime imported, engine built, heap frozen),
so it shares those pages and only pays for its own module. The conversation with the task server
over its SOCK_SEQPACKET control socket, one message per step, each a dict in :mod:`marshal` form
(:func:`encode`, :func:`decode`: C code only; json's encoder alone made each runner write ~0.2 MB of the
fork-server's pages; both ends are the same interpreter, see :class:`~kuasar_wasm_sandboxer.runner_control.ForkServer`):

    runner -> server   {"pid": <pid>}           (at once: the server moves it into the container's cgroup)
    server -> runner   {"spec": "<run spec path>"}
    runner -> server   {"ready": true, "compiled": bool, "load_ms": float, "warnings": [...]}
                       or {"error": "<message>", "warnings": [...]}
    server -> runner   {"start": ["stdout", ...]} + those fds (SCM_RIGHTS; then both close the socket)

The stdio comes only with ``start`` (WASI's inherited stdio writes to fds 0/1/2 as they are when
the module runs): a runner that is never started never held the engine's FIFOs. On ``start`` the
runner removes its run spec before the module runs: a task server killed around the moment it sent
``start`` cannot know whether the message left, and its successor reads the answer from that file
(see :meth:`~kuasar_wasm_sandboxer.backend.WasmTaskBackend.recover`); a runner that cannot remove it
does not run. Before ``start``
the runner exits quietly when the socket closes (its container was deleted, or the task server
died before starting it). After ``start`` the socket is gone and the runner lives
on its own: it survives task-server and fork-server restarts and exits with the module's status
(see :meth:`~kuasar_wasm_sandboxer.engines.wasmtime.Program.run`). SIGINT/SIGTERM keep their
default action so that Kill works while the module runs native code.
"""
from __future__ import annotations

import marshal
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Sequence

from kuasar_wasm_sandboxer.entrypoint import Preopen, RunSpec

if TYPE_CHECKING:
    from kuasar_wasm_sandboxer.engines.wasmtime import WasmtimeEngine

__all__ = ["run", "warm_up", "encode", "decode", "FORK", "STDIO_NAMES", "MAX_MESSAGE"]

#: the task server's request to the fork-server (with the runner's control socket attached)
FORK = b"fork"
STDIO_NAMES = ("stdin", "stdout", "stderr")
MAX_MESSAGE = 65536


def _install_stdio(names: Sequence[str], fds: Sequence[int]) -> None:
    received = dict(zip(names, fds))
    null = os.open(os.devnull, os.O_RDWR)
    for target, name in enumerate(STDIO_NAMES):
        os.dup2(received.get(name, null), target)
    for fd in [null, *fds]:
        if fd > 2:
            os.close(fd)


def encode(message: dict[str, Any]) -> bytes:
    """One control message (str, bool, int, float, lists and dicts of them).

    :raise ValueError: it holds something else, or does not fit :data:`MAX_MESSAGE`.
    """
    data = marshal.dumps(message)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"a control message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> dict[str, Any]:
    """The message in ``data``. :raise ValueError: ``data`` is not an encoded dict."""
    try:
        message = marshal.loads(data)
    except (EOFError, TypeError, ValueError) as err:
        raise ValueError(f"malformed control message: {err}") from None
    if not isinstance(message, dict):
        raise ValueError(f"a control message must be a dict, not {type(message).__name__}")
    return message


def _reply(control: socket.socket, **message: Any) -> None:
    try:
        data = encode(message)
    except ValueError:  # too many or too long warnings: the outcome matters more
        data = encode({**message, "warnings": [str(w)[:1000] for w in message.get("warnings", [])[:10]]})
    control.send(data)


#: a WASI command that imports from WASI and exports memory and _start, like the modules runners load
_WARM_UP_WAT = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 0))))"""


def warm_up(engine: "WasmtimeEngine", rounds: int) -> None:
    """Walk a runner's path up to ``_start`` (not included: it would start WASI's threads) ``rounds``
    times in the fork-server, before it freezes its heap.

    CPython 3.11 writes to a function's code object on its first calls (warm-up counters, then
    specialisation); done here once, no runner writes those pages again (~0.3 MB less per runner).
    The module is compiled in a child and mapped from a memfd, like a cache entry.

    :raise LoadError: the warm-up module did not compile or load.
    """
    code = engine.compile_elsewhere(_WARM_UP_WAT)
    module_fd = os.memfd_create("kuasar-wasm-warm-up")
    spec_fd = os.memfd_create("kuasar-wasm-warm-up-spec")
    try:
        os.write(module_fd, code)
        spec = RunSpec(name="warm-up", module="", kind="wasm", argv=["warm-up"], env=[("A", "1")],
                       preopens=(Preopen("/", "/", True),), memory_limit=1 << 30,
                       cache_key="", cache_entry=f"/proc/self/fd/{module_fd}")
        spec_path = f"/proc/self/fd/{spec_fd}"
        spec.save(spec_path)
        for _ in range(rounds):
            message = decode(encode({"spec": spec_path}))
            engine.prepare(RunSpec.load(message["spec"]))
            encode({"ready": True, "compiled": engine.compiled, "load_ms": 0.0, "warnings": engine.warnings})
    finally:
        os.close(module_fd)
        os.close(spec_fd)
    engine.warnings.clear()


def run(control: socket.socket, engine: "WasmtimeEngine") -> int:
    """Hold the conversation on ``control`` and run the module; returns the exit status.

    Resource handling: closes ``control`` before the module runs.
    """
    from kuasar_wasm_sandboxer.engines.wasmtime import LoadError

    try:
        _reply(control, pid=os.getpid())
        message = control.recv(MAX_MESSAGE)
    except OSError:
        return 0
    if not message:
        return 0
    started = time.monotonic()
    try:
        spec_path = str(decode(message)["spec"])
        program = engine.prepare(RunSpec.load(spec_path))
    except (LoadError, OSError, KeyError, ValueError) as err:
        try:
            _reply(control, error=str(err), warnings=engine.warnings)
        except OSError:
            pass
        return 1
    try:  # a server that went away (container deleted, server killed) ends the runner quietly
        _reply(control, ready=True, compiled=engine.compiled,
               load_ms=round((time.monotonic() - started) * 1000, 2), warnings=engine.warnings)
        command, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, len(STDIO_NAMES))
    except OSError:
        return 0
    control.close()
    if not command:
        return 0
    try:
        names = list(decode(command).get("start", []))
        os.unlink(spec_path)  # the trace of this start that a restarted task server reads
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        return 1
    _install_stdio(names, fds)
    return program.run()
