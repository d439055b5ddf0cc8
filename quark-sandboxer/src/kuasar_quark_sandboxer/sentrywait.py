"""Wait for a container's init inside its pod's Sentry from quark-task itself: a socket per container, no process.

runsc runs every container's init inside the pod's Sentry, so its exit is not a host process exit:
``runsc wait <id>`` learns it by calling ``containerManager.Wait`` on the sandbox's control server and
blocking until the init exits, and quark-task used to keep one such process (~4 MB) per running
container. The call is made here instead. The control server listens on the abstract unix socket
``@runsc-sandbox.<sandbox id>@``, which ``runsc create`` makes in the network namespace of its caller
(ours) before the sandbox joins the pod's, and speaks urpc: one JSON object ``{"method", "arg"}`` per
call, answered by ``{"success", "err", "result"}``; Wait's result is the init's wait status. A runsc
whose control server is not there (a newer layout) is waited for with ``runsc wait`` as before.
"""
from __future__ import annotations

import asyncio
import json
import logging

from kuasar_shared.errors import Internal, Unavailable

__all__ = ["control_addresses", "sentry_wait", "exit_status"]

log = logging.getLogger(__name__)

_METHOD = "containerManager.Wait"
#: an answer larger than this is not a Wait answer
_MAX_ANSWER = 1 << 16


def control_addresses(sandbox_id: str) -> tuple[str, str]:
    """The abstract socket names the sandbox's control server may have: runsc's Go socket code binds
    ``\\0runsc-sandbox.<id>`` with its terminating NUL counted (``@runsc-sandbox.<id>@`` in
    /proc/net/unix); without it is tried too."""
    name = "\0runsc-sandbox." + sandbox_id
    return name + "\0", name


def exit_status(wait_status: int) -> int:
    """A Linux wait status as ``runsc wait`` reports it: the exit code, or 128 + the signal."""
    signal = wait_status & 0x7F
    return (wait_status >> 8) & 0xFF if signal == 0 else 128 + signal


async def sentry_wait(sandbox_id: str, container_id: str) -> int:
    """Block until the init of ``container_id`` exits in the Sentry of ``sandbox_id``; its exit status.

    :raise FileNotFoundError: no control server at :func:`control_addresses` (use ``runsc wait``).
    :raise Unavailable: the sandbox went away before answering (it died: the exit is unknown).
    :raise Internal: the control server refused the call or answered something else.
    """
    reader, writer = await _connect(sandbox_id)
    try:
        writer.write(json.dumps({"method": _METHOD, "arg": container_id}).encode())
        await writer.drain()
        answer = await _read_object(reader, sandbox_id)
    except (ConnectionError, OSError) as err:
        raise Unavailable(f"sandbox {sandbox_id} went away while waiting for {container_id}: {err}") from err
    finally:
        writer.close()
    if not isinstance(answer, dict) or not answer.get("success"):
        error = answer.get("err") if isinstance(answer, dict) and answer.get("err") else answer
        raise Internal(f"runsc cannot wait for container {container_id}: {error!r}")
    try:
        return exit_status(int(answer["result"]))
    except (KeyError, TypeError, ValueError) as err:
        raise Internal(f"runsc answered no wait status for container {container_id}: {answer!r}") from err


async def _connect(sandbox_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    for address in control_addresses(sandbox_id):
        try:
            return await asyncio.open_unix_connection(address)
        except ConnectionRefusedError:  # no such abstract socket
            continue
    raise FileNotFoundError(f"no runsc control server for sandbox {sandbox_id}")


async def _read_object(reader: asyncio.StreamReader, sandbox_id: str) -> object:
    """One JSON value from the stream (urpc sends no length or delimiter)."""
    data = b""
    decoder = json.JSONDecoder()
    while len(data) < _MAX_ANSWER:
        chunk = await reader.read(4096)
        if not chunk:
            raise Unavailable(f"sandbox {sandbox_id} closed its control connection without an answer")
        data += chunk
        try:
            value, _ = decoder.raw_decode(data.decode())
        except (ValueError, UnicodeDecodeError):
            continue
        return value
    raise Internal(f"sandbox {sandbox_id} answered more than {_MAX_ANSWER} bytes to a Wait")
