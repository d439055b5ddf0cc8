"""The process-wide child reaper: one ``waitpid(-1)`` loop that hands exit statuses out by pid.

A sandboxer or task server is a child subreaper: container processes re-parented to it (runc's
init after ``runc create`` exits, double-forked namespace holders) become its children, and their
exit statuses must be collected by someone. Exactly one owner may call ``waitpid`` in a process,
otherwise statuses are stolen; this module is that owner. It reaps on every SIGCHLD and
dispatches :class:`ExitEvent` to whoever :meth:`Reaper.subscribe`\\ d to the pid. Exits of pids
nobody asked for yet (a container whose task server adopted it after a restart, a process that
exited before its spawner subscribed) are retained, bounded, so they can be claimed later.

Daemons install the reaper once in their loop (:func:`kuasar_shared.daemon.run.run_daemon` does);
:mod:`kuasar_shared.process` installs it lazily in the running loop for tests and CLIs.
"""
from __future__ import annotations

import asyncio
import collections
import ctypes
import functools
import logging
import os
import signal
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

__all__ = ["ExitEvent", "Reaper", "get_reaper", "set_child_subreaper", "is_child_subreaper"]

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


@dataclass(frozen=True)
class ExitEvent:
    """One reaped child.

    :ivar pid: the child's pid.
    :ivar status: exit code, or 128 + signal number when killed by a signal.
    :ivar exited_at: when the reaper collected the status (UTC).
    """

    pid: int
    status: int
    exited_at: datetime


def _libc() -> ctypes.CDLL:
    """The process's own libc (dlopen(NULL)); ctypes.util.find_library would spawn ldconfig/gcc."""
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> int:
    libc = _libc()
    res = libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(%d): %s" % (option, os.strerror(err)))
    return int(res)


def set_child_subreaper(enable: bool = True) -> None:
    """Make orphaned descendants re-parent to this process (``PR_SET_CHILD_SUBREAPER``).

    :raise OSError: when the kernel refuses.
    """
    _prctl(_PR_SET_CHILD_SUBREAPER, 1 if enable else 0)


def is_child_subreaper() -> bool:
    value = ctypes.c_int(0)
    libc = _libc()
    if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_GET_CHILD_SUBREAPER): %s" % os.strerror(err))
    return value.value != 0


def _waitid_code(seen: "os.waitid_result") -> int:
    """The exit code of a ``waitid`` result (128 + signal for a killed process, as a shell reports it)."""
    if seen.si_code == os.CLD_EXITED:
        return seen.si_status
    if seen.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return 128 + seen.si_status
    return 255


class Reaper:
    """Collects every child's exit status and dispatches it by pid.

    Use the process-wide instance from :func:`get_reaper`. All methods must be called from the
    thread running the loop the reaper is installed in.
    """

    #: how many unclaimed exits are kept; the oldest are dropped (and logged) beyond this
    retain_limit = 4096

    def __init__(self) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._waiters: dict[int, list[asyncio.Future[ExitEvent]]] = {}
        self._retained: collections.OrderedDict[int, ExitEvent] = collections.OrderedDict()
        self._listeners: list[Callable[[ExitEvent], None]] = []

    def __repr__(self) -> str:
        return "<Reaper installed=%s waiting=%d retained=%d>" % (
            self.installed, len(self._waiters), len(self._retained))

    @property
    def installed(self) -> bool:
        """True when installed in a loop that is still open."""
        return self._loop is not None and not self._loop.is_closed()

    def install(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        """Handle SIGCHLD in ``loop`` (default: the running loop) and reap what is already dead.

        Installing again in the same loop does nothing; installing in a new loop (the previous one
        closed) moves the handler. Waiters of a closed loop are dropped.
        """
        loop = loop or asyncio.get_running_loop()
        if self._loop is loop and not loop.is_closed():
            return
        if self.installed and self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
        self._loop = loop
        for pid in list(self._waiters):
            self._waiters[pid] = [f for f in self._waiters[pid] if not f.get_loop().is_closed()]
            if not self._waiters[pid]:
                del self._waiters[pid]
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self._detach_before_close(loop)
        self.reap()

    def _detach_before_close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remove our SIGCHLD handler when ``loop`` closes, before its wakeup socket goes away.

        ``loop.close()`` closes the self-pipe first and only then drops signal handlers; a child
        exiting in between makes the interpreter report a failed wakeup write. Daemons uninstall
        explicitly; this covers loops owned by ``asyncio.run``, test runners and CLIs.
        """
        original = loop.close

        def close() -> None:
            if self._loop is loop:
                self.uninstall()
            original()

        loop.close = close  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Stop handling SIGCHLD (at daemon shutdown); pending waiters stay registered."""
        if self.installed and self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
        self._loop = None

    def subscribe(self, pid: int) -> asyncio.Future[ExitEvent]:
        """A future resolved with the exit of ``pid``.

        If the exit was already reaped and retained, the future is done at once and the retained
        record is consumed. Several subscribers of one pid all receive the event. Cancelling the
        future unsubscribes it.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ExitEvent] = loop.create_future()
        event = self._retained.pop(pid, None)
        if event is not None:
            fut.set_result(event)
            return fut
        self._waiters.setdefault(pid, []).append(fut)
        fut.add_done_callback(functools.partial(self._drop_waiter, pid))
        return fut

    def _drop_waiter(self, pid: int, fut: asyncio.Future[ExitEvent]) -> None:
        waiters = self._waiters.get(pid)
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._waiters[pid]

    def peek(self, pid: int) -> Optional[ExitEvent]:
        """The retained exit of ``pid`` without consuming it (None if none is retained)."""
        return self._retained.get(pid)

    def forget(self, pid: int) -> Optional[ExitEvent]:
        """Drop and return a retained exit of ``pid`` (e.g. a stale record before reusing the pid)."""
        return self._retained.pop(pid, None)

    def add_listener(self, callback: Callable[[ExitEvent], None]) -> None:
        """Call ``callback(event)`` for every reaped child, before waiters are resolved."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[ExitEvent], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def reap(self) -> None:
        """Collect every exited child now (the SIGCHLD handler; safe to call at any time).

        Each exit is seen first without reaping (``WNOWAIT``) and handed to the listeners, which may
        record it durably, and only then reaped: a daemon killed in between leaves a zombie that its
        subreaper collects, so no exit status is ever lost in this process's memory.
        """
        while True:
            try:
                seen = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if seen is None or seen.si_pid == 0:
                return
            event = ExitEvent(seen.si_pid, _waitid_code(seen), datetime.now(timezone.utc))
            self._notify_listeners(event)
            try:
                os.waitpid(seen.si_pid, os.WNOHANG)
            except ChildProcessError:
                pass  # collected meanwhile by someone else: the status above is still its own
            self._resolve(event)

    def _notify_listeners(self, event: ExitEvent) -> None:
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:
                log.exception("exit listener %r failed for pid %d", callback, event.pid)

    def _resolve(self, event: ExitEvent) -> None:
        waiters = [f for f in self._waiters.pop(event.pid, []) if not f.done() and not f.get_loop().is_closed()]
        if waiters:
            for fut in waiters:
                fut.set_result(event)
            return
        self._retained[event.pid] = event
        while len(self._retained) > self.retain_limit:
            old_pid, _ = self._retained.popitem(last=False)
            log.warning("dropping unclaimed exit of pid %d (more than %d unclaimed exits)",
                        old_pid, self.retain_limit)


_REAPER = Reaper()


def get_reaper() -> Reaper:
    """The process-wide reaper (not yet installed until someone calls :meth:`Reaper.install`)."""
    return _REAPER
