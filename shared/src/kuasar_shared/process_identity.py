"""Identify and watch processes that are not (or no longer) our children.

After a restart a task server or sandboxer re-adopts container inits and namespace holders it
did not fork. A pid alone may have been reused, so each adopted process is identified by pid plus
its start time (``/proc/<pid>/stat`` field 22, clock ticks since boot). Their exit is observed with
a pidfd (``os.pidfd_open``), which needs no thread and no task: the loop's reader fires once.
"""
from __future__ import annotations

import asyncio
import os
import signal
from typing import Callable, Optional

__all__ = ["start_time", "is_same_process", "ExitWatch", "wait_exit", "kill"]


def start_time(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot, None when it does not exist (or is a zombie
    already reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        if fields[0] == b"Z":
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_same_process(pid: int, recorded_start: Optional[int]) -> bool:
    """True when ``pid`` is alive and started at ``recorded_start``."""
    return pid > 0 and recorded_start is not None and start_time(pid) == recorded_start


class ExitWatch:
    """Calls ``callback()`` once when ``pid`` exits, from the running loop, with no task.

    Uses a pidfd reader when the kernel has pidfds, otherwise a 100 ms ``/proc`` poll timer. A pid
    that is already gone fires on the next loop iteration. :meth:`cancel` stops watching and
    closes the pidfd.
    """

    poll_interval = 0.1

    def __init__(self, pid: int, callback: Callable[[], None]) -> None:
        self.pid = pid
        self._callback: Optional[Callable[[], None]] = callback
        self._loop = asyncio.get_running_loop()
        self._fd: Optional[int] = None
        self._timer: Optional[asyncio.Handle] = None
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._timer = self._loop.call_soon(self._fire)
        except (AttributeError, OSError):
            self._timer = self._loop.call_soon(self._poll)
        else:
            self._loop.add_reader(self._fd, self._fire)

    def __repr__(self) -> str:
        return f"ExitWatch(pid={self.pid}, active={self._callback is not None})"

    def _poll(self) -> None:
        if start_time(self.pid) is None:
            self._fire()
        else:
            self._timer = self._loop.call_later(self.poll_interval, self._poll)

    def _fire(self) -> None:
        callback = self._callback
        self.cancel()
        if callback is not None:
            callback()

    def cancel(self) -> None:
        self._callback = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def wait_exit(pid: int) -> None:
    """Return once ``pid`` has exited (at once if it is already gone); cancellable."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fire() -> None:
        if not done.done():
            done.set_result(None)
    watch = ExitWatch(pid, fire)
    try:
        await done
    finally:
        watch.cancel()


def kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal ``pid``; False when it no longer exists."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
