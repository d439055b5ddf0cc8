"""Task-server side of the runner processes: a warm pool and the control conversation.

Each container process is its own runner process (fork+exec of ``python -m
kuasar_wasm_sandboxer.runner`` through :mod:`kuasar_shared.process`, so the reaper owns its exit),
in its own session so that signals meant for the task server never reach a module. One runner is
kept warm (wasmtime imported: ~100 ms of work done ahead); :meth:`RunnerPool.take` hands it out and
the backend warms the next one once the container has started. See
:mod:`kuasar_wasm_sandboxer.runner` for the protocol.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from typing import Any, Optional

from kuasar_shared import process
from kuasar_shared.errors import DeadlineExceeded, Internal, InvalidArgument
from kuasar_shared.oci import StdioFds, start_time

from kuasar_wasm_sandboxer.runner import MAX_MESSAGE, START

__all__ = ["Runner", "RunnerPool"]

log = logging.getLogger(__name__)

RUNNER_MODULE = "kuasar_wasm_sandboxer.runner"


class Runner:
    """One runner process before it is started.

    Resource handling: owns the control socket until :meth:`start` or :meth:`abandon` closes it.
    """

    #: seconds a runner may take to load (compile) a module
    load_timeout = 120.0

    def __init__(self, proc: process.Process, control: socket.socket) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.control = control

    def __repr__(self) -> str:
        return f"Runner(pid={self.pid})"

    def start_time(self) -> Optional[int]:
        return start_time(self.pid)

    async def configure(self, name: str, spec_path: str, stdio: StdioFds) -> dict[str, Any]:
        """Hand the runner its spec and stdio, wait until the module is instantiated.

        :raise InvalidArgument: the runner refused the module (message from wasmtime).
        :raise Internal: the runner died. :raise DeadlineExceeded: loading took too long.
        :return: the runner's reply (``compiled``: whether the cache missed).
        """
        names = [n for n in ("stdin", "stdout", "stderr") if getattr(stdio, n) is not None]
        fds = [getattr(stdio, n) for n in names]
        message = json.dumps({"spec": spec_path, "stdio": names}).encode()
        loop = asyncio.get_running_loop()
        try:
            socket.send_fds(self.control, [message], fds)
            raw = await asyncio.wait_for(loop.sock_recv(self.control, MAX_MESSAGE), self.load_timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"{name}: the module was not loaded within {self.load_timeout} s") from None
        except OSError:
            raw = b""
        if not raw:
            try:
                event = await asyncio.wait_for(self.proc.wait(), 5.0)
                detail = f"exited with status {event.status}"
            except asyncio.TimeoutError:
                detail = "closed its control socket"
            raise Internal(f"{name}: the wasm runner (pid {self.pid}) {detail} before the module was ready")
        reply = json.loads(raw)
        for warning in reply.get("warnings") or []:
            log.warning("%s: %s", name, warning)
        if "error" in reply:
            raise InvalidArgument(f"{name}: {reply['error']}")
        return dict(reply)

    def start(self) -> None:
        """Let the module run (``_start``); the runner is on its own from here."""
        try:
            self.control.send(START)
        finally:
            self.control.close()

    def abandon(self) -> None:
        """Close the control socket and kill the runner (a failed or deleted Create)."""
        self.control.close()
        self.proc.kill()


class RunnerPool:
    """Spawns runners; keeps one warm.

    :param cache_dir: the compiled-module cache ("" disables it); ``cache_size`` its bound.
    Resource handling: :meth:`close` kills the warm runner and waits for it.
    """

    def __init__(self, cache_dir: str, cache_size: int, python: str = sys.executable) -> None:
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self.python = python
        self._warm: Optional[Runner] = None

    def _spawn(self) -> Runner:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            argv = [self.python, "-m", RUNNER_MODULE, "--control", str(theirs.fileno()),
                    "--cache-dir", self.cache_dir, "--cache-size", str(self.cache_size)]
            proc = process.spawn(argv, stdin=process.DEVNULL, stdout=process.DEVNULL,
                                 pass_fds=[theirs.fileno()], start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return Runner(proc, ours)

    def take(self) -> Runner:
        """A runner for one container process: the warm one if any, else a new one. Call
        :meth:`warm_up` once the taken runner has loaded its module, so that warming the next one
        does not compete with it for CPU."""
        warm, self._warm = self._warm, None
        if warm is not None and warm.proc.returncode is None:
            return warm
        if warm is not None:
            warm.control.close()
        return self._spawn()

    def warm_up(self) -> None:
        """Have a warm runner (at server start, and after each take)."""
        if self._warm is None:
            self._warm = self._spawn()

    async def close(self) -> None:
        if self._warm is not None:
            warm, self._warm = self._warm, None
            warm.abandon()
            await warm.proc.wait()
