"""systemd readiness and watchdog notifications (``sd_notify``) without a dependency.

Units run sandboxers as ``Type=notify`` with ``WatchdogSec=``: the daemon sends ``READY=1`` once
every socket is bound, ``STOPPING=1`` when a clean shutdown starts, and ``WATCHDOG=1`` every
``WATCHDOG_USEC / 2``. Messages are datagrams to ``$NOTIFY_SOCKET`` (a path, or an abstract
name written with a leading ``@``). Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Mapping, Optional

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to one socket address (or nowhere)."""

    def __init__(self, address: Optional[str], watchdog_usec: Optional[int] = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Notifier":
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (the watchdog applies
        only when ``WATCHDOG_PID`` is unset or names this process)."""
        env = os.environ if environ is None else environ
        usec: Optional[int] = None
        raw = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if raw and (not pid or pid == str(os.getpid())):
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring invalid WATCHDOG_USEC=%r", raw)
            else:
                usec = usec if usec > 0 else None
        return cls(env.get("NOTIFY_SOCKET"), usec)

    def __repr__(self) -> str:
        return "<Notifier %s watchdog_usec=%s>" % (self.address, self.watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *states: str) -> bool:
        """Send ``states`` (e.g. ``"READY=1"``) as one message; False when disabled or it failed
        (failure is logged, never raised: a missing systemd must not stop the daemon)."""
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(states).encode(), addr)
        except OSError as err:
            log.warning("sd_notify to %s failed: %s", self.address, err)
            return False
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        states = ["READY=1", "MAINPID=%d" % os.getpid()]
        if status:
            states.append("STATUS=" + status)
        return self.notify(*states)

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text)

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    @property
    def watchdog_interval(self) -> Optional[float]:
        """Seconds between pings (half of ``WATCHDOG_USEC``), None when no watchdog is asked for."""
        if self.watchdog_usec is None or self.address is None:
            return None
        return self.watchdog_usec / 2_000_000

    async def run_watchdog(self) -> None:
        """Ping the watchdog forever at :attr:`watchdog_interval`; returns at once without one.
        Run it as an owned task and cancel it at shutdown."""
        interval = self.watchdog_interval
        if interval is None:
            return
        log.debug("pinging the systemd watchdog every %.3f s", interval)
        while True:
            self.watchdog()
            await asyncio.sleep(interval)
