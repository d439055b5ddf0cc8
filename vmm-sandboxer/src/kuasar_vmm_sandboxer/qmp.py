"""QMP over ``qemu.qmp`` for the hypervisors that speak it (QEMU, StratoVirt): short-lived connections,
so an idle pod holds no connection and no task.

A QMP socket (QEMU ``server=on,wait=off``, StratoVirt ``server,nowait``) serves one client at a time;
each command here connects, negotiates, executes and disconnects (a few ms on a unix socket), which
also makes re-attaching after a sandboxer restart trivial.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Optional

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.error import QMPError

from kuasar_shared.errors import Internal, Unavailable

__all__ = ["Qmp"]

log = logging.getLogger(__name__)
# qemu.qmp logs every message at DEBUG; one line per command from us is enough
logging.getLogger("qemu.qmp").setLevel(logging.INFO)


class Qmp:
    """The QMP socket of one VM."""

    connect_timeout = 3.0

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name

    async def execute(self, command: str, arguments: Optional[dict[str, Any]] = None,
                      timeout: float = 10.0) -> Any:
        """Run one QMP command and return its ``return`` value.

        :raise Unavailable: the socket does not answer. :raise Internal: QEMU answered with an error.
        """
        client = QMPClient(self.name)
        try:
            await asyncio.wait_for(client.connect(self.path), self.connect_timeout)
        except (OSError, QMPError, asyncio.TimeoutError) as err:
            raise Unavailable("QMP %s: cannot connect: %s" % (self.path, err or type(err).__name__)) from err
        try:
            return await asyncio.wait_for(client.execute(command, arguments), timeout)
        except ExecuteError as err:
            raise Internal("QMP %s %s failed: %s" % (self.name, command, err.error.error.desc)) from err
        except (OSError, QMPError, asyncio.TimeoutError) as err:
            if command == "quit":
                return None  # QEMU may close the socket before answering
            raise Unavailable("QMP %s %s: %s" % (self.name, command, err or type(err).__name__)) from err
        finally:
            try:
                await client.disconnect()
            except (OSError, EOFError, QMPError) as err:
                log.debug("QMP %s: disconnect: %s", self.name, err)

    async def wait_ready(self, timeout: float, alive: "Any") -> None:
        """Poll until QMP answers ``query-status`` or ``alive()`` turns false.

        :raise Unavailable: not answering within ``timeout`` or the VMM died.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                if not os.path.exists(self.path):
                    raise Unavailable("QMP socket %s does not exist yet" % self.path)
                await self.execute("query-status", timeout=2.0)
                return
            except Unavailable:
                if not alive():
                    raise Unavailable("VMM %s exited during start-up" % self.name) from None
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(0.01)
