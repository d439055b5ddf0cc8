"""Task-server side of the runners: the fork-server process and the per-runner conversation.

The task server keeps one fork-server (:mod:`kuasar_wasm_sandboxer.forkserver`), spawned through
:mod:`kuasar_shared.process` in a session of its own, and supervises it: when it dies (kill -9,
crash) a new one is started; running modules are not its children and do not notice. Each
container process asks it for a runner (:meth:`ForkServer.take`): a new socketpair, one end sent
to the fork-server, the runner says hello with its pid on the other. Runners re-parent to the task
server (a child subreaper), so their exit statuses come from the reaper like any child's. See
:mod:`kuasar_wasm_sandboxer.protocol` for the conversation.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import NamedTuple, Optional

from kuasar_shared import process
from kuasar_shared.daemon import get_reaper, set_child_subreaper
from kuasar_shared.daemon.reaper import is_child_subreaper
from kuasar_shared.errors import DeadlineExceeded, Internal, InvalidArgument, KuasarError, Unavailable
from kuasar_shared.process_identity import start_time
from kuasar_shared.oci import StdioFds

from kuasar_wasm_sandboxer.cache import ModuleCache
from kuasar_wasm_sandboxer.forkserver import executable, wasmtime_library
from kuasar_wasm_sandboxer.protocol import FORK, MAX_MESSAGE, STDIO_NAMES, decode, encode

__all__ = ["Runner", "ForkServer", "LoadReply"]

log = logging.getLogger(__name__)



def _seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def _wake(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _send_fd(sock: socket.socket, message: bytes, fd: int) -> None:
    """Send ``message`` with ``fd`` on a non-blocking socket, waiting while its buffer is full (a burst of
    Creates while the fork-server is still importing).

    :raise OSError: the peer is gone.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            socket.send_fds(sock, [message], [fd])
            return
        except BlockingIOError:
            writable: asyncio.Future[None] = loop.create_future()
            loop.add_writer(sock.fileno(), _wake, writable)
            try:
                await writable
            finally:
                loop.remove_writer(sock.fileno())


def _hello_pid(hello: bytes) -> int:
    """The pid in a runner's first message. :raise Internal: it is not ``pid=<number>``."""
    try:
        fields = decode(hello)
        if len(fields) != 1 or fields[0][0] != "pid":
            raise ValueError(f"expected one field pid=<number>, got {fields!r:.80}")
        return int(fields[0][1])
    except ValueError as err:
        raise Internal(f"a wasm runner's hello is malformed: {err}") from None


class LoadReply(NamedTuple):
    """A runner's answer to its spec: the module is instantiated.

    ``compiled``: the cache missed (or was off) and the runner compiled; ``stored``: it wrote the
    compiled code to the spec's ``cache_store`` file and mapped it; ``load_ms``: how long loading took.
    """

    compiled: bool
    stored: bool
    load_ms: float


class Runner:
    """One runner process before it is started.

    Resource handling: owns the control socket until :meth:`start` or :meth:`abandon` closes it.
    """

    #: seconds a runner may take to load (compile) a module
    load_timeout = 120.0

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.control = control

    def __repr__(self) -> str:
        return f"Runner(pid={self.pid})"

    def start_time(self) -> Optional[int]:
        return start_time(self.pid)

    async def configure(self, name: str, spec_path: str) -> LoadReply:
        """Hand the runner its spec, wait until the module is instantiated; its warnings are logged.

        :raise InvalidArgument: the runner refused the module (message from wasmtime).
        :raise Internal: the runner died or answered nonsense. :raise DeadlineExceeded: loading took too long.
        """
        loop = asyncio.get_running_loop()
        try:
            self.control.send(encode([("spec", spec_path)]))
            raw = await asyncio.wait_for(loop.sock_recv(self.control, MAX_MESSAGE), self.load_timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"{name}: the module was not loaded within {self.load_timeout} s") from None
        except OSError:
            raw = b""
        if not raw:
            raise Internal(f"{name}: the wasm runner (pid {self.pid}) ended or closed its control socket "
                           f"before the module was ready")
        try:
            fields = decode(raw)
            reply = dict(fields)
            for field, warning in fields:
                if field == "warning":
                    log.warning("%s: %s", name, warning)
            if "error" in reply:
                raise InvalidArgument(f"{name}: {reply['error']}")
            if reply.get("ready") != "1":
                raise ValueError(f"neither ready=1 nor error= in {sorted(reply)}")
            return LoadReply(reply["compiled"] == "1", reply["stored"] == "1", float(reply["load_ms"]))
        except (KeyError, ValueError) as err:
            raise Internal(f"{name}: the wasm runner (pid {self.pid}) answered nonsense: {err!r}") from None

    def start(self, stdio: StdioFds) -> None:
        """Hand the runner its stdio and let the module run (``_start``); the runner is on its own
        from here. The caller still closes its copies of the stdio fds."""
        names = [n for n in STDIO_NAMES if getattr(stdio, n) is not None]
        try:
            socket.send_fds(self.control, [encode([("start", ",".join(names))])],
                            [getattr(stdio, n) for n in names])
        except OSError as err:  # it died meanwhile: its exit is reported as the process's
            log.warning("wasm runner pid %d did not take its start: %s", self.pid, err)
        finally:
            self.control.close()

    async def abandon(self, timeout: float = 5.0) -> None:
        """Close the control socket, kill the runner and wait (bounded) until the reaper has it.

        Only for a runner nobody watches yet (a failed Create): its exit is consumed here.
        """
        self.control.close()
        exited = get_reaper().subscribe(self.pid)
        if not exited.done():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(exited, timeout)
        except asyncio.TimeoutError:
            log.warning("wasm runner pid %d did not exit within %s s", self.pid, timeout)


