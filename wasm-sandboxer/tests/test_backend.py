"""WasmTaskBackend with real runner processes and wasmtime: lifecycle, IO, exit codes, traps, memory,
kill, exec, two containers in one pod, bad input, the module cache and re-adoption after a restart."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid

import pytest

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.io import StreamingHub
from kuasar_shared.process_identity import wait_exit
from kuasar_shared.values import Stdio, TaskStatus
from kuasar_shared.task.backend import CreateTask, ExecProcess
from kuasar_shared.testing.oci import read_fifo

from kuasar_wasm_sandboxer.backend import UNKNOWN_EXIT, WasmTaskBackend
from kuasar_wasm_sandboxer.cache import ModuleCache, engine_fingerprint
from kuasar_wasm_sandboxer.entrypoint import MAX_ARGS_BYTES, TRAP_EXIT
from kuasar_wasm_sandboxer.runner_control import ForkServer, Runner
from wasm_helpers import cgroup_exists, processes_mentioning


def _cid() -> str:
    return "wasm-" + uuid.uuid4().hex[:10]


async def _task_server(tmp_path, recover: bool = False) -> WasmTaskBackend:
    """A task server's backend on ``tmp_path`` with a started fork-server; with ``recover``, the one a
    restart brings up: it re-adopts the records before its fork-server starts."""
    backend = WasmTaskBackend(str(tmp_path / "tasks"),
                              ForkServer(ModuleCache(str(tmp_path / "cache"), engine_fingerprint(), 64 << 20)))
    if recover:
        await backend.recover()
    backend.forkserver.start()
    return backend


@pytest.fixture
async def backend(tmp_path):
    task_backend = await _task_server(tmp_path)
    yield task_backend
    for container_id in list(task_backend._containers):
        await task_backend.shutdown(container_id, now=True)
    await task_backend.close()
    assert processes_mentioning(str(tmp_path)) == []


async def _run(backend: WasmTaskBackend, bundle: str, fifo, cid: str = "", stderr: bool = False):
    """Create + Start with FIFO stdout (and stderr); returns (id, exit status, stdout, stderr)."""
    cid = cid or _cid()
    out = fifo(cid + "-out")
    err = fifo(cid + "-err") if stderr else ""
    readers = [asyncio.ensure_future(read_fifo(out))] + ([asyncio.ensure_future(read_fifo(err))] if err else [])
    await backend.create(CreateTask(id=cid, bundle=bundle, stdio=Stdio(stdout=out, stderr=err)))
    await backend.start(cid, "")
    info = await asyncio.wait_for(backend.wait(cid, ""), 30)
    outputs = [await r for r in readers]
    await backend.delete(cid, "")
    return cid, info.exit_status, outputs[0], outputs[1] if err else b""


async def test_lifecycle_states_and_delete(backend, bundle_factory, fifo) -> None:
    cid = _cid()
    bundle = bundle_factory(["/bin/loop.wat"])
    pid = await backend.create(CreateTask(id=cid, bundle=bundle))
    state = await backend.state(cid, "")
    assert state.status is TaskStatus.CREATED and state.pid == pid and state.bundle == bundle
    with pytest.raises(AlreadyExists):
        await backend.create(CreateTask(id=cid, bundle=bundle))
    with pytest.raises(FailedPrecondition):
        await backend.exec(ExecProcess(id=cid, exec_id="e", stdio=Stdio(), spec={"args": ["/bin/hello.wat"]}))
    assert await backend.start(cid, "") == pid
    assert (await backend.state(cid, "")).status is TaskStatus.RUNNING
    assert await backend.pids(cid) == [pid]
    with pytest.raises(FailedPrecondition):
        await backend.start(cid, "")
    with pytest.raises(FailedPrecondition):
        await backend.delete(cid, "")
    await backend.kill(cid, "", signal.SIGKILL, False)
    info = await asyncio.wait_for(backend.wait(cid, ""), 10)
    assert info.exit_status == 128 + signal.SIGKILL and info.pid == pid
    with pytest.raises(NotFound):
        await backend.kill(cid, "", signal.SIGKILL, False)
    assert (await backend.delete(cid, "")).exit_status == 137
    with pytest.raises(NotFound):
        await backend.state(cid, "")
    assert not os.path.exists(os.path.join(backend.store.directory, cid + ".json"))


async def test_wat_and_c_output_argv_env(backend, bundle_factory, fifo) -> None:
    _, status, out, _ = await _run(backend, bundle_factory(["/bin/hello.wat"]), fifo)
    assert (status, out) == (0, b"hello from wat\n")
    bundle = bundle_factory(["bin/prog.wasm", "args", "two words", ""], env=("GREETING=hi there",))
    _, status, out, _ = await _run(backend, bundle, fifo)
    lines = out.decode().splitlines()
    assert status == 0
    assert lines[:4] == ["arg bin/prog.wasm", "arg args", "arg two words", "arg "]
    assert "env GREETING=hi there" in lines and "env PATH=/bin" in lines


async def test_preopened_rootfs_bind_mount_and_cwd(backend, bundle_factory, fifo, tmp_path) -> None:
    _, status, out, _ = await _run(backend, bundle_factory(["/bin/prog.wasm", "read", "/data/hello.txt"]), fifo)
    assert (status, out) == (0, b"hello from the rootfs\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from a bind mount\n")
    mount = {"destination": "/mnt/shared", "type": "bind", "source": str(shared), "options": ["rbind", "rw"]}
    _, status, out, _ = await _run(backend, bundle_factory(["/bin/prog.wasm", "read", "/mnt/shared/in.txt"],
                                                           mounts=(mount,)), fifo)
    assert (status, out) == (0, b"from a bind mount\n")
    _, status, _, _ = await _run(backend, bundle_factory(["/bin/prog.wasm", "write", "/mnt/shared/out.txt", "x"],
                                                         mounts=(mount,)), fifo)
    assert status == 0 and (shared / "out.txt").read_text() == "x"
    readonly = dict(mount, options=["rbind", "ro"])
    _, status, _, err = await _run(backend, bundle_factory(["/bin/prog.wasm", "write", "/mnt/shared/no.txt", "x"],
                                                           mounts=(readonly,)), fifo, stderr=True)
    assert status == 2 and not (shared / "no.txt").exists() and b"/mnt/shared/no.txt" in err
    _, status, out, _ = await _run(backend, bundle_factory(["/bin/prog.wasm", "cwdread", "note.txt"], cwd="/home"),
                                   fifo)
    assert (status, out) == (0, b"note in cwd\n")


async def test_exit_codes_and_traps(backend, bundle_factory, fifo) -> None:
    _, status, _, err = await _run(backend, bundle_factory(["/bin/prog.wasm", "exit", "42"]), fifo, stderr=True)
    assert (status, err) == (42, b"exiting with 42\n")
    _, status, _, err = await _run(backend, bundle_factory(["/bin/trap.wat"]), fifo, stderr=True)
    assert status == TRAP_EXIT
    assert b"wasm trap" in err and b"unreachable" in err


async def test_memory_limit_store_and_cgroup(backend, bundle_factory, fifo) -> None:
    cgroup = f"/kuasar-wasm-test-{uuid.uuid4().hex[:8]}/ctr"
    bundle = bundle_factory(["/bin/prog.wasm", "alloc"], memory=96 << 20, cgroups_path=cgroup)
    cid = _cid()
    out = fifo("alloc-out")
    reader = asyncio.ensure_future(read_fifo(out))
    await backend.create(CreateTask(id=cid, bundle=bundle, stdio=Stdio(stdout=out)))
    with open(f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes") as handle:
        assert int(handle.read()) == 96 << 20
    pid = (await backend.state(cid, "")).pid
    with open(f"/sys/fs/cgroup/memory{cgroup}/cgroup.procs") as handle:
        assert str(pid) in handle.read().split()
    await backend.start(cid, "")
    info = await asyncio.wait_for(backend.wait(cid, ""), 30)
    text = (await reader).decode()
    assert info.exit_status == 3, text
    mib = int(text.split()[1])
    assert 0 < mib < 96, text
    stats = await backend.stats(cid)
    assert stats.memory_limit == 96 << 20
    await backend.delete(cid, "")
    assert not cgroup_exists(cgroup) and not cgroup_exists(cgroup.rsplit("/", 1)[0])


async def test_kill_infinite_loop_with_sigterm(backend, bundle_factory) -> None:
    cid = _cid()
    await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/loop.wat"])))
    await backend.start(cid, "")
    await asyncio.sleep(0.2)
    assert (await backend.state(cid, "")).status is TaskStatus.RUNNING
    await backend.kill(cid, "", signal.SIGTERM, True)
    info = await asyncio.wait_for(backend.wait(cid, ""), 10)
    assert info.exit_status == 128 + signal.SIGTERM


async def test_exec_runs_another_module_of_the_rootfs(backend, bundle_factory, fifo) -> None:
    cid = _cid()
    await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/loop.wat"])))
    init_pid = await backend.start(cid, "")
    out = fifo("exec-out")
    reader = asyncio.ensure_future(read_fifo(out))
    spec = {"args": ["/bin/prog.wasm", "exit", "5"], "env": ["A=1"], "cwd": "/"}
    await backend.exec(ExecProcess(id=cid, exec_id="x1", stdio=Stdio(stdout=out, stderr=out), spec=spec))
    with pytest.raises(AlreadyExists):
        await backend.exec(ExecProcess(id=cid, exec_id="x1", stdio=Stdio(), spec=spec))
    exec_pid = await backend.start(cid, "x1")
    assert exec_pid not in (0, init_pid)
    assert (await asyncio.wait_for(backend.wait(cid, "x1"), 30)).exit_status == 5
    assert await reader == b"exiting with 5\n"
    assert (await backend.delete(cid, "x1")).pid == exec_pid
    bad = {"args": ["/bin/fake.wasm"], "cwd": "/"}
    await backend.exec(ExecProcess(id=cid, exec_id="x2", stdio=Stdio(), spec=bad))
    with pytest.raises(InvalidArgument, match="not a WebAssembly module"):
        await backend.start(cid, "x2")
    await backend.kill(cid, "", signal.SIGKILL, True)
    await asyncio.wait_for(backend.wait(cid, ""), 10)


async def test_two_containers_of_one_pod_and_shutdown(backend, bundle_factory, tmp_path) -> None:
    pods_dir = tmp_path / "pods"
    pod = "pod-" + uuid.uuid4().hex[:8]
    (pods_dir / pod).mkdir(parents=True)
    parent = f"kuasar-wasm-test-{uuid.uuid4().hex[:8]}"
    (pods_dir / pod / "sandbox.json").write_text('{"cgroup_parent": "%s"}' % parent)
    pod_cgroup = Cgroup.open(parent)
    pod_cgroup.create()  # as the sandboxer does at pod start
    backend.pods_dir = str(pods_dir)
    ids = [_cid(), _cid()]
    for cid in ids:
        await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/loop.wat"], sandbox_id=pod)))
        await backend.start(cid, "")
        assert backend._containers[cid].cgroup == f"/{parent}/{cid}" and cgroup_exists(f"{parent}/{cid}")
    assert len({(await backend.state(cid, "")).pid for cid in ids}) == 2
    await backend.shutdown(pod, now=False)
    for cid in ids:
        state = await backend.state(cid, "")
        assert state.status is TaskStatus.STOPPED and state.exit_status == 137
    await backend.shutdown(pod, now=True)
    for cid in ids:
        with pytest.raises(NotFound):
            await backend.state(cid, "")
        assert not cgroup_exists(f"{parent}/{cid}")
    pod_cgroup.delete()
    assert not cgroup_exists(parent)


@pytest.mark.parametrize("args,message", [
    (["/bin/fake.wasm"], "not a WebAssembly module"),
    (["/bin/missing.wasm"], "does not exist"),
    (["../../etc/passwd"], "escapes the container rootfs"),
    (["/bin/escape.wasm"], "does not exist"),  # -> /etc/passwd of the rootfs, never the host's
    (["/bin/up.wasm"], "escapes the container rootfs"),
    (["/bin"], "is a directory"),
    (["/bin/nostart.wat"], "exports no _start"),
    (["/bin/hello.wat", "x" * MAX_ARGS_BYTES], "at most"),
    ([], "process.args is empty"),
])
async def test_bad_input_fails_create_and_leaves_nothing(backend, bundle_factory, args, message) -> None:
    cid = _cid()
    with pytest.raises(InvalidArgument, match=message):
        await backend.create(CreateTask(id=cid, bundle=bundle_factory(args)))
    with pytest.raises(NotFound):
        await backend.state(cid, "")
    assert not os.path.exists(os.path.join(backend.store.directory, cid))


async def test_streaming_stdio(backend, bundle_factory) -> None:
    hub = StreamingHub()
    backend.hub = hub
    cid = _cid()
    url = "ttrpc+unix:///run/test.sock?streaming_id="
    await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/prog.wasm", "echo"]),
                                    stdio=Stdio(stdin=url + cid + "-in", stdout=url + cid + "-out")))
    stdin, stdout = hub.endpoint(cid + "-in"), hub.endpoint(cid + "-out")
    await backend.start(cid, "")
    await stdin.put(b"line one\n")
    await stdin.put(None)
    info = await asyncio.wait_for(backend.wait(cid, ""), 30)
    chunks = []
    while True:
        chunk = await asyncio.wait_for(stdout.get(), 10)
        if not chunk:
            break
        chunks.append(chunk)
    assert info.exit_status == 0 and b"".join(chunks) == b"echo: line one\n"
    await backend.delete(cid, "")


async def test_second_start_uses_the_cache(backend, bundle_factory, fifo) -> None:
    for _ in range(2):  # the second start loads the serialized code
        cid = _cid()
        await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/hello.wat"])))
        spec_dir = backend.store.work_dir(cid)
        assert os.path.exists(os.path.join(spec_dir, "init.run"))
        await backend.start(cid, "")
        await asyncio.wait_for(backend.wait(cid, ""), 30)
        await backend.delete(cid, "")
    entries = os.listdir(backend.forkserver.cache.directory)
    assert len([e for e in entries if e.endswith(".cwasm")]) == 1
    counters = backend.cache_counters
    assert (counters.hits, counters.misses) == (1, 1) and counters.compile_seconds > 0


async def test_restart_readopts_a_running_module(tmp_path, bundle_factory, fifo) -> None:
    first = await _task_server(tmp_path)
    cid = _cid()
    created = _cid()
    out = fifo("restart-out")
    await first.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/loop.wat"]), stdio=Stdio(stdout=out)))
    pid = await first.start(cid, "")
    created_pid = await first.create(CreateTask(id=created, bundle=bundle_factory(["/bin/loop.wat"])))
    await first.close()  # the old server goes away; the module keeps running
    assert os.path.exists(f"/proc/{pid}")
    second = await _task_server(tmp_path, recover=True)
    try:
        state = await second.state(cid, "")
        assert state.status is TaskStatus.RUNNING and state.pid == pid
        never_started = await second.state(created, "")
        assert never_started.status is TaskStatus.STOPPED and never_started.exit_status == UNKNOWN_EXIT
        await wait_exit(created_pid)
        await second.kill(cid, "", signal.SIGKILL, False)
        info = await asyncio.wait_for(second.wait(cid, ""), 10)
        assert info.exit_status == 137
        await second.delete(cid, "")
        await second.delete(created, "")
    finally:
        await second.close()


class _ServerDied(Exception):
    """Stands for a kill -9 of the task server in the middle of a Start."""


@pytest.mark.parametrize("start_sent", [True, False], ids=["start-sent", "start-not-sent"])
async def test_an_exec_start_cut_short_by_a_restart_runs_exactly_once(
        tmp_path, bundle_factory, monkeypatch, start_sent) -> None:
    """The old server dies right after (or right before) telling the exec's runner to start, before it
    recorded the exec as running: the new server answers the engine's retried Start with that runner
    when it started, and starts the exec (once) when it did not."""
    first = await _task_server(tmp_path)
    cid = _cid()
    await first.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/loop.wat"])))
    init_pid = await first.start(cid, "")
    spec = {"args": ["/bin/loop.wat"], "cwd": "/"}
    await first.exec(ExecProcess(id=cid, exec_id="x1", stdio=Stdio(), spec=spec))
    runners = []
    original = Runner.start

    def dies_around_start(runner: Runner, stdio) -> None:
        runners.append(runner.pid)
        if start_sent:
            original(runner, stdio)
        runner.control.close()
        raise _ServerDied()

    monkeypatch.setattr(Runner, "start", dies_around_start)
    with pytest.raises(_ServerDied):
        await first.start(cid, "x1")
    monkeypatch.setattr(Runner, "start", original)
    await first.close()
    second = await _task_server(tmp_path, recover=True)
    try:
        state = await second.state(cid, "x1")
        if start_sent:
            assert state.status is TaskStatus.RUNNING and state.pid == runners[0]
            assert await second.interrupted_start(cid, "x1") == runners[0]
        else:
            assert state.status is TaskStatus.CREATED and state.pid == 0
            assert await second.interrupted_start(cid, "x1") is None
            await wait_exit(runners[0])
            assert await second.start(cid, "x1") not in (0, runners[0], init_pid)
        await second.kill(cid, "x1", signal.SIGKILL, False)
        assert (await asyncio.wait_for(second.wait(cid, "x1"), 10)).exit_status == 137
        await second.kill(cid, "", signal.SIGKILL, True)
        await asyncio.wait_for(second.wait(cid, ""), 10)
        await second.delete(cid, "")
    finally:
        if cid in second._containers:
            await second.shutdown(cid, now=True)
        await second.close()
        for pid in [init_pid, *runners]:  # a failed assertion must not leave modules spinning
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _status_field(pid: int, field: str) -> str:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return line.split()[1]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as handle:
        return handle.read().strip()


def _mapped_cache_files(pid: int, cache_dir: str) -> set[str]:
    with open(f"/proc/{pid}/maps") as handle:
        return {line.split()[-1] for line in handle if " r-xp " in line and cache_dir in line}


async def test_runners_are_forked_children_of_the_task_server_in_sessions_of_their_own(
        backend, bundle_factory) -> None:
    cid = _cid()
    await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/loop.wat"])))
    pid = await backend.start(cid, "")
    forkserver = backend.forkserver.pid
    assert forkserver is not None
    assert _comm(pid) == "wasm-runner" and _comm(forkserver) == "wasm-forkserver"
    # re-parented to the task server (its reaper has the exit status), not the fork-server's child
    assert int(_status_field(pid, "PPid")) == os.getpid()
    # a signal to the task server's or the fork-server's process group or session never reaches it
    assert os.getsid(pid) not in (os.getsid(0), os.getsid(forkserver))
    assert os.getpgid(pid) not in (os.getpgid(0), os.getpgid(forkserver))
    await backend.kill(cid, "", signal.SIGKILL, False)
    assert (await asyncio.wait_for(backend.wait(cid, ""), 10)).exit_status == 137


async def test_containers_of_one_module_share_the_mapped_code(backend, bundle_factory) -> None:
    ids = [_cid() for _ in range(3)]
    pids = []
    for cid in ids:
        await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/loop.wat"])))
        pids.append(await backend.start(cid, ""))
    mapped = [_mapped_cache_files(pid, backend.forkserver.cache.directory) for pid in pids]
    # the first runner compiled, stored and then mapped the entry too: one file for all three
    assert len(mapped[0]) == 1 and mapped[0] == mapped[1] == mapped[2]
    for cid in ids:
        await backend.kill(cid, "", signal.SIGKILL, False)
        await asyncio.wait_for(backend.wait(cid, ""), 10)


async def test_stats_of_a_running_container_come_from_its_cgroup(backend, bundle_factory) -> None:
    cgroup = f"/kuasar-wasm-test-{uuid.uuid4().hex[:8]}/ctr"
    cid = _cid()
    await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/loop.wat"], memory=64 << 20,
                                                                  cgroups_path=cgroup)))
    pid = await backend.start(cid, "")
    before = await backend.stats(cid)
    while (await backend.stats(cid)).cpu_total_ns <= before.cpu_total_ns:  # the module spins
        await asyncio.sleep(0.05)
    stats = await backend.stats(cid)
    # pids counts tasks: a runner that compiled keeps wasmtime's compile threads
    assert stats.pids_current >= 1 and stats.memory_limit == 64 << 20 and stats.memory_usage > 0
    assert Cgroup.open(cgroup).pids() == [pid]
    await backend.kill(cid, "", signal.SIGKILL, False)
    await asyncio.wait_for(backend.wait(cid, ""), 10)
    await backend.delete(cid, "")


async def test_fork_server_killed_running_modules_keep_running_and_a_new_one_forks(
        backend, bundle_factory, fifo) -> None:
    running, created = _cid(), _cid()
    out = fifo("fs-out")
    reader = asyncio.ensure_future(read_fifo(out))
    await backend.create(CreateTask(id=running, bundle=bundle_factory(["/bin/loop.wat"])))
    running_pid = await backend.start(running, "")
    await backend.create(CreateTask(id=created, bundle=bundle_factory(["/bin/hello.wat"]), stdio=Stdio(stdout=out)))
    old = backend.forkserver.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await wait_exit(old)
    assert (await backend.state(running, "")).status is TaskStatus.RUNNING and os.path.exists(f"/proc/{running_pid}")
    await backend.start(created, "")  # created before the kill: its runner is not the fork-server's
    assert (await asyncio.wait_for(backend.wait(created, ""), 30)).exit_status == 0
    assert await reader == b"hello from wat\n"
    _, status, output, _ = await _run(backend, bundle_factory(["/bin/hello.wat"]), fifo)  # a new fork-server
    assert (status, output) == (0, b"hello from wat\n")
    assert backend.forkserver.pid not in (None, old)
    await backend.kill(running, "", signal.SIGTERM, False)
    assert (await asyncio.wait_for(backend.wait(running, ""), 10)).exit_status == 128 + signal.SIGTERM
