"""Hand exit statuses of orphaned container processes from a subreaper to a restarted task server.

When a task server dies, the container processes it was reaping re-parent to the nearest child
subreaper (the sandboxer that started it), which collects their exit statuses. A new task server
re-adopts those processes but can only see *that* they exited (pidfd), not how. The subreaper
therefore records every exit it did not expect as ``<dir>/<pid>.json`` and the task server claims
the record when its pidfd fires. Records are small, written atomically and pruned by age.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Collection, Optional

from kuasar_shared.daemon.reaper import ExitEvent
from kuasar_shared.statefiles import CorruptState, read_json, write_json_atomic

__all__ = ["ExitRecorder", "EXITS_DIR"]

#: where exits of containers orphaned by a dead task server are recorded: ``<pods dir>/.exits``
EXITS_DIR = ".exits"

log = logging.getLogger(__name__)


class ExitRecorder:
    """Exit records of re-parented processes in one directory.

    :param directory: created on first write.
    :param max_age: seconds after which an unclaimed record is pruned.
    """

    poll_interval = 0.02

    def __init__(self, directory: str, max_age: float = 600.0) -> None:
        self.directory = directory
        self.max_age = max_age

    def _path(self, pid: int) -> str:
        return os.path.join(self.directory, f"{int(pid)}.json")

    def listener(self, ignore: Callable[[int], bool]) -> Callable[[ExitEvent], None]:
        """A reaper listener recording every exit for which ``ignore(pid)`` is false."""
        def on_exit(event: ExitEvent) -> None:
            if not ignore(event.pid):
                self.record(event)
        return on_exit

    def record(self, event: ExitEvent) -> None:
        """Write the record of one exit (errors are logged: recording is best effort)."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            write_json_atomic(self._path(event.pid), {"pid": event.pid, "status": event.status,
                                                      "exited_at": event.exited_at.isoformat()})
            self._prune()
        except OSError as err:
            log.warning("cannot record the exit of pid %d: %s", event.pid, err)

    def _prune(self) -> None:
        cutoff = time.time() - self.max_age
        for entry in os.scandir(self.directory):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                continue

    def discard(self, pid: int) -> None:
        """Drop a stale record of ``pid`` (call when adopting a live process with that pid)."""
        try:
            os.unlink(self._path(pid))
        except FileNotFoundError:
            pass

    def sweep(self, keep: Collection[int], min_age: float) -> int:
        """Remove records older than ``min_age`` seconds whose pid is not in ``keep``; returns how many.

        The subreaper records every exit it did not expect, including ones no task server will
        claim: the sandboxer's own helpers that re-parented to it (runsc's sandbox and gofer) and a
        dead task server's spare processes. The task server calls this with the pids it still
        waits for, so those records go within seconds instead of piling up. A record's temporary
        file left by a writer killed mid-write (``.<pid>.json.*.tmp``, see write_json_atomic) goes too.
        """
        cutoff = time.time() - min_age
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            name = entry.name
            torn = name.startswith(".") and name.endswith(".tmp")
            if not torn and (not name.endswith(".json") or not name[:-5].isdigit() or int(name[:-5]) in keep):
                continue
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed

    def discard_stale(self, pid: int, started: Optional[int]) -> None:
        """Drop the record of an earlier process that had ``pid``; call when adopting the live process
        that started at ``started`` (clock ticks since boot, as in /proc/<pid>/stat). A record of *this*
        process's exit, written by the subreaper right after the adopter saw it alive, stays for
        :meth:`claim` (dropping it lost exit codes of processes that ended during a restart)."""
        path = self._path(pid)
        try:
            exited = datetime.fromisoformat(str(read_json(path)["exited_at"]))
        except FileNotFoundError:
            return
        except (CorruptState, KeyError, TypeError, ValueError):
            exited = None
        if exited is None or started is None or exited < _wall_clock(started):
            self.discard(pid)

    async def claim(self, pid: int, timeout: float = 1.0) -> Optional[tuple[int, datetime]]:
        """Wait up to ``timeout`` seconds for the record of ``pid``; return ``(status, exited_at)``, or
        None when no record appeared.

        The record stays: the claimer calls :meth:`discard` once the status is saved where it belongs
        (a claimer killed before that leaves it to its successor; consuming it here lost exit codes
        when a task server was killed between the claim and saving the container).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                record = read_json(self._path(pid))
            except FileNotFoundError:
                record = None
            except CorruptState as err:
                log.warning("%s", err)
                record = None
            if isinstance(record, dict):
                try:
                    return int(record["status"]), datetime.fromisoformat(str(record["exited_at"]))
                except (KeyError, TypeError, ValueError):
                    return None
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(self.poll_interval)


def _wall_clock(ticks: int) -> datetime:
    """The wall-clock time of ``ticks`` clock ticks since boot (10 ms precision)."""
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return datetime.now(timezone.utc) - timedelta(seconds=age)
