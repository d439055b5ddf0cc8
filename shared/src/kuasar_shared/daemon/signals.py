"""Signal handling for daemons: SIGTERM/SIGINT request a clean shutdown, SIGHUP a reload.

A clean shutdown stops the daemon only: pods and task servers keep running (units use
``KillMode=process``), the main coroutine decides what to close. Handlers run in the event loop
(``loop.add_signal_handler``), never in signal context. A reload callback may be a coroutine
function; its task is owned here and cancelled by :meth:`Signals.close`.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from typing import Any, Awaitable, Callable, Optional, Union

__all__ = ["Signals", "ReloadCallback"]

log = logging.getLogger(__name__)

ReloadCallback = Callable[[], Union[None, Awaitable[Any]]]


class Signals:
    """Installs SIGTERM, SIGINT and SIGHUP handlers in the running loop.

    :ivar shutdown_event: set by the first SIGTERM or SIGINT (or :meth:`request_shutdown`).
    :ivar received: the signal that requested shutdown, if any.
    """

    def __init__(self, on_shutdown: Optional[Callable[[int], None]] = None,
                 on_reload: Optional[ReloadCallback] = None) -> None:
        self.shutdown_event = asyncio.Event()
        self.received: Optional[int] = None
        self.on_shutdown = on_shutdown
        self.on_reload = on_reload
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._reload_task: Optional[asyncio.Task[Any]] = None

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.request_shutdown, sig)
        self._loop.add_signal_handler(signal.SIGHUP, self._reload)

    def request_shutdown(self, sig: int = 0) -> None:
        """Start a clean shutdown (idempotent: later requests are only logged)."""
        if self.shutdown_event.is_set():
            log.info("shutdown already in progress (%s)", _name(sig))
            return
        log.info("shutting down (%s)", _name(sig))
        self.received = sig or None
        self.shutdown_event.set()
        if self.on_shutdown is not None:
            self.on_shutdown(sig)

    def _reload(self) -> None:
        if self.on_reload is None:
            log.info("SIGHUP received; nothing to reload")
            return
        if self._reload_task is not None and not self._reload_task.done():
            log.warning("SIGHUP received while a reload is still running; ignored")
            return
        log.info("SIGHUP received: reloading")
        try:
            result = self.on_reload()
        except Exception:
            log.exception("reload failed")
            return
        if inspect.isawaitable(result):
            self._reload_task = asyncio.ensure_future(self._await_reload(result))

    @staticmethod
    async def _await_reload(result: Awaitable[Any]) -> None:
        try:
            await result
        except Exception:
            log.exception("reload failed")

    async def close(self) -> None:
        """Remove the handlers and cancel (and await) a running reload."""
        if self._loop is not None and not self._loop.is_closed():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._loop.remove_signal_handler(sig)
        self._loop = None
        task, self._reload_task = self._reload_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "requested"
