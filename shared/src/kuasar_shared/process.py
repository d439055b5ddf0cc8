"""Running external commands (runc, ip, qemu...) from asyncio code without stealing exit statuses.

Daemons here are child subreapers and reap every child in one place
(:mod:`kuasar_shared.daemon.reaper`), so ``asyncio.create_subprocess_exec`` and
``subprocess.run`` must not be used: their own ``waitpid`` would race the reaper. This module
starts children with :class:`subprocess.Popen` (its fork/exec is safe in a threaded process) but
never lets Popen wait or poll; exit statuses come from the reaper and pipes are read with loop
readers. If no daemon installed the reaper, the first call installs it in the running loop.
"""
from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from kuasar_shared.daemon.reaper import ExitEvent, Reaper, get_reaper
from kuasar_shared.errors import DeadlineExceeded, Internal

__all__ = ["PIPE", "DEVNULL", "Completed", "CommandError", "Process", "spawn", "run"]

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
#: where a child's stdio goes: PIPE, DEVNULL, an open fd, or None to inherit ours
Redirect = Optional[int]

_CHUNK = 65536


@dataclass(frozen=True)
class Completed:
    """A finished command: exit code (128 + signal when killed) and captured output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""


class CommandError(Internal):
    """A command that could not be started or exited non-zero.

    :ivar argv: the command line.
    :ivar returncode: the exit code (128 + signal when killed), None when it never started.
    :ivar stderr: what it wrote to stderr (when captured).
    """

    def __init__(self, argv: Sequence[str], returncode: Optional[int], stderr: bytes = b"",
                 reason: str = "") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        detail = stderr.decode(errors="replace").strip()
        if returncode is None:
            message = "cannot run %s: %s" % (" ".join(self.argv), reason)
        else:
            message = "%s exited with status %d" % (" ".join(self.argv), returncode)
            if detail:
                message += ": " + detail[-2000:]
        super().__init__(message)


def _reaper() -> Reaper:
    reaper = get_reaper()
    reaper.install()
    return reaper


def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


async def _read_all(fd: int) -> bytes:
    """Read ``fd`` to EOF without blocking the loop; closes ``fd``."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            while True:
                data = os.read(fd, _CHUNK)
                if not data:
                    break
                chunks.append(data)
        except BlockingIOError:
            return
        except OSError as err:
            if not done.done():
                done.set_exception(err)
            loop.remove_reader(fd)
            return
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(None)

    _set_nonblocking(fd)
    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


