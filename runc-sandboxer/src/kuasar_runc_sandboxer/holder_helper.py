"""The ``[sandbox-parent]`` helper program: forks the tiny processes that hold a pod's namespaces.

runc-sandboxer starts this file as a fresh interpreter (``python -I -S holder_helper.py <socket fd>
<pause program fd>``) before
its event loop and grpc threads exist, and asks it for holders over the inherited socket. Being a
separate, small program keeps it free of the sandboxer's state (no grpc, no copy-on-write pages
dirtied behind the sandboxer's back) and makes forking in it safe. For each request it
double-forks: the intermediate child unshares the UTS namespace, the IPC namespace (unless the pod
uses the node's) and the PID namespace (unless the pod uses the node's) and forks the holder,
which becomes PID 1 of the new PID namespace, joins the pod's network namespace (unless host
network), sets the pod hostname, applies the pod's sysctls (they belong to its IPC and network
namespaces, so only the holder can set them) and execs kuasar_shared's tiny pause program with
SIGCHLD ignored (the kernel then reaps orphans of the pod's PID namespace). Holders ignore every
signal sent from outside their namespace except SIGKILL.

A holder is made ahead of need: after each answer (and at start) the helper forks the next one
for the common case (new IPC and PID namespaces) up to the point where it waits for its request on
a pipe, so that a pod start only hands it the request: the two forks and the unshare are off the
pod's start path. A spare that died (or a pod that shares the node's IPC or PID namespace) is
served the old way.

Wire format (one request at a time): a JSON line ``{"id", "netns", "hostname", "host_ipc",
"host_pid", "sysctls": {"/proc/sys path": value}}`` answered by a JSON line ``{"pid": n}`` or
``{"error": "..."}``. Standard library only (no site-packages: small).
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
from typing import Any, Optional

_CLONE_NEWNET = 0x40000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWPID = 0x20000000
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _set_name(name: str) -> None:
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _reap_all(_signum: int = 0, _frame: Any = None) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _holder(request: dict[str, Any], report: int, pause: int, name: str) -> None:
    """Body of the holder (grandchild, PID 1 of the pod's PID namespace). Never returns."""
    try:
        netns = str(request.get("netns") or "")
        hostname = str(request.get("hostname") or "")
        if netns:
            fd = os.open(netns, os.O_RDONLY)
            try:
                _check(_libc.setns(fd, _CLONE_NEWNET), f"setns {netns}")
            finally:
                os.close(fd)
        if hostname:
            socket.sethostname(hostname)
        for path, value in dict(request.get("sysctls") or {}).items():
            if not str(path).startswith("/proc/sys/") or "/../" in str(path):
                raise ValueError(f"not a sysctl file: {path}")
            try:
                with open(str(path), "w") as handle:
                    handle.write(str(value))
            except OSError as err:
                raise OSError(err.errno, f"sysctl {path[len('/proc/sys/'):]}={value}: {err.strerror}") from None
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
        os.write(report, b'{"ok": true}\n')
    except BaseException as err:  # report anything, the parent turns it into a typed error
        os.write(report, (json.dumps({"error": str(err)}) + "\n").encode())
        os._exit(1)
    os.close(report)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_IGN)
    try:
        os.execv(f"/proc/self/fd/{pause}", [f"[{name}]"])
    finally:
        os._exit(1)


def _flags(request: dict[str, Any]) -> int:
    flags = _CLONE_NEWUTS
    if not request.get("host_ipc"):
        flags |= _CLONE_NEWIPC
    if not request.get("host_pid"):
        flags |= _CLONE_NEWPID
    return flags


#: what a spare holder is made with: the namespaces of a pod that shares none with the node
_SPARE_FLAGS = _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWPID


def _keep_only(*fds: int) -> None:
    """Close every descriptor from 3 up but ``fds``."""
    start = 3
    for fd in sorted(fds):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, 65536)


