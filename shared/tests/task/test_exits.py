"""ExitRecorder: exits recorded by a subreaper, claimed by a restarted task server."""
from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timezone
from typing import Any, Optional

import pytest

from kuasar_shared.daemon.reaper import ExitEvent, get_reaper
from kuasar_shared.process_identity import start_time
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.task.recorded import RecordedTaskBackend
from kuasar_shared.task.records import ContainerRecord, ContainerStore, Proc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_task_server import ToyTaskBackend  # noqa: E402


@pytest.mark.asyncio
async def test_a_claimed_record_stays_until_discarded(tmp_path) -> None:
    recorder = ExitRecorder(str(tmp_path / "exits"))
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    listener = recorder.listener(lambda pid: pid == 1)
    listener(ExitEvent(1, 0, when))
    listener(ExitEvent(4242, 42, when))
    assert os.listdir(tmp_path / "exits") == ["4242.json"]
    assert await recorder.claim(4242) == (42, when)
    # a claimer killed before it saved the status leaves the record to its successor
    assert await recorder.claim(4242, timeout=0.05) == (42, when)
    recorder.discard(4242)
    assert await recorder.claim(4242, timeout=0.05) is None


@pytest.mark.asyncio
async def test_claim_waits_for_a_late_record_and_discard_drops_stale(tmp_path) -> None:
    recorder = ExitRecorder(str(tmp_path))
    when = datetime.now(timezone.utc)
    recorder.record(ExitEvent(7, 137, when))
    recorder.discard(7)
    assert await recorder.claim(7, timeout=0.05) is None
    asyncio.get_running_loop().call_later(0.1, recorder.record, ExitEvent(8, 3, when))
    assert await recorder.claim(8, timeout=2) == (3, when)
    (tmp_path / "9.json").write_text("{torn")
    assert await recorder.claim(9, timeout=0.05) is None


def test_old_records_are_pruned(tmp_path) -> None:
    recorder = ExitRecorder(str(tmp_path), max_age=60)
    old = tmp_path / "1.json"
    old.write_text("{}")
    os.utime(old, (0, 0))
    recorder.record(ExitEvent(2, 0, datetime.now(timezone.utc)))
    assert sorted(os.listdir(tmp_path)) == ["2.json"]


def test_sweep_removes_old_records_of_processes_no_one_waits_for(tmp_path) -> None:
    recorder = ExitRecorder(str(tmp_path))
    at = datetime.now(timezone.utc)
    for pid in (10, 11, 12):
        recorder.record(ExitEvent(pid, 0, at))
    old = os.path.getmtime(tmp_path / "10.json") - 60
    for pid in (10, 11):
        os.utime(tmp_path / f"{pid}.json", (old, old))
    (tmp_path / "notes.txt").write_text("not a record")
    # the temporary file of a writer killed mid-write: gone once old, kept while a write may be running
    for name in (".13.json.a1b2.tmp", ".14.json.c3d4.tmp"):
        (tmp_path / name).write_text('{"pid": 1')
    os.utime(tmp_path / ".13.json.a1b2.tmp", (old, old))
    assert recorder.sweep(keep={11}, min_age=10) == 2
    assert sorted(os.listdir(tmp_path)) == [".14.json.c3d4.tmp", "11.json", "12.json", "notes.txt"]
    assert ExitRecorder(str(tmp_path / "absent")).sweep(keep=(), min_age=0) == 0


def test_adopting_a_live_process_drops_only_records_older_than_it(tmp_path) -> None:
    """A record written after the process started is its own exit (it ended while being adopted)."""
    from kuasar_shared.process_identity import start_time
    recorder = ExitRecorder(str(tmp_path))
    started = start_time(os.getpid())
    recorder.record(ExitEvent(10, 42, datetime.now(timezone.utc)))
    recorder.record(ExitEvent(11, 0, datetime(2000, 1, 1, tzinfo=timezone.utc)))
    (tmp_path / "12.json").write_text("{torn")
    for pid in (10, 11, 12, 13):
        recorder.discard_stale(pid, started)
    assert sorted(os.listdir(tmp_path)) == ["10.json"]


class _DeferringBackend(ToyTaskBackend):
    """Saves an exit later, as the oci backend does for an init whose strays it kills first."""

    deferred: Optional[tuple[Any, ...]] = None

    def _exited(self, container: ContainerRecord, proc: Proc, status: int, at: datetime) -> None:
        self.deferred = (container, proc, status, at)


@pytest.mark.asyncio
async def test_the_exit_record_of_a_watched_child_stays_until_its_exit_is_saved(tmp_path) -> None:
    """A task server killed after reaping a container's init but before saving its exit leaves the
    status to its successor: the durable record goes only with the save."""
    exits = ExitRecorder(str(tmp_path / "exits"))
    backend = _DeferringBackend(ContainerStore(str(tmp_path / "tasks"), ContainerRecord), exits=exits)
    get_reaper().install()
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 42"], dict(os.environ))
    container = ContainerRecord(id="c1", bundle=str(tmp_path))
    container.init.pid, container.init.start_time = pid, start_time(pid)
    backend._containers[container.id] = container
    backend._watch_child(container, container.init)
    for _ in range(500):
        if backend.deferred is not None:
            break
        await asyncio.sleep(0.01)
    assert backend.deferred is not None, "the reaper never reported the child's exit"
    claimed = await exits.claim(pid, timeout=0.1)
    assert claimed is not None and claimed[0] == 42
    RecordedTaskBackend._exited(backend, *backend.deferred)
    assert await exits.claim(pid, timeout=0.05) is None
    store = ContainerStore(str(tmp_path / "tasks"), ContainerRecord)
    assert [store.load(path).init.exit_status for path in store.paths()] == [42]
    await backend.close()
