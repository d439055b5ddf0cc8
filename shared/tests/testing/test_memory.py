"""Tests of kuasar_shared.testing.memory: the toy sandboxer's state machine and error injection."""
from __future__ import annotations

import asyncio

import pytest

from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.sandbox.api import CreateSandbox, TaskDiff, TaskResource, TaskResources
from kuasar_shared.testing.memory import InMemorySandboxer


@pytest.mark.asyncio
async def test_state_machine() -> None:
    sb = InMemorySandboxer("/run/x", pid=4242)
    assert sb.address == "ttrpc+unix:///run/x/task.sock"
    await sb.create(CreateSandbox(id="p"))
    with pytest.raises(AlreadyExists):
        await sb.create(CreateSandbox(id="p"))
    assert not (await sb.status("p")).ready
    started = await sb.start("p")
    assert started.ready and started.pid == 4242 and started.address == sb.address
    with pytest.raises(FailedPrecondition, match="running, not created"):
        await sb.start("p")
    waiter = asyncio.ensure_future(sb.wait("p"))
    await asyncio.sleep(0)
    assert not waiter.done()
    await sb.stop("p", 10)
    exit_status = await asyncio.wait_for(waiter, 1)
    assert exit_status.exit_status == 0 and exit_status.exited_at is not None
    await sb.stop("p", None)
    assert (await sb.wait("p")) == exit_status
    status = await sb.status("p")
    assert not status.ready and status.pid == 0 and status.exited_at == exit_status.exited_at
    assert sb.pod_ids() == ["p"]
    await sb.shutdown("p")
    assert sb.pod_ids() == []
    for call in (sb.status("p"), sb.start("p"), sb.stop("p", None), sb.wait("p"), sb.shutdown("p"),
                 sb.metrics("p")):
        with pytest.raises(NotFound):
            await call


@pytest.mark.asyncio
async def test_kill_exit_status_and_metrics() -> None:
    sb = InMemorySandboxer()
    await sb.create(CreateSandbox(id="p"))
    assert (await sb.metrics("p")).pids_current == 0
    await sb.start("p")
    assert (await sb.metrics("p")).pids_current == 1
    await sb.shutdown("p")
    await sb.create(CreateSandbox(id="p"))
    await sb.start("p")
    await sb.stop("p", None)
    assert (await sb.wait("p")).exit_status == 137


@pytest.mark.asyncio
async def test_update_tasks_stored() -> None:
    sb = InMemorySandboxer()
    await sb.create(CreateSandbox(id="p"))
    new = TaskResources(tasks=(TaskResource("c1"),))
    await sb.update_tasks("p", TaskDiff(old=TaskResources(), new=new, added_tasks=new.tasks))
    assert (await sb.status("p")).tasks == new


@pytest.mark.asyncio
async def test_fail_next_only_once_and_per_pod() -> None:
    sb = InMemorySandboxer()
    sb.fail_next("create", "p", InvalidArgument("injected"))
    await sb.create(CreateSandbox(id="q"))
    with pytest.raises(InvalidArgument, match="injected"):
        await sb.create(CreateSandbox(id="p"))
    await sb.create(CreateSandbox(id="p"))
    assert sb.pod_ids() == ["p", "q"]
