"""The runner: one process per wasm container process, started as ``python -m kuasar_wasm_sandboxer.runner``.

The task server keeps one runner *warm* (wasmtime imported, engine built: ~100 ms of work done
ahead), so a container start only pays for loading the module. The conversation over the
SOCK_SEQPACKET control socket (``--control FD``), one message per step:

    server -> runner   {"spec": "<run spec JSON path>", "stdio": ["stdout", ...]} + those fds (SCM_RIGHTS)
    runner -> server   {"ready": true, "compiled": bool, "load_ms": float, "warnings": [...]}
                       or {"error": "<message>", "warnings": [...]}
    server -> runner   b"start"                 (then both close the socket)

Before ``start`` the runner exits quietly when the socket closes (its container was deleted, or
the task server died before starting it). After ``start`` the socket is gone and the runner lives
on its own: it survives task-server restarts and exits with the module's status (see
:meth:`~kuasar_wasm_sandboxer.engines.wasmtime.Program.run`). SIGINT/SIGTERM keep their default
action so that Kill works while the module runs native code.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import time
from typing import Optional, Sequence

from kuasar_wasm_sandboxer.cache import DEFAULT_MAX_BYTES, ModuleCache
from kuasar_wasm_sandboxer.entrypoint import RunSpec

__all__ = ["main", "START", "STDIO_NAMES", "MAX_MESSAGE"]

START = b"start"
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="kuasar-wasm-runner")
    parser.add_argument("--control", type=int, required=True, metavar="FD")
    parser.add_argument("--cache-dir", default="", metavar="DIR")
    parser.add_argument("--cache-size", type=int, default=DEFAULT_MAX_BYTES, metavar="BYTES")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    control = socket.socket(fileno=args.control)
    collected = _Collect()
    logging.getLogger().addHandler(collected)
    from kuasar_wasm_sandboxer.engines.wasmtime import LoadError, WasmtimeEngine, engine_fingerprint
    cache = ModuleCache(args.cache_dir, engine_fingerprint(), args.cache_size) if args.cache_dir else None
    engine = WasmtimeEngine(cache)
    try:
        message, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, len(STDIO_NAMES))
    except OSError:
        return 0
    if not message:
        return 0
    started = time.monotonic()
    job = json.loads(message)
    _install_stdio(job.get("stdio", []), fds)
    try:
        program = engine.prepare(RunSpec.load(job["spec"]))
    except (LoadError, OSError, KeyError, ValueError) as err:
        _reply(control, error=str(err), warnings=collected.messages)
        return 1
    _reply(control, ready=True, compiled=engine.compiled, load_ms=round((time.monotonic() - started) * 1000, 2),
           warnings=collected.messages)
    try:
        command = control.recv(len(START))
    except OSError:
        command = b""
    control.close()
    if command != START:
        return 0
    return program.run()


if __name__ == "__main__":
    os._exit(main())
