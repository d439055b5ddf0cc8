"""The runner: one forked process per wasm container process (see :mod:`kuasar_wasm_sandboxer.forkserver`).

A runner starts life as a copy of the fork-server (wasmtime imported, engine built, heap frozen),
so it shares those pages and only pays for its own module. The conversation with the task server
over its SOCK_SEQPACKET control socket, one message per step:

    runner -> server   {"pid": <pid>}           (at once: the server moves it into the container's cgroup)
    server -> runner   {"spec": "<run spec JSON path>"}
    runner -> server   {"ready": true, "compiled": bool, "load_ms": float, "warnings": [...]}
                       or {"error": "<message>", "warnings": [...]}
    server -> runner   {"start": ["stdout", ...]} + those fds (SCM_RIGHTS; then both close the socket)

The stdio comes only with ``start`` (WASI's inherited stdio writes to fds 0/1/2 as they are when
the module runs): a runner that is never started never held the engine's FIFOs. Before ``start``
the runner exits quietly when the socket closes (its container was deleted, or the task server
died before starting it). After ``start`` the socket is gone and the runner lives
on its own: it survives task-server and fork-server restarts and exits with the module's status
(see :meth:`~kuasar_wasm_sandboxer.engines.wasmtime.Program.run`). SIGINT/SIGTERM keep their
default action so that Kill works while the module runs native code.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Sequence

from kuasar_wasm_sandboxer.entrypoint import RunSpec

if TYPE_CHECKING:
    from kuasar_wasm_sandboxer.engines.wasmtime import WasmtimeEngine

__all__ = ["run", "FORK", "STDIO_NAMES", "MAX_MESSAGE"]

#: the task server's request to the fork-server (with the runner's control socket attached)
FORK = b"fork"
STDIO_NAMES = ("stdin", "stdout", "stderr")
MAX_MESSAGE = 65536


class _Collect(logging.Handler):
    """Keeps warnings (cache damage...) to hand to the task server instead of the module's stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _install_stdio(names: Sequence[str], fds: Sequence[int]) -> None:
    received = dict(zip(names, fds))
    null = os.open(os.devnull, os.O_RDWR)
    for target, name in enumerate(STDIO_NAMES):
        os.dup2(received.get(name, null), target)
    for fd in [null, *fds]:
        if fd > 2:
            os.close(fd)


def _reply(control: socket.socket, **message: object) -> None:
    control.send(json.dumps(message).encode()[:MAX_MESSAGE])


def run(control: socket.socket, engine: "WasmtimeEngine") -> int:
    """Hold the conversation on ``control`` and run the module; returns the exit status.

    Resource handling: closes ``control`` before the module runs.
    """
    from kuasar_wasm_sandboxer.engines.wasmtime import LoadError

    collected = _Collect()
    logging.getLogger().handlers[:] = [collected]  # not the fork-server's stderr: that is the module's now
    try:
        _reply(control, pid=os.getpid())
        message = control.recv(MAX_MESSAGE)
    except OSError:
        return 0
    if not message:
        return 0
    started = time.monotonic()
    try:
        program = engine.prepare(RunSpec.load(json.loads(message)["spec"]))
    except (LoadError, OSError, KeyError, ValueError) as err:
        try:
            _reply(control, error=str(err), warnings=collected.messages)
        except OSError:
            pass
        return 1
    try:  # a server that went away (container deleted, server killed) ends the runner quietly
        _reply(control, ready=True, compiled=engine.compiled,
               load_ms=round((time.monotonic() - started) * 1000, 2), warnings=collected.messages)
        command, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, len(STDIO_NAMES))
    except OSError:
        return 0
    control.close()
    if not command:
        return 0
    _install_stdio(json.loads(command).get("start", []), fds)
    return program.run()
