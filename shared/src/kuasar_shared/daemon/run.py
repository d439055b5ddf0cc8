"""The one start-up runner every sandboxer and task server calls from ``main()``.

``run_daemon`` does, in order: logging; optional daemonizing through python-daemon (before any
event loop or thread exists, keeping the fds the caller lists); the asyncio loop; the child
subreaper flag and the process-wide reaper; SIGTERM/SIGINT/SIGHUP handling; the systemd watchdog.
Then it awaits the caller's ``main(ctx)``. ``main`` binds its sockets, calls ``ctx.ready()``
(READY=1), waits for ``ctx.shutdown_event`` and closes what it owns. A SIGTERM stops the daemon
only: whether pods are touched is ``main``'s decision (normally they keep running).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import sys
from typing import Any, Awaitable, Callable, Coroutine, NoReturn, Optional, Sequence

from kuasar_shared.daemon.log import setup_logging
from kuasar_shared.daemon.notify import Notifier
from kuasar_shared.daemon.reaper import Reaper, get_reaper, set_child_subreaper
from kuasar_shared.daemon.signals import ReloadCallback, Signals

__all__ = ["DaemonContext", "run_daemon"]

log = logging.getLogger(__name__)


class DaemonContext:
    """What ``main`` gets from :func:`run_daemon`.

    :ivar name: daemon name (``runc-sandboxer``).
    :ivar version: its version.
    :ivar args: the parsed command line (see :mod:`kuasar_shared.daemon.args`).
    :ivar shutdown_event: set on SIGTERM/SIGINT or :meth:`request_shutdown`.
    :ivar reaper: the installed process-wide reaper.
    :ivar notifier: the sd_notify sender.
    """

    def __init__(self, name: str, version: str, args: argparse.Namespace, signals: Signals,
                 reaper: Reaper, notifier: Notifier) -> None:
        self.name = name
        self.version = version
        self.args = args
        self.reaper = reaper
        self.notifier = notifier
        self._signals = signals
        self._tasks: set[asyncio.Task[Any]] = set()
        self.is_ready = False

    @property
    def shutdown_event(self) -> asyncio.Event:
        return self._signals.shutdown_event

    def ready(self, status: Optional[str] = None, recovered: Optional[int] = None) -> None:
        """Tell systemd the daemon is ready; call once every listening socket is bound.

        Logs the one start-up line operators look for: version, config file, socket, recovered pods.
        """
        self.is_ready = True
        parts = [f"config {getattr(self.args, 'config', None) or '(none)'}",
                 f"listening on {getattr(self.args, 'listen', '?')}"]
        if recovered is not None:
            parts.append(f"{recovered} pod{'' if recovered == 1 else 's'} recovered")
        if status:
            parts.append(status)
        log.info("%s %s ready: %s", self.name, self.version, ", ".join(parts))
        self.notifier.ready(status)

    def status(self, text: str) -> None:
        self.notifier.status(text)

    def request_shutdown(self) -> None:
        self._signals.request_shutdown()

    def set_reload(self, callback: Optional[ReloadCallback]) -> None:
        """What SIGHUP runs (a function or coroutine function without arguments)."""
        self._signals.on_reload = callback

    def create_task(self, coro: Coroutine[Any, Any, Any], name: Optional[str] = None) -> "asyncio.Task[Any]":
        """Start a background task owned by the daemon: cancelled and awaited after ``main``
        returns; if it fails, the failure is logged and a shutdown is requested."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())
            self.request_shutdown()

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _daemonize(keep_fds: Sequence[int], log_file: str) -> None:
    import daemon  # python-daemon; imported only when asked for

    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    ctx = daemon.DaemonContext(working_directory="/", umask=0o022, files_preserve=list(keep_fds),
                               prevent_core=False, signal_map={}, detach_process=True)
    ctx.open()


#: seconds after start-up when the C heap's free pages are given back (set-up is done by then)
TRIM_AFTER = 2.0


def _trim_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``): importing and setting up
    leaves ~1 MB of freed blocks that a daemon would otherwise hold, dirty, for its whole life."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


async def _amain(name: str, version: str, args: argparse.Namespace,
                 main: Callable[[DaemonContext], Awaitable[None]], subreaper: bool) -> int:
    if subreaper:
        set_child_subreaper()
    reaper = get_reaper()
    reaper.install()
    notifier = Notifier.from_env()

    def stopping(sig: int) -> None:
        notifier.stopping()

    signals = Signals(on_shutdown=stopping)
    signals.install()
    ctx = DaemonContext(name, version, args, signals, reaper, notifier)
    watchdog = asyncio.ensure_future(notifier.run_watchdog())
    trim = asyncio.get_running_loop().call_later(TRIM_AFTER, _trim_heap)
    code = 0
    try:
        await main(ctx)
    except Exception:
        log.exception("%s failed", name)
        code = 1
    finally:
        trim.cancel()
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        await ctx._cancel_tasks()
        await signals.close()
        reaper.uninstall()
    log.info("%s stopped", name)
    return code


def run_daemon(name: str, version: str, args: argparse.Namespace,
               main: Callable[[DaemonContext], Awaitable[None]], *, keep_fds: Sequence[int] = (),
               subreaper: bool = True) -> NoReturn:
    """Run a daemon to completion and exit the process (0 clean, 1 when ``main`` raised).

    The exit skips the interpreter's own teardown (grpc's threads, module finalization): it cost
    30-120 ms of every ``systemctl restart``, and by then ``main`` has closed its sockets, written
    its state durably and the loop has shut down its executor; logs and stdio are flushed first.

    :param args: from :func:`kuasar_shared.daemon.args.parse_args` (``log_level``, ``daemon``,
        ``dir`` are used here).
    :param main: the daemon body; see the module docstring.
    :param keep_fds: fds to keep open when daemonizing (``--daemon``); all others are closed.
    :param subreaper: make the process a child subreaper (orphaned descendants become children).

    With ``--daemon`` the process detaches before the loop starts and logs to
    ``<dir>/<name>.log``; otherwise logs go to stderr.
    """
    level = getattr(args, "log_level", "info")
    if getattr(args, "daemon", False):
        log_file = os.path.join(args.dir, name + ".log")
        _daemonize(keep_fds, log_file)
        setup_logging(level, filename=log_file)
    else:
        setup_logging(level)
    code = asyncio.run(_amain(name, version, args, main, subreaper))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
