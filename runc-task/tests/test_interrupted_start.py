"""A Start or Create cut short by a task server kill (issue 14): the next server judges it by what runc
left behind, so a process that did start is adopted and answered, never started a second time, and a
container made without a record is removed before the Create runs again."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from typing import AsyncIterator

import pytest

import kuasar_shared.oci.task as task_module
from kuasar_shared.daemon.reaper import get_reaper
from kuasar_shared.process_identity import start_time
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.values import Stdio, TaskStatus
from kuasar_shared.task.backend import CreateTask, ExecProcess
from kuasar_runc_task.backend import RuncTaskBackend

SPEC = {"args": ["sh", "-c", "echo ran >> /ran; sleep 0.3; exit 7"], "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}}


async def _running_container(state_dir: str, bundle_factory) -> tuple[RuncTaskBackend, str, str]:
    backend = RuncTaskBackend(state_dir)
    cid = "ctr-" + uuid.uuid4().hex[:10]
    bundle = bundle_factory(cid, ["sleep", "1000"])
    await backend.create(CreateTask(id=cid, bundle=bundle))
    await backend.start(cid, "")
    await backend.exec(ExecProcess(id=cid, exec_id="e1", stdio=Stdio(), spec=SPEC))
    return backend, cid, bundle


@contextlib.asynccontextmanager
async def _successor(tmp_path, state_dir: str, cid: str) -> AsyncIterator[RuncTaskBackend]:
    """The next task server's backend, recovered from ``state_dir``; this test process plays the sandboxer
    too (the subreaper recording exits of orphans). Removes container ``cid`` afterwards."""
    exits = ExitRecorder(str(tmp_path / "exits"))
    listener = exits.listener(lambda pid: False)
    get_reaper().add_listener(listener)
    second = RuncTaskBackend(state_dir, exits=exits)
    await second.recover()
    try:
        yield second
    finally:
        get_reaper().remove_listener(listener)
        await second.shutdown(cid, now=True)
        await second.close()


@pytest.mark.asyncio
async def test_exec_the_dead_server_started_is_adopted_with_its_exit_status(tmp_path, bundle_factory) -> None:
    state_dir = str(tmp_path / "tasks")
    first, cid, bundle = await _running_container(state_dir, bundle_factory)
    # the server dies inside Start, after `runc exec` ran: the runtime's pid file is all that is left
    container = first._get(cid)
    work = first.store.work_dir(cid)
    spec_path = os.path.join(work, "e1.process.json")
    with open(spec_path, "w") as handle:
        json.dump(dict(SPEC, terminal=False), handle)
    started = await first._runtime(container).exec(cid, spec_path, os.path.join(work, "e1.pid"),
                                                   os.path.join(work, "exec-log.json"))
    await first.close()

    async with _successor(tmp_path, state_dir, cid) as second:
        assert (await second.state(cid, "e1")).status is TaskStatus.CREATED
        assert await second.interrupted_start(cid, "e1") == started
        assert (await second.state(cid, "e1")).status is TaskStatus.RUNNING
        assert (await asyncio.wait_for(second.wait(cid, "e1"), 10)).exit_status == 7
        with open(os.path.join(bundle, "rootfs", "ran")) as handle:
            assert handle.read() == "ran\n"
        assert not os.path.exists(spec_path) and not os.path.exists(os.path.join(work, "e1.pid"))


@pytest.mark.asyncio
async def test_exec_whose_runtime_finishes_during_the_look_is_adopted(tmp_path, bundle_factory, monkeypatch) -> None:
    """The dead server's ``runc exec`` writes its pid file and exits while the next server scans /proc for
    it: the scan finds no runtime, and the pid file must still be read after it (not before), or the Start
    would run the exec a second time."""
    state_dir = str(tmp_path / "tasks")
    first, cid, bundle = await _running_container(state_dir, bundle_factory)
    work = first.store.work_dir(cid)
    spec_path, pid_file = os.path.join(work, "e1.process.json"), os.path.join(work, "e1.pid")
    with open(spec_path, "w") as handle:
        json.dump(dict(SPEC, terminal=False), handle)
    argv = first._runtime(first._get(cid))._argv("exec", "--process", spec_path, "--pid-file", pid_file,
                                                  "--detach", cid, log_file=os.path.join(work, "exec-log.json"))
    await first.close()
    real_scan = task_module._runs_with_argument

    def runtime_finishes_during_scan(argument: str) -> bool:
        if not os.path.exists(pid_file):
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return real_scan(argument)
    monkeypatch.setattr(task_module, "_runs_with_argument", runtime_finishes_during_scan)

    async with _successor(tmp_path, state_dir, cid) as second:
        pid = await second.interrupted_start(cid, "e1")
        assert pid and (await second.state(cid, "e1")).status is TaskStatus.RUNNING
        assert (await asyncio.wait_for(second.wait(cid, "e1"), 10)).exit_status == 7
        with open(os.path.join(bundle, "rootfs", "ran")) as handle:
            assert handle.read() == "ran\n"


class _Killed(BaseException):
    """The task server dies here: nothing after this point of its Start runs."""


@pytest.mark.asyncio
@pytest.mark.parametrize("dies_after", ["e1.process.json", "e1.pid"])
async def test_server_killed_while_removing_the_runtimes_files_leaves_the_start_visible(
        tmp_path, bundle_factory, monkeypatch, dies_after: str) -> None:
    """A server killed after `runc exec` answered, as it removes the runtime's files: its successor must
    still see the exec as started (by the record or the pid file), else the replayed Start runs it twice
    (CI saw an exec's output twice in the kill test)."""
    state_dir = str(tmp_path / "tasks")
    first, cid, bundle = await _running_container(state_dir, bundle_factory)
    victim = os.path.join(first.store.work_dir(cid), dies_after)
    real_unlink = os.unlink

    def unlink_then_die(path, *args, **kwargs) -> None:
        real_unlink(path, *args, **kwargs)
        if os.fspath(path) == victim:
            raise _Killed(path)
    monkeypatch.setattr(task_module.os, "unlink", unlink_then_die)
    with pytest.raises(_Killed):
        await first.start(cid, "e1")
    monkeypatch.setattr(task_module.os, "unlink", real_unlink)
    started = first._get(cid).execs["e1"].pid
    await first.close()

    async with _successor(tmp_path, state_dir, cid) as second:
        assert await second.interrupted_start(cid, "e1") == started
        assert (await asyncio.wait_for(second.wait(cid, "e1"), 10)).exit_status == 7
        with open(os.path.join(bundle, "rootfs", "ran")) as handle:
            assert handle.read() == "ran\n"


@pytest.mark.asyncio
async def test_exec_and_init_that_never_started_may_start_again(tmp_path, bundle_factory) -> None:
    state_dir = str(tmp_path / "tasks")
    first, cid, _ = await _running_container(state_dir, bundle_factory)
    other = "ctr-" + uuid.uuid4().hex[:10]
    await first.create(CreateTask(id=other, bundle=bundle_factory(other, ["sleep", "1000"])))
    await first.close()

    second = RuncTaskBackend(state_dir)
    await second.recover()
    try:
        assert await second.interrupted_start(cid, "e1") is None
        assert await second.interrupted_start(other, "") is None
        assert await second.start(cid, "e1") > 0
        assert (await asyncio.wait_for(second.wait(cid, "e1"), 10)).exit_status == 7
        # `runc start` ran but the answer was lost: the runtime's state shows it
        await second._runtime(second._get(other)).start(other)
        pid = (await second.state(other, "")).pid
        assert await second.interrupted_start(other, "") == pid
        assert (await second.state(other, "")).status is TaskStatus.RUNNING
    finally:
        await second.shutdown(cid, now=True)
        await second.shutdown(other, now=True)
        await second.close()


@pytest.mark.asyncio
async def test_create_the_dead_server_left_without_a_record_is_undone_then_made(tmp_path, bundle_factory) -> None:
    """runc create ran but the server died before recording the container: its runc state is removed
    so that the replayed Create succeeds instead of failing with "already exists"."""
    state_dir = str(tmp_path / "tasks")
    backend = RuncTaskBackend(state_dir)
    cid = "ctr-" + uuid.uuid4().hex[:10]
    bundle = bundle_factory(cid, ["sleep", "1000"])
    req = CreateTask(id=cid, bundle=bundle)
    pid = await backend.create(req)
    backend.store.remove(cid)  # the record the dead server never wrote
    await backend.close()

    second = RuncTaskBackend(state_dir)
    await second.recover()
    try:
        await second.interrupted_create(req)
        assert start_time(pid) is None  # runc's init of the unrecorded container is gone
        new_pid = await second.create(req)
        assert new_pid > 0 and (await second.state(cid, "")).status is TaskStatus.CREATED
    finally:
        await second.shutdown(cid, now=True)
        await second.close()
