"""RuncTaskBackend against the real runc: lifecycle, FIFO IO, exit codes, re-adoption."""
from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.values import Mount, Stdio, TaskStatus
from kuasar_shared.task.backend import CreateTask, ExecProcess
from kuasar_shared.process_identity import wait_exit
from kuasar_shared.oci.task import UNKNOWN_EXIT
from kuasar_shared.testing.oci import read_fifo
from kuasar_runc_task.backend import RuncTaskBackend


def _cid() -> str:
    return "ctr-" + uuid.uuid4().hex[:10]


@pytest.fixture
async def backend(tmp_path):
    task_backend = RuncTaskBackend(str(tmp_path / "tasks"))
    yield task_backend
    for container_id in list(task_backend._containers):
        await task_backend.shutdown(container_id, now=True)
    await task_backend.close()


@pytest.mark.asyncio
async def test_lifecycle_output_exec_exit_code_kill_delete(backend, bundle_factory, fifo) -> None:
    cid = _cid()
    bundle = bundle_factory(cid, ["sh", "-c", "echo hello-from-init; exec sleep 1000"])
    out = fifo("init-out")
    reader = asyncio.ensure_future(read_fifo(out))
    pid = await backend.create(CreateTask(id=cid, bundle=bundle, stdio=Stdio(stdout=out), namespace="k8s.io"))
    assert pid > 0
    state = await backend.state(cid, "")
    assert state.status is TaskStatus.CREATED and state.pid == pid and state.bundle == bundle
    with pytest.raises(AlreadyExists):
        await backend.create(CreateTask(id=cid, bundle=bundle))
    with pytest.raises(FailedPrecondition):
        await backend.exec(ExecProcess(id=cid, exec_id="e0", stdio=Stdio(), spec={"args": ["true"]}))
    assert await backend.start(cid, "") == pid
    assert (await backend.state(cid, "")).status is TaskStatus.RUNNING
    with pytest.raises(FailedPrecondition):
        await backend.start(cid, "")
    assert await backend.pids(cid) == [pid]

    exec_out = fifo("exec-out")
    exec_reader = asyncio.ensure_future(read_fifo(exec_out))
    spec = {"args": ["sh", "-c", "echo from-exec; exit 3"], "cwd": "/", "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0}, "oomScoreAdj": -999}
    await backend.exec(ExecProcess(id=cid, exec_id="exec1", stdio=Stdio(stdout=exec_out), spec=spec))
    with pytest.raises(AlreadyExists):
        await backend.exec(ExecProcess(id=cid, exec_id="exec1", stdio=Stdio(), spec=spec))
    waiter = asyncio.ensure_future(backend.wait(cid, "exec1"))
    exec_pid = await backend.start(cid, "exec1")
    assert exec_pid > 0 and exec_pid != pid
    exit_info = await asyncio.wait_for(waiter, 10)
    assert exit_info.exit_status == 3 and exit_info.exited_at is not None
    assert (await exec_reader).strip() == b"from-exec"
    with pytest.raises(NotFound):
        await backend.kill(cid, "exec1", signal.SIGKILL, False)
    deleted = await backend.delete(cid, "exec1")
    assert deleted.exit_status == 3 and deleted.pid == exec_pid
    with pytest.raises(NotFound):
        await backend.state(cid, "exec1")

    stats = await backend.stats(cid)
    assert stats.memory_usage > 0 and stats.pids_current >= 1
    await backend.pause(cid)
    assert (await backend.state(cid, "")).status is TaskStatus.PAUSED
    await backend.resume(cid)
    await backend.update(cid, {"memory": {"limit": 128 << 20}}, {})

    with pytest.raises(FailedPrecondition):
        await backend.delete(cid, "")
    await backend.kill(cid, "", signal.SIGKILL, False)
    exit_info = await asyncio.wait_for(backend.wait(cid, ""), 10)
    assert exit_info.exit_status == 137
    with pytest.raises(NotFound):
        await backend.kill(cid, "", signal.SIGKILL, True)
    assert b"hello-from-init" in await asyncio.wait_for(reader, 10)
    deleted = await backend.delete(cid, "")
    assert deleted.pid == pid and deleted.exit_status == 137
    with pytest.raises(NotFound):
        await backend.state(cid, "")
    assert not os.path.exists(os.path.join(backend.store.directory, cid + ".json"))


@pytest.mark.asyncio
async def test_exit_code_of_init_and_unknown_ids(backend, bundle_factory) -> None:
    cid = _cid()
    bundle = bundle_factory(cid, ["sh", "-c", "exit 7"])
    await backend.create(CreateTask(id=cid, bundle=bundle))
    await backend.start(cid, "")
    assert (await asyncio.wait_for(backend.wait(cid, ""), 10)).exit_status == 7
    assert (await backend.state(cid, "")).status is TaskStatus.STOPPED
    await backend.delete(cid, "")
    for call in (backend.state("nope", ""), backend.wait("nope", ""), backend.delete("nope", ""),
                 backend.kill("nope", "", 9, False), backend.pids("nope")):
        with pytest.raises(NotFound):
            await call
    with pytest.raises(InvalidArgument):
        await backend.create(CreateTask(id="../escape", bundle=bundle))


@pytest.mark.asyncio
async def test_created_container_delete_kills_init(backend, bundle_factory) -> None:
    cid = _cid()
    bundle = bundle_factory(cid, ["sleep", "1000"])
    pid = await backend.create(CreateTask(id=cid, bundle=bundle))
    info = await backend.delete(cid, "")
    assert info.pid == pid
    assert not os.path.exists(f"/proc/{pid}/stat") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.asyncio
async def test_rootfs_mounts_applied_and_removed(backend, bundle_factory, busybox_rootfs, fifo) -> None:
    cid = _cid()
    bundle = bundle_factory(cid, ["sh", "-c", "cat /etc/marker"], copy_rootfs=False)
    lower = os.path.join(os.path.dirname(bundle), "lower-" + cid)
    os.makedirs(lower)
    os.system(f"cp -a {busybox_rootfs}/. {lower}/")
    with open(os.path.join(lower, "etc", "marker"), "w") as handle:
        handle.write("from-the-mount")
    out = fifo("mount-out")
    reader = asyncio.ensure_future(read_fifo(out))
    await backend.create(CreateTask(id=cid, bundle=bundle, stdio=Stdio(stdout=out),
                                    rootfs=(Mount(type="bind", source=lower, options=("rbind", "rw")),)))
    await backend.start(cid, "")
    assert (await asyncio.wait_for(backend.wait(cid, ""), 10)).exit_status == 0
    assert (await reader).strip() == b"from-the-mount"
    await backend.delete(cid, "")
    assert not os.path.ismount(os.path.join(bundle, "rootfs"))


@pytest.mark.asyncio
async def test_restart_readopts_running_container(tmp_path, bundle_factory) -> None:
    state_dir = str(tmp_path / "tasks")
    first = RuncTaskBackend(state_dir)
    cid = _cid()
    bundle = bundle_factory(cid, ["sleep", "1000"])
    pid = await first.create(CreateTask(id=cid, bundle=bundle))
    await first.start(cid, "")
    await first.close()  # the server "dies": nothing is killed

    second = RuncTaskBackend(state_dir)
    await second.recover()
    try:
        state = await second.state(cid, "")
        assert state.status is TaskStatus.RUNNING and state.pid == pid
        assert await second.connect(cid) == pid
        waiter = asyncio.ensure_future(second.wait(cid, ""))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await second.kill(cid, "", signal.SIGKILL, False)
        info = await asyncio.wait_for(waiter, 10)
        assert info.exit_status == 137 and info.exited_at is not None
        await second.delete(cid, "")
    finally:
        await second.close()


@pytest.mark.asyncio
async def test_restart_with_dead_process_reports_unknown_exit(tmp_path, bundle_factory) -> None:
    state_dir = str(tmp_path / "tasks")
    first = RuncTaskBackend(state_dir)
    cid = _cid()
    bundle = bundle_factory(cid, ["sleep", "1000"])
    pid = await first.create(CreateTask(id=cid, bundle=bundle))
    await first.start(cid, "")
    await first.close()
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(wait_exit(pid), 10)
    with open(os.path.join(state_dir, "corrupt.json"), "w") as handle:
        handle.write("{torn")

    second = RuncTaskBackend(state_dir)
    await second.recover()
    try:
        info = await asyncio.wait_for(second.wait(cid, ""), 5)
        assert info.exit_status == UNKNOWN_EXIT
        assert not os.path.exists(os.path.join(state_dir, "corrupt.json"))
        await second.delete(cid, "")
    finally:
        await second.close()


@pytest.mark.asyncio
async def test_shutdown_kills_and_removes_every_container_of_a_sandbox(backend, bundle_factory) -> None:
    ids = [_cid(), _cid()]
    for cid in ids:
        bundle = bundle_factory(cid, ["sleep", "1000"],
                                annotations={"io.kubernetes.cri.sandbox-id": "pod-shut"})
        await backend.create(CreateTask(id=cid, bundle=bundle))
        await backend.start(cid, "")
    await backend.shutdown("pod-shut", now=False)
    for cid in ids:
        assert (await backend.state(cid, "")).status is TaskStatus.STOPPED
    await backend.shutdown("pod-shut", now=True)
    for cid in ids:
        with pytest.raises(NotFound):
            await backend.state(cid, "")


@pytest.mark.asyncio
async def test_terminal_init_gets_a_pty_and_its_output(backend, bundle_factory, fifo) -> None:
    cid = _cid()
    out = fifo("tty-out")
    reader = asyncio.ensure_future(read_fifo(out))
    bundle = bundle_factory(cid, ["sh", "-c", "tty; stty size"])
    await backend.create(CreateTask(id=cid, bundle=bundle, stdio=Stdio(stdout=out, terminal=True)))
    await backend.resize_pty(cid, "", 90, 30)
    with pytest.raises(InvalidArgument):
        await backend.resize_pty(cid, "", 1 << 16, 30)
    await backend.start(cid, "")
    assert (await asyncio.wait_for(backend.wait(cid, ""), 10)).exit_status == 0
    lines = (await reader).decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/") and lines[1] == "30 90"
    assert (await backend.state(cid, "")).stdio.terminal
    await backend.delete(cid, "")
    with pytest.raises(NotFound):
        await backend.resize_pty(cid, "", 90, 30)