class ForkServer:
    """The fork-server of this task server, restarted when it dies.

    :param cache: the compiled-module cache its runners write after a miss (None disables it).
    :raise FileNotFoundError: ``wasm-forkserver`` or wasmtime's library is missing.
    Resource handling: :meth:`start` spawns it and a supervising task; :meth:`close` stops both.
    """

    #: seconds to wait for a runner's hello (a fork-server just started, a loaded machine)
    hello_timeout = 60.0
    #: a fork-server that died younger than this is restarted only after this long (no crash loop)
    restart_backoff = 1.0

    def __init__(self, cache: Optional[ModuleCache]) -> None:
        self.cache = cache
        #: the program and the wasmtime library it opens (:raise FileNotFoundError: either is missing)
        self.argv = [executable(), "--wasmtime", wasmtime_library()]
        self._proc: Optional[process.Process] = None
        self._control: Optional[socket.socket] = None
        self._spawned_at = 0.0
        self._supervisor: Optional[asyncio.Task[None]] = None

    def __repr__(self) -> str:
        return f"ForkServer(pid={self.pid})"

    @property
    def pid(self) -> Optional[int]:
        """The running fork-server's pid (None before :meth:`start` or after :meth:`close`)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Spawn the fork-server and supervise it (call once, in the running loop).

        The runners it forks re-parent to this process: it becomes a child subreaper if it is not
        one already (task servers are).
        """
        if self._supervisor is not None:
            return
        if not is_child_subreaper():
            set_child_subreaper()
        self._spawn()
        self._supervisor = asyncio.ensure_future(self._supervise())

    def _spawn(self) -> None:
        if self._control is not None:
            self._control.close()
        ours, theirs = _seqpacket_pair()
        try:
            proc = process.spawn([*self.argv, "--control", str(theirs.fileno())], stdin=process.DEVNULL,
                                 stdout=process.DEVNULL, pass_fds=[theirs.fileno()], start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._proc, self._control, self._spawned_at = proc, ours, time.monotonic()
        log.info("wasm fork-server started, pid %d", proc.pid)

    async def _supervise(self) -> None:
        """Start a new fork-server whenever the current one exits."""
        while True:
            proc = self._proc
            assert proc is not None
            event = await proc.wait()
            if proc is not self._proc:
                continue
            log.warning("wasm fork-server pid %d exited with status %d; starting a new one", proc.pid, event.status)
            if time.monotonic() - self._spawned_at < self.restart_backoff:
                await asyncio.sleep(self.restart_backoff)
            if proc is self._proc:
                try:
                    self._spawn()
                except KuasarError as err:
                    log.error("cannot start a wasm fork-server: %s", err)
                    self._spawned_at = time.monotonic()

    async def take(self) -> Runner:
        """A new runner, forked for one container process (not yet in any cgroup).

        :raise Unavailable: the fork-server is not started, or did not fork (twice).
        :raise DeadlineExceeded: no runner said hello within :attr:`hello_timeout`.
        :raise Internal: the hello was malformed.
        """
        for _attempt in range(2):
            if self._control is None:
                break
            ours, theirs = _seqpacket_pair()
            try:
                hello = await self._request(ours, theirs)
                pid = _hello_pid(hello) if hello else 0
            except BaseException:
                ours.close()
                raise
            if hello:
                get_reaper().forget(pid)  # a retained exit of this pid belongs to an earlier process
                return Runner(pid, ours)
            ours.close()
            await self._replaced()
        raise Unavailable("the wasm fork-server did not fork a runner; try again")

    async def _request(self, ours: socket.socket, theirs: socket.socket) -> bytes:
        """Send ``theirs`` to the fork-server and wait for the runner's hello on ``ours``; b"" when the
        fork-server is gone or forked nothing. Closes ``theirs``."""
        assert self._control is not None
        try:
            await _send_fd(self._control, FORK, theirs.fileno())
        except OSError as err:
            log.warning("wasm fork-server pid %s does not take requests (%s)", self.pid, err)
            return b""
        finally:
            theirs.close()
        ours.setblocking(False)
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(ours, MAX_MESSAGE),
                                          self.hello_timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"the wasm fork-server (pid {self.pid}) forked no runner within "
                                   f"{self.hello_timeout} s") from None
        except OSError:
            return b""

    async def _replaced(self) -> None:
        """Replace the fork-server now if it just died (waits up to a second to find out)."""
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), 1.0)
        except asyncio.TimeoutError:
            return
        if proc is self._proc:
            log.warning("wasm fork-server pid %d is gone; starting a new one", proc.pid)
            self._spawn()

    async def close(self) -> None:
        """Stop supervising and end the fork-server (running modules are not its children)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.kill()
            await proc.wait()
