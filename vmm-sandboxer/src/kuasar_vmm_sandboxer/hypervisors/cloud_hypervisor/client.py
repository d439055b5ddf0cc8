"""The Cloud Hypervisor REST API (``/api/v1/...``) over its ``--api-socket``: one HTTP/1.1 request per
connection (``Connection: close``), so an idle pod holds no connection.

Endpoints used: ``GET vmm.ping`` (the VMM answers), ``GET vm.info`` (VM state), ``PUT vm.shutdown``
(stop the guest) and ``PUT vmm.shutdown`` (end the process).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

from kuasar_shared.errors import Internal, Unavailable

__all__ = ["ChClient"]

_LIMIT = 1 << 20


class ChClient:
    """Requests to the API socket ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def request(self, method: str, endpoint: str, body: Optional[dict[str, Any]] = None,
                      timeout: float = 5.0) -> Any:
        """Send one request; the decoded JSON answer (None for an empty one).

        :raise Unavailable: the socket does not answer. :raise Internal: the VMM refused (status >= 300).
        """
        try:
            return await asyncio.wait_for(self._request(method, endpoint, body), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            raise Unavailable("cloud-hypervisor API %s %s %s: %s"
                              % (self.path, method, endpoint, err or type(err).__name__)) from err

    async def _request(self, method: str, endpoint: str, body: Optional[dict[str, Any]]) -> Any:
        payload = json.dumps(body).encode() if body is not None else b""
        reader, writer = await asyncio.open_unix_connection(self.path, limit=_LIMIT)
        try:
            head = ["%s /api/v1/%s HTTP/1.1" % (method, endpoint), "Host: localhost", "Accept: application/json",
                    "Connection: close", "Content-Length: %d" % len(payload)]
            if payload:
                head.append("Content-Type: application/json")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            status_line = (await reader.readline()).decode("latin-1").split(" ", 2)
            if len(status_line) < 2 or not status_line[1].isdigit():
                raise ValueError("not an HTTP answer: %r" % " ".join(status_line)[:80])
            status = int(status_line[1])
            length: Optional[int] = None
            while True:
                line = (await reader.readline()).decode("latin-1").strip()
                if not line:
                    break
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            data = await (reader.readexactly(length) if length is not None else reader.read())
        finally:
            writer.close()
        if status >= 300:
            raise Internal("cloud-hypervisor API %s %s: HTTP %d %s" % (method, endpoint, status,
                                                                      data.decode(errors="replace")[:200]))
        return json.loads(data) if data.strip() else None