async def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` and close it; a reader that went away (EPIPE) ends the write."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    done: asyncio.Future[None] = loop.create_future()

    def on_writable() -> None:
        nonlocal view
        try:
            while view:
                n = os.write(fd, view[:_CHUNK])
                view = view[n:]
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno != errno.EPIPE and not done.done():
                done.set_exception(err)
                return
        if not done.done():
            done.set_result(None)

    _set_nonblocking(fd)
    loop.add_writer(fd, on_writable)
    try:
        await done
    finally:
        loop.remove_writer(fd)
        os.close(fd)


class Process:
    """A started child. Its exit status comes from the reaper; ``await wait()`` returns it.

    Resource handling: when spawned with PIPE, :attr:`stdin`/:attr:`stdout`/:attr:`stderr` are
    raw non-inheritable fds owned by the caller (close them, or use :func:`run`).
    """

    def __init__(self, popen: "subprocess.Popen[bytes]", reaper: Reaper) -> None:
        self.pid: int = popen.pid
        self.argv: tuple[str, ...] = tuple(str(a) for a in popen.args)  # type: ignore[union-attr]
        self.stdin = self._take(popen.stdin)
        self.stdout = self._take(popen.stdout)
        self.stderr = self._take(popen.stderr)
        self.exit: Optional[ExitEvent] = None
        reaper.forget(self.pid)  # any retained record for this pid belongs to an earlier process
        self._future = reaper.subscribe(self.pid)
        self._future.add_done_callback(lambda f: self._on_exit(popen, f))

    @staticmethod
    def _take(stream: object) -> Optional[int]:
        if stream is None:
            return None
        fd = os.dup(stream.fileno())  # type: ignore[attr-defined]
        stream.close()  # type: ignore[attr-defined]
        return fd

    def _on_exit(self, popen: "subprocess.Popen[bytes]", fut: "asyncio.Future[ExitEvent]") -> None:
        if fut.cancelled():
            return
        self.exit = fut.result()
        # Popen must never wait for the pid itself; marking it finished also keeps it out of
        # subprocess's zombie list (which would waitpid() it) when it is garbage collected.
        popen.returncode = self.exit.status

    def __repr__(self) -> str:
        state = "running" if self.exit is None else "exited %d" % self.exit.status
        return "<Process pid=%d %s %s>" % (self.pid, self.argv[0] if self.argv else "?", state)

    @property
    def returncode(self) -> Optional[int]:
        return None if self.exit is None else self.exit.status

    async def wait(self) -> ExitEvent:
        """The exit event of the child (waits for it; cancelling the wait does not kill it)."""
        return await asyncio.shield(self._future)

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it was already reaped (then the pid may belong to another)."""
        if self.exit is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close_pipes(self) -> None:
        """Close any PIPE fds still held."""
        for name in ("stdin", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def spawn(argv: Sequence[Union[str, "os.PathLike[str]"]], *, stdin: Redirect = DEVNULL, stdout: Redirect = None,
          stderr: Redirect = None, pass_fds: Sequence[int] = (), cwd: Optional[str] = None,
          env: Optional[Mapping[str, str]] = None, start_new_session: bool = False) -> Process:
    """Start ``argv`` as a child of this process; must be called inside a running loop.

    :param stdin/stdout/stderr: PIPE, DEVNULL, an fd, or None (inherit).
    :param pass_fds: extra fds the child inherits at the same numbers.
    :raise CommandError: when the program cannot be executed (missing, not executable, bad cwd).
    :return: the :class:`Process`; the caller owns any PIPE fds.
    """
    reaper = _reaper()
    args = [os.fspath(a) for a in argv]
    try:
        popen = subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=tuple(pass_fds),
                                 cwd=cwd, env=dict(env) if env is not None else None,
                                 start_new_session=start_new_session, close_fds=True)
    except OSError as err:
        raise CommandError(args, None, reason=err.strerror or str(err)) from err
    return Process(popen, reaper)


async def run(argv: Sequence[Union[str, "os.PathLike[str]"]], *, input: Optional[bytes] = None,
              stdin: Redirect = DEVNULL, stdout: Redirect = PIPE, stderr: Redirect = PIPE,
              pass_fds: Sequence[int] = (), cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
              timeout: Optional[float] = None, check: bool = True) -> Completed:
    """Run ``argv`` to completion and collect its output.

    :param input: bytes written to the child's stdin (then closed); overrides ``stdin``.
    :param timeout: seconds; on expiry the child is SIGKILLed and reaped.
    :param check: raise :class:`CommandError` on a non-zero exit.
    :raise CommandError: when the program cannot start, or exits non-zero with ``check``.
    :raise DeadlineExceeded: when ``timeout`` expires.

    Cancellation kills the child (SIGKILL) and waits for it before re-raising.
    """
    proc = spawn(argv, stdin=PIPE if input is not None else stdin, stdout=stdout, stderr=stderr,
                 pass_fds=pass_fds, cwd=cwd, env=env)
    io: list[asyncio.Future[Any]] = []
    fds = [proc.stdin, proc.stdout, proc.stderr]
    proc.stdin = proc.stdout = proc.stderr = None  # owned by the I/O tasks below
    if fds[0] is not None:
        io.append(asyncio.ensure_future(_write_all(fds[0], input or b"")))
    out = asyncio.ensure_future(_read_all(fds[1])) if fds[1] is not None else None
    err = asyncio.ensure_future(_read_all(fds[2])) if fds[2] is not None else None
    io += [f for f in (out, err) if f is not None]

    async def finish() -> ExitEvent:
        if io:
            await asyncio.gather(*io)
        return await proc.wait()

    try:
        event = await asyncio.wait_for(finish(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise DeadlineExceeded("%s did not finish within %s seconds (killed)"
                               % (" ".join(proc.argv), timeout)) from None
    except BaseException:
        proc.kill()
        for f in io:
            f.cancel()
        await asyncio.gather(*io, return_exceptions=True)
        await proc.wait()
        raise
    result = Completed(proc.argv, event.status, out.result() if out else b"", err.result() if err else b"")
    if check and result.returncode != 0:
        raise CommandError(proc.argv, result.returncode, result.stderr)
    return result
