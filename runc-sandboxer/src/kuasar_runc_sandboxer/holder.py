"""The sandboxer's end of the ``[sandbox-parent]`` helper, a C program (``native/sandbox_parent.c``).

Like upstream's ``runc/src/main.rs``, the helper is started before the sandboxer's asyncio loop
exists; it is the program ``sandbox-parent`` built into this package, asked for pod namespace
holders over a SOCK_SEQPACKET socketpair, one message each way in
:mod:`kuasar_shared.native` form (the C file's header has the fields). It forks each holder
(double fork, new UTS/IPC/PID namespaces, the pod's netns, hostname and sysctls, then the pause
program) and keeps one made ahead of need.
"""
from __future__ import annotations

import asyncio
import os
import socket
from typing import Optional

from kuasar_shared.errors import Internal, InvalidArgument, Unavailable
from kuasar_shared.native import decode, encode, program
from kuasar_shared.pause import pause_elf

__all__ = ["HolderParent", "executable", "NAME", "MAX_MESSAGE"]

#: the program's file name and ``comm`` (its spare holder keeps that name until it is handed a pod)
NAME = "sandbox-parent"
#: the largest request the helper reads (and answer it sends)
MAX_MESSAGE = 65536


def executable() -> str:
    """The path of ``sandbox-parent``.

    :raise FileNotFoundError: it was not built (the package was installed without its C part).
    """
    return program(__file__, NAME, "kuasar-runc-sandboxer", "native/sandbox_parent.c")


class HolderParent:
    """The sandboxer's end of the ``[sandbox-parent]`` helper.

    Resource handling: :meth:`fork` should run before any thread or event loop exists; the helper
    lives as long as the sandboxer's end of the socketpair (:meth:`fileno`, to keep across
    daemonizing) is open: :meth:`close`, or the sandboxer's exit, ends it; holders keep running.
    """

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._lock: Optional[asyncio.Lock] = None

    @classmethod
    def fork(cls) -> "HolderParent":
        """Start the helper (fork + exec).

        :raise FileNotFoundError: the helper program was not built.
        """
        program = executable()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        pause = os.memfd_create("sandbox-pause", 0)  # inherited by the helper and every holder
        os.write(pause, pause_elf())
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                os.execv(program, [program, "--control", str(theirs.fileno()), "--pause", str(pause)])
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

        :raise InvalidArgument: when the netns cannot be joined, the hostname or a sysctl set, or a
            value cannot be sent (a NUL byte, too long).
        :raise Unavailable: when the helper is gone.
        """
        try:
            request = encode([("id", sandbox_id), ("netns", netns), ("hostname", hostname),
                              ("host_ipc", "1" if host_ipc else "0"), ("host_pid", "1" if host_pid else "0")] +
                             [("sysctl", f"{path}={value}") for path, value in (sysctls or {}).items()])
        except ValueError as err:
            raise InvalidArgument(f"cannot create the namespaces of sandbox {sandbox_id}: {err}") from None
        if len(request) > MAX_MESSAGE:
            raise InvalidArgument(f"cannot create the namespaces of sandbox {sandbox_id}: its settings take "
                                  f"{len(request)} bytes, more than {MAX_MESSAGE}")
        # shielded: a caller cancelled between request and answer must not leave its answer to the next one
        message = await asyncio.shield(self._exchange(request))
        if not message:
            raise Unavailable("the sandbox-parent helper exited")
        try:
            answer = dict(decode(message))
        except ValueError as err:
            raise Internal(f"sandbox-parent answered sandbox {sandbox_id} with {err}") from None
        if "error" in answer:
            raise InvalidArgument(f"cannot create the namespaces of sandbox {sandbox_id}: {answer['error']}")
        if not answer.get("pid", "").isdigit() or int(answer["pid"]) <= 0:
            raise Internal(f"sandbox-parent answered no pid for sandbox {sandbox_id}: {answer}")
        return int(answer["pid"])

    async def _exchange(self, request: bytes) -> bytes:
        """Send one request and read its answer (empty: the helper exited), one exchange at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        async with self._lock:
            try:
                await loop.sock_sendall(self._sock, request)
                return await loop.sock_recv(self._sock, MAX_MESSAGE)
            except OSError as err:
                raise Unavailable(f"the sandbox-parent helper is unreachable: {err}") from err

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close the channel; the helper exits on EOF (holders are unaffected)."""
        self._sock.close()
