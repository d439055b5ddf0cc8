"""The sandboxer's end of the ``[sandbox-parent]`` helper (see :mod:`.holder_helper`).

Like upstream's ``runc/src/main.rs``, the helper is started before the sandboxer's asyncio loop
and grpc threads exist; it is a fresh interpreter running :mod:`.holder_helper`, asked for pod
namespace holders over a socketpair.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from typing import Optional

from kuasar_shared.errors import Internal, InvalidArgument, Unavailable
from kuasar_shared.pause import pause_elf

__all__ = ["HolderParent"]

log = logging.getLogger(__name__)

_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "holder_helper.py")


class HolderParent:
    """The sandboxer's end of the ``[sandbox-parent]`` helper.

    Resource handling: :meth:`fork` must run before any thread or event loop exists; the helper
    lives as long as the sandboxer's end of the socketpair (:meth:`fileno`, to keep across
    daemonizing) is open: :meth:`close`, or the sandboxer's exit, ends it; holders keep running.
    """

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._lock: Optional[asyncio.Lock] = None

    @classmethod
    def fork(cls) -> "HolderParent":
        """Start the helper (fork + exec). Call before the event loop starts."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.set_inheritable(True)
        pause = os.memfd_create("sandbox-pause", 0)  # inherited by the helper and every holder
        os.write(pause, pause_elf())
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                os.execv(sys.executable, [sys.executable, "-I", "-S", _HELPER, str(theirs.fileno()), str(pause)])
            finally:  # the helper must never return into the sandboxer's code
                os._exit(1)
        theirs.close()
        os.close(pause)
        ours.setblocking(False)
        return cls(pid, ours)

    async def spawn(self, sandbox_id: str, netns: str, hostname: str, host_ipc: bool = False,
                    host_pid: bool = False, sysctls: Optional[dict[str, str]] = None) -> int:
        """Create a holder for a pod and return its pid (host PID namespace).

        ``host_ipc`` / ``host_pid``: stay in the node's IPC / PID namespace; ``sysctls``: ``/proc/sys``
        file -> value, written by the holder in the pod's namespaces.

        :raise InvalidArgument: when the netns cannot be joined, the hostname or a sysctl set.
        :raise Unavailable: when the helper is gone.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        request = json.dumps({"id": sandbox_id, "netns": netns, "hostname": hostname, "host_ipc": host_ipc,
                              "host_pid": host_pid, "sysctls": sysctls or {}}) + "\n"
        async with self._lock:
            try:
                await loop.sock_sendall(self._sock, request.encode())
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await loop.sock_recv(self._sock, 4096)
                    if not chunk:
                        raise Unavailable("the sandbox-parent helper exited")
                    line += chunk
            except OSError as err:
                raise Unavailable(f"the sandbox-parent helper is unreachable: {err}") from err
        answer = json.loads(line)
        if "error" in answer:
            raise InvalidArgument(f"cannot create the namespaces of sandbox {sandbox_id}: "
                                  f"{answer['error']}")
        pid = int(answer.get("pid", 0))
        if pid <= 0:
            raise Internal(f"sandbox-parent answered no pid for sandbox {sandbox_id}")
        return pid

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close the channel; the helper exits on EOF (holders are unaffected)."""
        self._sock.close()
