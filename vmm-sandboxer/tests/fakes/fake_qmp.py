"""A QMP server as QEMU and StratoVirt run it on their ``-qmp unix:...`` socket: the greeting, then JSON
commands as a stream (clients need not end them with a newline; qemu.qmp does not), each answered with
``return`` (echoing ``id``) or ``error``."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Dict

__all__ = ["Commands", "serve_qmp", "QmpError", "query_status"]

#: a command's handler gets its arguments and returns the ``return`` value
Commands = Dict[str, Callable[[Dict[str, Any]], Any]]


def query_status(_: Dict[str, Any]) -> Dict[str, Any]:
    """``query-status`` of a running VM (QEMU and StratoVirt answer alike)."""
    return {"status": "running", "singlestep": False, "running": True}


class QmpError(Exception):
    """An ``error`` answer: ``class`` and ``desc``."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


async def serve_qmp(path: str, version: Dict[str, Any], commands: Commands) -> asyncio.AbstractServer:
    """Serve QMP on ``path``; ``version`` is the greeting's version object."""
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps({"QMP": {"version": version, "capabilities": []}}).encode() + b"\r\n")
        negotiated = False
        decoder = json.JSONDecoder()
        buffer = ""
        try:
            while True:
                buffer = buffer.lstrip()
                try:
                    message, end = decoder.raw_decode(buffer)
                except ValueError:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    buffer += chunk.decode()
                    continue
                buffer = buffer[end:]
                name = message.get("execute", "")
                answer: Dict[str, Any]
                try:
                    if name == "qmp_capabilities":
                        negotiated, value = True, {}
                    elif not negotiated:
                        raise QmpError("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
                    elif name not in commands:
                        raise QmpError("CommandNotFound", "The command %s has not been found" % name)
                    else:
                        value = commands[name](message.get("arguments", {}))
                    answer = {"return": value}
                except QmpError as err:
                    answer = {"error": {"class": err.error_class, "desc": err.desc}}
                if "id" in message:
                    answer["id"] = message["id"]
                writer.write(json.dumps(answer).encode() + b"\r\n")
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()
    return await asyncio.start_unix_server(session, path)
