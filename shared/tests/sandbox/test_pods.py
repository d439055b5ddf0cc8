"""PodTable: the pod bookkeeping every sandboxer shares."""
import asyncio
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.sandbox.api import CreateSandbox, TaskResources
from kuasar_shared.sandbox.pods import PodRecord, PodState, PodTable, check_create
from kuasar_shared.sandbox.tasks_extension import diff, parse_tasks


@dataclass
class MyPod(PodRecord):
    pid: int = 0


async def test_lifecycle_wait_and_persistence(tmp_path):
    table: PodTable[MyPod] = PodTable(str(tmp_path), MyPod)
    pod = MyPod(id="p1", created_at="2026-11-22T00:00:00+00:00")
    table.add(pod)
    with pytest.raises(AlreadyExists):
        table.add(MyPod(id="p1"))
    pod.pid = 42
    table.running(pod)
    with pytest.raises(FailedPrecondition, match="cannot start: it is ready"):
        pod.require(PodState.CREATED, "start")
    waiter = asyncio.ensure_future(table.wait("p1"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    table.stopped(pod, 137)
    result = await asyncio.wait_for(waiter, 2)
    assert result.exit_status == 137 and result.exited_at is not None
    on_disk = json.loads((tmp_path / "p1" / "sandbox.json").read_text())
    assert on_disk["state"] == "stopped" and on_disk["pid"] == 42 and on_disk["exit_status"] == 137
    table.stopped(pod, 0)  # a second stop keeps the first status
    assert (await table.wait("p1")).exit_status == 137


async def test_recovery_and_removal(tmp_path):
    table: PodTable[MyPod] = PodTable(str(tmp_path), MyPod)
    table.add(MyPod(id="good", state=PodState.STOPPED))
    os.makedirs(tmp_path / "torn")
    (tmp_path / "torn" / "sandbox.json").write_text("{not json")
    fresh: PodTable[MyPod] = PodTable(str(tmp_path), MyPod)
    loaded = dict(fresh.load_all())
    assert isinstance(loaded["good"], MyPod) and loaded["good"].state is PodState.STOPPED
    assert not isinstance(loaded["torn"], PodRecord)
    fresh.adopt(loaded["good"])
    assert (await asyncio.wait_for(fresh.wait("good"), 1)).exit_status == 0
    fresh.remove(fresh.get("good"))
    assert not (tmp_path / "good").exists()
    with pytest.raises(NotFound):
        fresh.get("good")


async def test_update_tasks_is_stored(tmp_path):
    table: PodTable[MyPod] = PodTable(str(tmp_path), MyPod)
    table.add(MyPod(id="p"))
    new = parse_tasks(b'{"tasks": [{"task_id": "c1"}]}')
    await table.update_tasks("p", diff(TaskResources(), new))
    assert [t.task_id for t in table.get("p").task_resources.tasks] == ["c1"]


_HOST_PID = {"linux": {"security_context": {"namespace_options": {"pid": "NODE"}}}}


def test_check_create_returns_the_engines_creation_time_or_now():
    sent = datetime(2026, 11, 22, tzinfo=timezone.utc)
    assert check_create(CreateSandbox(id="p1", created_at=sent)) == sent.isoformat()
    before = datetime.now(timezone.utc)
    assert before <= datetime.fromisoformat(check_create(CreateSandbox(id="p1"))) <= datetime.now(timezone.utc)


def test_check_create_refuses_a_missing_netns_and_the_host_pid_namespace_where_told(tmp_path):
    with pytest.raises(InvalidArgument, match="sandbox p1: network namespace .*/gone does not exist"):
        check_create(CreateSandbox(id="p1", netns_path=str(tmp_path / "gone")))
    host_pid = CreateSandbox(id="p1", netns_path=str(tmp_path), config=_HOST_PID)
    assert host_pid.host_pid and check_create(host_pid)
    with pytest.raises(InvalidArgument, match=r"sandbox p1: the host PID namespace \(pid: NODE\) cannot be shared "
                                              "with a VM"):
        check_create(host_pid, host_pid_refused_by="a VM")
