"""The detached per-container log writer: copies a container's stdout/stderr into its CRI log file.

containerd keeps a goroutine per container that reads the container's FIFOs (or streams) and
writes the CRI log; kuasar-ctl exits after every command, so it starts this small process at
container create time instead. It opens its inputs first (FIFO read sides, or the two streams,
which must exist before task Create), reports ``ready <pid>`` on stdout, detaches and copies until
both inputs end (the container exited and its stdio was closed) or it receives SIGTERM (``rm``).

    python -m kuasar_shared.ctl.logwriter --log FILE (--fifo OUT ERR | --stream ADDRESS OUT_ID ERR_ID)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import subprocess
import sys
from typing import Any, Coroutine, Optional, Sequence

from kuasar_shared.ctl.io import CriLogWriter, copy_fifo, copy_stream, open_fifo_reader
from kuasar_shared.errors import Unavailable
from kuasar_shared.io.streamclient import open_stream
from kuasar_shared.ttrpc import Client

__all__ = ["main", "spawn", "LogCopier"]


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kuasar-ctl-logwriter")
    parser.add_argument("--log", required=True, help="CRI log file to append to")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--fifo", nargs=2, metavar=("STDOUT", "STDERR"))
    group.add_argument("--stream", nargs=3, metavar=("ADDRESS", "STDOUT_ID", "STDERR_ID"))
    return parser.parse_args(argv)


class LogCopier:
    """A container's stdout/stderr readers and the copies into its CRI log file.

    Resource handling: :meth:`open` opens the inputs (so the engine may create the task);
    :meth:`run` copies until both inputs end or it is cancelled; :meth:`close` always.
    """

    def __init__(self, log_fd: int, writers: list[CriLogWriter], copies: list[Coroutine[Any, Any, None]],
                 client: Optional[Client]) -> None:
        self._log_fd = log_fd
        self._writers = writers
        self._copies = copies
        self._client = client

    @classmethod
    async def open(cls, log_path: str, fifo: Optional[Sequence[str]] = None,
                   stream: Optional[Sequence[str]] = None) -> "LogCopier":
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

        def append(data: bytes) -> None:
            os.write(log_fd, data)
        writers = [CriLogWriter(append, name) for name in ("stdout", "stderr")]
        client: Optional[Client] = None
        try:
            if fifo:
                fds = [open_fifo_reader(path) for path in fifo]
                copies = [copy_fifo(fd, w.feed) for fd, w in zip(fds, writers)]
            else:
                assert stream is not None
                client = await Client.connect(stream[0])
                streams = [await open_stream(client, sid) for sid in stream[1:]]
                copies = [copy_stream(st, w.feed) for st, w in zip(streams, writers)]
        except BaseException:
            os.close(log_fd)
            if client is not None:
                await client.close()
            raise
        return cls(log_fd, writers, copies, client)

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(c) for c in self._copies]
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()

    async def close(self) -> None:
        for coro in self._copies:
            coro.close()
        self._copies = []
        for w in self._writers:
            w.close()
        self._writers = []
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


async def _run(args: argparse.Namespace) -> int:
    copier = await LogCopier.open(args.log, args.fifo, args.stream)
    sys.stdout.write(f"ready {os.getpid()}\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    copy = asyncio.ensure_future(copier.run())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, copy.cancel)
    try:
        await copy
    except asyncio.CancelledError:
        pass
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    # Detach: new session, and the parent (kuasar-ctl's direct child) exits at once so we are
    # re-parented to init and never become a zombie of the short-lived kuasar-ctl.
    if os.fork():
        os._exit(0)
    os.setsid()
    try:
        return asyncio.run(_run(args))
    except Exception as err:  # report start-up failures to kuasar-ctl, which is reading stdout
        sys.stdout.write(f"error {err}\n")
        sys.stdout.flush()
        return 1


def spawn(log_path: str, fifo: Optional[Sequence[str]] = None, stream: Optional[Sequence[str]] = None,
          timeout: float = 15.0) -> int:
    """Start a detached log writer and wait until its inputs are open; returns its pid.

    :raise Unavailable: when it fails to open its inputs (with the writer's message).
    """
    argv = [sys.executable, "-m", "kuasar_shared.ctl.logwriter", "--log", log_path]
    argv += ["--fifo", *fifo] if fifo else ["--stream", *(stream or ())]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fds=True)
    try:
        proc.wait(timeout)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().decode().strip() if ready else "timed out opening its inputs"
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not line.startswith("ready "):
        detail = line[len("error "):] if line.startswith("error ") else (line or "it exited without answer")
        raise Unavailable(f"cannot open the container's stdio for {log_path}: {detail}")
    return int(line.split()[1])


if __name__ == "__main__":
    sys.exit(main())