def _fork_holder(flags: int, report: int, pause: int, request_fd: int = -1,
                 request: Optional[dict[str, Any]] = None) -> int:
    """Fork the intermediate child, which unshares ``flags`` and forks the holder; returns the
    intermediate's pid. The holder runs ``request``, or first reads it from ``request_fd`` (a spare).
    Both write their messages to ``report``."""
    child = os.fork()
    if child == 0:
        try:
            _check(_libc.unshare(flags), "unshare")
            holder = os.fork()
            if holder == 0:
                _keep_only(*(fd for fd in (report, pause, request_fd) if fd >= 0))
                if request is None:
                    with os.fdopen(request_fd, "rb") as pipe:
                        line = pipe.readline()
                    if not line:  # the helper is gone, or dropped this spare
                        os._exit(0)
                    request = json.loads(line)
                name = "sandbox-" + str(request.get("id", ""))
                _set_name(name)
                _holder(request, report, pause, name)
            os.write(report, (json.dumps({"pid": holder}) + "\n").encode())
            os._exit(0)
        except BaseException as err:
            os.write(report, (json.dumps({"error": str(err)}) + "\n").encode())
            os._exit(1)
    return child


class _Spare:
    """A holder forked ahead of need, waiting for its request on a pipe.

    Resource handling: the helper owns the request pipe's write end and the report pipe's read end;
    :meth:`use` or :meth:`drop` closes them (a dropped spare reads EOF and exits).
    """

    def __init__(self, pause: int) -> None:
        request_read, self.request = os.pipe()
        self.report, report_write = os.pipe()
        try:
            _fork_holder(_SPARE_FLAGS, report_write, pause, request_fd=request_read)
        finally:
            os.close(request_read)
            os.close(report_write)

    def use(self, request: dict[str, Any]) -> bytes:
        """Hand the spare its request; return its messages (empty when it was already dead)."""
        try:
            os.write(self.request, (json.dumps(request) + "\n").encode())
        except BrokenPipeError:
            os.close(self.report)
            return b""
        finally:
            os.close(self.request)
        with os.fdopen(self.report, "rb") as reader:
            return reader.read()

    def drop(self) -> None:
        os.close(self.request)
        os.close(self.report)


def _spawn_holder(request: dict[str, Any], pause: int, spare: Optional[_Spare] = None) -> dict[str, Any]:
    """In the helper: make one holder (from ``spare`` when it fits the request, else with a fresh
    double fork) and return ``{"pid"}`` or ``{"error"}``."""
    data = b""
    if spare is not None and _flags(request) == _SPARE_FLAGS:
        data = spare.use(request)
    elif spare is not None:
        spare.drop()
    if not data:
        read_end, write_end = os.pipe()
        try:
            _fork_holder(_flags(request), write_end, pause, request=request)
        finally:
            os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            data = reader.read()
    answer: dict[str, Any] = {}
    for line in data.splitlines():
        message = json.loads(line)
        if "error" in message:
            if "pid" in answer:
                _kill(int(answer["pid"]))
            return {"error": message["error"]}
        answer.update(message)
    if "pid" not in answer or not answer.get("ok"):
        if "pid" in answer:
            _kill(int(answer["pid"]))
        return {"error": "namespace holder died during set-up"}
    return {"pid": answer["pid"]}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _serve(sock: socket.socket, pause: int) -> None:
    """Main loop of the helper process; exits when the sandboxer closes its end.

    ``pause`` is an inherited file descriptor holding the pause program, which every holder execs.
    """
    _set_name("sandbox-parent")
    _check(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    signal.signal(signal.SIGCHLD, _reap_all)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    spare: Optional[_Spare] = _Spare(pause)
    with sock, sock.makefile("rwb") as stream:
        for line in stream:
            try:
                answer = _spawn_holder(json.loads(line), pause, spare)
            except Exception as err:  # a bad request must not end the helper
                answer = {"error": f"{type(err).__name__}: {err}"}
            stream.write((json.dumps(answer) + "\n").encode())
            stream.flush()
            try:
                spare = _Spare(pause)
            except OSError:  # out of processes or pipes: the next pod is made the old way
                spare = None
    if spare is not None:
        spare.drop()


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2]))
