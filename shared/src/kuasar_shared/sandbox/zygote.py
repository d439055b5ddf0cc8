"""The first task server as a fork of the sandboxer, sharing its interpreter pages.

A sandboxer and its task server import nearly the same code (stdlib, asyncio, protobuf, kuasar_shared):
~12 MiB of private pages each when both start a fresh interpreter. :meth:`TaskZygote.fork`, called by a
sandboxer's ``main()`` while it has no thread and no loop, imports the task program, freezes the collector
(so that neither process's collections write to those objects) and forks a child that waits on a
socketpair. :meth:`TaskZygote.start` turns that child into the task server: it takes the command line, the
log fd, working directory and umask the spawned program would get, starts a session, closes every other fd,
names itself (``PR_SET_NAME``) and runs the program's ``main``. The pages both processes leave untouched
stay shared copy-on-write.

One use only: the zygote is the sandboxer's first task server, or exits unused (:meth:`close`) when a
running server is re-adopted. Every later server (a crash restart, ``kuasar-ctl upgrade``) is spawned from
the installed command, so a server started after an upgrade of the task program runs the new code.
"""
from __future__ import annotations

import array
import ctypes
import gc
import importlib
import json
import os
import socket
import struct
import sys
import traceback
from typing import Any, Callable, Dict, NoReturn, Optional, Sequence

__all__ = ["TaskZygote"]

_PR_SET_NAME = 15
_REQUEST_MAX = 1 << 16


class TaskZygote:
    """The sandboxer's end of a forked child that becomes the first task server.

    Resource handling: the socket is closed by :meth:`start` or :meth:`close`; closing it unused makes
    the child exit (it is the sandboxer's child: the sandboxer's reaper collects it).
    """

    def __init__(self, pid: int, sock: socket.socket, command: Sequence[str]) -> None:
        self.pid = pid
        #: how the program would be spawned (the start of every command line :meth:`start` takes)
        self.command = list(command)
        self._sock: Optional[socket.socket] = sock

    def __repr__(self) -> str:
        return f"TaskZygote(pid={self.pid}, used={self._sock is None})"

    @classmethod
    def fork(cls, command: Sequence[str], module: str, name: str) -> "TaskZygote":
        """Import ``module`` (the task program ``command`` runs, whose ``main(argv)`` serves) and fork the child.

        Call only with no thread and no event loop running. ``name`` is the program's name, set as the
        server's ``PR_SET_NAME`` (what ``ps`` and ``/proc/<pid>/comm`` show).

        :raise ImportError: the task program is not installed; OSError: fork failed.
        """
        main: Callable[[Sequence[str]], Any] = importlib.import_module(module).main
        gc.collect()
        gc.freeze()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            try:
                ours.close()
                _wait_and_become(theirs, main, name)
            except BaseException:
                traceback.print_exc()  # to the server's log once it has one
            finally:
                os._exit(1)
        theirs.close()
        return cls(pid, ours, command)

    def fileno(self) -> int:
        """The sandboxer's end (to keep when daemonizing); -1 once used or closed."""
        return self._sock.fileno() if self._sock is not None else -1

    def start(self, argv: Sequence[str], log_fd: Optional[int]) -> int:
        """Make the child the task server spawning ``argv`` would start: the program's ``main`` with the
        arguments after :attr:`command`; stdout and stderr go to ``log_fd``, else stay the sandboxer's at
        start-up. Returns its pid.

        :raise ValueError: ``argv`` does not start with :attr:`command`; OSError: already used, or the
            child is gone.
        """
        if list(argv[:len(self.command)]) != self.command:
            raise ValueError(f"{' '.join(argv)} is not the zygote's program {' '.join(self.command)}")
        if self._sock is None:
            raise OSError("the task zygote was already used")
        sock, self._sock = self._sock, None
        with sock:
            request = json.dumps({"argv": list(argv), "skip": len(self.command), "cwd": os.getcwd(),
                                  "umask": _umask()}).encode()
            fds = [] if log_fd is None else [log_fd]
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
            sock.sendmsg([request], ancillary)
            reply = sock.recv(8)
        if len(reply) != 8:
            raise OSError(f"the task zygote pid {self.pid} exited before it started the task server")
        (pid,) = struct.unpack("q", reply)
        return int(pid)

    def close(self) -> None:
        """Let an unused child exit."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _umask() -> int:
    """Our umask, read without setting it (other threads may be creating files)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise OSError("/proc/self/status has no Umask line")


def _set_name(name: str) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _wait_and_become(sock: socket.socket, main: Callable[[Sequence[str]], Any], name: str) -> NoReturn:
    """The child: keep only stdio and ``sock``, wait for the one request, become the server."""
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    # objects of the sandboxer's main() that own the fds closed above are never finalized: this process
    # leaves through os._exit only
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(_REQUEST_MAX, socket.CMSG_SPACE(4))
            break
        except InterruptedError:
            continue
    if not data:
        os._exit(0)  # the sandboxer re-adopted a running server, or exited
    log_fd = -1
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            log_fd = array.array("i", payload[:4])[0]
    request: Dict[str, Any] = json.loads(data)
    argv = [str(a) for a in request["argv"]]
    os.setsid()
    os.chdir(request["cwd"])
    os.umask(int(request["umask"]))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    if log_fd >= 0:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    _set_name(name)
    sys.argv = argv
    sock.send(struct.pack("q", os.getpid()))
    sock.close()
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    try:
        code = main(argv[int(request["skip"]):])
    except SystemExit as stop:
        code = stop.code
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))
